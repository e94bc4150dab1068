/**
 * `deno task setup` — makes the fast tensor backend (tfjs-node on libtensorflow) work on this
 * machine, offline if need be. Idempotent: when tfjs-node already works it only checks (≈ 1 s).
 *
 * Otherwise, in order:
 * 1. `deno install`, so that `node_modules/` holds tfjs-node;
 * 2. the normal way: tfjs-node's install script, which downloads libtensorflow from Google's
 *    storage and builds or downloads the native addon (fails fast when offline);
 * 3. offline: a local TensorFlow 2.x CPU build — the wheel named by `--tf-wheel` (or
 *    `DEER_TF_WHEEL`), a copy extracted earlier into `.tools/libtensorflow/`, an installed Python
 *    `tensorflow` package, or `tensorflow-cpu` downloaded with pip from the first local index of
 *    `pip config list`. Its `libtensorflow_cc.so.2` exports the C API tfjs-node needs; the addon is
 *    then built against it with node-gyp (needs Node.js, python3, make and a C++ compiler).
 *
 * If all of that fails, the toolkit still runs on the wasm backend (slower): setup says what it
 * tried and how to fix it, and exits 0 — or 1 with `--require-tensorflow` (CI uses that).
 * The full output of every step is kept in `.tools/setup.log`.
 *
 * @example
 * ```sh
 * deno task setup
 * deno task setup --tf-wheel ~/Downloads/tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl
 * ```
 * @module
 */
import { existsSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { noPositionals, parseCommandArgs } from "../lib/cli.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";

const USAGE = `Usage: deno task setup [--tf-wheel PATH] [--require-tensorflow]

Makes the tfjs-node (libtensorflow) backend work, building it offline if needed.

  --tf-wheel PATH        a TensorFlow 2.x CPU wheel (tensorflow_cpu-*.whl) to build against
                         (default: env DEER_TF_WHEEL, else found or downloaded with pip)
  --require-tensorflow   exit 1 when tfjs-node cannot be made to work (default: exit 0 and
                         let the toolkit run on the slower wasm backend)
  -h, --help             this text`;

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const TOOLS = join(ROOT, ".tools");
const LIBTF = join(TOOLS, "libtensorflow");
const LOG = join(TOOLS, "setup.log");

// What tfjs-node's addon needs from a TensorFlow build (paths inside the `tensorflow/` package).
const TF_LIBS = ["libtensorflow_cc.so.2", "libtensorflow_framework.so.2"];
const TF_HEADER_DIRS = [
  "include/tensorflow/c/",
  "include/tensorflow/core/platform/",
  "include/xla/tsl/",
  "include/tsl/",
];

// The fused kernels (lib/native.ts): source, and where the compiled library goes.
const NATIVE_SOURCE = join(ROOT, "lib/native/deer_ops.c");
const NATIVE_LIB = join(TOOLS, "native/libdeer_ops.so");
// tfjs-node's libtensorflow, whichever way it was installed.
const ADDON_LIBS = join(ROOT, "node_modules/@tensorflow/tfjs-node/deps/lib");

const NORMAL_INSTALL_TIMEOUT_S = 300; // download ≈ 100 MB + build; offline it fails in < 1 s
const BUILD_TIMEOUT_S = 600;
const PIP_TIMEOUT_S = 900;

const logLines: string[] = [];
const started = performance.now();

function say(line: string): void {
  console.log(`setup: ${line}`);
  logLines.push(`setup: ${line}`);
}

// Why the last TensorFlow source tried was not usable, for the closing summary.
let lastWhy = "";

/** Reports why a TensorFlow source cannot be used; returns null for the caller to pass on. */
function unusable(why: string): null {
  say(`  ${why}`);
  lastWhy = why;
  return null;
}

const seconds = (t0: number) => `${((performance.now() - t0) / 1000).toFixed(1)} s`;

interface RunResult {
  ok: boolean;
  code: number;
  output: string;
  timedOut: boolean;
}

/** Runs a command to completion, output captured (and logged), killed after `timeoutS`. */
async function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: Record<string, string>; timeoutS: number },
): Promise<RunResult> {
  logLines.push(`$ ${cmd} ${args.join(" ")}${opts.cwd ? `   (in ${opts.cwd})` : ""}`);
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      cwd: opts.cwd ?? ROOT,
      env: opts.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    const output = `cannot run ${cmd}: ${(err as Error).message}`;
    logLines.push(output);
    return { ok: false, code: -1, output, timedOut: false };
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, opts.timeoutS * 1000);
  const [status, out, err] = await Promise.all([
    child.status,
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
  ]);
  clearTimeout(timer);
  const output = (out + err).trimEnd();
  logLines.push(
    output,
    `(exit ${status.code}${timedOut ? `, killed after ${opts.timeoutS} s` : ""})`,
  );
  return { ok: status.success && !timedOut, code: status.code, output, timedOut };
}

/** The most telling line of a failed command's output, for a one-line reason. */
function reason(r: RunResult): string {
  if (r.timedOut) return "timed out";
  // deno-lint-ignore no-control-regex
  const plain = r.output.replace(/\x1b\[[0-9;]*m/g, "");
  const lines = plain.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const telling = lines.find((l) => /\b(Error|ERR!|error:|ENOTFOUND|No matching)/.test(l)) ??
    lines.at(-1) ?? `exit code ${r.code}`;
  return telling.length > 220 ? telling.slice(0, 217) + "..." : telling;
}

// Imports the toolkit's backend module with tfjs-node forced and checks one product.
const CHECK_SOURCE = `
import { backendName, tf } from ${
  JSON.stringify(new URL("../lib/backend.ts", import.meta.url).href)
};
const y = tf.matMul(tf.tensor2d([1, 2, 3, 4], [2, 2]), tf.tensor2d([5, 6, 7, 8], [2, 2]));
const got = Array.from(await y.data()).join(",");
if (backendName !== "tensorflow" || got !== "19,22,43,50") {
  throw new Error("backend " + backendName + " computed " + got);
}
console.log("tfjs-node ok");
`;

// Loads the fused kernels in a fresh process and compares the GELU pair with TensorFlow's own
// kernels (tests/native_ops.test.ts and tests/perf_equivalence.test.ts cover all of them).
const NATIVE_CHECK_SOURCE = `
import { tf } from ${JSON.stringify(new URL("../lib/backend.ts", import.meta.url).href)};
import { nativeOps, nativeOpsStatus } from ${
  JSON.stringify(new URL("../lib/native.ts", import.meta.url).href)
};
import { geluBackward, geluForward } from ${
  JSON.stringify(new URL("../lib/model/vit_fast.ts", import.meta.url).href)
};
if (!nativeOps()) throw new Error(nativeOpsStatus());
const z = tf.linspace(-6, 6, 1003);
const d = tf.cos(z);
const [a1, g1] = geluForward(z, true);
const [a0, g0] = geluForward(z, false);
const dz1 = geluBackward(d, z, g1, true);
const dz0 = geluBackward(d, z, g0, false);
for (const [x, y] of [[a1, a0], [g1, g0], [dz1, dz0]]) {
  const err = (await tf.max(tf.abs(tf.sub(x, y))).data())[0];
  if (!(err <= 1e-5)) throw new Error("fused kernels differ from TensorFlow's by " + err);
}
console.log("fused kernels ok");
`;

/**
 * Compiles the fused kernels (lib/native/deer_ops.c) against tfjs-node's libtensorflow into
 * `.tools/native/libdeer_ops.so` when missing or older than the source, and checks them in a
 * fresh process. Never fatal: without them the toolkit uses TensorFlow's own kernels.
 */
async function buildNativeOps(): Promise<void> {
  const t0 = performance.now();
  const notBuilt = (why: string) =>
    say(`fused kernels not built (${why}); TensorFlow's own kernels are used (same results)`);
  if (
    isFile(NATIVE_LIB) && Deno.statSync(NATIVE_LIB).mtime! >= Deno.statSync(NATIVE_SOURCE).mtime!
  ) {
    return;
  }
  const cc = (await which("cc")) ?? (await which("gcc"));
  if (!cc) return notBuilt("no C compiler: install gcc");
  if (!isFile(join(ADDON_LIBS, "libtensorflow_framework.so.2"))) {
    return notBuilt(`no libtensorflow_framework.so.2 in ${ADDON_LIBS}`);
  }
  await Deno.mkdir(dirname(NATIVE_LIB), { recursive: true });
  const tmp = `${NATIVE_LIB}.tmp-${Deno.pid}`;
  const built = await run(cc, [
    "-O2",
    "-ffp-contract=off", // a·b + c rounds twice, as TensorFlow's separate kernels do
    "-shared",
    "-fPIC",
    NATIVE_SOURCE,
    "-o",
    tmp,
    `-L${ADDON_LIBS}`,
    "-l:libtensorflow_framework.so.2",
    `-Wl,-rpath,${Deno.realPathSync(ADDON_LIBS)}`,
    "-lmvec",
    "-lm",
  ], { timeoutS: 120 });
  if (!built.ok) {
    await Deno.remove(tmp).catch(() => {});
    return notBuilt(reason(built));
  }
  await Deno.rename(tmp, NATIVE_LIB);
  const check = await run(Deno.execPath(), ["eval", "--ext=ts", NATIVE_CHECK_SOURCE], {
    env: { DEER_BACKEND: "tensorflow", DEER_QUIET: "1", NO_COLOR: "1" },
    timeoutS: 180,
  });
  if (!check.ok) {
    await Deno.remove(NATIVE_LIB).catch(() => {});
    return notBuilt(`built but unusable: ${reason(check)}`);
  }
  say(`fused kernels built and checked (${seconds(t0)})`);
}

async function tensorflowWorks(): Promise<RunResult> {
  return await run(Deno.execPath(), ["eval", "--ext=ts", CHECK_SOURCE], {
    env: { DEER_BACKEND: "tensorflow", DEER_QUIET: "1", NO_COLOR: "1" },
    timeoutS: 180,
  });
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile; // follows links: a dangling link is not a file
  } catch {
    return false;
  }
}

/** Whether `dir` holds what the addon needs: the two libraries and the C API headers. */
function isTensorflowDir(dir: string): boolean {
  return TF_LIBS.every((f) => isFile(join(dir, f))) &&
    isFile(join(dir, "include/tensorflow/c/c_api.h")) &&
    isFile(join(dir, "include/tensorflow/c/eager/c_api.h"));
}

async function which(cmd: string): Promise<string | null> {
  const r = await run("sh", ["-c", `command -v ${cmd}`], { timeoutS: 10 });
  return r.ok ? r.output.trim() : null;
}

/**
 * Extracts only what the addon needs (≈ 850 MB of the wheel's libraries and headers) into
 * `.tools/libtensorflow/`, through a temporary folder renamed into place when complete.
 */
async function extractWheel(wheel: string): Promise<string | null> {
  const t0 = performance.now();
  say(`extracting libtensorflow from ${wheel} into .tools/libtensorflow/ ...`);
  const python = await which("python3");
  if (python === null) {
    return unusable("cannot extract the wheel: python3 not found");
  }
  await Deno.mkdir(TOOLS, { recursive: true });
  const tmp = `${LIBTF}.tmp-${Deno.pid}`;
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  const script = `
import os, shutil, sys, zipfile
wheel, out, libs, dirs = sys.argv[1], sys.argv[2], sys.argv[3].split(","), tuple(sys.argv[4].split(","))
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("tensorflow/") and not n.endswith("/")
             and (n[11:] in libs or n[11:].startswith(dirs))]
    missing = [l for l in libs if "tensorflow/" + l not in names]
    if missing or not any(n.endswith("tensorflow/c/c_api.h") for n in names):
        sys.exit("Error: the wheel holds no " + ", ".join(missing or ["C API headers"]) +
                 " (is it a TensorFlow 2.x wheel for Linux?)")
    for n in names:
        dest = os.path.join(out, n[11:])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(n) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
`;
  const r = await run(
    python,
    ["-c", script, wheel, tmp, TF_LIBS.join(","), TF_HEADER_DIRS.join(",")],
    { timeoutS: 600 },
  );
  if (!r.ok) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    return unusable(`extraction failed: ${reason(r)}`);
  }
  const { size } = await Deno.stat(wheel);
  await writeFileAtomic(
    join(tmp, "SOURCE.json"),
    JSON.stringify({ wheel: wheel.split("/").at(-1), size }, null, 2) + "\n",
  );
  await Deno.remove(LIBTF, { recursive: true }).catch(() => {});
  await Deno.rename(tmp, LIBTF);
  say(`  extracted in ${seconds(t0)}`);
  return LIBTF;
}

/** A TensorFlow folder from the wheel the user named (reusing an earlier extraction of it). */
async function fromWheelArg(wheel: string): Promise<string | null> {
  if (!isFile(wheel)) {
    return unusable(`--tf-wheel ${wheel}: no such file`);
  }
  try {
    const source = JSON.parse(await Deno.readTextFile(join(LIBTF, "SOURCE.json")));
    const { size } = await Deno.stat(wheel);
    if (
      source.wheel === wheel.split("/").at(-1) && source.size === size && isTensorflowDir(LIBTF)
    ) {
      say(`  ${wheel} was extracted before: using .tools/libtensorflow/`);
      return LIBTF;
    }
  } catch { /* not extracted yet */ }
  return await extractWheel(wheel);
}

/** The folder of an installed Python `tensorflow` package (found without importing it). */
async function fromPythonPackage(): Promise<string | null> {
  const python = await which("python3");
  if (python === null) return unusable("python3 not found");
  const r = await run(python, [
    "-c",
    "import importlib.util as u; s = u.find_spec('tensorflow'); " +
    "print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')",
  ], { timeoutS: 60 });
  const dir = r.ok ? r.output.trim().split("\n").at(-1)! : "";
  if (dir === "") {
    return unusable("no Python tensorflow package installed");
  }
  if (!isTensorflowDir(dir)) {
    return unusable(
      `the Python tensorflow package at ${dir} lacks ${TF_LIBS.join(" or ")} or C headers`,
    );
  }
  say(`  using the Python tensorflow package at ${dir}`);
  return dir;
}

/**
 * Local package sources from `pip config list` output, as pip arguments, in the order pip would
 * consult them: index URLs (`index-url`, then `extra-index-url`) that are `file:` URLs or local
 * paths, then local `find-links` folders. Remote sources are left out.
 *
 * @example
 * ```ts
 * localPipSources("global.extra-index-url='file:///opt/pypi/simple https://pypi.org/simple'");
 * // [["--index-url", "file:///opt/pypi/simple"]]
 * ```
 */
export function localPipSources(configList: string): string[][] {
  const values: Record<string, string[]> = {
    "index-url": [],
    "extra-index-url": [],
    "find-links": [],
  };
  for (const line of configList.split("\n")) {
    const m = line.match(/^[^=]*\.(index-url|extra-index-url|find-links)='(.*)'$/);
    if (m) values[m[1]].push(...m[2].split(/\s+/).filter((v) => v !== ""));
  }
  const isLocal = (v: string) => v.startsWith("file:") || (v.startsWith("/") && existsSync(v));
  const sources: string[][] = [];
  for (const v of [...values["index-url"], ...values["extra-index-url"]]) {
    if (isLocal(v)) sources.push(["--index-url", v.startsWith("/") ? `file://${v}` : v]);
  }
  for (const v of values["find-links"]) {
    if (isLocal(v)) sources.push(["--no-index", "--find-links", v]);
  }
  return sources;
}

/** `tensorflow-cpu` downloaded with pip from a local index (never the public one, which stalls). */
async function fromPipDownload(): Promise<string | null> {
  const python = await which("python3");
  if (python === null) {
    return unusable("pip: python3 not found");
  }
  const config = await run(python, ["-m", "pip", "config", "list"], { timeoutS: 60 });
  const sources = config.ok ? localPipSources(config.output) : [];
  if (sources.length === 0) {
    return unusable("pip: no local index or find-links folder in `pip config list`");
  }
  const dir = join(TOOLS, `wheels.tmp-${Deno.pid}`);
  await Deno.mkdir(dir, { recursive: true });
  try {
    // The first local index (pip stalls retrying a public index it cannot reach); the others
    // only if it lacks the wheel.
    for (const source of sources) {
      const t0 = performance.now();
      say(`pip download tensorflow-cpu ${source.join(" ")} ...`);
      const r = await run(python, [
        "-m",
        "pip",
        "download",
        "--isolated", // only the source named here: a configured public index would stall
        "--no-deps",
        "--only-binary=:all:",
        "--retries",
        "1",
        "--timeout",
        "30",
        ...source,
        "-d",
        dir,
        "tensorflow-cpu",
      ], { timeoutS: PIP_TIMEOUT_S });
      const wheel = [...Deno.readDirSync(dir)].find((e) => e.name.endsWith(".whl"));
      if (r.ok && wheel) {
        say(`  got ${wheel.name} in ${seconds(t0)}`);
        return await extractWheel(join(dir, wheel.name));
      }
      unusable(`pip download failed: ${reason(r)}`);
    }
    return null;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Links tfjs-node's `deps/` to a TensorFlow folder, where its install script expects libtensorflow. */
async function linkDeps(pkg: string, tfDir: string): Promise<void> {
  const deps = join(pkg, "deps");
  await Deno.remove(deps, { recursive: true }).catch(() => {});
  await Deno.mkdir(join(deps, "lib"), { recursive: true });
  const link = (target: string, path: string) =>
    Deno.symlink(relative(dirname(path), target), path);
  const cc = join(tfDir, "libtensorflow_cc.so.2");
  const framework = join(tfDir, "libtensorflow_framework.so.2");
  // The install script looks for libtensorflow.so.2.9.1; the addon links -ltensorflow and loads
  // the libraries by their sonames.
  for (const name of ["libtensorflow.so", "libtensorflow.so.2.9.1", "libtensorflow_cc.so.2"]) {
    await link(cc, join(deps, "lib", name));
  }
  for (const name of ["libtensorflow_framework.so", "libtensorflow_framework.so.2"]) {
    await link(framework, join(deps, "lib", name));
  }
  await link(join(tfDir, "include"), join(deps, "include"));
}

/** The environment for tfjs-node's install script: node-pre-gyp on PATH, Node's own headers. */
async function installEnv(pkg: string): Promise<Record<string, string>> {
  const path = [join(ROOT, "node_modules/.bin"), join(pkg, "node_modules/.bin")];
  const env: Record<string, string> = {
    PATH: [...path, Deno.env.get("PATH") ?? ""].join(":"),
  };
  // node-gyp downloads Node's headers unless told where they are (no download offline).
  const node = await which("node");
  if (node !== null) {
    const prefix = dirname(dirname(await Deno.realPath(node)));
    if (isFile(join(prefix, "include/node/node_api.h"))) env.npm_config_nodedir = prefix;
  }
  return env;
}

async function runInstallScript(pkg: string, what: string, timeoutS: number): Promise<RunResult> {
  const t0 = performance.now();
  say(`${what} ...`);
  const r = await run("node", ["scripts/install.js"], {
    cwd: pkg,
    env: await installEnv(pkg),
    timeoutS,
  });
  say(r.ok ? `  done in ${seconds(t0)}` : `  failed after ${seconds(t0)}: ${reason(r)}`);
  return r;
}

async function missingBuildTools(): Promise<string[]> {
  const missing: string[] = [];
  if (await which("node") === null) missing.push("node (Node.js ≥ 18)");
  if (await which("python3") === null) missing.push("python3");
  if (await which("make") === null) missing.push("make");
  if (await which("c++") === null && await which("g++") === null) missing.push("a C++ compiler");
  return missing;
}

/** Tries every way to a working tfjs-node; returns what failed, or [] on success. */
async function makeTensorflowWork(wheelArg: string | undefined): Promise<string[]> {
  const failures: string[] = [];

  let t0 = performance.now();
  say("deno install ...");
  const install = await run(Deno.execPath(), ["install"], { timeoutS: 600 });
  if (!install.ok) return [`deno install failed: ${reason(install)}`];
  say(`  done in ${seconds(t0)}`);

  const missing = await missingBuildTools();
  if (missing.length > 0) {
    return [`cannot build tfjs-node's addon without ${missing.join(", ")}: install them`];
  }
  const pkg = await Deno.realPath(join(ROOT, "node_modules/@tensorflow/tfjs-node"));
  // Deno hard-links package files from its global cache; the install script rewrites
  // package.json in place, which would edit the cache (and every project sharing it). Give this
  // project its own copy first.
  const pkgJson = join(pkg, "package.json");
  await writeFileAtomic(pkgJson, await Deno.readFile(pkgJson));

  if (isFile(join(pkg, "deps/lib/libtensorflow.so.2.9.1"))) {
    // A libtensorflow is in place (downloaded or linked before) but the addon is missing or
    // stale: the install script only rebuilds the addon then.
    const rebuild = await runInstallScript(
      pkg,
      "rebuilding tfjs-node's addon against the libtensorflow already in its deps/",
      BUILD_TIMEOUT_S,
    );
    if (rebuild.ok && (await tensorflowWorks()).ok) return [];
    failures.push(`rebuild against the libtensorflow in deps/: ${reason(rebuild)}`);
  } else {
    const normal = await runInstallScript(
      pkg,
      "tfjs-node's install script (downloads libtensorflow from storage.googleapis.com)",
      NORMAL_INSTALL_TIMEOUT_S,
    );
    if (normal.ok && (await tensorflowWorks()).ok) return [];
    failures.push(`download of libtensorflow: ${reason(normal)}`);
  }

  say("looking for a local TensorFlow build ...");
  t0 = performance.now();
  const finders: [string, () => Promise<string | null>][] = [];
  if (wheelArg !== undefined) finders.push([`wheel ${wheelArg}`, () => fromWheelArg(wheelArg)]);
  finders.push(
    [".tools/libtensorflow/", () => {
      if (!isTensorflowDir(LIBTF)) return Promise.resolve(unusable("no earlier extraction there"));
      say("  using .tools/libtensorflow/");
      return Promise.resolve(LIBTF);
    }],
    ["Python tensorflow package", fromPythonPackage],
    ["pip download from a local index", fromPipDownload],
  );
  for (const [what, find] of finders) {
    const tfDir = await find();
    if (tfDir === null) {
      failures.push(`${what}: ${lastWhy}`);
      continue;
    }
    await linkDeps(pkg, tfDir);
    const build = await runInstallScript(
      pkg,
      `building tfjs-node's addon against ${relative(ROOT, tfDir) || tfDir} (node-gyp, ≈ 30 s)`,
      BUILD_TIMEOUT_S,
    );
    if (!build.ok) {
      failures.push(`build against ${what}: ${reason(build)}`);
      continue;
    }
    const check = await tensorflowWorks();
    if (check.ok) return [];
    failures.push(`addon built against ${what} does not load: ${reason(check)}`);
  }
  say(`  no local TensorFlow build worked (${seconds(t0)})`);
  return failures;
}

async function main(): Promise<number> {
  const flags = parseCommandArgs("setup", USAGE, Deno.args, {
    string: ["tf-wheel"],
    boolean: ["require-tensorflow"],
  }, noPositionals);
  const wheelGiven = (flags["tf-wheel"] as string | undefined) ?? Deno.env.get("DEER_TF_WHEEL");
  // `deno task` runs in the project folder; a relative path means the caller's folder.
  const wheel = wheelGiven
    ? resolve(Deno.env.get("INIT_CWD") ?? Deno.cwd(), wheelGiven)
    : undefined;

  const check = await tensorflowWorks();
  if (check.ok) {
    await buildNativeOps();
    say(`tfjs-node (libtensorflow) works — nothing to do (${seconds(started)})`);
    return 0;
  }
  say(`tfjs-node does not load yet: ${reason(check)}`);
  let failures: string[];
  try {
    failures = await makeTensorflowWork(wheel);
  } catch (err) {
    failures = [`unexpected error: ${(err as Error).stack ?? err}`];
  }
  await Deno.mkdir(TOOLS, { recursive: true });
  await writeFileAtomic(LOG, logLines.join("\n") + "\n");
  if (failures.length === 0) {
    await buildNativeOps();
    await writeFileAtomic(LOG, logLines.join("\n") + "\n");
    say(`tfjs-node (libtensorflow) works — set up in ${seconds(started)}`);
    return 0;
  }
  console.log([
    "",
    "setup: could not make tfjs-node (libtensorflow) work. Tried:",
    ...failures.map((f) => `  - ${f}`),
    "How to fix, any one of:",
    "  - deno task setup --tf-wheel /path/to/tensorflow_cpu-*.whl   (any TensorFlow 2.x CPU wheel",
    "    for Linux x86-64; e.g. `pip download --no-deps tensorflow-cpu` on a machine with internet)",
    "  - pip install tensorflow-cpu, then rerun deno task setup",
    `Full output: ${relative(Deno.cwd(), LOG) || LOG}`,
  ].join("\n"));
  if (flags["require-tensorflow"]) {
    console.log("setup: --require-tensorflow given: failing.");
    return 1;
  }
  console.log("setup: the toolkit will run on the wasm backend instead (slower, same results).");
  return 0;
}

if (import.meta.main) Deno.exit(await main());
