import { execFile } from 'node:child_process';
import path from 'node:path';
import { TpmError, type TpmErrorCode } from './errors.js';

/**
 * Running one tpm2-tools program (tpm2_quote, tpm2_createak, ...) and turning its failures into
 * `TpmError`s that say what to fix. The programs are run with execFile (no shell, arguments never
 * interpreted) and the TCTI in TPM2TOOLS_TCTI.
 *
 * tpm2-tools exits 1 for almost every failure, so the cause is read from stderr: the TCTI's
 * complaint when it cannot reach the TPM, or the TPM response code the tool prints as
 * `ERROR: Esys_Quote(0x902) - tpm:warn(2.0): out of memory for object contexts`.
 */
export interface ToolRun {
  /** `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, ... */
  readonly tcti: string;
  /** Folder holding the tpm2_* programs; undefined: found on PATH. */
  readonly toolsDir: string | undefined;
  /** Working folder (the operation's private temp folder). */
  readonly cwd: string;
  readonly timeoutMs: number;
}

export interface ToolOutput {
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `tool args...`; resolves with its output on exit 0, rejects with a mapped TpmError otherwise. */
export function runTool(tool: string, args: readonly string[], run: ToolRun): Promise<ToolOutput> {
  const file = run.toolsDir === undefined ? tool : path.join(run.toolsDir, tool);
  return new Promise((resolve, reject) => {
    execFile(
      file,
      [...args],
      { cwd: run.cwd, timeout: run.timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024, env: { ...process.env, TPM2TOOLS_TCTI: run.tcti } },
      (error, stdout, stderr) => {
        if (error === null) resolve({ stdout, stderr });
        else reject(toolFailure(tool, args, run, error, stderr));
      },
    );
  });
}

/** TPM response codes (Part 2 §6.6) this driver explains; format-one codes without their parameter bits. */
export const TPM_RC = {
  INITIALIZE: 0x100,
  FAILURE: 0x101,
  AUTH_FAIL: 0x08e,
  POLICY_FAIL: 0x099,
  INTEGRITY: 0x09f,
  BAD_AUTH: 0x0a2,
  CONTEXT_GAP: 0x901,
  OBJECT_MEMORY: 0x902,
  SESSION_MEMORY: 0x903,
  OBJECT_HANDLES: 0x906,
  LOCKOUT: 0x921,
} as const;

/**
 * The TPM response code in a tool's stderr (the last `Name(0x...)` error), reduced to its base
 * code: format-one codes (bit 7 set) carry the handle/parameter/session number in bits 6 and 8–11,
 * which say *where* and not *what*. Undefined when none is printed or the code is from a TSS
 * layer rather than the TPM.
 */
export function responseCode(stderr: string): number | undefined {
  const found = [...stderr.matchAll(/ERROR: \w+\((0x[0-9a-fA-F]+)\)/gu)].pop()?.[1];
  if (found === undefined) return undefined;
  const rc = Number.parseInt(found, 16);
  if (rc >>> 16 !== 0) return undefined;
  return (rc & 0x80) !== 0 ? 0x80 | (rc & 0x3f) : rc;
}

function toolFailure(tool: string, args: readonly string[], run: ToolRun, error: Error & { code?: unknown; killed?: boolean; signal?: unknown }, stderr: string): TpmError {
  const lastLine = stderr.trim().split('\n').filter((l) => l.includes('ERROR')).pop() ?? stderr.trim().split('\n').pop() ?? '';
  const details = { tool, args: [...args], tcti: run.tcti, exitCode: typeof error.code === 'number' ? error.code : undefined, stderr: lastLine };
  const fail = (code: TpmErrorCode, message: string, extra: Record<string, unknown> = {}): TpmError => new TpmError(code, message, { cause: error, details: { ...details, ...extra } });

  if (error.code === 'ENOENT' || error.code === 'EACCES') {
    return fail('EAI_TPM_TOOLS_MISSING', `${tool} is not installed or not executable${run.toolsDir === undefined ? ' (looked on PATH)' : ` in ${run.toolsDir}`}. Fix: apt install tpm2-tools (Debian/Ubuntu; tpm2-tools 5.x)`);
  }
  if (error.killed === true || error.signal === 'SIGKILL') {
    return fail('EAI_TPM_TIMEOUT', `${tool} did not finish within ${run.timeoutMs} ms on ${run.tcti}: the TPM is busy or hung (a hardware TPM generating an RSA key can take seconds; raise timeoutMs), or a swtpm stopped answering`);
  }

  const device = /Failed to open specified TCTI device file (\S+): (.*?)\s*$/mu.exec(stderr);
  if (device !== null) {
    const [, file, reason] = device;
    if (/permission denied/iu.test(reason ?? '')) {
      return fail('EAI_TPM_DEVICE_ACCESS', `no permission to open the TPM at ${file}. Fix: run as a member of the tss group (usermod -aG tss <user>, then log in again), or give the service access through a udev rule`);
    }
    return fail('EAI_TPM_NO_DEVICE', `no TPM at ${file} (${reason}): the machine has no TPM 2.0, it is disabled in firmware setup, or its kernel driver (tpm_tis, tpm_crb) is not loaded. Check: ls /dev/tpm*; dmesg | grep -i tpm. A TPM 1.2 is not supported`);
  }
  if (/Could not load tcti|Failed to instantiate TCTI|Cannot connect/u.test(stderr)) {
    const refused = /Connection refused|Cannot connect/u.test(stderr);
    return fail(
      'EAI_TPM_CONNECT',
      refused
        ? `cannot connect to the TPM at '${run.tcti}': nothing listens there. Start the simulator (swtpm socket --tpm2 --server type=tcp,port=P --ctrl type=tcp,port=P+1 ...) or fix host and port`
        : `cannot open the TCTI '${run.tcti}': the TCTI name or options are wrong, or its library (libtss2-tcti-<name>.so.0) is not installed. Use device:/dev/tpmrm0 on a device, swtpm:host=...,port=... for a simulator`,
    );
  }

  const rc = responseCode(stderr);
  const rcHex = rc === undefined ? undefined : `0x${rc.toString(16)}`;
  switch (rc) {
    case TPM_RC.FAILURE:
      return fail('EAI_TPM_NOT_STARTED', `the TPM answers TPM_RC_FAILURE (0x101): it is not powered on or is in failure mode. A swtpm in socket mode must be powered on first (swtpm_ioctl --tcp HOST:CTRLPORT -i, or start it with --flags not-need-init) and then started (tpm2_startup -c); a hardware TPM in failure mode needs a power cycle (tpm2_gettestresult says why)`, { rc: rcHex });
    case TPM_RC.INITIALIZE:
      return fail('EAI_TPM_NOT_STARTED', 'the TPM has not been started (TPM_RC_INITIALIZE, 0x100). Fix: tpm2_startup -c (firmware does this at boot; a simulator needs it after power-on)', { rc: rcHex });
    case TPM_RC.OBJECT_MEMORY:
    case TPM_RC.SESSION_MEMORY:
    case TPM_RC.OBJECT_HANDLES:
    case TPM_RC.CONTEXT_GAP:
      return fail('EAI_TPM_OBJECT_MEMORY', `the TPM is out of room for loaded objects or sessions (${rcHex}): something left transient objects or sessions loaded. Fix: tpm2_flushcontext -t (objects) and -l / -s (sessions); use the kernel resource manager device:/dev/tpmrm0, which flushes for each client`, { rc: rcHex });
    case TPM_RC.LOCKOUT:
      return fail('EAI_TPM_LOCKOUT', 'the TPM is in dictionary-attack lockout (0x921) after repeated wrong authorisations. Wait for the lockout to expire (tpm2_getcap properties-variable: TPM2_PT_LOCKOUT_*), or reset it with the lockout authorisation: tpm2_dictionarylockout -c', { rc: rcHex });
    case TPM_RC.AUTH_FAIL:
    case TPM_RC.BAD_AUTH:
    case TPM_RC.POLICY_FAIL:
      return fail('EAI_TPM_AUTH', `the TPM refused the authorisation for ${tool} (${rcHex}): the owner or endorsement hierarchy has a password, or the key's policy is not met. aios uses empty hierarchy passwords; clear them (tpm2_changeauth) or provision keys with the owner`, { rc: rcHex });
    default:
      break;
  }
  if (tool === 'tpm2_activatecredential' && rc !== undefined) {
    return fail('EAI_TPM_CREDENTIAL', `the TPM refused to activate the credential (${rcHex}): it was made for another key name or another EK, or it was altered. Ask the verifier for a credential made for this AK's name and this EK`, { rc: rcHex });
  }
  return fail('EAI_TPM_COMMAND', `${tool} failed${rcHex === undefined ? '' : ` with TPM response ${rcHex}`}: ${lastLine.replace(/^ERROR:\s*/u, '') || `exit code ${String(error.code)}`}`, { rc: rcHex });
}
