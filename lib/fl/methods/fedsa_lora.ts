/**
 * FedSA-LoRA: clients train A and B but release A only; each client keeps its own B between
 * rounds. The global model is evaluated with the participants' average B (measurement only; it
 * is never released).
 * @module
 */
import { BOTH, fedAvg, meanOf, phase, withLocal } from "./defaults.ts";
import type { Method } from "./types.ts";
import { cloneFactors } from "../factors.ts";

/** A shared, B kept on the clients. */
export const fedSaLora: Method = {
  ...fedAvg,
  name: "FedSA-LoRA",
  label: "FedSA-LoRA",
  aggregates: "A only; every client keeps its own B",
  phases: [phase("AB", BOTH, ["A"], false)],
  startFactors: (ctx) => withLocal(ctx.global, ctx.client.local, ["B"]),
  keepOnClient: (trained) => cloneFactors(trained),
  evaluationFactors: ({ global, clients, participants }) => {
    const locals = participants.map((k) => clients[k].local).filter((l) => l !== undefined);
    return locals.length === 0 ? global : { A: global.A, B: meanOf(locals, "B") };
  },
};
