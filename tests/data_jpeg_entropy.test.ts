import assert from "node:assert/strict";
import { join } from "node:path";
import { readNpz } from "../lib/data/npy.ts";
import { decodeJpeg } from "../lib/data/image.ts";
import { decodeEntropy, type HuffmanTable, STANDARD_TABLES } from "../lib/data/_jpeg_entropy.ts";
import { maxAbsDiff } from "./helpers/numeric.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

// jpeg_pil_decode_entropy.npz (tests/fixtures/jpeg_make_fixtures.py): Pillow 12.3.0's pixels for
// files that jpeg-js, which decoded the entropy data before lib/data/_jpeg_entropy.ts, refused or
// read otherwise. Measured with jpeg-js: rst_prog_44x6 "invalid huffman sequence" and
// rst_grey_16x87 "unexpected marker" (a restart interval not dividing a non-interleaved scan's
// blocks, its MCU padding adding rows: 3 of 182 random Pillow files), nodht_s420_24x16 refused
// (no Huffman tables), cut_s420_24x16, rst_lost and rst_flipped refused, rst_swapped 255 off.
Deno.test("JPEG entropy decoding: restart intervals, missing tables and damaged data as Pillow", async () => {
  const f = await readNpz(join(FIXTURES, "jpeg_pil_decode_entropy.npz"));
  const names = [
    "rst_prog_44x6",
    "rst_grey_16x87",
    "nodht_s420_24x16",
    "cut_s420_24x16",
    "rst_lost_64x32",
    "rst_swapped_64x32",
    "rst_flipped_64x32",
    "rst_marker_64x32",
  ];
  for (const name of names) {
    const img = decodeJpeg(f[`${name}_jpg`].data as Uint8Array, `${name}.jpg`);
    const pil = f[`${name}_rgb`];
    assert.deepEqual([img.height, img.width, 3], pil.shape, name);
    assert.equal(maxAbsDiff(img.data, pil.data as Uint8Array), 0, name);
  }
  // The cut file's last MCUs read as mid-grey, as libjpeg leaves them.
  const cut = decodeJpeg(f.cut_s420_24x16_jpg.data as Uint8Array, "cut.jpg");
  assert.deepEqual(Array.from(cut.data.subarray(cut.data.length - 3)), [128, 128, 128]);
});

Deno.test("JPEG entropy decoding: what Pillow refuses is refused, naming the file", async () => {
  const f = await readNpz(join(FIXTURES, "jpeg_pil_decode_entropy.npz"));
  // A progressive file without its tables: libjpeg-turbo's progressive decoder has no standard
  // ones to stand in (Pillow: "broken data stream").
  assert.throws(
    () => decodeJpeg(f.nodht_prog_24x16_jpg.data as Uint8Array, "p.jpg"),
    /^Error: p\.jpg has a scan \(the 1st\) that decodes with Huffman table DC 0, which is not defined/,
  );
  // A marker libjpeg does not read (0xFF50), in the scan's last restart interval: libjpeg meets it
  // when it reads markers after the scan (in an earlier interval its resync skips it, above).
  assert.throws(
    () => decodeJpeg(f.rst_marker_last_64x32_jpg.data as Uint8Array, "m.jpg"),
    /^Error: m\.jpg has a marker 0xFF50 after the data of its 1st scan, which libjpeg \(and so Pillow\) refuses/,
  );
  const whole = f.nodht_s420_24x16_jpg.data as Uint8Array;
  // Cut short with no EOI marker: Pillow raises "image file is truncated".
  for (const end of [whole.length - 2, whole.length - 100]) {
    assert.throws(
      () => decodeJpeg(whole.subarray(0, end), "cut.jpg"),
      /^Error: cut\.jpg is not a readable JPEG \(cut short: no end-of-image marker after its scans/,
    );
  }
  // A second frame header (libjpeg: JERR_SOF_DUPLICATE).
  let p = 2;
  while (!(whole[p] === 0xff && whole[p + 1] === 0xc0)) p++;
  const sof = whole.subarray(p, p + 2 + ((whole[p + 2] << 8) | whole[p + 3]));
  const twice = new Uint8Array([...whole.subarray(0, p), ...sof, ...whole.subarray(p)]);
  assert.throws(
    () => decodeJpeg(twice, "sof2.jpg"),
    /^Error: sof2\.jpg has a frame header \(SOF\) segment at byte \d+ that is a second frame header, which libjpeg \(and so Pillow\) refuses/,
  );
});

/** A table giving `symbols` the codes 0, 1, 2, … of `bits` bits. */
function flatTable(bits: number, symbols: number[]): HuffmanTable {
  const counts = new Uint8Array(16);
  counts[bits - 1] = symbols.length;
  return { counts, symbols: new Uint8Array(symbols) };
}

/** One 8 × 8 grey block of a sequential scan decoding `data` with DC and AC tables. */
function oneBlock(data: number[], dc: HuffmanTable, ac: HuffmanTable): Int16Array {
  const { components: [c] } = decodeEntropy(
    new Uint8Array([...data, 0xff, 0xd9]),
    { width: 8, height: 8, progressive: false, sampling: [[1, 1]] },
    [{
      components: [0],
      ss: 0,
      se: 63,
      ah: 0,
      al: 0,
      restartInterval: 0,
      start: 0,
      dc: [dc],
      ac: [ac],
    }],
  );
  return c.coefficients;
}

Deno.test("JPEG entropy decoding: corrupt runs and codes as libjpeg reads them", () => {
  const dc = flatTable(1, [0]); // "0": DC difference 0
  // AC codes 00: 16 zeros (ZRL), 01: 15 zeros then a coefficient of 1 bit, 10: end of block.
  const ac = flatTable(2, [0xf0, 0xf1, 0x00]);
  // 0 | 00 00 00 | 01 1 | fill: three ZRLs reach coefficient 49, then a run of 15 goes past 63;
  // libjpeg stores the coefficient in the last position (jpeg-js wrote it to a property
  // "undefined"). Bits 0000 0000 | 11 + fill ones: 0x00, 0xFF (stuffed).
  const block = oneBlock([0x00, 0xff, 0x00], dc, ac);
  assert.equal(block[63], 1);
  assert.equal(block.reduce((a, b) => a + Math.abs(b), 0), 1);
  // A DC difference of 3 bits with the standard table (code 100 = 3 bits), value 101 = 5; then
  // the code 1111 1111 1111 1111 1 that no AC table holds: libjpeg reads the symbol 0 (end of
  // block) after 17 bits.
  const bad = oneBlock([0b10010111, 0xff, 0x00, 0xff, 0x00], STANDARD_TABLES.dc0, ac);
  assert.equal(bad[0], 5);
  assert.equal(bad.reduce((a, b) => a + Math.abs(b), 0), 5);
  // Data ending inside a DC value (code 1110: 6 bits, then 1111 and the end): the missing bits
  // read as zeros, 111100 = 60; the AC codes after them as zeros too (ZRLs past the end).
  const cut = oneBlock([0b11101111], STANDARD_TABLES.dc0, ac);
  assert.equal(cut[0], 60);
  assert.equal(cut.reduce((a, b) => a + Math.abs(b), 0), 60);
});

Deno.test("JPEG entropy decoding: a DC prediction past 32 bits wraps in a sequential scan, errs in a progressive one", () => {
  // Every block adds the largest DC difference, +32767 (1-bit code for category 15, its 15 one
  // bits), then ends (1-bit end of block in the sequential scan): after 65,538 blocks the
  // prediction passes 2^31 − 1. libjpeg-turbo's sequential decoder adds in a 32-bit int without
  // a check (Pillow 12.3 decodes such a 2048×2056 file), its progressive one errs.
  const blocks = 65540;
  const frame = (progressive: boolean) => ({
    width: 8,
    height: 8 * blocks,
    progressive,
    sampling: [[1, 1]] as [number, number][],
  });
  const one = (symbol: number): HuffmanTable => ({
    counts: new Uint8Array([1, ...Array(15).fill(0)]),
    symbols: new Uint8Array([symbol]),
  });
  const stream = (perBlock: string) => {
    let bits = perBlock.repeat(blocks);
    bits += "1".repeat(-bits.length % 8 + 8);
    const bytes: number[] = [];
    for (let i = 0; i + 8 <= bits.length; i += 8) {
      const b = parseInt(bits.slice(i, i + 8), 2);
      bytes.push(b);
      if (b === 0xff) bytes.push(0);
    }
    return new Uint8Array([...bytes, 0xff, 0xd9]);
  };
  const scan = { components: [0], ss: 0, ah: 0, al: 0, restartInterval: 0, start: 0 };
  const sequential = decodeEntropy(stream("0" + "1".repeat(15) + "0"), frame(false), [
    { ...scan, se: 63, dc: [one(15)], ac: [one(0)] },
  ]).components[0].coefficients;
  const dc = (n: number) => new Int16Array([(n * 32767) | 0])[0];
  for (const n of [1, 65537, 65538, 65539, blocks]) {
    assert.equal(sequential[(n - 1) * 64], dc(n), `block ${n}`);
  }
  assert.throws(
    () =>
      decodeEntropy(stream("0" + "1".repeat(15)), frame(true), [
        { ...scan, se: 0, dc: [one(15)], ac: [undefined] },
      ]),
    /DC coefficients run out of range/,
  );
});
