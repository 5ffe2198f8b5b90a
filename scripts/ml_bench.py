#!/usr/bin/env python3
"""The scikit-learn side of `nudge bench`'s ML stage (issue 6 acceptance 4, issue 7 stage 7).

`nudge bench --only ml` generates the simulated world, runs the full send-time training, exports its
training and held-out rows to CSV, fits nudge's forest on that CSV in a fresh process, and then runs
this script (embedded in the binary, with a venv holding scikit-learn) once per model:

    python ml_bench.py --trees 30 --depth 6 --features 0.8 --grow-fraction 0.4 --max-grow-rows 80000 \
        --sklearn-child rows.csv {tree|forest}

It fits DecisionTreeClassifier (same depth) or RandomForestClassifier (same trees, depth, share of
features per split, rows per tree) on the CSV's training rows, one thread, and prints one JSON line:
training seconds, peak RSS, predictions per second and AUC on the held-out rows.
"""
import argparse
import json
import resource
import time


def peak_rss_kib():
    """This process's peak resident memory since it started (VmHWM, as nudge measures its own).
    Not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries that across fork and exec, so a child of
    the bench process (which holds the whole simulated history, ~5 GiB) would report the bench's
    peak instead of its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def sklearn_fit(csv, model, a):
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
        clf = DecisionTreeClassifier(max_depth=a.depth, random_state=7)
    else:
        # nudge grows each tree on a share of the training rows (`--grow-fraction`: its grow
        # fraction of the rows not kept for recalibration), at most `max_grow_rows`: the same here.
        per_tree = min(int(a.grow_fraction * (~held).sum()), a.max_grow_rows)
        clf = RandomForestClassifier(n_estimators=a.trees, max_depth=a.depth, max_features=a.features,
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
        "peak_rss_mib": round(peak_rss_kib() / 1024),
        "predictions_per_second": round(per_second), "auc": round(roc_auc_score(y[held], probs), 4),
    }))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trees", type=int, default=30)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--features", type=float, default=0.8)
    p.add_argument("--grow-fraction", type=float, default=0.5)
    p.add_argument("--max-grow-rows", type=int, default=80000)
    p.add_argument("--sklearn-child", nargs=2, metavar=("CSV", "MODEL"), required=True)
    a = p.parse_args()
    sklearn_fit(a.sklearn_child[0], a.sklearn_child[1], a)


if __name__ == "__main__":
    main()
