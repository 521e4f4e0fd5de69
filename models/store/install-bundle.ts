import { createHash } from 'node:crypto';
import { extractBundle, inspectBundle, type DecryptFactory, type VerifiedBundle } from '../bundle/bundle.js';
import type { SignaturePolicy } from '../bundle/dsse.js';
import { BundleError } from '../bundle/errors.js';
import type { ModelStore, Slot } from './model-store.js';
import type { SlotContent } from './slot.js';

/**
 * Verifies a bundle and installs it as a new slot of `store`, made active (the previous active
 * version is kept for rollback). `open` gives the bundle's bytes from the start each time it is
 * called: once to read the name and version the envelope claims (nothing is trusted from that
 * read: the store refuses the install if the verified manifest names another), once to verify
 * and extract. With `decrypt`, encrypted files are stored decrypted (mode 0600 in 0700 folders);
 * without, they stay encrypted as `<path>.age`.
 */
export async function installBundle(store: ModelStore, open: () => AsyncIterable<unknown>, policy: SignaturePolicy, options: { readonly decrypt?: DecryptFactory; readonly now?: Date } = {}): Promise<Slot> {
  const claimed = await inspectBundle(open());
  const predicate = claimed.statement?.predicate;
  if (predicate === undefined) {
    throw new BundleError('EAI_BUNDLE_MANIFEST_INVALID', `the bundle's manifest cannot be read (${claimed.issues.join('; ') || 'no manifest'}); nothing was installed.`, { details: { issues: claimed.issues } });
  }
  return store.install(predicate.name, predicate.version, async (dir) => slotContentOf(await extractBundle(open(), policy, dir, options), options.decrypt !== undefined));
}

/** What the store records of a verified bundle's files: as they are on disk after extraction. */
export function slotContentOf(verified: VerifiedBundle, decrypted: boolean): SlotContent {
  const p = verified.statement.predicate;
  const onDisk = (f: { path: string; encrypted?: unknown }): string => (f.encrypted === undefined || decrypted ? f.path : `${f.path}.age`);
  const entry = p.files.find((f) => f.path === p.entry);
  return {
    manifestDigest: createHash('sha256').update(verified.payload).digest('hex'),
    entry: entry === undefined ? p.entry : onDisk(entry),
    model: p.name,
    version: p.version,
    files: p.files.map((f) => (f.encrypted === undefined || decrypted ? { path: f.path, size: f.size, sha256: f.sha256 } : { path: onDisk(f), size: f.encrypted.size, sha256: f.encrypted.sha256 })),
  };
}
