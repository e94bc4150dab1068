/**
 * The binary codec of factor payloads: named float arrays with their shapes and a small JSON
 * `meta` object, as a site's release or the coordinator's global factors travel between
 * processes. Decoding reads bytes that another machine wrote, so it trusts nothing: the header's
 * declared sizes are checked against the limits and against the message's real length before
 * anything is allocated, every array's SHA-256 is checked, and a non-finite value is refused.
 *
 * Layout (all integers little-endian):
 *
 * | bytes | content |
 * |---|---|
 * | 0–7 | magic `DEERFAC1` |
 * | 8–11 | header length H (u32) |
 * | 12 … 12+H | header, UTF-8 JSON: `{ v: 1, meta, dataBytes, arrays: [{ name, dtype, shape, offset, byteLength, sha256 }] }` |
 * | zero padding to a multiple of 8 | |
 * | data | the arrays' raw values, each at its `offset` (a multiple of 8) from the data start |
 *
 * @example
 * ```ts
 * const bytes = await encodePayload({
 *   meta: { round: 1 },
 *   arrays: [{ name: "B.0", shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) }],
 * });
 * const back = await decodePayload(bytes);
 * back.arrays[0].data; // Float32Array [1, 2, 3, 4, 5, 6]
 * ```
 * @module
 */
import { toHex } from "../hex.ts";

/** The array types a payload carries. */
export type FloatArray = Float32Array | Float64Array;

/** One named array with its shape (row-major; `data.length` is the product of `shape`). */
export interface NamedArray {
  name: string;
  shape: number[];
  data: FloatArray;
}

/** What a payload carries: JSON-able metadata and the arrays. */
export interface Payload {
  meta: Record<string, unknown>;
  arrays: NamedArray[];
}

/** Bounds a decoder enforces before it allocates anything. */
export interface CodecLimits {
  /** Largest header (JSON) in bytes. */
  maxHeaderBytes: number;
  /** Most arrays in one payload. */
  maxArrays: number;
  /** Most values (all arrays together). */
  maxValues: number;
  /** Largest rank of one array. */
  maxRank: number;
}

/**
 * Default limits: 1 MiB of header, 4,096 arrays, 64 Mi values (256 MiB of float32 — a ViT-L/14
 * LoRA release at r = 64 is ≈ 7 Mi values), rank 8.
 */
export const DEFAULT_LIMITS: CodecLimits = {
  maxHeaderBytes: 1 << 20,
  maxArrays: 4096,
  maxValues: 64 * 1024 * 1024,
  maxRank: 8,
};

/** A payload refused by {@link decodePayload} or by a check on its contents. */
export class PayloadError extends Error {
  override name = "PayloadError";
}

const MAGIC = "DEERFAC1";
const PREFIX_BYTES = 12;
const BYTES_PER = { float32: 4, float64: 8 } as const;
type Dtype = keyof typeof BYTES_PER;
const NAME_PATTERN = /^[A-Za-z0-9_.:\/-]{1,256}$/;

/** One array's entry in the header. */
interface ArrayEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  offset: number;
  byteLength: number;
  sha256: string;
}

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("lib/federation/codec.ts assumes a little-endian machine");
}

const align8 = (n: number) => Math.ceil(n / 8) * 8;

/** Lower-case hex SHA-256 of `bytes`. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource)));
}

function rawBytes(a: FloatArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function dtypeOf(a: FloatArray): Dtype {
  if (a instanceof Float32Array) return "float32";
  if (a instanceof Float64Array) return "float64";
  throw new PayloadError(`array type ${(a as object).constructor.name}: only float32 and float64`);
}

/** Index of the first non-finite value of `a`, or -1. */
function firstNonFinite(a: FloatArray): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
}

/**
 * Encodes a payload. Refuses what a decoder would refuse (a shape that does not match the data,
 * a non-finite value, a repeated or malformed name), so a bad release fails at its sender.
 */
export async function encodePayload(payload: Payload): Promise<Uint8Array> {
  const entries: ArrayEntry[] = [];
  const seen = new Set<string>();
  let offset = 0;
  for (const { name, shape, data } of payload.arrays) {
    if (!NAME_PATTERN.test(name)) {
      throw new PayloadError(`array name ${JSON.stringify(name)}: use 1–256 of [A-Za-z0-9_.:/-]`);
    }
    if (seen.has(name)) throw new PayloadError(`array ${name} appears twice`);
    seen.add(name);
    const dtype = dtypeOf(data);
    const count = shape.reduce((p, d) => p * d, 1);
    if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0) || count !== data.length) {
      throw new PayloadError(
        `array ${name}: shape [${shape}] holds ${count} values but the data has ${data.length}`,
      );
    }
    const bad = firstNonFinite(data);
    if (bad >= 0) throw new PayloadError(`array ${name}: value ${bad} is ${data[bad]}`);
    entries.push({
      name,
      dtype,
      shape: [...shape],
      offset,
      byteLength: data.byteLength,
      sha256: await sha256Hex(rawBytes(data)),
    });
    offset = align8(offset + data.byteLength);
  }
  const header = new TextEncoder().encode(
    JSON.stringify({ v: 1, meta: payload.meta, dataBytes: offset, arrays: entries }),
  );
  const dataStart = align8(PREFIX_BYTES + header.length);
  const out = new Uint8Array(dataStart + offset);
  out.set(new TextEncoder().encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, header.length, true);
  out.set(header, PREFIX_BYTES);
  payload.arrays.forEach((a, i) => out.set(rawBytes(a.data), dataStart + entries[i].offset));
  return out;
}

function refuse(what: string): never {
  throw new PayloadError(`factor payload refused: ${what}`);
}

/** Checks the parsed header's shape and declared sizes; returns its entries. */
function checkHeader(
  header: unknown,
  available: number,
  limits: CodecLimits,
): { meta: Record<string, unknown>; entries: ArrayEntry[] } {
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    refuse("the header is not a JSON object");
  }
  const h = header as Record<string, unknown>;
  if (h.v !== 1) refuse(`header version ${JSON.stringify(h.v)}; this reader knows version 1`);
  const meta = h.meta ?? {};
  if (typeof meta !== "object" || meta === null || Array.isArray(meta)) {
    refuse("header.meta is not an object");
  }
  if (!Array.isArray(h.arrays)) refuse("header.arrays is not a list");
  if (h.arrays.length > limits.maxArrays) {
    refuse(`${h.arrays.length} arrays declared; at most ${limits.maxArrays}`);
  }
  if (!Number.isSafeInteger(h.dataBytes) || (h.dataBytes as number) < 0) {
    refuse(`header.dataBytes ${JSON.stringify(h.dataBytes)} is not a byte count`);
  }
  const dataBytes = h.dataBytes as number;
  if (dataBytes !== available) {
    refuse(`the header declares ${dataBytes} data bytes but the message holds ${available}`);
  }
  const entries: ArrayEntry[] = [];
  const seen = new Set<string>();
  let values = 0;
  let expectedOffset = 0;
  for (const [i, raw] of (h.arrays as unknown[]).entries()) {
    const e = (typeof raw === "object" && raw !== null ? raw : {}) as Record<string, unknown>;
    const where = `array ${i} (${JSON.stringify(e.name)})`;
    if (typeof e.name !== "string" || !NAME_PATTERN.test(e.name)) refuse(`${where}: bad name`);
    if (seen.has(e.name)) refuse(`${where}: name appears twice`);
    seen.add(e.name);
    if (e.dtype !== "float32" && e.dtype !== "float64") {
      refuse(`${where}: dtype ${JSON.stringify(e.dtype)}; expected float32 or float64`);
    }
    if (!Array.isArray(e.shape) || e.shape.length > limits.maxRank) {
      refuse(`${where}: shape must be a list of at most ${limits.maxRank} sizes`);
    }
    let count = 1;
    for (const d of e.shape) {
      if (!Number.isSafeInteger(d) || d < 0) refuse(`${where}: size ${JSON.stringify(d)}`);
      count *= d;
      if (count > limits.maxValues) {
        refuse(`${where}: shape [${e.shape}] exceeds the limit of ${limits.maxValues} values`);
      }
    }
    values += count;
    if (values > limits.maxValues) {
      refuse(`the arrays declare more than the limit of ${limits.maxValues} values`);
    }
    const byteLength = count * BYTES_PER[e.dtype];
    if (e.byteLength !== byteLength) {
      refuse(
        `${where}: declares ${e.byteLength} bytes but shape [${e.shape}] of ${e.dtype} ` +
          `needs ${byteLength}`,
      );
    }
    if (e.offset !== expectedOffset) {
      refuse(
        `${where}: offset ${e.offset}; the arrays must be packed (expected ${expectedOffset})`,
      );
    }
    if (typeof e.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(e.sha256)) {
      refuse(`${where}: sha256 is not 64 lower-case hex digits`);
    }
    entries.push({
      name: e.name,
      dtype: e.dtype,
      shape: e.shape as number[],
      offset: e.offset as number,
      byteLength,
      sha256: e.sha256,
    });
    expectedOffset = align8(expectedOffset + byteLength);
  }
  if (expectedOffset !== dataBytes) {
    refuse(`the arrays take ${expectedOffset} bytes but the header declares ${dataBytes}`);
  }
  return { meta: meta as Record<string, unknown>, entries };
}

/**
 * Decodes a payload written by {@link encodePayload}. Every check that bounds memory runs before
 * the arrays are allocated; a digest mismatch or a non-finite value is refused after the copy.
 * Throws {@link PayloadError} naming what is wrong.
 */
export async function decodePayload(
  bytes: Uint8Array,
  limits: CodecLimits = DEFAULT_LIMITS,
): Promise<Payload> {
  if (bytes.length < PREFIX_BYTES) refuse(`${bytes.length} bytes is shorter than the prefix`);
  if (new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    refuse(`it does not start with ${MAGIC} (not a factor payload, or another version)`);
  }
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    .getUint32(8, true);
  if (headerLength > limits.maxHeaderBytes) {
    refuse(`header length ${headerLength} exceeds the limit of ${limits.maxHeaderBytes} bytes`);
  }
  if (PREFIX_BYTES + headerLength > bytes.length) {
    refuse(`header length ${headerLength} runs past the end of the ${bytes.length}-byte message`);
  }
  let header: unknown;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(
        bytes.subarray(PREFIX_BYTES, PREFIX_BYTES + headerLength),
      ),
    );
  } catch (err) {
    refuse(`the header is not UTF-8 JSON (${(err as Error).message})`);
  }
  const dataStart = align8(PREFIX_BYTES + headerLength);
  const available = Math.max(0, bytes.length - dataStart);
  const { meta, entries } = checkHeader(header, available, limits);
  const arrays: NamedArray[] = [];
  for (const e of entries) {
    const start = dataStart + e.offset;
    // A copy, aligned and owned by the result. Not `bytes.slice`: on a Node Buffer (a NATS
    // message body) that is a view into a shared pool, not a copy.
    const raw = new Uint8Array(e.byteLength);
    raw.set(bytes.subarray(start, start + e.byteLength));
    const digest = await sha256Hex(raw);
    if (digest !== e.sha256) {
      refuse(`array ${e.name}: SHA-256 ${digest} differs from the declared ${e.sha256}`);
    }
    const data = e.dtype === "float32"
      ? new Float32Array(raw.buffer)
      : new Float64Array(raw.buffer);
    const bad = firstNonFinite(data);
    if (bad >= 0) refuse(`array ${e.name}: value ${bad} is ${data[bad]}`);
    arrays.push({ name: e.name, shape: e.shape, data });
  }
  return { meta, arrays };
}

/** The shape and type a receiver expects of one array. */
export interface ArraySpec {
  name: string;
  dtype: "float32" | "float64";
  shape: number[];
}

/**
 * Checks that `payload` holds exactly the arrays of `spec` (names, types, shapes), in any order;
 * throws {@link PayloadError} naming the first difference.
 */
export function checkArrays(payload: Payload, spec: readonly ArraySpec[], where: string): void {
  const byName = new Map(payload.arrays.map((a) => [a.name, a]));
  for (const s of spec) {
    const a = byName.get(s.name);
    if (!a) throw new PayloadError(`${where}: array ${s.name} is missing`);
    const dtype = a.data instanceof Float32Array ? "float32" : "float64";
    if (dtype !== s.dtype) {
      throw new PayloadError(`${where}: array ${s.name} is ${dtype}; expected ${s.dtype}`);
    }
    if (a.shape.length !== s.shape.length || a.shape.some((d, i) => d !== s.shape[i])) {
      throw new PayloadError(
        `${where}: array ${s.name} has shape [${a.shape}]; expected [${s.shape}]`,
      );
    }
    byName.delete(s.name);
  }
  if (byName.size > 0) {
    throw new PayloadError(`${where}: unexpected array ${[...byName.keys()][0]}`);
  }
}
