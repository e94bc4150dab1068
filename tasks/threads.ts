/**
 * Imported first (for its effect) by the tasks that can run the embedded default model: before
 * libtensorflow loads, it sets `TF_NUM_INTRAOP_THREADS=1` when this process is one of them and
 * the user has not set the variable —
 *
 * * `tasks/demo.ts` and `tasks/notebooks.ts` (whose Jupyter kernels inherit it): always;
 * * `tasks/train.ts`: when its arguments name no model (`--model`, `--local_model`).
 *
 * Why: the default model is tiny (width 64, 28 px, batch 10), and its kernels are so short that
 * handing work to libtensorflow's intra-op thread pool costs more than it saves. Measured on
 * 2 cores: a local training step 17 ms → 10 ms, one demo round 9.4 s → 5.6 s, with identical
 * results there (on a 2-core AMD EPYC the thread count changes the records from the 8th digit:
 * compare runs only between processes with the same count). Larger models (ViT-B/16) are
 * matrix-bound and keep TensorFlow's default of one thread per core; the tiny bench ViT (width
 * 128, batch 32) is within 5 % either way.
 * `lib/backend.ts` reports the setting in its backend line.
 *
 * @module
 */
const main = new URL(Deno.mainModule).pathname;
const task = main.match(/\/tasks\/(demo|notebooks|train)\.ts$/)?.[1];
const namesModel = Deno.args.some((a) => /^--(model|local[_-]model)(=|$)/.test(a));
if (
  task !== undefined && !(task === "train" && namesModel) &&
  Deno.env.get("TF_NUM_INTRAOP_THREADS") === undefined
) {
  Deno.env.set("TF_NUM_INTRAOP_THREADS", "1");
}
