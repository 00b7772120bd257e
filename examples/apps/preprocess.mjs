// An edgekd image build's preprocessing in JavaScript, read from its manifest.json: the color conversion,
// then manifest.preprocessing.steps in order (resize, center_crop, scale, normalize, layout), with the
// arithmetic edgekd's Python runtime uses, so the model gets the inputs it was built and scored on.
// Shared by the Node.js app (../node) and the web page (../web); no imports, so it runs in both.
//
// An image is {width, height, channels, data}: data holds height * width * channels values, row by row,
// channels interleaved (what a decoded PNG or a canvas's ImageData holds: channels 4, RGBA), as
// Uint8Array / Uint8ClampedArray (0-255) or Float32Array / Float64Array.

/** The model's input for one image: Float32Array of C * H * W (manifest.preprocessing.input_shape). */
export function prepareImage(manifest, image) {
  const pre = manifest.preprocessing;
  if (pre?.kind !== "image") throw new Error(`this build takes ${pre?.kind ?? "unknown"} inputs, not images`);
  let a = toColor(checkImage(image), pre.color, pre.input_shape[0]);
  for (const step of pre.steps) {
    if (step.op === "resize") a = resize(a, step.shorter_side, step.longer_side ?? "round");
    else if (step.op === "center_crop") a = centerCrop(a, step.size[0], step.size[1]);
    else if (step.op === "scale") a = scale(a, step.factor);
    else if (step.op === "normalize") a = normalize(a, step.mean, step.std);
    else if (step.op === "layout") a = toNCHW(a);
    else throw new Error(`manifest step '${step.op}' is unknown to this app (manifest schema ${manifest.schema_version})`);
  }
  const [c, h, w] = pre.input_shape;
  if (!a.chw || a.channels !== c || a.height !== h || a.width !== w) {
    throw new Error(`the image becomes ${a.channels}x${a.height}x${a.width} after the manifest's steps, ` +
                    `but the model takes ${c}x${h}x${w}; give ${w}x${h} images`);
  }
  return Float32Array.from(a.data);
}

/** Softmax of one row of class scores, in float64 as edgekd.runtime computes it. */
export function softmax(scores) {
  const max = Math.max(...scores);
  const e = Array.from(scores, (s) => Math.exp(s - max));
  const sum = e.reduce((x, y) => x + y, 0);
  return e.map((v) => v / sum);
}

/** {label, probability} of one row of class scores, with the manifest's labels. */
export function classify(manifest, scores) {
  const p = softmax(scores);
  let best = 0;
  for (let i = 1; i < p.length; i++) if (p[i] > p[best]) best = i;
  return { label: manifest.labels[best], probability: p[best], probabilities: p };
}

function checkImage(im) {
  const { width, height, channels, data } = im;
  if (!(width > 0 && height > 0 && [1, 3, 4].includes(channels) && data?.length === width * height * channels)) {
    throw new Error(`an image needs width, height, channels (1, 3 or 4) and width * height * channels values`);
  }
  return { width, height, channels, data, uint8: data instanceof Uint8Array || data instanceof Uint8ClampedArray };
}

// Pillow's convert("L") luma, ITU-R 601-2, in fixed point for 8-bit images; alpha is dropped.
function toColor(a, color, modelChannels) {
  const { width, height, channels, data, uint8 } = a;
  const n = width * height;
  if (color === "stored") {
    if (channels !== modelChannels) throw new Error(`the model takes ${modelChannels}-channel images, got ${channels}`);
    return a;
  }
  if (color === "grayscale") {
    if (channels === 1) return a;
    // float images keep their precision: float32 arithmetic on a Float32Array, float64 on a Float64Array
    const out = new data.constructor(n);
    const f = data instanceof Float32Array ? Math.fround : (v) => v;
    const [wr, wg, wb] = [0.299, 0.587, 0.114].map(f);
    for (let i = 0; i < n; i++) {
      const r = data[i * channels], g = data[i * channels + 1], b = data[i * channels + 2];
      out[i] = uint8 ? (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16 : f(f(f(wr * r) + f(wg * g)) + f(wb * b));
    }
    return { width, height, channels: 1, data: out, uint8 };
  }
  if (color === "rgb") {
    if (channels === 3) return a;
    const out = new data.constructor(n * 3);
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < 3; c++) out[i * 3 + c] = data[i * channels + (channels === 1 ? 0 : c)];
    }
    return { width, height, channels: 3, data: out, uint8 };
  }
  throw new Error(`manifest color '${color}' is unknown to this app`);
}

// Shorter side to `shorter`, the other floor(long * shorter / short) (longer "floor"; "round": + 0.5 before
// the floor, what manifests without longer_side were built with); Pillow's bilinear resize of
// each channel (its two passes, its filter support when shrinking, its 8-bit fixed point for uint8).
function resize(a, shorter, longer) {
  const { width: w, height: h, channels } = a;
  const half = longer === "round" ? 0.5 : 0;
  const [ow, oh] = w <= h ? [shorter, Math.max(1, Math.floor(h * shorter / w + half))]
                          : [Math.max(1, Math.floor(w * shorter / h + half)), shorter];
  if (ow === w && oh === h) return a;
  const out = a.uint8 ? new Uint8Array(ow * oh * channels) : new Float32Array(ow * oh * channels);
  const plane = a.uint8 ? new Uint8Array(w * h) : new Float32Array(w * h);
  for (let c = 0; c < channels; c++) {
    for (let i = 0; i < w * h; i++) plane[i] = a.data[i * channels + c];
    const r = resizePlane(plane, w, h, ow, oh, a.uint8);
    for (let i = 0; i < ow * oh; i++) out[i * channels + c] = r[i];
  }
  return { ...a, width: ow, height: oh, data: out };
}

const PRECISION_BITS = 32 - 8 - 2;

// Pillow's precompute_coeffs for the bilinear filter (support 1): per output pixel the first input pixel,
// the count, and the normalized weights.
function coeffs(inSize, outSize) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1), support = filterscale, ss = 1 / filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const k = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bilinear((x + xmin - center + 0.5) * ss);
      k.push(w);
      ww += w;
    }
    out.push({ xmin, k: ww === 0 ? k : k.map((v) => v / ww) });
  }
  return out;
}

function bilinear(x) {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

function resizePlane(src, w, h, ow, oh, uint8) {
  const horiz = coeffs(w, ow), vert = coeffs(h, oh);
  // 8-bit images: weights in fixed point, rounded half away from zero, sums rounded and clipped to 0-255
  const fixed = (cs) => cs.map(({ xmin, k }) => ({ xmin, k: k.map((v) => Math.trunc(v * (1 << PRECISION_BITS) + (v < 0 ? -0.5 : 0.5))) }));
  const store = uint8 ? (ss) => Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS)))) : (ss) => ss;
  const start = uint8 ? 1 << (PRECISION_BITS - 1) : 0;
  const hk = uint8 ? fixed(horiz) : horiz, vk = uint8 ? fixed(vert) : vert;
  // horizontal pass over the rows the vertical pass reads, then the vertical pass (Pillow skips a pass
  // whose size does not change)
  let cur = src, cw = w, first = 0;
  if (ow !== w) {
    first = vert[0].xmin;
    const rows = vert[oh - 1].xmin + vert[oh - 1].k.length - first;
    const tmp = uint8 ? new Uint8Array(ow * rows) : new Float32Array(ow * rows);
    for (let y = 0; y < rows; y++) {
      for (let xx = 0; xx < ow; xx++) {
        const { xmin, k } = hk[xx];
        let ss = start;
        for (let x = 0; x < k.length; x++) ss += cur[(y + first) * w + x + xmin] * k[x];
        tmp[y * ow + xx] = store(ss);
      }
    }
    cur = tmp;
    cw = ow;
  }
  if (oh === h) return cur;
  const out = uint8 ? new Uint8Array(ow * oh) : new Float32Array(ow * oh);
  for (let yy = 0; yy < oh; yy++) {
    const { xmin, k } = vk[yy];
    const ymin = xmin - first;
    for (let x = 0; x < cw; x++) {
      let ss = start;
      for (let y = 0; y < k.length; y++) ss += cur[(y + ymin) * cw + x] * k[y];
      out[yy * cw + x] = store(ss);
    }
  }
  return out;
}

function centerCrop(a, ch, cw) {
  const { width: w, height: h, channels, data } = a;
  if (h < ch || w < cw) throw new Error(`the image is ${w}x${h}, smaller than the model's ${cw}x${ch} crop`);
  const top = Math.floor((h - ch) / 2), left = Math.floor((w - cw) / 2);
  const out = new data.constructor(ch * cw * channels);
  for (let y = 0; y < ch; y++) {
    out.set(data.subarray(((top + y) * w + left) * channels, ((top + y) * w + left + cw) * channels), y * cw * channels);
  }
  return { ...a, width: cw, height: ch, data: out };
}

// x * factor in float64, then float32
function scale(a, factor) {
  return { ...a, data: Float32Array.from(a.data, (v) => v * factor), uint8: false };
}

// (x - mean[c]) / std[c] in float32: each float64 operation on float32 values, rounded to float32, is
// exactly the float32 operation
function normalize(a, mean, std) {
  const m = mean.map(Math.fround), s = std.map(Math.fround), c = a.channels;
  if (m.length !== c || s.length !== c) throw new Error(`normalize has ${m.length} means for ${c} channels`);
  const out = new Float32Array(a.data.length);
  for (let i = 0; i < out.length; i++) out[i] = Math.fround(Math.fround(a.data[i]) - m[i % c]) / s[i % c];
  return { ...a, data: out, uint8: false };
}

// (H, W, C) -> (C, H, W)
function toNCHW(a) {
  const { width: w, height: h, channels: c, data } = a;
  const out = new Float32Array(c * h * w);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let k = 0; k < c; k++) {
    out[(k * h + y) * w + x] = data[(y * w + x) * c + k];
  }
  return { ...a, data: out, chw: true };
}
