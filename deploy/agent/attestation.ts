import { createPrivateKey } from 'node:crypto';
import path from 'node:path';
import { decodeCredentialFile } from '../../drivers/tpm/credential.js';
import { DEFAULT_AK_HANDLE, EK_DEFAULTS, Tpm } from '../../drivers/tpm/tpm.js';
import { aios } from '../proto/gen/aios.js';
import { FleetError } from '../fleet/errors.js';
import { openOnDevice } from '../fleet/key-wrap.js';
import { stat } from 'node:fs/promises';
import type { ModelStore, Slot } from '../../models/store/model-store.js';
import { rootDigest } from '../../models/trust/root.js';
import type { TrustStore } from '../../models/trust/trust-store.js';
import { measureRuntime, type Attester } from '../../runtime/attest/attester.js';
import { bytesDigest, fileDigest } from '../../runtime/attest/file-digest.js';
import type { MeasurementType } from '../../runtime/attest/measurement.js';
import { SoftwareAttester } from '../../runtime/attest/software-attester.js';
import { TpmAttester } from '../../runtime/attest/tpm-attester.js';

/**
 * What the agent proves it runs (docs/attestation.md): with a TPM (`attestation.tpm` in
 * agent.yaml) a TpmAttester over the AK registered at enrolment, otherwise a SoftwareAttester
 * signing with the device key, which a verifier reports as `software`. Both keep their log in
 * `<state>/attestation/`.
 *
 * The agent measures, into PCR 23 and the log: the runtime once per boot, the trust root, each
 * pipeline configuration it runs, and each model bundle it activates (the manifest digest the
 * model store recorded when it verified the bundle). An item is measured again only when its
 * content changed since its last measurement, so a restart within a boot adds nothing.
 */
export async function openAttester(options: { readonly state: string; readonly tpm?: string; readonly keyPem: string }): Promise<Attester> {
  const stateDir = path.join(options.state, 'attestation');
  if (options.tpm !== undefined) return TpmAttester.open({ tpm: new Tpm({ tcti: options.tpm }), stateDir });
  return SoftwareAttester.open({ stateDir, privateKey: createPrivateKey(options.keyPem) });
}

/** Measures the runtime, the trust root, the pipeline files and the active model bundles (each only when new). */
export async function measureDevice(attester: Attester, parts: { readonly trust: TrustStore; readonly store: ModelStore; readonly pipelineFiles: readonly string[] }): Promise<void> {
  await measureRuntime(attester);
  await measureOnce(attester, 'trust-root', `root.json v${parts.trust.root.signed.version}`, rootDigest(parts.trust.root));
  for (const file of parts.pipelineFiles) await measurePipeline(attester, file);
  await measureModels(attester, parts.store);
}

/** Measures a pipeline configuration file (named by its file name; a setConfig override is `<pipeline>.yaml`). */
export async function measurePipeline(attester: Attester, file: string): Promise<void> {
  await measureOnce(attester, 'pipeline-config', path.basename(file), await fileDigest(file));
}

/**
 * Measures each model's active bundle (after a deployment or rollback switched one). The files
 * are hashed again against the manifest first — a model swapped on disk after its install must not
 * pass as the verified bundle — whenever their size, modification time or inode changed since the
 * last check (`checked` remembers; re-hashing a 2 GB model every minute would cost a core's
 * seconds). A slot whose files differ is measured as `<model>@<version> (files differ)` with a
 * digest of the differences, which no policy allows.
 */
export async function measureModels(attester: Attester, store: ModelStore, checked: Map<string, string> = new Map()): Promise<void> {
  for (const entry of await store.list()) {
    const slot = entry.active;
    if (slot === undefined) continue;
    const name = `${entry.model}@${slot.version}`;
    const fingerprint = await statFingerprint(slot);
    if (checked.get(slot.dir) !== fingerprint) {
      try {
        await store.check(entry.model, { version: slot.version });
        checked.set(slot.dir, fingerprint);
      } catch (error) {
        checked.delete(slot.dir);
        const problems = (error as { details?: { problems?: unknown } }).details?.problems ?? String(error);
        await measureOnce(attester, 'model-bundle', `${name} (files differ)`, bytesDigest(JSON.stringify({ manifest: slot.manifestDigest, problems })));
        continue;
      }
    }
    await measureOnce(attester, 'model-bundle', name, slot.manifestDigest);
  }
}

async function statFingerprint(slot: Slot): Promise<string> {
  const parts: string[] = [];
  for (const f of slot.files) {
    const st = await stat(path.join(slot.dir, f.path)).catch(() => undefined);
    parts.push(st === undefined ? `${f.path}:missing` : `${f.path}:${st.size}:${st.mtimeMs}:${st.ino}`);
  }
  return parts.join('|');
}

/**
 * Opens a released model key: a TPM credential is activated by this device's TPM (which works
 * only for the EK and AK it enrolled), a sealed key with the device's private key.
 */
export async function openReleasedKey(release: aios.fleet.v1.IReleaseKey, device: { readonly tpm?: string; readonly keyPem: string }): Promise<Buffer> {
  const deploymentId = release.deploymentId ?? '';
  if (release.tpmCredential != null && release.tpmCredential.length > 0) {
    if (device.tpm === undefined) throw new FleetError('EAI_FLEET_KEY_WRAP', `the key for deployment ${deploymentId} was wrapped to a TPM, and this agent has none configured (attestation.tpm in agent.yaml).`);
    return new Tpm({ tcti: device.tpm }).activateCredential(decodeCredentialFile(release.tpmCredential), { ekHandle: EK_DEFAULTS.rsa.handle, akHandle: DEFAULT_AK_HANDLE });
  }
  if (release.sealed != null && release.sealed.length > 0) return openOnDevice(createPrivateKey(device.keyPem), deploymentId, release.sealed);
  throw new FleetError('EAI_FLEET_KEY_WRAP', `the ReleaseKey for deployment ${deploymentId} carries no wrapped key.`);
}

async function measureOnce(attester: Attester, type: MeasurementType, name: string, sha256: string): Promise<void> {
  const last = [...attester.events].reverse().find((e) => e.type === type && e.name === name);
  if (last?.sha256 !== sha256) await attester.measure(type, name, sha256);
}
