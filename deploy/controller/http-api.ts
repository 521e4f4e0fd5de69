import type { IncomingMessage, ServerResponse } from 'node:http';
import { AiosError } from '../../drivers/errors.js';
import { aios } from '../proto/gen/aios.js';
import type { CommandBody, CommandQueue } from './commands.js';
import type { Deployments, HealthPolicy } from './deployments.js';
import type { DeviceRegistry } from './devices.js';
import type { Enrolled, Enrolment } from './enrolment.js';
import type { TpmEnrolmentRequest } from './tpm-enrolment.js';
import { readFile } from 'node:fs/promises';
import type { TLSSocket } from 'node:tls';
import { parseIdentityFile, type X25519Identity } from '../../models/bundle/age/keys.js';
import { FleetError } from '../fleet/errors.js';
import type { DeviceRevocationReason, Revocations } from './revocations.js';
import type { Rollouts, RolloutSpec, StageSpec } from './rollouts.js';

/**
 * The controller's HTTP JSON endpoints, as request handlers for node:http / node:https servers:
 *
 *  - enrolment (public, HTTPS with the controller's server certificate): `POST /v1/enrol`
 *    `{ "csr": "<PEM>" }` → `{ certificate, ca, deviceId, fleet, labels }`;
 *  - the operator API (loopback by default: it has no authentication of its own, so expose it
 *    only behind a proxy that has): `GET /v1/devices`, `GET /v1/devices/<id>` (with recent events
 *    and commands), `POST /v1/devices/<id>/commands` `{ "stopPipeline": { "name": "front" } }`
 *    (one action, as in fleet.proto's Command, camelCase), `GET /v1/commands`, `GET /v1/tokens`,
 *    `POST /v1/tokens` `{ "deviceId"?, "validForMs"?, "labels"? }` → `{ token, id, expiresUnixMs }`
 *    (the token is in this answer only).
 *
 * Errors answer `{ "error": { "code", "message" } }` with 400 (bad request), 403 (refused
 * enrolment), 404, 413 (body over 64 KiB) or 500 (EAI_INTERNAL, details only in the log).
 */
const MAX_BODY = 64 * 1024;

export function enrolmentHandler(enrolment: Enrolment, log: (line: Record<string, unknown>) => void): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) =>
    void handle(req, res, log, async () => {
      if (req.method === 'POST' && url(req).pathname === '/v1/renew') return renew(enrolment, req, log);
      if (req.method !== 'POST' || url(req).pathname !== '/v1/enrol') return notFound(req);
      const body = (await readJson(req)) as { csr?: unknown; tpm?: unknown };
      if (typeof body.csr !== 'string') return reply(400, { error: { code: 'EAI_FLEET_ENROL_REQUEST', message: 'the body must be JSON { "csr": "<PEM certificate request>", "tpm"?: { ekPublic, akPublic, ekCertificate?, challenge?, secret? } }' } });
      const tpm = tpmRequest(body.tpm);
      if (typeof tpm === 'string') return reply(400, { error: { code: 'EAI_FLEET_ENROL_REQUEST', message: tpm } });
      try {
        const answer = await enrolment.enrol(body.csr, tpm);
        if ('challenge' in answer) {
          log({ msg: 'enrolment challenge', challenge: answer.challenge.id });
          return reply(202, { challenge: { id: answer.challenge.id, credential: answer.challenge.credential.toString('base64'), expiresUnixMs: answer.challenge.expiresUnixMs } });
        }
        log({ msg: 'enrolled', device: answer.deviceId });
        return certificateReply(answer);
      } catch (error) {
        return refusal(error, 'enrolment refused', req, log);
      }
    });
}

function certificateReply(issued: Enrolled): Reply {
  return reply(200, { certificate: issued.certificatePem, ca: issued.caCertificatePem, deviceId: issued.deviceId, fleet: issued.fleet, labels: issued.labels });
}

/** 403 for a refusal (an AiosError); anything else is a bug, for the 500 path. */
function refusal(error: unknown, msg: string, req: IncomingMessage, log: (line: Record<string, unknown>) => void): Reply {
  if (!(error instanceof AiosError)) throw error;
  // Never the token itself, only the refusal's code: the log is not a secret store.
  log({ msg, code: error.code, from: req.socket.remoteAddress });
  return reply(403, { error: { code: error.code, message: error.message } });
}

/** `POST /v1/renew` `{ csr }` over TLS with the device's current certificate: a new certificate, no token. */
async function renew(enrolment: Enrolment, req: IncomingMessage, log: (line: Record<string, unknown>) => void): Promise<Reply> {
  const socket = req.socket as TLSSocket;
  const peer = typeof socket.getPeerX509Certificate === 'function' ? socket.getPeerX509Certificate() : undefined;
  if (!socket.authorized || peer === undefined) return reply(401, { error: { code: 'EAI_FLEET_RENEW', message: `renewal needs the device's current certificate from the fleet CA as the TLS client certificate${socket.authorizationError ? ` (${String(socket.authorizationError)})` : ''}; a device without one enrols with a token (POST /v1/enrol)` } });
  const body = (await readJson(req)) as { csr?: unknown };
  if (typeof body.csr !== 'string') return reply(400, { error: { code: 'EAI_FLEET_ENROL_REQUEST', message: 'the body must be JSON { "csr": "<PEM certificate request>" }' } });
  try {
    const renewed = await enrolment.renew(peer, body.csr);
    log({ msg: 'certificate renewed', device: renewed.deviceId });
    return certificateReply(renewed);
  } catch (error) {
    return refusal(error, 'renewal refused', req, log);
  }
}

/** The `tpm` member of an enrolment request (base64 fields), or what is wrong with it. */
function tpmRequest(value: unknown): TpmEnrolmentRequest | undefined | string {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null) return '"tpm" must be an object { ekPublic, akPublic, ekCertificate?, challenge?, secret? }';
  const v = value as Record<string, unknown>;
  const bytes = (key: string, required: boolean): Buffer | undefined | string => {
    const b = v[key];
    if (b === undefined && !required) return undefined;
    if (typeof b !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/u.test(b) || b.length > 16_384) return `"tpm.${key}" must be base64${required ? '' : ' when given'}`;
    return Buffer.from(b, 'base64');
  };
  const ekPublic = bytes('ekPublic', true);
  const akPublic = bytes('akPublic', true);
  const ekCertificate = bytes('ekCertificate', false);
  const secret = bytes('secret', false);
  for (const b of [ekPublic, akPublic, ekCertificate, secret]) if (typeof b === 'string') return b;
  if (v['challenge'] !== undefined && (typeof v['challenge'] !== 'string' || !/^[0-9a-f]{24}$/u.test(v['challenge']))) return '"tpm.challenge" must be the id the controller answered';
  return {
    ekPublic: ekPublic as Buffer,
    akPublic: akPublic as Buffer,
    ...(ekCertificate === undefined ? {} : { ekCertificate: ekCertificate as Buffer }),
    ...(typeof v['challenge'] === 'string' ? { challenge: v['challenge'] } : {}),
    ...(secret === undefined ? {} : { secret: secret as Buffer }),
  };
}

export interface OperatorApi {
  readonly registry: DeviceRegistry;
  readonly commands: CommandQueue;
  readonly enrolment: Enrolment;
  readonly deployments: Deployments;
  readonly rollouts: Rollouts;
  readonly revocations: Revocations;
}

export function operatorHandler(api: OperatorApi, log: (line: Record<string, unknown>) => void): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) =>
    void handle(req, res, log, async () => {
      const path = url(req).pathname.split('/').filter((p) => p !== '').map(decodeURIComponent);
      if (req.method === 'GET' && path.join('/') === 'v1/devices') return reply(200, { devices: await api.registry.list() });
      if (req.method === 'GET' && path.join('/') === 'v1/commands') return reply(200, { commands: await api.commands.list() });
      if (req.method === 'GET' && path.join('/') === 'v1/revocations') return reply(200, { devices: api.revocations.revokedDevices(), crl: api.revocations.crlFile });
      if (path[0] === 'v1' && path[1] === 'rollouts') return rolloutRoute(api, req, path.slice(2), log);
      if (path.join('/') === 'v1/tokens') {
        if (req.method === 'GET') return reply(200, { tokens: await api.enrolment.tokens() });
        if (req.method === 'POST') {
          const body = (await readJson(req)) as { deviceId?: unknown; validForMs?: unknown; labels?: unknown };
          try {
            const issued = await api.enrolment.issueToken({
              validForMs: typeof body.validForMs === 'number' ? body.validForMs : 7 * 86_400_000,
              ...(typeof body.deviceId === 'string' ? { deviceId: body.deviceId } : {}),
              ...(typeof body.labels === 'object' && body.labels !== null ? { labels: body.labels as Record<string, string> } : {}),
            });
            log({ msg: 'token issued', id: issued.id, device: issued.deviceId });
            return reply(201, issued);
          } catch (error) {
            if (error instanceof AiosError) return reply(400, { error: { code: error.code, message: error.message } });
            throw error;
          }
        }
      }
      if (path[0] === 'v1' && path[1] === 'devices' && path[2] !== undefined) {
        const id = path[2];
        const device = await api.registry.get(id);
        if (device === undefined) return reply(404, { error: { code: 'EAI_FLEET_DEVICE_UNKNOWN', message: `device '${id}' is not enrolled` } });
        if (req.method === 'GET' && path.length === 3) return reply(200, { device, events: await api.registry.events(id, 50), commands: await api.commands.list(id, 50) });
        if (req.method === 'POST' && path.length === 4 && path[3] === 'revoke') {
          const body = (await readJson(req)) as { reason?: unknown };
          try {
            const revoked = await api.revocations.revoke(id, (typeof body.reason === 'string' ? body.reason : 'unspecified') as DeviceRevocationReason);
            log({ msg: 'device revoked', device: id, reason: revoked.reason, certificates: revoked.certificates });
            return reply(200, { revoked });
          } catch (error) {
            if (error instanceof AiosError) return reply(400, { error: { code: error.code, message: error.message } });
            throw error;
          }
        }
        if (req.method === 'POST' && path.length === 4 && path[3] === 'commands') {
          const body = (await readJson(req)) as Record<string, unknown> & { ttlMs?: unknown };
          const { ttlMs, ...action } = body;
          let spec: CommandBody;
          try {
            spec = aios.fleet.v1.Command.toObject(aios.fleet.v1.Command.fromObject(action), { defaults: false, longs: Number }) as CommandBody;
          } catch (error) {
            return reply(400, { error: { code: 'EAI_FLEET_COMMAND_INVALID', message: `the body is not a command action (${(error as Error).message}); send one of deploy, rollback, startPipeline, stopPipeline, setConfig, requestAttestation` } });
          }
          try {
            const record = await api.commands.send(id, spec, typeof ttlMs === 'number' ? { ttlMs } : {});
            return reply(202, { command: record });
          } catch (error) {
            if (error instanceof AiosError) return reply(400, { error: { code: error.code, message: error.message } });
            throw error;
          }
        }
      }
      return notFound(req);
    });
}

/**
 * `POST /v1/rollouts` `{ bundle, target?, stages?, health?, chunkSize?, successThreshold?,
 * errorThreshold?, rollbackOnFailure? }`: `bundle` is a path on the controller's host (the API is
 * local). `GET /v1/rollouts`, `GET /v1/rollouts/<id>` (with each device's phase), and
 * `POST /v1/rollouts/<id>/pause | resume | rollback` `{ reason? }`.
 */
async function rolloutRoute(api: OperatorApi, req: IncomingMessage, rest: readonly string[], log: (line: Record<string, unknown>) => void): Promise<Reply> {
  try {
    if (req.method === 'GET' && rest.length === 0) return reply(200, { rollouts: await api.rollouts.list() });
    if (req.method === 'POST' && rest.length === 0) {
      const body = (await readJson(req)) as { bundle?: unknown; releaseKey?: unknown; target?: RolloutSpec['target']; stages?: StageSpec[]; health?: Partial<HealthPolicy>; chunkSize?: number; successThreshold?: number; errorThreshold?: number; rollbackOnFailure?: boolean; requireAttestation?: boolean; stageTimeoutS?: number };
      if (typeof body.bundle !== 'string') return reply(400, { error: { code: 'EAI_FLEET_ROLLOUT_INVALID', message: 'the body needs "bundle": the path of a model bundle on the controller host' } });
      // The release key stays on the controller host: the body names its file, like the bundle's.
      const releaseKey = typeof body.releaseKey === 'string' ? await readReleaseKey(body.releaseKey) : undefined;
      const deployment = await api.deployments.create(body.bundle, { ...(body.health === undefined ? {} : { health: body.health }), ...(body.chunkSize === undefined ? {} : { chunkSize: body.chunkSize }), ...(releaseKey === undefined ? {} : { releaseKey }) });
      const rollout = await api.rollouts.start({
        deploymentId: deployment.id,
        target: body.target ?? {},
        stages: body.stages ?? [],
        ...(body.successThreshold === undefined ? {} : { successThreshold: body.successThreshold }),
        ...(body.errorThreshold === undefined ? {} : { errorThreshold: body.errorThreshold }),
        ...(body.rollbackOnFailure === undefined ? {} : { rollbackOnFailure: body.rollbackOnFailure }),
        ...(body.requireAttestation === true ? { requireAttestation: true } : {}),
        ...(body.stageTimeoutS === undefined ? {} : { stageTimeoutS: body.stageTimeoutS }),
      });
      log({ msg: 'rollout started', id: rollout.id, model: rollout.model, version: rollout.version });
      return reply(201, { rollout, deployment });
    }
    const id = rest[0] as string;
    if (req.method === 'GET' && rest.length === 1) {
      const rollout = await api.rollouts.status(id);
      return reply(200, { rollout, deployment: await api.deployments.get(rollout.deploymentId), targets: await api.deployments.targets(rollout.deploymentId) });
    }
    if (req.method === 'POST' && rest.length === 2) {
      const body = rest[1] === 'rollback' ? ((await readJson(req).catch(() => ({}))) as { reason?: unknown }) : {};
      if (rest[1] === 'pause') return reply(200, { rollout: await api.rollouts.pause(id) });
      if (rest[1] === 'resume') return reply(200, { rollout: await api.rollouts.resume(id) });
      if (rest[1] === 'rollback') return reply(200, { rollout: await api.rollouts.rollback(id, typeof body.reason === 'string' ? body.reason : undefined) });
    }
    return reply(404, { error: { code: 'EAI_HTTP_NOT_FOUND', message: `no ${req.method ?? ''} /v1/rollouts/${rest.join('/')} here` } });
  } catch (error) {
    if (error instanceof AiosError) return reply(error.code.endsWith('_UNKNOWN') ? 404 : 400, { error: { code: error.code, message: error.message } });
    throw error;
  }
}

async function readReleaseKey(file: string): Promise<X25519Identity> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    throw new FleetError('EAI_FLEET_ROLLOUT_INVALID', `cannot read the release key ${file} (${(cause as Error).message}); give the path of the age identity the bundle is encrypted to, on the controller host.`, { cause });
  }
  const [identity] = parseIdentityFile(text);
  if (identity === undefined) throw new FleetError('EAI_FLEET_ROLLOUT_INVALID', `${file} holds no age identity (AGE-SECRET-KEY-1…).`);
  return identity;
}

interface Reply {
  readonly status: number;
  readonly body: unknown;
}

function reply(status: number, body: unknown): Reply {
  return { status, body };
}

function notFound(req: IncomingMessage): Reply {
  return reply(404, { error: { code: 'EAI_HTTP_NOT_FOUND', message: `no ${req.method ?? ''} ${url(req).pathname} here` } });
}

class BodyError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function handle(req: IncomingMessage, res: ServerResponse, log: (line: Record<string, unknown>) => void, route: () => Promise<Reply>): Promise<void> {
  let answer: Reply;
  try {
    answer = await route();
  } catch (error) {
    if (error instanceof BodyError) answer = reply(error.status, { error: { code: 'EAI_HTTP_BAD_REQUEST', message: error.message } });
    else {
      log({ msg: 'request failed', method: req.method, path: url(req).pathname, error: error instanceof Error ? error.message : String(error) });
      answer = reply(500, { error: { code: 'EAI_INTERNAL', message: 'the controller failed on this request; see its log' } });
    }
  }
  const text = `${JSON.stringify(answer.body, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v))}\n`;
  res.writeHead(answer.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) throw new BodyError(413, `the body is over ${MAX_BODY} bytes`);
    parts.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8')) as unknown;
  } catch {
    throw new BodyError(400, 'the body is not JSON');
  }
}

function url(req: IncomingMessage): URL {
  return new URL(req.url ?? '/', 'http://controller');
}
