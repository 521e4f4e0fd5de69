/**
 * SSD anchors as MediaPipe generates them (`SsdAnchorsCalculator`, mediapipe/calculators/tflite/
 * ssd_anchors_calculator.cc): one anchor per aspect ratio (plus one interpolated scale) per cell of
 * each feature map, layers with the same stride merged into one grid. BlazeFace's regressors are
 * offsets from these anchors, so the decoder and the model must agree on them exactly: order,
 * count and centres.
 */

/** One anchor: its centre and size as fractions of the model input. */
export interface Anchor {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** The options of MediaPipe's `SsdAnchorsCalculatorOptions` that BlazeFace-style models use. */
export interface SsdAnchorOptions {
  readonly inputWidth: number;
  readonly inputHeight: number;
  readonly minScale: number;
  readonly maxScale: number;
  /** Centre of an anchor within its cell, 0..1 (0.5: the middle). */
  readonly anchorOffsetX: number;
  readonly anchorOffsetY: number;
  /** One stride per layer; consecutive layers with the same stride share a grid. */
  readonly strides: readonly number[];
  readonly aspectRatios: readonly number[];
  /** Lowest layer gets the three fixed anchors (1:1 at scale 0.1, 2:1, 1:2) instead of `aspectRatios`. */
  readonly reduceBoxesInLowestLayer: boolean;
  /** > 0: one more anchor per layer at the geometric mean of this and the next scale, with this ratio. */
  readonly interpolatedScaleAspectRatio: number;
  /** All anchors 1 × 1: the model regresses absolute sizes (BlazeFace). */
  readonly fixedAnchorSize: boolean;
}

/**
 * MediaPipe's face_detection_short_range (front camera, 128 px) anchors: strides 8, 16, 16, 16,
 * two anchors per cell: 16 × 16 × 2 = 512 then 8 × 8 × 6 = 384, 896 in all.
 */
export const BLAZEFACE_FRONT_128: SsdAnchorOptions = {
  inputWidth: 128,
  inputHeight: 128,
  minScale: 0.1484375,
  maxScale: 0.75,
  anchorOffsetX: 0.5,
  anchorOffsetY: 0.5,
  strides: [8, 16, 16, 16],
  aspectRatios: [1.0],
  reduceBoxesInLowestLayer: false,
  interpolatedScaleAspectRatio: 1.0,
  fixedAnchorSize: true,
};

/**
 * MediaPipe's face_detection_back (back camera, 256 px) anchors: strides 16, 32, 32, 32 over a
 * 256 px input, which gives the same 16 × 16 × 2 + 8 × 8 × 6 = 896 layout as the front model.
 */
export const BLAZEFACE_BACK_256: SsdAnchorOptions = {
  ...BLAZEFACE_FRONT_128,
  inputWidth: 256,
  inputHeight: 256,
  minScale: 0.15625,
  strides: [16, 32, 32, 32],
};

/** The anchors for `options`, in the order the model's outputs list them. */
export function ssdAnchors(options: SsdAnchorOptions): Anchor[] {
  const anchors: Anchor[] = [];
  const layers = options.strides.length;
  let layer = 0;
  while (layer < layers) {
    const ratios: number[] = [];
    const scales: number[] = [];
    // Merge the run of layers that share this layer's stride into one grid.
    let last = layer;
    while (last < layers && options.strides[last] === options.strides[layer]) {
      const scale = scaleOf(options, last);
      if (last === 0 && options.reduceBoxesInLowestLayer) {
        ratios.push(1.0, 2.0, 0.5);
        scales.push(0.1, scale, scale);
      } else {
        for (const r of options.aspectRatios) {
          ratios.push(r);
          scales.push(scale);
        }
        if (options.interpolatedScaleAspectRatio > 0) {
          const next = last === layers - 1 ? 1.0 : scaleOf(options, last + 1);
          scales.push(Math.sqrt(scale * next));
          ratios.push(options.interpolatedScaleAspectRatio);
        }
      }
      last++;
    }
    const stride = options.strides[layer] as number;
    const rows = Math.ceil(options.inputHeight / stride);
    const cols = Math.ceil(options.inputWidth / stride);
    for (let y = 0; y < rows; y++) {
      for (let x = 0; x < cols; x++) {
        for (let i = 0; i < ratios.length; i++) {
          const root = Math.sqrt(ratios[i] as number);
          anchors.push({
            x: (x + options.anchorOffsetX) / cols,
            y: (y + options.anchorOffsetY) / rows,
            width: options.fixedAnchorSize ? 1 : (scales[i] as number) * root,
            height: options.fixedAnchorSize ? 1 : (scales[i] as number) / root,
          });
        }
      }
    }
    layer = last;
  }
  return anchors;
}

/** MediaPipe's `CalculateScale`: scales spread linearly from min to max over the layers. */
function scaleOf(options: SsdAnchorOptions, layer: number): number {
  const n = options.strides.length;
  return n === 1 ? (options.minScale + options.maxScale) / 2 : options.minScale + ((options.maxScale - options.minScale) * layer) / (n - 1);
}
