/**
 * The federation's transport on NATS JetStream: one durable work queue per site for round tasks,
 * one results stream, a KV bucket for the coordinator's round state and for the acceptance of
 * results, and object buckets for payloads larger than one message (names in `subjects.ts`,
 * messages in `protocol.ts`, bytes in `codec.ts`).
 *
 * Leases: a site's task is a JetStream message under explicit ack. Taking it starts a lease of
 * `leaseMs` (the consumer's AckWait); {@link Lease.heartbeat} (an in-progress ack) restarts it;
 * a site that dies without acking gets the task back after the lease, with `attempt` one higher.
 * The coordinator accepts the first valid result per (run, round, phase, site) by creating a KV
 * key, an atomic step, so a redelivered task never yields two accepted results; every other result
 * is refused and the refusal recorded under `refused.<run>.<seq>`.
 *
 * Usage, against a running nats-server (`startNatsServer`, `deno task federation server`): the
 * coordinator `const nc = await connectFederation(server.url, server.credentials("coordinator"))`,
 * `const coordinator = await openCoordinator(nc, { run: "run-1", sites: ["a", "b"] })`, then per
 * phase `await coordinator.sendTasks({ round, phase, deadline, global, tasks })` and
 * `await coordinator.collectPhase({ round, phase, sites, deadline, spec })`; a site
 * `const lease = await (await openSite(nc, "a")).nextTask(5000)`, `await lease.global()`,
 * `await lease.publishResult(release, report)` (see tests/federation_leases.test.ts).
 * @module
 */
import { connect, nkeyAuthenticator } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  AckPolicy,
  type Consumer,
  DeliverPolicy,
  jetstream,
  type JetStreamClient,
  type JetStreamManager,
  jetstreamManager,
  type JsMsg,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import { type ObjectStore, Objm } from "@nats-io/obj";
import {
  type ArraySpec,
  checkArrays,
  decodePayload,
  encodePayload,
  type Payload,
  PayloadError,
  sha256Hex,
} from "./codec.ts";
import {
  acceptedKey,
  type BlobRef,
  checkResultEnvelope,
  checkTaskEnvelope,
  refusedKey,
  type ResultEnvelope,
  resultMessageId,
  type TaskEnvelope,
  taskMessageId,
} from "./protocol.ts";
import { checkSiteName, type FederationNames, federationNames } from "./subjects.ts";
import type { Credentials } from "./server.ts";

/** Connects to the federation's server as one identity (nkey + TLS client certificate). */
export async function connectFederation(
  url: string,
  creds: Credentials,
  { timeoutMs = 10_000 } = {},
): Promise<NatsConnection> {
  let seed: string;
  try {
    seed = (await Deno.readTextFile(creds.seedFile)).trim();
  } catch (err) {
    throw new Error(`cannot read the nkey seed of ${creds.name} (${creds.seedFile}): ${err}`);
  }
  return await connect({
    servers: url,
    name: `deer-${creds.name}`,
    timeout: timeoutMs,
    tls: { caFile: creds.caFile, certFile: creds.certFile, keyFile: creds.keyFile },
    authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
    // A site may subscribe only under its own inbox prefix (subjects.ts).
    ...(creds.name === "coordinator"
      ? {}
      : { inboxPrefix: federationNames().inboxPrefix(creds.name) }),
  });
}

/** Settings of a federation on the server (the coordinator's side). */
export interface TransportSettings {
  /** The run (a digest of the coordinator's settings); results of another run are refused. */
  run: string;
  /** The sites of this run. */
  sites: readonly string[];
  /** Subject prefix (default "deer"). */
  prefix?: string;
  /** A site's lease on a task: the task consumer's AckWait (default 30 s). */
  leaseMs?: number;
  /** Deliveries of one task before JetStream gives up on it (default 5). */
  maxDeliver?: number;
  /** The coordinator's AckWait on results: a crash before acking redelivers after it (10 s). */
  resultAckWaitMs?: number;
  /** JetStream's duplicate window for task and result message ids (default 2 min). */
  duplicateWindowMs?: number;
  /** Largest blob the coordinator fetches (default 512 MiB). */
  maxBlobBytes?: number;
}

const ms = (n: number) => n * 1_000_000; // JetStream durations are nanoseconds

/** Creates a stream, or updates it to `config` when it exists. */
async function ensureStream(
  jsm: JetStreamManager,
  config: Parameters<JetStreamManager["streams"]["add"]>[0],
) {
  try {
    await jsm.streams.info(config.name!);
  } catch {
    await jsm.streams.add(config);
    return;
  }
  await jsm.streams.update(config.name!, config);
}

/**
 * Creates (or brings up to date) everything a federation needs on the server: the tasks stream
 * with one durable consumer per site, the results stream with the coordinator's consumer, the
 * state bucket, the global-factors bucket and one upload bucket per site. Idempotent.
 */
export async function provisionFederation(
  nc: NatsConnection,
  settings: TransportSettings,
): Promise<FederationNames> {
  const names = federationNames(settings.prefix);
  settings.sites.forEach(checkSiteName);
  const jsm = await jetstreamManager(nc);
  const window = ms(settings.duplicateWindowMs ?? 120_000);
  await ensureStream(jsm, {
    name: names.tasksStream,
    subjects: [`${names.prefix}.task.*`],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    duplicate_window: window,
  });
  await ensureStream(jsm, {
    name: names.resultsStream,
    subjects: [`${names.prefix}.result.*`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    duplicate_window: window,
  });
  for (const site of settings.sites) {
    const config = {
      durable_name: names.taskConsumer(site),
      filter_subject: names.taskSubject(site),
      ack_policy: AckPolicy.Explicit,
      ack_wait: ms(settings.leaseMs ?? 30_000),
      max_deliver: settings.maxDeliver ?? 5,
      deliver_policy: DeliverPolicy.All,
    };
    try {
      await jsm.consumers.add(names.tasksStream, config);
    } catch {
      await jsm.consumers.update(names.tasksStream, config.durable_name, config);
    }
  }
  const resultsConsumer = {
    durable_name: names.resultsConsumer,
    filter_subject: `${names.prefix}.result.*`,
    ack_policy: AckPolicy.Explicit,
    ack_wait: ms(settings.resultAckWaitMs ?? 10_000),
    max_deliver: -1,
    deliver_policy: DeliverPolicy.All,
  };
  try {
    await jsm.consumers.add(names.resultsStream, resultsConsumer);
  } catch {
    await jsm.consumers.update(names.resultsStream, names.resultsConsumer, resultsConsumer);
  }
  await new Kvm(nc).create(names.stateBucket, { history: 1, storage: StorageType.File });
  const objm = new Objm(nc);
  await objm.create(names.globalBucket, { storage: StorageType.File });
  for (const site of settings.sites) {
    await objm.create(names.uploadBucket(site), { storage: StorageType.File });
  }
  return names;
}

/**
 * One message from a pull consumer, or null when none came within `expires`. A pull also ends
 * when the client misses two of the server's idle heartbeats (a server stalled for a few seconds,
 * or a client starved of CPU); that is an empty poll here, not a failure: the caller polls again,
 * and a message the ended pull may have been carrying is redelivered after the consumer's ack
 * wait (a task's lease, a result's `resultAckWaitMs`).
 */
async function pull(consumer: Consumer, expires: number): Promise<JsMsg | null> {
  try {
    return await consumer.next({ expires });
  } catch (err) {
    if (err instanceof Error && err.message === "heartbeats missed") return null;
    throw err;
  }
}

/** Room left in a message for the NATS headers. */
const HEADROOM = 4096;

/** Puts `bytes` under `name` in `store` unless an object with that digest is there already. */
async function putBlob(
  store: ObjectStore,
  bucket: string,
  name: string,
  bytes: Uint8Array,
): Promise<BlobRef> {
  const sha256 = await sha256Hex(bytes);
  const ref = { bucket, name, bytes: bytes.length, sha256 };
  const info = await store.info(name).catch(() => null);
  if (info && !info.deleted && info.size === bytes.length) {
    const existing = await store.getBlob(name);
    if (existing && await sha256Hex(existing) === sha256) return ref;
  }
  await store.putBlob({ name }, bytes);
  return ref;
}

/** Fetches a blob and checks its size and digest against `ref`. */
async function getBlob(store: ObjectStore, ref: BlobRef, maxBytes: number): Promise<Uint8Array> {
  if (ref.bytes > maxBytes) {
    throw new PayloadError(
      `blob ${ref.bucket}/${ref.name}: ${ref.bytes} bytes exceeds ${maxBytes}`,
    );
  }
  // One `get`: its info and its data are the same version of the object, and the data is read
  // with a cap, so a blob replaced by a larger one after the check cannot make it allocate more.
  const result = await store.get(ref.name);
  if (!result || result.info.deleted) {
    await result?.data.cancel();
    throw new PayloadError(`blob ${ref.bucket}/${ref.name} is missing`);
  }
  if (result.info.size !== ref.bytes) {
    await result.data.cancel();
    throw new PayloadError(
      `blob ${ref.bucket}/${ref.name} holds ${result.info.size} bytes; the message declares ` +
        `${ref.bytes}`,
    );
  }
  const bytes = new Uint8Array(ref.bytes);
  let filled = 0;
  const reader = result.data.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (filled + value.length > ref.bytes) {
      await reader.cancel();
      throw new PayloadError(`blob ${ref.bucket}/${ref.name} changed while it was read`);
    }
    bytes.set(value, filled);
    filled += value.length;
  }
  const failed = await result.error;
  if (failed) {
    throw new PayloadError(`blob ${ref.bucket}/${ref.name}: ${failed.message}`);
  }
  if (filled !== ref.bytes) {
    throw new PayloadError(`blob ${ref.bucket}/${ref.name} changed while it was read`);
  }
  const digest = await sha256Hex(bytes);
  if (digest !== ref.sha256) {
    throw new PayloadError(
      `blob ${ref.bucket}/${ref.name}: SHA-256 ${digest} ≠ declared ${ref.sha256}`,
    );
  }
  return bytes;
}

/**
 * The message for an envelope and its arrays: inline when it fits in `maxMessage`, else the
 * arrays go to `store` as a blob and the message carries the envelope with the blob's ref under
 * `refField`. Returns the message and the blob's size (0 when inline).
 */
async function envelopeMessage(
  envelope: Record<string, unknown>,
  refField: "global" | "release",
  arrays: Payload["arrays"],
  maxMessage: number,
  store: () => Promise<{ store: ObjectStore; bucket: string; name: string }>,
): Promise<{ data: Uint8Array; blob: number }> {
  const inline = await encodePayload({ meta: { ...envelope, [refField]: null }, arrays });
  if (inline.length <= maxMessage) return { data: inline, blob: 0 };
  const { store: s, bucket, name } = await store();
  const ref = await putBlob(s, bucket, name, inline);
  return {
    data: await encodePayload({ meta: { ...envelope, [refField]: ref }, arrays: [] }),
    blob: inline.length,
  };
}

/** A result the coordinator accepted. */
export interface AcceptedResult {
  envelope: ResultEnvelope;
  release: Payload;
  /** The result's sequence in the results stream. */
  seq: number;
}

/** A result the coordinator refused, as recorded in the state bucket. */
export interface Refusal {
  site: string;
  seq: number;
  round: number | null;
  phase: number | null;
  attempt: number | null;
  reason: string;
  at: string;
}

/**
 * The encoded bytes that crossed the transport for one site in one round phase, as the
 * coordinator counted them: `to-site`, the task message it published and the global-factors blob
 * that message refers to (the site fetches it once per attempt); `from-site`, the result message
 * it took (accepted or refused) and the release blob it fetched. NATS' own framing, JetStream
 * acknowledgements and heartbeats are not included.
 */
export interface Traffic {
  /** Null for a result whose envelope could not be read. */
  round: number | null;
  phase: number | null;
  site: string;
  direction: "to-site" | "from-site";
  /** Bytes of the message body (a factor payload, `codec.ts`). */
  message: number;
  /** Bytes of the object-store blob the message refers to; 0 when the arrays were inline. */
  blob: number;
}

/** What {@link Coordinator.takeResult} made of one message. */
export type ResultOutcome =
  | { status: "accepted"; result: AcceptedResult }
  | { status: "refused"; refusal: Refusal };

/** The outcome of one phase (see {@link Coordinator.collectPhase}). */
export interface PhaseResults {
  accepted: Map<string, AcceptedResult>;
  /** Sites with no accepted result by the deadline, in the order they were expected. */
  missing: string[];
  refused: Refusal[];
}

/** The coordinator's side of the transport. */
export interface Coordinator {
  names: FederationNames;
  /** The state bucket (round state; also holds the `accepted.*` and `refused.*` keys). */
  state: KV;
  /** Writes the global factors once and queues one task per site. */
  sendTasks(opts: {
    round: number;
    phase: number;
    deadline: Date;
    global: Payload["arrays"];
    tasks: { site: string; settings: Record<string, unknown> }[];
  }): Promise<void>;
  /**
   * Waits up to `timeoutMs` for one result; accepts or refuses it (recording either in the state
   * bucket) and acks it. Results of another (round, phase) than `current` are refused as stale.
   */
  takeResult(
    current: { round: number; phase: number },
    spec: readonly ArraySpec[],
    timeoutMs: number,
  ): Promise<ResultOutcome | null>;
  /**
   * Gathers the results of one phase until every site in `sites` has one accepted, or the
   * deadline passes (overrun by at most 1 s, JetStream's shortest pull). Results accepted
   * before (by a coordinator that crashed) count.
   */
  collectPhase(opts: {
    round: number;
    phase: number;
    sites: readonly string[];
    deadline: Date;
    spec: readonly ArraySpec[];
  }): Promise<PhaseResults>;
  /** The results accepted so far for (round, phase), read back from the results stream. */
  acceptedResults(round: number, phase: number): Promise<Map<string, AcceptedResult>>;
  /** Every refusal recorded for this run, in stream order. */
  refusals(): Promise<Refusal[]>;
  /** Reads one JSON value of the round state (null when absent). */
  loadState<T>(key: string): Promise<T | null>;
  /** Writes one JSON value of the round state. */
  saveState(key: string, value: unknown): Promise<void>;
  /** The bytes sent and taken by this coordinator so far, one entry per message (a copy). */
  traffic(): Traffic[];
}

/** Provisions the federation and opens the coordinator's side of it. */
export async function openCoordinator(
  nc: NatsConnection,
  settings: TransportSettings,
): Promise<Coordinator> {
  const names = await provisionFederation(nc, settings);
  const js: JetStreamClient = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const state = await new Kvm(nc).open(names.stateBucket);
  const objm = new Objm(nc);
  const global = await objm.open(names.globalBucket);
  const uploads = new Map<string, ObjectStore>();
  const uploadStore = async (site: string) => {
    if (!uploads.has(site)) uploads.set(site, await objm.open(names.uploadBucket(site)));
    return uploads.get(site)!;
  };
  const maxMessage = nc.info!.max_payload - HEADROOM;
  const maxBlobBytes = settings.maxBlobBytes ?? 512 * 1024 * 1024;
  const { run } = settings;
  const consumer = await js.consumers.get(names.resultsStream, names.resultsConsumer);
  const traffic: Traffic[] = [];

  /** Decodes a stored result message fully (fetching its blob); throws PayloadError. */
  const readResult = async (
    subject: string,
    data: Uint8Array,
    spec: readonly ArraySpec[] | null,
  ) => {
    const subjectSite = subject.slice(names.prefix.length + ".result.".length);
    const small = await decodePayload(data);
    const envelope = checkResultEnvelope(small.meta, { run, sites: settings.sites, subjectSite });
    let release: Payload = small;
    if (envelope.release) {
      if (small.arrays.length > 0) {
        throw new PayloadError("a result with a blob ref carries arrays too");
      }
      if (envelope.release.bucket !== names.uploadBucket(envelope.site)) {
        throw new PayloadError(
          `result of ${envelope.site} refers to bucket ${envelope.release.bucket}; ` +
            `a site's release must be in its own bucket ${names.uploadBucket(envelope.site)}`,
        );
      }
      const bytes = await getBlob(await uploadStore(envelope.site), envelope.release, maxBlobBytes);
      release = await decodePayload(bytes);
      const inner = release.meta;
      for (const k of ["run", "round", "phase", "site", "attempt"] as const) {
        if (inner[k] !== envelope[k]) {
          throw new PayloadError(
            `the blob of ${envelope.site}'s result has ${k} ${inner[k]}; the message ${
              envelope[k]
            }`,
          );
        }
      }
    }
    if (spec) checkArrays(release, spec, `release of ${envelope.site}`);
    return {
      envelope,
      release: { meta: envelope as unknown as Record<string, unknown>, arrays: release.arrays },
    };
  };

  const refuse = async (msg: JsMsg, reason: string, envelope: Partial<ResultEnvelope>) => {
    const seq = msg.info.streamSequence;
    const refusal: Refusal = {
      site: envelope.site ?? msg.subject.slice(names.prefix.length + ".result.".length),
      seq,
      round: envelope.round ?? null,
      phase: envelope.phase ?? null,
      attempt: envelope.attempt ?? null,
      reason,
      at: new Date().toISOString(),
    };
    await state.put(refusedKey(run, seq), JSON.stringify(refusal));
    await msg.ackAck();
    return { status: "refused" as const, refusal };
  };

  const takeResult: Coordinator["takeResult"] = async (current, spec, timeoutMs) => {
    const msg = await pull(consumer, Math.max(1000, timeoutMs));
    if (!msg) return null;
    const seq = msg.info.streamSequence;
    let read;
    try {
      read = await readResult(msg.subject, msg.data, spec);
    } catch (err) {
      if (!(err instanceof PayloadError)) throw err;
      traffic.push({
        round: null,
        phase: null,
        site: msg.subject.slice(names.prefix.length + ".result.".length),
        direction: "from-site",
        message: msg.data.length,
        blob: 0,
      });
      return await refuse(msg, err.message, {});
    }
    const { envelope } = read;
    traffic.push({
      round: envelope.round,
      phase: envelope.phase,
      site: envelope.site,
      direction: "from-site",
      message: msg.data.length,
      blob: envelope.release?.bytes ?? 0,
    });
    if (envelope.round !== current.round || envelope.phase !== current.phase) {
      return await refuse(
        msg,
        `stale: round ${envelope.round} phase ${envelope.phase} arrived during round ` +
          `${current.round} phase ${current.phase} (after its deadline or from before a restart)`,
        envelope,
      );
    }
    const key = acceptedKey(run, envelope.round, envelope.phase, envelope.site);
    const record = { seq, attempt: envelope.attempt, at: new Date().toISOString() };
    try {
      await state.create(key, JSON.stringify(record));
    } catch (err) {
      const existing = await state.get(key);
      if (!existing || existing.operation !== "PUT") throw err;
      const first = existing.json<{ seq: number; attempt: number }>();
      if (first.seq !== seq) {
        return await refuse(
          msg,
          `duplicate: ${envelope.site} already has an accepted result for round ` +
            `${envelope.round} phase ${envelope.phase} (attempt ${first.attempt}, seq ${first.seq})`,
          envelope,
        );
      }
      // The same message again (we crashed before acking it): still the accepted one.
    }
    await msg.ackAck();
    return { status: "accepted", result: { envelope, release: read.release, seq } };
  };

  const acceptedResults: Coordinator["acceptedResults"] = async (round, phase) => {
    const out = new Map<string, AcceptedResult>();
    const keys = await state.keys(`accepted.${run}.${round}.${phase}.*`);
    for await (const key of keys) {
      const entry = await state.get(key);
      if (!entry || entry.operation !== "PUT") continue;
      const { seq } = entry.json<{ seq: number }>();
      const stored = await jsm.streams.getMessage(names.resultsStream, { seq });
      if (!stored) throw new Error(`accepted result ${key} (seq ${seq}) is gone from the stream`);
      const { envelope, release } = await readResult(stored.subject, stored.data, null);
      out.set(envelope.site, { envelope, release, seq });
    }
    return out;
  };

  return {
    names,
    state,
    async sendTasks({ round, phase, deadline, global: arrays, tasks }) {
      for (const { site, settings: taskSettings } of tasks) {
        if (!settings.sites.includes(site)) throw new Error(`task for unknown site ${site}`);
        const envelope = {
          kind: "task",
          v: 1,
          run,
          round,
          phase,
          site,
          deadline: deadline.toISOString(),
          settings: taskSettings,
        } satisfies Omit<TaskEnvelope, "global">;
        const { data, blob } = await envelopeMessage(
          envelope,
          "global",
          arrays,
          maxMessage,
          () =>
            Promise.resolve({
              store: global,
              bucket: names.globalBucket,
              name: `${run}.r${round}.p${phase}`,
            }),
        );
        await js.publish(names.taskSubject(site), data, { msgID: taskMessageId(envelope) });
        traffic.push({ round, phase, site, direction: "to-site", message: data.length, blob });
      }
    },
    takeResult,
    acceptedResults,
    async collectPhase({ round, phase, sites, deadline, spec }) {
      const accepted = await acceptedResults(round, phase);
      const refused: Refusal[] = [];
      while (sites.some((s) => !accepted.has(s))) {
        const left = deadline.getTime() - Date.now();
        if (left <= 0) break;
        const outcome = await takeResult({ round, phase }, spec, Math.min(left, 5000));
        if (outcome?.status === "accepted") {
          accepted.set(outcome.result.envelope.site, outcome.result);
        }
        if (outcome?.status === "refused") refused.push(outcome.refusal);
      }
      return { accepted, missing: sites.filter((s) => !accepted.has(s)), refused };
    },
    async refusals() {
      const out: Refusal[] = [];
      for await (const key of await state.keys(`refused.${run}.*`)) {
        const entry = await state.get(key);
        if (entry && entry.operation === "PUT") out.push(entry.json<Refusal>());
      }
      return out.sort((a, b) => a.seq - b.seq);
    },
    async loadState<T>(key: string) {
      const entry = await state.get(`state.${run}.${key}`);
      return entry && entry.operation === "PUT" ? entry.json<T>() : null;
    },
    async saveState(key, value) {
      await state.put(`state.${run}.${key}`, JSON.stringify(value));
    },
    traffic: () => traffic.map((t) => ({ ...t })),
  };
}

/** A site's hold on one task. */
export interface Lease {
  task: TaskEnvelope;
  /** The task's delivery count: 1 on the first lease, higher after a lapsed one. */
  attempt: number;
  /** The global factors of the task (fetched from the object store when they are a blob). */
  global(): Promise<Payload>;
  /** Restarts the lease (an in-progress ack). */
  heartbeat(): void;
  /** Publishes the release as this site's result, then acks the task (ending the lease). */
  publishResult(release: Payload["arrays"], report?: Record<string, unknown>): Promise<void>;
  /** Gives the task back at once (or after `delayMs`), for another attempt. */
  giveBack(delayMs?: number): void;
}

/** A site's side of the transport. */
export interface Site {
  name: string;
  names: FederationNames;
  /** Waits up to `timeoutMs` for this site's next task; null when none came. */
  nextTask(timeoutMs: number): Promise<Lease | null>;
}

/** Opens site `site`'s side (its task queue, its upload bucket, the global bucket). */
export async function openSite(
  nc: NatsConnection,
  site: string,
  { prefix, maxBlobBytes = 512 * 1024 * 1024 }: { prefix?: string; maxBlobBytes?: number } = {},
): Promise<Site> {
  checkSiteName(site);
  const names = federationNames(prefix);
  const js = jetstream(nc, { checkAPI: false });
  const consumer = await js.consumers.get(names.tasksStream, names.taskConsumer(site));
  const objm = new Objm(js);
  let upload: ObjectStore | null = null;
  let global: ObjectStore | null = null;
  const maxMessage = nc.info!.max_payload - HEADROOM;
  return {
    name: site,
    names,
    async nextTask(timeoutMs) {
      const msg = await pull(consumer, Math.max(1000, timeoutMs));
      if (!msg) return null;
      const small = await decodePayload(msg.data);
      const task = checkTaskEnvelope(small.meta, site);
      const attempt = msg.info.deliveryCount;
      return {
        task,
        attempt,
        async global() {
          if (!task.global) return small;
          if (task.global.bucket !== names.globalBucket) {
            throw new PayloadError(
              `task refers to bucket ${task.global.bucket}, not ${names.globalBucket}`,
            );
          }
          global ??= await objm.open(names.globalBucket);
          return await decodePayload(await getBlob(global, task.global, maxBlobBytes));
        },
        heartbeat: () => msg.working(),
        async publishResult(arrays, report = {}) {
          const envelope = {
            kind: "result",
            v: 1,
            run: task.run,
            round: task.round,
            phase: task.phase,
            site,
            attempt,
            report,
          } satisfies Omit<ResultEnvelope, "release">;
          const { data } = await envelopeMessage(
            envelope,
            "release",
            arrays,
            maxMessage,
            async () => {
              upload ??= await objm.open(names.uploadBucket(site));
              return {
                store: upload,
                bucket: names.uploadBucket(site),
                name: `${task.run}.r${task.round}.p${task.phase}.a${attempt}`,
              };
            },
          );
          await js.publish(names.resultSubject(site), data, { msgID: resultMessageId(envelope) });
          await msg.ackAck();
        },
        giveBack: (delayMs) => msg.nak(delayMs),
      };
    },
  };
}

/**
 * Runs `work` while heartbeating the lease every `everyMs` (keep it well under the lease), so a
 * long local training keeps its task; a process that dies stops heartbeating and loses it.
 */
export async function withHeartbeat<T>(
  lease: Lease,
  everyMs: number,
  work: () => Promise<T>,
): Promise<T> {
  const timer = setInterval(() => lease.heartbeat(), everyMs);
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}
