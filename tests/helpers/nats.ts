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
import { connectFederation } from "../../lib/federation/transport.ts";

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
