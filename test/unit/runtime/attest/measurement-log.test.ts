import { execFile } from 'node:child_process';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { extendPcr } from '../../../../drivers/tpm/pcr.js';
import { bytesDigest, runtimeDigest } from '../../../../runtime/attest/file-digest.js';
import { LOG_FORMAT, MeasurementLog, type MeasurementRegister } from '../../../../runtime/attest/measurement-log.js';
import { eventDigest, replayLog } from '../../../../runtime/attest/measurement.js';
import { SoftwarePcr } from '../../../../runtime/attest/software-pcr.js';

/**
 * The measurement log on its own, against the software PCR (a real file-backed register, the one
 * TPM-less devices use): the event encoding reproduced with coreutils, persistence across
 * restarts, crash recovery, reboot, and a PCR extended behind the log's back.
 */
const exec = promisify(execFile);
const sha = (s: string): string => bytesDigest(s);

describe('measurement log', () => {
  let dir: string;
  const file = (): string => path.join(dir, 'state', 'measurements.log');
  const pcr = (bootId = 'boot-1'): SoftwarePcr => new SoftwarePcr({ file: path.join(dir, 'state', 'software-pcr.json'), pcr: 23, bootId });

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'aios-attest-log-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('extends the digest of type, name and content, exactly as a shell computes it', async () => {
    const content = sha('model manifest');
    const { stdout } = await exec('bash', ['-c', `{ printf 'aios-measurement-v1\\0model-bundle\\0detector@1.2.0\\0'; printf '%s' ${content} | xxd -r -p; } | sha256sum`]);
    expect(eventDigest('model-bundle', 'detector@1.2.0', content).toString('hex')).toBe(stdout.slice(0, 64));
    // Relabelling the same content as another type or name gives another digest.
    expect(eventDigest('pipeline-config', 'detector@1.2.0', content)).not.toEqual(eventDigest('model-bundle', 'detector@1.2.0', content));
    expect(eventDigest('model-bundle', 'detector@1.2.1', content)).not.toEqual(eventDigest('model-bundle', 'detector@1.2.0', content));
    expect(() => eventDigest('model-bundle', 'a\0b', content)).toThrow(/NUL/u);
    expect(() => eventDigest('model-bundle', 'x', 'ABC')).toThrow(/64 lowercase hex/u);
    expect(() => eventDigest('firmware' as 'runtime', 'x', content)).toThrow(/not one of runtime/u);
  });

  it('persists across restarts within a boot, and replays to the register', async () => {
    const times = [new Date('2026-11-27T10:00:00Z'), new Date('2026-11-27T10:00:01Z')];
    const log = await MeasurementLog.open({ file: file(), register: pcr(), clock: () => times.shift() ?? new Date() });
    expect(log.recovery).toEqual({ reset: false, tornLine: false, unextendedDropped: undefined });
    await log.append('runtime', 'aios@0.1.0', sha('runtime'));
    const e = await log.append('trust-root', 'root.json v3', sha('root'));
    expect(e).toEqual({ pcr: 23, type: 'trust-root', name: 'root.json v3', sha256: sha('root'), time: '2026-11-27T10:00:01.000Z' });
    expect(await pcr().read()).toEqual(log.value);
    const lines = readFileSync(file(), 'utf8').split('\n');
    expect(JSON.parse(lines[0]!)).toEqual({ format: LOG_FORMAT, pcr: 23, bank: 'sha256' });
    expect(lines).toHaveLength(4); // header, two events, the final newline

    const again = await MeasurementLog.open({ file: file(), register: pcr() });
    expect(again.events.map((x) => x.name)).toEqual(['aios@0.1.0', 'root.json v3']);
    expect(again.value).toEqual(replayLog(again.events));
    await again.append('pipeline-config', '/etc/aios/front.yaml', sha('pipeline'));
    expect((await MeasurementLog.open({ file: file(), register: pcr() })).events).toHaveLength(3);
  });

  it('starts over after a reboot (the register back at zero)', async () => {
    const log = await MeasurementLog.open({ file: file(), register: pcr('boot-1') });
    await log.append('runtime', 'aios@0.1.0', sha('runtime'));
    const rebooted = await MeasurementLog.open({ file: file(), register: pcr('boot-2') });
    expect(rebooted.recovery.reset).toBe(true);
    expect(rebooted.events).toEqual([]);
    expect(readFileSync(file(), 'utf8').split('\n').filter(Boolean)).toHaveLength(1);
  });

  it('drops a torn last line (a crash mid-append) and an event appended but never extended', async () => {
    const log = await MeasurementLog.open({ file: file(), register: pcr() });
    await log.append('runtime', 'aios@0.1.0', sha('runtime'));
    appendFileSync(file(), '{"pcr":23,"type":"model-bun');
    const torn = await MeasurementLog.open({ file: file(), register: pcr() });
    expect(torn.recovery).toMatchObject({ tornLine: true, reset: false });
    expect(torn.events).toHaveLength(1);
    expect(readFileSync(file(), 'utf8').endsWith('\n')).toBe(true);

    // Write-ahead: the line is durable, then the crash comes before the extend.
    const unextended = { pcr: 23, type: 'model-bundle', name: 'detector@2', sha256: sha('m'), time: '2026-11-27T10:00:00.000Z' };
    appendFileSync(file(), `${JSON.stringify(unextended)}\n`);
    const recovered = await MeasurementLog.open({ file: file(), register: pcr() });
    expect(recovered.recovery.unextendedDropped).toEqual(unextended);
    expect(recovered.events).toHaveLength(1);
    await recovered.append('model-bundle', 'detector@2', sha('m'));
    expect((await MeasurementLog.open({ file: file(), register: pcr() })).events).toHaveLength(2);
  });

  it('cuts the line off again when the extend fails', async () => {
    const real = pcr();
    let failing = true;
    const flaky: MeasurementRegister = { pcr: 23, read: () => real.read(), extend: async (d) => (failing ? Promise.reject(new Error('TPM busy')) : real.extend(d)) };
    const log = await MeasurementLog.open({ file: file(), register: flaky });
    const before = readFileSync(file(), 'utf8');
    await expect(log.append('runtime', 'aios@0.1.0', sha('runtime'))).rejects.toThrow('TPM busy');
    expect(readFileSync(file(), 'utf8')).toBe(before);
    expect(log.events).toEqual([]);
    failing = false;
    await log.append('runtime', 'aios@0.1.0', sha('runtime'));
    expect((await MeasurementLog.open({ file: file(), register: real })).events).toHaveLength(1);
  });

  it('says so clearly when the PCR was extended behind its back, or the log edited', async () => {
    const log = await MeasurementLog.open({ file: file(), register: pcr() });
    await log.append('runtime', 'aios@0.1.0', sha('runtime'));
    await pcr().extend(Buffer.alloc(32, 7)); // someone else
    await pcr().extend(Buffer.alloc(32, 8));
    await expect(MeasurementLog.open({ file: file(), register: pcr() })).rejects.toMatchObject({ code: 'EAI_ATTEST_PCR_MISMATCH', message: expect.stringMatching(/something other than this runtime extended PCR 23.*tpm2_pcrreset 23/su) });

    rmSync(path.join(dir, 'state'), { recursive: true });
    const fresh = await MeasurementLog.open({ file: file(), register: pcr() });
    await fresh.append('runtime', 'aios@0.1.0', sha('runtime'));
    await fresh.append('trust-root', 'root', sha('root'));
    const lines = readFileSync(file(), 'utf8').split('\n');
    writeFileSync(file(), [lines[0], '{not json', lines[2], ''].join('\n'));
    await expect(MeasurementLog.open({ file: file(), register: pcr() })).rejects.toMatchObject({ code: 'EAI_ATTEST_LOG_CORRUPT', message: expect.stringMatching(/line 2 is not a JSON object/u) });
    writeFileSync(file(), [lines[0], lines[2], lines[1], ''].join('\n')); // reordered: both lines valid
    await expect(MeasurementLog.open({ file: file(), register: pcr() })).rejects.toMatchObject({ code: 'EAI_ATTEST_PCR_MISMATCH' });
    // A register with no log at all is just as unexplained.
    rmSync(file());
    await expect(MeasurementLog.open({ file: file(), register: pcr() })).rejects.toMatchObject({ code: 'EAI_ATTEST_PCR_MISMATCH' });
  });

  it('the software PCR follows the TPM extend rule and resets with the boot id', async () => {
    const p = pcr();
    const d = Buffer.alloc(32, 1);
    await p.extend(d);
    expect(await p.read()).toEqual(extendPcr('sha256', Buffer.alloc(32), d));
    expect(await pcr('boot-2').read()).toEqual(Buffer.alloc(32));
  });
});

describe('runtime digest', () => {
  it('equals `find | LC_ALL=C sort | xargs sha256sum | sha256sum` over the package files', async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), 'aios-attest-rt-'));
    try {
      mkdirSync(path.join(root, 'dist', 'runtime', 'Zed'), { recursive: true });
      writeFileSync(path.join(root, 'package.json'), '{"name":"aios"}');
      writeFileSync(path.join(root, 'dist', 'index.js'), 'export {};\n');
      writeFileSync(path.join(root, 'dist', 'runtime', 'a.js'), 'a');
      writeFileSync(path.join(root, 'dist', 'runtime', 'Zed', 'b.js'), 'b');
      writeFileSync(path.join(root, 'dist', 'runtime', 'é.js'), 'accent');
      const { stdout } = await exec('bash', ['-c', 'find package.json dist -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum'], { cwd: root });
      const d = await runtimeDigest({ root, include: ['package.json', 'dist'] });
      expect(d.sha256).toBe(stdout.slice(0, 64));
      expect(d.files).toBe(5);
      writeFileSync(path.join(root, 'dist', 'runtime', 'a.js'), 'A');
      expect((await runtimeDigest({ root, include: ['package.json', 'dist'] })).sha256).not.toBe(d.sha256);
      await expect(runtimeDigest({ root, include: ['lib'] })).rejects.toMatchObject({ code: 'EAI_ATTEST_ARGUMENT' });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('covers this source tree by default', async () => {
    const d = await runtimeDigest();
    expect(d.listing).toMatch(/ {2}runtime\/attest\/measurement\.ts\n/u);
    expect(d.listing).not.toMatch(/node_modules/u);
  });
});
