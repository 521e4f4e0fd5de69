import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalBytes, canonicalize, CanonicalJsonError } from '../../../../models/trust/canonical-json.js';

const parsed = (text: string): string => canonicalize(JSON.parse(text));

describe('canonicalize (RFC 8785)', () => {
  // Vectors from RFC 8785 and github.com/cyberphone/json-canonicalization testdata/{input,output}.
  it('sorts, strips whitespace and normalises numbers and escapes (testdata/values.json)', () => {
    const input = '{\n  "numbers": [1E30, 4.50, 333333333.33333329, 2e-3, 0.000000000000000000000000001],\n  "escaping": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",\n  "literals": [null, true, false]\n}';
    expect(parsed(input)).toBe('{"escaping":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/","literals":[null,true,false],"numbers":[1e+30,4.5,333333333.3333333,0.002,1e-27]}');
  });

  it('produces the UTF-8 bytes of the README sample', () => {
    const input = '{"numbers":[1E30,4.50,6,2e-3,0.000000000000000000000000001],"escaping":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/","other":[null,true,false]}';
    const hex =
      '7b 22 65 73 63 61 70 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30 30 66 5c 6e 41 27 42 5c 22 5c 5c ' +
      '5c 5c 5c 22 2f 22 2c 22 6e 75 6d 62 65 72 73 22 3a 5b 31 65 2b 33 30 2c 34 2e 35 2c 36 2c 30 2e ' +
      '30 30 32 2c 31 65 2d 32 37 5d 2c 22 6f 74 68 65 72 22 3a 5b 6e 75 6c 6c 2c 74 72 75 65 2c 66 61 ' +
      '6c 73 65 5d 7d';
    expect(canonicalBytes(JSON.parse(input)).toString('hex')).toBe(hex.replaceAll(' ', ''));
  });

  it('orders members by UTF-16 code units, not code points or locale (testdata/weird.json, french.json)', () => {
    const weird = '{"\\u20ac":"Euro Sign","1":"One","\\u0080":"Control\\u007f","\\ud83d\\ude02":"Smiley","\\u00f6":"Latin Small Letter O With Diaeresis","\\ufb33":"Hebrew Letter Dalet With Dagesh","</script>":"Browser Challenge"}';
    expect(parsed(weird)).toBe('{"1":"One","</script>":"Browser Challenge","\u0080":"Control\u007f","ö":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign","\ud83d\ude02":"Smiley","\ufb33":"Hebrew Letter Dalet With Dagesh"}');
    const french = '{"peach":"This sorting order","péché":"is wrong according to French","pêche":"but canonicalization MUST","sin":"ingnore locale"}';
    expect(parsed(french)).toBe('{"peach":"This sorting order","péché":"is wrong according to French","pêche":"but canonicalization MUST","sin":"ingnore locale"}');
  });

  it('sorts recursively and keeps array order (testdata/structures.json)', () => {
    const input = '{"1": {"f": {"f": "hi","F": 5} ,"\\n": 56.0},"10": { },"": "empty","a": { },"111": [ { } ],"A": { }}';
    expect(parsed(input)).toBe('{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{}],"A":{},"a":{}}');
  });

  it('writes numbers as ECMAScript does (RFC 8785 appendix B)', () => {
    const vectors: [string, string][] = [
      ['0000000000000000', '0'],
      ['8000000000000000', '0'],
      ['0000000000000001', '5e-324'],
      ['8000000000000001', '-5e-324'],
      ['7fefffffffffffff', '1.7976931348623157e+308'],
      ['ffefffffffffffff', '-1.7976931348623157e+308'],
      ['4340000000000000', '9007199254740992'],
      ['c340000000000000', '-9007199254740992'],
      ['4430000000000000', '295147905179352830000'],
      ['44b52d02c7e14af5', '9.999999999999997e+22'],
      ['44b52d02c7e14af6', '1e+23'],
      ['44b52d02c7e14af7', '1.0000000000000001e+23'],
      ['444b1ae4d6e2ef4e', '999999999999999700000'],
      ['444b1ae4d6e2ef4f', '999999999999999900000'],
      ['444b1ae4d6e2ef50', '1e+21'],
      ['3eb0c6f7a0b5ed8c', '9.999999999999997e-7'],
      ['3eb0c6f7a0b5ed8d', '0.000001'],
      ['41b3de4355555553', '333333333.3333332'],
      ['41b3de4355555554', '333333333.33333325'],
      ['41b3de4355555555', '333333333.3333333'],
      ['41b3de4355555556', '333333333.3333334'],
      ['41b3de4355555557', '333333333.33333343'],
      ['becbf647612f3696', '-0.0000033333333333333333'],
      ['43143ff3c1cb0959', '1424953923781206.2'],
    ];
    for (const [bits, text] of vectors) expect(canonicalize(Buffer.from(bits, 'hex').readDoubleBE(0)), bits).toBe(text);
    for (const bits of ['7fffffffffffffff', '7ff0000000000000']) {
      expect(() => canonicalize(Buffer.from(bits, 'hex').readDoubleBE(0))).toThrow(CanonicalJsonError);
    }
  });

  it('escapes every control character and nothing else', () => {
    expect(canonicalize('\u0000\u0008\u0009\u000a\u000c\u000d\u001f\u007f/é')).toBe('"\\u0000\\b\\t\\n\\f\\r\\u001f\u007f/é"');
  });

  it('refuses values that are not I-JSON, naming where they are', () => {
    const bad: unknown[] = [Number.NaN, Number.POSITIVE_INFINITY, undefined, 1n, () => 1, Symbol('s'), new Map(), new Date(0), Buffer.from('x'), { a: [1, { b: undefined }] }, 'lone \ud800 surrogate', '\udc00', [1, , 2]];
    for (const value of bad) {
      let error: unknown;
      try {
        canonicalize(value);
      } catch (e) {
        error = e;
      }
      expect(error, String(typeof value)).toBeInstanceOf(CanonicalJsonError);
      expect((error as CanonicalJsonError).code).toBe('EAI_CANONICAL_JSON_VALUE');
    }
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = { again: cyclic };
    expect(() => canonicalize(cyclic)).toThrow(/self\.again.*cycle/u);
    expect(() => canonicalize({ a: [1, { b: undefined }] })).toThrow(/'a\.1\.b'/u);
    // A shared (not cyclic) sub-object is fine, and a surrogate pair is not lone.
    const shared = { x: 1 };
    expect(canonicalize({ p: shared, q: shared, e: '😂' })).toBe('{"e":"😂","p":{"x":1},"q":{"x":1}}');
    expect(canonicalize(Object.assign(Object.create(null) as object, { b: 1, a: 2 }))).toBe('{"a":2,"b":1}');
  });

  it('is a fixed point and ignores member order (property)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const once = canonicalize(value);
        expect(canonicalize(JSON.parse(once))).toBe(once);
        expect(canonicalize(reverseKeys(value))).toBe(once);
      }),
      { numRuns: 300 },
    );
  });

  it('gives the bytes OLPC canonical JSON (securesystemslib encode_canonical) gives for root-like documents', () => {
    const doc = { signed: { _type: 'root', version: 12, expires: '2030-01-01T00:00:00Z', keys: { ab: { keyval: { public: 'cd' } } }, roles: { root: { keyids: ['ab'], threshold: 1 } } }, signatures: [] };
    expect(canonicalize(doc)).toBe(olpc(doc));
  });
});

function reverseKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(reverseKeys);
  if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.entries(value).reverse().map(([k, v]) => [k, reverseKeys(v)]));
  return value;
}

/** OLPC canonical JSON as securesystemslib writes it: sorted keys, integers, only `"` and `\` escaped. */
function olpc(value: unknown): string {
  if (typeof value === 'string') return `"${value.replace(/["\\]/gu, (c) => `\\${c}`)}"`;
  if (typeof value === 'number') return String(value);
  if (typeof value === 'boolean' || value === null) return String(value);
  if (Array.isArray(value)) return `[${value.map(olpc).join(',')}]`;
  const record = value as Record<string, unknown>;
  return `{${Object.keys(record).sort().map((k) => `${olpc(k)}:${olpc(record[k])}`).join(',')}}`;
}
