//! Lift reports on a real database, driven through the real engine: arm counts equal what is
//! counted by hand, holdout users get nothing, conversions count only inside `goal.within`, and the
//! numbers are exactly `stats.rs` on the same counts. Also: the HTML page is self-contained.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use nudge::{
    events::IncomingEvent,
    experiments::{
        arms,
        lift::{self, LiftError},
        report::{self, Format},
        stats::{self, ConfidenceLevel, Difference, Sample},
    },
};
use serde_json::json;

use crate::{
    both_backends,
    util::{self, TestDb, t},
};

const GLOBAL: &str = "control_group: 0%\ntimezone: UTC\n";

const WELCOME: &str = r#"
campaign: welcome_offer
name: Welcome offer
when:
  event: signed_up
then:
  channels: [email]
  send_time: immediate
  email:
    subject: "Welcome"
    body: "Hello {{ user.id }}"
holdout: 10%
goal:
  event: order_completed
  within: 3d
  value: properties.revenue
guardrails: [unsubscribed]
"#;

const NO_GOAL: &str = r#"
campaign: no_goal
name: No goal
when:
  event: never_happens
then:
  channels: [email]
  email:
    subject: "Hi"
    body: "Hi"
holdout: 10%
"#;

const USERS: usize = 600;

fn user(i: usize) -> String {
    format!("user-{i:04}")
}

/// What each user does after being assigned, chosen by index so it is independent of the arm.
/// Returns (hours after assignment, revenue) for each order.
fn orders(i: usize) -> Vec<(i64, serde_json::Value)> {
    match i % 10 {
        // Converts once, inside the 3-day window.
        0 | 1 => vec![(5, json!(20.0))],
        // Two orders inside the window: one conversion, values summed.
        2 => vec![(1, json!(10.0)), (30, json!(15.5))],
        // Only an order after the window (3 days + 1 hour): not a conversion.
        3 => vec![(73, json!(99.0))],
        // An order inside the window whose revenue is not a number: converts, value 0.
        4 if i % 20 == 4 => vec![(2, json!("12"))],
        _ => vec![],
    }
}

both_backends!(
    lift_report_matches_hand_counts_and_stats,
    |db: TestDb| async move {
        let (_dir, rules) = util::rules_dir(&[
            ("_global.yaml", GLOBAL),
            ("welcome.yaml", WELCOME),
            ("no_goal.yaml", NO_GOAL),
        ]);
        let set = rules.current();
        let start = t("2026-03-02T09:00:00Z");
        let (engine, clock) = util::engine(&db.store, rules, start).await;

        let identifies: Vec<IncomingEvent> = (0..USERS)
            .map(|i| {
                IncomingEvent::identify(
                    &user(i),
                    json!({"email": format!("{}@example.com", user(i))}),
                    start - Duration::days(1),
                )
            })
            .collect();
        engine.ingest(&identifies).await.unwrap();
        // An order before anyone is assigned: never a conversion.
        engine
            .ingest(&[IncomingEvent::track(
                &user(0),
                "order_completed",
                json!({"revenue": 1000.0}),
                start - Duration::hours(1),
            )])
            .await
            .unwrap();
        // Half the users sign up on day 0, the other half on day 1: two points in the daily series.
        for day in 0..2 {
            let at = start + Duration::days(day);
            clock.set(at);
            let signups: Vec<IncomingEvent> = (0..USERS)
                .filter(|i| (*i as i64) % 2 == day)
                .map(|i| IncomingEvent::track(&user(i), "signed_up", json!({}), at))
                .collect();
            engine.ingest(&signups).await.unwrap();
            engine.run_until_idle().await.unwrap();
        }

        // By hand: the arm is the campaign's hash bucket (no global control group here).
        let holdout: BTreeSet<String> = (0..USERS)
            .map(user)
            .filter(|u| arms::bucket(&["holdout", "welcome_offer", u]) < 1_000)
            .collect();
        let assigned_at = |i: usize| start + Duration::days((i % 2) as i64);
        let mut later = Vec::new();
        let mut expected: BTreeMap<&str, (u64, u64, f64, f64)> = BTreeMap::new();
        for i in 0..USERS {
            let arm = if holdout.contains(&user(i)) {
                "holdout"
            } else {
                "treatment"
            };
            let e = expected.entry(arm).or_default();
            e.0 += 1;
            let mut value = 0.0;
            let mut converted = false;
            for (hours, revenue) in orders(i) {
                later.push(IncomingEvent::track(
                    &user(i),
                    "order_completed",
                    json!({ "revenue": revenue }),
                    assigned_at(i) + Duration::hours(hours),
                ));
                if hours <= 72 {
                    converted = true;
                    value += revenue.as_f64().unwrap_or(0.0);
                }
            }
            if converted {
                e.1 += 1;
                e.2 += value;
                e.3 += value * value;
            }
            // Every 25th treatment user unsubscribes after the message; no holdout user does.
            if arm == "treatment" && i % 25 == 0 {
                later.push(IncomingEvent::track(
                    &user(i),
                    "unsubscribed",
                    json!({}),
                    assigned_at(i) + Duration::hours(2),
                ));
            }
        }
        engine.ingest(&later).await.unwrap();
        let now = start + Duration::days(10);
        clock.set(now);
        engine.run_until_idle().await.unwrap();

        // Holdout users are never messaged; every treatment user is.
        let outbox = db.store.outbox_messages().await.unwrap();
        let messaged: BTreeSet<String> = outbox.iter().map(|(u, ..)| u.clone()).collect();
        assert!(messaged.is_disjoint(&holdout), "a holdout user has an outbox row");
        assert_eq!(messaged.len(), USERS - holdout.len());

        let reports = lift::lift_reports(&db.store, &set, None, None, now, 0.95)
            .await
            .unwrap();
        assert_eq!(reports.len(), 1, "campaigns without a goal are left out");
        let r = &reports[0];
        assert_eq!(r.campaign, "welcome_offer");
        let (et, eh) = (expected["treatment"], expected["holdout"]);
        assert!(eh.0 > 30 && et.0 > 400, "the hash split: {eh:?} {et:?}");
        let (t_arm, h_arm) = (&r.arms.treatment, &r.arms.holdout);
        assert_eq!((t_arm.users, t_arm.conversions), (et.0, et.1));
        assert_eq!((h_arm.users, h_arm.conversions), (eh.0, eh.1));
        assert_eq!((t_arm.delivered, h_arm.delivered), (et.0, 0));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
        assert!(close(t_arm.value_per_user.unwrap(), et.2 / et.0 as f64));
        assert!(close(h_arm.value_per_user.unwrap(), eh.2 / eh.0 as f64));
        assert_eq!(r.window.to, now);
        assert_eq!(r.window.from, start, "the first assignment");

        // The numbers are stats.rs on the same counts, exactly.
        let level = ConfidenceLevel::new(0.95).unwrap();
        let (control, treatment) = (Sample::proportion(eh.0, eh.1), Sample::proportion(et.0, et.1));
        let rel = stats::two_sided_ttest(control, treatment, Difference::Relative, level);
        let abs = stats::two_sided_ttest(control, treatment, Difference::Absolute, level);
        assert_eq!(r.relative_lift.estimate, rel.estimate);
        assert_eq!(
            (r.relative_lift.ci_low, r.relative_lift.ci_high),
            (rel.ci_low, rel.ci_high)
        );
        assert_eq!(r.p_value, rel.p_value);
        assert_eq!(
            (r.absolute_lift.ci_low, r.absolute_lift.ci_high),
            (abs.ci_low, abs.ci_high)
        );
        assert_eq!(r.incremental_conversions.estimate, abs.estimate * et.0 as f64);
        let srm = stats::srm_check(et.0, eh.0, 0.10);
        assert_eq!(r.srm, srm);
        let value = r.value.as_ref().expect("revenue lift");
        let revenue = stats::two_sided_ttest(
            Sample::Mean {
                n: eh.0,
                sum: eh.2,
                sum_squares: eh.3,
            },
            Sample::Mean {
                n: et.0,
                sum: et.2,
                sum_squares: et.3,
            },
            Difference::Relative,
            level,
        );
        assert!(close(value.relative_lift.estimate, revenue.estimate));
        assert!(close(value.p_value, revenue.p_value));

        // Guardrail: treatment users unsubscribed, holdout users did not.
        let g = &r.guardrails[0];
        assert_eq!(g.event, "unsubscribed");
        let unsubscribed = (0..USERS)
            .filter(|i| i % 25 == 0 && !holdout.contains(&user(*i)))
            .count() as u64;
        assert_eq!((g.treatment_users, g.holdout_users), (unsubscribed, 0));

        // The daily series is cumulative and ends at the totals.
        // Sign-ups on days 0 and 1; every first conversion falls on one of those days too.
        assert_eq!(r.daily.len(), 2, "{:?}", r.daily);
        let last = r.daily.last().unwrap();
        assert_eq!(
            (
                last.treatment_users,
                last.treatment_conversions,
                last.holdout_users,
                last.holdout_conversions
            ),
            (et.0, et.1, eh.0, eh.1)
        );
        assert!(
            r.daily
                .windows(2)
                .all(|w| w[0].treatment_users <= w[1].treatment_users)
        );

        // The JSON carries DESIGN.md's fields.
        let v = serde_json::to_value(r).unwrap();
        for key in [
            "campaign",
            "window",
            "arms",
            "absolute_lift",
            "relative_lift",
            "p_value",
            "incremental_conversions",
            "srm",
            "confidence_level",
            "method",
            "warnings",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["users", "conversions", "rate", "value_per_user"] {
            assert!(
                v["arms"]["holdout"].get(key).is_some(),
                "missing arms.holdout.{key}"
            );
        }
        for key in ["expected_share", "observed_share", "p_value", "ok"] {
            assert!(v["srm"].get(key).is_some(), "missing srm.{key}");
        }

        // A window starting on day 1 holds only the second half of the sign-ups.
        let since = lift::lift_reports(
            &db.store,
            &set,
            Some("welcome_offer"),
            Some(start + Duration::hours(12)),
            now,
            0.95,
        )
        .await
        .unwrap();
        let odd = (0..USERS).filter(|i| i % 2 == 1).count() as u64;
        assert_eq!(since[0].arms.treatment.users + since[0].arms.holdout.users, odd);

        // Asking for a campaign that cannot be reported is a usage error.
        let err = lift::lift_reports(&db.store, &set, Some("no_goal"), None, now, 0.95).await;
        assert!(matches!(err, Err(LiftError::NoGoal(_))));
        let err = lift::lift_reports(&db.store, &set, Some("nope"), None, now, 0.95).await;
        assert!(matches!(err, Err(LiftError::UnknownCampaign(_))));
        let err = lift::lift_reports(&db.store, &set, None, None, now, 1.5).await;
        assert!(err.is_err_and(|e| e.is_usage()));

        // Every format renders; the HTML page stands alone.
        let html = report::render(&reports, Format::Html);
        assert_eq!(html.matches("<svg").count(), 2, "two charts");
        assert!(!html.contains("http"), "no external references");
        assert!(
            !html.contains("<script") && !html.contains("<link"),
            "self-contained"
        );
        let csv = report::render(&reports, Format::Csv);
        assert_eq!(csv.lines().count(), 2);
        let json: serde_json::Value = serde_json::from_str(&report::render(&reports, Format::Json)).unwrap();
        assert_eq!(json[0]["campaign"], "welcome_offer");
        assert!(report::render(&reports, Format::Table).contains("welcome_offer"));
        db.cleanup().await;
    }
);
