/**
 * The engine's round over the transport: {@link natsClients} is the coordinator's
 * `RunOptions.remote` (each phase's task to each participant's site, its release back, checked),
 * {@link runSite} a site's loop (take a task, train it with the engine's client step, publish the
 * release). The round itself stays `runFederated`'s, so records, ledger and checkpoints are those
 * of `deno task train` with the same settings.
 *
 * What travels: to a site, the global factors (and the dense merges of methods that merge into
 * the frozen weights) with the client index; from a site, the factors its phase releases (not
 * the others, which it got from the task unchanged) and the statistics the record needs (loss, norm before clipping, whether it was clipped). Under central
 * trust and strict calibration the coordinator recomputes the norm of each release (in product
 * space in a regulated phase, {@link releaseFault}) and refuses one above C·(1 + 1e-5).
 *
 * @module
 */
import type { SharedBackbone } from "../fl/backbone.ts";
import { allFinite, type Factor, type LoraDims, type LoraFactors, sqNorm } from "../fl/factors.ts";
import { productSpaceNorm } from "../privacy/clip.ts";
import type { PhaseRecord, RemoteClients } from "../fl/simulation.ts";
import type { ClientRelease } from "../privacy/mechanism.ts";
import type { ArraySpec, NamedArray } from "./codec.ts";
import type { TaskEnvelope } from "./protocol.ts";
import type { Coordinator, Refusal, Site } from "./transport.ts";
import { withHeartbeat } from "./transport.ts";
import { siteRelease, siteReport, type SiteRuntime } from "./site.ts";

/** Factors (and dense merges) as named arrays: `A.i`, `B.i`, `M.i`. */
export function factorArrays(f: LoraFactors, merged?: Float32Array[]): NamedArray[] {
  return [
    ...f.A.map((data, i) => ({ name: `A.${i}`, shape: [data.length], data })),
    ...f.B.map((data, i) => ({ name: `B.${i}`, shape: [data.length], data })),
    ...(merged ?? []).map((data, i) => ({ name: `M.${i}`, shape: [data.length], data })),
  ];
}

/** The factors (and merges) of named arrays written by {@link factorArrays}. */
export function arraysFactors(
  arrays: NamedArray[],
): { factors: LoraFactors; merged?: Float32Array[] } {
  const pick = (p: string) =>
    arrays.filter((a) => a.name.startsWith(`${p}.`))
      .sort((a, b) => Number(a.name.slice(2)) - Number(b.name.slice(2)))
      .map((a) => Float32Array.from(a.data));
  const merged = pick("M");
  return { factors: { A: pick("A"), B: pick("B") }, merged: merged.length ? merged : undefined };
}

/**
 * The arrays a release must hold: every factor the phase releases (default both), at the run's
 * rank, and nothing else.
 */
export function releaseSpec(
  dims: LoraDims,
  released: readonly Factor[] = ["A", "B"],
): ArraySpec[] {
  const one = (name: string, n: number) => ({ name, dtype: "float32" as const, shape: [n] });
  return [
    ...(released.includes("A")
      ? Array.from({ length: dims.adapters }, (_, i) => one(`A.${i}`, dims.rank * dims.dIn))
      : []),
    ...(released.includes("B")
      ? Array.from({ length: dims.adapters }, (_, i) => one(`B.${i}`, dims.dOut * dims.rank))
      : []),
  ];
}

/**
 * The released factors of a site's release (what it sends): the factors the phase does not
 * release are those of the task, unchanged, so they do not travel back.
 */
export function releasedOnly(f: LoraFactors, released: readonly Factor[]): LoraFactors {
  return { A: released.includes("A") ? f.A : [], B: released.includes("B") ? f.B : [] };
}

/** A site's release completed with the task's global factors for what the phase does not release. */
export function withUnreleased(
  sent: LoraFactors,
  global: LoraFactors,
  released: readonly Factor[],
): LoraFactors {
  return {
    A: released.includes("A") ? sent.A : global.A,
    B: released.includes("B") ? sent.B : global.B,
  };
}

/** Settings of the coordinator's side. */
export interface NatsClientsOptions {
  /** Site name of each client index. */
  sites: readonly string[];
  dims: LoraDims;
  /** How long a phase waits for its sites. */
  deadlineMs: number;
  /** Factors each phase releases and whether it is regulated (its bound is in product space). */
  phases: readonly { release: readonly ("A" | "B")[]; regulate: boolean }[];
  /** The clip bound every release is checked against (central trust, strict), or null. */
  clip: number | null;
  /** What every task carries besides its client index (the run's train flags, the seed). */
  settings?: Record<string, unknown>;
  /** Called with each refusal (the run folder records them). */
  onRefusal?: (r: Refusal | { site: string; reason: string; round: number; phase: number }) => void;
}

/**
 * Why a decoded release cannot be combined, or null: a non-finite value, or (when `clip` is set:
 * central trust, strict calibration) a norm above C·(1 + 1e-5), the float32 rounding the
 * mechanism's own check allows. The norm is that of the update `release − global` over the
 * released factors; in a regulated phase it is taken in product space (`productSpaceNorm`: ‖ΔB·A‖
 * in phase B, ‖B·ΔA‖ in phase A, the peer being the global factor the site started from), which
 * is where the strict mechanism clips it.
 */
export function releaseFault(
  factors: LoraFactors,
  global: LoraFactors,
  phase: { release: readonly ("A" | "B")[]; regulate: boolean },
  dims: LoraDims,
  clip: number | null,
): string | null {
  if (!allFinite(factors)) return "non-finite values in the release";
  if (clip === null) return null;
  const delta = (which: "A" | "B") =>
    factors[which].map((t, i) => {
      const g = global[which][i];
      const d = new Float32Array(t.length);
      for (let j = 0; j < t.length; j++) d[j] = t[j] - g[j];
      return d;
    });
  let norm: number;
  let where = "";
  if (phase.regulate) {
    if (phase.release.length !== 1) {
      throw new Error(
        `a regulated phase releasing ${phase.release.join(" and ")} has no client-level clip ` +
          `bound (strict calibration regulates one factor per phase: DEeR with module1 = 1)`,
      );
    }
    const which = phase.release[0];
    const peers = which === "B" ? global.A : global.B;
    norm = productSpaceNorm({
      phase: which,
      deltas: delta(which),
      peers,
      d: dims.dIn,
      dOut: dims.dOut,
      // The peers' rank: the global factors' (a client's own rank is not a strict setting).
      r: peers.length > 0 ? peers[0].length / (which === "B" ? dims.dIn : dims.dOut) : dims.rank,
    });
    where = " in product space";
  } else {
    let sq = 0;
    for (const which of phase.release) for (const d of delta(which)) sq += sqNorm(d);
    norm = Math.sqrt(sq);
  }
  return norm <= clip * (1 + 1e-5)
    ? null
    : `release norm${where} ${norm} above the clip bound C = ${clip}`;
}

/** The coordinator's remote clients over JetStream (see the module's notes). */
export function natsClients(coordinator: Coordinator, o: NatsClientsOptions): RemoteClients {
  const specs = o.phases.map((p) => releaseSpec(o.dims, p.release));
  return {
    async collect({ round, phaseIndex, participants, global, merged }) {
      const deadline = new Date(Date.now() + o.deadlineMs);
      const bySite = new Map(participants.map((k) => [o.sites[k], k]));
      await coordinator.sendTasks({
        round: round + 1,
        phase: phaseIndex,
        deadline,
        global: factorArrays(global, merged),
        tasks: participants.map((k) => ({
          site: o.sites[k],
          settings: { ...o.settings, client: k },
        })),
      });
      const got = await coordinator.collectPhase({
        round: round + 1,
        phase: phaseIndex,
        sites: [...bySite.keys()],
        deadline,
        spec: specs[phaseIndex],
      });
      for (const r of got.refused) o.onRefusal?.(r);
      const releases = new Map<number, { release: ClientRelease; loss: number }>();
      const excluded: PhaseRecord["excluded"] = [];
      const phase = o.phases[phaseIndex];
      for (const [site, result] of got.accepted) {
        const k = bySite.get(site)!;
        const factors = withUnreleased(
          arraysFactors(result.release.arrays).factors,
          global,
          phase.release,
        );
        const fault = releaseFault(factors, global, phase, o.dims, o.clip);
        const report = result.envelope.report as Record<string, unknown>;
        if (fault) {
          o.onRefusal?.({ site, reason: fault, round: round + 1, phase: phaseIndex });
          excluded.push({ client: k, reason: `release refused: ${fault}` });
          continue;
        }
        releases.set(k, {
          loss: Number(report.loss),
          release: {
            client: k,
            factors,
            weight: 0,
            updateNorm: Number(report.updateNorm),
            clipped: report.clipped === true,
            releaseNorm: Number(report.releaseNorm ?? 0),
            peerSigmaMax: Number(report.peerSigmaMax ?? 0),
            peerSigmaMaxes: Array.isArray(report.peerSigmaMaxes)
              ? report.peerSigmaMaxes.map(Number)
              : undefined,
          },
        });
      }
      for (const site of got.missing) {
        excluded.push({ client: bySite.get(site)!, reason: "no result by the phase's deadline" });
      }
      excluded.sort((a, b) => a.client - b.client);
      return { releases, excluded };
    },
  };
}

/**
 * A site's loop: takes its tasks one by one, trains each with the engine's client step while
 * heartbeating the lease, publishes the release. Returns after `maxTasks` tasks, or when no task
 * came for `idleMs`, or when `signal` is aborted.
 */
export async function runSite(
  site: Site,
  backbone: SharedBackbone,
  runtime: SiteRuntime,
  opts: {
    heartbeatMs: number;
    idleMs: number;
    maxTasks?: number;
    signal?: AbortSignal;
    log?: (s: string) => void;
    /**
     * Whether a task belongs to the run `runtime` was built for. A task of another run (another
     * run id or other settings) is given back untouched and the loop returns, so that the caller
     * builds that run's runtime (`federation join` does) instead of training it with this one's
     * config, calibration and data split.
     */
    sameRun?: (task: TaskEnvelope) => boolean;
  },
): Promise<number> {
  let done = 0;
  let idleSince = Date.now();
  while (!opts.signal?.aborted && (opts.maxTasks === undefined || done < opts.maxTasks)) {
    const lease = await site.nextTask(2000);
    if (!lease) {
      if (Date.now() - idleSince > opts.idleMs) break;
      continue;
    }
    if (opts.sameRun && !opts.sameRun(lease.task)) {
      lease.giveBack();
      opts.log?.(`a task of another run (${lease.task.run}): rebuilding the site for it`);
      break;
    }
    const client = Number(lease.task.settings.client);
    if (client !== runtime.client) {
      throw new Error(
        `task for client ${client} on the site of client ${runtime.client}: the coordinator's ` +
          `sites list and this site's --site do not match`,
      );
    }
    const { factors, merged } = arraysFactors((await lease.global()).arrays);
    const { release, loss } = await withHeartbeat(
      lease,
      opts.heartbeatMs,
      () =>
        siteRelease(backbone, runtime, {
          round: lease.task.round - 1,
          phaseIndex: lease.task.phase,
          global: factors,
          merged,
          run: lease.task.run,
        }),
    );
    // Only what the phase releases travels back (the rest is the task's, unchanged).
    const released = runtime.method.phases[lease.task.phase].release;
    await lease.publishResult(
      factorArrays(releasedOnly(release.factors, released)),
      siteReport(runtime, release, loss),
    );
    opts.log?.(
      `round ${lease.task.round} phase ${lease.task.phase}: release sent (attempt ${lease.attempt})`,
    );
    done++;
    idleSince = Date.now();
  }
  return done;
}
