/**
 * One release through the engine's aggregate and record steps (`aggregateRelease`,
 * `phaseRecord` of lib/fl/round.ts) for tests that feed hand-made client updates: the clients
 * start from `global`, the method defaults to one with just `phase` and FedAvg's combination.
 */
import type { Rng } from "../../lib/rng.ts";
import type { LoraDims, LoraFactors } from "../../lib/fl/factors.ts";
import { fedAvg } from "../../lib/fl/methods/defaults.ts";
import type { Method, Phase } from "../../lib/fl/methods/mod.ts";
import { aggregateRelease, phaseRecord } from "../../lib/fl/round.ts";
import type { Calibration } from "../../lib/privacy/calibration.ts";
import { createMechanism } from "../../lib/privacy/mechanism.ts";

export function aggregatePhase(input: {
  global: LoraFactors;
  clients: { client: number; factors: LoraFactors; weight: number }[];
  phase: Phase;
  dims: LoraDims;
  loraScale: number;
  calibration: Calibration | null;
  numClients: number;
  rng: (label: string | number) => Rng;
  maxWeight?: number;
  method?: Method;
}) {
  const method: Method = input.method ??
    { ...fedAvg, name: "test", label: "test", aggregates: "", phases: [input.phase] };
  const out = aggregateRelease({
    method,
    mechanism: createMechanism(input.calibration),
    phase: input.phase,
    round: 1,
    phaseIndex: 0,
    global: input.global,
    dims: input.dims,
    loraScale: input.loraScale,
    numClients: input.numClients,
    seed: 0,
    updates: input.clients.map((c) => ({ ...c, start: input.global })),
    maxWeight: input.maxWeight ?? Math.max(0, ...input.clients.map((c) => c.weight)),
    noiseRng: input.rng,
  });
  const record = phaseRecord(
    input.phase,
    input.clients.map((c) => c.client),
    null,
    [],
    out,
    [],
    input.dims,
    input.loraScale,
  );
  return {
    ...out,
    noiseEnergy: record.noiseEnergy,
    release: out.record,
    residual: out.mergeIntoFrozen,
  };
}
