// The PNG row decoding of lib/data/_png.ts: the five filters, every bit depth and colour type,
// Adam7 (images under 8×8 included) and the conversion to 8-bit RGB, against references built
// here independently: an encoder of the PNG specification's filters written for these tests,
// PNGs written by pngjs, and pixels worked out by hand.
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { zlibSync } from "fflate";
import { PNG } from "pngjs";
import { decodePng } from "../lib/data/image.ts";
import { unfilterRow } from "../lib/data/_png.ts";
import { createRng, type Rng } from "../lib/rng.ts";
import { pngFile } from "./helpers/crafted_inputs.ts";

const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
const DEPTHS: Record<number, number[]> = {
  0: [1, 2, 4, 8, 16],
  2: [8, 16],
  3: [1, 2, 4, 8],
  4: [8, 16],
  6: [8, 16],
};
/** Adam7's passes: [x0, y0, dx, dy]. */
const ADAM7 = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
];

/** An image's samples: `values[(y · width + x) · channels + c]`, each below 2^depth. */
interface Samples {
  width: number;
  height: number;
  colorType: number;
  depth: number;
  values: number[];
}

/** Random samples of every kind; 16-bit ones spread over the whole range, so carries cross bytes. */
function randomSamples(
  rng: Rng,
  width: number,
  height: number,
  colorType: number,
  depth: number,
): Samples {
  const n = width * height * CHANNELS[colorType];
  const values = Array.from({ length: n }, () => rng.int(2 ** depth));
  return { width, height, colorType, depth, values };
}

/** One row of samples packed as the specification stores it (high bits first, 16-bit big-endian). */
function packRow(values: number[], depth: number): number[] {
  if (depth === 16) return values.flatMap((v) => [v >> 8, v & 255]);
  if (depth === 8) return values;
  const out = new Array(Math.ceil((values.length * depth) / 8)).fill(0);
  values.forEach((v, i) => out[(i * depth) >> 3] |= v << (8 - depth - ((i * depth) & 7)));
  return out;
}

/** The specification's Paeth predictor (§9.4). */
function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** Filters rows (the encoder's side of §9.2): each row `filterOf(y)`, 0 None … 4 Paeth. */
function filterRows(rows: number[][], bpp: number, filterOf: (y: number) => number): number[] {
  const out: number[] = [];
  let prev = new Array(rows[0].length).fill(0);
  rows.forEach((row, y) => {
    const f = filterOf(y);
    out.push(f);
    row.forEach((x, i) => {
      const a = i >= bpp ? row[i - bpp] : 0, b = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
      const predictor = [0, a, b, (a + b) >> 1, paeth(a, b, c)][f];
      out.push((x - predictor) & 255);
    });
    prev = row;
  });
  return out;
}

/** The pixel data a PNG stores for `s`: every pass of Adam7 when interlaced, each filtered. */
function rawData(s: Samples, interlaced: boolean, filterOf: (y: number) => number): Uint8Array {
  const ch = CHANNELS[s.colorType];
  const bpp = Math.max(1, (ch * s.depth) >> 3);
  const passes = interlaced ? ADAM7 : [[0, 0, 1, 1]];
  const out: number[] = [];
  for (const [x0, y0, dx, dy] of passes) {
    const rows: number[][] = [];
    for (let y = y0; y < s.height; y += dy) {
      const values: number[] = [];
      for (let x = x0; x < s.width; x += dx) {
        values.push(...s.values.slice((y * s.width + x) * ch, (y * s.width + x + 1) * ch));
      }
      if (values.length > 0) rows.push(packRow(values, s.depth));
    }
    if (rows.length > 0) out.push(...filterRows(rows, bpp, filterOf));
  }
  return new Uint8Array(out);
}

/** A PNG of `s`. */
function encode(
  s: Samples,
  interlaced: boolean,
  filterOf: (y: number) => number,
  palette?: number[],
): Uint8Array {
  const header = { width: s.width, height: s.height, depth: s.depth, colorType: s.colorType };
  return pngFile(
    { ...header, interlace: interlaced },
    zlibSync(rawData(s, interlaced, filterOf)),
    palette,
  );
}

/**
 * What `s` must decode to (lib/data/_png.ts, docs/data.md): grey repeated (1, 2, 4 bits scaled
 * to 0–255), alpha dropped, 16-bit samples' high bytes, palette indices looked up in the
 * palette's whole colours, black past them.
 */
function expectedRgb(s: Samples, palette: number[] = []): number[] {
  const ch = CHANNELS[s.colorType];
  const eight = (v: number) =>
    s.depth === 16 ? v >> 8 : s.depth < 8 ? Math.round((v * 255) / (2 ** s.depth - 1)) : v;
  const out: number[] = [];
  for (let p = 0; p < s.width * s.height; p++) {
    const v = s.values.slice(p * ch, (p + 1) * ch);
    if (s.colorType === 3) {
      const whole = 3 * v[0] + 3 <= palette.length;
      out.push(...(whole ? palette.slice(3 * v[0], 3 * v[0] + 3) : [0, 0, 0]));
    } else if (ch <= 2) out.push(eight(v[0]), eight(v[0]), eight(v[0]));
    else out.push(eight(v[0]), eight(v[1]), eight(v[2]));
  }
  return out;
}

Deno.test("every filter type, bit depth and colour type, Adam7 or not, odd sizes: the pixels encoded", () => {
  const rng = createRng(20261207);
  const sizes = [[1, 1], [2, 1], [1, 3], [3, 2], [5, 7], [7, 5], [8, 8], [9, 13], [17, 3]];
  const filters = [0, 1, 2, 3, 4].map((f): [string, (y: number) => number] => [`${f}`, () => f]);
  filters.push(["y % 5", (y) => y % 5], ["random", () => rng.int(5)]);
  let decoded = 0;
  for (const colorType of [0, 2, 3, 4, 6]) {
    for (const depth of DEPTHS[colorType]) {
      const palette = Array.from({ length: 3 * 2 ** depth }, () => rng.int(256));
      for (const [width, height] of sizes) {
        for (const interlaced of [false, true]) {
          for (const [fname, filterOf] of filters) {
            const s = randomSamples(rng, width, height, colorType, depth);
            const png = encode(s, interlaced, filterOf, colorType === 3 ? palette : undefined);
            const what = `colour type ${colorType}, ${depth} bits, ${width}×${height}, ` +
              `${interlaced ? "Adam7" : "not interlaced"}, filters ${fname}`;
            const img = decodePng(png, "x.png");
            assert.deepEqual([img.width, img.height, img.channels], [width, height, 3], what);
            assert.deepEqual(Array.from(img.data), expectedRgb(s, palette), what);
            decoded++;
          }
        }
      }
    }
  }
  assert.equal(decoded, 15 * 9 * 2 * 7);
});

Deno.test("a 3×2 Adam7 image, worked out by hand: four passes hold pixels, three are empty", () => {
  // 8-bit grey. Pass 1: (0,0); pass 2 (x from 4), 3 (y from 4), 5 (y from 2): empty, nothing
  // stored; pass 4: (2,0); pass 6: (1,0); pass 7: row 1. Pass 7 filtered with Sub.
  const raw = new Uint8Array([
    0,
    10,
    /* pass 4 */ 0,
    30,
    /* pass 6 */ 0,
    20,
    /* 7 */ 1,
    40,
    10,
    10,
  ]);
  const png = pngFile(
    { width: 3, height: 2, depth: 8, colorType: 0, interlace: true },
    zlibSync(raw),
  );
  const img = decodePng(png, "adam7.png");
  assert.deepEqual(Array.from(img.data).filter((_, i) => i % 3 === 0), [10, 20, 30, 40, 50, 60]);
});

Deno.test("PNGs pngjs writes (its own filters, adaptive and each type) decode to their pixels", () => {
  const rng = createRng(7);
  for (const colorType of [0, 2, 4, 6]) {
    for (const bitDepth of [8, 16] as const) {
      for (const filterType of [-1, 0, 1, 2, 3, 4]) {
        const [width, height] = [23, 11];
        const s = randomSamples(rng, width, height, colorType, bitDepth);
        const png = new PNG({ width, height, colorType, inputColorType: colorType, bitDepth });
        const data = bitDepth === 16
          ? Buffer.from(new Uint16Array(s.values).buffer)
          : Buffer.from(new Uint8Array(s.values));
        png.data = data;
        const bytes = PNG.sync.write(png, {
          colorType,
          inputColorType: colorType,
          inputHasAlpha: colorType >= 4,
          bitDepth,
          filterType,
        });
        const what = `colour type ${colorType}, ${bitDepth} bits, pngjs filterType ${filterType}`;
        assert.deepEqual([bytes[24], bytes[25]], [bitDepth, colorType], what); // IHDR as asked
        assert.deepEqual(Array.from(decodePng(bytes, "pngjs.png").data), expectedRgb(s), what);
      }
    }
  }
});

Deno.test("unfilterRow: Sub, Average and Paeth reach back one whole pixel; Average and Paeth use unreduced sums", () => {
  // 16-bit RGBA: a pixel is 8 bytes. Sub adds the byte 8 back; the first 8 have zeros there.
  const sub = new Uint8Array([1, ...[1, 2, 3, 4, 5, 6, 7, 8], ...[1, 1, 1, 1, 1, 1, 1, 255]]);
  assert.ok(unfilterRow(sub, 0, -1, 16, 8));
  assert.deepEqual(Array.from(sub.subarray(1)), [1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 5, 6, 7, 8, 7]);
  // Average, 1 byte a pixel: ⌊(200 + 200) / 2⌋ = 200, not (400 mod 256) / 2.
  const avg = new Uint8Array([0, 200, 200, /* row 2 */ 3, 100, 0]);
  assert.ok(unfilterRow(avg, 3, 0, 2, 1));
  assert.deepEqual(Array.from(avg.subarray(4)), [200, 200]); // 100 + ⌊(0 + 200)/2⌋; 0 + 200
  // Paeth, 8-bit RGB (3 bytes a pixel). The row above: 50 60 70 | 11 20 20; the row, filtered:
  // 50 60 70 | 8 5 5. Its first pixel has zeros to its left: the predictor is the byte above.
  const paethRows = new Uint8Array([0, 50, 60, 70, 11, 20, 20, 4, 50, 60, 70, 8, 5, 5]);
  assert.ok(unfilterRow(paethRows, 7, 0, 6, 3));
  // Second pixel: left 100 120 140 (just unfiltered), above 11 20 20, upper left 50 60 70.
  // Byte 1: p = 100 + 11 − 50 = 61, distances 39, 50, 11 → upper left: 8 + 50 = 58.
  // Byte 2: p = 80 → 40, 60, 20 → 60 + 5; byte 3: p = 90 → 50, 70, 20 → 70 + 5.
  assert.deepEqual(Array.from(paethRows.subarray(8)), [100, 120, 140, 58, 65, 75]);
  // paeth(a, b, c) through unfilterRow, 1 byte a pixel: the row above is c b; the row's first
  // byte unfilters to a (Paeth's predictor there is the byte above, c), its second to
  // 0 + paeth(a, b, c).
  const predict = (a: number, b: number, c: number) => {
    const rows = new Uint8Array([0, c, b, 4, a - c, 0]);
    assert.ok(unfilterRow(rows, 3, 0, 2, 1));
    assert.equal(rows[4], a);
    return rows[5];
  };
  assert.equal(predict(10, 20, 15), 15); // p = 15: distances 5, 5, 0 → upper left
  assert.equal(predict(10, 25, 20), 10); // p = 15: 5, 10, 5 → left, the tie with upper left
  assert.equal(predict(25, 10, 20), 10); // p = 15: 10, 5, 5 → above, the tie with upper left
  assert.equal(predict(200, 250, 10), 250); // p = 440 (not reduced mod 256): 240, 190, 430
  // Sub below 8 bits a pixel: the byte before (1 byte back), whatever the samples in it.
  const bits = new Uint8Array([1, 0x0f, 0xf0]);
  assert.ok(unfilterRow(bits, 0, -1, 2, 1));
  assert.deepEqual(Array.from(bits.subarray(1)), [0x0f, 0xff]);
  // Up and Paeth on a pass's first row: the row above reads as zeros.
  const first = new Uint8Array([2, 9, 9]);
  assert.ok(unfilterRow(first, 0, -1, 2, 1));
  assert.deepEqual(Array.from(first), [2, 9, 9]);
  const firstPaeth = new Uint8Array([4, 9, 9]);
  assert.ok(unfilterRow(firstPaeth, 0, -1, 2, 1));
  assert.deepEqual(Array.from(firstPaeth), [4, 9, 18]); // the byte to the left, as Sub
  // A filter type other than 0–4 changes nothing and says so.
  const bad = new Uint8Array([5, 1, 2]);
  assert.equal(unfilterRow(bad, 0, -1, 2, 1), false);
  assert.deepEqual(Array.from(bad), [5, 1, 2]);
});

Deno.test("grey of 1, 2, 4 bits is scaled to 0–255; 16-bit samples keep their high byte", () => {
  const cases: [number, number[], number[]][] = [
    [1, [0, 1], [0, 255]],
    [2, [0, 1, 2, 3], [0, 85, 170, 255]],
    [4, [0, 1, 7, 15], [0, 17, 119, 255]],
    [16, [0, 255, 256, 1000, 40000, 65535], [0, 0, 1, 3, 156, 255]],
  ];
  for (const [depth, values, want] of cases) {
    const s = { width: values.length, height: 1, colorType: 0, depth, values };
    const img = decodePng(encode(s, false, () => 1), `grey${depth}.png`);
    assert.deepEqual(Array.from(img.data).filter((_, i) => i % 3 === 0), want, `${depth} bits`);
  }
  const rgb16 = { width: 1, height: 1, colorType: 2, depth: 16, values: [0x1234, 0xabcd, 0x00ff] };
  assert.deepEqual(Array.from(decodePng(encode(rgb16, false, () => 0), "rgb16.png").data), [
    0x12,
    0xab,
    0,
  ]);
});

Deno.test("palettes: indices past the palette, a partial last colour and an empty palette read black", () => {
  const s = { width: 4, height: 1, colorType: 3, depth: 2, values: [0, 1, 2, 3] };
  // 2 whole colours and 1 byte of a third: indices 2 and 3 are black.
  const img = decodePng(encode(s, false, () => 0, [10, 20, 30, 40, 50, 60, 70]), "short.png");
  assert.deepEqual(Array.from(img.data), [10, 20, 30, 40, 50, 60, 0, 0, 0, 0, 0, 0]);
  const s8 = { width: 3, height: 1, colorType: 3, depth: 8, values: [0, 255, 1] };
  const img8 = decodePng(encode(s8, false, () => 2, [1, 2, 3, 4, 5, 6]), "index255.png");
  assert.deepEqual(Array.from(img8.data), [1, 2, 3, 0, 0, 0, 4, 5, 6]);
  const empty = decodePng(encode(s, true, () => 4, []), "empty.png");
  assert.deepEqual(Array.from(empty.data), new Array(12).fill(0));
});

Deno.test("a bad filter-type byte is refused, naming the file, the row and the pass", () => {
  const s = randomSamples(createRng(3), 6, 4, 2, 8);
  const raw = rawData(s, false, () => 1);
  raw[2 * 19] = 5; // the third row's filter-type byte (19 bytes a row)
  const png = pngFile({ width: 6, height: 4, depth: 8, colorType: 2 }, zlibSync(raw));
  assert.throws(
    () => decodePng(png, "bad.png"),
    /^Error: bad\.png is not a readable PNG \(its row 3 has filter type 5, not one of the five, 0–4\); replace or remove it$/,
  );
  const rawI = rawData(s, true, () => 3);
  rawI[rawI.length - 19] = 255; // the second (last) row of Adam7 pass 7: 19 bytes a row
  const pngI = pngFile(
    { width: 6, height: 4, depth: 8, colorType: 2, interlace: true },
    zlibSync(rawI),
  );
  assert.throws(
    () => decodePng(pngI, "badi.png"),
    /^Error: badi\.png is not a readable PNG \(its row 2 of Adam7 pass 7 has filter type 255, .*\); replace or remove it$/,
  );
});

Deno.test("pixel data short of the last row is refused, Adam7 or not", () => {
  const s = randomSamples(createRng(4), 5, 5, 0, 4);
  for (const interlaced of [false, true]) {
    const raw = rawData(s, interlaced, (y) => y % 5);
    const png = pngFile(
      { width: 5, height: 5, depth: 4, colorType: 0, interlace: interlaced },
      zlibSync(raw.subarray(0, raw.length - 1)),
    );
    assert.throws(
      () => decodePng(png, "short.png"),
      new RegExp(
        `^Error: short\\.png is truncated: its pixel data inflates to ${raw.length - 1} of the ` +
          `${raw.length} bytes its 5×5 header declares.*; replace or re-export the image$`,
      ),
    );
  }
});

Deno.test("rows wider than Pillow reads are refused before anything is inflated", () => {
  // Pillow 12.3 refuses (MemoryError) more than ⌊(2³¹ − 1) / bits⌋ − 7 pixels a row: 33,554,424
  // of 16-bit RGBA, 2,147,483,640 of 1-bit grey. The IDAT here holds next to nothing.
  const idat = zlibSync(new Uint8Array(16));
  const rgba = pngFile({ width: 33_554_425, height: 1, depth: 16, colorType: 6 }, idat);
  assert.throws(
    () => decodePng(rgba, "wide.png"),
    /^Error: wide\.png is not a readable PNG \(its rows of 33554425 pixels of 64 bits are wider than Pillow reads, 33554424 pixels\); replace or remove it$/,
  );
  const grey = pngFile(
    { width: 2_147_483_641, height: 1, depth: 1, colorType: 0, interlace: true },
    idat,
  );
  assert.throws(
    () => decodePng(grey, "wide1.png", { maxPixels: Infinity }),
    /wider than Pillow reads, 2147483640 pixels/,
  );
  // One pixel narrower: not refused for its width (here: for its short pixel data).
  const ok = pngFile({ width: 33_554_424, height: 1, depth: 16, colorType: 6 }, idat);
  assert.throws(
    () => decodePng(ok, "narrower.png"),
    /is truncated: its pixel data inflates to 16 of/,
  );
});

Deno.test("decoding leaves the file's bytes as they were (rows are unfiltered in a copy)", () => {
  const s = randomSamples(createRng(5), 9, 7, 6, 8);
  const raw = rawData(s, true, (y) => 1 + (y % 4));
  // Stored deflate blocks (level 0): the pixel data sits in the file as it is inflated.
  const png = pngFile(
    { width: 9, height: 7, depth: 8, colorType: 6, interlace: true },
    zlibSync(raw, { level: 0 }),
  );
  const before = png.slice();
  const first = decodePng(png, "a.png").data;
  assert.deepEqual(png, before);
  assert.deepEqual(decodePng(png, "a.png").data, first);
  assert.deepEqual(Array.from(first), expectedRgb(s));
});
