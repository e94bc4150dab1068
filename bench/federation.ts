/**
 * `deno task bench-federation` — what the cross-site federation costs, measured on loopback over
 * TLS with a real nats-server started by the toolkit's launcher (`startNatsServer`, the code of
 * `deno task federation server`):
 *
 * * **demo**: the demo configuration (embedded default data and model, DEeR with strict DP,
 *   K = `--sites` sites, T = `--rounds`, seed `--seed`) run twice — `deno task train` in one
 *   process, and `deno task federation serve` with K `join --part` processes. It reports the
 *   encoded bytes per round per site each way, counted by the coordinator from the messages and
 *   blobs it actually sent and took (`Coordinator.traffic`, written by `serve` to
 *   `traffic.json`), the round times of both runs (each run's own `records.jsonl`), the wall time
 *   of each run, the peak memory and CPU time of every process, and whether the two runs'
 *   records, ledger and checkpoints are identical (`tools/compare_runs.ts`).
 * * **vit**: ViT-B/16 factor sizes (12 blocks × q, k, v adapters, d = 768, r = 8 and 16;
 *   synthetic factors of those shapes, as no ViT-B/16 training fits a small machine): the bytes of
 *   one task (the global A and B) and one release (what `runSite` publishes: every factor), and
 *   the time of one task and one release through the transport, median of `--reps` after one
 *   unmeasured warm-up.
 *
 * It prints a table and, with `--json PATH`, writes every figure to PATH.
 *
 * Flags: `--only demo,vit` (default both), `--sites 12`, `--rounds 2`, `--seed 10`, `--reps 3`,
 * `--json PATH`, `--max-wait S` (longest wait for the 1-minute load average to drop to 1.5
 * before each timed part; default 30), `--keep` (keep the work folder and print it).
 *
 * On a 2-core machine the K site processes contend for the cores (and each loads the model and
 * data once): the federation's round times there say what the transport and the processes cost
 * together, not what K machines would take.
 * @module
 */
import { join } from "node:path";
import { noPositionals, parseCommandArgs, usageExit } from "../lib/cli.ts";
import { startNatsServer } from "../lib/federation/server.ts";
import {
  connectFederation,
  openCoordinator,
  openSite,
  type Traffic,
} from "../lib/federation/transport.ts";
import { arraysFactors, factorArrays, releaseSpec } from "../lib/federation/remote.ts";
import type { LoraFactors } from "../lib/fl/factors.ts";
import { compareRuns } from "../tools/compare_runs.ts";
import { loadAverage, median, round, waitForLowLoad } from "./measure.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const USAGE = `Usage: deno task bench-federation [flags]   (needs nats-server on the PATH)
  What cross-site federation costs, on loopback over TLS: bytes per round per site, round and
  wall times, peak memory and CPU of every process, and whether the federated run's records
  equal \`deno task train\`'s (demo), and ViT-B/16 factor sizes through the transport (vit).
  --only demo,vit   the parts (default both)
  --sites K         sites of the demo run (default 12)
  --rounds T        rounds of the demo run (default 2)
  --seed S          its seed (default 10)
  --reps N          timed repetitions of the vit part (default 3)
  --json PATH       also write every figure to PATH
  --max-wait S      longest wait for a load average ≤ 1.5 before a timed part (default 30)
  --keep            keep the work folder and print it`;
const flags = parseCommandArgs("bench-federation", USAGE, Deno.args, {
  string: ["only", "sites", "rounds", "seed", "reps", "json", "max-wait"],
  boolean: ["keep"],
}, noPositionals);
const int = (name: string, fallback: number, min: number) => {
  const v = Number(flags[name] ?? fallback);
  if (!(Number.isInteger(v) && v >= min)) {
    usageExit("bench-federation", `--${name} ${flags[name]}: need an integer ≥ ${min}`);
  }
  return v;
};
const K = int("sites", 12, 1);
const T = int("rounds", 2, 1);
const SEED = int("seed", 10, 0);
const REPS = int("reps", 3, 1);
const MAX_WAIT = int("max-wait", 30, 0);
const only = String(flags.only ?? "demo,vit").split(",").map((s) => s.trim());
for (const o of only) {
  if (!["demo", "vit"].includes(o)) {
    usageExit("bench-federation", `--only ${o}: use demo, vit or demo,vit`);
  }
}
const SITES = Array.from({ length: K }, (_, i) => `site-${String(i + 1).padStart(2, "0")}`);
const work = await Deno.makeTempDir({ prefix: "deer-bench-federation-" });
const log = (s: string) => console.error(`bench federation: ${s}`);

/** Peak resident memory (VmHWM) and CPU seconds (user + system) of a live process, or null. */
function procStats(pid: number): { peakMiB: number; cpuS: number } | null {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const hwm = Number(status.match(/^VmHWM:\s+(\d+) kB/m)?.[1] ?? NaN);
    if (!Number.isFinite(hwm)) return null; // exited, not yet reaped: keep the last sample
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = 100; // USER_HZ on Linux
    return { peakMiB: hwm / 1024, cpuS: (Number(f[11]) + Number(f[12])) / ticks };
  } catch {
    return null;
  }
}

/** A child process whose stdout and stderr go to files; stats sampled while it lives. */
interface Child {
  name: string;
  proc: Deno.ChildProcess;
  stats: { peakMiB: number; cpuS: number } | null;
  done: Promise<Deno.CommandStatus>;
  exited: boolean;
  out: string;
  err: string;
}

function spawn(name: string, args: string[]): Child {
  const out = join(work, `${name}.out`);
  const err = join(work, `${name}.err`);
  // The shell redirects to the files (readable while the process runs) and execs deno, so the
  // PID is deno's own.
  const proc = new Deno.Command("sh", {
    args: [
      "-c",
      'out="$1"; err="$2"; shift 2; exec "$@" >"$out" 2>"$err"',
      "sh",
      out,
      err,
      Deno.execPath(),
      "run",
      "-A",
      ...args,
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "null",
    env: { NO_COLOR: "1" },
  }).spawn();
  const child: Child = { name, proc, stats: null, done: proc.status, exited: false, out, err };
  child.done.then(() => (child.exited = true));
  return child;
}

/** Samples every child's stats every 500 ms (the last sample before it exits is kept). */
function sampler(children: () => Child[]) {
  let maxTotalMiB = 0;
  const tick = () => {
    let total = 0;
    for (const c of children()) {
      const s = procStats(c.proc.pid);
      if (s) c.stats = s;
      try {
        const rss = Deno.readTextFileSync(`/proc/${c.proc.pid}/status`).match(
          /^VmRSS:\s+(\d+) kB/m,
        );
        total += Number(rss?.[1] ?? 0) / 1024;
      } catch { /* exited */ }
    }
    maxTotalMiB = Math.max(maxTotalMiB, total);
  };
  const timer = setInterval(tick, 500);
  return {
    tick,
    stop: () => clearInterval(timer),
    get maxTotalMiB() {
      return maxTotalMiB;
    },
  };
}

const text = (path: string) => Deno.readTextFile(path).catch(() => "");
const resultsOf = async (c: Child) => (await text(c.out)).match(/^results: (.+)$/m)?.[1] ?? null;
const tail = async (c: Child) => (await text(c.err)).trim().split("\n").slice(-15).join("\n");
const roundSeconds = async (runDir: string) =>
  (await Deno.readTextFile(join(runDir, `seed-${SEED}`, "records.jsonl"))).trim().split("\n")
    .map((l) => JSON.parse(l) as { round: number; seconds: number })
    .map((r) => round(r.seconds, 2));

/** The demo configuration: train in one process, then serve + K join processes. */
async function demo() {
  const train = {
    method: "DEeR",
    is_DP: 1,
    calibration: "strict",
    T,
    seeds: String(SEED),
    exp_name: "bench",
  };
  const trainArgs = Object.entries({ ...train, node_num: K }).map(([k, v]) => `--${k}=${v}`);

  const loadTrain = await waitForLowLoad(1.5, MAX_WAIT);
  log(`train in one process (K = ${K}, T = ${T}, load ${loadTrain})`);
  let t0 = performance.now();
  const trainChild = spawn("train", [
    "tasks/train.ts",
    ...trainArgs,
    `--out=${join(work, "train")}`,
  ]);
  const trainSampler = sampler(() => [trainChild]);
  const trainStatus = await trainChild.done;
  trainSampler.stop();
  const trainWall = (performance.now() - t0) / 1000;
  const trainDir = await resultsOf(trainChild);
  if (!trainStatus.success || !trainDir) {
    throw new Error(`train failed (exit ${trainStatus.code}):\n${await tail(trainChild)}`);
  }

  const server = await startNatsServer({ dir: join(work, "nats"), sites: SITES, monitor: true });
  log(`nats-server ${server.url} (pid ${server.pid}); ${K} join processes and serve`);
  const config = join(work, "config.json");
  await Deno.writeTextFile(
    config,
    JSON.stringify({ sites: SITES, train: { ...train, out: join(work, "serve") } }),
  );
  const sites: Child[] = [];
  let serveChild: Child | null = null;
  const all = () => [...sites, ...(serveChild ? [serveChild] : [])];
  const fedSampler = sampler(all);
  let serveWall = 0;
  let loadServe = 0;
  let wire: Awaited<ReturnType<typeof connz>> = new Map();
  try {
    loadServe = await waitForLowLoad(1.5, MAX_WAIT);
    t0 = performance.now();
    for (const site of SITES) {
      sites.push(
        spawn(site, [
          "tasks/federation.ts",
          "join",
          "--nats",
          server.url,
          "--creds",
          join(work, "nats", "creds", site),
          "--site",
          site,
          "--data",
          "default",
          "--part",
          "--heartbeat",
          "5",
        ]),
      );
    }
    serveChild = spawn("serve", [
      "tasks/federation.ts",
      "serve",
      "--nats",
      server.url,
      "--creds",
      join(work, "nats", "creds", "coordinator"),
      "--config",
      config,
      "--lease",
      "120",
      "--deadline",
      "600",
    ]);
    const limit = setTimeout(() => {
      log("serve ran past 15 minutes; stopping it");
      serveChild?.proc.kill("SIGKILL");
    }, 15 * 60_000);
    // A site that exits before serve does is a failed run: stop at once with its log.
    const early = Promise.race(sites.map((c) => c.done.then(() => c)));
    const first = await Promise.race([serveChild.done.then(() => null), early]);
    if (first !== null && !serveChild.exited) {
      clearTimeout(limit);
      serveChild.proc.kill("SIGTERM");
      await serveChild.done;
      throw new Error(
        `${first.name} exited (code ${(await first.done).code}) while serve ran:\n` +
          (await tail(first)),
      );
    }
    const status = await serveChild.done;
    clearTimeout(limit);
    serveWall = (performance.now() - t0) / 1000;
    if (!status.success) {
      throw new Error(`serve failed (exit ${status.code}):\n${await tail(serveChild)}`);
    }
    fedSampler.tick();
    // The server's own count, the sites still connected (the coordinator's connection closed).
    wire = await connz(server.monitorUrl!);
  } finally {
    fedSampler.stop();
    for (const s of sites) {
      s.stats = procStats(s.proc.pid) ?? s.stats;
      try {
        s.proc.kill("SIGTERM");
      } catch { /* gone */ }
    }
    for (const s of sites) await s.done;
    await server.stop();
  }
  const serveDir = (await resultsOf(serveChild!))!;
  const traffic = JSON.parse(
    await Deno.readTextFile(join(serveDir, "traffic.json")),
  ) as (Traffic & { seed: number })[];
  const differences = compareRuns(join(trainDir, `seed-${SEED}`), join(serveDir, `seed-${SEED}`));

  // Bytes per round per site, each way (message + blob).
  const perRound = [];
  for (let r = 1; r <= T; r++) {
    const each = (direction: Traffic["direction"]) => {
      const bySite = SITES.map((s) =>
        traffic.filter((t) => t.round === r && t.site === s && t.direction === direction)
          .reduce((n, t) => n + t.message + t.blob, 0)
      );
      const inBlobs = traffic.filter((t) => t.round === r && t.direction === direction)
        .reduce((n, t) => n + t.blob, 0);
      const total = bySite.reduce((a, b) => a + b, 0);
      return {
        mean: round(total / K, 0),
        min: Math.min(...bySite),
        max: Math.max(...bySite),
        messages: traffic.filter((t) => t.round === r && t.direction === direction).length,
        blobFraction: round(total ? inBlobs / total : 0, 3),
      };
    };
    perRound.push({ round: r, toSite: each("to-site"), fromSite: each("from-site") });
  }
  // The whole run at the server: every message of a site's connection (JetStream API, acks,
  // heartbeats, object-store chunks, the first task given back while the site loads its data).
  const payloadRun = (site: string, direction: Traffic["direction"]) =>
    traffic.filter((t) => t.site === site && t.direction === direction)
      .reduce((n, t) => n + t.message + t.blob, 0);
  const wireRun = SITES.map((s) => {
    const w = wire.get(`deer-${s}`);
    return {
      site: s,
      toSite: w?.outBytes ?? NaN,
      fromSite: w?.inBytes ?? NaN,
      msgsToSite: w?.outMsgs ?? NaN,
      msgsFromSite: w?.inMsgs ?? NaN,
      payloadToSite: payloadRun(s, "to-site"),
      payloadFromSite: payloadRun(s, "from-site"),
    };
  });
  const sum = (f: (w: (typeof wireRun)[number]) => number) => wireRun.reduce((n, w) => n + f(w), 0);
  const stat = (xs: number[]) => ({
    median: round(median(xs), 1),
    min: round(Math.min(...xs), 1),
    max: round(Math.max(...xs), 1),
  });
  const siteStats = sites.map((s) => s.stats).filter((s) => s !== null);
  return {
    config: { sites: K, rounds: T, seed: SEED, train: { ...train, node_num: K } },
    bytesPerRoundPerSite: perRound,
    wirePerSiteOverRun: {
      note: "nats-server's /connz in_bytes/out_bytes of each site's connection over the whole " +
        "run (setup included), against the payload bytes the coordinator counted",
      toSiteMean: round(sum((w) => w.toSite) / K, 0),
      fromSiteMean: round(sum((w) => w.fromSite) / K, 0),
      toSiteOverPayload: round(sum((w) => w.toSite) / sum((w) => w.payloadToSite), 3),
      fromSiteOverPayload: round(sum((w) => w.fromSite) / sum((w) => w.payloadFromSite), 3),
      msgsToSiteMean: round(sum((w) => w.msgsToSite) / K, 1),
      msgsFromSiteMean: round(sum((w) => w.msgsFromSite) / K, 1),
      sites: wireRun,
    },
    roundSeconds: { train: await roundSeconds(trainDir), serve: await roundSeconds(serveDir) },
    wallSeconds: { train: round(trainWall, 1), serveWithSites: round(serveWall, 1) },
    load: { beforeTrain: loadTrain, beforeServe: loadServe, after: loadAverage() },
    processes: {
      train: trainChild.stats,
      serve: serveChild!.stats,
      sitePeakMiB: stat(siteStats.map((s) => s.peakMiB)),
      siteCpuS: stat(siteStats.map((s) => s.cpuS)),
      maxTotalRssMiB: round(fedSampler.maxTotalMiB, 0),
    },
    identicalToTrain: differences.length === 0,
    differences: differences.slice(0, 10),
  };
}

/** Bytes and messages per connection name, from nats-server's monitoring endpoint. */
async function connz(url: string) {
  const res = await fetch(`${url}/connz?state=all&limit=4096`);
  if (!res.ok) throw new Error(`${url}/connz: HTTP ${res.status}`);
  const body = await res.json() as {
    connections: {
      name?: string;
      in_bytes: number;
      out_bytes: number;
      in_msgs: number;
      out_msgs: number;
    }[];
  };
  const out = new Map<
    string,
    { inBytes: number; outBytes: number; inMsgs: number; outMsgs: number }
  >();
  for (const c of body.connections) {
    const e = out.get(c.name ?? "") ?? { inBytes: 0, outBytes: 0, inMsgs: 0, outMsgs: 0 };
    e.inBytes += c.in_bytes;
    e.outBytes += c.out_bytes;
    e.inMsgs += c.in_msgs;
    e.outMsgs += c.out_msgs;
    out.set(c.name ?? "", e);
  }
  return out;
}

/** Random factors of ViT-B/16's LoRA shapes (A: r×768, B: 768×r per adapter). */
function vitFactors(adapters: number, r: number, d: number, seed: number): LoraFactors {
  let s = seed >>> 0;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5;
  const fill = (n: number, scale: number) => Float32Array.from({ length: n }, () => next() * scale);
  return {
    A: Array.from({ length: adapters }, () => fill(r * d, 0.05)),
    B: Array.from({ length: adapters }, () => fill(d * r, 0.01)),
  };
}

/** One task and one release of ViT-B/16 sizes through the transport, per rank. */
async function vit() {
  const dir = join(work, "nats-vit");
  const server = await startNatsServer({ dir, sites: ["site-a"] });
  const nc = await connectFederation(server.url, server.credentials("coordinator"));
  const ns = await connectFederation(server.url, server.credentials("site-a"));
  const out = [];
  try {
    for (const r of [8, 16]) {
      const dims = { adapters: 36, rank: r, dIn: 768, dOut: 768 };
      const coordinator = await openCoordinator(nc, {
        run: `vit-r${r}`,
        sites: ["site-a"],
        leaseMs: 60_000,
      });
      const site = await openSite(ns, "site-a");
      const global = vitFactors(dims.adapters, r, 768, r);
      const down: number[] = [];
      const up: number[] = [];
      const load = await waitForLowLoad(1.5, MAX_WAIT);
      for (let rep = 0; rep <= REPS; rep++) {
        const roundNo = rep + 1; // round 1 is the warm-up
        let t = performance.now();
        await coordinator.sendTasks({
          round: roundNo,
          phase: 0,
          deadline: new Date(Date.now() + 60_000),
          global: factorArrays(global),
          tasks: [{ site: "site-a", settings: { client: 0 } }],
        });
        const lease = await site.nextTask(10_000);
        if (!lease) throw new Error(`ViT r=${r}: the task did not come`);
        const got = arraysFactors((await lease.global()).arrays).factors;
        const tDown = performance.now() - t;
        // The release as runSite publishes it: the factor the phase releases (B), alone.
        const release = { A: [], B: got.B.map((b) => b.map((v) => v * 1.01)) };
        t = performance.now();
        await lease.publishResult(factorArrays(release), {
          loss: 0,
          updateNorm: 0.5,
          clipped: true,
          releaseNorm: 0.5,
          peerSigmaMax: 0,
        });
        const outcome = await coordinator.takeResult(
          { round: roundNo, phase: 0 },
          releaseSpec(dims, ["B"]),
          10_000,
        );
        const tUp = performance.now() - t;
        if (outcome?.status !== "accepted") {
          throw new Error(`ViT r=${r}: release not accepted: ${JSON.stringify(outcome)}`);
        }
        const back = arraysFactors(outcome.result.release.arrays).factors;
        if (!back.B.every((b, i) => b.every((v, j) => v === release.B[i][j]))) {
          throw new Error(`ViT r=${r}: the release came back changed`);
        }
        if (rep > 0) {
          down.push(tDown);
          up.push(tUp);
        }
      }
      const traffic = coordinator.traffic().filter((t) => t.round === 2);
      const bytes = (d: Traffic["direction"]) => {
        const e = traffic.find((t) => t.direction === d)!;
        return { message: e.message, blob: e.blob, total: e.message + e.blob };
      };
      const factorBytes = 4 * dims.adapters * r * 768;
      out.push({
        rank: r,
        adapters: dims.adapters,
        width: 768,
        rawBytes: { onefactor: factorBytes, bothFactors: 2 * factorBytes },
        task: bytes("to-site"),
        release: bytes("from-site"),
        ms: {
          task: round(median(down), 1),
          release: round(median(up), 1),
          total: round(median(down.map((d, i) => d + up[i])), 1),
          taskAll: down.map((x) => round(x, 1)),
          releaseAll: up.map((x) => round(x, 1)),
        },
        reps: REPS,
        load: Math.max(load, loadAverage()),
      });
    }
  } finally {
    await nc.close();
    await ns.close();
    await server.stop();
  }
  return out;
}

const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
const pad = (cells: string[], widths: number[]) =>
  cells.map((c, i) => c.padEnd(widths[i])).join("  ");

const result: Record<string, unknown> = {
  machine: {
    cores: navigator.hardwareConcurrency,
    memTotalGiB: round(Deno.systemMemoryInfo().total / 2 ** 30, 1),
    date: new Date().toISOString(),
  },
};
try {
  if (only.includes("vit")) {
    log(`ViT-B/16 factor sizes, r = 8 and 16, median of ${REPS}`);
    const v = await vit();
    result.vit = v;
    console.log(`\nViT-B/16 LoRA (36 adapters, d = 768), one task and one release, TLS loopback:`);
    const w = [4, 25, 25, 10, 10];
    console.log(
      pad(["r", "task bytes (blob)", "release bytes (blob)", "task ms", "release ms"], w),
    );
    for (const x of v) {
      console.log(pad([
        String(x.rank),
        `${kib(x.task.total)} (${kib(x.task.blob)})`,
        `${kib(x.release.total)} (${kib(x.release.blob)})`,
        String(x.ms.task),
        String(x.ms.release),
      ], w));
    }
  }
  if (only.includes("demo")) {
    const d = await demo();
    result.demo = d;
    console.log(
      `\nDemo configuration, DEeR strict, K = ${K} join processes, T = ${T}, seed ${SEED} ` +
        `(${navigator.hardwareConcurrency} cores):`,
    );
    const w = [6, 26, 26, 10, 10];
    console.log(pad([
      "round",
      "coordinator→site / site",
      "site→coordinator / site",
      "serve s",
      "train s",
    ], w));
    for (const r of d.bytesPerRoundPerSite) {
      console.log(pad([
        String(r.round),
        `${kib(r.toSite.mean)} (${r.toSite.messages} msgs)`,
        `${kib(r.fromSite.mean)} (${r.fromSite.messages} msgs)`,
        String(d.roundSeconds.serve[r.round - 1]),
        String(d.roundSeconds.train[r.round - 1]),
      ], w));
    }
    const wr = d.wirePerSiteOverRun;
    console.log(
      `at the server, per site over the whole run (setup included): ${kib(wr.toSiteMean)} to ` +
        `the site (${wr.toSiteOverPayload}× the payload), ${kib(wr.fromSiteMean)} from it ` +
        `(${wr.fromSiteOverPayload}×); ${wr.msgsToSiteMean} and ${wr.msgsFromSiteMean} messages`,
    );
    console.log(
      `wall: train ${d.wallSeconds.train} s; serve + ${K} sites ${d.wallSeconds.serveWithSites} s` +
        ` (processes started to serve's exit); site peak RSS median ${d.processes.sitePeakMiB.median}` +
        ` MiB, all processes together at most ${d.processes.maxTotalRssMiB} MiB; site CPU median ` +
        `${d.processes.siteCpuS.median} s; records, ledger, checkpoints identical to train: ` +
        `${d.identicalToTrain}`,
    );
  }
} catch (err) {
  log(`failed; the work folder with every process's log is kept: ${work}`);
  throw err;
} finally {
  if (flags.keep) log(`work folder kept: ${work}`);
}
if (!flags.keep) await Deno.remove(work, { recursive: true }).catch(() => {});
if (flags.json) {
  await Deno.writeTextFile(String(flags.json), JSON.stringify(result, null, 2) + "\n");
  log(`wrote ${flags.json}`);
}
