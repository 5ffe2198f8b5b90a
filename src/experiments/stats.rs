//! Lift statistics: pure functions over counts, equal to GrowthBook's gbstats 0.8.0.
//!
//! Takes per-arm summaries ([`Sample`]: users and conversions, or users with the sum and sum of
//! squares of a per-user value) and hands back test results. The control (baseline) is always the
//! campaign's holdout arm, the variation its treatment arm, as `stat_a`/`stat_b` are in gbstats.
//!
//! - [`two_sided_ttest`] is gbstats' `TwoSidedTTest(...).compute_result()`: a Welch t-test with
//!   Welch–Satterthwaite degrees of freedom; the relative difference uses the delta-method variance
//!   `var_b/(mean_a² n_b) + var_a mean_b²/(mean_a⁴ n_a)`, the absolute one `var_b/n_b + var_a/n_a`.
//!   When the control mean is 0 or either variance is 0 it returns gbstats' uninformative default
//!   (estimate 0, interval [0, 0], p = 1) and says why in [`TestResult::degenerate`].
//! - [`srm_check`] is gbstats' `check_srm`: a chi-square goodness-of-fit of the arm sizes against
//!   the configured split.
//! - [`minimum_detectable_effect`] is the usual two-sided power calculation (normal approximation).
//!
//! `tests/fixtures/lift/gbstats.json`, written by `scripts/gbstats_fixtures.py` from gbstats itself,
//! pins every number here to 1e-6.

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// Statistical power used for the minimum detectable effect.
pub const MDE_POWER: f64 = 0.8;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("confidence level must be strictly between 0 and 1, got {0}")]
    ConfidenceOutOfRange(f64),
}

/// A two-sided confidence level, e.g. 0.95 (alpha = 0.05).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ConfidenceLevel(f64);

impl ConfidenceLevel {
    pub const DEFAULT: ConfidenceLevel = ConfidenceLevel(0.95);

    pub fn new(level: f64) -> Result<Self, StatsError> {
        if level.is_finite() && level > 0.0 && level < 1.0 {
            Ok(Self(level))
        } else {
            Err(StatsError::ConfidenceOutOfRange(level))
        }
    }

    pub fn level(self) -> f64 {
        self.0
    }

    pub fn alpha(self) -> f64 {
        1.0 - self.0
    }
}

impl Default for ConfidenceLevel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One arm's summary, as gbstats' statistics take it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// `ProportionStatistic(n, sum)`: users and users who converted. Variance p(1−p), without the
    /// n−1 correction, as gbstats has it.
    Proportion { n: u64, conversions: f64 },
    /// `SampleMeanStatistic(n, sum, sum_squares)`: users, the sum of a per-user value and the sum of
    /// its squares. Sample variance with n−1.
    Mean { n: u64, sum: f64, sum_squares: f64 },
}

impl Sample {
    pub fn proportion(n: u64, conversions: u64) -> Self {
        Sample::Proportion {
            n,
            conversions: conversions as f64,
        }
    }

    pub fn n(self) -> u64 {
        match self {
            Sample::Proportion { n, .. } | Sample::Mean { n, .. } => n,
        }
    }

    pub fn mean(self) -> f64 {
        let (n, sum) = match self {
            Sample::Proportion { n, conversions } => (n, conversions),
            Sample::Mean { n, sum, .. } => (n, sum),
        };
        if n == 0 { 0.0 } else { sum / n as f64 }
    }

    pub fn variance(self) -> f64 {
        match self {
            Sample::Proportion { .. } => {
                let p = self.mean();
                p * (1.0 - p)
            }
            Sample::Mean { n, sum, sum_squares } => {
                if n <= 1 {
                    0.0
                } else {
                    let n = n as f64;
                    (sum_squares - sum * sum / n) / (n - 1.0)
                }
            }
        }
    }
}

/// Which difference a test estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Difference {
    /// (mean_b − mean_a) / mean_a — gbstats' default.
    Relative,
    /// mean_b − mean_a.
    Absolute,
}

/// Why gbstats would return its uninformative default instead of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Degenerate {
    /// gbstats `ZERO_NEGATIVE_BASELINE_VARIATION`: the control mean is 0.
    ZeroNegativeBaselineVariation,
    /// gbstats `ZERO_NEGATIVE_VARIANCE`: an arm has no variance (nobody or everybody converted).
    ZeroNegativeVariance,
}

impl Degenerate {
    /// gbstats' error message code.
    pub fn code(self) -> &'static str {
        match self {
            Degenerate::ZeroNegativeBaselineVariation => "ZERO_NEGATIVE_BASELINE_VARIATION",
            Degenerate::ZeroNegativeVariance => "ZERO_NEGATIVE_VARIANCE",
        }
    }

    /// What it means for a reader of the report.
    pub fn explain(self) -> &'static str {
        match self {
            Degenerate::ZeroNegativeBaselineVariation => {
                "the holdout has no conversions (baseline is 0): lift cannot be estimated yet"
            }
            Degenerate::ZeroNegativeVariance => {
                "an arm has no variance (no user or every user converted): lift cannot be estimated yet"
            }
        }
    }
}

/// A two-sided test's outcome, as gbstats' `FrequentistTestResult`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TestResult {
    pub estimate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub p_value: f64,
    /// Standard error of the estimate (gbstats `uplift.stddev`).
    pub stddev: f64,
    /// Welch–Satterthwaite degrees of freedom; `None` for a degenerate result.
    pub dof: Option<f64>,
    /// Set when this is gbstats' uninformative default.
    pub degenerate: Option<Degenerate>,
}

impl TestResult {
    fn default_output(reason: Degenerate) -> Self {
        TestResult {
            estimate: 0.0,
            ci_low: 0.0,
            ci_high: 0.0,
            p_value: 1.0,
            stddev: 0.0,
            dof: None,
            degenerate: Some(reason),
        }
    }

    /// The interval excludes 0 at the level the test was run at.
    pub fn is_significant(&self) -> bool {
        self.degenerate.is_none() && (self.ci_low > 0.0 || self.ci_high < 0.0)
    }
}

/// gbstats' `TwoSidedTTest(control, treatment, FrequentistConfig(alpha, difference_type)).compute_result()`.
pub fn two_sided_ttest(
    control: Sample,
    treatment: Sample,
    difference: Difference,
    confidence: ConfidenceLevel,
) -> TestResult {
    // The same checks, in the same order, as gbstats' `compute_result`.
    if control.mean() == 0.0 {
        return TestResult::default_output(Degenerate::ZeroNegativeBaselineVariation);
    }
    if control.variance() <= 0.0 || treatment.variance() <= 0.0 {
        return TestResult::default_output(Degenerate::ZeroNegativeVariance);
    }
    welch(control, treatment, difference, confidence)
        .unwrap_or_else(|| TestResult::default_output(Degenerate::ZeroNegativeVariance))
}

/// The Welch test itself, without gbstats' guards: used for guardrails, where a holdout with no
/// guardrail events at all is the normal case and a treatment with some is exactly what to flag.
/// `None` when the numbers are undefined (an arm with fewer than 2 users, no variance at all, or a
/// relative difference over a zero baseline).
pub fn welch(
    control: Sample,
    treatment: Sample,
    difference: Difference,
    confidence: ConfidenceLevel,
) -> Option<TestResult> {
    let (n_a, n_b) = (control.n() as f64, treatment.n() as f64);
    if n_a < 2.0 || n_b < 2.0 {
        return None;
    }
    let (mean_a, mean_b) = (control.mean(), treatment.mean());
    let (var_a, var_b) = (control.variance().max(0.0), treatment.variance().max(0.0));
    let (estimate, variance) = match difference {
        Difference::Relative => {
            if mean_a == 0.0 {
                return None;
            }
            (
                (mean_b - mean_a) / mean_a,
                var_b / (mean_a.powi(2) * n_b) + var_a * mean_b.powi(2) / (mean_a.powi(4) * n_a),
            )
        }
        Difference::Absolute => (mean_b - mean_a, var_b / n_b + var_a / n_a),
    };
    let dof = (var_b / n_b + var_a / n_a).powi(2)
        / (var_b.powi(2) / (n_b.powi(2) * (n_b - 1.0)) + var_a.powi(2) / (n_a.powi(2) * (n_a - 1.0)));
    if !(variance > 0.0 && dof.is_finite() && dof > 0.0) {
        return None;
    }
    let t = StudentsT::new(0.0, 1.0, dof).ok()?;
    let stddev = variance.sqrt();
    let critical = estimate / stddev;
    // gbstats writes 2 * (1 - cdf(|t|)); the survival function is the same number without the
    // cancellation for very small p-values.
    let p_value = (2.0 * t.sf(critical.abs())).min(1.0);
    let width = t.inverse_cdf(1.0 - confidence.alpha() / 2.0) * stddev;
    Some(TestResult {
        estimate,
        ci_low: estimate - width,
        ci_high: estimate + width,
        p_value,
        stddev,
        dof: Some(dof),
        degenerate: None,
    })
}

/// An estimate with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

impl From<&TestResult> for Interval {
    fn from(r: &TestResult) -> Self {
        Interval {
            estimate: r.estimate,
            ci_low: r.ci_low,
            ci_high: r.ci_high,
        }
    }
}

/// Conversions the campaign caused among treated users: absolute lift × treatment users, with the
/// absolute lift's interval scaled the same way.
pub fn incremental_conversions(absolute: &TestResult, treatment_users: u64) -> Interval {
    let n = treatment_users as f64;
    Interval {
        estimate: absolute.estimate * n,
        ci_low: absolute.ci_low * n,
        ci_high: absolute.ci_high * n,
    }
}

/// Sample-ratio-mismatch check between the treatment and holdout arms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SrmCheck {
    /// The holdout share the campaign is configured for (of treatment + holdout users).
    pub expected_share: f64,
    /// The holdout share observed.
    pub observed_share: f64,
    pub p_value: f64,
    /// `p_value >= SRM_THRESHOLD`.
    pub ok: bool,
}

/// Below this p-value the split is reported as broken (GrowthBook's default threshold).
pub const SRM_THRESHOLD: f64 = 0.001;

/// gbstats' `check_srm([treatment, holdout], [1 − share, share])`: chi-square goodness-of-fit with
/// one degree of freedom. Arms with an expected weight of 0 are left out of the sum, as gbstats does.
pub fn srm_check(treatment_users: u64, holdout_users: u64, expected_holdout_share: f64) -> SrmCheck {
    let total = (treatment_users + holdout_users) as f64;
    let observed_share = if total > 0.0 {
        holdout_users as f64 / total
    } else {
        0.0
    };
    let p_value = if total > 0.0 {
        let weights = [1.0 - expected_holdout_share, expected_holdout_share];
        let observed = [treatment_users as f64, holdout_users as f64];
        let x: f64 = weights
            .iter()
            .zip(observed)
            .filter(|(w, _)| **w > 0.0)
            .map(|(w, o)| {
                let e = w * total;
                (o - e).powi(2) / e
            })
            .sum();
        ChiSquared::new(1.0).map(|c| c.sf(x)).unwrap_or(1.0)
    } else {
        1.0
    };
    SrmCheck {
        expected_share: expected_holdout_share,
        observed_share,
        p_value,
        ok: p_value >= SRM_THRESHOLD,
    }
}

/// The smallest true effect the test would detect with [`MDE_POWER`] power, two-sided at the
/// given confidence, for a proportion metric with this base rate and these arm sizes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MinimumDetectableEffect {
    pub power: f64,
    pub base_rate: f64,
    /// In rate points (e.g. 0.004 = 0.4 percentage points).
    pub absolute: f64,
    /// Relative to the base rate (e.g. 0.08 = 8%).
    pub relative: f64,
}

/// `(z₁₋α/₂ + z_power) · sqrt(p(1−p)(1/n_control + 1/n_treatment))`, normal approximation.
/// `None` when an arm is empty or the base rate is 0 or 1 (no variance to plan with).
pub fn minimum_detectable_effect(
    base_rate: f64,
    control_users: u64,
    treatment_users: u64,
    confidence: ConfidenceLevel,
) -> Option<MinimumDetectableEffect> {
    if control_users == 0 || treatment_users == 0 || !(base_rate > 0.0 && base_rate < 1.0) {
        return None;
    }
    let normal = Normal::standard();
    let z = normal.inverse_cdf(1.0 - confidence.alpha() / 2.0) + normal.inverse_cdf(MDE_POWER);
    let se =
        (base_rate * (1.0 - base_rate) * (1.0 / control_users as f64 + 1.0 / treatment_users as f64)).sqrt();
    let absolute = z * se;
    Some(MinimumDetectableEffect {
        power: MDE_POWER,
        base_rate,
        absolute,
        relative: absolute / base_rate,
    })
}

/// Wilson score interval for one arm's rate: stays inside [0, 1] and behaves at 0 and n conversions.
pub fn rate_interval(conversions: u64, users: u64, confidence: ConfidenceLevel) -> Interval {
    if users == 0 {
        return Interval {
            estimate: 0.0,
            ci_low: 0.0,
            ci_high: 0.0,
        };
    }
    let n = users as f64;
    let p = conversions as f64 / n;
    let z = Normal::standard().inverse_cdf(1.0 - confidence.alpha() / 2.0);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Interval {
        estimate: p,
        ci_low: (centre - half).max(0.0),
        ci_high: (centre + half).min(1.0),
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Fixtures {
        gbstats_version: String,
        proportion: Vec<Case>,
        mean: Vec<Case>,
        srm: Vec<SrmCase>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        control: Counts,
        treatment: Counts,
        confidence: f64,
        relative: Expected,
        absolute: Expected,
    }

    #[derive(Deserialize)]
    struct Counts {
        n: u64,
        sum: f64,
        sum_squares: Option<f64>,
    }

    #[derive(Deserialize)]
    struct Expected {
        estimate: f64,
        ci_low: f64,
        ci_high: f64,
        p_value: f64,
        stddev: f64,
        error: Option<String>,
    }

    #[derive(Deserialize)]
    struct SrmCase {
        name: String,
        treatment: u64,
        holdout: u64,
        expected_holdout_share: f64,
        p_value: f64,
    }

    fn fixtures() -> Fixtures {
        let text = include_str!("../../tests/fixtures/lift/gbstats.json");
        serde_json::from_str(text).expect("fixture parses")
    }

    fn sample(c: &Counts) -> Sample {
        match c.sum_squares {
            Some(sum_squares) => Sample::Mean {
                n: c.n,
                sum: c.sum,
                sum_squares,
            },
            None => Sample::Proportion {
                n: c.n,
                conversions: c.sum,
            },
        }
    }

    fn close(name: &str, what: &str, got: f64, want: f64) {
        assert!(
            (got - want).abs() <= 1e-6,
            "{name}: {what} = {got}, gbstats says {want} (diff {:e})",
            (got - want).abs()
        );
    }

    fn check(case: &Case) {
        let confidence = ConfidenceLevel::new(case.confidence).expect("valid level");
        let (a, b) = (sample(&case.control), sample(&case.treatment));
        for (difference, want) in [
            (Difference::Relative, &case.relative),
            (Difference::Absolute, &case.absolute),
        ] {
            let got = two_sided_ttest(a, b, difference, confidence);
            let name = format!("{} ({difference:?})", case.name);
            close(&name, "estimate", got.estimate, want.estimate);
            close(&name, "ci_low", got.ci_low, want.ci_low);
            close(&name, "ci_high", got.ci_high, want.ci_high);
            close(&name, "p_value", got.p_value, want.p_value);
            close(&name, "stddev", got.stddev, want.stddev);
            assert_eq!(
                got.degenerate.map(Degenerate::code),
                want.error.as_deref(),
                "{name}: degenerate reason"
            );
        }
    }

    #[test]
    fn proportion_tests_equal_gbstats() {
        let f = fixtures();
        assert_eq!(f.gbstats_version, "0.8.0");
        assert!(f.proportion.len() >= 8);
        f.proportion.iter().for_each(check);
    }

    #[test]
    fn mean_tests_equal_gbstats() {
        let f = fixtures();
        assert!(!f.mean.is_empty());
        f.mean.iter().for_each(check);
    }

    #[test]
    fn srm_equals_gbstats() {
        for c in fixtures().srm {
            let got = srm_check(c.treatment, c.holdout, c.expected_holdout_share);
            close(&c.name, "srm p_value", got.p_value, c.p_value);
            assert_eq!(got.ok, c.p_value >= SRM_THRESHOLD, "{}", c.name);
        }
    }

    #[test]
    fn stack_reference_numbers() {
        // STACK.md §3, printed by gbstats 0.8.0 itself.
        let r = two_sided_ttest(
            Sample::proportion(10_000, 480),
            Sample::proportion(10_000, 520),
            Difference::Relative,
            ConfidenceLevel::DEFAULT,
        );
        close("stack", "estimate", r.estimate, 0.08333333333333326);
        close("stack", "ci_low", r.ci_low, -0.0476736114663347);
        close("stack", "ci_high", r.ci_high, 0.21434027813300122);
        close("stack", "p_value", r.p_value, 0.21248329880465833);
        close("stack", "dof", r.dof.unwrap_or_default(), 19969.319006360423);
    }

    #[test]
    fn confidence_level_is_validated() {
        assert!(ConfidenceLevel::new(0.95).is_ok());
        for bad in [0.0, 1.0, -0.5, 95.0, f64::NAN] {
            assert!(ConfidenceLevel::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn incremental_conversions_scale_the_absolute_lift() {
        let abs = two_sided_ttest(
            Sample::proportion(1_000, 50),
            Sample::proportion(9_000, 540),
            Difference::Absolute,
            ConfidenceLevel::DEFAULT,
        );
        let inc = incremental_conversions(&abs, 9_000);
        close("inc", "estimate", inc.estimate, 0.01 * 9_000.0);
        close("inc", "ci_low", inc.ci_low, abs.ci_low * 9_000.0);
        assert!(inc.ci_low < inc.estimate && inc.estimate < inc.ci_high);
    }

    #[test]
    fn mde_shrinks_with_sample_size() {
        let small = minimum_detectable_effect(0.05, 1_000, 9_000, ConfidenceLevel::DEFAULT).expect("mde");
        let large = minimum_detectable_effect(0.05, 100_000, 900_000, ConfidenceLevel::DEFAULT).expect("mde");
        assert!(large.relative < small.relative / 9.0);
        // Textbook: 2,000 users per arm at 5% → (1.95996 + 0.84162)·sqrt(0.0475·0.001) = 0.019308.
        let m = minimum_detectable_effect(0.05, 2_000, 2_000, ConfidenceLevel::DEFAULT).expect("mde");
        close("mde", "absolute", m.absolute, 0.019308);
        assert!(minimum_detectable_effect(0.0, 10, 10, ConfidenceLevel::DEFAULT).is_none());
    }

    #[test]
    fn wilson_interval_stays_in_bounds() {
        let zero = rate_interval(0, 50, ConfidenceLevel::DEFAULT);
        assert_eq!(zero.ci_low, 0.0);
        assert!(zero.ci_high > 0.0 && zero.ci_high < 0.1);
        let all = rate_interval(50, 50, ConfidenceLevel::DEFAULT);
        assert!(all.ci_high <= 1.0 && all.ci_low > 0.9);
    }

    #[test]
    fn guardrail_welch_handles_a_clean_holdout() {
        // No guardrail events in the holdout is normal; gbstats would give up, `welch` must not.
        let r = welch(
            Sample::proportion(1_000, 0),
            Sample::proportion(9_000, 60),
            Difference::Absolute,
            ConfidenceLevel::DEFAULT,
        )
        .expect("defined");
        assert!(r.estimate > 0.0 && r.p_value < 0.05, "{r:?}");
    }

    /// Conversions among `n` users at rate `p`, by inverting the binomial CDF with one uniform draw
    /// (exact, and ~100 steps instead of `n` Bernoulli draws: keeps the test fast in debug builds).
    fn binomial(rng: &mut StdRng, n: u64, p: f64) -> u64 {
        let u: f64 = rng.r#gen();
        let ratio = p / (1.0 - p);
        let mut pmf = (1.0 - p).powf(n as f64);
        let mut cdf = pmf;
        let mut k = 0;
        while cdf < u && k < n {
            pmf *= (n - k) as f64 / (k + 1) as f64 * ratio;
            k += 1;
            cdf += pmf;
        }
        k
    }

    /// A/A and planted-lift simulation: the test is calibrated, and its intervals cover the truth.
    #[test]
    fn simulated_campaigns_are_calibrated() {
        let mut rng = StdRng::seed_from_u64(20_260_105);
        let (runs, n, base) = (2_000, 2_000, 0.05);
        let mut false_positives = 0;
        let mut covered = 0;
        let true_lift = 0.10;
        for _ in 0..runs {
            let control = Sample::proportion(n, binomial(&mut rng, n, base));
            let null = Sample::proportion(n, binomial(&mut rng, n, base));
            let r = two_sided_ttest(control, null, Difference::Relative, ConfidenceLevel::DEFAULT);
            if r.p_value < 0.05 {
                false_positives += 1;
            }
            let lifted = Sample::proportion(n, binomial(&mut rng, n, base * (1.0 + true_lift)));
            let r = two_sided_ttest(control, lifted, Difference::Relative, ConfidenceLevel::DEFAULT);
            if r.ci_low <= true_lift && true_lift <= r.ci_high {
                covered += 1;
            }
        }
        let fpr = f64::from(false_positives) / f64::from(runs);
        let coverage = f64::from(covered) / f64::from(runs);
        println!("A/A false-positive rate {fpr:.4}, coverage of a 10% lift {coverage:.4}");
        assert!((0.035..=0.065).contains(&fpr), "false-positive rate {fpr}");
        assert!(coverage >= 0.93, "coverage {coverage}");
    }
}
