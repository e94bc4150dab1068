import assert from "node:assert/strict";
import {
  dirichletPartition,
  iidPartition,
  MAX_IMPLIED_CLASSES,
  partitionCounts,
} from "../lib/data/partition.ts";

function labelsOf(perClass: number[]): number[] {
  return perClass.flatMap((n, c) => new Array(n).fill(c));
}

function assertExactCover(parts: number[][], n: number, what: string): void {
  const seen = new Uint8Array(n);
  for (const p of parts) {
    for (const i of p) {
      assert.ok(Number.isInteger(i) && i >= 0 && i < n, `${what}: index ${i}`);
      assert.equal(seen[i], 0, `${what}: index ${i} given twice`);
      seen[i] = 1;
    }
  }
  assert.ok(seen.every((s) => s === 1), `${what}: some index given to nobody`);
}

Deno.test("dirichletPartition gives every index to exactly one client", () => {
  const cases: [number[], number, number][] = [
    [[50, 30, 20, 0, 7], 12, 0.1],
    [[50, 30, 20], 12, 100],
    [[1, 2, 3], 12, 0.5], // tiny classes: rounded counts overshoot n_c and are clamped
    [[40], 1, 0.1],
    [[5, 5], 20, 1],
  ];
  for (const [perClass, K, alpha] of cases) {
    const labels = labelsOf(perClass);
    for (let seed = 0; seed < 60; seed++) {
      const parts = dirichletPartition(labels, K, alpha, seed);
      assert.equal(parts.length, K);
      assertExactCover(parts, labels.length, `${perClass} K=${K} α=${alpha} seed=${seed}`);
    }
  }
  // Int32Array labels (as ImageSplit.labels) are accepted too.
  const parts = dirichletPartition(Int32Array.from(labelsOf([10, 10])), 3, 1, 1);
  assertExactCover(parts, 20, "Int32Array");
});

Deno.test("dirichletPartition is deterministic per seed and differs across seeds", () => {
  const labels = labelsOf([100, 80, 60, 40]);
  assert.deepEqual(
    dirichletPartition(labels, 12, 0.1, 10),
    dirichletPartition(labels, 12, 0.1, 10),
  );
  assert.notDeepEqual(
    dirichletPartition(labels, 12, 0.1, 10),
    dirichletPartition(labels, 12, 0.1, 100),
  );
  assert.notDeepEqual(
    dirichletPartition(labels, 12, 0.1, 100),
    dirichletPartition(labels, 12, 0.1, 1000),
  );
  // Each client's list is shuffled, not sorted by class.
  const big = dirichletPartition(labels, 2, 100, 3);
  assert.notDeepEqual(big[0], [...big[0]].sort((a, b) => a - b));
});

Deno.test("Dirichlet α = 0.1 is very skewed, α = 100 close to uniform", () => {
  const C = 10, K = 10;
  const labels = labelsOf(new Array(C).fill(300));
  // Mean over clients of the largest class share: 1/C = 0.1 for a uniform split (over 200 seeds:
  // α = 0.1 gives ≥ 0.47, α = 100 gives ≤ 0.12).
  const skew = (alpha: number, seed: number) => {
    const counts = partitionCounts(labels, dirichletPartition(labels, K, alpha, seed));
    const shares = counts.filter((r) => r.some((x) => x > 0)).map((r) =>
      Math.max(...r) / r.reduce((a, b) => a + b, 0)
    );
    return shares.reduce((a, b) => a + b, 0) / shares.length;
  };
  for (const seed of [10, 100, 1000]) {
    assert.ok(skew(0.1, seed) > 0.4, `α=0.1 seed ${seed}: ${skew(0.1, seed)}`);
    assert.ok(skew(100, seed) < 0.15, `α=100 seed ${seed}: ${skew(100, seed)}`);
  }
  // With α = 100 every client holds about N/K samples.
  const sizes = dirichletPartition(labels, K, 100, 1).map((p) => p.length);
  for (const s of sizes) assert.ok(Math.abs(s - 300) < 60, `size ${s}`);
});

Deno.test("dirichletPartition rejects bad arguments with clear messages", () => {
  assert.throws(
    () => dirichletPartition([0, 1], 0, 0.1, 1),
    /numClients must be an integer ≥ 1, got 0/,
  );
  assert.throws(
    () => dirichletPartition([0, 1], 2.5, 0.1, 1),
    /numClients must be an integer ≥ 1, got 2.5/,
  );
  assert.throws(
    () => dirichletPartition([0, 1], 2, 0, 1),
    /alpha must be a finite number > 0, got 0/,
  );
  assert.throws(
    () => dirichletPartition([0, 1], 2, -1, 1),
    /alpha must be a finite number > 0, got -1/,
  );
  assert.throws(
    () => dirichletPartition([0, -1], 2, 1, 1),
    /labels\[1\] = -1; labels must be integers ≥ 0/,
  );
  assert.throws(() => dirichletPartition([0, 0.5], 2, 1, 1), /labels\[1\] = 0.5/);
  assert.throws(() => dirichletPartition([0, NaN], 2, 1, 1), /labels\[1\] = NaN/);
  assert.throws(() => dirichletPartition([0, 1], 2, 1, 1.5), /seed must be an integer/);
  assert.deepEqual(dirichletPartition([], 3, 1, 1), [[], [], []]);
});

// A label of 1e9 used to allocate a billion class lists and Dirichlet draws (~1 GB, seconds).
Deno.test("labels far beyond any class count are refused before anything is allocated", () => {
  const rss = Deno.memoryUsage().rss;
  assert.throws(
    () => dirichletPartition([0, 1e9], 2, 0.5, 1),
    /^Error: dirichletPartition: labels\[1\] = 1000000000 would make 1000000001 classes; labels must be class indices below 65536 \(the labels are corrupt; pass numClasses to check them against the data set's classes\)$/,
  );
  assert.throws(
    () => partitionCounts([0, 1e9], [[0], [1]]),
    /^Error: partitionCounts: labels\[1\] = 1000000000 would make/,
  );
  assert.ok(Deno.memoryUsage().rss - rss < 100e6, "no allocation of the label's size");
  // With the data set's class count, a label outside it is named against it.
  assert.throws(
    () => dirichletPartition(Int32Array.from([0, 1, 8, 2]), 2, 0.5, 1, { numClasses: 8 }),
    /^Error: dirichletPartition: labels\[2\] = 8, but the data set has 8 classes \(labels 0\.\.7\); the labels are corrupt/,
  );
  assert.throws(
    () => dirichletPartition([0], 2, 0.5, 1, { numClasses: 0 }),
    /numClasses must be an integer ≥ 1, got 0/,
  );
  // Valid labels split exactly as without the option, and counts get a column per class.
  const labels = labelsOf([5, 0, 7]);
  assert.deepEqual(
    dirichletPartition(labels, 3, 0.5, 4, { numClasses: 4 }),
    dirichletPartition(labels, 3, 0.5, 4),
  );
  assert.deepEqual(partitionCounts([2, 0], [[0], [1]], { numClasses: 4 }), [[0, 0, 1, 0], [
    1,
    0,
    0,
    0,
  ]]);
  assert.equal(dirichletPartition([MAX_IMPLIED_CLASSES - 1], 1, 1, 1)[0].length, 1);
});

Deno.test("iidPartition: equal random split, deterministic, covers every index", () => {
  const parts = iidPartition(103, 12, 10);
  assert.deepEqual(parts.map((p) => p.length), [9, 9, 9, 9, 9, 9, 9, 8, 8, 8, 8, 8]);
  assertExactCover(parts, 103, "iid");
  assert.deepEqual(parts, iidPartition(103, 12, 10));
  assert.notDeepEqual(parts, iidPartition(103, 12, 11));
  assert.throws(() => iidPartition(10, 0, 1), /iidPartition: numClients must be an integer ≥ 1/);
  assert.throws(() => iidPartition(-1, 2, 1), /n must be an integer ≥ 0/);
});

Deno.test("partitionCounts tabulates classes per client", () => {
  assert.deepEqual(partitionCounts([0, 1, 1, 2], [[0, 3], [1, 2], []]), [[1, 0, 1], [0, 2, 0], [
    0,
    0,
    0,
  ]]);
});
