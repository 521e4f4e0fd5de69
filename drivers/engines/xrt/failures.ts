import { DeviceUnavailableError, ModelError, type AiosError } from '../../errors.js';
import type { DeviceInfo } from '../../hal/types.js';
import type { Xclbin } from './axlf.js';
import type { DeviceTarget } from './protocol.js';
import { WorkerFailure } from './worker.js';

/** What the engine was doing when the worker failed, for the message. */
export interface FailureContext {
  readonly device: DeviceInfo;
  readonly target: DeviceTarget;
  readonly descriptor: string;
  readonly xclbin: Xclbin;
  readonly kernel: string;
}

/**
 * Turns a worker failure into the error the user sees: which XRT step failed, what XRT printed
 * (its `[XRT] ERROR:` lines), and what to do. Errors that are already AiosErrors (a crashed
 * worker) pass through unchanged.
 */
export function explainFailure(error: unknown, ctx: FailureContext): AiosError | Error {
  if (!(error instanceof WorkerFailure)) return error instanceof Error ? error : new Error(String(error));
  const { stage, message, state, errno } = error.failure;
  const said = xrtSaid(error.output);
  const what = `${message}${said ? ` — XRT said: ${said}` : ''}`;
  const details = { stage, device: ctx.device.id, target: ctx.target, xclbin: ctx.xclbin.path, kernel: ctx.kernel, ...(errno === undefined ? {} : { errno }), ...(state === undefined ? {} : { state }), output: error.output };
  switch (stage) {
    case 'library':
      return new DeviceUnavailableError('EAI_XRT_UNAVAILABLE', `the XRT libraries could not be loaded: ${what}`, LIBRARY_FIX, { details });
    case 'open-device':
      return new DeviceUnavailableError('EAI_XRT_DEVICE_OPEN', `XRT could not open ${ctx.device.name} (${targetName(ctx.target)}): ${what}`, noDeviceFix(ctx.device), { details });
    case 'load-xclbin':
    case 'xclbin-uuid': {
      const shell = ctx.device.details?.['vbnv'];
      const platform = `${ctx.xclbin.path} was built for platform '${ctx.xclbin.platformVbnv || 'unknown'}'${typeof shell === 'string' ? ` and the card runs shell '${shell}'` : ''}`;
      return new ModelError('EAI_XRT_XCLBIN_LOAD', `XRT could not load the xclbin onto ${ctx.device.name}: ${what}. ${platform}. Rebuild the xclbin for the card's platform (v++ --platform), or dispose models that hold a different xclbin on this device first.`, { details });
    }
    case 'open-kernel':
    case 'group-id':
    case 'run-open':
    case 'set-arg':
      return new ModelError('EAI_XRT_KERNEL', `XRT could not set up kernel '${ctx.kernel}' from ${ctx.xclbin.path}: ${what}. Check the kernel name and argument list in ${ctx.descriptor} against the kernel's C signature.`, { details });
    case 'alloc':
      return new ModelError('EAI_XRT_BUFFER', `XRT could not allocate a device buffer for '${ctx.kernel}': ${what}. The buffers in ${ctx.descriptor} may not fit the memory bank the kernel is connected to; shrink the shapes or dispose other models on this device.`, { details });
    case 'wait':
      if (state === 'TIMEOUT') {
        return new ModelError('EAI_XRT_TIMEOUT', `Kernel '${ctx.kernel}' did not finish within the descriptor's timeout: ${what}. Raise "timeoutMs" in ${ctx.descriptor} if the kernel is slow, or check that the inputs cannot make it loop forever.`, { details });
      }
      return new ModelError('EAI_MODEL_RUN_FAILED', `Kernel '${ctx.kernel}' failed on ${ctx.device.name}: ${what}.`, { details });
    default:
      return new ModelError('EAI_MODEL_RUN_FAILED', `Kernel '${ctx.kernel}' failed on ${ctx.device.name} (${stage}): ${what}.`, { details });
  }
}

export const LIBRARY_FIX =
  'on Debian/Ubuntu `sudo apt install libxrt1` (XRT from the distribution), or install AMD\'s xrt package for your distribution ' +
  'and `source /opt/xilinx/xrt/setup.sh` (or pass libraryDir to the engine)';

/** What to check when XRT sees no device, for a PCIe card or a SoC. */
export function noDeviceFix(device: DeviceInfo): string {
  const bdf = device.details?.['pciAddress'];
  if (device.details?.['bus'] === 'platform') {
    return 'check that the zocl driver is loaded (`lsmod | grep zocl`) and that the loaded PL overlay has a zocl node: on Kria `sudo xmutil listapps` then ' +
      '`sudo xmutil unloadapp && sudo xmutil loadapp <app>`; `xbutil examine` (AMD\'s XRT) lists what XRT sees';
  }
  return `check the card is on the bus (\`lspci -d 10ee:\`), that the xocl driver is loaded (\`lsmod | grep xocl\`)${typeof bdf === 'string' ? ` and bound to ${bdf}` : ''}, ` +
    "and that `xbutil examine` (AMD's XRT; Debian's xbutil wrapper does not work) lists it; reinstall the xrt package so DKMS rebuilds xocl for the running kernel";
}

export function targetName(target: DeviceTarget): string {
  return 'bdf' in target ? `PCIe ${target.bdf}` : `XRT device index ${target.index}`;
}

/** The lines of XRT's output that say what went wrong, without its version banner. */
export function xrtSaid(output: string): string {
  const lines = output.split('\n').map((l) => l.trim()).filter((l) => /\[XRT\]|ERROR|what\(\)|error/iu.test(l));
  return lines.slice(-3).join(' | ');
}
