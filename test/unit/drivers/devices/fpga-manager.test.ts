import { writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { describeState, fpgaManagerState, loadBitstream, type BitstreamRunner } from '../../../../drivers/devices/fpga-manager.js';
import { DeviceUnavailableError } from '../../../../drivers/errors.js';
import type { CommandOutput, SysRoot } from '../../../../drivers/hal/sysroot.js';
import { fixtureRoot, tempRoot, type RootEntries } from '../../../support/sysroots.js';

const MANAGER: RootEntries = {
  '/sys/class/fpga_manager/fpga0/name': 'Xilinx ZynqMP FPGA Manager\n',
  '/sys/class/fpga_manager/fpga0/state': 'unknown\n',
  '/sys/class/fpga_manager/fpga0/flags': '0\n',
  '/sys/class/fpga_manager/fpga0/firmware': '\n',
};
const SMARTCAM_APP: RootEntries = {
  '/usr/bin/xmutil': '#!/usr/bin/python3\n',
  '/lib/firmware/xilinx/kv260-smartcam/kv260-smartcam.bit.bin': 'bits',
  '/lib/firmware/xilinx/kv260-smartcam/kv260-smartcam.dtbo': 'overlay',
  '/lib/firmware/xilinx/kv260-smartcam/shell.json': '{"shell_type":"XRT_FLAT","num_slots":"1"}',
};

/**
 * A fake kernel behind a temporary sysfs: records every write and, on a write to `firmware`, moves
 * `state` to `outcome` (and fails the write with `error`, as the real firmware_store returns an errno).
 */
function kernel(sys: SysRoot, outcome = 'operating', error?: string) {
  const writes: [string, string][] = [];
  const commands: [string, readonly string[]][] = [];
  const runner: BitstreamRunner = {
    async write(p, value) {
      writes.push([p, value]);
      writeFileSync(sys.resolve(p), value);
      if (p.endsWith('/firmware')) {
        writeFileSync(sys.resolve('/sys/class/fpga_manager/fpga0/state'), `${outcome}\n`);
        if (error !== undefined) throw new Error(error);
      }
    },
    async command(file, args): Promise<CommandOutput | undefined> {
      commands.push([file, args]);
      if (args[0] === 'loadapp') {
        writeFileSync(sys.resolve('/sys/class/fpga_manager/fpga0/state'), `${outcome}\n`);
        return { exitCode: error === undefined ? 0 : 1, stdout: error ?? `${args[1]}: loaded to slot 0\n` };
      }
      return { exitCode: 1, stdout: 'No Accel in slot 0 to unload\n' };
    },
  };
  return { runner, writes, commands };
}

async function failure(promise: Promise<unknown>): Promise<DeviceUnavailableError> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(DeviceUnavailableError);
  return error as DeviceUnavailableError;
}

describe('loadBitstream through the FPGA manager sysfs files', () => {
  it('writes flags 0 then the firmware name, and reads back operating', async () => {
    const sys = await tempRoot({ ...MANAGER, '/lib/firmware/design.bit.bin': 'bits' });
    const { runner, writes } = kernel(sys);
    const load = await loadBitstream(sys, 'fpga0', 'design.bit.bin', runner);
    expect(writes).toEqual([['/sys/class/fpga_manager/fpga0/flags', '0'], ['/sys/class/fpga_manager/fpga0/firmware', 'design.bit.bin']]);
    expect(load).toEqual({
      manager: 'fpga0',
      method: 'sysfs',
      firmware: 'design.bit.bin',
      actions: writes,
      state: { manager: 'fpga0', state: 'operating', ok: true, meaning: 'the PL is programmed and running' },
      notes: [],
    });
  });

  it('asks for partial reconfiguration with flags 1, and accepts the device id and sub-folders of /lib/firmware', async () => {
    const sys = await tempRoot({ ...MANAGER, '/lib/firmware/xilinx/rm/rm0.bit.bin': 'bits' });
    const { runner, writes } = kernel(sys);
    await loadBitstream(sys, 'fpga:fpga0', 'xilinx/rm/rm0.bit.bin', runner, { partial: true });
    expect(writes).toEqual([['/sys/class/fpga_manager/fpga0/flags', '1'], ['/sys/class/fpga_manager/fpga0/firmware', 'xilinx/rm/rm0.bit.bin']]);
  });

  it('reports a failed write with the state the kernel was left in and what it means', async () => {
    const sys = await tempRoot({ ...MANAGER, '/lib/firmware/other.bit.bin': 'bits' });
    const { runner } = kernel(sys, 'write error', 'EIO: i/o error, write');
    const error = await failure(loadBitstream(sys, 'fpga0', 'other.bit.bin', runner));
    expect(error.code).toBe('EAI_FPGA_LOAD_FAILED');
    expect(error.reason).toBe("loading 'other.bit.bin' into fpga0 failed: its state is 'write error' (writing the bitstream failed: built for another device, corrupt, or encrypted/authenticated in a way the boot configuration rejects); the write failed: EIO: i/o error, write");
    expect(error.details).toEqual({ manager: 'fpga0', firmware: 'other.bit.bin', state: 'write error' });
  });

  it('treats any state but operating after the write as a failure', async () => {
    const sys = await tempRoot({ ...MANAGER, '/lib/firmware/design.bit': 'bits' });
    const error = await failure(loadBitstream(sys, 'fpga0', 'design.bit', kernel(sys, 'write complete error').runner));
    expect(error.reason).toContain("its state is 'write complete error' (the PL did not come up after the bitstream was written (wrong part, or a .bit given where a .bit.bin is needed))");
  });

  it('refuses a firmware file that is not in /lib/firmware, before writing anything', async () => {
    const sys = await tempRoot(MANAGER);
    const { runner, writes } = kernel(sys);
    const error = await failure(loadBitstream(sys, 'fpga0', 'missing.bit.bin', runner));
    expect([error.code, error.reason]).toEqual(['EAI_FPGA_FIRMWARE_NOT_FOUND', "firmware 'missing.bit.bin' not found in /lib/firmware (/lib/firmware/missing.bit.bin); the kernel's firmware loader only looks there"]);
    for (const name of ['../../etc/passwd', '/home/me/design.bit.bin', '']) expect((await failure(loadBitstream(sys, 'fpga0', name, runner))).code).toBe('EAI_FPGA_FIRMWARE_NOT_FOUND');
    expect(writes).toEqual([]);
  });

  it('names the managers there are when the one asked for is missing', async () => {
    const sys = await tempRoot(MANAGER);
    const error = await failure(loadBitstream(sys, 'fpga1', 'x.bit.bin', kernel(sys).runner));
    expect([error.code, error.reason]).toEqual(['EAI_FPGA_MANAGER_NOT_FOUND', 'no FPGA manager \'fpga1\' (/sys/class/fpga_manager/fpga1 is missing; present: fpga0)']);
    expect((await failure(loadBitstream(sys, 'cuda:0', 'x.bit.bin'))).code).toBe('EAI_FPGA_MANAGER_NOT_FOUND');
  });

  it('says when the kernel has no firmware file to load through (mainline kernels)', async () => {
    const sys = await tempRoot({ '/sys/class/fpga_manager/fpga0/state': 'unknown\n', '/lib/firmware/design.bit.bin': 'bits' });
    const error = await failure(loadBitstream(sys, 'fpga0', 'design.bit.bin', kernel(sys).runner));
    expect(error.code).toBe('EAI_FPGA_LOAD_FAILED');
    expect(error.reason).toContain("has no 'firmware' file: loading by name through sysfs is a Xilinx kernel feature");
    expect(error.fix).toContain('device-tree overlay');
  });

  it('never writes under a fixture root unless a writer is injected', async () => {
    const sys = await tempRoot({ ...MANAGER, '/lib/firmware/design.bit.bin': 'bits' });
    const error = await failure(loadBitstream(sys, 'fpga0', 'design.bit.bin'));
    expect(error.code).toBe('EAI_FPGA_WRITE_REFUSED');
    expect(await sys.readAttr('/sys/class/fpga_manager/fpga0/flags')).toBe('0');
    expect(await sys.readAttr('/sys/class/fpga_manager/fpga0/state')).toBe('unknown');
  });
});

describe('loadBitstream through dfx-mgr (xmutil)', () => {
  it('prefers `xmutil unloadapp` then `xmutil loadapp NAME` for an accelerated application', async () => {
    const sys = await tempRoot({ ...MANAGER, ...SMARTCAM_APP });
    const { runner, writes, commands } = kernel(sys);
    const load = await loadBitstream(sys, 'fpga0', 'kv260-smartcam', runner);
    expect(commands).toEqual([['xmutil', ['unloadapp']], ['xmutil', ['loadapp', 'kv260-smartcam']]]);
    expect(writes).toEqual([]);
    expect(load).toMatchObject({ method: 'xmutil', firmware: 'kv260-smartcam', actions: [['xmutil', 'unloadapp'], ['xmutil', 'loadapp kv260-smartcam']], state: { state: 'operating', ok: true } });
  });

  it("reports xmutil's own message when loadapp fails", async () => {
    const sys = await tempRoot({ ...MANAGER, ...SMARTCAM_APP });
    const error = await failure(loadBitstream(sys, 'fpga0', 'kv260-smartcam', kernel(sys, 'unknown', 'Error: kv260-smartcam: no such accel in /lib/firmware/xilinx\n').runner));
    expect(error.reason).toBe("loading 'kv260-smartcam' into fpga0 failed: its state is 'unknown' (the driver cannot tell whether the PL is programmed (normal before the first load after boot)); xmutil loadapp exited 1: Error: kv260-smartcam: no such accel in /lib/firmware/xilinx");
  });

  it('explains an app folder when xmutil is not installed', async () => {
    const { '/usr/bin/xmutil': _, ...noXmutil } = SMARTCAM_APP;
    const sys = await tempRoot({ ...MANAGER, ...noXmutil });
    const error = await failure(loadBitstream(sys, 'fpga0', 'kv260-smartcam', kernel(sys).runner));
    expect(error.code).toBe('EAI_FPGA_FIRMWARE_NOT_FOUND');
    expect(error.reason).toContain('is an accelerated-application folder (/lib/firmware/xilinx/kv260-smartcam), which dfx-mgr loads, and xmutil is not installed');
    expect(error.fix).toContain('sudo xmutil loadapp kv260-smartcam');
  });

  it('loads a plain bitstream through sysfs even with xmutil installed, noting that dfx-mgr will not know', async () => {
    const sys = await tempRoot({ ...MANAGER, ...SMARTCAM_APP, '/lib/firmware/design.bit.bin': 'bits' });
    const load = await loadBitstream(sys, 'fpga0', 'design.bit.bin', kernel(sys).runner);
    expect(load.method).toBe('sysfs');
    expect(load.notes).toEqual([expect.stringContaining('dfx-mgr (xmutil) is installed: it does not know about a bitstream loaded through sysfs')]);
  });
});

describe('fpgaManagerState', () => {
  it('reads the Kria KV260 manager as operating', async () => {
    expect(await fpgaManagerState(await fixtureRoot('kria-kv260'), 'fpga:fpga0')).toEqual({ manager: 'fpga0', state: 'operating', ok: true, meaning: 'the PL is programmed and running' });
  });

  it('says when there is no state to read', async () => {
    expect(await fpgaManagerState(await tempRoot({}), 'fpga0')).toEqual({ manager: 'fpga0', state: 'missing', ok: false, meaning: 'no readable /sys/class/fpga_manager/fpga0/state' });
  });

  it('reads the older underscore spellings the same, and names states it does not know', () => {
    expect(describeState('write_err')).toEqual(describeState('write error'));
    expect(describeState('firmware_request_err').meaning).toBe('the kernel could not read the bitstream from /lib/firmware (missing file, or no permission)');
    expect(describeState('frobnicating')).toEqual({ ok: false, meaning: "an FPGA manager state this driver does not know ('frobnicating')" });
  });
});
