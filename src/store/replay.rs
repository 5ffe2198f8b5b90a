//! Reading history back out: users and events for `dry-run`, which replays them into a scratch
//! database, and the per-campaign outcome summary it prints.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;

use super::{Result, Store, WritePool, with_db};
use crate::{
    clock::{from_millis, to_millis},
    events::{EventKind, IncomingEvent},
};

/// Outcome counts for one campaign.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CampaignOutcome {
    pub entered: i64,
    pub still_waiting: i64,
    /// Entry outcomes without an assignment: reason → users.
    pub skipped: BTreeMap<String, i64>,
    /// Assignments by (arm, status, channel) → users.
    pub assignments: Vec<(String, String, Option<String>, i64)>,
    /// Users with a scheduled message: (user, channel, send time), first few.
    pub sample: Vec<(String, String, DateTime<Utc>)>,
}

impl Store {
    /// Every user row, copied as is (traits, addresses, unsubscribes); topic opt-outs alongside.
    pub async fn copy_users_to(&self, target: &Store) -> Result<usize> {
        let rows = with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, Option<String>, Option<String>, Option<String>, Option<i64>, i64, i64)>(
                "SELECT id, traits, email, push_token, timezone, unsubscribed_at, created_at, updated_at FROM users",
            )
            .fetch_all(pool)
            .await?
        });
        let optouts = with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, i64)>("SELECT user_id, topic, at FROM topic_optouts")
                .fetch_all(pool)
                .await?
        });
        with_db!(target, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            for r in &rows {
                sqlx::query(
                    "INSERT INTO users (id, traits, email, push_token, timezone, unsubscribed_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&r.0)
                .bind(&r.1)
                .bind(&r.2)
                .bind(&r.3)
                .bind(&r.4)
                .bind(r.5)
                .bind(r.6)
                .bind(r.7)
                .execute(&mut *tx)
                .await?;
            }
            for (user, topic, at) in &optouts {
                sqlx::query("INSERT INTO topic_optouts (user_id, topic, at) VALUES ($1, $2, $3)")
                    .bind(user)
                    .bind(topic)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(rows.len())
    }

    /// Events with `from <= ts < to`, oldest first. Identify calls come back without traits
    /// (users are copied whole instead).
    pub async fn events_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<IncomingEvent>> {
        with_db!(self, |pool| {
            sqlx::query(
                "SELECT message_id, user_id, kind, name, properties, ts FROM events
                 WHERE ts >= $1 AND ts < $2 ORDER BY ts, seq",
            )
            .bind(to_millis(from))
            .bind(to_millis(to))
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                let kind = match r.try_get::<String, _>("kind")?.as_str() {
                    "identify" => EventKind::Identify,
                    "page" => EventKind::Page,
                    "screen" => EventKind::Screen,
                    _ => EventKind::Track,
                };
                let properties: Value = serde_json::from_str(&r.try_get::<String, _>("properties")?)?;
                Ok(IncomingEvent {
                    message_id: r.try_get("message_id")?,
                    user_id: r.try_get("user_id")?,
                    kind,
                    name: r.try_get("name")?,
                    properties: properties.as_object().cloned().unwrap_or_default(),
                    traits: serde_json::Map::new(),
                    device_token: None,
                    timestamp: from_millis(r.try_get("ts")?),
                })
            })
            .collect()
        })
    }

    /// The earliest due time among waiting entries.
    pub async fn next_due_entry(&self) -> Result<Option<DateTime<Utc>>> {
        let due: Option<i64> = with_db!(self, |pool| {
            sqlx::query_scalar("SELECT MIN(due_at) FROM entries WHERE status = 'waiting'")
                .fetch_one(pool)
                .await?
        });
        Ok(due.map(from_millis))
    }

    /// What happened to each campaign's entries.
    pub async fn campaign_outcomes(&self, sample: i64) -> Result<BTreeMap<String, CampaignOutcome>> {
        let mut out: BTreeMap<String, CampaignOutcome> = BTreeMap::new();
        let entries = with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, Option<String>, i64)>(
                "SELECT campaign_id, status, reason, COUNT(*) FROM entries GROUP BY campaign_id, status, reason",
            )
            .fetch_all(pool)
            .await?
        });
        for (campaign, status, reason, n) in entries {
            let o = out.entry(campaign).or_default();
            o.entered += n;
            match status.as_str() {
                "waiting" => o.still_waiting += n,
                "skipped" | "cancelled" => {
                    let reason = reason.unwrap_or_else(|| status.clone());
                    // "unless: order_completed at <time>" → one line per kind of reason.
                    let reason = reason.split(" at ").next().unwrap_or(&reason).to_string();
                    *o.skipped.entry(reason).or_default() += n;
                }
                _ => {}
            }
        }
        let assignments = with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, String, Option<String>, i64)>(
                "SELECT campaign_id, arm, status, channel, COUNT(*) FROM assignments
                 GROUP BY campaign_id, arm, status, channel ORDER BY campaign_id, arm, status, channel",
            )
            .fetch_all(pool)
            .await?
        });
        for (campaign, arm, status, channel, n) in assignments {
            out.entry(campaign)
                .or_default()
                .assignments
                .push((arm, status, channel, n));
        }
        for (campaign, o) in out.iter_mut() {
            let rows = with_db!(self, |pool| {
                sqlx::query_as::<_, (String, String, i64)>(
                    "SELECT user_id, channel, due_at FROM outbox WHERE campaign_id = $1 ORDER BY due_at, id LIMIT $2",
                )
                .bind(campaign)
                .bind(sample)
                .fetch_all(pool)
                .await?
            });
            o.sample = rows.into_iter().map(|(u, c, t)| (u, c, from_millis(t))).collect();
        }
        Ok(out)
    }
}
