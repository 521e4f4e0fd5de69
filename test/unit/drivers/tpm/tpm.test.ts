import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeQuoteAttest } from '../../../../drivers/tpm/attest.js';
import { decodeCredentialFile, encodeCredentialFile, makeCredential } from '../../../../drivers/tpm/credential.js';
import { TpmError } from '../../../../drivers/tpm/errors.js';
import { childQualifiedName, objectName, TPM_RH } from '../../../../drivers/tpm/names.js';
import { extendPcr, splitPcrValues } from '../../../../drivers/tpm/pcr.js';
import { decodePublic } from '../../../../drivers/tpm/public-area.js';
import { verifyQuote } from '../../../../drivers/tpm/quote.js';
import { responseCode } from '../../../../drivers/tpm/tpm2-tools.js';
import { DEFAULT_AK_HANDLE, EK_DEFAULTS, Tpm, type AttestationKey, type EndorsementKey } from '../../../../drivers/tpm/tpm.js';
import { startSwtpm, swtpmMissing, type Swtpm } from '../../../support/swtpm.js';

/**
 * The driver against a real swtpm manufactured like a vendor TPM (swtpm_setup --create-ek-cert),
 * cross-checked with tpm2-tools: tpm2_checkquote verifies our quotes, our verifier checks
 * tpm2_quote's, tpm2_activatecredential opens our credentials and we open tpm2_makecredential's.
 */
const missing = swtpmMissing();
if (missing !== undefined) console.warn(`TPM driver tests against swtpm skipped: ${missing}`);

const exec = promisify(execFile);
const RSA_AK_HANDLE = 0x81010004;

describe.skipIf(missing !== undefined)('Tpm on swtpm', () => {
  let swtpm: Swtpm;
  let tpm: Tpm;
  let ek: EndorsementKey;
  let ak: AttestationKey;
  let work: string;

  /** A tpm2-tools program against the test's swtpm, in the test's folder. */
  const tool = (name: string, args: string[]) => exec(name, args, { cwd: work, env: { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti } });
  const transients = async () => (await tool('tpm2_getcap', ['handles-transient'])).stdout.trim();

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'aios-tpm-test-'));
    swtpm = await startSwtpm({ ekCertificate: true });
    tpm = new Tpm({ tcti: swtpm.tcti });
    ek = await tpm.endorsementKey();
    ak = await tpm.attestationKey();
  });

  afterAll(async () => {
    await swtpm?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  describe('keys', () => {
    it('finds the RSA EK swtpm_setup persisted, with the certificate for it in NV', async () => {
      expect([ek.created, ek.handle, ek.algorithm, ek.public.type === 'rsa' && ek.public.keyBits]).toEqual([false, 0x81010001, 'rsa', 2048]);
      await tool('tpm2_readpublic', ['-c', '0x81010001', '-n', 'ek.name']);
      expect(ek.name).toEqual(readFileSync(path.join(work, 'ek.name')));
      const cert = await tpm.endorsementCertificate();
      expect(cert?.issuer).toMatch(/swtpm-localca/u);
      expect(cert?.publicKey.equals(ek.key)).toBe(true);
      // swtpm_setup makes its ECC EK on P-384, certified at 0x01c00016; the P-256 index is empty.
      expect(await tpm.endorsementCertificate('ecc')).toBeUndefined();
      expect((await tpm.endorsementCertificate('ecc', 0x01c00016))?.publicKey.asymmetricKeyDetails?.namedCurve).toBe('secp384r1');
    });

    it('creates the AK once under the EK, then finds it; leaves no transient object behind', async () => {
      expect([ak.created, ak.handle, ak.algorithm]).toEqual([true, DEFAULT_AK_HANDLE, 'ecc']);
      expect(ak.public.type === 'ecc' && [ak.public.curve, ak.public.scheme]).toEqual(['P-256', { scheme: 'ecdsa', hash: 'sha256' }]);
      expect(ak.qualifiedName).toEqual(childQualifiedName(TPM_RH.ENDORSEMENT, ek.name, ak.name));
      const again = await tpm.attestationKey();
      expect([again.created, again.name]).toEqual([false, ak.name]);
      expect(await transients()).toBe('');
    });

    it('creates an RSA AK and an ECC EK on request, each at its own handle', async () => {
      const rsa = await tpm.attestationKey({ algorithm: 'rsa', handle: RSA_AK_HANDLE });
      expect([rsa.created, rsa.public.type === 'rsa' && rsa.public.keyBits, rsa.public.scheme]).toEqual([true, 2048, { scheme: 'rsassa', hash: 'sha256' }]);
      const ecc = await tpm.endorsementKey({ algorithm: 'ecc' });
      expect([ecc.created, ecc.handle, ecc.public.type === 'ecc' && ecc.public.curve]).toEqual([true, EK_DEFAULTS.ecc.handle, 'P-256']);
      expect((await tpm.endorsementKey({ algorithm: 'ecc' })).created).toBe(false);
      expect(await transients()).toBe('');
    });

    it('refuses to take a key of the wrong kind for an AK or an EK, naming the handle', async () => {
      await expect(tpm.attestationKey({ handle: ek.handle })).rejects.toMatchObject({ code: 'EAI_TPM_KEY_TYPE', message: expect.stringMatching(/0x81010001 holds an RSA restricted decryption key/u) });
      await expect(tpm.attestationKey({ handle: RSA_AK_HANDLE })).rejects.toMatchObject({ code: 'EAI_TPM_KEY_TYPE' });
      await expect(tpm.endorsementKey({ handle: ak.handle })).rejects.toMatchObject({ code: 'EAI_TPM_KEY_TYPE' });
      await expect(tpm.attestationKey({ handle: 0x81010009, ekHandle: 0x81010077 })).rejects.toMatchObject({ code: 'EAI_TPM_KEY_TYPE', message: expect.stringMatching(/no endorsement key at 0x81010077/u) });
      await expect(tpm.quote([{ hash: 'sha256', pcrs: [0] }], Buffer.from('n'), { akHandle: 0x80000001 })).rejects.toMatchObject({ code: 'EAI_TPM_ARGUMENT' });
      await expect(tpm.quote([{ hash: 'sha256', pcrs: [0] }], Buffer.alloc(65))).rejects.toMatchObject({ code: 'EAI_TPM_ARGUMENT' });
    });

    it('evicts a persistent key', async () => {
      const temp = await tpm.attestationKey({ handle: 0x81010010 });
      expect(temp.created).toBe(true);
      await tpm.evict(0x81010010);
      expect((await tpm.attestationKey({ handle: 0x81010010 })).created).toBe(true);
      await tpm.evict(0x81010010);
      await tpm.evict(0x81010010); // an empty handle: nothing to do
    });
  });

  describe('PCRs and quotes', () => {
    it('extends a PCR exactly as the software extend computes', async () => {
      const [before] = await tpm.readPcrs([{ hash: 'sha256', pcrs: [16] }]);
      const m = createHash('sha256').update('model bundle sha256').digest();
      await tpm.extendPcr(16, m);
      const [after] = await tpm.readPcrs([{ hash: 'sha256', pcrs: [16] }]);
      expect(after?.values.get(16)).toEqual(extendPcr('sha256', before!.values.get(16)!, m));
      await expect(tpm.extendPcr(16, Buffer.alloc(20))).rejects.toMatchObject({ code: 'EAI_TPM_ARGUMENT' });
      await expect(tpm.extendPcr(24, m)).rejects.toMatchObject({ code: 'EAI_TPM_ARGUMENT' });
    });

    it('quotes: our verifier and tpm2_checkquote both accept, with the PCR values read', async () => {
      const nonce = randomBytes(32);
      const q = await tpm.quote([{ hash: 'sha256', pcrs: [0, 1, 7, 16] }], nonce);
      const v = verifyQuote(q, { ak: ak.public, nonce, pcrs: q.pcrs, qualifiedSigner: ak.qualifiedName });
      expect(v.attest.pcrSelection).toEqual([{ hash: 'sha256', pcrs: [0, 1, 7, 16] }]);
      expect([...q.pcrs[0]!.values.keys()]).toEqual([0, 1, 7, 16]);
      writeFileSync(path.join(work, 'q.attest'), q.attest);
      writeFileSync(path.join(work, 'q.sig'), q.signature);
      writeFileSync(path.join(work, 'ak.pub'), ak.publicBytes);
      writeFileSync(path.join(work, 'ak.pem'), ak.key.export({ type: 'spki', format: 'pem' }));
      // tpm2_checkquote -f checks the quote's PCR digest against PCR values in its serialized format.
      await tool('tpm2_pcrread', ['sha256:0,1,7,16', '-o', 'q.pcrs', '-F', 'serialized']);
      for (const key of ['ak.pub', 'ak.pem']) {
        const { stdout } = await tool('tpm2_checkquote', ['-u', key, '-m', 'q.attest', '-s', 'q.sig', '-f', 'q.pcrs', '-q', nonce.toString('hex'), '-g', 'sha256']);
        expect(stdout).toContain(`16: 0x${q.pcrs[0]!.values.get(16)!.toString('hex').toUpperCase()}`);
      }
      await expect(tool('tpm2_checkquote', ['-u', 'ak.pub', '-m', 'q.attest', '-s', 'q.sig', '-q', randomBytes(32).toString('hex'), '-g', 'sha256'])).rejects.toThrow();
      await tpm.extendPcr(7, randomBytes(32));
      await tool('tpm2_pcrread', ['sha256:0,1,7,16', '-o', 'q.pcrs', '-F', 'serialized']);
      await expect(tool('tpm2_checkquote', ['-u', 'ak.pub', '-m', 'q.attest', '-s', 'q.sig', '-f', 'q.pcrs', '-q', nonce.toString('hex'), '-g', 'sha256'])).rejects.toThrow();
    });

    it('RSA AK quotes verify both ways too', async () => {
      const rsa = await tpm.attestationKey({ algorithm: 'rsa', handle: RSA_AK_HANDLE });
      const nonce = randomBytes(20);
      const q = await tpm.quote([{ hash: 'sha256', pcrs: [16, 23] }], nonce, { akHandle: RSA_AK_HANDLE });
      expect(verifyQuote(q, { ak: rsa.public, nonce, pcrs: q.pcrs }).signature.scheme).toBe('rsassa');
      writeFileSync(path.join(work, 'r.attest'), q.attest);
      writeFileSync(path.join(work, 'r.sig'), q.signature);
      writeFileSync(path.join(work, 'rsa-ak.pub'), rsa.publicBytes);
      await tool('tpm2_checkquote', ['-u', 'rsa-ak.pub', '-m', 'r.attest', '-s', 'r.sig', '-q', nonce.toString('hex')]);
    });

    it('accepts what tpm2_quote itself produced', async () => {
      await tool('tpm2_quote', ['-c', `0x${DEFAULT_AK_HANDLE.toString(16)}`, '-l', 'sha256:3,16', '-q', 'cafe0123', '-m', 't.attest', '-s', 't.sig', '-o', 't.pcrs', '-F', 'values']);
      const attest = readFileSync(path.join(work, 't.attest'));
      const pcrs = splitPcrValues(decodeQuoteAttest(attest).pcrSelection, readFileSync(path.join(work, 't.pcrs')));
      const v = verifyQuote({ attest, signature: readFileSync(path.join(work, 't.sig')) }, { ak: ak.public, nonce: Buffer.from('cafe0123', 'hex'), pcrs });
      expect(v.attest.extraData.toString('hex')).toBe('cafe0123');
    });

    it('a tampered attest byte, a wrong nonce, another AK, stale PCR values: each fails its own check', async () => {
      const nonce = randomBytes(32);
      const q = await tpm.quote([{ hash: 'sha256', pcrs: [16] }], nonce);
      const tampered = Buffer.from(q.attest);
      tampered[tampered.length - 1] = tampered[tampered.length - 1]! ^ 1; // the last byte of pcrDigest
      const rsa = await tpm.attestationKey({ algorithm: 'rsa', handle: RSA_AK_HANDLE });
      expect(() => verifyQuote({ ...q, attest: tampered }, { ak: ak.public, nonce })).toThrow(expect.objectContaining({ code: 'EAI_TPM_QUOTE_SIGNATURE' }));
      expect(() => verifyQuote(q, { ak: ak.public, nonce: randomBytes(32) })).toThrow(expect.objectContaining({ code: 'EAI_TPM_QUOTE_NONCE' }));
      expect(() => verifyQuote(q, { ak: rsa.public, nonce })).toThrow(expect.objectContaining({ code: 'EAI_TPM_QUOTE_SIGNATURE' }));
      await tpm.extendPcr(16, randomBytes(32));
      const now = await tpm.readPcrs([{ hash: 'sha256', pcrs: [16] }]);
      expect(() => verifyQuote(q, { ak: ak.public, nonce, pcrs: now })).toThrow(expect.objectContaining({ code: 'EAI_TPM_QUOTE_PCRS' }));
    });

    it('refuses a bank the TPM does not have active (swtpm_setup activates sha256 only)', async () => {
      await expect(tpm.readPcrs([{ hash: 'sha1', pcrs: [0] }])).rejects.toMatchObject({ code: 'EAI_TPM_COMMAND', message: expect.stringMatching(/not active/u) });
    });

    it('times a quote on swtpm and a verification in software', async () => {
      const nonce = randomBytes(32);
      const selection = [{ hash: 'sha256' as const, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }];
      const quotes = 20;
      let t = performance.now();
      let q = await tpm.quote(selection, nonce);
      for (let i = 1; i < quotes; i++) q = await tpm.quote(selection, nonce);
      const quoteMs = (performance.now() - t) / quotes;
      const area = decodePublic(ak.publicBytes);
      const verifies = 2000;
      t = performance.now();
      for (let i = 0; i < verifies; i++) verifyQuote(q, { ak: area, nonce, pcrs: q.pcrs });
      const verifyUs = ((performance.now() - t) * 1000) / verifies;
      console.log(`swtpm: Tpm.quote ${quoteMs.toFixed(1)} ms per quote (ECC P-256 AK, 8 PCRs, ${quotes} quotes); verifyQuote ${verifyUs.toFixed(0)} µs per quote (${verifies} verifications)`);
      expect(quoteMs).toBeLessThan(1000);
      expect(verifyUs).toBeLessThan(10_000);
    });
  });

  describe('credential activation', () => {
    it('activates a credential made in software for this AK and the RSA EK', async () => {
      const secret = randomBytes(32);
      expect(await tpm.activateCredential(makeCredential(ek.public, ak.name, secret))).toEqual(secret);
      expect(await transients()).toBe('');
      expect((await tool('tpm2_getcap', ['handles-loaded-session'])).stdout.trim()).toBe('');
    });

    it('refuses a credential made for another key name, or altered', async () => {
      const rsa = await tpm.attestationKey({ algorithm: 'rsa', handle: RSA_AK_HANDLE });
      const forOther = makeCredential(ek.public, rsa.name, randomBytes(32));
      await expect(tpm.activateCredential(forOther)).rejects.toMatchObject({ code: 'EAI_TPM_CREDENTIAL' });
      const good = makeCredential(ek.public, ak.name, randomBytes(32));
      const blob = Buffer.from(good.credentialBlob);
      blob[blob.length - 1] = blob[blob.length - 1]! ^ 1;
      await expect(tpm.activateCredential({ ...good, credentialBlob: blob })).rejects.toMatchObject({ code: 'EAI_TPM_CREDENTIAL' });
      expect((await tool('tpm2_getcap', ['handles-loaded-session'])).stdout.trim()).toBe('');
    });

    it('tpm2_activatecredential opens our credential file; we open tpm2_makecredential -T none files', async () => {
      const ours = randomBytes(16);
      writeFileSync(path.join(work, 'ours.cred'), encodeCredentialFile(makeCredential(ek.public, ak.name, ours)));
      await tool('tpm2_startauthsession', ['--policy-session', '-S', 's.ctx']);
      await tool('tpm2_policysecret', ['-S', 's.ctx', '-c', 'e']);
      await tool('tpm2_activatecredential', ['-c', `0x${ak.handle.toString(16)}`, '-C', '0x81010001', '-i', 'ours.cred', '-o', 'ours.out', '-P', 'session:s.ctx']);
      await tool('tpm2_flushcontext', ['s.ctx']);
      expect(readFileSync(path.join(work, 'ours.out'))).toEqual(ours);

      const theirs = randomBytes(32);
      writeFileSync(path.join(work, 'ek.pub'), ek.publicBytes);
      writeFileSync(path.join(work, 'theirs.secret'), theirs);
      await exec('tpm2_makecredential', ['-T', 'none', '-u', 'ek.pub', '-s', 'theirs.secret', '-n', ak.name.toString('hex'), '-o', 'theirs.cred'], { cwd: work });
      expect(await tpm.activateCredential(decodeCredentialFile(readFileSync(path.join(work, 'theirs.cred'))))).toEqual(theirs);
    });

    it('activates against an ECC EK too (the seed from ECDH and KDFe)', async () => {
      const ecc = await tpm.endorsementKey({ algorithm: 'ecc' });
      const secret = randomBytes(32);
      expect(await tpm.activateCredential(makeCredential(ecc.public, ak.name, secret), { ekHandle: ecc.handle })).toEqual(secret);
      await expect(tpm.activateCredential(makeCredential(ek.public, ak.name, secret), { ekHandle: ecc.handle })).rejects.toMatchObject({ code: 'EAI_TPM_CREDENTIAL' });
    });
  });

  describe('failures say what to fix', () => {
    it('no tpm2-tools, no device, nothing listening', async () => {
      await expect(new Tpm({ tcti: swtpm.tcti, toolsDir: '/nonexistent' }).readPcrs([{ hash: 'sha256', pcrs: [0] }])).rejects.toMatchObject({ code: 'EAI_TPM_TOOLS_MISSING', message: expect.stringMatching(/apt install tpm2-tools/u) });
      await expect(new Tpm({ tcti: 'device:/nonexistent/tpmrm0' }).readPcrs([{ hash: 'sha256', pcrs: [0] }])).rejects.toMatchObject({ code: 'EAI_TPM_NO_DEVICE', message: expect.stringMatching(/no TPM at \/nonexistent\/tpmrm0/u) });
      await expect(new Tpm({ tcti: 'swtpm:host=127.0.0.1,port=1' }).readPcrs([{ hash: 'sha256', pcrs: [0] }])).rejects.toMatchObject({ code: 'EAI_TPM_CONNECT' });
      await expect(new Tpm({ tcti: 'no-such-tcti' }).readPcrs([{ hash: 'sha256', pcrs: [0] }])).rejects.toMatchObject({ code: 'EAI_TPM_CONNECT' });
    });

    it('a swtpm not powered on (0x101), then not started (0x100)', async () => {
      const off = await startSwtpm({ state: 'off' });
      try {
        const t = new Tpm({ tcti: off.tcti });
        await expect(t.readPcrs([{ hash: 'sha256', pcrs: [0] }])).rejects.toMatchObject({ code: 'EAI_TPM_NOT_STARTED', details: expect.objectContaining({ rc: '0x101' }), message: expect.stringMatching(/swtpm_ioctl/u) });
        await exec('swtpm_ioctl', ['--tcp', `127.0.0.1:${off.ctrlPort}`, '-i']);
        await expect(t.readPcrs([{ hash: 'sha256', pcrs: [0] }])).rejects.toMatchObject({ code: 'EAI_TPM_NOT_STARTED', details: expect.objectContaining({ rc: '0x100' }), message: expect.stringMatching(/tpm2_startup -c/u) });
      } finally {
        await off.stop();
      }
    });

    it('a TPM full of transient objects (0x902) someone else left loaded', async () => {
      for (let i = 0; i < 3; i++) await tool('tpm2_createprimary', ['-C', 'o', '-g', 'sha256', '-G', 'ecc', '-c', `p${i}.ctx`]);
      try {
        await expect(tpm.attestationKey({ handle: 0x81010011 })).rejects.toMatchObject({ code: 'EAI_TPM_OBJECT_MEMORY', message: expect.stringMatching(/tpm2_flushcontext -t/u) });
      } finally {
        await tool('tpm2_flushcontext', ['-t']);
      }
    });

    it('reduces TPM response codes to the code without the parameter number', () => {
      expect(responseCode('ERROR: Esys_Quote(0x2D2) - tpm:parameter(2):unsupported or incompatible scheme')).toBe(0x92);
      expect(responseCode('ERROR: Esys_ActivateCredential(0x9A2) - tpm:session(1):bad auth')).toBe(0xa2);
      expect(responseCode('ERROR: Esys_CreatePrimary(0x902) - tpm:warn(2.0): out of memory for object contexts')).toBe(0x902);
      expect(responseCode('ERROR: Esys_Foo(0x70018) - esapi')).toBeUndefined();
      expect(responseCode('no code here')).toBeUndefined();
    });

    it('every failure is a TpmError carrying the tool, its arguments and the TCTI', async () => {
      const error = await new Tpm({ tcti: 'swtpm:host=127.0.0.1,port=1' }).quote([{ hash: 'sha256', pcrs: [0] }], Buffer.from('n')).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TpmError);
      expect((error as TpmError).details).toMatchObject({ tool: 'tpm2_quote', tcti: 'swtpm:host=127.0.0.1,port=1' });
      expect(objectName(ak.public)).toEqual(ak.name);
    });
  });
});
