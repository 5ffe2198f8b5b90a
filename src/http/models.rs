//! `GET /v1/models` (the model cards) and `GET /v1/users/{id}/predictions` (what the models say
//! about one user now, where each answer came from, and the decision path behind it). Behind the
//! admin middleware, like the rest of the admin API.

use axum::{
    Json,
    extract::{Path, State},
};
use chrono::Duration;
use serde_json::{Value, json};

use super::{AppState, error::ApiError};
use crate::{
    clock::to_millis,
    engine::schedule,
    ml::{
        report,
        serving::{entry_for, goals_of},
    },
    rules::Channel,
    store::HistoryEvent,
};

pub async fn models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let engine = &state.engine;
    let report = report::collect(&engine.store, engine.now())
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(json!({ "models": report.models })))
}

pub async fn predictions(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let engine = &state.engine;
    let now = engine.now();
    let unavailable = |e: crate::store::StoreError| ApiError::unavailable(&e);
    let mut histories = engine
        .store
        .user_histories(&[id.as_str()], to_millis(now))
        .await
        .map_err(unavailable)?;
    let (Some((history_user, events)), Some(user)) = (
        histories.remove(&id),
        engine.store.user(&id).await.map_err(unavailable)?,
    ) else {
        return Err(ApiError::not_found("no such user"));
    };
    let rules = engine.rules.current();
    let served = engine.predictor.served();
    let refs: Vec<&HistoryEvent> = events.iter().collect();
    let entry = entry_for(&served, &history_user, &refs, now);

    // The best hour of the coming week outside quiet hours, in the user's time zone.
    let (tz, _) = schedule::user_timezone(user.timezone.as_deref(), rules.global.timezone);
    let slots = schedule::predicted_slots(now, Duration::days(7), rules.global.quiet_hours, tz);
    let hours: Vec<usize> = slots.iter().map(|(_, h)| *h).collect();
    let send_time = match served.send_hour(&hours, Some(&entry)) {
        Some(pick) => {
            let at = slots
                .iter()
                .find(|(_, h)| *h == pick.hour_of_week)
                .map(|(t, _)| *t);
            json!({
                "hour_of_week": pick.hour_of_week,
                "local_time": at.map(|t| t.with_timezone(&tz).to_rfc3339()),
                "probability": pick.prediction.probability,
                "source": pick.prediction.source,
                "path": pick.prediction.path,
            })
        }
        None => json!({
            "hour_of_week": null,
            "local_time": null,
            "probability": null,
            "source": "fallback: immediate (no send-time model in service)",
            "path": [],
        }),
    };

    let reachable: Vec<Channel> = [Channel::Email, Channel::Push]
        .into_iter()
        .filter(|c| match c {
            Channel::Email => user.can_receive_email(),
            Channel::Push => user.can_receive_push(),
        })
        .collect();
    let channel = if reachable.is_empty() {
        json!({"scores": {}, "choice": null, "source": "no reachable channel", "path": []})
    } else {
        let pick = served.channel(&reachable, Some(&entry));
        let scores: serde_json::Map<String, Value> = pick
            .scores
            .iter()
            .map(|(c, p)| (c.as_str().to_string(), json!(p)))
            .collect();
        json!({
            "scores": scores,
            "choice": pick.choice.as_str(),
            "source": pick.source,
            "path": pick.path,
        })
    };

    let mut goals: Vec<String> = goals_of(&rules).into_iter().map(|g| g.event).collect();
    for goal in served.propensity.keys() {
        if !goals.contains(goal) {
            goals.push(goal.clone());
        }
    }
    goals.sort();
    let mut propensity = serde_json::Map::new();
    let mut detail = serde_json::Map::new();
    for goal in goals {
        let p = served.propensity(&goal, Some(&entry));
        propensity.insert(goal.clone(), json!(p.probability));
        detail.insert(goal, json!(p));
    }
    Ok(Json(json!({
        "user": id,
        "as_of": now.to_rfc3339(),
        "has_history": entry.has_history,
        "send_time": send_time,
        "channel": channel,
        "propensity": propensity,
        "propensity_detail": detail,
    })))
}
