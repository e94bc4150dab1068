/**
 * `deno task methods`: prints the table of federated methods from the registry
 * (lib/fl/methods/mod.ts) — the README's method table is this output.
 * @module
 */
import { noPositionals, parseCommandArgs } from "../lib/cli.ts";
import { methodTable } from "../lib/fl/methods/mod.ts";

const USAGE = `Usage: deno task methods
  Prints the table of federated methods (markdown) from the registry, lib/fl/methods/mod.ts; the
  README's method table is this output.`;

if (import.meta.main) {
  parseCommandArgs("methods", USAGE, Deno.args, {}, noPositionals);
  console.log(methodTable());
}
