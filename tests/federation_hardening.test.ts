/**
 * The transport against a hostile site, on a real nats-server (and the coordinator's checks of a
 * site's report, without one): global factors too large for one message reach every site of a
 * phase; an upload that is an object-store link is refused without being followed, and a blob
 * read is bounded in time; a site cannot suppress another's result through its message id; a
 * fresh start of a run does not reuse an earlier start's results (a resume does); a site purging
 * its accepted blob does not crash a resumed coordinator; a site's report with NaN, empty or
 * inflated statistics is refused, as is a result of a site that is not a participant; a site can
 * create no consumer on the global bucket; and a site flooding its results subject or its upload
 * bucket cannot fill the server's store, nor can a full state bucket stop the coordinator.
 */
import assert from "node:assert/strict";
import { DiscardPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/nats-core";
import { Objm } from "@nats-io/obj";
import { encodePayload } from "../lib/federation/codec.ts";
import { natsClients, reportFault } from "../lib/federation/remote.ts";
import {
  type AcceptedResult,
  type Coordinator,
  openCoordinator,
  openSite,
} from "../lib/federation/transport.ts";
import { natsTest, withConnection, withNatsServer } from "./helpers/nats.ts";

const later = (ms: number) => new Date(Date.now() + ms);
const small = [{ name: "A.0", shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) }];
/** Round 1, phase 0 of a run: a task for every site, the small global factors, a minute. */
const firstPhase = (sites: string[]) => ({
  round: 1,
  phase: 0,
  deadline: later(60_000),
  global: small,
  tasks: sites.map((site) => ({ site, settings: {} })),
});
const spec = [{ name: "B.0", dtype: "float32" as const, shape: [3, 2] }];
const release = (v: number) => [{ name: "B.0", shape: [3, 2], data: new Float32Array(6).fill(v) }];
/** 400,000 float32 values: 1.6 MB, more than one 1 MiB message. */
const N = 400_000;
const bigSpec = [{ name: "B.0", dtype: "float32" as const, shape: [N] }];
const big = (v: number) => [{ name: "B.0", shape: [N], data: new Float32Array(N).fill(v) }];

natsTest(
  "federation hardening: global factors larger than a message reach every site of the phase (one shared blob)",
  async () => {
    const sites = ["site-a", "site-b", "site-c"];
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const coordinator = await openCoordinator(nc, { run: "bigglobal", sites });
        const global = [{ name: "A.0", shape: [N], data: new Float32Array(N).fill(0.25) }];
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(60_000),
          global,
          tasks: sites.map((site, k) => ({ site, settings: { client: k } })),
        });
        for (const [k, site] of sites.entries()) {
          await withConnection(server, site, async (ns) => {
            const lease = (await (await openSite(ns, site)).nextTask(3000))!;
            assert.ok(lease.task.global, "the global factors travel as a blob");
            assert.deepEqual(
              lease.task.settings,
              { client: k },
              "each task keeps its own settings",
            );
            const got = await lease.global();
            assert.equal(got.arrays[0].data.length, N);
            assert.ok(got.arrays[0].data.every((x) => x === 0.25), `${site}: the global factors`);
          });
        }
        // One blob for the phase, written once.
        const blobs = coordinator.traffic().filter((t) => t.direction === "to-site");
        assert.equal(new Set(blobs.map((t) => t.blob)).size, 1);
      });
    });
  },
);

natsTest(
  "federation hardening: an upload that is an object-store link is refused without being followed; a blob read is bounded in time",
  async () => {
    const sites = ["site-a"];
    const run = "links";
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const coordinator = await openCoordinator(nc, { run, sites });
        const jsm = await jetstreamManager(nc);
        const streams = async () => (await jsm.streams.names().next()).sort();
        const before = await streams();
        await withConnection(server, "site-a", async (na) => {
          const js = jetstream(na, { checkAPI: false });
          const b64 = (s: string) => btoa(s).replaceAll("+", "-").replaceAll("/", "_");
          const h = headers();
          h.set("Nats-Rollup", "sub");
          const link = async (name: string, to: { bucket: string; name: string }) => {
            const meta = { name, bucket: "deer-up-site-a", options: { link: to } };
            await js.publish(`$O.deer-up-site-a.M.${b64(name)}`, JSON.stringify(meta), {
              headers: h,
            });
            const ref = { bucket: "deer-up-site-a", name, bytes: 8, sha256: "0".repeat(64) };
            const envelope = {
              kind: "result",
              v: 1,
              run,
              round: 1,
              phase: 0,
              site: "site-a",
              attempt: 1,
              release: ref,
              report: {},
            };
            await js.publish(
              "deer.result.site-a",
              await encodePayload({ meta: envelope, arrays: [] }),
            );
          };
          await link("elsewhere", { bucket: "attacker-made", name: "x" });
          await link("loop", { bucket: "deer-up-site-a", name: "loop" });
        });
        for (const name of ["elsewhere", "loop"]) {
          const t0 = performance.now();
          const outcome = await coordinator.takeResult({ round: 1, phase: 0 }, spec, 3000);
          assert.equal(outcome?.status, "refused", name);
          assert.match(
            outcome.status === "refused" ? outcome.refusal.reason : "",
            new RegExp(`^blob deer-up-site-a/${name} is a link .*; links are refused`),
          );
          assert.ok(performance.now() - t0 < 3000, `${name}: refused at once`);
        }
        assert.deepEqual(await streams(), before, "no stream made on the site's behalf");
      });
      // A blob read that does not finish in time is refused (here a 1 ms limit).
      await withConnection(server, "coordinator", async (nc) => {
        const coordinator = await openCoordinator(nc, { run: "slow", sites, blobTimeoutMs: 1 });
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(60_000),
          global: small,
          tasks: [{ site: "site-a", settings: {} }],
          release: bigSpec,
        });
        await withConnection(server, "site-a", async (ns) => {
          await (await (await openSite(ns, "site-a")).nextTask(3000))!.publishResult(big(0.5));
        });
        const outcome = await coordinator.takeResult({ round: 1, phase: 0 }, bigSpec, 3000);
        assert.equal(outcome?.status, "refused");
        assert.match(
          outcome.status === "refused" ? outcome.refusal.reason : "",
          /^blob deer-up-site-a\/slow\.r1\.p0\.a1: not read within 1 ms$/,
        );
      });
    });
  },
);

natsTest(
  "federation hardening: a site cannot suppress another site's result by taking its message id",
  async () => {
    const sites = ["site-a", "site-b"];
    const run = "msgid";
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const coordinator = await openCoordinator(nc, { run, sites });
        await coordinator.sendTasks({
          ...firstPhase(sites),
        });
        // site-a publishes junk on its own subject under the ids B's result used to have.
        await withConnection(server, "site-a", async (na) => {
          const js = jetstream(na, { checkAPI: false });
          for (const attempt of [1, 2]) {
            await js.publish("deer.result.site-a", new Uint8Array([0]), {
              msgID: `result:${run}:1:0:site-b:${attempt}`,
            });
          }
        });
        await withConnection(server, "site-b", async (nb) => {
          await (await (await openSite(nb, "site-b")).nextTask(3000))!.publishResult(release(3));
        });
        const phase = await coordinator.collectPhase({
          round: 1,
          phase: 0,
          sites: ["site-b"],
          deadline: later(5000),
          spec,
        });
        assert.deepEqual([...phase.accepted.keys()], ["site-b"]);
        assert.deepEqual(Array.from(phase.accepted.get("site-b")!.release.arrays[0].data), [
          3,
          3,
          3,
          3,
          3,
          3,
        ]);
        assert.equal(phase.refused.length, 2, "site-a's junk");
      });
    });
  },
);

natsTest(
  "federation hardening: a fresh start of a run reuses nothing of an earlier start (its results are stale); a resume keeps its own",
  async () => {
    const sites = ["site-a"];
    const run = "rerun";
    const task = (phase: number) => ({
      round: 1,
      phase,
      deadline: later(60_000),
      global: small,
      tasks: [{ site: "site-a", settings: {} }],
    });
    const collect = (c: Coordinator, deadlineMs: number) =>
      c.collectPhase({ round: 1, phase: 0, sites, deadline: later(deadlineMs), spec });
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        // Start 1: accepts a result of 7; a second task of it is taken but not yet answered.
        const c1 = await openCoordinator(nc, { run, sites });
        await withConnection(server, "site-a", async (ns) => {
          const site = await openSite(ns, "site-a");
          await c1.saveState("round", { round: 1 });
          await c1.sendTasks(task(0));
          await (await site.nextTask(3000))!.publishResult(release(7));
          assert.deepEqual([...(await collect(c1, 5000)).accepted.keys()], ["site-a"]);
          await c1.sendTasks(task(1));
          const leftover = (await site.nextTask(3000))!;
          assert.equal(leftover.task.phase, 1);
          // Start 2, same run id, not a resume: nothing of start 1 is accepted.
          const c2 = await openCoordinator(nc, { run, sites });
          assert.notEqual(c2.epoch, c1.epoch);
          assert.equal(await c2.loadState("round"), null, "start 1's round state is gone");
          const before = await collect(c2, 1500);
          assert.deepEqual([...before.accepted.keys()], []);
          assert.deepEqual(before.missing, ["site-a"]);
          // Its task is not dropped as a duplicate of start 1's (same run, round and phase).
          await c2.sendTasks(task(0));
          const lease = await site.nextTask(3000);
          assert.ok(lease, "start 2's task was queued");
          assert.equal(lease.task.epoch, c2.epoch);
          await lease.publishResult(release(9));
          assert.equal(
            (await collect(c2, 5000)).accepted.get("site-a")!.release.arrays[0].data[0],
            9,
          );
          // The answer to start 1's task comes in during start 2's phase 1: stale.
          await leftover.publishResult(release(1));
          const stale = await c2.takeResult({ round: 1, phase: 1 }, spec, 3000);
          assert.equal(stale?.status, "refused");
          assert.match(
            stale.status === "refused" ? stale.refusal.reason : "",
            /^stale: a result for a task of an earlier start of run rerun/,
          );
        });
        // A resume of start 2 keeps its epoch and its accepted result.
        const c3 = await openCoordinator(nc, { run, sites, resume: true });
        assert.equal(
          (await c3.acceptedResults(1, 0)).get("site-a")!.release.arrays[0].data[0],
          9,
        );
      });
    });
  },
);

natsTest(
  "federation hardening: a site purging its accepted blob makes a resumed coordinator take it as missing, not crash",
  async () => {
    const sites = ["site-a", "site-b"];
    const run = "purge";
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const c1 = await openCoordinator(nc, { run, sites });
        await c1.sendTasks({
          ...firstPhase(sites),
          release: bigSpec,
        });
        for (const site of sites) {
          await withConnection(server, site, async (ns) => {
            await (await (await openSite(ns, site)).nextTask(3000))!.publishResult(big(0.5));
          });
        }
        const got = await c1.collectPhase({
          round: 1,
          phase: 0,
          sites,
          deadline: later(10_000),
          spec: bigSpec,
        });
        assert.deepEqual([...got.accepted.keys()].sort(), sites);
        await withConnection(server, "site-a", async (na) => {
          await (await jetstreamManager(na, { checkAPI: false })).streams.purge(
            "OBJ_deer-up-site-a",
          );
        });
        const warnings: string[] = [];
        const c2 = await openCoordinator(nc, {
          run,
          sites,
          resume: true,
          onWarning: (m) => warnings.push(m),
        });
        const t0 = performance.now();
        const phase = await c2.collectPhase({
          round: 1,
          phase: 0,
          sites,
          deadline: later(20_000),
          spec: bigSpec,
        });
        assert.ok(performance.now() - t0 < 5000, "the lost site is not waited for");
        assert.deepEqual([...phase.accepted.keys()], ["site-b"]);
        assert.deepEqual(phase.missing, ["site-a"]);
        assert.equal(warnings.length, 1);
        assert.match(
          warnings[0],
          /^the accepted result of site-a for round 1 phase 0 .* can no longer be read back: blob deer-up-site-a\/purge\.r1\.p0\.a1 is missing; site-a is taken as missing/,
        );
      });
    });
  },
);

natsTest(
  "federation hardening: a result of a site that is not a participant of the phase is refused",
  async () => {
    const sites = ["site-a", "site-b"];
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const coordinator = await openCoordinator(nc, { run: "who", sites });
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(60_000),
          global: small,
          tasks: [{ site: "site-a", settings: {} }],
        });
        await withConnection(server, "site-b", async (nb) => {
          // site-b was sent no task, and answers anyway.
          await jetstream(nb, { checkAPI: false }).publish(
            "deer.result.site-b",
            await encodePayload({
              meta: {
                kind: "result",
                v: 1,
                run: "who",
                round: 1,
                phase: 0,
                site: "site-b",
                attempt: 1,
                release: null,
                report: {},
                epoch: coordinator.epoch,
              },
              arrays: release(2),
            }),
          );
        });
        await withConnection(server, "site-a", async (ns) => {
          await (await (await openSite(ns, "site-a")).nextTask(3000))!.publishResult(release(1));
        });
        const phase = await coordinator.collectPhase({
          round: 1,
          phase: 0,
          sites: ["site-a"],
          deadline: later(5000),
          spec,
        });
        assert.deepEqual([...phase.accepted.keys()], ["site-a"]);
        assert.deepEqual(phase.refused.map((r) => [r.site, r.reason]), [
          ["site-b", "not asked: site-b is not a participant of round 1 phase 0"],
        ]);
      });
    });
  },
);

natsTest(
  "federation hardening: a site can create no consumer on the global bucket, and still reads it",
  async () => {
    const sites = ["site-a"];
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const coordinator = await openCoordinator(nc, { run: "consumers", sites });
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(60_000),
          global: big(0.125),
          tasks: [{ site: "site-a", settings: {} }],
        });
        await withConnection(server, "site-a", async (na) => {
          const create = (subject: string, config: Record<string, unknown>) =>
            na.request(subject, JSON.stringify({ stream_name: "OBJ_deer-global", config }), {
              timeout: 2000,
            }).then(() => "created", (err: Error) => err.message);
          assert.match(
            await create("$JS.API.CONSUMER.CREATE.OBJ_deer-global.d0", {
              durable_name: "d0",
              name: "d0",
              ack_policy: "explicit",
            }),
            /Permissions Violation for Publish to "\$JS\.API\.CONSUMER\.CREATE\.OBJ_deer-global\.d0"/,
          );
          assert.match(
            await create("$JS.API.CONSUMER.DURABLE.CREATE.OBJ_deer-global.d1", {
              durable_name: "d1",
              ack_policy: "explicit",
            }),
            /Permissions Violation/,
          );
          assert.match(
            await create("$JS.API.CONSUMER.CREATE.OBJ_deer-global", {
              deliver_subject: "deer.task.site-a",
              ack_policy: "none",
            }),
            /Permissions Violation for Publish to "\$JS\.API\.CONSUMER\.CREATE\.OBJ_deer-global"/,
          );
          const lease = (await (await openSite(na, "site-a")).nextTask(3000))!;
          assert.ok(lease.task.global);
          assert.equal((await lease.global()).arrays[0].data[N - 1], 0.125);
        });
        const jsm = await jetstreamManager(nc);
        assert.equal((await jsm.streams.info("OBJ_deer-global")).state.consumer_count, 0);
      });
    });
  },
);

natsTest(
  "federation hardening: a site flooding its results subject or its upload bucket cannot fill the store; a refusal that cannot be recorded does not stop the coordinator",
  async () => {
    const sites = ["site-a", "site-b"];
    const run = "fill";
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const warnings: string[] = [];
        const coordinator = await openCoordinator(nc, {
          run,
          sites,
          onWarning: (m) => warnings.push(m),
        });
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: later(60_000),
          global: small,
          tasks: [{ site: "site-b", settings: {} }],
          release: bigSpec,
        });
        const jsm = await jetstreamManager(nc);
        const cap = (await jsm.streams.info("OBJ_deer-up-site-a")).config;
        assert.equal(cap.discard, DiscardPolicy.Old);
        assert.ok(cap.max_bytes > 0 && cap.max_bytes < 16 * 2 ** 20, `cap ${cap.max_bytes}`);
        await withConnection(server, "site-a", async (na) => {
          const js = jetstream(na, { checkAPI: false });
          // 24 junk results of 1 MB each: more than the whole store.
          for (let i = 0; i < 24; i++) {
            await js.publish("deer.result.site-a", new Uint8Array(1000 * 1000).fill(i));
          }
          // 24 objects of 1 MB in its own bucket.
          const store = await new Objm(js).open("deer-up-site-a");
          for (let i = 0; i < 24; i++) {
            await store.putBlob({ name: `junk${i}` }, new Uint8Array(1000 * 1000).fill(i));
          }
        });
        const results = await jsm.streams.info("deer-results", { subjects_filter: ">" });
        assert.equal(results.state.subjects!["deer.result.site-a"], 8, "8 kept per site");
        const uploads = await jsm.streams.info("OBJ_deer-up-site-a");
        assert.ok(uploads.state.bytes <= cap.max_bytes, `${uploads.state.bytes} bytes`);
        // The state bucket is full: refusals cannot be recorded, the coordinator goes on.
        const kv = await jsm.streams.info("KV_deer-state");
        await jsm.streams.update("KV_deer-state", {
          ...kv.config,
          max_bytes: kv.state.bytes + 1,
          discard: DiscardPolicy.New,
        });
        const outcome = await coordinator.takeResult({ round: 1, phase: 0 }, bigSpec, 3000);
        assert.equal(outcome?.status, "refused");
        assert.equal(coordinator.unrecordedRefusals(), 1);
        assert.match(
          warnings.at(-1) ?? "",
          /^could not record the refusal of result seq \d+ of site-a/,
        );
        await jsm.streams.update("KV_deer-state", kv.config);
        // site-b's real release (a blob) still goes through.
        await withConnection(server, "site-b", async (nb) => {
          await (await (await openSite(nb, "site-b")).nextTask(3000))!.publishResult(big(0.25));
        });
        const phase = await coordinator.collectPhase({
          round: 1,
          phase: 0,
          sites: ["site-b"],
          deadline: later(10_000),
          spec: bigSpec,
        });
        assert.deepEqual([...phase.accepted.keys()], ["site-b"]);
      });
    }, { maxFileStore: 24 * 2 ** 20 });
  },
);

// The coordinator's checks of a site's report (natsClients), with a stand-in transport.

const dims = { adapters: 2, rank: 1, dIn: 2, dOut: 2 };
const globalFactors = {
  A: [new Float32Array([3, 4]), new Float32Array([0, 1])], // ‖A_0‖ = 5, ‖A_1‖ = 1
  B: [new Float32Array([0.5, 0.5]), new Float32Array([0.5, 0.5])],
};
const phaseB = { release: ["B"] as const, regulate: true };

/** A coordinator that hands natsClients the given accepted results. */
function fakeCoordinator(reports: Record<string, Record<string, unknown>>): Coordinator {
  const accepted = new Map<string, AcceptedResult>(
    Object.entries(reports).map(([site, report], seq) => [site, {
      seq,
      envelope: {
        kind: "result",
        v: 1,
        run: "r",
        round: 1,
        phase: 0,
        site,
        attempt: 1,
        release: null,
        report,
        epoch: null,
      },
      release: {
        meta: {},
        arrays: [0, 1].map((i) => ({
          name: `B.${i}`,
          shape: [2],
          data: new Float32Array([0.25, 0.25]),
        })),
      },
    }]),
  );
  return {
    sendTasks: () => Promise.resolve(),
    collectPhase: () => Promise.resolve({ accepted, missing: [], refused: [] }),
  } as unknown as Coordinator;
}

Deno.test("federation hardening: a site's report with NaN, empty or inflated statistics is refused and its site excluded", async () => {
  const good = {
    loss: 0.7,
    updateNorm: 0.5,
    clipped: false,
    releaseNorm: 0,
    peerSigmaMax: 5,
    peerSigmaMaxes: [5, 1],
  };
  const reports: Record<string, Record<string, unknown>> = {
    good,
    nan: { ...good, peerSigmaMaxes: [NaN, 1] },
    empty: { ...good, peerSigmaMaxes: [] },
    missing: { ...good, peerSigmaMaxes: undefined },
    huge: { ...good, peerSigmaMaxes: [1e30, 1], peerSigmaMax: 1e30 },
    loss: { ...good, loss: NaN },
    noloss: { ...good, loss: undefined },
    norm: { ...good, updateNorm: -1 },
    nothing: {},
  };
  const sites = Object.keys(reports);
  const refusals: string[] = [];
  const remote = natsClients(fakeCoordinator(reports), {
    sites,
    dims,
    deadlineMs: 1000,
    phases: [phaseB],
    clip: null,
    calibration: "paper",
    onRefusal: (r) => refusals.push(`${r.site}: ${r.reason}`),
  });
  const got = await remote.collect({
    round: 0,
    phaseIndex: 0,
    phase: "B",
    participants: sites.map((_, k) => k),
    global: globalFactors,
  });
  assert.deepEqual([...got.releases.keys()], [0], "only the good report is used");
  assert.deepEqual(got.releases.get(0)!.release.peerSigmaMaxes, [5, 1]);
  assert.equal(got.releases.get(0)!.loss, 0.7);
  assert.deepEqual(got.excluded.map((e) => e.client), [1, 2, 3, 4, 5, 6, 7, 8]);
  const reasons = got.excluded.map((e) => e.reason);
  [
    /peerSigmaMaxes\[0\] null is not a finite number ≥ 0/,
    /peerSigmaMaxes must list the σ_max of each released tensor's peer \(2\); got 0 values/,
    /peerSigmaMaxes must list .* got undefined/,
    /peerSigmaMaxes\[0\] 1e\+30 above the Frobenius norm 5 of that peer/,
    /loss null is not a finite number/,
    /loss undefined is not a finite number/,
    /updateNorm -1 is not a finite number ≥ 0/,
    /loss undefined is not a finite number/,
  ].forEach((re, i) => assert.match(reasons[i], re));
  assert.equal(refusals.length, 8);
  // No client index is undefined, and a non-participant's result is not used.
  const others = natsClients(fakeCoordinator({ good, intruder: good }), {
    sites: ["good", "intruder"],
    dims,
    deadlineMs: 1000,
    phases: [phaseB],
    clip: null,
  });
  const only = await others.collect({
    round: 0,
    phaseIndex: 0,
    phase: "B",
    participants: [0],
    global: globalFactors,
  });
  assert.deepEqual([...only.releases.keys()], [0]);
  assert.deepEqual(only.excluded, []);
});

Deno.test("federation hardening: report checks under strict calibration and local trust", () => {
  const factors = globalFactors;
  const strict = { clip: 1, calibration: "strict" as const };
  const report = { loss: 0.3, updateNorm: 2, clipped: true, releaseNorm: 1, peerSigmaMax: 0 };
  assert.ok("stats" in reportFault(report, factors, phaseB, dims, strict));
  const fault = (r: Record<string, unknown>, o = strict) => {
    const out = reportFault(r, factors, phaseB, dims, o);
    return "fault" in out ? out.fault : null;
  };
  assert.match(fault({ ...report, releaseNorm: 5 })!, /releaseNorm 5 above the clip bound C = 1/);
  assert.match(fault({ ...report, clipped: false })!, /clipped false with updateNorm 2 and C = 1/);
  assert.match(fault({ ...report, peerSigmaMaxes: [1, 1] })!, /peerSigmaMaxes given/);
  assert.match(fault({})!, /loss undefined/);
  assert.match(fault({ ...report, steps: -1 })!, /steps -1 is not a whole number ≥ 0/);
  assert.match(fault({ ...report, steps: 1.5 })!, /steps 1.5 is not a whole number ≥ 0/);
  const counted = reportFault({ ...report, steps: 0 }, factors, phaseB, dims, strict);
  assert.ok("stats" in counted && counted.stats.steps === 0);
  // Local trust: the coordinator holds nothing of the report.
  const local = reportFault({ loss: NaN }, factors, phaseB, dims, {
    clip: null,
    calibration: "local",
  });
  assert.ok("stats" in local && Number.isNaN(local.stats.loss));
});
