/**
 * The run folder under adversarial use, through real `tasks/train.ts` subprocesses on the toy
 * set: one run at a time per folder (a lock naming its holder), a resume that trusts no saved
 * file it has not checked (schema, cross-checks, paths, input fingerprints), safe experiment
 * names, replacing an old run whole, a clean resumable stop on SIGTERM or when the parent
 * process dies, and file-system errors that say what to do.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { explainFailure, parseTrainArgs } from "../tasks/train.ts";
import { UsageError } from "../lib/cli.ts";
import { acquireRunLock, LOCK_FILE, lockHolder, RunLockedError } from "../lib/io/lock.ts";
import { fingerprint } from "../lib/io/fingerprint.ts";
import { describeFsError } from "../lib/io/run_folder.ts";
import {
  listTree,
  REPO,
  runTrain,
  TINY_MODEL,
  TRAIN_TASK,
  trainCommand,
  type TrainRun,
  writeSafetensorsVariant,
  writeToyNpz,
} from "./helpers/reliability_inputs.ts";

const dir = await Deno.makeTempDir({ prefix: "deer-run-folder-" });
const data = await writeToyNpz(join(dir, "toy.npz"));
const RUN = "default/DEeR_m1-1_m2-1_dp-strict-eps3";

/** DEeR, strict DP (a ledger to check), two clients, rank 2, `rounds` rounds, seeds `seeds`. */
function args(out: string, rounds: number, more: string[] = [], seeds = "10"): string[] {
  return [
    ...["--dataset", data, "--model", TINY_MODEL, "--prototypes", "orthonormal"],
    ...["--T", String(rounds), "--E", "1", "--node_num", "2", "--lora_r", "2"],
    ...["--batchsize", "8", "--seeds", seeds, "--is_DP", "1", "--calibration", "strict"],
    ...["--epsilon", "3", "--out", out, ...more],
  ];
}

const train = (a: string[]) => runTrain(a, { backend: "wasm" });

function lines(path: string): string[] {
  if (!existsSync(path)) return [];
  return Deno.readTextFileSync(path).split("\n").filter((l) => l.trim() !== "");
}

const roundsIn = (path: string) => lines(path).map((l) => JSON.parse(l).round as number);
const upTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

async function until(ready: () => boolean, what: string, ms = 120_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ready()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** No raw runtime or OS text reached the user. */
function noRawErrors(run: TrainRun): void {
  for (
    const raw of [/os error \d+/, /Unexpected (end|token)/, /Cannot read properties/, /at file:/]
  ) {
    assert.doesNotMatch(run.stderr, raw, `raw error text in: ${run.stderr}`);
  }
}

function copyTree(from: string, to: string): void {
  Deno.mkdirSync(to, { recursive: true });
  for (const e of Deno.readDirSync(from)) {
    if (e.isDirectory) copyTree(join(from, e.name), join(to, e.name));
    else Deno.copyFileSync(join(from, e.name), join(to, e.name));
  }
}

/** Whether process `pid` is gone (or a zombie nobody reaped yet). */
function exited(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

Deno.test("run lock: a second run on a running run's folder exits 1 naming the holder; SIGTERM stops the first resumably", async () => {
  const out = join(dir, "locked");
  const records = join(out, RUN, "seed-10", "records.jsonl");
  const T = 100;
  const first = trainCommand(args(out, T), { backend: "wasm" }).spawn();
  const firstEnded = first.output();
  await until(() => lines(records).length >= 1, "the first round");
  const holder = JSON.parse(Deno.readTextFileSync(join(out, RUN, LOCK_FILE)));
  assert.equal(holder.pid, first.pid, "the lock names the running process");
  assert.equal(holder.host, Deno.hostname());
  assert.ok(!Number.isNaN(Date.parse(holder.started)), "with its start time");

  for (const extra of [["--resume"], ["--overwrite"]]) {
    const second = await train(args(out, T, extra));
    assert.equal(second.code, 1, `${extra}: ${second.stderr}`);
    assert.match(second.stderr, new RegExp(`is in use by another run \\(pid ${first.pid} on host`));
    noRawErrors(second);
  }
  const stillRunning = roundsIn(records);
  assert.ok(stillRunning.length < T, "the first run was still running (make T larger)");

  first.kill("SIGTERM");
  const stopped = await firstEnded;
  const stderr = new TextDecoder().decode(stopped.stderr);
  assert.equal(stopped.code, 143, stderr);
  assert.match(
    stderr,
    /stopped by SIGTERM\. .* keeps every completed round \(seed 10: \d+ rounds?\); run the same command with --resume to continue/,
  );
  assert.ok(!existsSync(join(out, RUN, LOCK_FILE)), "the lock is released");
  const done = roundsIn(records);
  assert.deepEqual(done, upTo(done.length), "records 1..n in order, nothing interleaved");
  const state = JSON.parse(Deno.readTextFileSync(join(out, RUN, "seed-10", "state.json")));
  assert.equal(state.completedRounds, done.length, "the state is at the last recorded round");

  const resumed = await train(args(out, T, ["--resume"]));
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.deepEqual(roundsIn(records), upTo(T), "the resumed run finished: records 1..T");
  assert.ok(!existsSync(join(out, RUN, LOCK_FILE)), "released at the end");
});

Deno.test("run lock: a run whose lock file is deleted stops before its next write, the saved rounds intact", async () => {
  const out = join(dir, "lock-removed");
  const records = join(out, RUN, "seed-10", "records.jsonl");
  const T = 100;
  const run = trainCommand(args(out, T), { backend: "wasm" }).spawn();
  const ended = run.output();
  await until(() => lines(records).length >= 1, "the first round");
  // What a clean-up tool or a careless `rm` does: another run could now lock the folder anew.
  Deno.removeSync(join(out, RUN, LOCK_FILE));
  const result = await ended;
  const stderr = new TextDecoder().decode(result.stderr);
  assert.equal(result.code, 1, stderr);
  assert.match(
    stderr,
    /the lock file .*\.lock was removed or replaced by another process \(it is gone\); stopping so that two runs do not write the same folder/,
  );
  const done = roundsIn(records);
  assert.ok(done.length < T, "stopped before the end");
  assert.deepEqual(done, upTo(done.length), "records 1..n in order");
  const state = JSON.parse(Deno.readTextFileSync(join(out, RUN, "seed-10", "state.json")));
  assert.equal(state.completedRounds, done.length, "the state is at the last recorded round");
  // The stopped run is resumable: --resume takes a new lock and finishes.
  const resumed = await train(args(out, T, ["--resume"]));
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.deepEqual(roundsIn(records), upTo(T));
});

Deno.test("run lock: the lock of a killed run is detected as stale and taken over, with a message", async () => {
  const out = join(dir, "stale");
  const records = join(out, RUN, "seed-10", "records.jsonl");
  const child = trainCommand(args(out, 30), { backend: "wasm" }).spawn();
  const ended = child.output();
  await until(() => lines(records).length >= 1, "the first round");
  child.kill("SIGKILL");
  assert.equal((await ended).signal, "SIGKILL");
  assert.equal(
    JSON.parse(Deno.readTextFileSync(join(out, RUN, LOCK_FILE))).pid,
    child.pid,
    "the killed run's lock file stays",
  );
  assert.equal(await lockHolder(join(out, RUN)), null, "but nobody holds it");
  const resumed = await train(args(out, 30, ["--resume"]));
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(
    resumed.stderr,
    new RegExp(`took over the lock left by pid ${child.pid} on host .*, which ended without`),
  );
  assert.deepEqual(roundsIn(records), upTo(30));
});

Deno.test("run lock: acquireRunLock is exclusive, names the holder and releases on request", async () => {
  const folder = join(dir, "lock-unit", "run");
  const lock = await acquireRunLock(folder, { command: "test" });
  assert.equal(lock.takenOver, null);
  await assert.rejects(acquireRunLock(folder), (err: unknown) => {
    assert.ok(err instanceof RunLockedError);
    assert.equal(err.holder?.pid, Deno.pid);
    assert.match(err.message, new RegExp(`in use by another run \\(pid ${Deno.pid} on host`));
    return true;
  });
  assert.equal((await lockHolder(folder) as { pid: number }).pid, Deno.pid);
  lock.release();
  lock.release(); // idempotent
  assert.ok(!existsSync(join(folder, LOCK_FILE)));
  assert.equal(await lockHolder(folder), null);
  // A lock file nobody holds (its process died) is taken over and reported.
  const dead = { pid: 999999, host: "elsewhere", started: "2026-01-01T00:00:00Z", command: "x" };
  Deno.writeTextFileSync(join(folder, LOCK_FILE), JSON.stringify(dead));
  const again = await acquireRunLock(folder);
  assert.deepEqual(again.takenOver, dead);
  assert.equal(JSON.parse(Deno.readTextFileSync(join(folder, LOCK_FILE))).pid, Deno.pid);
  again.release();
});

/** A finished three-round run to edit; each case works on its own copy. */
const saved = join(dir, "saved");
let savedReady: Promise<TrainRun> | undefined;
function savedRun(): Promise<TrainRun> {
  savedReady ??= train(args(saved, 3));
  return savedReady;
}

interface Damage {
  name: string;
  edit: (seed: string) => void | Promise<void>;
  message: RegExp;
}

const editJson = (path: string, edit: (v: Record<string, unknown>) => void) => {
  const v = JSON.parse(Deno.readTextFileSync(path));
  edit(v);
  Deno.writeTextFileSync(path, JSON.stringify(v));
};
const editLines = (path: string, edit: (l: string[]) => string[]) =>
  Deno.writeTextFileSync(path, edit(lines(path)).join("\n") + "\n");

const DAMAGES: Damage[] = [
  {
    name: "completedRounds as a string",
    edit: (s) => editJson(join(s, "state.json"), (v) => (v.completedRounds = "3")),
    message: /state\.json: "completedRounds" is "3"; expected an integer from 1 to 3/,
  },
  {
    name: "completedRounds −1",
    edit: (s) => editJson(join(s, "state.json"), (v) => (v.completedRounds = -1)),
    message: /state\.json: "completedRounds" is -1/,
  },
  {
    name: "state.json truncated",
    edit: (s) => {
      const p = join(s, "state.json");
      Deno.writeTextFileSync(p, Deno.readTextFileSync(p).slice(0, 40));
    },
    message: /state\.json: is not valid JSON/,
  },
  {
    name: "records reordered",
    edit: (s) => editLines(join(s, "records.jsonl"), (l) => [l[1], l[0], l[2]]),
    message: /records\.jsonl: line 1 is round 2; expected round 1/,
  },
  {
    name: "a record duplicated",
    edit: (s) => editLines(join(s, "records.jsonl"), (l) => [l[0], l[1], l[1]]),
    message: /records\.jsonl: line 3 is round 2; expected round 3/,
  },
  {
    name: "a record missing",
    edit: (s) => editLines(join(s, "records.jsonl"), (l) => l.slice(0, 2)),
    message: /records\.jsonl: holds 2 rounds but .*state\.json says 3 are complete/,
  },
  {
    name: "ledger null",
    edit: (s) => editJson(join(s, "state.json"), (v) => (v.ledger = null)),
    message: /state\.json: "ledger" is null, but the run spends a privacy budget/,
  },
  {
    name: "ledger emptied",
    edit: (s) =>
      editJson(join(s, "state.json"), (v) => {
        const l = v.ledger as { releases: unknown[]; rounds: unknown[] };
        l.releases = [];
        l.rounds = [];
      }),
    message: /state\.json: "ledger" closes rounds \[\]; expected 1\.\.3/,
  },
  {
    name: "tensorFile outside the folder",
    edit: (s) =>
      editJson(join(s, "state.json"), (v) => (v.tensorFile = "../../../../x.safetensors")),
    message:
      /state\.json: "tensorFile" is "\.\.\/\.\.\/\.\.\/\.\.\/x\.safetensors"; expected "state-round-0003\.safetensors"/,
  },
  {
    name: "state tensors a link out of the folder",
    edit: (s) => {
      const p = join(s, "state-round-0003.safetensors");
      const outside = join(dir, `outside-${crypto.randomUUID()}.safetensors`);
      Deno.renameSync(p, outside);
      Deno.symlinkSync(outside, p);
    },
    message: /state-round-0003\.safetensors: leads outside .*seed-10/,
  },
  {
    name: "state tensors truncated",
    edit: (s) => {
      const p = join(s, "state-round-0003.safetensors");
      Deno.writeFileSync(p, Deno.readFileSync(p).subarray(0, 100));
    },
    message: /state-round-0003\.safetensors: cannot be read as safetensors/,
  },
  {
    name: "a NaN in the state tensors",
    edit: async (s) => {
      const p = join(s, "state-round-0003.safetensors");
      await writeSafetensorsVariant(p, p, (plain) => {
        plain["global.0.B"].data[1] = NaN;
      });
    },
    message: /state-round-0003\.safetensors: tensor "global\.0\.B" holds NaN at index 1/,
  },
  {
    name: "a state tensor of the wrong size",
    edit: async (s) => {
      const p = join(s, "state-round-0003.safetensors");
      await writeSafetensorsVariant(p, p, (plain) => {
        const a = plain["global.1.A"];
        plain["global.1.A"] = { shape: [a.data.length - 1], data: a.data.slice(1) };
      });
    },
    message: /state-round-0003\.safetensors: tensor "global\.1\.A" has \d+ values; expected \d+/,
  },
  {
    name: "last checkpoint deleted",
    edit: (s) => Deno.removeSync(join(s, "checkpoints", "round-0003.safetensors")),
    message: /checkpoints\/round-0003\.safetensors: is missing/,
  },
  {
    name: "checkpoint of another round",
    edit: (s) =>
      Deno.copyFileSync(
        join(s, "checkpoints", "round-0002.safetensors"),
        join(s, "checkpoints", "round-0003.safetensors"),
      ),
    message: /round-0003\.safetensors: is labelled round "2" of seed "10"; expected round 3/,
  },
  {
    name: "config.json damaged",
    edit: (s) => Deno.writeTextFileSync(join(s, "..", "config.json"), "{"),
    message: /config\.json cannot be read \(.*\); it is damaged/,
  },
];

Deno.test("resume: edited or damaged state files are refused, naming the file and the fix", async (t) => {
  const first = await savedRun();
  assert.equal(first.code, 0, first.stderr);
  for (const [i, d] of DAMAGES.entries()) {
    await t.step(d.name, async () => {
      const out = join(dir, `damaged-${i}`);
      copyTree(saved, out);
      await d.edit(join(out, RUN, "seed-10"));
      const before = listTree(out);
      const run = await train(args(out, 3, ["--resume"]));
      assert.equal(run.code, 1, run.stderr);
      assert.match(run.stderr, d.message);
      assert.match(run.stderr, /start the run again with --overwrite instead of --resume/);
      noRawErrors(run);
      assert.deepEqual(listTree(out), before, "nothing is changed or left behind");
    });
  }
});

Deno.test("resume: a data file replaced at the same path is refused (SHA-256 fingerprints)", async () => {
  const first = await savedRun();
  assert.equal(first.code, 0, first.stderr);
  const config = JSON.parse(Deno.readTextFileSync(join(saved, RUN, "config.json")));
  const sha = (await fingerprint(data)).sha256;
  assert.equal(config.fingerprints.data.sha256, sha, "config.json holds the data's SHA-256");
  assert.equal(config.fingerprints.model.sha256, (await fingerprint(TINY_MODEL)).sha256);
  assert.equal(config.fingerprints.prototypes, null, "orthonormal prototypes: no file");
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", Deno.readFileSync(data)));
  assert.equal(sha, Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""));

  const out = join(dir, "changed");
  copyTree(saved, out);
  const original = Deno.readFileSync(data);
  try {
    // 24 → 36 training images at the same path.
    await writeToyNpz(data, {}, { counts: { train: 36, val: 6, test: 6 } });
    const run = await train(args(out, 3, ["--resume"]));
    assert.equal(run.code, 1, run.stderr);
    assert.match(
      run.stderr,
      /the inputs changed since the run saved in .*config\.json started \(data .*toy\.npz: sha256 [0-9a-f]{12}… \(\d+ bytes\) in the saved run, sha256 [0-9a-f]{12}… \(\d+ bytes\) now\)/,
    );
    assert.match(
      run.stderr,
      /put the original files back, or start the run again with --overwrite/,
    );
  } finally {
    Deno.writeFileSync(data, original);
  }
  const back = await train(args(out, 3, ["--resume"]));
  assert.equal(back.code, 0, `the original file back: resumes (${back.stderr})`);
});

Deno.test("--exp_name: only one safe folder name is accepted", async () => {
  for (
    const name of [
      "../../x",
      "",
      "a/b",
      "..",
      ".",
      ".hidden",
      "a\nb",
      "a\tb",
      "-x",
      "x".repeat(101),
      "a b",
    ]
  ) {
    assert.throws(
      () => parseTrainArgs(["--exp_name", name]),
      (err: unknown) => err instanceof UsageError && /^--exp_name /.test(err.message),
      JSON.stringify(name),
    );
  }
  for (const name of ["exp1", "oct_k12", "run-2.b", "ε6", "α=0.1,K=12"]) {
    assert.equal(parseTrainArgs(["--exp_name", name])?.expName, name);
  }
  const root = join(dir, "names", "a", "b");
  Deno.mkdirSync(root, { recursive: true });
  const run = await runTrain(args(root, 1, ["--exp_name", "../../x"]));
  assert.equal(run.code, 2, run.stderr);
  assert.match(run.stderr, /--exp_name "\.\.\/\.\.\/x": contains a path separator/);
  assert.deepEqual(listTree(join(dir, "names")), ["a", "a/b"], "nothing written anywhere");
});

Deno.test("starting again: refused without --resume or --overwrite; --overwrite replaces the old run whole", async () => {
  const out = join(dir, "replace");
  const first = await train(args(out, 3, [], "10,11"));
  assert.equal(first.code, 0, first.stderr);
  const before = listTree(out);
  const again = await train(args(out, 2));
  assert.equal(again.code, 2, again.stderr);
  assert.match(
    again.stderr,
    /already holds a run; add --resume to continue it, or --overwrite to replace it/,
  );
  assert.deepEqual(listTree(out), before, "refused: the old run is untouched");
  const both = await train(args(out, 2, ["--resume", "--overwrite"]));
  assert.equal(both.code, 2, both.stderr);
  assert.match(both.stderr, /give one of them/);

  const replaced = await train(args(out, 2, ["--overwrite"]));
  assert.equal(replaced.code, 0, replaced.stderr);
  const files = listTree(join(out, "default"));
  assert.deepEqual(
    files.filter((f) => !f.startsWith(`${RUN.split("/")[1]}/seed-10/`)),
    [
      RUN.split("/")[1],
      `${RUN.split("/")[1]}/config.json`,
      `${RUN.split("/")[1]}/seed-10`,
      `${RUN.split("/")[1]}/summary.json`,
    ],
    "no seed-11, no hidden folder of the old run",
  );
  assert.deepEqual(listTree(join(out, RUN, "seed-10", "checkpoints")), [
    "round-0001.safetensors",
    "round-0002.safetensors",
  ], "no later checkpoint of the old run");
  assert.ok(existsSync(join(out, RUN, "seed-10", "state-round-0002.safetensors")));
  assert.ok(!existsSync(join(out, RUN, "seed-10", "state-round-0003.safetensors")));
  assert.deepEqual(JSON.parse(Deno.readTextFileSync(join(out, RUN, "config.json"))).seeds, [10]);
});

/**
 * Starts train the way `npx … task train` does, two launchers deep: an outer shell (npx) runs an
 * inner one (`deno task`) in the background, which runs train and stays its parent. `nohup`
 * runs train under nohup.
 */
function launchTwoDeep(out: string, rounds: number, nohup = false) {
  const trainArgs = ["run", "-A", "--config", join(REPO, "deno.json"), TRAIN_TASK];
  const inner = `${nohup ? "nohup " : ""}"$@"; :`; // "; :" keeps the inner shell alive
  return new Deno.Command("sh", {
    args: [
      "-c",
      `sh -c '${inner}' inner "$@" & wait`,
      "outer",
      Deno.execPath(),
      ...trainArgs,
      ...args(out, rounds),
    ],
    cwd: REPO,
    env: { DEER_QUIET: "1", NO_COLOR: "1", DEER_BACKEND: "wasm" },
    stdout: "null",
    // Under nohup nothing may read train's output once the launcher is gone (as with a closed
    // terminal, which nohup redirects away from).
    stderr: nohup ? "null" : "piped",
  }).spawn();
}

Deno.test("launcher death: train stops cleanly when the command that launched it dies, releases the lock, and --resume finishes", async () => {
  const out = join(dir, "orphan");
  const records = join(out, RUN, "seed-10", "records.jsonl");
  const T = 100;
  const outer = launchTwoDeep(out, T);
  const outerEnded = outer.output();
  await until(() => lines(records).length >= 1, "the first round");
  const pid = JSON.parse(Deno.readTextFileSync(join(out, RUN, LOCK_FILE))).pid as number;
  outer.kill("SIGKILL");
  const t0 = Date.now();
  // stderr stays open until train itself exits (it inherited the pipe).
  const stderr = new TextDecoder().decode((await outerEnded).stderr);
  await until(() => exited(pid), "train to exit", 30_000);
  const stoppedAfter = Date.now() - t0;
  assert.ok(stoppedAfter < 10_000, `stopped within 10 s (${stoppedAfter} ms)`);
  assert.match(
    stderr,
    /stopped by the end of its launcher \(process \d+\)\. .*--resume to continue/,
  );
  const done = roundsIn(records);
  assert.ok(done.length < T, `stopped before the end (${done.length} of ${T} rounds)`);
  assert.deepEqual(done, upTo(done.length));
  assert.ok(!existsSync(join(out, RUN, LOCK_FILE)), "the lock is released");
  const resumed = await train(args(out, T, ["--resume"]));
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.doesNotMatch(resumed.stderr, /took over/, "no stale lock was left");
  assert.deepEqual(roundsIn(records), upTo(T));
});

Deno.test("launcher death: a run started under nohup outlives its launcher and finishes", async () => {
  const out = join(dir, "nohup");
  const records = join(out, RUN, "seed-10", "records.jsonl");
  const T = 30;
  const outer = launchTwoDeep(out, T, true);
  const outerEnded = outer.output();
  await until(() => lines(records).length >= 1, "the first round");
  outer.kill("SIGKILL");
  await outerEnded;
  await until(() => existsSync(join(out, RUN, "summary.json")), "the run to finish", 60_000);
  await until(() => !existsSync(join(out, RUN, LOCK_FILE)), "the lock to be released", 10_000);
  assert.deepEqual(roundsIn(records), upTo(T));
});

Deno.test("output folder errors: a file in the path, a dangling link, an over-long name, a folder the OS refuses", async (t) => {
  const file = join(dir, "a-file");
  Deno.writeTextFileSync(file, "x");
  const link = join(dir, "dangling");
  Deno.symlinkSync(join(dir, "no-such-target"), link);
  const cases: [string, string, RegExp][] = [
    ["a file in the path", join(file, "sub"), /--out: .*a-file is a file, not a folder/],
    [
      "a dangling symlink",
      link,
      /--out: .*dangling is a symbolic link to .*no-such-target, which does not exist/,
    ],
    [
      "an over-long name",
      join(dir, "n".repeat(300)),
      /--out: the name n{24}… .* is 300 bytes long; file systems allow 255/,
    ],
    [
      "a folder the OS refuses (/sys)",
      "/sys/deer-run-folder-test",
      /cannot write .*deer-run-folder-test.*: (permission denied|the file system is read-only)/,
    ],
  ];
  for (const [name, out, message] of cases) {
    await t.step(name, async () => {
      const run = await runTrain(args(out, 1));
      assert.equal(run.code, 1, run.stderr);
      assert.match(run.stderr, message);
      noRawErrors(run);
    });
  }
  assert.ok(!existsSync(join(dir, "no-such-target")), "nothing was created behind the link");
});

Deno.test("output folder errors: a full disk (a real ENOSPC) says that --resume continues once space is freed", async () => {
  let enospc: unknown;
  try {
    await Deno.writeFile("/dev/full", new Uint8Array(16));
  } catch (err) {
    enospc = err;
  }
  assert.ok(enospc, "/dev/full refused the write");
  const lib = describeFsError(enospc, "results/x/run");
  assert.match(lib, /cannot write \/dev\/full: the disk \(or your quota\) is full/);
  assert.match(lib, /free some space, then run the same command with resume to continue/);
  const cli = explainFailure(enospc, "results/x/run");
  assert.equal(cli.code, 1);
  assert.match(
    cli.message,
    /rounds already saved in results\/x\/run are complete: free some space, then run the same command with --resume to continue/,
  );
});

/** Runs `mount ARGS`; false where it is refused (not root) or missing. */
const mount = (margs: string[]) =>
  new Deno.Command("mount", { args: margs, stdout: "null", stderr: "null" }).output()
    .then((o) => o.success).catch(() => false);

/**
 * Mounts a tmpfs with `options` on a new folder `name` of the test folder and runs `body` on it,
 * unmounting after; where mounting is refused (it needs root, CAP_SYS_ADMIN) it says that `what`
 * is not checked and returns.
 */
async function withTmpfs(
  name: string,
  options: string,
  what: string,
  body: (mountPoint: string) => Promise<void>,
): Promise<void> {
  const at = join(dir, name);
  Deno.mkdirSync(at);
  if (!(await mount(["-t", "tmpfs", "-o", options, "tmpfs", at]))) {
    console.log(`cannot mount a tmpfs here (needs root): ${what} is not checked`);
    return;
  }
  try {
    await body(at);
  } finally {
    await new Deno.Command("umount", { args: [at] }).output();
  }
}

Deno.test("output folder errors: a read-only file system (a real EROFS) is said in words", async () => {
  await withTmpfs("read-only", "ro,size=64k", "the read-only run", async (ro) => {
    const run = await train(args(join(ro, "results"), 1));
    assert.equal(run.code, 1, run.stderr);
    assert.match(
      run.stderr,
      /cannot write .*read-only\/results.*: the file system is read-only; choose a results folder on a writable disk/,
    );
    noRawErrors(run);
  });
});

Deno.test("output folder errors: a run that fills its disk stops with the saved rounds intact, and --resume continues once space is freed", async () => {
  // A real full file system: a 128 KiB tmpfs. Mounting needs root (CAP_SYS_ADMIN); where it is
  // refused, only the mapping of a real ENOSPC (the test above) is checked.
  await withTmpfs("small", "size=128k", "the full-disk run", async (small) => {
    const T = 60;
    const seed = join(small, RUN, "seed-10");
    const full = await train(args(small, T));
    assert.equal(full.code, 1, full.stderr);
    assert.match(
      full.stderr,
      /the disk \(or your quota\) is full \(No space left on device\)\. The rounds already saved in .* are complete: free some space, then run the same command with --resume to continue/,
    );
    noRawErrors(full);
    const done = roundsIn(join(seed, "records.jsonl"));
    assert.ok(done.length > 0 && done.length < T, `the disk filled mid-run (${done.length})`);
    const state = JSON.parse(Deno.readTextFileSync(join(seed, "state.json")));
    assert.ok(
      done.length - state.completedRounds <= 1,
      "at most the torn round's record is ahead of the state",
    );
    assert.deepEqual(listTree(small).filter((f) => f.endsWith(".tmp")), [], "no temporary files");
    assert.ok(await mount(["-o", "remount,size=16m", small]), "remount larger");
    const resumed = await train(args(small, T, ["--resume"]));
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.deepEqual(roundsIn(join(seed, "records.jsonl")), upTo(T));
  });
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch {
    // already gone
  }
});
