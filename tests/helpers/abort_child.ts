/**
 * A child for tests/webgpu_helpers.test.ts: while the counter file ABORT_CHILD_COUNTER holds
 * less than ABORT_CHILD_TIMES, it counts up, prints what glibc prints on a damaged heap and
 * dies of SIGABRT, as the CI child did at exit; after that it prints "ok" and exits 0.
 * @module
 */
const counter = Deno.env.get("ABORT_CHILD_COUNTER");
if (!counter) throw new Error("set ABORT_CHILD_COUNTER");
const times = Number(Deno.env.get("ABORT_CHILD_TIMES") ?? "1");
let runs = 0;
try {
  runs = Number(await Deno.readTextFile(counter));
} catch {
  runs = 0;
}
await Deno.writeTextFile(counter, String(runs + 1));
if (runs < times) {
  console.log(`run ${runs + 1}: all done`);
  console.error("corrupted size vs. prev_size in fastbins");
  Deno.kill(Deno.pid, "SIGABRT");
  await new Promise(() => {}); // the signal ends the process
}
console.log("ok");
