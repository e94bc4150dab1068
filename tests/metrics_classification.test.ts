// Classification metrics against hand-computed cases and scikit-learn (docs/protocol.md#metrics).
import assert from "node:assert/strict";
import {
  binaryRocAuc,
  type ClassificationMetrics,
  classificationMetrics,
  classificationReport,
  improvesSelection,
  meanStd,
  selectionScore,
} from "../lib/metrics/classification.ts";

function assertClose(actual: number, expected: number, what: string, tol = 1e-12): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} vs ${expected}`);
}

Deno.test("hand-computed case: argmax, macro averages, AUC", () => {
  // preds: [0, 1, 0]; class 0: tp 1, fp 1, fn 0; class 1: tp 1, fp 0, fn 1.
  const m = classificationMetrics([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]);
  assertClose(m.accuracy, 2 / 3, "accuracy");
  assertClose(m.recall, (1 + 0.5) / 2, "recall");
  assertClose(m.precision, (0.5 + 1) / 2, "precision");
  assertClose(m.f1, (2 / 3 + 2 / 3) / 2, "f1");
  assertClose(m.auc, 1, "auc"); // every positive outranks every negative in both columns
});

Deno.test("binary AUC counts ties one half (Mann–Whitney)", () => {
  // Positives 0.9, 0.5; negatives 0.5, 0.1: pairs 1 + 1 + ½ + 1 = 3.5 of 4.
  assert.equal(binaryRocAuc([true, false, true, false], [0.9, 0.5, 0.5, 0.1]), 0.875);
  assert.equal(binaryRocAuc([true, false, true, false], [0.5, 0.5, 0.5, 0.5]), 0.5);
  assert.equal(binaryRocAuc([false, false, true], [0.3, 0.2, 0.1]), 0);
  assert.ok(Number.isNaN(binaryRocAuc([true, true], [0.3, 0.2])));
  // A NaN score has no rank: refused (it used to loop forever).
  assert.throws(
    () => binaryRocAuc([true, false, true, false], [NaN, 1, 2, 0]),
    /binaryRocAuc: scores\[0\] is NaN/,
  );
});

Deno.test("macro averages use the classes present in labels or predictions (sklearn)", () => {
  // Class 2 is neither true nor predicted: left out. Class 1 predicted once, never true:
  // recall 0 (no true samples), precision 0.
  const r = classificationReport([0, 0, 0], [[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.3, 0.1]]);
  assert.deepEqual(r.averagedClasses, [0, 1]);
  assertClose(r.metrics.recall, (2 / 3 + 0) / 2, "recall");
  assertClose(r.metrics.precision, (1 + 0) / 2, "precision");
  assertClose(r.metrics.f1, (0.8 + 0) / 2, "f1");
  assert.deepEqual(r.confusion, [[2, 1, 0], [0, 0, 0], [0, 0, 0]]);
  // Every label is 0: class 0 has no negatives, classes 1 and 2 no positives.
  assert.deepEqual(r.aucSkippedClasses, [0, 1, 2]);
  assert.ok(Number.isNaN(r.metrics.auc));
});

Deno.test("a class absent from the labels: AUC skips it (default) or is NaN like sklearn", () => {
  const labels = [0, 1, 0, 1],
    probs = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]];
  const r = classificationReport(labels, probs);
  assert.deepEqual(r.aucSkippedClasses, [2]);
  assertClose(
    r.metrics.auc,
    (r.perClass[0].auc + r.perClass[1].auc) / 2,
    "auc over defined classes",
  );
  assert.ok(Number.isNaN(classificationMetrics(labels, probs, { absentClassAuc: "nan" }).auc));
});

// Cases and expected values from tools/crosscheck/metrics_sklearn.py (scikit-learn 1.9.1:
// accuracy_score, recall/precision/f1_score(average="macro"), roc_auc_score(np.eye(C)[y], p)).
// Scores are rounded to 1–2 decimals so that ties occur, within rows (argmax) and within columns
// (AUC). "auc": null is sklearn's NaN for a class absent from the labels; "auc_defined_classes"
// is sklearn's per-class AUC averaged over the classes that occur (the toolkit's default).
const SKLEARN_CASES: Record<string, {
  labels: number[];
  probs: number[][];
  expected: {
    accuracy: number;
    recall: number;
    precision: number;
    f1: number;
    auc: number | null;
    auc_defined_classes: number;
  };
}> = JSON.parse(`
{
  "ties_4class": {
    "labels": [
      1,3,0,0,3,1,3,1,3,0,0,1,0,3,1,0,2,1,2,0,2,1,2,0,3,0,2,0,1,2,
      2,0,3,3,1,1,3,2,0,2
    ],
    "probs": [
      [0.5,0.3,0.1,0.1],[0.1,0.1,0.0,0.8],[0.7,0.1,0.2,0.0],[0.6,0.1,0.1,0.2],[0.1,0.2,0.1,0.5],[0.1,0.7,0.1,0.2],
      [0.5,0.2,0.1,0.2],[0.0,0.9,0.0,0.0],[0.1,0.4,0.1,0.4],[0.8,0.1,0.0,0.1],[0.4,0.2,0.2,0.2],[0.1,0.7,0.0,0.2],
      [0.7,0.1,0.2,0.1],[0.2,0.3,0.5,0.1],[0.0,0.4,0.2,0.4],[0.7,0.0,0.1,0.2],[0.2,0.3,0.5,0.1],[0.1,0.7,0.1,0.1],
      [0.1,0.1,0.5,0.3],[0.9,0.1,0.0,0.0],[0.2,0.2,0.5,0.2],[0.0,0.7,0.0,0.3],[0.2,0.3,0.3,0.2],[0.8,0.0,0.1,0.1],
      [0.0,0.2,0.4,0.3],[0.8,0.0,0.1,0.0],[0.3,0.2,0.5,0.0],[0.6,0.3,0.0,0.1],[0.4,0.4,0.0,0.2],[0.2,0.1,0.3,0.4],
      [0.2,0.1,0.7,0.0],[0.8,0.1,0.1,0.1],[0.2,0.2,0.1,0.5],[0.1,0.1,0.1,0.7],[0.1,0.0,0.2,0.7],[0.2,0.6,0.1,0.1],
      [0.3,0.1,0.2,0.5],[0.1,0.1,0.7,0.1],[0.5,0.1,0.4,0.0],[0.0,0.0,0.9,0.0]
    ],
    "expected": {"accuracy": 0.775, "recall": 0.7583333333333333, "precision": 0.7674603174603175, "f1": 0.7571271929824561, "auc": 0.9308546146953405, "auc_defined_classes": 0.9308546146953405}
  },
  "ties_8class": {
    "labels": [
      0,7,5,0,6,3,2,3,0,7,2,1,7,3,5,7,7,7,2,4,4,4,5,7,3,6,4,2,3,3,
      7,6,2,1,2,4,7,3,5,0,4,6,6,7,3,1,7,2,0,4,6,4,2,4,2,7,7,1,7,7
    ],
    "probs": [
      [0.06,0.05,0.04,0.5,0.0,0.06,0.08,0.21],[0.05,0.01,0.03,0.05,0.02,0.07,0.0,0.76],[0.26,0.04,0.11,0.06,0.03,0.29,0.16,0.04],
      [0.24,0.07,0.12,0.28,0.04,0.13,0.1,0.01],[0.09,0.12,0.13,0.18,0.02,0.14,0.3,0.03],[0.08,0.1,0.02,0.48,0.03,0.05,0.02,0.23],
      [0.0,0.05,0.51,0.01,0.05,0.05,0.13,0.2],[0.03,0.01,0.16,0.6,0.02,0.06,0.06,0.07],[0.3,0.22,0.01,0.16,0.08,0.04,0.18,0.01],
      [0.09,0.04,0.01,0.05,0.02,0.39,0.19,0.21],[0.07,0.08,0.45,0.08,0.06,0.08,0.11,0.08],[0.03,0.09,0.66,0.01,0.02,0.08,0.04,0.08],
      [0.15,0.23,0.14,0.02,0.2,0.01,0.06,0.18],[0.02,0.09,0.04,0.6,0.01,0.11,0.08,0.05],[0.01,0.02,0.0,0.0,0.57,0.25,0.13,0.01],
      [0.12,0.12,0.11,0.06,0.05,0.01,0.11,0.42],[0.21,0.05,0.38,0.04,0.02,0.17,0.04,0.09],[0.02,0.03,0.02,0.02,0.82,0.03,0.06,0.01],
      [0.11,0.17,0.24,0.03,0.11,0.06,0.04,0.24],[0.18,0.07,0.03,0.08,0.5,0.09,0.01,0.03],[0.09,0.11,0.16,0.13,0.09,0.03,0.02,0.37],
      [0.09,0.13,0.2,0.05,0.1,0.05,0.06,0.32],[0.19,0.03,0.15,0.16,0.03,0.32,0.01,0.11],[0.09,0.03,0.06,0.15,0.07,0.16,0.21,0.23],
      [0.04,0.47,0.06,0.11,0.06,0.01,0.17,0.08],[0.22,0.18,0.11,0.2,0.09,0.04,0.12,0.05],[0.01,0.6,0.02,0.09,0.12,0.01,0.09,0.07],
      [0.08,0.15,0.21,0.13,0.15,0.06,0.07,0.15],[0.06,0.07,0.01,0.27,0.08,0.05,0.08,0.38],[0.14,0.25,0.06,0.25,0.08,0.05,0.13,0.05],
      [0.13,0.04,0.03,0.08,0.05,0.08,0.09,0.5],[0.18,0.24,0.13,0.04,0.28,0.01,0.04,0.08],[0.07,0.06,0.34,0.01,0.02,0.25,0.2,0.04],
      [0.54,0.12,0.04,0.1,0.02,0.05,0.07,0.05],[0.23,0.18,0.14,0.05,0.12,0.09,0.04,0.15],[0.27,0.06,0.26,0.02,0.1,0.19,0.05,0.04],
      [0.03,0.02,0.05,0.01,0.02,0.81,0.04,0.02],[0.09,0.09,0.2,0.27,0.03,0.21,0.1,0.01],[0.12,0.05,0.18,0.04,0.13,0.32,0.11,0.06],
      [0.12,0.04,0.08,0.06,0.21,0.06,0.08,0.34],[0.03,0.05,0.02,0.03,0.69,0.04,0.13,0.01],[0.01,0.06,0.01,0.59,0.14,0.01,0.16,0.02],
      [0.08,0.05,0.13,0.23,0.04,0.02,0.41,0.04],[0.05,0.01,0.03,0.02,0.01,0.01,0.03,0.83],[0.13,0.05,0.12,0.29,0.02,0.08,0.27,0.04],
      [0.01,0.2,0.17,0.07,0.08,0.28,0.14,0.06],[0.06,0.08,0.06,0.16,0.03,0.32,0.08,0.21],[0.18,0.01,0.16,0.04,0.18,0.05,0.33,0.05],
      [0.49,0.03,0.21,0.05,0.11,0.04,0.02,0.05],[0.18,0.02,0.01,0.05,0.6,0.02,0.04,0.07],[0.05,0.09,0.23,0.07,0.07,0.15,0.3,0.03],
      [0.02,0.02,0.33,0.05,0.39,0.1,0.02,0.09],[0.03,0.01,0.21,0.02,0.04,0.08,0.57,0.04],[0.11,0.2,0.16,0.12,0.2,0.05,0.11,0.04],
      [0.02,0.01,0.61,0.01,0.29,0.02,0.02,0.01],[0.11,0.15,0.02,0.07,0.04,0.04,0.06,0.5],[0.01,0.0,0.05,0.04,0.08,0.01,0.01,0.81],
      [0.02,0.55,0.04,0.06,0.02,0.28,0.01,0.03],[0.01,0.1,0.04,0.06,0.03,0.04,0.05,0.66],[0.03,0.01,0.07,0.03,0.01,0.02,0.01,0.83]
    ],
    "expected": {"accuracy": 0.55, "recall": 0.5295138888888888, "precision": 0.5209134615384615, "f1": 0.5160356187929718, "auc": 0.8608077367100039, "auc_defined_classes": 0.8608077367100039}
  },
  "absent_true_class": {
    "labels": [
      3,0,1,3,0,0,0,1,1,3,3,3,1,1,3,1,3,3,0,0,0,1,3,3,0,3,1,3,3,3
    ],
    "probs": [
      [0.1,0.1,0.0,0.8],[0.1,0.1,0.1,0.8],[0.2,0.2,0.1,0.5],[0.1,0.0,0.2,0.7],[0.4,0.4,0.2,0.1],[0.2,0.6,0.2,0.1],
      [0.3,0.3,0.3,0.1],[0.1,0.9,0.0,0.0],[0.0,0.7,0.2,0.0],[0.1,0.1,0.6,0.2],[0.1,0.1,0.0,0.8],[0.0,0.3,0.0,0.7],
      [0.1,0.6,0.3,0.0],[0.1,0.4,0.4,0.0],[0.1,0.1,0.0,0.8],[0.1,0.4,0.4,0.1],[0.1,0.1,0.1,0.7],[0.2,0.0,0.1,0.7],
      [0.6,0.2,0.2,0.0],[0.3,0.1,0.3,0.3],[0.3,0.2,0.4,0.2],[0.0,0.9,0.0,0.0],[0.2,0.4,0.1,0.3],[0.2,0.4,0.0,0.4],
      [0.7,0.1,0.1,0.1],[0.1,0.2,0.1,0.6],[0.4,0.2,0.1,0.3],[0.4,0.1,0.2,0.3],[0.2,0.2,0.4,0.2],[0.1,0.1,0.4,0.5]
    ],
    "expected": {"accuracy": 0.6666666666666666, "recall": 0.5044642857142857, "precision": 0.5497835497835498, "f1": 0.5231372549019608, "auc": null, "auc_defined_classes": 0.8756764069264068}
  },
  "hand_3class": {
    "labels": [
      0,0,1,1,1,2,2,0,1,2
    ],
    "probs": [
      [0.5,0.3,0.2],[0.4,0.4,0.2],[0.3,0.4,0.3],[0.2,0.2,0.6],[0.1,0.6,0.3],[0.3,0.3,0.4],
      [0.5,0.2,0.3],[0.6,0.2,0.2],[0.3,0.3,0.4],[0.2,0.5,0.3]
    ],
    "expected": {"accuracy": 0.6, "recall": 0.611111111111111, "precision": 0.5833333333333333, "f1": 0.5873015873015872, "auc": 0.7251984126984127, "auc_defined_classes": 0.7251984126984127}
  }
}
`);

Deno.test("matches scikit-learn on tied, multi-class and absent-class cases", () => {
  for (const [name, { labels, probs, expected }] of Object.entries(SKLEARN_CASES)) {
    const got = classificationMetrics(labels, probs);
    for (const key of ["accuracy", "recall", "precision", "f1"] as const) {
      assertClose(got[key], expected[key], `${name} ${key}`);
    }
    assertClose(got.auc, expected.auc_defined_classes, `${name} auc`);
    const nan = classificationMetrics(labels, probs, { absentClassAuc: "nan" }).auc;
    if (expected.auc === null) assert.ok(Number.isNaN(nan), `${name}: sklearn gives NaN`);
    else assertClose(nan, expected.auc, `${name} auc (nan mode)`);
  }
});

Deno.test("invalid inputs name the field", () => {
  assert.throws(() => classificationMetrics([], []), /labels is empty/);
  assert.throws(
    () => classificationMetrics([0], [[1, 0], [0, 1]]),
    /probs has 2 rows but labels has 1/,
  );
  assert.throws(
    () => classificationMetrics([2], [[1, 0]]),
    /labels\[0\] = 2 is not a class index in \[0, 2\)/,
  );
  assert.throws(
    () => classificationMetrics([0, 1], [[1, 0], [0]]),
    /probs\[1\] has 1 scores; expected 2/,
  );
  assert.throws(() => classificationMetrics([0], [[NaN, 0]]), /probs\[0\]\[0\] = NaN/);
});

// meanStd([1, NaN]) used to return NaN silently.
Deno.test("meanStd refuses NaN and ±Infinity, or gives NaN when asked to propagate them", () => {
  assert.throws(
    () => meanStd([1, NaN]),
    /^Error: meanStd: values\[1\] is NaN; every value must be a finite number \(pass \{ nonFinite: "propagate" \} to get NaN for a set with a missing value\)$/,
  );
  assert.throws(() => meanStd([Infinity, 2]), /meanStd: values\[0\] is Infinity/);
  assert.throws(() => meanStd([3, -Infinity]), /meanStd: values\[1\] is -Infinity/);
  assert.throws(() => meanStd([NaN], { nonFinite: "throw" }), /values\[0\] is NaN/);
  assert.deepEqual(meanStd([1, NaN], { nonFinite: "propagate" }), { mean: NaN, std: NaN });
  assert.deepEqual(meanStd([Infinity, 1], { nonFinite: "propagate" }), { mean: NaN, std: NaN });
  assert.deepEqual(meanStd([2, 4], { nonFinite: "propagate" }), { mean: 3, std: 1 });
});

Deno.test("meanStd uses the population std; selectionScore sums the five metrics", () => {
  const { mean, std } = meanStd([1, 2, 3, 4]);
  assert.equal(mean, 2.5);
  assertClose(std, Math.sqrt(1.25), "population std");
  assert.deepEqual(meanStd([7]), { mean: 7, std: 0 });
  assert.throws(() => meanStd([]), /values is empty/);
  const m: ClassificationMetrics = {
    accuracy: 0.9,
    recall: 0.8,
    precision: 0.85,
    f1: 0.82,
    auc: 0.97,
  };
  assertClose(selectionScore(m), 4.34, "selection score");
});

Deno.test("model selection: equal scores summed in another order tie (the earlier round stays); a genuine AUC step counts", () => {
  const earlier: ClassificationMetrics = {
    accuracy: 0.1,
    recall: 0.7,
    precision: 0.3,
    f1: 0.5,
    auc: 0.8,
  };
  const later: ClassificationMetrics = { ...earlier, accuracy: 0.3, precision: 0.1 };
  // Mathematically equal (2.4), but the floating-point sums differ in the last bit.
  assert.ok(selectionScore(later) > selectionScore(earlier));
  assert.equal(improvesSelection(later, earlier), false);
  assert.equal(improvesSelection(earlier, later), false);
  assert.equal(improvesSelection(earlier, null), true, "the first round is the best so far");
  // The smallest AUC step of a split with 1e5 positives and 1e6 negatives: 1e-11.
  assert.equal(improvesSelection({ ...earlier, auc: 0.8 + 1e-11 }, earlier), true);
  assert.equal(improvesSelection({ ...earlier, auc: 0.8 - 1e-11 }, earlier), false);
  // Real metrics: a classifier one sample better on accuracy beats the other.
  const labels = [0, 0, 1, 1, 2, 2];
  const probs = (wrong: number) =>
    labels.map((y, i) => [0, 1, 2].map((c) => (c === (i < wrong ? (y + 1) % 3 : y) ? 0.8 : 0.1)));
  assert.equal(
    improvesSelection(
      classificationMetrics(labels, probs(1)),
      classificationMetrics(labels, probs(2)),
    ),
    true,
  );
});
