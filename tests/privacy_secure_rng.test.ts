/**
 * The secure noise stream of a keyed local-DP site (lib/privacy/secure_rng.ts): AES-256-CTR's
 * keystream (checked against a known answer computed with Python's `cryptography`), read as
 * 53-bit uniforms, turned into normals by the toolkit's one transform; statistically N(0, 1);
 * the same stream for the same key and label, another for another key or label.
 */
import assert from "node:assert/strict";
import { keyedStream, secureRng } from "../lib/privacy/secure_rng.ts";
import { importNoiseKey, secretNoise } from "../lib/federation/site.ts";

Deno.test("secure rng: the uniforms are AES-256-CTR's keystream, 53 bits each", () => {
  // AES-256-CTR, key 32 × 0x07, counter block 0: first 16 keystream bytes (Python cryptography:
  // Cipher(algorithms.AES(bytes([7]*32)), modes.CTR(bytes(16))).encryptor().update(bytes(16))).
  const known = "0a4dee87e76ce0d47c6e1cdfc76d20a3";
  const bytes = Uint8Array.from(known.match(/../g)!.map((h) => parseInt(h, 16)));
  const view = new DataView(bytes.buffer);
  const expect = (o: number) =>
    ((view.getUint32(o, true) >>> 5) * 2 ** 26 + (view.getUint32(o + 4, true) >>> 6)) / 2 ** 53;
  const rng = secureRng(new Uint8Array(32).fill(7));
  assert.equal(rng.uniform(), expect(0));
  assert.equal(rng.uniform(), expect(8));
  // 53 bits: far more than the 32 of createRng (a draw times 2³² is almost never an integer).
  const fine = Array.from({ length: 1000 }, () => rng.uniform())
    .filter((u) => !Number.isInteger(u * 2 ** 32)).length;
  assert.ok(fine > 990, `${fine} of 1000 uniforms use bits below 2⁻³²`);
  assert.throws(() => secureRng(new Uint8Array(16)), /the key must be 32 bytes/);
  assert.throws(() => rng.state(), /does not export its state/);
});

Deno.test("secure rng: normals are N(0, 1) — mean, variance, tails and correlation within bounds", () => {
  const n = 400_000;
  const z = secureRng(new Uint8Array(32).fill(3)).fillNormal(new Float64Array(n));
  let sum = 0, sq = 0, four = 0, inside = 0, lag = 0;
  for (let i = 0; i < n; i++) {
    sum += z[i];
    sq += z[i] * z[i];
    four += z[i] ** 4;
    if (Math.abs(z[i]) < 1) inside++;
    if (i > 0) lag += z[i] * z[i - 1];
  }
  const mean = sum / n;
  const variance = sq / n - mean * mean;
  // Five standard errors: N(0,1) mean se 1/√n, variance se √(2/n), E z⁴ = 3 (se √(96/n)),
  // P(|z| < 1) = 0.682689 (se √(p(1−p)/n)), lag-1 correlation se 1/√n.
  assert.ok(Math.abs(mean) < 5 / Math.sqrt(n), `mean ${mean}`);
  assert.ok(Math.abs(variance - 1) < 5 * Math.sqrt(2 / n), `variance ${variance}`);
  assert.ok(Math.abs(four / n - 3) < 5 * Math.sqrt(96 / n), `fourth moment ${four / n}`);
  const p = 0.682689492137;
  assert.ok(Math.abs(inside / n - p) < 5 * Math.sqrt((p * (1 - p)) / n), `P(|z|<1) ${inside / n}`);
  assert.ok(Math.abs(lag / n) < 5 / Math.sqrt(n), `lag-1 correlation ${lag / n}`);
  // The std argument scales the draws.
  const scaled = secureRng(new Uint8Array(32).fill(3)).fillNormal(new Float64Array(n), 0.25);
  assert.equal(scaled[17], z[17] * 0.25);
});

Deno.test("secure rng: reproducible for the same key and label, another stream for another", async () => {
  const draws = (rng: ReturnType<typeof secureRng>) => Array.from({ length: 256 }, rng.normal);
  const a = draws(secureRng(new Uint8Array(32).fill(1)));
  assert.deepEqual(draws(secureRng(new Uint8Array(32).fill(1))), a);
  const b = draws(secureRng(new Uint8Array(32).fill(2)));
  assert.ok(a.every((v, i) => v !== b[i]), "another key shares no draw");
  const fa = secureRng(new Uint8Array(32).fill(1)).fork(4);
  assert.deepEqual(draws(secureRng(new Uint8Array(32).fill(1)).fork(4)), draws(fa));
  assert.notDeepEqual(draws(secureRng(new Uint8Array(32).fill(1)).fork(5)), draws(fa));
  // A site's stream: HMAC-SHA256(noise key, label) keys the AES stream.
  const key = await importNoiseKey(new Uint8Array(32).fill(9));
  const site = async (k: CryptoKey, release: string, inputs = "abc") =>
    draws(await secretNoise(k, release, 2, inputs));
  const first = await site(key, "run/1/0");
  assert.deepEqual(await site(await importNoiseKey(new Uint8Array(32).fill(9)), "run/1/0"), first);
  const others = [
    await site(await importNoiseKey(new Uint8Array(32).fill(10)), "run/1/0"),
    await site(key, "run/1/1"),
    await site(key, "run/1/0", "abd"),
  ];
  for (const o of others) assert.ok(o.every((v, i) => v !== first[i]));
  // The same construction as a run's keyed streams (raw key bytes there, a non-extractable
  // CryptoKey at a site): equal draws for equal key and name.
  const raw = draws(keyedStream(new Uint8Array(32).fill(9), "noise", "run/1/0", 2, "abc"));
  assert.deepEqual(raw, first);
});
