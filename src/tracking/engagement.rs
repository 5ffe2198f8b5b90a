//! What an open, a click and an unsubscribe do once their token checks out.
//!
//! Each becomes an event through [`Engine::ingest`] (so campaigns can trigger on `email_opened`,
//! `email_clicked`, `push_opened` and `unsubscribed`, and guardrails can count them) plus a
//! message-log row. Event ids are derived from the token's content, so engagement is counted once
//! per message (opens), per link (clicks) and per user and topic (unsubscribes): a mail client
//! that reloads the pixel ten times, or a scanner that follows every link, adds no noise.
//! A token that does not verify, or names a message or link that does not exist, changes nothing.

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::tokens::{Signer, TokenKind};
use crate::{
    engine::Engine,
    events::IncomingEvent,
    store::{StoreError, admin::TrackedMessage},
};

#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// Malformed, forged or of another kind: answered 404, nothing recorded.
    #[error("invalid token")]
    InvalidToken,
    #[error("no such message")]
    UnknownMessage,
    #[error("no such link")]
    UnknownLink,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An engagement event and whether it was new (the first open of the message, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub message: TrackedMessage,
    pub first: bool,
}

/// A verified click: the link's stored target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub message: TrackedMessage,
    pub link: i64,
    pub url: String,
}

/// A verified unsubscribe token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Unsubscribe {
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "t")]
    pub topic: Option<String>,
}

#[derive(Deserialize)]
struct ClickPayload {
    m: String,
    l: i64,
}

/// Records the open of the message named by an open token (`email_opened` or `push_opened`).
pub async fn record_open(engine: &Engine, token: &str) -> Result<Recorded, TrackingError> {
    let key = engine
        .signer
        .verify(TokenKind::Open, token)
        .map_err(|_| TrackingError::InvalidToken)?;
    let message = engine
        .store
        .tracked_message(&key)
        .await?
        .ok_or(TrackingError::UnknownMessage)?;
    let name = match message.channel.as_str() {
        "push" => "push_opened",
        _ => "email_opened",
    };
    let first = record(engine, &message, name, "opened", format!("open:{key}"), json!({})).await?;
    Ok(Recorded { message, first })
}

/// Checks a click token and finds the link it names. Reads only.
pub async fn resolve_click(engine: &Engine, token: &str) -> Result<Click, TrackingError> {
    let (m, l) = click_target(&engine.signer, token)?;
    let message = engine
        .store
        .tracked_message(&m)
        .await?
        .ok_or(TrackingError::UnknownMessage)?;
    let url = engine
        .store
        .link_url(message.outbox_id, l)
        .await?
        .ok_or(TrackingError::UnknownLink)?;
    Ok(Click {
        message,
        link: l,
        url,
    })
}

/// Checks a click token: the message key and link index it names. Reads nothing.
pub fn click_target(signer: &Signer, token: &str) -> Result<(String, i64), TrackingError> {
    let payload = signer
        .verify(TokenKind::Click, token)
        .map_err(|_| TrackingError::InvalidToken)?;
    let ClickPayload { m, l } = serde_json::from_str(&payload).map_err(|_| TrackingError::InvalidToken)?;
    Ok((m, l))
}

/// Records `email_clicked` for a resolved click; returns whether it was this link's first click.
pub async fn record_click(engine: &Engine, click: &Click) -> Result<bool, TrackingError> {
    let id = format!("click:{}:{}", click.message.key, click.link);
    let extra = json!({ "link": click.link, "url": click.url });
    record(engine, &click.message, "email_clicked", "clicked", id, extra).await
}

/// Checks an unsubscribe token. Reads nothing, changes nothing (the confirmation page).
pub fn unsubscribe_target(signer: &Signer, token: &str) -> Result<Unsubscribe, TrackingError> {
    let payload = signer
        .verify(TokenKind::Unsubscribe, token)
        .map_err(|_| TrackingError::InvalidToken)?;
    serde_json::from_str(&payload).map_err(|_| TrackingError::InvalidToken)
}

/// Unsubscribes at once (RFC 8058 one-click), then records `unsubscribed` and a log row.
/// Idempotent: a second POST changes nothing and adds no event.
pub async fn unsubscribe(engine: &Engine, target: &Unsubscribe) -> Result<bool, TrackingError> {
    let now = engine.now();
    let topic = target.topic.as_deref();
    engine.store.unsubscribe(&target.user_id, topic, now).await?;
    let digest = Sha256::digest(format!("{}\0{}", target.user_id, topic.unwrap_or("*")).as_bytes());
    let event = IncomingEvent::track(
        &target.user_id,
        "unsubscribed",
        json!({ "topic": topic, "channel": "email" }),
        now,
    )
    .with_message_id(&format!("unsubscribe:{}", hex::encode(&digest[..16])));
    let first = engine.ingest(&[event]).await?.stored > 0;
    if first {
        let detail = json!({ "topic": topic, "scope": if topic.is_some() { "topic" } else { "all email" } });
        engine
            .store
            .log(&target.user_id, None, None, "unsubscribed", &detail, now)
            .await?;
        tracing::info!(topic = ?topic, "UserUnsubscribed");
    }
    Ok(first)
}

async fn record(
    engine: &Engine,
    message: &TrackedMessage,
    name: &str,
    log_kind: &str,
    message_id: String,
    extra: serde_json::Value,
) -> Result<bool, TrackingError> {
    let now = engine.now();
    let mut properties = json!({
        "campaign": message.campaign_id,
        "message_id": message.key,
        "channel": message.channel,
    });
    if let (Some(p), Some(extra)) = (properties.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    let event =
        IncomingEvent::track(&message.user_id, name, properties.clone(), now).with_message_id(&message_id);
    let first = engine.ingest(&[event]).await?.stored > 0;
    if first {
        engine
            .store
            .log(
                &message.user_id,
                Some(&message.campaign_id),
                Some(message.outbox_id),
                log_kind,
                &properties,
                now,
            )
            .await?;
    }
    metrics::counter!("nudge_engagements_total", "kind" => log_kind.to_string(), "first" => first.to_string())
        .increment(1);
    Ok(first)
}
