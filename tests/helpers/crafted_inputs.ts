/**
 * Hostile input files for the decompression-bomb and truncation tests, built in their real
 * formats: PNG/JPEG headers that declare a huge size, deflate streams of many zeros made in
 * milliseconds, and npz archives whose zip entries carry whatever sizes a test wants to claim.
 */
import { constants, deflateRawSync } from "node:zlib";
import jpeg from "jpeg-js";
import { zlibSync } from "fflate";
import { crc32, encodeNpy } from "../../lib/data/npy.ts";

/** The byte arrays one after the other. */
export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, c) => a + c.length, 0));
  let p = 0;
  for (const c of parts) {
    out.set(c, p);
    p += c.length;
  }
  return out;
}

/** One PNG chunk: length, type, data and the CRC-32 of type and data. */
export function pngChunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  v.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/**
 * An 8-bit RGB PNG of `width`×`height` whose IDAT holds the zlib stream of `raw` (filter bytes
 * and pixels, as the caller wants them — possibly fewer rows than the header declares).
 */
export function pngWithRawData(
  width: number,
  height: number,
  raw: Uint8Array,
  options: { interlace?: boolean } = {},
): Uint8Array {
  return pngWithIdat(width, height, zlibSync(raw), options);
}

/** An 8-bit RGB PNG of `width`×`height` whose IDAT chunk holds `idat` as given (a zlib stream). */
export function pngWithIdat(
  width: number,
  height: number,
  idat: Uint8Array,
  options: { interlace?: boolean } = {},
): Uint8Array {
  return pngFile({ width, height, depth: 8, colorType: 2, interlace: options.interlace }, idat);
}

/**
 * A PNG file: the signature, IHDR with the given fields (compression and filter method 0), a PLTE
 * chunk when `palette` (RGB triples) is given, one IDAT holding `idat` as given, IEND.
 */
export function pngFile(
  header: { width: number; height: number; depth: number; colorType: number; interlace?: boolean },
  idat: Uint8Array,
  palette?: number[],
): Uint8Array {
  const ihdr = new Uint8Array(13);
  const iv = new DataView(ihdr.buffer);
  iv.setUint32(0, header.width);
  iv.setUint32(4, header.height);
  ihdr[8] = header.depth;
  ihdr[9] = header.colorType;
  ihdr[12] = header.interlace ? 1 : 0;
  return concat([
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", ihdr),
    ...(palette ? [pngChunk("PLTE", new Uint8Array(palette))] : []),
    pngChunk("IDAT", idat),
    pngChunk("IEND", new Uint8Array(0)),
  ]);
}

/** A zlib stream of `zeros` zero bytes (see {@link deflatedZeros}); its Adler-32 is left 0. */
export function zlibZeros(zeros: number): Uint8Array {
  return concat([
    new Uint8Array([0x78, 0x9c]),
    deflatedZeros(new Uint8Array(0), zeros),
    new Uint8Array(4),
  ]);
}

/** A tiny PNG (≈ 70 bytes) whose header declares `width`×`height` RGB pixels. */
export function pngDeclaring(width: number, height: number): Uint8Array {
  return pngWithRawData(width, height, new Uint8Array(4));
}

/** The raw (unfiltered, filter type 0) rows of an RGB image whose pixel i has value i mod 251. */
export function rgbRows(width: number, height: number): Uint8Array {
  const raw = new Uint8Array(height * (1 + 3 * width));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < 3 * width; x++) {
      raw[y * (1 + 3 * width) + 1 + x] = (y * 3 * width + x) % 251;
    }
  }
  return raw;
}

/** A real 8×8 baseline JPEG whose frame header (SOF0) is patched to declare `width`×`height`. */
export function jpegDeclaring(width: number, height: number): Uint8Array {
  const rgba = new Uint8Array(8 * 8 * 4).fill(128);
  const bytes = new Uint8Array(jpeg.encode({ data: rgba, width: 8, height: 8 }, 50).data);
  for (let p = 2; p + 9 < bytes.length;) {
    const marker = bytes[p + 1];
    const length = (bytes[p + 2] << 8) | bytes[p + 3];
    if (marker === 0xc0) {
      const v = new DataView(bytes.buffer, bytes.byteOffset);
      v.setUint16(p + 5, height);
      v.setUint16(p + 7, width);
      return bytes;
    }
    p += 2 + length;
  }
  throw new Error("jpegDeclaring: jpeg-js wrote no SOF0 segment");
}

const MIB = 1 << 20;

/**
 * A raw deflate stream that inflates to `prefix` followed by `zeros` zero bytes, built from one
 * self-contained, sync-flushed block per MiB repeated (≈ 1 KiB each, so 3 GiB of zeros is a
 * 3 MB stream made in milliseconds), closed by an empty final block.
 */
export function deflatedZeros(prefix: Uint8Array, zeros: number): Uint8Array {
  const sync = { finishFlush: constants.Z_SYNC_FLUSH };
  const head = Math.min(zeros, MIB);
  const first = deflateRawSync(concat([prefix, new Uint8Array(head)]), sync);
  const full = Math.floor((zeros - head) / MIB);
  const rest = zeros - head - full * MIB;
  const block = deflateRawSync(new Uint8Array(MIB), sync);
  const parts: Uint8Array[] = [first];
  for (let i = 0; i < full; i++) parts.push(block);
  if (rest > 0) parts.push(deflateRawSync(new Uint8Array(rest), sync));
  parts.push(new Uint8Array([0x03, 0x00])); // an empty fixed-Huffman block marked final
  return concat(parts);
}

/** The npy header (preamble and dict, no data) of a uint8 array of `shape`. */
export function npyHeader(shape: number[]): Uint8Array {
  const one = encodeNpy({ shape: [1], data: new Uint8Array(1) });
  const headerLen = one.length - 1;
  const dict = new TextDecoder("latin1").decode(one.subarray(10, headerLen)).replace(
    "(1,)",
    shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`,
  );
  const pad = (64 - ((10 + dict.trimEnd().length + 1) % 64)) % 64;
  const text = dict.trimEnd() + " ".repeat(pad) + "\n";
  const out = new Uint8Array(10 + text.length);
  out.set(one.subarray(0, 8));
  new DataView(out.buffer).setUint16(8, text.length, true);
  for (let i = 0; i < text.length; i++) out[10 + i] = text.charCodeAt(i);
  return out;
}

/** One deflated entry of an npz: its compressed bytes and the sizes and CRC the zip claims. */
export interface CraftedEntry {
  name: string;
  deflated: Uint8Array;
  /** The uncompressed size the zip headers declare. */
  declaredSize: number;
  /** Default 0: the readers under test must stop before they could check it. */
  crc?: number;
}

/** A zip (npz) of deflated entries with the declared sizes given (zip64 when a size needs it). */
export function craftedNpz(entries: CraftedEntry[]): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = enc.encode(e.name);
    const big = e.declaredSize >= 0xffffffff;
    const extra = big ? new Uint8Array(20) : new Uint8Array(0);
    if (big) {
      const xv = new DataView(extra.buffer);
      xv.setUint16(0, 1, true);
      xv.setUint16(2, 16, true);
      xv.setBigUint64(4, BigInt(e.declaredSize), true);
      xv.setBigUint64(12, BigInt(e.deflated.length), true);
    }
    const header = (central: boolean) => {
      const fixed = central ? 46 : 30;
      const h = new Uint8Array(fixed + name.length + extra.length);
      const v = new DataView(h.buffer);
      v.setUint32(0, central ? 0x02014b50 : 0x04034b50, true);
      const s = central ? 2 : 0; // the central header has one more version field
      v.setUint16(4, 45, true);
      if (central) v.setUint16(6, 45, true);
      v.setUint16(8 + s, 8, true); // deflate
      v.setUint32(14 + s, e.crc ?? 0, true);
      v.setUint32(18 + s, big ? 0xffffffff : e.deflated.length, true);
      v.setUint32(22 + s, big ? 0xffffffff : e.declaredSize, true);
      v.setUint16(26 + s, name.length, true);
      v.setUint16(28 + s, extra.length, true);
      if (central) v.setUint32(42, offset, true);
      h.set(name, fixed);
      h.set(extra, fixed + name.length);
      return h;
    };
    central.push(header(true));
    const local = header(false);
    parts.push(local, e.deflated);
    offset += local.length + e.deflated.length;
  }
  const cdSize = central.reduce((a, c) => a + c.length, 0);
  const eocd = new Uint8Array(22);
  const ev = new DataView(eocd.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, entries.length, true);
  ev.setUint16(10, entries.length, true);
  ev.setUint32(12, cdSize, true);
  ev.setUint32(16, offset, true);
  return concat([...parts, ...central, eocd]);
}
