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
  /**
   * The run's DP calibration (null: no DP). It says what a site's report must hold
   * ({@link reportFault}): under "local", nothing the coordinator uses (it holds no un-noised
   * statistic); otherwise the loss, the norms and whether the release was clipped, and under
   * "paper", in a regulated phase, the σ_max of each released tensor's peer (the ledger's
   * sensitivity). Unset: an empty report is taken as a local-trust one, and any other is checked
   * for what it holds.
   */
  calibration?: "paper" | "strict" | "local" | null;
  /**
   * Per-client LoRA ranks, as the run's config gives them (client k trains rank
   * `clientRanks[k % length]`: FLoRA); absent: every client releases the backbone's rank.
   */
  clientRanks?: readonly number[];
}

/** The statistics of a site's report the coordinator uses, checked. */
export interface SiteStatistics {
  loss: number;
  /** Steps the site took; absent when its report did not say. */
  steps?: number;
  updateNorm: number;
  clipped: boolean;
  releaseNorm: number;
  peerSigmaMax: number;
  peerSigmaMaxes?: number[];
}

/** A report's numbers need only be finite and ≥ 0 … */
const isNonNegative = (v: unknown): v is number =>
  typeof v === "number" && Number.isFinite(v) && v >= 0;

/**
 * The statistics of a site's report, or why they cannot be used (a hostile or broken site's
 * report must neither crash the coordinator nor reach its records or ledger): the loss finite,
 * the norms and σ_max finite and ≥ 0, `clipped` a boolean; under strict calibration the release
 * norm within the clip bound and `clipped` saying whether the update norm exceeded it; the peers'
 * σ_max present exactly when the mechanism reports them (paper calibration, regulated phase), one
 * per released tensor, and — where the peer is a factor the phase does not release, the global
 * one the site started from — at most that peer's Frobenius norm (σ_max ≤ ‖·‖_F). `factors` are
 * the release completed with the global factors ({@link withUnreleased}).
 */
export function reportFault(
  report: Record<string, unknown>,
  factors: LoraFactors,
  phase: { release: readonly ("A" | "B")[]; regulate: boolean },
  dims: LoraDims,
  o: Pick<NatsClientsOptions, "clip" | "calibration">,
): { fault: string } | { stats: SiteStatistics } {
  const empty = Object.keys(report).length === 0;
  if (o.calibration === "local" || (o.calibration === undefined && empty)) {
    // Local trust: the site sends nothing but its noised release; nothing here is used.
    return {
      stats: { loss: NaN, updateNorm: NaN, clipped: false, releaseNorm: 0, peerSigmaMax: 0 },
    };
  }
  const fault = (s: string) => ({ fault: `report: ${s}` });
  const { loss, steps, updateNorm, clipped, releaseNorm, peerSigmaMax, peerSigmaMaxes } = report;
  if (typeof loss !== "number" || !Number.isFinite(loss)) {
    return fault(`loss ${JSON.stringify(loss)} is not a finite number`);
  }
  if (steps !== undefined && !(Number.isSafeInteger(steps) && (steps as number) >= 0)) {
    return fault(`steps ${JSON.stringify(steps)} is not a whole number ≥ 0`);
  }
  for (
    const [name, v] of [["updateNorm", updateNorm], ["releaseNorm", releaseNorm], [
      "peerSigmaMax",
      peerSigmaMax,
    ]] as const
  ) {
    if (!isNonNegative(v)) return fault(`${name} ${JSON.stringify(v)} is not a finite number ≥ 0`);
  }
  if (typeof clipped !== "boolean") {
    return fault(`clipped ${JSON.stringify(clipped)} is not true or false`);
  }
  const stats: SiteStatistics = {
    loss,
    ...(steps === undefined ? {} : { steps: steps as number }),
    updateNorm: updateNorm as number,
    clipped,
    releaseNorm: releaseNorm as number,
    peerSigmaMax: peerSigmaMax as number,
  };
  if (o.clip !== null && o.clip !== undefined) {
    if (stats.releaseNorm > o.clip * (1 + 1e-5)) {
      return fault(`releaseNorm ${stats.releaseNorm} above the clip bound C = ${o.clip}`);
    }
    if (clipped !== stats.updateNorm > o.clip) {
      return fault(`clipped ${clipped} with updateNorm ${stats.updateNorm} and C = ${o.clip}`);
    }
  }
  const expected = o.calibration === undefined
    ? peerSigmaMaxes !== undefined
    : o.calibration === "paper" && phase.regulate;
  if (!expected) {
    if (peerSigmaMaxes !== undefined) {
      return fault(`peerSigmaMaxes given, but this mechanism and phase have none`);
    }
    return { stats };
  }
  const tensors = phase.release.length * dims.adapters;
  if (!Array.isArray(peerSigmaMaxes) || peerSigmaMaxes.length !== tensors) {
    return fault(
      `peerSigmaMaxes must list the σ_max of each released tensor's peer (${tensors}); got ${
        Array.isArray(peerSigmaMaxes) ? `${peerSigmaMaxes.length} values` : typeof peerSigmaMaxes
      }`,
    );
  }
  for (const [i, v] of peerSigmaMaxes.entries()) {
    if (!isNonNegative(v)) {
      return fault(`peerSigmaMaxes[${i}] ${JSON.stringify(v)} is not a finite number ≥ 0`);
    }
  }
  if (phase.release.length === 1) {
    // The peer of a released B is A (and vice versa): here the global factor, unreleased.
    const peers = phase.release[0] === "B" ? factors.A : factors.B;
    for (const [i, v] of (peerSigmaMaxes as number[]).entries()) {
      const frobenius = Math.sqrt(sqNorm(peers[i]));
      if (v > frobenius * (1 + 1e-4) + 1e-12) {
        return fault(
          `peerSigmaMaxes[${i}] ${v} above the Frobenius norm ${frobenius} of that peer, the ` +
            `global factor`,
        );
      }
    }
  }
  const most = Math.max(0, ...(peerSigmaMaxes as number[]));
  if (stats.peerSigmaMax > most * (1 + 1e-9)) {
    return fault(`peerSigmaMax ${stats.peerSigmaMax} above the largest of peerSigmaMaxes ${most}`);
  }
  return { stats: { ...stats, peerSigmaMaxes: peerSigmaMaxes as number[] } };
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
  // What each site's release holds: its client's rank (the upload room is sized for the largest).
  const rankOf = (k: number) =>
    o.clientRanks?.length ? o.clientRanks[k % o.clientRanks.length] : o.dims.rank;
  const largest = { ...o.dims, rank: Math.max(o.dims.rank, ...(o.clientRanks ?? [])) };
  const specs = o.phases.map((p) => releaseSpec(largest, p.release));
  const siteSpecs = o.phases.map((p) => {
    const bySite = new Map(
      o.sites.map((site, k) => [site, releaseSpec({ ...o.dims, rank: rankOf(k) }, p.release)]),
    );
    // The transport asks only for sites of the run (`o.sites`): any other is refused before.
    return (site: string) => bySite.get(site) ?? releaseSpec(o.dims, p.release);
  });
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
        release: specs[phaseIndex],
      });
      const got = await coordinator.collectPhase({
        round: round + 1,
        phase: phaseIndex,
        sites: [...bySite.keys()],
        deadline,
        spec: siteSpecs[phaseIndex],
      });
      for (const r of got.refused) o.onRefusal?.(r);
      const releases = new Map<number, { release: ClientRelease; loss: number; steps?: number }>();
      const excluded: PhaseRecord["excluded"] = [];
      const phase = o.phases[phaseIndex];
      for (const [site, result] of got.accepted) {
        const k = bySite.get(site);
        if (k === undefined) {
          // Not a participant (the transport refuses those; never a client of this phase).
          o.onRefusal?.({
            site,
            reason: `not a participant of this phase`,
            round: round + 1,
            phase: phaseIndex,
          });
          continue;
        }
        const factors = withUnreleased(
          arraysFactors(result.release.arrays).factors,
          global,
          phase.release,
        );
        const report = result.envelope.report as Record<string, unknown>;
        const checked = reportFault(report, factors, phase, o.dims, o);
        const fault = releaseFault(factors, global, phase, o.dims, o.clip) ??
          ("fault" in checked ? checked.fault : null);
        if (fault || !("stats" in checked)) {
          const reason = fault ?? "report refused";
          o.onRefusal?.({ site, reason, round: round + 1, phase: phaseIndex });
          excluded.push({ client: k, reason: `release refused: ${reason}` });
          continue;
        }
        const { loss, steps, ...stats } = checked.stats;
        releases.set(k, {
          loss,
          ...(steps === undefined ? {} : { steps }),
          release: {
            client: k,
            factors,
            weight: 0,
            ...stats,
            ...(stats.peerSigmaMaxes ? {} : { peerSigmaMaxes: undefined }),
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
    const { release, loss, steps } = await withHeartbeat(
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
      siteReport(runtime, release, loss, steps),
    );
    opts.log?.(
      `round ${lease.task.round} phase ${lease.task.phase}: release sent (attempt ${lease.attempt})`,
    );
    done++;
    idleSince = Date.now();
  }
  return done;
}
