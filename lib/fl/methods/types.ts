/**
 * What a federated LoRA method is: a strategy value with the phases of a round and hooks for the
 * few things that differ between methods. The engine (`../simulation.ts`) runs every method
 * through the same named steps and calls these hooks; it has no method-specific branch.
 *
 * A phase says which LoRA factors the clients train, which they release to the server, and
 * whether DP noise on the release is regulated (DEeR's noise regulator). The hooks say where a
 * client starts ({@link Method.startFactors}), how the server combines what it received
 * ({@link Method.combine}), what it does after a round ({@link Method.afterRound}), what the
 * model is evaluated with ({@link Method.evaluationFactors}) and which privacy calibrations the
 * method supports ({@link Method.checkDp}). `defaults.ts` gives the FedAvg behaviour most
 * methods share.
 * @module
 */
import type { Factor, LoraDims, LoraFactors } from "../factors.ts";
import type { ReceivedUpdate, ReleaseSpec } from "../../privacy/mechanism.ts";

export type { Factor };

/**
 * One local-training-plus-aggregation step of a round. From {@link ReleaseSpec} it has, besides
 * the released factors and `regulate`, `publishes`: whether the method's {@link Method.combine}
 * of this phase publishes only functions of the weighted sum of the received releases
 * (`"weighted-sum"`, the default when absent: FedAvg and the methods built on it) or also
 * functions of the single releases (`"each-release"`: FedEx-LoRA's residual, FLoRA's stacking).
 * A method declares it on the phase because the privacy mechanism sees the phase, not the
 * method: under the paper calibration an `"each-release"` phase is accounted release by release
 * (every client's noised release, one Gaussian of multiplier σC/√K over the largest client
 * sensitivity), the strict calibration refuses it (its noise is on the sum only), and a phase
 * whose combination returns `mergeIntoFrozen` without declaring it is refused under paper.
 */
export interface Phase extends ReleaseSpec {
  /** Factors the clients train in this phase (the others are frozen at their start value). */
  readonly train: readonly Factor[];
}

/** What a client carries between rounds. */
export interface ClientState {
  /** Indices of its training images. */
  indices: number[];
  /** Optimiser momentum buffers (kept across rounds in the reference's momentum mode). */
  momentum?: Float32Array[];
  /** Factors the client keeps and never releases (FedSA-LoRA's B). */
  local?: LoraFactors;
}

/** What {@link Method.startFactors} knows. */
export interface StartContext {
  global: LoraFactors;
  client: ClientState;
  /** Client index k. */
  clientIndex: number;
  /** 0-based round and phase. */
  round: number;
  phaseIndex: number;
  /** The client's LoRA rank (the backbone's, or its entry of the per-client ranks). */
  rank: number;
  /** A fresh LoRA of `rank`, drawn from the client's own named stream for this round. */
  freshLora: () => LoraFactors;
}

/** What {@link Method.combine} knows. */
export interface CombineContext {
  global: LoraFactors;
  phase: Phase;
  dims: LoraDims;
  /** The LoRA scale s = α/r (ΔW = s·B·A). */
  loraScale: number;
}

/** What {@link Method.afterRound} knows. */
export interface RoundContext {
  global: LoraFactors;
  dims: LoraDims;
  /** 0-based round that just ended. */
  round: number;
}

/** A federated LoRA method. */
export interface Method {
  /** Canonical name (a registry key). */
  readonly name: string;
  /** Human-readable label including ablation switches, e.g. `DEeR(m1=1,m2=0)`. */
  readonly label: string;
  /** What the server aggregates, in words (shown in reports). */
  readonly aggregates: string;
  readonly phases: readonly Phase[];
  /** Local-training options passed to the trainer (DP-DyLoRA's random rank prefix). */
  readonly local: { readonly dynamicRank: boolean };
  /**
   * The reference's momentum behaviour (`--momentum reference`): `keep` carries each client's
   * optimiser momentum across rounds (the reference's baselines), `reset` builds a new optimiser
   * every phase (the reference's DEeR).
   */
  readonly referenceMomentum: "keep" | "reset";
  /** Whether clients may train LoRAs of different ranks (`--lora_r 4,8,16`). */
  readonly clientRanks: boolean;
  /** The factors a client starts local training from. */
  startFactors(ctx: StartContext): LoraFactors;
  /**
   * The server's combination of the received updates (weights as given): the new global
   * factors, and optionally dense updates merged into the frozen weights. Under central DP the
   * new global factors must be the weighted sum the mechanism's noise is calibrated for (or a
   * post-processing of it). Anything it publishes that is computed from the single received
   * updates rather than from that sum (a residual or a stacked product in `mergeIntoFrozen`)
   * must be declared on the phase, `publishes: "each-release"` ({@link Phase}); the mechanism
   * then accounts, or refuses, accordingly.
   */
  combine(
    received: readonly ReceivedUpdate[],
    ctx: CombineContext,
  ): { global: LoraFactors; mergeIntoFrozen?: Float32Array[] };
  /**
   * The aggregation deviation of the received updates (for the records): Σ over adapters of
   * ‖Σ_k p_k·B_k·A_k − what the combined factors represent‖_F, with p_k the weights normalised.
   */
  deviation(received: readonly ReceivedUpdate[], ctx: CombineContext): number;
  /** The factors a client keeps after training (never released), or undefined. */
  keepOnClient(trained: LoraFactors): LoraFactors | undefined;
  /** The global factors handed to the next round (post-processing of the released ones). */
  afterRound(ctx: RoundContext): LoraFactors;
  /** The factors the global model is evaluated with. */
  evaluationFactors(
    ctx: { global: LoraFactors; clients: readonly ClientState[]; participants: number[] },
  ): LoraFactors;
  /** Why the method cannot run under this calibration, or null when it can. */
  checkDp(calibration: "paper" | "strict" | "local"): string | null;
}
