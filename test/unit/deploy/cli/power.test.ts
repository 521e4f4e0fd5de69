import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { powerCommand, type PowerCommandOptions } from '../../../../deploy/cli/commands/power.js';
import type { PowerControl } from '../../../../drivers/devices/jetson-power.js';
import { AiosError } from '../../../../drivers/errors.js';
import { SYSROOTS } from '../../../support/sysroots.js';

const sysroot = (name: string): string => path.join(SYSROOTS, name);

/** Runs `aios power ...` in-process; resolves with stdout, or rejects with what the action threw. */
async function power(args: string[], options: PowerCommandOptions = {}): Promise<string> {
  let stdout = '';
  const out = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stdout += String(chunk);
    return true;
  });
  try {
    await powerCommand(options).exitOverride().parseAsync(args, { from: 'user' });
    return stdout;
  } finally {
    out.mockRestore();
  }
}

async function errorOf(promise: Promise<unknown>): Promise<AiosError> {
  const error: unknown = await promise.then(() => undefined, (e: unknown) => e);
  if (!(error instanceof AiosError)) throw new Error(`expected an AiosError, got ${String(error)}`);
  return error;
}

const asRoot = (stdout = ''): { control: PowerControl; ran: string[] } => {
  const ran: string[] = [];
  return { ran, control: { isRoot: () => true, run: async (file, args) => (ran.push([file, ...args].join(' ')), { stdout, stderr: '', exitCode: 0 }) } };
};

afterEach(() => vi.restoreAllMocks());

describe('aios power', () => {
  it('prints the mode, where it came from, jetson_clocks and the mode table', async () => {
    expect(await power(['--sysroot', sysroot('jetson-orin-nx-jp6')])).toBe(
      'Power mode:    15W (id 2), from nvpmodel -q\n' +
      'jetson_clocks: off (GPU 306-612 MHz, now 306 MHz)\n' +
      '\n' +
      'ID  MODE\n' +
      '0   MAXN\n' +
      '1   10W\n' +
      '2   15W   current, default\n' +
      '3   25W\n',
    );
  });

  it('--json prints the PowerStatus', async () => {
    const status = JSON.parse(await power(['--sysroot', sysroot('jetson-xavier-nx-jp5'), '--json'])) as { current: unknown; modes: unknown[]; defaultId: number; jetsonClocks: string };
    expect(status.current).toEqual({ id: 2, name: 'MODE_15W_6CORE' });
    expect(status.modes).toHaveLength(9);
    expect(status.defaultId).toBe(2);
    expect(status.jetsonClocks).toBe('off');
  });

  it('shows the Nano and its two modes', async () => {
    const text = await power(['--sysroot', sysroot('jetson-nano-jp4')]);
    expect(text).toContain('Power mode:    MAXN (id 0), from nvpmodel -q\n');
    expect(text).toMatch(/\n0\s+MAXN\s+current, default\n1\s+5W\n$/u);
  });

  it('is EAI_POWER_UNSUPPORTED on a machine that is not a Jetson', async () => {
    const error = await errorOf(power(['--sysroot', sysroot('x86-rtx4090')]));
    expect(error.code).toBe('EAI_POWER_UNSUPPORTED');
    expect(error.message).toContain('/etc/nvpmodel.conf is missing and nvpmodel is not installed');
  });
});

describe('aios power --set', () => {
  it('refuses a captured root with EAI_POWER_NOT_LIVE and says where to run it', async () => {
    const error = await errorOf(power(['--sysroot', sysroot('jetson-orin-nx-jp6'), '--set', 'MAXN']));
    expect(error.code).toBe('EAI_POWER_NOT_LIVE');
    expect(error.message).toContain("Run 'aios power --set MAXN' on the Jetson itself, without --sysroot.");
  });

  it('switches with nvpmodel -m through the control it was given', async () => {
    const { control, ran } = asRoot();
    expect(await power(['--sysroot', sysroot('jetson-orin-nx-jp6'), '--set', 'maxn'], { control })).toBe('Power mode set to MAXN (id 0); it was 15W (id 2).\n');
    expect(ran).toEqual(['nvpmodel -m 0']);
  });

  it('says so when the board is already in that mode, and tells the operator about a reboot nvpmodel wants', async () => {
    expect(await power(['--sysroot', sysroot('jetson-orin-nx-jp6'), '--set', '2'], asRoot())).toBe('Power mode is already 15W (id 2); nothing to do.\n');
    expect(await power(['--sysroot', sysroot('jetson-orin-nx-jp6'), '--set', '3'], asRoot('NVPM WARN: reboot required\n'))).toBe(
      'Power mode set to 25W (id 3); it was 15W (id 2).\nnvpmodel says this mode takes full effect after a reboot (sudo reboot); aios did not reboot.\n',
    );
  });

  it('--json prints the PowerChange', async () => {
    const change = JSON.parse(await power(['--sysroot', sysroot('jetson-xavier-nx-jp5'), '--set', 'MODE_20W_6CORE', '--json'], asRoot())) as unknown;
    expect(change).toEqual({ previous: { id: 2, name: 'MODE_15W_6CORE' }, mode: { id: 8, name: 'MODE_20W_6CORE' }, changed: true, rebootRequired: false, output: '' });
  });

  it('names the modes when asked for one the board lacks', async () => {
    const error = await errorOf(power(['--sysroot', sysroot('jetson-nano-jp4'), '--set', '10W'], asRoot()));
    expect(error.code).toBe('EAI_POWER_UNKNOWN_MODE');
    expect(error.message).toBe("'10W' is not a power mode of this board. Its modes are 0 MAXN, 1 5W: pass one of those ids or names.");
  });
});
