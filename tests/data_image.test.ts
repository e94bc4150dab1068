import assert from "node:assert/strict";
import { join } from "node:path";
import jpeg from "jpeg-js";
import { zlibSync } from "fflate";
import { readNpz } from "../lib/data/npy.ts";
import {
  centerCrop,
  clipPreprocess,
  decodeImage,
  decodeJpeg,
  decodePng,
  type Image8,
  resizeBicubic,
  resizedShortSide,
  toChannels,
} from "../lib/data/image.ts";
import {
  concat,
  jpegDeclaring,
  pngDeclaring,
  pngFile,
  pngWithIdat,
  pngWithRawData,
  rgbRows,
  zlibZeros,
} from "./helpers/crafted_inputs.ts";
import { maxAbsDiff } from "./helpers/numeric.ts";
import { componentUpsampling, h2v1FancyRow, upsamplePlane } from "../lib/data/_jpeg_upsample.ts";
import { createRng } from "../lib/rng.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

/** A PNG built by hand: IHDR + one zlib IDAT (filter 0 on every row) + optional PLTE + IEND. */
function makePng(
  width: number,
  height: number,
  colorType: number,
  depth: number,
  rows: Uint8Array[],
  palette?: number[],
): Uint8Array {
  const raw = new Uint8Array(rows.reduce((a, r) => a + r.length + 1, 0));
  let p = 0;
  for (const r of rows) {
    raw[p++] = 0;
    raw.set(r, p);
    p += r.length;
  }
  return pngFile({ width, height, depth, colorType }, zlibSync(raw), palette);
}

Deno.test("CLIP preprocessing equals Pillow + torchvision (fixture from data_make_fixtures.py)", async () => {
  const f = await readNpz(join(FIXTURES, "data_pil_resize.npz"));
  for (const name of ["up", "down", "grey", "halfcrop", "tall"]) {
    const inp = f[`${name}_in`];
    const want = f[`${name}_out`];
    const img: Image8 = {
      height: inp.shape[0],
      width: inp.shape[1],
      channels: inp.shape[2] ?? 1,
      data: inp.data as Uint8Array,
    };
    const got = clipPreprocess(img, want.shape[0]);
    assert.equal(got.width, want.shape[1], name);
    assert.equal(got.height, want.shape[0], name);
    // Measured: bit-exact (max |diff| 0); the requirement is ≤ 1.
    assert.equal(maxAbsDiff(got.data, want.data as Uint8Array), 0, name);
  }
});

Deno.test("resize: sizes, constant images stay constant, identity at equal size", () => {
  assert.deepEqual(resizedShortSide(300, 250, 224), [268, 224]);
  assert.deepEqual(resizedShortSide(199, 301, 224), [224, 338]);
  assert.deepEqual(resizedShortSide(28, 28, 224), [224, 224]);
  const flat: Image8 = { width: 7, height: 5, channels: 3, data: new Uint8Array(105).fill(77) };
  for (const [w, h] of [[30, 2], [3, 17], [7, 5]]) {
    const r = resizeBicubic(flat, w, h);
    assert.equal(r.data.length, w * h * 3);
    assert.ok(r.data.every((v) => v === 77), `${w}x${h}`);
  }
  // Hand-computed: [0, 255] upscaled to 4 pixels (scale 0.5, support 2, taps clipped to the row).
  // Output 1: centre 0.75, taps x=0,1 at distances 0.25 and 0.75: weights 0.8671875 and 0.2265625,
  // normalised by their sum 1.09375, in 22-bit fixed point; output 0 has a negative weight on 255 → 0.
  const k = Math.trunc(0.5 + (0.2265625 / 1.09375) * 2 ** 22);
  const out1 = Math.floor((2 ** 21 + 255 * k) / 2 ** 22);
  assert.equal(out1, 53);
  const row: Image8 = { width: 2, height: 1, channels: 1, data: new Uint8Array([0, 255]) };
  // Output 2 mirrors output 1 (weights swapped: floor(0.5 + 255·0.7928…) = 202). Pillow: [0, 53, 202, 255].
  assert.deepEqual(Array.from(resizeBicubic(row, 4, 1).data), [0, out1, 202, 255]);
});

Deno.test("centerCrop rounds offsets half to even, like torchvision", () => {
  const mk = (w: number, h: number): Image8 => ({
    width: w,
    height: h,
    channels: 1,
    data: Uint8Array.from({ length: w * h }, (_, i) => i % w),
  });
  // (5−2)/2 = 1.5 → 2; (4−1)/2 = 1.5 → 2; (6−1)/2 = 2.5 → 2; (7−2)/2 = 2.5 → 2
  assert.deepEqual(Array.from(centerCrop(mk(5, 1), 2, 1).data), [2, 3]);
  assert.deepEqual(Array.from(centerCrop(mk(4, 1), 1, 1).data), [2]);
  assert.deepEqual(Array.from(centerCrop(mk(6, 1), 1, 1).data), [2]);
  assert.deepEqual(Array.from(centerCrop(mk(7, 1), 2, 1).data), [2, 3]);
  assert.throws(() => centerCrop(mk(3, 3), 4, 4), /does not fit/);
});

Deno.test("decode PNG: RGB, RGBA, grey, palette, 16-bit grey keeps the high byte", () => {
  const rgb = makePng(2, 1, 2, 8, [new Uint8Array([1, 2, 3, 250, 251, 252])]);
  assert.deepEqual(Array.from(decodePng(rgb, "rgb.png").data), [1, 2, 3, 250, 251, 252]);
  const rgba = makePng(1, 1, 6, 8, [new Uint8Array([9, 8, 7, 0])]);
  assert.deepEqual(Array.from(decodeImage(rgba, "rgba.png").data), [9, 8, 7]);
  const grey = makePng(3, 1, 0, 8, [new Uint8Array([0, 128, 255])]);
  const g = decodePng(grey, "grey.png");
  assert.equal(g.channels, 3);
  assert.deepEqual(Array.from(g.data), [0, 0, 0, 128, 128, 128, 255, 255, 255]);
  const pal = makePng(2, 1, 3, 8, [new Uint8Array([1, 0])], [10, 20, 30, 40, 50, 60]);
  assert.deepEqual(Array.from(decodePng(pal, "pal.png").data), [40, 50, 60, 10, 20, 30]);
  const g16 = makePng(2, 1, 0, 16, [new Uint8Array([0x12, 0x34, 0xff, 0xff])]);
  assert.deepEqual(Array.from(decodePng(g16, "g16.png").data), [0x12, 0x12, 0x12, 255, 255, 255]);
  const g1 = makePng(8, 1, 0, 1, [new Uint8Array([0b10100000])]);
  assert.deepEqual(Array.from(decodePng(g1, "g1.png").data).filter((_, i) => i % 3 === 0), [
    255,
    0,
    255,
    0,
    0,
    0,
    0,
    0,
  ]);
});

Deno.test("decode JPEG: close to the encoded pixels; corrupt files name the file", () => {
  const w = 16, h = 8;
  const rgba = new Uint8Array(w * h * 4);
  for (let i = 0; i < w * h; i++) rgba.set([(i % w) * 16, 100, 200 - (i % w) * 8, 255], i * 4);
  const bytes = jpeg.encode({ data: rgba, width: w, height: h }, 100).data;
  const img = decodeImage(bytes, "a.jpg");
  assert.deepEqual([img.width, img.height, img.channels], [w, h, 3]);
  let m = 0;
  for (let i = 0; i < w * h; i++) {
    for (let c = 0; c < 3; c++) m = Math.max(m, Math.abs(img.data[i * 3 + c] - rgba[i * 4 + c]));
  }
  assert.ok(m <= 8, `max error ${m}`);
  assert.throws(
    () => decodeJpeg(bytes.subarray(0, 200), "cut.jpg"),
    /cut\.jpg is not a readable JPEG/,
  );
  assert.throws(
    () => decodeImage(new Uint8Array([1, 2, 3, 4]), "x/junk.jpg"),
    /x\/junk\.jpg is neither a JPEG nor a PNG/,
  );
  assert.throws(
    () => decodePng(new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0, 0, 0, 0, 1]), "bad.png"),
    /bad\.png is not a readable PNG/,
  );
});

// jpeg_pil_decode.npz: tiny JPEGs written by Pillow 12.3.0 (libjpeg-turbo 3.1.4.1) and the pixels
// Pillow decodes them to, np.asarray(Image.open(f).convert("RGB")); made by
// `python tests/fixtures/jpeg_make_fixtures.py` (colour blocks, stripes and noise).
// Measured: equal. With jpeg-js's IDCT (poppler's, before lib/data/_jpeg_idct.ts) under the
// libjpeg-style upsampling and colour conversion they were max |diff| 3, 3, 3, 2, 1 (mean 0.14,
// 0.19, 0.22, 0.17, 0.08, in that order); with jpeg-js alone (repeated chroma samples, truncating
// float conversion, Adobe RGB taken for YCbCr) max 76, 64, 62, 3, 245.
Deno.test("JPEG decodes exactly as Pillow does: 4:2:0, 4:2:2, progressive, 4:4:4, Adobe RGB", async () => {
  const names = ["s420_17x13", "s422_16x9", "s420_prog_10x7", "s444_12x9", "rgb_9x5"];
  await assertDecodesLikePillow("jpeg_pil_decode.npz", names);
});

/** Each `<name>_jpg` of a fixture decodes to its `<name>_rgb` (Pillow's pixels), value for value. */
async function assertDecodesLikePillow(file: string, names: string[]) {
  const f = await readNpz(join(FIXTURES, file));
  for (const name of names) {
    const want = f[`${name}_rgb`];
    const img = decodeJpeg(f[`${name}_jpg`].data as Uint8Array, `${name}.jpg`);
    assert.deepEqual([img.height, img.width, img.channels], want.shape, name);
    const pil = want.data as Uint8Array;
    const differ = pil.reduce((n, v, i) => n + (img.data[i] !== v ? 1 : 0), 0);
    assert.equal(
      differ,
      0,
      `${name}: ${differ} values differ, max |diff| ${maxAbsDiff(img.data, pil)}`,
    );
  }
}

// jpeg_pil_decode_kinds.npz (same script): grey, progressive grey with a restart interval per row,
// 4:2:0 with restarts every 2 MCUs, CMYK (Adobe) 4:4:4 and with C at 2×2 (and the latter without
// its Adobe marker, which jpeg-js refused and libjpeg reads as CMYK), 16-bit quantisation
// tables (SOF1), samples clamped at 0 and 255, a progressive 4:2:0 file cut after its first scan
// (DC only) and after its third, which libjpeg-turbo decodes with block smoothing, and, built by
// the script's minimal encoder, YCCK (Adobe transform 2) with Y at 2×2, a frame with luma at 4×3
// (12 blocks) whose components have a scan each and a quantisation table redefined between two of
// them, and coefficients no real image has (16-bit wrapping and saturation). Measured before
// lib/data/_jpeg_idct.ts (jpeg-js's IDCT, and its own conversion for grey and CMYK): max |diff| 1,
// 1, 3, 1, 78, 2, 1, 63, 49, 86, 156 (the redefined table: jpeg-js dequantises with the last
// definition), 255; now all equal.
Deno.test("JPEG decodes exactly as Pillow does: grey, CMYK, YCCK, restarts, 16-bit tables, smoothing, scans", async () => {
  const names = [
    "grey_13x11",
    "grey_prog_rst_21x18",
    "s420_rst_35x21",
    "cmyk_14x10",
    "cmyk_s420_18x14",
    "cmyk_noadobe_s420_18x14",
    "q16_17x9",
    "clamp_24x16",
    "prog_first1_37x20",
    "prog_first3_37x20",
    "ycck_s420_20x14",
    "y43_scans_dqt_40x30",
    "bigcoef_96x8",
  ];
  await assertDecodesLikePillow("jpeg_pil_decode_kinds.npz", names);
});

// libjpeg-turbo smooths the iMCU rows after the last one its last scan started with whole data
// (`last_good_iMCU_row`) with the coefficient bits as they were before that scan. Pillow 12.3's
// pixels (FNV-1a hash) for prog_first3_37x20 cut inside its 2nd scan (an AC band, bytes 313–354)
// and its 3rd (bytes 404–469), then ended by EOI; all 452 such cuts of it and grey_prog_rst_21x18
// now give Pillow's pixels (109 differed, up to 40 levels).
Deno.test("a progressive JPEG whose last scan is cut short is smoothed as libjpeg-turbo does", async () => {
  const f = await readNpz(join(FIXTURES, "jpeg_pil_decode_kinds.npz"));
  const bytes = f.prog_first3_37x20_jpg.data as Uint8Array;
  for (const [cut, hash] of [[320, 1246023604], [430, 3060910013]]) {
    const cutShort = new Uint8Array(cut + 2);
    cutShort.set(bytes.subarray(0, cut));
    cutShort.set([0xff, 0xd9], cut);
    const img = decodeJpeg(cutShort, "cut.jpg");
    let h = 2166136261;
    for (const x of img.data) h = Math.imul(h ^ x, 16777619) >>> 0;
    assert.equal(h, hash, `cut at byte ${cut}`);
  }
});

Deno.test("JPEG decoding leaves Object.prototype as it was", async () => {
  const f = await readNpz(join(FIXTURES, "jpeg_pil_decode.npz"));
  const bytes = f.s420_17x13_jpg.data as Uint8Array;
  const before = Object.getOwnPropertyNames(Object.prototype);
  decodeJpeg(bytes, "a.jpg");
  assert.throws(() => decodeJpeg(bytes.subarray(0, 300), "cut.jpg"), /cut\.jpg/);
  assert.deepEqual(Object.getOwnPropertyNames(Object.prototype), before);
});

Deno.test("fancy upsampling: hand-computed rows, libjpeg's rounding and edges", () => {
  const row = (values: number[], width: number) => {
    const out = new Uint8Array(2 * width);
    h2v1FancyRow(new Uint8Array(values), width, out);
    return Array.from(out);
  };
  // 4:2:2: the edges repeat; inside, 3/4 of the nearer sample + 1/4 of the farther.
  assert.deepEqual(row([0, 100, 200], 3), [0, 25, 75, 125, 175, 200]);
  // Ties round down on even outputs ((3a + b + 1) >> 2), up on odd ones ((3a + b + 2) >> 2):
  // exact values 0, 0.5, 1.5, 1.5, 0.5, 0.
  assert.deepEqual(row([0, 2, 0], 3), [0, 1, 1, 2, 0, 0]);
  // 4:2:0 on a 3 × 2 plane to 6 × 4: weights 9/16, 3/16, 3/16, 1/16, (+8 even, +7 odd) >> 4; the
  // rows above the first and below the last are the edge rows themselves.
  const plane = [new Uint8Array([0, 100, 200]), new Uint8Array([40, 80, 120])];
  assert.deepEqual(upsamplePlane(plane, 2, 2, 6, 4).map((r) => Array.from(r)), [
    [0, 25, 75, 125, 175, 200], // row 0: only plane row 0
    [10, 31, 74, 116, 159, 180], // row 1: 3/4 row 0 + 1/4 row 1, e.g. (3·40 + 380 + 7) >> 4 = 31
    [30, 44, 71, 99, 126, 140], // row 2: 3/4 row 1 + 1/4 row 0
    [40, 50, 70, 90, 110, 120], // row 3: only plane row 1
  ]);
  // An odd image size uses the same plane (⌈5/2⌉ × ⌈3/2⌉ samples) and drops the extra outputs.
  assert.deepEqual(upsamplePlane(plane, 2, 2, 5, 3).map((r) => Array.from(r)), [
    [0, 25, 75, 125, 175],
    [10, 31, 74, 116, 159],
    [30, 44, 71, 99, 126],
  ]);
  // 4:4:0: (3·near + far + 1) >> 2 from above, + 2 from below: the tie 2.5 (row 1) rounds up, 3.5
  // (row 2) down.
  assert.deepEqual(upsamplePlane([new Uint8Array([0, 2]), new Uint8Array([4, 4])], 1, 2, 2, 4), [
    new Uint8Array([0, 2]),
    new Uint8Array([1, 3]),
    new Uint8Array([3, 3]),
    new Uint8Array([4, 4]),
  ]);
  // libjpeg repeats samples when the component is at most 2 samples wide, and for 4:1:1.
  assert.equal(componentUpsampling(2, 2, 4, 4)?.method, "box");
  assert.equal(componentUpsampling(2, 1, 5, 4)?.method, "h2v1");
  assert.equal(componentUpsampling(4, 1, 64, 4)?.method, "box");
  assert.deepEqual(upsamplePlane([new Uint8Array([10, 50])], 2, 2, 3, 2), [
    new Uint8Array([10, 10, 50]),
    new Uint8Array([10, 10, 50]),
  ]);
});

Deno.test("fancy upsampling equals the textbook triangular filter with libjpeg's rounding", () => {
  const rng = createRng(7);
  for (let trial = 0; trial < 200; trial++) {
    const [hx, vx] = [[2, 1], [1, 2], [2, 2]][trial % 3];
    const width = 2 * hx + 1 + rng.int(30), height = 2 + rng.int(20);
    const pw = Math.ceil(width / hx), ph = Math.ceil(height / vx);
    const plane = Array.from({ length: ph }, () => {
      const r = new Uint8Array(pw + 8); // with padding, which must not be read
      for (let i = 0; i < r.length; i++) r[i] = i < pw ? rng.int(256) : 255;
      return r;
    });
    const got = upsamplePlane(plane, hx, vx, width, height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = Math.floor(x / hx), j = Math.floor(y / vx);
        // The farther neighbour: left/above for even outputs, right/below for odd, the edge
        // sample itself past the edge.
        const i2 = x % 2 === 1 ? Math.min(i + 1, pw - 1) : Math.max(i - 1, 0);
        const j2 = y % 2 === 1 ? Math.min(j + 1, ph - 1) : Math.max(j - 1, 0);
        const p = (jj: number, ii: number) => plane[jj][ii];
        let want: number;
        if (hx === 2 && vx === 2) {
          const sum = 9 * p(j, i) + 3 * p(j, i2) + 3 * p(j2, i) + p(j2, i2);
          want = (sum + (x % 2 === 1 ? 7 : 8)) >> 4;
        } else if (hx === 2) {
          want = (3 * p(j, i) + p(j, i2) + (x % 2 === 1 ? 2 : 1)) >> 2;
        } else {
          want = (3 * p(j, i) + p(j2, i) + (y % 2 === 1 ? 2 : 1)) >> 2;
        }
        assert.equal(got[y][x], want, `${hx}x${vx} ${width}x${height} at (${x}, ${y})`);
      }
    }
  }
});

Deno.test("toChannels: grey to RGB and Pillow's L weights", () => {
  const g: Image8 = { width: 2, height: 1, channels: 1, data: new Uint8Array([5, 200]) };
  assert.deepEqual(Array.from(toChannels(g, 3).data), [5, 5, 5, 200, 200, 200]);
  const c: Image8 = {
    width: 2,
    height: 1,
    channels: 3,
    data: new Uint8Array([255, 0, 0, 10, 200, 30]),
  };
  // Pillow: L = (R·19595 + G·38470 + B·7471 + 0x8000) >> 16
  assert.deepEqual(Array.from(toChannels(c, 1).data), [76, 124]);
});

/** Runs `fn`, which must throw, and returns the error. */
function thrown(fn: () => unknown): { error: Error } {
  try {
    fn();
  } catch (error) {
    return { error: error as Error };
  }
  throw new assert.AssertionError({ message: "expected an error" });
}

/** Sets environment variables for the duration of `fn`. */
function withEnv(vars: Record<string, string>, fn: () => void): void {
  const saved = Object.keys(vars).map((k) => [k, Deno.env.get(k)] as const);
  try {
    for (const [k, v] of Object.entries(vars)) Deno.env.set(k, v);
    fn();
  } finally {
    for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  }
}

// Before these checks the 67-byte PNG decoded to 20000×20000 zeros in 13 s and 4 GB, and the
// JPEG took 6 s and 4 GB before jpeg-js refused it. The messages asserted below come from the
// header checks, which run before anything is decoded or allocated (timing is not asserted here:
// speed belongs to benchmarks, and a loaded CI machine would make a time bound flaky).
Deno.test("images whose header declares more than 50 MP are refused before decoding", () => {
  const png = pngDeclaring(20000, 20000);
  assert.ok(png.length < 100, `${png.length} bytes`);
  const a = thrown(() => decodeImage(png, "bomb.png"));
  assert.match(
    a.error.message,
    /^bomb\.png declares 20000×20000 pixels \(400\.0 MP\), more than the limit of 50 MP; .*decompression bomb.*option maxPixels, or the environment variable DEER_MAX_IMAGE_PIXELS=<pixels>/,
  );
  const b = thrown(() => decodeImage(jpegDeclaring(14000, 14000), "bomb.jpg"));
  assert.match(b.error.message, /^bomb\.jpg declares 14000×14000 pixels \(196\.0 MP\), more than/);
  // 60000×60000 used to exhaust the machine's memory with no message.
  assert.throws(() => decodePng(pngDeclaring(60000, 60000), "huge.png"), /3600\.0 MP/);
  // Under the pixel limit, a JPEG far smaller than its declared size (7000×7000 in ~600 bytes
  // used to cost 1.5 GB and 2 s in the decoder) is refused before decoding.
  const small = jpegDeclaring(7000, 7000);
  const c = thrown(() => decodeImage(small, "tiny.jpg"));
  assert.match(
    c.error.message,
    new RegExp(
      `^tiny\\.jpg declares 7000×7000 pixels in ${small.length} bytes, fewer than any JPEG of ` +
        `that size can hold \\(at least 47851 bytes: one bit per 8×8 block\\)`,
    ),
  );
  // A genuine, highly compressible JPEG (uniform grey, 1024×1024) passes the check.
  const grey = new Uint8Array(1024 * 1024 * 4).fill(128);
  const encoded = jpeg.encode({ data: grey, width: 1024, height: 1024 }, 1).data;
  assert.ok(encoded.length >= 1024, `${encoded.length} bytes`);
  assert.equal(decodeImage(encoded, "grey.jpg").width, 1024);
});

Deno.test("the pixel limit is settable by option and by DEER_MAX_IMAGE_PIXELS", () => {
  const png = pngWithRawData(10, 10, rgbRows(10, 10));
  assert.equal(decodeImage(png, "ok.png").width, 10);
  assert.throws(
    () => decodeImage(png, "ok.png", { maxPixels: 99 }),
    /ok\.png declares 10×10 pixels \(0\.0 MP\), more than the limit of 0\.000099 MP/,
  );
  const jpg = jpegDeclaring(8, 8);
  withEnv({ DEER_MAX_IMAGE_PIXELS: "63" }, () => {
    assert.throws(() => decodeImage(jpg, "e.jpg"), /e\.jpg declares 8×8 pixels/);
    assert.equal(decodeImage(jpg, "e.jpg", { maxPixels: 64 }).width, 8); // the option wins
  });
  withEnv({ DEER_MAX_IMAGE_PIXELS: "lots" }, () => {
    assert.throws(
      () => decodeImage(jpg, "e.jpg"),
      /environment variable DEER_MAX_IMAGE_PIXELS="lots" must be a number > 0/,
    );
  });
  assert.throws(
    () => decodeImage(jpg, "e.jpg", { maxPixels: 0 }),
    /maxPixels must be a number > 0/,
  );
});

Deno.test("a PNG missing pixel rows is refused, not padded with zeros", () => {
  const full = pngWithRawData(64, 64, rgbRows(64, 64));
  const img = decodePng(full, "full.png");
  assert.equal(img.data[img.data.length - 1], (64 * 64 * 3 - 1) % 251); // the last pixel is real
  // A complete zlib stream of only 4 of the 64 rows (pngjs decoded the other 60 as zeros).
  assert.throws(
    () => decodePng(pngWithRawData(64, 64, rgbRows(64, 4)), "rows.png"),
    /^Error: rows\.png is truncated: its pixel data inflates to 772 of the 12352 bytes its 64×64 header declares \(4 of 64 rows\); replace or re-export the image$/,
  );
  // The file cut inside its IDAT chunk.
  assert.throws(
    () => decodeImage(full.subarray(0, Math.floor(full.length * 0.6)), "cut.png"),
    /^Error: cut\.png is truncated: its pixel data inflates to 1159 of the 12352 bytes its 64×64 header declares \(6 of 64 rows\); inflate: unexpected end of file/,
  );
  // Interlaced (Adam7) data is measured pass by pass: 4×4 RGB has 5 non-empty passes, 55 bytes.
  assert.throws(
    () => decodePng(pngWithRawData(4, 4, new Uint8Array(30), { interlace: true }), "adam7.png"),
    /adam7\.png is truncated: its pixel data inflates to 30 of the 55 bytes/,
  );
  assert.equal(
    decodePng(pngWithRawData(4, 4, new Uint8Array(55), { interlace: true }), "adam7.png").width,
    4,
  );
  // An interlaced 64×64 PNG whose 2 MB IDAT inflates to 2 GiB: pngjs inflated all of it (2.2 GB,
  // 2 s) before failing; inflation stops at the 12408 bytes Adam7 needs for 64×64 RGB and, as
  // Pillow 12.3 does, the image is those bytes (all zeros), the rest unread. zlibZeros leaves the
  // stream's Adler-32 0, which is wrong: a stream that ends where the pixel data does is refused
  // for it, so the bomb's decoding shows that inflation stopped long before its end.
  assert.throws(
    () => decodePng(pngWithIdat(64, 64, zlibZeros(12408), { interlace: true }), "exact.png"),
    /^Error: exact\.png is not a readable PNG \(corrupt pixel data: incorrect data check\)/,
  );
  const bomb = pngWithIdat(64, 64, zlibZeros(2 * 1024 ** 3), { interlace: true });
  assert.ok(bomb.length < 2.2e6);
  const zeros = decodePng(bomb, "idat-bomb.png");
  assert.equal(zeros.data.length, 64 * 64 * 3);
  assert.equal(zeros.data.reduce((a, v) => a + v, 0), 0);
  // More data than the header declares: as Pillow, the image is the rows it declares.
  const long = decodePng(pngWithRawData(64, 4, rgbRows(64, 5000)), "long.png");
  assert.deepEqual(long.data, decodePng(pngWithRawData(64, 4, rgbRows(64, 4)), "four.png").data);
});

/** A 16 × 16 baseline JPEG from jpeg-js (JFIF, 4:4:4, component ids 1, 2, 3). */
function smallJpeg(): Uint8Array {
  const rgba = new Uint8Array(16 * 16 * 4).map((_, i) => (i * 37) % 251);
  return new Uint8Array(jpeg.encode({ data: rgba, width: 16, height: 16 }, 90).data);
}

/** Where the frame header (SOF0) of `bytes` starts. */
function sof0(bytes: Uint8Array): number {
  for (let p = 2; p + 1 < bytes.length; p++) {
    if (bytes[p] === 0xff && bytes[p + 1] === 0xc0) return p;
  }
  throw new Error("no SOF0");
}

Deno.test("JPEG size checks find the frame header past a segment whose length eats the next marker's 0xFF", () => {
  const good = smallJpeg();
  // An APP2 segment whose length (6) takes the 0xFF of the APP0 marker after it, as a hostile file
  // did; then the frame header declares 7000 × 7000. The header parse used to stop at the stray
  // byte, so no size check ran and jpeg-js allocated 1.6 GB before failing.
  const stray = new Uint8Array([
    0xff,
    0xd8,
    0xff,
    0xe2,
    0x00,
    0x06,
    0x58,
    0x59,
    0x5a,
    ...good.subarray(2),
  ]);
  const bytes = stray.slice();
  const p = sof0(bytes);
  bytes.set([0x1b, 0x58, 0x1b, 0x58], p + 5);
  assert.throws(
    () => decodeJpeg(bytes, "eaten.jpg"),
    /eaten\.jpg declares 7000×7000 pixels in \d+ bytes, fewer than any JPEG of that size can hold/,
  );
  // The same stray bytes in front of a genuine frame still decode (as libjpeg reads them).
  assert.equal(decodeJpeg(stray, "stray.jpg").width, 16);
  // No frame header at all: refused, naming the file.
  assert.throws(
    () => decodeJpeg(good.subarray(0, sof0(good)), "headless.jpg"),
    /headless\.jpg is not a readable JPEG \(no frame header/,
  );
});

Deno.test("a second start-of-image marker, between segments or in scan data, is refused as libjpeg refuses it", async () => {
  // libjpeg: JERR_SOI_DUPLICATE (Pillow 12.3: "broken data stream" for all three). The walk over
  // the segments stepped over 0xFFD8 as over a restart marker, so one in the entropy-coded data
  // (ending it for the decoder) let the file decode.
  const f = await readNpz(join(FIXTURES, "jpeg_pil_decode.npz"));
  const good = f.s420_17x13_jpg.data as Uint8Array;
  let sos = 2;
  while (!(good[sos] === 0xff && good[sos + 1] === 0xda)) sos++;
  const data = sos + 2 + ((good[sos + 2] << 8) | good[sos + 3]);
  const soi = new Uint8Array([0xff, 0xd8]);
  for (const at of [sos, data + 20, good.length - 2]) {
    const bytes = concat([good.subarray(0, at), soi, good.subarray(at)]);
    assert.throws(
      () => decodeJpeg(bytes, "soi.jpg"),
      new RegExp(
        `^Error: soi\\.jpg has a 0xFFD8 segment at byte ${at} that is a second start of image`,
      ),
    );
  }
});

Deno.test("a JPEG giving two components the same id is refused (jpeg-js would mix them up)", () => {
  const bytes = smallJpeg();
  const p = sof0(bytes);
  assert.deepEqual([bytes[p + 10], bytes[p + 13], bytes[p + 16]], [1, 2, 3]);
  assert.equal(decodeJpeg(bytes, "ok.jpg").width, 16);
  bytes[p + 13] = 1;
  bytes[p + 16] = 1;
  assert.throws(
    () => decodeJpeg(bytes, "dup.jpg"),
    /dup\.jpg gives two colour components the same id \(1, 1, 1\)/,
  );
});

Deno.test("with Object.prototype frozen, JPEGs decode to Pillow's pixels all the same", async () => {
  // Before lib/data/_jpeg_entropy.ts, a frozen prototype left jpeg-js decoding alone (3 off).
  const code = `
import { decodeJpeg } from "./lib/data/image.ts";
import { readNpz } from "./lib/data/npy.ts";
const f = await readNpz("tests/fixtures/jpeg_pil_decode.npz");
Object.freeze(Object.prototype);
const img = decodeJpeg(f.s420_17x13_jpg.data as Uint8Array, "frozen.jpg");
const pil = f.s420_17x13_rgb.data as Uint8Array;
console.log(JSON.stringify({ width: img.width, same: img.data.every((v, i) => v === pil[i]) }));
`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    cwd: new URL("../", import.meta.url).pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, err);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), { width: 17, same: true });
});

Deno.test("setters someone put on Object.prototype change nothing in JPEG decoding", async () => {
  const f = await readNpz(join(FIXTURES, "jpeg_pil_decode.npz"));
  const keys = ["opts", "componentsOrder", "quantizationTable", "components", "blocks", "eobrun"];
  for (const key of keys) {
    Object.defineProperty(Object.prototype, key, {
      set() {
        throw new Error(`set ${key}`);
      },
      configurable: true,
    });
  }
  try {
    const img = decodeJpeg(f.s420_17x13_jpg.data as Uint8Array, "a.jpg");
    assert.equal(maxAbsDiff(img.data, f.s420_17x13_rgb.data as Uint8Array), 0);
  } finally {
    for (const key of keys) delete (Object.prototype as Record<string, unknown>)[key];
  }
});

// jpeg_pil_decode_sampling.npz: four JPEGs Pillow cannot write — 4:4:0 (luma 1×2), 4:1:1 with a
// restart interval of 3 MCUs, chroma sampled finer than luma (Cb 2×2, Y 1×1), and an RGB JPEG told
// apart only by its component ids ('R', 'G', 'B'; no JFIF or Adobe marker) — written by a minimal
// baseline encoder during a review (not kept), with the pixels Pillow 12.3.0 decodes them to,
// np.asarray(Image.open(f).convert("RGB")). They check the upsampler's vertical filter, the
// repeated samples of other factors and libjpeg's RGB rule.
// Measured before lib/data/_jpeg_idct.ts: max |diff| 3, 3, 3, 1; now equal.
Deno.test("JPEG decodes exactly as Pillow does: 4:4:0, 4:1:1 with restarts, finer chroma, RGB by ids", async () => {
  const names = ["c440_67x45", "c411_rst3_67x45", "ccbig_15x17", "rgbids_nomarker_20x12"];
  await assertDecodesLikePillow("jpeg_pil_decode_sampling.npz", names);
});

Deno.test("JPEG sampling factors libjpeg refuses (outside 1–4, fractional ratios) are refused, naming the file", () => {
  const good = smallJpeg();
  const p = sof0(good);
  // jpeg-js writes 4:4:4: every component 1×1 (bytes p + 11, p + 14, p + 17).
  assert.deepEqual([good[p + 11], good[p + 14], good[p + 17]], [0x11, 0x11, 0x11]);
  const withFactors = (y: number, cb: number) => {
    const b = good.slice();
    b[p + 11] = y;
    b[p + 14] = cb;
    return b;
  };
  assert.throws(
    () => decodeJpeg(withFactors(0x52, 0x11), "five.jpg"),
    /five\.jpg has sampling factors outside 1–4 \(5×2, 1×1, 1×1\), which libjpeg/,
  );
  assert.throws(() => decodeJpeg(withFactors(0x20, 0x11), "zero.jpg"), /outside 1–4 \(2×0/);
  assert.throws(
    () => decodeJpeg(withFactors(0x32, 0x21), "frac.jpg"),
    /frac\.jpg has fractional chroma sampling \(3×2, 2×1, 1×1\)/,
  );
});

Deno.test("a JPEG whose interleaved scan has more than 10 blocks per MCU is refused, naming the file", () => {
  const good = smallJpeg();
  const p = sof0(good);
  const withFactors = (y: number, cb: number, cr: number) => {
    const b = good.slice();
    [b[p + 11], b[p + 14], b[p + 17]] = [y, cb, cr];
    return b;
  };
  // Y 4×2 + Cb 2×1 + Cr 1×1 = 11 blocks in the file's one scan: libjpeg stops with
  // JERR_BAD_MCU_SIZE (Pillow: "broken data stream"); jpeg-js would decode it.
  assert.throws(
    () => decodeJpeg(withFactors(0x42, 0x21, 0x11), "big-mcu.jpg"),
    /^Error: big-mcu\.jpg has a scan whose MCU holds 11 blocks \(components 4×2 \+ 2×1 \+ 1×1 interleaved\), more than the 10 libjpeg allows, so Pillow refuses it: re-encode the image$/,
  );
  // 10 blocks pass this check (the bytes, coded for 4:4:4, then decode to something or not).
  try {
    decodeJpeg(withFactors(0x42, 0x11, 0x11), "ten.jpg");
  } catch (err) {
    assert.doesNotMatch((err as Error).message, /MCU holds/);
  }
  // A component with a scan of its own has one block per MCU whatever its factors: the fixture
  // y43_scans_dqt_40x30 (luma 4×3, 12 blocks; tested above) decodes as Pillow does.
});

Deno.test("a JPEG without the quantisation table a component needs is refused, naming the file", () => {
  const bytes = smallJpeg();
  const p = sof0(bytes);
  assert.deepEqual([bytes[p + 12], bytes[p + 15], bytes[p + 18]], [0, 1, 1]); // jpeg-js: tables 0, 1
  bytes[p + 15] = 3;
  assert.throws(
    () => decodeJpeg(bytes, "noq.jpg"),
    /^Error: noq\.jpg has no quantisation table 3 defined before the first scan of component 2, which libjpeg \(and so Pillow\) refuses: re-encode the image$/,
  );
});

Deno.test("a JPEG of 12-bit samples is refused, naming the file (jpeg-js read it as 8-bit)", () => {
  const bytes = smallJpeg();
  const p = sof0(bytes);
  assert.equal(bytes[p + 4], 8);
  bytes[p + 4] = 12;
  assert.throws(
    () => decodeJpeg(bytes, "deep.jpg"),
    /^Error: deep\.jpg has 12-bit samples, which Pillow's libjpeg \(8-bit\) does not read: re-encode the image with 8-bit samples$/,
  );
});

/** `bytes` split around its frame header (SOF0): what precedes it, the segment, what follows. */
function splitAtSof0(bytes: Uint8Array): [Uint8Array, Uint8Array, Uint8Array] {
  const p = sof0(bytes);
  const end = p + 2 + ((bytes[p + 2] << 8) | bytes[p + 3]);
  return [bytes.subarray(0, p), bytes.subarray(p, end), bytes.subarray(end)];
}

/** A baseline frame header: `width` × `height`, components `[id, factors, table]`. */
function sof0Segment(width: number, height: number, components: number[][]): Uint8Array {
  const length = 8 + 3 * components.length;
  return new Uint8Array([
    0xff,
    0xc0,
    length >> 8,
    length & 255,
    8,
    height >> 8,
    height & 255,
    width >> 8,
    width & 255,
    components.length,
    ...components.flat(),
  ]);
}

Deno.test("a JPEG of other than 1, 3 or 4 components is refused before jpeg-js allocates them", () => {
  const [head, , tail] = splitAtSof0(smallJpeg());
  for (const n of [2, 5, 255]) {
    // 512 × 512: jpeg-js allocated 4096 blocks for each component before finding it could not
    // convert them (255 of them at 2048 × 2048 in a 6 KB file: 5.5 GB, 18 s). Pillow refuses
    // any count but 1, 3 and 4.
    const sof = sof0Segment(512, 512, Array.from({ length: n }, (_, i) => [i + 1, 0x11, 0]));
    assert.throws(
      () => decodeJpeg(concat([head, sof, tail]), `n${n}.jpg`),
      new RegExp(`^Error: n${n}\\.jpg has ${n} colour components; Pillow reads JPEGs of 1`),
    );
  }
});

/**
 * `head`, `shown` and `tail` with another frame header (`hidden`) in front of the frame header
 * that libjpeg reads (`shown`), where jpeg-js read it, through its recovery from "malformed APP1
 * markers": at a stray `00 E1 LL LL` it skipped LL − 2 bytes when an 0xFF followed them, where
 * libjpeg (and the checks) walk the bytes to the next marker. An APP2 segment met there covers
 * `hidden` and the start of an APP3 segment whose contents are `shown`.
 */
function hideFrame(
  head: Uint8Array,
  hidden: Uint8Array,
  shown: Uint8Array,
  tail: Uint8Array,
): Uint8Array {
  const app2 = 2 + hidden.length + 4;
  const app3 = 2 + shown.length;
  return concat([
    head,
    new Uint8Array([0x00, 0xe1, 0x00, 0x06, 0xff, 0xe2, app2 >> 8, app2 & 255]),
    hidden,
    new Uint8Array([0xff, 0xe3, app3 >> 8, app3 & 255]),
    shown,
    tail,
  ]);
}

Deno.test("JPEG segments are read as libjpeg reads them: a frame header inside an APP segment is not one", () => {
  const [head, sof, tail] = splitAtSof0(smallJpeg());
  const small = decodeJpeg(smallJpeg(), "small.jpg").data;
  // Frame headers jpeg-js read (7000 × 7000 cost 1.6 GB and 2.8 s before it failed; luma 3×1 in a
  // fractional ratio reached its emptied planes): the decoder reads segments as the checks do, and
  // the file decodes to the 16 × 16 image, as in Pillow (checked when this was written).
  for (
    const hidden of [
      sof0Segment(7000, 7000, [[1, 0x11, 0], [2, 0x11, 1], [3, 0x11, 1]]),
      sof0Segment(16, 16, [[1, 0x31, 0], [2, 0x21, 1], [3, 0x11, 1]]),
    ]
  ) {
    assert.deepEqual(decodeJpeg(hideFrame(head, hidden, sof, tail), "hidden.jpg").data, small);
  }
});

Deno.test("JPEG segments whose length disagrees with their contents are refused, as libjpeg refuses them", () => {
  const good = smallJpeg();
  const [head, sof, tail] = splitAtSof0(good);
  // A Huffman segment shorter than its table (length 3): the checks skipped 3 bytes and found the
  // genuine frame header inside the table's values, while jpeg-js read the table whole and then a
  // frame header after it that was never checked (7000 × 7000 in 1.5 KB cost 1.6 GB).
  const values = concat([new Uint8Array([0]), sof, new Uint8Array([0])]);
  const dht = concat([
    new Uint8Array([0xff, 0xc4, 0x00, 0x03, 0x00]),
    new Uint8Array(15),
    new Uint8Array([values.length]),
    values,
  ]);
  const hidden = sof0Segment(7000, 7000, [[1, 0x11, 0], [2, 0x11, 1], [3, 0x11, 1]]);
  assert.throws(
    () => decodeJpeg(concat([head, dht, hidden, tail]), "short.jpg"),
    /^Error: short\.jpg has a Huffman table \(DHT\) segment at byte \d+ that ends in 1 bytes too few to be a Huffman table, which libjpeg \(and so Pillow\) refuses/,
  );
  // A frame header one byte longer than its components, a scan header of 5 components, a
  // quantisation table numbered 4, a restart interval of 6 bytes: each refused, naming it.
  const longSof = sof.slice();
  longSof[3] += 1;
  const cases: [string, Uint8Array, RegExp][] = [
    [
      "sof",
      concat([head, longSof, new Uint8Array([0]), tail]),
      /frame header \(SOF\) segment at byte \d+ that declares 18 bytes for 3 components/,
    ],
    [
      "dqt",
      concat([head, new Uint8Array([0xff, 0xdb, 0, 67, 4]), new Uint8Array(64).fill(1), sof, tail]),
      /quantisation table \(DQT\) segment at byte \d+ that defines quantisation table 4 \(libjpeg has tables 0–3\)/,
    ],
    [
      "dri",
      concat([head, sof, new Uint8Array([0xff, 0xdd, 0, 6, 0, 1, 0, 0]), tail]),
      /restart interval \(DRI\) segment at byte \d+ that declares 6 bytes \(a restart interval has 4\)/,
    ],
  ];
  const sos = tail.findIndex((b, i) => b === 0xff && tail[i + 1] === 0xda);
  const wideSos = tail.slice();
  wideSos[sos + 4] = 5;
  cases.push([
    "sos",
    concat([head, sof, wideSos]),
    /scan header \(SOS\) segment at byte \d+ that lists 5 components \(1–4\)/,
  ]);
  for (const [what, bytes, message] of cases) {
    assert.throws(() => decodeJpeg(bytes, `${what}.jpg`), (err: Error) => {
      assert.match(err.message, new RegExp(`^${what}\\.jpg has a `));
      assert.match(err.message, message);
      return true;
    });
  }
  // The file they were made from still decodes.
  assert.equal(decodeJpeg(concat([head, sof, tail]), "good.jpg").width, 16);
});

Deno.test("a progressive JPEG repeating scans far beyond what encoders write is refused before decoding", async () => {
  const f = await readNpz(join(FIXTURES, "jpeg_pil_decode.npz"));
  const good = f.s420_prog_10x7_jpg.data as Uint8Array;
  assert.equal(decodeJpeg(good, "prog.jpg").width, 10);
  // Its last scan (a refinement of the AC coefficients) repeated 20 times: each repetition is a
  // few bytes, yet makes the decoder visit every coefficient of its band in every block again
  // (2000 such scans in a 48 KB file of 2048 × 2048 took 32 s; Pillow 5.6 s).
  const eoi = good.length - 2;
  let sos = eoi;
  while (!(good[sos] === 0xff && good[sos + 1] === 0xda)) sos--;
  const last = good.subarray(sos, eoi);
  const repeated = concat([good.subarray(0, eoi), ...Array(20).fill(last), good.subarray(eoi)]);
  assert.throws(
    () => decodeJpeg(repeated, "scans.jpg"),
    /^Error: scans\.jpg has 30 scans that go over each coefficient of each block \d+\.\d times on average, more than the 8 allowed/,
  );
});

Deno.test("a sequential JPEG repeating a component's scan is counted as whole blocks, whatever its Ss and Se", () => {
  // 16 × 16, three components at 1×1, one-bit Huffman codes (DC difference 0, end of block); each
  // scan one component with Ss = Se = 0, which a sequential decoder ignores (it decodes all 64
  // coefficients of every block). Counted as a band of 1, 1500 such scans of the first component
  // of an 8000 × 6000 frame (47 KB) took 4.9 s here and 6.3 s in Pillow.
  const seg = (marker: number, body: number[]) => [0xff, marker, 0, body.length + 2, ...body];
  const head = [
    0xff,
    0xd8,
    ...seg(0xdb, [0, ...Array(64).fill(1)]),
    ...seg(0xc0, [8, 0, 16, 0, 16, 3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]),
    ...seg(0xc4, [0x00, 1, ...Array(15).fill(0), 0]),
    ...seg(0xc4, [0x10, 1, ...Array(15).fill(0), 0]),
  ];
  const scan = (id: number) => [...seg(0xda, [1, id, 0, 0, 0, 0]), 0];
  const file = (scans: number[]) => new Uint8Array([...head, ...scans.flatMap(scan), 0xff, 0xd9]);
  assert.equal(decodeJpeg(file([1, 2, 3]), "three.jpg").width, 16);
  assert.throws(
    () => decodeJpeg(file([...Array(30).fill(1), 2, 3]), "again.jpg"),
    /^Error: again\.jpg has 32 scans that go over each coefficient of each block 10\.7 times on average, more than the 8 allowed/,
  );
});

Deno.test("JPEG scan headers libjpeg refuses are refused: components not the frame's or listed twice, bad progression", async () => {
  const f = await readNpz(join(FIXTURES, "jpeg_pil_decode.npz"));
  const good = f.s420_prog_10x7_jpg.data as Uint8Array;
  // The scan headers' offsets, and each one's count, ids, Ss, Se, Ah|Al.
  const scans: number[] = [];
  for (let p = 2; p + 1 < good.length; p++) {
    if (good[p] === 0xff && good[p + 1] === 0xda) scans.push(p);
  }
  const params = (p: number) => p + 5 + 2 * good[p + 4]; // Ss, then Se, then Ah|Al
  const dc = scans.find((p) => good[p + 4] === 3 && good[params(p)] === 0)!;
  const ac = scans.find((p) => good[params(p)] > 0)!;
  const refine = scans.find((p) => good[params(p) + 2] >> 4 > 0)!;
  const edit = (at: number, value: number) => {
    const b = good.slice();
    b[at] = value;
    return b;
  };
  const cases: [Uint8Array, RegExp][] = [
    [edit(dc + 7, good[dc + 5]), /lists component 1 twice/],
    [edit(dc + 5, 9), /names component 9, which the frame does not have/],
    [edit(params(dc) + 1, 5), /mixes the DC coefficient with AC ones \(coefficients 0–5\)/],
    [
      edit(params(ac), good[params(ac) + 1] + 1),
      /has an AC band that is empty or runs past coefficient 63/,
    ],
    [
      edit(params(ac) + 1, 64),
      /has an AC band that is empty or runs past coefficient 63 \(coefficients \d+–64\)/,
    ],
    [
      edit(params(refine) + 2, good[params(refine) + 2] | 0x0f),
      /refines from bit \d+ to bit 15 \(one bit at a time\)/,
    ],
    [edit(params(dc) + 2, 14), /sends coefficients shifted by 14 bits \(at most 13\)/],
  ];
  for (const [bytes, message] of cases) {
    assert.throws(() => decodeJpeg(bytes, "scan.jpg"), (err: Error) => {
      assert.match(err.message, /^scan\.jpg has a scan \(the \d+(st|nd|rd|th)\) that /);
      assert.match(err.message, message);
      assert.match(err.message, /which libjpeg \(and so Pillow\) refuses/);
      return true;
    });
  }
  assert.equal(decodeJpeg(good, "good.jpg").width, 10);
});

Deno.test("a Huffman table libjpeg cannot build is refused where a scan decodes with it", () => {
  const good = smallJpeg();
  // The DC table 0 (its class/number byte 0x00, inside a DHT segment): 16 counts, then symbols.
  let at = -1;
  for (let p = 2; p + 1 < good.length && at < 0; p++) {
    if (good[p] !== 0xff || good[p + 1] !== 0xc4) continue;
    const end = p + 2 + ((good[p + 2] << 8) | good[p + 3]);
    for (let q = p + 4; q < end;) {
      if (good[q] === 0x00) {
        at = q;
        break;
      }
      q += 17 + good.subarray(q + 1, q + 17).reduce((a, b) => a + b, 0);
    }
  }
  assert.ok(at > 0, "DC table 0");
  const counts = good.subarray(at + 1, at + 17);
  assert.deepEqual(Array.from(counts.subarray(0, 3)), [0, 1, 5]); // the standard luminance DC table
  // Two codes of one bit leave no room (the all-ones code is reserved); the total stays 12, so the
  // segment's length still agrees with it.
  const overflow = good.slice();
  overflow.set([2, 0, 4], at + 1);
  assert.throws(
    () => decodeJpeg(overflow, "codes.jpg"),
    /^Error: codes\.jpg has a scan \(the 1st\) that decodes with Huffman table DC 0, which has more codes of up to 1 bits than fit \(the all-ones code being reserved\), which libjpeg \(and so Pillow\) refuses/,
  );
  // A DC difference has at most 15 bits: a DC symbol of 16 is refused.
  const symbol = good.slice();
  symbol[at + 17] = 16;
  assert.throws(
    () => decodeJpeg(symbol, "dc.jpg"),
    /^Error: dc\.jpg has a scan \(the 1st\) that decodes with Huffman table DC 0, which is a DC table with a symbol above 15/,
  );
});
