//! Scores for probability models: ROC AUC, log loss, Brier score, a calibration table with its
//! expected calibration error (ECE), and the population stability index (PSI) for feature drift.
//!
//! Plain functions over slices of predictions and 0/1 outcomes, so training, the model report and
//! tests share one definition. ROC AUC averages tied scores (the Mann–Whitney statistic), as
//! scikit-learn's `roc_auc_score` does.

use serde::{Deserialize, Serialize};

/// Probabilities are clipped to `[EPS, 1 - EPS]` before taking logs, as scikit-learn does.
const EPS: f64 = 1e-15;

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half. `None` when either class is absent.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let positives = labels.iter().filter(|&&y| y).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += average_rank * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// Mean negative log-likelihood (natural log) of the outcomes under the predicted probabilities.
pub fn log_loss(probs: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(probs.len(), labels.len(), "one label per prediction");
    if probs.is_empty() {
        return 0.0;
    }
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(EPS, 1.0 - EPS);
            if y { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / probs.len() as f64
}

/// Mean squared difference between predicted probability and outcome.
pub fn brier(probs: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(probs.len(), labels.len(), "one label per prediction");
    if probs.is_empty() {
        return 0.0;
    }
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| (p - f64::from(u8::from(y))).powi(2))
        .sum();
    total / probs.len() as f64
}

/// One row of a calibration table: predictions in `[lower, upper)` (the last bin includes 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean predicted probability in the bin (`NaN`-free: 0 when the bin is empty).
    pub predicted: f64,
    /// Share of positive outcomes in the bin.
    pub observed: f64,
}

/// A calibration table of `bins` equal-width bins over `[0, 1]`.
pub fn calibration_table(probs: &[f64], labels: &[bool], bins: usize) -> Vec<CalibrationBin> {
    assert_eq!(probs.len(), labels.len(), "one label per prediction");
    assert!(bins > 0, "at least one bin");
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let b = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += p;
        sums[b].2 += usize::from(y);
    }
    sums.into_iter()
        .enumerate()
        .map(|(b, (count, p_sum, positives))| CalibrationBin {
            lower: b as f64 / bins as f64,
            upper: (b + 1) as f64 / bins as f64,
            count,
            predicted: if count == 0 { 0.0 } else { p_sum / count as f64 },
            observed: if count == 0 {
                0.0
            } else {
                positives as f64 / count as f64
            },
        })
        .collect()
}

/// Expected calibration error: the count-weighted mean gap between predicted and observed rates
/// over a calibration table.
pub fn expected_calibration_error(table: &[CalibrationBin]) -> f64 {
    let n: usize = table.iter().map(|b| b.count).sum();
    if n == 0 {
        return 0.0;
    }
    table
        .iter()
        .map(|b| b.count as f64 * (b.predicted - b.observed).abs())
        .sum::<f64>()
        / n as f64
}

/// ECE over the usual 10 equal-width bins.
pub fn ece(probs: &[f64], labels: &[bool]) -> f64 {
    expected_calibration_error(&calibration_table(probs, labels, 10))
}

/// Lift quality (after Braze's "prediction quality"): how much better than random targeting the
/// scores pick an audience, averaged over audience sizes, on a 0..=1 scale. For each audience of
/// the top `k`% by score (k = 1..=100), the share of all positives it captures; lift quality is the
/// area between that gains curve and random targeting's (`k`%), divided by the same area for a
/// perfect ranking. 0 is random (or worse, clamped), 1 is perfect. Ties are broken by the order of
/// the rows, so give it distinct scores for a stable answer. 0 when either class is absent.
pub fn lift_quality(scores: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let n = scores.len();
    let positives = labels.iter().filter(|&&y| y).count();
    if positives == 0 || positives == n {
        return 0.0;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut captured_at = vec![0usize; n + 1];
    for (i, &r) in order.iter().enumerate() {
        captured_at[i + 1] = captured_at[i] + usize::from(labels[r]);
    }
    let (mut model, mut perfect) = (0.0, 0.0);
    for k in 1..=100 {
        let size = (k * n).div_ceil(100);
        let random = size as f64 / n as f64;
        model += captured_at[size] as f64 / positives as f64 - random;
        perfect += (size.min(positives) as f64 / positives as f64) - random;
    }
    if perfect <= 0.0 {
        return 0.0;
    }
    (model / perfect).clamp(0.0, 1.0)
}

/// Population stability index of `actual` against `expected` (the training distribution), over
/// `bins` bins cut at the deciles (or other quantiles) of `expected`. Empty bins count as a share
/// of 0.0001 so the logarithm stays finite. Rule of thumb: below 0.1 stable, above 0.25 drifted.
pub fn psi(expected: &[f64], actual: &[f64], bins: usize) -> f64 {
    if expected.is_empty() || actual.is_empty() {
        assert!(bins > 0, "at least one bin");
        return 0.0;
    }
    let edges = quantile_edges(expected, bins);
    psi_shares(&bin_shares(&edges, expected), &bin_shares(&edges, actual))
}

/// Cut points at the quantiles of `values` for `bins` bins, each kept once (a feature that is
/// mostly 0 gives fewer bins). Bin `i` holds values `v` with `edges[i - 1] <= v < edges[i]`.
pub fn quantile_edges(values: &[f64], bins: usize) -> Vec<f64> {
    assert!(bins > 0, "at least one bin");
    if values.is_empty() {
        return Vec::new();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut cuts: Vec<f64> = (1..bins)
        .map(|k| sorted[(k * sorted.len() / bins).min(sorted.len() - 1)])
        .collect();
    cuts.dedup();
    cuts
}

/// The share of `values` in each bin cut at `edges` (`edges.len() + 1` bins); empty bins count
/// as 0.0001 so the PSI's logarithm stays finite.
pub fn bin_shares(edges: &[f64], values: &[f64]) -> Vec<f64> {
    let mut counts = vec![0usize; edges.len() + 1];
    for v in values {
        counts[edges.partition_point(|c| c <= v)] += 1;
    }
    let n = values.len().max(1) as f64;
    counts.into_iter().map(|c| (c as f64 / n).max(1e-4)).collect()
}

/// PSI between two share vectors over the same bins.
pub fn psi_shares(expected: &[f64], actual: &[f64]) -> f64 {
    assert_eq!(expected.len(), actual.len(), "the same bins");
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| (a - e) * (a / e).ln())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn auc_of_a_hand_counted_example() {
        // Positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) = 3/4.
        let auc = roc_auc(&[0.8, 0.6, 0.4, 0.2], &[true, false, true, false]).unwrap();
        assert!(close(auc, 0.75), "{auc}");
        assert!(close(roc_auc(&[0.9, 0.1], &[true, false]).unwrap(), 1.0));
        assert!(close(roc_auc(&[0.9, 0.1], &[false, true]).unwrap(), 0.0));
        assert_eq!(roc_auc(&[0.5, 0.6], &[true, true]), None);
    }

    #[test]
    fn auc_counts_ties_as_half() {
        // Positives 0.5, 0.7; negatives 0.5, 0.3: (0.5=0.5 → ½, 0.5>0.3, 0.7>0.5, 0.7>0.3) = 3.5/4.
        let auc = roc_auc(&[0.5, 0.7, 0.5, 0.3], &[true, true, false, false]).unwrap();
        assert!(close(auc, 0.875), "{auc}");
        // All scores equal: no information.
        assert!(close(
            roc_auc(&[0.2; 6], &[true, false, true, false, false, true]).unwrap(),
            0.5
        ));
    }

    #[test]
    fn log_loss_and_brier_of_hand_computed_examples() {
        let probs = [0.9, 0.2, 0.6];
        let labels = [true, false, false];
        let expected = -(0.9f64.ln() + 0.8f64.ln() + 0.4f64.ln()) / 3.0;
        assert!(close(log_loss(&probs, &labels), expected));
        assert!(close(brier(&probs, &labels), (0.01 + 0.04 + 0.36) / 3.0));
        // A certain wrong answer is clipped, not infinite.
        assert!(log_loss(&[0.0], &[true]).is_finite());
    }

    #[test]
    fn calibration_table_and_ece() {
        // Bin [0.2,0.3): predicted 0.25, observed 1/4; bin [0.7,0.8): predicted 0.75, observed 1/2.
        let probs = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75];
        let labels = [true, false, false, false, true, false];
        let table = calibration_table(&probs, &labels, 10);
        assert_eq!(table.len(), 10);
        assert_eq!(table[2].count, 4);
        assert!(close(table[2].observed, 0.25));
        assert_eq!(table[7].count, 2);
        assert!(close(
            expected_calibration_error(&table),
            (4.0 * 0.0 + 2.0 * 0.25) / 6.0
        ));
        // 1.0 falls in the last bin.
        assert_eq!(calibration_table(&[1.0], &[true], 10)[9].count, 1);
    }

    #[test]
    fn psi_is_zero_for_the_same_distribution_and_grows_with_drift() {
        let base: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
        assert!(psi(&base, &base, 10) < 1e-9);
        let shifted: Vec<f64> = base.iter().map(|v| v + 0.3).collect();
        assert!(psi(&base, &shifted, 10) > 0.25);
        // A feature that is mostly zero still gives a finite index.
        let mostly_zero: Vec<f64> = (0..100).map(|i| if i < 90 { 0.0 } else { 1.0 }).collect();
        assert!(psi(&mostly_zero, &base, 10).is_finite());
    }

    #[test]
    fn lift_quality_is_one_for_a_perfect_ranking_and_zero_for_a_useless_one() {
        let labels: Vec<bool> = (0..1000).map(|i| i % 10 == 0).collect();
        let perfect: Vec<f64> = labels.iter().map(|&y| f64::from(u8::from(y))).collect();
        assert!(close(lift_quality(&perfect, &labels), 1.0));
        let inverted: Vec<f64> = perfect.iter().map(|p| 1.0 - p).collect();
        assert_eq!(lift_quality(&inverted, &labels), 0.0);
        // Scores unrelated to the labels (positives spread evenly through the order): near 0.
        let flat: Vec<f64> = (0..1000).map(f64::from).collect();
        assert!(lift_quality(&flat, &labels) < 0.05);
        // Half the positives ranked first, the rest at random: between the two.
        let half: Vec<f64> = (0..1000)
            .map(|i| if i % 20 == 0 { 2.0 } else { f64::from(i) / 1000.0 })
            .collect();
        let q = lift_quality(&half, &labels);
        assert!(q > 0.3 && q < 0.7, "{q}");
        assert_eq!(lift_quality(&[0.5, 0.6], &[true, true]), 0.0);
    }

    /// The same numbers as scikit-learn (`scripts/ml_metrics_fixtures.py`).
    #[test]
    fn agrees_with_scikit_learn() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/ml/metrics.json")).unwrap();
        let floats = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        for case in fixture["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let probs = floats(&case["probs"]);
            let labels: Vec<bool> = case["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|y| y.as_bool().unwrap())
                .collect();
            let auc = roc_auc(&probs, &labels).unwrap();
            assert!(close(auc, case["roc_auc"].as_f64().unwrap()), "{name}: AUC {auc}");
            let ll = log_loss(&probs, &labels);
            assert!(
                close(ll, case["log_loss"].as_f64().unwrap()),
                "{name}: log loss {ll}"
            );
            let b = brier(&probs, &labels);
            assert!(close(b, case["brier"].as_f64().unwrap()), "{name}: Brier {b}");
            if case.get("calibration_observed").is_some() {
                let table: Vec<_> = calibration_table(&probs, &labels, 10)
                    .into_iter()
                    .filter(|b| b.count > 0)
                    .collect();
                let observed = floats(&case["calibration_observed"]);
                let predicted = floats(&case["calibration_predicted"]);
                assert_eq!(table.len(), observed.len(), "{name}: non-empty bins");
                for (bin, (o, p)) in table.iter().zip(observed.iter().zip(&predicted)) {
                    assert!(
                        close(bin.observed, *o) && close(bin.predicted, *p),
                        "{name}: {bin:?} vs {o} {p}"
                    );
                }
            }
        }
    }
}
