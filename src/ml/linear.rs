//! An additive logistic model, and the blend that puts it beside a forest. Self-contained (no
//! nudge types; the logistic helpers of [`crate::ml::trees`]), like that module.
//!
//! Trees approximate an additive log-odds (a plan effect plus a country effect plus a smooth
//! effect of activity) by steps, and a forest leaves a visible part of it on the table: on the
//! simulated world the propensity forest alone ranked users 0.0225 AUC below the truth while a
//! logistic regression on the same columns gets within 0.004 (docs/ml.md has the table). So a propensity model is a forest *and* an additive model, blended:
//! - [`LinearModel`]: logistic regression (linfa-logistic, L-BFGS with a light L2 penalty) on
//!   the columns expanded the way an additive log-odds wants them — one indicator per level of a
//!   categorical column, `ln(1 + max(x, 0))` of a numeric one (counts and durations act on the
//!   log scale) — each standardised on the training rows, so a term's weight reads as "log-odds
//!   per standard deviation" and its contribution to one prediction as "log-odds against the
//!   average training row";
//! - [`Blend`]: `σ(b + a_lin·logit_lin + a_forest·logit(p_forest))`, fitted on rows neither part
//!   was fitted on. Where the world is additive the forest's weight goes to about zero; where
//!   interactions matter it keeps what the trees find. Either way the blend is calibrated on
//!   unseen rows (it is Platt scaling over two scores).

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::trees::{logit, sigmoid};

/// How a column enters the additive model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// Integer codes `0..levels`: one indicator per level.
    Categorical { levels: usize },
    /// `ln(1 + max(x, 0))`.
    Numeric,
}

/// One expanded input of the additive model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Term {
    /// The source column.
    pub column: usize,
    /// For a categorical column, the level this indicator is 1 for.
    pub level: Option<usize>,
    /// Mean and standard deviation of the expanded value over the training rows.
    pub mean: f64,
    pub scale: f64,
    /// Log-odds per standard deviation.
    pub weight: f64,
}

impl Term {
    fn expanded(&self, row: &[f64]) -> f64 {
        let x = row.get(self.column).copied().unwrap_or(0.0);
        match self.level {
            Some(level) => f64::from(u8::from(x >= 0.0 && x as usize == level && x.fract() == 0.0)),
            None => x.max(0.0).ln_1p(),
        }
    }

    /// This term's part of the log-odds, against the average training row.
    fn contribution(&self, row: &[f64]) -> f64 {
        self.weight * (self.expanded(row) - self.mean) / self.scale
    }
}

/// A fitted additive logistic model: `logit = intercept + Σ weight·(expanded − mean)/scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearModel {
    pub terms: Vec<Term>,
    pub intercept: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LinearError {
    #[error("{rows} rows but {labels} labels")]
    Shape { rows: usize, labels: usize },
    #[error("{columns} columns but {kinds} column kinds")]
    Kinds { columns: usize, kinds: usize },
    #[error("linfa-logistic: {0}")]
    Fit(#[from] linfa_logistic::error::Error),
    #[error("the fit did not converge to finite weights")]
    NotFinite,
}

/// Expanded columns whose standard deviation is below this carry no information (a level never
/// or always seen); they are left out.
const MIN_SCALE: f64 = 1e-9;

/// L2 penalty of the additive model, on the summed (not averaged) log loss of standardised
/// inputs: enough to keep weights of rare levels finite, negligible beside thousands of rows.
const ALPHA: f64 = 1.0;

impl LinearModel {
    /// Fits the model to the rows of `x` (columns described by `kinds`) with outcomes `y`.
    pub fn fit(x: ArrayView2<f64>, y: &[bool], kinds: &[ColumnKind]) -> Result<Self, LinearError> {
        if y.len() != x.nrows() {
            return Err(LinearError::Shape {
                rows: x.nrows(),
                labels: y.len(),
            });
        }
        if kinds.len() != x.ncols() {
            return Err(LinearError::Kinds {
                columns: x.ncols(),
                kinds: kinds.len(),
            });
        }
        let candidates: Vec<Term> = kinds
            .iter()
            .enumerate()
            .flat_map(|(column, kind)| {
                let levels: Vec<Option<usize>> = match *kind {
                    ColumnKind::Categorical { levels } => (0..levels).map(Some).collect(),
                    ColumnKind::Numeric => vec![None],
                };
                levels.into_iter().map(move |level| Term {
                    column,
                    level,
                    mean: 0.0,
                    scale: 1.0,
                    weight: 0.0,
                })
            })
            .collect();
        let x = x.as_standard_layout();
        let rows: Vec<&[f64]> = x
            .rows()
            .into_iter()
            .map(|r| r.to_slice().expect("rows of a standard-layout matrix are slices"))
            .collect();
        let n = rows.len().max(1) as f64;
        let mut terms: Vec<Term> = Vec::with_capacity(candidates.len());
        for mut t in candidates {
            let (sum, sum_sq) = rows.iter().fold((0.0, 0.0), |(s, q), r| {
                let v = t.expanded(r);
                (s + v, q + v * v)
            });
            let mean = sum / n;
            let scale = (sum_sq / n - mean * mean).max(0.0).sqrt();
            if scale > MIN_SCALE {
                t.mean = mean;
                t.scale = scale;
                terms.push(t);
            }
        }
        let mut design = Array2::<f64>::zeros((rows.len(), terms.len()));
        for (i, r) in rows.iter().enumerate() {
            for (j, t) in terms.iter().enumerate() {
                design[(i, j)] = (t.expanded(r) - t.mean) / t.scale;
            }
        }
        let (weights, intercept) = fit_logistic(design, y, ALPHA)?;
        for (t, w) in terms.iter_mut().zip(weights) {
            t.weight = w;
        }
        Ok(LinearModel { terms, intercept })
    }

    /// The log-odds for one row.
    pub fn logit(&self, row: &[f64]) -> f64 {
        self.intercept + self.terms.iter().map(|t| t.contribution(row)).sum::<f64>()
    }

    /// Each source column's part of the log-odds for one row (indicator terms summed per column),
    /// against the average training row; columns without a term are absent. `intercept` plus
    /// their sum is [`LinearModel::logit`].
    pub fn contributions(&self, row: &[f64]) -> Vec<(usize, f64)> {
        let mut out: Vec<(usize, f64)> = Vec::new();
        // Terms are in column order (`fit` expands column by column).
        for t in &self.terms {
            let c = t.contribution(row);
            match out.last_mut() {
                Some((col, sum)) if *col == t.column => *sum += c,
                _ => out.push((t.column, c)),
            }
        }
        out
    }
}

/// `σ(intercept + linear·logit_lin + forest·logit(p_forest))`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Blend {
    pub linear: f64,
    pub forest: f64,
    pub intercept: f64,
}

impl Blend {
    /// Fits the blend on rows neither part was fitted on: the additive model's log-odds and the
    /// forest's probability for each, with the outcomes.
    pub fn fit(linear_logits: &[f64], forest_probabilities: &[f64], y: &[bool]) -> Result<Self, LinearError> {
        if linear_logits.len() != y.len() || forest_probabilities.len() != y.len() {
            return Err(LinearError::Shape {
                rows: linear_logits.len().min(forest_probabilities.len()),
                labels: y.len(),
            });
        }
        let mut design = Array2::<f64>::zeros((y.len(), 2));
        for (i, (&l, &p)) in linear_logits.iter().zip(forest_probabilities).enumerate() {
            design[(i, 0)] = l;
            design[(i, 1)] = logit(p);
        }
        let (w, intercept) = fit_logistic(design, y, 1e-3)?;
        Ok(Blend {
            linear: w[0],
            forest: w[1],
            intercept,
        })
    }

    pub fn probability(&self, linear_logit: f64, forest_probability: f64) -> f64 {
        sigmoid(self.intercept + self.linear * linear_logit + self.forest * logit(forest_probability))
    }
}

fn fit_logistic(design: Array2<f64>, y: &[bool], alpha: f64) -> Result<(Vec<f64>, f64), LinearError> {
    let targets: Array1<usize> = y.iter().map(|&v| usize::from(v)).collect();
    let dataset = Dataset::new(design, targets);
    let fitted = LogisticRegression::default()
        .alpha(alpha)
        .max_iterations(300)
        .gradient_tolerance(1e-6)
        .fit(&dataset)?;
    // linfa-logistic models the probability of the *more frequent* class; turn it around when
    // that is the negative one (the usual case for conversions).
    let sign = if fitted.labels().pos.class == 1 { 1.0 } else { -1.0 };
    let weights: Vec<f64> = fitted.params().iter().map(|w| sign * w).collect();
    let intercept = sign * fitted.intercept();
    if !intercept.is_finite() || weights.iter().any(|w| !w.is_finite()) {
        return Err(LinearError::NotFinite);
    }
    Ok((weights, intercept))
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::ml::metrics::{ece, roc_auc};

    /// A world whose log-odds is additive: a categorical effect plus the log of a count.
    fn world(n: usize, seed: u64) -> (Array2<f64>, Vec<bool>, Vec<f64>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let effects = [0.0, 0.8, -0.6];
        let mut x = Array2::zeros((n, 3));
        let mut y = Vec::with_capacity(n);
        let mut truth = Vec::with_capacity(n);
        for i in 0..n {
            let level = rng.gen_range(0..3usize);
            let count = rng.gen_range(0..200u32) as f64;
            let noise: f64 = rng.r#gen();
            x[(i, 0)] = level as f64;
            x[(i, 1)] = count;
            x[(i, 2)] = noise;
            let p = sigmoid(-4.0 + effects[level] + 0.7 * count.ln_1p());
            truth.push(p);
            y.push(rng.r#gen::<f64>() < p);
        }
        (x, y, truth)
    }

    const KINDS: [ColumnKind; 3] = [
        ColumnKind::Categorical { levels: 3 },
        ColumnKind::Numeric,
        ColumnKind::Numeric,
    ];

    #[test]
    fn recovers_an_additive_world_as_well_as_the_truth_ranks_it() {
        let (x, y, _) = world(20_000, 1);
        let model = LinearModel::fit(x.view(), &y, &KINDS).expect("fits");
        let (tx, ty, truth) = world(20_000, 2);
        let p: Vec<f64> = tx
            .rows()
            .into_iter()
            .map(|r| sigmoid(model.logit(r.as_slice().unwrap())))
            .collect();
        let gap = roc_auc(&truth, &ty).unwrap() - roc_auc(&p, &ty).unwrap();
        assert!(gap.abs() < 0.005, "AUC gap to the truth {gap}");
        assert!(ece(&p, &ty) < 0.02, "ECE {}", ece(&p, &ty));
        // The numeric effect acts on ln(1 + count): its weight per standard deviation is about
        // 0.7 × the standard deviation of ln(1 + count) (≈ 0.85 for uniform 0..200).
        let count = model.terms.iter().find(|t| t.column == 1).expect("count term");
        assert!((count.weight / count.scale - 0.7).abs() < 0.1, "{count:?}");
    }

    #[test]
    fn contributions_add_up_to_the_log_odds_and_name_their_columns() {
        let (x, y, _) = world(5_000, 3);
        let model = LinearModel::fit(x.view(), &y, &KINDS).expect("fits");
        let row = [1.0, 150.0, 0.5];
        let parts = model.contributions(&row);
        let sum: f64 = parts.iter().map(|(_, c)| c).sum();
        assert!((model.intercept + sum - model.logit(&row)).abs() < 1e-9);
        let mut columns: Vec<usize> = parts.iter().map(|(c, _)| *c).collect();
        columns.sort_unstable();
        assert_eq!(columns, vec![0, 1, 2]);
        // Level 1 raises the odds, many sessions raise them.
        assert!(parts.iter().all(|&(c, v)| c == 2 || v > 0.0), "{parts:?}");
    }

    #[test]
    fn a_level_never_seen_in_training_gets_no_term() {
        let (mut x, y, _) = world(3_000, 4);
        x.column_mut(0).mapv_inplace(|v| if v == 2.0 { 0.0 } else { v });
        let model = LinearModel::fit(x.view(), &y, &KINDS).expect("fits");
        assert!(model.terms.iter().all(|t| t.level != Some(2)));
        assert!(model.logit(&[2.0, 10.0, 0.5]).is_finite());
    }

    #[test]
    fn the_blend_drops_a_useless_score_and_keeps_a_useful_one() {
        let (_, y, truth) = world(20_000, 5);
        let useful: Vec<f64> = truth.iter().map(|&p| logit(p)).collect();
        let mut rng = StdRng::seed_from_u64(9);
        let useless: Vec<f64> = (0..y.len()).map(|_| rng.gen_range(0.01..0.3)).collect();
        let blend = Blend::fit(&useful, &useless, &y).expect("fits");
        assert!((blend.linear - 1.0).abs() < 0.15, "{blend:?}");
        assert!(blend.forest.abs() < 0.1, "{blend:?}");
    }

    /// The same rows, expansion and penalty as scikit-learn's `LogisticRegression(C=1)` on
    /// standardised columns (scripts/ml_linear_fixtures.py): the same weights and probabilities.
    #[test]
    fn matches_scikit_learn_on_the_fixture() {
        #[derive(serde::Deserialize)]
        struct Fixture {
            rows: Vec<[f64; 3]>,
            labels: Vec<bool>,
            kept: Vec<bool>,
            means: Vec<f64>,
            scales: Vec<f64>,
            weights: Vec<f64>,
            intercept: f64,
            probe: Vec<[f64; 3]>,
            probe_probabilities: Vec<f64>,
        }
        let f: Fixture = serde_json::from_str(include_str!("../../tests/fixtures/ml/linear.json")).unwrap();
        let x = Array2::from_shape_fn((f.rows.len(), 3), |(i, j)| f.rows[i][j]);
        let kinds = [
            ColumnKind::Categorical { levels: 4 },
            ColumnKind::Numeric,
            ColumnKind::Numeric,
        ];
        let model = LinearModel::fit(x.view(), &f.labels, &kinds).expect("fits");
        // Expanded columns: plan = 0..3, then the two numerics; level 3 never occurs.
        let expanded: Vec<(usize, Option<usize>)> = (0..4)
            .map(|l| (0, Some(l)))
            .chain([(1, None), (2, None)])
            .collect();
        let kept: Vec<(usize, Option<usize>)> = expanded
            .into_iter()
            .zip(&f.kept)
            .filter(|(_, k)| **k)
            .map(|(e, _)| e)
            .collect();
        let ours: Vec<(usize, Option<usize>)> = model.terms.iter().map(|t| (t.column, t.level)).collect();
        assert_eq!(ours, kept);
        for (i, t) in model.terms.iter().enumerate() {
            assert!((t.mean - f.means[i]).abs() < 1e-9, "mean of {t:?}");
            assert!((t.scale - f.scales[i]).abs() < 1e-9, "scale of {t:?}");
            assert!(
                (t.weight - f.weights[i]).abs() < 2e-3,
                "{t:?} vs {}",
                f.weights[i]
            );
        }
        assert!(
            (model.intercept - f.intercept).abs() < 2e-3,
            "{} vs {}",
            model.intercept,
            f.intercept
        );
        for (row, &p) in f.probe.iter().zip(&f.probe_probabilities) {
            let ours = sigmoid(model.logit(row));
            assert!((ours - p).abs() < 5e-4, "{row:?}: {ours} vs {p}");
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let x = Array2::<f64>::zeros((3, 2));
        assert!(matches!(
            LinearModel::fit(x.view(), &[true], &[ColumnKind::Numeric; 2]),
            Err(LinearError::Shape { .. })
        ));
        assert!(matches!(
            LinearModel::fit(x.view(), &[true, false, true], &[ColumnKind::Numeric]),
            Err(LinearError::Kinds { .. })
        ));
    }
}
