import assert from "node:assert/strict";
import { join } from "node:path";
import { deflateRawSync } from "node:zlib";
import {
  crc32,
  encodeNpy,
  listNpz,
  type NpyInput,
  readNpy,
  readNpz,
  writeNpy,
  writeNpz,
} from "../lib/data/npy.ts";
import { concat, craftedNpz, deflatedZeros, npyHeader } from "./helpers/crafted_inputs.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

function sample(): Record<string, NpyInput> {
  return {
    u1: { shape: [2, 3], data: new Uint8Array([0, 1, 2, 253, 254, 255]) },
    i1: { shape: [3], data: new Int8Array([-128, 0, 127]) },
    u2: { shape: [2], data: new Uint16Array([0, 65535]) },
    i2: { shape: [2], data: new Int16Array([-32768, 32767]) },
    u4: { shape: [2], data: new Uint32Array([0, 4294967295]) },
    i4: { shape: [2, 1], data: new Int32Array([-5, 7]) },
    i8: { shape: [2], data: new Int32Array([-9, 2147483647]), dtype: "<i8" },
    f4: { shape: [2, 2], data: new Float32Array([0.5, -1.25, 3, 1e-7]) },
    f8: { shape: [1], data: new Float64Array([Math.PI]) },
    b1: { shape: [3], data: new Uint8Array([1, 0, 1]), dtype: "|b1" },
    scalar: { shape: [], data: new Float64Array([2.5]) },
    empty: { shape: [0, 4], data: new Float32Array(0) },
  };
}

Deno.test("npz round trip, deflated and stored, every dtype", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const compress of [true, false]) {
      const path = join(dir, `a${compress}.npz`);
      await writeNpz(path, sample(), { compress });
      const got = await readNpz(path);
      assert.deepEqual(Object.keys(got), Object.keys(sample()));
      for (const [k, v] of Object.entries(sample())) {
        assert.deepEqual(got[k].shape, v.shape, k);
        assert.deepEqual(
          Array.from(got[k].data as ArrayLike<number>),
          Array.from(v.data as ArrayLike<number>),
          k,
        );
      }
      assert.equal(got.i8.dtype, "<i8");
      assert.ok(got.i8.data instanceof Int32Array);
      assert.equal(got.b1.dtype, "|b1");
      assert.equal(got.f4.dtype, "<f4");
      assert.deepEqual(await listNpz(path), Object.keys(sample()));
    }
    // The writer is deterministic (fixed timestamps).
    await writeNpz(join(dir, "b.npz"), sample());
    assert.deepEqual(
      await Deno.readFile(join(dir, "b.npz")),
      await Deno.readFile(join(dir, "atrue.npz")),
    );
    // Only the asked keys are read.
    const only = await readNpz(join(dir, "atrue.npz"), { keys: ["f8"] });
    assert.deepEqual(Object.keys(only), ["f8"]);
    // .npy alone.
    await writeNpy(join(dir, "x.npy"), sample().f4);
    const x = readNpy(await Deno.readFile(join(dir, "x.npy")), "x.npy");
    assert.deepEqual(Array.from(x.data as Float32Array), [0.5, -1.25, 3, Math.fround(1e-7)]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reads an npz written by numpy's savez_compressed (fixture)", async () => {
  const path = join(FIXTURES, "data_numpy_dtypes.npz");
  const keys = ["u1", "i1", "u2", "i2", "u4", "i4", "i8", "f4", "f8", "b1", "scalar", "empty"];
  const a = await readNpz(path, { keys });
  assert.deepEqual(a.u1.shape, [2, 3, 4]);
  assert.deepEqual(
    Array.from(a.u1.data as Uint8Array),
    Array.from({ length: 24 }, (_, i) => (i * 11) % 256),
  );
  assert.deepEqual(Array.from(a.i1.data as Int8Array), [-40, -39, -38, -37, -36, -35]);
  assert.deepEqual(a.u2.shape, [3, 2]);
  assert.deepEqual(Array.from(a.u2.data as Uint16Array), [0, 9000, 18000, 27000, 36000, 45000]);
  assert.deepEqual(Array.from(a.i2.data as Int16Array), [0, -5000, -10000, -15000, -20000, -25000]);
  assert.deepEqual(Array.from(a.u4.data as Uint32Array), [0, 1e9, 2e9, 3e9]);
  assert.deepEqual(Array.from(a.i4.data as Int32Array), [0, -123456, -246912, -370368]);
  assert.equal(a.i8.dtype, "<i8");
  assert.deepEqual(a.i8.shape, [4, 1]);
  assert.deepEqual(Array.from(a.i8.data as Int32Array), [0, 1, 7, 2147483647]);
  assert.deepEqual(
    Array.from(a.f4.data as Float32Array),
    [0, 1, 2, 3, 4].map((i) => Math.fround(i / 3)),
  );
  assert.deepEqual(Array.from(a.f8.data as Float64Array), [0, 1, 2, 3, 4].map((i) => i / 7 - 0.25));
  assert.equal(a.b1.dtype, "|b1");
  assert.deepEqual(Array.from(a.b1.data as Uint8Array), [1, 0, 1]);
  assert.deepEqual(a.scalar.shape, []);
  assert.deepEqual(Array.from(a.scalar.data as Float64Array), [2.5]);
  assert.deepEqual(a.empty.shape, [0, 3]);
  assert.equal(a.empty.data.length, 0);
});

Deno.test("int64 out of int32 range: error by default, BigInt64Array on request", async () => {
  const path = join(FIXTURES, "data_numpy_dtypes.npz");
  await assert.rejects(
    readNpz(path, { keys: ["i8_big"] }),
    /data_numpy_dtypes\.npz:i8_big\.npy \(<i8\) holds 1099511627776 .*int32 range.*int64: "bigint"/,
  );
  const big = await readNpz(path, { keys: ["i8_big"], int64: "bigint" });
  assert.deepEqual(Array.from(big.i8_big.data as BigInt64Array), [2n ** 40n, -(2n ** 40n)]);
});

Deno.test("numpy arrays the reader refuses name the file, the entry and the fix", async () => {
  const path = join(FIXTURES, "data_numpy_bad.npz");
  await assert.rejects(
    readNpz(path, { keys: ["fortran"] }),
    /data_numpy_bad\.npz:fortran\.npy is stored in Fortran order; .*np\.ascontiguousarray/,
  );
  await assert.rejects(
    readNpz(path, { keys: ["big_endian"] }),
    /big_endian\.npy is big-endian \(>f4\)/,
  );
  await assert.rejects(
    readNpz(path, { keys: ["complex"] }),
    /complex\.npy has unsupported dtype "<c8"; supported:/,
  );
  await assert.rejects(
    readNpz(path, { keys: ["objects"] }),
    /objects\.npy has unsupported dtype "\|O".*pickle/,
  );
  await assert.rejects(
    readNpz(path, { keys: ["nope"] }),
    /data_numpy_bad\.npz has no array "nope"; it holds: fortran/,
  );
});

Deno.test("truncated files, bad magic and corrupt entries give clear errors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const good = await Deno.readFile(join(FIXTURES, "data_numpy_mini.npz"));
    const cut = join(dir, "cut.npz");
    await Deno.writeFile(cut, good.subarray(0, Math.floor(good.length / 2)));
    await assert.rejects(readNpz(cut), /cut\.npz is truncated or not an npz \(zip\) archive/);

    // An entry whose data runs past the end of the file (central directory intact).
    const path = join(dir, "short.npz");
    await writeNpz(path, { a: { shape: [100], data: new Float64Array(100) } }, { compress: false });
    const bytes = await Deno.readFile(path);
    const v = new DataView(bytes.buffer);
    const cd = bytes.length - 22 - (46 + "a.npy".length);
    v.setUint32(cd + 20, 10_000, true); // compressed size in the central directory
    await Deno.writeFile(path, bytes);
    await assert.rejects(
      readNpz(path),
      /short\.npz is truncated: entry a\.npy of short\.npz needs 10000 bytes/,
    );

    // A stored entry with a flipped byte fails its CRC.
    const crcPath = join(dir, "crc.npz");
    await writeNpz(crcPath, { a: { shape: [100], data: new Float64Array(100) } }, {
      compress: false,
    });
    const b2 = await Deno.readFile(crcPath);
    b2[200] ^= 0xff;
    await Deno.writeFile(crcPath, b2);
    await assert.rejects(readNpz(crcPath), /entry a\.npy of crc\.npz fails its CRC-32 check/);

    // A deflated entry cut short (sizes patched so the zip structure stays valid).
    const defl = join(dir, "defl.npz");
    const noise = new Float64Array(2000).map((_, i) => Math.sin(i * 12.9898) * 43758.5453 % 1);
    await writeNpz(defl, { a: { shape: [2000], data: noise } });
    const d = await Deno.readFile(defl);
    const dv = new DataView(d.buffer);
    const csize = dv.getUint32(18, true);
    const keep = 30 + 5 + Math.floor(csize / 2);
    const broken = new Uint8Array(keep + 46 + 5 + 22);
    broken.set(d.subarray(0, keep));
    broken.set(d.subarray(30 + 5 + csize), keep); // central directory + EOCD
    const bv = new DataView(broken.buffer);
    bv.setUint32(keep + 20, Math.floor(csize / 2), true);
    bv.setUint32(keep + 46 + 5 + 16, keep, true);
    await Deno.writeFile(defl, broken);
    await assert.rejects(
      readNpz(defl),
      /entry a\.npy of defl\.npz is truncated or corrupt \(inflate/,
    );

    const npy = encodeNpy({ shape: [10], data: new Float32Array(10) });
    assert.throws(
      () => readNpy(npy.subarray(0, npy.length - 4), "t.npy"),
      /t\.npy is truncated: shape \[10\] <f4 needs 40 data bytes, the file has 36/,
    );
    const bad = npy.slice();
    bad[1] = 0x41;
    assert.throws(() => readNpy(bad, "m.npy"), /m\.npy is not an npy array \(bad magic/);
    await assert.rejects(readNpz(join(dir, "missing.npz")), /missing\.npz does not exist/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("npy header versions 2.0 and 3.0 are read", () => {
  for (const major of [2, 3]) {
    const header = "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }";
    const pad = 64 - ((12 + header.length + 1) % 64);
    const h = header + " ".repeat(pad) + "\n";
    const bytes = new Uint8Array(12 + h.length + 4);
    bytes.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
    new DataView(bytes.buffer).setUint32(8, h.length, true);
    bytes.set(new TextEncoder().encode(h), 12);
    bytes.set(new Uint8Array(new Int16Array([-2, 3]).buffer), 12 + h.length);
    const a = readNpy(bytes, `v${major}.npy`);
    assert.deepEqual(Array.from(a.data as Int16Array), [-2, 3]);
  }
});

Deno.test("crc32 check value", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assert.equal(crc32(new Uint8Array(0)), 0);
});

/** Writes `bytes` to `name` in a fresh folder, runs `fn` on the path, removes the folder. */
async function withFile(
  name: string,
  bytes: Uint8Array,
  fn: (path: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(join(dir, name), bytes);
    await fn(join(dir, name));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Awaits `p`, which must reject, and returns the error and the milliseconds it took. */
async function timedReject(p: () => Promise<unknown>): Promise<{ error: Error; ms: number }> {
  const t0 = performance.now();
  try {
    await p();
  } catch (error) {
    return { error: error as Error, ms: performance.now() - t0 };
  }
  throw new assert.AssertionError({ message: "expected a rejection" });
}

const GIB = 1024 ** 3;

// Before these checks this 3 MB file was inflated in full — 30 s and 3.2 GB of memory — before
// anything was checked; now it is refused from its directory alone, in milliseconds.
Deno.test("npz: a genuine 3 MB → 3 GiB zip bomb is refused by its compression ratio", async () => {
  const header = npyHeader([3 * GIB]);
  const deflated = deflatedZeros(header, 3 * GIB);
  assert.ok(deflated.length < 3.3e6, `${deflated.length} bytes`);
  const npz = craftedNpz([{
    name: "train_images.npy",
    deflated,
    declaredSize: header.length + 3 * GIB,
  }]);
  await withFile("bomb.npz", npz, async (path) => {
    const { error, ms } = await timedReject(() => readNpz(path));
    assert.match(
      error.message,
      /^bomb\.npz: the arrays read \(train_images\.npy\) expand 3\.0 MiB to 3\.0 GiB, 1011:1 \(entry train_images\.npy: 3\.0 GiB from 3\.0 MiB\), more than the limit of 100:1 — a decompression bomb.*readNpz option maxRatio, or the environment variable DEER_NPZ_MAX_RATIO=<ratio>/,
    );
    assert.ok(ms < 1000, `${ms} ms`);
    // With the ratio raised, the total cap still refuses it before inflating anything.
    await assert.rejects(
      readNpz(path, { maxRatio: 2000, maxBytes: GIB }),
      /bomb\.npz: the arrays read \(train_images\.npy\) declare 3\.0 GiB uncompressed, more than the limit of 1\.0 GiB;.*readNpz option maxBytes, or the environment variable DEER_NPZ_MAX_BYTES=<bytes>/,
    );
    Deno.env.set("DEER_NPZ_MAX_BYTES", String(GIB));
    try {
      await assert.rejects(readNpz(path, { maxRatio: 2000 }), /more than the limit of 1\.0 GiB/);
      Deno.env.set("DEER_NPZ_MAX_RATIO", "2000");
      await assert.rejects(readNpz(path), /more than the limit of 1\.0 GiB/);
    } finally {
      Deno.env.delete("DEER_NPZ_MAX_BYTES");
      Deno.env.delete("DEER_NPZ_MAX_RATIO");
    }
  });
});

Deno.test("npz: an entry that inflates past its declared size stops there", async () => {
  // Declares 1000 bytes; its npy header agrees; the stream goes on to 1 GiB of zeros.
  const header = npyHeader([1000 - 128]);
  assert.equal(header.length, 128);
  const npz = craftedNpz([{
    name: "x.npy",
    deflated: deflatedZeros(header, GIB),
    declaredSize: 1000,
  }]);
  await withFile("liar.npz", npz, async (path) => {
    const { error, ms } = await timedReject(() => readNpz(path));
    assert.match(
      error.message,
      /^entry x\.npy of liar\.npz inflates to more than the 1000 bytes it declares; the file is corrupt or hostile \(a decompression bomb\)/,
    );
    assert.ok(ms < 1000, `${ms} ms`);
  });
});

Deno.test("npz: an npy header whose shape × dtype disagrees with the entry's size is refused", async () => {
  // The header claims 8 GiB of uint8; the entry declares (and holds) 1 MiB after it.
  const header = npyHeader([8 * GIB]);
  const npz = craftedNpz([{
    name: "x.npy",
    deflated: deflatedZeros(header, 1 << 20),
    declaredSize: header.length + (1 << 20),
  }]);
  await withFile("shape.npz", npz, async (path) => {
    await assert.rejects(
      readNpz(path),
      /^Error: entry x\.npy of shape\.npz declares 1048704 bytes, but its npy header \(shape \[8589934592\], \|u1\) makes 8589934720; the file is corrupt/,
    );
  });
  // The zip entry declares 8 GiB (zip64) for the same 1 KiB stream: refused by its ratio.
  const big = craftedNpz([{
    name: "x.npy",
    deflated: deflatedZeros(header, 1 << 20),
    declaredSize: header.length + 8 * GIB,
  }]);
  await withFile("big.npz", big, async (path) => {
    await assert.rejects(
      readNpz(path),
      /big\.npz: the arrays read \(x\.npy\) expand .* to 8\.0 GiB/,
    );
  });
});

Deno.test("npz: highly compressible arrays below the limits read exactly", async () => {
  // 32 MiB of zeros and a label array: ratio ~1000:1, but under the 64 MiB floor.
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "zeros.npz");
    const zeros = new Uint8Array(32 << 20);
    zeros[zeros.length - 1] = 7;
    await writeNpz(path, {
      x: { shape: [zeros.length], data: zeros },
      y: { shape: [3, 1], data: new Uint8Array([0, 1, 2]) },
    });
    const back = await readNpz(path);
    assert.equal(back.x.data.length, 32 << 20);
    assert.equal(back.x.data[(32 << 20) - 1], 7);
    assert.deepEqual(Array.from(back.y.data as Uint8Array), [0, 1, 2]);
    // The same file under a smaller total limit is refused.
    await assert.rejects(readNpz(path, { maxBytes: 1 << 20 }), /declare 32\.0 MiB uncompressed/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// Hand-made zip files: every header field is given, so a test can lie in any of them.

/** The fields of a local or central zip header; the `*Len` fields override the true lengths. */
interface ZipHeader {
  name: string;
  method: number;
  crc: number;
  csize: number;
  size: number;
  flags?: number;
  extra?: Uint8Array;
  /** Central headers only. */
  localOffset?: number;
  nameLen?: number;
  extraLen?: number;
  commentLen?: number;
}

function zipHeader(central: boolean, h: ZipHeader): Uint8Array {
  const name = new TextEncoder().encode(h.name);
  const extra = h.extra ?? new Uint8Array(0);
  const fixed = central ? 46 : 30;
  const out = new Uint8Array(fixed + name.length + extra.length);
  const v = new DataView(out.buffer);
  const s = central ? 2 : 0; // the central header has one more version field
  v.setUint32(0, central ? 0x02014b50 : 0x04034b50, true);
  v.setUint16(4, 45, true);
  if (central) v.setUint16(6, 45, true);
  v.setUint16(6 + s, h.flags ?? 0, true);
  v.setUint16(8 + s, h.method, true);
  v.setUint32(14 + s, h.crc, true);
  v.setUint32(18 + s, h.csize, true);
  v.setUint32(22 + s, h.size, true);
  v.setUint16(26 + s, h.nameLen ?? name.length, true);
  v.setUint16(28 + s, h.extraLen ?? extra.length, true);
  if (central) {
    v.setUint16(32, h.commentLen ?? 0, true);
    v.setUint32(42, h.localOffset ?? 0, true);
  }
  out.set(name, fixed);
  out.set(extra, fixed + name.length);
  return out;
}

function endRecord(count: number, cdSize: number, cdOffset: number): Uint8Array {
  const out = new Uint8Array(22);
  const v = new DataView(out.buffer);
  v.setUint32(0, 0x06054b50, true);
  v.setUint16(8, count, true);
  v.setUint16(10, count, true);
  v.setUint32(12, cdSize, true);
  v.setUint32(16, cdOffset, true);
  return out;
}

/** A zip: the `body` (local headers and data), then the `central` headers and the end record. */
function zipFile(body: Uint8Array[], central: Uint8Array[]): Uint8Array {
  const bytes = concat(body);
  const cd = concat(central);
  return concat([bytes, cd, endRecord(central.length, cd.length, bytes.length)]);
}

/** A zip64 extra field (id 1) holding `values`, its length `len` unless given. */
function zip64Extra(values: bigint[], len = 8 * values.length): Uint8Array {
  const out = new Uint8Array(4 + 8 * values.length);
  const v = new DataView(out.buffer);
  v.setUint16(0, 1, true);
  v.setUint16(2, len, true);
  values.forEach((x, i) => v.setBigUint64(4 + 8 * i, x, true));
  return out;
}

/** An npy entry's bytes (deflated, or stored) and the header fields that describe them. */
function npyEntry(array: NpyInput, compress = true) {
  const npy = encodeNpy(array);
  const data = compress ? new Uint8Array(deflateRawSync(npy)) : npy;
  const fields = {
    method: compress ? 8 : 0,
    crc: crc32(npy),
    csize: data.length,
    size: npy.length,
  };
  return { data, fields };
}

const ramp = (n: number) => ({ shape: [n], data: new Float32Array(n).map((_, i) => i) });

// Before the overlap check, many central-directory entries could point at one local entry: each
// was inflated in full and its compressed bytes counted once per entry by the ratio check.
Deno.test("npz: central-directory entries that share bytes are refused, naming both", async () => {
  const e = npyEntry(ramp(64));
  const local = zipHeader(false, { name: "x.npy", ...e.fields });
  const end = local.length + e.data.length;
  const shared = zipFile(
    [local, e.data],
    ["a0.npy", "a1.npy", "a2.npy"].map((name) =>
      zipHeader(true, { name, ...e.fields, localOffset: 0 })
    ),
  );
  await withFile("shared.npz", shared, async (path) => {
    await assert.rejects(readNpz(path), {
      name: "Error",
      message: `shared.npz is corrupt or hostile: entry a1.npy (bytes 0 to ${end}) overlaps ` +
        `entry a0.npy (bytes 0 to ${end}); zip entries sharing bytes would be inflated once ` +
        `each (a decompression bomb): download or re-save the file (np.savez / ` +
        `np.savez_compressed)`,
    });
    // Any one of them alone is an ordinary entry.
    const one = await readNpz(path, { keys: ["a2"] });
    assert.equal(one.a2.data[63], 63);
  });

  // Entry a declares 10 compressed bytes more than it has: they are entry b's local header.
  const a = npyEntry(ramp(10));
  const b = npyEntry(ramp(20));
  const localA = zipHeader(false, { name: "a.npy", ...a.fields });
  const localB = zipHeader(false, { name: "b.npy", ...b.fields });
  const bStart = localA.length + a.data.length;
  const partial = zipFile([localA, a.data, localB, b.data], [
    zipHeader(true, { name: "a.npy", ...a.fields, csize: a.data.length + 10 }),
    zipHeader(true, { name: "b.npy", ...b.fields, localOffset: bStart }),
  ]);
  await withFile("partial.npz", partial, async (path) => {
    await assert.rejects(readNpz(path), {
      name: "Error",
      message: `partial.npz is corrupt or hostile: entry b.npy (bytes ${bStart} to ` +
        `${bStart + localB.length + b.data.length}) overlaps entry a.npy (bytes 0 to ` +
        `${bStart + 10}); zip entries sharing bytes would be inflated once each (a ` +
        `decompression bomb): download or re-save the file (np.savez / np.savez_compressed)`,
    });
  });
});

// The reviewer's repro: one 32 MiB entry deflated at 95:1 (just under the 100:1 limit), shared by
// three directory entries — 96 MiB inflated from 350 KB before the fix.
Deno.test("npz: shared entries no longer slip past the compression-ratio limit", async () => {
  const S = 32 * 2 ** 20;
  const header = npyHeader([S - 128]);
  assert.equal(header.length, 128);
  const zeros = deflatedZeros(header, S - 128);
  const blocks = Math.ceil((S / 95 - zeros.length) / 5);
  const pad = new Uint8Array(blocks * 5); // empty stored blocks, 5 bytes each
  for (let i = 0; i < blocks; i++) pad.set([0, 0, 0, 0xff, 0xff], i * 5);
  const stream = concat([zeros.subarray(0, zeros.length - 2), pad, new Uint8Array([3, 0])]);
  const full = new Uint8Array(S);
  full.set(header);
  const fields = { method: 8, crc: crc32(full), csize: stream.length, size: S };
  const local = zipHeader(false, { name: "x.npy", ...fields });
  const npz = zipFile(
    [local, stream],
    [0, 1, 2].map((i) => zipHeader(true, { name: `a${i}.npy`, ...fields, localOffset: 0 })),
  );
  await withFile("ratio.npz", npz, async (path) => {
    const { error, ms } = await timedReject(() => readNpz(path));
    assert.equal(error.name, "Error");
    assert.equal(
      error.message,
      `ratio.npz is corrupt or hostile: entry a1.npy (bytes 0 to ${
        local.length + stream.length
      }) ` +
        `overlaps entry a0.npy (bytes 0 to ${local.length + stream.length}); zip entries sharing ` +
        `bytes would be inflated once each (a decompression bomb): download or re-save the file ` +
        `(np.savez / np.savez_compressed)`,
    );
    assert.ok(ms < 1000, `${ms} ms`);
  });
});

Deno.test("npz: an entry whose data runs into the central directory is refused", async () => {
  const e = npyEntry(ramp(16));
  const local = zipHeader(false, { name: "x.npy", ...e.fields });
  const cdOffset = local.length + e.data.length;
  const npz = zipFile([local, e.data], [
    zipHeader(true, { name: "x.npy", ...e.fields, csize: e.data.length + 8 }),
  ]);
  await withFile("into.npz", npz, async (path) => {
    await assert.rejects(readNpz(path), {
      name: "Error",
      message: `into.npz is corrupt or hostile: entry x.npy of into.npz (bytes 0 to ` +
        `${cdOffset + 8}) runs into the central directory at byte ${cdOffset}; download or ` +
        `re-save the file`,
    });
  });
});

// Before the bounds checks these gave "RangeError: Offset is outside the bounds of the DataView"
// or "RangeError: zip64 value too large", naming neither the file nor the field.
Deno.test("npz: central-directory fields that run past their bounds name the file and field", async () => {
  const base = { name: "a.npy", method: 0, crc: 0, csize: 0, size: 0 };
  const directoryOnly = (header: ZipHeader) => {
    const cd = zipHeader(true, header);
    return concat([cd, endRecord(1, cd.length, 0)]);
  };
  const cases: [string, Uint8Array, string][] = [
    [
      "extra",
      directoryOnly({ ...base, extraLen: 8 }),
      "extra.npz: central directory entry 0 is corrupt: its name (5 bytes), extra field (8 " +
      "bytes) and comment (0 bytes) run 8 bytes past the end of the central directory (51 " +
      "bytes); download or re-save the file",
    ],
    [
      "name",
      directoryOnly({ ...base, nameLen: 300 }),
      "name.npz: central directory entry 0 is corrupt: its name (300 bytes), extra field (0 " +
      "bytes) and comment (0 bytes) run 295 bytes past the end of the central directory (51 " +
      "bytes); download or re-save the file",
    ],
    [
      "comment",
      directoryOnly({ ...base, commentLen: 65535 }),
      "comment.npz: central directory entry 0 is corrupt: its name (5 bytes), extra field (0 " +
      "bytes) and comment (65535 bytes) run 65535 bytes past the end of the central directory " +
      "(51 bytes); download or re-save the file",
    ],
    [
      "short64",
      directoryOnly({ ...base, size: 0xffffffff, extra: zip64Extra([]) }),
      "short64.npz: central directory entry 0 (a.npy) is corrupt: its zip64 extra field (0 " +
      "bytes) has no room for the zip64 uncompressed size; download or re-save the file",
    ],
    [
      "over64",
      directoryOnly({
        ...base,
        size: 0xffffffff,
        csize: 0xffffffff,
        extra: zip64Extra([100n], 16),
      }),
      "over64.npz: central directory entry 0 (a.npy) is corrupt: its zip64 extra field (16 " +
      "bytes, 8 past the extra field's end) has no room for the zip64 compressed size; " +
      "download or re-save the file",
    ],
    [
      "huge64",
      directoryOnly({ ...base, size: 0xffffffff, extra: zip64Extra([2n ** 60n]) }),
      "huge64.npz: central directory entry 0 (a.npy): the zip64 uncompressed size is " +
      "1152921504606846976, more than 2^53; the file is corrupt or hostile, download or " +
      "re-save it",
    ],
    [
      "offset64",
      directoryOnly({
        ...base,
        localOffset: 0xffffffff,
        extra: zip64Extra([2n ** 53n]),
      }),
      "offset64.npz: central directory entry 0 (a.npy): the zip64 local header offset is " +
      "9007199254740992, more than 2^53; the file is corrupt or hostile, download or re-save it",
    ],
  ];
  // A zip64 end-of-central-directory locator pointing past 2^53.
  const locator = new Uint8Array(20);
  const lv = new DataView(locator.buffer);
  lv.setUint32(0, 0x07064b50, true);
  lv.setBigUint64(8, 2n ** 60n, true);
  cases.push([
    "locator",
    concat([locator, endRecord(0xffff, 0xffffffff, 0xffffffff)]),
    "locator.npz: the zip64 end-of-central-directory offset is 1152921504606846976, more than " +
    "2^53; the file is corrupt or hostile, download or re-save it",
  ]);
  for (const [label, bytes, message] of cases) {
    await withFile(`${label}.npz`, bytes, async (path) => {
      await assert.rejects(listNpz(path), { name: "Error", message }, label);
      await assert.rejects(readNpz(path), { name: "Error", message }, label);
    });
  }
});

Deno.test("npz: ordinary files still read — stored, deflated, data descriptors, zip64 extras", async () => {
  const a = ramp(1000);
  const b = { shape: [3], data: new Int32Array([7, -8, 9]) };
  const dir = await Deno.makeTempDir();
  try {
    for (const compress of [true, false]) {
      const path = join(dir, `plain${compress}.npz`);
      await writeNpz(path, { a, b }, { compress });
      const got = await readNpz(path, { keys: ["b", "a", "b"] });
      assert.deepEqual(Object.keys(got), ["b", "a"]);
      assert.equal(got.a.data[999], 999);
      assert.deepEqual(Array.from(got.b.data as Int32Array), [7, -8, 9]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // As np.savez_compressed writes to a stream it cannot seek: sizes in a data descriptor (zip64,
  // 24 bytes) after each entry's data, local headers with 0xFFFFFFFF sizes and a zip64 extra.
  const body: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  for (const [name, array] of [["a.npy", a], ["b.npy", b]] as const) {
    const e = npyEntry(array);
    const local = zipHeader(false, {
      name,
      ...e.fields,
      flags: 8,
      crc: 0,
      csize: 0xffffffff,
      size: 0xffffffff,
      extra: zip64Extra([0n, 0n]),
    });
    const descriptor = new Uint8Array(24);
    const dv = new DataView(descriptor.buffer);
    dv.setUint32(0, 0x08074b50, true);
    dv.setUint32(4, e.fields.crc, true);
    dv.setBigUint64(8, BigInt(e.fields.csize), true);
    dv.setBigUint64(16, BigInt(e.fields.size), true);
    body.push(local, e.data, descriptor);
    central.push(zipHeader(true, { name, ...e.fields, flags: 8, localOffset: offset }));
    offset += local.length + e.data.length + descriptor.length;
  }
  await withFile("stream.npz", zipFile(body, central), async (path) => {
    const got = await readNpz(path);
    assert.deepEqual(Object.keys(got), ["a", "b"]);
    assert.equal(got.a.data[999], 999);
    assert.deepEqual(Array.from(got.b.data as Int32Array), [7, -8, 9]);
    assert.deepEqual(await listNpz(path), ["a", "b"]);
  });
});
