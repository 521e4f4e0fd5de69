import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { channelsOf, convertPixels, normalizePixels, normalizeTable, resizeBilinear, resizeNearest } from '../../../../runtime/pipeline/image-kernels.js';

// The worker threads run image-kernels.mjs, the in-thread path image-kernels.ts: the .mjs must be
// exactly what the compiler makes of the .ts, so both threads run the same arithmetic.
const repo = path.resolve(import.meta.dirname, '../../../..');
const TS = path.join(repo, 'runtime/pipeline/image-kernels.ts');
const MJS = path.join(repo, 'runtime/pipeline/image-kernels.mjs');
const HEADER = '// Generated from image-kernels.ts by the TypeScript compiler (transpileModule, ES2022): do not edit.\n// Regenerate: AIOS_WRITE_KERNELS=1 npx vitest run test/unit/runtime/pipeline/image-kernels.test.ts\n';

function transpiled(): string {
  const out = ts.transpileModule(readFileSync(TS, 'utf8'), { compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext } });
  return HEADER + out.outputText;
}

describe('image-kernels.mjs', () => {
  it('is the compiled form of image-kernels.ts', () => {
    if (process.env['AIOS_WRITE_KERNELS'] === '1') writeFileSync(MJS, transpiled());
    expect(readFileSync(MJS, 'utf8'), 'image-kernels.mjs is stale: run AIOS_WRITE_KERNELS=1 npx vitest run test/unit/runtime/pipeline/image-kernels.test.ts').toBe(transpiled());
  });

  it('exports the same kernels as the TypeScript module', async () => {
    const compiled = (await import(pathToFileURL(MJS).href)) as Record<string, unknown>;
    expect(Object.keys(compiled).sort()).toEqual(['channelsOf', 'convertPixels', 'normalizePixels', 'normalizeTable', 'resizeBilinear', 'resizeNearest']);
  });
});

describe('resizeBilinear', () => {
  it('matches hand-computed half-pixel bilinear on a 2×2 → 4×4 upscale', () => {
    // Source columns map to sx = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
    const src = Uint8Array.of(0, 100, 200, 40);
    const dst = new Uint8Array(16);
    resizeBilinear(src, 2, 2, dst, 4, 4, 1, 0, 4);
    expect([...dst]).toEqual([
      0, 25, 75, 100,
      // 0.75 * row 0 + 0.25 * row 1: [50, 58.75, 76.25, 85]
      50, 59, 76, 85,
      // 0.25 * row 0 + 0.75 * row 1: [150, 126.25, 78.75, 55]
      150, 126, 79, 55,
      200, 160, 80, 40,
    ]);
  });

  it('halving averages each 2×2 block (half-pixel centres fall between source pixels)', () => {
    const src = Uint8Array.from({ length: 16 }, (_, i) => i * 10);
    const dst = new Uint8Array(4);
    resizeBilinear(src, 4, 4, dst, 2, 2, 1, 0, 2);
    // Block (0,0): 0, 10, 40, 50 → 25; (1,0): 20, 30, 60, 70 → 45; ...
    expect([...dst]).toEqual([25, 45, 105, 125]);
  });

  it('keeps channels apart and is the identity at the same size', () => {
    const src = Uint8Array.from({ length: 5 * 3 * 3 }, (_, i) => (i * 37) % 256);
    const dst = new Uint8Array(src.length);
    resizeBilinear(src, 5, 3, dst, 5, 3, 3, 0, 3);
    expect([...dst]).toEqual([...src]);
  });

  it('writes only its band of rows', () => {
    const src = Uint8Array.from({ length: 64 }, (_, i) => i);
    const dst = new Uint8Array(16).fill(7);
    resizeBilinear(src, 8, 8, dst, 4, 4, 1, 1, 3);
    expect([...dst.subarray(0, 4)]).toEqual([7, 7, 7, 7]);
    expect([...dst.subarray(12)]).toEqual([7, 7, 7, 7]);
    expect(dst[4]).not.toBe(7);
  });
});

describe('resizeNearest', () => {
  it('takes the source pixel under each output centre', () => {
    const src = Uint8Array.of(1, 2, 3, 4, 5, 6); // 3×2
    const up = new Uint8Array(24); // 6×4
    resizeNearest(src, 3, 2, up, 6, 4, 1, 0, 4);
    expect([...up]).toEqual([1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 4, 4, 5, 5, 6, 6]);
    const down = new Uint8Array(1);
    resizeNearest(Uint8Array.of(10, 20, 30, 40), 2, 2, down, 1, 1, 1, 0, 1);
    expect(down[0]).toBe(40); // centre (1, 1) of the 2×2 source
  });
});

describe('convertPixels', () => {
  const rgb = Uint8Array.of(255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 10, 20, 30);
  const n = 5;

  it('computes BT.601 luma, rounded', () => {
    const gray = new Uint8Array(n);
    convertPixels(rgb, 'rgb24', gray, 'gray8', 0, n);
    // 0.299·255 = 76.2, 0.587·255 = 149.7, 0.114·255 = 29.1, 255, 0.299·10 + 0.587·20 + 0.114·30 = 18.16
    expect([...gray]).toEqual([76, 150, 29, 255, 18]);
    const fromBgr = new Uint8Array(n);
    const bgr = new Uint8Array(rgb.length);
    convertPixels(rgb, 'rgb24', bgr, 'bgr24', 0, n);
    convertPixels(bgr, 'bgr24', fromBgr, 'gray8', 0, n);
    expect([...fromBgr]).toEqual([...gray]);
  });

  it('round-trips rgb24 → bgr24 → rgba → rgb24 exactly, with opaque alpha', () => {
    const bgr = new Uint8Array(rgb.length);
    convertPixels(rgb, 'rgb24', bgr, 'bgr24', 0, n);
    expect([...bgr.subarray(0, 6)]).toEqual([0, 0, 255, 0, 255, 0]);
    const rgba = new Uint8Array(n * 4);
    convertPixels(bgr, 'bgr24', rgba, 'rgba', 0, n);
    expect([...rgba.subarray(0, 8)]).toEqual([255, 0, 0, 255, 0, 255, 0, 255]);
    const back = new Uint8Array(rgb.length);
    convertPixels(rgba, 'rgba', back, 'rgb24', 0, n);
    expect([...back]).toEqual([...rgb]);
  });

  it('spreads gray into every colour channel', () => {
    const out = new Uint8Array(8);
    convertPixels(Uint8Array.of(7, 200), 'gray8', out, 'rgba', 0, 2);
    expect([...out]).toEqual([7, 7, 7, 255, 200, 200, 200, 255]);
  });

  it('rejects unknown formats', () => {
    expect(() => channelsOf('yuv420')).toThrow(/unknown pixel format/);
  });
});

describe('normalizeTable / normalizePixels', () => {
  it('maps bytes to (v * scale + offset - mean) / std, rounded once to float32', () => {
    const blaze = normalizeTable(3, 1 / 127.5, -1, [0], [1]);
    expect(blaze[0]).toBe(-1);
    expect(blaze[255]).toBe(1);
    expect(blaze[256 + 128]).toBe(Math.fround(128 / 127.5 - 1));
    const imagenet = normalizeTable(3, 1 / 255, 0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    expect(imagenet[0]).toBe(Math.fround(-0.485 / 0.229));
    expect(imagenet[2 * 256 + 255]).toBe(Math.fround((1 - 0.406) / 0.225));
  });

  it('writes NHWC and NCHW layouts', () => {
    // 2×1 RGB image: pixels (1, 2, 3) and (4, 5, 6); identity table.
    const table = normalizeTable(3, 1, 0, [0], [1]);
    const src = Uint8Array.of(1, 2, 3, 4, 5, 6);
    const nhwc = new Float32Array(6);
    normalizePixels(src, 2, 1, 3, nhwc, 'NHWC', table, 0, 1);
    expect([...nhwc]).toEqual([1, 2, 3, 4, 5, 6]);
    const nchw = new Float32Array(6);
    normalizePixels(src, 2, 1, 3, nchw, 'NCHW', table, 0, 1);
    expect([...nchw]).toEqual([1, 4, 2, 5, 3, 6]);
  });
});
