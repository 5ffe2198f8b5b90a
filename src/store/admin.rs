//! Read side for operators and tracking: campaign counters for the admin API, the message a
//! tracking token names (and its stored links), a user's message history (who got what, when and
//! why), and stored events.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::{Result, Store, with_db};
use crate::{clock::from_millis, outbox::Payload};

/// An outbox message as tracking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedMessage {
    pub outbox_id: i64,
    /// The idempotency key, which open and click tokens carry.
    pub key: String,
    pub user_id: String,
    pub campaign_id: String,
    pub channel: String,
}

/// Counters of one campaign, from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CampaignCounts {
    /// Entries waiting for their due time (a pending `wait`) or a decision.
    pub entries_waiting: i64,
    /// Assignments by status (`scheduled`, `held_out`, `capped`, …).
    pub assignments: BTreeMap<String, i64>,
    /// Outbox messages by status (`pending`, `sent`, `failed`, …).
    pub outbox: BTreeMap<String, i64>,
}

/// One message-log row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub campaign: Option<String>,
    pub outbox_id: Option<i64>,
    pub kind: String,
    pub detail: Value,
}

/// One outbox message of a user, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxSummary {
    pub id: i64,
    pub message_id: String,
    pub campaign: String,
    pub channel: String,
    pub status: String,
    pub attempts: i64,
    pub due_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// The email subject or push title.
    pub subject: Option<String>,
}

/// A stored event, as read back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    pub message_id: String,
    pub user_id: String,
    pub kind: String,
    pub name: Option<String>,
    pub properties: Value,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

impl Store {
    /// The outbox message with this idempotency key.
    pub async fn tracked_message(&self, key: &str) -> Result<Option<TrackedMessage>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (i64, String, String, String, String)>(
                "SELECT id, idempotency_key, user_id, campaign_id, channel FROM outbox WHERE idempotency_key = $1",
            )
            .bind(key)
            .fetch_optional(pool)
            .await?
        })
        .map(|(outbox_id, key, user_id, campaign_id, channel)| TrackedMessage {
            outbox_id,
            key,
            user_id,
            campaign_id,
            channel,
        }))
    }

    /// The URL stored for link `idx` of a message when it was rendered.
    pub async fn link_url(&self, outbox_id: i64, idx: i64) -> Result<Option<String>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, String>("SELECT url FROM links WHERE outbox_id = $1 AND idx = $2")
                .bind(outbox_id)
                .bind(idx)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Counters for every campaign that has any, by campaign id.
    pub async fn campaign_counts(&self) -> Result<BTreeMap<String, CampaignCounts>> {
        let mut out: BTreeMap<String, CampaignCounts> = BTreeMap::new();
        let (waiting, assignments, outbox) = with_db!(self, |pool| {
            let waiting = sqlx::query_as::<_, (String, i64)>(
                "SELECT campaign_id, COUNT(*) FROM entries WHERE status = 'waiting' GROUP BY campaign_id",
            )
            .fetch_all(pool)
            .await?;
            let assignments = sqlx::query_as::<_, (String, String, i64)>(
                "SELECT campaign_id, status, COUNT(*) FROM assignments GROUP BY campaign_id, status",
            )
            .fetch_all(pool)
            .await?;
            let outbox = sqlx::query_as::<_, (String, String, i64)>(
                "SELECT campaign_id, status, COUNT(*) FROM outbox GROUP BY campaign_id, status",
            )
            .fetch_all(pool)
            .await?;
            (waiting, assignments, outbox)
        });
        for (campaign, n) in waiting {
            out.entry(campaign).or_default().entries_waiting = n;
        }
        for (campaign, status, n) in assignments {
            out.entry(campaign).or_default().assignments.insert(status, n);
        }
        for (campaign, status, n) in outbox {
            out.entry(campaign).or_default().outbox.insert(status, n);
        }
        Ok(out)
    }

    /// The user's message log, newest first.
    pub async fn message_log(&self, user_id: &str, limit: i64) -> Result<Vec<LogRow>> {
        let rows = with_db!(self, |pool| {
            sqlx::query(
                "SELECT id, at, campaign_id, outbox_id, kind, detail FROM message_log
                 WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(user_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<LogRow> {
                let detail: String = r.try_get("detail")?;
                Ok(LogRow {
                    id: r.try_get("id")?,
                    at: from_millis(r.try_get("at")?),
                    campaign: r.try_get("campaign_id")?,
                    outbox_id: r.try_get("outbox_id")?,
                    kind: r.try_get("kind")?,
                    detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
                })
            })
            .collect::<Result<Vec<_>>>()?
        });
        Ok(rows)
    }

    /// The user's outbox messages, newest first.
    pub async fn user_outbox(&self, user_id: &str, limit: i64) -> Result<Vec<OutboxSummary>> {
        let rows = with_db!(self, |pool| {
            sqlx::query(
                "SELECT id, idempotency_key, campaign_id, channel, status, attempts, due_at, sent_at,
                    created_at, last_error, payload
                 FROM outbox WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(user_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<OutboxSummary> {
                let payload: String = r.try_get("payload")?;
                let subject = match serde_json::from_str::<Payload>(&payload) {
                    Ok(Payload::Email(e)) => Some(e.subject),
                    Ok(Payload::Push(p)) => Some(p.title),
                    Err(_) => None,
                };
                Ok(OutboxSummary {
                    id: r.try_get("id")?,
                    message_id: r.try_get("idempotency_key")?,
                    campaign: r.try_get("campaign_id")?,
                    channel: r.try_get("channel")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                    due_at: from_millis(r.try_get("due_at")?),
                    sent_at: r.try_get::<Option<i64>, _>("sent_at")?.map(from_millis),
                    created_at: from_millis(r.try_get("created_at")?),
                    last_error: r.try_get("last_error")?,
                    subject,
                })
            })
            .collect::<Result<Vec<_>>>()?
        });
        Ok(rows)
    }

    /// How many events are stored.
    pub async fn event_count(&self) -> Result<i64> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM events")
                .fetch_one(pool)
                .await?
        }))
    }

    /// The user's events, oldest first (by their own timestamp).
    pub async fn user_events(&self, user_id: &str, limit: i64) -> Result<Vec<StoredEvent>> {
        let rows = with_db!(self, |pool| {
            sqlx::query(
                "SELECT message_id, user_id, kind, name, properties, ts, received_at FROM events
                 WHERE user_id = $1 ORDER BY ts, seq LIMIT $2",
            )
            .bind(user_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<StoredEvent> {
                Ok(StoredEvent {
                    message_id: r.try_get("message_id")?,
                    user_id: r.try_get("user_id")?,
                    kind: r.try_get("kind")?,
                    name: r.try_get("name")?,
                    properties: serde_json::from_str(&r.try_get::<String, _>("properties")?)?,
                    timestamp: from_millis(r.try_get("ts")?),
                    received_at: from_millis(r.try_get("received_at")?),
                })
            })
            .collect::<Result<Vec<_>>>()?
        });
        Ok(rows)
    }
}
