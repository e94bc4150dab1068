import assert from "node:assert/strict";
import { join } from "node:path";
import { readNpz } from "../lib/data/npy.ts";
import { zlibSync } from "fflate";
import { decodePng } from "../lib/data/image.ts";
import { concat, pngChunk, rgbRows } from "./helpers/crafted_inputs.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

// png_pil_decode.npz (tests/fixtures/png_make_fixtures.py, which says how each file was made):
// every PNG kind (colour types 0, 2, 3, 4, 6 at every legal depth, Adam7 or not, every filter
// type, short palettes, tRNS, ancillary chunks, split IDAT) and damaged files, with the pixels
// Pillow 12.3.0 decodes them to (16-bit grey: their high bytes, docs/data.md). A file stored
// without pixels is refused by Pillow, or (short_*, nopal_*) decoded by Pillow and refused here.
const fixture = readNpz(join(FIXTURES, "png_pil_decode.npz"));

/** The fixture's case names. */
async function names(): Promise<string[]> {
  return Object.keys(await fixture).filter((k) => k.endsWith("_png")).map((k) => k.slice(0, -4));
}

Deno.test("every PNG kind and the damaged files Pillow decodes decode to Pillow's pixels", async () => {
  const f = await fixture;
  const decodable = (await names()).filter((n) => `${n}_rgb` in f);
  assert.ok(decodable.length >= 120, `${decodable.length} cases`);
  for (const name of decodable) {
    const want = f[`${name}_rgb`];
    const img = decodePng(f[`${name}_png`].data as Uint8Array, `${name}.png`);
    assert.deepEqual([img.height, img.width, img.channels], want.shape, name);
    const pil = want.data as Uint8Array;
    const differ = pil.reduce((n, v, i) => n + (img.data[i] !== v ? 1 : 0), 0);
    assert.equal(differ, 0, `${name}: ${differ} of ${pil.length} values differ`);
  }
});

// When pngjs read these files itself (before lib/data/_png.ts checked and decoded them), each
// was refused (pngjs: bad CRC, content after IEND or after the zlib stream, unknown critical
// chunk, palette index past the palette, ...) or, for tRNS on grey or RGB, decoded with its
// transparent pixels black.
Deno.test("damaged PNGs that Pillow decodes are decoded, to its pixels", async () => {
  const f = await fixture;
  for (
    const name of [
      "crc_idat",
      "crc_iend",
      "crc_text_after",
      "no_iend",
      "cut_in_iend",
      "junk_after_iend",
      "cut_adler",
      "zlib_trailing",
      "more_rows",
      "unknown_critical",
      "compression_1",
      "interlace_2",
      "ihdr_14",
      "pal_past_end",
      "pal_partial",
      "trns_idle_grey",
      "trns_grey8",
      "trns_rgb8",
      "trns_grey2",
    ]
  ) {
    assert.ok(`${name}_rgb` in f, name);
    const img = decodePng(f[`${name}_png`].data as Uint8Array, `${name}.png`);
    assert.deepEqual(img.data, f[`${name}_rgb`].data, name);
  }
});

Deno.test("damaged PNGs are refused with an Error naming the file and a fix", async () => {
  const f = await fixture;
  const want: Record<string, RegExp> = {
    crc_ihdr: /its "IHDR" chunk fails its CRC check/,
    crc_gama: /its "gAMA" chunk fails its CRC check/,
    bad_adler: /corrupt pixel data: incorrect data check/,
    bad_filter: /not a readable PNG \(.*filter/i,
    zlib_broken: /corrupt pixel data/,
    cut_in_idat: /is truncated: its pixel data inflates to 0 of the 110 bytes/,
    chunk_past_eof_after: /the file ends inside its "tEXt" chunk after the pixel data/,
    plte_too_long: /its palette \(PLTE\) holds 1024 bytes, more than 256 colours/,
    trns_short_rgb: /its tRNS chunk holds 2 bytes, too few for colour type 2/,
    depth_4_rgb: /bit depth 4 is not allowed for colour type 2/,
    short_rows:
      /is truncated: its pixel data inflates to 44 of the 110 bytes its 7×5 header declares \(2 of 5 rows\)/,
    nopal_index: /a palette image without its palette \(PLTE\)/,
  };
  const refused = (await names()).filter((n) => !(`${n}_rgb` in f));
  assert.deepEqual(refused.sort(), Object.keys(want).sort());
  for (const name of refused) {
    let err: unknown;
    try {
      decodePng(f[`${name}_png`].data as Uint8Array, `${name}.png`);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof Error, name);
    assert.match(err.message, new RegExp(`^${name}\\.png `), name);
    assert.match(err.message, /replace or (remove|re-export)/, name);
    assert.match(err.message, want[name], name);
  }
});

/** An 8-bit RGB PNG of `width`×`height` with `chunks` (type, data) between IHDR and IEND. */
function pngOf(width: number, height: number, chunks: [string, Uint8Array][]): Uint8Array {
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, width);
  new DataView(ihdr.buffer).setUint32(4, height);
  ihdr.set([8, 2], 8);
  return concat([
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", ihdr),
    ...chunks.map(([type, data]) => pngChunk(type, data)),
    pngChunk("IEND", new Uint8Array(0)),
  ]);
}

// Measured with Pillow 12.3 on files of the fuzz run (docs/data.md): a chunk type of other than
// letters, digits or "_" before the pixel data makes Pillow refuse the file ("broken PNG file",
// then "cannot identify image file"); after the pixel data it stops Pillow's reading there.
Deno.test("a PNG chunk type other than 4 letters or digits is refused before the pixel data", () => {
  const rows = rgbRows(2, 2);
  const gama = new Uint8Array([0, 0, 0xb1, 0x8f]);
  const bad = pngOf(2, 2, [["g'MA", gama], ["IDAT", zlibSync(rows)]]);
  assert.throws(
    () => decodePng(bad, "type.png"),
    /^Error: type\.png is not a readable PNG \(a chunk type that is not 4 letters or digits \("g'MA"\)\)/,
  );
  const after = pngOf(2, 2, [["IDAT", zlibSync(rows)], ["t:XT", gama]]);
  assert.deepEqual(
    decodePng(after, "after.png").data,
    decodePng(pngOf(2, 2, [["IDAT", zlibSync(rows)]]), "ok.png").data,
  );
});

// Pillow feeds its decoder the IDAT chunks one by one and stops once it has every row; it then
// skips each IDAT chunk left by its length, and refuses the file ("Truncated File Read") where
// the file ends inside one's data — not where it ends inside its CRC (measured with Pillow 12.3).
Deno.test("an IDAT chunk cut after the pixel data is complete is refused; one cut in its CRC is not", () => {
  const z = zlibSync(rgbRows(2, 2));
  const split = [z.subarray(0, z.length - 6), z.subarray(z.length - 6, z.length - 4)];
  // The stream's rows end in the second chunk; its checksum (4 bytes) is in the third.
  const full = pngOf(2, 2, [["IDAT", split[0]], ["IDAT", split[1]], ["IDAT", z.subarray(-4)]]);
  const whole = decodePng(full, "whole.png").data;
  const withoutIend = full.subarray(0, full.length - 12);
  // The third chunk's CRC cut: decoded, as Pillow decodes it.
  assert.deepEqual(
    decodePng(withoutIend.subarray(0, withoutIend.length - 2), "crc.png").data,
    whole,
  );
  // An unneeded fourth chunk whose data is cut: refused, as Pillow refuses it.
  const extra = concat([withoutIend, pngChunk("IDAT", new Uint8Array(40)).subarray(0, 30)]);
  assert.throws(
    () => decodePng(extra, "extra.png"),
    /^Error: extra\.png is truncated: the file ends inside an IDAT chunk after the one where its pixel data is complete/,
  );
});
