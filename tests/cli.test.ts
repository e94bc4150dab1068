// The command line: lib/cli.ts's messages, and every `deno task` answering --help and a wrong flag
// the same way (usage on stdout and exit 0; one line naming the flag on stderr and exit 2).
import assert from "node:assert/strict";
import { parseArgs, UsageError } from "../lib/cli.ts";

const ROOT = new URL("..", import.meta.url).pathname;

function usageMessage(args: string[]): string {
  try {
    parseArgs(args, {
      string: ["epsilon", "node_num", "T"],
      boolean: ["iid"],
      alias: { node_num: ["node-num"] },
    });
  } catch (err) {
    assert.ok(err instanceof UsageError, `not a UsageError: ${err}`);
    return err.message;
  }
  assert.fail(`${args.join(" ")} was accepted`);
}

Deno.test("cli: parse errors name the flag and the fix", () => {
  assert.equal(
    usageMessage(["--epsilom", "1"]),
    "unknown flag --epsilom (did you mean --epsilon?)",
  );
  assert.equal(
    usageMessage(["--node-nun", "3"]),
    "unknown flag --node-nun (did you mean --node-num?)",
  );
  assert.equal(usageMessage(["--zzzzzzzz"]), "unknown flag --zzzzzzzz");
  assert.equal(usageMessage(["--T"]), "--T needs a value (--T VALUE)");
  assert.match(usageMessage(["--T", "--iid"]), /^--T is followed by a flag, not its value; /);
  assert.equal(
    usageMessage(["--iid=1"]),
    "--iid takes no value: it is on or off (--iid, --no-iid)",
  );
  assert.equal(
    usageMessage(["--node_num", "3", "--node-num", "4"]),
    "--node_num was given twice (as --node_num and --node-num)",
  );
});

/**
 * Every task of deno.json that runs one program (not test, check, or the two-step frontier), and
 * the benchmark and tool scripts run by path.
 */
async function taskCommands(): Promise<[string, string[]][]> {
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
  const out: [string, string[]][] = [];
  for (const [name, task] of Object.entries(tasks)) {
    if (["test", "check", "frontier"].includes(name)) continue;
    const command = typeof task === "string" ? task : (task as { command: string }).command;
    const words = command.split(/\s+/);
    assert.equal(words[0], "deno", `task ${name}: ${command}`);
    out.push([name, words.slice(1)]);
  }
  // Scripts run directly, named by their path.
  for (
    const script of [
      "bench/figures.ts",
      "bench/webgpu_probe.ts",
      "bench/profile.ts",
      "tools/compare_runs.ts",
      "tools/notebook_pngs.ts",
      "tools/fmt_notebooks.ts",
    ]
  ) {
    out.push([script, ["run", "-A", script]]);
  }
  return out;
}

/**
 * What libtensorflow itself logs as it loads, before the command can say anything: on CPUs with
 * AVX512-VNNI (or AMX) it turns oneDNN on and says so through absl, whatever TF_CPP_MIN_LOG_LEVEL
 * is ("WARNING: All log messages before absl::InitializeLog() …", then a line in absl's format,
 * "I0000 00:00:… port.cc:153] oneDNN custom operations are on …").
 */
const TENSORFLOW_LOAD_LOG =
  /^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] )/;

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: r.code, out: text(r.stdout), err: text(r.stderr) };
}

Deno.test("cli: every task prints its usage for --help and refuses an unknown flag", async () => {
  const tasks = await taskCommands();
  assert.ok(tasks.length >= 20, `only ${tasks.length} commands found`);
  for (const [name, args] of tasks) {
    const help = await run([...args, "--help"]);
    assert.equal(help.code, 0, `deno task ${name} --help exited ${help.code}: ${help.err}`);
    const how = name.endsWith(".ts") ? `deno run -A ${name}` : `deno task ${name}\\b`;
    assert.match(help.out, new RegExp(how), `${name} --help: ${help.out}`);
    const bad = await run([...args, "--bogus-flag"]);
    assert.equal(bad.code, 2, `deno task ${name} --bogus-flag exited ${bad.code}: ${bad.err}`);
    const lines = bad.err.split("\n").filter((l) =>
      l && !l.startsWith("deer: tfjs backend") && !TENSORFLOW_LOAD_LOG.test(l)
    );
    assert.match(
      lines[0],
      new RegExp(`^${name}: unknown (flag|command) --bogus-flag`),
      `deno task ${name} --bogus-flag: ${bad.err}`,
    );
    assert.doesNotMatch(bad.err, /^\s+at /m, `deno task ${name} --bogus-flag printed a stack`);
  }
});

Deno.test("cli: tools/fmt_notebooks.ts finds an unformatted notebook and --write formats it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-fmt-nb-" });
  try {
    const path = `${dir}/cells.ipynb`;
    const notebook = {
      cells: [
        { cell_type: "markdown", metadata: {}, source: ["# A title"] },
        {
          cell_type: "code",
          execution_count: null,
          metadata: {},
          outputs: [],
          source: ["const   x  =  1 ;\n", "console.log( x )"],
        },
      ],
      metadata: {
        kernelspec: { display_name: "Deno", language: "typescript", name: "deno" },
        language_info: { file_extension: ".ts", name: "typescript" },
      },
      nbformat: 4,
      nbformat_minor: 5,
    };
    await Deno.writeTextFile(path, JSON.stringify(notebook, null, 1) + "\n");
    const before = await Deno.readTextFile(path);
    const check = await run(["run", "-A", "tools/fmt_notebooks.ts", path]);
    assert.equal(check.code, 1, check.err);
    assert.match(check.err, /notebooks not formatted: .*cells\.ipynb/);
    assert.match(check.err, /tools\/fmt_notebooks\.ts --write formats them/);
    assert.equal(await Deno.readTextFile(path), before, "the check changed the file");

    const write = await run(["run", "-A", "tools/fmt_notebooks.ts", "--write", path]);
    assert.equal(write.code, 0, write.err);
    assert.match(write.out, /1 checked, 1 formatted in place/);
    const cells = JSON.parse(await Deno.readTextFile(path)).cells;
    assert.deepEqual(cells[1].source, ["const x = 1;\n", "console.log(x);"]);
    assert.deepEqual(cells[0].source, ["# A title"]);

    const again = await run(["run", "-A", "tools/fmt_notebooks.ts", path]);
    assert.equal(again.code, 0, again.err);
    assert.match(again.out, /1 checked, all formatted/);
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name),
      ["cells.ipynb"],
      "a temporary file was left beside the notebook",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
