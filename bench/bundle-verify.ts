/**
 * How fast does a bundle verify, against the fastest way to merely hash the same bytes?
 * A random model file (500 MB by default) is written to the OS temp folder and packed; then,
 * round by round with the order rotating, `openssl dgst -sha256` hashes the model file and
 * verifyBundle checks the bundle read from disk (envelope, signature, manifest, the file's
 * SHA-256, tar structure):
 *   - from `fileSource` (1 MiB reads on libuv's threads into a ring of three reused buffers, the
 *     next read under way while the current chunk is hashed) with no sink: the default, held to
 *     the goal;
 *   - from `fileSource({ sync: true })` (256 KiB readSync on this thread), no sink: what a CLI can use;
 *   - from `fileSource` with a sink that reads every byte (as extraction does, minus the writes):
 *     chunks handed to a sink are copies, so this pays one allocation and copy per MiB;
 *   - from `fs.createReadStream` (a fresh buffer per 64 KiB chunk) with no sink, for context.
 * Both sides read from the page cache (the files were just written), so this is the verifier's
 * own cost, not the disk's. Prints the ratio of medians (openssl time / verify time: 1.0 means
 * as fast as openssl) and the peak RSS growth while verifying, sampled every 5 ms. Deletes its
 * temp files.
 *
 * Goals (issue 6): ratio >= 0.9 (no sink); peak RSS growth < 100 MB.
 * Run: node dist/bench/bundle-verify.js [--size-mb N] [--rounds N] [--json]
 */
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { packBundle, verifyBundle, type FileSink } from '../models/bundle/bundle.js';
import { fileSource } from '../models/bundle/tar.js';
import { generateSigningKey } from '../models/keys.js';
import { median, round } from './stats.js';

const args = process.argv.slice(2);
const arg = (name: string, fallback: number): number => Number(args[args.indexOf(name) + 1] ?? 0) || fallback;
const sizeMb = args.includes('--size-mb') ? arg('--size-mb', 500) : 500;
const rounds = args.includes('--rounds') ? arg('--rounds', 3) : 3;
const GOAL_RATIO = 0.9;
const GOAL_RSS_MB = 100;

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aios-bench-bundle-'));
try {
  const model = path.join(dir, 'model.bin');
  const bundleFile = path.join(dir, 'model.bundle');
  await writeRandom(model, sizeMb * 1e6);
  const key = generateSigningKey();
  const tPack = performance.now();
  await packBundle(
    {
      metadata: { name: 'bench', version: '1.0.0', format: 'onnx', entry: 'model.bin', inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'bench' },
      files: [{ path: 'model.bin', source: model }],
      keys: [key],
    },
    createWriteStream(bundleFile),
  );
  const packMs = performance.now() - tPack;
  spawnSync('sync'); // no write-back of the fresh 1 GB competing with the measurements
  const policy = { keys: [{ keyid: key.keyid, publicKey: key.publicKey }], threshold: 1 };
  const drain: FileSink = async (_file, content) => {
    for await (const _ of content) void _;
  };

  const openssl = (): number => {
    const t0 = performance.now();
    const r = spawnSync('openssl', ['dgst', '-sha256', model], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl dgst failed: ${r.stderr}`);
    return performance.now() - t0;
  };
  const verify = async (onFile?: FileSink, source: 'file' | 'sync' | 'stream' = 'file'): Promise<{ ms: number; peakRss: number }> => {
    const before = process.memoryUsage.rss();
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 5);
    const t0 = performance.now();
    await verifyBundle(source === 'stream' ? createReadStream(bundleFile) : fileSource(bundleFile, { sync: source === 'sync' }), policy, onFile === undefined ? {} : { onFile });
    const ms = performance.now() - t0;
    clearInterval(sampler);
    return { ms, peakRss: Math.max(peak, process.memoryUsage.rss()) - before };
  };

  const baselineRss = process.memoryUsage.rss();
  const times = { openssl: [] as number[], verify: [] as number[], verifySync: [] as number[], verifySink: [] as number[], verifyStream: [] as number[] };
  let peakRss = 0;
  await verify(); // warm-up: JIT, page cache
  for (let i = 0; i < rounds; i++) {
    const sides: (() => Promise<void>)[] = [
      async () => void times.openssl.push(openssl()),
      async () => {
        const r = await verify();
        times.verify.push(r.ms);
        peakRss = Math.max(peakRss, r.peakRss);
      },
      async () => {
        const r = await verify(drain);
        times.verifySink.push(r.ms);
        peakRss = Math.max(peakRss, r.peakRss);
      },
      async () => {
        const r = await verify(undefined, 'sync');
        times.verifySync.push(r.ms);
        peakRss = Math.max(peakRss, r.peakRss);
      },
      async () => {
        const r = await verify(undefined, 'stream');
        times.verifyStream.push(r.ms);
        peakRss = Math.max(peakRss, r.peakRss);
      },
    ];
    // Rotate which side goes first so none always runs on a warmer cache.
    for (let k = 0; k < sides.length; k++) await (sides[(i + k) % sides.length] as () => Promise<void>)();
  }
  const mOpenssl = median(times.openssl);
  const mVerify = median(times.verify);
  const mSink = median(times.verifySink);
  const mStream = median(times.verifyStream);
  const mSync = median(times.verifySync);
  const result = {
    sizeMb,
    rounds,
    node: process.version,
    cpus: os.cpus().length,
    packMs: round(packMs),
    opensslMedianMs: round(mOpenssl),
    verifyMedianMs: round(mVerify),
    verifySyncMedianMs: round(mSync),
    verifySinkMedianMs: round(mSink),
    verifyStreamMedianMs: round(mStream),
    opensslMBps: round(sizeMb / (mOpenssl / 1000), 1),
    verifyMBps: round(sizeMb / (mVerify / 1000), 1),
    ratio: round(mOpenssl / mVerify),
    syncRatio: round(mOpenssl / mSync),
    sinkRatio: round(mOpenssl / mSink),
    streamRatio: round(mOpenssl / mStream),
    goalRatio: GOAL_RATIO,
    ratioMet: mOpenssl / mVerify >= GOAL_RATIO,
    peakRssGrowthMb: round(peakRss / 1e6, 1),
    rssAtStartMb: round(baselineRss / 1e6, 1),
    goalRssMb: GOAL_RSS_MB,
    rssMet: peakRss / 1e6 < GOAL_RSS_MB,
  };
  if (args.includes('--json')) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } else {
    console.log(`verifyBundle vs openssl dgst -sha256, ${sizeMb} MB model, ${rounds} interleaved rounds, node ${process.version}, ${result.cpus} CPUs (pack took ${result.packMs} ms)`);
    console.log(`openssl dgst                   ${result.opensslMedianMs.toFixed(0).padStart(6)} ms  ${result.opensslMBps.toFixed(0).padStart(5)} MB/s`);
    console.log(`verify, fileSource, no sink    ${result.verifyMedianMs.toFixed(0).padStart(6)} ms  ${result.verifyMBps.toFixed(0).padStart(5)} MB/s  ratio ${result.ratio.toFixed(3)}x  (goal >= ${GOAL_RATIO}: ${result.ratioMet ? 'met' : 'NOT met'})`);
    console.log(`verify, fileSource sync        ${result.verifySyncMedianMs.toFixed(0).padStart(6)} ms  ratio ${result.syncRatio.toFixed(3)}x`);
    console.log(`verify, fileSource, sink       ${result.verifySinkMedianMs.toFixed(0).padStart(6)} ms  ratio ${result.sinkRatio.toFixed(3)}x`);
    console.log(`verify, createReadStream       ${result.verifyStreamMedianMs.toFixed(0).padStart(6)} ms  ratio ${result.streamRatio.toFixed(3)}x`);
    console.log(`peak RSS growth while verifying: ${result.peakRssGrowthMb} MB  (goal < ${GOAL_RSS_MB} MB: ${result.rssMet ? 'met' : 'NOT met'})`);
  }
} finally {
  await fs.rm(dir, { recursive: true, force: true });
}

/** `bytes` of random data, written in 16 MB pieces (never held whole). */
async function writeRandom(file: string, bytes: number): Promise<void> {
  const out = createWriteStream(file);
  const piece = Buffer.alloc(16 * 1024 * 1024);
  for (let left = bytes; left > 0; left -= piece.length) {
    randomFillSync(piece);
    const part = left >= piece.length ? piece : piece.subarray(0, left);
    if (!out.write(Buffer.from(part))) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
}
