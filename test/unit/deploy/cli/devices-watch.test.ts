import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../../../deploy/cli/program.js';
import type { DeviceTelemetry } from '../../../../drivers/hal/types.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const sysroot = (name: string): string => path.join(repo, 'test/fixtures/sysroots', name);
const MIB = 1024 * 1024;

/** Runs the CLI in-process and captures what it prints; `onWrite` sees each stdout chunk as it comes. */
async function aios(argv: string[], onWrite?: (chunk: string) => void): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const out = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stdout += String(chunk);
    onWrite?.(String(chunk));
    return true;
  });
  const err = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stderr += String(chunk);
    return true;
  });
  try {
    return { code: await main(argv), stdout, stderr };
  } finally {
    out.mockRestore();
    err.mockRestore();
  }
}

afterEach(() => vi.restoreAllMocks());

describe('aios devices --watch', () => {
  it('--count 2 --json prints two lines of JSON, one array of readings per round, without counters', async () => {
    const r = await aios(['devices', '--sysroot', sysroot('x86-rtx4090'), '--watch', '0.01', '--count', '2', '--json']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const lines = r.stdout.split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[2]).toBe('');
    for (const line of lines.slice(0, 2)) {
      const readings = JSON.parse(line) as DeviceTelemetry[];
      expect(readings.map((t) => t.deviceId)).toEqual(['cuda:0000:01:00.0', 'cpu:0']);
      expect(readings.every((t) => t.counters === undefined)).toBe(true);
      expect(readings[0]).toMatchObject({
        utilisation: 0.03,
        memoryUsedBytes: 1187 * MIB,
        memoryTotalBytes: 24564 * MIB,
        temperatureC: 41,
        powerW: 31.27,
        clocksMHz: { sm: 210, mem: 405 },
        extra: { fanPercent: 0, pstate: 'P8' },
      });
      // A capture does not change between rounds, so the CPU load stays its since-boot value.
      expect(readings[1]).toMatchObject({ utilisation: 0.0662, memoryTotalBytes: 65568852 * 1024 });
    }
  });

  it('draws a table per round: utilisation, memory, temperature, power, clocks, and notes under it', async () => {
    const r = await aios(['devices', '--sysroot', sysroot('x86-server'), '--watch', '0.01', '--count', '2']);
    expect(r.code).toBe(0);
    const rounds = r.stdout.split(/\n(?=\d{4}-\d\d-\d\d )/u);
    expect(rounds).toHaveLength(2);
    expect(r.stdout).not.toContain('\x1b['); // not a terminal: no screen clearing in a log
    expect(rounds[0]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  .*x86-server  every 0\.01 s  \(Ctrl-C stops\)\n\nID\s+UTIL%\s+MEM USED\/TOTAL\s+TEMP°C\s+POWER W\s+CLOCKS MHz\n/u);
    expect(rounds[0]).toMatch(/\ncpu:0\s+9\.0\s+18\.4 GiB \/ 1006\.9 GiB\s+44\.0\s+-\s+cpu 800-3800\n/u);
    // The second round has a previous reading, so RAPL energy becomes power (0 W: the capture is static).
    expect(rounds[1]).toMatch(/\ncpu:0\s+9\.0\s+18\.4 GiB \/ 1006\.9 GiB\s+44\.0\s+0\.0\s+cpu 800-3800\n/u);

    const coral = await aios(['devices', '--sysroot', sysroot('rpi5-coral-usb'), '--watch', '1', '--count', '1']);
    expect(coral.stdout).toMatch(/\nedgetpu:usb-2-1\s+-\s+-\s+-\s+-\s+-\n/u);
    expect(coral.stdout).toMatch(/\nedgetpu:usb-2-1: the Coral USB Accelerator reports no temperature, load or power to the host/u);
  });

  it('--watch without seconds defaults to 2 s (a single --count 1 round does not wait)', async () => {
    const t0 = Date.now();
    const r = await aios(['devices', '--sysroot', sysroot('kria-kv260'), '--watch', '--count', '1']);
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(r.stdout).toContain('every 2 s');
    expect(r.stdout).toMatch(/\nfpga:fpga0\s+-\s+9\.1 MiB \/ 1008\.0 MiB\s+44\.5\s+4\.8\s+-\n/u);
  });

  it('stops cleanly on SIGINT (Ctrl-C) with exit status 0', async () => {
    let rounds = 0;
    const listeners = process.listenerCount('SIGINT');
    const r = await aios(['devices', '--sysroot', sysroot('x86-h200-server'), '--watch', '30', '--json'], () => {
      rounds++;
      // Ctrl-C while the watcher waits 30 s for the next round.
      setImmediate(() => process.emit('SIGINT', 'SIGINT'));
    });
    expect(r.code).toBe(0);
    expect(rounds).toBe(1);
    const [gpu] = JSON.parse(r.stdout) as DeviceTelemetry[];
    expect(gpu).toMatchObject({ deviceId: 'cuda:0000:00:06.0', temperatureC: 37, powerW: 79.94, clocksMHz: { sm: 345, mem: 3201 } });
    expect(process.listenerCount('SIGINT')).toBe(listeners); // its handler is gone again
  });

  const usage: [string, string[], RegExp][] = [
    ['--count without --watch', ['--count', '2'], /^error EAI_CLI_USAGE: --count limits the readings of --watch; add --watch/u],
    ['zero seconds', ['--watch', '0'], /^error EAI_CLI_USAGE: --watch takes a number of seconds above 0 \(default 2\), got '0'/u],
    ['a count that is not a number', ['--watch', '1', '--count', 'many'], /^error EAI_CLI_USAGE: --count must be a positive integer, got 'many'/u],
  ];
  for (const [label, args, message] of usage) {
    it(`${label} is a usage error (exit 2)`, async () => {
      const r = await aios(['devices', '--sysroot', sysroot('x86-server'), ...args]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stdout).toBe('');
    });
  }
});
