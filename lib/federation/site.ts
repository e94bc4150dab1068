/**
 * A site's computation for one task of a cross-process federation: local training with the
 * engine's client step (`trainClient`) and the mechanism's client release (`releaseClient`) —
 * the same functions the simulation calls for its in-process clients, so the release a site sends
 * is the one the simulation would have combined. Only the release leaves the site.
 *
 * @module
 */
import type { ImageDataset } from "../data/dataset.ts";
import type { SharedBackbone } from "../fl/backbone.ts";
import type { LoraFactors } from "../fl/factors.ts";
import type { ClientState, Method } from "../fl/methods/mod.ts";
import { resolveMethod } from "../fl/methods/mod.ts";
import { clientSettings, releaseClient, trainClient } from "../fl/round.ts";
import { clientPlan, type FederatedConfig } from "../fl/simulation.ts";
import { type ClientRelease, createMechanism, type Mechanism } from "../privacy/mechanism.ts";
import type { ReleasePhase } from "../privacy/ledger.ts";
import type { Rng } from "../rng.ts";
import { secureRng } from "../privacy/secure_rng.ts";
import { sha256Hex } from "./codec.ts";
import {
  checkSiteBudget,
  emptySiteLog,
  type LoggedRefusal,
  type LoggedRelease,
  type SiteBudget,
  type SiteLog,
} from "./site_budget.ts";

/** What a site holds across tasks: its data, its client state, the run's method and mechanism. */
export interface SiteRuntime {
  client: number;
  config: FederatedConfig;
  method: Method;
  mechanism: Mechanism;
  state: ClientState;
  data: ImageDataset;
  /**
   * Local DP: the site's secret noise key (HMAC-SHA256). The coordinator knows the run's seed,
   * so noise drawn from the run-seeded streams would be known to it and could be subtracted;
   * with a key the site draws its noise from a cryptographically secure stream only it can
   * reproduce ({@link secretNoise}). Without one (one-process checks) the run's own streams are
   * used, as in `train`.
   */
  noiseKey?: CryptoKey;
  /**
   * Local DP with a key: the site's log ({@link SiteLog}, `federation join` keeps it beside the
   * key): every release this site made under the key by `<run>/<round>/<phase>`, with the SHA-256
   * of its inputs (global factors and merges), its noise multiplier and the site's running ε,
   * and every task it refused. A task for a release already made with other inputs is refused: a
   * second release of the same (round, phase) would spend the budget twice (the calibration
   * allows one per planned release), and a coordinator could difference the two. Made empty (at
   * the budget's δ) when absent.
   */
  log?: SiteLog;
  /**
   * Local DP with a key: the site's own cap ({@link checkSiteBudget}); without one the site
   * accounts its ε but refuses nothing on that ground.
   */
  budget?: SiteBudget;
  /** Called after `log` gains a release (`id`), before the release is returned. */
  onReleased?: (log: SiteLog, id: string) => Promise<void>;
  /** Called after `log` gains a refusal, before the refusal is thrown. */
  onRefused?: (log: SiteLog, refusal: LoggedRefusal) => Promise<void>;
}

/**
 * An HMAC-SHA256 key from a site's secret bytes (at least 16), for {@link SiteRuntime.noiseKey}.
 */
export async function importNoiseKey(secret: Uint8Array): Promise<CryptoKey> {
  if (secret.length < 16) {
    throw new Error(`a noise key needs at least 16 secret bytes; got ${secret.length}`);
  }
  return await crypto.subtle.importKey(
    "raw",
    secret as Uint8Array<ArrayBuffer>,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
}

/**
 * The site's secret noise stream for one task: AES-256-CTR ({@link secureRng}, a
 * cryptographically secure stream) keyed by HMAC-SHA256(key, "noise/<release>/<client>/<task>"),
 * with `release` naming the run, round and phase and `task` the SHA-256 of the whole task (its
 * global factors and merges, the run's settings and the client index) — the same numbers for
 * every attempt of the same task (a re-delivered task releases what the first attempt did), other
 * numbers for any other task, unpredictable without the key. It is `keyedStream(key bytes, "noise",
 * release, client, task)` of lib/privacy/secure_rng.ts (a test checks the two agree), computed
 * with a non-extractable WebCrypto key, which the site runtime holds instead of the bytes.
 */
export async function secretNoise(
  key: CryptoKey,
  release: string,
  client: number,
  task: string,
): Promise<Rng> {
  const label = new TextEncoder().encode(`noise/${release}/${client}/${task}`);
  return secureRng(new Uint8Array(await crypto.subtle.sign("HMAC", key, label)));
}

/**
 * SHA-256 (hex) of a whole task at a site: the inputs' digest, the run's settings the site trains
 * under, and its client index. The site's noise for a release is keyed by it, and its log refuses
 * a second release of one (round, phase) for another.
 */
async function taskDigest(site: SiteRuntime, inputs: string): Promise<string> {
  const text = JSON.stringify({ inputs, client: site.client, config: site.config });
  return await sha256Hex(new TextEncoder().encode(text));
}

/** SHA-256 (hex) of a task's inputs: the global factors, then the dense merges. */
export async function inputDigest(global: LoraFactors, merged?: Float32Array[]): Promise<string> {
  const parts = [...global.A, ...global.B, ...(merged ?? [])];
  const bytes = new Uint8Array(parts.reduce((n, t) => n + t.byteLength, 0));
  let at = 0;
  for (const t of parts) {
    bytes.set(new Uint8Array(t.buffer, t.byteOffset, t.byteLength), at);
    at += t.byteLength;
  }
  return await sha256Hex(bytes);
}

/**
 * A site's runtime for client `client` of a run: its training images are its part of the run's
 * split of `data` (a site that holds only its own images passes them as `data` with
 * `ownImages: true`: then every training image is its own).
 */
export function siteRuntime(
  data: ImageDataset,
  config: FederatedConfig,
  client: number,
  opts: { ownImages?: boolean } = {},
): SiteRuntime {
  if (!(Number.isInteger(client) && client >= 0 && client < config.numClients)) {
    throw new Error(`site client index ${client}: need 0 ≤ k < ${config.numClients} (node_num)`);
  }
  const { parts, calibration } = clientPlan(data, config);
  const indices = opts.ownImages
    ? Array.from({ length: data.train.labels.length }, (_, i) => i)
    : parts[client];
  return {
    client,
    config,
    method: resolveMethod(config.method),
    mechanism: createMechanism(calibration),
    state: { indices },
    data,
  };
}

/**
 * What a site sends beside its released factors. Under central trust: its training loss, the
 * number of steps it took (0 when it holds no images: its loss is then left out of the round's)
 * and the clipping statistics the round record lists. Under local trust the coordinator is not trusted
 * with anything computed from un-noised values, so nothing else leaves the site (the records
 * then carry null for these statistics, in `train` as in a federation).
 */
export function siteReport(
  site: SiteRuntime,
  release: ClientRelease,
  loss: number,
  steps?: number,
): Record<string, unknown> {
  if (site.mechanism.trust === "local") return {};
  return {
    loss,
    ...(steps === undefined ? {} : { steps }),
    updateNorm: release.updateNorm,
    clipped: release.clipped,
    releaseNorm: release.releaseNorm,
    peerSigmaMax: release.peerSigmaMax,
    ...(release.peerSigmaMaxes ? { peerSigmaMaxes: release.peerSigmaMaxes } : {}),
  };
}

/** One task as a site computes it (0-based `round`; `run` names the coordinator's run). */
export interface SiteTask {
  round: number;
  phaseIndex: number;
  global: LoraFactors;
  merged?: Float32Array[];
  run?: string;
}

/**
 * One task: train from the global factors in phase `phaseIndex` of 0-based `round`, release.
 * `run` names the coordinator's run (the release log of a keyed local-DP site is per run).
 */
export async function siteRelease(
  backbone: SharedBackbone,
  site: SiteRuntime,
  task: SiteTask,
): Promise<{ release: ClientRelease; loss: number; steps: number }> {
  const { config, method, client } = site;
  const phase = method.phases[task.phaseIndex];
  if (!phase) {
    throw new Error(
      `task phase index ${task.phaseIndex}: ${method.label} has ` +
        `${method.phases.length} phase(s)`,
    );
  }
  // Local DP with a key: one release per planned (round, phase), its noise bound to the inputs,
  // within the site's own budget — checked before anything is trained or released.
  const keyed = site.noiseKey && site.mechanism.trust === "local"
    ? await keyedRelease(site, task, phase.name)
    : null;
  const trained = await trainClient(backbone, site.state, {
    method,
    phase,
    global: task.global,
    merged: task.merged,
    split: site.data.train,
    round: task.round,
    phaseIndex: task.phaseIndex,
    ...clientSettings(config, method, client, backbone.rank),
  });
  // Local DP with a key: the noise comes from the site's secret stream, not the run's.
  const secret = keyed ? await secretNoise(site.noiseKey!, keyed.id, client, keyed.task) : null;
  const release = releaseClient({
    ...(secret ? { noiseRng: () => secret } : {}),
    mechanism: site.mechanism,
    phase,
    round: task.round + 1,
    phaseIndex: task.phaseIndex,
    dims: backbone.dims,
    numClients: config.numClients,
    seed: config.seed,
    // The weight is the coordinator's; the release does not depend on it.
    update: { client, start: trained.start, factors: trained.result.factors, weight: 0 },
  });
  // Instrumentation that never leaves a site: the pre-noise factors.
  delete release.clean;
  if (keyed?.entry) {
    // Counted as spent once the noise is drawn, before the release is sent (conservative).
    site.log!.releases[keyed.id] = { ...keyed.entry, at: new Date().toISOString() };
    await site.onReleased?.(site.log!, keyed.id);
  }
  return { release, loss: trained.result.loss, steps: trained.result.steps };
}

/**
 * A keyed local-DP site's checks before a release (see {@link SiteRuntime.log}): the round is one
 * of the run's, the (run, round, phase) was not released with other inputs, and the release keeps
 * the site within its budget. A refusal is logged, then thrown. `entry` is the log's record of
 * the new release (null when the same task was already released), `task` the whole task's digest
 * its noise is keyed by.
 */
async function keyedRelease(
  site: SiteRuntime,
  task: SiteTask,
  phase: ReleasePhase,
): Promise<{ id: string; task: string; entry: Omit<LoggedRelease, "at"> | null }> {
  const log = site.log ??= emptySiteLog(site.budget?.delta ?? 1e-5);
  if (site.budget && site.budget.delta !== log.delta) {
    throw new Error(
      `local DP: the site's log accounts at δ = ${log.delta} but its budget is at δ = ` +
        `${site.budget.delta}; a key's releases are accounted at one δ`,
    );
  }
  const round = task.round + 1;
  const run = task.run ?? "run";
  const id = `${run}/${round}/${task.phaseIndex}`;
  const refuse = async (reason: string): Promise<never> => {
    const refusal = { id, reason, at: new Date().toISOString() };
    log.refused.push(refusal);
    await site.onRefused?.(log, refusal);
    throw new Error(reason);
  };
  // A re-delivered task is trained again and noised with the same secret stream, so the second
  // release equals the first only if training is a function of the task alone. Momentum carried
  // from the site's earlier trainings breaks that (the first attempt moved it): the difference of
  // the two releases would be the difference of two clean updates, published without noise.
  if (site.config.momentum === "reference" && site.method.referenceMomentum === "keep") {
    await refuse(
      `local DP with a noise key: ${site.method.label} with --momentum reference carries ` +
        `optimiser state between trainings, so a re-delivered task would train to another update ` +
        `under the same noise and the two releases would publish their difference without ` +
        `noise; run with --momentum reset`,
    );
  }
  if (!(Number.isInteger(round) && round >= 1 && round <= site.config.rounds)) {
    await refuse(
      `local DP: a task for round ${round} of a run of ${site.config.rounds} rounds; the site's ` +
        `noise is calibrated for ${site.config.rounds} rounds and releases no more`,
    );
  }
  const inputs = await inputDigest(task.global, task.merged);
  const whole = await taskDigest(site, inputs);
  const before = log.releases[id];
  // The same inputs under other settings (another learning rate, seed or client index) would
  // train to another update: noised with the same stream, the two releases' difference is the
  // clean update; with a fresh stream, a second release nobody accounted.
  if (before !== undefined && before.inputs === inputs && (before.task ?? whole) !== whole) {
    await refuse(
      `local DP: refusing a second release for round ${round} phase ${task.phaseIndex} of ` +
        `${task.run ?? "this run"} with the same global factors but other settings or another ` +
        `client than the first (task ${whole.slice(0, 12)}…, released for ${
          before.task!.slice(0, 12)
        }…): it would spend the release's budget twice`,
    );
  }
  if (before !== undefined && before.inputs !== inputs) {
    await refuse(
      `local DP: refusing a second release for round ${round} phase ${task.phaseIndex} of ` +
        `${task.run ?? "this run"} with other global factors than the first (inputs ${
          inputs.slice(0, 12)
        }…, released for ${before.inputs.slice(0, 12)}…): it would spend the release's budget ` +
        `twice`,
    );
  }
  if (before !== undefined) return { id, task: whole, entry: null };
  const cal = site.mechanism.calibration!;
  const checked = checkSiteBudget(log, site.budget ?? { maxEpsilon: null, delta: log.delta }, {
    id,
    run,
    phase,
    phases: site.method.phases.map((p) => p.name),
    rounds: site.config.rounds,
    noiseMultiplier: cal.noiseMultiplier,
    clip: cal.clip,
  });
  if (checked.refusal !== null) await refuse(checked.refusal);
  return {
    id,
    task: whole,
    entry: {
      inputs,
      task: whole,
      phase,
      noiseMultiplier: cal.noiseMultiplier,
      clip: cal.clip,
      epsilon: checked.epsilon,
    },
  };
}
