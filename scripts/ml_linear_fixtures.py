#!/usr/bin/env python3
"""Reference fit for nudge's additive propensity model, computed by scikit-learn.

`src/ml/linear.rs` fits a logistic regression (linfa-logistic, L2 penalty alpha = 1 on the summed
log loss, intercept not penalised) on each column expanded as an additive log-odds wants it: one
indicator per level of a categorical column, ln(1 + max(x, 0)) of a numeric one, every expanded
column standardised with the population standard deviation, constant ones left out. That is
scikit-learn's `LogisticRegression(C=1)` on `StandardScaler()` output of the same expansion, and
its unit test `matches_scikit_learn_on_the_fixture` reads the JSON this script writes
(tests/fixtures/ml/linear.json) and compares weights and probabilities.

Regenerate (from the repository root):

    python3 -m venv /tmp/sk-venv
    /tmp/sk-venv/bin/pip install scikit-learn
    /tmp/sk-venv/bin/python scripts/ml_linear_fixtures.py > tests/fixtures/ml/linear.json

The rows: a categorical column with 4 levels (level 3 never occurs, so it has no term), a count
with a log-scale effect, a duration with none, and a rare outcome (about 8% positives, as
conversions are) drawn from a known additive log-odds.
"""

import json

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

LEVELS = 4


def expand(x):
    plan = x[:, 0].astype(int)
    indicators = np.eye(LEVELS)[plan]
    return np.column_stack([indicators, np.log1p(np.maximum(x[:, 1:], 0.0))])


def main():
    rng = np.random.default_rng(20261203)
    n = 3000
    plan = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    sessions = rng.poisson(rng.gamma(1.5, 6.0, size=n))
    tenure = rng.uniform(0, 900, size=n)
    z = -3.6 + np.array([0.0, 0.7, -0.5])[plan] + 0.55 * np.log1p(sessions)
    y = rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-z))
    x = np.column_stack([plan, sessions, tenure]).astype(float)

    expanded = expand(x)
    keep = expanded.std(axis=0) > 1e-9
    scaler = StandardScaler().fit(expanded[:, keep])
    model = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(scaler.transform(expanded[:, keep]), y)
    probe = np.array([[0, 0, 10.0], [1, 25, 400.0], [2, 3, 0.0], [3, 8, 100.0], [1, 120, 30.0]])
    print(
        json.dumps(
            {
                "generator": f"scripts/ml_linear_fixtures.py, scikit-learn {sklearn.__version__}",
                "rows": x.tolist(),
                "labels": [bool(v) for v in y],
                # Expanded columns in order: plan=0..3, ln(1+sessions), ln(1+tenure); the ones kept.
                "kept": [bool(k) for k in keep],
                "means": scaler.mean_.tolist(),
                "scales": scaler.scale_.tolist(),
                "weights": model.coef_[0].tolist(),
                "intercept": float(model.intercept_[0]),
                "probe": probe.tolist(),
                "probe_probabilities": model.predict_proba(scaler.transform(expand(probe)[:, keep]))[:, 1].tolist(),
            },
            separators=(",", ":"),
        )
    )


if __name__ == "__main__":
    main()
