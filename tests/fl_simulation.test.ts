import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/backend.ts";
import {
  clientPlan,
  type FederatedConfig,
  type RoundRecord,
  runFederated,
  validateConfig,
} from "../lib/fl/simulation.ts";
import { ledgerMismatch, momentumLayoutError } from "../lib/fl/checkpoint.ts";
import { createMechanism } from "../lib/privacy/mechanism.ts";
import { createLedger, restoreLedger } from "../lib/privacy/ledger.ts";
import { readSafetensors, writeSafetensors } from "../lib/model/safetensors.ts";
import { toyConfig, toySetup } from "./helpers/fl_fixture.ts";

const setup = await toySetup();

function config(over: Partial<FederatedConfig> = {}): FederatedConfig {
  return toyConfig({ rounds: 3, ...over });
}

/** A record without its wall-clock fields, for equality across runs. */
const stable = (r: RoundRecord) => ({ ...r, seconds: 0 });

Deno.test("simulation: the same seed gives identical records; another seed does not", async () => {
  const cfg = config({ method: { method: "LoRA" }, rounds: 2 });
  const a = await runFederated(setup.backbone, setup.data, cfg);
  const b = await runFederated(setup.backbone, setup.data, cfg);
  assert.deepEqual(a.records.map(stable), b.records.map(stable));
  const c = await runFederated(setup.backbone, setup.data, { ...cfg, seed: 11 });
  assert.notDeepEqual(a.records.map((r) => r.trainLoss), c.records.map((r) => r.trainLoss));
});

Deno.test("simulation: training learns, rounds do not grow the live tensor count", async () => {
  const before = tf.memory().numTensors;
  const res = await runFederated(setup.backbone, setup.data, config({ rounds: 4 }));
  assert.equal(tf.memory().numTensors, before);
  for (const r of res.records) assert.equal(r.liveTensors, 0, `round ${r.round}`);
  assert.ok(res.records[3].trainLoss < res.records[0].trainLoss, "loss falls");
  assert.ok(res.best.test !== null && res.best.test.accuracy > 0.5, "beats chance (1/3)");
  // DEeR eliminates the aggregation deviation.
  for (const r of res.records) assert.ok(r.deviation < 1e-10, `deviation ${r.deviation}`);
});

Deno.test("simulation: strict DP spends exactly the target ε by the last round", async () => {
  const res = await runFederated(
    setup.backbone,
    setup.data,
    config({ dp: { calibration: "strict", clip: 0.5, epsilon: 3 } }),
  );
  const spent = res.records.map((r) => r.epsilon.spent!);
  for (let i = 1; i < spent.length; i++) assert.ok(spent[i] >= spent[i - 1], "ε never decreases");
  assert.ok(spent[2] <= 3 && spent[2] > 3 - 0.01, `spent ${spent[2]}`);
  assert.equal(res.records[0].epsilon.nominal, 3);
  assert.equal(res.records[0].phases.length, 2, "DEeR: two releases per round");
});

Deno.test("simulation: paper DP reports a client-level ε far above its nominal one", async () => {
  const res = await runFederated(
    setup.backbone,
    setup.data,
    config({ method: { method: "FFA-LoRA" }, dp: { calibration: "paper", clip: 0.5, epsilon: 3 } }),
  );
  assert.equal(res.calibration?.nominalDelta, 1 / 4);
  assert.ok(res.epsilonSpent! > 3, `spent ${res.epsilonSpent}`);
});

Deno.test("simulation: a run stopped after a round resumes to identical results", async () => {
  const cfg = config({ method: { method: "LoRA" }, momentum: "reference" });
  const full = await runFederated(setup.backbone, setup.data, cfg);
  const out = join(setup.dir, "resume");
  const first = await runFederated(setup.backbone, setup.data, cfg, {
    outDir: out,
    stopAfterRounds: 1,
  });
  assert.equal(first.records.length, 1);
  const resumed = await runFederated(setup.backbone, setup.data, cfg, {
    outDir: out,
    resume: true,
  });
  assert.deepEqual(resumed.records.map(stable), full.records.map(stable));
  const lines = (await Deno.readTextFile(join(out, "records.jsonl"))).trim().split("\n");
  assert.equal(lines.length, 3);
  const files = [...Deno.readDirSync(join(out, "checkpoints"))].map((e) => e.name).sort();
  assert.deepEqual(files, [
    "round-0001.safetensors",
    "round-0002.safetensors",
    "round-0003.safetensors",
  ]);
  // Resuming with other settings is refused.
  await assert.rejects(
    runFederated(setup.backbone, setup.data, { ...cfg, seed: 99 }, { outDir: out, resume: true }),
    /written by a run with other settings/,
  );
  // A saved momentum buffer of the wrong size is refused before it reaches a trainer, naming the
  // file, the client and the buffer.
  const edited = join(setup.dir, "resume-momentum");
  await runFederated(setup.backbone, setup.data, cfg, { outDir: edited, stopAfterRounds: 1 });
  const statePath = join(edited, "state-round-0001.safetensors");
  const saved = await readSafetensors(statePath);
  const tensors = Object.fromEntries(
    Object.entries(saved.tensors).map(([name, t]) => [name, { shape: t.shape, data: t.data }]),
  );
  assert.ok(tensors["client.1.momentum.0"], "LoRA with reference momentum saves client momentum");
  tensors["client.1.momentum.0"] = { shape: [3], data: new Float32Array([1, 2, 3]) };
  await writeSafetensors(statePath, tensors, saved.metadata);
  await assert.rejects(
    runFederated(setup.backbone, setup.data, cfg, { outDir: edited, resume: true }),
    /state-round-0001\.safetensors: client 1's momentum: buffer 0 has 3 values; expected \d+/,
  );
});

Deno.test("simulation: secret noise comes from a key the run keeps, not from the seed", async () => {
  const dp = { calibration: "strict" as const, clip: 0.5, epsilon: 3 };
  const cfg = (noise?: "seeded" | "secret") =>
    config({
      method: { method: "DEeR" },
      rounds: 2,
      participation: 0.5,
      dp: { ...dp, ...(noise ? { noise } : {}) },
    });
  // What each release drew: its cohort and its noise.
  const draws = (r: { records: RoundRecord[] }) =>
    r.records.flatMap((rec) => rec.phases.map((p) => [p.participants, p.noiseEnergy]));
  const seeded = draws(await runFederated(setup.backbone, setup.data, cfg("seeded")));
  assert.deepEqual(draws(await runFederated(setup.backbone, setup.data, cfg())), seeded);
  // Two secret runs of the same seed draw other noise than the seed's, and than each other.
  const secretA = draws(await runFederated(setup.backbone, setup.data, cfg("secret")));
  const secretB = draws(await runFederated(setup.backbone, setup.data, cfg("secret")));
  const energies = (d: unknown[][]) => d.map((x) => x[1]);
  assert.notDeepEqual(energies(secretA), energies(seeded));
  assert.notDeepEqual(energies(secretA), energies(secretB));

  // With a folder: the key is written once (mode 600) and read back by --resume, so two copies of
  // a run stopped after round 1 resume to the same records; without the key a resume is refused.
  const out = join(setup.dir, "secret-noise");
  await runFederated(setup.backbone, setup.data, cfg("secret"), {
    outDir: out,
    stopAfterRounds: 1,
  });
  const keyPath = join(out, "noise.key");
  const key = await Deno.readTextFile(keyPath);
  assert.match(key, /^[0-9a-f]{64}\n$/);
  if (Deno.build.os !== "windows") assert.equal(Deno.statSync(keyPath).mode! & 0o777, 0o600);
  const copies = [join(setup.dir, "secret-copy-1"), join(setup.dir, "secret-copy-2")];
  for (const c of copies) await copyTree(out, c);
  // One after the other: a record's liveTensors counts the process's tensors, and two runs at once
  // would count each other's.
  const resumed = [];
  for (const c of copies) {
    resumed.push(
      await runFederated(setup.backbone, setup.data, cfg("secret"), { outDir: c, resume: true }),
    );
  }
  assert.equal(resumed[0].records.length, 2);
  assert.deepEqual(resumed[1].records.map(stable), resumed[0].records.map(stable));
  assert.equal(await Deno.readTextFile(join(copies[0], "noise.key")), key, "the key is kept");
  const keyless = join(setup.dir, "secret-keyless");
  await copyTree(out, keyless);
  await Deno.remove(join(keyless, "noise.key"));
  await assert.rejects(
    runFederated(setup.backbone, setup.data, cfg("secret"), { outDir: keyless, resume: true }),
    /noise\.key is missing: the run draws its noise and cohorts from this secret key/,
  );
  assert.throws(
    () => validateConfig({ ...cfg(), dp: { ...dp, noise: "random" as "secret" } }),
    /noise random: need seeded .* or secret/,
  );
});

/** Copies a folder's files (one level of subfolders deep, as a seed folder has). */
async function copyTree(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isDirectory) await copyTree(join(from, e.name), join(to, e.name));
    else if (e.isFile && !e.name.startsWith(".lock")) {
      await Deno.copyFile(join(from, e.name), join(to, e.name));
    }
  }
}

Deno.test("resume: a saved ledger must be what the run's mechanism writes (δ, accountant, each release)", async () => {
  const cfg = config({
    method: { method: "DEeR" },
    rounds: 2,
    dp: { calibration: "strict", clip: 0.5, epsilon: 3 },
  });
  const out = join(setup.dir, "ledger-check");
  await runFederated(setup.backbone, setup.data, cfg, { outDir: out, stopAfterRounds: 1 });
  const state = JSON.parse(await Deno.readTextFile(join(out, "state.json")));
  const saved = restoreLedger(state.ledger, "state.json");
  const { calibration } = clientPlan(setup.data, cfg);
  const mechanism = createMechanism(calibration);
  const expect = {
    fresh: createLedger({
      delta: calibration!.accountingDelta,
      accountant: calibration!.accountant,
      localSites: calibration!.localSites,
    }),
    planned: (round: number, phase: "A" | "B" | "AB") => mechanism.plannedRecord(round, phase),
  };
  assert.equal(saved.releases.length, 2, "DEeR: two releases in round 1");
  assert.equal(ledgerMismatch(saved, expect), null);
  // A release edited consistently (σ and its noise std doubled) would lower the reported ε.
  const edited = structuredClone(saved);
  edited.releases[1].noiseMultiplier *= 2;
  edited.releases[1].noiseStd *= 2;
  assert.match(
    ledgerMismatch(edited, expect)!,
    /^release 1 \(round 1, phase A\) records noiseMultiplier [\d.]+; the run's mechanism makes [\d.]+, so an ε accounted from the saved ledger is not what the run spends/,
  );
  assert.match(
    ledgerMismatch({ ...saved, delta: 0.01 }, expect)!,
    /^accounts at δ 0\.01; the run's δ is 0\.00001$/,
  );
  assert.match(
    ledgerMismatch({ ...saved, accountant: undefined }, expect)!,
    /^uses the rdp accountant; the run's is pld$/,
  );
});

Deno.test("momentumLayoutError: the buffers of A and/or B per adapter, then the logit scale", () => {
  const dims = { adapters: 2, rank: 2, dIn: 3, dOut: 5 };
  assert.equal(momentumLayoutError([6, 6, 10, 10, 1], dims), null);
  assert.equal(momentumLayoutError([10, 10, 1], dims), null);
  assert.equal(momentumLayoutError([6, 6, 1], dims), null);
  assert.match(momentumLayoutError([6, 10, 1], dims)!, /^buffer 1 has 10 values; expected 6/);
  assert.match(momentumLayoutError([6, 6, 10, 10, 2], dims)!, /^buffer 4 has 2 values; expected 1/);
  assert.match(
    momentumLayoutError([1, 7], dims)!,
    /^2 buffers; expected 3 .* or 5 .* for 2 adapters/,
  );
});

Deno.test("simulation: faulty clients are excluded and recorded; weights renormalise", async () => {
  const res = await runFederated(setup.backbone, setup.data, config({ rounds: 1 }), {
    alterUpdate: ({ client }, update) => {
      if (client === 1) throw new Error("client crashed");
      if (client === 2) {
        return {
          ...update,
          factors: { ...update.factors, B: update.factors.B.map((b) => b.map(() => NaN)) },
        };
      }
      if (client === 3) {
        return { ...update, factors: { ...update.factors, A: update.factors.A.slice(1) } };
      }
      return update;
    },
  });
  const excluded = res.records[0].phases[0].excluded;
  assert.deepEqual(excluded.map((e) => e.client), [1, 2, 3]);
  assert.match(excluded[0].reason, /client crashed/);
  assert.match(excluded[1].reason, /non-finite/);
  assert.match(excluded[2].reason, /A factors; expected/);
  assert.ok(Number.isFinite(res.records[0].val.accuracy));
});

Deno.test("simulation: invalid settings are refused before any work", () => {
  const bad: [Partial<FederatedConfig>, RegExp][] = [
    [{ numClients: 0 }, /node_num 0/],
    [{ rounds: 0 }, /T 0/],
    [{ split: { iid: false, dirichletAlpha: 0 } }, /dirichlet_alpha 0/],
    [{ dp: { calibration: "strict", clip: 0, epsilon: 1 } }, /C 0/],
    [{ dp: { calibration: "strict", clip: 1, epsilon: -1 } }, /epsilon -1/],
    [{ method: { method: "nope" } }, /unknown method/],
    [
      {
        method: { method: "DEeR", eliminateDeviation: false },
        dp: { calibration: "strict", clip: 1, epsilon: 1 },
      },
      /private/,
    ],
    [
      { method: { method: "FedEx-LoRA" }, dp: { calibration: "strict", clip: 1, epsilon: 1 } },
      /un-noised/,
    ],
  ];
  for (const [over, re] of bad) assert.throws(() => validateConfig(config(over)), re);
});

Deno.test("simulation: a state file left by a kill before its clean-up is removed by the resumed run", async () => {
  const cfg = config({ method: { method: "LoRA" }, rounds: 3 });
  const out = join(setup.dir, "stale-state");
  await runFederated(setup.backbone, setup.data, cfg, { outDir: out, stopAfterRounds: 2 });
  // What a kill between writing state.json (round 2) and removing round 1's file leaves.
  await Deno.copyFile(
    join(out, "state-round-0002.safetensors"),
    join(out, "state-round-0001.safetensors"),
  );
  await runFederated(setup.backbone, setup.data, cfg, { outDir: out, resume: true });
  const states = [...Deno.readDirSync(out)].map((e) => e.name).filter((n) =>
    n.startsWith("state-round-")
  );
  assert.deepEqual(states, ["state-round-0003.safetensors"]);
});
