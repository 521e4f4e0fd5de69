import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { CommandGate, rejection, signCommand, type CommandSpec } from '../../../../deploy/fleet/command.js';
import { parseDeviceTopic, deviceTopic, everyDevice } from '../../../../deploy/fleet/topics.js';
import { aios } from '../../../../deploy/proto/gen/aios.js';
import { generateSigningKey, type SigningKey } from '../../../../models/keys.js';
import { addKey, bumpVersion, createRoot, removeKey, signRoot } from '../../../../models/trust/root.js';
import { TrustStore } from '../../../../models/trust/trust-store.js';
import { pae } from '../../../../models/bundle/dsse.js';
import { publicKeyPem } from '../../../../models/keys.js';
import { findBinary } from '../../../support/wait.js';

const PROTOC = findBinary('protoc');
const OPENSSL = findBinary('openssl');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-command-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const rootKey = generateSigningKey();
const [ops1, ops2, ops3, modelKey, stranger] = [generateSigningKey(), generateSigningKey(), generateSigningKey(), generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey, SigningKey, SigningKey, SigningKey];
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });
const NOW = Date.UTC(2026, 10, 26, 12, 0, 0);
const root = signRoot(
  createRoot({ version: 1, expires: new Date('2030-01-01T00:00:00Z'), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(modelKey)], threshold: 1 }, deploy: { keys: [pub(ops1), pub(ops2), pub(ops3)], threshold: 2 } } }),
  [rootKey],
);

let n = 0;
async function device(id = 'robot-7', now = (): number => NOW): Promise<{ gate: CommandGate; trust: TrustStore; dir: string }> {
  const dir = path.join(tmp, `device-${n++}`);
  const trust = await TrustStore.init(dir, root);
  return { gate: new CommandGate(trust, { fleet: 'warehouse', deviceId: id }, { now }), trust, dir };
}

function spec(sequence: number, extra: Partial<CommandSpec> = {}): CommandSpec {
  return { fleet: 'warehouse', deviceId: 'robot-7', sequence, issuedUnixMs: NOW - 1000, expiresUnixMs: NOW + 60_000, stopPipeline: { name: 'front-camera' }, ...extra };
}

async function code(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'accepted',
    (e: unknown) => (e as { code?: string }).code ?? `not an aios error: ${String(e)}`,
  );
}

describe('topics', () => {
  it('one subtree per device, parsed back; anything else is not a device topic', () => {
    expect(deviceTopic('warehouse', 'robot-7', 'commands')).toBe('aios/warehouse/devices/robot-7/commands');
    expect(deviceTopic('warehouse', 'robot-7', 'ota/chunks')).toBe('aios/warehouse/devices/robot-7/ota/chunks');
    expect(everyDevice('warehouse', 'telemetry')).toBe('aios/warehouse/devices/+/telemetry');
    expect(parseDeviceTopic('aios/warehouse/devices/robot-7/ota/request')).toEqual({ fleet: 'warehouse', device: 'robot-7', channel: 'ota/request' });
    for (const t of ['aios/warehouse/devices/robot-7', 'aios/warehouse/devices/robot-7/nonsense', 'aios/warehouse/peers/robot-7/replies', 'x/warehouse/devices/robot-7/birth', 'aios//devices/robot-7/birth']) {
      expect(parseDeviceTopic(t)).toBeUndefined();
    }
    for (const bad of ['', 'a/b', '+', '#', '$SYS', 'x'.repeat(129), 'nul\0']) expect(() => deviceTopic('warehouse', bad, 'birth')).toThrow(expect.objectContaining({ code: 'EAI_FLEET_NAME' }));
  });
});

describe('signed commands', () => {
  it('a command signed by a threshold of deploy keys is admitted once, with its action and sequence; a protoc-style decode sees every field', async () => {
    const { gate } = await device();
    expect(gate.lastSequence).toBe(0);
    const bytes = signCommand(spec(5, { stopPipeline: undefined, deploy: { deploymentId: 'd-1', model: 'face', version: '1.2.0', bundleSize: 1000, bundleSha256: 'ab'.repeat(32), chunkSize: 512, chunkSha256: [Buffer.alloc(32, 1), Buffer.alloc(32, 2)] } }), [ops1, ops3]);
    const admitted = await gate.admit(bytes);
    expect(admitted).toMatchObject({ sequence: 5, action: 'deploy', expiresUnixMs: NOW + 60_000, keyids: [ops1.keyid, ops3.keyid] });
    expect(admitted.command.deploy?.chunkSha256).toHaveLength(2);
    expect(gate.lastSequence).toBe(5);
    expect(await code(gate.admit(bytes))).toBe('EAI_FLEET_COMMAND_REPLAYED');
  });

  it('refuses unsigned, under-threshold, unknown-key, tampered, wrong-device, expired, replayed and older commands, each with its code', async () => {
    const { gate } = await device();
    const unsigned = aios.fleet.v1.SignedCommand.encode({ payload: aios.fleet.v1.Command.encode(aios.fleet.v1.Command.fromObject(spec(1))).finish(), payloadType: 'application/vnd.aios.command+protobuf', signatures: [] }).finish();
    expect(await code(gate.admit(unsigned))).toBe('EAI_FLEET_COMMAND_UNSIGNED');
    expect(await code(gate.admit(signCommand(spec(1), [ops1])))).toBe('EAI_FLEET_COMMAND_SIGNATURE'); // 1 of 2
    expect(await code(gate.admit(signCommand(spec(1), [ops1, ops1])))).toBe('EAI_FLEET_COMMAND_SIGNATURE'); // one key twice is one
    expect(await code(gate.admit(signCommand(spec(1), [stranger, modelKey])))).toBe('EAI_FLEET_COMMAND_SIGNATURE'); // models role cannot command
    // Re-pointed: the payload of one command under the signatures of another.
    const a = aios.fleet.v1.SignedCommand.decode(signCommand(spec(1), [ops1, ops2]));
    const b = aios.fleet.v1.SignedCommand.decode(signCommand(spec(2, { stopPipeline: undefined, startPipeline: { name: 'x' } }), [ops1, ops2]));
    expect(await code(gate.admit(aios.fleet.v1.SignedCommand.encode({ ...a, payload: b.payload }).finish()))).toBe('EAI_FLEET_COMMAND_SIGNATURE');
    expect(await code(gate.admit(signCommand(spec(1, { deviceId: 'robot-8' }), [ops1, ops2])))).toBe('EAI_FLEET_COMMAND_WRONG_DEVICE');
    expect(await code(gate.admit(signCommand(spec(1, { fleet: 'depot' }), [ops1, ops2])))).toBe('EAI_FLEET_COMMAND_WRONG_DEVICE');
    expect(await code(gate.admit(signCommand(spec(1, { issuedUnixMs: NOW - 120_000, expiresUnixMs: NOW - 1 }), [ops1, ops2])))).toBe('EAI_FLEET_COMMAND_EXPIRED');
    expect(gate.lastSequence).toBe(0); // nothing refused moved the sequence
    expect(await code(gate.admit(signCommand(spec(10), [ops2, ops3])))).toBe('accepted');
    expect(await code(gate.admit(signCommand(spec(10), [ops1, ops2])))).toBe('EAI_FLEET_COMMAND_REPLAYED'); // same sequence, freshly signed
    expect(await code(gate.admit(signCommand(spec(9), [ops1, ops2])))).toBe('EAI_FLEET_COMMAND_REPLAYED'); // out of order, old
    expect(await code(gate.admit(signCommand(spec(12), [ops1, ops2])))).toBe('accepted'); // gaps are fine
    expect(await code(gate.admit(Buffer.from('not protobuf at all, just text')))).toBe('EAI_FLEET_COMMAND_MALFORMED');
    expect(await code(gate.admit(Buffer.alloc(2 * 1024 * 1024)))).toBe('EAI_FLEET_COMMAND_MALFORMED');
  });

  it('the highest sequence survives a restart: a command replayed to the restarted agent is refused', async () => {
    const { gate, dir } = await device();
    const bytes = signCommand(spec(3), [ops1, ops2]);
    await gate.admit(bytes);
    const again = new CommandGate(await TrustStore.open(dir), { fleet: 'warehouse', deviceId: 'robot-7' }, { now: () => NOW });
    expect(again.lastSequence).toBe(3);
    expect(await code(again.admit(bytes))).toBe('EAI_FLEET_COMMAND_REPLAYED');
  });

  it('a deploy key revoked by a root rotation no longer counts, and the sequence resets (a stolen key may have burnt huge sequences)', async () => {
    const { gate, trust } = await device();
    await gate.admit(signCommand(spec(1_000_000), [ops1, ops3])); // signed with what turns out to be a stolen key
    const next = signRoot(bumpVersion(addKey(removeKey(root, 'deploy', ops3.keyid), 'deploy', pub(stranger)), { expires: new Date('2030-06-01T00:00:00Z') }), [rootKey]);
    await trust.updateRoot(next);
    expect(await code(gate.admit(signCommand(spec(1_000_001), [ops1, ops3])))).toBe('EAI_FLEET_COMMAND_SIGNATURE');
    expect(gate.lastSequence).toBe(0);
    expect(await code(gate.admit(signCommand(spec(1), [ops1, stranger])))).toBe('accepted');
  });

  it('an expired trust root refuses every command with EAI_TRUST_ROOT_EXPIRED', async () => {
    const { gate } = await device('robot-7', () => Date.UTC(2031, 0, 1));
    expect(await code(gate.admit(signCommand(spec(1, { issuedUnixMs: Date.UTC(2031, 0, 1) - 1, expiresUnixMs: Date.UTC(2031, 0, 2) }), [ops1, ops2])))).toBe('EAI_TRUST_ROOT_EXPIRED');
  });

  it('any corruption of a signed command is refused with a fleet code, never a crash or an admission', async () => {
    const { gate } = await device();
    const good = signCommand(spec(1), [ops1, ops2]);
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.integer({ min: 1, max: 255 }), fc.boolean(), async (at, mask, cut) => {
        const i = at % good.length;
        const bad = cut ? good.subarray(0, i) : Buffer.from(good);
        if (!cut) bad[i] = (bad[i] as number) ^ mask;
        const c = await code(gate.admit(bad));
        expect(c).toMatch(/^EAI_FLEET_COMMAND_(MALFORMED|SIGNATURE|UNSIGNED)$/u);
      }),
      { numRuns: 300 },
    );
    expect(gate.lastSequence).toBe(0);
  });

  it('signCommand refuses commands a device would refuse, and rejection() builds the ack', () => {
    expect(() => signCommand(spec(0), [ops1])).toThrow(expect.objectContaining({ code: 'EAI_FLEET_COMMAND_INVALID' }));
    expect(() => signCommand(spec(1, { stopPipeline: undefined }), [ops1])).toThrow(/exactly one action/u);
    expect(() => signCommand(spec(1, { startPipeline: { name: 'a' } }), [ops1])).toThrow(/startPipeline and|stopPipeline and/u);
    expect(() => signCommand(spec(1, { expiresUnixMs: NOW - 5000 }), [ops1])).toThrow(/expiresUnixMs/u);
    expect(() => signCommand(spec(1), [])).toThrow(/signing key/u);
    const ack = rejection(Object.assign(new Error('nope'), { code: 'EAI_FLEET_COMMAND_EXPIRED' }), 4, NOW);
    expect(aios.fleet.v1.CommandAck.toObject(aios.fleet.v1.CommandAck.decode(aios.fleet.v1.CommandAck.encode(ack).finish()), { enums: String, longs: Number })).toEqual({ sequence: 4, result: 'REJECTED', code: 'EAI_FLEET_COMMAND_EXPIRED', message: 'nope', timeUnixMs: NOW });
  });

  it.skipIf(PROTOC === undefined || OPENSSL === undefined)('other tools read a command: protoc decodes it from the published schema, openssl verifies its signature over the PAE', () => {
    const bytes = signCommand(spec(77, { stopPipeline: undefined, setConfig: { pipeline: 'front-camera', configYaml: 'nodes: []' } }), [ops1, ops2]);
    const signed = aios.fleet.v1.SignedCommand.decode(bytes);
    const dir = mkdtempSync(path.join(tmp, 'tools-'));
    writeFileSync(path.join(dir, 'payload.bin'), signed.payload);
    const text = execFileSync(PROTOC as string, ['--proto_path=deploy/proto', '--decode=aios.fleet.v1.Command', 'aios/fleet/v1/fleet.proto'], { input: signed.payload, encoding: 'utf8' });
    expect(text).toContain('fleet: "warehouse"');
    expect(text).toContain('device_id: "robot-7"');
    expect(text).toContain('sequence: 77');
    expect(text).toMatch(/set_config \{\s+pipeline: "front-camera"\s+config_yaml: "nodes: \[\]"\s+\}/u);
    const outer = execFileSync(PROTOC as string, ['--proto_path=deploy/proto', '--decode=aios.fleet.v1.SignedCommand', 'aios/fleet/v1/fleet.proto'], { input: bytes, encoding: 'utf8' });
    expect(outer).toContain('payload_type: "application/vnd.aios.command+protobuf"');
    expect(outer).toContain(`keyid: "${ops1.keyid}"`);
    writeFileSync(path.join(dir, 'pae.bin'), pae(signed.payloadType, signed.payload));
    writeFileSync(path.join(dir, 'sig.bin'), signed.signatures[0]?.sig as Uint8Array);
    writeFileSync(path.join(dir, 'deploy.pub'), publicKeyPem(ops1.publicKey));
    const verified = execFileSync(OPENSSL as string, ['pkeyutl', '-verify', '-pubin', '-inkey', 'deploy.pub', '-rawin', '-in', 'pae.bin', '-sigfile', 'sig.bin'], { cwd: dir, encoding: 'utf8' });
    expect(verified).toContain('Signature Verified Successfully');
  });
});
