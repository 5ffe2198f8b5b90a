//! Configuration: flags > `NUDGE_*` environment variables > `nudge.toml` > defaults.
//!
//! clap resolves the first two (each flag names its variable); this module merges the result with
//! the file and the defaults into one [`Settings`]. Secrets come from the environment only and sit
//! in [`Secret`], which never prints its value.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// A value that must never reach a log: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in constant time (for a given length), so response times do not leak the key.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(candidate).into()
    }

    /// A comma-separated list (`NUDGE_WRITE_KEYS`), blanks ignored.
    pub fn parse_list(list: &str) -> Vec<Secret> {
        list.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `nudge.toml`. Every key is optional; unknown keys are an error so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub database: Option<String>,
    pub rules: Option<PathBuf>,
    pub bind: Option<String>,
    pub smtp: Option<String>,
    pub push: Option<String>,
    pub outbox: Option<PathBuf>,
    pub public_url: Option<String>,
    pub log_format: Option<String>,
    pub email_from: Option<String>,
    /// Delivery workers per process.
    pub workers: Option<usize>,
    /// Process-wide SMTP send rate, e.g. `"50/s"`.
    pub smtp_rate: Option<String>,
    /// Process-wide push send rate, e.g. `"500/s"`.
    pub push_rate: Option<String>,
    /// This node's name in leases and cron firings (default: host name and a random suffix).
    pub node_id: Option<String>,
    /// Events older than this trigger no campaign (default `1d`).
    pub trigger_max_age: Option<String>,
    /// How long a claimed entry or message is this node's before another may take it over
    /// (default `60s`, at least `1s`; `NUDGE_LEASE`). Heartbeats extend it every third of it.
    pub lease: Option<String>,
    /// Longest one send may take (default: 30 s, or half the lease when that is shorter;
    /// `NUDGE_ATTEMPT_TIMEOUT`). Must be shorter than the lease, or `serve` refuses to start.
    pub attempt_timeout: Option<String>,
    /// When to try a failed send again.
    pub retry: Option<RetryFile>,
    /// When `serve` trains the models: a cron expression with seconds (default `"0 0 3 * * *"`,
    /// nightly at 03:00 UTC; one node per firing), or `"off"`. `NUDGE_TRAIN_SCHEDULE`.
    pub train_schedule: Option<String>,
}

/// `[retry]` in `nudge.toml`: `attempts = 8`, `initial = "30s"`, `max = "1h"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    pub attempts: Option<u32>,
    pub initial: Option<String>,
    pub max: Option<String>,
}

/// Shortest lease `serve` accepts: a heartbeat every third of it must still reach the database.
pub const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// A duration in the configuration: `1500ms`, or as in rules (`30s 15m 2h 3d 1w`).
pub fn parse_setting_duration(name: &str, text: &str) -> Result<std::time::Duration, ConfigError> {
    let invalid = |e: String| ConfigError::Invalid(format!("{name}: {e}"));
    if let Some(ms) = text.trim().strip_suffix("ms") {
        return ms
            .parse::<u64>()
            .map(std::time::Duration::from_millis)
            .map_err(|_| invalid(format!("invalid duration `{text}`")));
    }
    let d = crate::rules::duration::parse_duration(text).map_err(invalid)?;
    d.to_std()
        .map_err(|_| invalid(format!("`{text}` must not be negative")))
}

impl FileConfig {
    /// Reads `path`; a missing file is an empty configuration unless it was asked for explicitly.
    pub fn load(path: &Path, explicit: bool) -> Result<FileConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| ConfigError::File(path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(FileConfig::default()),
            Err(e) => Err(ConfigError::File(path.display().to_string(), e.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0}: {1}")]
    File(String, String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Everything `serve` and the other commands need, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub rules_dir: PathBuf,
    pub bind: String,
    pub smtp_url: Option<Secret>,
    pub push_url: Option<String>,
    pub outbox_dir: PathBuf,
    pub public_url: String,
    pub log_format: LogFormat,
    pub email_from: String,
    pub workers: usize,
    pub smtp_rate: Option<String>,
    pub push_rate: Option<String>,
    pub node_id: Option<String>,
    pub trigger_max_age: chrono::Duration,
    /// Lease of claimed entries and messages (`lease`, `NUDGE_LEASE`).
    pub lease: std::time::Duration,
    /// Per-attempt send timeout (`attempt_timeout`, `NUDGE_ATTEMPT_TIMEOUT`).
    pub attempt_timeout: std::time::Duration,
    /// `[retry]`.
    pub retry: crate::delivery::RetryPolicy,
    /// `NUDGE_WRITE_KEYS`, comma-separated.
    pub write_keys: Vec<Secret>,
    /// `NUDGE_ADMIN_KEY`.
    pub admin_key: Option<Secret>,
    /// `NUDGE_SECRET`; when absent one is generated and stored in the database.
    pub secret: Option<Secret>,
    /// Cron expression of scheduled training (`train_schedule`); `None` when `"off"`.
    pub train_schedule: Option<String>,
}

/// Nightly at 03:00 UTC.
pub const DEFAULT_TRAIN_SCHEDULE: &str = "0 0 3 * * *";

/// What the command line (flags and their environment variables) said; `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub database: Option<String>,
    pub rules: Option<PathBuf>,
    pub bind: Option<String>,
    pub smtp: Option<String>,
    pub push: Option<String>,
    pub outbox: Option<PathBuf>,
    pub log_format: Option<String>,
}

pub const DEFAULT_DATABASE: &str = "sqlite://nudge.db";
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

impl Settings {
    pub fn resolve(cli: Overrides, file: FileConfig) -> Result<Settings, ConfigError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let bind = cli.bind.or(file.bind).unwrap_or_else(|| DEFAULT_BIND.into());
        let log_format = match cli.log_format.or(file.log_format).as_deref() {
            None | Some("human") | Some("text") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "log format `{other}`: expected human or json"
                )));
            }
        };
        let public_url = env("NUDGE_PUBLIC_URL")
            .or(file.public_url)
            .unwrap_or_else(|| format!("http://{bind}"))
            .trim_end_matches('/')
            .to_string();
        let trigger_max_age = match file.trigger_max_age {
            Some(text) => crate::rules::duration::parse_duration(&text)
                .map_err(|e| ConfigError::Invalid(format!("trigger_max_age: {e}")))?,
            None => chrono::Duration::days(1),
        };
        let lease = match env("NUDGE_LEASE").or(file.lease) {
            Some(text) => parse_setting_duration("lease", &text)?,
            None => std::time::Duration::from_secs(60),
        };
        if lease < MIN_LEASE {
            return Err(ConfigError::Invalid(format!(
                "lease ({lease:?}) must be at least {MIN_LEASE:?}: a heartbeat every third of it must reach \
                 the database in time"
            )));
        }
        let attempt_timeout = match env("NUDGE_ATTEMPT_TIMEOUT").or(file.attempt_timeout) {
            Some(text) => parse_setting_duration("attempt_timeout", &text)?,
            None => std::time::Duration::from_secs(30).min(lease / 2),
        };
        let mut retry = crate::delivery::RetryPolicy::default();
        if let Some(r) = file.retry {
            if let Some(n) = r.attempts {
                retry.max_attempts = n;
            }
            if let Some(text) = r.initial {
                retry.initial = parse_setting_duration("retry.initial", &text)?;
            }
            if let Some(text) = r.max {
                retry.max = parse_setting_duration("retry.max", &text)?;
            }
        }
        let train_schedule = match env("NUDGE_TRAIN_SCHEDULE")
            .or(file.train_schedule)
            .unwrap_or_else(|| DEFAULT_TRAIN_SCHEDULE.into())
        {
            off if off.trim().eq_ignore_ascii_case("off") => None,
            expr => {
                croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Required)
                    .build()
                    .parse(&expr)
                    .map_err(|e| {
                        ConfigError::Invalid(format!(
                            "train_schedule `{expr}`: {e} (a cron expression with seconds, e.g. \"0 0 3 * * *\", or \"off\")"
                        ))
                    })?;
                Some(expr)
            }
        };
        let mut database_url = cli
            .database
            .or(file.database)
            .unwrap_or_else(|| DEFAULT_DATABASE.into());
        // `sqlite:nudge.db` and a bare path are common spellings; sqlx wants `sqlite://`.
        if !database_url.contains("://") && !database_url.starts_with("sqlite:") {
            database_url = format!("sqlite://{database_url}");
        }
        Ok(Settings {
            database_url,
            rules_dir: cli
                .rules
                .or(file.rules)
                .unwrap_or_else(|| PathBuf::from("./rules")),
            bind,
            smtp_url: cli.smtp.or(file.smtp).map(Secret::new),
            push_url: cli.push.or(file.push),
            outbox_dir: cli
                .outbox
                .or(file.outbox)
                .unwrap_or_else(|| PathBuf::from("./outbox")),
            public_url,
            log_format,
            email_from: env("NUDGE_EMAIL_FROM")
                .or(file.email_from)
                .unwrap_or_else(|| "nudge@localhost".into()),
            workers: file.workers.unwrap_or(4).max(1),
            smtp_rate: env("NUDGE_SMTP_RATE").or(file.smtp_rate),
            push_rate: env("NUDGE_PUSH_RATE").or(file.push_rate),
            node_id: env("NUDGE_NODE_ID").or(file.node_id),
            trigger_max_age,
            lease,
            attempt_timeout,
            retry,
            write_keys: env("NUDGE_WRITE_KEYS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(Secret::new)
                        .collect()
                })
                .unwrap_or_default(),
            admin_key: env("NUDGE_ADMIN_KEY").map(Secret::new),
            secret: env("NUDGE_SECRET").map(Secret::new),
            train_schedule,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file: FileConfig =
            toml::from_str("bind = \"0.0.0.0:9000\"\ndatabase = \"postgres://x/y\"").unwrap();
        let cli = Overrides {
            database: Some("sqlite://a.db".into()),
            ..Overrides::default()
        };
        let s = Settings::resolve(cli, file).unwrap();
        assert_eq!(s.database_url, "sqlite://a.db");
        assert_eq!(s.bind, "0.0.0.0:9000");
        assert_eq!(s.rules_dir, PathBuf::from("./rules"));
        assert_eq!(s.outbox_dir, PathBuf::from("./outbox"));
    }

    #[test]
    fn lease_timeout_and_retry_from_the_file() {
        let file: FileConfig =
            toml::from_str("lease = \"2s\"\n[retry]\nattempts = 3\ninitial = \"500ms\"\nmax = \"4s\"")
                .unwrap();
        let s = Settings::resolve(Overrides::default(), file).unwrap();
        assert_eq!(s.lease, std::time::Duration::from_secs(2));
        assert_eq!(s.attempt_timeout, std::time::Duration::from_secs(1));
        assert_eq!(s.retry.max_attempts, 3);
        assert_eq!(s.retry.initial, std::time::Duration::from_millis(500));
        let defaults = Settings::resolve(Overrides::default(), FileConfig::default()).unwrap();
        assert_eq!(defaults.lease, std::time::Duration::from_secs(60));
        assert_eq!(defaults.attempt_timeout, std::time::Duration::from_secs(30));
        let short: FileConfig = toml::from_str("lease = \"500ms\"").unwrap();
        let err = Settings::resolve(Overrides::default(), short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("databse = \"x\"").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }
}
