import assert from "node:assert/strict";
import {
  encodeSafetensors,
  readSafetensors,
  readSafetensorsIndex,
  writeSafetensors,
} from "../lib/model/safetensors.ts";

const FIXTURES = new URL("./fixtures/model_tiny/", import.meta.url).pathname;

/** A file from a header object and a data buffer, to build corrupt files by hand. */
function rawFile(header: unknown, data = new Uint8Array(0), lengthOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

Deno.test("safetensors: every dtype round-trips through a file, with metadata", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/all.safetensors`;
  const floats = [0, 1, -2.5, 0.1, 65504, -1e-3, 3.140625];
  await writeSafetensors(path, {
    f32: { shape: [7], data: floats },
    f64: { dtype: "F64", shape: [7], data: floats },
    f16: { dtype: "F16", shape: [7], data: floats },
    bf16: { dtype: "BF16", shape: [7], data: floats },
    i64: { dtype: "I64", shape: [2, 2], data: [-5, 0, 7, 16777216] },
    i32: { dtype: "I32", shape: [3], data: [-1, 2, 3] },
    i16: { dtype: "I16", shape: [1], data: [-300] },
    i8: { dtype: "I8", shape: [1], data: [-7] },
    u8: { dtype: "U8", shape: [2], data: [0, 255] },
    bool: { dtype: "BOOL", shape: [2], data: [1, 0] },
    scalar: { shape: [], data: [42] },
    empty: { shape: [0, 3], data: [] },
  }, { note: "hello", rank: "8" });
  const { tensors, metadata } = await readSafetensors(path);
  assert.deepEqual(metadata, { note: "hello", rank: "8" });
  assert.deepEqual([...tensors.f32.data], [...Float32Array.from(floats)]);
  assert.deepEqual([...tensors.f64.data], [...Float32Array.from(floats)]);
  // F16 (values checked against torch.half): 65504 is the largest half; 3.140625 is exact.
  assert.deepEqual([...tensors.f16.data], [
    0,
    1,
    -2.5,
    0.0999755859375,
    65504,
    -0.0010004043579101562,
    3.140625,
  ]);
  // BF16 keeps 8 significant bits (values checked against torch.bfloat16).
  assert.deepEqual([...tensors.bf16.data], [
    0,
    1,
    -2.5,
    0.10009765625,
    65536,
    -0.00099945068359375,
    3.140625,
  ]);
  assert.deepEqual(tensors.i64.shape, [2, 2]);
  assert.deepEqual([...tensors.i64.data], [-5, 0, 7, 16777216]);
  assert.deepEqual([...tensors.i32.data], [-1, 2, 3]);
  assert.deepEqual([...tensors.i16.data], [-300]);
  assert.deepEqual([...tensors.i8.data], [-7]);
  assert.deepEqual([...tensors.u8.data], [0, 255]);
  assert.deepEqual([...tensors.bool.data], [1, 0]);
  assert.equal(tensors.f16.dtype, "F16");
  assert.deepEqual(tensors.scalar.shape, []);
  assert.deepEqual([...tensors.scalar.data], [42]);
  assert.deepEqual(tensors.empty.shape, [0, 3]);
  // A second round trip is exact (every value is now representable in its dtype).
  const again = readSafetensors(encodeSafetensors(tensors, metadata));
  assert.deepEqual((await again).tensors, tensors);
  // The header is padded to 8 bytes.
  const bytes = await Deno.readFile(path);
  assert.equal(Number(new DataView(bytes.buffer).getBigUint64(0, true)) % 8, 0);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("safetensors: F16 handles subnormals, infinities, NaN and rounds to nearest even", async () => {
  const values = [
    2 ** -24,
    2 ** -25 * 1.5,
    2 ** -14,
    70000,
    -Infinity,
    NaN,
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
  ];
  const { tensors } = await readSafetensors(
    encodeSafetensors({ h: { dtype: "F16", shape: [8], data: values } }),
  );
  const got = [...tensors.h.data];
  assert.equal(got[0], 2 ** -24); // smallest subnormal
  assert.equal(got[1], 2 ** -24); // 1.5 × 2^-25 rounds up to 2^-24
  assert.equal(got[2], 2 ** -14); // smallest normal
  assert.equal(got[3], Infinity); // overflow
  assert.equal(got[4], -Infinity);
  assert.ok(Number.isNaN(got[5]));
  assert.equal(got[6], 1); // tie → even
  assert.equal(got[7], 1 + 2 * 2 ** -10); // tie → even (up)
});

Deno.test("safetensors: reads PyTorch-written F32, F16 and BF16 files", async () => {
  const openai = await readSafetensors(`${FIXTURES}openai.safetensors`);
  assert.equal(openai.tensors["visual.conv1.weight"].dtype, "F32");
  assert.deepEqual(openai.tensors["visual.conv1.weight"].shape, [32, 3, 4, 4]);
  assert.equal(JSON.parse(openai.metadata["deer.vision"]).heads, 2);
  const hf = await readSafetensorsIndex(`${FIXTURES}hf/model.safetensors`);
  assert.equal(hf.tensors["visual_projection.weight"].dtype, "F16");
  const timm = await readSafetensors(`${FIXTURES}timm.safetensors`, {
    include: (n) => n === "trunk.cls_token",
  });
  assert.deepEqual(Object.keys(timm.tensors), ["trunk.cls_token"]);
  assert.equal(timm.tensors["trunk.cls_token"].dtype, "BF16");
  assert.deepEqual(timm.tensors["trunk.cls_token"].shape, [1, 1, 32]);
});

Deno.test("safetensors: corrupt files fail with the file and tensor named", async () => {
  const dir = await Deno.makeTempDir();
  const cases: [string, Uint8Array, RegExp][] = [
    ["short", new Uint8Array(5), /short\.safetensors: 5 bytes is too short/],
    ["huge-header", rawFile({}, new Uint8Array(0), 1000n), /header length 1000 exceeds the file/],
    ["not-json", rawFile("{nope"), /header is not valid UTF-8 JSON/],
    ["array", rawFile([]), /header JSON must be an object/],
    [
      "dtype",
      rawFile({ w: { dtype: "F8_E4M3", shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)),
      /tensor "w": dtype "F8_E4M3" is not supported/,
    ],
    [
      "shape",
      rawFile({ w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4)),
      /tensor "w": shape \[-1\] must be a list of integers/,
    ],
    [
      "past-end",
      rawFile({ w: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4)),
      /tensor "w": data_offsets \[0,8\] run past the data buffer \(4 bytes\); the file is truncated/,
    ],
    [
      "size",
      rawFile({ w: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }, new Uint8Array(8)),
      /tensor "w": data_offsets \[0,4\] hold 4 bytes but shape \[2\] F32 needs 8/,
    ],
    [
      "overlap",
      rawFile({
        a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        b: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
      }, new Uint8Array(8)),
      /tensors "a" and "b" overlap/,
    ],
    ["metadata", rawFile({ __metadata__: { n: 1 } }), /metadata "n" is number/],
  ];
  for (const [name, bytes, pattern] of cases) {
    const path = `${dir}/${name}.safetensors`;
    await Deno.writeFile(path, bytes);
    await assert.rejects(readSafetensors(path), (err: Error) => {
      assert.match(err.message, pattern, name);
      assert.ok(err.message.includes(path), `${name}: error names the file`);
      return true;
    });
  }
  await assert.rejects(
    readSafetensors(`${dir}/missing.safetensors`),
    /missing\.safetensors: cannot open/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("safetensors: writer rejects bad input and leaves no file", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/bad.safetensors`;
  await assert.rejects(
    writeSafetensors(path, { w: { shape: [2, 2], data: [1, 2, 3] } }),
    /bad\.safetensors: tensor "w": shape \[2,2\] needs 4 values; data has 3/,
  );
  await assert.rejects(
    writeSafetensors(path, { w: { dtype: "U8", shape: [1], data: [256] } }),
    /tensor "w": value 256 is not an integer in \[0, 255\]/,
  );
  assert.deepEqual([...Deno.readDirSync(dir)], []);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("safetensors: a zero-size tensor overlaps nothing, whatever the key order", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = new Uint8Array(12);
    new DataView(data.buffer).setFloat32(8, 2.5, true);
    const entries = {
      a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      empty: { dtype: "F32", shape: [0], data_offsets: [8, 8] }, // as safetensors writes one
      inside: { dtype: "F32", shape: [0, 3], data_offsets: [4, 4] },
      b: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
    };
    const names = Object.keys(entries) as (keyof typeof entries)[];
    // Every key order: the verdict used to depend on which of "b" and "empty" came first.
    const orders = [names, [...names].reverse(), ["b", "empty", "inside", "a"] as typeof names];
    for (const order of orders) {
      const path = `${dir}/${order.join("-")}.safetensors`;
      await Deno.writeFile(
        path,
        rawFile(Object.fromEntries(order.map((k) => [k, entries[k]])), data),
      );
      const { tensors } = await readSafetensors(path);
      assert.deepEqual(tensors.empty.shape, [0], order.join());
      assert.equal(tensors.empty.data.length, 0);
      assert.deepEqual(tensors.inside.shape, [0, 3]);
      assert.deepEqual(Array.from(tensors.b.data), [2.5]);
    }
    // A real overlap is still found in every order, naming the same pair.
    const overlapping = {
      a: { dtype: "F32", shape: [3], data_offsets: [0, 12] },
      empty: { dtype: "F32", shape: [0], data_offsets: [4, 4] },
      b: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
    };
    for (const order of [["a", "empty", "b"], ["b", "empty", "a"]] as const) {
      const path = `${dir}/overlap-${order.join("-")}.safetensors`;
      await Deno.writeFile(
        path,
        rawFile(Object.fromEntries(order.map((k) => [k, overlapping[k]])), data),
      );
      await assert.rejects(readSafetensors(path), /tensors "a" and "b" overlap in the data buffer/);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
