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
 * A site is not trusted with anything beyond its own queue, subject and bucket: blobs are read
 * without following object-store links and within a time limit, result message ids carry a
 * random nonce, the results stream keeps a few results per site and an upload bucket a few
 * releases, a refusal that cannot be recorded is warned, an accepted result that cannot be read
 * back on a resume is taken as missing, and a coordinator opened without `resume` starts its run
 * afresh (docs/federation.md, "Hardening against a hostile site").
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
  DiscardPolicy,
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
  checkGlobalBlobMeta,
  checkResultEnvelope,
  checkTaskEnvelope,
  type GlobalBlobMeta,
  randomToken,
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
  /**
   * Whether this coordinator resumes the run (`serve --resume`): it keeps the run's accepted
   * results, refusals and round state, and its start (`epoch`), so that tasks it republishes are
   * dropped as duplicates and results accepted before count. Default false, a fresh start: the
   * run's accepted results, refusals and round state are deleted and a new epoch is drawn, so a
   * run started again with the same settings (the same run id) neither reuses the results of the
   * earlier start nor has its tasks dropped as duplicates of that start's, and results of tasks of
   * the earlier start are refused as stale.
   */
  resume?: boolean;
  /**
   * Results the results stream keeps per site (its subject), the oldest dropped first (default
   * 8): a site flooding its subject cannot fill the server's store, and loses only its own
   * oldest results. A resumed coordinator re-reads the accepted results of the round it resumes;
   * one that is gone is taken as missing.
   */
  resultsPerSite?: number;
  /**
   * A site's upload bucket holds this many of the run's largest legitimate release (plus 64 KiB
   * each), the oldest objects dropped first (default 8): a site cannot fill the server's store
   * through its bucket. The release size is that of the arrays `sendTasks` is told a release
   * holds (`release`), else of the global factors it sends; before a task sizes it, a bucket
   * holds two messages and 128 KiB. JetStream reserves a bucket's size in its store.
   */
  uploadReleases?: number;
  /**
   * Longest time one blob read may take (default 120 s); in a phase it is also cut at the phase's
   * deadline (at least 1 s), and a blob not read by then is refused.
   */
  blobTimeoutMs?: number;
  /** Where the coordinator's warnings go (default `console.error`). */
  onWarning?: (message: string) => void;
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
    // Per site: a site flooding its own subject drops its own oldest results, nobody else's.
    max_msgs_per_subject: settings.resultsPerSite ?? 8,
    discard: DiscardPolicy.Old,
    max_msg_size: nc.info!.max_payload,
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
    // Before a phase sizes it (`sendTasks`): room for a release of two messages.
    await limitUploadBucket(
      jsm,
      names.uploadBucket(site),
      2 * (nc.info!.max_payload + RELEASE_SLACK),
    )
      .catch((err) => warnOf(settings)(`${err.message}`));
  }
  return names;
}

/** Slack for a release's envelope and array directory beyond its arrays. */
const RELEASE_SLACK = 64 * 1024;

/** An upload bucket's size for releases of up to `release` bytes (see `uploadReleases`). */
function uploadBytes(settings: TransportSettings, release: number): number {
  return (settings.uploadReleases ?? 8) * (release + RELEASE_SLACK);
}

/** The warning sink of `settings`. */
const warnOf = (settings: TransportSettings) =>
  settings.onWarning ?? ((m: string) => console.error(`federation: ${m}`));

/**
 * Caps upload bucket `bucket` at `bytes` at least (it only grows), the oldest objects dropped
 * first, so a site cannot grow its bucket without limit and a put never fails for room. Returns
 * the bucket's cap. Throws, naming the bucket, when the server cannot reserve that much.
 */
async function limitUploadBucket(
  jsm: JetStreamManager,
  bucket: string,
  bytes: number,
): Promise<number> {
  const stream = `OBJ_${bucket}`;
  const { config } = await jsm.streams.info(stream);
  if (config.max_bytes >= bytes && config.discard === DiscardPolicy.Old) return config.max_bytes;
  const max = Math.max(bytes, config.max_bytes);
  try {
    await jsm.streams.update(stream, { ...config, max_bytes: max, discard: DiscardPolicy.Old });
  } catch (err) {
    throw new Error(
      `upload bucket ${bucket} cannot be capped at ${max} bytes (${(err as Error).message}); ` +
        `it stays at ${config.max_bytes}, and a release blob larger than that is refused ` +
        `(give nats-server a larger JetStream store)`,
    );
  }
  return max;
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

/** Where a blob is read from: its bucket's store (object info) and a manager (direct gets). */
interface BlobSource {
  store: ObjectStore;
  jsm: JetStreamManager;
}

/** Puts `bytes` under `name` in `store` unless an object with that digest is there already. */
async function putBlob(
  src: BlobSource,
  bucket: string,
  name: string,
  bytes: Uint8Array,
  timeoutMs: number,
): Promise<BlobRef> {
  const sha256 = await sha256Hex(bytes);
  const ref = { bucket, name, bytes: bytes.length, sha256 };
  const existing = await getBlob(src, ref, bytes.length, timeoutMs).catch(() => null);
  if (existing) return ref;
  await src.store.putBlob({ name }, bytes);
  return ref;
}

/** An object's chunk subjects are named by its `nuid`: one token, no wildcard. */
const NUID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Fetches a blob and checks its size and digest against `ref`, within `timeoutMs` (a read not
 * done by then is refused, so a stalled read cannot hold its reader past a phase's deadline).
 *
 * The object is read without `ObjectStore.get`, which follows an object's `options.link` to any
 * bucket with the reader's rights (creating that bucket when it does not exist, looping on a
 * link to itself): whoever may write the bucket (a site, its own) writes the object's info too.
 * So an object whose info is a link is refused, and the chunks read are those of the version
 * whose info was read (its `nuid`), one direct get each, never more than its info declares.
 */
async function getBlob(
  src: BlobSource,
  ref: BlobRef,
  maxBytes: number,
  timeoutMs: number,
): Promise<Uint8Array> {
  const where = `blob ${ref.bucket}/${ref.name}`;
  if (ref.bytes > maxBytes) {
    throw new PayloadError(`${where}: ${ref.bytes} bytes exceeds ${maxBytes}`);
  }
  const reading = { stopped: false };
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new PayloadError(`${where}: not read within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  const read = readBlob(src, ref, where, reading);
  read.catch(() => {}); // its error, after a timeout, has nobody to go to
  try {
    const bytes = await Promise.race([read, expired]);
    const digest = await sha256Hex(bytes);
    if (digest !== ref.sha256) {
      throw new PayloadError(`${where}: SHA-256 ${digest} ≠ declared ${ref.sha256}`);
    }
    return bytes;
  } finally {
    reading.stopped = true;
    clearTimeout(timer);
  }
}

async function readBlob(
  src: BlobSource,
  ref: BlobRef,
  where: string,
  reading: { stopped: boolean },
): Promise<Uint8Array> {
  try {
    const info = await src.store.info(ref.name);
    if (!info || info.deleted) throw new PayloadError(`${where} is missing`);
    const link = (info.options as { link?: unknown } | undefined)?.link;
    if (link !== undefined && link !== null) {
      throw new PayloadError(
        `${where} is a link (to ${JSON.stringify(link)}); links are refused: they would be ` +
          `followed with the reader's rights`,
      );
    }
    if (info.size !== ref.bytes) {
      throw new PayloadError(
        `${where} holds ${info.size} bytes; the message declares ${ref.bytes}`,
      );
    }
    if (typeof info.nuid !== "string" || !NUID_PATTERN.test(info.nuid)) {
      throw new PayloadError(`${where}: its info names chunks ${JSON.stringify(info.nuid)}`);
    }
    if (!Number.isSafeInteger(info.chunks) || info.chunks < 0) {
      throw new PayloadError(`${where}: its info declares ${info.chunks} chunks`);
    }
    const stream = `OBJ_${ref.bucket}`;
    const subject = `$O.${ref.bucket}.C.${info.nuid}`;
    const bytes = new Uint8Array(ref.bytes);
    let filled = 0;
    let seq = 1;
    for (let chunk = 0; filled < ref.bytes; chunk++) {
      if (reading.stopped) throw new PayloadError(`${where}: read abandoned`);
      if (chunk >= info.chunks) {
        throw new PayloadError(`${where}: ${info.chunks} chunks hold only ${filled} bytes`);
      }
      const m = await src.jsm.direct.getMessage(stream, { seq, next_by_subj: subject });
      if (!m) throw new PayloadError(`${where} changed while it was read`);
      if (filled + m.data.length > ref.bytes) {
        throw new PayloadError(`${where} changed while it was read`);
      }
      bytes.set(m.data, filled);
      filled += m.data.length;
      seq = m.seq + 1;
    }
    return bytes;
  } catch (err) {
    if (err instanceof PayloadError) throw err;
    throw new PayloadError(`${where}: cannot be read: ${(err as Error).message}`);
  }
}

/**
 * A result's message: inline when it fits in `maxMessage`, else the whole inline payload
 * (envelope and arrays) goes to the site's own upload bucket as a blob named per attempt, and the
 * message carries the envelope with the blob's ref under `release`.
 */
async function resultMessage(
  envelope: Omit<ResultEnvelope, "release">,
  arrays: Payload["arrays"],
  maxMessage: number,
  upload: () => Promise<{ src: BlobSource; bucket: string; name: string }>,
  timeoutMs: number,
): Promise<Uint8Array> {
  const inline = await encodePayload({ meta: { ...envelope, release: null }, arrays });
  if (inline.length <= maxMessage) return inline;
  const { src, bucket, name } = await upload();
  // The coordinator caps the bucket for the run's releases (`uploadReleases`): a larger blob
  // would lose its own first chunks as it is written.
  const { config } = await src.jsm.streams.info(`OBJ_${bucket}`);
  if (config.max_bytes > 0 && inline.length > config.max_bytes) {
    throw new Error(
      `the release (${inline.length} bytes) does not fit in upload bucket ${bucket} ` +
        `(${config.max_bytes} bytes, set by the coordinator for this run's releases)`,
    );
  }
  const ref = await putBlob(src, bucket, name, inline, timeoutMs);
  return await encodePayload({ meta: { ...envelope, release: ref }, arrays: [] });
}

/**
 * Publishes a result under message id `msgID`, retrying a publish that timed out (with the same
 * id: JetStream stores the result once). An id JetStream already holds on the first try means
 * that another message took it, and this result was dropped: that is an error, not a delivery.
 */
async function publishResultMessage(
  js: JetStreamClient,
  subject: string,
  data: Uint8Array,
  msgID: string,
  tries = 3,
): Promise<void> {
  for (let i = 0;; i++) {
    let ack;
    try {
      ack = await js.publish(subject, data, { msgID });
    } catch (err) {
      if (i + 1 < tries && err instanceof Error && err.name === "TimeoutError") continue;
      throw err;
    }
    if (ack.duplicate && i === 0) {
      throw new Error(
        `the result was not stored: JetStream already holds a message with its id ${msgID} ` +
          `(in stream ${ack.stream}, seq ${ack.seq})`,
      );
    }
    return;
  }
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
  /**
   * Sites with no accepted result by the deadline, in the order they were expected (a site whose
   * accepted result can no longer be read back, on a resume, is among them).
   */
  missing: string[];
  refused: Refusal[];
}

/** The phase a result is taken for (see {@link Coordinator.takeResult}). */
export interface CurrentPhase {
  round: number;
  phase: number;
  /** The phase's participants: a result of any other site is refused (default: every site). */
  sites?: readonly string[];
  /** The phase's deadline: a blob read is cut there (at least 1 s after now). */
  deadline?: Date;
}

/** The coordinator's side of the transport. */
export interface Coordinator {
  names: FederationNames;
  /** The state bucket (round state; also holds the `accepted.*` and `refused.*` keys). */
  state: KV;
  /** This start of the run (see {@link TransportSettings.resume}); every task carries it. */
  epoch: string;
  /** Writes the global factors once and queues one task per site. */
  sendTasks(opts: {
    round: number;
    phase: number;
    deadline: Date;
    global: Payload["arrays"];
    tasks: { site: string; settings: Record<string, unknown> }[];
    /**
     * The arrays a site's release of this phase holds: each site's upload bucket is sized for
     * them (`uploadReleases`). Default: the global factors.
     */
    release?: readonly ArraySpec[];
  }): Promise<void>;
  /**
   * Waits up to `timeoutMs` for one result; accepts or refuses it (recording either in the state
   * bucket) and acks it. Results of another (round, phase) than `current`, or of an earlier start
   * of the run, are refused as stale; results of a site not in `current.sites`, as not asked for.
   */
  takeResult(
    current: CurrentPhase,
    spec: ReleaseArrays,
    timeoutMs: number,
  ): Promise<ResultOutcome | null>;
  /**
   * Gathers the results of one phase until every site in `sites` has one accepted, or the
   * deadline passes (overrun by at most 1 s, JetStream's shortest pull). Results accepted
   * before (by a coordinator that crashed) count; one that can no longer be read back (its
   * message or blob gone) is taken as missing, with a warning, and the site is not waited for.
   */
  collectPhase(opts: {
    round: number;
    phase: number;
    sites: readonly string[];
    deadline: Date;
    spec: ReleaseArrays;
  }): Promise<PhaseResults>;
  /**
   * The results accepted so far for (round, phase), read back from the results stream; one that
   * can no longer be read back is left out, with a warning.
   */
  acceptedResults(round: number, phase: number): Promise<Map<string, AcceptedResult>>;
  /** Every refusal recorded for this run, in stream order. */
  refusals(): Promise<Refusal[]>;
  /** Reads one JSON value of the round state (null when absent). */
  loadState<T>(key: string): Promise<T | null>;
  /** Writes one JSON value of the round state. */
  saveState(key: string, value: unknown): Promise<void>;
  /** The bytes sent and taken by this coordinator so far, one entry per message (a copy). */
  traffic(): Traffic[];
  /** Refusals this coordinator could not record in the state bucket (each one warned). */
  unrecordedRefusals(): number;
}

/** Longest refusal reason recorded (a reason may quote what a site sent). */
const MAX_REASON = 2000;

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
  const blobTimeoutMs = settings.blobTimeoutMs ?? 120_000;
  const warn = warnOf(settings);
  const { run } = settings;
  const epoch = await startEpoch(state, run, settings.resume === true);
  const consumer = await js.consumers.get(names.resultsStream, names.resultsConsumer);
  const traffic: Traffic[] = [];
  const uploadCaps = new Map<string, number>();
  let unrecorded = 0;

  /** Decodes a stored result message fully (fetching its blob); throws PayloadError. */
  const readResult = async (
    subject: string,
    data: Uint8Array,
    specOf: ReleaseArrays | null,
    blobMs: number,
  ) => {
    const subjectSite = subject.slice(names.prefix.length + ".result.".length);
    const small = await decodePayload(data);
    const envelope = checkResultEnvelope(small.meta, { run, sites: settings.sites, subjectSite });
    const spec = typeof specOf === "function" ? specOf(envelope.site) : specOf;
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
      // A release holds the arrays of `spec` and an envelope: nothing near twice that.
      const most = spec
        ? Math.min(maxBlobBytes, 2 * specBytes(spec) + RELEASE_SLACK)
        : maxBlobBytes;
      const src = { store: await uploadStore(envelope.site), jsm };
      const bytes = await getBlob(src, envelope.release, most, blobMs);
      release = await decodePayload(bytes);
      const inner = release.meta;
      for (const k of ["run", "round", "phase", "site", "attempt", "epoch"] as const) {
        if ((inner[k] ?? null) !== envelope[k]) {
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

  /**
   * Refuses a result: records why under `refused.<run>.<seq>` and acks it. A refusal that cannot
   * be recorded (the store full, the server gone) is warned and counted, never thrown: a site must
   * not be able to stop the coordinator by what it sends.
   */
  const refuse = async (msg: JsMsg, reason: string, envelope: Partial<ResultEnvelope>) => {
    const seq = msg.info.streamSequence;
    const refusal: Refusal = {
      site: envelope.site ?? msg.subject.slice(names.prefix.length + ".result.".length),
      seq,
      round: envelope.round ?? null,
      phase: envelope.phase ?? null,
      attempt: envelope.attempt ?? null,
      reason: reason.length > MAX_REASON ? `${reason.slice(0, MAX_REASON)}…` : reason,
      at: new Date().toISOString(),
    };
    try {
      await state.put(refusedKey(run, seq), JSON.stringify(refusal));
    } catch (err) {
      unrecorded++;
      warn(
        `could not record the refusal of result seq ${seq} of ${refusal.site} ` +
          `(${refusal.reason.slice(0, 200)}): ${(err as Error).message}`,
      );
    }
    try {
      await msg.ackAck();
    } catch (err) {
      warn(`could not ack refused result seq ${seq}: ${(err as Error).message}`);
    }
    return { status: "refused" as const, refusal };
  };

  const takeResult: Coordinator["takeResult"] = async (current, spec, timeoutMs) => {
    const msg = await pull(consumer, Math.max(1000, timeoutMs));
    if (!msg) return null;
    const seq = msg.info.streamSequence;
    const blobMs = current.deadline
      ? Math.min(blobTimeoutMs, Math.max(1000, current.deadline.getTime() - Date.now()))
      : blobTimeoutMs;
    let read;
    try {
      read = await readResult(msg.subject, msg.data, spec, blobMs);
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
    if (envelope.epoch !== epoch) {
      return await refuse(
        msg,
        `stale: a result for a task of an earlier start of run ${run} (epoch ` +
          `${envelope.epoch}; this start is ${epoch})`,
        envelope,
      );
    }
    if (current.sites && !current.sites.includes(envelope.site)) {
      return await refuse(
        msg,
        `not asked: ${envelope.site} is not a participant of round ${envelope.round} phase ` +
          `${envelope.phase}`,
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

  /**
   * The accepted results of (round, phase) read back, and the sites whose accepted result can no
   * longer be read (its message gone from the stream, its blob gone or changed: a site may purge
   * its own bucket): those are warned and left out, never thrown.
   */
  const readAccepted = async (round: number, phase: number) => {
    const accepted = new Map<string, AcceptedResult>();
    const lost: string[] = [];
    const keys = await state.keys(acceptedKey(run, round, phase, "*"));
    for await (const key of keys) {
      const site = key.slice(acceptedKey(run, round, phase, "").length);
      try {
        const entry = await state.get(key);
        if (!entry || entry.operation !== "PUT") continue;
        const { seq } = entry.json<{ seq: number }>();
        const stored = await jsm.streams.getMessage(names.resultsStream, { seq });
        if (!stored) throw new PayloadError(`its message (seq ${seq}) is gone from the stream`);
        const { envelope, release } = await readResult(
          stored.subject,
          stored.data,
          null,
          blobTimeoutMs,
        );
        if (envelope.site !== site || envelope.round !== round || envelope.phase !== phase) {
          throw new PayloadError(`seq ${seq} holds another result`);
        }
        accepted.set(envelope.site, { envelope, release, seq });
      } catch (err) {
        if (!(err instanceof PayloadError) && !(err instanceof SyntaxError)) throw err;
        lost.push(site);
        warn(
          `the accepted result of ${site} for round ${round} phase ${phase} (${key}) can no ` +
            `longer be read back: ${err.message}; ${site} is taken as missing from the phase`,
        );
      }
    }
    return { accepted, lost };
  };

  const acceptedResults: Coordinator["acceptedResults"] = async (round, phase) =>
    (await readAccepted(round, phase)).accepted;

  return {
    names,
    state,
    epoch,
    async sendTasks({ round, phase, deadline, global: arrays, tasks, release }) {
      for (const { site } of tasks) {
        if (!settings.sites.includes(site)) throw new Error(`task for unknown site ${site}`);
      }
      // The blob holds only what every site's task shares (the arrays), written once; each
      // task's own envelope travels in its message.
      const blobMeta = { kind: "global", v: 1, run, epoch, round, phase } satisfies GlobalBlobMeta;
      const shared = await encodePayload({ meta: blobMeta, arrays });
      let ref: BlobRef | null = null;
      // Room in each site's bucket for its release (inline when it fits in a message).
      const releaseBytes = release ? specBytes(release) : shared.length;
      if (releaseBytes + RELEASE_SLACK > maxMessage) {
        const want = uploadBytes(settings, releaseBytes);
        for (const { site } of tasks) {
          if ((uploadCaps.get(site) ?? 0) >= want) continue;
          try {
            uploadCaps.set(site, await limitUploadBucket(jsm, names.uploadBucket(site), want));
          } catch (err) {
            warn((err as Error).message);
          }
        }
      }
      for (const { site, settings: taskSettings } of tasks) {
        const envelope = {
          kind: "task",
          v: 1,
          run,
          round,
          phase,
          site,
          deadline: deadline.toISOString(),
          settings: taskSettings,
          epoch,
        } satisfies Omit<TaskEnvelope, "global">;
        let data = shared.length <= maxMessage
          ? await encodePayload({ meta: { ...envelope, global: null }, arrays })
          : null;
        let blob = 0;
        if (!data || data.length > maxMessage) {
          ref ??= await putBlob(
            { store: global, jsm },
            names.globalBucket,
            `${run}.r${round}.p${phase}`,
            shared,
            blobTimeoutMs,
          );
          data = await encodePayload({ meta: { ...envelope, global: ref }, arrays: [] });
          blob = shared.length;
        }
        await js.publish(names.taskSubject(site), data, { msgID: taskMessageId(envelope) });
        traffic.push({ round, phase, site, direction: "to-site", message: data.length, blob });
      }
    },
    takeResult,
    acceptedResults,
    async collectPhase({ round, phase, sites, deadline, spec }) {
      const { accepted: before, lost } = await readAccepted(round, phase);
      // Only this phase's participants count (a result accepted for another site is not used).
      const accepted = new Map([...before].filter(([site]) => sites.includes(site)));
      const refused: Refusal[] = [];
      const waiting = () => sites.some((s) => !accepted.has(s) && !lost.includes(s));
      while (waiting()) {
        const left = deadline.getTime() - Date.now();
        if (left <= 0) break;
        const outcome = await takeResult(
          { round, phase, sites, deadline },
          spec,
          Math.min(left, 5000),
        );
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
    unrecordedRefusals: () => unrecorded,
  };
}

/**
 * The arrays a release must hold: one list for every site, or a site's own (sites that train
 * different LoRA ranks: FLoRA with `--lora_r 4,8`).
 */
export type ReleaseArrays = readonly ArraySpec[] | ((site: string) => readonly ArraySpec[]);

/** Bytes of the values of the arrays of `spec`. */
function specBytes(spec: readonly ArraySpec[]): number {
  const size = (a: ArraySpec) => (a.dtype === "float64" ? 8 : 4);
  return spec.reduce((n, a) => n + size(a) * a.shape.reduce((m, d) => m * d, 1), 0);
}

/** The KV key of a run's start (see {@link TransportSettings.resume}). */
const epochKey = (run: string) => `epoch.${run}`;

/**
 * This start's epoch. A resume keeps the run's epoch (and everything else of the run's state); a
 * fresh start deletes the run's accepted results, refusals and round state and draws a new one.
 */
async function startEpoch(state: KV, run: string, resume: boolean): Promise<string> {
  if (resume) {
    const entry = await state.get(epochKey(run));
    if (entry && entry.operation === "PUT") {
      const { epoch } = entry.json<{ epoch: string }>();
      if (typeof epoch === "string" && /^[A-Za-z0-9_-]{1,64}$/.test(epoch)) return epoch;
    }
  } else {
    for (const family of ["accepted", "refused", "state"]) {
      const keys = [];
      for await (const key of await state.keys(`${family}.${run}.>`)) keys.push(key);
      for (const key of keys) await state.purge(key);
    }
  }
  const epoch = randomToken();
  await state.put(epochKey(run), JSON.stringify({ epoch, at: new Date().toISOString() }));
  return epoch;
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
  { prefix, maxBlobBytes = 512 * 1024 * 1024, blobTimeoutMs = 120_000 }: {
    prefix?: string;
    maxBlobBytes?: number;
    /** Longest time one blob read or write-back check may take (default 120 s). */
    blobTimeoutMs?: number;
  } = {},
): Promise<Site> {
  checkSiteName(site);
  const names = federationNames(prefix);
  const js = jetstream(nc, { checkAPI: false });
  const consumer = await js.consumers.get(names.tasksStream, names.taskConsumer(site));
  const objm = new Objm(js);
  let jsm: JetStreamManager | null = null;
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
          jsm ??= await jetstreamManager(nc, { checkAPI: false });
          const blob = await decodePayload(
            await getBlob({ store: global, jsm }, task.global, maxBlobBytes, blobTimeoutMs),
          );
          checkGlobalBlobMeta(blob.meta, task);
          return blob;
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
            epoch: task.epoch,
          } satisfies Omit<ResultEnvelope, "release">;
          const data = await resultMessage(
            envelope,
            arrays,
            maxMessage,
            async () => {
              upload ??= await objm.open(names.uploadBucket(site));
              jsm ??= await jetstreamManager(nc, { checkAPI: false });
              return {
                src: { store: upload, jsm },
                bucket: names.uploadBucket(site),
                name: `${task.run}.r${task.round}.p${task.phase}.a${attempt}`,
              };
            },
            blobTimeoutMs,
          );
          // A random nonce per result: no other site can take this result's message id first.
          const msgID = resultMessageId(envelope, randomToken());
          await publishResultMessage(js, names.resultSubject(site), data, msgID);
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
