import { timingSafeEqual, type KeyObject } from 'node:crypto';
import type { TpmHash } from './algorithms.js';
import { decodeQuoteAttest, type QuoteAttest } from './attest.js';
import { TpmError } from './errors.js';
import { pcrComposite, type PcrValues } from './pcr.js';
import { isRestrictedSigningKey, publicKey, type PublicArea } from './public-area.js';
import { decodeSignature, verifySignature, type TpmSignature } from './signature.js';

/**
 * Checking a TPM quote: the verifier's half of remote attestation, runnable anywhere (it needs
 * node:crypto, not a TPM).
 *
 * A quote is trusted when (1) it is signed by the device's attestation key, which must be a
 * restricted signing key (only then does the TPM refuse to sign outside data shaped like a
 * TPMS_ATTEST), (2) it carries the nonce this verifier sent (freshness: not a replay), and (3) its
 * PCR digest matches the PCR values the device reported, which the verifier then compares with a
 * replayed event log or with golden values. Which AK belongs to which device is established
 * beforehand, by MakeCredential/ActivateCredential against the EK (credential.ts).
 *
 * Every check that fails throws a `TpmError` whose code says which: `EAI_TPM_KEY_TYPE`,
 * `EAI_TPM_MALFORMED`/`EAI_TPM_UNSUPPORTED` (the bytes), `EAI_TPM_QUOTE_SIGNATURE`,
 * `EAI_TPM_QUOTE_NONCE`, `EAI_TPM_QUOTE_PCRS`. The function is pure and synchronous; calls may
 * overlap freely.
 */
export interface QuoteEvidence {
  /** The raw TPMS_ATTEST bytes, exactly as the TPM returned them. */
  readonly attest: Uint8Array;
  /** The raw TPMT_SIGNATURE bytes. */
  readonly signature: Uint8Array;
}

export interface QuoteExpectation {
  /** The attestation key's public area (decodePublic of the TPM2B_PUBLIC the device enrolled). */
  readonly ak: PublicArea;
  /** The nonce this verifier sent for this quote. */
  readonly nonce: Uint8Array;
  /**
   * The PCR values the device reported with the quote. When given, every PCR the quote selects
   * must be present and their composite must equal the quote's pcrDigest. When left out, only the
   * digest is returned (compare `attest.pcrDigest` yourself).
   */
  readonly pcrs?: PcrValues;
  /** When given, the quote's qualifiedSigner must equal it (see names.ts `childQualifiedName`). */
  readonly qualifiedSigner?: Uint8Array;
  /** Signature hashes accepted; default sha256, sha384, sha512 (SHA-1 is refused). */
  readonly hashes?: readonly TpmHash[];
}

export interface VerifiedQuote {
  readonly attest: QuoteAttest;
  readonly signature: TpmSignature;
}

const DEFAULT_HASHES: readonly TpmHash[] = ['sha256', 'sha384', 'sha512'];

/** Verifies a quote; returns its decoded contents, or throws saying which check failed. */
export function verifyQuote(evidence: QuoteEvidence, expect: QuoteExpectation): VerifiedQuote {
  if (!isRestrictedSigningKey(expect.ak)) {
    throw new TpmError('EAI_TPM_KEY_TYPE', `the key given to verify a quote is not a restricted signing key fixed to its TPM (attributes 0x${expect.ak.attributes.raw.toString(16)}): a TPM would sign anything with it, so its quotes prove nothing. Enrol an AK made with tpm2_createak / Tpm.attestationKey`, { details: { attributes: expect.ak.attributes.raw } });
  }
  const attest = decodeQuoteAttest(evidence.attest);
  const signature = decodeSignature(evidence.signature);
  const hashes = expect.hashes ?? DEFAULT_HASHES;
  if (!hashes.includes(signature.hash)) {
    throw new TpmError('EAI_TPM_QUOTE_SIGNATURE', `the quote is signed with ${signature.hash}; this verifier accepts ${hashes.join(', ')}`, { details: { hash: signature.hash } });
  }
  if (!verifySignature(signature, keyOf(expect.ak), evidence.attest)) {
    throw new TpmError('EAI_TPM_QUOTE_SIGNATURE', `the quote's ${signature.scheme.toUpperCase()}-${signature.hash} signature does not verify with the attestation key: the quote was altered, or another key signed it`, { details: { scheme: signature.scheme, hash: signature.hash } });
  }
  if (!sameBytes(attest.extraData, expect.nonce)) {
    throw new TpmError('EAI_TPM_QUOTE_NONCE', `the quote carries nonce ${attest.extraData.toString('hex') || '(none)'}, not the ${Buffer.from(expect.nonce).toString('hex')} this verifier sent: a replayed or stale quote`, { details: { got: attest.extraData.toString('hex') } });
  }
  if (expect.qualifiedSigner !== undefined && !sameBytes(attest.qualifiedSigner, expect.qualifiedSigner)) {
    throw new TpmError('EAI_TPM_QUOTE_SIGNATURE', `the quote names signer ${attest.qualifiedSigner.toString('hex')}, not the expected ${Buffer.from(expect.qualifiedSigner).toString('hex')}: the AK is not under the expected EK`, { details: { qualifiedSigner: attest.qualifiedSigner.toString('hex') } });
  }
  if (expect.pcrs !== undefined) {
    const digest = pcrComposite(signature.hash, attest.pcrSelection, expect.pcrs);
    if (!sameBytes(digest, attest.pcrDigest)) {
      throw new TpmError('EAI_TPM_QUOTE_PCRS', `the PCR values reported with the quote hash to ${digest.toString('hex')}, but the TPM signed ${attest.pcrDigest.toString('hex')}: the values were altered or read at another moment than the quote`, { details: { computed: digest.toString('hex'), signed: attest.pcrDigest.toString('hex') } });
    }
  }
  return { attest, signature };
}

// The KeyObject of an AK is built once per public area object: verifiers check many quotes per key.
const keys = new WeakMap<PublicArea, KeyObject>();

function keyOf(area: PublicArea): KeyObject {
  let key = keys.get(area);
  if (key === undefined) {
    key = publicKey(area);
    keys.set(area, key);
  }
  return key;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}
