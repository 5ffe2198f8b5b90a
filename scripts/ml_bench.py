#!/usr/bin/env python3
"""Issue 6, acceptance 4: nudge's send-time training on 1,000,000 rows beside scikit-learn's on the
same exported CSV, in the same run.

    python3 scripts/ml_bench.py [--users 50000] [--days 60] [--rows 1000000] [--trees 30] [--depth 6]

Builds `examples/ml_bench.rs` in release, runs its `train` (the full `models::train` send-time run,
which also exports its training and held-out rows to CSV) and `fit` (the forest alone, in a fresh
process reading the CSV), then fits scikit-learn's DecisionTreeClassifier (same depth) and
RandomForestClassifier (same trees, depth, 80% of features per split, the same rows per tree) on
the same CSV, one thread each, and prints a table: training seconds, peak RSS, predictions per
second and AUC on the same held-out rows. Installs scikit-learn in a venv under target/ if missing.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sklearn_python():
    venv = os.path.join(ROOT, "target", "ml-bench-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "scikit-learn==1.9.1", "pandas"], check=True)
    return python


def sklearn_fit(csv, model, trees, depth):
    """Runs in a child process so its peak RSS is its own."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.tree import DecisionTreeClassifier

    df = pd.read_csv(csv)
    held = df.pop("held_out").to_numpy() == 1
    y = df.pop("label").to_numpy()
    x = df.to_numpy(dtype=np.float64)
    if model == "tree":
        clf = DecisionTreeClassifier(max_depth=depth, random_state=7)
    else:
        # nudge grows each tree on half of the 80% of rows not kept for recalibration, at most
        # 80,000 (ForestParams::max_grow_rows): the same number of rows per tree here.
        per_tree = min(int(0.5 * 0.8 * (~held).sum()), 80000)
        clf = RandomForestClassifier(n_estimators=trees, max_depth=depth, max_features=0.8,
                                     max_samples=per_tree, n_jobs=1, random_state=7)
    t = time.perf_counter()
    clf.fit(x[~held], y[~held])
    fit_seconds = time.perf_counter() - t
    t = time.perf_counter()
    probs = clf.predict_proba(x[held])[:, 1]
    per_second = held.sum() / (time.perf_counter() - t)
    print(json.dumps({
        "stage": f"scikit-learn {'DecisionTree' if model == 'tree' else 'RandomForest'}",
        "train_rows": int((~held).sum()), "fit_seconds": round(fit_seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "predictions_per_second": round(per_second), "auc": round(roc_auc_score(y[held], probs), 4),
    }))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=50000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--rows", type=int, default=1000000)
    p.add_argument("--trees", type=int, default=30)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--sklearn-child", nargs=2, metavar=("CSV", "MODEL"))
    a = p.parse_args()
    if a.sklearn_child:
        return sklearn_fit(a.sklearn_child[0], a.sklearn_child[1], a.trees, a.depth)
    csv = os.path.join(ROOT, "target", "ml-bench", "rows.csv")
    subprocess.run(["cargo", "build", "--release", "--example", "ml_bench"], cwd=ROOT, check=True)
    bench = os.path.join(ROOT, "target", "release", "examples", "ml_bench")
    results = []
    out = subprocess.run([bench, "train", "--users", str(a.users), "--days", str(a.days),
                          "--rows", str(a.rows), "--csv", csv], capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    out.check_returncode()
    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    out = subprocess.run([bench, "fit", "--csv", csv, "--trees", str(a.trees), "--depth", str(a.depth)],
                         check=True, capture_output=True, text=True)
    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    python = sklearn_python()
    for model in ["tree", "forest"]:
        out = subprocess.run([python, __file__, "--trees", str(a.trees), "--depth", str(a.depth),
                              "--sklearn-child", csv, model], check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'stage':<36} {'rows':>9} {'seconds':>8} {'peak MiB':>9} {'pred/s':>10} {'AUC':>7}")
    for r in results:
        secs = r.get("fit_seconds", r.get("seconds"))
        print(f"{r['stage']:<36} {r['train_rows']:>9} {secs:>8} {r['peak_rss_mib']:>9} "
              f"{r.get('predictions_per_second', '-'):>10} {r['auc']:>7}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
