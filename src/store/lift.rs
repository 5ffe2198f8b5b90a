//! Reading what a lift report needs: per-arm users, conversions, goal values and guardrail events
//! for one campaign over a window, and the cumulative daily series behind the report's chart.
//!
//! Read-only. Attribution is intent-to-treat on assignments: every user with a treatment or holdout
//! assignment in the window counts in their arm whether or not a message went out. A user's arm is
//! the arm of their first assignment in the window (the hash makes it stable; only an edited
//! holdout share can move a user, and then they stay where they were first counted). A user
//! converts when a goal event happens in `(assigned_at, assigned_at + within]` after any of their
//! assignments in the window, and no later than the window's end; each goal event counts once.
//! Global-control assignments are not part of campaign lift and are left out.
//!
//! The SQL is the same on SQLite and PostgreSQL; goal values are summed in Rust because JSON
//! extraction differs between the two.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Result, Store, with_db};
use crate::clock::{from_millis, to_millis};

/// What to count: one campaign's goal and guardrails over `[from, to]`.
#[derive(Debug, Clone)]
pub struct LiftQuery<'a> {
    pub campaign_id: &'a str,
    pub goal_event: &'a str,
    pub goal_within: Duration,
    /// Dotted path to a number in the goal event, e.g. `properties.revenue`.
    pub goal_value: Option<&'a str>,
    pub guardrails: &'a [String],
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// One arm's counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArmCounts {
    /// Distinct users with an assignment in this arm in the window.
    pub users: u64,
    /// Users with at least one attributed goal event.
    pub conversions: u64,
    /// Sum over users of the goal value of their attributed goal events.
    pub value_sum: f64,
    /// Sum over users of the square of that per-user sum.
    pub value_sum_squares: f64,
    /// Assignment rows (a user who entered several times has several).
    pub assignments: u64,
    /// Users with a message sent or scheduled (assignment status `delivered` or `scheduled`).
    /// Always 0 for the holdout, whose assignments are `held_out`.
    pub delivered: u64,
    /// Assignment rows by status (`scheduled`, `delivered`, `held_out`, `suppressed`, `capped`, `failed`).
    pub statuses: BTreeMap<String, u64>,
    /// Guardrail event name → users with at least one such event after their assignment.
    pub guardrails: BTreeMap<String, u64>,
}

/// Cumulative counts at the end of one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DailyCounts {
    pub date: NaiveDate,
    pub treatment_users: u64,
    pub treatment_conversions: u64,
    pub holdout_users: u64,
    pub holdout_conversions: u64,
}

/// Everything a lift report reads from the store for one campaign.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LiftCounts {
    pub treatment: ArmCounts,
    pub holdout: ArmCounts,
    /// The first assignment in the window, if any.
    pub first_assignment: Option<DateTime<Utc>>,
    /// Users with assignments in both arms (counted in the arm of their first assignment).
    pub users_in_both_arms: u64,
    /// Goal events whose value path was missing or not a number (counted as conversions, value 0).
    pub values_not_numeric: u64,
    pub daily: Vec<DailyCounts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArmKey {
    Treatment,
    Holdout,
}

struct UserState {
    arm: ArmKey,
    first_assigned: i64,
    first_conversion: Option<i64>,
    value: f64,
    delivered: bool,
    both_arms: bool,
}

impl Store {
    /// Counts for one campaign's lift report. See the module docs for the attribution rules.
    pub async fn lift_counts(&self, q: &LiftQuery<'_>) -> Result<LiftCounts> {
        let (from, to) = (to_millis(q.from), to_millis(q.to));
        let within = q.goal_within.num_milliseconds();

        let assignments: Vec<(String, String, String, i64)> = with_db!(self, |pool| {
            sqlx::query_as(
                "SELECT user_id, arm, status, assigned_at FROM assignments
                 WHERE campaign_id = $1 AND assigned_at >= $2 AND assigned_at <= $3
                   AND arm IN ('treatment', 'holdout')
                 ORDER BY assigned_at, id",
            )
            .bind(q.campaign_id)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        });

        let mut out = LiftCounts::default();
        let mut users: HashMap<String, UserState> = HashMap::new();
        for (user_id, arm, status, assigned_at) in assignments {
            let arm = if arm == "holdout" {
                ArmKey::Holdout
            } else {
                ArmKey::Treatment
            };
            let counts = match arm {
                ArmKey::Treatment => &mut out.treatment,
                ArmKey::Holdout => &mut out.holdout,
            };
            counts.assignments += 1;
            let delivered = matches!(status.as_str(), "delivered" | "scheduled");
            *counts.statuses.entry(status).or_default() += 1;
            out.first_assignment.get_or_insert(from_millis(assigned_at));
            let state = users.entry(user_id).or_insert(UserState {
                arm,
                first_assigned: assigned_at,
                first_conversion: None,
                value: 0.0,
                delivered: false,
                both_arms: false,
            });
            state.both_arms |= state.arm != arm;
            // Delivery is counted in the user's own arm only: a holdout user is never messaged.
            state.delivered |= delivered && state.arm == arm;
        }

        // Each goal event once, when it falls in the attribution window of any of the user's
        // assignments in the report window. `e.ts > $4` is implied by the EXISTS (an attributed event
        // follows an assignment made after the window start) and lets the (name, ts) index narrow
        // the scan.
        let goal_events: Vec<(String, i64, String)> = with_db!(self, |pool| {
            sqlx::query_as(
                "SELECT e.user_id, e.ts, e.properties FROM events e
                 WHERE e.name = $1 AND e.ts > $4 AND e.ts <= $2
                   AND EXISTS (
                     SELECT 1 FROM assignments a
                     WHERE a.user_id = e.user_id AND a.campaign_id = $3
                       AND a.arm IN ('treatment', 'holdout')
                       AND a.assigned_at >= $4 AND a.assigned_at <= $2
                       AND e.ts > a.assigned_at AND e.ts <= a.assigned_at + $5)
                 ORDER BY e.ts, e.seq",
            )
            .bind(q.goal_event)
            .bind(to)
            .bind(q.campaign_id)
            .bind(from)
            .bind(within)
            .fetch_all(pool)
            .await?
        });
        for (user_id, ts, properties) in goal_events {
            let Some(state) = users.get_mut(&user_id) else {
                continue;
            };
            state.first_conversion.get_or_insert(ts);
            if let Some(path) = q.goal_value {
                match goal_value(&properties, path) {
                    Some(v) => state.value += v,
                    None => out.values_not_numeric += 1,
                }
            }
        }

        for name in q.guardrails {
            let hit: Vec<String> = with_db!(self, |pool| {
                sqlx::query_scalar(
                    "SELECT DISTINCT e.user_id FROM events e
                     WHERE e.name = $1 AND e.ts > $4 AND e.ts <= $2
                       AND EXISTS (
                         SELECT 1 FROM assignments a
                         WHERE a.user_id = e.user_id AND a.campaign_id = $3
                           AND a.arm IN ('treatment', 'holdout')
                           AND a.assigned_at >= $4 AND a.assigned_at <= $2
                           AND e.ts > a.assigned_at)",
                )
                .bind(name)
                .bind(to)
                .bind(q.campaign_id)
                .bind(from)
                .fetch_all(pool)
                .await?
            });
            out.treatment.guardrails.insert(name.clone(), 0);
            out.holdout.guardrails.insert(name.clone(), 0);
            for user_id in hit {
                if let Some(state) = users.get(&user_id) {
                    let arm = match state.arm {
                        ArmKey::Treatment => &mut out.treatment,
                        ArmKey::Holdout => &mut out.holdout,
                    };
                    *arm.guardrails.entry(name.clone()).or_default() += 1;
                }
            }
        }

        // Per-day increments, then a running sum.
        let mut days: BTreeMap<NaiveDate, [u64; 4]> = BTreeMap::new();
        for state in users.values() {
            let arm = match state.arm {
                ArmKey::Treatment => &mut out.treatment,
                ArmKey::Holdout => &mut out.holdout,
            };
            arm.users += 1;
            arm.delivered += u64::from(state.delivered);
            out.users_in_both_arms += u64::from(state.both_arms);
            let offset = if state.arm == ArmKey::Treatment { 0 } else { 2 };
            days.entry(from_millis(state.first_assigned).date_naive())
                .or_default()[offset] += 1;
            if let Some(ts) = state.first_conversion {
                arm.conversions += 1;
                arm.value_sum += state.value;
                arm.value_sum_squares += state.value * state.value;
                days.entry(from_millis(ts).date_naive()).or_default()[offset + 1] += 1;
            }
        }
        let mut running = [0u64; 4];
        out.daily = days
            .into_iter()
            .map(|(date, inc)| {
                for (r, i) in running.iter_mut().zip(inc) {
                    *r += i;
                }
                DailyCounts {
                    date,
                    treatment_users: running[0],
                    treatment_conversions: running[1],
                    holdout_users: running[2],
                    holdout_conversions: running[3],
                }
            })
            .collect();
        Ok(out)
    }
}

/// One arm of a send-time test: treatment users whose first assignment in the window had a
/// predicted send time (`predicted`) or the test's fixed one (`fixed`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SendTimeArmCounts {
    pub users: u64,
    /// Users with a goal event attributed as for lift.
    pub conversions: u64,
    /// Users who opened or clicked (`email_opened`, `push_opened`, `email_clicked`) within the
    /// goal window after an assignment.
    pub engaged: u64,
}

impl Store {
    /// Counts of a campaign's send-time test: (predicted, fixed). Only treatment assignments count
    /// (the holdout gets no message, so no send time); a user counts in the arm of their first
    /// assignment in the window; attribution is as in [`Store::lift_counts`].
    pub async fn send_time_test_counts(
        &self,
        q: &LiftQuery<'_>,
    ) -> Result<(SendTimeArmCounts, SendTimeArmCounts)> {
        let (from, to) = (to_millis(q.from), to_millis(q.to));
        let within = q.goal_within.num_milliseconds();
        let assignments: Vec<(String, String)> = with_db!(self, |pool| {
            sqlx::query_as(
                "SELECT user_id, send_time_arm FROM assignments
                 WHERE campaign_id = $1 AND assigned_at >= $2 AND assigned_at <= $3
                   AND arm = 'treatment' AND send_time_arm IN ('predicted', 'fixed')
                 ORDER BY assigned_at, id",
            )
            .bind(q.campaign_id)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        });
        // user -> (fixed?, converted, engaged)
        let mut users: HashMap<String, (bool, bool, bool)> = HashMap::new();
        for (user, arm) in assignments {
            users.entry(user).or_insert((arm == "fixed", false, false));
        }
        // The goal and the engagement events in one pass: which users did which, attributed as
        // for lift.
        let hits: Vec<(String, String)> = with_db!(self, |pool| {
            sqlx::query_as(
                "SELECT DISTINCT e.user_id, e.name FROM events e
                 WHERE e.name IN ($1, $6, $7, $8) AND e.ts > $4 AND e.ts <= $2
                   AND EXISTS (
                     SELECT 1 FROM assignments a
                     WHERE a.user_id = e.user_id AND a.campaign_id = $3
                       AND a.arm = 'treatment' AND a.send_time_arm IN ('predicted', 'fixed')
                       AND a.assigned_at >= $4 AND a.assigned_at <= $2
                       AND e.ts > a.assigned_at AND e.ts <= a.assigned_at + $5)",
            )
            .bind(q.goal_event)
            .bind(to)
            .bind(q.campaign_id)
            .bind(from)
            .bind(within)
            .bind(ENGAGEMENT_EVENTS[0])
            .bind(ENGAGEMENT_EVENTS[1])
            .bind(ENGAGEMENT_EVENTS[2])
            .fetch_all(pool)
            .await?
        });
        for (user, name) in hits {
            if let Some(state) = users.get_mut(&user) {
                // A goal that is also an engagement event (e.g. `email_clicked`) counts as both.
                state.1 |= name == q.goal_event;
                state.2 |= ENGAGEMENT_EVENTS.contains(&name.as_str());
            }
        }
        let (mut predicted, mut fixed) = (SendTimeArmCounts::default(), SendTimeArmCounts::default());
        for (is_fixed, converted, engaged) in users.into_values() {
            let arm = if is_fixed { &mut fixed } else { &mut predicted };
            arm.users += 1;
            arm.conversions += u64::from(converted);
            arm.engaged += u64::from(engaged);
        }
        Ok((predicted, fixed))
    }
}

/// What counts as engaging with a message.
pub const ENGAGEMENT_EVENTS: [&str; 3] = ["email_opened", "push_opened", "email_clicked"];

/// The number at a dotted path in a goal event, whose stored text is its `properties` object.
/// The path is written against the event (`properties.revenue`); a path without the `properties.`
/// prefix is looked up inside the properties too. Only JSON numbers count.
fn goal_value(properties: &str, path: &str) -> Option<f64> {
    let properties: Value = serde_json::from_str(properties).ok()?;
    let path = path.strip_prefix("properties.").unwrap_or(path);
    path.split('.')
        .try_fold(&properties, |v, seg| v.get(seg))
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_values_follow_the_dotted_path() {
        let props = r#"{"revenue": 12.5, "order": {"total": 3}, "text": "7"}"#;
        assert_eq!(goal_value(props, "properties.revenue"), Some(12.5));
        assert_eq!(goal_value(props, "revenue"), Some(12.5));
        assert_eq!(goal_value(props, "properties.order.total"), Some(3.0));
        assert_eq!(goal_value(props, "properties.text"), None, "numbers only");
        assert_eq!(goal_value(props, "properties.missing"), None);
        assert_eq!(goal_value("not json", "properties.revenue"), None);
    }
}
