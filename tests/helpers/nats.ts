/**
 * Federation tests run against a real nats-server (Debian's `nats-server`). Without one they are
 * skipped with the reason printed; with `DEER_REQUIRE_NATS=1` (CI) a missing server is a failure.
 * Every server a test starts lives in a fresh temporary folder and is stopped by PID in `finally`;
 * under `DEER_NATS_PID_DIR` (CI) its PID is also recorded until then (`.ci/nats.sh stop`).
 */
import type { NatsConnection } from "@nats-io/nats-core";
import {
  findNatsServer,
  type NatsServer,
  type NatsServerOptions,
  startNatsServer,
} from "../../lib/federation/server.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import type { ImageDataset } from "../../lib/data/dataset.ts";
import type { SharedBackbone } from "../../lib/fl/backbone.ts";
import { resolveMethod } from "../../lib/fl/methods/mod.ts";
import { type FederatedConfig, runFederated } from "../../lib/fl/simulation.ts";
import { natsClients, runSite } from "../../lib/federation/remote.ts";
import { siteRuntime } from "../../lib/federation/site.ts";
import { connectFederation, openCoordinator, openSite } from "../../lib/federation/transport.ts";

export const natsMissing: string | null = findNatsServer()
  ? null
  : "nats-server is not installed (apt-get install -y nats-server; CI installs it)";
const required = Deno.env.get("DEER_REQUIRE_NATS") === "1";

/** A `Deno.test` that needs nats-server: skipped without it, unless DEER_REQUIRE_NATS=1. */
export function natsTest(name: string, fn: () => Promise<void>): void {
  if (natsMissing && !required) console.log(`${name}: skipped — ${natsMissing}`);
  Deno.test({
    name,
    ignore: natsMissing !== null && !required,
    async fn() {
      if (natsMissing) throw new Error(`DEER_REQUIRE_NATS=1 but ${natsMissing}`);
      await fn();
    },
  });
}

/** Starts a server for `sites` in a temporary folder, runs `fn`, stops it and removes the folder. */
export async function withNatsServer(
  sites: string[],
  fn: (server: NatsServer) => Promise<void>,
  opts: Partial<NatsServerOptions> = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "deer-nats-" });
  const server = await startNatsServer({ dir, sites, ...opts });
  try {
    await fn(server);
  } finally {
    await server.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Connects as `name`; the connection is closed when `fn` ends. */
export async function withConnection<T>(
  server: NatsServer,
  name: string,
  fn: (nc: NatsConnection) => Promise<T>,
): Promise<T> {
  const nc = await connectFederation(server.url, server.credentials(name));
  try {
    return await fn(nc);
  } finally {
    await nc.close();
  }
}

/**
 * The equivalence check of the federation: runs `cfg` in one process into `<dir>/train`, then
 * over a real nats-server with one `runSite` per name of `sites` (each on its own connection and
 * client state) and a coordinator running `runFederated` with `natsClients` into `<dir>/serve`.
 * Asserts that every site took `rounds × phases` tasks and that nothing was refused; the caller
 * compares the two folders.
 */
export async function trainAndServeOverNats(
  setup: { backbone: SharedBackbone; data: ImageDataset },
  cfg: FederatedConfig,
  sites: string[],
  opts: { dir: string; run: string; clip: number | null },
): Promise<void> {
  await runFederated(setup.backbone, setup.data, cfg, { outDir: join(opts.dir, "train") });
  const phases = resolveMethod(cfg.method).phases;
  await withNatsServer(sites, async (server) => {
    const nc = await connectFederation(server.url, server.credentials("coordinator"));
    const siteConns = await Promise.all(
      sites.map((s) => connectFederation(server.url, server.credentials(s))),
    );
    try {
      const coordinator = await openCoordinator(nc, { run: opts.run, sites, leaseMs: 20_000 });
      const stop = new AbortController();
      const running = sites.map(async (name, k) =>
        runSite(
          await openSite(siteConns[k], name),
          setup.backbone,
          siteRuntime(setup.data, cfg, k),
          { heartbeatMs: 2000, idleMs: 60_000, signal: stop.signal },
        )
      );
      const refusals: string[] = [];
      await runFederated(setup.backbone, setup.data, cfg, {
        outDir: join(opts.dir, "serve"),
        remote: natsClients(coordinator, {
          sites,
          dims: setup.backbone.dims,
          deadlineMs: 60_000,
          phases,
          clip: opts.clip,
          clientRanks: cfg.clientRanks,
          onRefusal: (r) => refusals.push(r.reason),
        }),
      });
      stop.abort();
      assert.deepEqual(
        await Promise.all(running),
        sites.map(() => cfg.rounds * phases.length),
        "every site takes one task per round and phase",
      );
      assert.deepEqual(refusals, []);
    } finally {
      await nc.close();
      for (const c of siteConns) await c.close();
    }
  });
}
