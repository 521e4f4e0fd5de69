/**
 * Model bundles: pack, co-sign, verify, inspect and extract. The format (docs/bundles.md) is one
 * ustar archive holding `envelope.dsse.json` (a DSSE envelope whose payload is the in-toto
 * manifest, see manifest.ts) followed by exactly the files the manifest declares, in its order,
 * under `files/` (`files/<path>.age` when age-encrypted).
 *
 * Verification streams and trusts nothing before it has checked it: the envelope (at most
 * MAX_ENVELOPE_BYTES) is read and its signatures checked before the payload is parsed; the
 * manifest is then checked against its schema; then each file is hashed as it passes through to
 * the caller's sink. A file handed to the sink is only known good once its stream has ended
 * without error, and the bundle as a whole only once `verifyBundle` resolves: a later file, or
 * trailing bytes, can still fail it. So a sink must stage what it receives and commit only after
 * the promise resolves (`extractBundle` writes into a hidden sibling folder and renames it).
 *
 * Encryption is injected: `encryptTo` (pack) takes a Node Transform, and `decrypt` (verify,
 * extract) a Transform or, faster, a {@link ChunkDecrypter} such as models/bundle/age's
 * `createDecryption(identities)`.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable, pipeline, type Duplex, type Writable } from 'node:stream';
import { pipeline as pipelineAsync } from 'node:stream/promises';
import { AiosError } from '../../drivers/errors.js';
import type { SigningKey } from '../keys.js';
import { addSignature, checkPolicy, decodeBase64, encodeEnvelope, parseEnvelope, signEnvelope, verifyEnvelope, type DsseEnvelope, type SignaturePolicy } from './dsse.js';
import { BundleError } from './errors.js';
import { buildStatement, checkPath, checkStatement, ENVELOPE_ENTRY, entryName, parseManifest, type BundleFile, type ModelMetadata, type ModelStatement } from './manifest.js';
import { encodeHeader, endOfArchive, fileSource, padding, TarReader, type TarHeader } from './tar.js';
import { DigestMeter } from '../digest-meter.js';

/** The largest envelope a verifier reads: bounds memory before anything is trusted. */
export const MAX_ENVELOPE_BYTES = 1024 * 1024;

/** A file as it reaches a sink: its manifest entry, its tar entry name, and which bytes the stream carries. */
export interface DeliveredFile extends BundleFile {
  readonly entryName: string;
  /** `ciphertext` for an encrypted file read without `decrypt` (its `encrypted.sha256` was checked). */
  readonly content: 'plaintext' | 'ciphertext';
}

/**
 * Receives each file while it is verified. It must read `content` to its end (or destroy it, or
 * resolve: what is left is then drained and still verified). `content` ends with an error rather
 * than 'end' when the file does not match the manifest. A rejection aborts verification.
 */
export type FileSink = (file: DeliveredFile, content: Readable) => Promise<void> | void;

/**
 * A decrypter driven by hand: `update` with each piece of ciphertext, `final` at the end; it keeps
 * no piece after `update` returns and lends each plaintext chunk to `emit` only for that call. The
 * verifier prefers it to a stream: the ciphertext is decrypted straight out of the read buffers
 * and the plaintext hashed in place, with no copies, allocations or stream hops per chunk (the
 * sink, when there is one, gets copies).
 */
export interface ChunkDecrypter {
  update(piece: Buffer, emit: (plaintext: Buffer) => void): void;
  final(emit: (plaintext: Buffer) => void): void;
}

/**
 * A fresh decrypter for one encrypted entry (`files/<path>.age`): a ChunkDecrypter, or a
 * decrypting stream (a Transform, or any Duplex), ciphertext in, plaintext out.
 */
export type DecryptFactory = (entryName: string, file: BundleFile) => Duplex | ChunkDecrypter;

export interface VerifyOptions {
  readonly onFile?: FileSink;
  /** Without it, encrypted files are verified and delivered as ciphertext. */
  readonly decrypt?: DecryptFactory;
  /** The time `expires` is compared with; default now. */
  readonly now?: Date;
}

export interface VerifiedBundle {
  readonly statement: ModelStatement;
  /** The exact signed payload bytes (what `statement` was parsed from). */
  readonly payload: Buffer;
  readonly envelope: DsseEnvelope;
  /** The trusted keys whose signatures verified. */
  readonly signedBy: readonly string[];
}

/** Source for one model file; `encrypt` (default true when `encryptTo` is given) stores it as `.age`. */
export interface PackFile {
  /** Path inside the bundle, relative to files/. */
  readonly path: string;
  /** The file on disk. */
  readonly source: string;
  readonly encrypt?: boolean;
}

/** How to encrypt: a fresh encrypting Transform per file (age to the fleet's device keys), and to how many recipients. */
export interface Encryption {
  readonly recipients: number;
  createEncryptStream(): Duplex;
}

export interface PackOptions {
  readonly metadata: ModelMetadata;
  readonly files: readonly PackFile[];
  /** At least one; each signs the envelope. */
  readonly keys: readonly SigningKey[];
  readonly encryptTo?: Encryption;
  /** Where encrypted files are staged while packing (default the OS temp folder). */
  readonly tmpDir?: string;
}

/**
 * Writes a bundle to `out` and ends it; resolves to the signed statement. Files are read twice
 * (once to hash, once to write; encrypted ones are encrypted once into a private temp folder) and a
 * file that changes in between fails with EAI_BUNDLE_SOURCE_CHANGED. On rejection `out` is
 * destroyed and what was written to it is incomplete: discard it.
 */
export async function packBundle(options: PackOptions, out: Writable): Promise<ModelStatement> {
  try {
    return await pack(options, out);
  } catch (error) {
    out.destroy(); // closes a file stream; no 'error' event that a caller awaiting this promise would have to handle
    throw error;
  }
}

async function pack(options: PackOptions, out: Writable): Promise<ModelStatement> {
  if (options.keys.length === 0) throw packInput('at least one signing key is needed');
  if (options.files.length === 0) throw packInput('a bundle holds at least one file');
  const tmp = await fs.mkdtemp(path.join(options.tmpDir ?? os.tmpdir(), 'aios-pack-'));
  try {
    const stored: { file: BundleFile; from: string }[] = [];
    for (const [i, f] of options.files.entries()) {
      checkPath(f.path, 'pack file');
      const encrypt = f.encrypt ?? options.encryptTo !== undefined;
      if (!encrypt) {
        stored.push({ file: { path: f.path, ...(await measure(f.source)) }, from: f.source });
        continue;
      }
      if (options.encryptTo === undefined) throw packInput(`'${f.path}' asks for encryption but no encryptTo was given`);
      const cipherFile = path.join(tmp, `${i}.age`);
      const plain = new DigestMeter();
      const cipher = new DigestMeter();
      await pipelineAsync(createSourceStream(f.source), plain, options.encryptTo.createEncryptStream(), cipher, createWriteStream(cipherFile, { mode: 0o600 })).catch(sourceError(f.source));
      stored.push({ file: { path: f.path, ...plain.result(), encrypted: { recipients: options.encryptTo.recipients, ...cipher.result() } }, from: cipherFile });
    }
    const statement = buildStatement(options.metadata, stored.map((s) => s.file));
    const envelope = encodeEnvelope(signEnvelope(Buffer.from(JSON.stringify(statement), 'utf8'), options.keys));
    if (envelope.length > MAX_ENVELOPE_BYTES) throw tooLarge(envelope.length, 0);
    const mtime = Math.floor(Date.parse(statement.predicate.created) / 1000);
    async function* archive(): AsyncGenerator<Buffer> {
      yield encodeHeader({ name: ENVELOPE_ENTRY, size: envelope.length, mtime });
      yield envelope;
      yield padding(envelope.length);
      for (const { file, from } of stored) {
        const expect = file.encrypted ?? file;
        yield encodeHeader({ name: entryName(file), size: expect.size, mtime });
        yield* unchanged(createSourceStream(from), expect, file.path);
        yield padding(expect.size);
      }
      yield endOfArchive();
    }
    await pipelineAsync(Readable.from(archive()), out);
    return statement;
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Adds `key`'s signature to the bundle at `file` (rewriting its envelope; the rest is copied byte
 * for byte). The result is fully verified against the new signature before it replaces the
 * original, so a co-signer never signs files that do not match the manifest. Encrypted files are
 * checked as ciphertext unless `decrypt` is given. Resolves `added: false` (nothing written) when
 * the key had already signed.
 */
export async function signBundle(file: string, key: SigningKey, options: { readonly decrypt?: DecryptFactory } = {}): Promise<{ readonly added: boolean; readonly keyids: readonly string[] }> {
  const tar = new TarReader(fileSource(file, { chunkSize: 64 * 1024 }));
  let envelope: DsseEnvelope;
  let header: TarHeader;
  let end: number;
  try {
    ({ envelope, header } = await readEnvelope(tar));
    parseManifest(decodeBase64(envelope.payload, 'payload'));
    end = tar.position;
  } finally {
    await tar.close();
  }
  const signed = addSignature(envelope, key);
  const keyids = signed.signatures.map((s) => s.keyid);
  if (signed === envelope) return { added: false, keyids };
  const bytes = encodeEnvelope(signed);
  if (bytes.length > MAX_ENVELOPE_BYTES) throw tooLarge(bytes.length, 0);
  const stat = await fs.stat(file);
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.signing-${process.pid}-${Date.now()}`);
  try {
    async function* rewritten(): AsyncGenerator<Buffer> {
      yield encodeHeader({ name: ENVELOPE_ENTRY, size: bytes.length, mtime: header.mtime });
      yield bytes;
      yield padding(bytes.length);
      yield* createReadStream(file, { start: end }) as AsyncIterable<Buffer>;
    }
    await pipelineAsync(Readable.from(rewritten()), createWriteStream(tmp, { flags: 'wx', mode: stat.mode & 0o777 }));
    await verifyBundle(fileSource(tmp), { keys: [{ keyid: key.keyid, publicKey: key.publicKey }], threshold: 1 }, options.decrypt === undefined ? {} : { decrypt: options.decrypt });
    await fs.rename(tmp, file);
  } catch (error) {
    await fs.rm(tmp, { force: true });
    throw error;
  }
  return { added: true, keyids };
}

/**
 * Verifies a bundle read from `source` against `policy` (see the module comment for the order
 * of checks), handing each file to `options.onFile` as it is verified. Resolves to the verified
 * manifest once every byte to the end of the source has been checked; only then are the
 * delivered files to be trusted. The source is consumed and released (destroyed) either way.
 */
export async function verifyBundle(source: AsyncIterable<unknown>, policy: SignaturePolicy, options: VerifyOptions = {}): Promise<VerifiedBundle> {
  const tar = new TarReader(source);
  try {
    checkPolicy(policy);
    const { envelope } = await readEnvelope(tar);
    const { payload, keyids } = verifyEnvelope(envelope, policy);
    const statement = parseManifest(payload);
    const expires = statement.predicate.expires;
    const now = options.now ?? new Date();
    if (expires !== undefined && now.getTime() >= Date.parse(expires)) {
      throw new BundleError('EAI_BUNDLE_EXPIRED', `${statement.predicate.name} ${statement.predicate.version} expired at ${expires} (now ${now.toISOString()}); ask its publisher for a current release.`, { details: { expires, now: now.toISOString() } });
    }
    await readFiles(tar, statement.predicate.files, options);
    return { statement, payload, envelope, signedBy: keyids };
  } finally {
    await tar.close();
  }
}

/** What `inspectBundle` shows. Nothing in it is verified: for display only (`aios bundle inspect`). */
export interface BundleInspection {
  readonly verified: false;
  readonly payloadType: string;
  /** The keyids the signatures claim; not checked. */
  readonly keyids: readonly string[];
  /** Hex SHA-256 of the signed payload bytes: the manifest digest a model store records and an attester measures. */
  readonly payloadSha256: string;
  /** The manifest, when it parses and follows the schema. */
  readonly statement?: ModelStatement;
  /** The payload as parsed JSON, whatever it is (undefined when it is not JSON). */
  readonly raw?: unknown;
  /** Why `statement` is missing. */
  readonly issues: readonly string[];
}

/**
 * Reads the envelope and manifest WITHOUT checking any signature or file: for showing what a
 * bundle claims to be. Throws only when there is no readable envelope. Reads the first entry only
 * and then releases the source.
 */
export async function inspectBundle(source: AsyncIterable<unknown>): Promise<BundleInspection> {
  const tar = new TarReader(source);
  try {
    const { envelope } = await readEnvelope(tar);
    const payload = decodeBase64(envelope.payload, 'payload');
    const base = { verified: false as const, payloadType: envelope.payloadType, keyids: envelope.signatures.map((s) => s.keyid), payloadSha256: createHash('sha256').update(payload).digest('hex') };
    let raw: unknown;
    try {
      raw = JSON.parse(payload.toString('utf8'));
    } catch (error) {
      return { ...base, issues: [`the payload is not JSON: ${error instanceof Error ? error.message : String(error)}`] };
    }
    try {
      return { ...base, raw, statement: checkStatement(raw), issues: [] };
    } catch (error) {
      const issues = error instanceof AiosError && Array.isArray(error.details['issues']) ? (error.details['issues'] as string[]) : [error instanceof Error ? error.message : String(error)];
      return { ...base, raw, issues };
    }
  } finally {
    await tar.close();
  }
}

/**
 * Verifies the bundle and writes its files under `dir`, which must not exist yet. Files are
 * written into a hidden sibling folder (mode 0700) and it is renamed to `dir` only after the
 * whole bundle verified; on any failure it is removed and `dir` never appears. Decrypted files
 * are written 0600 and their folder stays 0700; plain files 0644. Without `decrypt`, encrypted
 * files are written as `<path>.age`.
 */
export async function extractBundle(source: AsyncIterable<unknown>, policy: SignaturePolicy, dir: string, options: Omit<VerifyOptions, 'onFile'> = {}): Promise<VerifiedBundle> {
  const target = path.resolve(dir);
  let staging: string;
  try {
    checkPolicy(policy);
    if (await fs.stat(target).then(() => true, () => false)) {
      throw new BundleError('EAI_BUNDLE_EXTRACT_EXISTS', `'${dir}' already exists; extract into a new folder (the store never extracts over a model).`, { details: { dir: target } });
    }
    await fs.mkdir(path.dirname(target), { recursive: true });
    staging = await fs.mkdtemp(path.join(path.dirname(target), `.${path.basename(target)}.partial-`));
  } catch (error) {
    await release(source);
    throw error;
  }
  let secret = false;
  try {
    const verified = await verifyBundle(source, policy, {
      ...options,
      onFile: async (file, content) => {
        const rel = file.content === 'ciphertext' ? `${file.path}.age` : file.path;
        const dest = path.join(staging, ...rel.split('/'));
        // checkPath already refused anything that could leave the folder; this is the second lock.
        if (!dest.startsWith(`${staging}${path.sep}`)) throw new BundleError('EAI_BUNDLE_PATH_TRAVERSAL', `'${rel}' resolves outside the extraction folder.`, { details: { name: rel } });
        const plaintextSecret = file.encrypted !== undefined && file.content === 'plaintext';
        secret ||= plaintextSecret;
        await fs.mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
        await pipelineAsync(content, createWriteStream(dest, { flags: 'wx', mode: plaintextSecret ? 0o600 : 0o644 }));
      },
    });
    if (!secret) await fs.chmod(staging, 0o755);
    await fs.rename(staging, target);
    return verified;
  } catch (error) {
    await fs.rm(staging, { recursive: true, force: true });
    throw error;
  }
}

/** Releases a source that will not be read (destroys a stream, closes a generator). */
async function release(source: AsyncIterable<unknown>): Promise<void> {
  try {
    await source[Symbol.asyncIterator]().return?.();
  } catch {
    // Nothing to do about a source that fails as it is released.
  }
}

/** The first entry: must be the envelope, of at most MAX_ENVELOPE_BYTES; parsed, not verified. */
async function readEnvelope(tar: TarReader): Promise<{ envelope: DsseEnvelope; header: TarHeader }> {
  const first = await tar.next();
  if (first === null) throw envelopeMissing('the archive is empty', 0);
  checkEntry(first);
  if (first.name !== ENVELOPE_ENTRY) throw envelopeMissing(`the first entry is '${first.name}'`, first.offset);
  if (first.size > MAX_ENVELOPE_BYTES) throw tooLarge(first.size, first.offset);
  return { envelope: parseEnvelope(await tar.readBody(MAX_ENVELOPE_BYTES)), header: first };
}

/** The entries after the envelope: exactly the declared files, in order, then the end of the archive. */
async function readFiles(tar: TarReader, files: readonly BundleFile[], options: VerifyOptions): Promise<void> {
  const seen = new Set<string>([ENVELOPE_ENTRY]);
  const declared = new Map(files.map((f, i) => [entryName(f), i]));
  for (const [i, file] of files.entries()) {
    const expected = entryName(file);
    const h = await tar.next();
    if (h === null) throw fileMissing(expected, 'the archive ends there', tar.position);
    checkEntry(h);
    if (seen.has(h.name)) throw duplicate(h);
    if (h.name !== expected) {
      if ((declared.get(h.name) ?? -1) > i) throw fileMissing(expected, `'${h.name}' (declared later) is there instead`, h.offset);
      throw new BundleError('EAI_BUNDLE_FILE_UNEXPECTED', `the bundle holds '${h.name}' at byte ${h.offset} where the manifest declares '${expected}': it is not one of this bundle's files (files of another bundle mixed in, or a tampered archive). Do not use it.`, { details: { name: h.name, expected, offset: h.offset } });
    }
    seen.add(h.name);
    await readFile(tar, h, file, options);
  }
  const extra = await tar.next();
  if (extra !== null) {
    checkEntry(extra);
    if (seen.has(extra.name)) throw duplicate(extra);
    throw new BundleError('EAI_BUNDLE_FILE_UNEXPECTED', `the bundle holds '${extra.name}' at byte ${extra.offset} after all declared files; the manifest does not list it. Do not use this bundle.`, { details: { name: extra.name, offset: extra.offset } });
  }
}

async function readFile(tar: TarReader, h: TarHeader, file: BundleFile, options: VerifyOptions): Promise<void> {
  const stored = file.encrypted ?? file;
  const name = entryName(file);
  if (h.size !== stored.size) throw sizeError(h.size > stored.size, name, stored.size, `its tar header says ${h.size}`, h.offset);
  const decrypting = file.encrypted !== undefined && options.decrypt !== undefined;
  // Decrypting, the ciphertext is only counted: each of its chunks is authenticated by the AEAD,
  // its header by the header MAC, and the plaintext's SHA-256 is the one the signers vouched for.
  // Hashing it too would cost a second SHA-256 pass for nothing (docs/bundles.md).
  const hashed = checked(tar.body(), decrypting ? { size: stored.size } : stored, name, h.offset);
  if (!decrypting || options.decrypt === undefined) {
    // A sink may keep chunks; a source that reuses its buffers must not see them change.
    const raw = tar.reusesBuffers && options.onFile !== undefined ? copies(hashed) : hashed;
    await deliver(options.onFile, { ...file, entryName: name, content: file.encrypted === undefined ? 'plaintext' : 'ciphertext' }, raw);
    return;
  }
  const decrypter = options.decrypt(name, file);
  const delivered: DeliveredFile = { ...file, entryName: name, content: 'plaintext' };
  if (isChunkDecrypter(decrypter)) {
    await deliver(options.onFile, delivered, decryptedBy(decrypter, hashed, new Tally(file, name, h.offset), options.onFile !== undefined));
    return;
  }
  const raw = tar.reusesBuffers ? copies(hashed) : hashed;
  const plaintext = pipeline(Readable.from(raw), decrypter, () => undefined);
  await deliver(options.onFile, delivered, checked(decryptErrors(plaintext, name), file, name, h.offset));
}

function isChunkDecrypter(d: Duplex | ChunkDecrypter): d is ChunkDecrypter {
  return typeof (d as Partial<ChunkDecrypter>).update === 'function' && typeof (d as Partial<ChunkDecrypter>).final === 'function' && typeof (d as Partial<Duplex>).pipe !== 'function';
}

/**
 * Plaintext from a ChunkDecrypter, checked against the manifest as it is emitted (while the lent
 * buffer is valid). Yields copies only when `keep` (a sink is listening); otherwise it only checks.
 */
async function* decryptedBy(decrypter: ChunkDecrypter, ciphertext: AsyncIterable<Buffer>, tally: Tally, keep: boolean): AsyncGenerator<Buffer> {
  const out: Buffer[] = [];
  const emit = (plain: Buffer): void => {
    tally.add(plain);
    if (keep) out.push(Buffer.from(plain));
  };
  const name = tally.name;
  try {
    for await (const piece of ciphertext) {
      decrypter.update(piece, emit);
      yield* out.splice(0);
    }
    decrypter.final(emit);
  } catch (error) {
    throw asDecryptError(error, name);
  }
  yield* out.splice(0);
  tally.end();
}

async function* copies(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  for await (const chunk of chunks) yield Buffer.from(chunk);
}

/** Passes chunks on while hashing and counting them; fails as soon as there are too many, and at the end on too few or a wrong digest. */
async function* checked(chunks: AsyncIterable<Buffer>, expect: Expected, name: string, offset: number): AsyncGenerator<Buffer> {
  const tally = new Tally(expect, name, offset);
  for await (const chunk of chunks) {
    tally.add(chunk);
    yield chunk;
  }
  tally.end();
}

/** What a file's bytes must add up to: its size and, unless only counted, its SHA-256. */
interface Expected {
  readonly size: number;
  readonly sha256?: string;
}

/** A file's bytes counted and hashed against its manifest entry. */
class Tally {
  readonly #hash;
  #n = 0;

  constructor(
    readonly expect: Expected,
    readonly name: string,
    readonly offset: number,
  ) {
    this.#hash = expect.sha256 === undefined ? undefined : createHash('sha256');
  }

  /** Fails as soon as there are more bytes than declared. */
  add(chunk: Buffer): void {
    this.#n += chunk.length;
    if (this.#n > this.expect.size) throw sizeError(true, this.name, this.expect.size, `over ${this.#n - chunk.length} bytes arrived`, this.offset);
    this.#hash?.update(chunk);
  }

  /** Fails on too few bytes or a digest other than the declared one. */
  end(): void {
    const { name, offset, expect } = this;
    if (this.#n < expect.size) throw sizeError(false, name, expect.size, `${this.#n} bytes arrived`, offset);
    if (this.#hash === undefined) return;
    const digest = this.#hash.digest('hex');
    if (digest !== expect.sha256) {
      throw new BundleError('EAI_BUNDLE_FILE_DIGEST', `'${name}' (at byte ${offset}) has SHA-256 ${digest}, the signed manifest says ${expect.sha256}: the file was changed or belongs to another bundle. Do not use this bundle.`, { details: { name, offset, expected: expect.sha256, actual: digest } });
    }
  }
}

async function* decryptErrors(plaintext: AsyncIterable<unknown>, name: string): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of plaintext) yield Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
  } catch (error) {
    throw asDecryptError(error, name);
  }
}

function asDecryptError(error: unknown, name: string): unknown {
  if (error instanceof AiosError) return error;
  return new BundleError('EAI_BUNDLE_DECRYPT', `'${name}' cannot be decrypted: ${error instanceof Error ? error.message : String(error)}. Check that this device's identity is one of the bundle's recipients.`, { cause: error, details: { name } });
}

/** Streams `chunks` to the sink (or just through, to verify them, without one); see FileSink. */
async function deliver(sink: FileSink | undefined, file: DeliveredFile, chunks: AsyncIterable<Buffer>): Promise<void> {
  if (sink === undefined) {
    for await (const _ of chunks) void _;
    return;
  }
  const out = new PassThrough({ highWaterMark: 256 * 1024 });
  out.on('error', () => undefined); // the sink sees errors through its own listeners; none must crash us
  let sinkError: { readonly error: unknown } | undefined;
  const settled = Promise.resolve()
    .then(() => sink(file, out))
    .then(
      () => {
        if (!out.destroyed && !out.readableEnded) out.resume();
      },
      (error: unknown) => {
        sinkError = { error };
        out.destroy();
      },
    );
  try {
    for await (const chunk of chunks) {
      if (sinkError !== undefined) throw sinkError.error;
      if (out.destroyed) continue; // the sink gave up on this file: it is still verified
      if (!out.write(chunk)) await drained(out);
    }
  } catch (error) {
    out.destroy(error instanceof Error ? error : new Error(String(error)));
    await settled;
    throw error;
  }
  out.end();
  await settled;
  if (sinkError !== undefined) throw sinkError.error;
}

function drained(stream: PassThrough): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.on('drain', done);
    stream.on('close', done);
  });
}

/** Entry types and names the verifier refuses wherever they appear. */
function checkEntry(h: TarHeader): void {
  const details = { name: h.name, type: h.type, offset: h.offset };
  if (h.type === 'symlink' || h.type === 'hardlink') {
    throw new BundleError('EAI_BUNDLE_ENTRY_LINK', `the bundle holds a ${h.type} '${h.name}' -> '${h.linkname}' at byte ${h.offset}; bundles hold regular files only (a link can point anywhere on the device). Do not use it.`, { details });
  }
  if (h.type === 'char' || h.type === 'block' || h.type === 'fifo' || h.type === 'directory' || h.type === 'contiguous') {
    throw new BundleError('EAI_BUNDLE_ENTRY_SPECIAL', `the bundle holds a ${h.type} entry '${h.name}' at byte ${h.offset}; bundles hold regular files only. Do not use it.`, { details });
  }
  if (h.type !== 'file') {
    throw new BundleError('EAI_BUNDLE_TAR_UNSUPPORTED', `the bundle has a tar entry of type '${h.typeflag}' (${h.type}) at byte ${h.offset}; bundles use plain ustar headers (no pax or GNU extension headers). Repack it with \`aios bundle pack\` or \`tar --format=ustar\`.`, { details });
  }
  checkPath(h.name, 'tar entry', h.offset);
}

/** A source file's bytes, failing if they differ from what was measured (it changed while packing). */
async function* unchanged(chunks: AsyncIterable<Buffer>, expect: { readonly size: number; readonly sha256: string }, name: string): AsyncGenerator<Buffer> {
  const hash = createHash('sha256');
  let n = 0;
  for await (const chunk of chunks) {
    n += chunk.length;
    if (n > expect.size) break;
    hash.update(chunk);
    yield chunk;
  }
  if (n !== expect.size || hash.digest('hex') !== expect.sha256) {
    throw new BundleError('EAI_BUNDLE_SOURCE_CHANGED', `'${name}' changed while it was being packed; pack again once nothing writes to it.`, { details: { name } });
  }
}

function createSourceStream(file: string): Readable {
  return createReadStream(file, { highWaterMark: 1024 * 1024 });
}

async function measure(file: string): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  let size = 0;
  try {
    for await (const chunk of createSourceStream(file) as AsyncIterable<Buffer>) {
      hash.update(chunk);
      size += chunk.length;
    }
  } catch (error) {
    throw packInput(`cannot read '${file}': ${error instanceof Error ? error.message : String(error)}`, error);
  }
  return { size, sha256: hash.digest('hex') };
}


function sourceError(file: string): (error: unknown) => never {
  return (error) => {
    if (error instanceof AiosError) throw error;
    throw packInput(`cannot read or encrypt '${file}': ${error instanceof Error ? error.message : String(error)}`, error);
  };
}

function packInput(what: string, cause?: unknown): BundleError {
  return new BundleError('EAI_BUNDLE_PACK_INPUT', `cannot pack the bundle: ${what}.`, cause === undefined ? {} : { cause });
}

function envelopeMissing(what: string, offset: number): BundleError {
  return new BundleError('EAI_BUNDLE_ENVELOPE_MISSING', `a bundle starts with ${ENVELOPE_ENTRY}, but ${what}; this is not a model bundle (or not one aios can check).`, { details: { offset } });
}

function tooLarge(size: number, offset: number): BundleError {
  return new BundleError('EAI_BUNDLE_ENVELOPE_TOO_LARGE', `the envelope is ${size} bytes, over the ${MAX_ENVELOPE_BYTES}-byte limit; it is not read. A manifest that large is not a model's (shorten notes or labels).`, { details: { size, limit: MAX_ENVELOPE_BYTES, offset } });
}

function fileMissing(expected: string, what: string, offset: number): BundleError {
  return new BundleError('EAI_BUNDLE_FILE_MISSING', `the manifest declares '${expected}' next, but ${what} (byte ${offset}); the bundle is incomplete or tampered with. Do not use it.`, { details: { expected, offset } });
}

function duplicate(h: TarHeader): BundleError {
  return new BundleError('EAI_BUNDLE_FILE_DUPLICATE', `'${h.name}' appears a second time at byte ${h.offset}; a bundle holds each entry once (a second copy would replace the verified one on extraction). Do not use it.`, { details: { name: h.name, offset: h.offset } });
}

function sizeError(longer: boolean, name: string, declared: number, found: string, offset: number): BundleError {
  return new BundleError(longer ? 'EAI_BUNDLE_FILE_TOO_LONG' : 'EAI_BUNDLE_FILE_TOO_SHORT', `'${name}' (byte ${offset}) should be ${declared} bytes as the signed manifest says, but ${found}; the file was changed or cut. Do not use this bundle.`, { details: { name, declared, offset } });
}
