/**
 * Leases, redelivery and acceptance on a real nats-server: a site process killed while it holds
 * a task gets the task back after the lease and exactly one result is accepted; a holder whose
 * lease lapsed and who still publishes is refused as a duplicate (recorded); heartbeats keep a
 * lease past its AckWait; a site missing the deadline is reported missing and its late result
 * refused; a coordinator that stops mid-phase (before or after acking a result) is replaced
 * by one that ends the phase with the same accepted results; and a pull that misses the server's
 * heartbeats while the server stalls is an empty poll for the site and the coordinator alike.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  connectFederation,
  openCoordinator,
  openSite,
  type TransportSettings,
  withHeartbeat,
} from "../lib/federation/transport.ts";
import type { NatsServer } from "../lib/federation/server.ts";
import { natsTest, withConnection, withNatsServer } from "./helpers/nats.ts";

const WORKER = join(import.meta.dirname!, "helpers", "federation_site_worker.ts");
const LEASE_MS = 1500;
const spec = [{ name: "B.0", dtype: "float32" as const, shape: [4, 2] }];
const global = [{ name: "A.0", shape: [2, 4], data: new Float32Array(8).fill(0.125) }];
const release = (v: number) => [{ name: "B.0", shape: [4, 2], data: new Float32Array(8).fill(v) }];
const later = (ms: number) => new Date(Date.now() + ms);

async function withCoordinator<T>(
  server: NatsServer,
  settings: TransportSettings,
  fn: (c: Awaited<ReturnType<typeof openCoordinator>>, nc: NatsConnection) => Promise<T>,
): Promise<T> {
  return await withConnection(
    server,
    "coordinator",
    async (nc) => fn(await openCoordinator(nc, settings), nc),
  );
}

natsTest(
  "federation leases: a site killed mid-task gets it back after the lease; exactly one result is accepted",
  async () => {
    const sites = ["site-a"];
    const settings = { run: "kill", sites, leaseMs: LEASE_MS };
    await withNatsServer(sites, async (server) => {
      await withCoordinator(server, settings, async (coordinator, nc) => {
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(60_000),
          global,
          tasks: [{ site: "site-a", settings: { steps: 3 } }],
        });
        // A real site process takes the task, then is killed before it acks.
        const worker = new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", WORKER, server.url, server.dir, "site-a"],
          stdout: "piped",
          stderr: "inherit",
        }).spawn();
        const lines = worker.stdout.pipeThrough(new TextDecoderStream()).getReader();
        const { value: first } = await lines.read();
        assert.equal(first?.trim(), "leased 1 round 1 phase 0");
        worker.kill("SIGKILL");
        assert.equal((await worker.status).signal, "SIGKILL");
        await lines.cancel();
        const killedAt = performance.now();
        // The same task comes back to the restarted site after the lease, as attempt 2.
        await withConnection(server, "site-a", async (ns) => {
          const lease = (await (await openSite(ns, "site-a")).nextTask(4 * LEASE_MS))!;
          const waited = performance.now() - killedAt;
          assert.equal(lease.attempt, 2);
          assert.deepEqual(lease.task.settings, { steps: 3 });
          assert.ok(waited < LEASE_MS + 3000, `redelivered after ${waited} ms`);
          console.log(
            `  redelivered ${waited.toFixed(0)} ms after the kill (lease ${LEASE_MS} ms)`,
          );
          await lease.publishResult(release(2), { samples: 4 });
          assert.equal(await (await openSite(ns, "site-a")).nextTask(1000), null);
        });
        const phase = await coordinator.collectPhase({
          round: 1,
          phase: 0,
          sites,
          deadline: later(5000),
          spec,
        });
        assert.equal(phase.accepted.size, 1);
        assert.equal(phase.accepted.get("site-a")!.envelope.attempt, 2);
        assert.deepEqual(
          Array.from(phase.accepted.get("site-a")!.release.arrays[0].data),
          Array(8).fill(2),
        );
        assert.deepEqual(phase.refused, []);
        const accepted = await coordinator.state.get("accepted.kill.1.0.site-a");
        assert.equal(accepted!.json<{ attempt: number }>().attempt, 2);
        // The work queue is empty: the acked task is gone.
        const info = await (await jetstreamManager(nc)).streams.info("deer-tasks");
        assert.equal(info.state.messages, 0);
      });
    });
  },
);

natsTest(
  "federation leases: a lapsed holder that still publishes is refused as a duplicate; heartbeats keep a lease",
  async () => {
    const sites = ["site-a", "site-b"];
    const settings = { run: "lapse", sites, leaseMs: LEASE_MS };
    await withNatsServer(sites, async (server) => {
      await withCoordinator(server, settings, async (coordinator) => {
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(60_000),
          global,
          tasks: sites.map((site) => ({ site, settings: {} })),
        });
        const slow = await connectFederation(server.url, server.credentials("site-a"));
        const fast = await connectFederation(server.url, server.credentials("site-a"));
        const b1 = await connectFederation(server.url, server.credentials("site-b"));
        const b2 = await connectFederation(server.url, server.credentials("site-b"));
        try {
          // site-a: the first holder stalls past its lease; a second process takes the task.
          const stalled = (await (await openSite(slow, "site-a")).nextTask(3000))!;
          assert.equal(stalled.attempt, 1);
          const retaken = (await (await openSite(fast, "site-a")).nextTask(4 * LEASE_MS))!;
          assert.equal(retaken.attempt, 2);
          await retaken.publishResult(release(1));
          // site-b: heartbeats keep the lease for twice the AckWait; nobody else gets the task.
          const held = (await (await openSite(b1, "site-b")).nextTask(3000))!;
          const other = openSite(b2, "site-b").then((s) => s.nextTask(2 * LEASE_MS));
          await withHeartbeat(
            held,
            LEASE_MS / 4,
            () => new Promise((r) => setTimeout(r, 2 * LEASE_MS)),
          );
          assert.equal(await other, null);
          await held.publishResult(release(3));
          // The stalled site-a holder wakes up and publishes its (late) result for attempt 1.
          await stalled.publishResult(release(1)).catch(() => {/* its ack may be refused */});
          const phase = await coordinator.collectPhase({
            round: 1,
            phase: 0,
            sites,
            deadline: later(5000),
            spec,
          });
          assert.deepEqual(
            [...phase.accepted.values()].map((r) => [r.envelope.site, r.envelope.attempt]).sort(),
            [["site-a", 2], ["site-b", 1]],
          );
          // The late one is refused when it is read, and the refusal is recorded.
          const late = await coordinator.takeResult({ round: 1, phase: 0 }, spec, 3000);
          assert.equal(late?.status, "refused");
          assert.match(
            late.status === "refused" ? late.refusal.reason : "",
            /^duplicate: site-a already has an accepted result for round 1 phase 0 \(attempt 2, seq \d+\)$/,
          );
          assert.equal(late.status === "refused" && late.refusal.attempt, 1);
          assert.equal((await coordinator.refusals()).length, 1);
          assert.equal(await coordinator.takeResult({ round: 1, phase: 0 }, spec, 1000), null);
        } finally {
          for (const c of [slow, fast, b1, b2]) await c.close();
        }
      });
    });
  },
);

natsTest(
  "federation leases: a site missing the deadline is excluded and its late result refused as stale",
  async () => {
    const sites = ["site-a", "site-b"];
    const settings = { run: "deadline", sites, leaseMs: LEASE_MS };
    await withNatsServer(sites, async (server) => {
      await withCoordinator(server, settings, async (coordinator) => {
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(1000),
          global,
          tasks: sites.map((site) => ({ site, settings: {} })),
        });
        await withConnection(server, "site-a", async (ns) => {
          await (await (await openSite(ns, "site-a")).nextTask(2000))!.publishResult(release(1));
        });
        const started = performance.now();
        const phase = await coordinator.collectPhase({
          round: 1,
          phase: 0,
          sites,
          deadline: later(1000),
          spec,
        });
        const waited = performance.now() - started;
        assert.deepEqual([...phase.accepted.keys()], ["site-a"]);
        assert.deepEqual(phase.missing, ["site-b"]);
        assert.ok(waited >= 900 && waited < 5000, `collectPhase waited ${waited} ms`);
        // site-b finishes after the deadline; by then the coordinator is in phase 1.
        await withConnection(server, "site-b", async (ns) => {
          await (await (await openSite(ns, "site-b")).nextTask(2000))!.publishResult(release(5));
        });
        const late = await coordinator.takeResult({ round: 1, phase: 1 }, spec, 3000);
        assert.deepEqual(late?.status === "refused" && [late.refusal.site, late.refusal.reason], [
          "site-b",
          "stale: round 1 phase 0 arrived during round 1 phase 1 (after its deadline or from before a restart)",
        ]);
      });
    });
  },
);

natsTest(
  "federation leases: a coordinator stopped mid-phase is replaced by one that ends it with the same accepted results",
  async () => {
    const sites = ["site-a", "site-b", "site-c"];
    const settings = { run: "resume", sites, leaseMs: LEASE_MS, resultAckWaitMs: 1000 };
    await withNatsServer(sites, async (server) => {
      // Coordinator 1: sends the tasks, accepts site-a's result, then reads site-b's without
      // acking it and stops (its connection closes as a killed process's would).
      await withCoordinator(server, settings, async (coordinator, nc) => {
        await coordinator.saveState("round", { round: 1, phase: 0 });
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(60_000),
          global,
          tasks: sites.map((site) => ({ site, settings: {} })),
        });
        for (const [i, site] of sites.slice(0, 2).entries()) {
          await withConnection(server, site, async (ns) => {
            await (await (await openSite(ns, site)).nextTask(2000))!.publishResult(release(i + 1));
          });
        }
        const first = await coordinator.takeResult({ round: 1, phase: 0 }, spec, 2000);
        assert.equal(first?.status === "accepted" && first.result.envelope.site, "site-a");
        const consumer = await jetstream(nc).consumers.get("deer-results", "coordinator");
        const unacked = await consumer.next({ expires: 2000 });
        assert.equal(unacked?.subject, "deer.result.site-b");
      });
      // Coordinator 2 (same run) resumes: reads the round state, ends the phase.
      await withCoordinator(server, { ...settings, resume: true }, async (coordinator) => {
        assert.deepEqual(await coordinator.loadState("round"), { round: 1, phase: 0 });
        // Publishing the same tasks again (a resumed coordinator does not know how far the first
        // got) is dropped by JetStream's duplicate window: site-c still has exactly one task.
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(60_000),
          global,
          tasks: sites.map((site) => ({ site, settings: {} })),
        });
        await withConnection(server, "site-c", async (ns) => {
          const site = await openSite(ns, "site-c");
          await (await site.nextTask(2000))!.publishResult(release(3));
          assert.equal(await site.nextTask(1000), null);
        });
        const phase = await coordinator.collectPhase({
          round: 1,
          phase: 0,
          sites,
          deadline: later(5000),
          spec,
        });
        assert.deepEqual(
          sites.map((s) => phase.accepted.get(s)?.release.arrays[0].data[0]),
          [1, 2, 3],
        );
        assert.deepEqual(phase.refused, []);
        assert.deepEqual(phase.missing, []);
      });
    });
  },
);

natsTest(
  "federation leases: pulls that miss the server's heartbeats (server stalled 3.5 s) are empty polls; the task and result come on the next ones",
  async () => {
    const sites = ["site-a"];
    await withNatsServer(sites, async (server) => {
      await withCoordinator(server, { run: "stall", sites, leaseMs: 5000 }, async (coordinator) => {
        await withConnection(server, "site-a", async (ns) => {
          const site = await openSite(ns, "site-a");
          // Both sides wait on a pull (server heartbeats every second) while the server stops.
          const task = site.nextTask(2000);
          const result = coordinator.takeResult({ round: 1, phase: 0 }, spec, 2000);
          await new Promise((r) => setTimeout(r, 200));
          Deno.kill(server.pid, "SIGSTOP");
          try {
            await new Promise((r) => setTimeout(r, 3500));
          } finally {
            Deno.kill(server.pid, "SIGCONT");
          }
          assert.equal(await task, null, "the site's pull ended empty");
          assert.equal(await result, null, "the coordinator's pull ended empty");
          // The connections carry on: a task, its release, accepted.
          await coordinator.sendTasks({
            round: 1,
            phase: 0,
            deadline: later(30_000),
            global,
            tasks: [{ site: "site-a", settings: {} }],
          });
          const lease = await site.nextTask(5000);
          assert.ok(lease, "the task came after the stall");
          assert.equal(lease.attempt, 1);
          await lease.publishResult(release(0.5));
          const outcome = await coordinator.takeResult({ round: 1, phase: 0 }, spec, 5000);
          assert.equal(outcome?.status, "accepted", JSON.stringify(outcome));
        });
      });
    });
  },
);
