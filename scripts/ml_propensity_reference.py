#!/usr/bin/env python3
"""How close to the truth can a propensity model of the observable features get?

Reads the CSV that the ignored test `ml::export_propensity_rows_for_scikit_learn` writes (the
propensity model's exact training rows, then one held-out row per user at `now - 7 days` with that
user's true probability) and scores, on the same held-out rows:

- the true probabilities (the ceiling no model of the history can beat);
- scikit-learn's RandomForest with nudge's propensity parameters (40 trees, depth 8);
- scikit-learn's HistGradientBoosting (boosted trees: additive effects are its strength);
- a logistic regression on the simulator's own functional form (plan and country one-hot,
  min(tenure, 3 years), log of sessions per day): a well-specified model, the best a model of
  these features can hope for;
- a logistic regression on nudge's additive expansion (every trait one-hot, ln(1 + x) of every
  other column, standardised): what the additive part of nudge's propensity model
  (src/ml/linear.rs) fits, so its AUC is the one to compare with nudge's.

Results (50,000 users, 2026-12-03): docs/ml.md, "How the propensity gap was closed".

Usage:
  NUDGE_ML_USERS=50000 NUDGE_ML_EXPORT=target/ml-export \\
    cargo test --release --test it export_propensity_rows -- --ignored --nocapture
  python3 scripts/ml_propensity_reference.py target/ml-export/propensity.csv
Needs numpy and scikit-learn (`nudge bench` keeps a venv with both in ~/.cache/nudge/bench-venv).
"""
import sys

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import roc_auc_score


def ece(p, y, bins=10):
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(p) * abs(p[m].mean() - y[m].mean())
    return total


def designed(x, col):
    """The simulator's functional form from observable columns."""
    plan = x[:, col["plan"]].astype(int)
    country = x[:, col["country"]].astype(int)
    parts = [np.eye(plan.max() + 1)[plan][:, 1:], np.eye(country.max() + 1)[country][:, 1:]]
    tenure = np.minimum(x[:, col["tenure_days"]] / 365.0, 3.0)
    rate = x[:, col["sessions_per_day"]]
    days = np.maximum(x[:, col["observed_days"]], 1.0)
    # Shrunk toward a typical rate so one session in one day is not read as certainty.
    log_rate = np.log((rate * days + 0.5) / (days + 0.5 / 0.74))
    return np.column_stack(parts + [tenure, log_rate, np.log1p(x[:, col["goals_total"]])])


def additive(xt, xe, col):
    """nudge's additive expansion (src/ml/linear.rs) of the training and held-out rows: trait
    codes one-hot over the levels seen in training, ln(1 + max(x, 0)) of every other column;
    columns constant in training left out. Standardised by the caller."""
    def expand(x):
        parts = []
        for name, i in col.items():
            if name in TRAITS:
                levels = np.arange(int(xt[:, i].max()) + 1)
                parts.append((x[:, i].astype(int)[:, None] == levels[None, :]).astype(float))
            else:
                parts.append(np.log1p(np.maximum(x[:, i], 0.0))[:, None])
        return np.column_stack(parts)

    ft, fe = expand(xt), expand(xe)
    keep = ft.std(axis=0) > 1e-9
    return ft[:, keep], fe[:, keep]


TRAITS = ("plan", "country", "platform")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "target/ml-export/propensity.csv"
    with open(path) as f:
        header = f.readline().strip().split(",")
    data = np.genfromtxt(path, delimiter=",", skip_header=1, filling_values=np.nan)
    width = header.index("label")
    col = {name: i for i, name in enumerate(header[:width])}
    x, y, held = data[:, :width], data[:, width].astype(int), data[:, width + 1] == 1
    truth = data[:, width + 2]
    xt, yt, xe, ye = x[~held], y[~held], x[held], y[held]
    print(f"{len(yt)} training rows (base rate {yt.mean():.4f}), {len(ye)} held-out (base rate {ye.mean():.4f})")

    def report(name, p):
        auc = roc_auc_score(ye, p)
        print(f"  {name:<58} AUC {auc:.4f}  gap {truth_auc - auc:+.4f}  ECE {ece(p, ye):.4f}")

    truth_auc = roc_auc_score(ye, truth[held])
    report("true probabilities", truth[held])
    rf = RandomForestClassifier(
        n_estimators=40, max_depth=8, min_samples_leaf=20, max_features=None, n_jobs=-1, random_state=7
    )
    report("RandomForest (40 trees, depth 8, all features)", rf.fit(xt, yt).predict_proba(xe)[:, 1])
    hgb = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=15, random_state=7)
    report("HistGradientBoosting (300 x 15 leaves)", hgb.fit(xt, yt).predict_proba(xe)[:, 1])
    lr = LogisticRegression(max_iter=2000, C=10.0)
    report("logistic, the simulator's form", lr.fit(designed(xt, col), yt).predict_proba(designed(xe, col))[:, 1])
    additive_t, additive_e = additive(xt, xe, col)
    scaler = StandardScaler().fit(additive_t)
    lr = LogisticRegression(max_iter=3000, C=1.0).fit(scaler.transform(additive_t), yt)
    report("logistic, one-hot traits + log1p (nudge's additive part)", lr.predict_proba(scaler.transform(additive_e))[:, 1])


if __name__ == "__main__":
    main()
