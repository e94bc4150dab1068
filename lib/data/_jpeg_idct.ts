/**
 * Dequantisation and inverse DCT of JPEG blocks as libjpeg-turbo's default method ("islow",
 * `JDCT_ISLOW`) computes them: the stage of a JPEG decoder between the entropy-decoded
 * coefficients and the component planes. Internal to `./image.ts`, which takes the coefficients
 * from `./_jpeg_entropy.ts` and hands the planes to `./_jpeg_upsample.ts`; together they give
 * Pillow's pixels. (jpeg-js, which decoded JPEGs before, has poppler's IDCT, which rounds
 * differently: ±1 on some samples.)
 *
 * The transform is the one of libjpeg's `jidctint.c`: Loeffler, Ligtenberg and Moschytz's 1-D
 * IDCT in its 12-multiplication form, on the columns and then on the rows of the block, in fixed
 * point with 13-bit constants (the `FIX(x)` = round(x · 2¹³) values below). Each coefficient is
 * first multiplied by its quantisation step. The column pass keeps 2 extra fraction bits: its
 * sums are shifted right by 13 − 2 = 11 with rounding (add half, arithmetic shift); the row pass
 * shifts by 13 + 2 + 3 = 18, which also divides by the 8 that the two unnormalised 1-D passes
 * leave. The result, centred on 0, is offset by 128 into a sample.
 *
 * Pillow's wheels for x86-64 decode with libjpeg-turbo's SSE2/AVX2 version of this transform
 * (`jidctint-sse2.asm`, `jidctint-avx2.asm`), which works in 16-bit lanes. For the coefficients of
 * any real 8-bit image it gives the same samples as `jidctint.c`, and so does this file; they part
 * only on out-of-range data (corrupt or crafted coefficients, huge quantisation steps), and there
 * this file does what the SIMD code does, which is what Pillow returned when measured (Pillow 12.3,
 * libjpeg-turbo 3.1, x86-64):
 * - the dequantised coefficient is the low 16 bits of coefficient × step (as a signed number);
 * - `in0 ± in4`, `in7 + in3` and `in5 + in1` are 16-bit sums, wrapping;
 * - each pass's outputs saturate to 16 bits, and the final sample saturates to 0…255, where
 *   `jidctint.c` indexes its range-limit table with the result's low 10 bits, which wraps
 *   results beyond ±512 (an output of 600 is 0 there, 255 here);
 * - a block whose coefficients below the first row are all zero takes a shortcut in the column
 *   pass: each column is its dequantised DC term × 4, wrapping to 16 bits (the full pass would
 *   saturate; the two agree below 8192).
 * libjpeg-turbo built without SIMD, or its Arm (Neon) code, may give other samples on such data.
 * (libjpeg keeps coefficients in 16 bits; only their low 16 bits matter here either way.)
 *
 * One more stage of libjpeg-turbo's sits here: block smoothing (`jdcoefct.c`), which it applies to
 * progressive JPEGs whose scans leave some of the first 9 AC coefficients short of full precision
 * (a file cut after some scans); it estimates them from the DC terms of the 5 × 5 neighbouring
 * blocks before the IDCT (see `componentSamples`). Files whose scans run to the end are not
 * smoothed.
 *
 * @example
 * ```ts
 * // A block holding only its DC term: every sample is 128 + DC · step / 8.
 * const coef = new Int32Array(64);
 * coef[0] = 40;
 * const out = new Uint8Array(64);
 * idctBlockIslow(coef, new Int32Array(64).fill(2), out, 0, 8, new Int32Array(64));
 * out[0]; // 138
 * ```
 * @module
 */

// FIX(x) = round(x · 2^13), the constants of the 13-bit transform.
const F_0_298 = 2446; // FIX(0.298631336)
const F_0_390 = 3196; // FIX(0.390180644)
const F_0_541 = 4433; // FIX(0.541196100)
const F_0_765 = 6270; // FIX(0.765366865)
const F_0_899 = 7373; // FIX(0.899976223)
const F_1_175 = 9633; // FIX(1.175875602)
const F_1_501 = 12299; // FIX(1.501321110)
const F_1_847 = 15137; // FIX(1.847759065)
const F_1_961 = 16069; // FIX(1.961570560)
const F_2_053 = 16819; // FIX(2.053119869)
const F_2_562 = 20995; // FIX(2.562915447)
const F_3_072 = 25172; // FIX(3.072711026)

/** The natural (row-major) position of the k-th coefficient in zigzag order, as files store them. */
export const NATURAL_ORDER: readonly number[] = [
  0,
  1,
  8,
  16,
  9,
  2,
  3,
  10,
  17,
  24,
  32,
  25,
  18,
  11,
  4,
  5,
  12,
  19,
  26,
  33,
  40,
  48,
  41,
  34,
  27,
  20,
  13,
  6,
  7,
  14,
  21,
  28,
  35,
  42,
  49,
  56,
  57,
  50,
  43,
  36,
  29,
  22,
  15,
  23,
  30,
  37,
  44,
  51,
  58,
  59,
  52,
  45,
  38,
  31,
  39,
  46,
  53,
  60,
  61,
  54,
  47,
  55,
  62,
  63,
];

const CONST_BITS = 13;
const PASS1_BITS = 2;
/** The column pass's shift, and the row pass's (which also removes the factor 8). */
const SHIFT1 = CONST_BITS - PASS1_BITS;
const SHIFT2 = CONST_BITS + PASS1_BITS + 3;

/** x as a signed 16-bit number (its low 16 bits). */
const wrap16 = (x: number) => (x << 16) >> 16;
/** x saturated to the signed 16-bit range. */
const sat16 = (x: number) => x < -32768 ? -32768 : x > 32767 ? 32767 : x;

/**
 * One 1-D inverse transform in place on `v[b], v[b + s], …, v[b + 7s]` (signed 16-bit values),
 * leaving the outputs shifted right by `shift` with rounding (not yet saturated).
 *
 * Even part: inputs 0, 2, 4, 6. Input 0 ± input 4, scaled to the constants' precision, plus or
 * minus the rotation of inputs 2 and 6 by √2·c6 (the product z1 = (in2 + in6)·0.541 folded into
 * each term, as the SIMD code does: the same integer). Odd part: inputs 1, 3, 5, 7 through the
 * butterfly with z5 = (z3 + z4)·1.176 folded in likewise. Outputs k and 7 − k are the even term
 * plus and minus the odd one. Every product of a 16-bit input and a constant, and every sum of
 * them, stays below 2³¹ in magnitude, so plain number arithmetic is exact here.
 */
function idct1d(v: Int32Array, b: number, s: number, shift: number): void {
  const in0 = v[b], in1 = v[b + s], in2 = v[b + 2 * s], in3 = v[b + 3 * s];
  const in4 = v[b + 4 * s], in5 = v[b + 5 * s], in6 = v[b + 6 * s], in7 = v[b + 7 * s];

  const rot3 = in2 * (F_0_541 + F_0_765) + in6 * F_0_541;
  const rot2 = in2 * F_0_541 + in6 * (F_0_541 - F_1_847);
  const sum04 = wrap16(in0 + in4) * (1 << CONST_BITS);
  const dif04 = wrap16(in0 - in4) * (1 << CONST_BITS);
  const e0 = sum04 + rot3, e3 = sum04 - rot3;
  const e1 = dif04 + rot2, e2 = dif04 - rot2;

  const z3 = wrap16(in7 + in3), z4 = wrap16(in5 + in1);
  const z3r = z3 * (F_1_175 - F_1_961) + z4 * F_1_175;
  const z4r = z3 * F_1_175 + z4 * (F_1_175 - F_0_390);
  const o0 = in7 * (F_0_298 - F_0_899) - in1 * F_0_899 + z3r;
  const o1 = in5 * (F_2_053 - F_2_562) - in3 * F_2_562 + z4r;
  const o2 = in3 * (F_3_072 - F_2_562) - in5 * F_2_562 + z3r;
  const o3 = in1 * (F_1_501 - F_0_899) - in7 * F_0_899 + z4r;

  const half = 1 << (shift - 1);
  v[b] = (e0 + o3 + half) >> shift;
  v[b + 7 * s] = (e0 - o3 + half) >> shift;
  v[b + s] = (e1 + o2 + half) >> shift;
  v[b + 6 * s] = (e1 - o2 + half) >> shift;
  v[b + 2 * s] = (e2 + o1 + half) >> shift;
  v[b + 5 * s] = (e2 - o1 + half) >> shift;
  v[b + 3 * s] = (e3 + o0 + half) >> shift;
  v[b + 4 * s] = (e3 - o0 + half) >> shift;
}

/**
 * Dequantises one block of coefficients (`coef[at … at + 63]`, natural order, as decoded) with
 * the quantisation steps `quant` (natural order), inverse-transforms it and writes the 8 × 8
 * samples to `out`: row r at `out[offset + r · stride … + 7]`. `ws` is 64 entries of scratch.
 */
export function idctBlockIslow(
  coef: ArrayLike<number>,
  quant: ArrayLike<number>,
  out: Uint8Array,
  offset: number,
  stride: number,
  ws: Int32Array,
  at = 0,
): void {
  let below = 0; // any coefficient outside the first row, as the decoder's 16-bit values
  for (let i = 8; i < 64; i++) below |= coef[at + i] & 0xffff;
  if (below === 0) {
    // Column pass shortcut: the AC terms of every column are zero.
    for (let c = 0; c < 8; c++) {
      const dc = wrap16(wrap16(Math.imul(coef[at + c], quant[c])) << PASS1_BITS);
      for (let r = 0; r < 64; r += 8) ws[r + c] = dc;
    }
  } else {
    for (let i = 0; i < 64; i++) ws[i] = wrap16(Math.imul(coef[at + i], quant[i]));
    for (let c = 0; c < 8; c++) {
      if (
        ws[c + 8] === 0 && ws[c + 16] === 0 && ws[c + 24] === 0 && ws[c + 32] === 0 &&
        ws[c + 40] === 0 && ws[c + 48] === 0 && ws[c + 56] === 0
      ) {
        // The full pass on a column without AC terms: its DC term × 4 (saturated), 8 times.
        const dc = sat16(ws[c] * (1 << PASS1_BITS));
        for (let r = c; r < 64; r += 8) ws[r] = dc;
        continue;
      }
      idct1d(ws, c, 8, SHIFT1);
      for (let r = c; r < 64; r += 8) ws[r] = sat16(ws[r]);
    }
  }
  for (let r = 0; r < 64; r += 8) {
    const o = offset + (r >> 3) * stride;
    if (
      ws[r + 1] === 0 && ws[r + 2] === 0 && ws[r + 3] === 0 && ws[r + 4] === 0 &&
      ws[r + 5] === 0 && ws[r + 6] === 0 && ws[r + 7] === 0
    ) {
      // The full pass on a row without AC terms: one value, DC / 32 rounded.
      const x = (ws[r] + (1 << (SHIFT2 - CONST_BITS - 1))) >> (SHIFT2 - CONST_BITS);
      out.fill(x < -128 ? 0 : x > 127 ? 255 : x + 128, o, o + 8);
      continue;
    }
    idct1d(ws, r, 1, SHIFT2);
    for (let c = 0; c < 8; c++) {
      const x = ws[r + c];
      out[o + c] = x < -128 ? 0 : x > 127 ? 255 : x + 128;
    }
  }
}

/**
 * What libjpeg-turbo's block smoothing needs to know of a component of a progressive JPEG (see
 * `componentSamples`).
 */
export interface BlockSmoothing {
  /**
   * For the first 10 coefficients in zigzag order: how many low bits the scans left unsent (the
   * successive-approximation Al of the last scan covering it), −1 where no scan covered it.
   */
  coefBits: readonly number[];
  /** The component's vertical sampling factor: its block rows per iMCU row. */
  v: number;
  /** The frame's iMCU rows, ⌈height / (8 · largest vertical factor)⌉. */
  iMcuRows: number;
  /**
   * Where the last scan's data ran short: the iMCU rows after `lastGoodRow` are smoothed with
   * `coefBits` as they stood before the component's last scan (libjpeg-turbo's
   * `last_good_iMCU_row` and previous `coef_bits`). Absent: every row uses `coefBits`.
   */
  incomplete?: { lastGoodRow: number; coefBits: readonly number[] };
}

/**
 * The 5 × 5 kernels (rows −2…2 × columns −2…2 of neighbouring blocks' DC terms) with which
 * libjpeg-turbo estimates the first 9 AC coefficients in zigzag order (natural positions 1, 8, 16,
 * 9, 2, 3, 10, 17, 24) and, with `DC_KERNEL`, the DC term. `SHARP` kernels serve while some AC
 * data of the component exists (only the first five coefficients are estimated then); `SMOOTH`
 * ones when none does (all nine are, and the DC term is replaced by a smoothed one).
 */
const AC_POSITIONS = [1, 8, 16, 9, 2, 3, 10, 17, 24];
const SHARP: number[][] = [
  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -7, 50, 0, -50, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
  [0, 0, -7, 0, 0, 0, 0, 50, 0, 0, 0, 0, 0, 0, 0, 0, 0, -50, 0, 0, 0, 0, 7, 0, 0],
  [0, 0, -1, 0, 0, 0, 0, 13, 0, 0, 0, 0, -24, 0, 0, 0, 0, 13, 0, 0, 0, 0, -1, 0, 0],
  [0, -1, 0, 1, 0, -1, 10, 0, -10, 1, 0, 0, 0, 0, 0, 1, -10, 0, 10, -1, 0, 1, 0, -1, 0],
  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, 13, -24, 13, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
];
const SMOOTH: number[][] = [
  [-1, -1, 0, 1, 1, -3, 13, 0, -13, 3, -3, 38, 0, -38, 3, -3, 13, 0, -13, 3, -1, -1, 0, 1, 1],
  [-1, -3, -3, -3, -1, -1, 13, 38, 13, -1, 0, 0, 0, 0, 0, 1, -13, -38, -13, 1, 1, 3, 3, 3, 1],
  [0, 0, 1, 0, 0, 0, 2, 7, 2, 0, 0, -5, -14, -5, 0, 0, 2, 7, 2, 0, 0, 0, 1, 0, 0],
  [-1, 0, 0, 0, 1, 0, 9, 0, -9, 0, 0, 0, 0, 0, 0, 0, -9, 0, 9, 0, 1, 0, 0, 0, -1],
  [0, 0, 0, 0, 0, 0, 2, -5, 2, 0, 1, 7, -14, 7, 1, 0, 2, -5, 2, 0, 0, 0, 0, 0, 0],
  [0, 0, 0, 0, 0, 0, 1, 0, -1, 0, 0, 2, 0, -2, 0, 0, 1, 0, -1, 0, 0, 0, 0, 0, 0],
  [0, 0, 0, 0, 0, 0, 1, -3, 1, 0, 0, 0, 0, 0, 0, 0, -1, 3, -1, 0, 0, 0, 0, 0, 0],
  [0, 0, 0, 0, 0, 0, 1, 0, -1, 0, 0, -3, 0, 3, 0, 0, 1, 0, -1, 0, 0, 0, 0, 0, 0],
  [0, 0, 0, 0, 0, 0, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0, -1, -2, -1, 0, 0, 0, 0, 0, 0],
];
const DC_KERNEL = [
  -2,
  -6,
  -8,
  -6,
  -2,
  -6,
  6,
  42,
  6,
  -6,
  -8,
  42,
  152,
  42,
  -8,
  -6,
  6,
  42,
  6,
  -6,
  -2,
  -6,
  -8,
  -6,
  -2,
];

/** ⌊a / b⌋ for integers 0 ≤ a < 2⁵³, b > 0 (a floating-point quotient can round up to the next
 * integer when b is large). */
function floorDiv(a: number, b: number): number {
  let q = Math.floor(a / b);
  if (q * b > a) q--;
  else if ((q + 1) * b <= a) q++;
  return q;
}

/**
 * libjpeg-turbo's estimate of a coefficient with step `step` from `num` (the kernel's sum × the
 * DC step): |num| / (256 · step) rounded, no larger than the `al` bits left unsent when `al` > 0,
 * with num's sign, as the decoder's 16-bit coefficient.
 */
/** A kernel's non-zero terms: where in the 5 × 5 neighbourhood, and their weights. */
function terms(kernel: readonly number[]): { index: Int32Array; weight: Int32Array } {
  const index = kernel.flatMap((w, i) => (w === 0 ? [] : [i]));
  return { index: new Int32Array(index), weight: new Int32Array(index.map((i) => kernel[i])) };
}
const SHARP_TERMS = SHARP.map(terms), SMOOTH_TERMS = SMOOTH.map(terms);
const DC_TERMS = terms(DC_KERNEL);

function estimate(num: number, step: number, al: number): number {
  let pred = floorDiv(step * 128 + Math.abs(num), step * 256);
  if (al > 0 && pred >= 2 ** al) pred = 2 ** al - 1;
  return wrap16(num < 0 ? -pred : pred);
}

/**
 * A component's coefficient blocks as the entropy decoder leaves them (`./_jpeg_entropy.ts`):
 * 64 coefficients a block, natural order, block rows one after the other, `blocksPerLine` blocks
 * a row (padding to whole MCUs included).
 */
export interface CoefficientBlocks {
  coefficients: ArrayLike<number>;
  blocksPerLine: number;
}

/**
 * A component's samples from its coefficient blocks (at least `blocksPerColumn` rows of at least
 * `blocksPerLine` of them; for a progressive JPEG with block smoothing, the padding blocks that
 * complete the last iMCU row too) and quantisation steps: rows
 * of `blocksPerLine · 8` samples, `blocksPerColumn · 8` of them (the `lines` that
 * `./_jpeg_upsample.ts` reads, padding included). The rows share one buffer.
 *
 * With `smoothing`, and some of its first 9 AC coefficients not fully sent, each block is first
 * given libjpeg-turbo's estimates (`jdcoefct.c`, `decompress_smooth_data`, which it applies to
 * progressive JPEGs whose scans stop short; `do_block_smoothing` is on by default and Pillow
 * leaves it so): every such coefficient still zero becomes a weighted sum of the DC terms of the
 * 5 × 5 blocks around (edge blocks repeated), divided by its step, limited to what the unsent bits
 * could hold. Where no AC data at all was sent, the DC term is smoothed likewise. libjpeg-turbo
 * finds the neighbouring rows per iMCU row, and in the last iMCU row, when it holds fewer block
 * rows than `v`, it numbers them as if every iMCU row held that many (so that, there, a row two
 * above may stand in for itself); this follows it.
 *
 * @example
 * ```ts
 * const block = new Int32Array(64);
 * block[0] = 16; // DC 16 × step 1: 128 + 2 everywhere
 * const blocks = { coefficients: block, blocksPerLine: 1 };
 * const lines = componentSamples(blocks, new Int32Array(64).fill(1), 1, 1);
 * lines[7][7]; // 130
 * ```
 */
export function componentSamples(
  blocks: CoefficientBlocks,
  quant: ArrayLike<number>,
  blocksPerLine: number,
  blocksPerColumn: number,
  smoothing?: BlockSmoothing,
): Uint8Array[] {
  const stride = blocksPerLine * 8;
  const plane = new Uint8Array(stride * blocksPerColumn * 8);
  const ws = new Int32Array(64);
  const sharpens = (bits: readonly number[]) => bits.slice(1, 10).some((b) => b !== 0);
  if (
    smoothing !== undefined &&
    (sharpens(smoothing.coefBits) ||
      (smoothing.incomplete !== undefined && sharpens(smoothing.incomplete.coefBits)))
  ) {
    smoothedBlocks(blocks, quant, blocksPerLine, blocksPerColumn, smoothing!, (br, bc, work) => {
      idctBlockIslow(work, quant, plane, br * 8 * stride + bc * 8, stride, ws);
    });
  } else {
    const { coefficients, blocksPerLine: stored } = blocks;
    for (let br = 0; br < blocksPerColumn; br++) {
      for (let bc = 0; bc < blocksPerLine; bc++) {
        const at = (br * stored + bc) * 64;
        idctBlockIslow(coefficients, quant, plane, br * 8 * stride + bc * 8, stride, ws, at);
      }
    }
  }
  const lines: Uint8Array[] = [];
  for (let y = 0; y < blocksPerColumn * 8; y++) {
    lines.push(plane.subarray(y * stride, (y + 1) * stride));
  }
  return lines;
}

/** Calls `emit` with each block (row, column, coefficients) after libjpeg-turbo's smoothing. */
function smoothedBlocks(
  { coefficients, blocksPerLine: stored }: CoefficientBlocks,
  quant: ArrayLike<number>,
  width: number,
  height: number,
  { coefBits: whole, v, iMcuRows, incomplete }: BlockSmoothing,
  emit: (row: number, col: number, work: Int32Array) => void,
): void {
  // Each block row's DC terms, two columns repeated at either edge (filled when first needed).
  const dcRows: Int32Array[] = [];
  const dcRow = (row: number) => {
    let dcs = dcRows[row];
    if (dcs === undefined) {
      dcs = dcRows[row] = new Int32Array(width + 4);
      for (let col = -2; col < width + 2; col++) {
        const at = (row * stored + (col < 0 ? 0 : col >= width ? width - 1 : col)) * 64;
        dcs[col + 2] = wrap16(coefficients[at]);
      }
    }
    return dcs;
  };
  const work = new Int32Array(64);
  const around = new Int32Array(25);
  for (let imcu = 0; imcu < iMcuRows; imcu++) {
    const coefBits = incomplete !== undefined && imcu > incomplete.lastGoodRow
      ? incomplete.coefBits
      : whole;
    const noAc = coefBits.slice(1, 10).every((b) => b === -1);
    const kernels = noAc ? SMOOTH_TERMS : SHARP_TERMS;
    const last = imcu === iMcuRows - 1;
    const rows = last ? (height % v || v) : v;
    // libjpeg-turbo's numbering of block rows for the edge tests (see componentSamples).
    const numbered = rows * iMcuRows;
    for (let r = 0; r < rows; r++) {
      const n = imcu * rows + r, row = imcu * v + r;
      const prev = n > 0 ? row - 1 : row;
      const prev2 = n > 1 ? row - 2 : prev;
      const next = n < numbered - 1 ? row + 1 : row;
      const next2 = n < numbered - 2 ? row + 2 : next;
      const neighbours = [prev2, prev, row, next, next2].map(dcRow);
      for (let col = 0; col < width; col++) {
        const at = (row * stored + col) * 64;
        for (let i = 0; i < 64; i++) work[i] = wrap16(coefficients[at + i]);
        for (let j = 0; j < 5; j++) {
          const dcs = neighbours[j];
          for (let k = 0; k < 5; k++) around[j * 5 + k] = dcs[col + k];
        }
        const q0 = quant[0];
        for (let a = 0; a < kernels.length; a++) {
          const al = coefBits[a + 1], at = AC_POSITIONS[a];
          if (al === 0 || work[at] !== 0) continue;
          const { index, weight } = kernels[a];
          let sum = 0;
          for (let i = 0; i < index.length; i++) sum += weight[i] * around[index[i]];
          work[at] = estimate(q0 * sum, quant[at], al);
        }
        if (noAc) {
          let sum = 0;
          for (let i = 0; i < DC_TERMS.index.length; i++) {
            sum += DC_TERMS.weight[i] * around[DC_TERMS.index[i]];
          }
          work[0] = estimate(q0 * sum, q0, 0);
        }
        emit(row, col, work);
      }
    }
  }
}
