import assert from "node:assert/strict";
import { join } from "node:path";
import { readNpz } from "../lib/data/npy.ts";
import {
  type CoefficientBlocks,
  componentSamples,
  idctBlockIslow,
  NATURAL_ORDER,
} from "../lib/data/_jpeg_idct.ts";
import { createRng } from "../lib/rng.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

/** Blocks given as `rows[row][col]`, laid out as the entropy decoder leaves them. */
function blocksOf(rows: Int32Array[][]): CoefficientBlocks {
  const perLine = rows[0].length;
  const coefficients = new Int32Array(rows.length * perLine * 64);
  rows.forEach((row, r) => row.forEach((b, c) => coefficients.set(b, (r * perLine + c) * 64)));
  return { coefficients, blocksPerLine: perLine };
}

/** The islow transform of one block (natural order) with the given steps: 64 samples, row-major. */
function islow(coef: ArrayLike<number>, quant: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(64);
  idctBlockIslow(coef, quant, out, 0, 8, new Int32Array(64));
  return out;
}

/**
 * The textbook 2-D inverse DCT of JPEG (ITU T.81, A.3.3), in floating point: sample (y, x) =
 * 1/4 Σu Σv C(u) C(v) F(v, u) cos((2x + 1)uπ/16) cos((2y + 1)vπ/16), C(0) = 1/√2, else 1; plus 128.
 */
function exactIdct(dequantised: ArrayLike<number>): Float64Array {
  const out = new Float64Array(64);
  for (let y = 0; y < 8; y++) {
    for (let x = 0; x < 8; x++) {
      let s = 0;
      for (let v = 0; v < 8; v++) {
        for (let u = 0; u < 8; u++) {
          const cu = u === 0 ? Math.SQRT1_2 : 1, cv = v === 0 ? Math.SQRT1_2 : 1;
          s += cu * cv * dequantised[v * 8 + u] * Math.cos(((2 * x + 1) * u * Math.PI) / 16) *
            Math.cos(((2 * y + 1) * v * Math.PI) / 16);
        }
      }
      out[y * 8 + x] = s / 4 + 128;
    }
  }
  return out;
}

Deno.test("islow IDCT is within ±1 of the exact transform on blocks of real images' range", () => {
  const rng = createRng(11);
  let equal = 0, total = 0;
  for (let trial = 0; trial < 3000; trial++) {
    const coef = new Int32Array(64);
    const quant = new Int32Array(64);
    // Magnitudes falling with frequency, as in photographs; some blocks sparse, some dense, some
    // with only a DC term or only the first row (the transform's shortcuts).
    const density = [0.05, 0.3, 1][trial % 3];
    for (let i = 0; i < 64; i++) {
      const u = i & 7, v = i >> 3;
      quant[i] = 1 + rng.int(i === 0 ? 16 : 40);
      const limit = Math.floor(600 / (1 + u + v) / quant[i]);
      if (i === 0 || rng.uniform() < density) coef[i] = rng.int(2 * limit + 1) - limit;
    }
    if (trial % 7 === 0) coef.fill(0, 8);
    if (trial % 11 === 0) coef.fill(0, 1);
    const exact = exactIdct(coef.map((c, i) => c * quant[i]));
    const got = islow(coef, quant);
    for (let i = 0; i < 64; i++) {
      const want = Math.min(255, Math.max(0, Math.round(exact[i])));
      const d = Math.abs(got[i] - want);
      assert.ok(d <= 1, `trial ${trial}, sample ${i}: islow ${got[i]}, exact ${exact[i]}`);
      if (d === 0) equal++;
      total++;
    }
  }
  // Measured: 98.1 % of the samples equal the rounded exact value, the rest are 1 off.
  assert.ok(equal / total > 0.97, `${equal} of ${total} equal`);
});

Deno.test("islow IDCT: hand-computed blocks", () => {
  const steps = new Int32Array(64).fill(1);
  // A DC term alone: every sample is 128 + DC·step/8, rounded half up ((x + 4) >> 3).
  for (
    const [dc, q, want] of [[40, 2, 138], [-80, 1, 118], [3, 1, 128], [4, 1, 129], [-4, 1, 128]]
  ) {
    const coef = new Int32Array(64);
    coef[0] = dc;
    assert.deepEqual(
      Array.from(islow(coef, new Int32Array(64).fill(q))),
      new Array(64).fill(want),
      `DC ${dc} × ${q}`,
    );
  }
  // The first horizontal frequency alone: every row alike, each sample the exact value
  // 128 + 100·cos((2x + 1)π/16)/(4√2) rounded: 145.34, 142.70, 137.82, 131.45, 124.55, …
  const coef = new Int32Array(64);
  coef[1] = 100;
  const got = islow(coef, steps);
  assert.deepEqual(Array.from(got.subarray(0, 8)), [145, 143, 138, 131, 125, 118, 113, 111]);
  const exact = exactIdct(coef);
  for (let y = 0; y < 8; y++) {
    for (let x = 0; x < 8; x++) {
      assert.equal(got[y * 8 + x], Math.round(exact[y * 8 + x]), `(${x}, ${y})`);
    }
  }
  // componentSamples lays blocks out row by row: 3 × 2 blocks of DC 8·k give 128 + k.
  const blocks = [0, 1].map((r) =>
    [0, 1, 2].map((c) => {
      const b = new Int32Array(64);
      b[0] = 8 * (r * 3 + c);
      return b;
    })
  );
  const lines = componentSamples(blocksOf(blocks), steps, 3, 2);
  assert.equal(lines.length, 16);
  for (let y = 0; y < 16; y++) {
    assert.equal(lines[y].length, 24);
    for (let x = 0; x < 24; x++) assert.equal(lines[y][x], 128 + (y >> 3) * 3 + (x >> 3));
  }
});

// bigcoef_96x8 of jpeg_pil_decode_kinds.npz (tests/fixtures/jpeg_make_fixtures.py): twelve grey
// blocks of coefficients no real image has (up to ±32767) with steps up to 65535, written by the
// script's own encoder and decoded by Pillow 12.3 (libjpeg-turbo's SSE2/AVX2 islow on x86-64). On
// them the transform's 16-bit behaviour shows: 126 dequantised values wrap, 109 of its sums wrap,
// 326 column-pass outputs saturate, 2 columns wrap in the all-AC-zero shortcut, and 635 samples
// lie beyond ±512 of the centre, where jidctint.c's range-limit table would wrap them instead of
// saturating (counted by a scratch replica of the transform).
Deno.test("islow IDCT gives Pillow's samples on out-of-range coefficients (x86 SIMD semantics)", async () => {
  const f = await readNpz(join(FIXTURES, "jpeg_pil_decode_kinds.npz"));
  const coef = f.bigcoef_96x8_coef.data as Int16Array;
  const quant = f.bigcoef_96x8_quant.data as Uint16Array;
  const pil = f.bigcoef_96x8_rgb.data as Uint8Array; // 8 × 96 × 3, grey repeated
  assert.deepEqual(f.bigcoef_96x8_rgb.shape, [8, 96, 3]);
  for (let b = 0; b < 12; b++) {
    const got = islow(coef.subarray(b * 64, b * 64 + 64), quant);
    for (let y = 0; y < 8; y++) {
      for (let x = 0; x < 8; x++) {
        assert.equal(got[y * 8 + x], pil[(y * 96 + b * 8 + x) * 3], `block ${b} (${x}, ${y})`);
      }
    }
  }
  // Block 0: DC 600 with step 8 is 600 above the centre: saturated to 255, where jidctint.c's
  // table (indexed by the low 10 bits: 600 & 1023 = 600, in its 0 segment) gives 0. Block 3: DC
  // 1500 × 8 × 4 = 48000 wraps to −17536 in the 16-bit shortcut: −548 → 0.
  assert.equal(pil[0], 255);
  assert.equal(pil[3 * 8 * 3], 0);
  // The steps sit in natural order; the file's DQT lists them in zigzag order.
  assert.equal(quant[NATURAL_ORDER[5]], 40000); // zigzag 5 is row 0, column 2
});

Deno.test("block smoothing: libjpeg-turbo's estimates from the neighbours' DC terms, by hand", () => {
  // Two blocks side by side, DC 0 and 80 (steps 1), nothing else sent: every AC coefficient is
  // estimated with the smoothing kernels and the DC terms replaced by smoothed ones. The rows
  // above and below are the row itself, the columns beyond the edges the edge block. For block 0
  // the five DC terms across are 0, 0, 0, 80, 80 and for block 1 0, 0, 80, 80, 80 (the same in
  // each row), so a kernel reduces to its column sums:
  // - AC(0,1): −11, 62, 0, −62, 11 → −62·80 + 11·80 = −4080 → −⌊(128 + 4080)/256⌋ = −16, both;
  // - AC(0,2): 1, 11, −24, 11, 1 → 960 → 4 and −960 → −4;
  // - AC(0,3): 0, 4, 0, −4, 0 → −320 → −1, both; AC(1,0), (2,0), (1,1), (1,2), (2,1), (3,0): 0;
  // - DC: −24, 42, 220, 42, −24 → 1440 → 6 and 19040 → 74.
  const steps = new Int32Array(64).fill(1);
  const left = new Int32Array(64), right = new Int32Array(64);
  right[0] = 80;
  const smoothing = { coefBits: [0, -1, -1, -1, -1, -1, -1, -1, -1, -1], v: 1, iMcuRows: 1 };
  const got = componentSamples(blocksOf([[left, right]]), steps, 2, 1, smoothing);
  const estimated = [[6, -16, 4, -1], [74, -16, -4, -1]].map(([dc, a1, a2, a3]) => {
    const b = new Int32Array(64);
    [b[0], b[1], b[2], b[3]] = [dc, a1, a2, a3];
    return b;
  });
  const want = componentSamples(blocksOf([estimated]), steps, 2, 1);
  assert.deepEqual(got.map((r) => Array.from(r)), want.map((r) => Array.from(r)));
  // Once every coefficient is sent to its last bit there is nothing to estimate.
  const complete = { ...smoothing, coefBits: new Array(10).fill(0) };
  assert.deepEqual(
    componentSamples(blocksOf([[left, right]]), steps, 2, 1, complete).map((r) => Array.from(r)),
    componentSamples(blocksOf([[left, right]]), steps, 2, 1).map((r) => Array.from(r)),
  );
  // A uniform field stays uniform: the DC kernel sums to 256, the AC kernels to 0.
  const flat = blocksOf([[right, right]]);
  assert.deepEqual(
    componentSamples(flat, steps, 2, 1, smoothing).map((r) => Array.from(r)),
    componentSamples(flat, steps, 2, 1).map((r) => Array.from(r)),
  );
});
