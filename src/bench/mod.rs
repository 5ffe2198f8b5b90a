//! `nudge bench`: each stage of the data flow measured beside a ceiling measured in the same run,
//! so the ratio means something on a noisy machine.
//!
//! Every stage runs on scratch data (a fresh SQLite file, a fresh PostgreSQL database when
//! `--postgres` names a server) and reports `{stage, unit, nudge, reference, ratio}`. A stage
//! whose reference is missing (Postfix's `smtp-sink`, scikit-learn) is skipped with the reason;
//! the command fails only when a stage errors, never on a figure.

mod delivery;
mod fanout;
mod ingest;
mod latency;
mod memory;
mod ml;
pub mod rules;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use serde::Serialize;

/// `nudge bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Small sizes: the whole suite in under 3 minutes on 2 cores (the CI smoke run).
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON: one object per stage.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Only these stages (comma-separated): ingest, rules, fanout, delivery, latency, memory, ml.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// A PostgreSQL server for the PostgreSQL stages: the bench creates a scratch database there
    /// and drops it afterwards. Without it those stages are skipped.
    #[arg(long, env = "NUDGE_BENCH_POSTGRES_URL", value_name = "URL")]
    pub postgres: Option<String>,
    /// Folder for scratch databases and files (default: the system's temporary folder).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Internal: fit the ML stage's forest on this CSV in a fresh process and print its report.
    #[arg(long, hide = true, value_name = "CSV")]
    pub ml_fit: Option<PathBuf>,
}

pub use ml::FitReport;

/// `nudge bench --ml-fit CSV` (the ML stage's child process).
pub fn ml_fit(csv: &Path) -> anyhow::Result<()> {
    ml::fit_csv(csv)
}

/// One row of the results.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub stage: String,
    pub unit: String,
    pub nudge: Option<f64>,
    pub reference: Option<f64>,
    /// nudge ÷ reference, oriented so that higher is better for nudge.
    pub ratio: Option<f64>,
    /// What the reference is.
    pub reference_is: String,
    /// The goal of the stage, in words.
    pub goal: String,
    /// Whether the goal is met; `None` when it has no figure.
    pub met: Option<bool>,
    /// Sizes and anything else needed to read the figure.
    pub note: String,
    /// Why the stage did not run.
    pub skipped: Option<String>,
    /// Why the stage failed.
    pub error: Option<String>,
}

impl StageResult {
    fn new(stage: &str, unit: &str, reference_is: &str, goal: &str) -> StageResult {
        StageResult {
            stage: stage.into(),
            unit: unit.into(),
            nudge: None,
            reference: None,
            ratio: None,
            reference_is: reference_is.into(),
            goal: goal.into(),
            met: None,
            note: String::new(),
            skipped: None,
            error: None,
        }
    }

    /// Higher is better: ratio = nudge ÷ reference.
    fn throughput(mut self, nudge: f64, reference: Option<f64>) -> StageResult {
        self.nudge = Some(nudge);
        self.reference = reference;
        self.ratio = reference.filter(|r| *r > 0.0).map(|r| nudge / r);
        self
    }

    /// Lower is better (latency, memory, time): ratio = reference ÷ nudge.
    fn cost(mut self, nudge: f64, reference: Option<f64>) -> StageResult {
        self.nudge = Some(nudge);
        self.reference = reference;
        self.ratio = reference.filter(|_| nudge > 0.0).map(|r| r / nudge);
        self
    }

    fn met(mut self, met: bool) -> StageResult {
        self.met = Some(met);
        self
    }

    fn note(mut self, note: impl Into<String>) -> StageResult {
        self.note = note.into();
        self
    }

    fn skip(mut self, why: impl Into<String>) -> StageResult {
        self.skipped = Some(why.into());
        self
    }
}

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub ingest_events: usize,
    pub rules_seconds: f64,
    pub fanout_users: usize,
    pub delivery_messages: usize,
    pub latency_seconds: u64,
    pub latency_rate: u64,
    pub memory_users: usize,
    pub memory_events: usize,
    pub ml_users: usize,
    pub ml_days: u32,
    pub ml_rows: usize,
}

impl Sizes {
    fn of(quick: bool) -> Sizes {
        if quick {
            Sizes {
                ingest_events: 24_000,
                rules_seconds: 1.0,
                fanout_users: 20_000,
                delivery_messages: 2_000,
                latency_seconds: 8,
                latency_rate: 500,
                memory_users: 20_000,
                memory_events: 200_000,
                ml_users: 1_500,
                ml_days: 30,
                ml_rows: 60_000,
            }
        } else {
            Sizes {
                ingest_events: 200_000,
                rules_seconds: 5.0,
                fanout_users: 1_000_000,
                delivery_messages: 20_000,
                latency_seconds: 60,
                latency_rate: 2_000,
                memory_users: 1_000_000,
                memory_events: 10_000_000,
                ml_users: 50_000,
                ml_days: 60,
                ml_rows: 1_000_000,
            }
        }
    }
}

/// What every stage gets.
pub(crate) struct Ctx {
    pub sizes: Sizes,
    pub scratch: PathBuf,
    pub postgres: Option<String>,
}

impl Ctx {
    /// A fresh folder under the scratch folder.
    pub fn folder(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.scratch.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

const STAGES: [&str; 7] = ["ingest", "rules", "fanout", "delivery", "latency", "memory", "ml"];

/// Runs the suite, prints the table, writes the JSON. Errors only when a stage failed.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    for name in &args.only {
        if !STAGES.contains(&name.as_str()) {
            anyhow::bail!("unknown stage `{name}`; stages: {}", STAGES.join(", "));
        }
    }
    crate::delivery::install_crypto_provider();
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this nudge was built without optimisation; figures mean little. Build with `cargo build --release`."
        );
    }
    let scratch = args
        .scratch
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("nudge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let ctx = Ctx {
        sizes: Sizes::of(args.quick),
        scratch: scratch.clone(),
        postgres: args.postgres.clone(),
    };
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let started = Instant::now();
    let mut results = Vec::new();
    for stage in STAGES {
        if !wanted(stage) {
            continue;
        }
        eprintln!("bench: {stage} …");
        let t = Instant::now();
        let rows = match stage {
            "ingest" => ingest::run(&ctx).await,
            "rules" => rules::run(&ctx),
            "fanout" => fanout::run(&ctx).await,
            "delivery" => delivery::run(&ctx).await,
            "latency" => latency::run(&ctx).await,
            "memory" => memory::run(&ctx).await,
            "ml" => ml::run(&ctx).await,
            _ => unreachable!("checked above"),
        };
        match rows {
            Ok(rows) => results.extend(rows),
            Err(e) => {
                let mut failed = StageResult::new(stage, "", "", "");
                failed.error = Some(format!("{e:#}"));
                results.push(failed);
            }
        }
        eprintln!("bench: {stage} done in {:.1} s", t.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{}", table(&results));
    println!(
        "{} stages in {:.0} s{}",
        results.len(),
        started.elapsed().as_secs_f64(),
        if args.quick { " (--quick sizes)" } else { "" }
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")?;
    }
    let failed: Vec<&StageResult> = results.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} stage(s) failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|r| format!("{}: {}", r.stage, r.error.as_deref().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

fn figure(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v.abs() >= 100.0 => format_thousands(v.round() as i64),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn format_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The results as an aligned text table.
pub fn table(results: &[StageResult]) -> String {
    let header = ["stage", "unit", "nudge", "reference", "ratio", "goal", "met"];
    let mut rows: Vec<[String; 7]> = vec![header.map(String::from)];
    let mut notes = Vec::new();
    for r in results {
        let met = match (r.met, &r.skipped, &r.error) {
            (_, _, Some(_)) => "ERROR".to_string(),
            (_, Some(_), _) => "skipped".to_string(),
            (Some(true), _, _) => "yes".to_string(),
            (Some(false), _, _) => "no".to_string(),
            (None, _, _) => "—".to_string(),
        };
        rows.push([
            r.stage.clone(),
            r.unit.clone(),
            figure(r.nudge),
            figure(r.reference),
            r.ratio.map_or("—".into(), |x| format!("{x:.2}")),
            r.goal.clone(),
            met,
        ]);
        let mut text = Vec::new();
        if !r.reference_is.is_empty() {
            text.push(format!("reference: {}", r.reference_is));
        }
        if !r.note.is_empty() {
            text.push(r.note.clone());
        }
        if let Some(s) = &r.skipped {
            text.push(format!("skipped: {s}"));
        }
        if let Some(e) = &r.error {
            text.push(format!("error: {e}"));
        }
        if !text.is_empty() {
            notes.push(format!("  {}: {}", r.stage, text.join("; ")));
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if (2..=4).contains(&c) {
                    format!("{}{cell}", " ".repeat(pad))
                } else {
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
            out.push('\n');
        }
    }
    if !notes.is_empty() {
        out.push_str("\nnotes:\n");
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

/// Peak resident memory (VmHWM) of a process, in MiB; `None` where /proc is not readable.
pub(crate) fn peak_rss_mib(pid: &str) -> Option<f64> {
    proc_status_kib(pid, "VmHWM:").map(|k| k / 1024.0)
}

/// Current resident memory (VmRSS) of a process, in MiB.
pub(crate) fn rss_mib(pid: &str) -> Option<f64> {
    proc_status_kib(pid, "VmRSS:").map(|k| k / 1024.0)
}

fn proc_status_kib(pid: &str, key: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A scratch SQLite store in `dir`, migrated.
pub(crate) async fn sqlite_store(dir: &Path) -> anyhow::Result<(crate::store::Store, String)> {
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let store = crate::store::Store::connect(&url).await?;
    store.migrate().await?;
    Ok((store, url))
}

/// A fresh PostgreSQL database on the server of `admin_url`, migrated; drop it with [`drop_pg`].
pub(crate) async fn postgres_store(admin_url: &str) -> anyhow::Result<(crate::store::Store, String)> {
    let name = format!("nudge_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    let Some((base, _)) = admin_url.rsplit_once('/') else {
        anyhow::bail!("--postgres needs a URL with a database path, e.g. postgres://user@host/postgres");
    };
    let url = format!("{base}/{name}");
    let store = crate::store::Store::connect(&url).await?;
    store.migrate().await?;
    Ok((store, url))
}

/// Drops a database made by [`postgres_store`].
pub(crate) async fn drop_pg(admin_url: &str, url: &str) {
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(admin) = sqlx::PgPool::connect(admin_url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

/// The bench's rule set, written to `dir`: a triggered campaign (ingest), an immediate push on
/// `bench_ping` (latency) and a scheduled campaign with `if:`, holdout, caps, quiet hours and a
/// predicted send time (fan-out).
pub(crate) fn write_rules(dir: &Path) -> anyhow::Result<crate::rules::RuleSet> {
    let files = [
        ("_global.yaml", GLOBAL_YAML),
        ("cart.yaml", CART_YAML),
        ("ping.yaml", PING_YAML),
        ("digest.yaml", DIGEST_YAML),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text)?;
    }
    crate::rules::load_dir(dir).map_err(|diags| {
        anyhow::anyhow!(
            "the bench's own rules are invalid: {}",
            diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; ")
        )
    })
}

const GLOBAL_YAML: &str = r#"control_group: 5%
timezone: UTC
quiet_hours: { from: "23:30", to: "00:30" }
caps:
  - { channel: any, max: 3, per: 1d }
  - { channel: email, max: 5, per: 7d }
"#;

const CART_YAML: &str = r#"campaign: cart_abandonment
name: Cart
priority: 50
when:
  event: cart_updated
reentry: 7d
wait: 2h
unless:
  - event: order_completed
if:
  - user.traits.plan != "enterprise"
  - event.properties.cart_value >= 20
then:
  channels: [email, push]
  send_time: immediate
  email:
    subject: "Still thinking about {{ event.properties.product_name }}?"
    body: "Your cart is waiting."
  push:
    title: "Your cart"
    body: "{{ event.properties.item_count }} items"
holdout: 10%
goal:
  event: order_completed
  within: 3d
"#;

const PING_YAML: &str = r#"campaign: ping
name: Ping
when:
  event: bench_ping
reentry: always
quiet_hours: false
then:
  channels: [push]
  send_time: immediate
  push:
    title: "ping"
    body: "{{ event.properties.seq }}"
holdout: 0%
"#;

const DIGEST_YAML: &str = r#"campaign: digest
name: Digest
priority: 10
when:
  schedule: "0 0 0 1 1 *"
reentry: always
if:
  - user.traits.plan != "free"
then:
  channels: [email]
  send_time: predicted
  within: 24h
  email:
    subject: "Your week, {{ user.traits.first_name | default('there') }}"
    body: "Hello {{ user.id }}, here is what happened this week."
holdout: 10%
caps:
  - { channel: email, max: 2, per: 7d }
goal:
  event: session_started
  within: 2d
"#;

/// An engine over `store` with the bench's rules and the system clock.
pub(crate) async fn engine(
    store: &crate::store::Store,
    rules: crate::rules::RuleSet,
) -> anyhow::Result<std::sync::Arc<crate::engine::Engine>> {
    let engine = crate::engine::Engine::new(
        store.clone(),
        std::sync::Arc::new(crate::rules::RulesHandle::new(rules)),
        std::sync::Arc::new(crate::clock::SystemClock),
        crate::tracking::tokens::Signer::new(b"nudge-bench"),
        crate::engine::EngineConfig {
            public_url: "http://127.0.0.1:8080".into(),
            ..crate::engine::EngineConfig::default()
        },
    )
    .await?;
    Ok(std::sync::Arc::new(engine))
}

/// Serves nudge's HTTP API for `engine` on a loopback port; returns its base URL.
pub(crate) async fn serve_http(engine: std::sync::Arc<crate::engine::Engine>) -> anyhow::Result<String> {
    let state = crate::http::AppState {
        engine,
        write_keys: std::sync::Arc::new(vec![crate::config::Secret::new(WRITE_KEY)]),
        admin_key: None,
        metrics: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let app = crate::http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

pub(crate) const WRITE_KEY: &str = "wk_bench";

/// `POST /v1/batch` with the bench's write key, as a Segment client sends it; errors unless 2xx.
pub(crate) async fn post_batch(client: &reqwest::Client, url: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let r = client
        .post(url)
        .basic_auth(WRITE_KEY, Some(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if !r.status().is_success() {
        anyhow::bail!(
            "POST /v1/batch answered {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Percentile (0–100) of sorted values, nearest rank.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_notes_skips() {
        let rows = vec![
            StageResult::new("ingest_sqlite", "events/s", "raw INSERT", "ratio ≥ 0.5")
                .throughput(12_345.6, Some(24_000.0))
                .met(true),
            StageResult::new("delivery_smtp", "messages/s", "smtp-source", "ratio ≥ 0.8")
                .skip("smtp-sink not found"),
        ];
        let text = table(&rows);
        assert!(text.contains("12,346"), "{text}");
        assert!(text.contains("0.51"), "{text}");
        assert!(text.contains("skipped: smtp-sink not found"), "{text}");
        let lines: Vec<&str> = text.lines().take(4).collect();
        assert_eq!(lines[2].find("events/s"), lines[0].find("unit"), "{text}");
    }

    #[test]
    fn ratios_point_the_same_way() {
        let fast = StageResult::new("x", "/s", "", "").throughput(50.0, Some(100.0));
        assert_eq!(fast.ratio, Some(0.5));
        let slow = StageResult::new("x", "ms", "", "").cost(20.0, Some(5.0));
        assert_eq!(slow.ratio, Some(0.25));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
    }

    #[test]
    fn the_bench_rules_are_valid() {
        let dir = std::env::temp_dir().join(format!("nudge-bench-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = write_rules(&dir).expect("valid");
        assert_eq!(rules.campaigns.len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
