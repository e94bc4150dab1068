"""scikit-learn reference values for lib/metrics/classification.ts (docs/protocol.md#metrics).

Computes, for a few small deterministic cases, exactly what the reference (DEeR utils.py)
computes: accuracy_score, recall/precision/f1_score(average="macro") with the default
zero_division, and roc_auc_score(np.eye(C)[labels], scores). Scores are rounded to 1 or 2
decimals so that ties occur. Prints JSON; the cases and values are recorded in
tests/metrics_classification.test.ts.

Run: python tools/crosscheck/metrics_sklearn.py
"""

import json
import sys
import warnings

import numpy as np
import sklearn
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_case(seed, n, c, decimals, drop_class=None):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, c, size=n)
    if drop_class is not None:
        labels[labels == drop_class] = (drop_class + 1) % c
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    probs = np.round(softmax(logits), decimals)
    return labels, probs


def reference(labels, probs):
    c = probs.shape[1]
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "accuracy": accuracy_score(labels, pred),
            "recall": recall_score(labels, pred, average="macro"),
            "precision": precision_score(labels, pred, average="macro"),
            "f1": f1_score(labels, pred, average="macro"),
            "auc": roc_auc_score(np.eye(c)[labels], probs),
        }
        # AUC over the classes whose AUC is defined (the toolkit's "skip" choice).
        present = [k for k in range(c) if 0 < (labels == k).sum() < len(labels)]
        out["auc_defined_classes"] = float(np.mean([roc_auc_score(labels == k, probs[:, k]) for k in present]))
    return {k: (None if np.isnan(v) else float(v)) for k, v in out.items()}


def main():
    cases = {
        "ties_4class": make_case(1, 40, 4, 1),
        "ties_8class": make_case(2, 60, 8, 2),
        "absent_true_class": make_case(3, 30, 4, 1, drop_class=2),
    }
    # A case where one class is never predicted and another never true.
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    probs = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.3, 0.4, 0.3], [0.2, 0.2, 0.6],
                      [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.2, 0.3], [0.6, 0.2, 0.2],
                      [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]])
    cases["hand_3class"] = (labels, probs)
    out = {"sklearn": sklearn.__version__, "cases": {}}
    for name, (labels, probs) in cases.items():
        out["cases"][name] = {"labels": labels.tolist(), "probs": probs.tolist(), "expected": reference(labels, probs)}
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
