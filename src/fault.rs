//! Failure injection for the reliability tests (promise 1 of `RELIABILITY.md`).
//!
//! The store calls [`point`] after each statement of the transactions that must be atomic
//! (deciding an entry, claiming messages, finishing a message). In a normal build `point` is an
//! empty inline function that always returns `Ok`. With the Cargo feature `fault-injection`
//! (switched on for test builds only, through the crate's dev-dependency on itself) a point can
//! be armed to fail:
//!
//! - in a process, from the environment: `NUDGE_FAULT=<point>:<action>[:<nth>]`, read once at
//!   the first point reached. `action` is `error` (the statement "fails": the transaction rolls
//!   back and the caller sees [`Fault`]) or `abort` (`std::process::abort()`, as abrupt as
//!   `kill -9`). `nth` (default 1) fires on the nth time the point is reached, so a crash can
//!   land in the middle of a run instead of at its first statement;
//! - in a test, for one future only: [`scoped`] arms a plan for that future (a Tokio task-local),
//!   so tests running side by side in one process do not trip over each other's faults.
//!
//! [`POINTS`] lists every point, so a test can iterate over all of them.

use std::fmt;

/// Every fault point the store reaches, in the order a message's life reaches them.
pub const POINTS: &[&str] = &[
    // Engine::run_once: claiming due entries (one statement) ...
    "entries.after_claim",
    // ... and Store::record_decisions, per entry, then for the batch.
    "decision.after_fence",
    "decision.after_assignment",
    "decision.after_outbox",
    "decision.after_links",
    "decision.after_log",
    "decision.before_commit",
    "decision.after_commit",
    // Store::claim_due_messages: caps checked and send records written with the lease.
    "claim.after_select",
    "claim.after_capped",
    "claim.after_lease",
    "claim.after_send_record",
    "claim.before_commit",
    "claim.after_commit",
    // Store::finish (sent, retry, failed, suppressed, bounced).
    "finish.after_outbox",
    "finish.before_commit",
    "finish.after_commit",
];

/// An injected failure, surfaced like a failed statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected fault at {0}")]
pub struct Fault(pub String);

/// What an armed point does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Return [`Fault`]: the transaction in progress rolls back.
    Error,
    /// `std::process::abort()`: the process dies on the spot, like `kill -9`.
    Abort,
}

/// One armed point: `point:action[:nth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub point: String,
    pub action: Action,
    /// Fires on this hit of the point (1 = the first).
    pub nth: u64,
}

impl Plan {
    pub fn new(point: &str, action: Action) -> Plan {
        Plan {
            point: point.to_string(),
            action,
            nth: 1,
        }
    }

    /// Parses `point:action[:nth]`.
    pub fn parse(text: &str) -> Result<Plan, String> {
        let mut parts = text.trim().split(':');
        let point = parts.next().unwrap_or_default();
        if !POINTS.contains(&point) {
            return Err(format!(
                "unknown fault point `{point}`; known: {}",
                POINTS.join(", ")
            ));
        }
        let action = match parts.next() {
            Some("error") => Action::Error,
            Some("abort") => Action::Abort,
            other => return Err(format!("fault action {other:?}: expected error or abort")),
        };
        let nth = match parts.next() {
            None => 1,
            Some(n) => n
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("fault hit `{n}`: expected a number ≥ 1"))?,
        };
        Ok(Plan {
            point: point.to_string(),
            action,
            nth,
        })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Error => "error",
            Action::Abort => "abort",
        };
        write!(f, "{}:{action}:{}", self.point, self.nth)
    }
}

/// Reached after a statement of an atomic transaction. `Ok` unless a plan is armed for `name`
/// (only possible with the `fault-injection` feature).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &'static str) -> Result<(), Fault> {
    Ok(())
}

/// Reached after a statement of an atomic transaction. `Ok` unless a plan is armed for `name`.
#[cfg(feature = "fault-injection")]
pub fn point(name: &'static str) -> Result<(), Fault> {
    armed::hit(name)
}

/// Runs `fut` with `plan` armed for it alone (and for nothing else in the process).
#[cfg(feature = "fault-injection")]
pub async fn scoped<F: std::future::Future>(plan: Plan, fut: F) -> F::Output {
    armed::SCOPED.scope(armed::Armed::new(plan), fut).await
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    };

    use super::{Action, Fault, Plan};

    pub struct Armed {
        plan: Plan,
        hits: AtomicU64,
    }

    impl Armed {
        pub fn new(plan: Plan) -> Armed {
            Armed {
                plan,
                hits: AtomicU64::new(0),
            }
        }

        fn hit(&self, name: &'static str) -> Result<(), Fault> {
            if self.plan.point != name {
                return Ok(());
            }
            let n = self.hits.fetch_add(1, Ordering::SeqCst) + 1;
            if n != self.plan.nth {
                return Ok(());
            }
            match self.plan.action {
                Action::Error => Err(Fault(name.to_string())),
                Action::Abort => {
                    // Straight to stderr, unbuffered: the test reads it to know the crash was ours.
                    eprintln!("FaultInjected: aborting at {name}");
                    std::process::abort()
                }
            }
        }
    }

    tokio::task_local! {
        pub static SCOPED: Armed;
    }

    fn from_env() -> &'static Option<Armed> {
        static ENV: OnceLock<Option<Armed>> = OnceLock::new();
        ENV.get_or_init(|| {
            let text = std::env::var("NUDGE_FAULT").ok().filter(|v| !v.is_empty())?;
            match Plan::parse(&text) {
                Ok(plan) => Some(Armed::new(plan)),
                Err(e) => {
                    eprintln!("NUDGE_FAULT ignored: {e}");
                    None
                }
            }
        })
    }

    pub fn hit(name: &'static str) -> Result<(), Fault> {
        if let Ok(r) = SCOPED.try_with(|a| a.hit(name)) {
            r?;
        }
        match from_env() {
            Some(a) => a.hit(name),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_print() {
        let p = Plan::parse("decision.after_outbox:abort:3").unwrap();
        assert_eq!(p.action, Action::Abort);
        assert_eq!(p.nth, 3);
        assert_eq!(p.to_string(), "decision.after_outbox:abort:3");
        assert_eq!(Plan::parse("claim.after_lease:error").unwrap().nth, 1);
        assert!(
            Plan::parse("nowhere:error")
                .unwrap_err()
                .contains("unknown fault point")
        );
        assert!(Plan::parse("claim.after_lease:explode").is_err());
        assert!(Plan::parse("claim.after_lease:error:0").is_err());
    }

    #[test]
    fn unarmed_points_pass() {
        for p in POINTS {
            assert_eq!(point(p), Ok(()));
        }
    }
}
