//! Reads for model training: every stored track event before a cut-off, and every user's traits
//! and time zone. Training reads in bulk, once per run; nothing here is on the decision path.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Result, Store, with_db};

/// A stored track event as features see it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    pub user_id: String,
    pub name: String,
    pub properties: Map<String, Value>,
    /// Unix milliseconds (the event's own timestamp).
    pub ts: i64,
}

/// A user's current traits and time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryUser {
    pub id: String,
    pub traits: Map<String, Value>,
    pub timezone: Option<String>,
}

/// Deliveries as history events: `message_delivered {channel, campaign}` at the send time.
/// Channels and campaign ids are `[a-z0-9_]+`, so the JSON needs no escaping.
macro_rules! sends_as_events {
    () => {
        "SELECT user_id, 'message_delivered' AS name,
            '{\"channel\":\"' || channel || '\",\"campaign\":\"' || campaign_id || '\"}' AS properties,
            at AS ts, 0 AS seq FROM sends"
    };
}

/// Track events and deliveries before `$1`, ordered by user then time.
const HISTORY_EVENTS: &str = concat!(
    "SELECT user_id, name, properties, ts FROM (
       SELECT user_id, name, properties, ts, seq FROM events
       WHERE kind = 'track' AND name IS NOT NULL AND ts < $1
       UNION ALL ",
    sends_as_events!(),
    " WHERE at < $1) h ORDER BY user_id, ts, seq"
);

fn history_event((user_id, name, properties, ts): (String, String, String, i64)) -> Result<HistoryEvent> {
    Ok(HistoryEvent {
        user_id,
        name,
        properties: serde_json::from_str(&properties)?,
        ts,
    })
}

impl Store {
    /// Track events with `ts < before` (Unix ms), ordered by user then time, with nudge's own
    /// deliveries (the `sends` table) read as `message_delivered` events (`{channel, campaign}`),
    /// so models learn from what the daemon sent exactly as from an imported delivery log.
    pub async fn history_events(&self, before: i64) -> Result<Vec<HistoryEvent>> {
        let rows = with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, String, i64)>(HISTORY_EVENTS)
                .bind(before)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(history_event).collect()
    }

    /// The users among `ids` (unknown ones are absent) and their history before `before`, in two
    /// queries per 500 ids: what the serving cache reads for users it has not scored yet.
    pub async fn user_histories(
        &self,
        ids: &[&str],
        before: i64,
    ) -> Result<HashMap<String, (HistoryUser, Vec<HistoryEvent>)>> {
        let mut ids: Vec<&str> = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let users = with_db!(self, |pool| {
                let mut q = sqlx::QueryBuilder::new("SELECT id, traits, timezone FROM users WHERE id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")");
                q.build_query_as::<(String, String, Option<String>)>()
                    .fetch_all(pool)
                    .await?
            });
            for (id, traits, timezone) in users {
                let user = HistoryUser {
                    id: id.clone(),
                    traits: serde_json::from_str(&traits)?,
                    timezone,
                };
                out.insert(id, (user, Vec::new()));
            }
            let events = with_db!(self, |pool| {
                // The union of `history_events`, with the cut-off and the ids bound in each half.
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT user_id, name, properties, ts FROM (
                       SELECT user_id, name, properties, ts, seq FROM events
                       WHERE kind = 'track' AND name IS NOT NULL AND ts < ",
                );
                q.push_bind(before).push(" AND user_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(concat!(") UNION ALL ", sends_as_events!(), " WHERE at < "));
                q.push_bind(before).push(" AND user_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")) h ORDER BY user_id, ts, seq");
                q.build_query_as::<(String, String, String, i64)>()
                    .fetch_all(pool)
                    .await?
            });
            for row in events {
                let e = history_event(row)?;
                if let Some((_, list)) = out.get_mut(&e.user_id) {
                    list.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Every user, ordered by id.
    pub async fn history_users(&self) -> Result<Vec<HistoryUser>> {
        let rows = with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, Option<String>)>(
                "SELECT id, traits, timezone FROM users ORDER BY id",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(id, traits, timezone)| {
                Ok(HistoryUser {
                    id,
                    traits: serde_json::from_str(&traits)?,
                    timezone,
                })
            })
            .collect()
    }
}
