/**
 * What does attestation cost a device and the controller? Against a software TPM (swtpm, started
 * here in socket mode with a fresh state folder, powered on and started, removed afterwards):
 *   - per device: `TpmAttester.evidence(nonce)` (TPM2_Quote through tpm2_quote, the PCR check)
 *     and `verifyEvidence` of the result, one round after another with a fresh nonce (median and
 *     p95 over --quotes rounds), against the honest baseline: the bare `tpm2_quote` command over
 *     the same PCR selection, run as a process the same number of times, interleaved;
 *   - verifier throughput on this one thread, from the recorded evidence (JSON text as it would
 *     arrive): decodeEvidence + verifyEvidence per quote, for --seconds, with the registered AK
 *     bytes held by the caller (decoded once per device, as a controller caching its device rows
 *     does) and fresh per call (a copy per verification: the AK decoded every time); against the
 *     floor of the job, node:crypto's ECDSA P-256 verify of the same TPMS_ATTEST bytes alone, and
 *     against `tpm2_checkquote`, one process per quote (what a shell-script verifier pays).
 * The device's log holds a realistic 10 events (runtime, trust root, 3 pipelines, 5 bundles).
 * Goal (issue 8): one controller verifies >= 10,000 devices every 60 s (167 quotes/s).
 *
 * Run: node dist/bench/attest.js [--quotes N] [--seconds S] [--json]
 */
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes, verify as cryptoVerify } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { decodeSignature } from '../drivers/tpm/signature.js';
import { Tpm } from '../drivers/tpm/tpm.js';
import { RUNTIME_MEASUREMENT_NAME } from '../runtime/attest/attester.js';
import { decodeEvidence, encodeEvidence } from '../runtime/attest/evidence.js';
import type { Policy } from '../runtime/attest/policy.js';
import { TpmAttester } from '../runtime/attest/tpm-attester.js';
import { verifyEvidence } from '../runtime/attest/verify.js';
import { accepts, findBinary, freePort } from './local-services.js';
import { median, round } from './stats.js';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(name);
  const v = i >= 0 ? Number(args[i + 1]) : Number.NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
};
const quotes = flag('--quotes', 50);
const seconds = flag('--seconds', 3);
const GOAL_PER_S = 10_000 / 60;
const exec = promisify(execFile);

for (const tool of ['swtpm', 'swtpm_ioctl', 'tpm2_startup', 'tpm2_quote', 'tpm2_checkquote']) {
  if (findBinary(tool) === undefined) {
    console.error(`${tool} not found: apt install swtpm swtpm-tools tpm2-tools`);
    process.exit(2);
  }
}

const work = await mkdtemp(path.join(os.tmpdir(), 'aios-bench-attest-'));
const swtpm = await startSwtpm(work);
try {
  const tpm = new Tpm({ tcti: swtpm.tcti });
  await tpm.endorsementKey();
  const ak = await tpm.attestationKey();
  const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
  const items = {
    runtime: [sha('runtime')],
    root: [sha('root')],
    pipelines: [0, 1, 2].map((i) => sha(`pipeline ${i}`)),
    bundles: [0, 1, 2, 3, 4].map((i) => sha(`bundle ${i}`)),
  };
  const policy: Policy = { requireTpm: true, maxAgeMs: 60_000, allowedRuntimeDigests: items.runtime, allowedTrustRootDigests: items.root, allowedPipelineConfigs: items.pipelines, expectedModelBundles: items.bundles };
  await tool(swtpm.tcti, 'tpm2_pcrreset', ['23']);
  const attester = await TpmAttester.open({ tpm, stateDir: path.join(work, 'state'), ak });
  await attester.measure('runtime', RUNTIME_MEASUREMENT_NAME, items.runtime[0]!);
  await attester.measure('trust-root', 'trust-root v1', items.root[0]!);
  for (const [i, d] of items.pipelines.entries()) await attester.measure('pipeline-config', `/etc/aios/pipelines/p${i}.yaml`, d);
  for (const [i, d] of items.bundles.entries()) await attester.measure('model-bundle', `model-${i}@1.0.0`, d);

  // 1. Per device: evidence + verify, interleaved with bare tpm2_quote.
  const device = { akPublic: ak.publicBytes };
  const t = { evidence: [] as number[], verify: [] as number[], total: [] as number[], tpm2Quote: [] as number[] };
  const recorded: { json: string; nonce: Buffer }[] = [];
  const handle = `0x${ak.handle.toString(16)}`;
  await attester.evidence(randomBytes(32)); // warm-up
  for (let i = 0; i < quotes; i++) {
    const nonce = randomBytes(32);
    const t0 = performance.now();
    const evidence = await attester.evidence(nonce);
    const t1 = performance.now();
    const result = verifyEvidence({ evidence, device, challenge: { nonce, issuedAt: Date.now() }, policy });
    const t2 = performance.now();
    if (result.status !== 'trusted') throw new Error(`bench evidence not trusted: ${JSON.stringify(result.reasons)}`);
    t.evidence.push(t1 - t0);
    t.verify.push(t2 - t1);
    t.total.push(t2 - t0);
    recorded.push({ json: encodeEvidence(evidence), nonce });
    const t3 = performance.now();
    await tool(swtpm.tcti, 'tpm2_quote', ['-c', handle, '-l', 'sha256:23', '-q', randomBytes(32).toString('hex'), '-m', path.join(work, 'q.attest'), '-s', path.join(work, 'q.sig'), '-o', path.join(work, 'q.pcrs'), '-F', 'values']);
    t.tpm2Quote.push(performance.now() - t3);
  }

  // 2. Verifier throughput on one thread, from the recorded JSON.
  const rate = (fn: (i: number) => void): number => {
    for (let i = 0; i < 200; i++) fn(i); // warm-up: JIT
    let n = 0;
    const end = performance.now() + seconds * 1000;
    const t0 = performance.now();
    while (performance.now() < end) {
      for (let k = 0; k < 50; k++) fn(n++);
    }
    return n / ((performance.now() - t0) / 1000);
  };
  const verifyRecorded = (akPublic: () => Uint8Array) => (i: number): void => {
    const r = recorded[i % recorded.length]!;
    const result = verifyEvidence({ evidence: decodeEvidence(r.json), device: { akPublic: akPublic() }, challenge: { nonce: r.nonce, issuedAt: Date.now() }, policy });
    if (result.status !== 'trusted') throw new Error('recorded evidence not trusted');
  };
  const cachedRate = rate(verifyRecorded(() => device.akPublic));
  const freshRate = rate(verifyRecorded(() => Buffer.from(ak.publicBytes)));
  const parsed = recorded.map((r) => decodeEvidence(r.json)).map((e) => (e.kind === 'tpm2' ? e.quote : undefined)!);
  const key = ak.key;
  const p1363 = parsed.map((q) => {
    const s = decodeSignature(q.signature);
    if (s.scheme !== 'ecdsa') throw new Error('the bench expects an ECDSA AK');
    return Buffer.concat([Buffer.alloc(32 - s.r.length), s.r, Buffer.alloc(32 - s.s.length), s.s]);
  });
  const floorRate = rate((i) => {
    const q = parsed[i % parsed.length]!;
    if (!cryptoVerify('sha256', q.attest, { key, dsaEncoding: 'ieee-p1363' }, p1363[i % parsed.length]!)) throw new Error('floor verify failed');
  });
  await writeFile(path.join(work, 'ak.pub'), ak.publicBytes);
  const checkquoteRuns = Math.min(20, recorded.length);
  const tc0 = performance.now();
  for (let i = 0; i < checkquoteRuns; i++) {
    const e = decodeEvidence(recorded[i]!.json);
    if (e.kind !== 'tpm2') throw new Error('expected tpm2 evidence');
    await writeFile(path.join(work, 'c.attest'), e.quote.attest);
    await writeFile(path.join(work, 'c.sig'), e.quote.signature);
    await exec('tpm2_checkquote', ['-u', path.join(work, 'ak.pub'), '-m', path.join(work, 'c.attest'), '-s', path.join(work, 'c.sig'), '-q', Buffer.from(e.nonce).toString('hex'), '-g', 'sha256']);
  }
  const checkquoteRate = checkquoteRuns / ((performance.now() - tc0) / 1000);

  const ms = (xs: number[]) => ({ median: round(median(xs)), p95: round(p95(xs)) });
  const result = {
    node: process.version,
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model ?? 'unknown',
    swtpm: `swtpm ${/version ([\d.]+)/u.exec((await exec('swtpm', ['--version'])).stdout)?.[1] ?? '?'}`,
    quotes,
    logEvents: attester.events.length,
    evidenceBytes: recorded[0]!.json.length,
    perDevice: { evidenceMs: ms(t.evidence), verifyMs: ms(t.verify), totalMs: ms(t.total), tpm2QuoteMs: ms(t.tpm2Quote), evidenceVsTpm2Quote: round(median(t.evidence) / median(t.tpm2Quote)) },
    throughput: {
      seconds,
      verifyPerS: Math.round(cachedRate),
      verifyFreshAkPerS: Math.round(freshRate),
      ecdsaFloorPerS: Math.round(floorRate),
      tpm2CheckquotePerS: round(checkquoteRate, 1),
      ofFloor: round(cachedRate / floorRate),
      vsTpm2Checkquote: round(cachedRate / checkquoteRate, 1),
      devicesPer60s: Math.round(cachedRate * 60),
      goalPerS: round(GOAL_PER_S, 1),
      goalMet: cachedRate >= GOAL_PER_S,
    },
  };
  if (args.includes('--json')) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } else {
    const d = result.perDevice;
    const v = result.throughput;
    console.log(`attestation on ${result.swtpm}, node ${result.node}, ${result.cpus} CPUs (${result.cpu}); ${quotes} rounds, log of ${result.logEvents} events, evidence ${result.evidenceBytes} B of JSON`);
    console.log('per device                         median      p95');
    console.log(`  TpmAttester.evidence          ${d.evidenceMs.median.toFixed(2).padStart(8)} ms ${d.evidenceMs.p95.toFixed(2).padStart(8)} ms   ${d.evidenceVsTpm2Quote.toFixed(2)}x bare tpm2_quote`);
    console.log(`  verifyEvidence                ${d.verifyMs.median.toFixed(3).padStart(8)} ms ${d.verifyMs.p95.toFixed(3).padStart(8)} ms`);
    console.log(`  quote + verify                ${d.totalMs.median.toFixed(2).padStart(8)} ms ${d.totalMs.p95.toFixed(2).padStart(8)} ms`);
    console.log(`  bare tpm2_quote (baseline)    ${d.tpm2QuoteMs.median.toFixed(2).padStart(8)} ms ${d.tpm2QuoteMs.p95.toFixed(2).padStart(8)} ms`);
    console.log(`verifier on one thread, ${seconds} s each             quotes/s`);
    console.log(`  decode + verify, AK decoded once per device  ${String(v.verifyPerS).padStart(8)}   ${v.ofFloor.toFixed(2)}x the ECDSA floor, ${v.vsTpm2Checkquote}x tpm2_checkquote`);
    console.log(`  decode + verify, AK decoded every time       ${String(v.verifyFreshAkPerS).padStart(8)}`);
    console.log(`  ECDSA P-256 verify alone (floor)             ${String(v.ecdsaFloorPerS).padStart(8)}`);
    console.log(`  tpm2_checkquote, a process per quote         ${v.tpm2CheckquotePerS.toFixed(1).padStart(8)}`);
    console.log(`=> ${v.devicesPer60s} devices per 60 s on one thread (goal >= 10,000, i.e. ${v.goalPerS}/s: ${v.goalMet ? 'met' : 'NOT met'})`);
  }
} finally {
  await swtpm.stop();
  await rm(work, { recursive: true, force: true });
}

function p95(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(0.95 * s.length) - 1)] ?? 0;
}

function tool(tcti: string, name: string, toolArgs: string[]): Promise<{ stdout: string }> {
  return exec(name, toolArgs, { env: { ...process.env, TPM2TOOLS_TCTI: tcti } });
}

/**
 * swtpm in socket mode on two consecutive free ports, powered on (swtpm_ioctl -i) and started
 * (tpm2_startup -c). A port found free can be taken before swtpm binds it: then swtpm exits, and
 * another pair is tried.
 */
async function startSwtpm(dir: string): Promise<{ tcti: string; stop(): Promise<void> }> {
  const state = path.join(dir, 'tpm');
  await mkdir(state, { recursive: true });
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    if (port >= 65535 || (await accepts(port + 1))) continue;
    const child = spawn('swtpm', ['socket', '--tpm2', '--tpmstate', `dir=${state}`, '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`, '--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`], { stdio: 'ignore' });
    let alive = true;
    const exited = new Promise<void>((resolve) => child.once('exit', () => ((alive = false), resolve())));
    for (let i = 0; i < 500 && alive && !((await accepts(port)) && (await accepts(port + 1))); i++) await new Promise((r) => setTimeout(r, 10));
    if (!alive) continue;
    await exec('swtpm_ioctl', ['--tcp', `127.0.0.1:${port + 1}`, '-i']);
    const tcti = `swtpm:host=127.0.0.1,port=${port}`;
    await exec('tpm2_startup', ['-c', '-T', tcti]);
    return {
      tcti,
      async stop() {
        await exec('swtpm_ioctl', ['--tcp', `127.0.0.1:${port + 1}`, '-s']).catch(() => child.kill('SIGTERM'));
        const timer = setTimeout(() => child.kill('SIGKILL'), 2_000);
        await exited;
        clearTimeout(timer);
      },
    };
  }
  throw new Error('swtpm did not start on any of 5 port pairs');
}
