import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { downloadFile, md5File, medmnistFile } from "../lib/data/download.ts";

const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");

async function withServer(
  body: Uint8Array<ArrayBuffer>,
  fn: (url: string) => Promise<void>,
): Promise<void> {
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, (req) => {
    if (new URL(req.url).pathname === "/file.npz") return new Response(body);
    return new Response("no", { status: 404 });
  });
  try {
    await fn(`http://127.0.0.1:${server.addr.port}`);
  } finally {
    await server.shutdown();
  }
}

Deno.test("medmnistFile: published URLs and MD5s", () => {
  const v2 = medmnistFile("bloodmnist", 28);
  assert.equal(v2.url, "https://zenodo.org/record/6496656/files/bloodmnist.npz?download=1");
  assert.equal(v2.md5, "7053d0359d879ad8a5505303e11de1dc");
  assert.equal(v2.fileName, "bloodmnist.npz");
  const big = medmnistFile("bloodmnist", 224);
  assert.equal(big.url, "https://zenodo.org/records/10519652/files/bloodmnist_224.npz?download=1");
  assert.equal(big.md5, "b718ff6835fcbdb22ba9eacccd7b2601");
  assert.equal(medmnistFile("organmnist3d", 28, true).md5, "a0c5a1ff56af4f155c46d46fbb45a2fe");
  assert.throws(
    () => medmnistFile("organmnist3d", 224),
    /organmnist3d has no 224-px file; sizes: 28, 64/,
  );
  assert.throws(() => medmnistFile("nosuchmnist"), /unknown MedMNIST dataset "nosuchmnist"/);
});

Deno.test("downloadFile: streams, checks the MD5, renames; leaves no partial file", async () => {
  const body = Uint8Array.from({ length: 300_000 }, (_, i) => (i * 31) % 251);
  const dir = await Deno.makeTempDir();
  try {
    await withServer(body, async (base) => {
      const dest = join(dir, "sub", "x.npz");
      assert.equal(
        await downloadFile(`${base}/file.npz`, dest, md5(body), { progress: false }),
        "downloaded",
      );
      assert.deepEqual(await Deno.readFile(dest), body);
      assert.equal(await md5File(dest), md5(body));
      assert.equal(
        await downloadFile(`${base}/file.npz`, dest, md5(body), { progress: false }),
        "present",
      );

      const wrong = join(dir, "wrong.npz");
      await assert.rejects(
        downloadFile(`${base}/file.npz`, wrong, "0".repeat(32), { progress: false }),
        /downloaded wrong\.npz has MD5 [0-9a-f]{32}, expected 0{32}; the file was discarded\. .*put it at .*wrong\.npz/,
      );
      await assert.rejects(
        downloadFile(`${base}/missing.npz`, wrong, md5(body), { progress: false }),
        /cannot download wrong\.npz: HTTP 404/,
      );
    });
    // Offline (nothing listens): fails fast and says where the file goes and its MD5.
    const t0 = performance.now();
    const probe = Deno.listen({ port: 0, hostname: "127.0.0.1" });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    await assert.rejects(
      downloadFile(`http://127.0.0.1:${port}/x.npz`, join(dir, "off.npz"), "abc", {
        progress: false,
        connectTimeoutMs: 3000,
      }),
      /cannot download off\.npz \(.*\)\. Download it on a machine with internet access .* put it at .*off\.npz; its MD5 must be abc/,
    );
    assert.ok(performance.now() - t0 < 5000);
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(left, ["sub"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
