/**
 * PNG decoding as Pillow 12.3 reads a PNG (`Image.open(f).convert("RGB")`). Internal to
 * `./image.ts`, which re-exports `decodePng`.
 *
 * Two stages. `cleanPng` checks the chunks as Pillow does and inflates the pixel data (the first
 * run of IDAT chunks) only up to the bytes the header declares. The rows are then decoded here,
 * directly on those inflated bytes (no library, nothing inflated twice): each row's filter is
 * undone in place (`unfilterRow`: None, Sub, Up, Average, Paeth, PNG specification §9), its
 * samples (1, 2, 4, 8 or 16 bits) are unpacked and written as 8-bit RGB, to its own pixels or, in
 * an Adam7-interlaced file, to those of its pass (the seven passes, less those an image under
 * 8 × 8 leaves empty, each filtered on its own).
 *
 * The RGB values are Pillow's `convert("RGB")`: grey is repeated into R, G and B (1, 2 and 4-bit
 * grey scaled to 0–255: ×255, ×85, ×17), alpha and tRNS are dropped, a palette index is looked up
 * in the palette's whole colours, and one past them is black (as is a colour the palette cuts
 * short). Two choices differ from Pillow (docs/data.md): a 16-bit sample keeps its high byte
 * (Pillow does so for 16-bit RGB but clips 16-bit grey to 255), and pixel data that ends early is
 * refused (Pillow pads it with black rows), as is a palette image without its palette.
 *
 * @example
 * ```ts
 * // A 2×1 RGB row filtered with Sub (type 1): the second pixel is stored as its difference
 * // from the first, byte by byte (mod 256).
 * const row = new Uint8Array([1, 10, 20, 30, 5, 5, 250]);
 * unfilterRow(row, 0, -1, 6, 3);
 * row.subarray(1); // [10, 20, 30, 15, 25, 24]
 * ```
 * @module
 */
import { constants as zlibConstants, crc32, inflateSync } from "node:zlib";
import { Unzlib } from "fflate";
import { concatBytes } from "../io/bytes.ts";
import { sliceSize } from "./_inflate.ts";
import type { DecodeOptions, Image8 } from "./image.ts";
import { checkPixels } from "./limits.ts";

/** Samples per pixel of each PNG colour type (grey, RGB, palette, grey+alpha, RGBA). */
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/** The bit depths each PNG colour type allows (the PNG specification's table; Pillow's too). */
const PNG_DEPTHS: Record<number, number[]> = {
  0: [1, 2, 4, 8, 16],
  2: [8, 16],
  3: [1, 2, 4, 8],
  4: [8, 16],
  6: [8, 16],
};

/** Adam7's passes: [x0, y0, dx, dy] (first column and row, column and row steps). */
const ADAM7: readonly (readonly [number, number, number, number])[] = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
];

/**
 * One pass over the image's pixels: a non-interlaced image is one pass of every pixel; an
 * interlaced one has Adam7's seven, less those that hold no pixel.
 */
interface PngPass {
  /** Adam7's pass number, 1–7, or 0 for a non-interlaced image. */
  adam7: number;
  /** The pass's first column and row in the image, and its steps between columns and rows. */
  x0: number;
  y0: number;
  dx: number;
  dy: number;
  /** Its pixels a row, and its rows (both at least 1). */
  width: number;
  height: number;
}

/** The passes of a `width`×`height` image, in the order its rows are stored. */
function pngPasses(width: number, height: number, interlaced: boolean): PngPass[] {
  if (!interlaced) return [{ adam7: 0, x0: 0, y0: 0, dx: 1, dy: 1, width, height }];
  const passes: PngPass[] = [];
  for (const [k, [x0, y0, dx, dy]] of ADAM7.entries()) {
    const w = Math.ceil((width - x0) / dx), h = Math.ceil((height - y0) / dy);
    // An image under 8 pixels wide or high leaves some passes without columns or rows: such a
    // pass stores nothing, not even filter-type bytes (the specification; Pillow too).
    if (w > 0 && h > 0) passes.push({ adam7: k + 1, x0, y0, dx, dy, width: w, height: h });
  }
  return passes;
}

/** What `cleanPng` reads from a file: its header's fields, its palette and its pixel data. */
interface PngData {
  width: number;
  height: number;
  /** Bits a sample: 1, 2, 4, 8 or 16. */
  depth: number;
  /** 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA. */
  colorType: number;
  /** Its passes: one, or Adam7's non-empty ones. */
  passes: PngPass[];
  /** Bytes a stored row of `width` pixels takes, its filter-type byte included. */
  rowBytes: (width: number) => number;
  /** The PLTE chunk's data, for colour type 3 (always there: a palette image needs it). */
  palette?: Uint8Array;
  /**
   * The pixel data inflated: every pass's rows, each its filter-type byte and its filtered
   * bytes, exactly the bytes the header declares. A buffer of its own, unfiltered in place.
   */
  data: Uint8Array;
}

/**
 * Decodes a PNG (grey, grey+alpha, RGB, RGBA or palette; 1–16 bits) to RGB: Pillow's
 * `Image.open(file).convert("RGB")`, value for value (alpha and tRNS dropped, palette indices past
 * the palette black), except that 16-bit samples keep their high byte. The file is checked and
 * read as Pillow reads it (`cleanPng`): CRCs of the chunks before the pixel data, the pixel data
 * as the first run of IDAT chunks inflated only up to the bytes the header declares, nothing after
 * that read but chunk lengths; refused with the file's name and a fix: a declared size over the
 * pixel limit, a colour type and bit depth the PNG specification does not pair, a failed CRC, a
 * palette image without its palette, pixel data that is corrupt or ends early (Pillow pads it), a
 * row whose filter type is not one of the five.
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
  const png = cleanPng(bytes, name, options);
  const { width, height, depth, passes, data } = png;
  const out = new Uint8Array(width * height * 3);
  // The filters' "byte to the left" is one whole pixel back: bits a pixel ÷ 8, at least 1
  // (a 1, 2 or 4-bit pixel shares its byte, and the byte before is used).
  const bytesPerPixel = Math.max(1, (PNG_CHANNELS[png.colorType] * depth) >> 3);
  const writeRow = rgbRowWriter(png, out);
  let at = 0;
  for (const pass of passes) {
    const rowBytes = png.rowBytes(pass.width);
    for (let y = 0; y < pass.height; y++) {
      // Each pass starts afresh: its first row's row above reads as zeros.
      if (!unfilterRow(data, at, y === 0 ? -1 : at - rowBytes, rowBytes - 1, bytesPerPixel)) {
        const where = pass.adam7 ? `row ${y + 1} of Adam7 pass ${pass.adam7}` : `row ${y + 1}`;
        throw new Error(
          `${name} is not a readable PNG (its ${where} has filter type ${
            data[at]
          }, not one of the five, 0–4); replace or remove it`,
        );
      }
      writeRow(at + 1, pass.width, (pass.y0 + y * pass.dy) * width + pass.x0, pass.dx);
      at += rowBytes;
    }
  }
  return { width, height, channels: 3, data: out };
}

/**
 * Undoes the filter of one stored row, in place (PNG specification §9.2–9.4): `data[at]` is its
 * filter-type byte and its `length` filtered bytes follow; the row above, already unfiltered,
 * starts at `data[above + 1]`, or `above` is −1 for a pass's first row, whose row above reads as
 * zeros. `bytesPerPixel` is the distance to the byte "to the left" (whole pixels: 3 for 8-bit RGB,
 * 8 for 16-bit RGBA, 1 below 8 bits a pixel); the bytes of the first pixel have zeros to their
 * left. Every sum is taken mod 256; Average and Paeth predict from the unreduced neighbours.
 * Returns false, changing nothing, for a filter type other than 0 (None), 1 (Sub), 2 (Up),
 * 3 (Average) and 4 (Paeth).
 *
 * @example
 * ```ts
 * // Two 1-byte-a-pixel rows of 3 bytes; the second filtered with Up (type 2).
 * const rows = new Uint8Array([0, 7, 8, 9, 2, 1, 1, 255]);
 * unfilterRow(rows, 4, 0, 3, 1);
 * rows.subarray(5); // [8, 9, 8]
 * ```
 */
export function unfilterRow(
  data: Uint8Array,
  at: number,
  above: number,
  length: number,
  bytesPerPixel: number,
): boolean {
  // `length` is a whole number of pixels, so at least `bytesPerPixel` (1 below 8 bits a pixel).
  const x = at + 1, end = x + length, b = above + 1, bpp = bytesPerPixel;
  switch (data[at]) {
    case 0: // None
      return true;
    case 1: // Sub: + the byte to the left
      for (let i = x + bpp; i < end; i++) data[i] += data[i - bpp];
      return true;
    case 2: // Up: + the byte above
      if (above < 0) return true; // the row above reads as zeros
      for (let i = 0; i < length; i++) data[x + i] += data[b + i];
      return true;
    case 3: // Average: + ⌊(left + above) / 2⌋
      if (above < 0) {
        for (let i = x + bpp; i < end; i++) data[i] += data[i - bpp] >> 1;
      } else {
        for (let i = 0; i < bpp; i++) data[x + i] += data[b + i] >> 1;
        for (let i = bpp; i < length; i++) {
          data[x + i] += (data[x + i - bpp] + data[b + i]) >> 1;
        }
      }
      return true;
    case 4: // Paeth: + whichever of left, above and upper left is nearest left + above − upper left
      if (above < 0) { // above and upper left are zeros: the predictor is the byte to the left
        for (let i = x + bpp; i < end; i++) data[i] += data[i - bpp];
      } else {
        // The first pixel's left and upper left are zeros: the predictor is the byte above.
        for (let i = 0; i < bpp; i++) data[x + i] += data[b + i];
        for (let i = bpp; i < length; i++) {
          const left = data[x + i - bpp], up = data[b + i], upLeft = data[b + i - bpp];
          // The distances of p = left + up − upLeft to left, up and upLeft; ties go to left,
          // then to up.
          const pLeft = Math.abs(up - upLeft), pUp = Math.abs(left - upLeft);
          const pUpLeft = Math.abs(left + up - 2 * upLeft);
          data[x + i] += pLeft <= pUp && pLeft <= pUpLeft ? left : pUp <= pUpLeft ? up : upLeft;
        }
      }
      return true;
    default:
      return false;
  }
}

/**
 * A function writing one unfiltered row to `out` as 8-bit RGB: the `count` pixels whose samples
 * start at `data[start]`, the i-th to pixel `first + i · step` of the image (step 1, or Adam7's
 * column step). Grey and palette samples go through a 256-colour table (grey: the sample scaled
 * to 0–255, repeated; palette: its whole colours, then black); RGB and grey+alpha ones are
 * copied, alpha dropped; of a 16-bit sample, the high byte (stored first) is kept.
 */
function rgbRowWriter(
  png: PngData,
  out: Uint8Array,
): (start: number, count: number, first: number, step: number) => void {
  const { data, depth, colorType } = png;
  if (colorType === 0 || colorType === 3) {
    const table = colorType === 3 ? paletteTable(png.palette!) : greyTable(depth);
    if (depth < 8) {
      // Samples packed in bytes, the leftmost in the high bits; a row ends on a byte boundary.
      const mask = (1 << depth) - 1;
      return (start, count, first, step) => {
        for (let i = 0, o = first * 3; i < count; i++, o += step * 3) {
          const bit = i * depth;
          const s = 3 * ((data[start + (bit >> 3)] >> (8 - depth - (bit & 7))) & mask);
          out[o] = table[s];
          out[o + 1] = table[s + 1];
          out[o + 2] = table[s + 2];
        }
      };
    }
    const sampleBytes = depth >> 3;
    return (start, count, first, step) => {
      for (let i = 0, o = first * 3; i < count; i++, o += step * 3) {
        const s = 3 * data[start + i * sampleBytes];
        out[o] = table[s];
        out[o + 1] = table[s + 1];
        out[o + 2] = table[s + 2];
      }
    };
  }
  // Grey+alpha (grey repeated), RGB and RGBA: 8 or 16 bits a sample.
  const sampleBytes = depth >> 3, pixelBytes = PNG_CHANNELS[colorType] * sampleBytes;
  const g = colorType === 4 ? 0 : sampleBytes, b = 2 * g;
  return (start, count, first, step) => {
    for (let i = 0, p = start, o = first * 3; i < count; i++, p += pixelBytes, o += step * 3) {
      out[o] = data[p];
      out[o + 1] = data[p + g];
      out[o + 2] = data[p + b];
    }
  };
}

/**
 * Grey levels as RGB, for every 8-bit value: a 1, 2 or 4-bit sample v becomes v · 255 / (2^depth
 * − 1) (exact: 255, 85, 17 times v); an 8-bit one, and a 16-bit one's high byte, stay as they are.
 */
function greyTable(depth: number): Uint8Array {
  const max = (1 << Math.min(depth, 8)) - 1;
  const table = new Uint8Array(768);
  for (let v = 0; v <= max; v++) table.fill((v * 255) / max, 3 * v, 3 * v + 3);
  return table;
}

/**
 * A palette's whole colours, padded with black to 256: an index past the palette's end is black
 * in Pillow, and a last, partial colour is dropped.
 */
function paletteTable(palette: Uint8Array): Uint8Array {
  const table = new Uint8Array(768);
  table.set(palette.subarray(0, palette.length - (palette.length % 3)));
  return table;
}

/**
 * The first `want` bytes a zlib stream inflates to, however it goes on (more data, a bad
 * checksum, garbage or a cut after them), as Pillow reads it: it stops inflating once it has
 * every row. Returns how many bytes it got (fewer than `want` when the stream ends or breaks
 * first) and fflate's error, if one came before them. Inflation stops at `want` bytes.
 */
function inflatePrefix(
  z: Uint8Array,
  want: number,
): { data: Uint8Array; produced: number; error?: string } {
  // node:zlib is native (3× fflate's speed). A stream that ends where the pixel data does must
  // pass its checksum, as in Pillow (zlib reads it in the call that ends the last row); one cut
  // before its checksum is read as far as it goes.
  try {
    const data = inflateSync(z, { maxOutputLength: want });
    return { data, produced: data.length };
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== "ERR_BUFFER_TOO_LARGE") {
      let data: Uint8Array = new Uint8Array(0);
      try {
        data = inflateSync(z, { maxOutputLength: want, finishFlush: zlibConstants.Z_SYNC_FLUSH });
      } catch { /* broken before its end: how far it got is not told */ }
      const message = (err as Error).message;
      return message === "unexpected end of file" && data.length === want
        ? { data, produced: want }
        : { data, produced: data.length, error: message };
    }
  }
  // More data than the header declares: Pillow stops inflating once it has every row, so neither
  // what follows nor the checksum is read. fflate, a slice at a time, stops at `want` bytes.
  const data = new Uint8Array(want);
  let produced = 0;
  const full = new Error("full");
  const stream = new Unzlib((piece) => {
    const n = Math.min(piece.length, want - produced);
    data.set(piece.subarray(0, n), produced);
    produced += n;
    if (produced === want) throw full;
  });
  const slice = sliceSize(want);
  try {
    for (let p = 0; p < z.length; p += slice) stream.push(z.subarray(p, p + slice), false);
    stream.push(new Uint8Array(0), true);
  } catch (err) {
    if (err !== full) return { data, produced, error: (err as Error).message };
  }
  return { data, produced };
}

/**
 * Checks a PNG as Pillow 12.3 reads it and returns what decoding needs: IHDR's fields (the filter
 * method must be 0; the compression method is not checked, since Pillow inflates whatever it
 * says; an interlace flag other than 0 means Adam7, as in Pillow), the palette (colour type 3
 * only) and the pixel data, inflated. Like Pillow: every chunk before the pixel data must pass its
 * CRC check; the pixel data is the first run of consecutive IDAT chunks, whose CRCs are not
 * checked, and must inflate to at least the bytes the header declares — what it holds beyond
 * them, and whatever follows them in the file (chunks, a missing IEND, garbage, a cut), is
 * ignored; unknown chunks are skipped; tRNS is checked for its length but not used (alpha is
 * dropped anyway). Unlike Pillow, pixel data that ends early is refused, not padded with black
 * rows, and a palette image needs its palette (Pillow would invent one). Nothing is allocated for
 * the declared size before it passes the pixel limit, and inflation stops at the declared bytes.
 */
function cleanPng(bytes: Uint8Array, name: string, options: DecodeOptions): PngData {
  const unreadable = (why: string) =>
    new Error(`${name} is not a readable PNG (${why}); replace or remove it`);
  const text = (p: number) => String.fromCharCode(...bytes.subarray(p, p + 4));
  if (bytes.length < 33 || text(12) !== "IHDR") throw unreadable("no IHDR header chunk");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(8) < 13) throw unreadable(`its IHDR chunk holds ${view.getUint32(8)} bytes`);
  const width = view.getUint32(16), height = view.getUint32(20);
  const depth = bytes[24], colorType = bytes[25], interlaced = bytes[28] !== 0;
  if (width === 0 || height === 0) throw unreadable(`its header declares ${width}×${height}`);
  checkPixels(name, width, height, options);
  const channels = PNG_CHANNELS[colorType];
  if (channels === undefined) throw unreadable(`unknown colour type ${colorType}`);
  if (!PNG_DEPTHS[colorType].includes(depth)) {
    throw unreadable(`bit depth ${depth} is not allowed for colour type ${colorType}`);
  }
  if (bytes[27] !== 0) throw unreadable(`unknown filter method ${bytes[27]}`);
  const bits = channels * depth;
  // Pillow counts a row's bits in a C int and refuses (MemoryError) a row of more than
  // ⌊(2³¹ − 1) / bits⌋ − 7 pixels, Adam7 or not: 33,554,424 of 16-bit RGBA (measured, 12.3).
  const widest = Math.floor(0x7fffffff / bits) - 7;
  if (width > widest) {
    throw unreadable(
      `its rows of ${width} pixels of ${bits} bits are wider than Pillow reads, ${widest} pixels`,
    );
  }
  const rowBytes = (w: number) => 1 + Math.ceil((w * bits) / 8);
  const passes = pngPasses(width, height, interlaced);
  const expected = passes.reduce((n, pass) => n + pass.height * rowBytes(pass.width), 0);
  const idat: Uint8Array[] = [];
  let palette: Uint8Array | undefined;
  let p = 8, cutIdat = false;
  while (true) {
    if (p + 8 > bytes.length && idat.length > 0) break; // no IEND: Pillow reads what is there
    if (p + 8 > bytes.length) {
      throw new Error(
        `${name} is truncated: the file ends before its pixel data (IDAT)${
          idat.length ? " is whole" : ""
        }; replace or re-export the image`,
      );
    }
    const length = view.getUint32(p), type = text(p + 4);
    if (idat.length > 0 && type !== "IDAT") break; // the pixel data ends (what follows: below)
    if (!/^\w{4}$/.test(type)) { // Pillow: "broken PNG file", before the pixel data
      throw unreadable(`a chunk type that is not 4 letters or digits (${JSON.stringify(type)})`);
    }
    const end = Math.min(bytes.length, p + 8 + length);
    if (type === "IDAT") { // its CRC is not checked (nor by Pillow); a cut one holds what is there
      idat.push(bytes.subarray(p + 8, end));
      if (p + 12 + length > bytes.length) {
        cutIdat = p + 8 + length > bytes.length; // its data cut, not only its CRC
        p = bytes.length; // cut inside the pixel data: nothing follows
        break;
      }
    } else {
      if (p + 12 + length > bytes.length) {
        throw new Error(
          `${name} is truncated: the file ends inside its ${JSON.stringify(type)} chunk (${
            Math.max(0, bytes.length - p - 8)
          } of ${length} data bytes); replace or re-export the image`,
        );
      }
      if (crc32(bytes.subarray(p + 4, end)) !== view.getUint32(end)) {
        throw unreadable(`its ${JSON.stringify(type)} chunk fails its CRC check`);
      }
      if (type === "IEND") throw unreadable("it ends (IEND) before any pixel data (IDAT)");
      if (type === "PLTE") palette = bytes.subarray(p + 8, end);
      if (type === "tRNS" && length < (colorType === 0 ? 2 : colorType === 2 ? 6 : 0)) {
        throw unreadable(
          `its tRNS chunk holds ${length} bytes, too few for colour type ${colorType}`,
        );
      }
    }
    p += 12 + length;
  }
  // After the pixel data Pillow reads chunk after chunk, unchecked, up to IEND, the file's end or
  // a chunk type that is not 4 letters or digits — but refuses a chunk that runs past the file.
  while (p + 8 <= bytes.length) {
    const length = view.getUint32(p), type = text(p + 4);
    if (type === "IEND" || !/^\w{4}$/.test(type)) break;
    if (p + 8 + length > bytes.length) {
      throw new Error(
        `${name} is truncated: the file ends inside its ${JSON.stringify(type)} chunk after the ` +
          `pixel data (${
            bytes.length - p - 8
          } of ${length} data bytes); replace or re-export the image`,
      );
    }
    p += 12 + length;
  }
  if (palette !== undefined && palette.length > 768) {
    throw unreadable(`its palette (PLTE) holds ${palette.length} bytes, more than 256 colours`);
  }
  if (colorType === 3 && palette === undefined) {
    throw unreadable("a palette image without its palette (PLTE) before its pixel data");
  }
  const compressed = idat.length === 1 ? idat[0] : concatBytes(idat);
  // Pillow feeds its decoder chunk by chunk and stops once it has every row; an IDAT chunk it did
  // not need is then skipped by its length, and refused ("Truncated File Read") where the file
  // ends inside its data.
  if (cutIdat && idat.length > 1) {
    const before = idat.slice(0, -1);
    if (inflatePrefix(concatBytes(before), expected).produced >= expected) {
      throw new Error(
        `${name} is truncated: the file ends inside an IDAT chunk after the one where its pixel ` +
          `data is complete; replace or re-export the image`,
      );
    }
  }
  const { data, produced, error } = inflatePrefix(compressed, expected);
  if (error !== undefined && error !== "unexpected end of file") {
    throw unreadable(`corrupt pixel data: ${error}`);
  }
  if (produced < expected) {
    const rows = interlaced ? "" : ` (${Math.floor(produced / rowBytes(width))} of ${height} rows)`;
    throw new Error(
      `${name} is truncated: its pixel data inflates to ${produced} of the ${expected} bytes ` +
        `its ${width}×${height} header declares${rows}${
          error ? `; inflate: ${error}` : ""
        }; replace or re-export the image`,
    );
  }
  return { width, height, depth, colorType, passes, rowBytes, palette, data };
}
