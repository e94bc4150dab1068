/**
 * A nats-server for tests, CI and a one-machine federation: JetStream with its store in a
 * folder, TLS with client certificates from a throw-away CA (`openssl`), one nkey user per
 * identity (the coordinator and each site) with the subject permissions of `subjects.ts`,
 * listening on loopback only. Started and stopped by PID.
 *
 * Everything lives in one folder:
 *
 * | path | content |
 * |---|---|
 * | `nats.conf`, `nats.log`, `nats.pid` | the server's config, log and PID |
 * | `jetstream/` | the JetStream store (streams, KV, objects) |
 * | `pki/` | the throw-away CA and the certificates |
 * | `creds/<name>/` | one identity's credentials: `nkey.seed`, `ca.pem`, `cert.pem`, `key.pem` |
 *
 * A folder prepared once keeps its identities: restarting on the same folder (and port) gives the
 * same credentials and the same JetStream state. When `DEER_NATS_PID_DIR` is set (CI), every
 * started server's PID is also recorded there until it is stopped, so a harness can stop servers
 * a crashed test left behind (`.ci/nats.sh stop`).
 *
 * Usage, where nats-server is installed:
 * `const server = await startNatsServer({ dir: "/tmp/fed", sites: ["site-a", "site-b"] })`, then
 * `server.url` (`tls://127.0.0.1:PORT`) and `server.credentials("site-a")` to connect, and
 * `await server.stop()` in a `finally` (see tests/helpers/nats.ts; `deno task federation server`
 * runs one until Ctrl-C).
 * @module
 */
import { join } from "node:path";
import { createUser, fromSeed } from "@nats-io/nkeys";
import { makeThrowawayPki } from "./pki.ts";
import { pathExists } from "../io/run_folder.ts";
import { checkSiteName, federationNames, type Permissions, sitePermissions } from "./subjects.ts";

/** One identity's credential files (what a site is handed to join). */
export interface Credentials {
  name: string;
  /** The nkey seed (`SU…`), the identity's secret. */
  seedFile: string;
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** Options of {@link prepareNatsServer} and {@link startNatsServer}. */
export interface NatsServerOptions {
  /** The folder holding config, store, PKI and credentials. */
  dir: string;
  /** The expected sites. */
  sites: readonly string[];
  /** Subject prefix of the federation (default "deer"). */
  prefix?: string;
  /** Client port on 127.0.0.1; 0 picks a free one (default). */
  port?: number;
  /** Largest message in bytes (default 1 MiB, nats-server's own default). */
  maxPayload?: number;
  /** JetStream file-store limit in bytes (default 1 GiB). */
  maxFileStore?: number;
  /**
   * Also serve nats-server's HTTP monitoring endpoint (`/connz`: messages and bytes per
   * connection) on 127.0.0.1, any free port (default off: it answers without credentials).
   */
  monitor?: boolean;
}

/** A running nats-server. */
export interface NatsServer {
  /** `tls://127.0.0.1:PORT`. */
  url: string;
  /** `http://127.0.0.1:PORT` of the monitoring endpoint, or null without `monitor`. */
  monitorUrl: string | null;
  port: number;
  pid: number;
  dir: string;
  /** The credentials of the coordinator or of a site. */
  credentials(name: string): Credentials;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL at once (a crash, for fault tests). */
  kill(): Promise<void>;
}

/** The nats-server binary, or null when it is not installed. */
export function findNatsServer(): string | null {
  const path = (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/sbin", "/usr/local/sbin"]);
  for (const dir of path) {
    const candidate = join(dir || ".", "nats-server");
    try {
      if (Deno.statSync(candidate).isFile) return candidate;
    } catch { /* not here */ }
  }
  return null;
}

/** The nats-server version (`2.9.10`), or null when it is not installed. */
export async function natsServerVersion(): Promise<string | null> {
  const bin = findNatsServer();
  if (!bin) return null;
  const out = await new Deno.Command(bin, { args: ["--version"], stdout: "piped" }).output();
  return new TextDecoder().decode(out.stdout).trim().replace(/^nats-server: v?/, "") || null;
}

/** The credential files of `name` in one credentials folder (what a site is handed). */
export function credentialsFolder(folder: string, name: string): Credentials {
  return {
    name,
    seedFile: join(folder, "nkey.seed"),
    caFile: join(folder, "ca.pem"),
    certFile: join(folder, "cert.pem"),
    keyFile: join(folder, "key.pem"),
  };
}

/** The credentials of `name` under a server folder (`<dir>/creds/<name>/`). */
export function credentialsIn(dir: string, name: string): Credentials {
  return credentialsFolder(join(dir, "creds", name), name);
}

/** Throws naming the missing file and the fix when a credentials folder is incomplete. */
export async function checkCredentials(c: Credentials): Promise<void> {
  for (
    const [what, file] of Object.entries({
      seedFile: c.seedFile,
      caFile: c.caFile,
      certFile: c.certFile,
      keyFile: c.keyFile,
    })
  ) {
    try {
      if (!(await Deno.stat(file)).isFile) throw new Error("not a file");
    } catch {
      throw new Error(
        `credentials of ${c.name}: ${file} (${what}) is missing; a credentials folder holds ` +
          `nkey.seed, ca.pem, cert.pem and key.pem (deno task federation server writes them)`,
      );
    }
  }
}

const q = (s: string) => JSON.stringify(s);

function permissionsBlock(p: Permissions): string {
  return `permissions: { publish: { allow: [${p.publish.allow.map(q).join(", ")}] }, ` +
    `subscribe: { allow: [${p.subscribe.allow.map(q).join(", ")}] } }`;
}

/** The text of a nats-server config (pure: every path and key is given). */
export function natsServerConfig(c: {
  dir: string;
  port: number;
  maxPayload: number;
  maxFileStore: number;
  /** Serve the HTTP monitoring endpoint on 127.0.0.1, any free port. */
  monitor?: boolean;
  tls: { caFile: string; certFile: string; keyFile: string };
  /** Public nkey of each identity; "coordinator" gets every permission. */
  users: { name: string; publicKey: string; permissions: Permissions | null }[];
}): string {
  const users = c.users.map((u) =>
    `    # ${u.name}\n    { nkey: ${q(u.publicKey)}` +
    (u.permissions ? `, ${permissionsBlock(u.permissions)}` : "") + " }"
  );
  return `# Written by lib/federation/server.ts — loopback only, TLS with client certificates,
# one nkey user per identity with subject permissions.
listen: "127.0.0.1:${c.port}"
pid_file: ${q(join(c.dir, "nats.pid"))}
ports_file_dir: ${q(c.dir)}
log_file: ${q(join(c.dir, "nats.log"))}
${c.monitor ? 'http: "127.0.0.1:-1"\n' : ""}max_payload: ${c.maxPayload}
jetstream {
  store_dir: ${q(join(c.dir, "jetstream"))}
  max_memory_store: 64MB
  max_file_store: ${c.maxFileStore}
}
tls {
  cert_file: ${q(c.tls.certFile)}
  key_file: ${q(c.tls.keyFile)}
  ca_file: ${q(c.tls.caFile)}
  verify: true
  timeout: 5
}
authorization {
  users: [
${users.join("\n")}
  ]
}
`;
}

/**
 * Writes the PKI, one nkey and credentials folder per identity, and `nats.conf` into `opts.dir`.
 * Identities already there are kept (a restart keeps the credentials the sites hold).
 * Returns the config path.
 */
export async function prepareNatsServer(opts: NatsServerOptions): Promise<string> {
  const names = federationNames(opts.prefix);
  opts.sites.forEach(checkSiteName);
  if (new Set(opts.sites).size !== opts.sites.length) {
    throw new Error(`sites listed twice in [${opts.sites.join(", ")}]`);
  }
  const identities = ["coordinator", ...opts.sites];
  const pkiDir = join(opts.dir, "pki");
  await Deno.mkdir(join(opts.dir, "creds"), { recursive: true });
  const missing = [];
  for (const n of identities) {
    if (!await pathExists(credentialsIn(opts.dir, n).seedFile)) missing.push(n);
  }
  if (missing.length > 0) {
    // A fresh CA whenever an identity is new: simpler than signing with a kept CA key, and
    // throw-away by design.
    const pki = await makeThrowawayPki(pkiDir, identities);
    for (const n of identities) {
      const c = credentialsIn(opts.dir, n);
      await Deno.mkdir(join(opts.dir, "creds", n), { recursive: true, mode: 0o700 });
      await Deno.copyFile(pki.caFile, c.caFile);
      await Deno.copyFile(pki.clients[n].certFile, c.certFile);
      await Deno.copyFile(pki.clients[n].keyFile, c.keyFile);
      await Deno.chmod(c.keyFile, 0o600);
      if (!await pathExists(c.seedFile)) {
        await Deno.writeTextFile(c.seedFile, new TextDecoder().decode(createUser().getSeed()), {
          mode: 0o600,
        });
      }
    }
  }
  const users = [];
  for (const n of identities) {
    const seed = (await Deno.readTextFile(credentialsIn(opts.dir, n).seedFile)).trim();
    users.push({
      name: n,
      publicKey: fromSeed(new TextEncoder().encode(seed)).getPublicKey(),
      permissions: n === "coordinator" ? null : sitePermissions(names, n),
    });
  }
  const config = join(opts.dir, "nats.conf");
  await Deno.writeTextFile(
    config,
    natsServerConfig({
      dir: opts.dir,
      port: opts.port ? opts.port : -1, // nats-server's -1 is "any free port" (0 means 4222)
      maxPayload: opts.maxPayload ?? 1024 * 1024,
      maxFileStore: opts.maxFileStore ?? 1024 ** 3,
      monitor: opts.monitor ?? false,
      tls: {
        caFile: join(pkiDir, "ca.pem"),
        certFile: join(pkiDir, "server.pem"),
        keyFile: join(pkiDir, "server.key"),
      },
      users,
    }),
  );
  return config;
}

function alive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT"); // signal 0 is not offered; SIGCONT is harmless to a running server
    return true;
  } catch {
    return false;
  }
}

/**
 * Prepares `opts.dir` (see {@link prepareNatsServer}), starts nats-server on it and waits until it
 * listens. Throws with the log's tail when it does not start within `timeoutMs`.
 */
export async function startNatsServer(
  opts: NatsServerOptions,
  { timeoutMs = 15_000 } = {},
): Promise<NatsServer> {
  const bin = findNatsServer();
  if (!bin) throw new Error("nats-server is not installed: apt-get install -y nats-server");
  const config = await prepareNatsServer(opts);
  const child = new Deno.Command(bin, {
    args: ["-c", config],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const pid = child.pid;
  const stderr = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let early = "";
  const drain = (async () => {
    for (;;) {
      const { value, done } = await stderr.read();
      if (done) return;
      early = (early + value).slice(-4000);
    }
  })();
  const registry = Deno.env.get("DEER_NATS_PID_DIR");
  const registered = registry ? join(registry, `nats-server-${pid}.pid`) : null;
  if (registered) {
    await Deno.mkdir(registry!, { recursive: true });
    await Deno.writeTextFile(registered, `${pid}\n`);
  }
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const finish = async () => {
    await status;
    await drain.catch(() => {});
    if (registered) await Deno.remove(registered).catch(() => {});
  };
  const logTail = async () => {
    const log = await Deno.readTextFile(join(opts.dir, "nats.log")).catch(() => "");
    return (log + early).trim().split("\n").slice(-12).join("\n");
  };
  const portsFile = join(opts.dir, `nats-server_${pid}.ports`);
  const deadline = Date.now() + timeoutMs;
  let port = 0;
  let monitorUrl: string | null = null;
  while (!port || (opts.monitor && !monitorUrl)) {
    if (exited) {
      await finish();
      throw new Error(`nats-server exited at start (config ${config}):\n${await logTail()}`);
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await finish();
      throw new Error(`nats-server did not listen within ${timeoutMs} ms:\n${await logTail()}`);
    }
    try {
      const ports = JSON.parse(await Deno.readTextFile(portsFile)) as {
        nats?: string[];
        monitoring?: string[];
      };
      const url = ports.nats?.find((u) => u.includes("127.0.0.1"));
      if (url) port = Number(new URL(url).port);
      monitorUrl = ports.monitoring?.find((u) => u.includes("127.0.0.1")) ?? null;
    } catch { /* not written yet */ }
    if (!port || (opts.monitor && !monitorUrl)) await new Promise((r) => setTimeout(r, 25));
  }
  const stop = async (graceMs = 5000) => {
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      const timer = setTimeout(() => {
        if (!exited && alive(pid)) child.kill("SIGKILL");
      }, graceMs);
      await status;
      clearTimeout(timer);
    }
    await finish();
    await Deno.remove(portsFile).catch(() => {});
  };
  return {
    url: `tls://127.0.0.1:${port}`,
    monitorUrl: opts.monitor ? monitorUrl : null,
    port,
    pid,
    dir: opts.dir,
    credentials: (name) => credentialsIn(opts.dir, name),
    stop,
    kill: async () => {
      if (!exited) child.kill("SIGKILL");
      await finish();
      await Deno.remove(portsFile).catch(() => {});
    },
  };
}
