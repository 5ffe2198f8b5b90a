#!/usr/bin/env python3
"""Reference numbers for nudge's model metrics, computed by scikit-learn.

`src/ml/metrics.rs` must give the same ROC AUC, log loss, Brier score and calibration table on the
same predictions; its unit tests read the JSON this script writes (tests/fixtures/ml/metrics.json)
and compare to 1e-9.

Regenerate (from the repository root):

    python3 -m venv /tmp/sk-venv
    /tmp/sk-venv/bin/pip install scikit-learn
    /tmp/sk-venv/bin/python scripts/ml_metrics_fixtures.py > tests/fixtures/ml/metrics.json

Cases: continuous scores, scores rounded to one decimal (many ties, for ROC AUC; the calibration
table is skipped there because values sit on bin edges, where scikit-learn's `searchsorted` puts
them in the lower bin and nudge in the upper), and a small, imbalanced case.
"""

import json
import sys

import numpy as np
import sklearn
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score


def case(name, probs, labels, calibration=True):
    probs = [float(p) for p in probs]
    labels = [bool(y) for y in labels]
    out = {
        "name": name,
        "probs": probs,
        "labels": labels,
        "roc_auc": float(roc_auc_score(labels, probs)),
        "log_loss": float(log_loss(labels, probs, labels=[False, True])),
        "brier": float(brier_score_loss(labels, probs)),
    }
    if calibration:
        observed, predicted = calibration_curve(labels, probs, n_bins=10, strategy="uniform")
        out["calibration_observed"] = [float(v) for v in observed]
        out["calibration_predicted"] = [float(v) for v in predicted]
    return out


def main():
    rng = np.random.default_rng(20261123)
    truth = rng.uniform(0.02, 0.98, 300)
    labels = rng.uniform(size=300) < truth
    noisy = np.clip(truth + rng.normal(0, 0.15, 300), 0.01, 0.99)
    small_p = rng.uniform(0.01, 0.4, 60)
    small_y = rng.uniform(size=60) < small_p
    cases = [
        case("continuous", noisy, labels),
        case("ties", np.round(noisy, 1).clip(0.05, 0.95), labels, calibration=False),
        case("imbalanced", small_p, small_y),
    ]
    json.dump({"sklearn_version": sklearn.__version__, "cases": cases}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
