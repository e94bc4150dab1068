/**
 * Reading and writing `.safetensors` files (the Hugging Face format; no pickle, no code).
 *
 * Layout of a file: 8 bytes little-endian u64 `n`, then `n` bytes of UTF-8 JSON, then the byte
 * buffer. The JSON maps each tensor name to `{ dtype, shape, data_offsets: [begin, end] }`
 * (offsets relative to the start of the byte buffer) and may hold `"__metadata__"`, a map of
 * strings to strings.
 *
 * In memory every tensor's `data` is a `Float32Array`, whatever its dtype on disk: F64, F16 and
 * BF16 are converted to float32; integer and BOOL tensors are converted by value (exact while
 * |x| ≤ 2²⁴, which covers index buffers such as `position_ids`). `dtype` keeps the dtype on disk,
 * and {@link writeSafetensors} converts back to it, so a round trip is exact for every float32
 * tensor and for integers up to 2²⁴.
 *
 * Reading from a path seeks to each wanted tensor, so a loader can take the image tower out of a
 * full CLIP checkpoint without reading the text tower (`include`).
 *
 * @example
 * ```ts
 * await writeSafetensors("/tmp/x.safetensors", { w: { shape: [2, 2], data: new Float32Array(4) } });
 * const { tensors, metadata } = await readSafetensors("/tmp/x.safetensors");
 * tensors.w.shape; // [2, 2]
 * ```
 * @module
 */
import { writeFileAtomic } from "../io/atomic.ts";

/** The dtypes this module reads and writes. */
export const SAFETENSORS_DTYPES = [
  "F64",
  "F32",
  "F16",
  "BF16",
  "I64",
  "I32",
  "I16",
  "I8",
  "U8",
  "BOOL",
] as const;
/** One of {@link SAFETENSORS_DTYPES}. */
export type SafetensorsDtype = typeof SAFETENSORS_DTYPES[number];

const ITEM_SIZE: Record<SafetensorsDtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** The format's own limit on the JSON header (100 MB); a larger length means a corrupt file. */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor in memory: `data` is row-major float32 (see the module doc for integer dtypes). */
export interface SafeTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: Float32Array;
}

/** One tensor as the header describes it, before its data is read. */
export interface SafeTensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Byte range in the data buffer, `[begin, end)`. */
  offsets: [number, number];
}

/** A file's index: tensor descriptions and metadata, without the data. */
export interface SafetensorsIndex {
  tensors: Record<string, SafeTensorInfo>;
  metadata: Record<string, string>;
  /** Byte position of the data buffer in the file (8 + header length). */
  dataStart: number;
}

/** A whole (or filtered) file in memory. */
export interface SafetensorsFile {
  tensors: Record<string, SafeTensor>;
  metadata: Record<string, string>;
}

/** A tensor to write: `dtype` defaults to F32; `data` holds float values in row-major order. */
export interface SafeTensorInput {
  dtype?: SafetensorsDtype;
  shape: number[];
  data: ArrayLike<number>;
}

/** Options for {@link readSafetensors}. */
export interface ReadSafetensorsOptions {
  /** Which tensors to read (by name); the others are validated but their data is skipped. */
  include?: (name: string) => boolean;
}

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("safetensors.ts assumes a little-endian host");
}

// ---------------------------------------------------------------------------------------------
// Header

function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function parseHeader(label: string, prefix: Uint8Array, totalBytes: number): SafetensorsIndex {
  if (totalBytes < 8) {
    throw new Error(`${label}: ${totalBytes} bytes is too short for a safetensors file (needs 8+)`);
  }
  const view = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const n = view.getBigUint64(0, true);
  if (n > BigInt(Math.min(MAX_HEADER_BYTES, totalBytes - 8))) {
    throw new Error(
      `${label}: header length ${n} exceeds the file (${totalBytes} bytes) or the 100 MB limit; ` +
        `the file is truncated or not a safetensors file; download or convert it again`,
    );
  }
  const headerLength = Number(n);
  if (prefix.length < 8 + headerLength) {
    throw new Error(`${label}: internal error, header bytes not read`);
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(
      prefix.subarray(8, 8 + headerLength),
    ));
  } catch (err) {
    throw new Error(`${label}: header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new Error(`${label}: header JSON must be an object of tensor entries`);
  }
  const dataStart = 8 + headerLength;
  const bufferBytes = totalBytes - dataStart;
  const metadata: Record<string, string> = {};
  const tensors: Record<string, SafeTensorInfo> = {};
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
        throw new Error(`${label}: "__metadata__" must be an object of strings`);
      }
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== "string") {
          throw new Error(
            `${label}: metadata "${k}" is ${typeof v}; safetensors metadata values are strings`,
          );
        }
        metadata[k] = v;
      }
      continue;
    }
    tensors[name] = parseEntry(label, name, entry, bufferBytes);
  }
  // Tensors must not share bytes (the format also forbids holes; those are harmless to a reader).
  // A tensor with no elements holds no bytes, so it overlaps nothing wherever its offsets point;
  // ties are broken by name, so the verdict and the pair named never depend on key order.
  const ranges = Object.entries(tensors)
    .filter(([, t]) => t.offsets[1] > t.offsets[0])
    .sort((a, b) =>
      a[1].offsets[0] - b[1].offsets[0] || a[1].offsets[1] - b[1].offsets[1] ||
      (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)
    );
  let reach = 0; // the range ending furthest so far
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i - 1][1].offsets[1] > ranges[reach][1].offsets[1]) reach = i - 1;
    if (ranges[i][1].offsets[0] < ranges[reach][1].offsets[1]) {
      throw new Error(
        `${label}: tensors "${ranges[reach][0]}" and "${ranges[i][0]}" overlap in the data ` +
          `buffer; the file is corrupt`,
      );
    }
  }
  return { tensors, metadata, dataStart };
}

function parseEntry(
  label: string,
  name: string,
  entry: unknown,
  bufferBytes: number,
): SafeTensorInfo {
  const where = `${label}: tensor "${name}"`;
  if (entry === null || typeof entry !== "object") {
    throw new Error(`${where}: entry is not an object`);
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== "string" || !(SAFETENSORS_DTYPES as readonly string[]).includes(dtype)) {
    throw new Error(
      `${where}: dtype ${JSON.stringify(dtype)} is not supported; ` +
        `convert the tensor to one of ${SAFETENSORS_DTYPES.join(", ")}`,
    );
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`${where}: shape ${JSON.stringify(shape)} must be a list of integers ≥ 0`);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]
  ) {
    throw new Error(
      `${where}: data_offsets ${JSON.stringify(offsets)} must be [begin, end], 0 ≤ begin ≤ end`,
    );
  }
  if (offsets[1] > bufferBytes) {
    throw new Error(
      `${where}: data_offsets [${offsets}] run past the data buffer (${bufferBytes} bytes); ` +
        `the file is truncated; download or convert it again`,
    );
  }
  const need = numel(shape) * ITEM_SIZE[dtype as SafetensorsDtype];
  if (offsets[1] - offsets[0] !== need) {
    throw new Error(
      `${where}: data_offsets [${offsets}] hold ${offsets[1] - offsets[0]} bytes but shape ` +
        `[${shape}] ${dtype} needs ${need}; the file is corrupt`,
    );
  }
  return { dtype: dtype as SafetensorsDtype, shape: [...shape], offsets: [offsets[0], offsets[1]] };
}

// ---------------------------------------------------------------------------------------------
// Conversions

let halfTable: Float32Array | undefined;

/** float16 bit patterns → float32 values, all 65,536 of them (built once). */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    halfTable[h] = exp === 0
      ? sign * frac * 2 ** -24
      : exp === 31
      ? (frac ? NaN : sign * Infinity)
      : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return halfTable;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** float32 → float16 bits, round to nearest even (as numpy and PyTorch do). */
function floatToHalf(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++; // a carry into the exponent is right
  return sign | half;
}

/** float32 → bfloat16 bits, round to nearest even. */
function floatToBf16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  if (Number.isNaN(value)) return ((x >>> 16) & 0x8000) | 0x7fc0;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

function decode(bytes: Uint8Array, dtype: SafetensorsDtype, count: number): Float32Array {
  // Copy into a fresh, aligned buffer: data offsets need not be aligned to the item size.
  const buf = bytes.slice().buffer;
  switch (dtype) {
    case "F32":
      return new Float32Array(buf, 0, count);
    case "F64":
      return Float32Array.from(new Float64Array(buf, 0, count));
    case "F16": {
      const table = halfToFloatTable();
      const h = new Uint16Array(buf, 0, count);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = table[h[i]];
      return out;
    }
    case "BF16": {
      const h = new Uint16Array(buf, 0, count);
      const u = new Uint32Array(count);
      for (let i = 0; i < count; i++) u[i] = h[i] << 16;
      return new Float32Array(u.buffer);
    }
    case "I64": {
      const v = new BigInt64Array(buf, 0, count);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = Number(v[i]);
      return out;
    }
    case "I32":
      return Float32Array.from(new Int32Array(buf, 0, count));
    case "I16":
      return Float32Array.from(new Int16Array(buf, 0, count));
    case "I8":
      return Float32Array.from(new Int8Array(buf, 0, count));
    case "U8":
    case "BOOL":
      return Float32Array.from(new Uint8Array(buf, 0, count));
  }
}

function encode(name: string, t: SafeTensorInput, dtype: SafetensorsDtype): Uint8Array {
  const n = t.data.length;
  const src = t.data;
  let out: ArrayBufferView;
  switch (dtype) {
    case "F32":
      out = Float32Array.from(src);
      break;
    case "F64":
      out = Float64Array.from(src);
      break;
    case "F16": {
      const h = new Uint16Array(n);
      for (let i = 0; i < n; i++) h[i] = floatToHalf(src[i]);
      out = h;
      break;
    }
    case "BF16": {
      const h = new Uint16Array(n);
      for (let i = 0; i < n; i++) h[i] = floatToBf16(src[i]);
      out = h;
      break;
    }
    case "I64": {
      const v = new BigInt64Array(n);
      for (let i = 0; i < n; i++) v[i] = BigInt(checkInteger(name, src[i], -(2 ** 53), 2 ** 53));
      out = v;
      break;
    }
    case "I32":
      out = Int32Array.from(src, (x) => checkInteger(name, x, -(2 ** 31), 2 ** 31 - 1));
      break;
    case "I16":
      out = Int16Array.from(src, (x) => checkInteger(name, x, -32768, 32767));
      break;
    case "I8":
      out = Int8Array.from(src, (x) => checkInteger(name, x, -128, 127));
      break;
    case "U8":
      out = Uint8Array.from(src, (x) => checkInteger(name, x, 0, 255));
      break;
    case "BOOL":
      out = Uint8Array.from(src, (x) => checkInteger(name, x, 0, 1));
      break;
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

function checkInteger(name: string, x: number, lo: number, hi: number): number {
  if (!Number.isInteger(x) || x < lo || x > hi) {
    throw new Error(
      `tensor "${name}": value ${x} is not an integer in [${lo}, ${hi}] for its dtype`,
    );
  }
  return x;
}

// ---------------------------------------------------------------------------------------------
// Reading

async function readExactly(
  file: Deno.FsFile,
  label: string,
  at: number,
  length: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  await file.seek(at, Deno.SeekMode.Start);
  let off = 0;
  while (off < length) {
    const got = await file.read(out.subarray(off));
    if (got === null) {
      throw new Error(
        `${label}: file ended at byte ${at + off}; expected ${at + length} (the file is ` +
          `truncated; download or convert it again)`,
      );
    }
    off += got;
  }
  return out;
}

/**
 * Reads only the header of a safetensors file (path or bytes): tensor names, dtypes, shapes and
 * the metadata. Validates every entry (dtype, shape, offsets inside the file, sizes, overlaps).
 *
 * @example
 * ```ts
 * const index = await readSafetensorsIndex("models/default/vit_tiny_fashion.safetensors");
 * Object.keys(index.tensors).length; // 44 (names, dtypes, shapes; no data read)
 * ```
 */
export async function readSafetensorsIndex(source: string | Uint8Array): Promise<SafetensorsIndex> {
  if (typeof source !== "string") return parseHeaderFromBytes("<bytes>", source);
  const file = await openForRead(source);
  try {
    return await readIndexFromFile(file, source);
  } finally {
    file.close();
  }
}

/**
 * The tensors of an open file that `keep` selects, read and decoded one at a time in file order
 * (sequential reads are the fast path on every disk).
 */
async function* readInFileOrder(
  file: Deno.FsFile,
  label: string,
  index: SafetensorsIndex,
  keep: (name: string, info: SafeTensorInfo) => boolean,
): AsyncGenerator<{ name: string; info: SafeTensorInfo; data: Float32Array }> {
  const wanted = Object.entries(index.tensors).filter(([name, info]) => keep(name, info))
    .sort((a, b) => a[1].offsets[0] - b[1].offsets[0]);
  for (const [name, info] of wanted) {
    const [b, e] = info.offsets;
    const bytes = await readExactly(file, `${label}: tensor "${name}"`, index.dataStart + b, e - b);
    yield { name, info, data: decode(bytes, info.dtype, numel(info.shape)) };
  }
}

async function openForRead(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (err) {
    throw new Error(`${path}: cannot open safetensors file (${(err as Error).message})`);
  }
}

function parseHeaderFromBytes(label: string, bytes: Uint8Array): SafetensorsIndex {
  return parseHeader(label, bytes, bytes.length);
}

async function readIndexFromFile(file: Deno.FsFile, label: string): Promise<SafetensorsIndex> {
  const size = (await file.stat()).size;
  if (size < 8) return parseHeader(label, new Uint8Array(0), size);
  const first = await readExactly(file, label, 0, 8);
  const n = new DataView(first.buffer).getBigUint64(0, true);
  if (n > BigInt(Math.min(MAX_HEADER_BYTES, size - 8))) return parseHeader(label, first, size);
  const prefix = await readExactly(file, label, 0, 8 + Number(n));
  return parseHeader(label, prefix, size);
}

/**
 * Reads a safetensors file (a path, or the file's bytes) into float32 arrays. Errors name the
 * file and the tensor and say what is wrong (truncated, overlapping, unsupported dtype, …).
 *
 * @example
 * ```ts
 * const { tensors } = await readSafetensors("tests/fixtures/model_tiny/openai.safetensors", {
 *   include: (name) => name.startsWith("visual."), // the image tower only
 * });
 * tensors["visual.proj"].shape; // [32, 24] (open_clip ViT-B/16: [768, 512])
 * ```
 */
export async function readSafetensors(
  source: string | Uint8Array,
  options: ReadSafetensorsOptions = {},
): Promise<SafetensorsFile> {
  const include = options.include ?? (() => true);
  const tensors: Record<string, SafeTensor> = {};
  if (typeof source !== "string") {
    const index = parseHeaderFromBytes("<bytes>", source);
    for (const [name, info] of Object.entries(index.tensors)) {
      if (!include(name)) continue;
      const [b, e] = info.offsets;
      const bytes = source.subarray(index.dataStart + b, index.dataStart + e);
      tensors[name] = {
        dtype: info.dtype,
        shape: info.shape,
        data: decode(bytes, info.dtype, numel(info.shape)),
      };
    }
    return { tensors, metadata: index.metadata };
  }
  const file = await openForRead(source);
  try {
    const index = await readIndexFromFile(file, source);
    for await (const { name, info, data } of readInFileOrder(file, source, index, include)) {
      tensors[name] = { dtype: info.dtype, shape: info.shape, data };
    }
    return { tensors, metadata: index.metadata };
  } finally {
    file.close();
  }
}

/** Where {@link findNonFinite} found the first value that is not a finite number. */
export interface NonFiniteValue {
  tensor: string;
  /** Row-major index of the value inside the tensor. */
  index: number;
  value: number;
  /** How many values of that tensor are not finite. */
  count: number;
}

/**
 * Scans a safetensors file's float tensors (F64, F32, F16, BF16; one tensor in memory at a time)
 * for NaN or ±Infinity and returns the first tensor holding one, or null. Loaders of weights call
 * it to refuse a diverged or badly converted checkpoint at load time, naming the tensor, instead
 * of training on it.
 *
 * @example
 * ```ts
 * const bad = await findNonFinite("models/default/vit_tiny_fashion.safetensors");
 * if (bad) throw new Error(`tensor "${bad.tensor}" holds ${bad.value}`);
 * bad; // null: every weight is finite
 * ```
 */
export async function findNonFinite(
  path: string,
  include: (name: string) => boolean = () => true,
): Promise<NonFiniteValue | null> {
  const file = await openForRead(path);
  try {
    const index = await readIndexFromFile(file, path);
    const floats = (name: string, info: SafeTensorInfo) =>
      include(name) && /^(F64|F32|F16|BF16)$/.test(info.dtype);
    for await (const { name, data } of readInFileOrder(file, path, index, floats)) {
      let first = -1;
      let count = 0;
      for (let i = 0; i < data.length; i++) {
        // x − x is 0 for every finite x and NaN for NaN and ±Infinity: one test for both.
        if (data[i] - data[i] !== 0) {
          if (first < 0) first = i;
          count++;
        }
      }
      if (first >= 0) return { tensor: name, index: first, value: data[first], count };
    }
    return null;
  } finally {
    file.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

/**
 * Serialises tensors (and string metadata) to safetensors bytes. Tensors are stored in name
 * order, each in its `dtype` (default F32); the header is padded with spaces to 8 bytes.
 *
 * @example
 * ```ts
 * const bytes = encodeSafetensors({ x: { shape: [3], data: [1, 2, 3], dtype: "F16" } });
 * ```
 */
export function encodeSafetensors(
  tensors: Record<string, SafeTensorInput>,
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new Error(`metadata "${k}" must be a string; got ${typeof v}`);
      }
    }
    header.__metadata__ = metadata;
  }
  const names = Object.keys(tensors).sort();
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    if (name === "__metadata__") throw new Error(`"__metadata__" is reserved; rename that tensor`);
    const t = tensors[name];
    const dtype = t.dtype ?? "F32";
    if (!(SAFETENSORS_DTYPES as readonly string[]).includes(dtype)) {
      throw new Error(
        `tensor "${name}": dtype ${dtype} is not one of ${SAFETENSORS_DTYPES.join(", ")}`,
      );
    }
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new Error(`tensor "${name}": shape [${t.shape}] must hold integers ≥ 0`);
    }
    if (numel(t.shape) !== t.data.length) {
      throw new Error(
        `tensor "${name}": shape [${t.shape}] needs ${
          numel(t.shape)
        } values; data has ${t.data.length}`,
      );
    }
    const bytes = encode(name, t, dtype);
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * Writes tensors to a safetensors file atomically (temporary file, then rename).
 *
 * @example
 * ```ts
 * const path = `${await Deno.makeTempDir()}/lora.safetensors`;
 * await writeSafetensors(path, {
 *   "blocks.0.q.A": { shape: [8, 768], data: new Float32Array(8 * 768) },
 * }, { rank: "8" });
 * (await readSafetensors(path)).metadata.rank; // "8"
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, SafeTensorInput>,
  metadata?: Record<string, string>,
): Promise<void> {
  let bytes: Uint8Array;
  try {
    bytes = encodeSafetensors(tensors, metadata);
  } catch (err) {
    throw new Error(`${path}: ${(err as Error).message}`);
  }
  await writeFileAtomic(path, bytes);
}
