import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TpmError } from '../../../../drivers/tpm/errors.js';
import { childQualifiedName, hierarchyName, qualifiedName, TPM_RH } from '../../../../drivers/tpm/names.js';
import { extendPcr, pcrComposite, resetPcr, splitPcrValues } from '../../../../drivers/tpm/pcr.js';
import { decodePcrSelection, encodePcrSelection, pcrSelection, pcrSelectionSpec, type PcrSelection } from '../../../../drivers/tpm/pcr-selection.js';

const sha256 = (b: Buffer | string): Buffer => createHash('sha256').update(b).digest();

describe('PCR selection', () => {
  it('encodes a TPML_PCR_SELECTION as a TPM does: bit i of byte j is PCR 8j + i, 3-byte bitmaps', () => {
    // The bytes of a real quote over sha256:0,1,16 (swtpm 0.7.1).
    expect(encodePcrSelection([{ hash: 'sha256', pcrs: [0, 1, 16] }]).toString('hex')).toBe('00000001000b03030001');
    expect(encodePcrSelection([{ hash: 'sha256', pcrs: [23] }, { hash: 'sha1', pcrs: [] }]).toString('hex')).toBe('00000002000b03000080000403000000');
    expect(decodePcrSelection(Buffer.from('00000001000b03030001', 'hex'))).toEqual([{ hash: 'sha256', pcrs: [0, 1, 16] }]);
  });

  it('round-trips any selection, and spells it the tpm2-tools way', () => {
    const bank = fc.record({ hash: fc.constantFrom('sha1', 'sha256', 'sha384', 'sha512' as const), pcrs: fc.uniqueArray(fc.integer({ min: 0, max: 23 }), { maxLength: 24 }) });
    fc.assert(
      fc.property(fc.uniqueArray(bank, { minLength: 1, maxLength: 4, selector: (b) => b.hash }), (banks) => {
        const sorted = banks.map((b) => ({ hash: b.hash, pcrs: [...b.pcrs].sort((x, y) => x - y) }));
        expect(decodePcrSelection(encodePcrSelection(sorted))).toEqual(sorted);
      }),
    );
    expect(pcrSelectionSpec([{ hash: 'sha256', pcrs: [0, 7] }, { hash: 'sha3-256', pcrs: [1] }, { hash: 'sha1', pcrs: [] }])).toBe('sha256:0,7+sha3_256:1');
  });

  it('normalises a caller selection and refuses bad ones with EAI_TPM_ARGUMENT', () => {
    expect(pcrSelection([{ hash: 'sha256', pcrs: [16, 0, 16, 7] }])).toEqual([{ hash: 'sha256', pcrs: [0, 7, 16] }]);
    const bad: PcrSelection[] = [[], [{ hash: 'sha256', pcrs: [24] }], [{ hash: 'sha256', pcrs: [1.5] }], [{ hash: 'sha256', pcrs: [] }], [{ hash: 'md5' as 'sha1', pcrs: [0] }], [{ hash: 'sha1', pcrs: [0] }, { hash: 'sha1', pcrs: [1] }]];
    for (const s of bad) expect(() => pcrSelection(s)).toThrow(expect.objectContaining({ code: 'EAI_TPM_ARGUMENT' }));
  });

  it('refuses bitmaps and bank counts past any real TPM, and unknown banks', () => {
    expect(() => decodePcrSelection(Buffer.from('00000011', 'hex'))).toThrow(/count is 17/u);
    expect(() => decodePcrSelection(Buffer.from('00000001000b21', 'hex'))).toThrow(/sizeofSelect is 33/u);
    expect(() => decodePcrSelection(Buffer.from('00000001001203000000', 'hex'))).toThrow(expect.objectContaining({ code: 'EAI_TPM_UNSUPPORTED' }));
  });
});

describe('PCR arithmetic', () => {
  it('extend is H(old || digest): one sha256("abc") into a reset PCR gives what swtpm reports', () => {
    expect(extendPcr('sha256', resetPcr('sha256'), sha256('abc')).toString('hex')).toBe('589f9ffed4c477966bfb8d41f37895b08c69047df8f911d6f3b57fbe08faee8d');
    expect(() => extendPcr('sha256', resetPcr('sha1'), sha256('abc'))).toThrow(TpmError);
    expect(() => extendPcr('sha1', resetPcr('sha1'), sha256('abc'))).toThrow(/20-byte digest/u);
  });

  it('the composite digest follows the selection order: banks as listed, PCRs ascending', () => {
    const selection = pcrSelection([{ hash: 'sha256', pcrs: [16, 0] }, { hash: 'sha1', pcrs: [3] }]);
    const v0 = Buffer.alloc(32, 0xa0);
    const v16 = Buffer.alloc(32, 0xb6);
    const s3 = Buffer.alloc(20, 0x13);
    const values = [{ hash: 'sha1' as const, values: new Map([[3, s3]]) }, { hash: 'sha256' as const, values: new Map([[16, v16], [0, v0]]) }];
    expect(pcrComposite('sha256', selection, values)).toEqual(sha256(Buffer.concat([v0, v16, s3])));
    expect(pcrComposite('sha384', selection, values)).toEqual(createHash('sha384').update(Buffer.concat([v0, v16, s3])).digest());
    expect(() => pcrComposite('sha256', selection, values.slice(1))).toThrow(expect.objectContaining({ code: 'EAI_TPM_QUOTE_PCRS' }));
  });

  it('splits concatenated values by selection, refusing a length that does not fit', () => {
    const selection = pcrSelection([{ hash: 'sha256', pcrs: [1, 2] }, { hash: 'sha1', pcrs: [9] }]);
    const bytes = Buffer.concat([Buffer.alloc(32, 1), Buffer.alloc(32, 2), Buffer.alloc(20, 9)]);
    const split = splitPcrValues(selection, bytes);
    expect(split.map((b) => [b.hash, [...b.values.keys()], [...b.values.values()].map((v) => v[0])])).toEqual([['sha256', [1, 2], [1, 2]], ['sha1', [9], [9]]]);
    expect(() => splitPcrValues(selection, bytes.subarray(1))).toThrow(expect.objectContaining({ code: 'EAI_TPM_MALFORMED' }));
  });
});

describe('TPM names', () => {
  // Read from a swtpm with tpm2_readpublic -n / -q: an RSA EK at 0x81010001 and an ECC AK under it.
  const ekName = Buffer.from('000bc97461ba802180afe176fba9f33c90acec02a2f931fa72f4f67100a555c6cdb5', 'hex');
  const ekQualified = Buffer.from('000b73ef033b302719df018b2c45b8b9f48cbb668709b91027719e5baabe45ebc3fa', 'hex');
  const akName = Buffer.from('000be8198dddc49135133cbdf098a34479be408b4c44f4d34f27f8127147799ce1f0', 'hex');
  const akQualified = Buffer.from('000b20ea0f09b626c74d34272558be20d47ea3c52a4cfaa848e53eff1fbd9bcad61f', 'hex');

  it('computes qualified names as the TPM does, from the endorsement hierarchy down', () => {
    expect(qualifiedName(hierarchyName(TPM_RH.ENDORSEMENT), ekName)).toEqual(ekQualified);
    expect(qualifiedName(ekQualified, akName)).toEqual(akQualified);
    expect(childQualifiedName(TPM_RH.ENDORSEMENT, ekName, akName)).toEqual(akQualified);
    expect(childQualifiedName(TPM_RH.OWNER, ekName, akName)).not.toEqual(akQualified);
    expect(() => qualifiedName(ekQualified, Buffer.from('000b', 'hex'))).toThrow(expect.objectContaining({ code: 'EAI_TPM_ARGUMENT' }));
  });
});
