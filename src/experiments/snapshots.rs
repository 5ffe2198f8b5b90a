//! Campaign results over time: a daily snapshot of every campaign's lift, so analysts can see it
//! accumulate (`nudge report lift --history`, `GET /v1/reports/lift/history`).
//!
//! [`take_daily_snapshot`] computes each campaign's cumulative lift report (the same
//! [`LiftReport`] as `nudge report lift`) as of the end of one UTC day and stores one row per
//! campaign. [`run`] schedules it in `serve` a few minutes after midnight UTC for the day just
//! ended (and once at start-up, to catch up a day the daemon was down for). Every node runs the
//! schedule; the store's (campaign, day) key lets exactly one node's rows in, as cron firings do.
//! [`render_history`] prints the stored series as a table, JSON or CSV.

use std::{fmt::Write as _, sync::Arc};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::{
    lift::{LiftError, LiftReport, lift_reports},
    report::Format,
};
use crate::{
    engine::Engine,
    rules::RuleSet,
    store::{LiftSnapshotRow, Store},
};

/// When `serve` takes the snapshot of the day just ended: 00:05 UTC, once late events of the day
/// have had a few minutes to arrive.
pub const SCHEDULE: &str = "0 5 0 * * *";

/// Confidence level of stored snapshots (the report's default).
pub const CONFIDENCE: f64 = 0.95;

/// Stores every goal campaign's lift as of the end of `day` (or `now`, if the day is not over).
/// Idempotent per day: returns `None` without computing anything when the day already has
/// snapshots (an earlier run, or another node), otherwise how many rows this call wrote.
pub async fn take_daily_snapshot(
    store: &Store,
    rules: &RuleSet,
    day: NaiveDate,
    now: DateTime<Utc>,
    node: &str,
) -> Result<Option<u64>, LiftError> {
    if store.lift_snapshots_on(day).await? > 0 {
        return Ok(None);
    }
    let end_of_day = (day + Duration::days(1))
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists in UTC")
        .and_utc();
    let as_of = end_of_day.min(now);
    let reports = lift_reports(store, rules, None, None, as_of, CONFIDENCE).await?;
    let rows: Vec<LiftSnapshotRow> = reports.iter().map(|r| snapshot_row(r, day, node, now)).collect();
    Ok(Some(store.insert_lift_snapshots(&rows).await?))
}

fn snapshot_row(r: &LiftReport, day: NaiveDate, node: &str, now: DateTime<Utc>) -> LiftSnapshotRow {
    let (t, h) = (&r.arms.treatment, &r.arms.holdout);
    let total = |per_user: Option<f64>, users: u64| per_user.map(|v| v * users as f64);
    LiftSnapshotRow {
        campaign_id: r.campaign.clone(),
        day,
        as_of: r.window.to,
        treatment_users: t.users as i64,
        treatment_conversions: t.conversions as i64,
        treatment_value: total(t.value_per_user, t.users),
        holdout_users: h.users as i64,
        holdout_conversions: h.conversions as i64,
        holdout_value: total(h.value_per_user, h.users),
        report: serde_json::to_value(r).unwrap_or(Value::Null),
        node: node.to_string(),
        taken_at: now,
    }
}

/// One day of one campaign's history, as `--history` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryPoint {
    pub campaign: String,
    pub day: NaiveDate,
    pub as_of: DateTime<Utc>,
    pub treatment_users: i64,
    pub treatment_conversions: i64,
    pub treatment_value: Option<f64>,
    pub holdout_users: i64,
    pub holdout_conversions: i64,
    pub holdout_value: Option<f64>,
    /// From the stored report: `{estimate, ci_low, ci_high}`.
    pub relative_lift: Value,
    pub absolute_lift: Value,
    pub p_value: Value,
    pub warnings: Value,
}

impl From<&LiftSnapshotRow> for HistoryPoint {
    fn from(r: &LiftSnapshotRow) -> Self {
        let field = |k: &str| r.report.get(k).cloned().unwrap_or(Value::Null);
        HistoryPoint {
            campaign: r.campaign_id.clone(),
            day: r.day,
            as_of: r.as_of,
            treatment_users: r.treatment_users,
            treatment_conversions: r.treatment_conversions,
            treatment_value: r.treatment_value,
            holdout_users: r.holdout_users,
            holdout_conversions: r.holdout_conversions,
            holdout_value: r.holdout_value,
            relative_lift: field("relative_lift"),
            absolute_lift: field("absolute_lift"),
            p_value: field("p_value"),
            warnings: field("warnings"),
        }
    }
}

/// Stored snapshots (all campaigns, or one) as a table, JSON or CSV. HTML is not offered for the
/// history: the HTML lift report already charts cumulative lift by day.
pub fn render_history(rows: &[LiftSnapshotRow], format: Format) -> Result<String, String> {
    let points: Vec<HistoryPoint> = rows.iter().map(HistoryPoint::from).collect();
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    match format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&points).map_err(|e| e.to_string())?;
            text.push('\n');
            Ok(text)
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let opt = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
            w.write_record([
                "campaign",
                "day",
                "as_of",
                "treatment_users",
                "treatment_conversions",
                "treatment_value",
                "holdout_users",
                "holdout_conversions",
                "holdout_value",
                "relative_lift",
                "relative_lift_ci_low",
                "relative_lift_ci_high",
                "p_value",
            ])
            .map_err(|e| e.to_string())?;
            for p in &points {
                w.write_record([
                    p.campaign.clone(),
                    p.day.to_string(),
                    p.as_of.to_rfc3339(),
                    p.treatment_users.to_string(),
                    p.treatment_conversions.to_string(),
                    opt(p.treatment_value),
                    p.holdout_users.to_string(),
                    p.holdout_conversions.to_string(),
                    opt(p.holdout_value),
                    opt(num(&p.relative_lift, "estimate")),
                    opt(num(&p.relative_lift, "ci_low")),
                    opt(num(&p.relative_lift, "ci_high")),
                    opt(p.p_value.as_f64()),
                ])
                .map_err(|e| e.to_string())?;
            }
            let bytes = w.into_inner().map_err(|e| e.error().to_string())?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        Format::Table => {
            if points.is_empty() {
                return Ok("no lift snapshots yet (serve takes one a day at 00:05 UTC)\n".into());
            }
            let pct = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{:+.1}%", x * 100.0));
            let mut out = format!(
                "{:<24} {:<10} {:>20} {:>20} {:>26} {:>8}\n",
                "CAMPAIGN", "DAY", "TREATMENT conv/users", "HOLDOUT conv/users", "REL. LIFT [95% CI]", "P"
            );
            for p in &points {
                let lift = format!(
                    "{} [{}, {}]",
                    pct(num(&p.relative_lift, "estimate")),
                    pct(num(&p.relative_lift, "ci_low")),
                    pct(num(&p.relative_lift, "ci_high"))
                );
                let _ = writeln!(
                    out,
                    "{:<24} {:<10} {:>20} {:>20} {:>26} {:>8}",
                    p.campaign,
                    p.day,
                    format!("{}/{}", p.treatment_conversions, p.treatment_users),
                    format!("{}/{}", p.holdout_conversions, p.holdout_users),
                    lift,
                    p.p_value.as_f64().map_or("–".into(), |v| format!("{v:.4}")),
                );
            }
            Ok(out)
        }
        Format::Html => Err("--history prints table, json or csv".into()),
    }
}

/// Takes the snapshot of the day before `now`, logging the outcome.
pub async fn snapshot_yesterday(engine: &Engine) {
    let now = engine.now();
    let day = now.date_naive() - Duration::days(1);
    let rules = engine.rules.current();
    match take_daily_snapshot(&engine.store, &rules, day, now, &engine.config.node_id).await {
        Ok(Some(n)) => tracing::info!(day = %day, campaigns = n, "LiftSnapshotTaken"),
        Ok(None) => tracing::debug!(day = %day, "LiftSnapshotTakenElsewhere"),
        Err(e) => tracing::error!(day = %day, error = %e, "LiftSnapshotFailed"),
    }
}

/// Runs the daily snapshot in `serve` until cancelled: once now (catching up yesterday if the
/// daemon was down at 00:05), then on [`SCHEDULE`].
pub async fn run(engine: Arc<Engine>, cancel: CancellationToken) {
    snapshot_yesterday(&engine).await;
    let scheduler = async {
        let scheduler = JobScheduler::new().await?;
        let job_engine = engine.clone();
        scheduler
            .add(Job::new_async_tz(SCHEDULE, chrono_tz::UTC, move |_id, _lock| {
                let engine = job_engine.clone();
                Box::pin(async move { snapshot_yesterday(&engine).await })
            })?)
            .await?;
        scheduler.start().await?;
        Ok::<_, tokio_cron_scheduler::JobSchedulerError>(scheduler)
    };
    let mut scheduler = match scheduler.await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "LiftSnapshotSchedulerFailed");
            return;
        }
    };
    cancel.cancelled().await;
    let _ = scheduler.shutdown().await;
}
