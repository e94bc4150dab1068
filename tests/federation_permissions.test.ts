/**
 * Every site authenticates with its own nkey and TLS client certificate, and the server's subject
 * permissions confine it to its own queue, results subject, upload bucket and inbox. On a real
 * nats-server: site A cannot take, peek at or subscribe to site B's tasks, cannot publish a
 * result as site B, cannot read the coordinator's state or B's uploads; and what A can send —
 * a result claiming B's name, a ref to B's blob, a wrong shape, a NaN, garbage — is refused by
 * the coordinator and recorded.
 */
import assert from "node:assert/strict";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { encodePayload } from "../lib/federation/codec.ts";
import { connectFederation, openCoordinator, openSite } from "../lib/federation/transport.ts";
import { natsTest, withConnection, withNatsServer } from "./helpers/nats.ts";
import { withFloat32 } from "./helpers/payload_bytes.ts";

const SITES = ["site-a", "site-b"];
const RUN = "perm-run";
const deadline = () => new Date(Date.now() + 60_000);
const global = [{ name: "A.0", shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) }];
const spec = [{ name: "B.0", dtype: "float32" as const, shape: [3, 2] }];
const release = (v = 0.5) => [{ name: "B.0", shape: [3, 2], data: new Float32Array(6).fill(v) }];

/** Resolves with the error a promise rejects with (fails when it resolves). */
async function errorOf(p: Promise<unknown>, what: string): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error(`expected a refusal of ${what}, but it succeeded`);
}

natsTest(
  "federation permissions: site A cannot take, peek at or subscribe to site B's tasks",
  async () => {
    await withNatsServer(SITES, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const coordinator = await openCoordinator(nc, { run: RUN, sites: SITES });
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: deadline(),
          global,
          tasks: [{ site: "site-b", settings: { lr: 0.1 } }],
        });
      });
      await withConnection(server, "site-a", async (nc) => {
        // Through the transport: opening B's queue needs B's consumer, which A may not touch.
        assert.match(
          (await errorOf(openSite(nc, "site-b"), "opening B's queue")).message,
          /Permissions Violation for Publish to "\$JS\.API\.CONSUMER\.INFO\.deer-tasks\.task-site-b"/,
        );
        // Raw JetStream API: pull B's next task, create a consumer of its own on B's subject.
        assert.match(
          (await errorOf(
            nc.request("$JS.API.CONSUMER.MSG.NEXT.deer-tasks.task-site-b", "{}", { timeout: 2000 }),
            "pulling B's next task",
          )).message,
          /Permissions Violation for Publish to "\$JS\.API\.CONSUMER\.MSG\.NEXT\.deer-tasks\.task-site-b"/,
        );
        assert.match(
          (await errorOf(
            nc.request("$JS.API.CONSUMER.CREATE.deer-tasks.spy.deer.task.site-b", "{}", {
              timeout: 2000,
            }),
            "a consumer on B's subject",
          )).message,
          /Permissions Violation for Publish to "\$JS\.API\.CONSUMER\.CREATE\.deer-tasks\.spy/,
        );
        // Core NATS: subscribe to B's task subject or B's inbox (where B's tasks are delivered).
        for (const subject of ["deer.task.site-b", "_INBOX_site-b.>", ">"]) {
          const sub = nc.subscribe(subject);
          const closed = await sub.closed;
          assert.ok(closed instanceof Error, `subscribing to ${subject} should be refused`);
          assert.equal(closed.message, `Permissions Violation for Subscription to "${subject}"`);
        }
        // Nor may A read the coordinator's state, or B's upload bucket.
        assert.match(
          (await errorOf(
            new Kvm(jetstream(nc, { checkAPI: false })).open("deer-state")
              .then((kv) => kv.get(`accepted.${RUN}.1.0.site-b`)),
            "the state",
          )).message,
          /Permissions Violation for Publish to "\$JS\.API\.(DIRECT|STREAM\.MSG)\.GET\.KV_deer-state/,
        );
        assert.match(
          (await errorOf(
            new Objm(jetstream(nc, { checkAPI: false })).open("deer-up-site-b"),
            "B's uploads",
          ))
            .message,
          /Permissions Violation for Publish to "\$JS\.API\.STREAM\.INFO\.OBJ_deer-up-site-b"/,
        );
        // A's own queue opens, and holds nothing: B's task went only to B.
        const own = await openSite(nc, "site-a");
        assert.equal(await own.nextTask(1000), null);
      });
      // B's task is untouched by all of that: first delivery, B's settings, the global factors.
      await withConnection(server, "site-b", async (nc) => {
        const lease = (await (await openSite(nc, "site-b")).nextTask(3000))!;
        assert.equal(lease.attempt, 1);
        assert.deepEqual(
          [lease.task.site, lease.task.round, lease.task.phase, lease.task.settings],
          ["site-b", 1, 0, { lr: 0.1 }],
        );
        assert.deepEqual(Array.from((await lease.global()).arrays[0].data), [1, 2, 3, 4, 5, 6]);
      });
    });
  },
);

natsTest(
  "federation permissions: site A cannot publish as site B; forged or broken results are refused and recorded",
  async () => {
    // site-c holds valid credentials on the server but is not a site of this run.
    await withNatsServer([...SITES, "site-c"], async (server) => {
      const nc = await connectFederation(server.url, server.credentials("coordinator"));
      try {
        const coordinator = await openCoordinator(nc, { run: RUN, sites: SITES });
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: deadline(),
          global,
          tasks: SITES.map((site) => ({ site, settings: {} })),
        });
        await withConnection(server, "site-a", async (na) => {
          const js = jetstream(na, { checkAPI: false });
          const envelope = (site: string, extra = {}) => ({
            kind: "result",
            v: 1,
            run: RUN,
            round: 1,
            phase: 0,
            site,
            attempt: 1,
            release: null,
            report: {},
            ...extra,
          });
          // On B's subject: refused by the server, nothing is stored.
          const forged = await encodePayload({ meta: envelope("site-b"), arrays: release() });
          assert.match(
            (await errorOf(
              js.publish("deer.result.site-b", forged, { timeout: 2000 }),
              "B's subject",
            )).message,
            /Permissions Violation for Publish to "deer\.result\.site-b"/,
          );
          na.publish("deer.result.site-b", forged); // fire-and-forget: dropped by the server
          await na.flush();
          // On A's own subject, each kind of bad result (the coordinator must refuse them all).
          const own = (data: Uint8Array) => js.publish("deer.result.site-a", data);
          await own(forged); // claims to be B
          await own(
            await encodePayload({
              meta: envelope("site-a", {
                release: { bucket: "deer-up-site-b", name: "x", bytes: 8, sha256: "0".repeat(64) },
              }),
              arrays: [],
            }),
          ); // points at B's blob
          await own(
            await encodePayload({
              meta: envelope("site-a"),
              arrays: [{ name: "B.0", shape: [2, 3], data: new Float32Array(6) }],
            }),
          ); // wrong shape
          await own(
            await withFloat32(
              await encodePayload({ meta: envelope("site-a"), arrays: release() }),
              0,
              4,
              NaN,
            ),
          ); // NaN
          await own(new TextEncoder().encode('{"weights": [1, 2, 3]}')); // not a payload
          await own(
            await encodePayload({ meta: envelope("site-a", { round: 7 }), arrays: release() }),
          ); // stale
        });
        await withConnection(server, "site-c", async (ncc) => {
          await jetstream(ncc, { checkAPI: false }).publish(
            "deer.result.site-c",
            await encodePayload({
              meta: {
                kind: "result",
                v: 1,
                run: RUN,
                round: 1,
                phase: 0,
                site: "site-c",
                attempt: 1,
                release: null,
                report: {},
              },
              arrays: release(),
            }),
          );
        });
        // Then A and B send their real results through the transport.
        for (const name of SITES) {
          await withConnection(server, name, async (ns) => {
            const lease = (await (await openSite(ns, name)).nextTask(3000))!;
            await lease.publishResult(release(name === "site-a" ? 0.25 : 0.75), { samples: 10 });
          });
        }
        const phase = await coordinator.collectPhase({
          round: 1,
          phase: 0,
          sites: SITES,
          deadline: new Date(Date.now() + 10_000),
          spec,
        });
        assert.deepEqual([...phase.accepted.keys()].sort(), SITES);
        assert.deepEqual(
          Array.from(phase.accepted.get("site-a")!.release.arrays[0].data),
          Array(6).fill(0.25),
        );
        assert.deepEqual(
          Array.from(phase.accepted.get("site-b")!.release.arrays[0].data),
          Array(6).fill(0.75),
        );
        assert.deepEqual(phase.accepted.get("site-b")!.envelope.report, { samples: 10 });
        assert.deepEqual(phase.missing, []);
        const reasons = phase.refused.map((r) => `${r.site}: ${r.reason}`);
        const expected = [
          /^site-a: .*it claims to come from site site-b$/,
          /^site-a: .*refers to bucket deer-up-site-b; a site's release must be in its own bucket deer-up-site-a$/,
          /^site-a: release of site-a: array B\.0 has shape \[2,3\]; expected \[3,2\]$/,
          /^site-a: factor payload refused: array B\.0: value 4 is NaN$/,
          /^site-a: factor payload refused: it does not start with DEERFAC1/,
          /^site-a: stale: round 7 phase 0 arrived during round 1 phase 0/,
          /^site-c: .*unknown site site-c \(this run's sites: site-a, site-b\)$/,
        ];
        assert.equal(reasons.length, expected.length, reasons.join("\n"));
        reasons.forEach((r, i) => assert.match(r, expected[i]));
        // The refusals are recorded in the state bucket, in stream order, and nothing came from
        // the forged publishes on B's subject.
        const recorded = await coordinator.refusals();
        assert.deepEqual(recorded.map((r) => r.reason), phase.refused.map((r) => r.reason));
        const jsm = await jetstreamManager(nc);
        const info = await jsm.streams.info("deer-results", { subjects_filter: ">" });
        assert.deepEqual(info.state.subjects, {
          "deer.result.site-a": 7,
          "deer.result.site-b": 1,
          "deer.result.site-c": 1,
        });
      } finally {
        await nc.close();
      }
    });
  },
);
