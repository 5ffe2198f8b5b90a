//! Delivery: outbox messages out of the store and onto the wire.
//!
//! Takes in due outbox rows (written by the engine, see [`crate::outbox`]), claims them with a
//! lease while checking frequency caps in the same transaction ([`crate::store::CapRules`]),
//! sends email through lettre ([`email`]: SMTP, or `.eml` files by default) and push through an
//! HTTP gateway ([`push`]: FCM v1 JSON, or an NDJSON file by default), under a per-transport rate
//! limit ([`rate`]), and marks each message sent, retried later ([`retry`]) or failed. It hands
//! on the outcome to the store (outbox status, assignment status, message log), metrics
//! (`nudge_messages_total{channel,status}`, `nudge_send_seconds{channel}`) and tracing events
//! (`MessageSent`, `MessageRetried`, `MessageFailed`, `MessageCapped`).
//!
//! [`Delivery`] runs the workers; [`DeliveryConfig`] is everything it needs to know.

pub mod email;
pub mod health;
pub mod push;
pub mod rate;
pub mod relay;
pub mod retry;
mod worker;

pub use health::TransportHealth;
pub use rate::{Rate, RateLimiter};
pub use retry::{NextAttempt, RetryPolicy, Verdict};
pub use worker::{BatchReport, Delivery};

use std::{fmt, path::PathBuf, time::Duration};

use crate::store::{StoreError, redact_url};

/// How delivery runs. `Default` is a fresh machine: no mail server, no push gateway, everything
/// written under `./outbox/`. `serve` fills it from flags > `NUDGE_*` env > `nudge.toml`.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// This process's name in leases (each worker appends `/w<n>`). Use the engine's node id.
    pub node_id: String,
    /// Concurrent workers, each claiming and sending its own batches (`workers`, default 4).
    pub workers: usize,
    /// Messages a worker claims at a time (default 8). Small batches keep work spread across
    /// workers and nodes; the lease covers the whole batch and is extended while it is worked.
    pub batch: i64,
    /// How long a claimed message is ours before another worker or node may take it over
    /// (default 60 s). Must be longer than `attempt_timeout`.
    pub lease: Duration,
    /// Longest one send may take before it counts as a transient failure (default 30 s).
    pub attempt_timeout: Duration,
    /// How often idle workers look for due messages when nothing wakes them (default 1 s).
    pub poll: Duration,
    /// `NUDGE_SMTP_URL` / `--smtp`: `smtp://user:pass@host:port` (plain, or `?tls=required` for
    /// STARTTLS, `?tls=opportunistic`), `smtps://user:pass@host:port` (implicit TLS), as lettre's
    /// `from_url` reads it. `None` (default): email goes to `<outbox_dir>/email/*.eml`.
    pub smtp_url: Option<String>,
    /// `NUDGE_PUSH_URL` / `--push`: where FCM-v1-shaped JSON is POSTed. `None` (default): one
    /// JSON line per message appended to `<outbox_dir>/push.ndjson`.
    pub push_url: Option<String>,
    /// `NUDGE_OUTBOX_DIR` / `--outbox` (default `./outbox`): where the file transports write.
    pub outbox_dir: PathBuf,
    /// `NUDGE_EMAIL_FROM`: the `From:` of every email (default `nudge@localhost`); a mailbox,
    /// optionally with a name: `Shop <hello@shop.example>`.
    pub email_from: String,
    /// Right-hand side of `Message-ID: <key@domain>`. `serve` should pass the host of
    /// `NUDGE_PUBLIC_URL` ([`DeliveryConfig::domain_of`]); default `localhost`.
    pub message_id_domain: String,
    /// `NUDGE_SMTP_RATE` / `smtp_rate` (e.g. `"50/s"`): most emails per period for this process.
    /// `None` (default): as fast as the workers go.
    pub smtp_rate: Option<Rate>,
    /// `NUDGE_PUSH_RATE` / `push_rate` (e.g. `"1000/m"`), like `smtp_rate`.
    pub push_rate: Option<Rate>,
    /// When to try a failed send again, and when to give up.
    pub retry: RetryPolicy,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            node_id: format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            workers: 4,
            batch: 8,
            lease: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            smtp_url: None,
            push_url: None,
            outbox_dir: PathBuf::from("./outbox"),
            email_from: "nudge@localhost".into(),
            message_id_domain: "localhost".into(),
            smtp_rate: None,
            push_rate: None,
            retry: RetryPolicy::default(),
        }
    }
}

/// Passwords in the transport URLs never reach logs, not even through `{:?}`.
impl fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("node_id", &self.node_id)
            .field("workers", &self.workers)
            .field("batch", &self.batch)
            .field("lease", &self.lease)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("poll", &self.poll)
            .field("smtp_url", &self.smtp_url.as_deref().map(redact_url))
            .field("push_url", &self.push_url.as_deref().map(redact_url))
            .field("outbox_dir", &self.outbox_dir)
            .field("email_from", &self.email_from)
            .field("message_id_domain", &self.message_id_domain)
            .field("smtp_rate", &self.smtp_rate)
            .field("push_rate", &self.push_rate)
            .field("retry", &self.retry)
            .finish()
    }
}

impl DeliveryConfig {
    /// The host of a URL such as `NUDGE_PUBLIC_URL`, for [`DeliveryConfig::message_id_domain`].
    pub fn domain_of(url: &str) -> Option<String> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next()?;
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if host.starts_with('[') {
            host.split_inclusive(']').next()?
        } else {
            host.split(':').next()?
        };
        (!host.is_empty()).then(|| host.to_ascii_lowercase())
    }

    /// Everything that would make delivery misbehave, refused before it starts.
    pub fn validate(&self) -> Result<(), DeliveryError> {
        let bad = |m: String| Err(DeliveryError::Config(m));
        if self.workers == 0 {
            return bad("workers must be at least 1".into());
        }
        if self.batch < 1 {
            return bad("batch must be at least 1".into());
        }
        if self.attempt_timeout.is_zero() {
            return bad("attempt_timeout must be longer than zero".into());
        }
        // A send that outlives its lease could be taken over and sent twice; the heartbeat
        // (every lease/3) keeps the lease ahead of a send that stays within the timeout.
        if self.attempt_timeout >= self.lease {
            return bad(format!(
                "attempt_timeout ({:?}) must be shorter than the lease ({:?}), or a slow send could be \
                 taken over by another worker and sent twice",
                self.attempt_timeout, self.lease
            ));
        }
        if self.lease < Duration::from_millis(30) {
            return bad(format!("lease ({:?}) is too short to heartbeat", self.lease));
        }
        if self.message_id_domain.is_empty() || self.message_id_domain.contains(['<', '>', '@', ' ']) {
            return bad(format!(
                "message_id_domain `{}` is not a host name",
                self.message_id_domain
            ));
        }
        self.retry.validate().map_err(DeliveryError::Config)
    }
}

/// Why delivery could not start or could not go on, by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A setting is wrong: fix the configuration (exit at start-up, never retried).
    #[error("delivery configuration: {0}")]
    Config(String),
    /// The outbox folder cannot be created or written: fix permissions or disk.
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database failed; retry when [`StoreError::is_transient`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DeliveryError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DeliveryError::Store(e) if e.is_transient())
    }
}

/// Why one send did not go through, by what delivery does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later: SMTP 4xx, HTTP 408/429/5xx, timeouts, lost connections, a full disk.
    #[error("{reason}")]
    Transient {
        reason: String,
        /// The server's own `Retry-After`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// Give up now: SMTP 5xx, other HTTP 4xx, an address or payload that can never be sent.
    #[error("{reason}")]
    Permanent { reason: String },
    /// Give up now and suppress the recipient's address: the receiving server said it does not
    /// exist (SMTP 5xx with enhanced status 5.1.x).
    #[error("{reason}")]
    HardBounce { reason: String },
}

impl SendError {
    pub fn transient(reason: impl Into<String>) -> SendError {
        SendError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> SendError {
        SendError::Permanent {
            reason: reason.into(),
        }
    }
}

/// rustls is built with the `ring` provider only in normal builds, but test builds also carry
/// `aws-lc-rs` (through mailin-embedded), and then rustls cannot pick a default on its own.
/// Installing ring up front means no "no process-level CryptoProvider" panic in either build.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_from_public_url() {
        assert_eq!(
            DeliveryConfig::domain_of("https://Mail.Shop.example/base").as_deref(),
            Some("mail.shop.example")
        );
        assert_eq!(
            DeliveryConfig::domain_of("http://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            DeliveryConfig::domain_of("http://u:p@host.example:1/x?y").as_deref(),
            Some("host.example")
        );
        assert_eq!(
            DeliveryConfig::domain_of("http://[::1]:80/").as_deref(),
            Some("[::1]")
        );
        assert_eq!(DeliveryConfig::domain_of("http:///x"), None);
    }

    #[test]
    fn refuses_a_timeout_longer_than_the_lease() {
        let config = DeliveryConfig {
            lease: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(10),
            ..DeliveryConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("shorter than the lease"), "{err}");
        assert!(DeliveryConfig::default().validate().is_ok());
    }

    #[test]
    fn debug_hides_passwords() {
        let config = DeliveryConfig {
            smtp_url: Some("smtps://mailer:hunter2@smtp.example:465".into()),
            push_url: Some("https://svc:tok3n@push.example/send".into()),
            ..DeliveryConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("tok3n"), "{shown}");
        assert!(shown.contains("mailer:***@smtp.example"), "{shown}");
    }
}
