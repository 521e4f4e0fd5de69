/**
 * Can one controller appraise 10,000 devices every 60 s (issue 8)? bench/attest.ts times the
 * verifier alone; this times the controller's whole appraisal, `Attestations.receive`: decoding
 * the AttestationEvidence message and the evidence, redeeming the nonce in the store, looking up
 * the registered key and the device's policy (the bundles deployed to it), verifying, writing the
 * result — with the SQLite store, against `verifyEvidence` alone on the same evidence in the same
 * run (the baseline).
 *
 * N devices are enrolled through the controller's own Enrolment (a P-256 key each, registered as
 * `software`), each with a SoftwareAttester that measured the runtime; each is challenged, its
 * evidence recorded, then all are appraised: one after another, and (a second round of fresh
 * challenges) all handed over at once.
 *
 * Run: npx tsc -p tsconfig.json && node dist/bench/attest-controller.js [--devices 1000] [--json]
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Controller } from '../deploy/controller/controller.js';
import { createCsr } from '../deploy/fleet/pki/csr.js';
import { aios } from '../deploy/proto/gen/aios.js';
import { generateSigningKey } from '../models/keys.js';
import { RUNTIME_MEASUREMENT_NAME } from '../runtime/attest/attester.js';
import { encodeEvidence, EVIDENCE_FORMAT, type Evidence } from '../runtime/attest/evidence.js';
import { runtimeDigest } from '../runtime/attest/file-digest.js';
import type { Policy } from '../runtime/attest/policy.js';
import { SoftwareAttester } from '../runtime/attest/software-attester.js';
import { verifyEvidence } from '../runtime/attest/verify.js';

const args = process.argv.slice(2);
const at = args.indexOf('--devices');
const N = at >= 0 ? Number(args[at + 1]) : 1000;
const GOAL_PER_S = 10_000 / 60;

const work = await mkdtemp(path.join(os.tmpdir(), 'aios-bench-attest-controller-'));
const runtime = (await runtimeDigest()).sha256;
const policy = { allowedRuntimeDigests: [runtime], allowedTrustRootDigests: [] as string[] };
const controller = await Controller.start({ fleet: 'bench', state: path.join(work, 'controller'), deployKeys: [generateSigningKey()], hostnames: ['127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: 0, enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0, attestation: { policy } });
const attestations = controller.attestations as NonNullable<Controller['attestations']>;
try {
  const devices: { id: string; key: KeyObject; attester: SoftwareAttester }[] = [];
  for (let i = 0; i < N; i++) {
    const id = `robot-${i}`;
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const { token } = await controller.enrolment.issueToken({ validForMs: 600_000, deviceId: id });
    await controller.enrolment.enrol(createCsr({ privateKey, commonName: id, challengePassword: token }));
    const attester = await SoftwareAttester.open({ stateDir: path.join(work, id), privateKey, bootId: 'bench' });
    await attester.measure('runtime', RUNTIME_MEASUREMENT_NAME, runtime);
    devices.push({ id, key: publicKey, attester });
  }
  const round = async (): Promise<{ id: string; key: KeyObject; evidence: Evidence; payload: Uint8Array; issuedAt: number }[]> =>
    Promise.all(
      devices.map(async (d) => {
        const nonce = await attestations.challenge(d.id);
        const evidence = await d.attester.evidence(nonce);
        return { id: d.id, key: d.key, evidence, issuedAt: Date.now(), payload: aios.fleet.v1.AttestationEvidence.encode({ commandSequence: 1, format: EVIDENCE_FORMAT, evidence: Buffer.from(encodeEvidence(evidence)) }).finish() };
      }),
    );

  // The baseline: the verifier alone on the same evidence (a challenge record made up in memory).
  const first = await round();
  const baselinePolicy: Policy = { requireTpm: false, maxAgeMs: 600_000, allowedRuntimeDigests: [runtime], allowedTrustRootDigests: [], allowedPipelineConfigs: () => true, expectedModelBundles: [] };
  let t = performance.now();
  for (const e of first) verifyEvidence({ evidence: e.evidence, device: { softwareKey: e.key }, challenge: { nonce: e.evidence.nonce, issuedAt: e.issuedAt }, policy: baselinePolicy });
  const verifyPerS = N / ((performance.now() - t) / 1000);

  let trusted = 0;
  t = performance.now();
  for (const e of first) if ((await attestations.receive(e.id, e.payload)).status === 'trusted') trusted++;
  const sequentialPerS = N / ((performance.now() - t) / 1000);

  const second = await round();
  t = performance.now();
  const results = await Promise.all(second.map((e) => attestations.receive(e.id, e.payload)));
  const concurrentPerS = N / ((performance.now() - t) / 1000);
  trusted += results.filter((r) => r.status === 'trusted').length;

  const result = { devices: N, node: process.version, cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? '?', verifyPerS: Math.round(verifyPerS), sequentialPerS: Math.round(sequentialPerS), concurrentPerS: Math.round(concurrentPerS), ofVerifier: sequentialPerS / verifyPerS, trusted, of: 2 * N, goalPerS: Math.round(GOAL_PER_S), goalMet: sequentialPerS >= GOAL_PER_S };
  if (args.includes('--json')) console.log(JSON.stringify(result, null, 2));
  else {
    console.log(`controller appraisal, SQLite store, ${N} devices with software evidence, node ${result.node}, ${result.cpus} CPUs (${result.cpu})`);
    console.log(`  verifyEvidence alone (baseline)             ${String(result.verifyPerS).padStart(7)}/s`);
    console.log(`  Attestations.receive, one after another     ${String(result.sequentialPerS).padStart(7)}/s   ${result.ofVerifier.toFixed(2)}x the verifier alone`);
    console.log(`  Attestations.receive, all at once           ${String(result.concurrentPerS).padStart(7)}/s`);
    console.log(`  trusted ${trusted} of ${2 * N}; goal >= ${result.goalPerS}/s (10,000 devices per 60 s): ${result.goalMet ? 'met' : 'NOT met'}`);
  }
} finally {
  await controller.stop();
  await rm(work, { recursive: true, force: true });
}
