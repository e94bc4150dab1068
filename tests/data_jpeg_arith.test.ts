import assert from "node:assert/strict";
import { join } from "node:path";
import { readNpz } from "../lib/data/npy.ts";
import { decodeJpeg, type Image8 } from "../lib/data/image.ts";
import { decodeArithmetic } from "../lib/data/_jpeg_arith.ts";
import { concat } from "./helpers/crafted_inputs.ts";
import { maxAbsDiff } from "./helpers/numeric.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

// jpeg_pil_decode_arith.npz (tests/fixtures/jpeg_make_arith_fixtures.py, which says how each file
// was made): arithmetic-coded JPEGs from jpegtran 2.1.5 and from the script's own encoder, and the
// pixels Pillow 12.3.0 (libjpeg-turbo 3.1.4.1) decodes them to. Before lib/data/_jpeg_arith.ts
// every one of them was refused ("arithmetic-coded JPEG … which this decoder does not read").
const fixture = readNpz(join(FIXTURES, "jpeg_pil_decode_arith.npz"));

/** The fixture's `<name>_jpg`, decoded as `<name>.jpg`. */
async function decoded(name: string): Promise<Image8> {
  const f = await fixture;
  return decodeJpeg(f[`${name}_jpg`].data as Uint8Array, `${name}.jpg`);
}

/** Each fixture file decodes to Pillow's pixels (`pixels`: the case they are stored under). */
async function assertLikePillow(names: string[], pixels = (name: string) => name) {
  const f = await fixture;
  for (const name of names) {
    const want = f[`${pixels(name)}_rgb`];
    const img = await decoded(name);
    assert.deepEqual([img.height, img.width, img.channels], want.shape, name);
    const pil = want.data as Uint8Array;
    const differ = pil.reduce((n, v, i) => n + (img.data[i] !== v ? 1 : 0), 0);
    assert.equal(differ, 0, `${name}: ${differ} values differ, max ${maxAbsDiff(img.data, pil)}`);
  }
}

Deno.test("arithmetic-coded JPEGs decode exactly as Pillow does: sequential, progressive, restart intervals", async () => {
  await assertLikePillow([
    "seq_s420_33x21",
    "seq_s422_24x13",
    "seq_s444_17x12",
    "seq_grey_19x14",
    "seq_cmyk_14x11",
    "seq_scans_s420_30x18",
    "prog_s420_21x20",
    "prog_scans_s420_34x22",
    "rst_s420_35x21",
    "rst_prog_44x6",
    "rst_grey_16x41",
  ]);
});

// libjpeg-turbo's arithmetic decoder never reports data running short (`insufficient_data`), so
// its block smoothing counts every iMCU row as decoded whole, cut or not. Measured: counting the
// rows after the cut as the Huffman decoder does (from the first row, when EOI was met) differs
// from Pillow on 269 values of prog_first3 and 168 of prog_cutmid.
Deno.test("progressive arithmetic-coded JPEGs whose scans stop short are smoothed as libjpeg-turbo does", async () => {
  await assertLikePillow(["prog_first1_21x20", "prog_first3_21x20", "prog_cutmid_21x20"]);
});

// Each damaged file differs from Pillow when the decoder is changed to go on after a bad code (a
// magnitude past 2^15: rst_dcmag 128 values, own_acmag 192; a zero run past the band: badcode
// 1013, badcode_prog 1017), to refine a coefficient only where its bit is not yet set, as the
// Huffman decoder does (prog_refine_twice: 475), or to read the bytes after a marker (9 of the 11).
Deno.test("damaged arithmetic-coded data decodes as libjpeg-turbo decodes it", async () => {
  await assertLikePillow([
    "cut_s420_24x16",
    "noeoi_zeros_s420_24x16",
    "rst_lost_32x16",
    "rst_swapped_32x16",
    "rst_marker_32x16",
    "rst_badcode_32x16",
    "rst_dcmag_32x16",
    "badcode_s420_24x16",
    "badcode_prog_21x20",
    "prog_refine_twice_21x20",
    "own_acmag_s444_16x16",
  ]);
  // The 4th restart interval (an MCU of 8 × 8 pixels, 4:4:4) stops at its first DC magnitude: its
  // three blocks stay zero, mid-grey; the MCUs before and after it decode.
  const img = await decoded("rst_dcmag_32x16");
  for (let y = 0; y < 8; y++) {
    for (let x = 24; x < 32; x++) {
      const at = (y * 32 + x) * 3;
      assert.deepEqual(Array.from(img.data.subarray(at, at + 3)), [128, 128, 128], `(${x}, ${y})`);
    }
  }
  assert.notDeepEqual(Array.from(img.data.subarray(0, 3)), [128, 128, 128]);
  // The decoding reads past the end of a file lacking its EOI (and the data's trailing zeros,
  // which the encoder leaves out): Pillow refuses it.
  const f = await fixture;
  assert.throws(
    () => decodeJpeg(f.noeoi_s420_24x16_refused_jpg.data as Uint8Array, "noeoi.jpg"),
    /^Error: noeoi\.jpg is not a readable JPEG \(cut short: the decoding of its 1st scan reads past the end of the file, which Pillow refuses\); replace or remove it$/,
  );
});

// The own_* files are coded with conditioning of their own (DC bounds L, U of 2, 5; 0, 0; 1, 2;
// 3, 4; and, in tables 5 and 7, 3, 15 and 1, 1; Kx 1, 3, 12, 20, 40, 62) by the fixture
// script's encoder, whose files Pillow decodes as their Huffman-coded twins; the dac_* files are
// jpegtran's with their DAC segment rewritten (Kx 0, 63, 255; L = U = 3), decoded with statistics
// they were not coded with. Measured: ignoring the DAC's L, U or Kx (the defaults in their place)
// makes 2 to 5 of these files differ, by 112 to 2286 values each.
Deno.test("arithmetic coding conditioning (DAC): DC bounds L and U, AC Kx, tables 0–15, as Pillow", async () => {
  await assertLikePillow([
    "own_lu_s420_32x24",
    "own_tables_s444_24x16",
    "own_rst_s422_32x16",
    "dac_recoded_32x16",
    "dac_k63_32x16",
  ]);
});

// Pillow hands libjpeg a file 64 KiB at a time, a piece more each time libjpeg suspends for want of
// data; libjpeg-turbo's arithmetic decoder cannot suspend (jdarith.c: JERR_CANT_SUSPEND), so Pillow
// refuses a file where a scan's decoding reads past the pieces read when its header was
// ("broken data stream"). The decoder reads such files whole, as libjpeg does when it is handed the
// whole file (djpeg). The fixture moves a scan header to 10 bytes before 65536 (Pillow refuses) or
// after it (Pillow decodes), and to the last offset where Pillow decodes the file and the next one;
// every one of them decodes to the pixels of the file without the padding (for the ones Pillow
// refuses, djpeg's).
Deno.test("arithmetic-coded JPEGs decode whole, also where Pillow's 64 KiB reads make it refuse them", async () => {
  await assertLikePillow(
    [
      "read64k_seq_s420_33x21",
      "read64k_prog_s420_21x20",
      "read64k_edge_seq_s420_33x21",
      "read64k_seq_s420_33x21_pillow_refuses",
      "read64k_prog_s420_21x20_pillow_refuses",
      "read64k_edge_seq_s420_33x21_pillow_refuses",
    ],
    // Pillow's pixels of the file without the padding; djpeg's, stored, for those Pillow refuses.
    (name) => name.endsWith("_pillow_refuses") ? name : name.replace(/^read64k_(edge_)?/, ""),
  );
  const f = await fixture;
  for (const name of ["seq_s420_33x21", "prog_s420_21x20", "edge_seq_s420_33x21"]) {
    const refused = f[`read64k_${name}_pillow_refuses_jpg`].data as Uint8Array;
    assert.ok(refused.length > 65536, `${name}: the padded file runs past 64 KiB`);
  }
});

/** `bytes` with `segment` inserted before its first scan header. */
function beforeScan(bytes: Uint8Array, segment: number[]): Uint8Array {
  let p = 2;
  while (!(bytes[p] === 0xff && bytes[p + 1] === 0xda)) p++;
  return concat([bytes.subarray(0, p), new Uint8Array(segment), bytes.subarray(p)]);
}

/** `bytes` without its DAC segments. */
function withoutDac(bytes: Uint8Array): Uint8Array {
  let p = 2;
  while (!(bytes[p] === 0xff && bytes[p + 1] === 0xcc)) p++;
  return concat([
    bytes.subarray(0, p),
    bytes.subarray(p + 2 + ((bytes[p + 2] << 8) | bytes[p + 3])),
  ]);
}

// get_dac's refusals (JERR_DAC_INDEX, JERR_DAC_VALUE, JERR_BAD_LENGTH), in arithmetic-coded and in
// Huffman-coded files alike (libjpeg reads a DAC segment in any file); Pillow 12.3 refused each of
// these files ("broken data stream"), and decoded the last two (a table index of 31, Kx = 0).
Deno.test("DAC segments libjpeg refuses are refused, naming the file, in any JPEG", async () => {
  const f = await fixture;
  const arith = withoutDac(f.seq_s420_33x21_jpg.data as Uint8Array);
  const huffman = (await readNpz(join(FIXTURES, "jpeg_pil_decode.npz"))).s420_17x13_jpg
    .data as Uint8Array;
  const dac = (...body: number[]) => [0xff, 0xcc, 0, body.length + 2, ...body];
  const cases: [number[], RegExp][] = [
    [
      dac(32, 5),
      /defines conditioning table 2\/0 \(class\/number; libjpeg reads 0\/0–15 for DC and 1\/0–15 for AC\)/,
    ],
    [
      dac(16, 5, 3, 0x12),
      /gives DC conditioning table 3 a lower bound L = 2 above its upper bound U = 1/,
    ],
    [
      dac(0, 0x10, 1),
      /declares 5 bytes, which are not its 2-byte length and whole \(table, value\) pairs/,
    ],
    [[0xff, 0xcc, 0, 0], /declares 0 bytes, which are not its 2-byte length/],
  ];
  for (const [segment, message] of cases) {
    for (const [kind, bytes] of [["arith", arith], ["huffman", huffman]] as const) {
      assert.throws(() => decodeJpeg(beforeScan(bytes, segment), `${kind}.jpg`), (err: Error) => {
        assert.match(
          err.message,
          new RegExp(
            `^${kind}\\.jpg has a DAC \\(arithmetic coding conditioning\\) segment at byte \\d+ that `,
          ),
        );
        assert.match(err.message, message);
        assert.match(
          err.message,
          /which libjpeg \(and so Pillow\) refuses: .* replace or remove it$/,
        );
        return true;
      });
    }
  }
  // Accepted: table index 31 (AC table 15, unused) and an AC table's Kx of 0, outside T.81's 1–63
  // (libjpeg-turbo does not check it); the file without its DAC segment decodes with the defaults,
  // which jpegtran's segment held.
  const want = f.seq_s420_33x21_rgb.data as Uint8Array;
  for (const bytes of [arith, beforeScan(arith, dac(31, 5, 30, 0, 16, 5, 17, 5))]) {
    assert.equal(maxAbsDiff(decodeJpeg(bytes, "ok.jpg").data, want), 0);
  }
  assert.equal(
    maxAbsDiff(
      decodeJpeg(beforeScan(huffman, dac(16, 0)), "h.jpg").data,
      decodeJpeg(huffman, "h.jpg").data,
    ),
    0,
  );
});

Deno.test("lossless and hierarchical arithmetic-coded JPEGs (SOF11, SOF13–15) are still refused", async () => {
  const f = await fixture;
  const good = f.seq_s420_33x21_jpg.data as Uint8Array;
  let p = 2;
  while (!(good[p] === 0xff && good[p + 1] === 0xc9)) p++;
  const cases: [number, string][] = [
    [0xcb, "lossless arithmetic-coded"],
    [0xcd, "hierarchical arithmetic-coded"],
    [0xcf, "hierarchical arithmetic-coded"],
    [0xc3, "lossless"],
    [0xc5, "hierarchical"],
  ];
  for (const [marker, kind] of cases) {
    const bytes = good.slice();
    bytes[p + 1] = marker;
    const hex = marker.toString(16).toUpperCase();
    assert.throws(
      () => decodeJpeg(bytes, "sof.jpg"),
      new RegExp(
        `^Error: sof\\.jpg is a ${kind} JPEG \\(frame marker 0xFF${hex}\\), which this decoder ` +
          `does not read \\(baseline, extended and progressive JPEGs, Huffman- or ` +
          `arithmetic-coded, only\\): re-encode the image$`,
      ),
    );
  }
  // The same bytes as SOF9, and as SOF10 (a progressive frame whose one scan covers Ss 0–63 is
  // refused as libjpeg refuses it: a DC scan with AC coefficients).
  assert.equal(decodeJpeg(good, "sof9.jpg").width, 33);
  const sof10 = good.slice();
  sof10[p + 1] = 0xca;
  assert.throws(
    () => decodeJpeg(sof10, "sof10.jpg"),
    /^Error: sof10\.jpg has a scan \(the 1st\) that mixes the DC coefficient with AC ones \(coefficients 0–63\)/,
  );
});

// Two grey blocks coded by the fixture script's encoder (`encode_dc`, `encode_ac`, default
// conditioning): DC 5, −3 at zigzag 2 and 1 at zigzag 63 (no end of block); then DC 5 again (a zero
// difference), 40 at zigzag 1 and −700 at zigzag 9 (magnitude bits past Kx's first bins).
Deno.test("decodeArithmetic: an encoder's two blocks come back; zeros read as QM decisions", () => {
  const frame = {
    width: 16,
    height: 8,
    progressive: false,
    sampling: [[1, 1]] as [number, number][],
  };
  const scan = {
    components: [0],
    ss: 0,
    se: 63,
    ah: 0,
    al: 0,
    restartInterval: 0,
    start: 0,
    dcTables: [0],
    acTables: [0],
    dcL: [0],
    dcU: [1],
    acK: [5],
  };
  const coded = new Uint8Array([
    0xce,
    0x0b,
    0x00,
    0xd0,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00,
    0x0c,
    0x59,
    0x3a,
    0xa1,
    0x71,
    0x18,
    0x9c,
    0xff,
    0xd9,
  ]);
  const { components: [c], stops: [stop] } = decodeArithmetic(coded, frame, [scan]);
  const want = new Int16Array(128);
  [want[0], want[8], want[63]] = [5, -3, 1]; // natural order: zigzag 2 is row 1, column 0
  [want[64], want[65], want[64 + 24]] = [5, 40, -700]; // zigzag 9 is row 3, column 0
  assert.deepEqual(c.coefficients, want);
  // It stopped at EOI, having read the marker for the zeros its last decisions needed.
  assert.deepEqual([stop.marker, stop.pos], [0xd9, coded.length]);
  // Fed zeros, the first block reads as empty: its DC decision falls in the lower part of the
  // interval, the more probable symbol 0 (no difference); the next one (AC table's first bin,
  // A = 0x10000 − 0x5A1D − 0x5A1D = 0x4BC6, below Qe) in the lower part too, which is then the
  // less probable symbol 1 (conditional exchange): end of block. Two bytes fill C; the second
  // block's first decision needs a third (renormalisation), and reads as 1, a DC difference.
  const zeros = new Uint8Array(16);
  const z = decodeArithmetic(zeros, frame, [scan]);
  assert.ok(z.components[0].coefficients.subarray(0, 64).every((v) => v === 0));
  assert.notEqual(z.components[0].coefficients[64], 0);
  assert.ok(z.stops[0].pos > 2);
});
