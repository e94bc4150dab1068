/**
 * The registry of federated LoRA methods. Each method is one file of this folder exporting a
 * {@link Method} value (a strategy: phases plus hooks, `types.ts`); this list is the only place
 * that names them. The CLI help, the README's method table (`deno task methods`) and the
 * notebooks' method lists are generated from it.
 *
 * | method | phases per round | trained | released (aggregated) |
 * |---|---|---|---|
 * | see `deno task methods` (the table is generated from {@link METHODS}) | | | |
 *
 * @example
 * ```ts
 * const deer = resolveMethod({ method: "DEeR", eliminateDeviation: true, regulateNoise: true });
 * deer.phases.map((p) => p.train); // [["B"], ["A"]]
 * ```
 * @module
 */
import { deer, type DeerOptions } from "./deer.ts";
import { dpDyLora } from "./dp_dylora.ts";
import { fedExLora } from "./fedex_lora.ts";
import { fedSaLora } from "./fedsa_lora.ts";
import { fedSvd } from "./fedsvd.ts";
import { ffaLora } from "./ffa_lora.ts";
import { flora } from "./flora.ts";
import { lora } from "./lora.ts";
import type { Method } from "./types.ts";

export type { ClientState, CombineContext, Factor, Method, Phase, StartContext } from "./types.ts";

/** One registry entry. */
export interface MethodEntry {
  /** Canonical name. */
  readonly name: string;
  /** Other names accepted on the command line (case-insensitive). */
  readonly aliases: readonly string[];
  /** `paper`: a method of the DEeR paper's comparison; `extension`: added by this toolkit. */
  readonly family: "paper" | "extension";
  /** One line for help texts. */
  readonly summary: string;
  /** The method value for the given options (only DEeR has switches). */
  readonly create: (opts: DeerOptions) => Method;
}

/** Every method, in the order help texts and tables list them. */
export const METHODS: readonly MethodEntry[] = [
  {
    name: "LoRA",
    aliases: ["FedLoRA"],
    family: "paper",
    summary: "FedAvg of A and B",
    create: () => lora,
  },
  {
    name: "FFA-LoRA",
    aliases: [],
    family: "paper",
    summary: "B only, A frozen at its random init",
    create: () => ffaLora,
  },
  {
    name: "DP-DyLoRA",
    aliases: [],
    family: "paper",
    summary: "LoRA with a random rank prefix per local epoch",
    create: () => dpDyLora,
  },
  {
    name: "DEeR",
    aliases: [],
    family: "paper",
    summary: "B then A (exact aggregation), regulated noise",
    create: (opts) => deer(opts),
  },
  {
    name: "FedEx-LoRA",
    aliases: [],
    family: "extension",
    summary: "FedAvg plus the residual folded into the frozen weights",
    create: () => fedExLora,
  },
  {
    name: "FedSA-LoRA",
    aliases: [],
    family: "extension",
    summary: "A shared, B kept on each client",
    create: () => fedSaLora,
  },
  {
    name: "FLoRA",
    aliases: [],
    family: "extension",
    summary: "stacked fresh LoRAs of per-client ranks, merged every round (no DP)",
    create: () => flora,
  },
  {
    name: "FedSVD",
    aliases: [],
    family: "extension",
    summary: "B only; A re-orthonormalised by an SVD after every round",
    create: () => fedSvd,
  },
];

/** Canonical method names, from the registry. */
export const METHOD_NAMES: readonly string[] = METHODS.map((m) => m.name);

/** Options that select a method (the reference's `--method --module1 --module2`). */
export interface MethodOptions extends DeerOptions {
  method: string;
}

/** The registry entry of a name or alias (case-insensitive), or a clear error. */
export function methodEntry(name: string): MethodEntry {
  const key = name.toLowerCase();
  const entry = METHODS.find((m) =>
    m.name.toLowerCase() === key || m.aliases.some((a) => a.toLowerCase() === key)
  );
  if (!entry) {
    const names = METHODS.map((m) =>
      m.aliases.length ? `${m.name} (= ${m.aliases.join(", ")})` : m.name
    );
    throw new Error(`unknown method "${name}"; use one of ${names.join(", ")}`);
  }
  return entry;
}

/** Resolves a method name and DEeR's switches to the method value. */
export function resolveMethod(opts: MethodOptions): Method {
  return methodEntry(opts.method).create(opts);
}

/** `--method` choices for help texts: `LoRA (= FedLoRA) | FFA-LoRA | …`. */
export function methodChoices(): string {
  return METHODS.map((m) => m.aliases.length ? `${m.name} (= ${m.aliases.join(", ")})` : m.name)
    .join(" | ");
}

/** The methods table of the README (markdown), generated from the registry. */
export function methodTable(): string {
  const rows = METHODS.map((e) => {
    const m = e.create({});
    const phases = m.phases.map((p) =>
      `${p.name}: train ${p.train.join("+")}, release ${p.release.join("+")}`
    ).join("; ");
    const dp = (["paper", "strict", "local"] as const).filter((c) => m.checkDp(c) === null);
    return `| \`${e.name}\` | ${e.family} | ${m.phases.length} | ${phases} | ${m.aggregates} | ${
      dp.length ? dp.join(", ") : "none (no DP)"
    } |`;
  });
  return [
    "| method | family | releases per round | phases | the server aggregates | DP calibrations |",
    "| --- | --- | --- | --- | --- | --- |",
    ...rows,
  ].join("\n");
}

/** Number of releases (aggregations) a method makes per round: 2 for DEeR with module1. */
export function releasesPerRound(method: Method): number {
  return method.phases.length;
}
