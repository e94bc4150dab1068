/**
 * IDX files — the format of MNIST and Fashion-MNIST (`train-images-idx3-ubyte.gz`, …), read
 * plain or gzip-compressed (detected by the gzip magic bytes, not the file name).
 *
 * Layout (yann.lecun.com/exdb/mnist): two zero bytes, a dtype code (0x08 uint8, 0x09 int8,
 * 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions `d`, then `d`
 * big-endian uint32 sizes, then the values, big-endian, row-major. Multi-byte values are
 * converted to the host's byte order.
 *
 * `readIdxImages` and `readIdxLabels` add the checks the MNIST files imply: uint8, rank 3
 * `[N, rows, cols]` and rank 1 `[N]`. Every error names the file and what is wrong with it.
 *
 * @example
 * ```ts
 * // Fashion-MNIST's files are /usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz (Debian). A small one:
 * const dir = await Deno.makeTempDir();
 * await writeIdx(`${dir}/images-idx3-ubyte.gz`, { shape: [2, 28, 28], data: new Uint8Array(2 * 784) }, { gzip: true });
 * await writeIdx(`${dir}/labels-idx1-ubyte.gz`, { shape: [2], data: new Uint8Array([9, 0]) }, { gzip: true });
 * const images = await readIdxImages(`${dir}/images-idx3-ubyte.gz`);
 * const labels = await readIdxLabels(`${dir}/labels-idx1-ubyte.gz`);
 * images.shape; // [2, 28, 28]
 * labels.length; // 2
 * ```
 * @module
 */
import { gunzipSync, gzipSync } from "fflate";
import { basename } from "node:path";
import { writeFileAtomic } from "../io/atomic.ts";

/** The value types IDX files can hold. */
export type IdxDtype = "uint8" | "int8" | "int16" | "int32" | "float32" | "float64";

/** One IDX array: row-major values in the host's byte order. */
export interface IdxArray {
  shape: number[];
  dtype: IdxDtype;
  data: Uint8Array | Int8Array | Int16Array | Int32Array | Float32Array | Float64Array;
}

/** A rank-3 uint8 image stack `[count, rows, cols]`, as in the MNIST image files. */
export interface IdxImages {
  shape: [number, number, number];
  data: Uint8Array;
}

const CODES: Record<number, { dtype: IdxDtype; size: number }> = {
  0x08: { dtype: "uint8", size: 1 },
  0x09: { dtype: "int8", size: 1 },
  0x0b: { dtype: "int16", size: 2 },
  0x0c: { dtype: "int32", size: 4 },
  0x0d: { dtype: "float32", size: 4 },
  0x0e: { dtype: "float64", size: 8 },
};

function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

/**
 * Decodes the bytes of an IDX file (gzip-compressed or not). `name` appears in every error.
 *
 * @example
 * ```ts
 * const a = decodeIdx(encodeIdx({ shape: [2, 2], data: new Uint8Array([1, 2, 3, 4]) }));
 * a.shape; // [2, 2]
 * ```
 */
export function decodeIdx(bytes: Uint8Array, name = "array.idx"): IdxArray {
  if (isGzip(bytes)) {
    try {
      bytes = gunzipSync(bytes);
    } catch (err) {
      throw new Error(
        `${name}: gzip stream is corrupt or truncated (${(err as Error).message}); ` +
          `re-copy the file (e.g. reinstall the dataset-fashion-mnist package)`,
      );
    }
  }
  if (bytes.length < 4) {
    throw new Error(`${name}: ${bytes.length} bytes is too short for an IDX header (needs 4+)`);
  }
  if (bytes[0] !== 0 || bytes[1] !== 0) {
    throw new Error(
      `${name}: not an IDX file (the first two bytes are ${bytes[0]}, ${bytes[1]}; expected 0, 0)`,
    );
  }
  const code = CODES[bytes[2]];
  if (code === undefined) {
    throw new Error(
      `${name}: unknown IDX dtype code 0x${bytes[2].toString(16).padStart(2, "0")}; ` +
        `expected one of 0x08, 0x09, 0x0b, 0x0c, 0x0d, 0x0e`,
    );
  }
  const rank = bytes[3];
  if (rank === 0) throw new Error(`${name}: IDX header declares 0 dimensions`);
  const headerBytes = 4 + 4 * rank;
  if (bytes.length < headerBytes) {
    throw new Error(
      `${name}: truncated inside its header (${bytes.length} bytes; ${rank} dimensions need ${headerBytes})`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const shape: number[] = [];
  for (let i = 0; i < rank; i++) shape.push(view.getUint32(4 + 4 * i, false));
  const count = shape.reduce((a, b) => a * b, 1);
  const need = headerBytes + count * code.size;
  if (bytes.length !== need) {
    const what = bytes.length < need ? "truncated" : "longer than its header says";
    throw new Error(
      `${name}: the file is ${what}: shape [${shape}] of ${code.dtype} needs ${need} bytes ` +
        `(after decompression), found ${bytes.length}`,
    );
  }
  const body = bytes.slice(headerBytes);
  let data: IdxArray["data"];
  if (code.size === 1) {
    data = code.dtype === "uint8" ? body : new Int8Array(body.buffer);
  } else {
    // Big-endian on disk → host order, one value at a time (clear and fast enough for MNIST).
    const v = new DataView(body.buffer);
    const read = {
      int16: (o: number) => v.getInt16(o, false),
      int32: (o: number) => v.getInt32(o, false),
      float32: (o: number) => v.getFloat32(o, false),
      float64: (o: number) => v.getFloat64(o, false),
    }[code.dtype as "int16" | "int32" | "float32" | "float64"];
    const Out = {
      int16: Int16Array,
      int32: Int32Array,
      float32: Float32Array,
      float64: Float64Array,
    }[code.dtype as "int16" | "int32" | "float32" | "float64"];
    const out = new Out(count);
    for (let i = 0; i < count; i++) out[i] = read(i * code.size);
    data = out;
  }
  return { shape, dtype: code.dtype, data };
}

/**
 * Encodes a uint8 array as IDX bytes (gzip-compressed with `{ gzip: true }`), for tests and for
 * exporting MNIST-style files.
 *
 * @example
 * ```ts
 * const bytes = encodeIdx({ shape: [3], data: new Uint8Array([0, 1, 2]) }, { gzip: true });
 * ```
 */
export function encodeIdx(
  array: { shape: number[]; data: Uint8Array },
  options: { gzip?: boolean } = {},
): Uint8Array {
  const { shape, data } = array;
  const count = shape.reduce((a, b) => a * b, 1);
  if (shape.length < 1 || shape.length > 255 || count !== data.length) {
    throw new Error(
      `encodeIdx: shape [${shape}] holds ${count} values but data has ${data.length}`,
    );
  }
  const out = new Uint8Array(4 + 4 * shape.length + data.length);
  const view = new DataView(out.buffer);
  out[2] = 0x08;
  out[3] = shape.length;
  shape.forEach((d, i) => view.setUint32(4 + 4 * i, d, false));
  out.set(data, 4 + 4 * shape.length);
  // mtime 0: the same array gives the same bytes.
  return options.gzip ? gzipSync(out, { level: 6, mtime: 0 }) : out;
}

/**
 * Writes a uint8 array as an IDX file atomically (gzip-compressed with `{ gzip: true }`).
 *
 * @example
 * ```ts
 * await writeIdx("/tmp/labels-idx1-ubyte.gz", { shape: [3], data: new Uint8Array([0, 1, 2]) }, {
 *   gzip: true,
 * });
 * ```
 */
export async function writeIdx(
  path: string,
  array: { shape: number[]; data: Uint8Array },
  options: { gzip?: boolean } = {},
): Promise<void> {
  await writeFileAtomic(path, encodeIdx(array, options));
}

async function readBytes(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new Error(
        `${path}: no such file (Fashion-MNIST: \`apt-get install dataset-fashion-mnist\` puts it ` +
          `in /usr/share/datasets/fashion-mnist/)`,
      );
    }
    throw new Error(`${path}: cannot read (${(err as Error).message})`);
  }
}

/**
 * Reads an IDX file (gzip or plain) of any dtype and rank.
 *
 * @example
 * ```ts
 * // Fashion-MNIST's files are /usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz (Debian). A small one:
 * const dir = await Deno.makeTempDir();
 * await writeIdx(`${dir}/images-idx3-ubyte.gz`, { shape: [2, 28, 28], data: new Uint8Array(2 * 784) }, { gzip: true });
 * await writeIdx(`${dir}/labels-idx1-ubyte.gz`, { shape: [2], data: new Uint8Array([9, 0]) }, { gzip: true });
 * const { shape, dtype } = await readIdx(`${dir}/labels-idx1-ubyte.gz`); // [2], "uint8"
 * ```
 */
export async function readIdx(path: string): Promise<IdxArray> {
  return decodeIdx(await readBytes(path), path);
}

/**
 * Reads an MNIST-style image file: uint8 `[N, rows, cols]`.
 *
 * @example
 * ```ts
 * // Fashion-MNIST's files are /usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz (Debian). A small one:
 * const dir = await Deno.makeTempDir();
 * await writeIdx(`${dir}/images-idx3-ubyte.gz`, { shape: [2, 28, 28], data: new Uint8Array(2 * 784) }, { gzip: true });
 * await writeIdx(`${dir}/labels-idx1-ubyte.gz`, { shape: [2], data: new Uint8Array([9, 0]) }, { gzip: true });
 * const { shape, data } = await readIdxImages(`${dir}/images-idx3-ubyte.gz`);
 * shape; // [2, 28, 28]
 * data.length; // 1568
 * ```
 */
export async function readIdxImages(path: string): Promise<IdxImages> {
  const a = await readIdx(path);
  if (a.dtype !== "uint8" || a.shape.length !== 3) {
    throw new Error(
      `${basename(path)}: holds ${a.dtype} [${a.shape}]; expected uint8 images [N, rows, cols] ` +
        `(an "idx3-ubyte" file)`,
    );
  }
  return { shape: a.shape as [number, number, number], data: a.data as Uint8Array };
}

/**
 * Reads an MNIST-style label file: uint8 `[N]`.
 *
 * @example
 * ```ts
 * // Fashion-MNIST's files are /usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz (Debian). A small one:
 * const dir = await Deno.makeTempDir();
 * await writeIdx(`${dir}/images-idx3-ubyte.gz`, { shape: [2, 28, 28], data: new Uint8Array(2 * 784) }, { gzip: true });
 * await writeIdx(`${dir}/labels-idx1-ubyte.gz`, { shape: [2], data: new Uint8Array([9, 0]) }, { gzip: true });
 * const labels = await readIdxLabels(`${dir}/labels-idx1-ubyte.gz`);
 * labels[0]; // 9 (Fashion-MNIST: ankle boot)
 * ```
 */
export async function readIdxLabels(path: string): Promise<Uint8Array> {
  const a = await readIdx(path);
  if (a.dtype !== "uint8" || a.shape.length !== 1) {
    throw new Error(
      `${basename(path)}: holds ${a.dtype} [${a.shape}]; expected uint8 labels [N] ` +
        `(an "idx1-ubyte" file)`,
    );
  }
  return a.data as Uint8Array;
}
