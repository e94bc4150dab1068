/**
 * `deno task methods`: prints the table of federated methods from the registry
 * (lib/fl/methods/mod.ts) — the README's method table is this output.
 * @module
 */
import { methodTable } from "../lib/fl/methods/mod.ts";

if (import.meta.main) console.log(methodTable());
