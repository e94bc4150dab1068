/**
 * The engine's round over a real nats-server (TLS, per-site nkeys): a coordinator running
 * `runFederated` with `natsClients` and four sites each running `runSite` on its own connection
 * and client state give the records, ledger and checkpoints of the one-process simulation; in
 * DEeR's regulated phases the coordinator checks each release's norm in product space, where the
 * strict mechanism clips it: a release scaled above the bound is refused, recorded and its site
 * excluded, while a correctly clipped one passes.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { defaultConfig, type FederatedConfig, runFederated } from "../lib/fl/simulation.ts";
import { resolveMethod } from "../lib/fl/methods/mod.ts";
import { siteRuntime } from "../lib/federation/site.ts";
import {
  arraysFactors,
  factorArrays,
  natsClients,
  releasedOnly,
  releaseFault,
  runSite,
} from "../lib/federation/remote.ts";
import { siteRelease } from "../lib/federation/site.ts";
import { connectFederation, openCoordinator, openSite } from "../lib/federation/transport.ts";
import { compareRuns } from "../tools/compare_runs.ts";
import { toyConfig, toySetup } from "./helpers/fl_fixture.ts";
import { natsTest, trainAndServeOverNats, withNatsServer } from "./helpers/nats.ts";

const setup = await toySetup();
const SITES = ["site-a", "site-b", "site-c", "site-d"];

const cfg: FederatedConfig = toyConfig({
  method: { ...defaultConfig().method, method: "DEeR" },
  dp: { calibration: "strict", clip: 0.5, epsilon: 6 },
  numClients: SITES.length,
});

natsTest("federation over nats: four sites give the simulation's run (DEeR strict)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-fed-nats-" });
  await trainAndServeOverNats(setup, cfg, SITES, { dir, run: "eq-1", clip: 0.5 });
  assert.deepEqual(compareRuns(join(dir, "train"), join(dir, "serve")), []);
  await Deno.remove(dir, { recursive: true });
});

natsTest(
  "federation over nats: FLoRA with ranks 2 and 4 under paper — every site's release at its own rank is taken; the simulation's run but for the noise energy",
  async () => {
    const flora: FederatedConfig = {
      ...cfg,
      method: { method: "FLoRA" },
      clientRanks: [2, 4],
      dp: { calibration: "paper", clip: 0.5, epsilon: 6 },
    };
    const dir = await Deno.makeTempDir({ prefix: "deer-fed-nats-flora-" });
    // The helper asserts that no release was refused and every site took each task.
    await trainAndServeOverNats(setup, flora, SITES, { dir, run: "flora-1", clip: null });
    // The sites keep their un-noised factors: the coordinator's records cannot hold the noise
    // energy (null); everything else — ledger, state, checkpoints — is the simulation's.
    assert.deepEqual(compareRuns(join(dir, "train"), join(dir, "serve")), [
      "records.jsonl: differs",
    ]);
    const records = async (run: string) =>
      (await Deno.readTextFile(join(dir, run, "records.jsonl"))).trim().split("\n").map((l) => {
        const r = JSON.parse(l);
        const energies = [
          r.noiseEnergy,
          ...r.phases.map((p: { noiseEnergy: unknown }) => p.noiseEnergy),
        ];
        delete r.seconds;
        delete r.liveTensors;
        r.noiseEnergy = 0;
        for (const p of r.phases) p.noiseEnergy = 0;
        return { r, energies };
      });
    const [train, serve] = [await records("train"), await records("serve")];
    assert.deepEqual(serve.map((x) => x.r), train.map((x) => x.r));
    assert.ok(serve.every((x) => x.energies.every((e) => e === null)));
    assert.ok(train.every((x) => x.energies.every((e) => typeof e === "number" && e > 0)));
    await Deno.remove(dir, { recursive: true });
  },
);

Deno.test("federation clip check: a regulated release is bounded in product space, not entry-wise", () => {
  const dims = { adapters: 1, rank: 1, dIn: 2, dOut: 2 };
  const f = (a: number[], b: number[]) => ({
    A: [new Float32Array(a)],
    B: [new Float32Array(b)],
  });
  // Phase B (regulated, peer A = [3, 4], ‖A‖ = 5): ‖ΔB·A‖_F = 5‖ΔB‖.
  const global = f([3, 4], [0, 0]);
  const phaseB = { release: ["B"] as const, regulate: true };
  assert.equal(releaseFault(f([3, 4], [0.1, 0]), global, phaseB, dims, 0.5), null); // 0.5
  assert.equal(
    releaseFault(f([3, 4], [0.3, 0]), global, phaseB, dims, 0.5), // ‖ΔB‖ = 0.3 ≤ C, yet 1.5
    "release norm in product space 1.5000000596046448 above the clip bound C = 0.5",
  );
  assert.match(
    releaseFault(f([3, 4], [0.1005, 0]), global, phaseB, dims, 0.5)!,
    /^release norm in product space 0\.502\d* above the clip bound C = 0\.5$/,
  );
  // The same release unregulated is bounded in its own norm: 0.3 passes.
  assert.equal(
    releaseFault(f([3, 4], [0.3, 0]), global, { ...phaseB, regulate: false }, dims, 0.5),
    null,
  );
  // Phase A (regulated, peer B = [0, 2]ᵀ, ‖B‖ = 2): ‖B·ΔA‖_F = 2‖ΔA‖.
  const globalA = f([1, 1], [0, 2]);
  const phaseA = { release: ["A"] as const, regulate: true };
  assert.equal(releaseFault(f([1.2, 1.1], [0, 2]), globalA, phaseA, dims, 0.5), null); // 0.447
  assert.equal(
    releaseFault(f([1.5, 1], [0, 2]), globalA, phaseA, dims, 0.5), // ‖ΔA‖ = 0.5 ≤ C, yet 1
    "release norm in product space 1 above the clip bound C = 0.5",
  );
  // No bound to check (paper calibration): only finiteness.
  assert.equal(releaseFault(f([3, 4], [9, 9]), global, phaseB, dims, null), null);
  assert.equal(
    releaseFault(f([3, 4], [NaN, 0]), global, phaseB, dims, null),
    "non-finite values in the release",
  );
});

natsTest(
  "federation over nats: a regulated release scaled above the bound is refused and its site excluded",
  async () => {
    const sites = ["site-a", "site-b"];
    // An equal split: each of the two sites has images to train on.
    const two: FederatedConfig = {
      ...cfg,
      numClients: 2,
      rounds: 1,
      split: { iid: true, dirichletAlpha: 0.1 },
    };
    const method = resolveMethod(two.method);
    const C = two.dp!.clip;
    const dir = await Deno.makeTempDir({ prefix: "deer-fed-clip-" });
    await withNatsServer(sites, async (server) => {
      const nc = await connectFederation(server.url, server.credentials("coordinator"));
      const [connA, connB] = await Promise.all(
        sites.map((s) => connectFederation(server.url, server.credentials(s))),
      );
      try {
        const coordinator = await openCoordinator(nc, { run: "clip-1", sites, leaseMs: 20_000 });
        const stop = new AbortController();
        // site-a: the toolkit's own site loop (releases clipped in product space).
        const honest = runSite(
          await openSite(connA, "site-a"),
          setup.backbone,
          siteRuntime(setup.data, two, 0),
          { heartbeatMs: 2000, idleMs: 60_000, signal: stop.signal },
        );
        // site-b: trains and clips as the toolkit does, then scales its update to 2C in product space.
        const cheat = (async () => {
          const site = await openSite(connB, "site-b");
          const runtime = siteRuntime(setup.data, two, 1);
          const sent: number[] = [];
          for (let n = 0; n < method.phases.length; n++) {
            const lease = await site.nextTask(30_000);
            assert.ok(lease, `site-b: task ${n + 1} did not come`);
            const { factors: global, merged } = arraysFactors((await lease.global()).arrays);
            const { release, loss } = await siteRelease(setup.backbone, runtime, {
              round: lease.task.round - 1,
              phaseIndex: lease.task.phase,
              global,
              merged,
            });
            assert.ok(release.releaseNorm > 0 && release.releaseNorm <= C * (1 + 1e-5));
            const which = method.phases[lease.task.phase].release[0];
            const s = (2 * C) / release.releaseNorm;
            release.factors[which] = release.factors[which].map((t, i) =>
              t.map((v, j) => global[which][i][j] + s * (v - global[which][i][j]))
            );
            await lease.publishResult(factorArrays(releasedOnly(release.factors, [which])), {
              loss,
              updateNorm: release.updateNorm,
              clipped: true,
              releaseNorm: release.releaseNorm,
              peerSigmaMax: 0,
            });
            sent.push(lease.task.phase);
          }
          return sent;
        })();
        const refusals: { site: string; reason: string; phase: number | null }[] = [];
        await runFederated(setup.backbone, setup.data, two, {
          outDir: join(dir, "serve"),
          remote: natsClients(coordinator, {
            sites,
            dims: setup.backbone.dims,
            deadlineMs: 60_000,
            phases: method.phases,
            clip: C,
            onRefusal: (r) => refusals.push(r),
          }),
        });
        assert.deepEqual(await cheat, [0, 1]);
        stop.abort();
        assert.equal(await honest, 2);
        // Both of site-b's releases refused (phase B: ‖ΔB·A‖, phase A: ‖B·ΔA‖, each ≈ 2C).
        assert.deepEqual(refusals.map((r) => [r.site, r.phase]), [["site-b", 0], ["site-b", 1]]);
        for (const r of refusals) {
          const m = r.reason.match(
            /^release norm in product space (\S+) above the clip bound C = 0\.5$/,
          );
          assert.ok(m, r.reason);
          assert.ok(Math.abs(Number(m[1]) - 2 * C) < 1e-4, r.reason);
        }
        const [record] = (await Deno.readTextFile(join(dir, "serve", "records.jsonl")))
          .trim().split("\n").map((l) => JSON.parse(l));
        for (const [i, phase] of record.phases.entries()) {
          assert.deepEqual(phase.excluded, [{
            client: 1,
            reason: `release refused: ${refusals[i].reason}`,
          }]);
          // site-a's clipped release was combined: its norm is the record's largest.
          assert.ok(
            phase.maxReleaseNorm > 0 && phase.maxReleaseNorm <= C * (1 + 1e-5),
            JSON.stringify(phase),
          );
        }
      } finally {
        await nc.close();
        await connA.close();
        await connB.close();
      }
    });
    await Deno.remove(dir, { recursive: true });
  },
);
