//! Delivery's side of the store: claiming due outbox messages with a lease (frequency caps
//! checked and the send recorded in the same transaction), and marking the outcome, fenced by
//! the lease version.
//!
//! Life of a row: `pending` → claimed (lease owner, deadline, `lease_version + 1`, `attempts + 1`,
//! a `sends` row) → `sent` | back to `pending` with a later `next_attempt_at` (retry; the `sends`
//! row removed) | `failed` | `capped` (at claim time, never sent) | `cancelled` (the user can no
//! longer receive the channel: unsubscribed or consent withdrawn since the decision). Only the holder of the current
//! lease version can finish a row, so a worker whose lease expired and was taken over cannot
//! overwrite the new holder's outcome.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sqlx::Row;

use super::{Backend, Result, Store, WritePool, with_db};
use crate::{
    clock::{from_millis, to_millis},
    experiments::caps,
    outbox::Payload,
    rules::{Cap, Channel, RuleSet},
};

/// First key of the PostgreSQL advisory locks taken per user while claiming ("nu"), so they
/// cannot collide with the locks other parts of nudge take.
const USER_LOCK_SPACE: i32 = 0x6e75;

/// A message this worker holds the lease on, ready to send.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub id: i64,
    /// Also the email's Message-ID and the push message id.
    pub idempotency_key: String,
    pub assignment_id: i64,
    pub campaign_id: String,
    pub user_id: String,
    pub channel: String,
    pub priority: i64,
    /// Email address or push token.
    pub recipient: String,
    /// The rendered [`Payload`] as stored (JSON text); parsed by the sender, so one bad row fails
    /// alone instead of failing the claim.
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub due_at: DateTime<Utc>,
    /// Fencing token: pass it back to `mark_*` and `extend_lease`.
    pub lease_version: i64,
    pub lease_until: DateTime<Utc>,
}

/// A due message a frequency cap stopped at claim time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedMessage {
    pub id: i64,
    pub user_id: String,
    pub campaign_id: String,
    pub channel: String,
    /// `capped: <cap>`, as recorded on the assignment.
    pub reason: String,
}

/// What one claim produced.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    pub messages: Vec<ClaimedMessage>,
    pub capped: Vec<CappedMessage>,
}

/// The frequency caps in force, as the claim checks them: the global caps over all of a user's
/// sends, and each campaign's own caps over that campaign's sends.
#[derive(Debug, Clone, Default)]
pub struct CapRules {
    pub global: Vec<Cap>,
    /// By campaign id; campaigns without caps may be left out.
    pub campaigns: HashMap<String, Vec<Cap>>,
}

impl CapRules {
    /// The caps of the rule set in service.
    pub fn from_rules(rules: &RuleSet) -> CapRules {
        CapRules {
            global: rules.global.caps.clone(),
            campaigns: rules
                .campaigns
                .iter()
                .filter(|(_, c)| !c.caps.is_empty())
                .map(|(id, c)| (id.clone(), c.caps.clone()))
                .collect(),
        }
    }

    fn for_campaign(&self, id: &str) -> &[Cap] {
        self.campaigns.get(id).map_or(&[], Vec::as_slice)
    }

    /// The cap that one more `channel` send by `campaign` at `at` would exceed, described.
    fn check(
        &self,
        campaign: &str,
        channel: Channel,
        sends: &[(String, String, i64)],
        at: DateTime<Utc>,
    ) -> Option<String> {
        // A send recorded "after" `at` was claimed by a concurrent worker that committed while we
        // waited for the write lock (our clock was read before): it is a real send, so it counts
        // as of now. Without the clamp the window `(at - per, at]` would skip it and let one
        // message too many through.
        let parse =
            |(c, _, t): &(String, String, i64)| Channel::parse(c).map(|c| (c, from_millis(*t).min(at)));
        let all: Vec<_> = sends.iter().filter_map(parse).collect();
        let own: Vec<_> = sends
            .iter()
            .filter(|(_, c, _)| c == campaign)
            .filter_map(parse)
            .collect();
        caps::exceeded(&self.global, &all, channel, at)
            .or_else(|| caps::exceeded(self.for_campaign(campaign), &own, channel, at))
            .map(|cap| format!("capped: {}", caps::describe(cap)))
    }

    /// The longest window any cap that may apply to `campaign` looks back over.
    fn longest(&self, campaign: &str) -> Option<Duration> {
        self.global
            .iter()
            .chain(self.for_campaign(campaign))
            .map(|c| c.per)
            .max()
    }
}

/// A message written straight to the outbox, outside any campaign decision: operator test sends,
/// imports and tests. An entry and a treatment assignment are recorded with it, so it shows in
/// the message log and its outcome lands somewhere.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub idempotency_key: String,
    pub campaign_id: String,
    pub user_id: String,
    pub priority: i32,
    pub recipient: String,
    pub payload: Payload,
    pub due_at: DateTime<Utc>,
}

/// An outbox row as operators and tests read it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub idempotency_key: String,
    pub user_id: String,
    pub campaign_id: String,
    pub channel: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_version: i64,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    /// Status and reason of the assignment the message belongs to.
    pub assignment_status: String,
    pub assignment_reason: Option<String>,
}

/// Messages per (channel, status), for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxCount {
    pub channel: String,
    pub status: String,
    pub count: i64,
}

/// How an attempt ended, as written back.
#[derive(Debug, Clone, Copy)]
pub enum Finish<'a> {
    Sent,
    Retry {
        next_attempt_at: DateTime<Utc>,
        error: &'a str,
    },
    Failed {
        reason: &'a str,
    },
    Suppressed {
        reason: &'a str,
    },
    /// Failed with a hard bounce: also suppresses the recipient's address.
    Bounced {
        reason: &'a str,
    },
}

struct Candidate {
    id: i64,
    idempotency_key: String,
    assignment_id: i64,
    campaign_id: String,
    user_id: String,
    channel: String,
    priority: i64,
    recipient: String,
    payload: String,
    due_at: i64,
}

/// A recorded send a claim counts against caps.
struct RecentSend {
    outbox_id: i64,
    channel: String,
    campaign_id: String,
    at: i64,
}

/// Rows bound per statement when a claim leases or records its batch.
const ROWS_PER_STATEMENT: usize = 200;

impl Store {
    /// Claims up to `limit` due messages for `owner`, oldest due first and, among those due at
    /// the same time, higher campaign priority first.
    ///
    /// In the same write transaction, each candidate is checked against `caps` using the user's
    /// recorded sends: over a cap it becomes `capped` (assignment too, with the cap as reason,
    /// plus a message-log row); otherwise it is leased and its `sends` row is written, so the
    /// next candidate of the same user — in this claim or a concurrent one — counts it. On
    /// PostgreSQL a per-user advisory lock, taken in user order to rule out deadlocks, serialises
    /// concurrent claims for the same user; SQLite's `BEGIN IMMEDIATE` serialises all claims.
    pub async fn claim_due_messages(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
        caps: &CapRules,
    ) -> Result<Claim> {
        let select = match self.backend {
            Backend::Sqlite => {
                "SELECT id, idempotency_key, assignment_id, campaign_id, user_id, channel, priority,
                     recipient, payload, due_at
                 FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1
                     AND (lease_until IS NULL OR lease_until < $1)
                 ORDER BY next_attempt_at, priority DESC, id LIMIT $2"
            }
            Backend::Postgres => {
                "SELECT id, idempotency_key, assignment_id, campaign_id, user_id, channel, priority,
                     recipient, payload, due_at
                 FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1
                     AND (lease_until IS NULL OR lease_until < $1)
                 ORDER BY next_attempt_at, priority DESC, id LIMIT $2
                 FOR UPDATE SKIP LOCKED"
            }
        };
        let now_ms = to_millis(now);
        let lease_until = now + lease;
        let mut claim = Claim::default();
        with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            let outcome = async {
                let candidates = sqlx::query(select)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|r| -> Result<Candidate> {
                        Ok(Candidate {
                            id: r.try_get("id")?,
                            idempotency_key: r.try_get("idempotency_key")?,
                            assignment_id: r.try_get("assignment_id")?,
                            campaign_id: r.try_get("campaign_id")?,
                            user_id: r.try_get("user_id")?,
                            channel: r.try_get("channel")?,
                            priority: r.try_get("priority")?,
                            recipient: r.try_get("recipient")?,
                            payload: r.try_get("payload")?,
                            due_at: r.try_get("due_at")?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                if candidates.is_empty() {
                    return Ok(());
                }
                crate::fault::point("claim.after_select")?;
                if self.backend == Backend::Postgres {
                    let mut users: Vec<&str> = candidates.iter().map(|c| c.user_id.as_str()).collect();
                    users.sort_unstable();
                    users.dedup();
                    for user in users {
                        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))::text")
                            .bind(USER_LOCK_SPACE)
                            .bind(user)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                // The recorded sends of the candidates' users inside the batch's longest cap window,
                // read once after the user locks (on PostgreSQL each statement sees what concurrent
                // claims for these users committed before we got the locks). Each lease below adds
                // to it, as its `sends` row would, so a user's later candidates count the earlier.
                let mut sends: HashMap<String, Vec<RecentSend>> = HashMap::new();
                if let Some(window) = candidates
                    .iter()
                    .filter_map(|c| caps.longest(&c.campaign_id))
                    .max()
                {
                    let mut users: Vec<&str> = candidates.iter().map(|c| c.user_id.as_str()).collect();
                    users.sort_unstable();
                    users.dedup();
                    for chunk in users.chunks(ROWS_PER_STATEMENT) {
                        let mut q = sqlx::QueryBuilder::new(
                            "SELECT outbox_id, user_id, channel, campaign_id, at FROM sends WHERE at > ",
                        );
                        q.push_bind(to_millis(now - window));
                        q.push(" AND user_id IN (");
                        let mut ids = q.separated(", ");
                        for user in chunk {
                            ids.push_bind(*user);
                        }
                        q.push(")");
                        let rows = q
                            .build_query_as::<(i64, String, String, String, i64)>()
                            .fetch_all(&mut *tx)
                            .await?;
                        for (outbox_id, user, channel, campaign_id, at) in rows {
                            sends.entry(user).or_default().push(RecentSend {
                                outbox_id,
                                channel,
                                campaign_id,
                                at,
                            });
                        }
                    }
                }
                let mut leased = Vec::with_capacity(candidates.len());
                for c in candidates {
                    let capped = match (Channel::parse(&c.channel), caps.longest(&c.campaign_id)) {
                        (Some(channel), Some(window)) => {
                            let from = to_millis(now - window);
                            // A row taken over after an expired lease still has its earlier send:
                            // it is this message, not another one.
                            let recent: Vec<(String, String, i64)> = sends
                                .get(&c.user_id)
                                .into_iter()
                                .flatten()
                                .filter(|s| s.outbox_id != c.id && s.at > from)
                                .map(|s| (s.channel.clone(), s.campaign_id.clone(), s.at))
                                .collect();
                            caps.check(&c.campaign_id, channel, &recent, now)
                        }
                        // An unknown channel is failed by the sender; no cap applies to it.
                        _ => None,
                    };
                    if let Some(reason) = capped {
                        sqlx::query(
                            "UPDATE outbox SET status = 'capped', last_error = $1, lease_owner = NULL,
                                 lease_until = NULL
                             WHERE id = $2",
                        )
                        .bind(&reason)
                        .bind(c.id)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("UPDATE assignments SET status = 'capped', reason = $1 WHERE id = $2")
                            .bind(&reason)
                            .bind(c.assignment_id)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("DELETE FROM sends WHERE outbox_id = $1")
                            .bind(c.id)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(
                            "INSERT INTO message_log (user_id, campaign_id, outbox_id, at, kind, detail)
                             VALUES ($1, $2, $3, $4, 'capped', $5)",
                        )
                        .bind(&c.user_id)
                        .bind(&c.campaign_id)
                        .bind(c.id)
                        .bind(now_ms)
                        .bind(
                            json!({ "reason": reason, "stage": "delivery", "channel": c.channel })
                                .to_string(),
                        )
                        .execute(&mut *tx)
                        .await?;
                        if let Some(list) = sends.get_mut(&c.user_id) {
                            list.retain(|s| s.outbox_id != c.id);
                        }
                        crate::fault::point("claim.after_capped")?;
                        claim.capped.push(CappedMessage {
                            id: c.id,
                            user_id: c.user_id,
                            campaign_id: c.campaign_id,
                            channel: c.channel,
                            reason,
                        });
                        continue;
                    }
                    let user_sends = sends.entry(c.user_id.clone()).or_default();
                    user_sends.retain(|s| s.outbox_id != c.id);
                    user_sends.push(RecentSend {
                        outbox_id: c.id,
                        channel: c.channel.clone(),
                        campaign_id: c.campaign_id.clone(),
                        at: now_ms,
                    });
                    leased.push(c);
                }
                // The leases and `sends` rows of the whole batch: a statement each, not one per message.
                let mut leases: HashMap<i64, (i64, i64)> = HashMap::with_capacity(leased.len());
                for chunk in leased.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::new("UPDATE outbox SET lease_owner = ");
                    q.push_bind(owner);
                    q.push(", lease_until = ");
                    q.push_bind(to_millis(lease_until));
                    q.push(", lease_version = lease_version + 1, attempts = attempts + 1 WHERE id IN (");
                    let mut ids = q.separated(", ");
                    for c in chunk {
                        ids.push_bind(c.id);
                    }
                    q.push(") RETURNING id, lease_version, attempts");
                    for (id, version, attempts) in
                        q.build_query_as::<(i64, i64, i64)>().fetch_all(&mut *tx).await?
                    {
                        leases.insert(id, (version, attempts));
                    }
                }
                crate::fault::point("claim.after_lease")?;
                for chunk in leased.chunks(ROWS_PER_STATEMENT) {
                    // Upsert: a row taken over after an expired lease still has its earlier send.
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO sends (outbox_id, user_id, channel, campaign_id, at) ",
                    );
                    q.push_values(chunk, |mut row, c| {
                        row.push_bind(c.id)
                            .push_bind(&c.user_id)
                            .push_bind(&c.channel)
                            .push_bind(&c.campaign_id)
                            .push_bind(now_ms);
                    });
                    q.push(" ON CONFLICT (outbox_id) DO UPDATE SET at = excluded.at");
                    q.build().execute(&mut *tx).await?;
                }
                crate::fault::point("claim.after_send_record")?;
                for c in leased {
                    let (lease_version, attempts) = leases[&c.id];
                    claim.messages.push(ClaimedMessage {
                        id: c.id,
                        idempotency_key: c.idempotency_key,
                        assignment_id: c.assignment_id,
                        campaign_id: c.campaign_id,
                        user_id: c.user_id,
                        channel: c.channel,
                        priority: c.priority,
                        recipient: c.recipient,
                        payload: c.payload,
                        attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                        due_at: from_millis(c.due_at),
                        lease_version,
                        lease_until,
                    });
                }
                crate::fault::point("claim.before_commit")?;
                Ok(())
            }
            .await;
            tx.settle(outcome).await?;
        });
        crate::fault::point("claim.after_commit")?;
        Ok(claim)
    }

    /// Records a successful send: the message `sent`, its assignment `delivered` (with the actual
    /// send time), a message-log row. False (and nothing written) if the lease was taken over.
    pub async fn mark_sent(&self, id: i64, lease_version: i64, at: DateTime<Utc>) -> Result<bool> {
        self.finish(id, lease_version, Finish::Sent, at).await
    }

    /// Puts the message back for another attempt at `next_attempt_at` and removes its `sends` row,
    /// so caps count only real sends (the next claim records it again). Fenced like `mark_sent`.
    pub async fn mark_retry(
        &self,
        id: i64,
        lease_version: i64,
        next_attempt_at: DateTime<Utc>,
        error: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        self.finish(
            id,
            lease_version,
            Finish::Retry {
                next_attempt_at,
                error,
            },
            at,
        )
        .await
    }

    /// Gives up on the message: `failed` with `reason`, assignment `failed`, `sends` row removed,
    /// a message-log row. Fenced like `mark_sent`.
    pub async fn mark_failed(
        &self,
        id: i64,
        lease_version: i64,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        self.finish(id, lease_version, Finish::Failed { reason }, at)
            .await
    }

    /// Cancels the message unsent because the user can no longer receive it (unsubscribed or
    /// withdrew consent since the decision): outbox `cancelled`, assignment `suppressed`,
    /// `sends` row removed, a message-log row. Fenced like `mark_sent`.
    pub async fn mark_suppressed(
        &self,
        id: i64,
        lease_version: i64,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        self.finish(id, lease_version, Finish::Suppressed { reason }, at)
            .await
    }

    /// Gives up on the message after a hard bounce: like [`Store::mark_failed`], and in the same
    /// transaction the recipient address is marked bounced on the user (if it is still theirs),
    /// so no later message is sent to it. Fenced like `mark_sent`.
    pub async fn mark_bounced(
        &self,
        id: i64,
        lease_version: i64,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        self.finish(id, lease_version, Finish::Bounced { reason }, at)
            .await
    }

    async fn finish(&self, id: i64, lease_version: i64, how: Finish<'_>, at: DateTime<Utc>) -> Result<bool> {
        Ok(self.finish_many(&[(id, lease_version, how)], at).await?[0])
    }

    /// Writes back the outcomes of several attempts, each fenced by its lease version, in one
    /// transaction: one commit (one fsync on SQLite) for a worker's whole batch instead of one
    /// per message. Returns, per item, whether it was written (false: the lease was taken over).
    /// Until it commits, the messages stay claimed and their sends would be repeated after a
    /// crash — at most the batch in flight, each with its original Message-ID.
    pub async fn finish_many(
        &self,
        items: &[(i64, i64, Finish<'_>)],
        at: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        let at_ms = to_millis(at);
        let update = |how: &Finish<'_>| match how {
            Finish::Sent => {
                "UPDATE outbox SET status = 'sent', sent_at = $1, last_error = NULL, lease_owner = NULL,
                     lease_until = NULL
                 WHERE id = $2 AND lease_version = $3 AND status = 'pending'
                 RETURNING user_id, campaign_id, assignment_id, channel, attempts"
            }
            Finish::Retry { .. } => {
                "UPDATE outbox SET next_attempt_at = $1, last_error = $2, lease_owner = NULL,
                     lease_until = NULL
                 WHERE id = $3 AND lease_version = $4 AND status = 'pending'
                 RETURNING user_id, campaign_id, assignment_id, channel, attempts"
            }
            Finish::Failed { .. } | Finish::Bounced { .. } => {
                "UPDATE outbox SET status = 'failed', last_error = $1, lease_owner = NULL,
                     lease_until = NULL
                 WHERE id = $2 AND lease_version = $3 AND status = 'pending'
                 RETURNING user_id, campaign_id, assignment_id, channel, attempts"
            }
            Finish::Suppressed { .. } => {
                "UPDATE outbox SET status = 'cancelled', last_error = $1, lease_owner = NULL,
                     lease_until = NULL
                 WHERE id = $2 AND lease_version = $3 AND status = 'pending'
                 RETURNING user_id, campaign_id, assignment_id, channel, attempts"
            }
        };
        let mut written = Vec::with_capacity(items.len());
        with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            let outcome = async {
                for &(id, lease_version, how) in items {
                    let query = sqlx::query_as::<_, (String, String, i64, String, i64)>(update(&how));
                    let query = match &how {
                        Finish::Sent => query.bind(at_ms),
                        Finish::Retry {
                            next_attempt_at,
                            error,
                        } => query.bind(to_millis(*next_attempt_at)).bind(*error),
                        Finish::Failed { reason }
                        | Finish::Suppressed { reason }
                        | Finish::Bounced { reason } => query.bind(*reason),
                    };
                    let row = query
                        .bind(id)
                        .bind(lease_version)
                        .fetch_optional(&mut *tx)
                        .await?;
                    crate::fault::point("finish.after_outbox")?;
                    match row {
                        None => written.push(false),
                        Some((user_id, campaign_id, assignment_id, channel, attempt)) => {
                            let (kind, detail): (&str, Value) = match &how {
                                Finish::Sent => {
                                    sqlx::query(
                                        "UPDATE assignments SET status = 'delivered', send_at = $1 WHERE id = $2",
                                    )
                                    .bind(at_ms)
                                    .bind(assignment_id)
                                    .execute(&mut *tx)
                                    .await?;
                                    sqlx::query("UPDATE sends SET at = $1 WHERE outbox_id = $2")
                                        .bind(at_ms)
                                        .bind(id)
                                        .execute(&mut *tx)
                                        .await?;
                                    ("sent", json!({ "channel": channel, "attempt": attempt }))
                                }
                                Finish::Retry {
                                    next_attempt_at,
                                    error,
                                } => {
                                    sqlx::query("DELETE FROM sends WHERE outbox_id = $1")
                                        .bind(id)
                                        .execute(&mut *tx)
                                        .await?;
                                    (
                                        "retry",
                                        json!({ "channel": channel, "attempt": attempt, "error": error,
                                            "next_attempt_at": next_attempt_at.to_rfc3339() }),
                                    )
                                }
                                Finish::Failed { reason }
                                | Finish::Suppressed { reason }
                                | Finish::Bounced { reason } => {
                                    let (status, assignment_status, detail) = match &how {
                                        Finish::Failed { .. } => (
                                            "failed",
                                            "failed",
                                            json!({ "channel": channel, "attempt": attempt, "reason": reason }),
                                        ),
                                        Finish::Bounced { .. } => (
                                            "bounced",
                                            "failed",
                                            json!({ "channel": channel, "attempt": attempt, "reason": reason,
                                                "suppressed": "address hard-bounced" }),
                                        ),
                                        _ => (
                                            "suppressed",
                                            "suppressed",
                                            json!({ "channel": channel, "reason": reason, "stage": "delivery" }),
                                        ),
                                    };
                                    sqlx::query("UPDATE assignments SET status = $1, reason = $2 WHERE id = $3")
                                        .bind(assignment_status)
                                        .bind(*reason)
                                        .bind(assignment_id)
                                        .execute(&mut *tx)
                                        .await?;
                                    // The cap counts real sends only.
                                    sqlx::query("DELETE FROM sends WHERE outbox_id = $1")
                                        .bind(id)
                                        .execute(&mut *tx)
                                        .await?;
                                    if matches!(how, Finish::Bounced { .. }) {
                                        // Only the address that bounced: a user who changed it since keeps
                                        // receiving at the new one.
                                        sqlx::query(
                                            "UPDATE users SET email_bounced_at = $1, bounced_email = o.recipient
                                         FROM (SELECT recipient FROM outbox WHERE id = $2) AS o
                                         WHERE users.id = $3 AND users.email = o.recipient",
                                        )
                                        .bind(at_ms)
                                        .bind(id)
                                        .bind(&user_id)
                                        .execute(&mut *tx)
                                        .await?;
                                    }
                                    (status, detail)
                                }
                            };
                            sqlx::query(
                                "INSERT INTO message_log (user_id, campaign_id, outbox_id, at, kind, detail)
                             VALUES ($1, $2, $3, $4, $5, $6)",
                            )
                            .bind(&user_id)
                            .bind(&campaign_id)
                            .bind(id)
                            .bind(at_ms)
                            .bind(kind)
                            .bind(detail.to_string())
                            .execute(&mut *tx)
                            .await?;
                            written.push(true);
                        }
                    }
                }
                crate::fault::point("finish.before_commit")?;
                Ok(())
            }
            .await;
            tx.settle(outcome).await?;
        });
        crate::fault::point("finish.after_commit")?;
        Ok(written)
    }

    /// Hands a claimed message back unsent (shutdown): lease cleared, the attempt not counted,
    /// `sends` row removed, due again at once. False if the lease was taken over.
    pub async fn release(&self, id: i64, lease_version: i64) -> Result<bool> {
        let released = with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            let n = sqlx::query(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL,
                     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
                 WHERE id = $1 AND lease_version = $2 AND status = 'pending'",
            )
            .bind(id)
            .bind(lease_version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query("DELETE FROM sends WHERE outbox_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            n == 1
        });
        Ok(released)
    }

    /// Heartbeat: moves the lease deadline to `until` while a slow send is in flight. False if
    /// the lease was taken over (the caller has lost the message).
    pub async fn extend_lease(&self, id: i64, lease_version: i64, until: DateTime<Utc>) -> Result<bool> {
        // An autocommit write: it takes the writer's turn like a transaction (`WriteGate`).
        let _turn = self.gate.enter().await;
        let n = with_db!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET lease_until = $1
                 WHERE id = $2 AND lease_version = $3 AND status = 'pending'",
            )
            .bind(to_millis(until))
            .bind(id)
            .bind(lease_version)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Messages per (channel, status).
    pub async fn outbox_counts(&self) -> Result<Vec<OutboxCount>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, i64)>(
                "SELECT channel, status, COUNT(*) FROM outbox GROUP BY channel, status ORDER BY channel, status",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(channel, status, count)| OutboxCount { channel, status, count })
            .collect()
        }))
    }

    /// One outbox row with its assignment's status.
    pub async fn outbox_message(&self, id: i64) -> Result<Option<OutboxRow>> {
        let row = with_db!(self, |pool| {
            sqlx::query(
                "SELECT o.id, o.idempotency_key, o.user_id, o.campaign_id, o.channel, o.status, o.attempts,
                     o.next_attempt_at, o.lease_owner, o.lease_version, o.last_error, o.sent_at,
                     a.status AS assignment_status, a.reason AS assignment_reason
                 FROM outbox o JOIN assignments a ON a.id = o.assignment_id WHERE o.id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .map(|r| -> Result<OutboxRow> {
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    idempotency_key: r.try_get("idempotency_key")?,
                    user_id: r.try_get("user_id")?,
                    campaign_id: r.try_get("campaign_id")?,
                    channel: r.try_get("channel")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                    next_attempt_at: from_millis(r.try_get("next_attempt_at")?),
                    lease_owner: r.try_get("lease_owner")?,
                    lease_version: r.try_get("lease_version")?,
                    last_error: r.try_get("last_error")?,
                    sent_at: r.try_get::<Option<i64>, _>("sent_at")?.map(from_millis),
                    assignment_status: r.try_get("assignment_status")?,
                    assignment_reason: r.try_get("assignment_reason")?,
                })
            })
            .transpose()?
        });
        Ok(row)
    }

    /// The message-log rows about one outbox message, oldest first, as (kind, detail).
    pub async fn outbox_log(&self, id: i64) -> Result<Vec<(String, Value)>> {
        let rows = with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String)>(
                "SELECT kind, detail FROM message_log WHERE outbox_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(kind, detail)| Ok((kind, serde_json::from_str(&detail)?)))
            .collect()
    }

    /// Writes `msg` to the outbox with the entry and treatment assignment it belongs to. Returns
    /// the outbox id, or `None` when a message with this idempotency key already exists.
    pub async fn enqueue_message(&self, msg: &NewMessage, now: DateTime<Utc>) -> Result<Option<i64>> {
        let now_ms = to_millis(now);
        let due_ms = to_millis(msg.due_at);
        let channel = match &msg.payload {
            Payload::Email(_) => Channel::Email,
            Payload::Push(_) => Channel::Push,
        };
        let payload = serde_json::to_string(&msg.payload)?;
        let dedupe_key = format!("direct|{}", msg.idempotency_key);
        let id = with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            let entry: Option<i64> = sqlx::query_scalar(
                "INSERT INTO entries (campaign_id, user_id, trigger_id, dedupe_key, trigger_ts, trigger_event,
                     due_at, status, reason, created_at, decided_at)
                 VALUES ($1, $2, $3, $4, $5, '{}', $5, 'decided', 'written directly to the outbox', $6, $6)
                 ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
            )
            .bind(&msg.campaign_id)
            .bind(&msg.user_id)
            .bind(format!("direct:{}", msg.idempotency_key))
            .bind(&dedupe_key)
            .bind(due_ms)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            match entry {
                None => {
                    tx.rollback().await?;
                    None
                }
                Some(entry_id) => {
                    let assignment_id: i64 = sqlx::query_scalar(
                        "INSERT INTO assignments (entry_id, campaign_id, user_id, arm, channel, send_at, status,
                             assigned_at)
                         VALUES ($1, $2, $3, 'treatment', $4, $5, 'scheduled', $6) RETURNING id",
                    )
                    .bind(entry_id)
                    .bind(&msg.campaign_id)
                    .bind(&msg.user_id)
                    .bind(channel.as_str())
                    .bind(due_ms)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await?;
                    let id: Option<i64> = sqlx::query_scalar(
                        "INSERT INTO outbox (idempotency_key, assignment_id, campaign_id, user_id, channel,
                             priority, recipient, payload, status, due_at, next_attempt_at, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $9, $10)
                         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                    )
                    .bind(&msg.idempotency_key)
                    .bind(assignment_id)
                    .bind(&msg.campaign_id)
                    .bind(&msg.user_id)
                    .bind(channel.as_str())
                    .bind(i64::from(msg.priority))
                    .bind(&msg.recipient)
                    .bind(&payload)
                    .bind(due_ms)
                    .bind(now_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match id {
                        Some(id) => {
                            tx.commit().await?;
                            Some(id)
                        }
                        None => {
                            tx.rollback().await?;
                            None
                        }
                    }
                }
            }
        });
        Ok(id)
    }
}
