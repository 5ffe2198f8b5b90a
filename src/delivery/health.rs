//! Transport health for `/healthz`: what the most recent send attempts on each channel said
//! about the SMTP server and the push gateway.
//!
//! Workers report every attempt's outcome ([`TransportHealth::record`]). A transport is
//! `failing` while its latest attempts failed for a reason that is the transport's (refused or
//! lost connections, timeouts, 4xx/5xx from a gateway); an answer about one recipient (a 550,
//! a hard bounce) proves the server is up and counts as `ok`. `unknown` until the first attempt.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// One channel's recent outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelHealth {
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Transport failures since the last success.
    pub consecutive_failures: u64,
}

impl ChannelHealth {
    /// `ok`, `failing` or `unknown` (no attempt yet).
    pub fn status(&self) -> &'static str {
        match (self.last_success_at, self.consecutive_failures) {
            (_, n) if n > 0 => "failing",
            (Some(_), _) => "ok",
            (None, _) => "unknown",
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({ "status": self.status() });
        if self.consecutive_failures > 0 {
            v["consecutive_failures"] = json!(self.consecutive_failures);
            v["last_error"] = json!(self.last_error);
            v["last_failure_at"] = json!(self.last_failure_at.map(|t| t.to_rfc3339()));
        }
        if let Some(t) = self.last_success_at {
            v["last_success_at"] = json!(t.to_rfc3339());
        }
        v
    }
}

/// Health of the email and push transports, shared by the workers and `/healthz`.
#[derive(Debug, Default)]
pub struct TransportHealth {
    email: Mutex<ChannelHealth>,
    push: Mutex<ChannelHealth>,
}

impl TransportHealth {
    /// Records one attempt on `channel` (`email` or `push`): `Ok` when the transport answered,
    /// `Err(reason)` when the transport itself failed.
    pub fn record(&self, channel: &str, outcome: Result<(), &str>, at: DateTime<Utc>) {
        let Some(slot) = self.slot(channel) else {
            return;
        };
        let mut h = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            Ok(()) => {
                h.last_success_at = Some(at);
                h.consecutive_failures = 0;
            }
            Err(reason) => {
                h.last_failure_at = Some(at);
                h.last_error = Some(reason.chars().take(300).collect());
                h.consecutive_failures += 1;
            }
        }
    }

    /// A copy of `channel`'s health.
    pub fn channel(&self, channel: &str) -> ChannelHealth {
        self.slot(channel)
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            })
            .unwrap_or_default()
    }

    fn slot(&self, channel: &str) -> Option<&Mutex<ChannelHealth>> {
        match channel {
            "email" => Some(&self.email),
            "push" => Some(&self.push),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_until_the_next_success() {
        let h = TransportHealth::default();
        let now = Utc::now();
        assert_eq!(h.channel("email").status(), "unknown");
        h.record("email", Err("connection refused"), now);
        h.record("email", Err("connection refused"), now);
        let e = h.channel("email");
        assert_eq!((e.status(), e.consecutive_failures), ("failing", 2));
        assert_eq!(e.to_json()["last_error"], "connection refused");
        h.record("email", Ok(()), now);
        assert_eq!(h.channel("email").status(), "ok");
        assert_eq!(h.channel("push").status(), "unknown");
        h.record("sms", Ok(()), now);
    }
}
