//! The workers: claim a batch of due messages (caps checked in the claim), send each one under
//! the attempt timeout while a heartbeat keeps the batch's leases alive, and write the outcomes
//! back together at the end of the batch (one commit), each fenced by its lease version.
//!
//! Consent is checked again when the batch is claimed: a user who unsubscribed after the decision is
//! not messaged (the message is cancelled, its assignment `suppressed`).
//!
//! Shutdown: once cancelled, a worker finishes the send in flight, hands the rest of its batch
//! back unsent ([`Store::release`]) and exits; nothing half-done is left leased.

use std::{collections::HashSet, sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    DeliveryConfig, DeliveryError, SendError, email::EmailSender, health::TransportHealth,
    install_crypto_provider, push::PushSender, retry::NextAttempt,
};
use crate::{
    clock::SharedClock,
    outbox::Payload,
    rules::RulesHandle,
    store::{CapRules, ClaimedMessage, Finish, Store, UserRecord},
};

/// What one batch (or one idle run) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Messages leased for sending.
    pub claimed: usize,
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
    /// Stopped by a frequency cap at claim time (never sent).
    pub capped: usize,
    /// Sent or failed, but another worker had taken the lease over: the outcome was not recorded.
    pub fenced: usize,
    /// Handed back unsent at shutdown.
    pub released: usize,
    /// Not sent: the user unsubscribed or withdrew consent after the decision.
    pub suppressed: usize,
}

impl BatchReport {
    fn add(&mut self, other: BatchReport) {
        self.claimed += other.claimed;
        self.sent += other.sent;
        self.retried += other.retried;
        self.failed += other.failed;
        self.capped += other.capped;
        self.fenced += other.fenced;
        self.released += other.released;
        self.suppressed += other.suppressed;
    }
}

/// How an attempt ended, for the report.
enum Outcome {
    Sent,
    Retried,
    Failed,
    /// Failed with a hard bounce (the address is suppressed too).
    Bounced,
    Fenced,
    Suppressed,
}

/// Delivery of the outbox: the workers, the transports and what they share.
pub struct Delivery {
    store: Store,
    rules: Arc<RulesHandle>,
    clock: SharedClock,
    wake: Arc<Notify>,
    config: DeliveryConfig,
    lease: chrono::Duration,
    email: EmailSender,
    push: PushSender,
    health: Arc<TransportHealth>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("config", &self.config)
            .field("email", &self.email.target())
            .field("push", &self.push.target())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Checks the configuration and builds the transports; refuses to start on anything wrong
    /// (an attempt timeout not shorter than the lease, a bad URL or sender, an unwritable outbox
    /// folder). `outbox_ready` is the engine's [`crate::engine::Engine::outbox_ready`]. Call
    /// inside a Tokio runtime (the SMTP pool starts a background task).
    pub fn new(
        store: Store,
        rules: Arc<RulesHandle>,
        clock: SharedClock,
        outbox_ready: Arc<Notify>,
        config: DeliveryConfig,
    ) -> Result<Delivery, DeliveryError> {
        config.validate()?;
        install_crypto_provider();
        let lease = chrono::Duration::from_std(config.lease)
            .map_err(|_| DeliveryError::Config(format!("lease {:?} is too long", config.lease)))?;
        let email = EmailSender::new(&config)?;
        let push = PushSender::new(&config)?;
        Ok(Delivery {
            store,
            rules,
            clock,
            wake: outbox_ready,
            config,
            lease,
            email,
            push,
            health: Arc::new(TransportHealth::default()),
        })
    }

    /// Reports transport health into `health` (the one `/healthz` reads) instead of its own.
    pub fn with_health(mut self, health: Arc<TransportHealth>) -> Delivery {
        self.health = health;
        self
    }

    /// What recent attempts said about the SMTP server and the push gateway.
    pub fn health(&self) -> &Arc<TransportHealth> {
        &self.health
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// Runs `config.workers` workers until `cancel`; each claims and sends batches, and waits for
    /// `outbox_ready` or the poll interval when nothing is due. Returns once every worker has
    /// finished its send in flight and handed the rest of its batch back.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        tracing::info!(
            workers = self.config.workers,
            email = %self.email.target(),
            push = %self.push.target(),
            "DeliveryStarted"
        );
        let mut workers = JoinSet::new();
        for n in 0..self.config.workers {
            let me = self.clone();
            let cancel = cancel.clone();
            workers.spawn(async move { me.work(n, cancel).await });
        }
        let gauges = {
            let me = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { me.publish_counts(cancel).await })
        };
        while let Some(done) = workers.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "DeliveryWorkerPanicked");
            }
        }
        let _ = gauges.await;
        tracing::info!("DeliveryStopped");
    }

    /// One worker's loop.
    async fn work(&self, n: usize, cancel: CancellationToken) {
        let owner = format!("{}/w{n}", self.config.node_id);
        while !cancel.is_cancelled() {
            // Registered before claiming, so a notification that arrives while we claim is kept.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.run_batch(&owner, Some(&cancel)).await {
                Ok(report) if report.claimed + report.capped > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, worker = %owner, "DeliveryClaimFailed: will retry"),
            }
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = &mut notified => {}
                _ = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }

    /// Keeps `nudge_outbox_messages{channel,status}` current.
    async fn publish_counts(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.store.outbox_counts().await {
                Ok(counts) => {
                    for c in counts {
                        metrics::gauge!("nudge_outbox_messages", "channel" => c.channel, "status" => c.status)
                            .set(c.count as f64);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "OutboxCountFailed"),
            }
        }
    }

    /// Claims one batch and works it, as worker 0 of this node.
    pub async fn run_once(&self) -> Result<BatchReport, DeliveryError> {
        self.run_batch(&format!("{}/w0", self.config.node_id), None).await
    }

    /// Works batches until nothing is due at the clock's current time (tests, `nudge` one-shot
    /// commands); one worker, so sends happen in claim order. Returns how many messages were sent.
    /// Retries scheduled for later are left for a later call.
    pub async fn run_until_idle(&self) -> Result<usize, DeliveryError> {
        Ok(self.run_until_idle_report().await?.sent)
    }

    /// Like [`run_until_idle`](Self::run_until_idle), with the whole tally.
    pub async fn run_until_idle_report(&self) -> Result<BatchReport, DeliveryError> {
        let mut total = BatchReport::default();
        loop {
            let report = self.run_once().await?;
            if report.claimed + report.capped == 0 {
                return Ok(total);
            }
            total.add(report);
        }
    }

    async fn run_batch(
        &self,
        owner: &str,
        cancel: Option<&CancellationToken>,
    ) -> Result<BatchReport, DeliveryError> {
        let caps = CapRules::from_rules(&self.rules.current());
        let claim = self
            .store
            .claim_due_messages(owner, self.clock.now(), self.lease, self.config.batch, &caps)
            .await?;
        let mut report = BatchReport {
            claimed: claim.messages.len(),
            capped: claim.capped.len(),
            ..BatchReport::default()
        };
        for c in &claim.capped {
            metrics::counter!("nudge_messages_total", "channel" => c.channel.clone(), "status" => "capped")
                .increment(1);
            tracing::info!(
                outbox_id = c.id,
                campaign = %c.campaign_id,
                user = %c.user_id,
                channel = %c.channel,
                reason = %c.reason,
                "MessageCapped"
            );
        }
        // Consent and addresses of the batch's recipients, read once for the batch (two queries
        // instead of two per message): per-message reads made the round trips to SQLite's worker
        // thread, not the sends, the bound of delivery.
        let ids: Vec<&str> = claim.messages.iter().map(|m| m.user_id.as_str()).collect();
        let users = if ids.is_empty() {
            Default::default()
        } else {
            self.store.users(&ids).await?
        };
        let mut lost = HashSet::new();
        // Outcomes of finished sends, written back together (one commit per batch, not per
        // message); their leases stay heartbeated until then.
        let mut unrecorded: Vec<(&ClaimedMessage, Result<(), SendError>)> = Vec::new();
        let mut recorded: HashSet<i64> = HashSet::new();
        // One heartbeat for the whole batch: it ticks during whichever send is in flight, and a
        // tick missed between sends fires as soon as the next send starts.
        let every = self.config.lease / 3;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for (i, msg) in claim.messages.iter().enumerate() {
            if cancel.is_some_and(CancellationToken::is_cancelled) {
                self.record_all(&mut unrecorded, &mut recorded, &mut report)
                    .await?;
                for rest in &claim.messages[i..] {
                    if !lost.contains(&rest.id) && self.store.release(rest.id, rest.lease_version).await? {
                        report.released += 1;
                    }
                }
                return Ok(report);
            }
            if lost.contains(&msg.id) {
                // Another worker took it over while we were busy with earlier messages.
                report.fenced += 1;
                recorded.insert(msg.id);
                continue;
            }
            if let Some(reason) = no_longer_reachable(msg, users.get(&msg.user_id)) {
                recorded.insert(msg.id);
                match self.suppress(msg, &reason).await? {
                    Outcome::Suppressed => report.suppressed += 1,
                    _ => report.fenced += 1,
                }
                continue;
            }
            let result = self
                .attempt(msg, &claim.messages, &recorded, &mut lost, &mut beat)
                .await;
            unrecorded.push((msg, result));
        }
        self.record_all(&mut unrecorded, &mut recorded, &mut report)
            .await?;
        Ok(report)
    }

    /// Writes back every unrecorded outcome in one transaction, then logs and counts each.
    async fn record_all(
        &self,
        unrecorded: &mut Vec<(&ClaimedMessage, Result<(), SendError>)>,
        recorded: &mut HashSet<i64>,
        report: &mut BatchReport,
    ) -> Result<(), DeliveryError> {
        if unrecorded.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        // What to write for each, with the reason texts the writes borrow.
        let plans: Vec<(Outcome, Option<DateTime<Utc>>, String)> = {
            let mut rng = rand::thread_rng();
            unrecorded
                .iter()
                .map(|(msg, result)| match result {
                    Ok(()) => (Outcome::Sent, None, String::new()),
                    Err(SendError::Transient { reason, retry_after }) => {
                        match self
                            .config
                            .retry
                            .after_failure(msg.attempt, *retry_after, &mut rng)
                        {
                            NextAttempt::After(delay) => (
                                Outcome::Retried,
                                Some(
                                    now + chrono::Duration::from_std(delay)
                                        .unwrap_or(chrono::Duration::hours(1)),
                                ),
                                reason.clone(),
                            ),
                            NextAttempt::GiveUp => (
                                Outcome::Failed,
                                None,
                                format!("gave up after {} attempts: {reason}", msg.attempt),
                            ),
                        }
                    }
                    Err(SendError::Permanent { reason }) => (Outcome::Failed, None, reason.clone()),
                    Err(SendError::HardBounce { reason }) => (Outcome::Bounced, None, reason.clone()),
                })
                .collect()
        }; // the thread RNG is not Send: gone before the write is awaited
        let writes: Vec<(i64, i64, Finish<'_>)> = unrecorded
            .iter()
            .zip(&plans)
            .map(|((msg, _), (outcome, next, reason))| {
                let how = match (outcome, next) {
                    (Outcome::Sent, _) => Finish::Sent,
                    (Outcome::Retried, Some(at)) => Finish::Retry {
                        next_attempt_at: *at,
                        error: reason,
                    },
                    (Outcome::Bounced, _) => Finish::Bounced { reason },
                    _ => Finish::Failed { reason },
                };
                (msg.id, msg.lease_version, how)
            })
            .collect();
        let written = self.store.finish_many(&writes, now).await?;
        for (((msg, _), (outcome, next, reason)), ok) in unrecorded.iter().zip(&plans).zip(written) {
            recorded.insert(msg.id);
            let outcome = if ok {
                self.log_outcome(msg, outcome, *next, reason);
                outcome
            } else {
                tracing::warn!(
                    outbox_id = msg.id,
                    campaign = %msg.campaign_id,
                    "MessageFenced: the lease was taken over; the new holder records the outcome"
                );
                &Outcome::Fenced
            };
            let status = match outcome {
                Outcome::Sent => {
                    report.sent += 1;
                    "sent"
                }
                Outcome::Retried => {
                    report.retried += 1;
                    "retried"
                }
                Outcome::Failed | Outcome::Bounced => {
                    report.failed += 1;
                    "failed"
                }
                Outcome::Fenced => {
                    report.fenced += 1;
                    "fenced"
                }
                Outcome::Suppressed => {
                    report.suppressed += 1;
                    "suppressed"
                }
            };
            metrics::counter!("nudge_messages_total", "channel" => msg.channel.clone(), "status" => status)
                .increment(1);
        }
        unrecorded.clear();
        Ok(())
    }

    fn log_outcome(
        &self,
        msg: &ClaimedMessage,
        outcome: &Outcome,
        next: Option<DateTime<Utc>>,
        reason: &str,
    ) {
        match outcome {
            Outcome::Sent => tracing::info!(
                outbox_id = msg.id,
                campaign = %msg.campaign_id,
                user = %msg.user_id,
                channel = %msg.channel,
                attempt = msg.attempt,
                "MessageSent"
            ),
            Outcome::Retried => tracing::warn!(
                outbox_id = msg.id,
                campaign = %msg.campaign_id,
                channel = %msg.channel,
                attempt = msg.attempt,
                next_attempt_at = %next.map(|t| t.to_rfc3339()).unwrap_or_default(),
                error = %reason,
                "MessageRetried"
            ),
            Outcome::Failed => tracing::warn!(
                outbox_id = msg.id,
                campaign = %msg.campaign_id,
                user = %msg.user_id,
                channel = %msg.channel,
                attempt = msg.attempt,
                reason = %reason,
                "MessageFailed"
            ),
            Outcome::Bounced => tracing::warn!(
                outbox_id = msg.id,
                campaign = %msg.campaign_id,
                user = %msg.user_id,
                reason = %reason,
                "AddressSuppressed: hard bounce, the address is never mailed again"
            ),
            Outcome::Fenced | Outcome::Suppressed => {}
        }
    }

    /// One attempt at one message, heartbeating the leases of the batch's messages whose outcome
    /// is not yet recorded while the send is in flight. Returns the send's result; the caller
    /// records it.
    async fn attempt(
        &self,
        msg: &ClaimedMessage,
        batch: &[ClaimedMessage],
        recorded: &HashSet<i64>,
        lost: &mut HashSet<i64>,
        beat: &mut tokio::time::Interval,
    ) -> Result<(), SendError> {
        let started = Instant::now();
        let result = if msg.attempt > self.config.retry.max_attempts {
            // Only reachable when earlier attempts died with their worker (lease expired).
            Err(SendError::permanent(format!(
                "no attempts left: {} attempts started, the last ones were interrupted",
                msg.attempt - 1
            )))
        } else {
            let send = self.send(msg);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    r = &mut send => break r,
                    _ = beat.tick() => self.heartbeat(batch, recorded, lost).await,
                }
            }
        };
        metrics::histogram!("nudge_send_seconds", "channel" => msg.channel.clone())
            .record(started.elapsed().as_secs_f64());
        let transport = match &result {
            Err(SendError::Transient { reason, .. }) => Err(reason.as_str()),
            _ => Ok(()),
        };
        self.health.record(&msg.channel, transport, self.clock.now());
        result
    }

    /// Sends through the message's channel, after its rate limit, within the attempt timeout.
    async fn send(&self, msg: &ClaimedMessage) -> Result<(), SendError> {
        let payload: Payload = serde_json::from_str(&msg.payload)
            .map_err(|e| SendError::permanent(format!("stored payload is not a valid message: {e}")))?;
        let timeout = self.config.attempt_timeout;
        let timed_out = || SendError::transient(format!("send timed out after {timeout:?}"));
        match (&payload, msg.channel.as_str()) {
            (Payload::Email(p), "email") => {
                self.email.ready().await;
                tokio::time::timeout(timeout, self.email.send(&msg.recipient, &msg.idempotency_key, p))
                    .await
                    .unwrap_or_else(|_| Err(timed_out()))
            }
            (Payload::Push(p), "push") => {
                self.push.ready().await;
                tokio::time::timeout(timeout, self.push.send(&msg.recipient, &msg.idempotency_key, p))
                    .await
                    .unwrap_or_else(|_| Err(timed_out()))
            }
            (_, channel) => Err(SendError::permanent(format!(
                "payload does not match the message's channel `{channel}`"
            ))),
        }
    }

    /// Extends the leases still held (every message of the batch not recorded yet); a lease
    /// found taken over is marked lost.
    async fn heartbeat(&self, batch: &[ClaimedMessage], recorded: &HashSet<i64>, lost: &mut HashSet<i64>) {
        let until = self.clock.now() + self.lease;
        for m in batch {
            if lost.contains(&m.id) || recorded.contains(&m.id) {
                continue;
            }
            match self.store.extend_lease(m.id, m.lease_version, until).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(outbox_id = m.id, "MessageLeaseLost: another worker took it over");
                    lost.insert(m.id);
                }
                // The lease may still be ours; the next beat tries again.
                Err(e) => tracing::warn!(outbox_id = m.id, error = %e, "LeaseExtendFailed"),
            }
        }
    }

    async fn suppress(&self, msg: &ClaimedMessage, reason: &str) -> Result<Outcome, DeliveryError> {
        let now = self.clock.now();
        if !self
            .store
            .mark_suppressed(msg.id, msg.lease_version, reason, now)
            .await?
        {
            return Ok(Outcome::Fenced);
        }
        tracing::info!(
            outbox_id = msg.id,
            campaign = %msg.campaign_id,
            user = %msg.user_id,
            channel = %msg.channel,
            reason = %reason,
            "MessageSuppressed"
        );
        metrics::counter!("nudge_messages_total", "channel" => msg.channel.clone(), "status" => "suppressed")
            .increment(1);
        Ok(Outcome::Suppressed)
    }
}

/// Why the user can no longer receive this message, if they cannot: consent and unsubscribes
/// are checked again at send time (as of the batch's claim), because a send time can be hours
/// after the decision. Messages to users nudge does not know (direct sends) are not held back.
fn no_longer_reachable(msg: &ClaimedMessage, user: Option<&UserRecord>) -> Option<String> {
    let user = user?;
    let reason = match msg.channel.as_str() {
        "email" if user.unsubscribed => "email: unsubscribed",
        "email" if user.email_bounced => "email: address hard-bounced (suppressed)",
        "email" if !user.can_receive_email() => "email: no address or email_consent is false",
        "push" if !user.can_receive_push() => "push: no device token or push_consent is false",
        _ => return None,
    };
    Some(format!("suppressed at send time ({reason})"))
}
