/**
 * `deno task federation`: flags are checked before any work, with the flag and the fix named;
 * `server` runs a loopback nats-server whose credentials let `serve` provision the federation and
 * `join` open its own queue (and refuse another site's credentials); SIGTERM stops the server.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { UsageError } from "../lib/cli.ts";
import {
  checkTaskFlags,
  parseFederationArgs,
  readNoiseKey,
  readServeConfig,
  readSiteLog,
  trainArgsForTrust,
} from "../tasks/federation.ts";
import { natsTest } from "./helpers/nats.ts";
import { emptySiteLog } from "../lib/federation/site_budget.ts";

const TASK = join(import.meta.dirname!, "..", "tasks", "federation.ts");

function usage(args: string[], pattern: RegExp) {
  assert.throws(() => parseFederationArgs(args), (err: Error) => {
    assert.ok(err instanceof UsageError, `${err}`);
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("federation cli: flags are parsed per command and refused with the flag and the fix", () => {
  assert.equal(parseFederationArgs([]), null);
  assert.equal(parseFederationArgs(["join", "--help"]), null);
  const server = parseFederationArgs(["server", "--dir", "d", "--sites", "a, b"])!;
  assert.equal(server.command, "server");
  assert.deepEqual(server.command === "server" && [server.sites, server.port], [["a", "b"], 0]);
  const serve = parseFederationArgs([
    "serve",
    "--nats",
    "tls://127.0.0.1:4222",
    "--creds",
    "/c",
    "--config",
    "f.json",
    "--lease",
    "30",
    "--trust",
    "local",
  ])!;
  assert.deepEqual(
    serve.command === "serve" &&
      [serve.creds.seedFile, serve.leaseMs, serve.deadlineMs, serve.trust, serve.resume],
    ["/c/nkey.seed", 30_000, 600_000, "local", false],
  );
  const site = parseFederationArgs([
    "join",
    "--nats",
    "tls://h:4222",
    "--creds",
    "/s",
    "--site",
    "site-a",
    "--data",
    "x.npz",
  ])!;
  assert.deepEqual(
    site.command === "join" && [site.creds.name, site.model, site.heartbeatMs, site.trust],
    ["site-a", null, 10_000, "central"],
  );
  const wary = parseFederationArgs([
    "join",
    ...["--nats", "tls://h:4222", "--creds", "/s", "--site", "a", "--data", "x.npz"],
    ...["--trust", "local", "--max_epsilon", "4"],
  ])!;
  assert.deepEqual(
    wary.command === "join" && [wary.trust, wary.maxEpsilon, wary.delta],
    ["local", 4, 1e-5],
  );
  const joinArgs = [
    "join",
    "--nats",
    "tls://h:4222",
    "--creds",
    "/s",
    "--site",
    "a",
    "--data",
    "x",
  ];
  usage([...joinArgs, "--trust", "local"], /--trust local needs --max_epsilon E/);
  usage(
    [...joinArgs, "--trust", "local", "--max_epsilon", "0"],
    /--max_epsilon 0: expected a privacy budget ε > 0/,
  );
  usage(
    [...joinArgs, "--trust", "local", "--max_epsilon", "4", "--delta", "1"],
    /--delta 1: expected 0 < δ < 1/,
  );
  usage([...joinArgs, "--max_epsilon", "4"], /use them with --trust local/);
  usage(["train"], /unknown command train; expected server, serve or join/);
  usage(["server", "--dir", "d"], /server needs --sites/);
  usage(["server", "--dir", "d", "--sites", "a,coordinator"], /--sites: site name "coordinator"/);
  usage(["server", "--dir", "d", "--sites", "a,a"], /--sites lists a site twice/);
  usage(["server", "--dir", "d", "--sites", "a", "--nats", "x"], /--nats is not a flag of server/);
  usage(["join", "--nats", "nats://h:4222"], /--nats nats:\/\/h:4222: use tls:\/\//);
  usage(
    ["serve", "--nats", "tls://h:1", "--creds", "c", "--config", "f", "--trust", "x"],
    /--trust x: expected central or local/,
  );
  usage(
    ["serve", "--nats", "tls://h:1", "--creds", "c", "--config", "f", "--lease", "0"],
    /--lease 0: expected a number of seconds > 0/,
  );
  usage(
    ["join", "--nats", "tls://h:1", "--creds", "c", "--site", "a.b", "--data", "d"],
    /--site: site name "a\.b"/,
  );
  usage(["join", "--nats", "tls://h:1", "--creds", "c", "--site", "a", "--bogus", "1"], /bogus/);
});

Deno.test("federation cli: --trust local runs the local calibration; what it cannot run is refused", () => {
  const base = ["--method=DEeR", "--is_DP=1", "--node_num=3"];
  const refused = (args: string[], cal: string | null, trust: "central" | "local", re: RegExp) =>
    assert.throws(() => trainArgsForTrust(args, cal, trust, "f.json"), (err: Error) => {
      assert.ok(err instanceof UsageError, `${err}`);
      assert.match(err.message, re);
      return true;
    });
  // strict is mapped onto local (same clip, the noise moves to the sites); local stays local.
  assert.deepEqual(
    trainArgsForTrust([...base, "--calibration=strict"], "strict", "local", "f.json"),
    [...base, "--calibration=local"],
  );
  assert.deepEqual(
    trainArgsForTrust([...base, "--calibration=local"], "local", "local", "f.json"),
    [...base, "--calibration=local"],
  );
  refused(base, "paper", "local", /--trust local with train\.calibration paper/);
  refused(["--method=DEeR"], null, "local", /--trust local needs differential privacy/);
  refused([...base, "--calibration=local"], "local", "central", /serve it with --trust local/);
  // Central trust leaves the flags as they are.
  assert.deepEqual(
    trainArgsForTrust([...base, "--calibration=strict"], "strict", "central", "f.json"),
    [...base, "--calibration=strict"],
  );
});

Deno.test("federation cli: a site refuses task flags that could name its files", () => {
  const flags = ["--method=DEeR", "--T=2", "--dataset=/coordinator/val.npz", "--is_DP=1"];
  checkTaskFlags(flags, false); // the site's own --data replaces the dataset
  // A two-token flag would slip past the replacement of --dataset=…: refused.
  assert.throws(
    () => checkTaskFlags([...flags, "--dataset", "/srv/other-project/secret.npz"], false),
    /refusing a task whose train flags are not all --name=value \("--dataset"\)/,
  );
  assert.throws(
    () => checkTaskFlags([...flags, "--prototypes=/srv/secret.safetensors"], false),
    /names prototypes outside this site's toolkit folder \(\/srv\/secret\.safetensors\)/,
  );
  assert.throws(
    () => checkTaskFlags([...flags, "--prototypes=../../secret.npz"], true),
    /outside this site's toolkit folder/,
  );
  checkTaskFlags([...flags, "--prototypes=orthonormal"], false);
  checkTaskFlags([...flags, "--prototypes=models/default/prototypes.safetensors"], false);
  // Another model needs the site's own copy.
  assert.throws(
    () => checkTaskFlags([...flags, "--model=/coordinator/vit.safetensors"], false),
    /the run's tasks name a model .*start join with --model PATH/,
  );
  checkTaskFlags([...flags, "--model=/coordinator/vit.safetensors"], true);
});

Deno.test("federation cli: a site's noise key is made once (mode 600) and read back; a bad one is refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-fed-key-" });
  try {
    const path = join(dir, "noise.key");
    const made = await readNoiseKey(path);
    assert.equal(made.length, 32);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.deepEqual(await readNoiseKey(path), made, "the same secret on every start");
    assert.notDeepEqual(await readNoiseKey(join(dir, "other.key")), made);
    await Deno.writeTextFile(join(dir, "bad.key"), "not hex");
    await assert.rejects(readNoiseKey(join(dir, "bad.key")), /at least 16 bytes as hex/);
    assert.deepEqual(await readSiteLog(join(dir, "absent.json"), 1e-5), emptySiteLog(1e-5));
    const log = emptySiteLog(1e-5);
    log.releases["r/1/0"] = {
      inputs: "ab",
      phase: "B",
      noiseMultiplier: 2.417,
      clip: 0.5,
      epsilon: 1.9,
      at: "2026-12-05T12:00:00.000Z",
    };
    log.refused.push({ id: "r2/1/0", reason: "over the cap", at: "2026-12-05T12:01:00.000Z" });
    await Deno.writeTextFile(join(dir, "log.json"), JSON.stringify(log));
    assert.deepEqual(await readSiteLog(join(dir, "log.json"), 1e-5), log);
    await assert.rejects(
      readSiteLog(join(dir, "log.json"), 1e-6),
      /accounts its ε at δ = 0\.00001, not --delta 0\.000001; give --delta 0\.00001/,
    );
    await Deno.writeTextFile(join(dir, "bad.json"), "[1]");
    await assert.rejects(
      readSiteLog(join(dir, "bad.json"), 1e-5),
      /expected the site's release log/,
    );
    await Deno.writeTextFile(join(dir, "v1.json"), JSON.stringify({ "r/1/0": "ab" }));
    await assert.rejects(
      readSiteLog(join(dir, "v1.json"), 1e-5),
      /v1\.json: a release log of the first format .* start the site with a new --noise_key/,
    );
    const noNoise = { ...log, releases: { "r/1/0": { ...log.releases["r/1/0"], clip: 0 } } };
    await Deno.writeTextFile(join(dir, "bad2.json"), JSON.stringify(noNoise));
    await assert.rejects(readSiteLog(join(dir, "bad2.json"), 1e-5), /releases\.r\/1\/0 must hold/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("federation cli: the serve config lists the sites and the train flags; node_num is the site count", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-fed-cli-" });
  try {
    const write = async (name: string, value: unknown) => {
      const path = join(dir, name);
      await Deno.writeTextFile(path, typeof value === "string" ? value : JSON.stringify(value));
      return path;
    };
    const ok = await readServeConfig(
      await write("ok.json", {
        sites: ["a", "b", "c"],
        train: { method: "DEeR", T: 4, is_DP: true },
      }),
    );
    assert.deepEqual(ok, {
      sites: ["a", "b", "c"],
      trainArgs: ["--method=DEeR", "--T=4", "--is_DP=1", "--node_num=3"],
    });
    const refused = async (value: unknown, pattern: RegExp) =>
      await assert.rejects(readServeConfig(await write("bad.json", value)), pattern);
    await refused("{", /bad\.json: .*JSON/);
    await refused({ sites: [] }, /sites must be a non-empty list of site names/);
    await refused({ sites: ["a"], extra: 1 }, /unknown field extra; expected sites and train/);
    await refused({ sites: ["a", "a"] }, /sites lists a site twice/);
    await refused(
      { sites: ["a", "b"], train: { node_num: 12 } },
      /train\.node_num is 12 but 2 sites are listed/,
    );
    await refused(
      { sites: ["a"], train: { lr: [1] } },
      /train\.lr must be a string, number or boolean/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

natsTest(
  "federation cli: `server` credentials let serve provision and join open its own queue; SIGTERM stops it",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "deer-fed-cli-" });
    const env = { NO_COLOR: "1", DEER_BACKEND: "cpu" };
    const server = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", TASK, "server", "--dir", join(dir, "srv"), "--sites", "site-a,site-b"],
      stdout: "piped",
      stderr: "piped",
      env,
    }).spawn();
    const lines = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    let natsPid = 0;
    try {
      while (!/^ready /m.test(out)) {
        const { value, done } = await lines.read();
        if (done) throw new Error(`federation server ended early:\n${out}`);
        out += value;
      }
      const url = out.match(/^ready (\S+)$/m)![1];
      assert.match(url, /^tls:\/\/127\.0\.0\.1:\d+$/);
      natsPid = Number(out.match(/nats-server pid (\d+)/)![1]);
      const creds = (name: string) => join(dir, "srv", "creds", name);
      await Deno.writeTextFile(
        join(dir, "config.json"),
        JSON.stringify({ sites: ["site-a", "site-b"], train: { method: "DEeR", T: 2 } }),
      );
      const run = async (...args: string[]) => {
        const o = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", TASK, ...args],
          env,
        })
          .output();
        const text = new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr);
        return { code: o.code, text };
      };
      // Local trust without DP is refused before any work (the coordinator would otherwise
      // wait for sites; the round itself is tested in federation_nats_round.test.ts and CI).
      const serve = await run(
        "serve",
        "--nats",
        url,
        "--creds",
        creds("coordinator"),
        "--config",
        join(dir, "config.json"),
        "--trust",
        "local",
      );
      assert.equal(serve.code, 2, serve.text);
      assert.match(serve.text, /--trust local needs differential privacy/);
      const data = join(dir, "config.json"); // any existing path: join checks it exists
      const wrong = await run(
        "join",
        "--nats",
        url,
        "--creds",
        creds("site-a"),
        "--site",
        "site-b",
        "--data",
        data,
      );
      assert.equal(wrong.code, 2, wrong.text);
      assert.match(
        wrong.text,
        /the credentials in .*creds\/site-a are not site-b's .*Permissions Violation/,
      );
      server.kill("SIGTERM");
      const status = await server.status;
      for (;;) {
        const { value, done } = await lines.read();
        if (done) break;
        out += value;
      }
      assert.equal(status.code, 0, out);
      assert.match(out, new RegExp(`stopped nats-server pid ${natsPid}`));
      assert.throws(() => Deno.kill(natsPid, "SIGCONT"), "the nats-server process is gone");
    } finally {
      try {
        server.kill("SIGTERM"); // the task stops its nats-server on SIGTERM
      } catch { /* already exited */ }
      await server.status;
      await server.stderr.cancel().catch(() => {});
      try {
        if (natsPid) Deno.kill(natsPid, "SIGTERM"); // only if the task failed to stop it
      } catch { /* stopped, as it should be */ }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);
