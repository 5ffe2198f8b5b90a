//! Rendering lift reports: a terminal table, JSON, CSV, and one self-contained HTML page.
//!
//! Takes the [`LiftReport`]s that [`super::lift::lift_reports`] computed and hands back text; no
//! numbers are computed here beyond formatting and chart geometry. The HTML page needs nothing from
//! the network: styles are inline, and both charts per campaign (conversion rate per arm with
//! confidence whiskers, cumulative relative lift over time) are SVG drawn here.

use std::fmt::Write as _;

use super::lift::{DailyPoint, LiftReport};

/// Output format, as `nudge report lift --format` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
    Html,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "html" => Ok(Format::Html),
            other => Err(format!(
                "unknown format `{other}`: expected table, json, csv or html"
            )),
        }
    }
}

/// Renders the reports in `format`. JSON is an array with one object per campaign.
pub fn render(reports: &[LiftReport], format: Format) -> String {
    match format {
        Format::Table => table(reports),
        Format::Json => json(reports),
        Format::Csv => csv(reports),
        Format::Html => html(reports),
    }
}

fn json(reports: &[LiftReport]) -> String {
    // Serialising these plain structs cannot fail (string keys only; non-finite floats become null).
    let mut text = serde_json::to_string_pretty(reports)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    text.push('\n');
    text
}

fn pct(x: f64, decimals: usize) -> String {
    format!("{:.*}%", decimals, x * 100.0)
}

fn signed_pct(x: f64, decimals: usize) -> String {
    format!("{:+.*}%", decimals, x * 100.0)
}

fn p_value(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn table(reports: &[LiftReport]) -> String {
    if reports.is_empty() {
        return "no campaigns with a goal to report\n".to_string();
    }
    let level = reports
        .first()
        .map(|r| format!("{:.0}", r.confidence_level * 100.0))
        .unwrap_or_default();
    let header = vec![
        "CAMPAIGN".to_string(),
        "TREATMENT conv/users".to_string(),
        "HOLDOUT conv/users".to_string(),
        format!("REL. LIFT [{level}% CI]"),
        "ABS. LIFT".to_string(),
        "P".to_string(),
        "INCREMENTAL CONV.".to_string(),
        "SRM".to_string(),
    ];
    let mut rows = vec![header];
    for r in reports {
        let (t, h) = (&r.arms.treatment, &r.arms.holdout);
        rows.push(vec![
            r.campaign.clone(),
            format!("{}/{} ({})", t.conversions, t.users, pct(t.rate, 2)),
            format!("{}/{} ({})", h.conversions, h.users, pct(h.rate, 2)),
            format!(
                "{} [{}, {}]",
                signed_pct(r.relative_lift.estimate, 1),
                signed_pct(r.relative_lift.ci_low, 1),
                signed_pct(r.relative_lift.ci_high, 1)
            ),
            format!("{:+.2}pp", r.absolute_lift.estimate * 100.0),
            p_value(r.p_value),
            format!(
                "{:+.1} [{:+.1}, {:+.1}]",
                r.incremental_conversions.estimate,
                r.incremental_conversions.ci_low,
                r.incremental_conversions.ci_high
            ),
            if r.srm.ok {
                "ok".to_string()
            } else {
                format!("MISMATCH p={}", p_value(r.srm.p_value))
            },
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|row| row[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for r in reports {
        let extras: Vec<String> = r
            .value
            .iter()
            .map(|v| {
                format!(
                    "{}: value/user {} vs {} ({} [{}, {}], p={})",
                    r.campaign,
                    fmt_num(r.arms.treatment.value_per_user.unwrap_or(0.0)),
                    fmt_num(r.arms.holdout.value_per_user.unwrap_or(0.0)),
                    signed_pct(v.relative_lift.estimate, 1),
                    signed_pct(v.relative_lift.ci_low, 1),
                    signed_pct(v.relative_lift.ci_high, 1),
                    p_value(v.p_value)
                )
            })
            .chain(r.guardrails.iter().map(|g| {
                format!(
                    "{}: guardrail {} {} vs {}{}",
                    r.campaign,
                    g.event,
                    pct(g.treatment_rate, 2),
                    pct(g.holdout_rate, 2),
                    if g.worse { " (treatment worse)" } else { "" }
                )
            }))
            .chain(r.send_time_test.iter().flat_map(|s| {
                s.outcomes().map(|(what, c, p, f)| {
                    format!(
                        "{}: send time predicted vs fixed {} ({}/{} users): {what} {} vs {} ({} [{}, {}], p={})",
                        r.campaign,
                        s.fixed_time,
                        s.predicted.users,
                        s.fixed.users,
                        pct(p, 2),
                        pct(f, 2),
                        signed_pct(c.relative_lift.estimate, 1),
                        signed_pct(c.relative_lift.ci_low, 1),
                        signed_pct(c.relative_lift.ci_high, 1),
                        p_value(c.p_value)
                    )
                })
            }))
            .collect();
        for line in extras {
            let _ = writeln!(out, "  {line}");
        }
        for w in &r.warnings {
            let _ = writeln!(out, "  ! {}: {w}", r.campaign);
        }
    }
    out
}

fn fmt_num(x: f64) -> String {
    format!("{x:.2}")
}

/// CSV columns, one row per campaign.
const CSV_HEADER: &[&str] = &[
    "campaign",
    "window_from",
    "window_to",
    "treatment_users",
    "treatment_conversions",
    "treatment_rate",
    "treatment_value_per_user",
    "treatment_delivered",
    "holdout_users",
    "holdout_conversions",
    "holdout_rate",
    "holdout_value_per_user",
    "absolute_lift",
    "absolute_lift_ci_low",
    "absolute_lift_ci_high",
    "relative_lift",
    "relative_lift_ci_low",
    "relative_lift_ci_high",
    "p_value",
    "incremental_conversions",
    "incremental_conversions_ci_low",
    "incremental_conversions_ci_high",
    "srm_expected_share",
    "srm_observed_share",
    "srm_p_value",
    "srm_ok",
    "confidence_level",
    "mde_relative",
    "warnings",
];

fn csv(reports: &[LiftReport]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let opt = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
    let mut result = w.write_record(CSV_HEADER);
    for r in reports {
        if result.is_err() {
            break;
        }
        let (t, h) = (&r.arms.treatment, &r.arms.holdout);
        let row: Vec<String> = vec![
            r.campaign.clone(),
            r.window.from.to_rfc3339(),
            r.window.to.to_rfc3339(),
            t.users.to_string(),
            t.conversions.to_string(),
            t.rate.to_string(),
            opt(t.value_per_user),
            t.delivered.to_string(),
            h.users.to_string(),
            h.conversions.to_string(),
            h.rate.to_string(),
            opt(h.value_per_user),
            r.absolute_lift.estimate.to_string(),
            r.absolute_lift.ci_low.to_string(),
            r.absolute_lift.ci_high.to_string(),
            r.relative_lift.estimate.to_string(),
            r.relative_lift.ci_low.to_string(),
            r.relative_lift.ci_high.to_string(),
            r.p_value.to_string(),
            r.incremental_conversions.estimate.to_string(),
            r.incremental_conversions.ci_low.to_string(),
            r.incremental_conversions.ci_high.to_string(),
            r.srm.expected_share.to_string(),
            r.srm.observed_share.to_string(),
            r.srm.p_value.to_string(),
            r.srm.ok.to_string(),
            r.confidence_level.to_string(),
            opt(r.mde.map(|m| m.relative)),
            r.warnings.join(" | "),
        ];
        result = w.write_record(&row);
    }
    // Writing to a Vec cannot fail; flush and take the bytes.
    match (result, w.into_inner()) {
        (Ok(()), Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        (Err(e), _) => format!("error writing CSV: {e}\n"),
        (_, Err(e)) => format!("error writing CSV: {}\n", e.error()),
    }
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:980px;color:#1d2330;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin:0 0 .2rem}
section{border:1px solid #d8dce5;border-radius:8px;padding:1rem 1.2rem;margin:1.5rem 0}
.muted{color:#5d6577;font-size:.9rem}
table{border-collapse:collapse;margin:.6rem 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e6e8ee;padding:.3rem .7rem;text-align:right}th:first-child,td:first-child{text-align:left}
.kpis{display:flex;flex-wrap:wrap;gap:.8rem;margin:.8rem 0}
.kpi{background:#f4f6fa;border-radius:6px;padding:.5rem .8rem;min-width:150px}
.kpi b{display:block;font-size:1.15rem}
.warn{background:#fff6e0;border-left:4px solid #e0a100;padding:.4rem .8rem;margin:.3rem 0;list-style:none}
.bad{color:#b42318;font-weight:600}.good{color:#067647;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1rem}
svg{background:#fff;border:1px solid #e6e8ee;border-radius:6px}
svg text{font-size:11px;fill:#3b4252;font-family:inherit}
";

fn html(reports: &[LiftReport]) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<title>nudge lift report</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<h1>Lift report</h1>\n");
    let level = reports.first().map(|r| r.confidence_level).unwrap_or(0.95);
    let _ = writeln!(
        out,
        "<p class=\"muted\">{} campaign(s); intervals at {} confidence; treatment vs campaign holdout, intent-to-treat.</p>",
        reports.len(),
        pct(level, 0)
    );
    if reports.is_empty() {
        out.push_str("<p>No campaigns with a goal to report.</p>\n");
    }
    for r in reports {
        campaign_section(&mut out, r);
    }
    if let Some(r) = reports.first() {
        let _ = writeln!(out, "<p class=\"muted\">Method: {}.</p>", esc(&r.method));
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn campaign_section(out: &mut String, r: &LiftReport) {
    let (t, h) = (&r.arms.treatment, &r.arms.holdout);
    let _ = writeln!(
        out,
        "<section id=\"{id}\">\n<h2>{name} <span class=\"muted\">({id})</span></h2>",
        id = esc(&r.campaign),
        name = esc(&r.name)
    );
    let _ = writeln!(
        out,
        "<p class=\"muted\">{} to {} · goal <code>{}</code> within {} · {} confidence</p>",
        r.window.from.format("%Y-%m-%d %H:%M UTC"),
        r.window.to.format("%Y-%m-%d %H:%M UTC"),
        esc(&r.goal.event),
        human_seconds(r.goal.within_seconds),
        pct(r.confidence_level, 0)
    );
    let significant = r.relative_lift.ci_low > 0.0 || r.relative_lift.ci_high < 0.0;
    let class = match (significant, r.relative_lift.estimate > 0.0) {
        (true, true) => "good",
        (true, false) => "bad",
        _ => "",
    };
    out.push_str("<div class=\"kpis\">\n");
    let kpis = [
        (
            "Relative lift".to_string(),
            format!(
                "<b class=\"{class}\">{}</b>[{}, {}]",
                signed_pct(r.relative_lift.estimate, 1),
                signed_pct(r.relative_lift.ci_low, 1),
                signed_pct(r.relative_lift.ci_high, 1)
            ),
        ),
        (
            "Absolute lift".to_string(),
            format!(
                "<b>{:+.2} pp</b>[{:+.2}, {:+.2}]",
                r.absolute_lift.estimate * 100.0,
                r.absolute_lift.ci_low * 100.0,
                r.absolute_lift.ci_high * 100.0
            ),
        ),
        (
            "p-value".to_string(),
            format!("<b>{}</b>two-sided", p_value(r.p_value)),
        ),
        (
            "Incremental conversions".to_string(),
            format!(
                "<b>{:+.1}</b>[{:+.1}, {:+.1}]",
                r.incremental_conversions.estimate,
                r.incremental_conversions.ci_low,
                r.incremental_conversions.ci_high
            ),
        ),
        (
            "Sample ratio".to_string(),
            format!(
                "<b class=\"{}\">{}</b>holdout {} (expected {}), p={}",
                if r.srm.ok { "good" } else { "bad" },
                if r.srm.ok { "ok" } else { "MISMATCH" },
                pct(r.srm.observed_share, 1),
                pct(r.srm.expected_share, 1),
                p_value(r.srm.p_value)
            ),
        ),
        (
            "Minimum detectable effect".to_string(),
            match r.mde {
                Some(m) => format!(
                    "<b>{}</b>relative, at {} power",
                    pct(m.relative, 1),
                    pct(m.power, 0)
                ),
                None => "<b>n/a</b>not enough data".to_string(),
            },
        ),
    ];
    for (label, body) in kpis {
        let _ = writeln!(
            out,
            "<div class=\"kpi\"><span class=\"muted\">{label}</span>{body}</div>"
        );
    }
    out.push_str("</div>\n");

    out.push_str("<table>\n<tr><th>Arm</th><th>Users</th><th>Conversions</th><th>Rate</th><th>Rate CI</th>");
    let with_value = t.value_per_user.is_some();
    if with_value {
        out.push_str("<th>Value / user</th>");
    }
    out.push_str("<th>Assignments</th><th>Delivered</th></tr>\n");
    for (arm, a) in [("Treatment", t), ("Holdout", h)] {
        let _ = write!(
            out,
            "<tr><td>{arm}</td><td>{}</td><td>{}</td><td>{}</td><td>[{}, {}]</td>",
            a.users,
            a.conversions,
            pct(a.rate, 2),
            pct(a.rate_ci_low, 2),
            pct(a.rate_ci_high, 2)
        );
        if let Some(v) = a.value_per_user {
            let _ = write!(out, "<td>{}</td>", fmt_num(v));
        }
        let _ = writeln!(out, "<td>{}</td><td>{}</td></tr>", a.assignments, a.delivered);
    }
    out.push_str("</table>\n");

    if let Some(v) = &r.value {
        let _ = writeln!(
            out,
            "<p>Value per user (<code>{}</code>): {} [{}, {}], p={}; incremental value {:+.2} [{:+.2}, {:+.2}].</p>",
            esc(&v.path),
            signed_pct(v.relative_lift.estimate, 1),
            signed_pct(v.relative_lift.ci_low, 1),
            signed_pct(v.relative_lift.ci_high, 1),
            p_value(v.p_value),
            v.incremental_value.estimate,
            v.incremental_value.ci_low,
            v.incremental_value.ci_high
        );
    }
    if !r.guardrails.is_empty() {
        out.push_str(
            "<table>\n<tr><th>Guardrail</th><th>Treatment</th><th>Holdout</th><th>Difference</th><th>p</th><th></th></tr>\n",
        );
        for g in &r.guardrails {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{} ({})</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&g.event),
                g.treatment_users,
                pct(g.treatment_rate, 2),
                g.holdout_users,
                pct(g.holdout_rate, 2),
                g.absolute_lift
                    .map(|l| format!("{:+.2} pp", l.estimate * 100.0))
                    .unwrap_or_else(|| "–".into()),
                g.p_value.map(p_value).unwrap_or_else(|| "–".into()),
                if g.worse {
                    "<span class=\"bad\">worse</span>"
                } else {
                    ""
                }
            );
        }
        out.push_str("</table>\n");
    }
    if let Some(st) = &r.send_time_test {
        let _ = writeln!(
            out,
            "<h3>Send time: predicted vs fixed {}</h3>\n<table class=\"send-time-test\"><tr><th></th><th>predicted</th><th>fixed {}</th><th>relative lift</th><th>p</th></tr>\n<tr><td>users</td><td>{}</td><td>{}</td><td></td><td></td></tr>",
            esc(&st.fixed_time),
            esc(&st.fixed_time),
            st.predicted.users,
            st.fixed.users
        );
        for (what, c, p, f) in st.outcomes() {
            let _ = writeln!(
                out,
                "<tr><td>{what}</td><td>{}</td><td>{}</td><td>{} [{}, {}]</td><td>{}</td></tr>",
                pct(p, 2),
                pct(f, 2),
                signed_pct(c.relative_lift.estimate, 1),
                signed_pct(c.relative_lift.ci_low, 1),
                signed_pct(c.relative_lift.ci_high, 1),
                p_value(c.p_value)
            );
        }
        out.push_str("</table>\n");
    }
    if !r.warnings.is_empty() {
        out.push_str("<ul>\n");
        for w in &r.warnings {
            let _ = writeln!(out, "<li class=\"warn\">{}</li>", esc(w));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<div class=\"charts\">\n");
    rate_chart(out, r);
    lift_chart(out, &r.daily, r.confidence_level);
    out.push_str("</div>\n</section>\n");
}

fn human_seconds(s: i64) -> String {
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Ticks at a "nice" step covering [lo, hi].
fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = (hi - lo).abs().max(1e-12);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

const W: f64 = 440.0;
const H: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

fn svg_open(out: &mut String, class: &str, title: &str) {
    let _ = writeln!(
        out,
        "<svg class=\"{class}\" role=\"img\" aria-label=\"{t}\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">\n<text x=\"{LEFT}\" y=\"18\" style=\"font-weight:600;font-size:12px\">{t}</text>",
        t = esc(title)
    );
}

/// Conversion rate per arm: a bar each, with the rate's confidence interval as a whisker.
fn rate_chart(out: &mut String, r: &LiftReport) {
    svg_open(out, "chart-rates", "Conversion rate per arm");
    let arms = [
        ("treatment", &r.arms.treatment, "#3b6fd8"),
        ("holdout", &r.arms.holdout, "#9aa3b5"),
    ];
    let top = arms
        .iter()
        .map(|(_, a, _)| a.rate_ci_high.max(a.rate))
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.15;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (1.0 - v / top);
    for tick in ticks(0.0, top, 5) {
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eceff4\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y(tick) + 4.0,
            pct(tick, if top < 0.05 { 1 } else { 0 }),
            y = y(tick)
        );
    }
    let slot = (W - LEFT - RIGHT) / arms.len() as f64;
    for (i, (label, a, colour)) in arms.iter().enumerate() {
        let cx = LEFT + slot * (i as f64 + 0.5);
        let bw = slot * 0.45;
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
            cx - bw / 2.0,
            y(a.rate),
            (y(0.0) - y(a.rate)).max(0.0)
        );
        let (lo, hi) = (y(a.rate_ci_low), y(a.rate_ci_high));
        let _ = writeln!(
            out,
            "<g stroke=\"#1d2330\" stroke-width=\"1.5\"><line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{lo:.1}\" y2=\"{hi:.1}\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{lo:.1}\" y2=\"{lo:.1}\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{hi:.1}\" y2=\"{hi:.1}\"/></g>",
            cx - 8.0,
            cx + 8.0,
            cx - 8.0,
            cx + 8.0
        );
        let _ = writeln!(
            out,
            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}: {} (n={})</text>",
            H - BOTTOM + 16.0,
            pct(a.rate, 2),
            a.users
        );
        let _ = writeln!(
            out,
            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" class=\"muted\">[{}, {}]</text>",
            H - BOTTOM + 30.0,
            pct(a.rate_ci_low, 2),
            pct(a.rate_ci_high, 2)
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#5d6577\"/>",
        W - RIGHT,
        y(0.0),
        y(0.0)
    );
    out.push_str("</svg>\n");
}

/// Cumulative relative lift by day: the estimate as a line, its interval as a band, and zero.
fn lift_chart(out: &mut String, daily: &[DailyPoint], level: f64) {
    svg_open(
        out,
        "chart-lift",
        &format!("Cumulative relative lift ({} CI)", pct(level, 0)),
    );
    let points: Vec<(usize, f64, f64, f64)> = daily
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.relative_lift.map(|l| (i, l.estimate, l.ci_low, l.ci_high)))
        .filter(|(_, e, lo, hi)| e.is_finite() && lo.is_finite() && hi.is_finite())
        .collect();
    if points.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">Not enough data for a lift estimate yet</text>",
            W / 2.0,
            H / 2.0
        );
        out.push_str("</svg>\n");
        return;
    }
    let lo = points.iter().map(|p| p.2).fold(0.0, f64::min);
    let hi = points.iter().map(|p| p.3).fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.08).max(0.01);
    let (lo, hi) = (lo - pad, hi + pad);
    let plot_h = H - TOP - BOTTOM;
    let plot_w = W - LEFT - RIGHT;
    let last = daily.len().saturating_sub(1).max(1) as f64;
    let x = |i: usize| LEFT + plot_w * (i as f64 / last);
    let y = |v: f64| TOP + plot_h * (1.0 - (v - lo) / (hi - lo));
    for tick in ticks(lo, hi, 5) {
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eceff4\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y(tick) + 4.0,
            if tick.abs() < 1e-12 {
                "0%".to_string()
            } else {
                signed_pct(tick, 0)
            },
            yy = y(tick)
        );
    }
    let upper = points.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.3)));
    let lower = points
        .iter()
        .rev()
        .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.2)));
    let band: Vec<String> = upper.chain(lower).collect();
    let _ = writeln!(
        out,
        "<polygon points=\"{}\" fill=\"#3b6fd8\" fill-opacity=\"0.18\" stroke=\"none\"/>",
        band.join(" ")
    );
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{z:.1}\" y2=\"{z:.1}\" stroke=\"#5d6577\" stroke-dasharray=\"4 3\"/>",
        W - RIGHT,
        z = y(0.0)
    );
    let line: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
        .collect();
    let _ = writeln!(
        out,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#3b6fd8\" stroke-width=\"2\"/>",
        line.join(" ")
    );
    for p in &points {
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#3b6fd8\"><title>{}: {} [{}, {}]</title></circle>",
            x(p.0),
            y(p.1),
            daily[p.0].date,
            signed_pct(p.1, 1),
            signed_pct(p.2, 1),
            signed_pct(p.3, 1)
        );
    }
    if let (Some(first), Some(end)) = (daily.first(), daily.last()) {
        let _ = writeln!(
            out,
            "<text x=\"{LEFT}\" y=\"{:.1}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            H - BOTTOM + 16.0,
            first.date,
            W - RIGHT,
            H - BOTTOM + 16.0,
            end.date
        );
    }
    out.push_str("</svg>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(0.0, 0.1, 5);
        let want = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1];
        assert_eq!(t.len(), want.len(), "{t:?}");
        assert!(t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{t:?}");
        let t = ticks(-0.13, 0.42, 5);
        assert!(t.iter().all(|v| (-0.13..=0.42).contains(v)), "{t:?}");
        assert!(t.contains(&0.0));
    }

    #[test]
    fn html_text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn formats_parse() {
        assert_eq!("HTML".parse::<Format>(), Ok(Format::Html));
        assert!("pdf".parse::<Format>().is_err());
    }

    #[test]
    fn empty_reports_render() {
        for f in [Format::Table, Format::Json, Format::Csv, Format::Html] {
            assert!(!render(&[], f).is_empty());
        }
        assert_eq!(render(&[], Format::Json).trim(), "[]");
    }
}
