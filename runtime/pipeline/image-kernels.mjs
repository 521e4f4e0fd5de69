// Generated from image-kernels.ts by the TypeScript compiler (transpileModule, ES2022): do not edit.
// Regenerate: AIOS_WRITE_KERNELS=1 npx vitest run test/unit/runtime/pipeline/image-kernels.test.ts
/**
 * Pixel kernels for the image stages, written once and run in two places: in the pipeline's own
 * thread (imported as TypeScript) and in the transform worker threads (as `image-kernels.mjs`,
 * the TypeScript compiler's output for this file, committed beside it; a test fails when the two
 * differ and says how to regenerate). So this file imports nothing and every kernel is a plain
 * function of typed arrays and numbers.
 *
 * Frames are 8 bits per channel with rows packed (`ImageFrame`). Each kernel writes a band of
 * output rows `[rowStart, rowEnd)` (pixels `[start, end)` for per-pixel kernels) so that one
 * frame can be split across several threads; bands never overlap, so threads never write the same
 * bytes. Kernels read `src` and write `dst` only; the caller owns both and keeps them alive until
 * the kernel returns (or the worker answers).
 */
/** Channels per pixel of each pixel format (as `PIXEL_CHANNELS` in drivers/sensors/types.ts). */
export function channelsOf(format) {
    switch (format) {
        case 'rgb24':
        case 'bgr24':
            return 3;
        case 'rgba':
            return 4;
        case 'gray8':
            return 1;
        default:
            throw new RangeError(`unknown pixel format '${format}'`);
    }
}
/**
 * Nearest-neighbour resize: output pixel (x, y) takes the source pixel holding its centre,
 * `floor((x + 0.5) * sw / dw)` (OpenCV's INTER_NEAREST_EXACT, PIL's NEAREST).
 */
export function resizeNearest(src, sw, sh, dst, dw, dh, channels, rowStart, rowEnd) {
    const xs = new Int32Array(dw);
    for (let x = 0; x < dw; x++)
        xs[x] = Math.min(sw - 1, Math.floor(((x + 0.5) * sw) / dw)) * channels;
    for (let y = rowStart; y < rowEnd; y++) {
        const sy = Math.min(sh - 1, Math.floor(((y + 0.5) * sh) / dh));
        const srow = sy * sw * channels;
        let o = y * dw * channels;
        for (let x = 0; x < dw; x++) {
            const i = srow + xs[x];
            for (let c = 0; c < channels; c++)
                dst[o++] = src[i + c];
        }
    }
}
/**
 * Bilinear resize with pixel centres aligned (`align_corners = false`, half-pixel centres: the
 * convention of OpenCV's INTER_LINEAR, PIL and TF2's `tf.image.resize`): output pixel (x, y)
 * samples the source at `((x + 0.5) * sw / dw - 0.5, ...)`, clamped to the edge pixels, and
 * rounds to the nearest integer (halves up). No antialiasing filter: shrinking by more than 2×
 * skips source pixels, as OpenCV's INTER_LINEAR does.
 */
export function resizeBilinear(src, sw, sh, dst, dw, dh, channels, rowStart, rowEnd) {
    // Per output column: left source offset, right source offset, weight of the right one.
    const x0s = new Int32Array(dw);
    const x1s = new Int32Array(dw);
    const fxs = new Float64Array(dw);
    for (let x = 0; x < dw; x++) {
        const sx = Math.min(sw - 1, Math.max(0, ((x + 0.5) * sw) / dw - 0.5));
        const x0 = Math.floor(sx);
        x0s[x] = x0 * channels;
        x1s[x] = Math.min(sw - 1, x0 + 1) * channels;
        fxs[x] = sx - x0;
    }
    const stride = sw * channels;
    for (let y = rowStart; y < rowEnd; y++) {
        const sy = Math.min(sh - 1, Math.max(0, ((y + 0.5) * sh) / dh - 0.5));
        const y0 = Math.floor(sy);
        const fy = sy - y0;
        const r0 = y0 * stride;
        const r1 = Math.min(sh - 1, y0 + 1) * stride;
        let o = y * dw * channels;
        for (let x = 0; x < dw; x++) {
            const a = x0s[x];
            const b = x1s[x];
            const fx = fxs[x];
            for (let c = 0; c < channels; c++) {
                const top = src[r0 + a + c] * (1 - fx) + src[r0 + b + c] * fx;
                const bottom = src[r1 + a + c] * (1 - fx) + src[r1 + b + c] * fx;
                dst[o++] = Math.floor(top * (1 - fy) + bottom * fy + 0.5);
            }
        }
    }
}
/**
 * Pixel format conversion for pixels `[start, end)`. RGB and BGR swap channels; RGBA gains an
 * opaque alpha (255) or loses it; gray takes ITU-R BT.601 luma `0.299 R + 0.587 G + 0.114 B`
 * (what OpenCV's `COLOR_RGB2GRAY` and PIL's `convert('L')` compute), rounded; gray to colour
 * copies the value into every channel.
 */
export function convertPixels(src, from, dst, to, start, end) {
    const ci = channelsOf(from);
    const co = channelsOf(to);
    // Source offsets of red, green, blue (all 0 for gray).
    const r = from === 'bgr24' ? 2 : 0;
    const g = from === 'gray8' ? 0 : 1;
    const b = from === 'bgr24' ? 0 : from === 'gray8' ? 0 : 2;
    if (to === 'gray8') {
        for (let p = start; p < end; p++) {
            const i = p * ci;
            dst[p] = from === 'gray8' ? src[i] : Math.floor(0.299 * src[i + r] + 0.587 * src[i + g] + 0.114 * src[i + b] + 0.5);
        }
        return;
    }
    // Destination offsets of red and blue; green is 1 in every colour format.
    const dr = to === 'bgr24' ? 2 : 0;
    const db = to === 'bgr24' ? 0 : 2;
    for (let p = start; p < end; p++) {
        const i = p * ci;
        const o = p * co;
        dst[o + dr] = src[i + r];
        dst[o + 1] = src[i + g];
        dst[o + db] = src[i + b];
        if (co === 4)
            dst[o + 3] = ci === 4 ? src[i + 3] : 255;
    }
}
/**
 * The float each byte value of each channel becomes: `table[c * 256 + v] =
 * float32((v * scale + offset - mean[c]) / std[c])`, computed in float64 and rounded once.
 * A table makes normalising a frame one lookup per value, and both threads produce the same bits.
 */
export function normalizeTable(channels, scale, offset, mean, std) {
    const table = new Float32Array(channels * 256);
    for (let c = 0; c < channels; c++) {
        const m = mean.length === 1 ? mean[0] : (mean[c] ?? 0);
        const s = std.length === 1 ? std[0] : (std[c] ?? 1);
        for (let v = 0; v < 256; v++)
            table[c * 256 + v] = (v * scale + offset - m) / s;
    }
    return table;
}
/**
 * Rows `[rowStart, rowEnd)` of an interleaved 8-bit image into float32 through `table` (from
 * `normalizeTable`), as NHWC (interleaved, like the source) or NCHW (one plane per channel).
 * `dst` holds `width * height * channels` floats: the batch dimension adds no elements.
 */
export function normalizePixels(src, width, height, channels, dst, layout, table, rowStart, rowEnd) {
    if (layout === 'NHWC') {
        for (let i = rowStart * width * channels, end = rowEnd * width * channels; i < end;) {
            for (let c = 0; c < channels; c++, i++)
                dst[i] = table[c * 256 + src[i]];
        }
        return;
    }
    const plane = width * height;
    for (let y = rowStart; y < rowEnd; y++) {
        for (let x = 0; x < width; x++) {
            const p = y * width + x;
            const i = p * channels;
            for (let c = 0; c < channels; c++)
                dst[c * plane + p] = table[c * 256 + src[i + c]];
        }
    }
}
