/**
 * Payloads larger than one message go through the JetStream object store, on a real nats-server
 * with TLS: a ViT-B/16-sized LoRA release (12 blocks × q,k,v × A,B of 16×768, float32, 3.4 MiB)
 * and a 1 MiB one travel site → coordinator, and the global factors coordinator → site,
 * bit-identical; a small one stays inline; a blob changed in the store after its result was
 * published is refused; the coordinator's byte count (`traffic()`) is the size of every message
 * and of every blob in the store. Prints the measured round-trip times.
 */
import assert from "node:assert/strict";
import { Objm } from "@nats-io/obj";
import { jetstream } from "@nats-io/jetstream";
import type { NamedArray } from "../lib/federation/codec.ts";
import { openCoordinator, openSite } from "../lib/federation/transport.ts";
import { natsTest, withConnection, withNatsServer } from "./helpers/nats.ts";

/** LoRA factors of a ViT: `blocks` × (q, k, v) × (A: r×d, B: d×r), filled from `seed`. */
function vitFactors(blocks: number, rank: number, width: number, seed: number): NamedArray[] {
  const out: NamedArray[] = [];
  let s = seed >>> 0;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5;
  for (let b = 0; b < blocks; b++) {
    for (const proj of ["q", "k", "v"]) {
      for (const [f, shape] of [["A", [rank, width]], ["B", [width, rank]]] as const) {
        const data = new Float32Array(rank * width);
        for (let i = 0; i < data.length; i++) data[i] = next() * 1e-2;
        out.push({ name: `block${b}.${proj}.${f}`, shape: [...shape], data });
      }
    }
  }
  return out;
}

const specOf = (arrays: NamedArray[]) =>
  arrays.map((a) => ({ name: a.name, dtype: "float32" as const, shape: a.shape }));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

natsTest(
  "federation blobs: large releases and global factors go through the object store bit-identical; small ones inline",
  async () => {
    const sites = ["site-a"];
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const coordinator = await openCoordinator(nc, { run: "blobs", sites, leaseMs: 30_000 });
        await withConnection(server, "site-a", async (ns) => {
          const site = await openSite(ns, "site-a");
          const cases = [
            { label: "inline 12 KiB", arrays: vitFactors(1, 1, 512, 1), inline: true },
            {
              label: "1 MiB",
              arrays: [{
                name: "x",
                shape: [256, 1024],
                data: vitFactors(1, 16, 16384, 2)[0].data,
              }],
              inline: false,
            },
            { label: "ViT-B/16 r=16 (3.4 MiB)", arrays: vitFactors(12, 16, 768, 3), inline: false },
          ];
          let round = 0;
          const sizes: { round: number; inline: boolean; bytes: number }[] = [];
          for (const { label, arrays, inline } of cases) {
            const bytes = arrays.reduce((n, a) => n + a.data.byteLength, 0);
            const down: number[] = [];
            const up: number[] = [];
            for (let rep = 0; rep < 3; rep++) {
              round++;
              sizes.push({
                round,
                inline,
                bytes: arrays.reduce((n, a) => n + a.data.byteLength, 0),
              });
              // Coordinator → site: the global factors of a task.
              let t = performance.now();
              await coordinator.sendTasks({
                round,
                phase: 0,
                deadline: new Date(Date.now() + 60_000),
                global: arrays,
                tasks: [{ site: "site-a", settings: {} }],
              });
              const lease = (await site.nextTask(5000))!;
              const got = await lease.global();
              down.push(performance.now() - t);
              assert.equal(lease.task.global === null, inline, `${label}: global inline`);
              assert.deepEqual(got.arrays.map((a) => a.name), arrays.map((a) => a.name));
              got.arrays.forEach((a, i) => assert.deepEqual(a.data, arrays[i].data));
              // Site → coordinator: the release, accepted and decoded.
              t = performance.now();
              await lease.publishResult(arrays, { samples: 100 });
              const outcome = await coordinator.takeResult(
                { round, phase: 0 },
                specOf(arrays),
                5000,
              );
              up.push(performance.now() - t);
              assert.equal(outcome?.status, "accepted", JSON.stringify(outcome));
              const result = outcome!.status === "accepted" ? outcome!.result : null;
              assert.equal(result!.envelope.release === null, inline, `${label}: release inline`);
              if (!inline) assert.equal(result!.envelope.release!.bucket, "deer-up-site-a");
              result!.release.arrays.forEach((a, i) => assert.deepEqual(a.data, arrays[i].data));
            }
            const mib = bytes / 2 ** 20;
            console.log(
              `  ${label}: ${(bytes / 1024).toFixed(0)} KiB; coordinator→site ` +
                `${median(down).toFixed(1)} ms, site→coordinator ${median(up).toFixed(1)} ms ` +
                `(${(mib / (median(up) / 1000)).toFixed(0)} MiB/s; median of 3, TLS, loopback)`,
            );
          }
          // The byte count: one entry per message each way; a blob's count is its stored size.
          const traffic = coordinator.traffic();
          assert.equal(traffic.length, 2 * sizes.length);
          const objm = new Objm(jetstream(nc));
          const globalStore = await objm.open("deer-global");
          const uploads = await objm.open("deer-up-site-a");
          for (const { round, inline, bytes } of sizes) {
            const [down, up] = ["to-site", "from-site"].map((direction) =>
              traffic.filter((t) => t.round === round && t.direction === direction)
            );
            assert.equal(down.length, 1);
            assert.equal(up.length, 1);
            for (const t of [...down, ...up]) {
              assert.deepEqual([t.site, t.phase], ["site-a", 0]);
              if (inline) {
                assert.equal(t.blob, 0);
                assert.ok(t.message > bytes && t.message < bytes + 16_384, JSON.stringify(t));
              } else {
                assert.ok(t.message < 4096, `a blob's message is its envelope: ${t.message}`);
                assert.ok(t.blob > bytes && t.blob < bytes + 16_384, JSON.stringify(t));
              }
            }
            if (!inline) {
              assert.equal(down[0].blob, (await globalStore.info(`blobs.r${round}.p0`))!.size);
              assert.equal(up[0].blob, (await uploads.info(`blobs.r${round}.p0.a1`))!.size);
            }
          }
          // The server carried at least the counted bytes on site-a's connection, each way.
          const connz = await (await fetch(`${server.monitorUrl}/connz?limit=100`)).json();
          const conn = connz.connections.find((c: { name?: string }) => c.name === "deer-site-a");
          const counted = (d: string) =>
            traffic.filter((t) => t.direction === d).reduce((n, t) => n + t.message + t.blob, 0);
          assert.ok(conn.out_bytes >= counted("to-site"), `${conn.out_bytes} to site-a`);
          assert.ok(conn.in_bytes >= counted("from-site"), `${conn.in_bytes} from site-a`);
          console.log(
            `  server's count on site-a's connection: ${
              (conn.out_bytes / counted("to-site")).toFixed(3)
            }× the counted bytes to it, ${
              (conn.in_bytes / counted("from-site")).toFixed(3)
            }× from it (acks, API calls, chunk headers)`,
          );
        });
      });
    }, { monitor: true });
  },
);

natsTest(
  "federation blobs: a release blob changed in the store after publishing is refused",
  async () => {
    const sites = ["site-a"];
    await withNatsServer(sites, async (server) => {
      await withConnection(server, "coordinator", async (nc) => {
        const coordinator = await openCoordinator(nc, { run: "tamper", sites });
        const arrays = vitFactors(12, 16, 768, 4);
        await coordinator.sendTasks({
          round: 1,
          phase: 0,
          deadline: new Date(Date.now() + 60_000),
          global: arrays.slice(0, 2),
          tasks: [{ site: "site-a", settings: {} }],
          release: specOf(arrays), // the release is larger than the global: room for it
        });
        await withConnection(server, "site-a", async (ns) => {
          const lease = (await (await openSite(ns, "site-a")).nextTask(5000))!;
          await lease.publishResult(arrays);
          // The site rewrites its own blob with other bytes of the same size before it is read.
          const store = await new Objm(jetstream(ns, { checkAPI: false })).open("deer-up-site-a");
          const name = "tamper.r1.p0.a1";
          const size = (await store.info(name))!.size;
          assert.ok(size > 3 * 2 ** 20, `blob of ${size} bytes`);
          await store.putBlob({ name }, new Uint8Array(size).fill(7));
        });
        const outcome = await coordinator.takeResult({ round: 1, phase: 0 }, specOf(arrays), 5000);
        assert.equal(outcome?.status, "refused");
        assert.match(
          outcome!.status === "refused" ? outcome!.refusal.reason : "",
          /^blob deer-up-site-a\/tamper\.r1\.p0\.a1: SHA-256 [0-9a-f]{64} ≠ declared [0-9a-f]{64}$/,
        );
        assert.equal(await coordinator.state.get("accepted.tamper.1.0.site-a"), null);
      });
    });
  },
);
