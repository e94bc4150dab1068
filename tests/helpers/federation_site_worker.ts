/**
 * A site process for the lease tests: connects as `site`, takes one task, prints
 * `leased <attempt>` and then "trains" until it is killed — without acking, without heartbeats.
 *
 *   deno run -A tests/helpers/federation_site_worker.ts URL SERVER_DIR SITE
 */
import { credentialsIn } from "../../lib/federation/server.ts";
import { connectFederation, openSite } from "../../lib/federation/transport.ts";

const [url, dir, site] = Deno.args;
const nc = await connectFederation(url, credentialsIn(dir, site));
const lease = await (await openSite(nc, site)).nextTask(20_000);
if (!lease) {
  console.log("no task");
  Deno.exit(3);
}
console.log(`leased ${lease.attempt} round ${lease.task.round} phase ${lease.task.phase}`);
setInterval(() => {}, 1000); // training, until SIGKILL
