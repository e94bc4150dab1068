/**
 * Images as 8-bit arrays: JPEG/PNG decoding and the CLIP preprocessing of the reference
 * (torchvision `Resize(N, BICUBIC)` + `CenterCrop(N)` on a PIL image, docs/data.md#preprocessing).
 *
 * The resize reproduces Pillow's `Image.resize(size, BICUBIC)` (libImaging/Resample.c) bit for
 * bit: a separable convolution, horizontal pass first, with the cubic kernel a = −0.5 whose
 * support is widened by the downscale factor (antialiasing), coefficients normalised and
 * rounded to 22-bit fixed point, and each pass rounded and clipped to uint8.
 *
 * JPEGs decode to Pillow's pixels (`Image.open(f).convert("RGB")`, Pillow 12.3 with libjpeg-turbo
 * 3.1 on x86-64), value for value: this module reads and checks the segments as libjpeg does, and
 * the rest is libjpeg-turbo's, redone here — its Huffman entropy decoding, sequential and
 * progressive, with its handling of damaged data (`./_jpeg_entropy.ts`), its arithmetic decoding
 * (`./_jpeg_arith.ts`, likewise), its inverse DCT
 * ("islow", `./_jpeg_idct.ts`, with its block smoothing of progressive files whose scans stop
 * short), its "fancy" chroma upsampling and fixed-point YCbCr → RGB (`./_jpeg_upsample.ts`), its
 * rules telling RGB from YCbCr and CMYK from YCCK, and Pillow's CMYK → RGB. (jpeg-js, which
 * decoded them before, was up to 3 levels off on every file and refused files Pillow reads:
 * restart intervals not dividing a scan's blocks, missing Huffman tables, damaged data.) On
 * coefficients no real image has, the IDCT follows libjpeg-turbo's x86 SIMD code, which is what
 * Pillow on x86-64 runs (`./_jpeg_idct.ts`). Which files are refused: `decodeJpeg`.
 *
 * PNGs are read as Pillow 12.3 reads them (`decodePng`, in `./_png.ts`: which chunks are checked,
 * where the pixel data ends, what is ignored after it; the rows' filters, bit depths and Adam7
 * are decoded there too) and decode to its `convert("RGB")` pixels, alpha and tRNS dropped, but
 * for two choices (docs/data.md): 16-bit samples keep their high byte (Pillow does so for 16-bit
 * RGB, but clips 16-bit grey to 255), and pixel data that ends early is refused (Pillow pads the
 * missing rows with black).
 *
 * Before decoding, the size a file's header declares is checked against a pixel limit (50 M by
 * default; the `maxPixels` option or `DEER_MAX_IMAGE_PIXELS`, see `./limits.ts`), so that a tiny
 * file declaring a huge image is refused at once; a PNG's pixel data is inflated only up to what
 * its header declares, and a truncated file is an error, never an image padded with zeros.
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * const png = new PNG({ width: 298, height: 224 }); // a blank RGBA image
 * const bytes = PNG.sync.write(png);
 * const img = decodeImage(bytes, "x.png"); // RGB, HWC (JPEG or PNG, told apart by their bytes)
 * const clip = clipPreprocess(img, 224);   // 224×224×3
 * clip.width; // 224
 * ```
 * @module
 */
import { checkPixels } from "./limits.ts";
import { type JpegComponentPlane, jpegFrameToRgb } from "./_jpeg_upsample.ts";
import { type BlockSmoothing, componentSamples, NATURAL_ORDER } from "./_jpeg_idct.ts";
import { decodeEntropy, type HuffmanTable, STANDARD_TABLES } from "./_jpeg_entropy.ts";
import { ArithmeticPastEnd, decodeArithmetic } from "./_jpeg_arith.ts";
import { decodePng } from "./_png.ts";

// The PNG decoder lives in ./_png.ts (chunk checks, inflation, row decoding); this module is where
// it is used from, with decodeJpeg and decodeImage.
export { decodePng };

/** CLIP's per-channel mean (RGB), docs/data.md#preprocessing. */
export const CLIP_MEAN: readonly number[] = [0.48145466, 0.4578275, 0.40821073];
/** CLIP's per-channel standard deviation (RGB), docs/data.md#preprocessing. */
export const CLIP_STD: readonly number[] = [0.26862954, 0.26130258, 0.27577711];

/** An 8-bit image, row-major, channels interleaved (HWC). */
export interface Image8 {
  width: number;
  height: number;
  channels: number;
  data: Uint8Array;
}

/** Options of the decoders. */
export interface DecodeOptions {
  /**
   * Largest width × height accepted, checked on the header before any pixel memory is allocated
   * (default: `DEER_MAX_IMAGE_PIXELS`, else 50 M).
   */
  maxPixels?: number;
}

/**
 * Refuses a Huffman-coded JPEG (baseline, extended or progressive) far too small for the size it
 * declares, before the decoder allocates its planes for that size (a 600-byte file declaring
 * 7000 × 7000 pixels cost 1.5 GB and 2 s before it failed). Every 8 × 8 block of a full-resolution
 * component needs at least one bit in the scans (a Huffman code is at least one bit long), so a
 * genuine image holds at least pixels ÷ 512 bytes; the check asks for half of that.
 * Arithmetic-coded files are not checked: their coder spends far less than a bit on a block of a
 * flat area (cjpeg writes a uniform 2048 × 2048 colour image in 215 bytes and a 7000 × 7000 grey
 * one in 125, both genuine, both decoded by Pillow), so no bound of this kind holds for them; the
 * pixel limit does (such a 7000 × 7000 file decodes here in 0.7 s, 350 MB resident; Pillow 0.23 s).
 */
function checkJpegBytes(
  name: string,
  size: number,
  frame: { width: number; height: number; marker: number },
): void {
  if (frame.marker !== 0xc0 && frame.marker !== 0xc1 && frame.marker !== 0xc2) return;
  const least = Math.floor((frame.width * frame.height) / 1024);
  if (size < least) {
    throw new Error(
      `${name} declares ${frame.width}×${frame.height} pixels in ${size} bytes, fewer than any ` +
        `JPEG of that size can hold (at least ${least} bytes: one bit per 8×8 block); the file ` +
        `is truncated, corrupt or hostile — replace or remove it`,
    );
  }
}

/** Whether `marker` starts a frame header (SOF0–SOF15: not DHT 0xC4, JPG 0xC8 or DAC 0xCC). */
function isFrameMarker(marker: number): boolean {
  return marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 &&
    marker !== 0xcc;
}

/**
 * The width and height a JPEG's frame header (SOF) declares, and its component ids, read without
 * decoding; `undefined` when there is no frame header before the scan data.
 */
function jpegDeclaredSize(
  bytes: Uint8Array,
): {
  width: number;
  height: number;
  marker: number;
  componentIds: number[];
  /** Each component's horizontal and vertical sampling factors. */
  sampling: [number, number][];
  /** Each component's quantisation table number. */
  quantTables: number[];
  /** Bits per sample. */
  precision: number;
  /** The number of components the header declares (`componentIds` may hold fewer, cut off). */
  count: number;
} | undefined {
  let p = 2;
  while (p + 4 <= bytes.length) {
    if (bytes[p] !== 0xff) {
      // Bytes between segments (a segment length off by a few): libjpeg skips to the next marker
      // (with a warning), so look for it rather than give up — giving up let such a file past
      // the size checks (354 bytes declaring 7000 × 7000: 1.6 GB).
      p++;
      continue;
    }
    const marker = bytes[p + 1];
    if (marker === 0xff) { // fill byte
      p++;
      continue;
    }
    if (marker === 0x00) { // a stuffed 0xFF is not a marker
      p += 2;
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd8)) { // no length field
      p += 2;
      continue;
    }
    if (marker === 0xda || marker === 0xd9) return undefined; // scan or end before any frame
    const length = (bytes[p + 2] << 8) | bytes[p + 3];
    const isFrame = isFrameMarker(marker);
    if (isFrame) {
      if (p + 9 > bytes.length) return undefined;
      const componentIds: number[] = [];
      const sampling: [number, number][] = [];
      const quantTables: number[] = [];
      for (let c = 0, q = p + 10; c < bytes[p + 9] && q + 1 < bytes.length; c++, q += 3) {
        componentIds.push(bytes[q]);
        sampling.push([bytes[q + 1] >> 4, bytes[q + 1] & 15]);
        quantTables.push(bytes[q + 2] ?? 0);
      }
      return {
        height: (bytes[p + 5] << 8) | bytes[p + 6],
        width: (bytes[p + 7] << 8) | bytes[p + 8],
        marker,
        componentIds,
        sampling,
        quantTables,
        precision: bytes[p + 4],
        count: bytes[p + 9],
      };
    }
    p += 2 + length;
  }
  return undefined;
}

/**
 * Where a segment's declared length disagrees with what it holds, as libjpeg reads it (`jdmarker.c`:
 * `get_dqt`, `get_dht`, `get_sof`, `get_sos`, `get_dri` end in `JERR_BAD_LENGTH` or a bad-table
 * error, so Pillow refuses the file): the reason, or `undefined` where the segment is consistent.
 * (jpeg-js, which decoded JPEGs before, read these segments by their contents, so that a Huffman
 * segment shorter than its table hid a 7000 × 7000 frame in 1.5 KB.) `end` is where the declared
 * length ends (the file's end if sooner). A truncated last quantisation table, which libjpeg
 * completes with ones, is refused too.
 */
function segmentProblem(
  bytes: Uint8Array,
  p: number,
  marker: number,
  end: number,
): string | undefined {
  const length = (bytes[p + 2] << 8) | bytes[p + 3];
  if (p + 2 + length > bytes.length) return `declares ${length} bytes, past the end of the file`;
  const isFrame = isFrameMarker(marker);
  if (marker === 0xdb) {
    for (let q = p + 4; q < end;) {
      const precision = bytes[q] >> 4, id = bytes[q] & 15;
      if (precision > 1) return `has a quantisation table of precision ${precision} (0 or 1)`;
      if (id > 3) return `defines quantisation table ${id} (libjpeg has tables 0–3)`;
      q += 1 + 64 * (precision + 1);
      if (q > end) return `ends inside quantisation table ${id}`;
    }
  } else if (marker === 0xc4) {
    let q = p + 4;
    while (end - q > 16) {
      const index = bytes[q];
      if ((index & 0xef) > 3) return `defines Huffman table ${index} (libjpeg: 0–3, 16–19)`;
      let count = 0;
      for (let k = 1; k <= 16; k++) count += bytes[q + k];
      if (count > 256) return `has a Huffman table of ${count} codes (at most 256)`;
      q += 17 + count;
      if (q > end) return `ends inside a Huffman table of ${count} codes`;
    }
    if (q !== end) return `ends in ${end - q} bytes too few to be a Huffman table`;
  } else if (isFrame) {
    const count = bytes[p + 9];
    if (length !== 8 + 3 * count) return `declares ${length} bytes for ${count} components`;
  } else if (marker === 0xda) {
    const count = bytes[p + 4];
    if (count < 1 || count > 4) return `lists ${count} components (1–4)`;
    if (length !== 6 + 2 * count) return `declares ${length} bytes for ${count} components`;
  } else if (marker === 0xdd) {
    if (length !== 4) return `declares ${length} bytes (a restart interval has 4)`;
  } else if (marker === 0xcc) {
    // get_dac: (index, value) pairs; indices 0–15 are DC tables 0–15 (value: L in the low nibble,
    // U in the high one), 16–31 AC tables 0–15 (value: Kx, any byte: libjpeg-turbo does not check
    // it). T.81 writes the index as Tc (0 DC, 1 AC) in the high nibble and Tb (0–3) in the low.
    for (let q = p + 4; q + 1 < end; q += 2) {
      const index = bytes[q], value = bytes[q + 1];
      if (index > 31) {
        return `defines conditioning table ${index >> 4}/${index & 15} (class/number; ` +
          `libjpeg reads 0/0–15 for DC and 1/0–15 for AC)`;
      }
      if (index < 16 && (value & 15) > value >> 4) {
        return `gives DC conditioning table ${index} a lower bound L = ${
          value & 15
        } above its upper bound U = ${value >> 4}`;
      }
    }
    if (length < 2 || length % 2 !== 0) {
      return `declares ${length} bytes, which are not its 2-byte length and whole (table, value) ` +
        `pairs`;
    }
  }
  return undefined;
}

/** One scan of a JPEG: its components (frame component ids) and spectral selection. */
interface JpegScan {
  componentIds: number[];
  /** Spectral selection start and end, successive approximation high and low bits. */
  ss: number;
  se: number;
  ah: number;
  al: number;
  /**
   * Why libjpeg cannot build a Huffman table this scan decodes with, as the tables stand when it
   * starts (see `huffmanTableProblem`), or because it is not defined; absent where it can (and in
   * arithmetic-coded files).
   */
  tables?: string;
  /** Where its entropy-coded data starts, and the marker after it that the walk went on from. */
  start: number;
  end: number;
  /** The restart interval in force (DRI; 0: none). */
  restartInterval: number;
  /** Each scan component's DC and AC Huffman tables as defined when the scan starts. */
  dc: (HuffmanTable | undefined)[];
  ac: (HuffmanTable | undefined)[];
  /** Each scan component's DC and AC table numbers (the scan header's selectors, 0–15). */
  dcTables: number[];
  acTables: number[];
  /**
   * The arithmetic coding conditioning in force when the scan starts (DAC segments, or libjpeg's
   * defaults): L and U of DC tables 0–15 (0 and 1), Kx of AC tables 0–15 (5).
   */
  dcL: number[];
  dcU: number[];
  acK: number[];
}

/**
 * Why libjpeg refuses to decode with a Huffman table (`jdhuff.c`, `jpeg_make_d_derived_tbl`:
 * `JERR_BAD_HUFF_TABLE`): the codes of up to l bits (`counts[0..l-1]`, assigned in canonical
 * order) do not fit in l bits with the all-ones code left out, or, for a DC table, a symbol is
 * above 15 (a DC difference has at most 15 bits). Only tables a scan decodes with are checked,
 * as libjpeg checks them.
 */
function huffmanTableProblem(
  counts: Uint8Array,
  symbols: Uint8Array,
  dc: boolean,
): string | undefined {
  let code = 0;
  for (let l = 0; l < 16; l++) {
    code += counts[l];
    // libjpeg's check: the codes of each length fit its bits without the all-ones code.
    if (code >= 2 ** (l + 1)) {
      return `has more codes of up to ${l + 1} bits than fit (the all-ones code being reserved)`;
    }
    code *= 2;
  }
  if (dc && symbols.some((s) => s > 15)) return `is a DC table with a symbol above 15`;
  return undefined;
}

/**
 * The scans of a JPEG (their headers) and, for each component id, the quantisation table in
 * force when the component's first scan starts (natural order), which is the one libjpeg
 * dequantises with (it latches a copy there; a DQT segment redefining the table later changes
 * nothing for that component). Each scan also gets what its entropy decoding needs: where its
 * data starts, the restart interval and the Huffman tables in force (in a sequential frame, the
 * standard tables where 0 or 1 is not defined, as libjpeg-turbo has it). Walks every segment
 * and skips each scan's entropy-coded data to the next marker (stuffed 0xFF 00, restart markers
 * and fill bytes are not markers); a marker libjpeg does not read, a second SOI or frame header
 * end the walk as a bad segment. `tableOf` maps a component id to its table number (frame
 * header). In an arithmetic-coded file (`arithmetic`) the scans get the conditioning of the DAC
 * segments before them instead of Huffman tables (DHT segments are still read and checked, as
 * libjpeg reads them). Stops at EOI (`ended`) or the end of the bytes.
 */
function jpegScans(
  bytes: Uint8Array,
  tableOf: Map<number, number>,
  progressive: boolean,
  arithmetic: boolean,
): {
  scans: JpegScan[];
  latched: Map<number, Int32Array>;
  missingTable?: [number, number];
  /** The first segment whose length disagrees with its contents (see `segmentProblem`). */
  badSegment?: { at: number; marker: number; problem: string; by?: string };
  /** Whether the walk reached the end of image (EOI) marker. */
  ended: boolean;
  /** The JFIF (APP0) and Adobe (APP14) markers before the first scan, as libjpeg reads them. */
  jfif: boolean;
  adobe?: { transformCode: number };
} {
  const tables: (Int32Array | undefined)[] = [];
  const latched = new Map<number, Int32Array>();
  const scans: JpegScan[] = [];
  let missingTable: [number, number] | undefined;
  // The Huffman tables as defined so far: "dc0"…"dc3", "ac0"…"ac3".
  // libjpeg-turbo's sequential decoder gives the standard tables to tables 0 and 1 that are not
  // defined (its progressive one does not: Pillow refuses such a file).
  const huffman = new Map<string, HuffmanTable>(progressive ? [] : Object.entries(STANDARD_TABLES));
  // The arithmetic coding conditioning of tables 0–15, libjpeg's defaults until a DAC segment
  // sets them.
  const dcL = Array(16).fill(0), dcU = Array(16).fill(1), acK = Array(16).fill(5);
  let restartInterval = 0;
  let frames = 0;
  let jfif = false;
  let adobe: { transformCode: number } | undefined;
  const result = () => ({ scans, latched, missingTable, ended: false, jfif, adobe });
  let p = 2;
  const n = bytes.length;
  while (p + 2 <= n) {
    if (bytes[p] !== 0xff) {
      p++;
      continue;
    }
    const marker = bytes[p + 1];
    if (marker === 0xff) {
      p++;
      continue;
    }
    if (marker === 0x00 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      p += 2;
      continue;
    }
    if (marker === 0xd9) return { ...result(), ended: true };
    const known = (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc8) ||
      (marker >= 0xda && marker <= 0xdd) || (marker >= 0xe0 && marker <= 0xef) || marker === 0xfe;
    if (marker === 0xd8 || !known) {
      // libjpeg's read_markers: JERR_SOI_DUPLICATE, JERR_SOF_UNSUPPORTED, JERR_UNKNOWN_MARKER.
      const problem = marker === 0xd8
        ? "is a second start of image"
        : "is a marker libjpeg does not read";
      return { ...result(), badSegment: { at: p, marker, problem } };
    }
    if (p + 4 > n) break;
    const length = (bytes[p + 2] << 8) | bytes[p + 3];
    const end = Math.min(n, p + 2 + length);
    const problem = segmentProblem(bytes, p, marker, end);
    if (problem !== undefined) return { ...result(), badSegment: { at: p, marker, problem } };
    const isFrame = isFrameMarker(marker);
    if (isFrame && frames++ > 0) {
      // libjpeg: JERR_SOF_DUPLICATE, wherever the second frame header is.
      return { ...result(), badSegment: { at: p, marker, problem: "is a second frame header" } };
    }
    const text = (from: number, count: number) =>
      String.fromCharCode(...bytes.subarray(from, Math.min(end, from + count)));
    const app = marker === 0xe0 ? "JFIF" : marker === 0xee ? "Adobe" : undefined;
    if (app !== undefined && scans.length === 0 && text(p + 4, app.length) === app && length < 9) {
      // Pillow's own parser reads a 16-bit version after "JFIF" or "Adobe" and fails without it.
      return {
        ...result(),
        badSegment: {
          at: p,
          marker,
          problem: `starts "${app}" and holds ${length - 2} bytes, too few for the version ` +
            `after it (7 at least)`,
          by: "Pillow's JPEG parser",
        },
      };
    }
    if (marker === 0xe0 && scans.length === 0 && length - 2 >= 14) {
      // libjpeg's examine_app0: at least 14 bytes, starting "JFIF\0".
      if (text(p + 4, 5) === "JFIF\0") jfif = true;
    } else if (marker === 0xee && scans.length === 0 && length - 2 >= 12) {
      // examine_app14: at least 12 bytes, starting "Adobe"; the transform is the 12th.
      if (text(p + 4, 5) === "Adobe") adobe = { transformCode: bytes[p + 15] };
    } else if (marker === 0xdd) {
      restartInterval = (bytes[p + 4] << 8) | bytes[p + 5];
    } else if (marker === 0xcc) {
      // Pairs and values were checked by segmentProblem.
      for (let q = p + 4; q + 1 < end; q += 2) {
        const index = bytes[q], value = bytes[q + 1];
        if (index >= 16) acK[index - 16] = value;
        else [dcL[index], dcU[index]] = [value & 15, value >> 4];
      }
    } else if (marker === 0xdb) {
      for (let q = p + 4; q < end;) {
        const precision = bytes[q] >> 4, id = bytes[q] & 15;
        const table = new Int32Array(64);
        const size = precision === 0 ? 1 : 2;
        if (q + 1 + 64 * size > end) break;
        for (let k = 0; k < 64; k++) {
          const at = q + 1 + k * size;
          table[NATURAL_ORDER[k]] = size === 1 ? bytes[at] : (bytes[at] << 8) | bytes[at + 1];
        }
        tables[id] = table;
        q += 1 + 64 * size;
      }
    } else if (marker === 0xc4) {
      // Lengths and table numbers were checked by segmentProblem.
      for (let q = p + 4; end - q > 16;) {
        const counts = bytes.slice(q + 1, q + 17);
        const total = counts.reduce((a, b) => a + b, 0);
        const key = `${bytes[q] & 0x10 ? "ac" : "dc"}${bytes[q] & 15}`;
        huffman.set(key, { counts, symbols: bytes.slice(q + 17, q + 17 + total) });
        q += 17 + total;
      }
    } else if (marker === 0xda) {
      const count = bytes[p + 4];
      const ids: number[] = [];
      const used = new Set<string>();
      for (let c = 0; c < count; c++) {
        ids.push(bytes[p + 5 + 2 * c]);
        const selectors = bytes[p + 6 + 2 * c];
        used.add(`dc${selectors >> 4}`).add(`ac${selectors & 15}`);
      }
      const q = p + 5 + 2 * count;
      const scan: JpegScan = {
        componentIds: ids,
        ss: bytes[q],
        se: bytes[q + 1],
        ah: bytes[q + 2] >> 4,
        al: bytes[q + 2] & 15,
        start: end,
        end: n,
        restartInterval,
        dc: ids.map((_, c) => huffman.get(`dc${bytes[p + 6 + 2 * c] >> 4}`)),
        ac: ids.map((_, c) => huffman.get(`ac${bytes[p + 6 + 2 * c] & 15}`)),
        dcTables: ids.map((_, c) => bytes[p + 6 + 2 * c] >> 4),
        acTables: ids.map((_, c) => bytes[p + 6 + 2 * c] & 15),
        dcL: dcL.slice(),
        dcU: dcU.slice(),
        acK: acK.slice(),
      };
      // What libjpeg builds for the scan: both tables of each component in a sequential frame; in
      // a progressive one the DC tables for a first DC scan, the AC tables for an AC scan, none
      // for a DC refinement. (An arithmetic decoder has conditioning tables 0–15: any selector.)
      for (const key of arithmetic ? [] : used) {
        const dc = key.startsWith("dc");
        if (progressive && (dc ? scan.ss !== 0 || scan.ah !== 0 : scan.ss === 0)) continue;
        const table = huffman.get(key);
        const why = table === undefined
          ? `is not defined (libjpeg-turbo stands in the standard tables for 0 and 1, in ` +
            `sequential frames only)`
          : huffmanTableProblem(table.counts, table.symbols, dc);
        if (why !== undefined) {
          scan.tables ??= `decodes with Huffman table ${key.slice(0, 2).toUpperCase()} ` +
            `${key.slice(2)}, which ${why}`;
        }
      }
      scans.push(scan);
      for (const id of ids) {
        if (latched.has(id)) continue;
        const t = tableOf.get(id);
        if (t === undefined) continue; // not a component of the frame (see scanProblem)
        const table = t < 4 ? tables[t] : undefined; // libjpeg has tables 0–3
        if (table === undefined) missingTable ??= [id, t];
        else latched.set(id, table.slice());
      }
      // The entropy-coded data: up to the next marker of a segment. Markers below 0xC0 other than
      // restart markers (damaged data) are passed too: libjpeg skips them when it resyncs at a
      // restart, and refuses them otherwise, which `decodeJpeg` checks after decoding.
      p = end;
      for (;;) {
        p = bytes.indexOf(0xff, p);
        if (p < 0 || p + 1 >= n) return result();
        const next = bytes[p + 1];
        if (next < 0xc0 || (next >= 0xd0 && next <= 0xd7)) p += 2;
        else if (next === 0xff) p++;
        else break;
      }
      scan.end = p;
      continue;
    }
    p += 2 + length;
  }
  return result();
}

/**
 * What libjpeg refuses in a scan header (`jdmarker.c` `get_sos`; for progressive frames
 * `jdphuff.c`'s check of the progression parameters, `JERR_BAD_PROGRESSION`): a component that is
 * not the frame's or is listed twice; in a progressive frame, a DC scan (Ss = 0) whose band goes
 * on past 0, an AC scan whose band is empty or runs past coefficient 63 or that holds more than
 * one component, a refinement (Ah > 0) that does not refine by one bit (Al ≠ Ah − 1), or Al > 13.
 * Sequential frames' band and bit parameters only draw a warning from libjpeg, and are ignored.
 * `undefined` where the scan is one libjpeg reads.
 */
function scanProblem(
  scan: JpegScan,
  frameIndex: Map<number, number>,
  progressive: boolean,
): string | undefined {
  for (const [i, id] of scan.componentIds.entries()) {
    if (!frameIndex.has(id)) return `names component ${id}, which the frame does not have`;
    if (scan.componentIds.indexOf(id) !== i) return `lists component ${id} twice`;
  }
  if (!progressive) return scan.tables;
  const band = `coefficients ${scan.ss}–${scan.se}`;
  if (scan.ss === 0 && scan.se !== 0) return `mixes the DC coefficient with AC ones (${band})`;
  if (scan.ss > 0 && (scan.ss > scan.se || scan.se > 63)) {
    return `has an AC band that is empty or runs past coefficient 63 (${band})`;
  }
  if (scan.ss > 0 && scan.componentIds.length !== 1) {
    return `interleaves ${scan.componentIds.length} components in an AC band (${band})`;
  }
  if (scan.ah !== 0 && scan.al !== scan.ah - 1) {
    return `refines from bit ${scan.ah} to bit ${scan.al} (one bit at a time)`;
  }
  if (scan.al > 13) return `sends coefficients shifted by ${scan.al} bits (at most 13)`;
  return scan.tables;
}

/** 1st, 2nd, 3rd, 4th, … */
function ordinal(n: number): string {
  const tens = n % 100, ones = n % 10;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][ones] ?? "th";
  return `${n}${suffix}`;
}

/**
 * Whether libjpeg-turbo smooths the blocks of this progressive JPEG (`jdcoefct.c`,
 * `smoothing_ok`, with its default `do_block_smoothing`), and what each component needs for it:
 * it does when every component has its quantisation table, non-zero steps for the DC term and
 * the first 9 AC coefficients (zigzag order) and some DC data, and some component has one of
 * those 9 coefficients not sent to full precision — a progressive file whose scans stop short.
 * The files encoders write end every coefficient's refinement at bit 0 and are not smoothed.
 * Where the last scan's data ran short, the iMCU rows after `lastGoodRow` (the last one it
 * started with whole data) are smoothed with the bits as they stood before each component's last
 * scan, as libjpeg-turbo (`decompress_smooth_data`, `last_good_iMCU_row`) does.
 */
function blockSmoothing(
  frame: { height: number; componentIds: number[]; sampling: [number, number][] },
  scans: JpegScan[],
  latched: Map<number, Int32Array>,
  lastGoodRow: number,
): Map<number, BlockSmoothing> | undefined {
  const vMax = Math.max(...frame.sampling.map(([, v]) => v));
  const iMcuRows = Math.ceil(frame.height / (8 * vMax));
  const smoothing = new Map<number, BlockSmoothing>();
  let useful = false;
  for (const [i, id] of frame.componentIds.entries()) {
    const quant = latched.get(id);
    if (quant === undefined || NATURAL_ORDER.slice(0, 10).some((at) => quant[at] === 0)) return;
    const coefBits = new Array<number>(10).fill(-1);
    // What the component's last scan found (libjpeg-turbo's second half of `coef_bits`): 0 after
    // the file's first scan, -1 where the file has one scan.
    const before = new Array<number>(10).fill(-1);
    for (const [k, scan] of scans.entries()) {
      if (!scan.componentIds.includes(id)) continue;
      for (let c = Math.min(scan.ss, 1); c <= 9; c++) before[c] = k > 0 ? coefBits[c] : 0;
      for (let c = scan.ss; c <= Math.min(scan.se, 9); c++) coefBits[c] = scan.al;
    }
    if (coefBits[0] < 0) return;
    if (coefBits.slice(1).some((b) => b !== 0)) useful = true;
    if (scans.length === 1) before.fill(-1);
    smoothing.set(id, {
      coefBits,
      v: frame.sampling[i][1],
      iMcuRows,
      ...(lastGoodRow < iMcuRows - 1 ? { incomplete: { lastGoodRow, coefBits: before } } : {}),
    });
  }
  return useful ? smoothing : undefined;
}

/** The most `scanCoverage` allowed: twice what progressive files from encoders reach. */
const MAX_SCAN_COVERAGE = 8;

/**
 * How many times, on average, the scans of a JPEG go over each coefficient of each block: each
 * scan counts the blocks of its components (padded to whole MCUs) times the coefficients of its
 * band (1 for a DC scan; all 64 in a sequential frame, whose scans decode whole blocks whatever
 * their Ss and Se say). Baseline files score 1; libjpeg's progressive script about 3 for luma
 * and 2 for chroma. The decoder's time goes with it, and progressive scans can cost next to no
 * bytes (an end-of-band run covers up to 32767 blocks, and a refinement scan still visits every
 * coefficient of its band in every block), so a small file repeating scans could take minutes.
 */
function scanCoverage(
  frame: {
    width: number;
    height: number;
    componentIds: number[];
    sampling: [number, number][];
  },
  scans: JpegScan[],
  progressive: boolean,
): number {
  const hMax = Math.max(1, ...frame.sampling.map(([h]) => h));
  const vMax = Math.max(1, ...frame.sampling.map(([, v]) => v));
  const mcus = Math.ceil(frame.width / 8 / hMax) * Math.ceil(frame.height / 8 / vMax);
  const blocks = new Map(frame.componentIds.map((id, i) => {
    const [h, v] = frame.sampling[i];
    return [id, mcus * h * v];
  }));
  let total = 0;
  for (const n of blocks.values()) total += n;
  let work = 0;
  for (const scan of scans) {
    const band = !progressive ? 64 : Math.max(1, Math.min(scan.se, 63) - scan.ss + 1);
    for (const id of scan.componentIds) work += (blocks.get(id) ?? 0) * band;
  }
  return total > 0 ? work / (64 * total) : 0;
}

/**
 * Decodes a baseline, extended (SOF1) or progressive JPEG, Huffman-coded or arithmetic-coded
 * (SOF9, SOF10), to RGB: the pixels Pillow gives for `Image.open(file).convert("RGB")`, value for
 * value (the module doc says how). Greyscale JPEGs
 * are repeated into the 3 channels; four-component JPEGs (CMYK, or YCCK by their Adobe marker)
 * are read as Pillow reads them, Adobe-inverted, and converted as its `convert("RGB")` does.
 *
 * Refused with the file's name, before decoding: a declared size over the pixel limit, over
 * 65500 a side (libjpeg's limit) or, for a Huffman-coded file, far larger than the file could
 * hold (see `checkJpegBytes`), no frame header, samples other than 8-bit, lossless or
 * hierarchical coding (SOF3, SOF5–7, SOF11, SOF13–15), a number of components other than 1, 3 or
 * 4 (Pillow refuses those), sampling factors outside 1–4 or in fractional ratios, two components
 * with one id, a scan interleaving more than 10 blocks per MCU, a scan whose Huffman table is
 * missing or one libjpeg cannot build, a component whose quantisation table is not defined by
 * its first scan, a DQT, DHT, SOF, SOS, DRI or DAC segment whose length disagrees with its
 * contents or a DAC segment libjpeg refuses (see `segmentProblem`), a second SOI or frame header,
 * a marker libjpeg does not read, a JFIF or Adobe segment too short for Pillow's parser, another
 * scan after a sequential first one holding every component (libjpeg then expects the end), no
 * end-of-image marker (Pillow: "image file is truncated"; it does decode a sequential file
 * lacking only that marker when its decoding ends before the file does, which is modelled for
 * arithmetic-coded files only), and scans going over each coefficient more than 8 times on
 * average (Pillow decodes those, slowly; see `scanCoverage`). Refused while decoding, as Pillow
 * refuses it: an arithmetic-coded file whose decoding reads past the end of the file. Decoded
 * though Pillow 12.3 refuses them: arithmetic-coded files whose scan data runs past the 64 KiB
 * pieces Pillow reads a file in (libjpeg's arithmetic decoder cannot wait for the next piece
 * within a scan: "broken data stream"), decoded as libjpeg decodes the whole file. Damaged
 * entropy-coded data is decoded as libjpeg decodes it (`./_jpeg_entropy.ts`,
 * `./_jpeg_arith.ts`), as Pillow does; coefficient memory is allocated only for the checked
 * frame.
 *
 * @example
 * ```ts
 * import jpeg from "jpeg-js";
 * const rgba = new Uint8Array(16 * 16 * 4).fill(128);
 * const bytes = jpeg.encode({ data: rgba, width: 16, height: 16 }, 90).data;
 * const img = decodeJpeg(bytes, "polyp.jpg");
 * img.channels; // 3
 * ```
 */
export function decodeJpeg(
  bytes: Uint8Array,
  name = "image.jpg",
  options: DecodeOptions = {},
): Image8 {
  const declared = jpegDeclaredSize(bytes);
  if (declared === undefined) {
    throw new Error(
      `${name} is not a readable JPEG (no frame header before its scan data or end); replace ` +
        `or remove it`,
    );
  }
  checkPixels(name, declared.width, declared.height, options);
  if (declared.width > 65500 || declared.height > 65500) {
    throw new Error(
      `${name} declares ${declared.width}×${declared.height} pixels, more than the 65500 a side ` +
        `that libjpeg (and so Pillow) reads: the file is corrupt — replace or remove it`,
    );
  }
  checkJpegBytes(name, bytes.length, declared);
  if (declared.precision !== 8) {
    throw new Error(
      `${name} has ${declared.precision}-bit samples, which Pillow's libjpeg (8-bit) does not ` +
        `read: re-encode the image with 8-bit samples`,
    );
  }
  const arithmetic = declared.marker === 0xc9 || declared.marker === 0xca;
  if (
    !arithmetic && declared.marker !== 0xc0 && declared.marker !== 0xc1 && declared.marker !== 0xc2
  ) {
    const kind = declared.marker === 0xc3
      ? "lossless"
      : declared.marker === 0xcb
      ? "lossless arithmetic-coded"
      : declared.marker >= 0xcd
      ? "hierarchical arithmetic-coded"
      : "hierarchical";
    throw new Error(
      `${name} is a ${kind} JPEG (frame marker 0xFF${
        declared.marker.toString(16).toUpperCase()
      }), which this decoder does not read (baseline, extended and progressive JPEGs, ` +
        `Huffman- or arithmetic-coded, only): re-encode the image`,
    );
  }
  const factors = declared.sampling;
  const [hMax, vMax] = [0, 1].map((k) => Math.max(...factors.map((f) => f[k])));
  const bogus = factors.some(([h, v]) => !(h >= 1 && h <= 4 && v >= 1 && v <= 4));
  if (bogus || factors.some(([h, v]) => hMax % h !== 0 || vMax % v !== 0)) {
    throw new Error(
      `${name} has ${bogus ? "sampling factors outside 1–4" : "fractional chroma sampling"} (${
        factors.map(([h, v]) => `${h}×${v}`).join(", ")
      }), which libjpeg (and so Pillow) refuses: re-encode the image`,
    );
  }
  if (declared.count !== 1 && declared.count !== 3 && declared.count !== 4) {
    // Checked before decoding (255 components in a 6 KB file cost jpeg-js 5.5 GB and 18 s).
    throw new Error(
      `${name} has ${declared.count} colour components; Pillow reads JPEGs of 1 (grey), 3 ` +
        `(YCbCr or RGB) or 4 (CMYK) and refuses others: re-encode the image`,
    );
  }
  if (new Set(declared.componentIds).size !== declared.componentIds.length) {
    throw new Error(
      `${name} gives two colour components the same id (${declared.componentIds.join(", ")}); ` +
        `a scan cannot tell them apart (libjpeg takes the first): re-encode the ` +
        `image (any image editor or Pillow writes distinct ids)`,
    );
  }
  const index = new Map(declared.componentIds.map((id, i) => [id, i]));
  const progressive = declared.marker === 0xc2 || declared.marker === 0xca;
  const { scans, latched, missingTable, badSegment, ended, jfif, adobe } = jpegScans(
    bytes,
    new Map(declared.componentIds.map((id, i) => [id, declared.quantTables[i]])),
    progressive,
    arithmetic,
  );
  if (badSegment !== undefined) {
    const kind = ({
      0xdb: "quantisation table (DQT)",
      0xc4: "Huffman table (DHT)",
      0xda: "scan header (SOS)",
      0xdd: "restart interval (DRI)",
      0xcc: "DAC (arithmetic coding conditioning)",
    } as Record<number, string>)[badSegment.marker] ??
      (badSegment.marker >= 0xc0 && badSegment.marker <= 0xcf
        ? "frame header (SOF)"
        : `0xFF${badSegment.marker.toString(16).toUpperCase()}`);
    throw new Error(
      badSegment.problem.endsWith("past the end of the file")
        ? `${name} is not a readable JPEG (cut short: its ${kind} segment at byte ` +
          `${badSegment.at} ${badSegment.problem}); replace or remove it`
        : `${name} has a ${kind} segment at byte ${badSegment.at} that ${badSegment.problem}, ` +
          `which ${
            badSegment.by ?? "libjpeg (and so Pillow)"
          } refuses: the file is corrupt or hostile — replace or remove it`,
    );
  }
  // An arithmetic decoder reads no byte it does not need, so that the second case below is known
  // when decoding: it fails where the decoding reads past the end (`ArithmeticPastEnd`).
  const oneArithmeticScan = arithmetic && !progressive && scans.length > 0 &&
    scans[0].componentIds.length === declared.componentIds.length;
  if (!(ended || oneArithmeticScan) || scans.length === 0) {
    // Pillow raises "image file is truncated" where the file ends before libjpeg is done: before
    // the end-of-image marker (EOI) in a progressive or multi-scan file; in a single sequential
    // scan, where its decoding asks for bytes past the end (its bit buffer reads about 8 ahead).
    // Only the first is modelled for Huffman-coded files: a sequential one lacking just its EOI,
    // with some bytes after its scan's data, is refused here though Pillow decodes it.
    throw new Error(
      `${name} is not a readable JPEG (cut short: ${
        scans.length === 0 ? "no scan" : "no end-of-image marker after its scans"
      }, which Pillow refuses as truncated); replace or remove it`,
    );
  }
  for (const [k, scan] of scans.entries()) {
    const problem = scanProblem(scan, index, progressive);
    if (problem !== undefined) {
      throw new Error(
        `${name} has a scan (the ${ordinal(k + 1)}) that ${problem}, which libjpeg (and so ` +
          `Pillow) refuses: the file is corrupt — replace or remove it`,
      );
    }
    // libjpeg's limit on an interleaved scan's MCU (D_MAX_BLOCKS_IN_MCU); a scan of one
    // component is not interleaved: its MCU is one block, whatever the sampling factors.
    const at = scan.componentIds.flatMap((id) => index.get(id) ?? []);
    if (scan.componentIds.length < 2) continue;
    const blocks = at.reduce((sum, i) => sum + factors[i][0] * factors[i][1], 0);
    if (blocks > 10) {
      throw new Error(
        `${name} has a scan whose MCU holds ${blocks} blocks (components ${
          at.map((i) => `${factors[i][0]}×${factors[i][1]}`).join(" + ")
        } interleaved), more than the 10 libjpeg allows, so Pillow refuses it: re-encode the image`,
      );
    }
  }
  if (
    !progressive && scans.length > 1 &&
    scans[0].componentIds.length === declared.componentIds.length
  ) {
    // A sequential file whose first scan holds every component is read in one pass; libjpeg
    // then expects the end of the image, and errs at another scan (JERR_EOI_EXPECTED).
    throw new Error(
      `${name} has ${scans.length - 1} more scan(s) after a first one holding every component, ` +
        `which libjpeg (and so Pillow) refuses in a sequential JPEG: the file is corrupt — ` +
        `replace or remove it`,
    );
  }
  const coverage = scanCoverage(declared, scans, progressive);
  if (coverage > MAX_SCAN_COVERAGE) {
    throw new Error(
      `${name} has ${scans.length} scans that go over each coefficient of each block ${
        coverage.toFixed(1)
      } times on average, more than the ${MAX_SCAN_COVERAGE} allowed (encoders' progressive ` +
        `files: 2–4 times); decoding it would take long for nothing (a 48 KB file of 2000 ` +
        `scans took 32 s): the file is corrupt or hostile — replace or remove it`,
    );
  }
  if (missingTable !== undefined) {
    throw new Error(
      `${name} has no quantisation table ${missingTable[1]} defined before the first scan of ` +
        `component ${missingTable[0]}, which libjpeg (and so Pillow) refuses: re-encode the image`,
    );
  }
  let coefficients, stops;
  try {
    const entropyFrame = {
      width: declared.width,
      height: declared.height,
      progressive,
      sampling: factors,
    };
    const entropyScans = scans.map((scan) => ({
      ...scan,
      components: scan.componentIds.map((id) => index.get(id)!),
    }));
    ({ components: coefficients, stops } = arithmetic
      ? decodeArithmetic(bytes, entropyFrame, entropyScans)
      : decodeEntropy(bytes, entropyFrame, entropyScans));
  } catch (err) {
    if (err instanceof ArithmeticPastEnd) {
      throw new Error(
        `${name} is not a readable JPEG (cut short: the decoding of its ${
          ordinal(err.scan + 1)
        } scan reads past the end of the file, which Pillow refuses); replace or remove it`,
      );
    }
    throw new Error(
      `${name} is not a readable JPEG (${(err as Error)?.message ?? err}); replace or remove it`,
    );
  }
  // libjpeg reads markers again from where each scan's decoding stopped: a marker below 0xC0 other
  // than a restart marker, met there or in the bytes it skips to the next segment, is one it does
  // not read (the walk in `jpegScans` passed them).
  const ignored = (m: number) => m === 0x01 || (m >= 0xd0 && m <= 0xd7);
  for (const [k, scan] of scans.entries()) {
    const stop = stops[k];
    let bad = stop.marker < 0xc0 && stop.marker !== 0 && !ignored(stop.marker) ? stop.marker : 0;
    for (let q = stop.pos; bad === 0 && q + 1 < scan.end;) {
      const m = bytes[q + 1];
      if (bytes[q] !== 0xff || m === 0xff) q++;
      else if (m === 0x00 || ignored(m)) q += 2;
      else bad = m;
    }
    if (bad !== 0) {
      throw new Error(
        `${name} has a marker 0xFF${
          bad.toString(16).toUpperCase().padStart(2, "0")
        } after the data of its ${
          ordinal(k + 1)
        } scan, which libjpeg (and so Pillow) refuses: the file is corrupt — replace or remove it`,
      );
    }
  }
  const smoothing = progressive
    ? blockSmoothing(declared, scans, latched, stops.at(-1)!.lastGoodRow)
    : undefined;
  const { width, height } = declared;
  const planes: JpegComponentPlane[] = declared.componentIds.map((id, i) => {
    const [h, v] = factors[i];
    // A component no scan reaches has no table latched: libjpeg's multipliers are then zero.
    const quant = latched.get(id) ?? new Int32Array(64);
    return {
      lines: componentSamples(
        coefficients[i],
        quant,
        Math.ceil((width * h) / (8 * hMax)),
        Math.ceil((height * v) / (8 * vMax)),
        smoothing?.get(id),
      ),
      scaleX: h / hMax,
      scaleY: v / vMax,
    };
  });
  const data = new Uint8Array(width * height * 3);
  const frame = {
    width,
    height,
    components: planes,
    jfif,
    adobe,
    componentIds: declared.componentIds,
  };
  if (!jpegFrameToRgb(frame, data)) {
    throw new Error(
      `${name} is not a readable JPEG (its components cannot be converted); replace it`,
    );
  }
  return { width, height, channels: 3, data };
}

/**
 * Decodes a JPEG or PNG, chosen by the file's signature (not its extension), to RGB.
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * const png = new PNG({ width: 298, height: 224 }); // a blank RGBA image
 * const bytes = PNG.sync.write(png);
 * const img = decodeImage(bytes, "a.png");
 * img.data.length; // 298 · 224 · 3
 * ```
 */
export function decodeImage(
  bytes: Uint8Array,
  name = "image",
  options: DecodeOptions = {},
): Image8 {
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) {
    return decodeJpeg(bytes, name, options);
  }
  if (bytes.length >= 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e) {
    return decodePng(bytes, name, options);
  }
  throw new Error(
    `${name} is neither a JPEG nor a PNG (${bytes.length} bytes, bad signature); replace or remove it`,
  );
}

// ---------------------------------------------------------------------------------------------
// Pillow's resampling (libImaging/Resample.c), BICUBIC filter

const PRECISION_BITS = 32 - 8 - 2;

function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

interface Coeffs {
  ksize: number;
  bounds: Int32Array; // [xmin, count] per output pixel
  kk: Int32Array; // fixed-point weights, ksize per output pixel
}

/** Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-image box. */
function precomputeCoeffs(inSize: number, outSize: number): Coeffs {
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = 2 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let ww = 0;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const v = bicubic((x + xmin - center + 0.5) * ss);
      w[x] = v;
      ww += v;
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = k < 0
        ? Math.trunc(-0.5 + k * (1 << PRECISION_BITS))
        : Math.trunc(0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v: number): number {
  const r = v >> PRECISION_BITS;
  return r < 0 ? 0 : r > 255 ? 255 : r;
}

/**
 * Resizes like Pillow's `Image.resize((width, height), Image.BICUBIC)` (exact, see the module
 * doc). Channels are resized independently.
 *
 * @example
 * ```ts
 * const big = resizeBicubic({ width: 28, height: 28, channels: 1, data: new Uint8Array(784) }, 224, 224);
 * ```
 */
export function resizeBicubic(image: Image8, width: number, height: number): Image8 {
  const { width: inW, height: inH, channels: C, data } = image;
  if (!(Number.isInteger(width) && width > 0 && Number.isInteger(height) && height > 0)) {
    throw new Error(`resizeBicubic: target size ${width}×${height} must be positive integers`);
  }
  if (width === inW && height === inH) return { width, height, channels: C, data: data.slice() };
  const half = 1 << (PRECISION_BITS - 1);
  const vert = precomputeCoeffs(inH, height);
  // The horizontal pass only needs the rows the vertical pass will read.
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[height * 2 - 2] + vert.bounds[height * 2 - 1];
  let tmp = data;
  let tmpRow0 = 0;
  if (width !== inW) {
    const hz = precomputeCoeffs(inW, width);
    const rows = yLast - yFirst;
    tmp = new Uint8Array(rows * width * C);
    tmpRow0 = yFirst;
    for (let y = 0; y < rows; y++) {
      const inRow = (y + yFirst) * inW * C;
      const outRow = y * width * C;
      for (let xx = 0; xx < width; xx++) {
        const xmin = hz.bounds[xx * 2];
        const n = hz.bounds[xx * 2 + 1];
        const k0 = xx * hz.ksize;
        for (let c = 0; c < C; c++) {
          let ss = half;
          let p = inRow + xmin * C + c;
          for (let x = 0; x < n; x++, p += C) ss += data[p] * hz.kk[k0 + x];
          tmp[outRow + xx * C + c] = clip8(ss);
        }
      }
    }
  }
  if (height === inH) return { width, height, channels: C, data: tmp };
  const out = new Uint8Array(width * height * C);
  const rowLen = width * C;
  for (let yy = 0; yy < height; yy++) {
    const ymin = vert.bounds[yy * 2] - tmpRow0;
    const n = vert.bounds[yy * 2 + 1];
    const k0 = yy * vert.ksize;
    const outRow = yy * rowLen;
    for (let i = 0; i < rowLen; i++) {
      let ss = half;
      let p = ymin * rowLen + i;
      for (let y = 0; y < n; y++, p += rowLen) ss += tmp[p] * vert.kk[k0 + y];
      out[outRow + i] = clip8(ss);
    }
  }
  return { width, height, channels: C, data: out };
}

/** Python's `round()` (half to even), which torchvision uses for crop offsets. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Crops the centre like torchvision's `CenterCrop((height, width))` (offsets rounded half to
 * even, as Python's `round`). The crop must fit inside the image.
 *
 * @example
 * ```ts
 * const img = { width: 298, height: 224, channels: 3, data: new Uint8Array(298 * 224 * 3) };
 * centerCrop(img, 224, 224).width; // 224: columns 37..260 of the 298
 * ```
 */
export function centerCrop(image: Image8, width: number, height: number): Image8 {
  const { width: W, height: H, channels: C, data } = image;
  if (width > W || height > H) {
    throw new Error(`centerCrop: ${width}×${height} does not fit in a ${W}×${H} image`);
  }
  if (width === W && height === H) return image;
  const top = roundHalfEven((H - height) / 2);
  const left = roundHalfEven((W - width) / 2);
  const out = new Uint8Array(width * height * C);
  for (let y = 0; y < height; y++) {
    const s = ((top + y) * W + left) * C;
    out.set(data.subarray(s, s + width * C), y * width * C);
  }
  return { width, height, channels: C, data: out };
}

/**
 * The size torchvision's `Resize(size)` gives: the shorter side becomes `size`, the longer
 * `int(size · long / short)`.
 *
 * @example
 * ```ts
 * resizedShortSide(300, 250, 224); // [268, 224]
 * ```
 */
export function resizedShortSide(width: number, height: number, size: number): [number, number] {
  if (width <= height) return [size, Math.trunc((size * height) / width)];
  return [Math.trunc((size * width) / height), size];
}

/**
 * CLIP preprocessing of docs/data.md#preprocessing on uint8 pixels: bicubic resize of the shorter
 * side to `size` (Pillow-exact), then a centre crop to `size × size`. Normalisation happens later,
 * when a batch is formed (`makeBatch`).
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * const png = new PNG({ width: 298, height: 224 }); // a blank RGBA image
 * const bytes = PNG.sync.write(png);
 * const x = clipPreprocess(decodeImage(bytes, "a.png"), 224); // 224×224×3
 * x.height; // 224
 * ```
 */
export function clipPreprocess(image: Image8, size: number): Image8 {
  const [w, h] = resizedShortSide(image.width, image.height, size);
  const resized = w === image.width && h === image.height ? image : resizeBicubic(image, w, h);
  return centerCrop(resized, size, size);
}

/**
 * Converts to `channels` (1 or 3): grey is replicated to RGB; RGB becomes grey with Pillow's
 * `convert("L")` weights (299/587/114, fixed point).
 *
 * @example
 * ```ts
 * toChannels({ width: 1, height: 1, channels: 1, data: new Uint8Array([7]) }, 3).data; // [7, 7, 7]
 * ```
 */
export function toChannels(image: Image8, channels: number): Image8 {
  const { width, height, channels: C, data } = image;
  if (C === channels) return image;
  const n = width * height;
  if (C === 1 && channels === 3) {
    const out = new Uint8Array(n * 3);
    for (let i = 0; i < n; i++) out[i * 3] = out[i * 3 + 1] = out[i * 3 + 2] = data[i];
    return { width, height, channels: 3, data: out };
  }
  if (C === 3 && channels === 1) {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      out[i] = (data[i * 3] * 19595 + data[i * 3 + 1] * 38470 + data[i * 3 + 2] * 7471 + 0x8000) >>
        16;
    }
    return { width, height, channels: 1, data: out };
  }
  throw new Error(`toChannels: cannot convert ${C} channels to ${channels}; use 1 or 3`);
}
