/**
 * Images as 8-bit arrays: JPEG/PNG decoding and the CLIP preprocessing of the reference
 * (torchvision `Resize(N, BICUBIC)` + `CenterCrop(N)` on a PIL image, docs/data.md#preprocessing).
 *
 * The resize reproduces Pillow's `Image.resize(size, BICUBIC)` (libImaging/Resample.c) bit for
 * bit: a separable convolution, horizontal pass first, with the cubic kernel a = −0.5 whose
 * support is widened by the downscale factor (antialiasing), coefficients normalised and
 * rounded to 22-bit fixed point, and each pass rounded and clipped to uint8.
 *
 * Decoding differs from Pillow (docs/data.md lists the measurements): 16-bit PNG samples keep
 * their high byte (what Pillow does for 16-bit RGB; Pillow clips 16-bit grey instead); alpha is
 * dropped before resizing (Pillow premultiplies it; the two agree on opaque images); palette and
 * 1-bit PNGs become RGB before resizing (Pillow's `convert("RGB")` first). JPEGs are
 * entropy-decoded and inverse-transformed by jpeg-js, then upsampled and colour-converted as
 * libjpeg-turbo (Pillow's decoder) does it (`./_jpeg_upsample.ts`: "fancy" triangular upsampling
 * of 4:2:0, 4:2:2 and 4:4:0 chroma, fixed-point YCbCr → RGB, RGB JPEGs told apart by their Adobe
 * marker or component ids), where jpeg-js alone repeats chroma samples (up to 177 levels off
 * Pillow at colour edges). Every subsampling, baseline or progressive, then decodes within ±3 of
 * Pillow 12.3 (mean 0.13–0.15, 88 % of values equal); grey, CMYK and RGB JPEGs within ±1. What
 * remains is jpeg-js's IDCT, ±1 per plane against libjpeg-turbo's.
 *
 * Before decoding, the size a file's header declares is checked against a pixel limit (50 M by
 * default; the `maxPixels` option or `DEER_MAX_IMAGE_PIXELS`, see `./limits.ts`), so that a tiny
 * file declaring a huge image is refused at once; and a PNG's pixel data must inflate to exactly
 * what its header declares: a truncated file is an error, never an image padded with zeros.
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * const png = new PNG({ width: 298, height: 224 }); // a blank RGBA image
 * const bytes = PNG.sync.write(png);
 * const img = decodeImage(bytes, "x.png"); // RGB, HWC (JPEG or PNG, told apart by their bytes)
 * const clip = clipPreprocess(img, 224);   // 224×224×3
 * clip.width; // 224
 * ```
 * @module
 */
import jpeg from "jpeg-js";
import { PNG } from "pngjs";
import { Buffer } from "node:buffer";
import { constants as zlibConstants, inflateSync } from "node:zlib";
import { imagePixelLimit } from "./limits.ts";
import { type JpegFrame, jpegFrameToRgb } from "./_jpeg_upsample.ts";

/** CLIP's per-channel mean (RGB), docs/data.md#preprocessing. */
export const CLIP_MEAN: readonly number[] = [0.48145466, 0.4578275, 0.40821073];
/** CLIP's per-channel standard deviation (RGB), docs/data.md#preprocessing. */
export const CLIP_STD: readonly number[] = [0.26862954, 0.26130258, 0.27577711];

/** An 8-bit image, row-major, channels interleaved (HWC). */
export interface Image8 {
  width: number;
  height: number;
  channels: number;
  data: Uint8Array;
}

/** Options of the decoders. */
export interface DecodeOptions {
  /**
   * Largest width × height accepted, checked on the header before any pixel memory is allocated
   * (default: `DEER_MAX_IMAGE_PIXELS`, else 50 M).
   */
  maxPixels?: number;
}

function checkPixels(name: string, width: number, height: number, options: DecodeOptions): void {
  const limit = imagePixelLimit(options.maxPixels);
  if (width * height > limit) {
    throw new Error(
      `${name} declares ${width}×${height} pixels (${
        (width * height / 1e6).toFixed(1)
      } MP), more than the limit of ${
        limit / 1e6
      } MP; the file is corrupt or hostile (a decompression bomb) — or, if the image is ` +
        `genuine, raise the limit (option maxPixels, or the environment variable ` +
        `DEER_MAX_IMAGE_PIXELS=<pixels>)`,
    );
  }
}

/**
 * Refuses a Huffman-coded JPEG (baseline, extended or progressive) far too small for the size it
 * declares, before the decoder allocates its planes for that size (a 600-byte file declaring
 * 7000 × 7000 pixels cost 1.5 GB and 2 s before it failed). Every 8 × 8 block of a full-resolution
 * component needs at least one bit in the scans (a Huffman code is at least one bit long), so a
 * genuine image holds at least pixels ÷ 512 bytes; the check asks for half of that.
 */
function checkJpegBytes(
  name: string,
  size: number,
  frame: { width: number; height: number; marker: number },
): void {
  if (frame.marker !== 0xc0 && frame.marker !== 0xc1 && frame.marker !== 0xc2) return;
  const least = Math.floor((frame.width * frame.height) / 1024);
  if (size < least) {
    throw new Error(
      `${name} declares ${frame.width}×${frame.height} pixels in ${size} bytes, fewer than any ` +
        `JPEG of that size can hold (at least ${least} bytes: one bit per 8×8 block); the file ` +
        `is truncated, corrupt or hostile — replace or remove it`,
    );
  }
}

/**
 * The width and height a JPEG's frame header (SOF) declares, and its component ids, read without
 * decoding; `undefined` when there is no frame header before the scan data.
 */
function jpegDeclaredSize(
  bytes: Uint8Array,
): {
  width: number;
  height: number;
  marker: number;
  componentIds: number[];
  /** Each component's horizontal and vertical sampling factors. */
  sampling: [number, number][];
} | undefined {
  let p = 2;
  while (p + 4 <= bytes.length) {
    if (bytes[p] !== 0xff) {
      // Bytes between segments (a segment length off by a few): libjpeg skips to the next marker
      // (with a warning) and jpeg-js recovers too, so look for it rather than give up — giving
      // up let such a file past the size checks (354 bytes declaring 7000 × 7000: 1.6 GB).
      p++;
      continue;
    }
    const marker = bytes[p + 1];
    if (marker === 0xff) { // fill byte
      p++;
      continue;
    }
    if (marker === 0x00) { // a stuffed 0xFF is not a marker
      p += 2;
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd8)) { // no length field
      p += 2;
      continue;
    }
    if (marker === 0xda || marker === 0xd9) return undefined; // scan or end before any frame
    const length = (bytes[p + 2] << 8) | bytes[p + 3];
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 &&
      marker !== 0xcc;
    if (isFrame) {
      if (p + 9 > bytes.length) return undefined;
      const componentIds: number[] = [];
      const sampling: [number, number][] = [];
      for (let c = 0, q = p + 10; c < bytes[p + 9] && q + 1 < bytes.length; c++, q += 3) {
        componentIds.push(bytes[q]);
        sampling.push([bytes[q + 1] >> 4, bytes[q + 1] & 15]);
      }
      return {
        height: (bytes[p + 5] << 8) | bytes[p + 6],
        width: (bytes[p + 7] << 8) | bytes[p + 8],
        marker,
        componentIds,
        sampling,
      };
    }
    p += 2 + length;
  }
  return undefined;
}

/** jpeg-js's decoder object (its internal `JpegImage`), as far as it is used here. */
interface JpegJsDecoder extends JpegFrame {
  parse(data: Uint8Array): void;
  getData(width: number, height: number): Uint8Array;
  copyToImageData(
    image: { width: number; height: number; data: Uint8Array },
    formatAsRGBA: boolean,
  ): void;
}

function isJpegJsDecoder(x: unknown): x is JpegJsDecoder {
  const d = x as Partial<JpegJsDecoder> | null;
  return typeof d === "object" && d !== null && typeof d.parse === "function" &&
    typeof d.getData === "function" && typeof d.copyToImageData === "function";
}

/**
 * `jpeg.decode` with its last stage replaced by libjpeg-turbo's (`./_jpeg_upsample.ts`): jpeg-js
 * enlarges subsampled chroma by repeating samples and converts YCbCr to RGB in floating point,
 * truncating; libjpeg-turbo, and so Pillow, interpolates ("fancy upsampling") and rounds.
 *
 * jpeg-js exports only `decode`; its decoder class, which holds the component planes after the
 * IDCT, is private to the module. `decode` creates one and assigns it its options
 * (`decoder.opts = opts`) before parsing, so for the length of this synchronous call a setter
 * for `opts` on `Object.prototype` receives that decoder. The setter gives it `opts` as an own
 * property (as the plain assignment would) and its own `copyToImageData`, which writes the RGB
 * pixels from the planes into jpeg-js's output buffer; the setter is removed before this returns.
 * Frames the replacement does not handle (grey, CMYK/YCCK, 2 components; `decodeJpeg` refuses
 * non-integral sampling factors before this) go through jpeg-js's own conversion, as before; so does everything if a future jpeg-js
 * stops assigning `opts` (the fixture tests then fail). The replacement also skips jpeg-js's
 * intermediate copy of the whole image (`getData`).
 */
function decodeJpegLikeLibjpeg(
  bytes: Uint8Array,
  maxPixels: number,
  componentIds: number[],
): { width: number; height: number; data: Uint8Array } {
  const opts = {
    useTArray: true as const,
    formatAsRGBA: false,
    maxResolutionInMP: maxPixels / 1e6,
    maxMemoryUsageInMB: 2048,
  };
  const proto = Object.prototype as { opts?: unknown };
  // Someone else's `opts` on Object.prototype is left alone (and jpeg-js decodes by itself).
  const plain = () =>
    jpeg.decode(bytes, opts) as { width: number; height: number; data: Uint8Array };
  if (Object.getOwnPropertyDescriptor(proto, "opts") !== undefined) return plain();
  // The hook serves one decoder: this call's (a decode started inside it, were one possible,
  // would get jpeg-js's own conversion rather than this file's component ids).
  let served = false;
  try {
    Object.defineProperty(proto, "opts", {
      configurable: true,
      set(this: unknown, value: unknown) {
        if (Object(this) !== this) return; // a primitive receiver keeps nothing
        Object.defineProperty(this, "opts", {
          value,
          writable: true,
          enumerable: true,
          configurable: true,
        });
        if (served || !isJpegJsDecoder(this)) return;
        served = true;
        hookConversion(this, componentIds);
      },
    });
  } catch {
    // A frozen or sealed Object.prototype (hardening against prototype pollution): jpeg-js's own
    // upsampling and conversion, as before this hook existed.
    return plain();
  }
  try {
    return plain();
  } finally {
    delete proto.opts;
  }
}

/** Gives jpeg-js's decoder libjpeg-turbo's upsampling and colour conversion (see above). */
function hookConversion(decoder: JpegJsDecoder, componentIds: number[]): void {
  const jpegJsConversion = decoder.copyToImageData;
  Object.defineProperty(decoder, "copyToImageData", {
    configurable: true,
    writable: true,
    value(
      this: JpegJsDecoder,
      image: { width: number; height: number; data: Uint8Array },
      formatAsRGBA: boolean,
    ) {
      const frame = {
        width: this.width,
        height: this.height,
        components: this.components,
        jfif: this.jfif,
        adobe: this.adobe,
        componentIds,
      };
      if (formatAsRGBA || !jpegFrameToRgb(frame, image.data)) {
        jpegJsConversion.call(this, image, formatAsRGBA);
      }
    },
  });
}

/**
 * Decodes a baseline or progressive JPEG to RGB (greyscale JPEGs are replicated to 3 channels).
 *
 * @example
 * ```ts
 * import jpeg from "jpeg-js";
 * const rgba = new Uint8Array(16 * 16 * 4).fill(128);
 * const bytes = jpeg.encode({ data: rgba, width: 16, height: 16 }, 90).data;
 * const img = decodeJpeg(bytes, "polyp.jpg");
 * img.channels; // 3
 * ```
 */
export function decodeJpeg(
  bytes: Uint8Array,
  name = "image.jpg",
  options: DecodeOptions = {},
): Image8 {
  const declared = jpegDeclaredSize(bytes);
  if (declared === undefined) {
    throw new Error(
      `${name} is not a readable JPEG (no frame header before its scan data or end); replace ` +
        `or remove it`,
    );
  }
  checkPixels(name, declared.width, declared.height, options);
  checkJpegBytes(name, bytes.length, declared);
  const factors = declared.sampling;
  const [hMax, vMax] = [0, 1].map((k) => Math.max(...factors.map((f) => f[k])));
  const bogus = factors.some(([h, v]) => !(h >= 1 && h <= 4 && v >= 1 && v <= 4));
  if (bogus || factors.some(([h, v]) => hMax % h !== 0 || vMax % v !== 0)) {
    throw new Error(
      `${name} has ${bogus ? "sampling factors outside 1–4" : "fractional chroma sampling"} (${
        factors.map(([h, v]) => `${h}×${v}`).join(", ")
      }), which libjpeg (and so Pillow) refuses: re-encode the image`,
    );
  }
  if (new Set(declared.componentIds).size !== declared.componentIds.length) {
    throw new Error(
      `${name} gives two colour components the same id (${declared.componentIds.join(", ")}); ` +
        `libjpeg reads them as separate components but jpeg-js mixes them up: re-encode the ` +
        `image (any image editor or Pillow writes distinct ids)`,
    );
  }
  let decoded: { width: number; height: number; data: Uint8Array };
  try {
    decoded = decodeJpegLikeLibjpeg(
      bytes,
      imagePixelLimit(options.maxPixels),
      declared.componentIds,
    );
  } catch (err) {
    throw new Error(
      `${name} is not a readable JPEG (${(err as Error).message}); replace or remove it`,
    );
  }
  const { width, height, data } = decoded;
  if (!(width > 0 && height > 0) || data.length !== width * height * 3) {
    throw new Error(`${name} is not a readable JPEG (decoded to ${width}×${height}); replace it`);
  }
  return { width, height, channels: 3, data };
}

/**
 * Decodes a PNG (grey, grey+alpha, RGB, RGBA or palette; 1–16 bits) to RGB. Alpha is dropped;
 * 16-bit samples keep their high byte.
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * const png = new PNG({ width: 298, height: 224 }); // a blank RGBA image
 * const bytes = PNG.sync.write(png);
 * const img = decodePng(bytes, "scan.png");
 * [img.width, img.height, img.channels]; // [298, 224, 3]
 * ```
 */
export function decodePng(
  bytes: Uint8Array,
  name = "image.png",
  options: DecodeOptions = {},
): Image8 {
  checkPngData(bytes, name, options);
  // IHDR is the first chunk: its bit depth sits at byte 24. Only 16-bit data skips pngjs'
  // rescaling, so that we can keep the high byte as Pillow does; 1/2/4-bit grey is scaled to 0–255.
  const depth = bytes.length > 24 ? bytes[24] : 8;
  let png: { width: number; height: number; data: Uint8Array | Uint16Array };
  try {
    const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    png = PNG.sync.read(buf, { skipRescale: depth === 16 }) as unknown as typeof png;
  } catch (err) {
    throw new Error(
      `${name} is not a readable PNG (${(err as Error).message}); replace or remove it`,
    );
  }
  const { width, height } = png;
  const n = width * height;
  const src = png.data;
  if (src.length < n * 4) throw new Error(`${name} is not a readable PNG (short pixel data)`);
  const out = new Uint8Array(n * 3);
  const shift = depth === 16 ? 8 : 0;
  for (let i = 0; i < n; i++) {
    out[i * 3] = src[i * 4] >> shift;
    out[i * 3 + 1] = src[i * 4 + 1] >> shift;
    out[i * 3 + 2] = src[i * 4 + 2] >> shift;
  }
  return { width, height, channels: 3, data: out };
}

/** Samples per pixel of each PNG colour type (grey, RGB, palette, grey+alpha, RGBA). */
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/** Adam7's passes: [x0, y0, dx, dy]. */
const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [
  0,
  1,
  1,
  2,
]];

/**
 * Checks a PNG before pngjs decodes it: the declared size against the pixel limit, every chunk
 * inside the file, and the pixel data (IDAT) inflating to exactly the bytes the header implies —
 * stopping the moment it would inflate past them. pngjs itself pads missing rows with zeros.
 */
function checkPngData(bytes: Uint8Array, name: string, options: DecodeOptions): void {
  const unreadable = (why: string) =>
    new Error(`${name} is not a readable PNG (${why}); replace or remove it`);
  const text = (p: number) => String.fromCharCode(...bytes.subarray(p, p + 4));
  if (bytes.length < 33 || text(12) !== "IHDR") throw unreadable("no IHDR header chunk");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const width = view.getUint32(16), height = view.getUint32(20);
  const depth = bytes[24], colorType = bytes[25], interlaced = bytes[28] === 1;
  if (width === 0 || height === 0) throw unreadable(`its header declares ${width}×${height}`);
  checkPixels(name, width, height, options);
  const channels = PNG_CHANNELS[colorType];
  if (channels === undefined) throw unreadable(`unknown colour type ${colorType}`);
  const bits = channels * depth;
  const rowBytes = (w: number) => 1 + Math.ceil((w * bits) / 8);
  let expected = 0;
  if (interlaced) {
    for (const [x0, y0, dx, dy] of ADAM7) {
      const w = Math.ceil((width - x0) / dx), h = Math.ceil((height - y0) / dy);
      if (w > 0 && h > 0) expected += h * rowBytes(w);
    }
  } else {
    expected = height * rowBytes(width);
  }
  const idat: Uint8Array[] = [];
  let p = 8;
  while (p + 8 <= bytes.length) {
    const length = view.getUint32(p), type = text(p + 4);
    if (p + 12 + length > bytes.length) {
      throw new Error(
        `${name} is truncated: the file ends inside its ${type} chunk (${
          bytes.length - p - 8
        } of ${length} data bytes); replace or re-export the image`,
      );
    }
    if (type === "IDAT") idat.push(bytes.subarray(p + 8, p + 8 + length));
    if (type === "IEND") break;
    p += 12 + length;
  }
  const compressed = new Uint8Array(idat.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of idat) (compressed.set(c, at), at += c.length);
  // node:zlib is native here (3× fflate's speed); maxOutputLength stops it past the header's size.
  let produced: number;
  let failure: string | undefined;
  try {
    produced = inflateSync(compressed, { maxOutputLength: expected }).length;
  } catch (err) {
    if ((err as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") {
      throw new Error(
        `${name} holds more pixel data than its ${width}×${height} header declares (over ${expected} ` +
          `bytes inflated); the file is corrupt or hostile: replace or re-export the image`,
      );
    }
    failure = (err as Error).message;
    try { // how far the stream goes before it breaks off
      produced = inflateSync(compressed, {
        maxOutputLength: expected,
        finishFlush: zlibConstants.Z_SYNC_FLUSH,
      }).length;
    } catch {
      produced = 0;
    }
  }
  if (produced < expected) {
    const rows = interlaced ? "" : ` (${Math.floor(produced / rowBytes(width))} of ${height} rows)`;
    throw new Error(
      `${name} is truncated: its pixel data inflates to ${produced} of the ${expected} bytes ` +
        `its ${width}×${height} header declares${rows}${
          failure ? `; inflate: ${failure}` : ""
        }; replace or re-export the image`,
    );
  }
  if (failure !== undefined) throw unreadable(`corrupt pixel data: ${failure}`);
}

/**
 * Decodes a JPEG or PNG, chosen by the file's signature (not its extension), to RGB.
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * const png = new PNG({ width: 298, height: 224 }); // a blank RGBA image
 * const bytes = PNG.sync.write(png);
 * const img = decodeImage(bytes, "a.png");
 * img.data.length; // 298 · 224 · 3
 * ```
 */
export function decodeImage(
  bytes: Uint8Array,
  name = "image",
  options: DecodeOptions = {},
): Image8 {
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) {
    return decodeJpeg(bytes, name, options);
  }
  if (bytes.length >= 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e) {
    return decodePng(bytes, name, options);
  }
  throw new Error(
    `${name} is neither a JPEG nor a PNG (${bytes.length} bytes, bad signature); replace or remove it`,
  );
}

// ---------------------------------------------------------------------------------------------
// Pillow's resampling (libImaging/Resample.c), BICUBIC filter

const PRECISION_BITS = 32 - 8 - 2;

function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

interface Coeffs {
  ksize: number;
  bounds: Int32Array; // [xmin, count] per output pixel
  kk: Int32Array; // fixed-point weights, ksize per output pixel
}

/** Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-image box. */
function precomputeCoeffs(inSize: number, outSize: number): Coeffs {
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = 2 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let ww = 0;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const v = bicubic((x + xmin - center + 0.5) * ss);
      w[x] = v;
      ww += v;
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = k < 0
        ? Math.trunc(-0.5 + k * (1 << PRECISION_BITS))
        : Math.trunc(0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v: number): number {
  const r = v >> PRECISION_BITS;
  return r < 0 ? 0 : r > 255 ? 255 : r;
}

/**
 * Resizes like Pillow's `Image.resize((width, height), Image.BICUBIC)` (exact, see the module
 * doc). Channels are resized independently.
 *
 * @example
 * ```ts
 * const big = resizeBicubic({ width: 28, height: 28, channels: 1, data: new Uint8Array(784) }, 224, 224);
 * ```
 */
export function resizeBicubic(image: Image8, width: number, height: number): Image8 {
  const { width: inW, height: inH, channels: C, data } = image;
  if (!(Number.isInteger(width) && width > 0 && Number.isInteger(height) && height > 0)) {
    throw new Error(`resizeBicubic: target size ${width}×${height} must be positive integers`);
  }
  if (width === inW && height === inH) return { width, height, channels: C, data: data.slice() };
  const half = 1 << (PRECISION_BITS - 1);
  const vert = precomputeCoeffs(inH, height);
  // The horizontal pass only needs the rows the vertical pass will read.
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[height * 2 - 2] + vert.bounds[height * 2 - 1];
  let tmp = data;
  let tmpRow0 = 0;
  if (width !== inW) {
    const hz = precomputeCoeffs(inW, width);
    const rows = yLast - yFirst;
    tmp = new Uint8Array(rows * width * C);
    tmpRow0 = yFirst;
    for (let y = 0; y < rows; y++) {
      const inRow = (y + yFirst) * inW * C;
      const outRow = y * width * C;
      for (let xx = 0; xx < width; xx++) {
        const xmin = hz.bounds[xx * 2];
        const n = hz.bounds[xx * 2 + 1];
        const k0 = xx * hz.ksize;
        for (let c = 0; c < C; c++) {
          let ss = half;
          let p = inRow + xmin * C + c;
          for (let x = 0; x < n; x++, p += C) ss += data[p] * hz.kk[k0 + x];
          tmp[outRow + xx * C + c] = clip8(ss);
        }
      }
    }
  }
  if (height === inH) return { width, height, channels: C, data: tmp };
  const out = new Uint8Array(width * height * C);
  const rowLen = width * C;
  for (let yy = 0; yy < height; yy++) {
    const ymin = vert.bounds[yy * 2] - tmpRow0;
    const n = vert.bounds[yy * 2 + 1];
    const k0 = yy * vert.ksize;
    const outRow = yy * rowLen;
    for (let i = 0; i < rowLen; i++) {
      let ss = half;
      let p = ymin * rowLen + i;
      for (let y = 0; y < n; y++, p += rowLen) ss += tmp[p] * vert.kk[k0 + y];
      out[outRow + i] = clip8(ss);
    }
  }
  return { width, height, channels: C, data: out };
}

/** Python's `round()` (half to even), which torchvision uses for crop offsets. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Crops the centre like torchvision's `CenterCrop((height, width))` (offsets rounded half to
 * even, as Python's `round`). The crop must fit inside the image.
 *
 * @example
 * ```ts
 * const img = { width: 298, height: 224, channels: 3, data: new Uint8Array(298 * 224 * 3) };
 * centerCrop(img, 224, 224).width; // 224: columns 37..260 of the 298
 * ```
 */
export function centerCrop(image: Image8, width: number, height: number): Image8 {
  const { width: W, height: H, channels: C, data } = image;
  if (width > W || height > H) {
    throw new Error(`centerCrop: ${width}×${height} does not fit in a ${W}×${H} image`);
  }
  if (width === W && height === H) return image;
  const top = roundHalfEven((H - height) / 2);
  const left = roundHalfEven((W - width) / 2);
  const out = new Uint8Array(width * height * C);
  for (let y = 0; y < height; y++) {
    const s = ((top + y) * W + left) * C;
    out.set(data.subarray(s, s + width * C), y * width * C);
  }
  return { width, height, channels: C, data: out };
}

/**
 * The size torchvision's `Resize(size)` gives: the shorter side becomes `size`, the longer
 * `int(size · long / short)`.
 *
 * @example
 * ```ts
 * resizedShortSide(300, 250, 224); // [268, 224]
 * ```
 */
export function resizedShortSide(width: number, height: number, size: number): [number, number] {
  if (width <= height) return [size, Math.trunc((size * height) / width)];
  return [Math.trunc((size * width) / height), size];
}

/**
 * CLIP preprocessing of docs/data.md#preprocessing on uint8 pixels: bicubic resize of the shorter
 * side to `size` (Pillow-exact), then a centre crop to `size × size`. Normalisation happens later,
 * when a batch is formed (`makeBatch`).
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * const png = new PNG({ width: 298, height: 224 }); // a blank RGBA image
 * const bytes = PNG.sync.write(png);
 * const x = clipPreprocess(decodeImage(bytes, "a.png"), 224); // 224×224×3
 * x.height; // 224
 * ```
 */
export function clipPreprocess(image: Image8, size: number): Image8 {
  const [w, h] = resizedShortSide(image.width, image.height, size);
  const resized = w === image.width && h === image.height ? image : resizeBicubic(image, w, h);
  return centerCrop(resized, size, size);
}

/**
 * Converts to `channels` (1 or 3): grey is replicated to RGB; RGB becomes grey with Pillow's
 * `convert("L")` weights (299/587/114, fixed point).
 *
 * @example
 * ```ts
 * toChannels({ width: 1, height: 1, channels: 1, data: new Uint8Array([7]) }, 3).data; // [7, 7, 7]
 * ```
 */
export function toChannels(image: Image8, channels: number): Image8 {
  const { width, height, channels: C, data } = image;
  if (C === channels) return image;
  const n = width * height;
  if (C === 1 && channels === 3) {
    const out = new Uint8Array(n * 3);
    for (let i = 0; i < n; i++) out[i * 3] = out[i * 3 + 1] = out[i * 3 + 2] = data[i];
    return { width, height, channels: 3, data: out };
  }
  if (C === 3 && channels === 1) {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      out[i] = (data[i * 3] * 19595 + data[i * 3 + 1] * 38470 + data[i * 3 + 2] * 7471 + 0x8000) >>
        16;
    }
    return { width, height, channels: 1, data: out };
  }
  throw new Error(`toChannels: cannot convert ${C} channels to ${channels}; use 1 or 3`);
}
