/**
 * Federated LoRA methods as values (SPEC §3). A method says, for each phase of a round, which
 * LoRA factors the clients train, which factors they release to the server, and whether DP noise
 * on the release is regulated (DEeR's noise regulator). The round itself (configure → train
 * locally → aggregate → evaluate) is the same code for every method: see `simulation.ts`.
 *
 * | method | phases per round | trained | released (aggregated) | noise |
 * |---|---|---|---|---|
 * | `LoRA` / `FedLoRA` | 1 | A, B | A, B (FedAvg of each factor) | isotropic |
 * | `FFA-LoRA` | 1 | B (A frozen at its shared random init) | B | isotropic |
 * | `DP-DyLoRA` | 1 | A, B on a random rank prefix per local epoch | A, B | isotropic |
 * | `DEeR` (module1 on) | 2: B then A | the phase's factor | the phase's factor | regulated if module2 |
 * | `DEeR` (module1 off) | 1 | A, B | A, B | regulated if module2 |
 * | `FedEx-LoRA` | 1 | A, B | A, B; the residual Σp_k B_k A_k − B̄Ā is folded into the frozen weight | isotropic |
 * | `FedSA-LoRA` | 1 | A, B | A only; each client keeps its own B | isotropic |
 *
 * @example
 * ```ts
 * const deer = resolveMethod({ method: "DEeR", module1: true, module2: true });
 * deer.phases.map((p) => p.train); // [["B"], ["A"]]
 * ```
 * @module
 */

/** A LoRA factor: `A` is r×d (Kaiming-uniform init), `B` is d×r (zero init). */
export type Factor = "A" | "B";

/** One local-training-plus-aggregation step of a round. */
export interface Phase {
  /** Short label used in records and ledger entries: the factors released. */
  readonly name: "AB" | "A" | "B";
  /** Factors the clients train in this phase (the others are frozen at the global value). */
  readonly train: readonly Factor[];
  /** Factors the clients send to the server; only these are aggregated. */
  readonly release: readonly Factor[];
  /**
   * Noise regulator (SPEC §3): noise on a released B is `W·A⁺`, on a released A `B⁺·W`, with the
   * client's own peer factor.
   */
  readonly regulate: boolean;
}

/** Canonical method names. `FedLoRA` is accepted as an alias of `LoRA`. */
export const METHOD_NAMES = [
  "LoRA",
  "FFA-LoRA",
  "DP-DyLoRA",
  "DEeR",
  "FedEx-LoRA",
  "FedSA-LoRA",
] as const;
/** One of {@link METHOD_NAMES}. */
export type MethodName = typeof METHOD_NAMES[number];

/** A federated LoRA method: its phases and the few switches the round consults. */
export interface Method {
  readonly name: MethodName;
  /** Human-readable label including ablation switches, e.g. `DEeR(m1=1,m2=0)`. */
  readonly label: string;
  /** What the server aggregates, in words (shown in reports). */
  readonly aggregates: string;
  readonly phases: readonly Phase[];
  /** DP-DyLoRA: before each local epoch use only a random prefix of the rank (SPEC §3). */
  readonly dynamicRank: boolean;
  /** FedEx-LoRA: fold the aggregation residual into the frozen weight. */
  readonly foldResidual: boolean;
  /** FedSA-LoRA: factors that stay on the client between rounds (never released). */
  readonly keepLocal: readonly Factor[];
  /** Reference behaviour: DEeR builds a new optimiser every phase, baselines keep theirs. */
  readonly referenceKeepsMomentum: boolean;
}

const phase = (
  name: Phase["name"],
  train: Factor[],
  release: Factor[],
  regulate: boolean,
): Phase => ({
  name,
  train,
  release,
  regulate,
});

/** Options that select a method (the reference's `--method --module1 --module2`). */
export interface MethodOptions {
  method: string;
  /** DEeR deviation eliminator (alternate B then A). Default on. */
  module1?: boolean;
  /** DEeR noise regulator. Default on. */
  module2?: boolean;
}

/** Resolves a method name (case-insensitive; `FedLoRA` = `LoRA`) and DEeR's switches. */
export function resolveMethod(opts: MethodOptions): Method {
  const key = opts.method.toLowerCase();
  const base = { dynamicRank: false, foldResidual: false, keepLocal: [] as Factor[] };
  const both: Factor[] = ["A", "B"];
  switch (key) {
    case "lora":
    case "fedlora":
      return {
        ...base,
        name: "LoRA",
        label: "LoRA",
        aggregates: "A and B, FedAvg of each factor",
        phases: [phase("AB", both, both, false)],
        referenceKeepsMomentum: true,
      };
    case "ffa-lora":
      return {
        ...base,
        name: "FFA-LoRA",
        label: "FFA-LoRA",
        aggregates: "B only; A stays at its shared random initialisation",
        phases: [phase("B", ["B"], ["B"], false)],
        referenceKeepsMomentum: true,
      };
    case "dp-dylora":
      return {
        ...base,
        name: "DP-DyLoRA",
        label: "DP-DyLoRA",
        aggregates: "A and B (full rank), FedAvg of each factor",
        phases: [phase("AB", both, both, false)],
        dynamicRank: true,
        referenceKeepsMomentum: true,
      };
    case "deer": {
      const m1 = opts.module1 ?? true;
      const m2 = opts.module2 ?? true;
      return {
        ...base,
        name: "DEeR",
        label: `DEeR(m1=${m1 ? 1 : 0},m2=${m2 ? 1 : 0})`,
        aggregates: m1
          ? "B in phase 1 (A shared), then A in phase 2 (B shared): zero aggregation deviation"
          : "A and B together, FedAvg of each factor",
        phases: m1
          ? [phase("B", ["B"], ["B"], m2), phase("A", ["A"], ["A"], m2)]
          : [phase("AB", both, both, m2)],
        referenceKeepsMomentum: false,
      };
    }
    case "fedex-lora":
      return {
        ...base,
        name: "FedEx-LoRA",
        label: "FedEx-LoRA",
        aggregates: "A and B averaged; residual Σp_k·B_k·A_k − B̄·Ā folded into the frozen weight",
        phases: [phase("AB", both, both, false)],
        foldResidual: true,
        referenceKeepsMomentum: true,
      };
    case "fedsa-lora":
      return {
        ...base,
        name: "FedSA-LoRA",
        label: "FedSA-LoRA",
        aggregates: "A only; every client keeps its own B",
        phases: [phase("AB", both, ["A"], false)],
        keepLocal: ["B"],
        referenceKeepsMomentum: true,
      };
    default:
      throw new Error(
        `unknown method "${opts.method}"; use one of ${METHOD_NAMES.join(", ")} (or FedLoRA)`,
      );
  }
}

/** Number of releases (aggregations) a method makes per round: 2 for DEeR with module1. */
export function releasesPerRound(method: Method): number {
  return method.phases.length;
}
