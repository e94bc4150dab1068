import assert from "node:assert/strict";
import { join } from "node:path";
import { readNpz } from "../lib/data/npy.ts";
import { decodePng } from "../lib/data/image.ts";

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

// Before lib/data/image.ts rewrote each file for pngjs, each of these was refused (pngjs: bad
// CRC, content after IEND or after the zlib stream, unknown critical chunk, palette index past
// the palette, ...) or, for tRNS on grey or RGB, decoded with its transparent pixels black.
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
