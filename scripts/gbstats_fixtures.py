#!/usr/bin/env python3
"""Reference numbers for nudge's lift statistics, computed by GrowthBook's gbstats 0.8.0.

nudge's `src/experiments/stats.rs` must give the same results on the same counts; its unit tests
read the JSON this script writes (tests/fixtures/lift/gbstats.json) and compare to 1e-6.

Regenerate (from the repository root):

    python3 -m venv /tmp/gbstats-venv
    /tmp/gbstats-venv/bin/pip install gbstats==0.8.0
    /tmp/gbstats-venv/bin/python scripts/gbstats_fixtures.py > tests/fixtures/lift/gbstats.json

Conventions, as in gbstats: stat_a is the control (nudge's holdout arm), stat_b the treatment.
Proportion metrics are `ProportionStatistic(n=users, sum=conversions)`; mean metrics (revenue per
user) are `SampleMeanStatistic(n=users, sum=sum of values, sum_squares=sum of squared per-user values)`.
"""

import json
import sys

import gbstats
from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic
from gbstats.utils import check_srm

try:
    from importlib.metadata import version

    GBSTATS_VERSION = version("gbstats")
except Exception:  # pragma: no cover - metadata missing only in odd installs
    GBSTATS_VERSION = getattr(gbstats, "__version__", "unknown")

PROPORTION_CASES = [
    # name, control (n, conversions), treatment (n, conversions), confidence
    ("stack_reference", (10000, 480), (10000, 520), 0.95),
    ("tiny_arms_n5", (5, 2), (5, 3), 0.95),
    ("unbalanced_1k_vs_100k", (1000, 50), (100000, 5600), 0.95),
    ("zero_conversions_treatment", (1000, 30), (1000, 0), 0.95),
    ("zero_conversions_control", (1000, 0), (1000, 12), 0.95),
    ("equal_rates", (2000, 100), (2000, 100), 0.95),
    ("significant_positive", (5000, 250), (45000, 2700), 0.95),
    ("typical_holdout_10pct", (1200, 60), (10800, 650), 0.95),
    ("negative_effect", (3000, 300), (27000, 2400), 0.95),
    ("all_converted_control", (10, 10), (10, 5), 0.95),
    ("confidence_90", (10000, 480), (10000, 520), 0.90),
    ("confidence_99", (10000, 480), (10000, 520), 0.99),
    ("small_unbalanced", (40, 3), (400, 45), 0.95),
]

MEAN_CASES = [
    # name, control (n, sum, sum_squares), treatment (n, sum, sum_squares), confidence
    ("revenue_typical", (1000, 5230.5, 412345.25), (9000, 52010.0, 4012345.0), 0.95),
    ("revenue_small", (30, 120.0, 2400.0), (270, 1500.0, 41000.0), 0.95),
    ("revenue_zero_control", (500, 0.0, 0.0), (4500, 900.0, 40000.0), 0.95),
]

SRM_CASES = [
    # name, [treatment, holdout], expected holdout share
    ("srm_exact", [9000, 1000], 0.10),
    ("srm_mismatch", [8800, 1200], 0.10),
    ("srm_slight", [8950, 1050], 0.10),
    ("srm_empty", [0, 0], 0.10),
    ("srm_half", [5100, 4900], 0.50),
]


def result(stat_a, stat_b, difference_type, confidence):
    config = FrequentistConfig(alpha=1 - confidence, difference_type=difference_type)
    r = TwoSidedTTest(stat_a, stat_b, config).compute_result()
    return {
        "estimate": float(r.expected),
        "ci_low": float(r.ci[0]),
        "ci_high": float(r.ci[1]),
        "p_value": float(r.p_value),
        "stddev": float(r.uplift.stddev),
        "error": r.error_message,
    }


def main():
    out = {
        "generator": "scripts/gbstats_fixtures.py",
        "gbstats_version": GBSTATS_VERSION,
        "proportion": [],
        "mean": [],
        "srm": [],
    }
    for name, (na, sa), (nb, sb), confidence in PROPORTION_CASES:
        a, b = ProportionStatistic(n=na, sum=sa), ProportionStatistic(n=nb, sum=sb)
        out["proportion"].append(
            {
                "name": name,
                "control": {"n": na, "sum": sa},
                "treatment": {"n": nb, "sum": sb},
                "confidence": confidence,
                "relative": result(a, b, "relative", confidence),
                "absolute": result(a, b, "absolute", confidence),
            }
        )
    for name, (na, sa, qa), (nb, sb, qb), confidence in MEAN_CASES:
        a = SampleMeanStatistic(n=na, sum=sa, sum_squares=qa)
        b = SampleMeanStatistic(n=nb, sum=sb, sum_squares=qb)
        out["mean"].append(
            {
                "name": name,
                "control": {"n": na, "sum": sa, "sum_squares": qa},
                "treatment": {"n": nb, "sum": sb, "sum_squares": qb},
                "confidence": confidence,
                "relative": result(a, b, "relative", confidence),
                "absolute": result(a, b, "absolute", confidence),
            }
        )
    for name, users, holdout_share in SRM_CASES:
        p = check_srm(users, [1 - holdout_share, holdout_share])
        out["srm"].append(
            {
                "name": name,
                "treatment": users[0],
                "holdout": users[1],
                "expected_holdout_share": holdout_share,
                "p_value": float(p),
            }
        )
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
