// lib/hex.ts against Node's Buffer hex encoding, and the shape of the random tokens built on it.
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { randomHex, toHex } from "../lib/hex.ts";
import { sha256Hex } from "../lib/federation/codec.ts";
import { randomToken } from "../lib/federation/protocol.ts";
import { createHash } from "node:crypto";

Deno.test("hex: every byte value as Buffer writes it; random tokens have their length and differ", async () => {
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  assert.equal(toHex(all), Buffer.from(all).toString("hex"));
  assert.equal(toHex(new Uint8Array(0)), "");
  assert.equal(toHex(new Uint8Array([0, 15, 255])), "000fff");
  assert.match(randomHex(12), /^[0-9a-f]{24}$/);
  assert.match(randomToken(), /^[0-9a-f]{32}$/);
  assert.notEqual(randomToken(), randomToken());
  const bytes = new TextEncoder().encode("deer");
  assert.equal(await sha256Hex(bytes), createHash("sha256").update(bytes).digest("hex"));
});
