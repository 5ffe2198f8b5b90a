//! The engine's side of the store: due entries claimed with a lease, the history conditions need,
//! and a decision (assignment, outbox row, links, message log) committed in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sqlx::Row;

use super::{Backend, Result, Store, WritePool, with_db};

/// Rows per multi-row statement: at most 12 columns each, far below SQLite's 32,766 and
/// PostgreSQL's 65,535 bound parameters.
const ROWS_PER_STATEMENT: usize = 200;
use crate::{
    clock::{from_millis, to_millis},
    rules::{Campaign, CountUse, Reentry},
};

/// A due entry this node holds the lease on.
#[derive(Debug, Clone)]
pub struct ClaimedEntry {
    pub id: i64,
    pub campaign_id: String,
    pub user_id: String,
    pub trigger_id: String,
    pub dedupe_key: String,
    pub trigger_ts: DateTime<Utc>,
    /// `{name, properties, timestamp}` of the trigger event; `{}` for a cron firing.
    pub trigger_event: Value,
    pub due_at: DateTime<Utc>,
    /// Fencing token: the decision commits only if nobody claimed the entry since.
    pub lease_version: i64,
}

/// Event counts per `count(...)` use, keyed by (event, window text) as CEL calls it.
#[derive(Debug, Clone, Default)]
pub struct UserHistory {
    pub counts: HashMap<(String, String), i64>,
}

/// What the engine decided for one entry.
#[derive(Debug, Clone)]
pub struct Decision {
    /// `decided` (an assignment follows), `cancelled` (an `unless` event) or `skipped`.
    pub entry_status: &'static str,
    pub reason: Option<String>,
    pub assignment: Option<NewAssignment>,
    pub outbox: Option<NewOutbox>,
    pub log: DecisionLog,
}

#[derive(Debug, Clone)]
pub struct NewAssignment {
    pub arm: &'static str,
    pub channel: Option<String>,
    pub send_at: Option<DateTime<Utc>>,
    pub status: &'static str,
    pub reason: Option<String>,
    /// How a predicted send time was chosen: `predicted`, `explore`, `fallback` (no model, or a
    /// cold start), or `fixed` (the `send_time_test` share); `None` when not predicted.
    pub send_time_arm: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct NewOutbox {
    pub idempotency_key: String,
    pub channel: String,
    pub priority: i32,
    pub recipient: String,
    pub payload: Value,
    pub due_at: DateTime<Utc>,
    /// Link targets as rendered, by index; click tokens refer to these.
    pub links: Vec<String>,
}

/// A message-log row: what happened and why.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    pub kind: &'static str,
    pub detail: Value,
}

impl Store {
    /// Claims up to `limit` entries due at `now` that nobody holds (or whose lease expired).
    pub async fn claim_due_entries(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedEntry>> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "UPDATE entries SET lease_owner = $1, lease_until = $2, lease_version = lease_version + 1
                 WHERE id IN (SELECT id FROM entries WHERE status = 'waiting' AND due_at <= $3
                     AND (lease_until IS NULL OR lease_until < $3) ORDER BY due_at LIMIT $4)
                 RETURNING id, campaign_id, user_id, trigger_id, dedupe_key, trigger_ts, trigger_event,
                     due_at, lease_version"
            }
            Backend::Postgres => {
                "UPDATE entries SET lease_owner = $1, lease_until = $2, lease_version = lease_version + 1
                 WHERE id IN (SELECT id FROM entries WHERE status = 'waiting' AND due_at <= $3
                     AND (lease_until IS NULL OR lease_until < $3) ORDER BY due_at LIMIT $4
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, campaign_id, user_id, trigger_id, dedupe_key, trigger_ts, trigger_event,
                     due_at, lease_version"
            }
        };
        let now_ms = to_millis(now);
        // An autocommit write: it takes the writer's turn like a transaction (`WriteGate`).
        let _turn = self.gate.enter().await;
        let rows = with_db!(self, |pool| {
            sqlx::query(sql)
                .bind(owner)
                .bind(now_ms + lease.num_milliseconds())
                .bind(now_ms)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| -> Result<ClaimedEntry> {
                    Ok(ClaimedEntry {
                        id: r.try_get("id")?,
                        campaign_id: r.try_get("campaign_id")?,
                        user_id: r.try_get("user_id")?,
                        trigger_id: r.try_get("trigger_id")?,
                        dedupe_key: r.try_get("dedupe_key")?,
                        trigger_ts: from_millis(r.try_get("trigger_ts")?),
                        trigger_event: serde_json::from_str(&r.try_get::<String, _>("trigger_event")?)?,
                        due_at: from_millis(r.try_get("due_at")?),
                        lease_version: r.try_get("lease_version")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        });
        if !rows.is_empty() {
            crate::fault::point("entries.after_claim")?;
        }
        let mut rows = rows;
        rows.sort_by_key(|e| (e.due_at, e.id));
        Ok(rows)
    }

    /// The counts a campaign's conditions use, as of `now`.
    pub async fn user_history(
        &self,
        user_id: &str,
        uses: &[CountUse],
        now: DateTime<Utc>,
    ) -> Result<UserHistory> {
        let mut history = UserHistory::default();
        for u in uses {
            let since = to_millis(now - u.window);
            let n: i64 = with_db!(self, |pool| {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM events WHERE user_id = $1 AND name = $2 AND ts > $3 AND ts <= $4",
                )
                .bind(user_id)
                .bind(&u.event)
                .bind(since)
                .bind(to_millis(now))
                .fetch_one(pool)
                .await?
            });
            history.counts.insert((u.event.clone(), u.window_text.clone()), n);
        }
        Ok(history)
    }

    /// The first of `names` the user did after `after` and up to `until`, if any.
    pub async fn first_event_between(
        &self,
        user_id: &str,
        names: &[String],
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<(String, DateTime<Utc>)>> {
        let mut first: Option<(String, DateTime<Utc>)> = None;
        for name in names {
            let ts: Option<i64> = with_db!(self, |pool| {
                sqlx::query_scalar(
                    "SELECT MIN(ts) FROM events WHERE user_id = $1 AND name = $2 AND ts > $3 AND ts <= $4",
                )
                .bind(user_id)
                .bind(name)
                .bind(to_millis(after))
                .bind(to_millis(until))
                .fetch_one(pool)
                .await?
            });
            if let Some(ts) = ts.map(from_millis)
                && first.as_ref().is_none_or(|(_, t)| ts < *t)
            {
                first = Some((name.clone(), ts));
            }
        }
        Ok(first)
    }

    /// Commits a batch of decisions in one transaction. Each entry is fenced on its lease version:
    /// an entry another node claimed since is left to that node (its decision stands). Returns
    /// how many decisions were committed.
    ///
    /// A handful of statements per batch rather than several per entry: the fence is one locking
    /// read, then entries, assignments, outbox rows, links and log rows are each written with
    /// multi-row statements. On SQLite `BEGIN IMMEDIATE` keeps anyone from claiming between the
    /// read and the writes; on PostgreSQL `FOR UPDATE` does (a concurrent claim skips locked rows).
    pub async fn record_decisions(
        &self,
        batch: &[(ClaimedEntry, Decision)],
        now: DateTime<Utc>,
    ) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        let now_ms = to_millis(now);
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        };
        let committed = with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            let outcome = async {

                // The fence: entries still waiting and still under the lease version we claimed.
                let mut current: HashMap<i64, i64> = HashMap::with_capacity(batch.len());
                for chunk in batch.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::new(
                        "SELECT id, lease_version FROM entries WHERE status = 'waiting' AND id IN (",
                    );
                    let mut ids = q.separated(", ");
                    for (entry, _) in chunk {
                        ids.push_bind(entry.id);
                    }
                    q.push(")");
                    q.push(lock);
                    for (id, version) in q.build_query_as::<(i64, i64)>().fetch_all(&mut *tx).await? {
                        current.insert(id, version);
                    }
                }
                let held: Vec<&(ClaimedEntry, Decision)> = batch
                    .iter()
                    .filter(|(entry, _)| {
                        let ours = current.get(&entry.id) == Some(&entry.lease_version);
                        if !ours {
                            tracing::warn!(entry = entry.id, campaign = %entry.campaign_id, "DecisionFenced: lease lost, another node decides this entry");
                        }
                        ours
                    })
                    .collect();

                for chunk in held.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::new(
                        "UPDATE entries SET status = v.column2, reason = v.column3, decided_at = ",
                    );
                    q.push_bind(now_ms);
                    q.push(", lease_owner = NULL, lease_until = NULL FROM (");
                    q.push_values(chunk.iter(), |mut row, (entry, d)| {
                        row.push_bind(entry.id)
                            .push_bind(d.entry_status)
                            .push_bind(d.reason.as_deref());
                    });
                    q.push(") AS v WHERE entries.id = v.column1");
                    q.build().execute(&mut *tx).await?;
                }
                crate::fault::point("decision.after_fence")?;

                let assigned: Vec<&(ClaimedEntry, Decision)> = held
                    .iter()
                    .copied()
                    .filter(|(_, d)| d.assignment.is_some())
                    .collect();
                let mut assignment_ids: HashMap<i64, i64> = HashMap::with_capacity(assigned.len());
                for chunk in assigned.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO assignments (entry_id, campaign_id, user_id, arm, channel, send_at, status,
                            reason, assigned_at, send_time_arm) ",
                    );
                    q.push_values(chunk.iter(), |mut row, (entry, d)| {
                        let a = d.assignment.as_ref().expect("filtered on assignments");
                        row.push_bind(entry.id)
                            .push_bind(&entry.campaign_id)
                            .push_bind(&entry.user_id)
                            .push_bind(a.arm)
                            .push_bind(a.channel.as_deref())
                            .push_bind(a.send_at.map(to_millis))
                            .push_bind(a.status)
                            .push_bind(a.reason.as_deref())
                            .push_bind(now_ms)
                            .push_bind(a.send_time_arm);
                    });
                    q.push(" RETURNING entry_id, id");
                    for (entry_id, id) in q.build_query_as::<(i64, i64)>().fetch_all(&mut *tx).await? {
                        assignment_ids.insert(entry_id, id);
                    }
                }
                crate::fault::point("decision.after_assignment")?;

                let queued: Vec<(&ClaimedEntry, &NewOutbox)> = assigned
                    .iter()
                    .filter_map(|(entry, d)| d.outbox.as_ref().map(|o| (entry, o)))
                    .collect();
                let mut outbox_ids: HashMap<i64, i64> = HashMap::with_capacity(queued.len());
                for chunk in queued.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO outbox (idempotency_key, assignment_id, campaign_id, user_id, channel, priority,
                            recipient, payload, status, due_at, next_attempt_at, created_at) ",
                    );
                    q.push_values(chunk.iter(), |mut row, (entry, o)| {
                        let due = to_millis(o.due_at);
                        row.push_bind(&o.idempotency_key)
                            .push_bind(assignment_ids[&entry.id])
                            .push_bind(&entry.campaign_id)
                            .push_bind(&entry.user_id)
                            .push_bind(&o.channel)
                            .push_bind(i64::from(o.priority))
                            .push_bind(&o.recipient)
                            .push_bind(o.payload.to_string())
                            .push_bind("pending")
                            .push_bind(due)
                            .push_bind(due)
                            .push_bind(now_ms);
                    });
                    q.push(" RETURNING assignment_id, id");
                    let by_assignment: HashMap<i64, i64> = q
                        .build_query_as::<(i64, i64)>()
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .collect();
                    for (entry, _) in chunk {
                        if let Some(id) = by_assignment.get(&assignment_ids[&entry.id]) {
                            outbox_ids.insert(entry.id, *id);
                        }
                    }
                }
                crate::fault::point("decision.after_outbox")?;

                let links: Vec<(i64, i64, &str)> = queued
                    .iter()
                    .flat_map(|(entry, o)| {
                        let id = outbox_ids[&entry.id];
                        o.links
                            .iter()
                            .enumerate()
                            .map(move |(idx, url)| (id, idx as i64, url.as_str()))
                    })
                    .collect();
                for chunk in links.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::new("INSERT INTO links (outbox_id, idx, url) ");
                    q.push_values(chunk.iter(), |mut row, (id, idx, url)| {
                        row.push_bind(*id).push_bind(*idx).push_bind(*url);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                crate::fault::point("decision.after_links")?;

                for chunk in held.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO message_log (user_id, campaign_id, entry_id, outbox_id, at, kind, detail) ",
                    );
                    q.push_values(chunk.iter(), |mut row, (entry, d)| {
                        row.push_bind(&entry.user_id)
                            .push_bind(&entry.campaign_id)
                            .push_bind(entry.id)
                            .push_bind(outbox_ids.get(&entry.id).copied())
                            .push_bind(now_ms)
                            .push_bind(d.log.kind)
                            .push_bind(d.log.detail.to_string());
                    });
                    q.build().execute(&mut *tx).await?;
                }
                crate::fault::point("decision.after_log")?;
                crate::fault::point("decision.before_commit")?;
                Ok(held.len())
            }
            .await;
            tx.settle(outcome).await?
        });
        crate::fault::point("decision.after_commit")?;
        Ok(committed)
    }

    /// The user's sends since `since`, as (channel, campaign, time), for frequency caps.
    pub async fn recent_sends(
        &self,
        user_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, i64)>(
                "SELECT channel, campaign_id, at FROM sends WHERE user_id = $1 AND at > $2 ORDER BY at",
            )
            .bind(user_id)
            .bind(to_millis(since))
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(c, campaign, at)| (c, campaign, from_millis(at)))
            .collect()
        }))
    }

    /// [`recent_sends`](Self::recent_sends) for several users at once, keyed by user.
    pub async fn recent_sends_of(
        &self,
        user_ids: &[&str],
        since: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<(String, String, DateTime<Utc>)>>> {
        let mut ids: Vec<&str> = user_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut sends: HashMap<String, Vec<(String, String, DateTime<Utc>)>> = HashMap::new();
        for chunk in ids.chunks(1_000) {
            let rows = with_db!(self, |pool| {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT user_id, channel, campaign_id, at FROM sends WHERE at > ",
                );
                q.push_bind(to_millis(since));
                q.push(" AND user_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(") ORDER BY at");
                q.build_query_as::<(String, String, String, i64)>()
                    .fetch_all(pool)
                    .await?
            });
            for (user, channel, campaign, at) in rows {
                sends
                    .entry(user)
                    .or_default()
                    .push((channel, campaign, from_millis(at)));
            }
        }
        Ok(sends)
    }

    /// Appends one message-log row outside a decision (delivery outcomes, tracking, operators).
    pub async fn log(
        &self,
        user_id: &str,
        campaign_id: Option<&str>,
        outbox_id: Option<i64>,
        kind: &str,
        detail: &Value,
        at: DateTime<Utc>,
    ) -> Result<()> {
        // An autocommit write: it takes the writer's turn like a transaction (`WriteGate`).
        let _turn = self.gate.enter().await;
        with_db!(self, |pool| {
            sqlx::query(
                "INSERT INTO message_log (user_id, campaign_id, outbox_id, at, kind, detail)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(user_id)
            .bind(campaign_id)
            .bind(outbox_id)
            .bind(to_millis(at))
            .bind(kind)
            .bind(detail.to_string())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Fans a cron firing out to every user, once across all nodes: the node whose firing row
    /// commits creates the entries in the same transaction; the others get `None`.
    pub async fn fire_cron(
        &self,
        campaign: &Campaign,
        fire_at: DateTime<Utc>,
        node: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<u64>> {
        let fire_ms = to_millis(fire_at);
        let trigger = format!("cron:{fire_ms}");
        let due = to_millis(fire_at + campaign.wait.unwrap_or_default());
        // The dedupe key is built in SQL from a prefix and suffix around the user id.
        let (prefix, suffix, recent_since) = match campaign.reentry {
            Reentry::Never => (format!("{}|", campaign.id), String::new(), None),
            Reentry::Always => (format!("{}|", campaign.id), format!("|{trigger}"), None),
            Reentry::After(gap) => (
                format!("{}|", campaign.id),
                format!("|{trigger}"),
                Some(fire_ms - gap.num_milliseconds()),
            ),
        };
        let created = with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            let won = sqlx::query(
                "INSERT INTO cron_firings (campaign_id, fire_at, node, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (campaign_id, fire_at) DO NOTHING",
            )
            .bind(&campaign.id)
            .bind(fire_ms)
            .bind(node)
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if won == 0 {
                tx.rollback().await?;
                None
            } else {
                let created = sqlx::query(
                    "INSERT INTO entries (campaign_id, user_id, trigger_id, dedupe_key, trigger_ts, trigger_event,
                        due_at, status, created_at)
                     SELECT $1, u.id, $2, CAST($3 AS TEXT) || u.id || CAST($4 AS TEXT), $5, '{}', $6, 'waiting', $7
                     FROM users u
                     WHERE $8 IS NULL OR NOT EXISTS (SELECT 1 FROM entries e WHERE e.campaign_id = $1
                         AND e.user_id = u.id AND e.trigger_ts > $8)
                     ON CONFLICT (dedupe_key) DO NOTHING",
                )
                .bind(&campaign.id)
                .bind(&trigger)
                .bind(&prefix)
                .bind(&suffix)
                .bind(fire_ms)
                .bind(due)
                .bind(to_millis(now))
                .bind(recent_since)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                sqlx::query("UPDATE cron_firings SET entries = $1 WHERE campaign_id = $2 AND fire_at = $3")
                    .bind(created as i64)
                    .bind(&campaign.id)
                    .bind(fire_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Some(created)
            }
        });
        Ok(created)
    }

    pub async fn paused_campaigns(&self) -> Result<HashSet<String>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, String>("SELECT campaign_id FROM campaign_state WHERE paused = 1")
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect()
        }))
    }

    pub async fn set_paused(&self, campaign_id: &str, paused: bool, now: DateTime<Utc>) -> Result<()> {
        with_db!(self, |pool| {
            sqlx::query(
                "INSERT INTO campaign_state (campaign_id, paused, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (campaign_id) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
            )
            .bind(campaign_id)
            .bind(i64::from(paused))
            .bind(to_millis(now))
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}
