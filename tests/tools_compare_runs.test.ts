// tools/compare_runs.ts: which files of two run folders differ, and where each difference starts
// (a JSON file's line and field, a checkpoint's tensor and index, a byte), on folders written here
// in the formats runs write.
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeSafetensors } from "../lib/model/safetensors.ts";
import { compareRuns, describeDifference, firstJsonDifference } from "../tools/compare_runs.ts";

Deno.test("compare_runs: the first differing field of two JSON values, by path", () => {
  assert.equal(firstJsonDifference({ a: [1, { b: 2 }] }, { a: [1, { b: 2 }] }), null);
  assert.equal(
    firstJsonDifference({ a: [1, { b: 2, c: 0.5 }] }, { a: [1, { b: 2, c: null }] }),
    ".a[1].c: 0.5 ≠ null",
  );
  assert.equal(firstJsonDifference({ x: 1 }, { x: 1, y: "s" }), '.y: absent ≠ "s"');
  assert.equal(firstJsonDifference([1, 2], [1, 2, 3]), ".: 2 items ≠ 3");
  assert.equal(firstJsonDifference(3, "3"), '.: 3 ≠ "3"');
});

Deno.test("compare_runs: names each differing file and where it differs; timings and the folders' own paths aside", async () => {
  const root = await Deno.makeTempDir({ prefix: "deer-compare-" });
  const [a, b] = [join(root, "a"), join(root, "b")];
  for (const dir of [a, b]) {
    await Deno.mkdir(join(dir, "seed-10", "checkpoints"), { recursive: true });
  }
  const record = (round: number, energy: number | null, seconds: number) =>
    JSON.stringify({ round, seconds, phases: [{ phase: "AB", noiseEnergy: energy }] });
  await Deno.writeTextFile(
    join(a, "seed-10", "records.jsonl"),
    `${record(1, 0.5, 1.25)}\n${record(2, 0.25, 2)}\n`,
  );
  await Deno.writeTextFile(
    join(b, "seed-10", "records.jsonl"),
    `${record(1, 0.5, 9)}\n${record(2, null, 3)}\n`,
  );
  // The same config but for the folder it names and a timing: equal.
  for (const dir of [a, b]) {
    await Deno.writeTextFile(
      join(dir, "config.json"),
      JSON.stringify({ out: dir, seconds: Math.random(), note: `results in ${dir}/seed-10` }),
    );
  }
  const tensors = (v: number) => ({
    "A.0": { shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) },
    "B.0": { shape: [3, 2], data: new Float32Array([0, 0, 0, v, 0, 0]) },
  });
  await writeSafetensors(join(a, "seed-10", "checkpoints", "round-0001.safetensors"), tensors(1));
  await writeSafetensors(join(b, "seed-10", "checkpoints", "round-0001.safetensors"), tensors(2));
  await Deno.writeFile(join(a, "seed-10", "noise.bin"), new Uint8Array([1, 2, 3, 4]));
  await Deno.writeFile(join(b, "seed-10", "noise.bin"), new Uint8Array([1, 2, 9, 4]));
  await Deno.writeTextFile(join(b, "traffic.json"), "{}");
  assert.deepEqual(compareRuns(a, b), [
    "seed-10/checkpoints/round-0001.safetensors: differs",
    "seed-10/noise.bin: differs",
    "seed-10/records.jsonl: differs",
    `traffic.json: only in ${b}`,
  ]);
  assert.equal(
    await describeDifference(a, b, "seed-10/records.jsonl"),
    "line 2, .phases[0].noiseEnergy: 0.25 ≠ null",
  );
  assert.equal(
    await describeDifference(a, b, "seed-10/checkpoints/round-0001.safetensors"),
    "tensor B.0[3]: 1 ≠ 2",
  );
  assert.equal(await describeDifference(a, b, "seed-10/noise.bin"), "byte 2: 3 ≠ 9");
  // A field set aside wherever it appears: the records are then the same.
  assert.deepEqual(compareRuns(a, b, { ignore: ["noiseEnergy"] }), [
    "seed-10/checkpoints/round-0001.safetensors: differs",
    "seed-10/noise.bin: differs",
    `traffic.json: only in ${b}`,
  ]);
  // The command prints them, with the count, and exits 1.
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../tools/compare_runs.ts", import.meta.url).pathname, a, b],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 1);
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  assert.deepEqual(lines, [
    "seed-10/checkpoints/round-0001.safetensors: differs (tensor B.0[3]: 1 ≠ 2)",
    "seed-10/noise.bin: differs (byte 2: 3 ≠ 9)",
    "seed-10/records.jsonl: differs (line 2, .phases[0].noiseEnergy: 0.25 ≠ null)",
    `traffic.json: only in ${b}`,
    "4 difference(s)",
  ]);
  await Deno.remove(root, { recursive: true });
});
