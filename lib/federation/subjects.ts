/**
 * The names of a federation on NATS JetStream — subjects, streams, consumers, buckets — and the
 * subject permissions that confine each site to its own. One function per name, so the server
 * config, the coordinator and the sites cannot disagree.
 *
 * For a federation with prefix `p` and a site `s`:
 *
 * | what | name | who |
 * |---|---|---|
 * | round tasks (work queue) | stream `p-tasks`, subject `p.task.s`, durable consumer `task-s` | coordinator publishes; only `s` pulls and acks |
 * | results | stream `p-results`, subject `p.result.s`, durable consumer `coordinator` | only `s` publishes on `p.result.s`; the coordinator reads |
 * | round state | KV bucket `p-state` | coordinator only |
 * | global factors | object bucket `p-global` | coordinator writes; every site reads |
 * | a site's large releases | object bucket `p-up-s` | only `s` writes; the coordinator reads |
 * | replies to a site | inbox prefix `_INBOX_s` | only `s` subscribes |
 *
 * @example
 * ```ts
 * const names = federationNames("deer");
 * names.taskSubject("site-a"); // "deer.task.site-a"
 * sitePermissions(names, "site-a").subscribe.allow; // ["_INBOX_site-a.>"]
 * ```
 * @module
 */

/** Site names: letters, digits, `_` and `-` (they appear in subjects and stream names). */
export const SITE_NAME_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const PREFIX_PATTERN = /^[a-z0-9][a-z0-9_-]{0,31}$/;

/** Throws naming the fix when `site` cannot be a site name. */
export function checkSiteName(site: string): void {
  if (!SITE_NAME_PATTERN.test(site) || site === "coordinator") {
    throw new Error(
      `site name ${JSON.stringify(site)}: use 1–64 letters, digits, "_" or "-" ` +
        `(and not "coordinator")`,
    );
  }
}

/** Every name of one federation. */
export interface FederationNames {
  prefix: string;
  tasksStream: string;
  resultsStream: string;
  stateBucket: string;
  globalBucket: string;
  /** The coordinator's durable consumer on the results stream. */
  resultsConsumer: string;
  taskSubject(site: string): string;
  resultSubject(site: string): string;
  /** The site's durable consumer on the tasks stream. */
  taskConsumer(site: string): string;
  uploadBucket(site: string): string;
  inboxPrefix(site: string): string;
}

/** The names of the federation with subject prefix `prefix` (lower case, ≤ 32 characters). */
export function federationNames(prefix = "deer"): FederationNames {
  if (!PREFIX_PATTERN.test(prefix)) {
    throw new Error(`federation prefix ${JSON.stringify(prefix)}: use 1–32 of [a-z0-9_-]`);
  }
  const site = (s: string) => (checkSiteName(s), s);
  return {
    prefix,
    tasksStream: `${prefix}-tasks`,
    resultsStream: `${prefix}-results`,
    stateBucket: `${prefix}-state`,
    globalBucket: `${prefix}-global`,
    resultsConsumer: "coordinator",
    taskSubject: (s) => `${prefix}.task.${site(s)}`,
    resultSubject: (s) => `${prefix}.result.${site(s)}`,
    taskConsumer: (s) => `task-${site(s)}`,
    uploadBucket: (s) => `${prefix}-up-${site(s)}`,
    inboxPrefix: (s) => `_INBOX_${site(s)}`,
  };
}

/** nats-server subject permissions of one user. */
export interface Permissions {
  publish: { allow: string[] };
  subscribe: { allow: string[] };
}

/**
 * The JetStream API subjects a client needs to read an object bucket: the stream's info, an
 * object's info (the last message on its meta subject) and its chunks, one direct get each
 * (`transport.ts` reads blobs so). No consumer of any kind: a site that could create consumers
 * on a bucket it reads could make durable ones without limit (each costs the server state until
 * deleted), or push ones delivering the bucket to any subject.
 */
function objectReadSubjects(bucket: string): string[] {
  const stream = `OBJ_${bucket}`;
  return [
    `$JS.API.STREAM.INFO.${stream}`,
    `$JS.API.STREAM.MSG.GET.${stream}`,
    `$JS.API.DIRECT.GET.${stream}`,
    `$JS.API.DIRECT.GET.${stream}.>`,
  ];
}

/**
 * What site `site` may do: pull and ack its own tasks, publish its own results, write its own
 * upload bucket, read the global factors, and receive replies on its own inbox prefix — nothing
 * else (in particular no other site's queue, results subject, uploads or inbox, and no state).
 */
export function sitePermissions(names: FederationNames, site: string): Permissions {
  const consumer = names.taskConsumer(site);
  const upload = `OBJ_${names.uploadBucket(site)}`;
  return {
    publish: {
      allow: [
        names.resultSubject(site),
        `$JS.API.CONSUMER.INFO.${names.tasksStream}.${consumer}`,
        `$JS.API.CONSUMER.MSG.NEXT.${names.tasksStream}.${consumer}`,
        `$JS.ACK.${names.tasksStream}.${consumer}.>`,
        `$O.${names.uploadBucket(site)}.>`,
        `$JS.API.STREAM.INFO.${upload}`,
        `$JS.API.STREAM.MSG.GET.${upload}`,
        `$JS.API.DIRECT.GET.${upload}`,
        `$JS.API.DIRECT.GET.${upload}.>`,
        `$JS.API.STREAM.PURGE.${upload}`,
        ...objectReadSubjects(names.globalBucket),
      ],
    },
    subscribe: { allow: [`${names.inboxPrefix(site)}.>`] },
  };
}
