/**
 * The entropy decoding of a Huffman-coded JPEG (ITU T.81): sequential scans (SOF0, SOF1) and
 * progressive ones (SOF2: DC first and refinement scans, AC first and refinement scans with their
 * end-of-band runs), restart intervals, stuffed and fill bytes. Internal to `./image.ts`, which
 * parses and checks the segments and hands over each scan; this turns the scans' bits into every
 * component's coefficient blocks (natural order, MCU-padded), which `./_jpeg_idct.ts` transforms.
 * It also holds what the arithmetic decoder (`./_jpeg_arith.ts`) shares with it: the coefficient
 * arrays (`coefficientArrays`), the MCU walk of a scan (`scanLayout`) and the reading of restart
 * markers (`readRestartMarker`).
 *
 * On damaged data it does what libjpeg-turbo does (and so what Pillow returns):
 * - a marker met inside the entropy-coded data ends it: the bits the decoder still asks for read
 *   as zeros, and once it has read such a bit, the blocks of the following MCUs are left as they
 *   are (zero: mid-grey for a sequential scan) up to the next restart marker or the scan's end;
 * - a code that no table holds reads as the symbol 0 after 17 bits;
 * - a zero run past the band's end stores its coefficient in the last position (63);
 * - a coefficient is kept in 16 bits (libjpeg's `JCOEF`), wrapping around;
 * - a restart marker other than the one expected is handled as libjpeg's `jpeg_resync_to_restart`
 *   does: the expected one or one too far from it is skipped, one of the two before it (or a
 *   marker below 0xC0) makes the decoder look for the next marker, one of the two after it (or
 *   any other marker) is left for later, so that the restart interval reads as empty (zeros);
 * - a DC prediction leaving the 32-bit range wraps around in a sequential scan and is an error in
 *   a progressive one (libjpeg: `JERR_BAD_DCT_COEF`).
 *
 * @example
 * ```ts
 * // One 8×8 grey block with the standard tables: DC code 100 (a 3-bit difference), its bits 101
 * // (+5), AC code 1010 (end of block), then fill bits 1: 1001 0110 1011 1111, and EOI.
 * const data = new Uint8Array([0x96, 0xbf, 0xff, 0xd9]);
 * const frame = { width: 8, height: 8, progressive: false, sampling: [[1, 1]] as [number, number][] };
 * const { components: [block] } = decodeEntropy(data, frame, [{
 *   components: [0], ss: 0, se: 63, ah: 0, al: 0, restartInterval: 0, start: 0,
 *   dc: [STANDARD_TABLES.dc0], ac: [STANDARD_TABLES.ac0],
 * }]);
 * block.coefficients[0]; // 5
 * ```
 * @module
 */
import { NATURAL_ORDER } from "./_jpeg_idct.ts";

/** A Huffman table as a DHT segment defines it: codes per length (1–16) and symbols. */
export interface HuffmanTable {
  counts: Uint8Array;
  symbols: Uint8Array;
}

/** A scan's header, with the restart interval in force and where its data starts. */
export interface ScanHeader {
  /** The scan's components, as indices into the frame's, in the scan header's order. */
  components: number[];
  /** Spectral selection and successive approximation (ignored for sequential frames). */
  ss: number;
  se: number;
  ah: number;
  al: number;
  /** The restart interval in force (MCUs; 0: none). */
  restartInterval: number;
  /** Where the scan's entropy-coded data starts. */
  start: number;
}

/** What a Huffman-coded scan decodes, as its header and the segments before it set it. */
export interface EntropyScan extends ScanHeader {
  /** Each scan component's DC and AC table (those the scan does not use may be absent). */
  dc: (HuffmanTable | undefined)[];
  ac: (HuffmanTable | undefined)[];
}

/** The frame, as far as the entropy decoding needs it. */
export interface EntropyFrame {
  width: number;
  height: number;
  progressive: boolean;
  /** Each component's horizontal and vertical sampling factors. */
  sampling: [number, number][];
}

/**
 * Where libjpeg goes on reading markers after a scan: the marker that stopped its data (0 where
 * none did: then from `pos`, skipping bytes to the next marker), and where the bytes after it
 * start.
 */
export interface ScanStop {
  marker: number;
  pos: number;
  /**
   * The last iMCU row (block rows of the frame's largest vertical factor) in which an MCU was
   * started with the data still whole (libjpeg-turbo's `last_good_iMCU_row`, which its block
   * smoothing reads: rows past it are smoothed as the scans before this one left them).
   */
  lastGoodRow: number;
}

/** A component's coefficients: blocks of 64 (natural order), row-major, MCU-padded. */
export interface ComponentCoefficients {
  coefficients: Int16Array;
  /** Blocks per row and rows of blocks, padding to whole MCUs included. */
  blocksPerLine: number;
  blockRows: number;
}

function table(counts: number[], symbols: number[]): HuffmanTable {
  return { counts: new Uint8Array(counts), symbols: new Uint8Array(symbols) };
}

// deno-fmt-ignore
const AC_LUMA = [
  0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
  0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
  0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
  0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
  0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
  0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
  0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
  0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
  0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
  0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
  0xf9, 0xfa,
];
// deno-fmt-ignore
const AC_CHROMA = [
  0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
  0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
  0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
  0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
  0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
  0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
  0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
  0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
  0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
  0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
  0xf9, 0xfa,
];
const DC_SYMBOLS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

/**
 * The example tables of T.81 Annex K.3 (luma: table 0, chroma: table 1), which libjpeg-turbo
 * gives the table numbers 0 and 1 that no DHT segment has defined when decoding starts (Motion
 * JPEG frames leave them out).
 */
export const STANDARD_TABLES: Readonly<Record<"dc0" | "dc1" | "ac0" | "ac1", HuffmanTable>> = {
  dc0: table([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], DC_SYMBOLS),
  dc1: table([0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], DC_SYMBOLS),
  ac0: table([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d], AC_LUMA),
  ac1: table([0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77], AC_CHROMA),
};

/** Zigzag index → natural position, with 16 more entries at 63 for runs past the band's end. */
const ZIGZAG = new Int32Array(80).fill(63);
ZIGZAG.set(NATURAL_ORDER);

/** How many bits the first-level lookup reads. */
const LOOKUP_BITS = 9;

/** A table ready to decode with: a lookup of the first 9 bits, then code by code. */
interface DecodingTable {
  /** By the next 9 bits: (code length << 8) | symbol, or 0 for a longer code. */
  lookup: Uint16Array;
  /** The largest code of each length (index 1–16; -1: none), and 17: above every code. */
  maxCode: Int32Array;
  /** Symbol index minus code, for each length. */
  offset: Int32Array;
  symbols: Uint8Array;
}

const decodingTables = new WeakMap<HuffmanTable, DecodingTable>();

/** Canonical codes (T.81 Annex C) of a table that `./image.ts` has checked. */
function decodingTable(t: HuffmanTable): DecodingTable {
  const cached = decodingTables.get(t);
  if (cached !== undefined) return cached;
  const lookup = new Uint16Array(1 << LOOKUP_BITS);
  const maxCode = new Int32Array(18).fill(-1);
  const offset = new Int32Array(18);
  const symbols = new Uint8Array(256);
  symbols.set(t.symbols.subarray(0, 256));
  let code = 0, k = 0;
  for (let len = 1; len <= 16; len++) {
    const n = t.counts[len - 1];
    if (n > 0) {
      offset[len] = k - code;
      for (let i = 0; i < n; i++, k++, code++) {
        if (len <= LOOKUP_BITS) {
          const shift = LOOKUP_BITS - len;
          const first = code << shift;
          const entry = (len << 8) | symbols[k];
          for (let j = 0; j < 1 << shift; j++) lookup[first + j] = entry;
        }
      }
      maxCode[len] = code - 1;
    }
    code <<= 1;
  }
  maxCode[17] = 0x7fffffff;
  const d = { lookup, maxCode, offset, symbols };
  decodingTables.set(t, d);
  return d;
}

/** Marker code standing for the end of the bytes. */
export const END = 0x100;

/**
 * The bits of one scan's entropy-coded data: stuffed zero bytes dropped, fill bytes skipped, and
 * zeros once a marker is met (`marker` then holds it, and `pos` points past it).
 */
class BitReader {
  bytes: Uint8Array;
  pos: number;
  /** Up to 32 bits; the `bits` lowest are unread. */
  acc = 0;
  bits = 0;
  /** How many of the unread bits are zeros made up after a marker. */
  pad = 0;
  /** The marker that ended the data (0: none met yet). */
  marker = 0;
  /** Whether a made-up bit has been read (libjpeg's `insufficient_data`). */
  short = false;

  constructor(bytes: Uint8Array, pos: number) {
    this.bytes = bytes;
    this.pos = pos;
  }

  fill(): void {
    const bytes = this.bytes;
    while (this.bits <= 24) {
      let c = 0;
      if (this.marker !== 0) {
        this.pad += 8;
      } else if (this.pos >= bytes.length) {
        this.marker = END;
        this.pad += 8;
      } else {
        c = bytes[this.pos++];
        if (c === 0xff) {
          let d = bytes[this.pos];
          while (d === 0xff) d = bytes[++this.pos];
          if (d === 0) {
            this.pos++;
          } else {
            this.marker = d === undefined ? END : d;
            this.pos++;
            c = 0;
            this.pad += 8;
          }
        }
      }
      this.acc = (this.acc << 8) | c;
      this.bits += 8;
    }
  }

  /** The next `n` bits (1–16). */
  get(n: number): number {
    if (this.bits < n) this.fill();
    const bits = this.bits -= n;
    if (bits < this.pad) {
      this.short = true;
      this.pad = bits;
    }
    return (this.acc >>> bits) & ((1 << n) - 1);
  }

  /** The next symbol of table `t` (0 for a code the table does not hold, after 17 bits). */
  decode(t: DecodingTable): number {
    if (this.bits < LOOKUP_BITS) this.fill();
    const look = (this.acc >>> (this.bits - LOOKUP_BITS)) & ((1 << LOOKUP_BITS) - 1);
    const entry = t.lookup[look];
    if (entry !== 0) {
      const bits = this.bits -= entry >> 8;
      if (bits < this.pad) {
        this.short = true;
        this.pad = bits;
      }
      return entry & 255;
    }
    this.get(LOOKUP_BITS);
    let code = look, len = LOOKUP_BITS;
    const maxCode = t.maxCode;
    while (code > maxCode[len]) {
      code = (code << 1) | this.get(1);
      len++;
    }
    if (len > 16) return 0;
    return t.symbols[(code + t.offset[len]) & 255];
  }

  /**
   * At a restart: drops the buffered bits and reads restart marker `expected` (0–7), resyncing as
   * `jpeg_resync_to_restart` does when another marker is there.
   */
  restart(expected: number): void {
    this.acc = this.bits = this.pad = 0;
    readRestartMarker(this, expected);
    // The data of the next interval is whole again, unless a marker is still in the way.
    if (this.marker === 0) this.short = false;
  }
}

/** Where a scan's decoder stands in the bytes: the next byte to read, and the marker met (or 0). */
export interface MarkerPosition {
  bytes: Uint8Array;
  pos: number;
  marker: number;
}

/**
 * Looks for the next marker from where the bytes were last read (libjpeg's `next_marker`): skips
 * to an 0xFF not followed by a stuffed zero, past fill bytes; `END` at the end of the bytes.
 */
export function nextMarker(r: MarkerPosition): void {
  const bytes = r.bytes, n = bytes.length;
  let p = r.pos;
  for (;;) {
    while (p < n && bytes[p] !== 0xff) p++;
    while (p < n && bytes[p] === 0xff) p++;
    if (p >= n) {
      r.marker = END;
      break;
    }
    const c = bytes[p++];
    if (c !== 0) {
      r.marker = c;
      break;
    }
  }
  r.pos = p;
}

/**
 * Reads restart marker `expected` (0–7) where a restart is due (libjpeg's `read_restart_marker`):
 * the marker already met, else the next one. Another marker is handled as libjpeg's
 * `jpeg_resync_to_restart` does: the expected one or one too far from it is skipped, one of the
 * two before it (or a marker below 0xC0) makes the reader look for the next marker, one of the
 * two after it (or any other marker) is left in `marker`, so that the interval reads as empty.
 */
export function readRestartMarker(r: MarkerPosition, expected: number): void {
  if (r.marker === 0) nextMarker(r);
  for (;;) {
    const m = r.marker;
    let action: number;
    if (m < 0xc0) action = 2;
    else if (m < 0xd0 || m > 0xd7) action = 3;
    else if (m === 0xd0 + expected) action = 1;
    else if (m === 0xd0 + ((expected + 1) & 7) || m === 0xd0 + ((expected + 2) & 7)) {
      action = 3;
    } else if (m === 0xd0 + ((expected - 1) & 7) || m === 0xd0 + ((expected - 2) & 7)) {
      action = 2;
    } else action = 1;
    if (action === 1) {
      r.marker = 0;
      return;
    }
    if (action === 3) return;
    r.marker = 0;
    nextMarker(r);
  }
}

/** The `s` bits `x` sent for a value of magnitude category `s`, as that value (T.81 F.2.2.1). */
function extend(x: number, s: number): number {
  return x < 1 << (s - 1) ? x - (1 << s) + 1 : x;
}

/**
 * Each component's coefficient blocks after decoding `scans` in order (the frame was checked:
 * sampling factors 1–4 in whole ratios, scans naming its components, the tables they decode
 * with present), and where each scan's decoding stopped. Blocks no scan reaches stay zero.
 */
export function decodeEntropy(
  bytes: Uint8Array,
  frame: EntropyFrame,
  scans: EntropyScan[],
): { components: ComponentCoefficients[]; stops: ScanStop[] } {
  const out = coefficientArrays(frame);
  const stops = scans.map((scan) => decodeScan(bytes, frame, scan, out));
  return { components: out, stops };
}

/**
 * Every component's coefficients, zero: blocks of 64 covering whole MCUs of the frame (libjpeg's
 * coefficient arrays are padded the same way, and blocks no scan reaches stay zero there too).
 */
export function coefficientArrays(frame: EntropyFrame): ComponentCoefficients[] {
  const hMax = Math.max(...frame.sampling.map(([h]) => h));
  const vMax = Math.max(...frame.sampling.map(([, v]) => v));
  const mcusPerLine = Math.ceil(frame.width / (8 * hMax));
  const mcuRows = Math.ceil(frame.height / (8 * vMax));
  return frame.sampling.map(([h, v]) => ({
    coefficients: new Int16Array(mcusPerLine * h * mcuRows * v * 64),
    blocksPerLine: mcusPerLine * h,
    blockRows: mcuRows * v,
  }));
}

/**
 * How a scan's MCUs walk the blocks: `lines` rows of `perLine` MCUs; the blocks of one MCU, as
 * their scan component (`blockComp`) and their offset in its coefficients from the MCU's first
 * block (`blockOffset`); and how far that first block moves per MCU row (`rowStep`) and per MCU
 * (`colStep`), for each scan component. A scan of one component is not interleaved: its MCU is
 * one block, and its rows and columns are the component's own blocks (not padded to whole MCUs
 * of the frame), of which `rowsPerImcu` (its vertical factor) make an iMCU row.
 */
export interface ScanLayout {
  lines: number;
  perLine: number;
  rowsPerImcu: number;
  blockComp: Int32Array;
  blockOffset: Int32Array;
  rowStep: Int32Array;
  colStep: Int32Array;
}

/** The MCU walk of a scan of frame components `components` (see `ScanLayout`). */
export function scanLayout(
  frame: EntropyFrame,
  components: number[],
  out: ComponentCoefficients[],
): ScanLayout {
  const hMax = Math.max(...frame.sampling.map(([h]) => h));
  const vMax = Math.max(...frame.sampling.map(([, v]) => v));
  const n = components.length;
  const blockComp: number[] = [], blockOffset: number[] = [];
  const rowStep: number[] = [], colStep: number[] = [];
  if (n === 1) {
    const [h, v] = frame.sampling[components[0]];
    return {
      lines: Math.ceil(frame.height * v / (8 * vMax)),
      perLine: Math.ceil(frame.width * h / (8 * hMax)),
      rowsPerImcu: v,
      blockComp: new Int32Array(1),
      blockOffset: new Int32Array(1),
      rowStep: new Int32Array([out[components[0]].blocksPerLine * 64]),
      colStep: new Int32Array([64]),
    };
  }
  for (let k = 0; k < n; k++) {
    const [h, v] = frame.sampling[components[k]];
    const stride = out[components[k]].blocksPerLine;
    for (let y = 0; y < v; y++) {
      for (let x = 0; x < h; x++) {
        blockComp.push(k);
        blockOffset.push((y * stride + x) * 64);
      }
    }
    rowStep.push(v * stride * 64);
    colStep.push(h * 64);
  }
  return {
    lines: Math.ceil(frame.height / (8 * vMax)),
    perLine: Math.ceil(frame.width / (8 * hMax)),
    rowsPerImcu: 1,
    blockComp: new Int32Array(blockComp),
    blockOffset: new Int32Array(blockOffset),
    rowStep: new Int32Array(rowStep),
    colStep: new Int32Array(colStep),
  };
}

function decodeScan(
  bytes: Uint8Array,
  frame: EntropyFrame,
  scan: EntropyScan,
  out: ComponentCoefficients[],
): ScanStop {
  const reader = new BitReader(bytes, scan.start);
  const n = scan.components.length;
  const progressive = frame.progressive;
  // Which kind of scan, and its block decoder.
  const dcFirst = progressive && scan.ss === 0 && scan.ah === 0;
  const dcRefine = progressive && scan.ss === 0 && scan.ah !== 0;
  const acFirst = progressive && scan.ss !== 0 && scan.ah === 0;
  const dcTables = scan.dc.map((t) => (t && (!progressive || dcFirst) ? decodingTable(t) : null));
  const acTables = scan.ac.map((
    t,
  ) => (t && (!progressive || scan.ss !== 0) ? decodingTable(t) : null));
  const pred = new Float64Array(n);
  const state = { eobrun: 0 };
  const { lines, perLine, rowsPerImcu, blockComp, blockOffset, rowStep, colStep } = scanLayout(
    frame,
    scan.components,
    out,
  );
  const data = scan.components.map((c) => out[c].coefficients);
  const block = (k: number, off: number) => {
    const coefs = data[k];
    if (!progressive) sequentialBlock(reader, coefs, off, dcTables[k]!, acTables[k]!, pred, k);
    else if (dcFirst) dcFirstBlock(reader, coefs, off, dcTables[k]!, pred, k, scan.al);
    else if (dcRefine) {
      if (reader.get(1)) coefs[off] |= 1 << scan.al;
    } else if (acFirst) acFirstBlock(reader, coefs, off, acTables[k]!, scan, state);
    else acRefineBlock(reader, coefs, off, acTables[k]!, scan, state);
  };
  const interval = scan.restartInterval;
  let togo = interval, expected = 0;
  let lastGoodRow = 0;
  for (let row = 0; row < lines; row++) {
    for (let col = 0; col < perLine; col++) {
      // libjpeg-turbo's consume_data looks before the MCU's restart is processed.
      if (!reader.short) lastGoodRow = Math.floor(row / rowsPerImcu);
      if (interval > 0) {
        if (togo === 0) {
          reader.restart(expected);
          expected = (expected + 1) & 7;
          pred.fill(0);
          state.eobrun = 0;
          togo = interval;
        }
        togo--;
      }
      if (reader.short) continue;
      for (let b = 0; b < blockComp.length; b++) {
        const k = blockComp[b];
        block(k, blockOffset[b] + row * rowStep[k] + col * colStep[k]);
      }
    }
  }
  return { marker: reader.marker, pos: reader.pos, lastGoodRow };
}

/**
 * The next DC value of scan component `k`. A prediction leaving the 32-bit range is an error in a
 * progressive scan (libjpeg-turbo's `decode_mcu_DC_first`: `JERR_BAD_DCT_COEF`) and wraps around
 * in a sequential one (its `decode_mcu` adds without a check, in a 32-bit `int`).
 */
function dcValue(
  reader: BitReader,
  t: DecodingTable,
  pred: Float64Array,
  k: number,
  wrap = false,
): number {
  const s = reader.decode(t);
  const diff = s === 0 ? 0 : extend(reader.get(s), s);
  if (wrap) return pred[k] = (pred[k] + diff) | 0;
  const v = pred[k] + diff;
  if (v > 0x7fffffff || v < -0x80000000) {
    throw new Error("its DC coefficients run out of range (libjpeg: JERR_BAD_DCT_COEF)");
  }
  pred[k] = v;
  return v;
}

function sequentialBlock(
  reader: BitReader,
  coefs: Int16Array,
  off: number,
  dc: DecodingTable,
  ac: DecodingTable,
  pred: Float64Array,
  k: number,
): void {
  coefs[off] = dcValue(reader, dc, pred, k, true);
  for (let i = 1; i < 64; i++) {
    const rs = reader.decode(ac);
    const s = rs & 15, r = rs >> 4;
    if (s !== 0) {
      i += r;
      coefs[off + ZIGZAG[i]] = extend(reader.get(s), s);
    } else {
      if (r !== 15) break;
      i += 15;
    }
  }
}

function dcFirstBlock(
  reader: BitReader,
  coefs: Int16Array,
  off: number,
  dc: DecodingTable,
  pred: Float64Array,
  k: number,
  al: number,
): void {
  coefs[off] = dcValue(reader, dc, pred, k) << al;
}

function acFirstBlock(
  reader: BitReader,
  coefs: Int16Array,
  off: number,
  ac: DecodingTable,
  scan: EntropyScan,
  state: { eobrun: number },
): void {
  if (state.eobrun > 0) {
    state.eobrun--;
    return;
  }
  const { se, al } = scan;
  for (let i = scan.ss; i <= se; i++) {
    const rs = reader.decode(ac);
    const s = rs & 15, r = rs >> 4;
    if (s !== 0) {
      i += r;
      coefs[off + ZIGZAG[i]] = extend(reader.get(s), s) << al;
    } else if (r === 15) {
      i += 15;
    } else {
      let run = 1 << r;
      if (r !== 0) run += reader.get(r);
      state.eobrun = run - 1;
      break;
    }
  }
}

function acRefineBlock(
  reader: BitReader,
  coefs: Int16Array,
  off: number,
  ac: DecodingTable,
  scan: EntropyScan,
  state: { eobrun: number },
): void {
  const { se, al } = scan;
  const plus = 1 << al, minus = -1 << al;
  let i = scan.ss;
  if (state.eobrun === 0) {
    for (; i <= se; i++) {
      const rs = reader.decode(ac);
      let s = rs & 15, r = rs >> 4;
      if (s !== 0) {
        // The new coefficient's size is always 1; libjpeg warns on others and reads one bit.
        s = reader.get(1) ? plus : minus;
      } else if (r !== 15) {
        state.eobrun = 1 << r;
        if (r !== 0) state.eobrun += reader.get(r);
        break;
      }
      // Skip r zero coefficients (refining the non-zero ones passed), then place s.
      do {
        const at = off + ZIGZAG[i];
        const c = coefs[at];
        if (c !== 0) {
          if (reader.get(1) && (c & plus) === 0) coefs[at] = c >= 0 ? c + plus : c + minus;
        } else if (--r < 0) break;
        i++;
      } while (i <= se);
      if (s !== 0) coefs[off + ZIGZAG[i]] = s;
    }
  }
  if (state.eobrun > 0) {
    // The rest of the band: refine the non-zero coefficients.
    for (; i <= se; i++) {
      const at = off + ZIGZAG[i];
      const c = coefs[at];
      if (c !== 0 && reader.get(1) && (c & plus) === 0) {
        coefs[at] = c >= 0 ? c + plus : c + minus;
      }
    }
    state.eobrun--;
  }
}
