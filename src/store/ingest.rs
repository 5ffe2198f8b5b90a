//! Ingestion: a batch of events, the users they touch and the campaign entries they trigger, all
//! in one transaction. When it commits the events are durable and their triggers cannot be lost;
//! when it fails nothing of the batch is written.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::{Backend, Result, Store, WritePool, users::addresses, with_db};
use crate::{
    clock::to_millis,
    events::{EventKind, IncomingEvent},
    rules::{Campaign, Reentry, RuleSet},
};

/// Rows per multi-row statement: 9 binds a row stays far below both backends' bind limits.
const ROWS_PER_STATEMENT: usize = 500;

/// The events' properties as JSON text, to bind beside them in [`insert_events`].
pub(super) fn properties_of<'a>(
    events: impl ExactSizeIterator<Item = &'a IncomingEvent>,
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        out.push(serde_json::to_string(&e.properties)?);
    }
    Ok(out)
}

/// One multi-row INSERT of events (each with its properties' JSON text), on either backend: a
/// `message_id` already stored is skipped. Ingestion appends `RETURNING message_id` to learn
/// which were new; bulk loads only count them.
pub(super) fn insert_events<'a, DB: sqlx::Database>(
    rows: impl Iterator<Item = (&'a IncomingEvent, &'a String)>,
    received_at: i64,
) -> sqlx::QueryBuilder<DB>
where
    &'a String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::QueryBuilder::new(
        "INSERT INTO events (message_id, user_id, kind, name, properties, ts, received_at) ",
    );
    q.push_values(rows, |mut row, (e, props)| {
        row.push_bind(&e.message_id)
            .push_bind(&e.user_id)
            .push_bind(e.kind.as_str())
            .push_bind(e.name.as_deref())
            .push_bind(props)
            .push_bind(to_millis(e.timestamp))
            .push_bind(received_at);
    });
    q.push(" ON CONFLICT (message_id) DO NOTHING");
    q
}

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
        let user_ids: Vec<&str> = traits.keys().copied().collect();

        let mut outcome = IngestOutcome::default();
        with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;

            // Users: the batch's users read in one query per chunk (locked on PostgreSQL, so two
            // batches never merge traits over each other), written in one upsert per chunk.
            let mut stored_traits: HashMap<String, String> = HashMap::with_capacity(user_ids.len());
            for chunk in user_ids.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new("SELECT id, traits FROM users WHERE id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")");
                if self.backend == Backend::Postgres {
                    q.push(" FOR UPDATE");
                }
                let rows: Vec<(String, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
                stored_traits.extend(rows);
            }
            let mut upserts = Vec::new();
            for (user_id, (new_traits, device_token)) in &traits {
                let stored = stored_traits.get(*user_id);
                if stored.is_some() && new_traits.is_empty() && device_token.is_none() {
                    continue;
                }
                let mut merged: Map<String, Value> = match stored {
                    Some(text) => serde_json::from_str(text)?,
                    None => Map::new(),
                };
                for (k, v) in new_traits {
                    merged.insert(k.clone(), v.clone());
                }
                let a = addresses(&merged, *device_token);
                upserts.push((*user_id, serde_json::to_string(&merged)?, a));
            }
            for chunk in upserts.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO users (id, traits, email, push_token, timezone, created_at, updated_at) ",
                );
                q.push_values(chunk, |mut row, (id, traits, a)| {
                    row.push_bind(*id)
                        .push_bind(traits)
                        .push_bind(a.email.as_deref())
                        .push_bind(a.push_token.as_deref())
                        .push_bind(a.timezone.as_deref())
                        .push_bind(received_at)
                        .push_bind(received_at);
                });
                q.push(
                    " ON CONFLICT (id) DO UPDATE SET traits = excluded.traits, email = excluded.email,
                        push_token = COALESCE(excluded.push_token, users.push_token),
                        timezone = excluded.timezone, updated_at = excluded.updated_at",
                );
                q.build().execute(&mut *tx).await?;
            }

            // Events: multi-row inserts; RETURNING names the ones that were new (a resent
            // messageId is a no-op, also within one batch: its first occurrence is the stored one).
            let mut inserted: HashSet<String> = HashSet::with_capacity(events.len());
            for chunk in events.chunks(ROWS_PER_STATEMENT) {
                let properties = properties_of(chunk.iter())?;
                let mut q = insert_events(chunk.iter().zip(&properties), received_at);
                q.push(" RETURNING message_id");
                let ids: Vec<String> = q.build_query_scalar().fetch_all(&mut *tx).await?;
                inserted.extend(ids);
            }
            let mut entries = Vec::new();
            for e in events {
                if !inserted.remove(&e.message_id) {
                    outcome.duplicates += 1;
                    continue;
                }
                outcome.stored += 1;
                if let Some(t) = triggering {
                    entries.extend(triggered_entries(t, e));
                }
            }

            // Re-entry gaps: the last entry of each (campaign, user) with a gap, one indexed point
            // query per distinct pair (a 500-user IN list with GROUP BY measured seconds per
            // chunk on SQLite under load); entries created earlier in this batch count too.
            let mut last_entry: HashMap<(&str, &str), i64> = HashMap::new();
            let mut asked: HashSet<(&str, &str)> = HashSet::new();
            for NewEntry { campaign, event } in &entries {
                let key = (campaign.id.as_str(), event.user_id.as_str());
                if !matches!(campaign.reentry, Reentry::After(_)) || !asked.insert(key) {
                    continue;
                }
                let last: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(trigger_ts) FROM entries WHERE campaign_id = $1 AND user_id = $2",
                )
                .bind(key.0)
                .bind(key.1)
                .fetch_one(&mut *tx)
                .await?;
                if let Some(last) = last {
                    last_entry.insert(key, last);
                }
            }
            let mut rows = Vec::with_capacity(entries.len());
            for NewEntry { campaign, event } in &entries {
                let ts = to_millis(event.timestamp);
                let dedupe_key = match campaign.reentry {
                    Reentry::Never => format!("{}|{}", campaign.id, event.user_id),
                    Reentry::Always => format!("{}|{}|{}", campaign.id, event.user_id, event.message_id),
                    Reentry::After(gap) => {
                        let key = (campaign.id.as_str(), event.user_id.as_str());
                        if let Some(last) = last_entry.get(&key)
                            && ts < last + gap.num_milliseconds()
                        {
                            continue;
                        }
                        let last = last_entry.entry(key).or_insert(ts);
                        *last = (*last).max(ts);
                        format!("{}|{}|{}", campaign.id, event.user_id, event.message_id)
                    }
                };
                let due = event.timestamp + campaign.wait.unwrap_or_default();
                let trigger_event = json!({
                    "name": event.name,
                    "properties": event.properties,
                    "timestamp": event.timestamp.to_rfc3339(),
                });
                rows.push((
                    campaign.id.as_str(),
                    event.user_id.as_str(),
                    event.message_id.as_str(),
                    dedupe_key,
                    ts,
                    trigger_event.to_string(),
                    to_millis(due),
                ));
            }
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO entries (campaign_id, user_id, trigger_id, dedupe_key, trigger_ts,
                        trigger_event, due_at, status, created_at) ",
                );
                q.push_values(
                    chunk,
                    |mut row, (campaign, user, trigger, key, ts, event, due)| {
                        row.push_bind(*campaign)
                            .push_bind(*user)
                            .push_bind(*trigger)
                            .push_bind(key)
                            .push_bind(*ts)
                            .push_bind(event)
                            .push_bind(*due)
                            .push_bind("waiting")
                            .push_bind(received_at);
                    },
                );
                q.push(" ON CONFLICT (dedupe_key) DO NOTHING");
                outcome.entries += q.build().execute(&mut *tx).await?.rows_affected() as usize;
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
