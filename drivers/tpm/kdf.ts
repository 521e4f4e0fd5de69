import { createHash, createHmac } from 'node:crypto';
import { digestSize, type TpmHash } from './algorithms.js';
import { TpmError } from './errors.js';
import { u32 } from './marshal.js';

/**
 * The TPM's key derivation functions (Part 1 §11.4.10): KDFa, the SP 800-108 counter-mode KDF with
 * HMAC, which derives the storage and integrity keys of a credential from its seed; and KDFe,
 * the SP 800-56A concatenation KDF, which turns an ECDH shared secret into that seed for an ECC EK.
 *
 * Labels are ASCII strings; the TPM hashes them with one terminating zero byte, added here unless
 * the label already ends with one.
 */

/** KDFa(hash, key, label, contextU, contextV, bits): `bits` of key material. */
export function kdfa(hash: TpmHash, key: Uint8Array, label: string, contextU: Uint8Array, contextV: Uint8Array, bits: number): Buffer {
  return counterKdf(hash, bits, (counter) =>
    createHmac(hash, key).update(counter).update(labelBytes(label)).update(contextU).update(contextV).update(u32(bits)).digest(),
  );
}

/** KDFe(hash, Z, label, partyUInfo, partyVInfo, bits): `bits` of key material from an ECDH secret Z. */
export function kdfe(hash: TpmHash, z: Uint8Array, label: string, partyU: Uint8Array, partyV: Uint8Array, bits: number): Buffer {
  return counterKdf(hash, bits, (counter) => createHash(hash).update(counter).update(z).update(labelBytes(label)).update(partyU).update(partyV).digest());
}

function counterKdf(hash: TpmHash, bits: number, block: (counter: Buffer) => Buffer): Buffer {
  if (!Number.isInteger(bits) || bits <= 0 || bits > 8 * 1024) throw new TpmError('EAI_TPM_ARGUMENT', `a KDF output of ${bits} bits; ask for 1 to 8192`);
  const bytes = Math.ceil(bits / 8);
  const blocks: Buffer[] = [];
  for (let i = 1, have = 0; have < bytes; i++) {
    const b = block(u32(i));
    blocks.push(b);
    have += digestSize(hash);
  }
  const out = Buffer.concat(blocks).subarray(0, bytes);
  // A size that is not whole bytes keeps only the low bits of the first byte (Part 1 §11.4.10.2).
  if (bits % 8 !== 0) out[0] = (out[0] ?? 0) & ((1 << (bits % 8)) - 1);
  return out;
}

function labelBytes(label: string): Buffer {
  const b = Buffer.from(label, 'latin1');
  return b[b.length - 1] === 0 ? b : Buffer.concat([b, Buffer.from([0])]);
}
