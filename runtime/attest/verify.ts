import { createHash, createPublicKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import type { TpmHash } from '../../drivers/tpm/algorithms.js';
import { TpmError } from '../../drivers/tpm/errors.js';
import { objectName } from '../../drivers/tpm/names.js';
import type { PcrValues } from '../../drivers/tpm/pcr.js';
import { decodePublic, type PublicArea } from '../../drivers/tpm/public-area.js';
import { verifyQuote } from '../../drivers/tpm/quote.js';
import { VERSION } from '../version.js';
import type { Challenge } from './challenge.js';
import { AttestError, type AttestErrorCode } from './errors.js';
import { checkEvidence, type Evidence, type SoftwareEvidence, type TpmEvidence } from './evidence.js';
import { MEASUREMENT_BANK, replayLog } from './measurement.js';
import { appraiseMeasurements, applicationPcr, checkPolicy, type Policy } from './policy.js';
import { CLAIMS_PROFILE, statusOf, type AttestationClaims, type AttestationReason, type AttestationResult } from './result.js';
import { logDigest, parseStatement, softwareKeyId, verifyStatement } from './software-statement.js';

/**
 * The verifier (RATS "verifier"): appraises one device's evidence against the key it registered
 * at enrolment, the nonce this verifier issued, and the policy for that device. Pure and
 * synchronous (node:crypto only, no TPM), so a controller can run it anywhere; calls may overlap.
 *
 * The checks, in order (docs/attestation.md "Verifier checks"); a failure at a step marked (stop)
 * ends the appraisal there, because nothing after it could be believed:
 *  1. the evidence is well formed (stop);
 *  2. its kind is acceptable: `software` fails when the policy requires a TPM (stop);
 *  3. freshness: the nonce was issued to this device (else untrusted), is the one answered (else
 *     untrusted), was not answered before and is younger than maxAgeMs (else stale);
 *  4. the signature: the quote (or software statement) verifies with the *registered* key — a
 *     quote from any other AK fails — and signs the evidence's nonce and PCR values (stop);
 *  5. the quote covers the application PCR in the sha256 bank (stop);
 *  6. the log replays from zero to the quoted application PCR value: an entry altered, removed,
 *     reordered or added breaks it (stop);
 *  7. firmware PCRs equal the policy's golden values, when it has any;
 *  8. every measured item is allowed by the policy, and the runtime was measured.
 *
 * Bad evidence never throws: it yields `untrusted` (or `stale`) with one reason per failed check.
 * Only a caller's mistake throws (`EAI_ATTEST_ARGUMENT`: no policy, a policy of the wrong shape).
 */
export interface RegisteredKeys {
  /** TPM2B_PUBLIC of the AK registered at enrolment (what tpm2_readpublic -f tss writes). Pass the same object each time: its decoding is cached per object. */
  readonly akPublic?: Uint8Array;
  /** The device's own public key, for `software` evidence (Ed25519 or EC; SPKI DER or PEM bytes also accepted). */
  readonly softwareKey?: KeyObject | Uint8Array;
}

export interface VerifyRequest {
  /** The evidence as received (its shape is checked here). */
  readonly evidence: Evidence;
  readonly device: RegisteredKeys;
  /**
   * The challenge the evidence claims to answer, as this verifier recorded it before this answer
   * (`ChallengeBook.redeem`), or undefined when it has no record of that nonce for this device.
   */
  readonly challenge: Challenge | undefined;
  readonly policy: Policy;
  /** Unix ms; default Date.now(). */
  readonly now?: number;
}

export function verifyEvidence(request: VerifyRequest): AttestationResult {
  if (typeof request !== 'object' || request === null) throw new AttestError('EAI_ATTEST_ARGUMENT', 'verifyEvidence takes { evidence, device, challenge, policy }');
  checkPolicy(request.policy);
  if (typeof request.device !== 'object' || request.device === null) throw new AttestError('EAI_ATTEST_ARGUMENT', 'verifyEvidence needs the device\'s registered keys ({ akPublic } or { softwareKey }); pass {} for a device that registered none');
  const now = request.now ?? Date.now();
  return new Appraisal(request.policy, now).run(request);
}

/** One appraisal: collects reasons and claims as the checks go. */
class Appraisal {
  private readonly reasons: AttestationReason[] = [];
  private claims: Partial<Record<keyof AttestationClaims, unknown>> = {};
  private readonly pcr: number;

  constructor(
    private readonly policy: Policy,
    private readonly now: number,
  ) {
    this.pcr = applicationPcr(policy);
  }

  run(request: VerifyRequest): AttestationResult {
    // 1. Shape.
    let evidence: Evidence;
    try {
      evidence = checkEvidence(request.evidence);
    } catch (error) {
      this.fail('EAI_ATTEST_MALFORMED', error instanceof AttestError ? error.message : String(error));
      return this.finish();
    }
    this.claims.eat_nonce = Buffer.from(evidence.nonce).toString('base64url');
    this.claims['aios.evidence-kind'] = evidence.kind;
    // 2. Kind.
    if (evidence.kind === 'software' && this.policy.requireTpm) {
      this.fail('EAI_ATTEST_KIND', 'the evidence is from a software attester (a device-key signature, no TPM), and the policy for this device requires a TPM quote', { kind: 'software' });
      return this.finish();
    }
    // 3. Freshness: recorded, and the appraisal goes on (the result is stale or untrusted either way).
    this.checkFreshness(evidence, request.challenge);
    // 4–5. Signature and selection; yields the quoted values of the sha256 bank.
    const quoted = evidence.kind === 'tpm2' ? this.checkQuote(evidence, request.device) : this.checkStatement(evidence, request.device);
    if (quoted === undefined) return this.finish();
    this.claims['aios.pcrs'] = Object.fromEntries([...quoted].map(([i, v]) => [`${MEASUREMENT_BANK}:${i}`, v.toString('hex')]));
    // 6. Log replay.
    const stray = evidence.log.find((e) => e.pcr !== this.pcr);
    if (stray !== undefined) {
      this.fail('EAI_ATTEST_MALFORMED', `the log holds an event for PCR ${stray.pcr} ("${stray.name}"); this device's application PCR is ${this.pcr}`, { pcr: stray.pcr });
      return this.finish();
    }
    const replayed = replayLog(evidence.log);
    const value = quoted.get(this.pcr)!;
    if (!replayed.equals(value)) {
      this.fail('EAI_ATTEST_LOG_REPLAY', `the measurement log (${evidence.log.length} events) replays to ${replayed.toString('hex')}, but PCR ${this.pcr} was quoted as ${value.toString('hex')}: an entry was altered, removed, reordered or added, or something else extended PCR ${this.pcr}`, { replayed: replayed.toString('hex'), quoted: value.toString('hex'), events: evidence.log.length });
      return this.finish();
    }
    // 7. Firmware golden values.
    for (const [k, golden] of Object.entries(this.policy.firmwarePcrs ?? {})) {
      const got = quoted.get(Number(k));
      if (got === undefined) this.fail('EAI_ATTEST_FIRMWARE_PCR', `the policy has a golden value for ${MEASUREMENT_BANK} PCR ${k}, and the evidence does not quote it`, { pcr: Number(k) });
      else if (got.toString('hex') !== golden) this.fail('EAI_ATTEST_FIRMWARE_PCR', `${MEASUREMENT_BANK} PCR ${k} was quoted as ${got.toString('hex')}, not the golden ${golden}: the firmware or boot chain differs from the reference`, { pcr: Number(k), quoted: got.toString('hex'), golden });
    }
    // 8. Items.
    const { items, reasons } = appraiseMeasurements(evidence.log, this.policy);
    this.reasons.push(...reasons);
    this.claims.measurements = evidence.log;
    this.claims.measres = [[`aios-pcr${this.pcr}`, items.map((it) => [`${it.event.type}:${it.event.name}@${it.event.sha256}`, it.allowed ? 'success' : 'fail'] as const)]];
    return this.finish();
  }

  private checkFreshness(evidence: Evidence, challenge: Challenge | undefined): void {
    const nonce = Buffer.from(evidence.nonce).toString('hex');
    if (challenge === undefined) {
      this.fail('EAI_ATTEST_NONCE_UNKNOWN', `the evidence answers nonce ${nonce}, which this verifier did not issue to this device (or has forgotten): a replay, or an answer to another verifier`, { nonce });
      return;
    }
    if (!sameBytes(challenge.nonce, evidence.nonce)) {
      this.fail('EAI_ATTEST_NONCE_MISMATCH', `the evidence answers nonce ${nonce}, not the ${Buffer.from(challenge.nonce).toString('hex')} this verifier issued`, { nonce, issued: Buffer.from(challenge.nonce).toString('hex') });
      return;
    }
    if (challenge.answeredAt !== undefined) {
      this.fail('EAI_ATTEST_NONCE_REUSED', `nonce ${nonce} was already answered at ${new Date(challenge.answeredAt).toISOString()}: evidence is accepted once per nonce; challenge the device again`, { nonce, answeredAt: challenge.answeredAt });
    }
    const age = this.now - challenge.issuedAt;
    if (age > this.policy.maxAgeMs) {
      this.fail('EAI_ATTEST_NONCE_EXPIRED', `nonce ${nonce} was issued ${age} ms ago, longer than the policy's maxAgeMs ${this.policy.maxAgeMs}: challenge the device again`, { nonce, ageMs: age, maxAgeMs: this.policy.maxAgeMs });
    }
  }

  /** Step 4–5 for a TPM quote; the quoted sha256 values, or undefined after a failure. */
  private checkQuote(evidence: TpmEvidence, device: RegisteredKeys): Map<number, Buffer> | undefined {
    if (device.akPublic === undefined) return this.fail('EAI_ATTEST_NO_KEY', 'the evidence is a TPM quote, and this device registered no attestation key: enrol it with its TPM first', {});
    let ak: PublicArea;
    try {
      ak = decodedAk(device.akPublic);
    } catch (error) {
      return this.fail('EAI_ATTEST_KEY_TYPE', `the registered attestation key is not a TPM2B_PUBLIC this verifier can use: ${(error as Error).message}`, {});
    }
    const pcrs = pcrValuesOf(evidence);
    if (pcrs === undefined) return this.fail('EAI_ATTEST_MALFORMED', 'the evidence lists one PCR twice', {});
    let attest;
    try {
      attest = verifyQuote(evidence.quote, { ak, nonce: evidence.nonce, pcrs }).attest;
    } catch (error) {
      if (!(error instanceof TpmError)) throw error;
      return this.fail(QUOTE_CODES[error.code] ?? 'EAI_ATTEST_MALFORMED', error.message, { driverCode: error.code });
    }
    const akName = objectName(ak);
    if (!sameBytes(akName, evidence.akName)) return this.fail('EAI_ATTEST_MALFORMED', `the evidence names AK ${Buffer.from(evidence.akName).toString('hex')}, but the quote verified with the registered AK ${akName.toString('hex')}`, {});
    this.claims.ueid = ueid(akName);
    const signed = new Set(attest.pcrSelection.flatMap((b) => b.pcrs.map((i) => `${b.hash}:${i}`)));
    const extra = evidence.pcrs.find((p) => !signed.has(`${p.hash}:${p.index}`));
    if (extra !== undefined) return this.fail('EAI_ATTEST_MALFORMED', `the evidence lists ${extra.hash} PCR ${extra.index}, which the quote does not cover`, {});
    if (!signed.has(`${MEASUREMENT_BANK}:${this.pcr}`)) {
      return this.fail('EAI_ATTEST_PCR_SELECTION', `the quote covers ${[...signed].join(', ')} but not ${MEASUREMENT_BANK} PCR ${this.pcr}, the application PCR the measurement log is extended into`, { selection: [...signed] });
    }
    return sha256Values(evidence);
  }

  /** Step 4–5 for a software statement. */
  private checkStatement(evidence: SoftwareEvidence, device: RegisteredKeys): Map<number, Buffer> | undefined {
    if (device.softwareKey === undefined) return this.fail('EAI_ATTEST_NO_KEY', 'the evidence is signed by a device key, and this device registered none', {});
    let key: KeyObject;
    try {
      key = device.softwareKey instanceof Uint8Array ? publicKeyOf(device.softwareKey) : device.softwareKey;
    } catch (error) {
      return this.fail('EAI_ATTEST_KEY_TYPE', `the registered device key cannot be read: ${(error as Error).message}`, {});
    }
    if (!verifyStatement(evidence.statement, evidence.signature, key)) {
      return this.fail('EAI_ATTEST_SIGNATURE', `the software statement's signature does not verify with the registered device key ${softwareKeyId(key)}: the evidence was altered, or another key signed it`, { keyid: evidence.keyid });
    }
    this.claims.ueid = ueid(Buffer.from(softwareKeyId(key), 'hex'));
    let statement;
    try {
      statement = parseStatement(evidence.statement);
    } catch (error) {
      return this.fail('EAI_ATTEST_MALFORMED', (error as Error).message, {});
    }
    if (statement.nonce !== Buffer.from(evidence.nonce).toString('hex')) return this.fail('EAI_ATTEST_QUOTE_NONCE', `the signed statement carries nonce ${statement.nonce}, not the ${Buffer.from(evidence.nonce).toString('hex')} the evidence answers: a replayed statement`, {});
    const listed = evidence.pcrs.map((p) => `${p.hash}:${p.index}=${Buffer.from(p.value).toString('hex')}`).join(',');
    const signed = statement.pcrs.map((p) => `${p.hash}:${p.index}=${p.value}`).join(',');
    if (listed !== signed) return this.fail('EAI_ATTEST_QUOTE_PCRS', `the evidence lists PCRs ${listed}, the signed statement ${signed}`, {});
    if (statement.logDigest !== logDigest(evidence.log)) return this.fail('EAI_ATTEST_LOG_REPLAY', `the log sent hashes to ${logDigest(evidence.log)}, but the device signed a log hashing to ${statement.logDigest}: the log was altered after signing`, {});
    if (!statement.pcrs.some((p) => p.index === this.pcr)) return this.fail('EAI_ATTEST_PCR_SELECTION', `the signed statement does not cover PCR ${this.pcr}, the application PCR`, {});
    return sha256Values(evidence);
  }

  private fail(code: AttestErrorCode, message: string, details: Record<string, unknown> = {}): undefined {
    this.reasons.push({ code, message, details });
    return undefined;
  }

  private finish(): AttestationResult {
    const status = statusOf(this.reasons);
    const claims = {
      eat_profile: CLAIMS_PROFILE,
      iat: Math.floor(this.now / 1000),
      ...this.claims,
      'ear.status': status === 'trusted' ? 'affirming' : status === 'stale' ? 'none' : 'contraindicated',
      'ear.verifier-id': { developer: 'aios', build: `aios ${VERSION}` },
    } as AttestationClaims;
    return { status, reasons: this.reasons, claims, verifiedAt: new Date(this.now).toISOString() };
  }
}

/** How the driver's quote checks map onto verifier reasons. */
const QUOTE_CODES: Partial<Record<TpmError['code'], AttestErrorCode>> = {
  EAI_TPM_KEY_TYPE: 'EAI_ATTEST_KEY_TYPE',
  EAI_TPM_QUOTE_SIGNATURE: 'EAI_ATTEST_SIGNATURE',
  EAI_TPM_QUOTE_NONCE: 'EAI_ATTEST_QUOTE_NONCE',
  EAI_TPM_QUOTE_PCRS: 'EAI_ATTEST_QUOTE_PCRS',
  EAI_TPM_MALFORMED: 'EAI_ATTEST_MALFORMED',
  EAI_TPM_UNSUPPORTED: 'EAI_ATTEST_MALFORMED',
};

// A controller verifies each device again every minute with the same registered bytes: decode once per object.
const aks = new WeakMap<Uint8Array, PublicArea>();

function decodedAk(bytes: Uint8Array): PublicArea {
  let ak = aks.get(bytes);
  if (ak === undefined) {
    ak = decodePublic(bytes);
    aks.set(bytes, ak);
  }
  return ak;
}

function publicKeyOf(bytes: Uint8Array): KeyObject {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return b.subarray(0, 10).toString('latin1').startsWith('-----') ? createPublicKey(b) : createPublicKey({ key: b, format: 'der', type: 'spki' });
}

/** The evidence's PCR values as the driver's banks; undefined when a PCR is listed twice. */
function pcrValuesOf(evidence: Evidence): PcrValues | undefined {
  const banks = new Map<TpmHash, Map<number, Buffer>>();
  for (const p of evidence.pcrs) {
    const bank = banks.get(p.hash) ?? new Map<number, Buffer>();
    if (bank.has(p.index)) return undefined;
    bank.set(p.index, Buffer.from(p.value));
    banks.set(p.hash, bank);
  }
  return [...banks].map(([hash, values]) => ({ hash, values }));
}

function sha256Values(evidence: Evidence): Map<number, Buffer> {
  return new Map(evidence.pcrs.filter((p) => p.hash === MEASUREMENT_BANK).map((p) => [p.index, Buffer.from(p.value)]));
}

/** EAT UEID of type RAND (0x01): 32 bytes derived from the key's identity. */
function ueid(identity: Uint8Array): string {
  return Buffer.concat([Buffer.from([0x01]), createHash('sha256').update(identity).digest()]).toString('base64url');
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}
