//! `nudge report models` and `nudge train`'s summary: per model and version, the metrics on the
//! held-out slice beside the baseline's, calibration, the most important features, drift over
//! time, why it was (not) promoted, and how many users the fallbacks serve. Table, JSON, or one
//! self-contained HTML file (no scripts, no external resources), like the lift report.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{
    models::{Metrics, ModelCard},
    serving::version_label,
    training::TrainOutcome,
};
use crate::{
    experiments::report::{STYLE, esc},
    store::{Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Format(String),
}

/// One recorded training run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    pub version: String,
    pub kind: String,
    pub goal: Option<String>,
    pub status: String,
    pub reason: String,
    pub trained_at: DateTime<Utc>,
    pub node: String,
    /// `None` when nothing was trained (not enough data).
    pub card: Option<ModelCard>,
    /// PSI per feature of this model's inputs, measured at later training runs while it served.
    pub drift: Vec<DriftPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftPoint {
    pub at: DateTime<Utc>,
    /// The largest PSI of any feature, and which.
    pub max_psi: f64,
    pub feature: String,
    pub psi: Value,
}

/// Everything `nudge report models` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ModelsReport {
    pub generated_at: DateTime<Utc>,
    /// Users with no stored event: served by the fallbacks (population best hour, base rate).
    pub users: i64,
    pub cold_start_users: i64,
    /// Predicted-send-time assignments by how the time was chosen (predicted, explore, fallback, fixed).
    pub send_time_arms: Vec<(String, i64)>,
    pub models: Vec<ModelEntry>,
}

/// Reads every recorded run and renders it as `format` (table, json or html).
pub async fn models_report(store: &Store, now: DateTime<Utc>, format: &str) -> Result<String, ReportError> {
    if !matches!(format, "table" | "json" | "html") {
        return Err(ReportError::Format(format!(
            "--format `{format}`: table, json or html"
        )));
    }
    let report = collect(store, now).await?;
    Ok(match format {
        "json" => serde_json::to_string_pretty(&report).expect("report serialises") + "\n",
        "html" => html(&report),
        _ => table(&report),
    })
}

/// The report's data.
pub async fn collect(store: &Store, now: DateTime<Utc>) -> Result<ModelsReport, StoreError> {
    let rows = store.model_history().await?;
    let drift = store.model_drift().await?;
    let (users, cold_start_users) = store.cold_start_users().await?;
    let send_time_arms = store.send_time_arms().await?;
    let models = rows
        .into_iter()
        .map(|r| {
            let drift = drift
                .iter()
                .filter(|(id, _, _)| *id == r.id)
                .map(|(_, at, psi)| {
                    let (feature, max_psi) = psi
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_f64()?)))
                        .max_by(|a, b| a.1.total_cmp(&b.1))
                        .unwrap_or_default();
                    DriftPoint {
                        at: *at,
                        max_psi,
                        feature,
                        psi: psi.clone(),
                    }
                })
                .collect();
            ModelEntry {
                version: version_label(&r.kind, &r.goal, r.version),
                goal: (!r.goal.is_empty()).then(|| r.goal.clone()),
                card: serde_json::from_value(r.card.clone()).ok(),
                kind: r.kind,
                status: r.status,
                reason: r.reason,
                trained_at: r.trained_at,
                node: r.node,
                drift,
            }
        })
        .collect();
    Ok(ModelsReport {
        generated_at: now,
        users,
        cold_start_users,
        send_time_arms,
        models,
    })
}

fn num(x: f64) -> String {
    format!("{x:.3}")
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The headline figure of a model beside its baseline's: engagement rate for send time and
/// channel, AUC for propensity.
fn headline(card: &ModelCard) -> (String, String, String) {
    match (card.metrics.engagement_rate, card.baseline.engagement_rate) {
        (Some(m), Some(b)) => ("engagement rate".into(), pct(m), pct(b)),
        _ => ("ROC AUC".into(), num(card.metrics.auc), num(card.baseline.auc)),
    }
}

/// The summary `nudge train` prints.
pub fn outcomes_table(outcomes: &[TrainOutcome]) -> String {
    if outcomes.is_empty() {
        return "no model to train: the rules use no goal and no model was asked for\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:<12} {:>8} {:>8} {:>9} {:>9} {:>7}  reason",
        "model", "status", "rows", "secs", "model", "baseline", "ECE"
    );
    for o in outcomes {
        let (_, m, b) = o
            .card
            .as_ref()
            .map_or_else(|| (String::new(), "-".into(), "-".into()), headline);
        let rows = o.card.as_ref().map_or("-".into(), |c| c.train_rows.to_string());
        let ece = o.card.as_ref().map_or("-".into(), |c| num(c.metrics.ece));
        let _ = writeln!(
            out,
            "{:<34} {:<12} {:>8} {:>8.1} {:>9} {:>9} {:>7}  {}",
            o.version, o.status, rows, o.seconds, m, b, ece, o.reason
        );
    }
    out
}

fn table(r: &ModelsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Models as of {} — {} users, {} ({}) with no history (served by the fallbacks)",
        r.generated_at.to_rfc3339(),
        r.users,
        r.cold_start_users,
        pct(ratio(r.cold_start_users, r.users))
    );
    if !r.send_time_arms.is_empty() {
        let arms: Vec<String> = r.send_time_arms.iter().map(|(a, n)| format!("{a} {n}")).collect();
        let _ = writeln!(out, "Predicted send times: {}", arms.join(", "));
    }
    if r.models.is_empty() {
        out.push_str("No model trained yet: run `nudge train`.\n");
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:<34} {:<12} {:<17} {:>9} {:>9} {:>7} {:>7} {:>9} {:>8}",
        "model", "status", "metric", "model", "baseline", "ECE", "lift-q", "rows", "max PSI"
    );
    for m in &r.models {
        let Some(card) = &m.card else {
            let _ = writeln!(out, "{:<34} {:<12} {}", m.version, m.status, m.reason);
            continue;
        };
        let (metric, model, baseline) = headline(card);
        let psi = m
            .drift
            .last()
            .map_or_else(|| "-".into(), |d| format!("{:.3}", d.max_psi));
        let _ = writeln!(
            out,
            "{:<34} {:<12} {:<17} {:>9} {:>9} {:>7} {:>7} {:>9} {:>8}",
            m.version,
            m.status,
            metric,
            model,
            baseline,
            num(card.metrics.ece),
            pct(card.metrics.lift_quality),
            card.train_rows,
            psi
        );
    }
    out.push_str("\nmetric: on the held-out most recent days; baseline: the rule the model replaces.\n");
    out
}

fn ratio(a: i64, b: i64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn metrics_rows(out: &mut String, m: &Metrics, b: &Metrics, baseline_name: &str) {
    let _ = writeln!(
        out,
        "<table><tr><th>metric (held-out slice)</th><th>model</th><th>{}</th></tr>",
        esc(baseline_name)
    );
    let mut row = |name: &str, a: String, c: String| {
        let _ = writeln!(out, "<tr><td>{name}</td><td>{a}</td><td>{c}</td></tr>");
    };
    if let (Some(x), Some(y)) = (m.engagement_rate, b.engagement_rate) {
        row("engagement rate", pct(x), pct(y));
    }
    row("ROC AUC", num(m.auc), num(b.auc));
    row("log loss", num(m.log_loss), num(b.log_loss));
    row("Brier score", num(m.brier), num(b.brier));
    row("calibration error (ECE)", num(m.ece), num(b.ece));
    row("lift quality", pct(m.lift_quality), pct(b.lift_quality));
    out.push_str("</table>\n");
}

/// Predicted vs observed per calibration bin, against the diagonal.
fn calibration_svg(out: &mut String, m: &Metrics) {
    let (w, h, pad) = (300.0, 300.0, 36.0);
    let _ = writeln!(
        out,
        "<svg class=\"calibration\" role=\"img\" aria-label=\"Calibration\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">"
    );
    let x = |p: f64| pad + p * (w - 2.0 * pad);
    let y = |p: f64| h - pad - p * (h - 2.0 * pad);
    let _ = writeln!(
        out,
        "<text x=\"{pad}\" y=\"18\" style=\"font-weight:600;font-size:12px\">Calibration: observed vs predicted</text>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#b8bfcc\" stroke-dasharray=\"4 3\"/>",
        x(0.0),
        y(0.0),
        x(1.0),
        y(1.0)
    );
    let _ = writeln!(
        out,
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#3b4252\"/><line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{3}\" stroke=\"#3b4252\"/>",
        x(0.0),
        y(0.0),
        x(1.0),
        y(1.0)
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\">predicted</text><text x=\"4\" y=\"{}\">observed</text>",
        x(0.42),
        h - 8.0,
        pad - 4.0
    );
    let total: usize = m.calibration.iter().map(|b| b.count).sum::<usize>().max(1);
    for b in m.calibration.iter().filter(|b| b.count > 0) {
        let r = 3.0 + 9.0 * (b.count as f64 / total as f64).sqrt();
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r:.1}\" fill=\"#3866d6\" fill-opacity=\"0.6\"><title>{} rows: predicted {}, observed {}</title></circle>",
            x(b.predicted),
            y(b.observed),
            b.count,
            num(b.predicted),
            num(b.observed)
        );
    }
    out.push_str("</svg>\n");
}

fn html(r: &ModelsReport) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<title>nudge model report</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<h1>Model report</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"muted\">As of {}. {} users; {} ({}) have no history and are served by the fallbacks (population best hour, base rate).</p>",
        esc(&r.generated_at.to_rfc3339()),
        r.users,
        r.cold_start_users,
        pct(ratio(r.cold_start_users, r.users))
    );
    if !r.send_time_arms.is_empty() {
        out.push_str("<table><tr><th>predicted send times chosen by</th><th>assignments</th></tr>");
        for (arm, n) in &r.send_time_arms {
            let _ = write!(out, "<tr><td>{}</td><td>{n}</td></tr>", esc(arm));
        }
        out.push_str("</table>\n");
    }
    if r.models.is_empty() {
        out.push_str("<p>No model trained yet: run <code>nudge train</code>.</p>\n");
    }
    for m in &r.models {
        let class = if m.status == "serving" { "good" } else { "muted" };
        let _ = writeln!(
            out,
            "<section id=\"{v}\">\n<h2>{v} <span class=\"{class}\">{s}</span></h2>\n<p class=\"muted\">trained {t} on {node}: {reason}</p>",
            v = esc(&m.version),
            s = esc(&m.status),
            t = esc(&m.trained_at.to_rfc3339()),
            node = esc(&m.node),
            reason = esc(&m.reason)
        );
        let Some(card) = &m.card else {
            out.push_str("</section>\n");
            continue;
        };
        let _ = writeln!(
            out,
            "<div class=\"kpis\"><div class=\"kpi\">training rows<b>{}</b></div><div class=\"kpi\">held-out rows<b>{}</b></div><div class=\"kpi\">positives<b>{}</b></div></div>",
            card.train_rows, card.eval_rows, card.positives
        );
        metrics_rows(&mut out, &card.metrics, &card.baseline, &card.baseline_name);
        out.push_str("<div class=\"charts\">\n");
        calibration_svg(&mut out, &card.metrics);
        out.push_str("<table class=\"features\"><tr><th>feature</th><th>importance</th></tr>");
        for (f, w) in card.feature_importance.iter().take(10) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td><span style=\"display:inline-block;background:#3866d6;height:10px;width:{:.0}px\"></span> {}</td></tr>",
                esc(f),
                w * 200.0,
                pct(*w)
            );
        }
        out.push_str("</table>\n</div>\n");
        if !m.drift.is_empty() {
            out.push_str(
                "<table class=\"drift\"><tr><th>drift measured</th><th>largest PSI</th><th>feature</th></tr>",
            );
            for d in &m.drift {
                let flag = if d.max_psi > 0.25 { " class=\"bad\"" } else { "" };
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td{flag}>{:.3}</td><td>{}</td></tr>",
                    esc(&d.at.to_rfc3339()),
                    d.max_psi,
                    esc(&d.feature)
                );
            }
            out.push_str("</table>\n<p class=\"muted\">PSI above 0.25 is a large shift of the inputs since training.</p>\n");
        }
        out.push_str("</section>\n");
    }
    let _ = writeln!(
        out,
        "<p class=\"muted\">Metrics are measured on the most recent days, held out from training; a model is promoted only when it beats the model in service and its baseline there. Lift quality: average lift over random targeting across audience sizes.</p>\n</body>\n</html>"
    );
    out
}
