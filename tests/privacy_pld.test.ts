/**
 * The PLD accountant against independent values: the closed form of the composed Gaussian
 * (scipy) and Google's dp_accounting PLD accountant, both computed offline by
 * tools/crosscheck/privacy_pld_reference.py into tests/fixtures/privacy_pld_reference.json.
 */
import assert from "node:assert/strict";
import { gaussianDelta, pldEpsilon } from "../lib/privacy/pld.ts";
import { rdpEpsilon } from "../lib/privacy/rdp.ts";

interface Reference {
  noiseMultiplier: number;
  sampleRate: number;
  steps: number;
  delta: number;
  dpAccounting: number;
  closedForm?: number;
}
const references: Reference[] = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/privacy_pld_reference.json", import.meta.url)),
);

const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

Deno.test("PLD: full participation is the exact closed form (scipy to 1e-9, dp_accounting to 1e-6)", () => {
  const full = references.filter((r) => r.sampleRate === 1);
  assert.ok(full.length >= 7);
  for (const r of full) {
    const got = pldEpsilon(r);
    assert.equal(got.method, "closed-form");
    assert.equal(got.epsilon, got.epsilonLower);
    assert.ok(rel(got.epsilon, r.closedForm!) < 1e-9, `${JSON.stringify(r)}: ${got.epsilon}`);
    assert.ok(rel(got.epsilon, r.dpAccounting) < 1e-6, `${JSON.stringify(r)}: ${got.epsilon}`);
  }
});

Deno.test("PLD: Poisson-subsampled releases match dp_accounting's PLD accountant (T up to 10,000)", () => {
  const sampled = references.filter((r) => r.sampleRate < 1);
  assert.ok(sampled.length >= 14 && sampled.some((r) => r.steps === 10000));
  for (const r of sampled) {
    const got = pldEpsilon(r);
    assert.equal(got.method, "pld");
    // Same grid (1e-4) and the same pessimistic rounding; the tails are truncated differently,
    // which moves the bound by a fraction of one grid step.
    assert.ok(rel(got.epsilon, r.dpAccounting) < 1e-4, `${JSON.stringify(r)}: ${got.epsilon}`);
    // The optimistic bound is below, and the true value lies between the two.
    assert.ok(got.epsilonLower <= got.epsilon, `${JSON.stringify(r)}`);
    // PLD is never looser than RDP.
    const rdp = rdpEpsilon(r).epsilon;
    assert.ok(got.epsilon <= rdp, `${JSON.stringify(r)}: PLD ${got.epsilon} > RDP ${rdp}`);
  }
});

Deno.test("PLD: a finer grid tightens the bounds around the same value", () => {
  const args = { noiseMultiplier: 1, sampleRate: 0.05, steps: 200, delta: 1e-5 };
  const coarse = pldEpsilon({ ...args, discretization: 1e-3 });
  const fine = pldEpsilon({ ...args, discretization: 1e-4 });
  assert.ok(fine.epsilon <= coarse.epsilon && fine.epsilonLower >= coarse.epsilonLower);
  assert.ok(fine.epsilon - fine.epsilonLower < coarse.epsilon - coarse.epsilonLower);
  assert.ok(fine.epsilon - fine.epsilonLower < 0.05 * fine.epsilon);
});

Deno.test("PLD: edge cases and argument checks", () => {
  assert.equal(
    pldEpsilon({ noiseMultiplier: 1, sampleRate: 0.1, steps: 0, delta: 1e-5 }).epsilon,
    0,
  );
  assert.equal(pldEpsilon({ noiseMultiplier: 1, sampleRate: 0, steps: 9, delta: 1e-5 }).epsilon, 0);
  assert.equal(
    pldEpsilon({ noiseMultiplier: 0, sampleRate: 0.5, steps: 9, delta: 1e-5 }).epsilon,
    Infinity,
  );
  // Φ(½) − Φ(−½) for μ = 1 at ε = 0 (textbook value 0.3829249).
  assert.ok(Math.abs(gaussianDelta(1, 0) - 0.38292492254802624) < 1e-12);
  assert.throws(
    () => pldEpsilon({ noiseMultiplier: 1, sampleRate: 0.5, steps: 2.5, delta: 1e-5 }),
    /steps 2\.5 must be an integer ≥ 0/,
  );
  assert.throws(
    () => pldEpsilon({ noiseMultiplier: 1, sampleRate: 1.5, steps: 2, delta: 1e-5 }),
    /sampleRate 1\.5 must be in \[0, 1\]/,
  );
  assert.throws(
    () => pldEpsilon({ noiseMultiplier: 1, sampleRate: 0.5, steps: 2, delta: 0 }),
    /delta 0 must be in \(0, 1\)/,
  );
});
