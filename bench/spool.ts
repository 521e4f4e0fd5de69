/**
 * What does the device agent's spool cost? 1 KiB records (topic of 32 bytes) appended to a spool
 * in the OS temp folder, for each fsync mode:
 *   - `1 in flight`: each append awaited before the next (what a caller that waits sees), against
 *     the honest baseline: the same bytes appended to a plain file with `FileHandle.write`, awaited
 *     one by one, fdatasynced the same way (after each write for 'always', every interval for
 *     'interval', never for 'never'). `vs raw` is the spool's rate over the baseline's.
 *   - `64 in flight`: 64 appends outstanding (a busy agent), where the spool batches frames into
 *     one writev (and one fdatasync for 'always').
 * Then the load the task names: 1,000 appends/s paced for the run time with fsync 'interval',
 * reported as CPU time per second of wall time (the spool's cost on the agent's core), against a
 * plain FileHandle.write of the same frame paced the same way; the pacing loop's own CPU, measured
 * alone, is subtracted from both (three rounds each, order rotating, medians).
 * Then replay: a spool of 64 MiB is closed and reopened (recovery reads and checks every frame:
 * `open`), and replayed to the end with an ack per record, against reading the same segment files
 * with `fs.readFile` (the floor). All reads hit the page cache, so they are the spool's own cost.
 * Numbers depend on the disk under the temp folder (printed); fsync rates are the disk's.
 *
 * Run: node dist/bench/spool.js [--seconds S] [--replay-mb N] [--json]
 */
import { randomFillSync } from 'node:crypto';
import { open, readdir, readFile, rm, mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Spool, type FsyncMode } from '../deploy/fleet/spool.js';
import { median, round } from './stats.js';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(name);
  const v = i >= 0 ? Number(args[i + 1]) : Number.NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
};
const seconds = flag('--seconds', 1.5);
const replayMb = flag('--replay-mb', 64);
const RECORD = 1024;
const TOPIC = 'aios/fleet-a/dev/0042/telemetry/x';
const INTERVAL_MS = 1000;
const MODES: readonly FsyncMode[] = ['always', 'interval', 'never'];

const root = await mkdtemp(path.join(os.tmpdir(), 'aios-bench-spool-'));
const payload = randomFillSync(Buffer.alloc(RECORD));
let dirs = 0;
const nextDir = (): string => path.join(root, `d${dirs++}`);

interface Rate {
  readonly perSecond: number;
  readonly mbPerSecond: number;
}
const rate = (count: number, bytes: number, ms: number): Rate => ({ perSecond: round((count * 1000) / ms, 0), mbPerSecond: round((bytes * 1000) / ms / 1e6, 2) });

/** Appends for `seconds` with `inFlight` outstanding; returns the rate of appended payload bytes. */
async function spoolAppends(fsync: FsyncMode, inFlight: number): Promise<Rate> {
  const spool = await Spool.open(nextDir(), { maxBytes: 1 << 30, fsync, fsyncIntervalMs: INTERVAL_MS });
  const end = performance.now() + seconds * 1000;
  let count = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < end) {
        await spool.append(payload, { topic: TOPIC, qos: 1 });
        count += 1;
      }
    }),
  );
  const ms = performance.now() - started;
  await spool.close();
  return rate(count, count * RECORD, ms);
}

/** The baseline: the same frame-sized writes to a plain file, awaited one by one, synced like `fsync`. */
async function rawAppends(fsync: FsyncMode): Promise<Rate> {
  const file = path.join(root, `raw-${fsync}`);
  const handle = await open(file, 'w', 0o600);
  const frame = Buffer.alloc(RECORD + 20 + TOPIC.length, 1);
  let lastSync = performance.now();
  let count = 0;
  const started = performance.now();
  const end = started + seconds * 1000;
  for (let now = started; now < end; now = performance.now()) {
    await handle.write(frame);
    count += 1;
    if (fsync === 'always' || (fsync === 'interval' && now - lastSync >= INTERVAL_MS)) {
      await handle.datasync();
      lastSync = now;
    }
  }
  const ms = performance.now() - started;
  await handle.close();
  await rm(file);
  return rate(count, count * RECORD, ms);
}

/** CPU ms per second of wall time while `append` is called 1,000 times a second for `seconds`. */
async function paced(append: () => Promise<unknown>): Promise<number> {
  const total = Math.round(seconds * 1000);
  const cpu = process.cpuUsage();
  const started = performance.now();
  const pending: Promise<unknown>[] = [];
  for (let i = 0; i < total; i++) {
    const wait = started + i - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    pending.push(append());
  }
  await Promise.all(pending);
  const ms = performance.now() - started;
  const used = process.cpuUsage(cpu);
  return ((used.user + used.system) / 1000) * (1000 / ms);
}

/**
 * 1,000 appends/s with fsync 'interval': the spool's CPU per second, less the pacing loop's own
 * (timers, measured alone), against a plain FileHandle.write paced the same way.
 */
async function pacedCpu(): Promise<{ idleMsPerSecond: number; spoolMsPerSecond: number; rawMsPerSecond: number; vsRaw: number }> {
  const spool = await Spool.open(nextDir(), { maxBytes: 1 << 30, fsync: 'interval', fsyncIntervalMs: INTERVAL_MS });
  const file = path.join(root, 'raw-paced');
  const handle = await open(file, 'w', 0o600);
  const frame = Buffer.alloc(RECORD + 20 + TOPIC.length, 1);
  const append = (): Promise<number> => spool.append(payload, { topic: TOPIC, qos: 1 });
  const write = (): Promise<unknown> => handle.write(frame);
  // Warm-up, so neither side pays the JIT inside the window; then rounds in rotating order, medians.
  for (let i = 0; i < 2000; i++) await Promise.all([append(), write()]);
  const ways = [async () => undefined, append, write];
  const samples: number[][] = [[], [], []];
  for (let r = 0; r < 3; r++) {
    for (let i = 0; i < ways.length; i++) {
      const w = (i + r) % ways.length;
      samples[w]?.push(await paced(ways[w] as () => Promise<unknown>));
    }
  }
  const [idle, spoolMs, rawMs] = samples.map((xs, i) => median(xs) - (i === 0 ? 0 : median(samples[0] ?? []))) as [number, number, number];
  await spool.close();
  await handle.close();
  await rm(file);
  return { idleMsPerSecond: round(idle, 1), spoolMsPerSecond: round(spoolMs, 1), rawMsPerSecond: round(rawMs, 1), vsRaw: round(spoolMs / rawMs, 2) };
}

async function replay(): Promise<{ records: number; openMs: number; replay: Rate; readFile: Rate; vsReadFile: number }> {
  const dir = nextDir();
  const records = Math.floor((replayMb * 1e6) / RECORD);
  let spool = await Spool.open(dir, { maxBytes: 1 << 30, fsync: 'never' });
  for (let i = 0; i < records; i += 256) await Promise.all(Array.from({ length: Math.min(256, records - i) }, () => spool.append(payload, { topic: TOPIC })));
  await spool.close();
  let started = performance.now();
  spool = await Spool.open(dir, { maxBytes: 1 << 30, fsync: 'never' });
  const openMs = performance.now() - started;
  started = performance.now();
  let seen = 0;
  let bytes = 0;
  for await (const r of spool.replay({ batch: 512 })) {
    seen += 1;
    bytes += r.payload.length;
    spool.ack(r.seq);
  }
  const replayRate = rate(seen, bytes, performance.now() - started);
  await spool.close();
  if (seen !== records) throw new Error(`replayed ${seen} of ${records} records`);
  // The floor: the segment files read whole (acked ones are deleted at close, so rebuild a copy first).
  const floorDir = nextDir();
  spool = await Spool.open(floorDir, { maxBytes: 1 << 30, fsync: 'never' });
  for (let i = 0; i < records; i += 256) await Promise.all(Array.from({ length: Math.min(256, records - i) }, () => spool.append(payload, { topic: TOPIC })));
  await spool.close();
  const files = (await readdir(floorDir)).filter((f) => f.endsWith('.seg'));
  started = performance.now();
  let total = 0;
  for (const f of files) total += (await readFile(path.join(floorDir, f))).length;
  const floor = rate(records, total, performance.now() - started);
  return { records, openMs: round(openMs, 1), replay: replayRate, readFile: floor, vsReadFile: round(replayRate.mbPerSecond / floor.mbPerSecond, 3) };
}

const rows: { fsync: FsyncMode; inFlight: number; spool: Rate; raw?: Rate; vsRaw?: number }[] = [];
try {
  for (const fsync of MODES) {
    const raw = await rawAppends(fsync);
    const one = await spoolAppends(fsync, 1);
    rows.push({ fsync, inFlight: 1, spool: one, raw, vsRaw: round(one.perSecond / raw.perSecond, 2) });
    rows.push({ fsync, inFlight: 64, spool: await spoolAppends(fsync, 64) });
  }
  const cpu = await pacedCpu();
  const replayed = await replay();
  if (args.includes('--json')) {
    process.stdout.write(`${JSON.stringify({ node: process.version, tmp: os.tmpdir(), recordBytes: RECORD, seconds, appends: rows, paced1000PerSecond: cpu, replay: replayed }, null, 2)}\n`);
  } else {
    console.log(`spool, 1 KiB records, ${seconds} s per row, temp folder ${os.tmpdir()}, node ${process.version}`);
    console.log(`${'fsync'.padEnd(9)} ${'in flight'.padStart(9)} ${'appends/s'.padStart(10)} ${'MB/s'.padStart(8)} ${'raw/s'.padStart(9)} ${'raw MB/s'.padStart(9)} ${'vs raw'.padStart(7)}`);
    for (const r of rows) {
      const raw = r.raw === undefined ? ''.padStart(9 + 1 + 9 + 1 + 7) : `${String(r.raw.perSecond).padStart(9)} ${r.raw.mbPerSecond.toFixed(2).padStart(9)} ${`${(r.vsRaw ?? 0).toFixed(2)}x`.padStart(7)}`;
      console.log(`${r.fsync.padEnd(9)} ${String(r.inFlight).padStart(9)} ${String(r.spool.perSecond).padStart(10)} ${r.spool.mbPerSecond.toFixed(2).padStart(8)} ${raw}`);
    }
    console.log(`1,000 appends/s paced, fsync 'interval': ${cpu.spoolMsPerSecond} ms CPU per second (${round(cpu.spoolMsPerSecond, 0)} µs per append); plain FileHandle.write paced alike ${cpu.rawMsPerSecond} ms (spool ${cpu.vsRaw}x of it); the pacing loop alone ${cpu.idleMsPerSecond} ms, subtracted from both`);
    console.log(`replay of ${replayed.records} records (${replayMb} MB): open ${replayed.openMs} ms; replay + ack ${replayed.replay.perSecond} records/s, ${replayed.replay.mbPerSecond} MB/s; readFile of the segments ${replayed.readFile.mbPerSecond} MB/s (replay at ${replayed.vsReadFile}x of it)`);
  }
} finally {
  await rm(root, { recursive: true, force: true });
}
