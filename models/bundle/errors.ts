import { AiosError } from '../../drivers/errors.js';

/**
 * Anything wrong with a model bundle: its tar container, its DSSE envelope and signatures, its
 * manifest, or a file that does not match what the manifest declares. Every attack the verifier
 * recognises has its own stable code (docs/errors.md, docs/bundles.md), and `details.offset`
 * gives the byte offset in the bundle where the problem was found when there is one.
 */
export class BundleError extends AiosError {}
