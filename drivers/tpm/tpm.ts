import { X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { digestSize, type TpmHash } from './algorithms.js';
import { decodeQuoteAttest } from './attest.js';
import { TpmError } from './errors.js';
import { objectName } from './names.js';
import { splitPcrValues, type PcrValues } from './pcr.js';
import { pcrSelection, pcrSelectionSpec, toolsHashName, PCR_COUNT, type PcrSelection } from './pcr-selection.js';
import { decodePublic, isRestrictedDecryptionKey, isRestrictedSigningKey, publicKey, type PublicArea } from './public-area.js';
import { encodeCredentialFile, type Credential } from './credential.js';
import { runTool, type ToolOutput } from './tpm2-tools.js';
import { SerialQueue } from '../hal/serial-queue.js';

/**
 * A TPM 2.0, driven through tpm2-tools: the device side of remote attestation.
 *
 * What it does: keeps an endorsement key (EK) and an attestation key (AK) at persistent handles,
 * reads the EK certificate the manufacturer stored in NV, extends and reads PCRs, quotes PCRs
 * with a verifier's nonce, and activates a verifier's credential (proving the AK and EK share a
 * TPM). What it leaves to the verifier: everything in quote.ts and credential.ts, which need no
 * TPM.
 *
 * How: each operation runs one or a few tpm2-tools programs (execFile, no shell) over the TCTI
 * given at construction: `device:/dev/tpmrm0` (the kernel resource manager, the default on a
 * device) or `swtpm:host=127.0.0.1,port=2321` (a simulator, in tests). Files pass through a
 * private temp folder (mkdtemp, mode 0700) removed when the operation ends, even on failure.
 * Without a resource manager a TPM keeps every transient object a tool loaded until someone
 * flushes it (and fails with 0x902 once full), so on such TCTIs the driver flushes transient
 * objects after each operation that loads one.
 *
 * Concurrency: operations on one `Tpm` run one at a time in call order (a TPM without a resource
 * manager must not see two clients interleave), so calls may overlap freely. Every method
 * returns a promise; bad arguments reject it (`EAI_TPM_ARGUMENT`) like any other failure. Two `Tpm`s on the
 * same raw TPM are not coordinated: use one per TPM per process.
 *
 * Keys are made with empty hierarchy authorisations, as on a freshly provisioned device.
 * Failures are `TpmError`s whose code says what to fix (tpm2-tools.ts maps them).
 */
export interface TpmOptions {
  /** The TCTI; default `device:/dev/tpmrm0`. */
  readonly tcti?: string;
  /** Folder holding the tpm2_* programs; default: found on PATH. */
  readonly toolsDir?: string;
  /** Longest a single tpm2-tools call may run; default 60 s (RSA key generation on a slow TPM). */
  readonly timeoutMs?: number;
  /**
   * Flush transient objects after operations that load them. Default: on, except for the
   * resource-manager TCTIs (`device:/dev/tpmrm*`, `tabrmd`), which flush per client themselves.
   */
  readonly flushTransients?: boolean;
}

export type KeyAlgorithm = 'rsa' | 'ecc';

/** The persistent handle and EK certificate NV index the TCG assigns to each EK kind (EK Credential Profile 2.x). */
export const EK_DEFAULTS: Readonly<Record<KeyAlgorithm, { readonly handle: number; readonly certificateIndex: number }>> = {
  rsa: { handle: 0x81010001, certificateIndex: 0x01c00002 },
  ecc: { handle: 0x81010002, certificateIndex: 0x01c0000a },
};

/** Where `attestationKey()` keeps the AK unless told otherwise (endorsement range, beside the EKs). */
export const DEFAULT_AK_HANDLE = 0x81010003;

export interface EndorsementKey {
  readonly algorithm: KeyAlgorithm;
  readonly handle: number;
  readonly public: PublicArea;
  /** TPM2B_PUBLIC bytes, as enrolled with a verifier. */
  readonly publicBytes: Buffer;
  readonly name: Buffer;
  readonly key: KeyObject;
  /** Whether this call created and persisted it (false: it was already there). */
  readonly created: boolean;
}

export interface AttestationKey {
  readonly algorithm: KeyAlgorithm;
  readonly handle: number;
  readonly public: PublicArea;
  /** TPM2B_PUBLIC bytes: what the device sends a verifier, and what tpm2_checkquote -u reads. */
  readonly publicBytes: Buffer;
  /** The AK's name: MakeCredential binds a verifier's secret to it. */
  readonly name: Buffer;
  /** The qualified name a quote carries as qualifiedSigner. */
  readonly qualifiedName: Buffer;
  readonly key: KeyObject;
  readonly created: boolean;
}

export interface EndorsementKeyOptions {
  /** Default 'rsa' (the EK every TPM 2.0 ships a certificate for). */
  readonly algorithm?: KeyAlgorithm;
  /** Default: EK_DEFAULTS[algorithm].handle. */
  readonly handle?: number;
}

export interface AttestationKeyOptions {
  /** Default 'ecc' (NIST P-256, ECDSA-SHA256); 'rsa' is RSA-2048, RSASSA-SHA256. */
  readonly algorithm?: KeyAlgorithm;
  /** Default DEFAULT_AK_HANDLE. */
  readonly handle?: number;
  /** The EK to create the AK under, when it must be created; default the RSA EK (made if missing). */
  readonly ekHandle?: number;
}

/** What a device sends a verifier for one quote. */
export interface Quote {
  /** Raw TPMS_ATTEST. */
  readonly attest: Buffer;
  /** Raw TPMT_SIGNATURE. */
  readonly signature: Buffer;
  /** The quoted PCRs' values, read by tpm2_quote right after signing. */
  readonly pcrs: PcrValues;
}

export interface QuoteOptions {
  /** The AK's persistent handle; default DEFAULT_AK_HANDLE. */
  readonly akHandle?: number;
}

export interface ActivateOptions {
  /** Default DEFAULT_AK_HANDLE. */
  readonly akHandle?: number;
  /** The EK the credential was made for; default the RSA EK's handle. */
  readonly ekHandle?: number;
}

/** A nonce goes into TPM2B_DATA; 32 bytes fit every TPM (its limit is its largest digest plus 2). */
export const MAX_NONCE_BYTES = 64;

export class Tpm {
  readonly tcti: string;
  private readonly toolsDir: string | undefined;
  private readonly timeoutMs: number;
  private readonly flush: boolean;
  private readonly queue = new SerialQueue();

  constructor(options: TpmOptions = {}) {
    this.tcti = options.tcti ?? 'device:/dev/tpmrm0';
    this.toolsDir = options.toolsDir;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.flush = options.flushTransients ?? !/^(device:\/dev\/tpmrm\d+|tabrmd|abrmd)/u.test(this.tcti);
  }

  /**
   * The EK at its persistent handle, created there (tpm2_createek, the TCG default template)
   * when the handle is empty. Throws `EAI_TPM_KEY_TYPE` when the handle holds something that is
   * not an EK of the asked algorithm.
   */
  async endorsementKey(options: EndorsementKeyOptions = {}): Promise<EndorsementKey> {
    const algorithm = options.algorithm ?? 'rsa';
    const handle = persistentHandle(options.handle ?? EK_DEFAULTS[algorithm].handle);
    return this.queue.push(() => this.session(async (t) => {
      let created = false;
      if (!(await t.persistentHandles()).includes(handle)) {
        await t.run('tpm2_createek', ['-c', hex32(handle), '-G', algorithm, '-u', 'ek.pub', '-f', 'tss']);
        await t.flushTransients();
        created = true;
      }
      const { area, bytes } = await t.readPublic(handle);
      if (area.type !== algorithm || !isRestrictedDecryptionKey(area)) {
        throw new TpmError('EAI_TPM_KEY_TYPE', `persistent handle ${hex32(handle)} holds ${describe(area)}, not an ${algorithm.toUpperCase()} endorsement key. Pass the handle of the EK, or free this one (tpm2_evictcontrol -C o -c ${hex32(handle)}) if nothing else uses it`, { details: { handle } });
      }
      return { algorithm, handle, public: area, publicBytes: bytes, name: objectName(area), key: publicKey(area), created };
    }));
  }

  /**
   * The EK certificate the manufacturer (or swtpm_setup --create-ek-cert) stored in NV, or
   * undefined when the TPM has none for this algorithm. Throws `EAI_TPM_MALFORMED` when the
   * index holds something that is not a DER X.509 certificate.
   */
  async endorsementCertificate(algorithm: KeyAlgorithm = 'rsa', index = EK_DEFAULTS[algorithm].certificateIndex): Promise<X509Certificate | undefined> {
    return this.queue.push(() => this.session(async (t) => {
      const { stdout } = await t.run('tpm2_getcap', ['handles-nv-index']);
      if (!listedHandles(stdout).includes(index)) return undefined;
      await t.run('tpm2_nvread', ['-C', 'o', '-o', 'ek.crt', hex32(index)]);
      return parseCertificate(await t.read('ek.crt'), index);
    }));
  }

  /**
   * The AK at its persistent handle, created when the handle is empty: a restricted signing key
   * under the EK (tpm2_createak), made persistent (tpm2_evictcontrol). Throws `EAI_TPM_KEY_TYPE`
   * when the handle holds anything else than a restricted signing key of the asked algorithm,
   * rather than using or evicting a key someone else put there.
   */
  async attestationKey(options: AttestationKeyOptions = {}): Promise<AttestationKey> {
    const algorithm = options.algorithm ?? 'ecc';
    const handle = persistentHandle(options.handle ?? DEFAULT_AK_HANDLE);
    const ekHandle = persistentHandle(options.ekHandle ?? EK_DEFAULTS.rsa.handle);
    return this.queue.push(() => this.session(async (t) => {
      let created = false;
      const persistent = await t.persistentHandles();
      if (!persistent.includes(handle)) {
        if (!persistent.includes(ekHandle)) {
          throw new TpmError('EAI_TPM_KEY_TYPE', `no endorsement key at ${hex32(ekHandle)} to create the AK under. Call endorsementKey() first, or pass ekHandle`, { details: { ekHandle } });
        }
        const scheme = algorithm === 'ecc' ? ['-G', 'ecc', '-g', 'sha256', '-s', 'ecdsa'] : ['-G', 'rsa', '-g', 'sha256', '-s', 'rsassa'];
        try {
          await t.run('tpm2_createak', ['-C', hex32(ekHandle), '-c', 'ak.ctx', ...scheme, '-u', 'ak.pub', '-f', 'tss', '-n', 'ak.name']);
          await t.run('tpm2_evictcontrol', ['-C', 'o', '-c', 'ak.ctx', hex32(handle)]);
        } finally {
          await t.flushTransients();
        }
        created = true;
      }
      const { area, bytes, qualifiedName } = await t.readPublic(handle);
      if (area.type !== algorithm || !isRestrictedSigningKey(area)) {
        throw new TpmError('EAI_TPM_KEY_TYPE', `persistent handle ${hex32(handle)} holds ${describe(area)}, not an ${algorithm.toUpperCase()} attestation key (a restricted signing key). Pass another handle, or free this one (tpm2_evictcontrol -C o -c ${hex32(handle)}) if nothing else uses it`, { details: { handle } });
      }
      return { algorithm, handle, public: area, publicBytes: bytes, name: objectName(area), qualifiedName, key: publicKey(area), created };
    }));
  }

  /** Removes the persistent object at `handle` (an AK being rotated). Nothing happens when the handle is empty. */
  async evict(handle: number): Promise<void> {
    const h = persistentHandle(handle);
    return this.queue.push(() => this.session(async (t) => {
      if ((await t.persistentHandles()).includes(h)) await t.run('tpm2_evictcontrol', ['-C', 'o', '-c', hex32(h)]);
    }));
  }

  /** Extends `digest` (a `hash`-sized measurement, sha256 by default) into PCR `index` of the `hash` bank. */
  async extendPcr(index: number, digest: Uint8Array, hash: TpmHash = 'sha256'): Promise<void> {
    if (!Number.isInteger(index) || index < 0 || index >= PCR_COUNT) throw new TpmError('EAI_TPM_ARGUMENT', `PCR index ${index} is not an integer from 0 to ${PCR_COUNT - 1}`);
    if (digest.byteLength !== digestSize(hash)) throw new TpmError('EAI_TPM_ARGUMENT', `a ${hash} PCR extend takes a ${digestSize(hash)}-byte digest, got ${digest.byteLength}`);
    const arg = `${index}:${toolsHashName(hash)}=${Buffer.from(digest).toString('hex')}`;
    return this.queue.push(() => this.session(async (t) => void (await t.run('tpm2_pcrextend', [arg]))));
  }

  /** Current values of the selected PCRs. */
  async readPcrs(selection: PcrSelection): Promise<PcrValues> {
    const sel = pcrSelection(selection);
    return this.queue.push(() => this.session(async (t) => {
      await t.run('tpm2_pcrread', [pcrSelectionSpec(sel), '-o', 'pcrs.bin', '-F', 'values']);
      return splitActiveBanks(sel, await t.read('pcrs.bin'));
    }));
  }

  /**
   * Quotes the selected PCRs with the AK, over the verifier's `nonce` (1–64 bytes; 32 is usual).
   * Returns the raw TPMS_ATTEST and TPMT_SIGNATURE the verifier checks with `verifyQuote`, and
   * the PCR values it hashes them against.
   */
  async quote(selection: PcrSelection, nonce: Uint8Array, options: QuoteOptions = {}): Promise<Quote> {
    const sel = pcrSelection(selection);
    if (nonce.byteLength < 1 || nonce.byteLength > MAX_NONCE_BYTES) throw new TpmError('EAI_TPM_ARGUMENT', `a quote nonce is 1 to ${MAX_NONCE_BYTES} bytes, got ${nonce.byteLength}`);
    const ak = persistentHandle(options.akHandle ?? DEFAULT_AK_HANDLE);
    return this.queue.push(() => this.session(async (t) => {
      await t.write('nonce.bin', nonce);
      await t.run('tpm2_quote', ['-c', hex32(ak), '-l', pcrSelectionSpec(sel), '-q', 'nonce.bin', '-m', 'attest.bin', '-s', 'sig.bin', '-o', 'pcrs.bin', '-F', 'values']);
      const attest = await t.read('attest.bin');
      const signature = await t.read('sig.bin');
      // The TPM's own selection (in the attest) says which values tpm2_quote wrote, in which order.
      const signed = decodeQuoteAttest(attest).pcrSelection;
      return { attest, signature, pcrs: splitActiveBanks(signed, await t.read('pcrs.bin')) };
    }));
  }

  /**
   * TPM2_ActivateCredential: recovers the secret a verifier sealed with `makeCredential` for
   * this AK's name and this EK. The EK's policy (PolicySecret on the endorsement hierarchy, the
   * TCG default EK policy) is satisfied with a policy session, flushed afterwards. Throws
   * `EAI_TPM_CREDENTIAL` when the TPM refuses the credential (made for another key or EK, or
   * altered).
   *
   * Caveat: tpm2-tools passes the policy session between programs in a file. The kernel resource
   * manager (/dev/tpmrm0) flushes a client's sessions when the program exits, so on it this fails;
   * use tpm2-abrmd (`tabrmd:`) or the raw device for activation there.
   */
  async activateCredential(credential: Credential, options: ActivateOptions = {}): Promise<Buffer> {
    const ak = persistentHandle(options.akHandle ?? DEFAULT_AK_HANDLE);
    const ek = persistentHandle(options.ekHandle ?? EK_DEFAULTS.rsa.handle);
    return this.queue.push(() => this.session(async (t) => {
      await t.write('credential.bin', encodeCredentialFile(credential));
      await t.run('tpm2_startauthsession', ['--policy-session', '-S', 'session.ctx']);
      try {
        await t.run('tpm2_policysecret', ['-S', 'session.ctx', '-c', 'e']);
        await t.run('tpm2_activatecredential', ['-c', hex32(ak), '-C', hex32(ek), '-i', 'credential.bin', '-o', 'secret.bin', '-P', 'session:session.ctx']);
      } finally {
        await t.run('tpm2_flushcontext', ['session.ctx']).catch(() => undefined);
      }
      return t.read('secret.bin');
    }));
  }

  /** Runs `fn` with a private temp folder, removed afterwards whatever happens. */
  private async session<T>(fn: (t: ToolSession) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'aios-tpm-'));
    try {
      return await fn(new ToolSession(this.tcti, this.toolsDir, this.timeoutMs, this.flush, dir));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
}

/** One operation's tool calls, sharing its temp folder. */
class ToolSession {
  constructor(
    private readonly tcti: string,
    private readonly toolsDir: string | undefined,
    private readonly timeoutMs: number,
    private readonly flush: boolean,
    private readonly dir: string,
  ) {}

  run(tool: string, args: readonly string[]): Promise<ToolOutput> {
    return runTool(tool, args, { tcti: this.tcti, toolsDir: this.toolsDir, cwd: this.dir, timeoutMs: this.timeoutMs });
  }

  read(file: string): Promise<Buffer> {
    return readFile(path.join(this.dir, file));
  }

  write(file: string, bytes: Uint8Array): Promise<void> {
    return writeFile(path.join(this.dir, file), bytes, { mode: 0o600 });
  }

  async persistentHandles(): Promise<number[]> {
    return listedHandles((await this.run('tpm2_getcap', ['handles-persistent'])).stdout);
  }

  async flushTransients(): Promise<void> {
    if (this.flush) await this.run('tpm2_flushcontext', ['-t']);
  }

  async readPublic(handle: number): Promise<{ area: PublicArea; bytes: Buffer; qualifiedName: Buffer }> {
    await this.run('tpm2_readpublic', ['-c', hex32(handle), '-o', 'public.bin', '-f', 'tss', '-q', 'qualified-name.bin']);
    const bytes = await this.read('public.bin');
    return { area: decodePublic(bytes), bytes, qualifiedName: await this.read('qualified-name.bin') };
  }
}

/** Handles in tpm2_getcap's YAML list (`- 0x81010001`). */
function listedHandles(yaml: string): number[] {
  return [...yaml.matchAll(/^\s*-\s*(0x[0-9a-fA-F]+)\s*$/gmu)].map((m) => Number.parseInt(m[1] ?? '', 16));
}

function persistentHandle(handle: number): number {
  if (!Number.isInteger(handle) || handle < 0x81000000 || handle > 0x81ffffff) {
    throw new TpmError('EAI_TPM_ARGUMENT', `${Number.isInteger(handle) ? hex32(handle) : String(handle)} is not a persistent handle (0x81000000–0x81ffffff)`);
  }
  return handle;
}

function hex32(v: number): string {
  return `0x${v.toString(16).padStart(8, '0')}`;
}

function describe(area: PublicArea): string {
  const a = area.attributes;
  const use = a.sign && a.decrypt ? 'signing+decryption' : a.sign ? 'signing' : a.decrypt ? 'decryption' : 'no-use';
  return `an ${area.type.toUpperCase()} ${a.restricted ? 'restricted ' : ''}${use} key`;
}

/** Values tpm2-tools wrote for a selection; fewer bytes than selected means a bank is not active. */
function splitActiveBanks(selection: PcrSelection, bytes: Buffer): PcrValues {
  try {
    return splitPcrValues(selection, bytes);
  } catch (cause) {
    throw new TpmError('EAI_TPM_COMMAND', `the TPM returned ${bytes.byteLength} bytes of PCR values for ${pcrSelectionSpec(selection)}: a selected bank is not active on this TPM (tpm2_getcap pcrs lists the active ones)`, { cause });
  }
}

/** An NV certificate may be padded after its DER: keep exactly the outer SEQUENCE. */
function parseCertificate(bytes: Buffer, index: number): X509Certificate {
  const bad = (cause?: unknown): TpmError => new TpmError('EAI_TPM_MALFORMED', `NV index ${hex32(index)} does not hold a DER X.509 certificate`, { cause, details: { structure: 'EK certificate', index } });
  if (bytes.byteLength < 2 || bytes[0] !== 0x30) throw bad();
  let length = bytes[1]!;
  let header = 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n < 1 || n > 3 || bytes.byteLength < 2 + n) throw bad();
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + bytes[2 + i]!;
    header = 2 + n;
  }
  if (header + length > bytes.byteLength) throw bad();
  try {
    return new X509Certificate(bytes.subarray(0, header + length));
  } catch (cause) {
    throw bad(cause);
  }
}
