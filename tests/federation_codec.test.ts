/**
 * The factor-payload codec: round trips keep every value and shape; hostile or broken bytes are
 * refused with a message naming what is wrong, before anything large is allocated; and a result
 * envelope from an unknown site, or one claiming another site's name, is refused.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  checkArrays,
  decodePayload,
  encodePayload,
  type Payload,
  PayloadError,
  sha256Hex,
} from "../lib/federation/codec.ts";
import { checkResultEnvelope, checkTaskEnvelope } from "../lib/federation/protocol.ts";
import {
  factorArrays,
  releasedOnly,
  releaseSpec,
  withUnreleased,
} from "../lib/federation/remote.ts";
import { withFloat32, withHeader } from "./helpers/payload_bytes.ts";

function sample(): Payload {
  const a = new Float32Array(4 * 6).map((_, i) => Math.sin(i) * 1e-3);
  const b = new Float64Array(6 * 4).map((_, i) => i - 11.5);
  return {
    meta: { round: 3, note: "x" },
    arrays: [
      { name: "A.0", shape: [4, 6], data: a },
      { name: "B.0", shape: [6, 4], data: b },
      { name: "empty", shape: [0, 4], data: new Float32Array(0) },
    ],
  };
}

async function refused(bytes: Uint8Array, pattern: RegExp) {
  await assert.rejects(decodePayload(bytes), (err: Error) => {
    assert.ok(err instanceof PayloadError, `expected a PayloadError, got ${err}`);
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("federation codec: a payload round-trips with its meta, names, shapes, dtypes and exact values", async () => {
  const p = sample();
  const bytes = await encodePayload(p);
  const back = await decodePayload(bytes);
  assert.deepEqual(back.meta, p.meta);
  assert.deepEqual(back.arrays.map((a) => [a.name, a.shape, a.data.constructor.name]), [
    ["A.0", [4, 6], "Float32Array"],
    ["B.0", [6, 4], "Float64Array"],
    ["empty", [0, 4], "Float32Array"],
  ]);
  assert.deepEqual(Array.from(back.arrays[0].data), Array.from(p.arrays[0].data));
  assert.deepEqual(Array.from(back.arrays[1].data), Array.from(p.arrays[1].data));
  // A payload inside a larger buffer at an odd offset (as a NATS message body is) decodes too.
  const shifted = new Uint8Array(bytes.length + 3);
  shifted.set(bytes, 3);
  const again = await decodePayload(shifted.subarray(3));
  assert.equal(again.arrays[1].data[23], 11.5);
  // And inside a Node Buffer, whose `slice` is a view, not a copy.
  const buffer = Buffer.concat([Buffer.alloc(5), Buffer.from(bytes)]).subarray(5);
  const fromBuffer = await decodePayload(buffer);
  assert.deepEqual(Array.from(fromBuffer.arrays[0].data), Array.from(p.arrays[0].data));
});

Deno.test("federation codec: the digest is the SHA-256 of the raw values (a known vector)", async () => {
  assert.equal(
    await sha256Hex(new TextEncoder().encode("abc")),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  const bytes = await encodePayload({
    meta: {},
    arrays: [{ name: "x", shape: [1], data: new Float32Array([1]) }],
  });
  const header = JSON.parse(
    new TextDecoder().decode(
      bytes.subarray(12, 12 + new DataView(bytes.buffer).getUint32(8, true)),
    ),
  );
  assert.equal(header.arrays[0].sha256, await sha256Hex(new Uint8Array([0, 0, 0x80, 0x3f])));
});

Deno.test("federation codec: the sender refuses a shape that does not match the data, and a NaN", async () => {
  await assert.rejects(
    encodePayload({ meta: {}, arrays: [{ name: "A", shape: [3, 3], data: new Float32Array(8) }] }),
    /array A: shape \[3,3\] holds 9 values but the data has 8/,
  );
  await assert.rejects(
    encodePayload({
      meta: {},
      arrays: [{ name: "B", shape: [2], data: new Float32Array([0, NaN]) }],
    }),
    /array B: value 1 is NaN/,
  );
});

Deno.test("federation codec: a NaN or infinity smuggled into the bytes is refused by the receiver", async () => {
  const p = sample();
  const bytes = await encodePayload(p);
  // A.0's value 5 replaced, with its digest recomputed, as a hostile sender could.
  await refused(await withFloat32(bytes, 0, 5, NaN), /array A\.0: value 5 is NaN/);
  await refused(await withFloat32(bytes, 0, 5, -Infinity), /array A\.0: value 5 is -Infinity/);
});

Deno.test("federation codec: changed bytes fail the SHA-256 check", async () => {
  const bytes = await encodePayload(sample());
  bytes[bytes.length - 1] ^= 1; // last byte of B.0's data (the empty array has none)
  await refused(bytes, /array B\.0: SHA-256 [0-9a-f]{64} differs from the declared/);
});

Deno.test("federation codec: oversized declared lengths are refused before allocation", async () => {
  const bytes = await encodePayload(sample());
  // A header length past the end of the message, and one over the limit.
  const longHeader = bytes.slice();
  new DataView(longHeader.buffer).setUint32(8, bytes.length, true);
  await refused(longHeader, /header length \d+ runs past the end of the \d+-byte message/);
  const hugeHeader = bytes.slice();
  new DataView(hugeHeader.buffer).setUint32(8, 0xffffffff, true);
  await refused(hugeHeader, /header length 4294967295 exceeds the limit of 1048576 bytes/);
  // A shape declaring 2^40 values: refused on the declared count, no 4 TiB allocation.
  await refused(
    withHeader(bytes, (h) => {
      const a = (h.arrays as { shape: number[]; byteLength: number }[])[0];
      a.shape = [1 << 20, 1 << 20];
      a.byteLength = 4 * 2 ** 40;
    }),
    /exceeds the limit of 67108864 values/,
  );
  // Declared data bytes larger than the message.
  await refused(
    withHeader(bytes, (h) => {
      h.dataBytes = (h.dataBytes as number) + 8;
    }),
    /declares \d+ data bytes but the message holds \d+/,
  );
  // A truncated message.
  await refused(
    bytes.subarray(0, bytes.length - 8),
    /declares \d+ data bytes but the message holds/,
  );
  // An array whose byteLength disagrees with its shape.
  await refused(
    withHeader(bytes, (h) => {
      (h.arrays as { byteLength: number }[])[0].byteLength = 1 << 30;
    }),
    /array 0 \("A\.0"\): declares 1073741824 bytes but shape \[4,6\] of float32 needs 96/,
  );
  // Tighter limits apply too.
  await assert.rejects(
    decodePayload(bytes, { maxHeaderBytes: 1 << 20, maxArrays: 2, maxValues: 1e6, maxRank: 8 }),
    /3 arrays declared; at most 2/,
  );
});

Deno.test("federation codec: malformed headers are refused with what is wrong", async () => {
  const bytes = await encodePayload(sample());
  await refused(new Uint8Array(5), /5 bytes is shorter than the prefix/);
  const magic = bytes.slice();
  magic[0] = 0x58;
  await refused(magic, /does not start with DEERFAC1/);
  await refused(withHeader(bytes, (h) => (h.v = 2)), /header version 2/);
  await refused(
    withHeader(bytes, (h) => ((h.arrays as { dtype: string }[])[1].dtype = "int32")),
    /dtype "int32"; expected float32 or float64/,
  );
  await refused(
    withHeader(bytes, (h) => ((h.arrays as { name: string }[])[1].name = "A.0")),
    /name appears twice/,
  );
  await refused(
    withHeader(bytes, (h) => ((h.arrays as { shape: unknown[] }[])[0].shape = [4, -6])),
    /size -6/,
  );
  const notJson = bytes.slice();
  notJson[12] = 0x7b + 1;
  await refused(notJson, /the header is not UTF-8 JSON/);
});

Deno.test("federation codec: checkArrays refuses a release of the wrong shape, type or names", async () => {
  const back = await decodePayload(await encodePayload(sample()));
  const spec = [
    { name: "A.0", dtype: "float32", shape: [4, 6] },
    { name: "B.0", dtype: "float64", shape: [6, 4] },
    { name: "empty", dtype: "float32", shape: [0, 4] },
  ] as const;
  checkArrays(back, spec.map((s) => ({ ...s, shape: [...s.shape] })), "release of a");
  assert.throws(
    () =>
      checkArrays(
        back,
        [{ ...spec[0], shape: [6, 4] }, spec[1], spec[2]].map((s) => ({
          ...s,
          shape: [...s.shape],
        })),
        "release of a",
      ),
    /release of a: array A\.0 has shape \[4,6\]; expected \[6,4\]/,
  );
  assert.throws(
    () => checkArrays(back, [{ ...spec[0], shape: [4, 6] }], "release of a"),
    /release of a: unexpected array B\.0/,
  );
  assert.throws(
    () => checkArrays(back, [{ name: "B.0", dtype: "float32", shape: [6, 4] }], "r"),
    /r: array B\.0 is float64; expected float32/,
  );
});

Deno.test("federation release: a phase's release carries its released factors only; anything else is refused", async () => {
  const dims = { adapters: 2, rank: 2, dIn: 3, dOut: 4 };
  const f = (n: number, v: number) => new Float32Array(n).fill(v);
  const global = { A: [f(6, 1), f(6, 2)], B: [f(8, 0), f(8, 0)] };
  const released = { A: global.A, B: [f(8, 0.5), f(8, -0.5)] }; // a phase-B release
  const sent = await decodePayload(
    await encodePayload({ meta: {}, arrays: factorArrays(releasedOnly(released, ["B"])) }),
  );
  assert.deepEqual(sent.arrays.map((a) => a.name), ["B.0", "B.1"]);
  checkArrays(sent, releaseSpec(dims, ["B"]), "release of a");
  // The coordinator completes it with the task's A, so the combined factors are the site's.
  const back = withUnreleased(
    { A: [], B: sent.arrays.map((a) => Float32Array.from(a.data)) },
    global,
    ["B"],
  );
  assert.deepEqual(back, released);
  // A release that also sends A (unreleased in this phase) is refused, as is one without B.
  const both = await decodePayload(
    await encodePayload({ meta: {}, arrays: factorArrays(released) }),
  );
  assert.throws(
    () => checkArrays(both, releaseSpec(dims, ["B"]), "release of a"),
    /release of a: unexpected array A\.0/,
  );
  assert.throws(
    () => checkArrays(both, releaseSpec(dims, ["A"]), "release of a"),
    /release of a: unexpected array B\.0/,
  );
  checkArrays(both, releaseSpec(dims), "release of a"); // both factors: a phase releasing A and B
});

Deno.test("federation protocol: a result from an unknown site, or claiming another site's name, is refused", () => {
  const meta = {
    kind: "result",
    v: 1,
    run: "run-1",
    round: 2,
    phase: 1,
    site: "site-a",
    attempt: 1,
    release: null,
    report: {},
  };
  const expect = { run: "run-1", sites: ["site-a", "site-b"], subjectSite: "site-a" };
  assert.equal(checkResultEnvelope(meta, expect).round, 2);
  assert.throws(
    () => checkResultEnvelope({ ...meta, site: "site-x" }, { ...expect, subjectSite: "site-x" }),
    /unknown site site-x \(this run's sites: site-a, site-b\)/,
  );
  assert.throws(
    () => checkResultEnvelope({ ...meta, site: "site-b" }, expect),
    /result on the subject of site-a: it claims to come from site site-b/,
  );
  assert.throws(
    () => checkResultEnvelope({ ...meta, run: "run-0" }, expect),
    /run run-0; this coordinator runs run-1/,
  );
  assert.throws(
    () => checkResultEnvelope({ ...meta, attempt: 0 }, expect),
    /attempt = 0; expected an integer ≥ 1/,
  );
  assert.throws(
    () =>
      checkResultEnvelope({
        ...meta,
        release: { bucket: "b", name: "n", bytes: -1, sha256: "0".repeat(64) },
      }, expect),
    /bytes = -1/,
  );
  assert.throws(
    () =>
      checkTaskEnvelope(
        {
          kind: "task",
          v: 1,
          run: "r",
          round: 1,
          phase: 0,
          site: "site-b",
          deadline: "2030-01-01T00:00:00.000Z",
          global: null,
          settings: {},
        },
        "site-a",
      ),
    /task for site site-b arrived on the queue of site site-a/,
  );
});
