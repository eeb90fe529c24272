// An image's pixels -> the model's input, as model.json's preprocessing says and exactly as the Python side does it
// with Pillow (compress/lazy_data.py for training, edge_demo/python/classify.py in the Python app):
//   1. colour: gray ("L", Pillow's integer luma) or RGB, as 8-bit planes;
//   2. resize_short_side: the short side to that many pixels, aspect kept (Pillow's BILINEAR resample);
//   3. centre crop to the model's width x height (with resize_short_side or center_crop);
//   4. an image that still has another size is resized to width x height (BILINEAR);
//   5. x[c] = (pixel / 255 - mean[c]) / std[c] in float32, colours inverted first when asked.
// The browser's own canvas scaling filters differently from Pillow, so step 2-4 reimplement Pillow's
// fixed-point two-pass resample (libImaging/Resample.c) pixel for pixel.

const PRECISION_BITS = 32 - 8 - 2;  // Pillow's fixed-point precision for 8-bit images

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter: for every output
// pixel the first input pixel, how many it reads, and their integer weights.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filterScale;  // BILINEAR's support is 1, widened when shrinking
  const reciprocal = 1 / filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const row = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const distance = Math.abs((x + xmin - center + 0.5) * reciprocal);
      row[x] = distance < 1 ? 1 - distance : 0;
      total += row[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = total !== 0 ? row[x] / total : row[x];
      weights[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { bounds, weights, ksize };
}

function clip8(sum) {
  return Math.max(0, Math.min(255, sum >> PRECISION_BITS));
}

function horizontalPass(plane, width, height, outWidth) {
  const { bounds, weights, ksize } = coefficients(width, outWidth);
  const out = new Uint8Array(outWidth * height);
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < outWidth; xx++) {
      const xmin = bounds[2 * xx], count = bounds[2 * xx + 1];
      let sum = 1 << (PRECISION_BITS - 1);
      for (let x = 0; x < count; x++) sum += plane[y * width + xmin + x] * weights[xx * ksize + x];
      out[y * outWidth + xx] = clip8(sum);
    }
  }
  return out;
}

function verticalPass(plane, width, height, outHeight) {
  const { bounds, weights, ksize } = coefficients(height, outHeight);
  const out = new Uint8Array(width * outHeight);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = bounds[2 * yy], count = bounds[2 * yy + 1];
    for (let x = 0; x < width; x++) {
      let sum = 1 << (PRECISION_BITS - 1);
      for (let y = 0; y < count; y++) sum += plane[(ymin + y) * width + x] * weights[yy * ksize + y];
      out[yy * width + x] = clip8(sum);
    }
  }
  return out;
}

// One 8-bit plane resized like Pillow's Image.resize(size, BILINEAR). Each pass rounds to 8 bits, so the order
// of the passes matters: Pillow 13 runs the vertical one first when the height shrinks by more than twice as
// many pixels as the width (older Pillows always start with the horizontal one).
export function resizeBilinear(plane, width, height, outWidth, outHeight) {
  const verticalFirst = height - outHeight > 0 && height - outHeight > 2 * (width - outWidth);
  if (verticalFirst) {
    if (outHeight !== height) plane = verticalPass(plane, width, height, outHeight);
    return outWidth !== width ? horizontalPass(plane, width, outHeight, outWidth) : plane;
  }
  if (outWidth !== width) plane = horizontalPass(plane, width, height, outWidth);
  return outHeight !== height ? verticalPass(plane, outWidth, height, outHeight) : plane;
}

// Python's round(): half to even.
function roundHalfEven(value) {
  const rounded = Math.round(value);
  return Math.abs(value % 1) === 0.5 ? 2 * Math.round(value / 2) : rounded;
}

// The size after the short side is resized to `shortSide` (compress.lazy_data.resize_and_crop's rule).
export function shortSideSize(width, height, shortSide) {
  if (width === height) return [shortSide, shortSide];
  const scale = shortSide / Math.min(width, height);
  return [Math.max(shortSide, roundHalfEven(width * scale)), Math.max(shortSide, roundHalfEven(height * scale))];
}

function crop(plane, width, left, top, outWidth, outHeight) {
  const out = new Uint8Array(outWidth * outHeight);
  for (let y = 0; y < outHeight; y++) out.set(plane.subarray((top + y) * width + left, (top + y) * width + left + outWidth), y * outWidth);
  return out;
}

// Steps 2-4 on one plane: returns a width x height plane of the model's size.
export function fitToInput(plane, width, height, preprocessing, input) {
  const { width: W, height: H } = input;
  const shortSide = preprocessing.resize_short_side;
  if (shortSide) {
    const [w, h] = shortSideSize(width, height, shortSide);
    if (w !== width || h !== height) plane = resizeBilinear(plane, width, height, w, h);
    [width, height] = [w, h];
  }
  if ((shortSide || preprocessing.center_crop) && (width !== W || height !== H) && width >= W && height >= H) {
    plane = crop(plane, width, Math.floor((width - W) / 2), Math.floor((height - H) / 2), W, H);
    [width, height] = [W, H];
  }
  return width === W && height === H ? plane : resizeBilinear(plane, width, height, W, H);
}

// RGBA pixels (a canvas's ImageData) -> C 8-bit planes: Pillow's "L" (integer luma) or its R, G and B.
export function colourPlanes(rgba, width, height, channels) {
  const count = width * height;
  if (channels === 1) {
    const gray = new Uint8Array(count);
    for (let i = 0; i < count; i++) {
      gray[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
    }
    return [gray];
  }
  return [0, 1, 2].map((c) => Uint8Array.from({ length: count }, (_, i) => rgba[4 * i + c]));
}

// Border ring of the CHW pixels in 0..1: the same rule as the Python app and `compress ship`.
export function needsInversion(pixels, C, H, W, background) {
  let sum = 0;
  for (let c = 0; c < C; c++) {
    const base = c * H * W;
    for (let x = 0; x < W; x++) sum += pixels[base + x] + pixels[base + (H - 1) * W + x];
    for (let y = 0; y < H; y++) sum += pixels[base + y * W] + pixels[base + y * W + W - 1];
  }
  const border = sum / (C * (2 * W + 2 * H));
  return (background === "dark" && border > 0.5) || (background === "light" && border < 0.5);
}

// RGBA pixels of any size -> the normalized CHW float32 model input. Each step is rounded to float32
// (Math.fround) like numpy does, so the Python app and this page feed identical inputs.
// invert: "yes", "no" or "auto" (when the image's border is the opposite of the training images' background).
export function modelInput(imageData, info, invert) {
  const { channels: C, height: H, width: W } = info.input;
  const pre = info.preprocessing;
  const planes = colourPlanes(imageData.data, imageData.width, imageData.height, C)
    .map((plane) => fitToInput(plane, imageData.width, imageData.height, pre, info.input));
  const pixels = new Float32Array(C * H * W);
  planes.forEach((plane, c) => { for (let i = 0; i < H * W; i++) pixels[c * H * W + i] = Math.fround(plane[i] / 255); });
  const background = (info.drawing || {}).background || "mixed";
  const flip = invert === "yes" || (invert === "auto" && needsInversion(pixels, C, H, W, background));
  const data = new Float32Array(C * H * W);
  for (let c = 0; c < C; c++) {
    const mean = Math.fround(pre.mean[c]);
    const std = Math.fround(pre.std[c]);
    for (let i = c * H * W; i < (c + 1) * H * W; i++) {
      const v = flip ? Math.fround(1 - pixels[i]) : pixels[i];
      data[i] = Math.fround(Math.fround(v - mean) / std);
    }
  }
  return data;
}
