/**
 * The entropy decoding of an arithmetic-coded JPEG (ITU T.81 Annexes D and F): sequential scans
 * (SOF9) and progressive ones (SOF10: DC first and refinement scans, AC first and refinement
 * scans), with restart intervals. Internal to `./image.ts`, which parses and checks the segments
 * (the conditioning tables of DAC segments among them) and hands over each scan; like
 * `./_jpeg_entropy.ts` for Huffman-coded files, this turns the scans' data into every
 * component's coefficient blocks (natural order, MCU-padded) for `./_jpeg_idct.ts`, and does it
 * as libjpeg-turbo's `jdarith.c` does (and so as Pillow does):
 *
 * - the QM coder of Annex D: an interval register A and a code register C holding the next bits,
 *   the probability estimate of each binary decision kept in a one-byte statistics bin (its
 *   state in Table D.2 and its more probable symbol), adapted on each renormalisation;
 * - bins per conditioning table number (0–15), so that components sharing a table share its
 *   statistics: 64 per DC table (Table F.4: the five DC-difference contexts S0, then X1… and
 *   M2… of the magnitude), 256 per AC table (3 per coefficient index, then X2… and M2… below and
 *   above the table's Kx); one fixed bin at probability ½ for signs and refinement bits; all of a
 *   scan's bins are reset to their initial state at its start and at each restart marker, with
 *   the DC predictions and contexts;
 * - the DC difference's context from the previous difference of its component: zero, small
 *   positive or negative, large positive or negative, by its magnitude category against the
 *   table's bounds L and U (`2^L / 2` and `2^U / 2`, as F.1.4.4.1.2 has it);
 * - bytes are fetched one at a time as renormalisation asks for them, a stuffed 0xFF 00 is an
 *   0xFF, extra 0xFF are fill bytes, and once a marker is met the data reads as zero bytes up to
 *   the next restart (T.81 allows a scan's data to end before its decoding does; libjpeg feeds it
 *   zeros and goes on decoding, without the Huffman decoder's giving up on the rest);
 * - a restart marker is read and resynced to as the Huffman decoder does (`readRestartMarker`);
 * - an impossible code (a magnitude of 2^15 or more, a run of zero coefficients past the band's
 *   end) makes libjpeg warn (`JWRN_ARITH_BAD_CODE`) and set the decoder's bit counter to −1: the
 *   MCUs after it, and the blocks left in its own MCU, are not decoded up to the next restart
 *   marker (they keep what earlier scans gave them, zeros in a sequential scan: mid-grey); the
 *   coefficients decoded before it stay;
 * - DC values are kept to 16 bits (a prediction wraps around; a first DC scan's values are
 *   shifted by Al after that), coefficients are 16-bit (`JCOEF`), a refinement bit is added to a
 *   coefficient whatever its bit already is.
 *
 * A marker met in the data does not mark the decoding as short of data for the block smoothing
 * of progressive files (`ScanStop.lastGoodRow`): libjpeg-turbo's arithmetic decoder never sets
 * `insufficient_data`, so every iMCU row counts as decoded whole.
 *
 * @example
 * ```ts
 * // Two grey blocks as an arithmetic encoder codes them (default conditioning): DC 5, −3 and 1 at
 * // zigzag positions 2 and 63; DC 5 again, 40 and −700 at zigzag 1 and 9; then EOI.
 * const data = new Uint8Array([
 *   0xce, 0x0b, 0x00, 0xd0, 0, 0, 0, 0, 0, 0x0c, 0x59, 0x3a, 0xa1, 0x71, 0x18, 0x9c, 0xff, 0xd9,
 * ]);
 * const frame = { width: 16, height: 8, progressive: false, sampling: [[1, 1]] as [number, number][] };
 * const { components: [c] } = decodeArithmetic(data, frame, [{
 *   components: [0], ss: 0, se: 63, ah: 0, al: 0, restartInterval: 0, start: 0,
 *   dcTables: [0], acTables: [0], dcL: [0], dcU: [1], acK: [5],
 * }]);
 * [c.coefficients[0], c.coefficients[8], c.coefficients[64 + 24]]; // [5, -3, -700] (natural order)
 * ```
 * @module
 */
import { NATURAL_ORDER } from "./_jpeg_idct.ts";
import {
  coefficientArrays,
  type ComponentCoefficients,
  END,
  type EntropyFrame,
  readRestartMarker,
  type ScanHeader,
  scanLayout,
  type ScanStop,
} from "./_jpeg_entropy.ts";

/** What an arithmetic-coded scan decodes, as its header and the segments before it set it. */
export interface ArithmeticScan extends ScanHeader {
  /** Each scan component's DC and AC conditioning table number (0–15). */
  dcTables: number[];
  acTables: number[];
  /**
   * The conditioning in force when the scan starts (DAC segments; libjpeg's defaults otherwise):
   * each of the 16 DC tables' bounds L and U (0–15, L ≤ U; default 0 and 1), each of the 16 AC
   * tables' Kx (0–255; default 5).
   */
  dcL: number[];
  dcU: number[];
  acK: number[];
}

/**
 * T.81 Table D.2, the QM coder's probability estimation, four numbers per state: Qe (the size of
 * the less probable symbol's part of the interval, against an interval A of 0x8000 to 0xFFFF),
 * the next state after a less and after a more probable symbol, and whether a less probable
 * symbol swaps the two symbols' meanings. State 113 is libjpeg's fixed estimate (Qe ≈ ½, never
 * moving), used for signs and refinement bits.
 */
// deno-fmt-ignore
const TABLE_D2 = [
  0x5a1d, 1, 1, 1,     0x2586, 14, 2, 0,    0x1114, 16, 3, 0,    0x080b, 18, 4, 0,
  0x03d8, 20, 5, 0,    0x01da, 23, 6, 0,    0x00e5, 25, 7, 0,    0x006f, 28, 8, 0,
  0x0036, 30, 9, 0,    0x001a, 33, 10, 0,   0x000d, 35, 11, 0,   0x0006, 9, 12, 0,
  0x0003, 10, 13, 0,   0x0001, 12, 13, 0,   0x5a7f, 15, 15, 1,   0x3f25, 36, 16, 0,
  0x2cf2, 38, 17, 0,   0x207c, 39, 18, 0,   0x17b9, 40, 19, 0,   0x1182, 42, 20, 0,
  0x0cef, 43, 21, 0,   0x09a1, 45, 22, 0,   0x072f, 46, 23, 0,   0x055c, 48, 24, 0,
  0x0406, 49, 25, 0,   0x0303, 51, 26, 0,   0x0240, 52, 27, 0,   0x01b1, 54, 28, 0,
  0x0144, 56, 29, 0,   0x00f5, 57, 30, 0,   0x00b7, 59, 31, 0,   0x008a, 60, 32, 0,
  0x0068, 62, 33, 0,   0x004e, 63, 34, 0,   0x003b, 32, 35, 0,   0x002c, 33, 9, 0,
  0x5ae1, 37, 37, 1,   0x484c, 64, 38, 0,   0x3a0d, 65, 39, 0,   0x2ef1, 67, 40, 0,
  0x261f, 68, 41, 0,   0x1f33, 69, 42, 0,   0x19a8, 70, 43, 0,   0x1518, 72, 44, 0,
  0x1177, 73, 45, 0,   0x0e74, 74, 46, 0,   0x0bfb, 75, 47, 0,   0x09f8, 77, 48, 0,
  0x0861, 78, 49, 0,   0x0706, 79, 50, 0,   0x05cd, 48, 51, 0,   0x04de, 50, 52, 0,
  0x040f, 50, 53, 0,   0x0363, 51, 54, 0,   0x02d4, 52, 55, 0,   0x025c, 53, 56, 0,
  0x01f8, 54, 57, 0,   0x01a4, 55, 58, 0,   0x0160, 56, 59, 0,   0x0125, 57, 60, 0,
  0x00f6, 58, 61, 0,   0x00cb, 59, 62, 0,   0x00ab, 61, 63, 0,   0x008f, 61, 32, 0,
  0x5b12, 65, 65, 1,   0x4d04, 80, 66, 0,   0x412c, 81, 67, 0,   0x37d8, 82, 68, 0,
  0x2fe8, 83, 69, 0,   0x293c, 84, 70, 0,   0x2379, 86, 71, 0,   0x1edf, 87, 72, 0,
  0x1aa9, 87, 73, 0,   0x174e, 72, 74, 0,   0x1424, 72, 75, 0,   0x119c, 74, 76, 0,
  0x0f6b, 74, 77, 0,   0x0d51, 75, 78, 0,   0x0bb6, 77, 79, 0,   0x0a40, 77, 48, 0,
  0x5832, 80, 81, 1,   0x4d1c, 88, 82, 0,   0x438e, 89, 83, 0,   0x3bdd, 90, 84, 0,
  0x34ee, 91, 85, 0,   0x2eae, 92, 86, 0,   0x299a, 93, 87, 0,   0x2516, 86, 71, 0,
  0x5570, 88, 89, 1,   0x4ca9, 95, 90, 0,   0x44d9, 96, 91, 0,   0x3e22, 97, 92, 0,
  0x3824, 99, 93, 0,   0x32b4, 99, 94, 0,   0x2e17, 93, 86, 0,   0x56a8, 95, 96, 1,
  0x4f46, 101, 97, 0,  0x47e5, 102, 98, 0,  0x41cf, 103, 99, 0,  0x3c3d, 104, 100, 0,
  0x375e, 99, 93, 0,   0x5231, 105, 102, 0, 0x4c0f, 106, 103, 0, 0x4639, 107, 104, 0,
  0x415e, 103, 99, 0,  0x5627, 105, 106, 1, 0x50e7, 108, 107, 0, 0x4b85, 109, 103, 0,
  0x5597, 110, 109, 0, 0x504f, 111, 107, 0, 0x5a10, 110, 111, 1, 0x5522, 112, 109, 0,
  0x59eb, 112, 111, 1, 0x5a1d, 113, 113, 0,
];

/** Each state's Qe. */
const QE = new Int32Array(128);
/** The next state after a less probable symbol, with 0x80 where it swaps the symbols. */
const LPS_NEXT = new Uint8Array(128);
/** The next state after a more probable symbol. */
const MPS_NEXT = new Uint8Array(128);
for (let s = 0; s * 4 < TABLE_D2.length; s++) {
  QE[s] = TABLE_D2[4 * s];
  LPS_NEXT[s] = TABLE_D2[4 * s + 1] | (TABLE_D2[4 * s + 3] << 7);
  MPS_NEXT[s] = TABLE_D2[4 * s + 2];
}

/** The fixed bin's state (more probable symbol 0), which decoding never changes. */
const FIXED_STATE = 113;

/**
 * Thrown where a scan's decoding would read past the end of the bytes (`scan`: its index in the
 * scans). libjpeg, fed a file by Pillow, cannot go on there: Pillow has no more data to give it
 * and its arithmetic decoder cannot suspend for more.
 */
export class ArithmeticPastEnd extends Error {
  scan: number;
  constructor(scan: number) {
    super(`its scan ${scan + 1} reads past the end of the file`);
    this.scan = scan;
  }
}

/** Zigzag index → natural position. */
const NATURAL = new Int32Array(NATURAL_ORDER);

/** Statistics bins per DC and per AC conditioning table (libjpeg: `DC_STAT_BINS`, `AC_STAT_BINS`). */
const DC_BINS = 64;
const AC_BINS = 256;

/**
 * The QM decoder over one scan's bytes: C (`c`) holds how far the code value lies above the
 * interval's base, with `ct` bits read ahead below the interval's precision; A (`a`) is the
 * interval's size, renormalised to 0x8000 or more before each decision. `ct` is −16 before the
 * first two bytes are read and −1 after an impossible code (see the module doc).
 */
class QmDecoder {
  bytes: Uint8Array;
  pos: number;
  /** Its scan's index (for `ArithmeticPastEnd`). */
  scan: number;
  /** The marker met in the data (0: none; `END` where a restart marker was sought past the end). */
  marker = 0;
  c = 0;
  a = 0;
  ct = -16;

  constructor(bytes: Uint8Array, pos: number, scan: number) {
    this.bytes = bytes;
    this.pos = pos;
    this.scan = scan;
  }

  /** Throws `ArithmeticPastEnd` where the search for a restart marker ran past the end. */
  checkEnd(): void {
    if (this.marker === END) throw new ArithmeticPastEnd(this.scan);
  }

  /** The next data byte: zero once a marker has been met, an 0xFF for a stuffed 0xFF 00. */
  byte(): number {
    if (this.marker !== 0) return 0;
    const bytes = this.bytes, n = bytes.length;
    if (this.pos >= n) throw new ArithmeticPastEnd(this.scan);
    let d = bytes[this.pos++];
    if (d !== 0xff) return d;
    do {
      if (this.pos >= n) throw new ArithmeticPastEnd(this.scan);
      d = bytes[this.pos++];
    } while (d === 0xff);
    if (d === 0) return 0xff;
    this.marker = d;
    return 0;
  }

  /** One binary decision with the estimate held in `bins[i]`, which it updates (T.81 D.2). */
  decode(bins: Uint8Array, i: number): number {
    let a = this.a, c = this.c, ct = this.ct;
    // Renormalisation, reading a byte whenever the bits below the base run out; the first two
    // bytes of a scan or restart interval fill C, and A starts at 0x10000.
    while (a < 0x8000) {
      if (--ct < 0) {
        c = (c << 8) | this.byte();
        ct += 8;
        if (ct < 0 && ++ct === 0) a = 0x8000;
      }
      a <<= 1;
    }
    let sv = bins[i];
    const state = sv & 0x7f;
    const qe = QE[state];
    a -= qe;
    const cut = a << ct;
    if (c >= cut) {
      // The upper part of the interval, of size Qe: the less probable symbol, or the more
      // probable one where Qe is the larger part (conditional exchange); renormalises.
      c -= cut;
      if (a < qe) {
        bins[i] = (sv & 0x80) ^ MPS_NEXT[state];
      } else {
        bins[i] = (sv & 0x80) ^ LPS_NEXT[state];
        sv ^= 0x80;
      }
      a = qe;
    } else if (a < 0x8000) {
      // The lower part, of size A − Qe: the more probable symbol, or the less probable one where
      // it is the smaller part. The estimate changes only where A needs renormalising.
      if (a < qe) {
        bins[i] = (sv & 0x80) ^ LPS_NEXT[state];
        sv ^= 0x80;
      } else {
        bins[i] = (sv & 0x80) ^ MPS_NEXT[state];
      }
    }
    this.a = a;
    this.c = c;
    this.ct = ct;
    return sv >> 7;
  }
}

/**
 * Each component's coefficient blocks after decoding the arithmetic-coded `scans` in order (the
 * frame and scans were checked as for `decodeEntropy`), and where each scan's decoding stopped.
 */
export function decodeArithmetic(
  bytes: Uint8Array,
  frame: EntropyFrame,
  scans: ArithmeticScan[],
): { components: ComponentCoefficients[]; stops: ScanStop[] } {
  const out = coefficientArrays(frame);
  const vMax = Math.max(...frame.sampling.map(([, v]) => v));
  const lastRow = Math.ceil(frame.height / (8 * vMax)) - 1;
  const state = {
    dcBins: new Uint8Array(16 * DC_BINS),
    acBins: new Uint8Array(16 * AC_BINS),
    fixed: new Uint8Array([FIXED_STATE]),
    lastDc: new Int32Array(4),
    dcContext: new Int32Array(4),
  };
  const stops = scans.map((scan, i): ScanStop => {
    const d = decodeScan(bytes, frame, scan, i, out, state);
    return { marker: d.marker, pos: d.pos, lastGoodRow: lastRow };
  });
  return { components: out, stops };
}

/** The decoder's statistics and DC state, allocated once per file. */
interface DecoderState {
  dcBins: Uint8Array;
  acBins: Uint8Array;
  fixed: Uint8Array;
  lastDc: Int32Array;
  dcContext: Int32Array;
}

/** What a scan's block decoders read: its parameters, per scan component. */
interface ScanParams {
  d: QmDecoder;
  s: DecoderState;
  /** Each scan component's DC and AC bin offsets, DC bounds (as magnitudes) and Kx. */
  dcBase: Int32Array;
  acBase: Int32Array;
  dcLow: Int32Array;
  dcHigh: Int32Array;
  acK: Int32Array;
  ss: number;
  se: number;
  al: number;
}

function decodeScan(
  bytes: Uint8Array,
  frame: EntropyFrame,
  scan: ArithmeticScan,
  index: number,
  out: ComponentCoefficients[],
  s: DecoderState,
): QmDecoder {
  const d = new QmDecoder(bytes, scan.start, index);
  const n = scan.components.length;
  const progressive = frame.progressive;
  const dcFirst = progressive && scan.ss === 0 && scan.ah === 0;
  const dcRefine = progressive && scan.ss === 0 && scan.ah !== 0;
  const acFirst = progressive && scan.ss !== 0 && scan.ah === 0;
  const usesDc = !progressive || dcFirst, usesAc = !progressive || scan.ss !== 0;
  const p: ScanParams = {
    d,
    s,
    dcBase: new Int32Array(n),
    acBase: new Int32Array(n),
    dcLow: new Int32Array(n),
    dcHigh: new Int32Array(n),
    acK: new Int32Array(n),
    ss: scan.ss,
    se: scan.se,
    al: scan.al,
  };
  for (let k = 0; k < n; k++) {
    const dc = scan.dcTables[k] & 15, ac = scan.acTables[k] & 15;
    p.dcBase[k] = dc * DC_BINS;
    p.acBase[k] = ac * AC_BINS;
    p.dcLow[k] = (1 << scan.dcL[dc]) >> 1;
    p.dcHigh[k] = (1 << scan.dcU[dc]) >> 1;
    p.acK[k] = scan.acK[ac];
  }
  // libjpeg's start_pass and process_restart: the bins of the tables the scan codes with back to
  // their initial state (0: state 0, more probable symbol 0), predictions and contexts to 0.
  const reset = () => {
    for (let k = 0; k < n; k++) {
      if (usesDc) {
        s.dcBins.fill(0, p.dcBase[k], p.dcBase[k] + DC_BINS);
        s.lastDc[k] = 0;
        s.dcContext[k] = 0;
      }
      if (usesAc) s.acBins.fill(0, p.acBase[k], p.acBase[k] + AC_BINS);
    }
    d.c = d.a = 0;
    d.ct = -16;
  };
  reset();
  const { lines, perLine, blockComp, blockOffset, rowStep, colStep } = scanLayout(
    frame,
    scan.components,
    out,
  );
  const blocks = blockComp.length;
  const data = scan.components.map((c) => out[c].coefficients);
  const block = !progressive
    ? sequentialBlock
    : dcFirst
    ? dcFirstBlock
    : dcRefine
    ? dcRefineBlock
    : acFirst
    ? acFirstBlock
    : acRefineBlock;
  const interval = scan.restartInterval;
  let togo = interval, expected = 0;
  for (let row = 0; row < lines; row++) {
    for (let col = 0; col < perLine; col++) {
      if (interval > 0) {
        if (togo === 0) {
          readRestartMarker(d, expected);
          d.checkEnd();
          expected = (expected + 1) & 7;
          reset();
          togo = interval;
        }
        togo--;
      }
      for (let b = 0; b < blocks && d.ct !== -1; b++) {
        const k = blockComp[b];
        block(p, data[k], blockOffset[b] + row * rowStep[k] + col * colStep[k], k);
      }
    }
  }
  return d;
}

/**
 * The DC difference of scan component `k` added to its prediction (kept to 16 bits), with the
 * context of the next one set (F.1.4.4.1); false, with the decoder stopped, on a magnitude of
 * 2^15 or more.
 */
function decodeDc(p: ScanParams, k: number): boolean {
  const d = p.d, bins = p.s.dcBins, base = p.dcBase[k], context = p.s.dcContext;
  let st = base + context[k];
  if (d.decode(bins, st) === 0) {
    context[k] = 0;
    return true;
  }
  const sign = d.decode(bins, st + 1);
  st += 2 + sign;
  let m = d.decode(bins, st);
  if (m !== 0) {
    st = base + 20;
    while (d.decode(bins, st) !== 0) {
      if ((m <<= 1) === 0x8000) {
        d.ct = -1;
        return false;
      }
      st++;
    }
  }
  context[k] = m < p.dcLow[k] ? 0 : m > p.dcHigh[k] ? 12 + 4 * sign : 4 + 4 * sign;
  let v = m;
  st += 14;
  while ((m >>= 1) !== 0) if (d.decode(bins, st) !== 0) v |= m;
  v += 1;
  p.s.lastDc[k] = (p.s.lastDc[k] + (sign ? -v : v)) & 0xffff;
  return true;
}

/**
 * Coefficients `from`…`to` (zigzag order) of one block, up to its end-of-block decision, each
 * value shifted left by `al` (F.1.4.4.2); false, with the decoder stopped, on a zero run past
 * `to` or a magnitude of 2^15 or more.
 */
function decodeAc(
  p: ScanParams,
  coefs: Int16Array,
  off: number,
  k: number,
  from: number,
  to: number,
  al: number,
): boolean {
  const d = p.d, bins = p.s.acBins, fixed = p.s.fixed, base = p.acBase[k], kx = p.acK[k];
  for (let i = from; i <= to; i++) {
    let st = base + 3 * (i - 1);
    if (d.decode(bins, st) !== 0) break; // end of block
    while (d.decode(bins, st + 1) === 0) {
      st += 3;
      if (++i > to) {
        d.ct = -1;
        return false;
      }
    }
    const sign = d.decode(fixed, 0);
    st += 2;
    let m = d.decode(bins, st);
    if (m !== 0 && d.decode(bins, st) !== 0) {
      m <<= 1;
      st = base + (i <= kx ? 189 : 217);
      while (d.decode(bins, st) !== 0) {
        if ((m <<= 1) === 0x8000) {
          d.ct = -1;
          return false;
        }
        st++;
      }
    }
    let v = m;
    st += 14;
    while ((m >>= 1) !== 0) if (d.decode(bins, st) !== 0) v |= m;
    v += 1;
    coefs[off + NATURAL[i]] = (sign ? -v : v) << al;
  }
  return true;
}

function sequentialBlock(p: ScanParams, coefs: Int16Array, off: number, k: number): void {
  if (!decodeDc(p, k)) return;
  coefs[off] = p.s.lastDc[k];
  decodeAc(p, coefs, off, k, 1, 63, 0);
}

function dcFirstBlock(p: ScanParams, coefs: Int16Array, off: number, k: number): void {
  if (decodeDc(p, k)) coefs[off] = p.s.lastDc[k] << p.al;
}

function dcRefineBlock(p: ScanParams, coefs: Int16Array, off: number): void {
  if (p.d.decode(p.s.fixed, 0) !== 0) coefs[off] |= 1 << p.al;
}

function acFirstBlock(p: ScanParams, coefs: Int16Array, off: number, k: number): void {
  decodeAc(p, coefs, off, k, p.ss, p.se, p.al);
}

/**
 * One block of an AC refinement scan (G.1.3.3): past the last coefficient already non-zero in
 * the band (EOBx), an end-of-band decision first; each coefficient already non-zero gets a
 * correction bit; a zero one may become ±2^Al.
 */
function acRefineBlock(p: ScanParams, coefs: Int16Array, off: number, k: number): void {
  const d = p.d, bins = p.s.acBins, fixed = p.s.fixed, base = p.acBase[k], se = p.se;
  const plus = 1 << p.al, minus = -1 << p.al;
  let eobx = se;
  while (eobx > 0 && coefs[off + NATURAL[eobx]] === 0) eobx--;
  for (let i = p.ss; i <= se; i++) {
    let st = base + 3 * (i - 1);
    if (i > eobx && d.decode(bins, st) !== 0) break;
    for (;;) {
      const at = off + NATURAL[i];
      const c = coefs[at];
      if (c !== 0) {
        if (d.decode(bins, st + 2) !== 0) coefs[at] = c < 0 ? c + minus : c + plus;
        break;
      }
      if (d.decode(bins, st + 1) !== 0) {
        coefs[at] = d.decode(fixed, 0) !== 0 ? minus : plus;
        break;
      }
      st += 3;
      if (++i > se) {
        d.ct = -1;
        return;
      }
    }
  }
}
