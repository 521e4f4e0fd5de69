import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { writeFileAtomic } from '../../models/atomic-write.js';
import { FleetError } from '../fleet/errors.js';
import { createCsr } from '../fleet/pki/csr.js';
import { decodeCredentialFile } from '../../drivers/tpm/credential.js';
import { DEFAULT_AK_HANDLE, EK_DEFAULTS, type Tpm } from '../../drivers/tpm/tpm.js';

/**
 * The device side of enrolment (deploy/controller/enrolment.ts has the other): on first boot the
 * device makes its key pair in its state folder (mode 0600; the key never leaves the device),
 * sends a CSR naming itself with the one-time token to the controller over HTTPS (the server
 * checked against the fleet CA from the image), checks what comes back (its own name, its own key,
 * signed by the fleet CA) and keeps it. Later boots find the certificate and skip all of this
 * until it nears expiry.
 */
export interface DeviceIdentity {
  readonly keyPem: string;
  readonly certificatePem: string;
  readonly caPem: string;
  /** Labels the operator attached to the token (merged under the agent's own). */
  readonly labels: Readonly<Record<string, string>>;
}

export interface EnrolOptions {
  readonly device: string;
  readonly state: string;
  readonly ca: string;
  readonly controller?: string;
  readonly token?: string;
  /** The device's TPM: its AK is registered with the certificate (two requests; tpm-enrolment.ts has the controller's side). */
  readonly tpm?: Tpm;
  /** Where renewal outcomes are reported (the agent's log). */
  readonly log?: (line: Record<string, unknown>) => void;
  /** Renew when fewer than this many ms of validity remain (over TLS with the current certificate). Default 30 days. */
  readonly renewBeforeMs?: number;
  readonly now?: () => number;
}

export const KEY_FILE = 'device.key';
export const CERT_FILE = 'device.pem';

/** The device's key and certificate, enrolling first if there is none (or it is about to expire). */
export async function ensureEnrolled(options: EnrolOptions): Promise<DeviceIdentity> {
  const now = options.now ?? Date.now;
  await mkdir(options.state, { recursive: true, mode: 0o700 });
  const caPem = await readText(options.ca, 'the fleet CA certificate (agent.yaml `ca`)');
  const keyFile = path.join(options.state, KEY_FILE);
  const certFile = path.join(options.state, CERT_FILE);
  let keyPem = await readFile(keyFile, 'utf8').catch(() => undefined);
  const existing = await readFile(certFile, 'utf8').catch(() => undefined);
  if (keyPem !== undefined && existing !== undefined) {
    const problem = checkCertificate(existing, keyPem, caPem, options.device, now(), 0);
    if (problem === undefined) {
      const current = { keyPem, certificatePem: existing, caPem, labels: await readLabels(options.state) };
      if (Date.parse(new X509Certificate(existing).validTo) - (options.renewBeforeMs ?? 30 * 86_400_000) > now() || options.controller === undefined) return current;
      // Near its end: renew with the certificate itself (no token; the controller checks it is the
      // one it last issued). Until that works, the current one serves.
      try {
        const csr = createCsr({ privateKey: createPrivateKey(keyPem), commonName: options.device });
        const answer = await postJson(new URL('/v1/renew', options.controller), { csr }, caPem, { cert: existing, key: keyPem });
        const renewed = typeof answer['certificate'] === 'string' ? answer['certificate'] : '';
        const wrong = checkCertificate(renewed, keyPem, caPem, options.device, now(), 0);
        if (wrong !== undefined) throw new FleetError('EAI_AGENT_ENROL', `the renewed certificate cannot be used (${wrong})`);
        await writeFileAtomic(certFile, renewed, { mode: 0o644 });
        options.log?.({ msg: 'certificate renewed', validTo: new X509Certificate(renewed).validTo });
        return { ...current, certificatePem: renewed };
      } catch (error) {
        options.log?.({ msg: 'certificate renewal failed; the current one serves until it expires', validTo: new X509Certificate(existing).validTo, error: error instanceof Error ? error.message : String(error) });
        return current;
      }
    }
    if (options.controller === undefined || options.token === undefined) {
      throw new FleetError('EAI_AGENT_ENROL', `the device certificate ${certFile} cannot be used (${problem}) and agent.yaml has no controller and token to enrol again. Provision a new token (aios fleet token --device ${options.device}).`, { details: { problem } });
    }
  }
  if (options.controller === undefined || options.token === undefined) {
    throw new FleetError('EAI_AGENT_ENROL', `this device has no certificate yet (${certFile}) and agent.yaml names no ${options.controller === undefined ? 'controller' : 'token'} to enrol with. Provision the image with the controller URL and a token (docs/fleet.md, "Provisioning a device image").`);
  }
  if (keyPem === undefined) {
    keyPem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    await writeFileAtomic(keyFile, keyPem, { mode: 0o600 });
  }
  const token = (await readText(options.token, 'the enrolment token (agent.yaml `token`)')).trim();
  const csr = createCsr({ privateKey: createPrivateKey(keyPem), commonName: options.device, challengePassword: token });
  const url = new URL('/v1/enrol', options.controller);
  let answer: Record<string, unknown>;
  if (options.tpm === undefined) answer = await postJson(url, { csr }, caPem);
  else {
    const keys = await tpmKeys(options.tpm);
    const first = await postJson(url, { csr, tpm: keys }, caPem);
    const challenge = first['challenge'] as { id?: unknown; credential?: unknown } | undefined;
    if (typeof challenge?.id !== 'string' || typeof challenge.credential !== 'string') throw new FleetError('EAI_AGENT_ENROL', `the controller at ${url.origin} answered a TPM enrolment without a challenge; is it an aios controller with TPM enrolment?`);
    // Only the TPM that holds this EK can unwrap the secret, and only for an object with the AK's name.
    const secret = await options.tpm.activateCredential(decodeCredentialFile(Buffer.from(challenge.credential, 'base64')), { akHandle: DEFAULT_AK_HANDLE, ekHandle: EK_DEFAULTS.rsa.handle });
    answer = await postJson(url, { csr, tpm: { ...keys, challenge: challenge.id, secret: secret.toString('base64') } }, caPem);
  }
  const certificatePem = typeof answer['certificate'] === 'string' ? answer['certificate'] : '';
  const problem = checkCertificate(certificatePem, keyPem, caPem, options.device, now(), 0);
  if (problem !== undefined) throw new FleetError('EAI_AGENT_ENROL', `the controller answered the enrolment with a certificate this device cannot use (${problem}); it was not kept. Check that agent.yaml's ca is this fleet's CA.`, { details: { problem } });
  const labels = isStringRecord(answer['labels']) ? answer['labels'] : {};
  await writeFileAtomic(certFile, certificatePem, { mode: 0o644 });
  await writeFileAtomic(path.join(options.state, 'labels.json'), `${JSON.stringify(labels)}\n`, { mode: 0o644 });
  return { keyPem, certificatePem, caPem, labels };
}

/** The TPM's EK (RSA, the kind TPMs ship certificates for) and AK (made once, kept at its persistent handle), base64 for the request. */
async function tpmKeys(tpm: Tpm): Promise<{ ekPublic: string; akPublic: string; ekCertificate?: string }> {
  const ek = await tpm.endorsementKey({ algorithm: 'rsa' });
  const ak = await tpm.attestationKey({ ekHandle: ek.handle });
  const certificate = await tpm.endorsementCertificate('rsa').catch(() => undefined);
  return { ekPublic: ek.publicBytes.toString('base64'), akPublic: ak.publicBytes.toString('base64'), ...(certificate === undefined ? {} : { ekCertificate: certificate.raw.toString('base64') }) };
}

/** Why the certificate cannot serve as this device's identity now, or undefined if it can. */
function checkCertificate(pem: string, keyPem: string, caPem: string, device: string, now: number, renewBeforeMs: number): string | undefined {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch {
    return 'it is not a PEM certificate';
  }
  if (cert.subject !== `CN=${device}`) return `it names ${cert.subject}, not CN=${device}`;
  if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return "it is not for this device's key";
  const ca = new X509Certificate(caPem);
  if (!cert.verify(ca.publicKey) || cert.issuer !== ca.subject) return 'it is not signed by the fleet CA';
  if (Date.parse(cert.validTo) - renewBeforeMs < now) return `it expires ${cert.validTo}`;
  return undefined;
}

async function postJson(url: URL, body: unknown, caPem: string, client: { readonly cert: string; readonly key: string } | undefined = undefined): Promise<Record<string, unknown>> {
  const data = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const request = https.request(url, { method: 'POST', ca: caPem, ...(client === undefined ? {} : { cert: client.cert, key: client.key }), headers: { 'content-type': 'application/json', 'content-length': data.length }, timeout: 30_000 }, (response) => {
      const parts: Buffer[] = [];
      let size = 0;
      response.on('data', (c: Buffer) => {
        size += c.length;
        if (size > 256 * 1024) response.destroy(new Error('answer larger than 256 KiB'));
        else parts.push(c);
      });
      response.on('error', (cause) => reject(unreachable(url, cause)));
      response.on('end', () => {
        let json: Record<string, unknown>;
        try {
          json = JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>;
        } catch {
          return reject(new FleetError('EAI_AGENT_ENROL', `the controller at ${url.origin} answered the enrolment with HTTP ${response.statusCode} and no JSON; is it an aios controller?`));
        }
        if (response.statusCode !== 200 && response.statusCode !== 202) {
          const error = (json['error'] ?? {}) as { code?: string; message?: string };
          return reject(new FleetError('EAI_AGENT_ENROL', `the controller refused the enrolment: ${error.code ?? `HTTP ${response.statusCode}`}: ${error.message ?? ''}`, { details: { status: response.statusCode, code: error.code } }));
        }
        resolve(json);
      });
    });
    request.on('timeout', () => request.destroy(new Error('no answer within 30 s')));
    request.on('error', (cause) => reject(unreachable(url, cause)));
    request.end(data);
  });
}

function unreachable(url: URL, cause: unknown): FleetError {
  return new FleetError('EAI_AGENT_ENROL', `cannot reach the controller at ${url.origin} to enrol (${cause instanceof Error ? cause.message : String(cause)}); the agent retries. Check the network and agent.yaml's controller and ca.`, { cause, details: { retryable: true } });
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (cause) {
    throw new FleetError('EAI_AGENT_ENROL', `cannot read ${what} at ${file} (${(cause as Error).message}).`, { cause, details: { file } });
  }
}

async function readLabels(state: string): Promise<Record<string, string>> {
  try {
    const parsed: unknown = JSON.parse(await readFile(path.join(state, 'labels.json'), 'utf8'));
    return isStringRecord(parsed) ? parsed : {};
  } catch {
    return {};
  }
}

function isStringRecord(value: unknown): value is Record<string, string> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.values(value).every((v) => typeof v === 'string');
}
