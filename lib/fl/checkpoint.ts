/**
 * What a run leaves in its seed folder to be resumed, and the checks a resume makes before it
 * trusts any of it.
 *
 * After every round the engine writes, each atomically and in this order: the round's line of
 * `records.jsonl`, `checkpoints/round-NNNN.safetensors` (the global factors), the resumable state
 * `state-round-NNNN.safetensors` (global factors, FedEx-LoRA's residual, the clients' momentum
 * and kept-local factors) and last `state.json`, which names that tensors file and holds the
 * completed-round count, the best-validation round and the privacy ledger. A crash between two
 * writes leaves at most the next round's record and checkpoint ahead of `state.json`; a resume
 * drops them and redoes that round — unless a phase of it was released to clients in other
 * processes before the crash: the coordinator writes the round under way first
 * (`round-open.json`, {@link saveOpenRound}), and a resume continues it after that phase
 * ({@link loadOpenRound}), so that no release is made twice.
 *
 * {@link loadRunState} validates every file against its schema and against the others — the
 * records are rounds 1..n in order for this seed and method, the ledger is present exactly when
 * DP is on and has one closed round per record and one release per recorded DP release, its ε
 * equals the records', the last checkpoint is round n and holds the state's factors, every
 * tensor has its shape and finite values, and no path leaves the seed folder — and refuses with
 * a message naming the file, what is wrong and what to do.
 *
 * @example
 * ```ts
 * const config = { seed: 10, rounds: 3, dp: null, momentum: "reset" };
 * const restored = await loadRunState("results/x/DEeR/seed-10", {
 *   config,
 *   configKey: JSON.stringify(config),
 *   methodLabel: "DEeR(m1=1,m2=1)",
 *   dims: { adapters: 12, rank: 8, dIn: 64, dOut: 64 },
 *   clients: [{}, {}],
 * });
 * restored?.state.completedRounds; // null where nothing is saved
 * ```
 * @module
 */
import { join, relative, resolve } from "node:path";
import { appendLineAtomic, writeFileAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { readSafetensors, writeSafetensors } from "../model/safetensors.ts";
import type { Metrics } from "../metrics/classification.ts";
import { type LedgerState, type Release, restoreLedger } from "../privacy/ledger.ts";
import type { LoraDims, LoraFactors } from "./factors.ts";

/** The JSON part of a seed's resumable state (`state.json`). */
export interface SavedState {
  version: 1;
  configKey: string;
  completedRounds: number;
  best: { round: number; val: Metrics | null; test: Metrics | null };
  ledger: LedgerState | null;
  seconds: number;
}

/** What a client carries from round to round (the part a resume restores). */
export interface ClientCarry {
  momentum?: Float32Array[];
  local?: LoraFactors;
}

/** The settings a saved state must fit. */
export interface StateExpectations {
  config: { seed: number; rounds: number; dp: unknown; momentum: string };
  /** The settings key the state must carry (`state.json` `configKey`). */
  configKey: string;
  /** The method's label, as the records carry it. */
  methodLabel: string;
  dims: LoraDims;
  /** The run's clients; their carried state is restored into these objects. */
  clients: ClientCarry[];
  /**
   * What the run's privacy mechanism would write (with DP): an empty ledger of its accounting
   * settings, and the record it makes of a release where that is fixed in advance
   * (`Mechanism.plannedRecord`: strict and local calibration, and paper releases that publish
   * each client's release; `null` otherwise). The saved ledger must agree with both, so an edited
   * one cannot lower the ε a resumed run reports.
   */
  ledger?: {
    fresh: LedgerState;
    planned: (round: number, phase: Release["phase"]) => Release | null;
  };
}

/** A validated saved state. */
export interface RestoredState<R> {
  state: SavedState;
  global: LoraFactors;
  residual?: Float32Array[];
  /** The records of rounds 1..n, as saved. */
  records: R[];
}

const pad = (n: number) => String(n).padStart(4, "0");

/** Name of the state tensors file of round `n`. */
export const stateTensorFile = (n: number) => `state-round-${pad(n)}.safetensors`;

/** Path of the checkpoint of round `n` inside a seed folder. */
export const checkpointFile = (n: number) => join("checkpoints", `round-${pad(n)}.safetensors`);

/** The factors as named tensors (`<prefix>.<i>.A` r×dIn, `<prefix>.<i>.B` dOut×r). */
export function factorTensors(
  f: LoraFactors,
  dims: LoraDims,
  prefix = "lora",
): Record<string, { shape: number[]; data: Float32Array }> {
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  // The rank comes from the factors themselves (clients may train other ranks than the global).
  f.A.forEach((a, i) => {
    out[`${prefix}.${i}.A`] = { shape: [a.length / dims.dIn, dims.dIn], data: a };
  });
  f.B.forEach((b, i) => {
    out[`${prefix}.${i}.B`] = { shape: [dims.dOut, b.length / dims.dOut], data: b };
  });
  return out;
}

/**
 * Writes the checkpoint of round `round` into the seed folder `out`: the global factors
 * (`lora.<i>.A`, `lora.<i>.B`) and, for methods that merge updates into the frozen weights, the
 * merged dense updates (`merged.<i>`, dOut×dIn: add them to adapter i's projection weight).
 */
export async function saveCheckpoint(
  out: string,
  round: number,
  global: LoraFactors,
  dims: LoraDims,
  meta: { method: string; seed: number },
  /** Dense updates merged into the frozen q/k/v weights so far (FedEx-LoRA, FLoRA). */
  residual?: Float32Array[],
): Promise<void> {
  const tensors = factorTensors(global, dims);
  residual?.forEach((r, i) => {
    tensors[`merged.${i}`] = { shape: [dims.dOut, dims.dIn], data: r };
  });
  await writeSafetensors(join(out, checkpointFile(round)), tensors, {
    method: meta.method,
    round: String(round),
    seed: String(meta.seed),
  });
}

/** The global factors and the merged residual as flat state tensors (`global.<i>.A`, …). */
function globalStateTensors(
  global: LoraFactors,
  residual: Float32Array[] | undefined,
): Record<string, { shape: number[]; data: Float32Array }> {
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  global.A.forEach((a, i) => (tensors[`global.${i}.A`] = { shape: [a.length], data: a }));
  global.B.forEach((b, i) => (tensors[`global.${i}.B`] = { shape: [b.length], data: b }));
  residual?.forEach((r, i) => (tensors[`residual.${i}`] = { shape: [r.length], data: r }));
  return tensors;
}

/**
 * Writes the resumable state after round `state.completedRounds`: the tensors to a file named by
 * the round, then `state.json` naming it (a crash between the two leaves the previous
 * `state.json` pointing at the previous, complete tensors file), then removes the older ones.
 */
export async function saveRunState(
  out: string,
  state: SavedState,
  global: LoraFactors,
  clients: ClientCarry[],
  residual: Float32Array[] | undefined,
): Promise<void> {
  const tensors = globalStateTensors(global, residual);
  clients.forEach((c, k) => {
    c.momentum?.forEach((m, j) => {
      tensors[`client.${k}.momentum.${j}`] = { shape: [m.length], data: m };
    });
    c.local?.A.forEach((a, i) => {
      tensors[`client.${k}.local.${i}.A`] = { shape: [a.length], data: a };
    });
    c.local?.B.forEach((b, i) => {
      tensors[`client.${k}.local.${i}.B`] = { shape: [b.length], data: b };
    });
  });
  const tensorFile = stateTensorFile(state.completedRounds);
  await writeSafetensors(join(out, tensorFile), tensors, { round: String(state.completedRounds) });
  await writeJsonAtomic(join(out, "state.json"), { ...state, tensorFile });
  // Every older state file goes, not only the previous round's: a run killed between writing
  // state.json and this clean-up leaves one behind, which the resumed run must not keep.
  for (const entry of Deno.readDirSync(out)) {
    if (/^state-round-\d+\.safetensors$/.test(entry.name) && entry.name !== tensorFile) {
      await Deno.remove(join(out, entry.name)).catch(() => {});
    }
  }
}

/**
 * Opens a seed folder for a run: creates it, and — unless a resumed state was restored — writes
 * `config.json` and removes a previous run's `records.jsonl`; a previous `stop.json` (budget
 * guard) always goes, since the run decides again whether to stop.
 */
export async function openRunFolder(
  out: string,
  fresh: boolean,
  config: Record<string, unknown>,
): Promise<void> {
  await Deno.mkdir(out, { recursive: true });
  if (fresh) {
    await writeJsonAtomic(join(out, "config.json"), config);
    await Deno.remove(join(out, "records.jsonl")).catch(() => {});
  }
  await Deno.remove(join(out, "stop.json")).catch(() => {});
}

/** Appends a round's record to `records.jsonl` (atomically). */
export async function appendRecord(out: string, record: unknown): Promise<void> {
  await appendLineAtomic(join(out, "records.jsonl"), JSON.stringify(record));
}

/** Writes why the budget guard stopped the run (`stop.json`). */
export async function saveStop(out: string, stop: unknown): Promise<void> {
  await writeJsonAtomic(join(out, "stop.json"), stop);
}

/** Thrown when a saved state cannot be trusted; the message names the file and the fix. */
export class DamagedStateError extends Error {
  override name = "DamagedStateError";
}

const FIX = "the saved state is damaged or was edited: restore the file from a backup, or start " +
  "the run again without resume (this replaces the saved run)";

/**
 * How a saved ledger disagrees with what the run's mechanism would have written, or `null`: its
 * δ, accountant, orders and sites must be the run's, and each release whose record is fixed in
 * advance (strict, local, and paper releases of un-regulated phases that publish each release)
 * must be that record — noise multiplier, std, sensitivity, sampling rate, count and clip — with
 * its sites (local) among the run's.
 */
export function ledgerMismatch(
  saved: LedgerState,
  expect: NonNullable<StateExpectations["ledger"]>,
): string | null {
  const { fresh, planned } = expect;
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  if (saved.delta !== fresh.delta) {
    return `accounts at δ ${saved.delta}; the run's δ is ${fresh.delta}`;
  }
  if (saved.accountant !== fresh.accountant) {
    return `uses the ${saved.accountant ?? "rdp"} accountant; the run's is ${
      fresh.accountant ?? "rdp"
    }`;
  }
  if (saved.localSites !== fresh.localSites) {
    return `accounts ${saved.localSites ?? "no"} local sites; the run has ${
      fresh.localSites ?? "none"
    }`;
  }
  if (!same(saved.orders, fresh.orders)) return `holds other RDP orders than the run's`;
  const fields = [
    "noiseMultiplier",
    "noiseStd",
    "sensitivity",
    "sampleRate",
    "count",
    "clip",
  ] as const;
  for (const [i, r] of saved.releases.entries()) {
    const p = planned(r.round, r.phase);
    if (p === null) continue;
    const field = fields.find((f) => r[f] !== p[f]);
    if (field) {
      return `release ${i} (round ${r.round}, phase ${r.phase}) records ${field} ${
        r[field]
      }; the run's mechanism makes ${p[field]}, so an ε accounted from the saved ledger is not ` +
        `what the run spends (a run saved before the toolkit corrected its method's accounting ` +
        `differs the same way)`;
    }
    if (r.calibration !== p.calibration) {
      return `release ${i} (round ${r.round}, phase ${r.phase}) is of calibration ` +
        `${r.calibration}; the run's is ${p.calibration}`;
    }
    const sites = p.sites ?? [];
    if (
      (r.sites ?? []).some((s) => !sites.includes(s)) ||
      (r.sites === undefined) !== (p.sites === undefined)
    ) {
      return `release ${i} (round ${r.round}, phase ${r.phase}) lists sites ` +
        `[${r.sites ?? ""}], not among the run's`;
    }
  }
  return null;
}

/**
 * Why a client's saved momentum buffers cannot be the state of a local trainer on these dimensions,
 * or `null` when they can. The trainer keeps one buffer per adapter for each factor it trains (A's,
 * then B's: [rank·dIn] and [dOut·rank] values), then one for the logit scale (1 value); a method
 * keeps momentum across rounds only at the backbone's rank.
 *
 * @example
 * ```ts
 * const dims = { adapters: 1, rank: 1, dIn: 2, dOut: 2 };
 * momentumLayoutError([2, 2, 1], dims); // null
 * momentumLayoutError([1, 7], dims); // "buffer 0 has 1 values; expected 2 (…)"
 * ```
 */
export function momentumLayoutError(lengths: number[], dims: LoraDims): string | null {
  const { adapters: n, rank, dIn, dOut } = dims;
  const a = rank * dIn, b = dOut * rank;
  const expect = lengths.length === 2 * n + 1
    ? [...Array(n).fill(a), ...Array(n).fill(b), 1]
    : lengths.length === n + 1
    ? [...Array(n).fill(lengths[0] === a ? a : b), 1]
    : null;
  if (expect === null) {
    return `${lengths.length} buffers; expected ${n + 1} (one factor trained) or ${2 * n + 1} ` +
      `(A and B) for ${n} adapters`;
  }
  const at = lengths.findIndex((l, j) => l !== expect[j]);
  return at < 0 ? null : `buffer ${at} has ${lengths[at]} values; expected ${expect[at]} ` +
    `(${n} adapters, rank ${rank}, ${dIn} in, ${dOut} out)`;
}

/**
 * Loads and validates the resumable state of the seed folder `out` (see the module's doc);
 * null when there is none to resume (no `state.json`, and at most a torn first round).
 * Restores the clients' carried state into `expect.clients`; drops a torn round's record and
 * checkpoint. Throws {@link DamagedStateError} naming the file and what is wrong.
 */
export async function loadRunState<R extends { round: number; seed: number; method: string }>(
  out: string,
  expect: StateExpectations,
): Promise<RestoredState<R> | null> {
  const { config, methodLabel, dims, clients } = expect;
  const statePath = join(out, "state.json");
  const bad = (file: string, what: string): never => {
    throw new DamagedStateError(`${file}: ${what}; ${FIX}`);
  };
  const recordsPath = join(out, "records.jsonl");
  const recordLines = await readLines(recordsPath, bad);

  let raw: string;
  try {
    raw = await Deno.readTextFile(statePath);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
    // Killed inside round 1 (before its state): at most that round's record and checkpoint.
    if (recordLines.length > 1 || (await checkpointRounds(out)).some((r) => r > 1)) {
      bad(statePath, `is missing, but ${out} holds records or checkpoints of later rounds`);
    }
    return null;
  }
  const state = parseSaved<SavedState>(raw, statePath, expect.configKey, bad);
  const n = state.completedRounds;
  if (!(Number.isInteger(n) && n >= 1 && n <= config.rounds)) {
    bad(
      statePath,
      `"completedRounds" is ${show(n)}; expected an integer from 1 to ${config.rounds}`,
    );
  }
  if (
    !(typeof state.seconds === "number" && Number.isFinite(state.seconds) && state.seconds >= 0)
  ) {
    bad(statePath, `"seconds" is ${show(state.seconds)}; expected a number ≥ 0`);
  }
  checkBest(state.best, n, (what) => bad(statePath, what));
  if (state.tensorFile !== stateTensorFile(n)) {
    bad(
      statePath,
      `"tensorFile" is ${show(state.tensorFile)}; expected "${stateTensorFile(n)}", the state ` +
        `tensors of round ${n} in the same folder`,
    );
  }

  // Records: rounds 1..n in order (plus, after a crash inside round n + 1, its record).
  if (recordLines.length < n) {
    bad(recordsPath, `holds ${recordLines.length} rounds but ${statePath} says ${n} are complete`);
  }
  if (recordLines.length > n + 1) {
    bad(recordsPath, `holds ${recordLines.length} rounds but ${statePath} says ${n} are complete`);
  }
  const records: R[] = [];
  for (const [i, line] of recordLines.slice(0, n).entries()) {
    let rec: R;
    try {
      rec = JSON.parse(line);
    } catch (err) {
      return bad(recordsPath, `line ${i + 1} is not valid JSON (${(err as Error).message})`);
    }
    if (rec === null || typeof rec !== "object") bad(recordsPath, `line ${i + 1} is no object`);
    if (rec.round !== i + 1) {
      bad(recordsPath, `line ${i + 1} is round ${show(rec.round)}; expected round ${i + 1}`);
    }
    if (rec.seed !== config.seed) {
      bad(recordsPath, `line ${i + 1} is of seed ${show(rec.seed)}; expected ${config.seed}`);
    }
    if (rec.method !== methodLabel) {
      bad(recordsPath, `line ${i + 1} is of method ${show(rec.method)}; expected ${methodLabel}`);
    }
    records.push(rec);
  }
  const last = records[n - 1] as unknown as { bestRound?: unknown };
  if (last.bestRound !== state.best.round) {
    bad(
      recordsPath,
      `round ${n} says the best round is ${show(last.bestRound)}, ${statePath} says ` +
        `${state.best.round}`,
    );
  }

  // The ledger: present exactly with DP, one closed round per record, ε as recorded.
  let ledger: LedgerState | null = null;
  if (config.dp) {
    if (state.ledger === null || typeof state.ledger !== "object") {
      bad(statePath, `"ledger" is ${show(state.ledger)}, but the run spends a privacy budget`);
    }
    try {
      ledger = restoreLedger(state.ledger, statePath);
    } catch (err) {
      bad(statePath, `"ledger" is invalid (${(err as Error).message})`);
    }
    const l = ledger!;
    const wrong = expect.ledger ? ledgerMismatch(l, expect.ledger) : null;
    if (wrong) bad(statePath, `"ledger" ${wrong}`);
    if (l.rounds.length !== n || l.rounds.some((r, i) => r.round !== i + 1)) {
      bad(
        statePath,
        `"ledger" closes rounds [${l.rounds.map((r) => r.round).join(",")}]; expected 1..${n}`,
      );
    }
    const released = records.reduce(
      (s, r) => s + phasesOf(r).filter((p) => p.effectiveNoiseMultiplier !== null).length,
      0,
    );
    if (l.releases.length !== released) {
      bad(
        statePath,
        `"ledger" holds ${l.releases.length} releases, but ${recordsPath} records ${released}`,
      );
    }
    for (const [i, r] of records.entries()) {
      const spent = (r as unknown as { epsilon?: { spent?: unknown } }).epsilon?.spent;
      if (spent !== l.rounds[i].epsilon) {
        bad(
          statePath,
          `"ledger" spent ε ${l.rounds[i].epsilon} by round ${i + 1}, ${recordsPath} records ` +
            `${show(spent)}`,
        );
      }
    }
  } else if (state.ledger !== null) {
    bad(statePath, `"ledger" is set, but the run has no differential privacy`);
  }

  // The state tensors: inside this folder, every tensor present, shaped and finite.
  const tensorPath = join(out, stateTensorFile(n));
  await confine(out, tensorPath, bad);
  const tensors = await readTensors(tensorPath, bad);
  const taken = new Set<string>();
  const take = tensorTaker(tensors, tensorPath, bad, taken);
  const { adapters, rank, dIn, dOut } = dims;
  const factors = (prefix: string): LoraFactors => ({
    A: Array.from({ length: adapters }, (_, i) => take(`${prefix}.${i}.A`, rank * dIn)),
    B: Array.from({ length: adapters }, (_, i) => take(`${prefix}.${i}.B`, dOut * rank)),
  });
  const global = factors("global");
  // Dense updates merged into the frozen weights (FedEx-LoRA, FLoRA), when the run has made any.
  const residual = tensors["residual.0"]
    ? Array.from({ length: adapters }, (_, i) => take(`residual.${i}`, dOut * dIn))
    : undefined;
  for (const [k, client] of clients.entries()) {
    const mom = Object.keys(tensors).filter((t) => t.startsWith(`client.${k}.momentum.`));
    if (mom.length > 0) {
      client.momentum = Array.from({ length: mom.length }, (_, j) => {
        const name = `client.${k}.momentum.${j}`;
        return take(name, (tensors[name]?.data as ArrayLike<number> | undefined)?.length ?? 0);
      });
      const wrong = momentumLayoutError(client.momentum.map((m) => m.length), dims);
      if (wrong) bad(tensorPath, `client ${k}'s momentum: ${wrong}`);
    }
    if (tensors[`client.${k}.local.0.A`]) client.local = factors(`client.${k}.local`);
  }
  const stray = Object.keys(tensors).filter((t) => !taken.has(t));
  if (stray.length > 0) {
    bad(
      tensorPath,
      `holds tensors this run does not make (${stray.slice(0, 3).join(", ")}${
        stray.length > 3 ? ", …" : ""
      }), e.g. of another method or more clients`,
    );
  }

  // The checkpoint of round n holds the same global factors; later ones are a torn round's.
  const ckRounds = await checkpointRounds(out);
  if (ckRounds.some((r) => r > n + 1)) {
    bad(
      join(out, "checkpoints"),
      `holds checkpoints of rounds up to ${Math.max(...ckRounds)} but ${statePath} says ${n} ` +
        `are complete`,
    );
  }
  const ckPath = join(out, checkpointFile(n));
  await confine(out, ckPath, bad);
  const ck = await readTensorsWithMeta(ckPath, bad);
  if (ck.metadata.round !== String(n) || ck.metadata.seed !== String(config.seed)) {
    bad(
      ckPath,
      `is labelled round ${show(ck.metadata.round)} of seed ${show(ck.metadata.seed)}; expected ` +
        `round ${n} of seed ${config.seed}`,
    );
  }
  for (const [name, t] of Object.entries(factorTensors(global, dims))) {
    const saved = ck.tensors[name]?.data as ArrayLike<number> | undefined;
    if (!saved || saved.length !== t.data.length || t.data.some((v, j) => v !== saved[j])) {
      bad(ckPath, `tensor "${name}" differs from the state of round ${n} in ${tensorPath}`);
    }
  }

  // Commit the restore: drop what a crash inside round n + 1 left ahead of the state.
  if (recordLines.length > n) {
    await writeFileAtomic(recordsPath, recordLines.slice(0, n).join("\n") + "\n");
  }
  if (ckRounds.includes(n + 1)) await Deno.remove(join(out, checkpointFile(n + 1)));
  return { state: { ...state, ledger }, global, residual, records };
}

// ---------------------------------------------------------------------------------------------
// A round under way whose first phases' releases have left the coordinator

/** The JSON part of a round under way (`round-open.json`; see {@link saveOpenRound}). */
export interface OpenRoundState<P> {
  version: 1;
  configKey: string;
  /** The round under way (1-based), and how many of its phases are aggregated and released. */
  round: number;
  phasesDone: number;
  /** Those phases' records, as the round's record will hold them. */
  phases: P[];
  /** The ledger with those phases' releases recorded (its round not closed); null without DP. */
  ledger: LedgerState | null;
  /** Seconds the round had taken, and the run (all rounds and starts). */
  roundSeconds: number;
  runSeconds: number;
}

/** A validated round under way. */
export interface RestoredOpenRound<P> {
  state: OpenRoundState<P>;
  /** The global factors after its last released phase, and the merged residual then. */
  global: LoraFactors;
  residual: Float32Array[] | undefined;
}

/** The file that describes a round under way. */
export const OPEN_ROUND_FILE = "round-open.json";

/** Name of the tensors file of a round under way after `phasesDone` phases. */
const openRoundTensorFile = (round: number, phasesDone: number) =>
  `round-open-${pad(round)}-${phasesDone}.safetensors`;
const OPEN_ROUND_TENSORS = /^round-open-\d{4,}-\d+\.safetensors$/;

/**
 * Writes a round under way after one of its phases, before that phase's release leaves the
 * coordinator (in the next phase's tasks, to sites in other processes): the global factors and
 * residual to a tensors file, then `round-open.json` naming it, then removes older tensors files.
 * A coordinator resumed after that continues the round from the next phase with this release,
 * instead of releasing the phase again — a second release under the same noise, from a cohort
 * that may differ by one site, would show that site's update without noise; under new noise it
 * would be a release the ledger does not count.
 */
export async function saveOpenRound<P>(
  out: string,
  state: OpenRoundState<P>,
  global: LoraFactors,
  residual: Float32Array[] | undefined,
): Promise<void> {
  const tensors = globalStateTensors(global, residual);
  const tensorFile = openRoundTensorFile(state.round, state.phasesDone);
  await writeSafetensors(join(out, tensorFile), tensors, { round: String(state.round) });
  await writeJsonAtomic(join(out, OPEN_ROUND_FILE), { ...state, tensorFile });
  await removeOpenRoundTensors(out, tensorFile);
}

/**
 * Removes the record of a round under way: once its round is saved (`state.json`), on a fresh
 * start, or when it is stale.
 */
export async function clearOpenRound(out: string): Promise<void> {
  await Deno.remove(join(out, OPEN_ROUND_FILE)).catch((err) => {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  });
  await removeOpenRoundTensors(out, null);
}

async function removeOpenRoundTensors(out: string, keep: string | null): Promise<void> {
  for await (const entry of Deno.readDir(out)) {
    if (OPEN_ROUND_TENSORS.test(entry.name) && entry.name !== keep) {
      await Deno.remove(join(out, entry.name)).catch(() => {});
    }
  }
}

/** What a round under way must fit, beside {@link StateExpectations}' settings. */
export interface OpenRoundExpectations {
  configKey: string;
  /** The round the saved state leaves next (completed rounds + 1). */
  round: number;
  /** The method's phase names, in order. */
  phaseNames: readonly string[];
  dims: LoraDims;
  /** The restored run's ledger (null without DP, or a fresh one before round 1). */
  ledger: LedgerState | null;
  /** As {@link StateExpectations.ledger}. */
  expectLedger?: StateExpectations["ledger"];
}

/**
 * Reads and validates the round under way in `out`, or `null` when there is none. A record of an
 * earlier round (the round was saved, then the run stopped before removing it) is removed and
 * `null` returned. Refused ({@link DamagedStateError}, naming the file): another settings key, a
 * later round than the saved state leaves next, a phase count or phase names that are not the
 * method's first phases, a ledger that is not the saved run's ledger with exactly those phases'
 * releases of this round added (or whose releases the mechanism would not make), tensors
 * missing, misshapen or not finite.
 */
export async function loadOpenRound<P extends { phase?: unknown }>(
  out: string,
  expect: OpenRoundExpectations,
): Promise<RestoredOpenRound<P> | null> {
  const path = join(out, OPEN_ROUND_FILE);
  const bad = (file: string, what: string): never => {
    throw new DamagedStateError(`${file}: ${what}; ${FIX}`);
  };
  let raw: string;
  try {
    raw = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  const state = parseSaved<OpenRoundState<P>>(raw, path, expect.configKey, bad);
  if (!Number.isInteger(state.round) || state.round < 1) {
    bad(path, `"round" is ${show(state.round)}; expected a round number`);
  }
  if (state.round < expect.round) {
    await clearOpenRound(out); // that round was saved after this was written
    return null;
  }
  if (state.round > expect.round) {
    bad(path, `is of round ${state.round}, but the saved run's next round is ${expect.round}`);
  }
  const n = state.phasesDone;
  const phaseCount = expect.phaseNames.length;
  if (!(Number.isInteger(n) && n >= 1 && n < phaseCount)) {
    bad(path, `"phasesDone" is ${show(n)}; expected 1 to ${phaseCount - 1}`);
  }
  if (
    !Array.isArray(state.phases) || state.phases.length !== n ||
    state.phases.some((p, i) =>
      p === null || typeof p !== "object" || p.phase !== expect.phaseNames[i]
    )
  ) {
    bad(path, `"phases" are not the records of the method's first ${n} phases`);
  }
  for (const key of ["roundSeconds", "runSeconds"] as const) {
    const v = state[key];
    if (!(typeof v === "number" && Number.isFinite(v) && v >= 0)) {
      bad(path, `"${key}" is ${show(v)}; expected a number ≥ 0`);
    }
  }
  // The ledger: the saved run's, with this round's released phases recorded and nothing else.
  let ledger: LedgerState | null = null;
  if (expect.ledger) {
    try {
      ledger = restoreLedger(state.ledger, path);
    } catch (err) {
      bad(path, `"ledger" is invalid (${(err as Error).message})`);
    }
    const l = ledger!;
    const wrong = expect.expectLedger ? ledgerMismatch(l, expect.expectLedger) : null;
    if (wrong) bad(path, `"ledger" ${wrong}`);
    const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
    const before = expect.ledger;
    const released = phasesOf(state).filter((p) => p.effectiveNoiseMultiplier !== null).length;
    const added = l.releases.slice(before.releases.length);
    if (
      !same(l.rounds, before.rounds) ||
      !same(l.releases.slice(0, before.releases.length), before.releases) ||
      added.length !== released || added.some((r) => r.round !== expect.round)
    ) {
      bad(
        path,
        `"ledger" is not the saved run's ledger with the ${released} release(s) of round ` +
          `${expect.round}'s first ${n} phase(s) added`,
      );
    }
  } else if (state.ledger !== null) {
    bad(path, `"ledger" is set, but the run has no differential privacy`);
  }
  const tensorPath = join(out, openRoundTensorFile(state.round, n));
  if (state.tensorFile !== openRoundTensorFile(state.round, n)) {
    bad(
      path,
      `"tensorFile" is ${show(state.tensorFile)}; expected "${
        openRoundTensorFile(state.round, n)
      }"`,
    );
  }
  await confine(out, tensorPath, bad);
  const tensors = await readTensors(tensorPath, bad);
  const { adapters, rank, dIn, dOut } = expect.dims;
  const take = tensorTaker(tensors, tensorPath, bad, new Set());
  const global: LoraFactors = {
    A: Array.from({ length: adapters }, (_, i) => take(`global.${i}.A`, rank * dIn)),
    B: Array.from({ length: adapters }, (_, i) => take(`global.${i}.B`, dOut * rank)),
  };
  const residual = tensors["residual.0"]
    ? Array.from({ length: adapters }, (_, i) => take(`residual.${i}`, dOut * dIn))
    : undefined;
  const known = 2 * adapters + (residual ? adapters : 0);
  if (Object.keys(tensors).length !== known) {
    bad(tensorPath, `holds ${Object.keys(tensors).length} tensors; expected ${known}`);
  }
  return { state: { ...state, ledger }, global, residual };
}

/**
 * A saved state file's JSON: an object of version 1 written under the run's settings key (another
 * key: resume with the same settings), with the name of its tensors file to be checked.
 */
function parseSaved<T extends { version: number; configKey: string }>(
  raw: string,
  path: string,
  configKey: string,
  bad: (f: string, w: string) => never,
): T & { tensorFile: unknown } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    return bad(path, `is not valid JSON (${(err as Error).message})`);
  }
  const state = parsed as T & { tensorFile: unknown };
  if (state === null || typeof state !== "object" || Array.isArray(state)) {
    bad(path, "does not hold a JSON object");
  }
  if (state.version !== 1) bad(path, `"version" is ${show(state.version)}; expected 1`);
  if (state.configKey !== configKey) {
    throw new DamagedStateError(
      `${path} was written by a run with other settings; resume with the same settings, or ` +
        `start the run again without resume (this replaces the saved run)`,
    );
  }
  return state;
}

function show(v: unknown): string {
  return v === undefined ? "missing" : JSON.stringify(v);
}

function phasesOf(r: unknown): { effectiveNoiseMultiplier: unknown }[] {
  const phases = (r as { phases?: unknown }).phases;
  return Array.isArray(phases) ? phases : [];
}

const METRIC_KEYS = ["accuracy", "recall", "precision", "f1", "auc"] as const;

function checkBest(best: unknown, n: number, fail: (what: string) => never): void {
  const b = best as SavedState["best"];
  if (b === null || typeof b !== "object") fail(`"best" is ${show(best)}; expected an object`);
  if (!(Number.isInteger(b.round) && b.round >= 1 && b.round <= n)) {
    fail(`"best.round" is ${show(b.round)}; expected a round from 1 to ${n}`);
  }
  for (const split of ["val", "test"] as const) {
    const m = b[split] as Record<string, unknown> | null;
    if (m === null || typeof m !== "object") {
      fail(`"best.${split}" is ${show(m)}; expected metrics`);
    }
    for (const k of METRIC_KEYS) {
      const v = m[k];
      // AUC is NaN (null in JSON) when a split lacks a class.
      if (!(v === null || (typeof v === "number" && v >= 0 && v <= 1))) {
        fail(`"best.${split}.${k}" is ${show(v)}; expected a fraction in [0, 1]`);
      }
    }
  }
}

async function readLines(path: string, bad: (f: string, w: string) => never): Promise<string[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    return bad(path, `cannot be read (${(err as Error).message})`);
  }
  return text.split("\n").filter((l) => l.trim() !== "");
}

/** Rounds of the checkpoints in `out/checkpoints/`. */
async function checkpointRounds(out: string): Promise<number[]> {
  try {
    const names = await Array.fromAsync(Deno.readDir(join(out, "checkpoints")));
    return names.map((e) => /^round-(\d{4,})\.safetensors$/.exec(e.name))
      .filter((m) => m !== null).map((m) => Number(m![1]));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
}

/** Refuses a file that is not a regular file inside `dir` once links are followed. */
async function confine(dir: string, path: string, bad: (f: string, w: string) => never) {
  let real: string, root: string;
  try {
    [real, root] = await Promise.all([Deno.realPath(path), Deno.realPath(dir)]);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return bad(path, "is missing");
    return bad(path, `cannot be read (${(err as Error).message})`);
  }
  const rel = relative(root, real);
  if (rel.startsWith("..") || resolve(root, rel) !== real || rel === "") {
    bad(path, `leads outside ${dir} (to ${real}); a run folder's state stays inside it`);
  }
  if (!(await Deno.stat(real)).isFile) bad(path, "is not a regular file");
}

/**
 * A reader of the named tensors of a state file: each present, of `length` values, all finite
 * (refused through `bad`, naming the file); the names read are added to `taken`.
 */
function tensorTaker(
  tensors: Record<string, { data: unknown }>,
  path: string,
  bad: (f: string, w: string) => never,
  taken: Set<string>,
): (name: string, length: number) => Float32Array {
  return (name, length) => {
    const data = tensors[name]?.data as ArrayLike<number> | undefined;
    if (!data) return bad(path, `tensor "${name}" is missing`);
    if (data.length !== length) {
      bad(path, `tensor "${name}" has ${data.length} values; expected ${length}`);
    }
    const values = Float32Array.from(data);
    const at = values.findIndex((v) => !Number.isFinite(v));
    if (at >= 0) bad(path, `tensor "${name}" holds ${values[at]} at index ${at}`);
    taken.add(name);
    return values;
  };
}

async function readTensors(path: string, bad: (f: string, w: string) => never) {
  return (await readTensorsWithMeta(path, bad)).tensors;
}

async function readTensorsWithMeta(path: string, bad: (f: string, w: string) => never) {
  try {
    return await readSafetensors(path);
  } catch (err) {
    const msg = (err as Error).message.replace(`${path}: `, "");
    return bad(path, `cannot be read as safetensors (${msg})`);
  }
}
