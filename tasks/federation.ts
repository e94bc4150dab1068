/**
 * `deno task federation` — cross-site federated training over NATS JetStream.
 *
 * * `server`: a nats-server on 127.0.0.1 for one-machine trials and CI (JetStream, a throw-away
 *   CA, TLS client certificates and one nkey per identity, subject permissions per site).
 * * `serve`: the coordinator, with the settings of `deno task train` read from a config file
 *   that also lists the expected sites.
 * * `join`: one site, training on its local data and sending only what the method releases.
 *
 * `serve` runs the engine's own round (`runFederated`, as `train`) with its clients replaced by
 * the sites (`lib/federation/remote.ts`); each task carries the run's train flags, so a site
 * derives the same method, split and calibration; a site returns only its release.
 *
 * @module
 */
import { isAbsolute, join as joinPath, resolve } from "node:path";
import { parseArgs, UsageError } from "../lib/cli.ts";
import { writeJsonAtomic } from "../lib/io/atomic.ts";
import {
  checkCredentials,
  type Credentials,
  credentialsFolder,
  credentialsIn,
  startNatsServer,
} from "../lib/federation/server.ts";
import { checkSiteName } from "../lib/federation/subjects.ts";
import { connectFederation, openCoordinator, openSite } from "../lib/federation/transport.ts";
import { emptySiteLog, parseSiteLog, type SiteLog } from "../lib/federation/site_budget.ts";
import { NoiseKeyError, readNoiseKey as readKeyFile } from "../lib/privacy/noise_key.ts";

const HELP = `deno task federation COMMAND [flags]

  server  --dir DIR --sites A,B,…  [--port N] [--prefix P]
      A nats-server on 127.0.0.1 for trying the federation on one machine: JetStream store in
      DIR, a throw-away CA, TLS client certificates and one nkey per identity with subject
      permissions (a site may take only its own tasks and publish only its own results).
      Writes DIR/creds/coordinator/ and DIR/creds/<site>/ — hand each site its own folder.
      --port: the client port (default 0: any free port; the URL printed says which).
      Prints "ready URL" and runs until Ctrl-C or SIGTERM, then stops the server.

  serve   --nats URL --creds DIR --config FILE [--prefix P] [--lease S] [--deadline S]
          [--trust central|local] [--resume]
      The coordinator. FILE is JSON: { "sites": ["A", …], "train": { <train flags> } }, the
      train flags as \`deno task train\` takes them ({"method": "DEeR", "T": 8, "is_DP": 1});
      node_num is the number of sites; the coordinator's own data (dataset, data_dir) serves
      only validation and test, as in \`train\` — the training data stays at the sites.
      --trust central: sites send clipped releases over TLS and the coordinator adds the
      noise; local: the coordinator is not trusted — each site adds local-DP noise to its own
      release (train calibration local; a strict one is mapped onto it, paper is refused), sends
      nothing else, and the ledger accounts every site on its own (default central). --lease: a site's hold on a task before it is given to another
      attempt (default 60 s); --deadline: how long a phase waits for the sites before it goes
      on without the missing ones (default 600 s).

  join    --nats URL --creds DIR --site NAME --data PATH [--model PATH] [--prefix P] [--part]
          [--heartbeat S] [--trust central|local] [--noise_key FILE]
          [--max_epsilon E] [--delta D]
      One site: takes its tasks, trains on PATH, publishes its release. DIR is the site's
      credentials folder (nkey.seed, ca.pem, cert.pem, key.pem). --heartbeat: how often a
      running task renews its lease (default 10 s). --part: train on this site's part of the
      run's split of PATH (every site holds the same file: one-machine trials and the check
      against \`train\`); without it every training image in PATH is the site's own.
      --trust local: the site does not trust the coordinator — it refuses a task whose run is
      not under local DP (train calibration local) instead of releasing un-noised factors, and
      holds every release to its own budget: --max_epsilon E (required with --trust local) is
      the ε its data may spend under the noise key, over every run, at δ = --delta (default
      1e-5), accounted by the site itself (PLD, every release at rate 1); a task that would
      take it past E, or whose noise multiplier is below what E implies for the run's planned
      releases, is refused (logged, nothing released, join exits 1). Default central: the
      coordinator's settings decide (a local-DP task is then accounted, with a warning, but
      not capped). --noise_key: under local DP the site draws its noise from a secure stream
      (AES-256-CTR) keyed by this secret file, which the coordinator never sees (default
      DIR/noise.key, made with 32 random bytes, mode 600, when absent); keep it. The releases
      made under the key, with the site's running ε, and the refused tasks are logged in
      FILE.releases.json: a second release of one round and phase with other inputs, or one
      beyond the run's rounds, is refused.
`;

/** Parsed `federation` flags. */
export type FederationArgs =
  | { command: "server"; dir: string; sites: string[]; port: number; prefix: string }
  | {
    command: "serve";
    nats: string;
    creds: Credentials;
    config: string;
    prefix: string;
    leaseMs: number;
    deadlineMs: number;
    trust: "central" | "local";
    resume: boolean;
  }
  | {
    command: "join";
    nats: string;
    creds: Credentials;
    site: string;
    data: string;
    model: string | null;
    prefix: string;
    heartbeatMs: number;
    /** Train on the site's part of the run's split of --data (one-machine trials, checks). */
    part: boolean;
    /** `local`: refuse tasks of a run that is not under local DP. */
    trust: "central" | "local";
    /** The secret of the site's local-DP noise (made when absent). */
    noiseKey: string;
    /** The site's own cap on its ε (required with --trust local; null under central trust). */
    maxEpsilon: number | null;
    /** δ of the site's own accounting. */
    delta: number;
  };

function need(flags: Record<string, unknown>, name: string, command: string): string {
  const v = flags[name];
  if (typeof v !== "string" || v.trim() === "") {
    throw new UsageError(`${command} needs --${name}`);
  }
  return v;
}

function seconds(flags: Record<string, unknown>, name: string, fallback: number): number {
  const raw = flags[name];
  if (raw === undefined) return fallback * 1000;
  const v = Number(raw);
  if (String(raw).trim() === "" || !Number.isFinite(v) || v <= 0) {
    throw new UsageError(`--${name} ${raw}: expected a number of seconds > 0`);
  }
  return v * 1000;
}

function natsUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new UsageError(`--nats ${raw}: expected a URL such as tls://host:4222`);
  }
  if (url.protocol !== "tls:") {
    throw new UsageError(
      `--nats ${raw}: use tls:// — sites authenticate with TLS client certificates`,
    );
  }
  return raw;
}

/** Parses and checks `args`; null for --help. Throws {@link UsageError} naming flag and fix. */
export function parseFederationArgs(args: string[]): FederationArgs | null {
  const [command, ...rest] = args;
  if (command === undefined || command === "--help" || command === "-h") return null;
  if (!["server", "serve", "join"].includes(command)) {
    throw new UsageError(`unknown command ${command}; expected server, serve or join`);
  }
  const f = parseArgs(rest, {
    string: [
      "dir",
      "sites",
      "port",
      "prefix",
      "nats",
      "creds",
      "config",
      "lease",
      "deadline",
      "trust",
      "site",
      "data",
      "model",
      "heartbeat",
      "client",
      "noise_key",
      "max_epsilon",
      "delta",
    ],
    boolean: ["resume", "help", "part"],
  });
  if (f.help) return null;
  if (f._.length > 0) throw new UsageError(`unexpected argument ${f._[0]}; flags start with --`);
  const allowed: Record<string, string[]> = {
    server: ["dir", "sites", "port", "prefix"],
    serve: ["nats", "creds", "config", "prefix", "lease", "deadline", "trust", "resume"],
    join: [
      "nats",
      "creds",
      "site",
      "data",
      "model",
      "prefix",
      "heartbeat",
      "part",
      "trust",
      "noise_key",
      "max_epsilon",
      "delta",
    ],
  };
  for (const name of Object.keys(f)) {
    if (name !== "_" && f[name] !== undefined && !allowed[command].includes(name)) {
      throw new UsageError(`--${name} is not a flag of ${command}`);
    }
  }
  const prefix = String(f.prefix ?? "deer");
  if (command === "server") {
    const sites = need(f, "sites", command).split(",").map((s) => s.trim());
    for (const s of sites) {
      try {
        checkSiteName(s);
      } catch (err) {
        throw new UsageError(`--sites: ${(err as Error).message}`);
      }
    }
    if (new Set(sites).size !== sites.length) throw new UsageError(`--sites lists a site twice`);
    const port = Number(f.port ?? 0);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new UsageError(`--port ${f.port}: expected 0 (any free port) to 65535`);
    }
    return { command, dir: resolve(need(f, "dir", command)), sites, port, prefix };
  }
  const nats = natsUrl(need(f, "nats", command));
  const credsDir = resolve(need(f, "creds", command));
  const trust = String(f.trust ?? "central");
  if (trust !== "central" && trust !== "local") {
    throw new UsageError(`--trust ${trust}: expected central or local`);
  }
  if (command === "serve") {
    return {
      command,
      nats,
      creds: credentialsFolder(credsDir, "coordinator"),
      config: resolve(need(f, "config", command)),
      prefix,
      leaseMs: seconds(f, "lease", 60),
      deadlineMs: seconds(f, "deadline", 600),
      trust,
      resume: f.resume === true,
    };
  }
  const site = need(f, "site", command);
  try {
    checkSiteName(site);
  } catch (err) {
    throw new UsageError(`--site: ${(err as Error).message}`);
  }
  const positive = (name: string, ok: (v: number) => boolean, what: string) => {
    const raw = f[name];
    const v = Number(raw);
    if (String(raw).trim() === "" || !Number.isFinite(v) || !ok(v)) {
      throw new UsageError(`--${name} ${raw}: expected ${what}`);
    }
    return v;
  };
  if (trust === "local" && f.max_epsilon === undefined) {
    throw new UsageError(
      `--trust local needs --max_epsilon E: a site that does not trust the coordinator must not ` +
        `take the ε, T and C of its tasks on trust — give it its own cap (the ε its data may ` +
        `spend under this noise key, over every run)`,
    );
  }
  if (trust === "central" && (f.max_epsilon !== undefined || f.delta !== undefined)) {
    throw new UsageError(
      `--max_epsilon/--delta are the budget of a site that does not trust the coordinator; ` +
        `use them with --trust local (under central trust the coordinator's ε applies)`,
    );
  }
  return {
    command: "join",
    nats,
    creds: credentialsFolder(credsDir, site),
    site,
    data: need(f, "data", command) === "default" ? "default" : resolve(need(f, "data", command)),
    model: typeof f.model === "string" ? resolve(f.model) : null,
    prefix,
    heartbeatMs: seconds(f, "heartbeat", 10),
    part: f.part === true,
    trust,
    noiseKey: resolve(
      typeof f.noise_key === "string" ? f.noise_key : joinPath(credsDir, "noise.key"),
    ),
    maxEpsilon: f.max_epsilon === undefined
      ? null
      : positive("max_epsilon", (v) => v > 0, "a privacy budget ε > 0"),
    delta: f.delta === undefined ? 1e-5 : positive("delta", (v) => v > 0 && v < 1, "0 < δ < 1"),
  };
}

/** The coordinator's config file: the sites and the train flags. */
export interface ServeConfig {
  sites: string[];
  /** Train flags as `deno task train` takes them, `--name=value`. */
  trainArgs: string[];
}

/** Reads and checks a `serve --config` file (JSON); throws {@link UsageError} naming the field. */
export async function readServeConfig(path: string): Promise<ServeConfig> {
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (err) {
    throw new UsageError(`--config ${path}: ${(err as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new UsageError(
      `--config ${path}: expected a JSON object { "sites": [...], "train": {...} }`,
    );
  }
  const { sites, train = {}, ...other } = raw as Record<string, unknown>;
  const unknown = Object.keys(other);
  if (unknown.length > 0) {
    throw new UsageError(`--config ${path}: unknown field ${unknown[0]}; expected sites and train`);
  }
  if (!Array.isArray(sites) || sites.length === 0 || !sites.every((s) => typeof s === "string")) {
    throw new UsageError(`--config ${path}: sites must be a non-empty list of site names`);
  }
  for (const s of sites) {
    try {
      checkSiteName(s);
    } catch (err) {
      throw new UsageError(`--config ${path}: sites: ${(err as Error).message}`);
    }
  }
  if (new Set(sites).size !== sites.length) {
    throw new UsageError(`--config ${path}: sites lists a site twice`);
  }
  if (typeof train !== "object" || train === null || Array.isArray(train)) {
    throw new UsageError(`--config ${path}: train must be an object of train flags`);
  }
  const flags = { ...(train as Record<string, unknown>) };
  const k = flags.node_num ?? flags["node-num"];
  if (k !== undefined && Number(k) !== sites.length) {
    throw new UsageError(
      `--config ${path}: train.node_num is ${k} but ${sites.length} sites are listed; ` +
        `a federation's clients are its sites (leave node_num out)`,
    );
  }
  flags.node_num = sites.length;
  const trainArgs = Object.entries(flags).map(([name, value]) => {
    if (!["string", "number", "boolean"].includes(typeof value)) {
      throw new UsageError(`--config ${path}: train.${name} must be a string, number or boolean`);
    }
    return `--${name}=${typeof value === "boolean" ? Number(value) : value}`;
  });
  return { sites, trainArgs };
}

/**
 * Refuses a task whose train flags could make the site read files the coordinator chose: every
 * flag must be one `--name=value` token (the form `serve` sends), so that the site's own `--data`
 * (and `--model`) replace the run's data and model flags whatever their spelling; and a run on
 * another model than the default needs the site's own copy (`--model`), never a path the
 * coordinator names; prototypes may be named only inside the site's toolkit folder (a relative
 * path without `..`), or be `orthonormal`.
 */
export function checkTaskFlags(train: string[], siteModel: boolean): void {
  const odd = train.find((f) => !/^--[A-Za-z][A-Za-z0-9_]*=/.test(f));
  if (odd !== undefined) {
    throw new Error(
      `refusing a task whose train flags are not all --name=value (${JSON.stringify(odd)}): ` +
        `its data, model or other paths could name files of this site's choosing`,
    );
  }
  const proto = train.find((f) => /^--prototypes=/.test(f))?.slice("--prototypes=".length);
  if (
    proto !== undefined && proto !== "orthonormal" &&
    (isAbsolute(proto) || proto.split(/[\\/]/).includes(".."))
  ) {
    throw new Error(
      `refusing a task that names prototypes outside this site's toolkit folder (${proto}): a ` +
        `site reads only files of its own choosing; give the run prototypes inside the ` +
        `repository (a relative path), or --prototypes orthonormal`,
    );
  }
  const model = train.find((f) => /^--model=/.test(f));
  if (model !== undefined && !siteModel) {
    throw new Error(
      `the run's tasks name a model (${model}); a site loads only a model it was given: start ` +
        `join with --model PATH to this site's copy of the same weights`,
    );
  }
}

/** Runs `server` until SIGINT/SIGTERM. */
async function runServer(a: Extract<FederationArgs, { command: "server" }>): Promise<number> {
  const server = await startNatsServer({
    dir: a.dir,
    sites: a.sites,
    port: a.port,
    prefix: a.prefix,
  });
  const stopped = Promise.withResolvers<void>();
  const onSignal = () => stopped.resolve();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  console.log(`nats-server pid ${server.pid}, store ${a.dir}/jetstream`);
  for (const name of ["coordinator", ...a.sites]) {
    console.log(
      `credentials of ${name}: ${credentialsIn(a.dir, name).seedFile.replace(/\/nkey\.seed$/, "")}`,
    );
  }
  console.log(`ready ${server.url}`);
  try {
    await stopped.promise;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await server.stop();
    console.log(`stopped nats-server pid ${server.pid}`);
  }
  return 0;
}

/** Loads the train module's parser without starting its tensorflow backend early. */
async function trainParser(): Promise<typeof import("./train.ts")> {
  return await import("./train.ts");
}

async function main(args: string[]): Promise<number> {
  const a = parseFederationArgs(args);
  if (a === null) {
    console.log(HELP);
    return 0;
  }
  if (a.command === "server") return await runServer(a);
  await checkCredentials(a.creds);
  if (a.command === "serve") return await serve(a, await readServeConfig(a.config));
  return await join(a);
}

/** The run id on the transport: a digest of the sites and the train flags (and the seed). */
async function runId(config: ServeConfig, seed: number): Promise<string> {
  const text = JSON.stringify({ sites: config.sites, train: config.trainArgs, seed });
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)),
  );
  return `run-${[...digest.slice(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/**
 * The train flags of a federation under `trust`, given the DP calibration they parse to (null
 * without DP): local trust needs DP and runs the local calibration (a strict one is mapped onto
 * it: the same clip, the noise moved to the sites; the paper one is refused); central trust
 * refuses the local calibration. Throws {@link UsageError} naming the field and the fix.
 */
export function trainArgsForTrust(
  trainArgs: readonly string[],
  calibration: string | null,
  trust: "central" | "local",
  source: string,
): string[] {
  if (trust === "central") {
    if (calibration === "local") {
      throw new UsageError(
        `--config ${source}: train.calibration local has every site add its own noise for an ` +
          `untrusted coordinator; serve it with --trust local (or use calibration strict)`,
      );
    }
    return [...trainArgs];
  }
  if (calibration === null) {
    throw new UsageError(
      `--config ${source}: --trust local needs differential privacy — the sites would send ` +
        `un-noised factors; add "is_DP": 1 and "calibration": "local" to train`,
    );
  }
  if (calibration !== "local" && calibration !== "strict") {
    throw new UsageError(
      `--config ${source}: --trust local with train.calibration ${calibration}: the local ` +
        `mechanism clips and accounts as the strict one; set "calibration": "local" (or ` +
        `"strict", which --trust local maps onto local)`,
    );
  }
  return [...trainArgs.filter((f) => !/^--calibration=/.test(f)), "--calibration=local"];
}

async function serve(
  a: Extract<FederationArgs, { command: "serve" }>,
  given: ServeConfig,
): Promise<number> {
  const { describeRound, parseTrainArgs, runName } = await trainParser();
  const parse = (trainArgs: string[]) => {
    let parsed;
    try {
      parsed = parseTrainArgs([...trainArgs, ...(a.resume ? ["--resume"] : [])]);
    } catch (err) {
      throw new UsageError(`--config ${a.config}: train: ${(err as Error).message}`);
    }
    if (parsed === null) {
      throw new UsageError(`--config ${a.config}: train: --help is not a setting`);
    }
    return parsed;
  };
  // The sites derive their mechanism from these flags: under local trust they add the noise.
  const config = {
    ...given,
    trainArgs: trainArgsForTrust(
      given.trainArgs,
      parse(given.trainArgs).config.dp?.calibration ?? null,
      a.trust,
      a.config,
    ),
  };
  const targs = parse(config.trainArgs);
  const { loadInputs, runExperiment } = await import("../lib/experiment.ts");
  const { resolveMethod } = await import("../lib/fl/methods/mod.ts");
  const { natsClients } = await import("../lib/federation/remote.ts");
  const { backendName } = await import("../lib/backend.ts");
  const outDir = joinPath(targs.out, targs.expName, runName(targs));
  const inputs = await loadInputs(targs.inputs);
  const nc = await connectFederation(a.nats, a.creds);
  const refusals: unknown[] = [];
  try {
    const coordinators = new Map<number, Awaited<ReturnType<typeof openCoordinator>>>();
    for (const seed of targs.seeds) {
      coordinators.set(
        seed,
        await openCoordinator(nc, {
          run: await runId(config, seed),
          sites: config.sites,
          prefix: a.prefix,
          leaseMs: a.leaseMs,
          // A fresh start reuses nothing the run's id left in the store; a resume keeps it.
          resume: a.resume,
        }),
      );
    }
    const method = resolveMethod(targs.config.method);
    const dp = targs.config.dp;
    console.error(
      `federation serve: ${method.label}, sites ${
        config.sites.join(", ")
      }, T=${targs.config.rounds} → ${outDir}`,
    );
    await runExperiment(inputs, { ...targs.config, seed: targs.seeds[0] }, targs.seeds, {
      outDir,
      resume: a.resume,
      existing: "replace",
      // The coordinator's backend evaluates the model (the sites' train on their own).
      describe: {
        federation: { sites: config.sites, trust: a.trust },
        backend: backendName,
        inputs: targs.inputs,
      },
      remote: (seed) =>
        natsClients(coordinators.get(seed)!, {
          sites: config.sites,
          dims: inputs.backbone.dims,
          deadlineMs: a.deadlineMs,
          phases: method.phases,
          clip: dp?.calibration === "strict" ? dp.clip : null,
          calibration: dp?.calibration ?? null,
          clientRanks: targs.config.clientRanks,
          settings: { train: config.trainArgs, seed },
          onRefusal: (r) => {
            refusals.push(r);
            console.error(`federation serve: refused a result of ${r.site}: ${r.reason}`);
          },
        }),
      onRound: (r) => {
        for (const line of describeRound(r)) console.error(line);
      },
    });
    if (refusals.length > 0) {
      await writeJsonAtomic(joinPath(outDir, "refusals.json"), refusals);
    }
    // The encoded bytes sent to and taken from each site (lib/federation/transport.ts Traffic).
    await writeJsonAtomic(
      joinPath(outDir, "traffic.json"),
      [...coordinators].flatMap(([seed, c]) => c.traffic().map((t) => ({ seed, ...t }))),
    );
  } finally {
    await nc.close();
    inputs.dispose();
  }
  console.log(`results: ${outDir}`);
  return 0;
}

/**
 * The site's noise secret: 32 bytes, hex, in `path`; made (mode 600) when the file is absent.
 * Throws naming the file when it holds anything else.
 */
export async function readNoiseKey(path: string): Promise<Uint8Array> {
  try {
    return await readKeyFile(path, {
      create: true,
      made: (p) =>
        console.error(`federation join: made the site's local-DP noise key ${p}; keep it secret`),
    });
  } catch (err) {
    if (err instanceof NoiseKeyError) throw new UsageError(`--noise_key ${err.message}`);
    throw err;
  }
}

/**
 * A keyed site's log (`SiteRuntime.log`, lib/federation/site_budget.ts): empty (accounting at
 * `delta`) when the file is absent. Throws naming the file when it is not a site log, or when it
 * accounts at another δ than `delta`.
 */
export async function readSiteLog(path: string, delta: number): Promise<SiteLog> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return emptySiteLog(delta);
    throw err;
  }
  let log: SiteLog;
  try {
    log = parseSiteLog(text, path);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (log.delta !== delta) {
    throw new UsageError(
      `${path}: the site's log accounts its ε at δ = ${log.delta}, not --delta ${delta}; give ` +
        `--delta ${log.delta} (a key's releases are accounted at one δ)`,
    );
  }
  return log;
}

async function join(a: Extract<FederationArgs, { command: "join" }>): Promise<number> {
  for (const [flag, path] of [["data", a.data], ["model", a.model]] as const) {
    if (path !== null && path !== "default" && !(await Deno.stat(path).catch(() => null))) {
      throw new UsageError(`--${flag} ${path}: no such file or folder`);
    }
  }
  const { parseTrainArgs } = await trainParser();
  const { loadInputs } = await import("../lib/experiment.ts");
  const { importNoiseKey, siteRuntime } = await import("../lib/federation/site.ts");
  const { runSite } = await import("../lib/federation/remote.ts");
  const nc = await connectFederation(a.nats, a.creds);
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGTERM", onSignal);
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    // The coordinator provisions the streams: a site started first waits for them.
    const open = () =>
      openSite(nc, a.site, { prefix: a.prefix }).catch((err) => {
        if (!/Permissions Violation/.test(err.message)) throw err;
        throw new UsageError(
          `the credentials in ${a.creds.seedFile.replace(/\/nkey\.seed$/, "")} are not ` +
            `${a.site}'s (${err.message}); give --creds the folder made for ${a.site}`,
        );
      });
    let site: Awaited<ReturnType<typeof openSite>>;
    for (let tries = 0;; tries++) {
      const opened = await open().catch((err) => {
        if (!/not found/.test(err.message) || tries >= 600) throw err;
        return null;
      });
      if (opened) {
        site = opened;
        break;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    console.error(`federation join: connected to ${a.nats} as ${a.site}; waiting for tasks`);
    // The run's flags come with each task; the site loads its data and model once per run.
    let total = 0;
    let warned = false;
    while (!stop.signal.aborted) {
      const lease = await site.nextTask(2000);
      if (!lease) continue;
      // The run this runtime is built for: its id and its settings (flags and seed).
      const runKey = (t: { run: string; settings: Record<string, unknown> }) =>
        JSON.stringify([t.run, t.settings.train, t.settings.seed]);
      const thisRun = runKey(lease.task);
      const train = lease.task.settings.train as string[];
      const seed = Number(lease.task.settings.seed);
      const client = Number(lease.task.settings.client);
      checkTaskFlags(train, a.model !== undefined);
      const targs = parseTrainArgs([
        ...train.filter((f) => !/^--(data_dir|dataset|model)=/.test(f)),
        ...(a.data === "default"
          ? ["--dataset=default"]
          : a.data.endsWith(".npz")
          ? [`--dataset=${a.data}`]
          : [`--data_dir=${a.data}`]),
        ...(a.model ? [`--model=${a.model}`] : []),
      ]);
      if (!targs) throw new Error("task without train flags");
      lease.giveBack();
      if (a.trust === "local" && targs.config.dp?.calibration !== "local") {
        throw new UsageError(
          `--trust local: the coordinator's run is ${
            targs.config.dp ? `under the ${targs.config.dp.calibration} calibration` : "without DP"
          }, so this site would release factors without its own noise; it takes tasks of a ` +
            `local-DP run only (coordinator: serve --trust local)`,
        );
      }
      const inputs = await loadInputs(targs.inputs);
      const runtime = siteRuntime(inputs.data, { ...targs.config, seed }, client, {
        ownImages: !a.part,
      });
      if (runtime.mechanism.trust === "local") {
        runtime.noiseKey = await importNoiseKey(await readNoiseKey(a.noiseKey));
        // The releases made under this key and their ε, kept beside it across restarts and runs.
        const path = `${a.noiseKey}.releases.json`;
        runtime.log = await readSiteLog(path, a.delta);
        runtime.budget = { maxEpsilon: a.maxEpsilon, delta: a.delta };
        if (a.maxEpsilon === null && !warned) {
          warned = true;
          console.error(
            `federation join: WARNING — ${a.site} takes a local-DP task under --trust central: ` +
              `it trusts the coordinator's ε, T and C (σ_loc ${
                runtime.mechanism.calibration!.noiseMultiplier.toPrecision(5)
              }) and enforces no cap of its own; start it with --trust local --max_epsilon E ` +
              `to refuse tasks that would spend more`,
          );
        }
        runtime.onReleased = async (log, id) => {
          await writeJsonAtomic(path, log);
          const r = log.releases[id];
          console.error(
            `${a.site}: site ε ${r.epsilon} after ${id} (${
              Object.keys(log.releases).length
            } release(s) under the key, σ_loc ${r.noiseMultiplier}, δ ${log.delta}, ${
              a.maxEpsilon === null ? "no cap" : `cap ${a.maxEpsilon}`
            })`,
          );
        };
        runtime.onRefused = (log) => writeJsonAtomic(path, log);
      }
      total += await runSite(site, inputs.backbone, runtime, {
        heartbeatMs: a.heartbeatMs,
        idleMs: Number.POSITIVE_INFINITY,
        signal: stop.signal,
        log: (line) => console.error(`${a.site}: ${line}`),
        // A task of another run ends this loop: the next pass builds that run's runtime.
        sameRun: (t) => runKey(t) === thisRun,
      });
      inputs.dispose();
    }
    console.error(`federation join: ${a.site} stopped after ${total} task(s)`);
  } finally {
    Deno.removeSignalListener("SIGTERM", onSignal);
    Deno.removeSignalListener("SIGINT", onSignal);
    await nc.close();
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (err) {
    const usage = err instanceof UsageError;
    console.error(
      `federation: ${(err as Error).message}${usage ? "\n(see deno task federation --help)" : ""}`,
    );
    Deno.exit(usage ? 2 : 1);
  }
}
