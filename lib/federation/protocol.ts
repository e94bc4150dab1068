/**
 * The coordinator/site protocol: what travels on the task queues and the results stream.
 *
 * Every message body is one factor payload (`codec.ts`); its `meta` is the envelope below. A
 * payload larger than what fits in one message goes to the object store, and the message then
 * carries an envelope with a {@link BlobRef} and no arrays. So a receiver always decodes one small
 * payload first, checks the envelope, and only then fetches a blob whose size and digest it
 * already knows.
 *
 * One round phase, as the coordinator runs it:
 *
 * 1. the coordinator saves the phase's state in the KV bucket, writes the global factors (when
 *    they do not fit in a message) to the `global` object bucket once, as a blob holding only
 *    what every site's task shares ({@link GlobalBlobMeta} and the arrays), and publishes one
 *    {@link TaskEnvelope} per participating site on that site's work queue (`Nats-Msg-Id` =
 *    {@link taskMessageId}, which names the coordinator's start, its `epoch`: a resumed
 *    coordinator republishing the same task inside the duplicate window is dropped by JetStream,
 *    a fresh start of the same run is not);
 * 2. a site pulls its task (a lease of `leaseMs`, extended by in-progress heartbeats while it
 *    trains), fetches the global factors, trains, and publishes a {@link ResultEnvelope} with its
 *    release on its own results subject (`Nats-Msg-Id` = {@link resultMessageId}, with a random
 *    nonce no other site can guess), then acks the task. A site that dies without acking gets
 *    the task back after the lease, with `attempt` one higher;
 * 3. the coordinator accepts the first valid result per (run, round, phase, site) — an atomic
 *    create of {@link acceptedKey} in the KV bucket — and refuses, with a recorded reason, any
 *    other: a second attempt, a late or stale one (of another round or phase, or of a task of an
 *    earlier start of the run), an unknown site or one not asked in this phase, a site claiming
 *    another's name, a wrong shape, a non-finite value, a bad digest. Sites that have no accepted
 *    result by the deadline are excluded from the phase.
 *
 * Releases are drawn from named random streams (seed, round, phase, site), so two attempts of one
 * task release the same numbers: a duplicate tells nothing new, and a resumed run is identical.
 *
 * @example
 * ```ts
 * const meta = {
 *   kind: "task", v: 1, run: "run-1", round: 1, phase: 0, site: "site-a",
 *   deadline: "2030-01-01T00:00:00.000Z", global: null, settings: {},
 * };
 * const task: TaskEnvelope = checkTaskEnvelope(meta, "site-a"); // as a site receives it
 * task.round; // 1
 * ```
 * @module
 */
import { PayloadError } from "./codec.ts";
import { SITE_NAME_PATTERN } from "./subjects.ts";
import { randomHex } from "../hex.ts";

/** Where a payload too large for one message lies: an object of the JetStream object store. */
export interface BlobRef {
  bucket: string;
  name: string;
  /** Exact size of the blob in bytes (checked against the limit before it is fetched). */
  bytes: number;
  /** Lower-case hex SHA-256 of the blob (checked after it is fetched). */
  sha256: string;
}

/** A round task: what the coordinator asks one site to do in one phase of one round. */
export interface TaskEnvelope {
  kind: "task";
  v: 1;
  /** The run this task belongs to (a digest of the coordinator's settings). */
  run: string;
  round: number;
  /** Index of the phase within the round (a method's phases, docs/method.md). */
  phase: number;
  site: string;
  /** When the coordinator stops waiting for this phase (ISO 8601). */
  deadline: string;
  /** The global factors the site starts from; null when they travel inline with the task. */
  global: BlobRef | null;
  /** What the engine needs to train this phase (opaque here: the engine's own record). */
  settings: Record<string, unknown>;
  /**
   * The coordinator's start of this run (random, made on every fresh start and kept across a
   * resume); the site echoes it in its result, so a result for a task of an earlier start of the
   * same run is refused as stale. Null in a task that does not carry one.
   */
  epoch: string | null;
}

/**
 * The `meta` of a global-factors blob: only what is the same for every site of one (run, round,
 * phase), so one blob serves every task of the phase (each task's envelope travels in its own
 * message).
 */
export interface GlobalBlobMeta {
  kind: "global";
  v: 1;
  run: string;
  epoch: string | null;
  round: number;
  phase: number;
}

/** A site's result for one task. */
export interface ResultEnvelope {
  kind: "result";
  v: 1;
  run: string;
  round: number;
  phase: number;
  site: string;
  /** The task message's delivery count when the site took it (1 on the first lease). */
  attempt: number;
  /** The release; null when its arrays travel inline in this message. */
  release: BlobRef | null;
  /** What the engine reports with the release (sample count, clipping, timings, …). */
  report: Record<string, unknown>;
  /** The task's {@link TaskEnvelope.epoch}, echoed (null when the task carried none). */
  epoch: string | null;
}

/**
 * The `Nats-Msg-Id` of a task (JetStream drops a republished one inside its window). It names the
 * coordinator's start (`epoch`): a resumed coordinator republishing a task is dropped, a fresh
 * start of the same run is not.
 */
export const taskMessageId = (
  t: Pick<TaskEnvelope, "run" | "round" | "phase" | "site"> & { epoch?: string | null },
) => `task:${t.run}:${t.epoch ?? "-"}:${t.round}:${t.phase}:${t.site}`;

/**
 * The `Nats-Msg-Id` of a result: JetStream deduplicates message ids across the whole results
 * stream, so an id another site could guess would let it suppress this result by publishing
 * junk under it first. `nonce` is random, drawn once per result and reused on that result's
 * publish retries (so a retried publish is still stored once).
 */
export const resultMessageId = (
  r: Pick<ResultEnvelope, "run" | "round" | "phase" | "site" | "attempt">,
  nonce: string,
) => `result:${r.run}:${r.round}:${r.phase}:${r.site}:${r.attempt}:${nonce}`;

/** A fresh random token (128 bits, hex): a result's message-id nonce, a coordinator's epoch. */
export function randomToken(): string {
  return randomHex(16);
}

/** The KV key whose atomic creation accepts a site's result for one phase. */
export const acceptedKey = (run: string, round: number, phase: number, site: string) =>
  `accepted.${run}.${round}.${phase}.${site}`;

/** The KV key of one refusal (`seq` is the result's stream sequence). */
export const refusedKey = (run: string, seq: number) => `refused.${run}.${seq}`;

const RUN_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const EPOCH_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** An optional token field: absent or null gives null; anything else must match `re`. */
function optionalText(
  meta: Record<string, unknown>,
  name: string,
  where: string,
  re: RegExp,
): string | null {
  return meta[name] === undefined || meta[name] === null ? null : text(meta, name, where, re);
}

function field(meta: Record<string, unknown>, name: string, where: string): unknown {
  if (!(name in meta)) throw new PayloadError(`${where}: field ${name} is missing`);
  return meta[name];
}

function integer(meta: Record<string, unknown>, name: string, where: string, min: number): number {
  const v = field(meta, name, where);
  if (!Number.isSafeInteger(v) || (v as number) < min) {
    throw new PayloadError(
      `${where}: ${name} = ${JSON.stringify(v)}; expected an integer ≥ ${min}`,
    );
  }
  return v as number;
}

function text(meta: Record<string, unknown>, name: string, where: string, re: RegExp): string {
  const v = field(meta, name, where);
  if (typeof v !== "string" || !re.test(v)) {
    throw new PayloadError(`${where}: ${name} = ${JSON.stringify(v)} is not a valid ${name}`);
  }
  return v;
}

function object(meta: Record<string, unknown>, name: string, where: string) {
  const v = field(meta, name, where);
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new PayloadError(`${where}: ${name} is not an object`);
  }
  return v as Record<string, unknown>;
}

/** Checks a {@link BlobRef} (null allowed). */
export function checkBlobRef(v: unknown, where: string): BlobRef | null {
  if (v === null) return null;
  if (typeof v !== "object" || Array.isArray(v)) throw new PayloadError(`${where}: not a blob ref`);
  const r = v as Record<string, unknown>;
  text(r, "bucket", where, /^[A-Za-z0-9_-]{1,128}$/);
  text(r, "name", where, /^[A-Za-z0-9_.:-]{1,256}$/);
  integer(r, "bytes", where, 0);
  text(r, "sha256", where, /^[0-9a-f]{64}$/);
  return { bucket: r.bucket, name: r.name, bytes: r.bytes, sha256: r.sha256 } as BlobRef;
}

/**
 * Checks a task's envelope as a site receives it: every field well formed, and the task meant
 * for `site` (the queue is the site's own, so anything else is a coordinator bug).
 */
export function checkTaskEnvelope(meta: Record<string, unknown>, site: string): TaskEnvelope {
  const where = "task";
  if (meta.kind !== "task" || meta.v !== 1) {
    throw new PayloadError(
      `${where}: kind ${JSON.stringify(meta.kind)} v ${meta.v}; expected task v1`,
    );
  }
  const t: TaskEnvelope = {
    kind: "task",
    v: 1,
    run: text(meta, "run", where, RUN_PATTERN),
    round: integer(meta, "round", where, 1),
    phase: integer(meta, "phase", where, 0),
    site: text(meta, "site", where, SITE_NAME_PATTERN),
    deadline: text(meta, "deadline", where, /^\d{4}-\d\d-\d\dT[\d:.]+Z$/),
    global: checkBlobRef(field(meta, "global", where), `${where}.global`),
    settings: object(meta, "settings", where),
    epoch: optionalText(meta, "epoch", where, EPOCH_PATTERN),
  };
  if (t.site !== site) {
    throw new PayloadError(`task for site ${t.site} arrived on the queue of site ${site}`);
  }
  return t;
}

/** What the coordinator expects of a result. */
export interface ResultExpectation {
  run: string;
  /** The sites of this federation. */
  sites: readonly string[];
  /** The site whose results subject carried the message (the server enforces who may publish). */
  subjectSite: string;
}

/**
 * Checks a result's envelope as the coordinator receives it: well formed, of this run, from a
 * site of the federation, and naming the site whose subject carried it (a site cannot publish
 * on another's subject; a payload claiming another site's name is refused here).
 */
export function checkResultEnvelope(
  meta: Record<string, unknown>,
  expect: ResultExpectation,
): ResultEnvelope {
  const where = `result on the subject of ${expect.subjectSite}`;
  if (!expect.sites.includes(expect.subjectSite)) {
    throw new PayloadError(
      `${where}: unknown site ${expect.subjectSite} (this run's sites: ${expect.sites.join(", ")})`,
    );
  }
  if (meta.kind !== "result" || meta.v !== 1) {
    throw new PayloadError(
      `${where}: kind ${JSON.stringify(meta.kind)} v ${meta.v}; expected result v1`,
    );
  }
  const r: ResultEnvelope = {
    kind: "result",
    v: 1,
    run: text(meta, "run", where, RUN_PATTERN),
    round: integer(meta, "round", where, 1),
    phase: integer(meta, "phase", where, 0),
    site: text(meta, "site", where, SITE_NAME_PATTERN),
    attempt: integer(meta, "attempt", where, 1),
    release: checkBlobRef(field(meta, "release", where), `${where}.release`),
    report: object(meta, "report", where),
    epoch: optionalText(meta, "epoch", where, EPOCH_PATTERN),
  };
  if (r.site !== expect.subjectSite) {
    throw new PayloadError(`${where}: it claims to come from site ${r.site}`);
  }
  if (r.run !== expect.run) {
    throw new PayloadError(`${where}: run ${r.run}; this coordinator runs ${expect.run}`);
  }
  return r;
}

/**
 * Checks the `meta` of a global-factors blob against the task that refers to it: a blob of the
 * same run, start, round and phase.
 */
export function checkGlobalBlobMeta(meta: Record<string, unknown>, task: TaskEnvelope): void {
  const where = `global factors of round ${task.round} phase ${task.phase}`;
  if (meta.kind !== "global" || meta.v !== 1) {
    throw new PayloadError(
      `${where}: kind ${JSON.stringify(meta.kind)} v ${meta.v}; expected global v1`,
    );
  }
  for (const k of ["run", "round", "phase"] as const) {
    if (meta[k] !== task[k]) {
      throw new PayloadError(`${where}: the blob has ${k} ${JSON.stringify(meta[k])}`);
    }
  }
  if ((meta.epoch ?? null) !== task.epoch) {
    throw new PayloadError(`${where}: the blob is of another start of run ${task.run}`);
  }
}
