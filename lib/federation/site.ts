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

/** What a site holds across tasks: its data, its client state, the run's method and mechanism. */
export interface SiteRuntime {
  client: number;
  config: FederatedConfig;
  method: Method;
  mechanism: Mechanism;
  state: ClientState;
  data: ImageDataset;
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
 * What a site sends beside its released factors. Under central trust: its training loss and the
 * clipping statistics the round record lists. Under local trust the coordinator is not trusted
 * with anything computed from un-noised values, so nothing else leaves the site (the records
 * then carry null for these statistics, in `train` as in a federation).
 */
export function siteReport(
  site: SiteRuntime,
  release: ClientRelease,
  loss: number,
): Record<string, unknown> {
  if (site.mechanism.trust === "local") return {};
  return {
    loss,
    updateNorm: release.updateNorm,
    clipped: release.clipped,
    releaseNorm: release.releaseNorm,
    peerSigmaMax: release.peerSigmaMax,
    ...(release.peerSigmaMaxes ? { peerSigmaMaxes: release.peerSigmaMaxes } : {}),
  };
}

/** One task: train from the global factors in phase `phaseIndex` of 0-based `round`, release. */
export async function siteRelease(
  backbone: SharedBackbone,
  site: SiteRuntime,
  task: { round: number; phaseIndex: number; global: LoraFactors; merged?: Float32Array[] },
): Promise<{ release: ClientRelease; loss: number }> {
  const { config, method, client } = site;
  const phase = method.phases[task.phaseIndex];
  if (!phase) {
    throw new Error(
      `task phase index ${task.phaseIndex}: ${method.label} has ` +
        `${method.phases.length} phase(s)`,
    );
  }
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
  const release = releaseClient({
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
  return { release, loss: trained.result.loss };
}
