import { createCipheriv, createDecipheriv, diffieHellman, generateKeyPairSync, hkdfSync, createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { FleetError } from './errors.js';

/**
 * Sealing a released model key to a device without a TPM (ECIES): an ephemeral P-256 key agrees
 * a secret with the public key of the device's certificate, HKDF-SHA256 derives an AES-256-GCM
 * key from it, and the device opens the result with its private key, which never left it. Only
 * that device can open it, and a changed byte fails the tag. (Devices with a TPM get the key as
 * a TPM credential instead: tied to their TPM and its attestation key.)
 *
 * Layout: `0x01` (version) || ephemeral public key (65 bytes, uncompressed) || IV (12) ||
 * ciphertext || tag (16). The HKDF info binds the deployment id, so a sealed key cannot be
 * replayed for another deployment.
 */
const VERSION = 1;
const POINT = 65;
const IV = 12;
const TAG = 16;

export function sealToDevice(devicePublicKey: KeyObject, deploymentId: string, secret: Uint8Array): Buffer {
  const curve = devicePublicKey.asymmetricKeyDetails?.namedCurve;
  if (devicePublicKey.asymmetricKeyType !== 'ec' || curve !== 'prime256v1') throw new FleetError('EAI_FLEET_KEY_WRAP', `a released key is sealed to a P-256 device key; this device's key is ${devicePublicKey.asymmetricKeyType ?? 'unknown'} ${curve ?? ''}. Re-enrol it with a current agent.`);
  const ephemeral = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const shared = diffieHellman({ privateKey: ephemeral.privateKey, publicKey: devicePublicKey });
  const point = rawPoint(ephemeral.publicKey);
  const key = derive(shared, point, deploymentId);
  const iv = randomBytes(IV);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  const body = Buffer.concat([cipher.update(secret), cipher.final()]);
  return Buffer.concat([Buffer.from([VERSION]), point, iv, body, cipher.getAuthTag()]);
}

export function openOnDevice(devicePrivateKey: KeyObject, deploymentId: string, sealed: Uint8Array): Buffer {
  const bad = (why: string): FleetError => new FleetError('EAI_FLEET_KEY_WRAP', `the released key for deployment ${deploymentId} cannot be opened: ${why}. Ask the controller to release it again (it does after the next trusted attestation).`);
  if (sealed.byteLength < 1 + POINT + IV + TAG + 1 || sealed[0] !== VERSION) throw bad('it is not a sealed key of a version this agent reads');
  const bytes = Buffer.from(sealed);
  const point = bytes.subarray(1, 1 + POINT);
  let ephemeral: KeyObject;
  try {
    ephemeral = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: point.subarray(1, 33).toString('base64url'), y: point.subarray(33).toString('base64url') }, format: 'jwk' });
  } catch {
    throw bad('its ephemeral key is not a P-256 point');
  }
  const key = derive(diffieHellman({ privateKey: devicePrivateKey, publicKey: ephemeral }), point, deploymentId);
  const iv = bytes.subarray(1 + POINT, 1 + POINT + IV);
  const decipher = createDecipheriv('aes-256-gcm', key, iv);
  decipher.setAuthTag(bytes.subarray(bytes.length - TAG));
  try {
    return Buffer.concat([decipher.update(bytes.subarray(1 + POINT + IV, bytes.length - TAG)), decipher.final()]);
  } catch {
    throw bad('it was sealed to another device or deployment, or altered');
  }
}

function derive(shared: Buffer, point: Buffer, deploymentId: string): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, point, `aios key release v1\0${deploymentId}`, 32));
}

function rawPoint(publicKey: KeyObject): Buffer {
  const jwk = publicKey.export({ format: 'jwk' });
  return Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x as string, 'base64url'), Buffer.from(jwk.y as string, 'base64url')]);
}
