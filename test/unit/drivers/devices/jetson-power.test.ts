import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  LOCAL_POWER_CONTROL, parseJetsonClocksShow, parseNvpmodelConf, parseNvpmodelQuery, parseNvpmodelStatus,
  PowerError, readPowerStatus, resolvePowerMode, setPowerMode, type PowerControl,
} from '../../../../drivers/devices/jetson-power.js';
import { AiosError } from '../../../../drivers/errors.js';
import type { SysRoot } from '../../../../drivers/hal/sysroot.js';
import { fixtureRoot, SYSROOTS, tempRoot } from '../../../support/sysroots.js';

const conf = (root: string): string => readFileSync(path.join(SYSROOTS, root, 'etc/nvpmodel.conf'), 'utf8');
const ORIN_MODES = [{ id: 0, name: 'MAXN' }, { id: 1, name: '10W' }, { id: 2, name: '15W' }, { id: 3, name: '25W' }];

/** jetson_clocks --show of a Jetson Nano (jfey/SmallThings, jetson-nano.md), verbatim. */
const NANO_CLOCKS_SHOW = `SOC family:tegra210  Machine:jetson-nano
Online CPUs: 0-3
CPU Cluster Switching: Disabled
cpu0: Online=1 Governor=schedutil MinFreq=102000 MaxFreq=1428000 CurrentFreq=1428000 IdleStates: WFI=1 c7=1
cpu1: Online=1 Governor=schedutil MinFreq=102000 MaxFreq=1428000 CurrentFreq=1428000 IdleStates: WFI=1 c7=1
cpu2: Online=1 Governor=schedutil MinFreq=102000 MaxFreq=1428000 CurrentFreq=1428000 IdleStates: WFI=1 c7=1
cpu3: Online=1 Governor=schedutil MinFreq=102000 MaxFreq=1428000 CurrentFreq=1428000 IdleStates: WFI=1 c7=1
GPU MinFreq=76800000 MaxFreq=921600000 CurrentFreq=153600000
EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=0
Fan: speed=0
NV Power Mode: MAXN
`;
/** jetson_clocks.sh --show of a Jetson TX1 with clocks pinned (hordiales/jetson-tx1-dev, SCRIPTS.md), verbatim. */
const TX1_CLOCKS_SHOW = `SOC family:tegra210  Machine:jetson_tx1
Online CPUs: 0-3
CPU Cluster Switching: Disabled
cpu0: Gonvernor=interactive MinFreq=1734000 MaxFreq=1734000 CurrentFreq=1734000
GPU MinFreq=998400000 MaxFreq=998400000 CurrentFreq=998400000
EMC MinFreq=12750000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1
Fan: speed=255
`;

/** A control that records what it was asked to run and answers `reply`. */
function fakeControl(reply: { stdout?: string; stderr?: string; exitCode?: number } = {}, root = true) {
  const calls: { file: string; args: readonly string[]; input: string | undefined }[] = [];
  const control: PowerControl = {
    isRoot: () => root,
    run: async (file, args, input) => {
      calls.push({ file, args, input });
      return { stdout: reply.stdout ?? '', stderr: reply.stderr ?? '', exitCode: reply.exitCode ?? 0 };
    },
  };
  return { control, calls };
}

async function failure(promise: Promise<unknown>): Promise<PowerError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof PowerError) return error;
    throw error;
  }
  throw new Error('expected a PowerError');
}

describe('nvpmodel and jetson_clocks output', () => {
  it('reads the POWER_MODEL headers and the default of each board', () => {
    expect(parseNvpmodelConf(conf('jetson-orin-nx-jp6'))).toEqual({ modes: ORIN_MODES, defaultId: 2 });
    expect(parseNvpmodelConf(conf('jetson-nano-jp4'))).toEqual({ modes: [{ id: 0, name: 'MAXN' }, { id: 1, name: '5W' }], defaultId: 0 });
    const xavier = parseNvpmodelConf(conf('jetson-xavier-nx-jp5'));
    expect(xavier.modes.map((m) => `${m.id}:${m.name}`)).toEqual([
      '0:MODE_15W_2CORE', '1:MODE_15W_4CORE', '2:MODE_15W_6CORE', '3:MODE_10W_2CORE', '4:MODE_10W_4CORE',
      '5:MODE_10W_DESKTOP', '6:MODE_20W_2CORE', '7:MODE_20W_4CORE', '8:MODE_20W_6CORE',
    ]);
    expect(xavier.defaultId).toBe(2);
    expect(parseNvpmodelConf('')).toEqual({ modes: [] });
  });

  it('reads nvpmodel -q: the name line and the id after it, past warnings', () => {
    // Output as pasted on public Jetson Nano and Orin Nano boards.
    expect(parseNvpmodelQuery('NV Power Mode: 5W\n1\n')).toEqual({ name: '5W', id: 1 });
    expect(parseNvpmodelQuery('NV Power Mode: 25W\n1')).toEqual({ name: '25W', id: 1 });
    // A diagnostic line before the answer (this one is nvpmodel's, from OE4T/meta-tegra#1268).
    expect(parseNvpmodelQuery('NVPM ERROR: optMask is 1, no request for power mode\nNV Power Mode: MAXN\n0\n')).toEqual({ name: 'MAXN', id: 0 });
    expect(parseNvpmodelQuery('NV Power Mode: MAXN_SUPER\n')).toEqual({ name: 'MAXN_SUPER' });
    expect(parseNvpmodelQuery('sudo: a password is required\n')).toBeUndefined();
  });

  it('reads the mode id nvpmodel saves in /var/lib/nvpmodel/status', () => {
    expect(parseNvpmodelStatus('pmode:0002\n')).toBe(2);
    expect(parseNvpmodelStatus('pmode:0000 fmode:quiet\n')).toBe(0);
    expect(parseNvpmodelStatus('')).toBeUndefined();
  });

  it('reads the GPU line and power mode of jetson_clocks --show', () => {
    expect(parseJetsonClocksShow(NANO_CLOCKS_SHOW)).toEqual({ gpu: { minHz: 76800000, maxHz: 921600000, curHz: 153600000 }, powerMode: 'MAXN' });
    expect(parseJetsonClocksShow(TX1_CLOCKS_SHOW)).toEqual({ gpu: { minHz: 998400000, maxHz: 998400000, curHz: 998400000 } });
    expect(parseJetsonClocksShow('')).toEqual({});
  });
});

describe('readPowerStatus', () => {
  it('asks nvpmodel -q on the Orin NX and judges jetson_clocks from the GPU devfreq node', async () => {
    expect(await readPowerStatus(await fixtureRoot('jetson-orin-nx-jp6'))).toEqual({
      supported: true,
      current: { id: 2, name: '15W' },
      currentSource: 'nvpmodel -q',
      modes: ORIN_MODES,
      defaultId: 2,
      jetsonClocks: 'off',
      jetsonClocksSource: 'sysfs',
      gpuClocks: { node: '/sys/class/devfreq/17000000.gpu', curHz: 306000000, minHz: 306000000, maxHz: 612000000 },
    });
  });

  it('reads the status file instead when told not to run tools, or when nvpmodel -q fails', async () => {
    const nano = await readPowerStatus(await fixtureRoot('jetson-nano-jp4'), { query: false });
    expect(nano.current).toEqual({ id: 0, name: 'MAXN' });
    expect(nano.currentSource).toBe('/var/lib/nvpmodel/status');
    const failing = await tempRoot({
      'etc/nvpmodel.conf': conf('jetson-orin-nx-jp6'),
      'var/lib/nvpmodel/status': 'pmode:0003\n',
      '.commands.json': JSON.stringify({ 'nvpmodel -q': { stdout: '', exitCode: 255 } }),
    });
    expect((await readPowerStatus(failing)).current).toEqual({ id: 3, name: '25W' });
  });

  it('knows the mode id from the conf when nvpmodel -q prints only the name', async () => {
    const sys = await tempRoot({ 'etc/nvpmodel.conf': conf('jetson-orin-nx-jp6'), '.commands.json': JSON.stringify({ 'nvpmodel -q': 'NV Power Mode: 25W\n' }) });
    expect((await readPowerStatus(sys)).current).toEqual({ id: 3, name: '25W' });
  });

  it('falls back to jetson_clocks --show where sysfs has no GPU devfreq node', async () => {
    const sys = await tempRoot({ 'etc/nvpmodel.conf': conf('jetson-nano-jp4'), '.commands.json': JSON.stringify({ 'jetson_clocks --show': TX1_CLOCKS_SHOW }) });
    const status = await readPowerStatus(sys);
    expect(status.jetsonClocks).toBe('on');
    expect(status.jetsonClocksSource).toBe('jetson_clocks --show');
    expect(status.current).toBeUndefined();
  });

  it('says unsupported on a machine without nvpmodel', async () => {
    expect(await readPowerStatus(await fixtureRoot('x86-rtx4090'))).toEqual({ supported: false, modes: [], jetsonClocks: 'unknown' });
  });
});

describe('resolvePowerMode', () => {
  it('takes an id or a name in any case', () => {
    expect(resolvePowerMode(ORIN_MODES, '3')).toEqual({ id: 3, name: '25W' });
    expect(resolvePowerMode(ORIN_MODES, '15w')).toEqual({ id: 2, name: '15W' });
    expect(resolvePowerMode(ORIN_MODES, ' maxn ')).toEqual({ id: 0, name: 'MAXN' });
  });

  it('lists the board modes when the target is not one of them', () => {
    for (const target of ['7', '30W']) {
      let error: unknown;
      try {
        resolvePowerMode(ORIN_MODES, target);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(PowerError);
      expect(error).toBeInstanceOf(AiosError);
      expect((error as PowerError).code).toBe('EAI_POWER_UNKNOWN_MODE');
      expect((error as PowerError).message).toBe(`'${target}' is not a power mode of this board. Its modes are 0 MAXN, 1 10W, 2 15W, 3 25W: pass one of those ids or names.`);
    }
  });
});

describe('setPowerMode', () => {
  const orin = (): Promise<SysRoot> => fixtureRoot('jetson-orin-nx-jp6');

  it('runs nvpmodel -m <id>, answering NO to its reboot question, and reports the change', async () => {
    const { control, calls } = fakeControl({ stdout: '' });
    expect(await setPowerMode(await orin(), 'MAXN', control)).toEqual({
      previous: { id: 2, name: '15W' }, mode: { id: 0, name: 'MAXN' }, changed: true, rebootRequired: false, output: '',
    });
    expect(calls).toEqual([{ file: 'nvpmodel', args: ['-m', '0'], input: 'NO\n' }]);
  });

  it('reports rebootRequired when nvpmodel asks for a reboot', async () => {
    const { control } = fakeControl({ stdout: 'NVPM WARN: Reboot required for changing to this power mode: 0\n' });
    expect((await setPowerMode(await orin(), '0', control)).rebootRequired).toBe(true);
  });

  it('changes nothing when the board is already in that mode', async () => {
    const { control, calls } = fakeControl();
    expect(await setPowerMode(await orin(), '15W', control)).toEqual({ previous: { id: 2, name: '15W' }, mode: { id: 2, name: '15W' }, changed: false, rebootRequired: false, output: '' });
    expect(calls).toEqual([]);
  });

  it('refuses a captured root, a non-root user, an unknown mode and a non-Jetson, before running anything', async () => {
    expect((await failure(setPowerMode(await orin(), 'MAXN'))).code).toBe('EAI_POWER_NOT_LIVE');
    const user = fakeControl({}, false);
    const notRoot = await failure(setPowerMode(await orin(), 'MAXN', user.control));
    expect(notRoot.code).toBe('EAI_POWER_NOT_ROOT');
    expect(notRoot.message).toContain('sudo aios power --set MAXN');
    expect(user.calls).toEqual([]);
    expect((await failure(setPowerMode(await orin(), '40W', fakeControl().control))).code).toBe('EAI_POWER_UNKNOWN_MODE');
    expect((await failure(setPowerMode(await fixtureRoot('x86-rtx4090'), 'MAXN', fakeControl().control))).code).toBe('EAI_POWER_UNSUPPORTED');
  });

  it('fails with nvpmodel\'s own error line, and treats a missing nvpmodel as unsupported', async () => {
    // The error line as nvpmodel printed it on an Orin Nano 4GB (OE4T/meta-tegra#1268).
    const failed = await failure(setPowerMode(await orin(), '1', fakeControl({ stdout: 'NVPM ERROR: Error writing 2 to /sys/devices/gpu.0/fbp_pg_mask: 19\nNVPM ERROR: failed to set power mode!\n' }).control));
    expect(failed.code).toBe('EAI_POWER_SET_FAILED');
    expect(failed.message).toContain("'nvpmodel -m 1' failed (exit 0): NVPM ERROR: Error writing 2 to /sys/devices/gpu.0/fbp_pg_mask: 19");
    expect((await failure(setPowerMode(await orin(), '1', fakeControl({ exitCode: 1 }).control))).code).toBe('EAI_POWER_SET_FAILED');
    expect((await failure(setPowerMode(await orin(), '1', fakeControl({ exitCode: 127 }).control))).code).toBe('EAI_POWER_UNSUPPORTED');
  });
});

describe('LOCAL_POWER_CONTROL', () => {
  it('feeds stdin to the command and reports a missing binary as exit 127', async () => {
    expect(await LOCAL_POWER_CONTROL.run('cat', [], 'NO\n')).toEqual({ stdout: 'NO\n', stderr: '', exitCode: 0 });
    expect((await LOCAL_POWER_CONTROL.run('aios-no-such-tool', ['-m', '0'])).exitCode).toBe(127);
    expect(await LOCAL_POWER_CONTROL.run('sh', ['-c', 'echo oops >&2; exit 3'])).toEqual({ stdout: '', stderr: 'oops\n', exitCode: 3 });
    expect(LOCAL_POWER_CONTROL.isRoot()).toBe(process.getuid?.() === 0);
  });
});
