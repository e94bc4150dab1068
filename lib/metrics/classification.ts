/**
 * Classification metrics of the protocol (docs/protocol.md#metrics): accuracy, macro recall,
 * precision and F1, and macro one-vs-rest ROC AUC — with scikit-learn's semantics, as the reference
 * computes them (DEeR `utils.py`: `accuracy_score`,
 * `recall_score/precision_score/f1_score(average="macro")` with the default `zero_division="warn"`,
 * which scores 0, and `roc_auc_score(np.eye(C)[labels], softmax scores)`). Fractions in [0, 1];
 * reports multiply by 100. Also {@link meanStd} (population std,
 * docs/protocol.md#evaluation-and-model-selection) and the model-selection score.
 *
 * Semantics, matched to scikit-learn 1.x:
 * * prediction = argmax of each row of `probs` (first maximum on ties, as numpy and torch);
 * * macro recall / precision / F1 average over the classes that occur in the labels OR in the
 *   predictions (sklearn's `unique_labels(y_true, y_pred)`), not over all C; a class with no
 *   predictions has precision 0, one with no true samples recall 0 (zero_division → 0); F1 per
 *   class is 2tp/(2tp + fp + fn), 0 when that is 0/0;
 * * AUC: per class c, the binary AUC of (label == c) against `probs[·][c]`, which for
 *   sklearn's trapezoidal ROC over distinct thresholds equals the Mann–Whitney statistic with
 *   tied scores counted ½; then the unweighted mean over classes.
 * * A class with no positive (or no negative) sample has no AUC. sklearn ≥ 1.6 warns and
 *   returns NaN for the macro mean (older versions raise). Here `absentClassAuc: "skip"`
 *   (default) averages over the classes whose AUC is defined and lists the skipped ones in
 *   {@link classificationReport}; `"nan"` reproduces sklearn's NaN. When no class is defined the
 *   AUC is NaN either way.
 *
 * @example
 * ```ts
 * import { classificationMetrics } from "./classification.ts";
 * classificationMetrics([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]);
 * // { accuracy: 2/3, recall: 0.75, precision: 0.75, f1: 2/3, auc: 1 }
 * ```
 * @module
 */

/** The five metrics of docs/protocol.md#metrics, as fractions. */
export interface ClassificationMetrics {
  accuracy: number;
  /** Macro recall over the classes present in labels or predictions. */
  recall: number;
  /** Macro precision, same classes. */
  precision: number;
  /** Macro F1 (mean of per-class F1), same classes. */
  f1: number;
  /** Macro one-vs-rest ROC AUC over classes with both positives and negatives. */
  auc: number;
}

/** Alias of {@link ClassificationMetrics}. */
export type Metrics = ClassificationMetrics;

/** How to treat a class whose one-vs-rest AUC is undefined (no positive or no negative). */
export type AbsentClassAuc = "skip" | "nan";

/** Per-class detail of {@link classificationReport}. */
export interface ClassScores {
  /** Number of true samples of the class. */
  support: number;
  /** Number of samples predicted as the class. */
  predicted: number;
  recall: number;
  precision: number;
  f1: number;
  /** One-vs-rest AUC, NaN when undefined. */
  auc: number;
}

/** Metrics plus the detail behind them. */
export interface ClassificationReport {
  metrics: ClassificationMetrics;
  /** One entry per class index 0…C−1. */
  perClass: ClassScores[];
  /** Classes averaged in recall / precision / F1 (present in labels or predictions). */
  averagedClasses: number[];
  /** Classes left out of the AUC mean because their AUC is undefined. */
  aucSkippedClasses: number[];
  /** `confusion[true][predicted]` counts. */
  confusion: number[][];
}

function validate(labels: readonly number[], probs: readonly (readonly number[])[]): number {
  if (labels.length === 0) throw new Error("classificationMetrics: labels is empty");
  if (probs.length !== labels.length) {
    throw new Error(
      `classificationMetrics: probs has ${probs.length} rows but labels has ${labels.length}; ` +
        `one row of class scores per label`,
    );
  }
  const c = probs[0].length;
  if (c < 2) {
    throw new Error(`classificationMetrics: probs rows have ${c} scores; need ≥ 2 classes`);
  }
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (!(Number.isInteger(y) && y >= 0 && y < c)) {
      throw new Error(
        `classificationMetrics: labels[${i}] = ${y} is not a class index in [0, ${c})`,
      );
    }
    const row = probs[i];
    if (row.length !== c) {
      throw new Error(`classificationMetrics: probs[${i}] has ${row.length} scores; expected ${c}`);
    }
    for (let j = 0; j < c; j++) {
      if (!Number.isFinite(row[j])) {
        throw new Error(
          `classificationMetrics: probs[${i}][${j}] = ${row[j]} is not a finite number`,
        );
      }
    }
  }
  return c;
}

function argmax(row: readonly number[]): number {
  let best = 0;
  for (let j = 1; j < row.length; j++) if (row[j] > row[best]) best = j;
  return best;
}

/**
 * Binary ROC AUC of `scores` for the positives `isPositive`, as scikit-learn's
 * `roc_auc_score` on a binary problem: the Mann–Whitney U statistic over (positive, negative)
 * pairs with ties counted ½ — the area under the trapezoidal ROC over distinct thresholds.
 * NaN when there is no positive or no negative.
 *
 * @example
 * ```ts
 * binaryRocAuc([true, false, true, false], [0.9, 0.5, 0.5, 0.1]); // 0.875
 * ```
 */
export function binaryRocAuc(isPositive: readonly boolean[], scores: readonly number[]): number {
  const n = scores.length;
  if (isPositive.length !== n) {
    throw new Error(
      `binaryRocAuc: isPositive has ${isPositive.length} entries but scores has ${n}`,
    );
  }
  const bad = scores.findIndex((s) => Number.isNaN(s));
  if (bad >= 0) {
    // NaN has no rank (and NaN === NaN is false: the tie grouping below would never advance).
    throw new Error(`binaryRocAuc: scores[${bad}] is NaN; the AUC ranks finite or infinite scores`);
  }
  let nPos = 0;
  for (const p of isPositive) if (p) nPos++;
  const nNeg = n - nPos;
  if (nPos === 0 || nNeg === 0) return NaN;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[a] - scores[b]);
  // Sum of the (1-based, tie-averaged) ranks of the positives.
  let rankSum = 0;
  for (let i = 0; i < n;) {
    let j = i;
    let posInGroup = 0;
    while (j < n && scores[order[j]] === scores[order[i]]) {
      if (isPositive[order[j]]) posInGroup++;
      j++;
    }
    rankSum += posInGroup * ((i + 1 + j) / 2); // ranks i+1 … j share their mean
    i = j;
  }
  return (rankSum - (nPos * (nPos + 1)) / 2) / (nPos * nNeg);
}

/**
 * Metrics with per-class detail, the confusion matrix and the classes skipped in the AUC mean
 * (see the module documentation for the semantics).
 *
 * @example
 * ```ts
 * const r = classificationReport([0, 0, 1], [[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0]]);
 * r.aucSkippedClasses; // [2]: class 2 never occurs, its AUC is undefined
 * ```
 */
export function classificationReport(
  labels: readonly number[],
  probs: readonly (readonly number[])[],
  options: { absentClassAuc?: AbsentClassAuc } = {},
): ClassificationReport {
  const absent = options.absentClassAuc ?? "skip";
  if (absent !== "skip" && absent !== "nan") {
    throw new Error(`classificationMetrics: absentClassAuc "${absent}" must be "skip" or "nan"`);
  }
  const c = validate(labels, probs);
  const n = labels.length;
  const confusion = Array.from({ length: c }, () => new Array<number>(c).fill(0));
  let correct = 0;
  for (let i = 0; i < n; i++) {
    const p = argmax(probs[i]);
    confusion[labels[i]][p]++;
    if (p === labels[i]) correct++;
  }
  const perClass: ClassScores[] = [];
  const averagedClasses: number[] = [];
  const aucSkippedClasses: number[] = [];
  let sumRecall = 0, sumPrecision = 0, sumF1 = 0, sumAuc = 0, aucCount = 0;
  for (let k = 0; k < c; k++) {
    const tp = confusion[k][k];
    let support = 0, predicted = 0;
    for (let j = 0; j < c; j++) {
      support += confusion[k][j];
      predicted += confusion[j][k];
    }
    const fn = support - tp, fp = predicted - tp;
    const recall = support > 0 ? tp / support : 0;
    const precision = predicted > 0 ? tp / predicted : 0;
    const f1 = 2 * tp + fp + fn > 0 ? (2 * tp) / (2 * tp + fp + fn) : 0;
    const auc = binaryRocAuc(labels.map((y) => y === k), probs.map((row) => row[k]));
    perClass.push({ support, predicted, recall, precision, f1, auc });
    if (support > 0 || predicted > 0) {
      averagedClasses.push(k);
      sumRecall += recall;
      sumPrecision += precision;
      sumF1 += f1;
    }
    if (Number.isNaN(auc)) {
      aucSkippedClasses.push(k);
    } else {
      sumAuc += auc;
      aucCount++;
    }
  }
  const m = averagedClasses.length;
  const auc = aucCount === 0 || (absent === "nan" && aucSkippedClasses.length > 0)
    ? NaN
    : sumAuc / aucCount;
  return {
    metrics: {
      accuracy: correct / n,
      recall: sumRecall / m,
      precision: sumPrecision / m,
      f1: sumF1 / m,
      auc,
    },
    perClass,
    averagedClasses,
    aucSkippedClasses,
    confusion,
  };
}

/**
 * Accuracy, macro recall / precision / F1 and macro one-vs-rest AUC of class scores `probs`
 * (rows: samples, columns: the C classes; e.g. softmax of the cosine scores) against integer
 * `labels` in [0, C) — the public API of docs/architecture.md#public-api. Semantics in the module
 * documentation.
 *
 * @example
 * ```ts
 * classificationMetrics([0, 1], [[0.9, 0.1], [0.4, 0.6]]);
 * // { accuracy: 1, recall: 1, precision: 1, f1: 1, auc: 1 }
 * ```
 */
export function classificationMetrics(
  labels: readonly number[],
  probs: readonly (readonly number[])[],
  options: { absentClassAuc?: AbsentClassAuc } = {},
): ClassificationMetrics {
  return classificationReport(labels, probs, options).metrics;
}

/** Options of {@link meanStd}. */
export interface MeanStdOptions {
  /**
   * What a NaN or ±Infinity among the values does: `"throw"` (default) is an error naming its
   * index; `"propagate"` gives `{ mean: NaN, std: NaN }` — for a summary in which a seed without
   * a value (say, no round ever improved validation) must show as missing, not be averaged away.
   */
  nonFinite?: "throw" | "propagate";
}

/**
 * Mean and POPULATION standard deviation (divide by n, numpy's default;
 * docs/protocol.md#evaluation-and-model-selection: results are reported as mean ± std over the
 * seeds). Non-finite values are refused unless `{ nonFinite: "propagate" }` asks for a NaN result.
 *
 * @example
 * ```ts
 * meanStd([1, 2, 3, 4]); // { mean: 2.5, std: √1.25 ≈ 1.118 }
 * meanStd([1, NaN], { nonFinite: "propagate" }); // { mean: NaN, std: NaN }
 * ```
 */
export function meanStd(
  values: readonly number[],
  options: MeanStdOptions = {},
): { mean: number; std: number } {
  if (values.length === 0) throw new Error("meanStd: values is empty");
  const bad = values.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) {
    if (options.nonFinite === "propagate") return { mean: NaN, std: NaN };
    throw new Error(
      `meanStd: values[${bad}] is ${values[bad]}; every value must be a finite number ` +
        `(pass { nonFinite: "propagate" } to get NaN for a set with a missing value)`,
    );
  }
  const n = values.length;
  let sum = 0;
  for (const v of values) sum += v;
  const mean = sum / n;
  let ss = 0;
  for (const v of values) ss += (v - mean) * (v - mean);
  return { mean, std: Math.sqrt(ss / n) };
}

/**
 * The model-selection score of docs/protocol.md#evaluation-and-model-selection: `accuracy + recall
 * + precision + F1 + AUC` on the validation split (the reference sums the ×100 values — the same
 * order). An undefined AUC (a validation split holding one class: no negatives to rank against) is
 * left out instead of making every score NaN, which would freeze the selection at the first round;
 * the split is the same every round, so the scores stay comparable.
 *
 * @example
 * ```ts
 * selectionScore({ accuracy: 0.9, recall: 0.8, precision: 0.85, f1: 0.82, auc: 0.97 }); // 4.34
 * selectionScore({ accuracy: 0.9, recall: 0.8, precision: 0.85, f1: 0.82, auc: NaN }); // 3.37
 * ```
 */
export function selectionScore(m: ClassificationMetrics): number {
  const auc = Number.isNaN(m.auc) ? 0 : m.auc;
  return m.accuracy + m.recall + m.precision + m.f1 + auc;
}

/**
 * How much a validation score must exceed the best so far to count as better: far above the
 * rounding of a sum of five fractions (≤ 5 · 2⁻⁵³ ≈ 6e-16) and far below the smallest genuine
 * difference of two scores (an AUC step 1/(positives · negatives) is ≥ 1e-12 on splits of fewer
 * than two million images).
 */
export const SELECTION_TOLERANCE = 1e-12;

/**
 * Whether `candidate` beats `best` in model selection ({@link selectionScore}): a score equal up
 * to rounding is a tie, and a tie keeps the earlier round. (Summing fractions in another order
 * can make equal scores differ in the last bit — 0.1 + 0.7 + 0.3 against 0.3 + 0.7 + 0.1 — and a
 * plain `>` would then move the selection to a later round on a tie.)
 *
 * @example
 * ```ts
 * const a = { accuracy: 0.1, recall: 0.7, precision: 0.3, f1: 0.5, auc: 0.8 };
 * const b = { accuracy: 0.3, recall: 0.7, precision: 0.1, f1: 0.5, auc: 0.8 };
 * selectionScore(b) > selectionScore(a); // true (2.4000000000000004 > 2.4)
 * improvesSelection(b, a); // false: a tie
 * improvesSelection(b, null); // true: the first round is always the best so far
 * ```
 */
export function improvesSelection(
  candidate: ClassificationMetrics,
  best: ClassificationMetrics | null,
): boolean {
  return best === null ||
    selectionScore(candidate) - selectionScore(best) > SELECTION_TOLERANCE;
}
