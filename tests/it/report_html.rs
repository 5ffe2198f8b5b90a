//! Guardrails, topics and `exclude_if` through the engine, and the HTML lift report rendered by a
//! real browser (issue 5, acceptance 6).
//!
//! One campaign with a planted effect: treatment converts more than the holdout, but also
//! unsubscribes more, so the report must show both guardrail rates and warn. VIP users
//! (`exclude_if`) and users who opted out of the campaign's topic (by trait, or through a topic
//! message's unsubscribe link) must be in neither arm. The HTML page of that report is then loaded
//! from a file in headless Chromium (Debian's `chromium`), with name resolution disabled so any
//! network request would fail, and the rendered DOM must hold both charts.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration as StdDuration,
};

use chrono::{DateTime, Duration, Utc};
use nudge::{
    events::IncomingEvent,
    experiments::{
        lift::{self, LiftReport},
        report::{self, Format},
        snapshots,
    },
    rules::RuleSet,
};
use serde_json::json;

use crate::{
    both_backends,
    util::{self, TestDb, t},
};

const GLOBAL: &str = "control_group: 0%\ntimezone: UTC\n";

const SALE: &str = r#"
campaign: spring_sale
name: Spring sale
when:
  event: signed_up
then:
  channels: [email]
  send_time: immediate
  email:
    subject: "Spring sale"
    body: "Hello {{ user.id }}"
topic: promotions
exclude_if:
  - user.traits.vip == true
holdout: 20%
goal:
  event: order_completed
  within: 3d
  value: properties.revenue
guardrails: [unsubscribed]
"#;

const USERS: usize = 2_000;
const DAYS: usize = 4;

fn user(i: usize) -> String {
    format!("shopper-{i:04}")
}

/// Why a user is kept out of the campaign entirely, if they are.
fn excluded(i: usize) -> Option<&'static str> {
    match i % 40 {
        0 => Some("vip"),
        1 => Some("topic trait"),
        2 => Some("topic link"),
        _ => None,
    }
}

/// Runs the scenario and returns the report, the rules and when it was taken.
async fn spring_sale(db: &TestDb) -> (Vec<LiftReport>, Arc<RuleSet>, DateTime<Utc>) {
    let (_dir, rules) = util::rules_dir(&[("_global.yaml", GLOBAL), ("sale.yaml", SALE)]);
    let set = rules.current();
    let start = t("2026-04-06T09:00:00Z");
    let (engine, clock) = util::engine(&db.store, rules, start - Duration::days(1)).await;
    let identifies: Vec<IncomingEvent> = (0..USERS)
        .map(|i| {
            let mut traits = json!({ "email": format!("{}@example.com", user(i)) });
            match excluded(i) {
                Some("vip") => traits["vip"] = json!(true),
                Some("topic trait") => traits["unsubscribed_topics"] = json!(["promotions"]),
                _ => {}
            }
            IncomingEvent::identify(&user(i), traits, start - Duration::days(1))
        })
        .collect();
    engine.ingest(&identifies).await.unwrap();
    // What the unsubscribe link of an earlier `promotions` message records.
    for i in (0..USERS).filter(|i| excluded(*i) == Some("topic link")) {
        db.store
            .unsubscribe(&user(i), Some("promotions"), start - Duration::hours(12))
            .await
            .unwrap();
    }

    let mut arm_of: HashMap<String, String> = HashMap::new();
    for day in 0..DAYS {
        let at = start + Duration::days(day as i64);
        clock.set(at);
        let signups: Vec<IncomingEvent> = (0..USERS)
            .filter(|i| i % DAYS == day)
            .map(|i| IncomingEvent::track(&user(i), "signed_up", json!({}), at))
            .collect();
        engine.ingest(&signups).await.unwrap();
        engine.run_until_idle().await.unwrap();
    }
    for a in db.store.assignments_of("spring_sale").await.unwrap() {
        arm_of.insert(a.user_id, a.arm);
    }
    // Treatment converts at 14%, the holdout at 10%; treatment unsubscribes at 10%, holdout at 3%.
    let mut later = Vec::new();
    for i in 0..USERS {
        let Some(arm) = arm_of.get(&user(i)) else {
            continue;
        };
        let at = start + Duration::days((i % DAYS) as i64);
        let treated = arm == "treatment";
        if i % 100 < if treated { 14 } else { 10 } {
            later.push(IncomingEvent::track(
                &user(i),
                "order_completed",
                json!({ "revenue": 30.0 }),
                at + Duration::hours(6),
            ));
        }
        if i % 100 >= if treated { 90 } else { 97 } {
            later.push(IncomingEvent::track(
                &user(i),
                "unsubscribed",
                json!({}),
                at + Duration::hours(2),
            ));
        }
    }
    let now = start + Duration::days(DAYS as i64 + 3);
    clock.set(now);
    engine.ingest(&later).await.unwrap();
    engine.run_until_idle().await.unwrap();
    let reports = lift::lift_reports(&db.store, &set, Some("spring_sale"), None, now, 0.95)
        .await
        .unwrap();
    (reports, set, now)
}

both_backends!(
    guardrails_topics_and_exclusions_in_the_report,
    |db: TestDb| async move {
        let (reports, ..) = spring_sale(&db).await;
        let r = &reports[0];

        // Excluded users are in neither arm; everyone else has exactly one assignment.
        let assigned: Vec<String> = db
            .store
            .assignments_of("spring_sale")
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.user_id)
            .collect();
        let unique: BTreeSet<&String> = assigned.iter().collect();
        assert_eq!(unique.len(), assigned.len(), "one assignment per user");
        let expected: BTreeSet<String> = (0..USERS).filter(|i| excluded(*i).is_none()).map(user).collect();
        assert_eq!(unique.into_iter().cloned().collect::<BTreeSet<_>>(), expected);
        assert_eq!(
            r.arms.treatment.users + r.arms.holdout.users,
            expected.len() as u64
        );
        for (i, why) in [
            (0, "exclude_if: user.traits.vip == true"),
            (1, "opted out of topic promotions"),
            (2, "opted out of topic promotions"),
        ] {
            let log = db.store.log_entries(&user(i)).await.unwrap();
            assert!(
                log.iter()
                    .any(|(kind, detail)| kind == "excluded" && detail.contains(why)),
                "{}: {log:?}",
                user(i)
            );
        }

        // Guardrail rates per arm, with the warning when treatment is significantly worse.
        let g = &r.guardrails[0];
        assert_eq!(g.event, "unsubscribed");
        let by_arm = |arm: &str, threshold: usize| {
            (0..USERS)
                .filter(|i| excluded(*i).is_none() && i % 100 >= threshold)
                .filter(|i| {
                    let a = if arms_holdout(&user(*i)) {
                        "holdout"
                    } else {
                        "treatment"
                    };
                    a == arm
                })
                .count() as u64
        };
        assert_eq!(g.treatment_users, by_arm("treatment", 90));
        assert_eq!(g.holdout_users, by_arm("holdout", 97));
        assert!((g.treatment_rate - g.treatment_users as f64 / r.arms.treatment.users as f64).abs() < 1e-12);
        assert!((g.holdout_rate - g.holdout_users as f64 / r.arms.holdout.users as f64).abs() < 1e-12);
        assert!(g.worse, "{g:?}");
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("guardrail `unsubscribed`: treatment is significantly worse")),
            "{:?}",
            r.warnings
        );
        assert!(r.relative_lift.estimate > 0.0);
        assert!(report::render(&reports, Format::Html).contains("<span class=\"bad\">worse</span>"));
        db.cleanup().await;
    }
);

// Campaign results over time: one snapshot per campaign per day, idempotent, across nodes.
both_backends!(daily_lift_snapshots_accumulate, |db: TestDb| async move {
    let (reports, set, now) = spring_sale(&db).await;
    let first_day = t("2026-04-06T00:00:00Z").date_naive();
    let days: Vec<_> = (0..7).map(|d| first_day + Duration::days(d)).collect();
    for day in &days {
        let taken = snapshots::take_daily_snapshot(&db.store, &set, *day, now, "node-a")
            .await
            .unwrap();
        assert_eq!(taken, Some(1), "{day}");
        // The same day again, here or on another node: nothing computed, nothing written.
        for node in ["node-a", "node-b"] {
            assert_eq!(
                snapshots::take_daily_snapshot(&db.store, &set, *day, now, node)
                    .await
                    .unwrap(),
                None
            );
        }
    }
    let rows = db.store.lift_snapshots(Some("spring_sale")).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.day).collect::<Vec<_>>(), days);
    assert!(rows.iter().all(|r| r.node == "node-a"));
    // Sign-ups arrive over four days: users accumulate, then hold.
    assert!(
        rows.windows(2)
            .all(|w| w[0].treatment_users <= w[1].treatment_users)
    );
    assert!(rows[0].treatment_users < rows[3].treatment_users);
    assert_eq!(rows[3].treatment_users, rows[6].treatment_users);
    // Each day's row is the lift report as of the end of that day.
    let day1_end = t("2026-04-08T00:00:00Z");
    let as_of_day1 = lift::lift_reports(&db.store, &set, Some("spring_sale"), None, day1_end, 0.95)
        .await
        .unwrap();
    assert_eq!(rows[1].as_of, day1_end);
    // The stored JSON is that report (floats compared to 1e-12: serde_json's parser may round
    // the last bit differently from its printer).
    let stored = &rows[1].report;
    let day1 = &as_of_day1[0];
    let close = |v: &serde_json::Value, x: f64| (v.as_f64().unwrap() - x).abs() <= 1e-12 * x.abs().max(1.0);
    assert!(close(
        &stored["relative_lift"]["estimate"],
        day1.relative_lift.estimate
    ));
    assert!(close(
        &stored["relative_lift"]["ci_low"],
        day1.relative_lift.ci_low
    ));
    assert!(close(&stored["p_value"], day1.p_value));
    assert_eq!(stored["arms"]["holdout"]["users"], json!(day1.arms.holdout.users));
    assert_eq!(stored["window"]["to"], json!(day1_end));
    assert_eq!(stored["warnings"], json!(day1.warnings));
    assert_eq!(
        rows[1].treatment_conversions as u64,
        as_of_day1[0].arms.treatment.conversions
    );
    let last = &reports[0];
    assert_eq!(
        (rows[6].treatment_users as u64, rows[6].holdout_conversions as u64),
        (last.arms.treatment.users, last.arms.holdout.conversions)
    );
    let value = rows[6].treatment_value.unwrap();
    assert!(
        (value - 30.0 * last.arms.treatment.conversions as f64).abs() < 1e-6,
        "{value}"
    );

    // `nudge report lift --history` in its three formats.
    let table = snapshots::render_history(&rows, Format::Table).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.starts_with("spring_sale")).count(),
        7,
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&snapshots::render_history(&rows, Format::Json).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 7);
    assert_eq!(json[6]["relative_lift"], rows[6].report["relative_lift"]);
    let csv = snapshots::render_history(&rows, Format::Csv).unwrap();
    assert_eq!(csv.lines().count(), 8);
    assert!(snapshots::render_history(&rows, Format::Html).is_err());
    db.cleanup().await;
});

fn arms_holdout(user: &str) -> bool {
    nudge::experiments::arms::bucket(&["holdout", "spring_sale", user]) < 2_000
}

/// Debian's `chromium`, installed with apt when missing and we are root; `None` otherwise.
fn chromium() -> Option<PathBuf> {
    let found = || {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = found() {
        return Some(p);
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return None;
    }
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "--no-install-recommends", "chromium"];
    if !apt(&install) {
        let _ = apt(&["update"]);
        let _ = apt(&install);
    }
    found()
}

/// Runs headless Chromium on `page` with `extra` flags; its stdout, or a panic after 3 minutes.
async fn run_chromium(browser: &Path, profile: &Path, page: &Path, extra: &[String]) -> String {
    let mut cmd = tokio::process::Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        // Offline: every host name fails to resolve, so a page that needed the network would break.
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(StdDuration::from_secs(180), cmd.output())
        .await
        .expect("chromium finished within 3 minutes")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the first `<svg class="{class}" …>…</svg>` in `dom`.
fn svg<'a>(dom: &'a str, class: &str) -> &'a str {
    let start = dom
        .find(&format!("<svg class=\"{class}\""))
        .unwrap_or_else(|| panic!("no {class} chart in the rendered DOM"));
    let end = dom[start..].find("</svg>").expect("the chart is closed") + start;
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_lift_report_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        println!("skipped: no chromium");
        return;
    };
    let db = TestDb::new(util::Backend::Sqlite, "html_lift_report")
        .await
        .unwrap();
    let (reports, ..) = spring_sale(&db).await;
    let html = report::render(&reports, Format::Html);
    let dir = db.scratch();
    let page = dir.path().join("lift.html");
    std::fs::write(&page, &html).unwrap();

    let dom = run_chromium(
        &browser,
        &dir.path().join("profile"),
        &page,
        &["--dump-dom".into()],
    )
    .await;
    assert!(dom.contains("<body"), "chromium rendered a document: {dom:.200}");
    assert!(dom.contains("Spring sale"));

    // Conversion rate per arm: a bar and a three-line whisker for each arm, axis labels.
    let rates = svg(&dom, "chart-rates");
    assert_eq!(rates.matches("<rect").count(), 2, "{rates}");
    assert_eq!(rates.matches("<g stroke=").count(), 2, "two whiskers");
    // Three lines per whisker, plus grid lines and the axis.
    assert!(rates.matches("<line").count() > 2 * 3, "{rates}");
    assert!(rates.contains("treatment: ") && rates.contains("holdout: "));

    // Cumulative lift over time: the CI band, the estimate line, one point per day, zero line.
    let lift_svg = svg(&dom, "chart-lift");
    assert!(lift_svg.contains("<polygon"), "{lift_svg}");
    assert!(lift_svg.contains("<polyline"), "{lift_svg}");
    let days = reports[0]
        .daily
        .iter()
        .filter(|d| d.relative_lift.is_some())
        .count();
    assert!(days >= 2, "{:?}", reports[0].daily);
    assert_eq!(lift_svg.matches("<circle").count(), days);
    assert!(lift_svg.contains("stroke-dasharray"), "the zero line");

    // A screenshot renders too (a PNG of some size); kept when NUDGE_REPORT_SCREENSHOT names a file.
    let shot = dir.path().join("lift.png");
    run_chromium(
        &browser,
        &dir.path().join("profile-shot"),
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1100,1400".into(),
            "--hide-scrollbars".into(),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("NUDGE_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    db.cleanup().await;
}
