//! The command line: `nudge serve | validate | dry-run | import | migrate | schema`.
//!
//! Parses flags (each with its `NUDGE_*` variable), resolves [`Settings`], and calls into the
//! library. Every failure becomes an [`AppError`] whose exit code tells a supervisor what happened.

mod dry_run;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use dry_run::{DryRunReport, dry_run, replay};

use crate::{
    config::{ConfigError, FileConfig, Overrides, Settings},
    rules::Diagnostic,
    store::StoreError,
};

#[derive(Debug, Parser)]
#[command(
    name = "nudge",
    version,
    about = "Marketing automation as code: campaigns as YAML rules, holdouts, caps, lift.",
    after_help = "Examples:\n  nudge serve                       run the daemon (SQLite file, ./rules, files in ./outbox)\n  nudge validate rules/             check every rule file, print file:line:column errors\n  nudge dry-run rules/ --since 7d   who would have received what over the last week\n  nudge import events.ndjson        load history (Segment calls, one per line)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Database URL: sqlite://FILE or postgres://USER@HOST/DB.
    #[arg(long, global = true, env = "NUDGE_DATABASE_URL")]
    pub database: Option<String>,
    /// Folder of rule files.
    #[arg(long, global = true, env = "NUDGE_RULES")]
    pub rules: Option<PathBuf>,
    /// Configuration file (default ./nudge.toml when present).
    #[arg(long, global = true, env = "NUDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: human (default) or json.
    #[arg(long = "log-format", global = true, env = "NUDGE_LOG")]
    pub log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP ingestion, decisions, delivery, schedules, hot reload of rules.
    #[command(
        after_help = "Example:\n  NUDGE_WRITE_KEYS=wk_live nudge serve --bind 0.0.0.0:8080 --smtp smtp://user:pass@mail:587"
    )]
    Serve(ServeArgs),
    /// Check rule files; print every problem as file:line:column and exit non-zero if any.
    #[command(after_help = "Example:\n  nudge validate rules/")]
    Validate {
        /// Folder of rule files (default: --rules, then ./rules).
        dir: Option<PathBuf>,
    },
    /// Replay stored events through the rules in DIR without sending or writing anything.
    #[command(
        name = "dry-run",
        after_help = "Example:\n  nudge dry-run rules/ --since 7d --sample 5"
    )]
    DryRun {
        /// Folder of rule files (default: --rules, then ./rules).
        dir: Option<PathBuf>,
        /// How far back to replay (30s 15m 2h 3d 1w).
        #[arg(long, default_value = "7d")]
        since: String,
        /// Users shown per campaign.
        #[arg(long, default_value_t = 5)]
        sample: usize,
        /// Output: table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Load events from NDJSON (one Segment call per line) or CSV; campaigns are not triggered.
    #[command(after_help = "Examples:\n  nudge import history.ndjson\n  nudge import users.csv --trigger")]
    Import {
        file: PathBuf,
        /// Also enter the campaigns these events trigger (recent events only).
        #[arg(long)]
        trigger: bool,
    },
    /// Reports for analysts: `nudge report lift`.
    Report {
        #[command(subcommand)]
        report: ReportKind,
    },
    /// Write a synthetic history with known ground truth (for demos, model tests and benchmarks).
    #[command(after_help = "Example:\n  nudge simulate --users 50000 --days 60 --seed 7 --truth truth.json")]
    Simulate(crate::ml::simulate::SimulateArgs),
    /// Train the send-time, channel and propensity models on the stored history; promote each
    /// only when it beats the model in service and its baseline on the most recent days.
    #[command(
        after_help = "Examples:\n  nudge train\n  nudge train --model propensity\n  nudge report models"
    )]
    Train {
        /// Only this model: send_time, channel or propensity (every goal the rules use).
        #[arg(long)]
        model: Option<String>,
        /// Days of most recent history held out for evaluation.
        #[arg(long, default_value_t = 7)]
        eval_days: u32,
    },
    /// Measure each stage (ingest, rules, fan-out, delivery, latency, memory, ML) beside a
    /// ceiling measured in the same run, on scratch data. Build with `--release` first.
    #[command(
        after_help = "Examples:\n  nudge bench --quick\n  nudge bench --json bench.json --postgres postgres://postgres@127.0.0.1/postgres\n  nudge bench --only ingest,rules"
    )]
    Bench(crate::bench::BenchArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Print the JSON Schema of the rule format (for editors: yaml-language-server).
    Schema,
}

#[derive(Debug, Subcommand)]
pub enum ReportKind {
    /// Model cards: metrics beside their baselines, calibration, features, drift, fallback share.
    #[command(
        after_help = "Examples:\n  nudge report models\n  nudge report models --format html --out models.html"
    )]
    Models {
        /// table, json or html.
        #[arg(long, default_value = "table")]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Holdout lift per campaign: rates, lift with CIs, p-value, SRM, guardrails (docs/lift.md).
    #[command(
        after_help = "Examples:\n  nudge report lift\n  nudge report lift --campaign cart_abandonment --since 30d --format html --out lift.html\n  nudge report lift --history --campaign cart_abandonment"
    )]
    Lift {
        /// One campaign (default: every campaign with a goal).
        #[arg(long)]
        campaign: Option<String>,
        /// Only assignments this recent (30s 15m 2h 3d 1w); default: all.
        #[arg(long)]
        since: Option<String>,
        /// table, json, csv or html.
        #[arg(long, default_value = "table")]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Confidence level of the intervals.
        #[arg(long, default_value_t = 0.95)]
        confidence: f64,
        /// Lift over time: the daily snapshots `serve` stores (table, json or csv).
        #[arg(long)]
        history: bool,
    },
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "NUDGE_BIND")]
    pub bind: Option<String>,
    /// SMTP URL (smtp://, smtps://); default: .eml files under the outbox folder.
    #[arg(long, env = "NUDGE_SMTP_URL")]
    pub smtp: Option<String>,
    /// Push endpoint URL; default: push.ndjson under the outbox folder.
    #[arg(long, env = "NUDGE_PUSH_URL")]
    pub push: Option<String>,
    /// Folder for file transports.
    #[arg(long, env = "NUDGE_OUTBOX_DIR")]
    pub outbox: Option<PathBuf>,
}

/// Why a command failed, and the exit code a supervisor sees.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{} problem(s) in the rules", .0.len())]
    InvalidRules(Vec<Diagnostic>),
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{0} line(s) rejected")]
    Rejected(usize),
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

impl AppError {
    /// 3 bad rules, 4 database unavailable or failing, 5 bad configuration, 6 some input lines
    /// rejected (the rest was stored), 1 anything else (2 is clap's usage error).
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::InvalidRules(_) => 3,
            AppError::Database(_) => 4,
            AppError::Config(_) => 5,
            AppError::Rejected(_) => 6,
            AppError::Other(_) => 1,
        }
    }
}

impl Cli {
    /// Settings for this invocation.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let (path, explicit) = match &self.global.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("nudge.toml"), false),
        };
        let file = FileConfig::load(&path, explicit)?;
        let serve = match &self.command {
            Command::Serve(a) => Some(a),
            _ => None,
        };
        let overrides = Overrides {
            database: self.global.database.clone(),
            rules: self.global.rules.clone(),
            bind: serve.and_then(|a| a.bind.clone()),
            smtp: serve.and_then(|a| a.smtp.clone()),
            push: serve.and_then(|a| a.push.clone()),
            outbox: serve.and_then(|a| a.outbox.clone()),
            log_format: self.global.log_format.clone(),
        };
        Settings::resolve(overrides, file)
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), AppError> {
    if let Command::Bench(args) = cli.command {
        // Scratch data only: the configured database, rules and transports are not touched.
        return match &args.ml_fit {
            Some(csv) => crate::bench::ml_fit(csv),
            None => crate::bench::run(args).await,
        }
        .map_err(AppError::Other);
    }
    let settings = cli.settings()?;
    match cli.command {
        Command::Serve(_) => crate::app::serve(settings).await,
        Command::Validate { dir } => validate(&dir.unwrap_or(settings.rules_dir)),
        Command::DryRun {
            dir,
            since,
            sample,
            format,
        } => {
            let since = crate::rules::duration::parse_duration(&since)
                .map_err(|e| AppError::Config(ConfigError::Invalid(format!("--since: {e}"))))?;
            let dir = dir.unwrap_or(settings.rules_dir.clone());
            let report = dry_run(&settings, &dir, since, sample).await?;
            match format.as_str() {
                "json" => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?
                ),
                _ => print!("{}", report.to_table()),
            }
            Ok(())
        }
        Command::Import { file, trigger } => crate::app::import(&settings, &file, trigger).await,
        Command::Report {
            report: ReportKind::Models { format, out },
        } => {
            let store = crate::app::open_store(&settings).await?;
            let text = crate::ml::report::models_report(&store, chrono::Utc::now(), &format)
                .await
                .map_err(|e| match e {
                    crate::ml::report::ReportError::Store(e) => AppError::Database(e),
                    crate::ml::report::ReportError::Format(m) => AppError::Config(ConfigError::Invalid(m)),
                })?;
            store.close().await;
            write_report(out.as_deref(), &text)
        }
        Command::Report {
            report:
                ReportKind::Lift {
                    campaign,
                    since,
                    format,
                    out,
                    confidence,
                    history,
                },
        } => {
            let invalid = |m: String| AppError::Config(ConfigError::Invalid(m));
            let format: crate::experiments::report::Format = format
                .parse()
                .map_err(|_| invalid(format!("--format `{format}`: table, json, csv or html")))?;
            if history {
                let store = crate::app::open_store(&settings).await?;
                let rows = store.lift_snapshots(campaign.as_deref()).await?;
                let text = crate::experiments::snapshots::render_history(&rows, format).map_err(invalid)?;
                return write_report(out.as_deref(), &text);
            }
            let now = chrono::Utc::now();
            let since = since
                .map(|s| crate::rules::duration::parse_duration(&s).map(|d| now - d))
                .transpose()
                .map_err(|e| invalid(format!("--since: {e}")))?;
            let rules = crate::rules::load_dir(&settings.rules_dir).map_err(AppError::InvalidRules)?;
            let store = crate::app::open_store(&settings).await?;
            let reports = crate::experiments::lift::lift_reports(
                &store,
                &rules,
                campaign.as_deref(),
                since,
                now,
                confidence,
            )
            .await
            .map_err(|e| match e {
                crate::experiments::lift::LiftError::Store(e) => AppError::Database(e),
                other => invalid(other.to_string()),
            })?;
            let text = crate::experiments::report::render(&reports, format);
            write_report(out.as_deref(), &text)
        }
        Command::Simulate(args) => {
            let store = crate::app::open_store(&settings).await?;
            let rules = crate::rules::RuleSet::empty(settings.rules_dir.clone());
            let engine = crate::app::engine(
                &settings,
                store.clone(),
                std::sync::Arc::new(crate::rules::RulesHandle::new(rules)),
            )
            .await?;
            let truth = crate::ml::simulate::simulate(&engine, &args.options(chrono::Utc::now()))
                .await
                .map_err(|e| AppError::Other(anyhow::Error::from(e)))?;
            if let Some(path) = &args.truth {
                truth
                    .write_json(path)
                    .map_err(|e| AppError::Other(anyhow::Error::from(e)))?;
                println!("hidden truth written to {}", path.display());
            }
            println!(
                "simulated {} users over {} days (seed {})",
                args.users, args.days, args.seed
            );
            store.close().await;
            Ok(())
        }
        Command::Train { model, eval_days } => {
            let only = model
                .map(|m| m.parse::<crate::ml::models::ModelKind>())
                .transpose()
                .map_err(|_| {
                    AppError::Config(ConfigError::Invalid(
                        "--model: send_time, channel or propensity".into(),
                    ))
                })?;
            let rules = crate::rules::load_dir(&settings.rules_dir).map_err(AppError::InvalidRules)?;
            let store = crate::app::open_store(&settings).await?;
            let opts = crate::ml::models::TrainOptions {
                eval_days,
                ..Default::default()
            };
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            let say = |m: &str| bar.set_message(m.to_string());
            let outcomes = crate::ml::training::run(
                &store,
                &rules,
                only,
                chrono::Utc::now(),
                settings.node_id.as_deref().unwrap_or("cli"),
                &opts,
                &say,
            )
            .await
            .map_err(|e| match e {
                crate::ml::training::TrainingError::Store(e) => AppError::Database(e),
                other => AppError::Other(anyhow::Error::from(other)),
            })?;
            bar.finish_and_clear();
            print!("{}", crate::ml::report::outcomes_table(&outcomes));
            store.close().await;
            Ok(())
        }
        Command::Bench(_) => Ok(()), // handled before the settings are read
        Command::Migrate => {
            let store = crate::store::Store::connect(&settings.database_url).await?;
            store.migrate().await?;
            println!(
                "migrations applied to {}",
                crate::store::redact_url(&settings.database_url)
            );
            Ok(())
        }
        Command::Schema => {
            let schema = crate::rules::schema::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).map_err(anyhow::Error::from)?
            );
            Ok(())
        }
    }
}

/// Prints a report, or writes it to `--out`.
fn write_report(out: Option<&std::path::Path>, text: &str) -> Result<(), AppError> {
    match out {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| AppError::Other(anyhow::anyhow!("cannot write {}: {e}", path.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// `nudge validate`: the same compile path as start-up, printing every diagnostic.
pub fn validate(dir: &std::path::Path) -> Result<(), AppError> {
    match crate::rules::load_dir(dir) {
        Ok(set) => {
            println!("{}: {} campaign(s) valid", dir.display(), set.campaigns.len());
            Ok(())
        }
        Err(diags) => {
            for d in &diags {
                println!("{d}");
            }
            let files: std::collections::BTreeSet<&str> = diags.iter().map(|d| d.file.as_str()).collect();
            println!("\n{} error(s) in {} file(s)", diags.len(), files.len());
            Err(AppError::InvalidRules(diags))
        }
    }
}
