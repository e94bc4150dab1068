import assert from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;

/** The backend a fresh process picks when started with `args` (DEER_BACKEND unset). */
async function backendWith(args: string[]): Promise<string> {
  const env: Record<string, string> = { ...Deno.env.toObject(), DEER_QUIET: "0" };
  delete env.DEER_BACKEND;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--ext=ts",
      'import { backendName } from "./lib/backend.ts"; console.log("BACKEND=" + backendName);',
      ...args,
    ],
    cwd: root,
    env,
    clearEnv: true,
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  return /BACKEND=(\w+)/.exec(text)?.[1] ?? `failed: ${new TextDecoder().decode(out.stderr)}`;
}

Deno.test("backend: program flags such as --C 0.5 do not derail loading tfjs-node", async () => {
  const plain = await backendWith([]);
  // node-pre-gyp reads process.argv; "-C <dir>" used to send its lookup to "0.5/…".
  const withFlags = await backendWith(["--C", "0.5", "--epsilon", "6"]);
  assert.equal(withFlags, plain);
});
