/**
 * NumPy `.npy` and `.npz` files, read and written without Python.
 *
 * Read: format versions 1.0, 2.0 and 3.0; zip entries stored or deflated, zip64 included (numpy
 * writes zip64 entries); dtypes `|u1 |i1 <u2 <i2 <u4 <i4 <i8 <u8 <f4 <f8 |b1`. 64-bit integers
 * become an `Int32Array` after a range check (labels and indices are small), or a
 * `BigInt64Array`/`BigUint64Array` with `{ int64: "bigint" }`; `dtype` always reports what the
 * file holds. Fortran-ordered arrays of two or more dimensions, big-endian data, object
 * (pickled) and structured dtypes are refused with an error that says how to re-save the file.
 *
 * An `.npz` is read entry by entry from the open file (only the central directory and the
 * requested entries are read), each checked against its CRC-32. Sizes are checked before memory
 * is allocated (see `./limits.ts`): entries whose bytes overlap each other or the central
 * directory are refused (so no compressed byte is counted twice); the entries' declared
 * uncompressed bytes are checked against `maxBytes` (16 GiB) and their compression ratio against
 * `maxRatio` (100:1 once past 64 MiB, to their compressed bytes and to the file); each entry's
 * npy header, read from the first inflated bytes, must need exactly the size its zip entry
 * declares; and inflation stops the moment a stream passes that size. A decompression bomb is
 * refused in milliseconds, within a few MB of memory.
 *
 * Write: `encodeNpy`/`writeNpy`/`writeNpz` produce files numpy reads (`np.load`); `writeNpz`
 * stores or deflates each entry, writes a fixed timestamp (the same arrays give the same bytes)
 * and writes atomically. Entries must be < 4 GiB (no zip64 on the write side).
 *
 * @example
 * ```ts
 * await writeNpz("/tmp/a.npz", { x: { shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } });
 * const { x } = await readNpz("/tmp/a.npz");
 * x.shape; // [2, 2]
 * ```
 * @module
 */
import { deflateSync } from "fflate";
import { basename } from "node:path";
import { writeFileAtomic } from "../io/atomic.ts";
import { concatBytes } from "../io/bytes.ts";
import { inflateBounded, InflateLimitError } from "./_inflate.ts";
import { formatBytes, NPZ_RATIO_FLOOR_BYTES, type NpzLimits, npzLimits } from "./limits.ts";

/** The typed arrays an array's `data` can be. */
export type TypedArray =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

/** One array as read from a file: `dtype` is numpy's descr as written in the file (`"<f4"`). */
export interface NpyArray {
  shape: number[];
  dtype: string;
  data: TypedArray;
}

/** What the writers accept: `dtype` is inferred from `data` unless given (see {@link encodeNpy}). */
export interface NpyInput {
  shape: number[];
  data: TypedArray;
  dtype?: string;
}

/** Options of {@link readNpy} and {@link readNpz}. */
export interface ReadNpyOptions {
  /**
   * How to return `<i8`/`<u8` data: `"int32"` (default) converts to an `Int32Array` and fails if a
   * value does not fit; `"bigint"` returns `BigInt64Array`/`BigUint64Array` unchanged.
   */
  int64?: "int32" | "bigint";
}

/** Options of {@link readNpz}. */
export interface ReadNpzOptions extends ReadNpyOptions {
  /** Read only these keys (an error names any that is missing). Default: every entry. */
  keys?: string[];
  /** Check each entry's CRC-32 (default true). */
  verifyCrc?: boolean;
  /**
   * Largest total of uncompressed bytes of the entries read (default: `DEER_NPZ_MAX_BYTES`, else
   * 16 GiB).
   */
  maxBytes?: number;
  /**
   * Largest ratio of uncompressed to compressed bytes of the entries read, once they exceed 64
   * MiB (default: `DEER_NPZ_MAX_RATIO`, else 100).
   */
  maxRatio?: number;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"

interface DtypeInfo {
  size: number;
  make: (buf: ArrayBuffer, offset: number, length: number) => TypedArray;
}

const DTYPES: Record<string, DtypeInfo> = {
  u1: { size: 1, make: (b, o, n) => new Uint8Array(b, o, n) },
  b1: { size: 1, make: (b, o, n) => new Uint8Array(b, o, n) },
  i1: { size: 1, make: (b, o, n) => new Int8Array(b, o, n) },
  u2: { size: 2, make: (b, o, n) => new Uint16Array(b, o, n) },
  i2: { size: 2, make: (b, o, n) => new Int16Array(b, o, n) },
  u4: { size: 4, make: (b, o, n) => new Uint32Array(b, o, n) },
  i4: { size: 4, make: (b, o, n) => new Int32Array(b, o, n) },
  u8: { size: 8, make: (b, o, n) => new BigUint64Array(b, o, n) },
  i8: { size: 8, make: (b, o, n) => new BigInt64Array(b, o, n) },
  f4: { size: 4, make: (b, o, n) => new Float32Array(b, o, n) },
  f8: { size: 8, make: (b, o, n) => new Float64Array(b, o, n) },
};

const SUPPORTED = "|u1 |i1 <u2 <i2 <u4 <i4 <i8 <u8 <f4 <f8 |b1";

/** An npy file's preamble and header, parsed: where the data starts and what it must hold. */
interface NpyLayout {
  dataStart: number;
  descr: string;
  kind: string;
  info: DtypeInfo;
  shape: number[];
  /** Bytes the data must have: product of `shape` × item size. */
  nbytes: number;
}

/** numpy writes headers of a few hundred bytes (and refuses to read ones over 10 000 by default). */
const MAX_NPY_HEADER = 1 << 20;

/** Bytes needed to know where an npy header ends; `undefined` if `bytes` is shorter than that. */
function npyHeaderEnd(bytes: Uint8Array, name: string): number | undefined {
  if (bytes.length < 12) return undefined;
  checkMagic(bytes, name);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const [headerLen, headerStart] = major === 1
    ? [view.getUint16(8, true), 10]
    : [view.getUint32(8, true), 12];
  if (headerLen > MAX_NPY_HEADER) {
    throw new Error(
      `${name} declares an npy header of ${headerLen} bytes (numpy writes a few hundred); ` +
        `the file is corrupt`,
    );
  }
  return headerStart + headerLen;
}

function checkMagic(bytes: Uint8Array, name: string): void {
  for (let i = 0; i < MAGIC.length; i++) {
    if (bytes[i] !== MAGIC[i]) {
      throw new Error(
        `${name} is not an npy array (bad magic; expected "\\x93NUMPY"); the file is corrupt: ` +
          `download it again or re-save it with np.save / np.savez`,
      );
    }
  }
}

/** Parses the preamble and header of `bytes` (which must hold at least the whole header). */
function parseNpyLayout(bytes: Uint8Array, name: string): NpyLayout {
  if (bytes.length < 10) {
    throw new Error(`${name} is truncated: ${bytes.length} bytes, shorter than an npy preamble`);
  }
  checkMagic(bytes, name);
  const major = bytes[6];
  let headerLen: number, headerStart: number;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new Error(`${name} is truncated inside its npy preamble`);
    headerLen = view.getUint32(8, true);
    headerStart = 12;
  } else {
    throw new Error(
      `${name} has npy format version ${major}.${bytes[7]}; supported: 1.x, 2.x, 3.x`,
    );
  }
  const dataStart = headerStart + headerLen;
  if (dataStart > bytes.length) throw new Error(`${name} is truncated inside its npy header`);
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(
    bytes.subarray(headerStart, dataStart),
  );
  const { descr, fortran, shape } = parseHeader(header, name);

  const order = descr[0];
  const kind = descr.slice(1);
  const info = DTYPES[kind];
  if (info === undefined) {
    const hint = descr.includes("O")
      ? " (object arrays are pickles, which this reader never loads; save plain numeric arrays)"
      : "";
    throw new Error(
      `${name} has unsupported dtype ${JSON.stringify(descr)}${hint}; supported: ${SUPPORTED}`,
    );
  }
  if (order === ">" && info.size > 1) {
    throw new Error(
      `${name} is big-endian (${descr}); re-save it little-endian, e.g. ` +
        `np.save(path, a.astype(a.dtype.newbyteorder("<")))`,
    );
  }
  if (!["<", "|", "="].includes(order) && !(order === ">" && info.size === 1)) {
    throw new Error(
      `${name} has dtype ${JSON.stringify(descr)} with unknown byte order "${order}"`,
    );
  }
  if (fortran && shape.filter((d) => d > 1).length > 1) {
    throw new Error(
      `${name} is stored in Fortran order; re-save it C-ordered: np.save(path, np.ascontiguousarray(a))`,
    );
  }
  const nbytes = shape.reduce((a, b) => a * b, 1) * info.size;
  return { dataStart, descr, kind, info, shape, nbytes };
}

/**
 * Decodes the bytes of one `.npy` file. `name` appears in every error message.
 *
 * @example
 * ```ts
 * const a = readNpy(encodeNpy({ shape: [3], data: new Int32Array([1, 2, 3]) }), "a.npy");
 * a.dtype; // "<i4"
 * ```
 */
export function readNpy(
  bytes: Uint8Array,
  name = "array.npy",
  options: ReadNpyOptions = {},
): NpyArray {
  const { dataStart, descr, kind, info, shape, nbytes } = parseNpyLayout(bytes, name);
  const count = nbytes / info.size;
  const available = bytes.length - dataStart;
  if (available < nbytes) {
    throw new Error(
      `${name} is truncated: shape [${shape}] ${descr} needs ${nbytes} data bytes, the file has ${available}`,
    );
  }
  if (available > nbytes) {
    throw new Error(
      `${name} has ${
        available - nbytes
      } bytes after the data of shape [${shape}] ${descr}; the file is corrupt`,
    );
  }
  const start = bytes.byteOffset + dataStart;
  let data: TypedArray;
  if (start % info.size === 0) {
    data = info.make(bytes.buffer as ArrayBuffer, start, count);
  } else {
    // Typed arrays need aligned offsets; copy once.
    const copy = bytes.slice(dataStart, dataStart + nbytes);
    data = info.make(copy.buffer, 0, count);
  }
  if ((kind === "i8" || kind === "u8") && (options.int64 ?? "int32") === "int32") {
    data = int64ToInt32(data as BigInt64Array | BigUint64Array, name, descr);
  }
  return { shape, dtype: normaliseDescr(descr, info.size), data };
}

function normaliseDescr(descr: string, size: number): string {
  return size === 1 ? `|${descr.slice(1)}` : `<${descr.slice(1)}`;
}

function int64ToInt32(
  src: BigInt64Array | BigUint64Array,
  name: string,
  descr: string,
): Int32Array {
  const out = new Int32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const v = src[i];
    if (v > 2147483647n || v < -2147483648n) {
      throw new Error(
        `${name} (${descr}) holds ${v} at flat index ${i}, outside the int32 range; ` +
          `read it with { int64: "bigint" }`,
      );
    }
    out[i] = Number(v);
  }
  return out;
}

function parseHeader(
  header: string,
  name: string,
): { descr: string; fortran: boolean; shape: number[] } {
  if (/['"]descr['"]\s*:\s*\[/.test(header)) {
    throw new Error(`${name} has a structured dtype; supported: ${SUPPORTED}`);
  }
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]*)['"]/.exec(header)?.[1];
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new Error(
      `${name} has an unreadable npy header ${JSON.stringify(header.trim())}; ` +
        `expected {'descr': ..., 'fortran_order': ..., 'shape': (...)}`,
    );
  }
  const shape = shapeText.split(",").map((s) => s.trim().replace(/L$/, "")).filter((s) => s !== "")
    .map((s) => {
      const d = Number(s);
      if (!Number.isSafeInteger(d) || d < 0) {
        throw new Error(`${name} has a bad shape (${shapeText}) in its npy header`);
      }
      return d;
    });
  return { descr, fortran: fortran === "True", shape };
}

function descrFor(a: NpyInput, where: string): string {
  const d = a.data;
  const inferred = d instanceof Uint8Array
    ? "|u1"
    : d instanceof Int8Array
    ? "|i1"
    : d instanceof Uint16Array
    ? "<u2"
    : d instanceof Int16Array
    ? "<i2"
    : d instanceof Uint32Array
    ? "<u4"
    : d instanceof Int32Array
    ? "<i4"
    : d instanceof Float32Array
    ? "<f4"
    : d instanceof Float64Array
    ? "<f8"
    : d instanceof BigInt64Array
    ? "<i8"
    : "<u8";
  if (a.dtype === undefined || a.dtype === inferred) return inferred;
  if (a.dtype === "|b1" && inferred === "|u1") return "|b1";
  if (a.dtype === "<i8" && inferred === "<i4") return "<i8";
  throw new Error(
    `${where}: dtype ${a.dtype} does not match data of type ${d.constructor.name} ` +
      `(only |b1 from Uint8Array and <i8 from Int32Array are converted)`,
  );
}

/**
 * Encodes one array as `.npy` bytes (format 1.0, or 2.0 for very long headers). `dtype` is
 * inferred from `data`; `"|b1"` (from a `Uint8Array` of 0/1) and `"<i8"` (widened from an
 * `Int32Array`) may be asked for.
 *
 * @example
 * ```ts
 * const bytes = encodeNpy({ shape: [2, 3], data: new Uint8Array(6) });
 * ```
 */
export function encodeNpy(array: NpyInput, name = "array.npy"): Uint8Array {
  const count = array.shape.reduce((a, b) => a * b, 1);
  if (array.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new Error(`${name}: shape [${array.shape}] must hold integers ≥ 0`);
  }
  if (count !== array.data.length) {
    throw new Error(
      `${name}: shape [${array.shape}] holds ${count} values but data has ${array.data.length}`,
    );
  }
  const descr = descrFor(array, name);
  let payload: Uint8Array;
  if (descr === "<i8" && array.data instanceof Int32Array) {
    const wide = new BigInt64Array(count);
    for (let i = 0; i < count; i++) wide[i] = BigInt(array.data[i]);
    payload = new Uint8Array(wide.buffer);
  } else {
    payload = new Uint8Array(array.data.buffer, array.data.byteOffset, array.data.byteLength);
  }
  const shapeText = array.shape.length === 1
    ? `(${array.shape[0]},)`
    : `(${array.shape.join(", ")})`;
  let dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  let pre = 10;
  if (dict.length + 1 + pre > 65535) pre = 12;
  const pad = (64 - ((pre + dict.length + 1) % 64)) % 64;
  dict = dict + " ".repeat(pad) + "\n";
  const out = new Uint8Array(pre + dict.length + payload.length);
  out.set(MAGIC, 0);
  out[6] = pre === 10 ? 1 : 2;
  out[7] = 0;
  const view = new DataView(out.buffer);
  if (pre === 10) view.setUint16(8, dict.length, true);
  else view.setUint32(8, dict.length, true);
  for (let i = 0; i < dict.length; i++) out[pre + i] = dict.charCodeAt(i);
  out.set(payload, pre + dict.length);
  return out;
}

/**
 * Writes one array to a `.npy` file atomically.
 *
 * @example
 * ```ts
 * await writeNpy("/tmp/x.npy", { shape: [2], data: new Float64Array([0.5, 1]) });
 * ```
 */
export async function writeNpy(path: string, array: NpyInput): Promise<void> {
  await writeFileAtomic(path, encodeNpy(array, basename(path)));
}

// ---------------------------------------------------------------------------------------------
// zip container

const CRC_TABLE = (() => {
  const t = new Int32Array(256 * 4);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    for (let s = 1; s < 4; s++) {
      t[s * 256 + n] = (t[(s - 1) * 256 + n] >>> 8) ^ t[t[(s - 1) * 256 + n] & 255];
    }
  }
  return t;
})();

/**
 * CRC-32 (the zip/PNG polynomial) of `bytes`, as an unsigned 32-bit number.
 *
 * @example
 * ```ts
 * crc32(new TextEncoder().encode("123456789")); // 0xcbf43926
 * ```
 */
export function crc32(bytes: Uint8Array): number {
  const t = CRC_TABLE;
  let c = -1;
  let i = 0;
  const n4 = bytes.length - (bytes.length % 4);
  for (; i < n4; i += 4) {
    c ^= bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24);
    c = t[768 + (c & 255)] ^ t[512 + ((c >>> 8) & 255)] ^ t[256 + ((c >>> 16) & 255)] ^
      t[c >>> 24];
  }
  for (; i < bytes.length; i++) c = t[(c ^ bytes[i]) & 255] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  crc: number;
  compressedSize: number;
  size: number;
  localOffset: number;
}

async function readAt(file: Deno.FsFile, pos: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  await file.seek(pos, Deno.SeekMode.Start);
  let off = 0;
  while (off < length) {
    const n = await file.read(out.subarray(off));
    if (n === null || n === 0) break;
    off += n;
  }
  return off === length ? out : out.subarray(0, off);
}

/** The little-endian 64-bit value at `off`; `what` (file and field) names it if it is past 2^53. */
function u64(view: DataView, off: number, what: string): number {
  const v = view.getBigUint64(off, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Error(
      `${what} is ${v}, more than 2^53; the file is corrupt or hostile, download or re-save it`,
    );
  }
  return Number(v);
}

/** The central directory: its entries, and where it starts (entries' data must end before it). */
interface CentralDirectory {
  entries: ZipEntry[];
  cdOffset: number;
}

async function readCentralDirectory(
  file: Deno.FsFile,
  fileSize: number,
  label: string,
): Promise<CentralDirectory> {
  const notZip =
    `${label} is truncated or not an npz (zip) archive: no end-of-central-directory record; ` +
    `download or re-save the file (np.savez / np.savez_compressed)`;
  if (fileSize < 22) throw new Error(notZip);
  const tailLen = Math.min(fileSize, 22 + 65535 + 20);
  const tailStart = fileSize - tailLen;
  const tail = await readAt(file, tailStart, tailLen);
  const tv = new DataView(tail.buffer);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tv.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error(notZip);
  let count = tv.getUint16(eocd + 10, true);
  let cdSize = tv.getUint32(eocd + 12, true);
  let cdOffset = tv.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || tv.getUint32(loc, true) !== 0x07064b50) {
      throw new Error(
        `${label}: zip64 end-of-central-directory locator missing; the file is corrupt`,
      );
    }
    const z64Offset = u64(tv, loc + 8, `${label}: the zip64 end-of-central-directory offset`);
    const z = await readAt(file, z64Offset, 56);
    const zv = new DataView(z.buffer);
    if (z.length < 56 || zv.getUint32(0, true) !== 0x06064b50) {
      throw new Error(
        `${label}: zip64 end-of-central-directory record missing; the file is corrupt`,
      );
    }
    count = u64(zv, 32, `${label}: the zip64 entry count`);
    cdSize = u64(zv, 40, `${label}: the zip64 central directory size`);
    cdOffset = u64(zv, 48, `${label}: the zip64 central directory offset`);
  }
  if (cdOffset + cdSize > fileSize) {
    throw new Error(`${label} is truncated: its central directory ends past the end of the file`);
  }
  const cd = await readAt(file, cdOffset, cdSize);
  const v = new DataView(cd.buffer);
  const entries: ZipEntry[] = [];
  let p = 0;
  for (let e = 0; e < count; e++) {
    if (p + 46 > cd.length || v.getUint32(p, true) !== 0x02014b50) {
      throw new Error(`${label}: central directory entry ${e} is corrupt`);
    }
    const flags = v.getUint16(p + 8, true);
    const method = v.getUint16(p + 10, true);
    const crc = v.getUint32(p + 16, true);
    let compressedSize = v.getUint32(p + 20, true);
    let size = v.getUint32(p + 24, true);
    const nameLen = v.getUint16(p + 28, true);
    const extraLen = v.getUint16(p + 30, true);
    const commentLen = v.getUint16(p + 32, true);
    let localOffset = v.getUint32(p + 42, true);
    const fieldsEnd = p + 46 + nameLen + extraLen + commentLen;
    if (fieldsEnd > cd.length) {
      throw new Error(
        `${label}: central directory entry ${e} is corrupt: its name (${nameLen} bytes), extra ` +
          `field (${extraLen} bytes) and comment (${commentLen} bytes) run ${
            fieldsEnd - cd.length
          } bytes past the end of the central directory (${cd.length} bytes); download or ` +
          `re-save the file`,
      );
    }
    const name = new TextDecoder().decode(cd.subarray(p + 46, p + 46 + nameLen));
    const where = `${label}: central directory entry ${e} (${name})`;
    // zip64 extra field: the 0xFFFFFFFF fields, in this order.
    let x = p + 46 + nameLen;
    const xEnd = x + extraLen;
    while (x + 4 <= xEnd) {
      const id = v.getUint16(x, true);
      const len = v.getUint16(x + 2, true);
      if (id === 0x0001) {
        const blockEnd = x + 4 + len;
        let q = x + 4;
        const field = (what: string): number => {
          if (q + 8 > blockEnd || q + 8 > xEnd) {
            throw new Error(
              `${where} is corrupt: its zip64 extra field (${len} bytes${
                blockEnd > xEnd ? `, ${blockEnd - xEnd} past the extra field's end` : ""
              }) has no room for the zip64 ${what}; download or re-save the file`,
            );
          }
          const value = u64(v, q, `${where}: the zip64 ${what}`);
          q += 8;
          return value;
        };
        if (size === 0xffffffff) size = field("uncompressed size");
        if (compressedSize === 0xffffffff) compressedSize = field("compressed size");
        if (localOffset === 0xffffffff) localOffset = field("local header offset");
      }
      x += 4 + len;
    }
    entries.push({ name, method, flags, crc, compressedSize, size, localOffset });
    p = fieldsEnd;
  }
  return { entries, cdOffset };
}

/** A zip entry whose local header has been read: its data starts at `dataStart`. */
interface LocatedEntry extends ZipEntry {
  dataStart: number;
}

/**
 * Reads the local headers of `entries` and refuses, before anything is inflated, entries whose
 * bytes (local header, then compressed data) run past the end of the file or into the central
 * directory, or overlap each other: a hostile zip can point many central-directory entries at the
 * same compressed bytes, each counted anew by the ratio check.
 */
async function locateEntries(
  file: Deno.FsFile,
  fileSize: number,
  cdOffset: number,
  entries: ZipEntry[],
  label: string,
): Promise<LocatedEntry[]> {
  const located: LocatedEntry[] = [];
  for (const entry of entries) {
    const where = `entry ${entry.name} of ${label}`;
    const local = await readAt(file, entry.localOffset, 30);
    const lv = new DataView(local.buffer);
    if (local.length < 30 || lv.getUint32(0, true) !== 0x04034b50) {
      throw new Error(`${label} is truncated or corrupt: ${where} has no local header`);
    }
    const dataStart = entry.localOffset + 30 + lv.getUint16(26, true) + lv.getUint16(28, true);
    const dataEnd = dataStart + entry.compressedSize;
    if (dataEnd > fileSize) {
      throw new Error(
        `${label} is truncated: ${where} needs ${entry.compressedSize} bytes at offset ` +
          `${dataStart}, the file has ${fileSize} bytes; download the file again`,
      );
    }
    if (dataEnd > cdOffset) {
      throw new Error(
        `${label} is corrupt or hostile: ${where} (bytes ${entry.localOffset} to ${dataEnd}) ` +
          `runs into the central directory at byte ${cdOffset}; download or re-save the file`,
      );
    }
    located.push({ ...entry, dataStart });
  }
  const byOffset = [...located].sort((a, b) => a.localOffset - b.localOffset);
  for (let i = 1; i < byOffset.length; i++) {
    const [a, b] = [byOffset[i - 1], byOffset[i]];
    const aEnd = a.dataStart + a.compressedSize;
    if (b.localOffset < aEnd) {
      throw new Error(
        `${label} is corrupt or hostile: entry ${b.name} (bytes ${b.localOffset} to ` +
          `${b.dataStart + b.compressedSize}) overlaps entry ${a.name} (bytes ${a.localOffset} ` +
          `to ${aEnd}); zip entries sharing bytes would be inflated once each (a decompression ` +
          `bomb): download or re-save the file (np.savez / np.savez_compressed)`,
      );
    }
  }
  return located;
}

async function readEntry(
  file: Deno.FsFile,
  entry: LocatedEntry,
  label: string,
  verifyCrc: boolean,
): Promise<Uint8Array> {
  const where = `entry ${entry.name} of ${label}`;
  if (entry.flags & 1) throw new Error(`${where} is encrypted; save the arrays without encryption`);
  if (entry.method !== 0 && entry.method !== 8) {
    throw new Error(
      `${where} uses zip compression method ${entry.method}; supported: stored (np.savez) ` +
        `and deflate (np.savez_compressed)`,
    );
  }
  if (entry.method === 0 && entry.size !== entry.compressedSize) {
    throw new Error(
      `${where} is stored uncompressed but declares ${entry.size} bytes in ` +
        `${entry.compressedSize}; the file is corrupt, download it again`,
    );
  }
  const raw = await readAt(file, entry.dataStart, entry.compressedSize);
  const out = entry.method === 0 ? raw : inflateEntry(raw, entry, `${label}:${entry.name}`, where);
  if (out.length !== entry.size) {
    throw new Error(
      `${where} is truncated: ${out.length} bytes decompressed, ${entry.size} expected; download the file again`,
    );
  }
  if (verifyCrc && crc32(out) !== entry.crc) {
    throw new Error(`${where} fails its CRC-32 check; the file is corrupt, download it again`);
  }
  return out;
}

/**
 * Inflates one entry without trusting it: its npy header, read from the first bytes, must need
 * exactly the size the zip declares before that much memory is allocated, and inflation stops
 * as soon as the stream runs past that size.
 */
function inflateEntry(raw: Uint8Array, entry: ZipEntry, name: string, where: string): Uint8Array {
  let head = new Uint8Array(0);
  let out: Uint8Array | undefined;
  let headerError: Error | undefined; // what the header check threw, passed through as it is
  const checkHeader = (piece: Uint8Array) => {
    const grown = new Uint8Array(head.length + piece.length);
    grown.set(head);
    grown.set(piece, head.length);
    head = grown;
    const end = npyHeaderEnd(head, name);
    if (end === undefined || head.length < end) return;
    const { dataStart, descr, shape, nbytes } = parseNpyLayout(head.subarray(0, end), name);
    if (dataStart + nbytes !== entry.size) {
      throw new Error(
        `${where} declares ${entry.size} bytes, but its npy header (shape [${shape}], ${descr}) ` +
          `makes ${dataStart + nbytes}; the file is corrupt, download or re-save it`,
      );
    }
    out = new Uint8Array(entry.size);
    out.set(head);
    head = new Uint8Array(0);
  };
  const sink = (piece: Uint8Array, offset: number) => {
    if (out !== undefined) {
      out.set(piece, offset);
      return;
    }
    try {
      checkHeader(piece);
    } catch (err) {
      throw (headerError = err as Error);
    }
  };
  let produced: number;
  try {
    produced = inflateBounded(raw, "raw", entry.size, sink);
  } catch (err) {
    if (err instanceof InflateLimitError) {
      throw new Error(
        `${where} inflates to more than the ${entry.size} bytes it declares; the file is ` +
          `corrupt or hostile (a decompression bomb): download or re-save it`,
      );
    }
    if (err === headerError) throw err;
    throw new Error(
      `${where} is truncated or corrupt (inflate: ${
        (err as Error).message
      }); download the file again`,
    );
  }
  return out?.subarray(0, produced) ?? head;
}

/**
 * Refuses, before anything is inflated, entries whose declared sizes pass the limits (see
 * `./limits.ts`): their total, their ratio to their compressed bytes and, as a backstop
 * (entries that do not overlap cannot compress into more bytes than the file has), their ratio
 * to the whole file.
 */
function checkEntrySizes(
  entries: ZipEntry[],
  label: string,
  limits: NpzLimits,
  fileSize: number,
): void {
  const total = entries.reduce((a, e) => a + e.size, 0);
  const names = entries.map((e) => e.name).join(", ");
  if (total > limits.maxBytes) {
    throw new Error(
      `${label}: the arrays read (${names}) declare ${formatBytes(total)} uncompressed, more ` +
        `than the limit of ${formatBytes(limits.maxBytes)}; the file is corrupt or hostile — or, ` +
        `if it is genuine, raise the limit (readNpz option maxBytes, or the environment variable ` +
        `DEER_NPZ_MAX_BYTES=<bytes>)`,
    );
  }
  const compressed = entries.reduce((a, e) => a + e.compressedSize, 0);
  if (total > NPZ_RATIO_FLOOR_BYTES && total > limits.maxRatio * compressed) {
    const worst = entries.reduce((w, e) =>
      e.size / Math.max(1, e.compressedSize) > w.size / Math.max(1, w.compressedSize) ? e : w
    );
    throw new Error(
      `${label}: the arrays read (${names}) expand ${formatBytes(compressed)} to ` +
        `${formatBytes(total)}, ${(total / Math.max(1, compressed)).toFixed(0)}:1 (entry ` +
        `${worst.name}: ${formatBytes(worst.size)} from ${formatBytes(worst.compressedSize)}), ` +
        `more than the limit of ${limits.maxRatio}:1 — a decompression bomb, or arrays that are ` +
        `almost all zeros; if the file is genuine, raise the limit (readNpz option maxRatio, or ` +
        `the environment variable DEER_NPZ_MAX_RATIO=<ratio>)`,
    );
  }
  if (total > NPZ_RATIO_FLOOR_BYTES && total > limits.maxRatio * fileSize) {
    throw new Error(
      `${label}: the arrays read (${names}) declare ${formatBytes(total)} uncompressed from a ` +
        `file of ${formatBytes(fileSize)}, ${(total / Math.max(1, fileSize)).toFixed(0)}:1, ` +
        `more than the limit of ${limits.maxRatio}:1 — a decompression bomb, or arrays that are ` +
        `almost all zeros; if the file is genuine, raise the limit (readNpz option maxRatio, or ` +
        `the environment variable DEER_NPZ_MAX_RATIO=<ratio>)`,
    );
  }
}

/** Opens `path` for reading; a missing file is an error that names it. */
async function openForReading(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new Error(`${path} does not exist`);
    throw err;
  }
}

/**
 * Reads the arrays of an `.npz` file (as written by `np.savez` or `np.savez_compressed`), keyed
 * by entry name without `.npy`.
 *
 * @example
 * ```ts
 * const arrays = await readNpz("data/default/fashion6.npz");
 * arrays.train_images.shape; // [2400, 28, 28] (BloodMNIST: [11959, 28, 28, 3])
 * ```
 */
export async function readNpz(
  path: string,
  options: ReadNpzOptions = {},
): Promise<Record<string, NpyArray>> {
  const label = basename(path);
  const file = await openForReading(path);
  try {
    const fileSize = (await file.stat()).size;
    const { entries, cdOffset } = await readCentralDirectory(file, fileSize, label);
    const byKey = new Map(entries.map((e) => [e.name.replace(/\.npy$/, ""), e]));
    const keys = options.keys ?? [...byKey.keys()];
    const missing = keys.filter((k) => !byKey.has(k));
    if (missing.length > 0) {
      throw new Error(
        `${label} has no array ${missing.map((k) => `"${k}"`).join(", ")}; ` +
          `it holds: ${[...byKey.keys()].join(", ") || "nothing"}`,
      );
    }
    const limits = npzLimits(options);
    const wanted = [...new Set(keys)]; // a key asked twice is read once
    const entriesRead = wanted.map((k) => byKey.get(k)!);
    const located = await locateEntries(file, fileSize, cdOffset, entriesRead, label);
    checkEntrySizes(located, label, limits, fileSize);
    const out: Record<string, NpyArray> = {};
    for (const [i, entry] of located.entries()) {
      const key = wanted[i];
      const bytes = await readEntry(file, entry, label, options.verifyCrc ?? true);
      out[key] = readNpy(bytes, `${label}:${entry.name}`, options);
    }
    return out;
  } finally {
    file.close();
  }
}

/**
 * Lists the array names of an `.npz` file without reading any data.
 *
 * @example
 * ```ts
 * (await listNpz("data/default/fashion6.npz")).includes("train_images"); // true
 * ```
 */
export async function listNpz(path: string): Promise<string[]> {
  const file = await openForReading(path);
  try {
    const { entries } = await readCentralDirectory(file, (await file.stat()).size, basename(path));
    return entries.map((e) => e.name.replace(/\.npy$/, ""));
  } finally {
    file.close();
  }
}

/**
 * Writes arrays to an `.npz` file atomically: `{ compress: true }` (default) deflates each entry
 * like `np.savez_compressed`, `false` stores them like `np.savez`.
 *
 * @example
 * ```ts
 * await writeNpz("/tmp/d.npz", {
 *   train_labels: { shape: [3, 1], data: new Uint8Array([0, 1, 2]) },
 * }, { compress: false });
 * ```
 */
export async function writeNpz(
  path: string,
  arrays: Record<string, NpyInput>,
  options: { compress?: boolean } = {},
): Promise<void> {
  const compress = options.compress ?? true;
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  const keys = Object.keys(arrays);
  if (keys.length > 0xfffe) throw new Error(`${path}: too many arrays (${keys.length})`);
  for (const key of keys) {
    const name = enc.encode(`${key}.npy`);
    const npy = encodeNpy(arrays[key], `${basename(path)}:${key}`);
    const data = compress ? deflateSync(npy, { level: 6 }) : npy;
    if (npy.length >= 0xffffffff || offset + data.length >= 0xffffffff) {
      throw new Error(`${path}: array ${key} makes the archive exceed 4 GiB (no zip64 writer)`);
    }
    const method = compress ? 8 : 0;
    const crc = crc32(npy);
    const local = new Uint8Array(30 + name.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, 20, true);
    lv.setUint16(8, method, true);
    lv.setUint16(12, 0x21, true); // 1980-01-01: fixed, so equal arrays give equal files
    lv.setUint32(14, crc, true);
    lv.setUint32(18, data.length, true);
    lv.setUint32(22, npy.length, true);
    lv.setUint16(26, name.length, true);
    local.set(name, 30);
    const cd = new Uint8Array(46 + name.length);
    const cv = new DataView(cd.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, 20, true);
    cv.setUint16(6, 20, true);
    cv.setUint16(10, method, true);
    cv.setUint16(14, 0x21, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, npy.length, true);
    cv.setUint16(28, name.length, true);
    cv.setUint32(42, offset, true);
    cd.set(name, 46);
    parts.push(local, data);
    central.push(cd);
    offset += local.length + data.length;
  }
  const cdSize = central.reduce((a, c) => a + c.length, 0);
  const eocd = new Uint8Array(22);
  const ev = new DataView(eocd.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, keys.length, true);
  ev.setUint16(10, keys.length, true);
  ev.setUint32(12, cdSize, true);
  ev.setUint32(16, offset, true);
  await writeFileAtomic(path, concatBytes([...parts, ...central, eocd]));
}
