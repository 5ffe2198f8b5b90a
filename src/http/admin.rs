//! The admin API: campaigns with their counters, pause/resume, and a user's message history.
//! Access is checked by the router's admin middleware before any handler here runs.

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use super::{AppState, error::ApiError};
use crate::rules::Trigger;

/// Rows of history returned per user (newest first).
const HISTORY_LIMIT: i64 = 500;

pub async fn campaigns(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rules = state.engine.rules.current();
    let counts = state
        .engine
        .store
        .campaign_counts()
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let list: Vec<Value> = rules
        .campaigns
        .values()
        .map(|c| {
            let n = counts.get(&c.id).cloned().unwrap_or_default();
            let trigger = match &c.trigger {
                Trigger::Event(name) => json!({ "event": name }),
                Trigger::Schedule(cron) => json!({ "schedule": cron }),
            };
            json!({
                "id": c.id,
                "name": c.name,
                "enabled": c.enabled,
                "paused": state.engine.is_paused(&c.id),
                "trigger": trigger,
                "priority": c.priority,
                "holdout": c.holdout.fraction(),
                "entries_waiting": n.entries_waiting,
                "assignments": n.assignments,
                "outbox": n.outbox,
            })
        })
        .collect();
    Ok(Json(json!({ "campaigns": list })))
}

pub async fn pause(state: State<AppState>, id: Path<String>) -> Result<Json<Value>, ApiError> {
    set_paused(state, id, true).await
}

pub async fn resume(state: State<AppState>, id: Path<String>) -> Result<Json<Value>, ApiError> {
    set_paused(state, id, false).await
}

async fn set_paused(
    State(state): State<AppState>,
    Path(id): Path<String>,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    if !state.engine.rules.current().campaigns.contains_key(&id) {
        return Err(ApiError::not_found(format!("no campaign {id:?} in the current rules")).with_field("id"));
    }
    state
        .engine
        .set_paused(&id, paused)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    tracing::info!(campaign = %id, paused, "CampaignPauseChanged");
    Ok(Json(json!({ "id": id, "paused": paused })))
}

/// Who got what, when and why: the message log and the user's outbox messages, newest first.
pub async fn user_messages(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = &state.engine.store;
    let unavailable = |e| ApiError::unavailable(&e);
    let user = store.user(&id).await.map_err(unavailable)?;
    let log = store.message_log(&id, HISTORY_LIMIT).await.map_err(unavailable)?;
    let messages = store.user_outbox(&id, HISTORY_LIMIT).await.map_err(unavailable)?;
    if user.is_none() && log.is_empty() && messages.is_empty() {
        return Err(ApiError::not_found(format!("no user {id:?}")).with_field("id"));
    }
    Ok(Json(json!({ "user": id, "log": log, "messages": messages })))
}
