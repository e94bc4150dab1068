/**
 * The last two stages of a JPEG decoder as libjpeg-turbo performs them (what Pillow decodes with):
 * chroma upsampling and colour conversion, applied to the component planes of `./_jpeg_idct.ts`.
 * Internal to `./image.ts`.
 *
 * Upsampling follows libjpeg-turbo's `jdsample.c` with its defaults (`do_fancy_upsampling` on,
 * so never the merged upsampler of `jdmerge.c`): a component at half the horizontal resolution
 * (4:2:2) or at half of both (4:2:0) is interpolated with the triangular filter, weights 3/4 for
 * the nearer sample and 1/4 for the farther one in each halved direction; one at half the
 * vertical resolution only (4:4:0) likewise; other integral factors (4:1:1, …), and the 2×
 * cases where the component is at most 2 samples wide, repeat samples. The filter's rounding is
 * libjpeg's: `(3·a + b + 1) >> 2` and `(3·a + b + 2) >> 2` alternately along a row for
 * 4:2:2; for 4:2:0 the vertical pass keeps the sums `3·near + far` and the horizontal one
 * rounds `(3·this + other + 8) >> 4` and `(… + 7) >> 4` alternately; for 4:4:0
 * `(3·near + far + 1) >> 2` when the farther row is above, `+ 2` when it is below. At the
 * image's edges the edge sample stands in for its missing neighbour (libjpeg's special cases for
 * the first and last column, and its duplicated first and last sample rows: `jdmainct.c`). The
 * edges are those of the component's real size, ⌈width · h / hmax⌉ × ⌈height · v / vmax⌉ samples;
 * the padding up to whole blocks is never read.
 *
 * Colour conversion is `jdcolor.c`'s fixed point (16 fraction bits, tables rounded with
 * `ONE_HALF`, results clamped to 0–255). Whether three components are YCbCr or RGB is decided as
 * libjpeg's `jdapimin.c` does: a JFIF marker means YCbCr, else an Adobe marker's transform flag
 * (0: RGB), else the component ids (`R`, `G`, `B`: RGB; anything else YCbCr). Grey frames are
 * repeated into RGB, and CMYK/YCCK frames end as Pillow's `convert("RGB")` of the CMYK image it
 * reads (see `jpegFrameToRgb`).
 *
 * @example
 * ```ts
 * const out = new Uint8Array(6);
 * h2v1FancyRow(new Uint8Array([0, 100, 200]), 3, out);
 * out; // [0, 25, 75, 125, 175, 200]
 * ```
 * @module
 */

/** One component's samples after the IDCT. */
export interface JpegComponentPlane {
  /** Sample rows, each a whole number of 8-sample blocks long; whole blocks of rows too. */
  lines: Uint8Array[];
  /** The component's sampling factors relative to the largest: h / hmax. */
  scaleX: number;
  /** v / vmax. */
  scaleY: number;
}

/** A decoded frame: its size, markers and component planes. */
export interface JpegFrame {
  width: number;
  height: number;
  components: JpegComponentPlane[];
  /** The JFIF (APP0) marker's contents, if the file has one. */
  jfif?: unknown;
  /** The Adobe (APP14) marker's contents, if the file has one. */
  adobe?: { transformCode: number } | null;
  /** The component ids of the frame header, in the components' order. */
  componentIds?: number[];
}

/** How a component is enlarged to the image's resolution (libjpeg-turbo's choice). */
export type UpsampleMethod = "fullsize" | "h2v1" | "h1v2" | "h2v2" | "box";

/** A component's upsampling: method, integral expansion factors and real (unpadded) size. */
export interface ComponentUpsampling {
  method: UpsampleMethod;
  /** hmax / h. */
  hExpand: number;
  /** vmax / v. */
  vExpand: number;
  /** The component's width in samples, ⌈image width / hExpand⌉. */
  width: number;
  /** The component's height in samples, ⌈image height / vExpand⌉. */
  height: number;
}

/** `1 / scale` when it is a whole number (1–4, the factors JPEG allows), else 0. */
function expansion(scale: number): number {
  const e = Math.round(1 / scale);
  return e >= 1 && e <= 4 && Math.abs(scale * e - 1) < 1e-9 ? e : 0;
}

/**
 * The upsampling libjpeg-turbo's `jinit_upsampler` picks for a component with expansion factors
 * `hExpand` × `vExpand` in an image `imageWidth` × `imageHeight`; `undefined` for factors that
 * are not whole numbers (libjpeg refuses those).
 */
export function componentUpsampling(
  hExpand: number,
  vExpand: number,
  imageWidth: number,
  imageHeight: number,
): ComponentUpsampling | undefined {
  if (!(hExpand >= 1 && hExpand <= 4 && vExpand >= 1 && vExpand <= 4)) return undefined;
  const width = Math.ceil(imageWidth / hExpand);
  const height = Math.ceil(imageHeight / vExpand);
  let method: UpsampleMethod;
  if (hExpand === 1 && vExpand === 1) method = "fullsize";
  else if (hExpand === 2 && vExpand === 1) method = width > 2 ? "h2v1" : "box";
  else if (hExpand === 1 && vExpand === 2) method = "h1v2";
  else if (hExpand === 2 && vExpand === 2) method = width > 2 ? "h2v2" : "box";
  else method = "box";
  return { method, hExpand, vExpand, width, height };
}

/**
 * libjpeg's `h2v1_fancy_upsample` on one row: `width` samples (more than 2) of `input` become
 * `2 · width` in `out`, each output the nearer input × 3/4 plus the farther × 1/4, rounded up
 * and down alternately; the first and last outputs repeat the edge samples.
 */
export function h2v1FancyRow(input: Uint8Array, width: number, out: Uint8Array): void {
  let here = input[0];
  out[0] = here;
  out[1] = (here * 3 + input[1] + 2) >> 2;
  for (let i = 1; i < width - 1; i++) {
    here = input[i] * 3;
    out[2 * i] = (here + input[i - 1] + 1) >> 2;
    out[2 * i + 1] = (here + input[i + 1] + 2) >> 2;
  }
  here = input[width - 1];
  out[2 * width - 2] = (here * 3 + input[width - 2] + 1) >> 2;
  out[2 * width - 1] = here;
}

/**
 * libjpeg's `h2v2_fancy_upsample` for one output row: `near` is the input row nearest to it,
 * `far` the next nearest (the row above for an even output row, below for an odd one, the row
 * itself at the image's top and bottom edges). Column sums `3 · near + far` are filtered the same
 * way across, with the 1/16 result rounded by +8 and +7 alternately; `width` (more than 2) input
 * samples give `2 · width` outputs.
 */
export function h2v2FancyRow(
  near: Uint8Array,
  far: Uint8Array,
  width: number,
  out: Uint8Array,
): void {
  let here = near[0] * 3 + far[0];
  let next = near[1] * 3 + far[1];
  out[0] = (here * 4 + 8) >> 4;
  out[1] = (here * 3 + next + 7) >> 4;
  let last = here;
  for (let i = 1; i < width - 1; i++) {
    here = next;
    next = near[i + 1] * 3 + far[i + 1];
    out[2 * i] = (here * 3 + last + 8) >> 4;
    out[2 * i + 1] = (here * 3 + next + 7) >> 4;
    last = here;
  }
  here = next;
  out[2 * width - 2] = (here * 3 + last + 8) >> 4;
  out[2 * width - 1] = (here * 4 + 7) >> 4;
}

/**
 * libjpeg's `h1v2_fancy_upsample` for one output row: `(3 · near + far + bias) >> 2` with bias 1
 * when `far` is the row above, 2 when it is below.
 */
export function h1v2FancyRow(
  near: Uint8Array,
  far: Uint8Array,
  farIsBelow: boolean,
  width: number,
  out: Uint8Array,
): void {
  const bias = farIsBelow ? 2 : 1;
  for (let i = 0; i < width; i++) out[i] = (near[i] * 3 + far[i] + bias) >> 2;
}

/**
 * Output row `y` (0 ≤ y < image height) of a component upsampled to full resolution: either a
 * row of `lines` itself (a full-size component) or `scratch` (at least `width · hExpand` long)
 * filled with it. Only the first image-width samples are meaningful.
 */
export function upsampleRow(
  lines: Uint8Array[],
  u: ComponentUpsampling,
  y: number,
  scratch: Uint8Array,
): Uint8Array {
  switch (u.method) {
    case "fullsize":
      return lines[y];
    case "h2v1":
      h2v1FancyRow(lines[y], u.width, scratch);
      return scratch;
    case "h1v2":
    case "h2v2": {
      const r = y >> 1;
      const below = (y & 1) === 1;
      const far = lines[below ? Math.min(r + 1, u.height - 1) : Math.max(r - 1, 0)];
      if (u.method === "h2v2") h2v2FancyRow(lines[r], far, u.width, scratch);
      else h1v2FancyRow(lines[r], far, below, u.width, scratch);
      return scratch;
    }
    case "box": {
      const line = lines[Math.floor(y / u.vExpand)];
      const h = u.hExpand;
      for (let i = 0, o = 0; i < u.width; i++) {
        const v = line[i];
        for (let k = 0; k < h; k++) scratch[o++] = v;
      }
      return scratch;
    }
  }
}

/**
 * A whole component upsampled to `imageWidth` × `imageHeight` (rows of exactly `imageWidth`),
 * from its sample rows; for tests and small planes (the decoder works a row at a time).
 */
export function upsamplePlane(
  lines: Uint8Array[],
  hExpand: number,
  vExpand: number,
  imageWidth: number,
  imageHeight: number,
): Uint8Array[] {
  const u = componentUpsampling(hExpand, vExpand, imageWidth, imageHeight);
  if (u === undefined) throw new Error(`upsamplePlane: factors ${hExpand}×${vExpand} unsupported`);
  const rows: Uint8Array[] = [];
  for (let y = 0; y < imageHeight; y++) {
    const scratch = new Uint8Array(u.width * hExpand);
    rows.push(upsampleRow(lines, u, y, scratch).slice(0, imageWidth));
  }
  return rows;
}

// jdcolor.c's YCbCr → RGB tables: 16 fraction bits, R and B rounded in the table, G rounded by the
// ONE_HALF folded into the Cb table.
const SCALEBITS = 16;
const ONE_HALF = 1 << (SCALEBITS - 1);
const fix = (x: number) => Math.floor(x * (1 << SCALEBITS) + 0.5);
const CR_R = new Int32Array(256);
const CB_B = new Int32Array(256);
const CR_G = new Int32Array(256);
const CB_G = new Int32Array(256);
for (let i = 0; i < 256; i++) {
  const x = i - 128;
  CR_R[i] = (fix(1.402) * x + ONE_HALF) >> SCALEBITS;
  CB_B[i] = (fix(1.772) * x + ONE_HALF) >> SCALEBITS;
  CR_G[i] = -fix(0.71414) * x;
  CB_G[i] = -fix(0.34414) * x + ONE_HALF;
}

/**
 * Writes a frame's pixels to `out` (width × height × 3, RGB) with libjpeg-turbo's upsampling and
 * colour conversion, and, for four components, Pillow's CMYK → RGB:
 * - one component (grey): the samples, repeated into R, G and B (Pillow's `convert("RGB")` of
 *   an `L` image);
 * - three: YCbCr or RGB, told apart as libjpeg does (see the module doc);
 * - four: CMYK (no Adobe marker, or its transform 0) or YCCK (an Adobe marker with any other
 *   transform; libjpeg's `ycck_cmyk_convert`: Y, Cb, Cr to R, G, B as for three components,
 *   C, M, Y = 255 − R, G, B, K as stored). Pillow reads every CMYK JPEG as Adobe-inverted (`CMYK;I`) and its
 *   `convert("RGB")` then gives R = k − k·(255 − c)/255 with k and c the values libjpeg returns, in
 *   its fixed point: `MULDIV255(a, b)` = ((a·b + 128) >> 8 + a·b + 128) >> 8.
 * Returns false, writing nothing, for frames it does not handle (two components, sampling factors
 * that are not whole multiples); `decodeJpeg` refuses those before it gets here.
 */
export function jpegFrameToRgb(frame: JpegFrame, out: Uint8Array): boolean {
  const { width, height, components } = frame;
  const n = components.length;
  if (!(n === 1 || n === 3 || n === 4) || !(width > 0 && height > 0)) {
    return false;
  }
  if (out.length < width * height * 3) return false;
  const ups: ComponentUpsampling[] = [];
  for (const c of components) {
    const u = componentUpsampling(expansion(c.scaleX), expansion(c.scaleY), width, height);
    if (u === undefined || !(c.lines.length >= u.height && c.lines[0].length >= u.width)) {
      return false;
    }
    ups.push(u);
  }
  const scratch = ups.map((u) =>
    u.method === "fullsize" ? new Uint8Array(0) : new Uint8Array(u.width * u.hExpand)
  );
  const lines = components.map((c) => c.lines);
  const row = (i: number, y: number) => upsampleRow(lines[i], ups[i], y, scratch[i]);
  const ids = frame.componentIds ?? [];
  // The conversions of one row are functions of typed arrays alone.
  if (n === 1) {
    for (let y = 0; y < height; y++) greyRow(row(0, y), width, out, y * width * 3);
  } else if (n === 4) {
    const ycck = frame.adobe ? frame.adobe.transformCode !== 0 : false;
    for (let y = 0; y < height; y++) {
      const o = y * width * 3;
      cmykRow(row(0, y), row(1, y), row(2, y), row(3, y), ycck, width, out, o);
    }
  } else if (
    frame.jfif ? true : frame.adobe ? frame.adobe.transformCode !== 0 : !(
      ids[0] === 82 && ids[1] === 71 && ids[2] === 66 // 'R', 'G', 'B'
    )
  ) {
    for (let y = 0; y < height; y++) {
      yccRow(row(0, y), row(1, y), row(2, y), width, out, y * width * 3);
    }
  } else {
    for (let y = 0; y < height; y++) {
      rgbRow(row(0, y), row(1, y), row(2, y), width, out, y * width * 3);
    }
  }
  return true;
}

function greyRow(g: Uint8Array, width: number, out: Uint8Array, o: number): void {
  for (let x = 0; x < width; x++, o += 3) out[o] = out[o + 1] = out[o + 2] = g[x];
}

function rgbRow(
  r: Uint8Array,
  g: Uint8Array,
  b: Uint8Array,
  width: number,
  out: Uint8Array,
  o: number,
): void {
  for (let x = 0; x < width; x++, o += 3) {
    out[o] = r[x];
    out[o + 1] = g[x];
    out[o + 2] = b[x];
  }
}

/** jdcolor.c's YCbCr → RGB of one row. */
function yccRow(
  y: Uint8Array,
  cb: Uint8Array,
  cr: Uint8Array,
  width: number,
  out: Uint8Array,
  o: number,
): void {
  for (let x = 0; x < width; x++, o += 3) {
    const yy = y[x], b = cb[x], r = cr[x];
    out[o] = clamp8(yy + CR_R[r]);
    out[o + 1] = clamp8(yy + ((CB_G[b] + CR_G[r]) >> SCALEBITS));
    out[o + 2] = clamp8(yy + CB_B[b]);
  }
}

/**
 * One row of CMYK (or YCCK, converted to CMYK first as libjpeg does) to RGB as Pillow converts
 * the Adobe-inverted CMYK it reads (see `jpegFrameToRgb`).
 */
function cmykRow(
  c0: Uint8Array,
  c1: Uint8Array,
  c2: Uint8Array,
  k: Uint8Array,
  ycck: boolean,
  width: number,
  out: Uint8Array,
  o: number,
): void {
  for (let x = 0; x < width; x++, o += 3) {
    let c = c0[x], m = c1[x], ye = c2[x];
    if (ycck) {
      const yy = c, cb = m, cr = ye;
      c = 255 - clamp8(yy + CR_R[cr]);
      m = 255 - clamp8(yy + ((CB_G[cb] + CR_G[cr]) >> SCALEBITS));
      ye = 255 - clamp8(yy + CB_B[cb]);
    }
    const kk = k[x];
    out[o] = kk - mulDiv255(255 - c, kk);
    out[o + 1] = kk - mulDiv255(255 - m, kk);
    out[o + 2] = kk - mulDiv255(255 - ye, kk);
  }
}

function clamp8(v: number): number {
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow's `MULDIV255(a, b)`: a · b / 255 rounded, for a and b in 0…255. */
function mulDiv255(a: number, b: number): number {
  const t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}
