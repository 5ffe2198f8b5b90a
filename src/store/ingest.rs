//! Ingestion: a batch of events, the users they touch and the campaign entries they trigger, all
//! in one transaction. When it commits the events are durable and their triggers cannot be lost;
//! when it fails nothing of the batch is written.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::{Backend, Result, Store, WritePool, users::addresses, with_db};
use crate::{
    clock::to_millis,
    events::{EventKind, IncomingEvent},
    rules::{Campaign, Reentry, RuleSet},
};

/// What ingestion needs to turn track events into campaign entries.
pub struct Triggering<'a> {
    pub rules: &'a RuleSet,
    /// Campaigns paused through the API.
    pub paused: &'a HashSet<String>,
    /// Events older than this (by their own timestamp) are stored but trigger nothing: an import
    /// of last year's history must not send last year's cart reminders.
    pub max_age: Duration,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Events written.
    pub stored: usize,
    /// Events whose messageId was already stored (no-ops).
    pub duplicates: usize,
    /// Campaign entries created.
    pub entries: usize,
}

/// An entry to create, decided before touching the database.
struct NewEntry<'a> {
    campaign: &'a Campaign,
    event: &'a IncomingEvent,
}

impl Store {
    /// Stores `events` atomically. With `triggering`, track events also enter the campaigns they
    /// trigger (a pending `wait` is such an entry with a future due time).
    pub async fn ingest(
        &self,
        events: &[IncomingEvent],
        triggering: Option<&Triggering<'_>>,
    ) -> Result<IngestOutcome> {
        let received_at = to_millis(triggering.map_or_else(Utc::now, |t| t.now));
        // Traits per user, merged in batch order, so each user is read and written once.
        let mut traits: BTreeMap<&str, (Map<String, Value>, Option<&str>)> = BTreeMap::new();
        for e in events {
            let slot = traits.entry(&e.user_id).or_default();
            for (k, v) in &e.traits {
                slot.0.insert(k.clone(), v.clone());
            }
            if e.device_token.is_some() {
                slot.1 = e.device_token.as_deref();
            }
        }
        let select_traits = match self.backend {
            Backend::Sqlite => "SELECT traits FROM users WHERE id = $1",
            Backend::Postgres => "SELECT traits FROM users WHERE id = $1 FOR UPDATE",
        };

        let mut outcome = IngestOutcome::default();
        with_db!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            for (user_id, (new_traits, device_token)) in &traits {
                let stored: Option<String> = sqlx::query_scalar(select_traits)
                    .bind(*user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let mut merged: Map<String, Value> = match &stored {
                    Some(text) => serde_json::from_str(text)?,
                    None => Map::new(),
                };
                if stored.is_some() && new_traits.is_empty() && device_token.is_none() {
                    continue;
                }
                for (k, v) in new_traits {
                    merged.insert(k.clone(), v.clone());
                }
                let a = addresses(&merged, *device_token);
                sqlx::query(
                    "INSERT INTO users (id, traits, email, push_token, timezone, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $6)
                     ON CONFLICT (id) DO UPDATE SET traits = excluded.traits, email = excluded.email,
                        push_token = COALESCE(excluded.push_token, users.push_token),
                        timezone = excluded.timezone, updated_at = excluded.updated_at",
                )
                .bind(*user_id)
                .bind(serde_json::to_string(&merged)?)
                .bind(a.email)
                .bind(a.push_token)
                .bind(a.timezone)
                .bind(received_at)
                .execute(&mut *tx)
                .await?;
            }

            let mut entries = Vec::new();
            for e in events {
                let inserted = sqlx::query(
                    "INSERT INTO events (message_id, user_id, kind, name, properties, ts, received_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id) DO NOTHING",
                )
                .bind(&e.message_id)
                .bind(&e.user_id)
                .bind(e.kind.as_str())
                .bind(e.name.as_deref())
                .bind(serde_json::to_string(&e.properties)?)
                .bind(to_millis(e.timestamp))
                .bind(received_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    outcome.duplicates += 1;
                    continue;
                }
                outcome.stored += 1;
                if let Some(t) = triggering {
                    entries.extend(triggered_entries(t, e));
                }
            }

            for NewEntry { campaign, event } in entries {
                let ts = to_millis(event.timestamp);
                let dedupe_key = match campaign.reentry {
                    Reentry::Never => format!("{}|{}", campaign.id, event.user_id),
                    Reentry::Always => format!("{}|{}|{}", campaign.id, event.user_id, event.message_id),
                    Reentry::After(gap) => {
                        let last: Option<i64> = sqlx::query_scalar(
                            "SELECT MAX(trigger_ts) FROM entries WHERE campaign_id = $1 AND user_id = $2",
                        )
                        .bind(&campaign.id)
                        .bind(&event.user_id)
                        .fetch_one(&mut *tx)
                        .await?;
                        if last.is_some_and(|last| ts < last + gap.num_milliseconds()) {
                            continue;
                        }
                        format!("{}|{}|{}", campaign.id, event.user_id, event.message_id)
                    }
                };
                let due = event.timestamp + campaign.wait.unwrap_or_default();
                let trigger_event = json!({
                    "name": event.name,
                    "properties": event.properties,
                    "timestamp": event.timestamp.to_rfc3339(),
                });
                let created = sqlx::query(
                    "INSERT INTO entries (campaign_id, user_id, trigger_id, dedupe_key, trigger_ts,
                        trigger_event, due_at, status, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'waiting', $8) ON CONFLICT (dedupe_key) DO NOTHING",
                )
                .bind(&campaign.id)
                .bind(&event.user_id)
                .bind(&event.message_id)
                .bind(dedupe_key)
                .bind(ts)
                .bind(trigger_event.to_string())
                .bind(to_millis(due))
                .bind(received_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                outcome.entries += created as usize;
            }
            tx.commit().await?;
        });
        Ok(outcome)
    }
}

/// The campaigns a stored event enters, in priority order.
fn triggered_entries<'a>(t: &Triggering<'a>, e: &'a IncomingEvent) -> Vec<NewEntry<'a>> {
    let (EventKind::Track, Some(name)) = (e.kind, e.name.as_deref()) else {
        return Vec::new();
    };
    if t.now - e.timestamp > t.max_age {
        return Vec::new();
    }
    t.rules
        .triggered_by(name)
        .filter(|c| c.enabled && !t.paused.contains(&c.id))
        .map(|c| NewEntry {
            campaign: c,
            event: e,
        })
        .collect()
}
