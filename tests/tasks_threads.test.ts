import assert from "node:assert/strict";

const TRAIN = new URL("../tasks/train.ts", import.meta.url).pathname;

/** The backend line `deno run -A tasks/train.ts ARGS --help` prints, with `intra` as the user's setting. */
async function backendLine(args: string[], intra?: string): Promise<string> {
  const env = Deno.env.toObject();
  delete env.TF_NUM_INTRAOP_THREADS;
  delete env.DEER_QUIET;
  if (intra !== undefined) env.TF_NUM_INTRAOP_THREADS = intra;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN, ...args, "--help"],
    env,
    clearEnv: true,
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0);
  const line = new TextDecoder().decode(out.stderr).split("\n").find((l) =>
    l.startsWith("deer: tfjs backend")
  );
  assert.ok(line, "no backend line");
  return line;
}

Deno.test("threads: train on the embedded model uses one intra-op thread; a named model or the user's setting is kept", async () => {
  const backend = (await backendLine([])).split(" ")[3];
  if (backend !== "tensorflow") return; // the thread count is libtensorflow's
  assert.equal(await backendLine([]), "deer: tfjs backend tensorflow (TF_NUM_INTRAOP_THREADS=1)");
  assert.equal(
    await backendLine(["--model", "models/default/vit_tiny_fashion.safetensors"]),
    "deer: tfjs backend tensorflow",
  );
  assert.equal(
    await backendLine(["--local_model=CLIP"]),
    "deer: tfjs backend tensorflow",
  );
  assert.equal(
    await backendLine([], "2"),
    "deer: tfjs backend tensorflow (TF_NUM_INTRAOP_THREADS=2)",
  );
});
