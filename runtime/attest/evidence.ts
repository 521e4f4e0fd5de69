import { isTpmHash, digestSize, type TpmHash } from '../../drivers/tpm/algorithms.js';
import { AttestError } from './errors.js';
import { eventProblem } from './measurement-log.js';
import type { MeasurementEvent } from './measurement.js';

/**
 * Evidence (RATS: what an attester hands a verifier): a signed statement of the PCRs with the
 * verifier's nonce, the PCR values, and the measurement log that explains them.
 *
 * In memory, byte fields are Uint8Arrays. On the wire it is JSON (`encodeEvidence` /
 * `decodeEvidence`), field by field in docs/attestation.md: short values (nonce, PCR values,
 * AK name) as lowercase hex, the way tpm2-tools prints them; opaque blobs (TPMS_ATTEST,
 * TPMT_SIGNATURE, the software statement and its signature) as standard base64.
 */
export const EVIDENCE_FORMAT = 'aios-evidence/1';

/** One quoted PCR value. */
export interface QuotedPcr {
  readonly hash: TpmHash;
  readonly index: number;
  readonly value: Uint8Array;
}

interface EvidenceCommon {
  readonly format: typeof EVIDENCE_FORMAT;
  /** The verifier's nonce, echoed (the signed copy is inside the quote or statement). */
  readonly nonce: Uint8Array;
  /** The values of every quoted PCR (the application PCR, and any firmware PCRs). */
  readonly pcrs: readonly QuotedPcr[];
  /** The measurement log since the application PCR was reset, in extend order. */
  readonly log: readonly MeasurementEvent[];
}

/** Evidence from a TPM 2.0: TPM2_Quote's output, signed by the device's attestation key. */
export interface TpmEvidence extends EvidenceCommon {
  readonly kind: 'tpm2';
  readonly quote: {
    /** Raw TPMS_ATTEST, as tpm2_quote -m writes it. */
    readonly attest: Uint8Array;
    /** Raw TPMT_SIGNATURE, as tpm2_quote -s writes it. */
    readonly signature: Uint8Array;
  };
  /** The AK's TPM name (nameAlg id || digest of its public area): says which registered key to check with. */
  readonly akName: Uint8Array;
}

/** Evidence from a device without a TPM: a statement signed with the device key (software-statement.ts). */
export interface SoftwareEvidence extends EvidenceCommon {
  readonly kind: 'software';
  /** The signed bytes: canonical JSON of the statement. */
  readonly statement: Uint8Array;
  /** Ed25519 signature, or DER ECDSA-SHA256 for an EC key, over `statement`. */
  readonly signature: Uint8Array;
  /** Lowercase hex SHA-256 of the device public key (raw 32 bytes for Ed25519, SPKI DER for EC). */
  readonly keyid: string;
}

export type Evidence = TpmEvidence | SoftwareEvidence;

/** The JSON text of evidence (the documented wire form). */
export function encodeEvidence(evidence: Evidence): string {
  const common = {
    format: EVIDENCE_FORMAT,
    kind: evidence.kind,
    nonce: hex(evidence.nonce),
    pcrs: evidence.pcrs.map((p) => ({ hash: p.hash, index: p.index, value: hex(p.value) })),
    log: evidence.log.map((e) => ({ pcr: e.pcr, type: e.type, name: e.name, sha256: e.sha256, time: e.time })),
  };
  if (evidence.kind === 'tpm2') return JSON.stringify({ ...common, quote: { attest: b64(evidence.quote.attest), signature: b64(evidence.quote.signature) }, akName: hex(evidence.akName) });
  return JSON.stringify({ ...common, statement: b64(evidence.statement), signature: b64(evidence.signature), keyid: evidence.keyid });
}

/**
 * Evidence from its JSON text (or the parsed value). Checks every field's type and size;
 * throws `EAI_ATTEST_MALFORMED` naming the first bad field. Says nothing about whether the
 * evidence is true: that is the verifier's job.
 */
export function decodeEvidence(json: unknown): Evidence {
  let v: unknown = json;
  if (typeof json === 'string') {
    try {
      v = JSON.parse(json);
    } catch (cause) {
      throw malformed(`not JSON (${(cause as Error).message})`);
    }
  }
  const o = object(v, 'evidence');
  if (o['format'] !== EVIDENCE_FORMAT) throw malformed(`format is ${JSON.stringify(o['format'])}, not "${EVIDENCE_FORMAT}"`);
  const common = {
    format: EVIDENCE_FORMAT,
    nonce: bytesOf(o['nonce'], 'nonce', 'hex', 1, 64),
    pcrs: arrayOf(o['pcrs'], 'pcrs', 32).map((p, i) => quotedPcr(p, `pcrs[${i}]`, 'hex')),
    log: logOf(o['log']),
  } as const;
  if (o['kind'] === 'tpm2') {
    const q = object(o['quote'], 'quote');
    return { ...common, kind: 'tpm2', quote: { attest: bytesOf(q['attest'], 'quote.attest', 'base64', 1, 1024), signature: bytesOf(q['signature'], 'quote.signature', 'base64', 1, 1024) }, akName: bytesOf(o['akName'], 'akName', 'hex', 2, 66) };
  }
  if (o['kind'] === 'software') {
    if (typeof o['keyid'] !== 'string' || !/^[0-9a-f]{64}$/u.test(o['keyid'])) throw malformed('keyid is not 64 lowercase hex digits');
    return { ...common, kind: 'software', statement: bytesOf(o['statement'], 'statement', 'base64', 1, 1 << 20), signature: bytesOf(o['signature'], 'signature', 'base64', 1, 1024), keyid: o['keyid'] };
  }
  throw malformed(`kind is ${JSON.stringify(o['kind'])}, not "tpm2" or "software"`);
}

/**
 * Checks in-memory evidence the same way (an object built from protobuf or by hand may break the
 * types at run time). Returns it as `Evidence`, or throws `EAI_ATTEST_MALFORMED`.
 */
export function checkEvidence(value: unknown): Evidence {
  const o = object(value, 'evidence');
  if (o['format'] !== EVIDENCE_FORMAT) throw malformed(`format is ${JSON.stringify(o['format'])}, not "${EVIDENCE_FORMAT}"`);
  rawBytes(o['nonce'], 'nonce', 1, 64);
  arrayOf(o['pcrs'], 'pcrs', 32).forEach((p, i) => quotedPcr(p, `pcrs[${i}]`, 'raw'));
  logOf(o['log']);
  if (o['kind'] === 'tpm2') {
    const q = object(o['quote'], 'quote');
    rawBytes(q['attest'], 'quote.attest', 1, 1024);
    rawBytes(q['signature'], 'quote.signature', 1, 1024);
    rawBytes(o['akName'], 'akName', 2, 66);
  } else if (o['kind'] === 'software') {
    rawBytes(o['statement'], 'statement', 1, 1 << 20);
    rawBytes(o['signature'], 'signature', 1, 1024);
    if (typeof o['keyid'] !== 'string' || !/^[0-9a-f]{64}$/u.test(o['keyid'])) throw malformed('keyid is not 64 lowercase hex digits');
  } else {
    throw malformed(`kind is ${JSON.stringify(o['kind'])}, not "tpm2" or "software"`);
  }
  return value as Evidence;
}

/** The most events evidence may carry: bounds a verifier's work per device. */
export const MAX_LOG_EVENTS = 4096;

function logOf(v: unknown): MeasurementEvent[] {
  return arrayOf(v, 'log', MAX_LOG_EVENTS).map((e, i) => {
    const o = object(e, `log[${i}]`);
    const problem = eventProblem(o, undefined);
    if (problem !== undefined) throw malformed(`log[${i}] ${problem}`);
    return { pcr: o['pcr'], type: o['type'], name: o['name'], sha256: o['sha256'], time: o['time'] } as MeasurementEvent;
  });
}

function quotedPcr(v: unknown, where: string, encoding: 'hex' | 'raw'): QuotedPcr {
  const o = object(v, where);
  const hash = o['hash'];
  if (typeof hash !== 'string' || !isTpmHash(hash)) throw malformed(`${where}.hash ${JSON.stringify(hash)} is not a TPM hash name`);
  const index = o['index'];
  if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index > 23) throw malformed(`${where}.index is not a PCR index 0–23`);
  const size = digestSize(hash);
  const value = encoding === 'hex' ? bytesOf(o['value'], `${where}.value`, 'hex', size, size) : rawBytes(o['value'], `${where}.value`, size, size);
  return { hash, index, value };
}

function object(v: unknown, where: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw malformed(`${where} is not an object`);
  return v as Record<string, unknown>;
}

function arrayOf(v: unknown, where: string, max: number): unknown[] {
  if (!Array.isArray(v)) throw malformed(`${where} is not an array`);
  if (v.length > max) throw malformed(`${where} has ${v.length} entries, more than ${max}`);
  return v;
}

function bytesOf(v: unknown, where: string, encoding: 'hex' | 'base64', min: number, max: number): Uint8Array {
  const pattern = encoding === 'hex' ? /^(?:[0-9a-f]{2})*$/u : /^[A-Za-z0-9+/]*={0,2}$/u;
  if (typeof v !== 'string' || !pattern.test(v) || (encoding === 'base64' && v.length % 4 !== 0)) throw malformed(`${where} is not ${encoding === 'hex' ? 'lowercase hex' : 'base64'}`);
  return rawBytes(Buffer.from(v, encoding), where, min, max);
}

function rawBytes(v: unknown, where: string, min: number, max: number): Uint8Array {
  if (!(v instanceof Uint8Array)) throw malformed(`${where} is not bytes`);
  if (v.byteLength < min || v.byteLength > max) throw malformed(`${where} is ${v.byteLength} bytes, expected ${min === max ? min : `${min} to ${max}`}`);
  return v;
}

function malformed(why: string): AttestError {
  return new AttestError('EAI_ATTEST_MALFORMED', `malformed evidence: ${why}`, { details: { why } });
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

function b64(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
}
