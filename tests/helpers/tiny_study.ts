/**
 * The study the ablation, frontier and warning tests sweep: the toy MedMNIST set and the tiny
 * model at a scale of 4 clients, 1 round, batch 8, r = α = 4, 12/6/6 images per class.
 * @module
 */
import { loadStudyInputs, type StudyScale, studyScale } from "../../lib/ablations.ts";
import type { Inputs } from "../../lib/experiment.ts";
import { TINY_MODEL } from "./fl_fixture.ts";

/** A tiny scale for the toy set: 4 clients, 1 round. */
export const TINY_STUDY_SCALE: StudyScale = {
  ...studyScale(true),
  rounds: 1,
  numClients: 4,
  batchSize: 8,
  rank: 4,
  alpha: 4,
  perClass: { train: 12, val: 6, test: 6 },
};

/**
 * The study inputs on `npz` (a `writeToyMedMnist` file): the tiny model with orthonormal
 * prototypes, LoRA of the scale's rank and α, splits cut to the scale's per-class subsets.
 */
export function loadTinyStudy(npz: string, scale: StudyScale = TINY_STUDY_SCALE): Promise<Inputs> {
  return loadStudyInputs(scale, { dataset: npz, modelPath: TINY_MODEL, prototypes: "orthonormal" });
}
