//! Lift reports: each campaign's treatment arm against its holdout, as DESIGN.md's "Lift report".
//!
//! Takes the rule set (goal, holdout share, guardrails), the store's counts
//! ([`Store::lift_counts`]) and a confidence level; hands back one [`LiftReport`] per campaign,
//! which serialises to the JSON contract and which [`super::report`] renders. [`lift_reports`]
//! does the I/O; [`build_report`] is the pure part, from counts to numbers and warnings.
//!
//! `p_value` and `relative_lift` come from gbstats' relative test (delta-method variance),
//! `absolute_lift` and `incremental_conversions` from its absolute test: see [`super::stats`].

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::stats::{
    self, ConfidenceLevel, Difference, Interval, MinimumDetectableEffect, Sample, SrmCheck, StatsError,
    TestResult,
};
use crate::{
    rules::{Campaign, Goal, RuleSet},
    store::{ArmCounts, LiftCounts, LiftQuery, Store, StoreError},
};

/// Below these an arm is too small for the normal approximations behind the test.
pub const MIN_ARM_USERS: u64 = 100;
pub const MIN_ARM_CONVERSIONS: u64 = 10;

/// How the numbers were computed, stated in every report.
pub const METHOD: &str = "frequentist two-sided Welch t-test as in GrowthBook gbstats 0.8.0 \
    (Welch-Satterthwaite degrees of freedom; relative lift and p-value with delta-method variance, \
    absolute lift from the absolute test); intent-to-treat on campaign assignments, treatment vs holdout";

#[derive(Debug, thiserror::Error)]
pub enum LiftError {
    #[error("unknown campaign `{0}`")]
    UnknownCampaign(String),
    #[error("campaign `{0}` has no goal, so it has no lift to report (add `goal: {{event: ...}}`)")]
    NoGoal(String),
    #[error(transparent)]
    Confidence(#[from] StatsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LiftError {
    /// True when the request was wrong (answer 4xx / exit as a usage error), not the database.
    pub fn is_usage(&self) -> bool {
        !matches!(self, LiftError::Store(_))
    }
}

/// One campaign's lift. The first fields are DESIGN.md's contract, in its order; the rest are
/// additions readers asked for (delivery, revenue, guardrails, MDE, the daily series).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiftReport {
    pub campaign: String,
    pub window: Window,
    pub arms: Arms,
    pub absolute_lift: Interval,
    pub relative_lift: Interval,
    pub p_value: f64,
    pub incremental_conversions: Interval,
    pub srm: SrmCheck,
    pub confidence_level: f64,
    pub method: String,
    pub warnings: Vec<String>,
    // --- additions ---
    pub name: String,
    pub goal: GoalSummary,
    /// The absolute test's p-value (differs from `p_value`, which is the relative test's).
    pub absolute_p_value: f64,
    /// Minimum detectable effect at 80% power for the observed base rate and arm sizes.
    pub mde: Option<MinimumDetectableEffect>,
    /// Value per user (e.g. revenue), when the goal has a `value:` path.
    pub value: Option<ValueLift>,
    pub guardrails: Vec<GuardrailLift>,
    /// Cumulative counts and lift at the end of each UTC day.
    pub daily: Vec<DailyPoint>,
    /// Predicted against fixed send times, for a campaign with `send_time_test`.
    pub send_time_test: Option<SendTimeTest>,
}

impl SendTimeTest {
    /// The two outcomes compared: (name, comparison, predicted rate, fixed rate).
    pub fn outcomes(&self) -> [(&'static str, &Comparison, f64, f64); 2] {
        [
            (
                "conversion",
                &self.conversion,
                self.predicted.conversion_rate,
                self.fixed.conversion_rate,
            ),
            (
                "engagement",
                &self.engagement,
                self.predicted.engagement_rate,
                self.fixed.engagement_rate,
            ),
        ]
    }
}

/// A campaign's send-time test: treatment users at the predicted time against those at the
/// fixed time (the control), with the same tests as holdout lift, for conversion and engagement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendTimeTest {
    /// The share configured for the fixed arm.
    pub share: f64,
    /// The fixed local time, `HH:MM`.
    pub fixed_time: String,
    pub predicted: SendTimeArm,
    pub fixed: SendTimeArm,
    pub conversion: Comparison,
    pub engagement: Comparison,
    pub srm: SrmCheck,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendTimeArm {
    pub users: u64,
    pub conversions: u64,
    pub conversion_rate: f64,
    pub engaged: u64,
    pub engagement_rate: f64,
}

/// Predicted vs fixed: relative lift and p-value from the relative test (as the report's headline),
/// absolute lift from the absolute test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub relative_lift: Interval,
    pub absolute_lift: Interval,
    pub p_value: f64,
}

fn compare(control: (u64, u64), treatment: (u64, u64), confidence: ConfidenceLevel) -> Comparison {
    let c = Sample::proportion(control.0, control.1);
    let t = Sample::proportion(treatment.0, treatment.1);
    let relative = stats::two_sided_ttest(c, t, Difference::Relative, confidence);
    let absolute = stats::two_sided_ttest(c, t, Difference::Absolute, confidence);
    Comparison {
        relative_lift: Interval::from(&relative),
        absolute_lift: Interval::from(&absolute),
        p_value: relative.p_value,
    }
}

/// The send-time test section from its counts.
pub fn send_time_test(
    campaign: &Campaign,
    predicted: &crate::store::SendTimeArmCounts,
    fixed: &crate::store::SendTimeArmCounts,
    confidence: ConfidenceLevel,
) -> SendTimeTest {
    let arm = |a: &crate::store::SendTimeArmCounts| SendTimeArm {
        users: a.users,
        conversions: a.conversions,
        conversion_rate: rate(a.conversions, a.users),
        engaged: a.engaged,
        engagement_rate: rate(a.engaged, a.users),
    };
    SendTimeTest {
        share: campaign.send_time_test.fraction(),
        fixed_time: campaign.send_time_fixed.format("%H:%M").to_string(),
        predicted: arm(predicted),
        fixed: arm(fixed),
        conversion: compare(
            (fixed.users, fixed.conversions),
            (predicted.users, predicted.conversions),
            confidence,
        ),
        engagement: compare(
            (fixed.users, fixed.engaged),
            (predicted.users, predicted.engaged),
            confidence,
        ),
        srm: stats::srm_check(predicted.users, fixed.users, campaign.send_time_test.fraction()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Arms {
    pub treatment: ArmSummary,
    pub holdout: ArmSummary,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmSummary {
    pub users: u64,
    pub conversions: u64,
    pub rate: f64,
    /// Sum of goal values / users; `null` when the goal has no `value:`.
    pub value_per_user: Option<f64>,
    /// Wilson interval of `rate` at the report's confidence level.
    pub rate_ci_low: f64,
    pub rate_ci_high: f64,
    /// Assignment rows (users can enter more than once).
    pub assignments: u64,
    /// Users with a message sent or scheduled; 0 for the holdout.
    pub delivered: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoalSummary {
    pub event: String,
    /// Attribution window after each assignment, in seconds.
    pub within_seconds: i64,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueLift {
    /// The goal's value path, e.g. `properties.revenue`.
    pub path: String,
    pub absolute_lift: Interval,
    pub relative_lift: Interval,
    /// From the relative test, like the report's `p_value`.
    pub p_value: f64,
    /// Value caused among treated users: absolute lift × treatment users.
    pub incremental_value: Interval,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailLift {
    pub event: String,
    /// Users with the event after their assignment.
    pub treatment_users: u64,
    pub holdout_users: u64,
    pub treatment_rate: f64,
    pub holdout_rate: f64,
    /// Treatment rate − holdout rate; `null` when nobody in either arm had the event.
    pub absolute_lift: Option<Interval>,
    pub p_value: Option<f64>,
    /// Treatment is significantly worse (higher rate) at the report's confidence level.
    pub worse: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DailyPoint {
    pub date: NaiveDate,
    pub treatment_users: u64,
    pub treatment_conversions: u64,
    pub holdout_users: u64,
    pub holdout_conversions: u64,
    /// Cumulative relative lift to the end of this day; `null` while gbstats cannot estimate it.
    pub relative_lift: Option<Interval>,
}

/// Lift reports for every campaign with a goal (or only `campaign`), for assignments made in
/// `[since, now]` (`since = None`: all history). `confidence` is two-sided, e.g. 0.95.
pub async fn lift_reports(
    store: &Store,
    rules: &RuleSet,
    campaign: Option<&str>,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    confidence: f64,
) -> Result<Vec<LiftReport>, LiftError> {
    let confidence = ConfidenceLevel::new(confidence)?;
    let campaigns: Vec<(&Campaign, &Goal)> = match campaign {
        Some(id) => {
            let c = rules
                .campaigns
                .get(id)
                .ok_or_else(|| LiftError::UnknownCampaign(id.to_string()))?;
            let goal = c.goal.as_ref().ok_or_else(|| LiftError::NoGoal(id.to_string()))?;
            vec![(c.as_ref(), goal)]
        }
        None => rules
            .campaigns
            .values()
            .filter_map(|c| c.goal.as_ref().map(|g| (c.as_ref(), g)))
            .collect(),
    };
    let mut reports = Vec::with_capacity(campaigns.len());
    for (campaign, goal) in campaigns {
        let guardrails = guardrail_events(campaign, rules);
        let counts = store
            .lift_counts(&LiftQuery {
                campaign_id: &campaign.id,
                goal_event: &goal.event,
                goal_within: goal.within,
                goal_value: goal.value.as_deref(),
                guardrails: &guardrails,
                from: since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
                to: now,
            })
            .await?;
        let window = Window {
            from: since.or(counts.first_assignment).unwrap_or(now),
            to: now,
        };
        let mut report = build_report(campaign, goal, &counts, window, confidence);
        if campaign.send_time_test.basis_points > 0 {
            let (predicted, fixed) = store
                .send_time_test_counts(&LiftQuery {
                    campaign_id: &campaign.id,
                    goal_event: &goal.event,
                    goal_within: goal.within,
                    goal_value: None,
                    guardrails: &[],
                    from: since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
                    to: now,
                })
                .await?;
            report.send_time_test = Some(send_time_test(campaign, &predicted, &fixed, confidence));
        }
        reports.push(report);
    }
    Ok(reports)
}

/// The campaign's guardrails followed by the global ones, without repeats.
fn guardrail_events(campaign: &Campaign, rules: &RuleSet) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in campaign.guardrails.iter().chain(&rules.global.guardrails) {
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    out
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn arm_summary(a: &ArmCounts, with_value: bool, confidence: ConfidenceLevel) -> ArmSummary {
    let ci = stats::rate_interval(a.conversions, a.users, confidence);
    ArmSummary {
        users: a.users,
        conversions: a.conversions,
        rate: rate(a.conversions, a.users),
        value_per_user: with_value.then(|| {
            if a.users == 0 {
                0.0
            } else {
                a.value_sum / a.users as f64
            }
        }),
        rate_ci_low: ci.ci_low,
        rate_ci_high: ci.ci_high,
        assignments: a.assignments,
        delivered: a.delivered,
    }
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// From counts to a report: the pure part of [`lift_reports`].
pub fn build_report(
    campaign: &Campaign,
    goal: &Goal,
    counts: &LiftCounts,
    window: Window,
    confidence: ConfidenceLevel,
) -> LiftReport {
    let (t, h) = (&counts.treatment, &counts.holdout);
    let control = Sample::proportion(h.users, h.conversions);
    let treatment = Sample::proportion(t.users, t.conversions);
    let relative = stats::two_sided_ttest(control, treatment, Difference::Relative, confidence);
    let absolute = stats::two_sided_ttest(control, treatment, Difference::Absolute, confidence);
    let srm = stats::srm_check(t.users, h.users, campaign.holdout.fraction());
    let base_rate = if h.users > 0 && h.conversions > 0 && h.conversions < h.users {
        rate(h.conversions, h.users)
    } else {
        rate(t.conversions + h.conversions, t.users + h.users)
    };
    let mde = stats::minimum_detectable_effect(base_rate, h.users, t.users, confidence);

    let mut warnings = Vec::new();
    if campaign.holdout.basis_points == 0 {
        warnings.push("holdout is 0%: no lift can be measured for this campaign".to_string());
    }
    let empty = t.users + h.users == 0;
    if empty {
        warnings.push("no treatment or holdout assignments in the window".to_string());
    }
    // With nothing assigned, that one warning says it all; the per-arm ones would only repeat it.
    for (arm, a) in [("treatment", t), ("holdout", h)].into_iter().filter(|_| !empty) {
        if a.users < MIN_ARM_USERS {
            warnings.push(format!(
                "{arm} has {} users (fewer than {MIN_ARM_USERS}): too few for a reliable estimate",
                a.users
            ));
        }
        if a.conversions < MIN_ARM_CONVERSIONS {
            warnings.push(format!(
                "{arm} has {} conversions (fewer than {MIN_ARM_CONVERSIONS}): too few for a reliable estimate",
                a.conversions
            ));
        }
    }
    if !srm.ok {
        warnings.push(format!(
            "sample ratio mismatch: the holdout is {:.2}% of users, {:.2}% expected (p = {:.2e}); \
             assignment or logging is broken, do not trust this lift",
            srm.observed_share * 100.0,
            srm.expected_share * 100.0,
            srm.p_value
        ));
    }
    if let Some(reason) = relative.degenerate.filter(|_| !empty) {
        warnings.push(format!("{} (gbstats: {})", reason.explain(), reason.code()));
    }
    if let Some(m) = mde
        && relative.degenerate.is_none()
        && absolute.estimate.abs() < m.absolute
    {
        warnings.push(format!(
            "sample too small to detect the observed effect: observed {} relative, minimum detectable \
             effect {} at {:.0}% power",
            pct(relative.estimate),
            pct(m.relative).trim_start_matches('+'),
            m.power * 100.0
        ));
    }
    if counts.users_in_both_arms > 0 {
        warnings.push(format!(
            "{} users have assignments in both arms (was the holdout share changed?); each is counted \
             in the arm of their first assignment",
            counts.users_in_both_arms
        ));
    }
    if counts.values_not_numeric > 0
        && let Some(path) = &goal.value
    {
        warnings.push(format!(
            "{} goal events have no number at `{path}`; they count as conversions with value 0",
            counts.values_not_numeric
        ));
    }

    let value = goal.value.as_ref().map(|path| {
        let control = Sample::Mean {
            n: h.users,
            sum: h.value_sum,
            sum_squares: h.value_sum_squares,
        };
        let treatment = Sample::Mean {
            n: t.users,
            sum: t.value_sum,
            sum_squares: t.value_sum_squares,
        };
        let relative = stats::two_sided_ttest(control, treatment, Difference::Relative, confidence);
        let absolute = stats::two_sided_ttest(control, treatment, Difference::Absolute, confidence);
        if let Some(reason) = relative.degenerate
            && t.users + h.users > 0
        {
            warnings.push(format!(
                "value per user (`{path}`): {} (gbstats: {})",
                reason.explain(),
                reason.code()
            ));
        }
        ValueLift {
            path: path.clone(),
            absolute_lift: Interval::from(&absolute),
            relative_lift: Interval::from(&relative),
            p_value: relative.p_value,
            incremental_value: stats::incremental_conversions(&absolute, t.users),
        }
    });

    let guardrails: Vec<GuardrailLift> = t
        .guardrails
        .iter()
        .map(|(event, &treated)| {
            let held = h.guardrails.get(event).copied().unwrap_or(0);
            let test = stats::welch(
                Sample::proportion(h.users, held),
                Sample::proportion(t.users, treated),
                Difference::Absolute,
                confidence,
            );
            let worse = test.is_some_and(|r| r.estimate > 0.0 && r.p_value < confidence.alpha());
            let g = GuardrailLift {
                event: event.clone(),
                treatment_users: treated,
                holdout_users: held,
                treatment_rate: rate(treated, t.users),
                holdout_rate: rate(held, h.users),
                absolute_lift: test.as_ref().map(Interval::from),
                p_value: test.map(|r| r.p_value),
                worse,
            };
            if worse {
                warnings.push(format!(
                    "guardrail `{event}`: treatment is significantly worse ({:.2}% vs {:.2}% in the holdout, p = {:.2e})",
                    g.treatment_rate * 100.0,
                    g.holdout_rate * 100.0,
                    g.p_value.unwrap_or(1.0)
                ));
            }
            g
        })
        .collect();

    let daily = counts
        .daily
        .iter()
        .map(|d| {
            let r: TestResult = stats::two_sided_ttest(
                Sample::proportion(d.holdout_users, d.holdout_conversions),
                Sample::proportion(d.treatment_users, d.treatment_conversions),
                Difference::Relative,
                confidence,
            );
            DailyPoint {
                date: d.date,
                treatment_users: d.treatment_users,
                treatment_conversions: d.treatment_conversions,
                holdout_users: d.holdout_users,
                holdout_conversions: d.holdout_conversions,
                relative_lift: r.degenerate.is_none().then(|| Interval::from(&r)),
            }
        })
        .collect();

    let with_value = goal.value.is_some();
    LiftReport {
        campaign: campaign.id.clone(),
        window,
        arms: Arms {
            treatment: arm_summary(t, with_value, confidence),
            holdout: arm_summary(h, with_value, confidence),
        },
        absolute_lift: Interval::from(&absolute),
        relative_lift: Interval::from(&relative),
        p_value: relative.p_value,
        incremental_conversions: stats::incremental_conversions(&absolute, t.users),
        srm,
        confidence_level: confidence.level(),
        method: METHOD.to_string(),
        warnings,
        name: campaign.name.clone(),
        goal: GoalSummary {
            event: goal.event.clone(),
            within_seconds: goal.within.num_seconds(),
            value: goal.value.clone(),
        },
        absolute_p_value: absolute.p_value,
        mde,
        value,
        guardrails,
        daily,
        send_time_test: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DailyCounts;

    fn campaign() -> std::sync::Arc<Campaign> {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("c.yaml"),
            "campaign: c\nname: C\nwhen:\n  event: e\nthen:\n  channels: [email]\n  email:\n    subject: s\n    body: b\n\
             holdout: 10%\ngoal:\n  event: g\n  within: 1d\n",
        )
        .expect("rule written");
        let set = crate::rules::load_dir(dir.path()).expect("rule compiles");
        std::sync::Arc::clone(&set.campaigns["c"])
    }

    fn counts(t: (u64, u64), h: (u64, u64)) -> LiftCounts {
        LiftCounts {
            treatment: ArmCounts {
                users: t.0,
                conversions: t.1,
                ..ArmCounts::default()
            },
            holdout: ArmCounts {
                users: h.0,
                conversions: h.1,
                ..ArmCounts::default()
            },
            daily: vec![DailyCounts {
                date: NaiveDate::from_ymd_opt(2026, 1, 5).expect("date"),
                treatment_users: t.0,
                treatment_conversions: t.1,
                holdout_users: h.0,
                holdout_conversions: h.1,
            }],
            ..LiftCounts::default()
        }
    }

    fn report(t: (u64, u64), h: (u64, u64)) -> LiftReport {
        let c = campaign();
        let goal = c.goal.clone().expect("goal");
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let window = Window { from: at, to: at };
        build_report(&c, &goal, &counts(t, h), window, ConfidenceLevel::DEFAULT)
    }

    #[test]
    fn a_healthy_large_campaign_has_no_warnings() {
        let r = report((90_000, 5_400), (10_000, 500));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(r.srm.ok);
        assert!(
            r.relative_lift.ci_low > 0.0,
            "20% lift on 100k users is significant"
        );
        assert_eq!(
            r.daily[0].relative_lift,
            Some(r.relative_lift),
            "the last day's cumulative lift is the total"
        );
    }

    #[test]
    fn broken_splits_and_tiny_arms_are_warned_about() {
        let r = report((8_000, 400), (2_000, 100));
        assert!(!r.srm.ok);
        assert!(
            r.warnings.iter().any(|w| w.starts_with("sample ratio mismatch")),
            "{:?}",
            r.warnings
        );

        let r = report((50, 0), (5, 0));
        assert_eq!(
            (r.relative_lift.estimate, r.p_value),
            (0.0, 1.0),
            "gbstats' default"
        );
        for needle in [
            "treatment has 50 users",
            "holdout has 0 conversions",
            "ZERO_NEGATIVE_BASELINE_VARIATION",
        ] {
            assert!(
                r.warnings.iter().any(|w| w.contains(needle)),
                "{needle}: {:?}",
                r.warnings
            );
        }
        assert!(r.daily[0].relative_lift.is_none());
    }

    #[test]
    fn small_effects_on_small_samples_are_flagged_as_undetectable() {
        let r = report((900, 100), (100, 10));
        assert!(r.mde.is_some_and(|m| m.relative > 0.5));
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("sample too small to detect the observed effect")),
            "{:?}",
            r.warnings
        );
    }
}
