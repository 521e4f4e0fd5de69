import { readFile } from 'node:fs/promises';
import { UsageError } from '../../drivers/errors.js';
import type { SignaturePolicy } from '../../models/bundle/dsse.js';
import { publicKeyFromPem, type PublicKey } from '../../models/keys.js';
import { isExpired, parseRoot, rolePolicy, TrustError, verifyRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';

/** The options commands take to say who may sign models. */
export interface SigningPolicyOptions {
  readonly trust?: string;
  readonly root?: string;
  readonly signer: readonly string[];
  readonly threshold?: number;
}

/**
 * Who may sign models, from exactly one of: a device's trust folder (its current root, refused
 * when expired), a root.json (validly self-signed and not expired), or public keys given by hand
 * with a threshold. `fallbackTrust` is used when none is given (a device's default folder).
 */
export async function signingPolicy(o: SigningPolicyOptions, fallbackTrust?: string): Promise<SignaturePolicy> {
  const given = [o.trust !== undefined, o.root !== undefined, o.signer.length > 0].filter(Boolean).length;
  if (given > 1 || (given === 0 && fallbackTrust === undefined)) throw new UsageError('EAI_CLI_USAGE', 'give exactly one of --trust DIR, --root root.json or --signer key.pub: who may sign the models.');
  if (o.signer.length > 0) {
    const keys: PublicKey[] = await Promise.all(o.signer.map(async (k) => publicKeyFromPem(await readFile(k), k)));
    return { keys, threshold: o.threshold ?? 1 };
  }
  if (o.root !== undefined) {
    const root = parseRoot(await readFile(o.root), o.root);
    verifyRoot(root);
    if (isExpired(root.signed, new Date())) throw new TrustError('EAI_TRUST_ROOT_EXPIRED', `${o.root} (trust root v${root.signed.version}) expired at ${root.signed.expires}; use its successor.`, { details: { expires: root.signed.expires } });
    return rolePolicy(root.signed, 'models');
  }
  return (await TrustStore.open(o.trust ?? (fallbackTrust as string))).policy('models');
}
