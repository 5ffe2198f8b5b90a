//! Calibrated probabilities from linfa-trees decision trees: a small, self-contained module (no
//! nudge types) meant to be offered upstream to linfa.
//!
//! linfa-trees 0.8 predicts hard labels only: a leaf keeps its majority label, not its class
//! counts, and `fit` prunes every subtree whose leaves all predict the same label — with a 5% base
//! rate that is usually the whole tree. This module works around both:
//! - each tree is fitted on weighted rows, the positives weighted so that a leaf's majority flips
//!   at a chosen probability `q` (weight `(1 - q) / q`); the trees of a forest use different `q`
//!   around the base rate, so pruning in one tree keeps the splits another needs;
//! - the fitted tree is flattened from its `TreeNode` splits (`x[feature] < threshold` goes left,
//!   exactly as linfa predicts), and rows are routed to their leaf;
//! - each leaf's probability is its class frequency over *calibration* rows, shrunk toward the base
//!   rate by a Beta prior of `prior_strength` pseudo-rows: `(positives + m·base) / (rows + m)`.
//!   A tree is grown on a random share of the rows and calibrated on the others ("honest" trees), so
//!   leaf frequencies are not the optimistic ones the splits were chosen on;
//! - a forest averages its trees' leaf probabilities, then maps the average through a logistic
//!   recalibration `σ(a·logit(p) + b)` fitted on rows no tree has seen (averaging pulls
//!   probabilities toward the mean; this is Platt scaling on the forest's own scale).
//!
//! Every prediction can show its decision path: the splits taken, with the row's values.

use linfa::prelude::*;
use linfa_trees::{DecisionTree, TreeNode};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

/// How to grow and calibrate a forest. One tree (`trees: 1`) is a valid forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestParams {
    pub trees: usize,
    pub max_depth: usize,
    /// Minimum (weighted) rows in a leaf while growing.
    pub min_leaf: f32,
    /// Share of the rows each tree is grown on; the rest calibrate its leaves. 1.0 grows and
    /// calibrates on all rows (not honest; for tiny data sets only).
    pub grow_fraction: f64,
    /// Most rows one tree is grown on (the others calibrate its leaves). linfa-trees 0.8 keeps
    /// running per-class weight sums in `f32` while it scans a split, subtracting row by row;
    /// the rounding drift grows with the rows in a node and, past a few hundred thousand
    /// weighted rows, drove a class sum to zero and tripped its `n_samples > 0.0` assertion.
    /// Growing each tree on a sample keeps the sums small (and is ordinary bagging).
    #[serde(default = "default_max_grow_rows")]
    pub max_grow_rows: usize,
    /// Share of the features each tree may split on (at least one).
    pub feature_fraction: f64,
    /// Pseudo-rows of the Beta prior pulling each leaf toward the base rate.
    pub prior_strength: f64,
    /// Share of the rows set aside (from every tree) to fit the forest's final logistic
    /// recalibration; 0 skips it. Averaging trees pulls probabilities toward the mean, and this
    /// undoes that.
    pub recalibration_fraction: f64,
    /// Grow each tree on class-weighted rows (positives weighted up to a ladder of rates around
    /// the base rate), so rare positives shape the splits; false: plain Gini on the rows.
    #[serde(default = "default_balance_classes")]
    pub balance_classes: bool,
    pub seed: u64,
}

fn default_balance_classes() -> bool {
    true
}

fn default_max_grow_rows() -> usize {
    80_000
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            trees: 30,
            max_depth: 6,
            min_leaf: 20.0,
            grow_fraction: 0.5,
            max_grow_rows: default_max_grow_rows(),
            feature_fraction: 0.8,
            prior_strength: 10.0,
            recalibration_fraction: 0.2,
            balance_classes: true,
            seed: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("no training rows")]
    Empty,
    #[error("{rows} rows but {labels} labels")]
    Shape { rows: usize, labels: usize },
    #[error("linfa: {0}")]
    Linfa(#[from] linfa::Error),
}

/// A node of a flattened tree. `feature` indexes the columns of the full feature matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Node {
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
    Leaf {
        /// The majority label linfa stored (1 = positive), kept to check routing against linfa.
        label: usize,
        /// Calibration rows that reached this leaf, and how many were positive.
        rows: f64,
        positives: f64,
        probability: f64,
    },
}

/// One split on a decision path: `value < threshold` went left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStep {
    pub feature: usize,
    pub threshold: f64,
    pub value: f64,
    pub went_left: bool,
}

/// A fitted tree, flattened, with a probability in each leaf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibratedTree {
    /// `nodes[0]` is the root.
    pub nodes: Vec<Node>,
}

impl CalibratedTree {
    /// Flattens a linfa tree fitted on the columns `features` of the full matrix (in that order).
    /// Leaf probabilities start at `base_rate` until [`CalibratedTree::calibrate`].
    pub fn from_linfa(tree: &DecisionTree<f64, usize>, features: &[usize], base_rate: f64) -> Self {
        fn walk(
            node: &TreeNode<f64, usize>,
            features: &[usize],
            base_rate: f64,
            nodes: &mut Vec<Node>,
        ) -> usize {
            let at = nodes.len();
            let children = node.children();
            match (node.prediction(), children[0], children[1]) {
                (None, Some(left), Some(right)) => {
                    let (column, threshold, _) = node.split();
                    nodes.push(Node::Split {
                        feature: features[column],
                        threshold,
                        left: 0,
                        right: 0,
                    });
                    let l = walk(left, features, base_rate, nodes);
                    let r = walk(right, features, base_rate, nodes);
                    if let Node::Split { left, right, .. } = &mut nodes[at] {
                        *left = l;
                        *right = r;
                    }
                }
                (label, _, _) => nodes.push(Node::Leaf {
                    label: label.unwrap_or_default(),
                    rows: 0.0,
                    positives: 0.0,
                    probability: base_rate,
                }),
            }
            at
        }
        let mut nodes = Vec::new();
        walk(tree.root_node(), features, base_rate, &mut nodes);
        CalibratedTree { nodes }
    }

    /// The index of the leaf `row` lands in.
    pub fn leaf_of(&self, row: ArrayView1<f64>) -> usize {
        let mut at = 0;
        while let Node::Split {
            feature,
            threshold,
            left,
            right,
        } = self.nodes[at]
        {
            at = if row[feature] < threshold { left } else { right };
        }
        at
    }

    /// The splits `row` takes from the root to its leaf.
    pub fn path(&self, row: ArrayView1<f64>) -> Vec<PathStep> {
        let mut steps = Vec::new();
        let mut at = 0;
        while let Node::Split {
            feature,
            threshold,
            left,
            right,
        } = self.nodes[at]
        {
            let went_left = row[feature] < threshold;
            steps.push(PathStep {
                feature,
                threshold,
                value: row[feature],
                went_left,
            });
            at = if went_left { left } else { right };
        }
        steps
    }

    /// linfa's majority label at `row`'s leaf.
    pub fn label(&self, row: ArrayView1<f64>) -> usize {
        match self.nodes[self.leaf_of(row)] {
            Node::Leaf { label, .. } => label,
            Node::Split { .. } => unreachable!("leaf_of stops at a leaf"),
        }
    }

    /// Sets each leaf's probability from the calibration rows `rows` of `x`.
    pub fn calibrate(&mut self, x: ArrayView2<f64>, y: &[bool], rows: &[usize], base_rate: f64, m: f64) {
        let mut counts = vec![(0.0, 0.0); self.nodes.len()];
        for &r in rows {
            let leaf = self.leaf_of(x.row(r));
            counts[leaf].0 += 1.0;
            counts[leaf].1 += f64::from(u8::from(y[r]));
        }
        for (node, (n, k)) in self.nodes.iter_mut().zip(counts) {
            if let Node::Leaf {
                rows,
                positives,
                probability,
                ..
            } = node
            {
                *rows = n;
                *positives = k;
                *probability = (k + m * base_rate) / (n + m);
            }
        }
    }

    pub fn probability(&self, row: ArrayView1<f64>) -> f64 {
        match self.nodes[self.leaf_of(row)] {
            Node::Leaf { probability, .. } => probability,
            Node::Split { .. } => unreachable!("leaf_of stops at a leaf"),
        }
    }

    /// The index of the leaf a plain row lands in (as [`CalibratedTree::leaf_of`]).
    pub fn leaf_of_slice(&self, row: &[f64]) -> usize {
        let mut at = 0;
        while let Node::Split {
            feature,
            threshold,
            left,
            right,
        } = self.nodes[at]
        {
            at = if row[feature] < threshold { left } else { right };
        }
        at
    }

    fn leaf_probability(&self, leaf: usize) -> f64 {
        match self.nodes[leaf] {
            Node::Leaf { probability, .. } => probability,
            Node::Split { .. } => unreachable!("leaf_of stops at a leaf"),
        }
    }

    /// Split gain per feature: for each split, the drop in Gini impurity (times rows) from the
    /// node to its children, counted on the calibration rows that reached the leaves below it.
    /// Adds into `gains`, indexed by feature.
    fn add_gains(&self, gains: &mut [f64]) {
        // (rows, positives) below each node; children come after their parent in `nodes`.
        let mut below = vec![(0.0, 0.0); self.nodes.len()];
        for at in (0..self.nodes.len()).rev() {
            below[at] = match self.nodes[at] {
                Node::Leaf { rows, positives, .. } => (rows, positives),
                Node::Split { left, right, .. } => {
                    (below[left].0 + below[right].0, below[left].1 + below[right].1)
                }
            };
        }
        let impurity = |(n, k): (f64, f64)| {
            if n <= 0.0 {
                0.0
            } else {
                let p = k / n;
                n * 2.0 * p * (1.0 - p)
            }
        };
        for (at, node) in self.nodes.iter().enumerate() {
            if let Node::Split {
                feature, left, right, ..
            } = *node
            {
                let gain = impurity(below[at]) - impurity(below[left]) - impurity(below[right]);
                gains[feature] += gain.max(0.0);
            }
        }
    }

    pub fn leaves(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf { .. }))
            .count()
    }
}

/// Trees whose leaf probabilities are averaged: `P(y = 1 | x)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbabilityForest {
    pub trees: Vec<CalibratedTree>,
    /// Share of positives in the training rows: the prior, and the answer of an empty forest.
    pub base_rate: f64,
    /// `(a, b)` of the final `σ(a·logit(p) + b)`; `(1, 0)` leaves the average as it is.
    pub recalibration: (f64, f64),
}

impl ProbabilityForest {
    /// Grows and calibrates a forest on the rows of `x` with outcomes `y`.
    pub fn fit(x: ArrayView2<f64>, y: &[bool], params: &ForestParams) -> Result<Self, TreeError> {
        let n = x.nrows();
        if n == 0 {
            return Err(TreeError::Empty);
        }
        if y.len() != n {
            return Err(TreeError::Shape {
                rows: n,
                labels: y.len(),
            });
        }
        let base_rate = y.iter().filter(|&&v| v).count() as f64 / n as f64;
        let mut rng = StdRng::seed_from_u64(params.seed);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let held = (n as f64 * params.recalibration_fraction.clamp(0.0, 0.5)) as usize;
        // Too few held-out rows would make the recalibration noisier than the bias it removes.
        let held = if held < MIN_RECALIBRATION_ROWS { 0 } else { held };
        let (recalibration_rows, tree_rows) = order.split_at(held);
        let all_features: Vec<usize> = (0..x.ncols()).collect();
        let n_features = ((x.ncols() as f64 * params.feature_fraction).round() as usize).clamp(1, x.ncols());
        let mut trees = Vec::with_capacity(params.trees);
        for t in 0..params.trees.max(1) {
            let mut rows: Vec<usize> = tree_rows.to_vec();
            let m = rows.len();
            let (grow, calibrate): (Vec<usize>, Vec<usize>) = if params.grow_fraction < 1.0 {
                rows.shuffle(&mut rng);
                let cut = ((m as f64 * params.grow_fraction) as usize)
                    .min(params.max_grow_rows.max(1))
                    .clamp(1, m);
                (rows[..cut].to_vec(), rows[cut..].to_vec())
            } else if m > params.max_grow_rows.max(1) {
                rows.shuffle(&mut rng);
                let cut = params.max_grow_rows.max(1);
                (rows[..cut].to_vec(), rows[cut..].to_vec())
            } else {
                (rows.clone(), rows)
            };
            let mut features = all_features.clone();
            if n_features < features.len() {
                features.shuffle(&mut rng);
                features.truncate(n_features);
                features.sort_unstable();
            }
            // Where this tree's leaves flip to "positive": a ladder around the base rate.
            let q = (base_rate * FLIP_LADDER[t % FLIP_LADDER.len()]).clamp(0.01, 0.99);
            let positive_weight = if params.balance_classes {
                ((1.0 - q) / q) as f32
            } else {
                1.0
            };
            let records: Array2<f64> = x.select(Axis(0), &grow).select(Axis(1), &features);
            let targets: Array1<usize> = grow.iter().map(|&r| usize::from(y[r])).collect();
            let weights: Array1<f32> = grow
                .iter()
                .map(|&r| if y[r] { positive_weight } else { 1.0 })
                .collect();
            let dataset = Dataset::new(records, targets).with_weights(weights);
            let fitted = DecisionTree::params()
                .max_depth(Some(params.max_depth))
                .min_weight_leaf(params.min_leaf)
                .min_weight_split(2.0 * params.min_leaf)
                .fit(&dataset)?;
            let mut tree = CalibratedTree::from_linfa(&fitted, &features, base_rate);
            let calibration = if calibrate.is_empty() { &grow } else { &calibrate };
            tree.calibrate(x, y, calibration, base_rate, params.prior_strength);
            trees.push(tree);
        }
        let mut forest = ProbabilityForest {
            trees,
            base_rate,
            recalibration: (1.0, 0.0),
        };
        if !recalibration_rows.is_empty() {
            let scores: Vec<f64> = recalibration_rows
                .iter()
                .map(|&r| forest.average(x.row(r)))
                .collect();
            let outcomes: Vec<bool> = recalibration_rows.iter().map(|&r| y[r]).collect();
            forest.recalibration = platt(&scores, &outcomes);
        }
        Ok(forest)
    }

    /// The plain average of the trees' leaf probabilities.
    fn average(&self, row: ArrayView1<f64>) -> f64 {
        self.trees.iter().map(|t| t.probability(row)).sum::<f64>() / self.trees.len() as f64
    }

    /// `P(y = 1)` for one row.
    pub fn predict_one(&self, row: ArrayView1<f64>) -> f64 {
        if self.trees.is_empty() {
            return self.base_rate;
        }
        let (a, b) = self.recalibration;
        sigmoid(a * logit(self.average(row)) + b)
    }

    /// `P(y = 1)` for each row of `x`.
    pub fn predict_proba(&self, x: ArrayView2<f64>) -> Vec<f64> {
        x.rows().into_iter().map(|row| self.predict_one(row)).collect()
    }

    /// `P(y = 1)` for a plain row (the same answer as [`ProbabilityForest::predict_one`]).
    pub fn predict_slice(&self, row: &[f64]) -> f64 {
        if self.trees.is_empty() {
            return self.base_rate;
        }
        let average = self
            .trees
            .iter()
            .map(|t| t.leaf_probability(t.leaf_of_slice(row)))
            .sum::<f64>()
            / self.trees.len() as f64;
        let (a, b) = self.recalibration;
        sigmoid(a * logit(average) + b)
    }

    /// Importance of each of `features` columns: split gain summed over the forest, as shares
    /// summing to 1 (all 0 for a forest without splits).
    pub fn importance(&self, features: usize) -> Vec<f64> {
        let mut gains = vec![0.0; features];
        for tree in &self.trees {
            tree.add_gains(&mut gains);
        }
        let total: f64 = gains.iter().sum();
        if total > 0.0 {
            gains.iter_mut().for_each(|g| *g /= total);
        }
        gains
    }

    /// The decision path of the tree whose leaf probability is closest to the forest's answer:
    /// the most representative single explanation of the prediction.
    pub fn explain(&self, row: ArrayView1<f64>) -> Vec<PathStep> {
        let p = self.average(row);
        self.trees
            .iter()
            .min_by(|a, b| {
                (a.probability(row) - p)
                    .abs()
                    .total_cmp(&(b.probability(row) - p).abs())
            })
            .map(|t| t.path(row))
            .unwrap_or_default()
    }
}

const MIN_RECALIBRATION_ROWS: usize = 200;

/// The logistic function.
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `ln(p / (1 − p))`, with `p` kept off 0 and 1.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// Fits `σ(a·logit(s) + b)` to the outcomes by Newton's method (logistic regression on one
/// feature); `(1, 0)` when the outcomes are all alike or the fit does not converge to finite values.
fn platt(scores: &[f64], outcomes: &[bool]) -> (f64, f64) {
    let positives = outcomes.iter().filter(|&&y| y).count();
    if positives == 0 || positives == outcomes.len() {
        return (1.0, 0.0);
    }
    let s: Vec<f64> = scores.iter().map(|&p| logit(p)).collect();
    let (mut a, mut b) = (1.0, 0.0);
    for _ in 0..50 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for (&si, &yi) in s.iter().zip(outcomes) {
            let q = sigmoid(a * si + b);
            let r = q - f64::from(u8::from(yi));
            let w = q * (1.0 - q);
            ga += r * si;
            gb += r;
            haa += w * si * si;
            hab += w * si;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-12 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        a -= da;
        b -= db;
        if da.abs() + db.abs() < 1e-10 {
            break;
        }
    }
    if a.is_finite() && b.is_finite() {
        (a, b)
    } else {
        (1.0, 0.0)
    }
}

/// Multiples of the base rate at which successive trees flip their majority label.
const FLIP_LADDER: [f64; 6] = [1.0, 0.5, 2.0, 0.75, 3.0, 1.5];

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;
    use crate::ml::metrics::{ece, log_loss, roc_auc};

    /// Rows of 4 uniform features and outcomes drawn from a known probability of the first three.
    fn world(n: usize, seed: u64) -> (Array2<f64>, Vec<bool>, Vec<f64>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = Array2::from_shape_fn((n, 4), |_| rng.r#gen::<f64>());
        let truth: Vec<f64> = x
            .rows()
            .into_iter()
            .map(|r| {
                let z = -2.5 + 3.0 * r[0] - 2.0 * r[1] + if r[2] > 0.7 { 1.5 } else { 0.0 };
                1.0 / (1.0 + (-z).exp())
            })
            .collect();
        let y = truth.iter().map(|&p| rng.r#gen::<f64>() < p).collect();
        (x, y, truth)
    }

    #[test]
    fn forest_probabilities_are_calibrated_and_beat_the_base_rate() {
        let (x, y, _) = world(8000, 1);
        let (xt, yt, truth) = world(20_000, 2);
        let forest = ProbabilityForest::fit(x.view(), &y, &ForestParams::default()).unwrap();
        let p = forest.predict_proba(xt.view());
        let base = vec![forest.base_rate; yt.len()];
        let (ece, ll, ll_base) = (ece(&p, &yt), log_loss(&p, &yt), log_loss(&base, &yt));
        let (auc, auc_truth) = (roc_auc(&p, &yt).unwrap(), roc_auc(&truth, &yt).unwrap());
        println!("ece {ece:.4} log loss {ll:.4} (base {ll_base:.4}) auc {auc:.4} (truth {auc_truth:.4})");
        assert!(ece < 0.05, "ECE {ece}");
        assert!(ll < ll_base - 0.02, "log loss {ll} vs base rate {ll_base}");
        assert!(auc > auc_truth - 0.05, "AUC {auc} vs {auc_truth}");
    }

    #[test]
    fn a_single_tree_is_calibrated_too() {
        let (x, y, _) = world(6000, 3);
        let (xt, yt, _) = world(3000, 4);
        let params = ForestParams {
            trees: 1,
            feature_fraction: 1.0,
            ..ForestParams::default()
        };
        let forest = ProbabilityForest::fit(x.view(), &y, &params).unwrap();
        assert!(forest.trees[0].leaves() > 1, "the weighted tree keeps its splits");
        let p = forest.predict_proba(xt.view());
        let base = vec![forest.base_rate; yt.len()];
        assert!(ece(&p, &yt) < 0.05, "ECE {}", ece(&p, &yt));
        assert!(log_loss(&p, &yt) < log_loss(&base, &yt));
    }

    #[test]
    fn routing_agrees_with_linfa_predict() {
        let (x, y, _) = world(2000, 5);
        let features = [0, 2, 3];
        let sub = x.select(Axis(1), &features);
        let targets: Array1<usize> = y.iter().map(|&v| usize::from(v)).collect();
        let weights: Array1<f32> = y.iter().map(|&v| if v { 3.0 } else { 1.0 }).collect();
        let fitted = DecisionTree::params()
            .max_depth(Some(5))
            .fit(&Dataset::new(sub.clone(), targets).with_weights(weights))
            .unwrap();
        let linfa = fitted.predict(&sub);
        let tree = CalibratedTree::from_linfa(&fitted, &features, 0.2);
        assert!(tree.leaves() > 1);
        for (r, row) in x.rows().into_iter().enumerate() {
            assert_eq!(tree.label(row), linfa[r], "row {r}");
        }
    }

    #[test]
    fn decision_path_ends_in_the_leaf_and_is_deterministic() {
        let (x, y, _) = world(3000, 6);
        let params = ForestParams {
            trees: 3,
            ..ForestParams::default()
        };
        let a = ProbabilityForest::fit(x.view(), &y, &params).unwrap();
        let b = ProbabilityForest::fit(x.view(), &y, &params).unwrap();
        assert_eq!(a, b, "same seed, same forest");
        let row = x.row(0);
        for tree in &a.trees {
            let path = tree.path(row);
            assert!(path.iter().all(|s| s.went_left == (s.value < s.threshold)));
            assert!(path.len() < tree.nodes.len());
        }
        assert!(!a.explain(row).is_empty());
        let plain: Vec<f64> = row.to_vec();
        assert_eq!(a.predict_slice(&plain), a.predict_one(row));
        let importance = a.importance(x.ncols());
        assert!((importance.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // The label depends on columns 0-2 only; column 3 is noise.
        assert!(importance[0] > importance[3], "{importance:?}");
        let empty = ProbabilityForest {
            trees: vec![],
            base_rate: 0.3,
            recalibration: (1.0, 0.0),
        };
        assert_eq!(empty.predict_one(row), 0.3);
    }

    #[test]
    fn platt_scaling_recovers_a_known_distortion() {
        // Scores are the truth pulled halfway toward 0.5 on the logit scale: a = 2, b = 0 undoes it.
        let mut rng = StdRng::seed_from_u64(9);
        let (mut scores, mut outcomes) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let z: f64 = rng.gen_range(-3.0..3.0);
            scores.push(sigmoid(z / 2.0));
            outcomes.push(rng.r#gen::<f64>() < sigmoid(z));
        }
        let (a, b) = platt(&scores, &outcomes);
        assert!((a - 2.0).abs() < 0.15 && b.abs() < 0.1, "a {a} b {b}");
        assert_eq!(platt(&[0.2, 0.4], &[true, true]), (1.0, 0.0));
    }

    #[test]
    fn rejects_bad_shapes() {
        let x = Array2::<f64>::zeros((3, 2));
        assert!(matches!(
            ProbabilityForest::fit(x.view(), &[true], &ForestParams::default()),
            Err(TreeError::Shape { .. })
        ));
        let empty = Array2::<f64>::zeros((0, 2));
        assert!(matches!(
            ProbabilityForest::fit(empty.view(), &[], &ForestParams::default()),
            Err(TreeError::Empty)
        ));
    }
}
