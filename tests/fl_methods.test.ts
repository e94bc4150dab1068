import assert from "node:assert/strict";
import { releasesPerRound, resolveMethod } from "../lib/fl/methods.ts";

Deno.test("methods: phases say what each method trains, releases and regulates (SPEC §3)", () => {
  const lora = resolveMethod({ method: "FedLoRA" });
  assert.equal(lora.name, "LoRA");
  assert.deepEqual(lora.phases.map((p) => [p.train, p.release, p.regulate]), [
    [["A", "B"], ["A", "B"], false],
  ]);
  const ffa = resolveMethod({ method: "ffa-lora" });
  assert.deepEqual(ffa.phases.map((p) => [p.train, p.release]), [[["B"], ["B"]]]);
  assert.equal(resolveMethod({ method: "DP-DyLoRA" }).dynamicRank, true);

  const deer = resolveMethod({ method: "DEeR" });
  assert.equal(deer.label, "DEeR(m1=1,m2=1)");
  assert.deepEqual(deer.phases.map((p) => [p.name, p.train, p.regulate]), [
    ["B", ["B"], true],
    ["A", ["A"], true],
  ]);
  assert.equal(releasesPerRound(deer), 2);
  // The (0,0) corner of the ablation grid is LoRA.
  const d00 = resolveMethod({ method: "DEeR", module1: false, module2: false });
  assert.deepEqual(d00.phases, lora.phases);
  const d10 = resolveMethod({ method: "DEeR", module1: true, module2: false });
  assert.deepEqual(d10.phases.map((p) => p.regulate), [false, false]);

  assert.equal(resolveMethod({ method: "FedEx-LoRA" }).foldResidual, true);
  assert.deepEqual(resolveMethod({ method: "FedSA-LoRA" }).keepLocal, ["B"]);
  assert.throws(
    () => resolveMethod({ method: "FedProx" }),
    /unknown method "FedProx"; use one of LoRA/,
  );
});
