/**
 * `deno task setup` (tasks/setup.ts): how it reads pip's configuration and how it treats its
 * flags. The build itself is exercised by every `deno task test`, which runs setup first.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { localPipSources } from "../tasks/setup.ts";

Deno.test("setup: local pip sources come first-index-first; remote ones are left out", () => {
  const configList = [
    ":env:.default-timeout='180'",
    ":env:.find-links='/'",
    "global.cert='/etc/ssl/certs/ca-certificates.crt'",
    "global.extra-index-url='file:///opt/pypi/simple https://pypi.org/simple file:///opt/more'",
    "global.find-links='/nonexistent-wheels-folder'",
    "global.index-url='https://mirror.example/simple'",
  ].join("\n");
  assert.deepEqual(localPipSources(configList), [
    ["--index-url", "file:///opt/pypi/simple"],
    ["--index-url", "file:///opt/more"],
    ["--no-index", "--find-links", "/"],
  ]);
  assert.deepEqual(localPipSources(""), []);
});

Deno.test("setup: flags are strict; --help succeeds without doing anything", async () => {
  const run = async (...args: string[]) => {
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", fileURLToPath(new URL("../tasks/setup.ts", import.meta.url)), ...args],
      stdin: "null",
    }).output();
    const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    return { code, text };
  };
  const help = await run("--help");
  assert.equal(help.code, 0);
  assert.match(help.text, /--require-tensorflow/);
  const unknown = await run("--no-such-flag");
  assert.equal(unknown.code, 2);
  assert.match(unknown.text, /no-such-flag/);
  const missing = await run("--tf-wheel");
  assert.equal(missing.code, 2);
  const stray = await run("extra");
  assert.equal(stray.code, 2);
  assert.match(stray.text, /unexpected argument extra/);
});
