//! The HTTP edge: Segment-compatible ingestion, tracking links, the admin API, health and metrics.
//!
//! [`router`] builds the whole API over an [`AppState`]. Handlers only translate: ingestion hands
//! validated events to [`Engine::ingest`](crate::engine::Engine::ingest) and answers 200 after the
//! commit; tracking calls [`crate::tracking::engagement`]; the admin API reads the rule set and the
//! store. The admin API's loopback rule needs the peer address, so serve the router with
//! `router(state).into_make_service_with_connect_info::<SocketAddr>()`.
//!
//! Routes:
//! - `POST /v1/track|identify|page|screen|alias|group|batch` — write key (Basic or Bearer)
//! - `GET /t/o/{token}`, `GET /t/c/{token}`, `GET|POST /u/{token}` — signed tokens, no auth
//! - `GET /v1/campaigns`, `POST /v1/campaigns/{id}/pause|resume`, `GET /v1/users/{id}/messages`,
//!   `GET /v1/users/{id}/predictions`, `GET /v1/models`, `GET /v1/reports/lift` — admin key
//!   (Bearer), or loopback peers when no admin key is configured
//! - `GET /healthz`, `GET /metrics` — open

mod admin;
pub mod error;
mod ingest;
mod models;
mod reports;
mod tracking;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

pub use error::ApiError;

use crate::{engine::Engine, events::segment::MAX_BATCH_BYTES};

pub use crate::config::Secret;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Keys accepted by the ingestion endpoints (`NUDGE_WRITE_KEYS`); empty refuses all ingestion.
    pub write_keys: Arc<Vec<Secret>>,
    /// Bearer key of the admin API (`NUDGE_ADMIN_KEY`); `None` opens it to loopback peers only.
    pub admin_key: Option<Secret>,
    /// Renders `GET /metrics`; `None` answers 404 there.
    pub metrics: Option<PrometheusHandle>,
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let ingestion = Router::new()
        .route("/v1/track", post(ingest::track))
        .route("/v1/identify", post(ingest::identify))
        .route("/v1/page", post(ingest::page))
        .route("/v1/screen", post(ingest::screen))
        .route("/v1/alias", post(ingest::alias))
        .route("/v1/group", post(ingest::group))
        .route("/v1/batch", post(ingest::batch))
        // The raw (possibly compressed) body; the decompressed size is checked separately.
        .layer(DefaultBodyLimit::max(MAX_RAW_BODY_BYTES))
        .route_layer(middleware::from_fn(refuse_declared_oversize));
    let admin = Router::new()
        .route("/v1/campaigns", get(admin::campaigns))
        .route("/v1/campaigns/{id}/pause", post(admin::pause))
        .route("/v1/campaigns/{id}/resume", post(admin::resume))
        .route("/v1/users/{id}/messages", get(admin::user_messages))
        .route("/v1/users/{id}/predictions", get(models::predictions))
        .route("/v1/models", get(models::models))
        .route("/v1/reports/lift", get(reports::lift))
        .route("/v1/reports/lift/history", get(reports::lift_history))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let tracking = Router::new()
        .route("/t/o/{token}", get(tracking::open))
        .route("/t/c/{token}", get(tracking::click))
        .route(
            "/u/{token}",
            get(tracking::unsubscribe_page).post(tracking::unsubscribe),
        )
        .layer(DefaultBodyLimit::max(16 * 1024));
    Router::new()
        .merge(ingestion)
        .merge(admin)
        .merge(tracking)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// The largest raw ingestion body read: the batch limit plus room for gzip's worst case overhead.
const MAX_RAW_BODY_BYTES: usize = MAX_BATCH_BYTES + 64 * 1024;

/// A body whose `Content-Length` already says it is too large is refused before a byte of it is
/// read (a client sending a 2 MiB batch gets its 413 at once, not after uploading it). Bodies
/// without a length (chunked) are cut off by [`DefaultBodyLimit`] as they stream.
async fn refuse_declared_oversize(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_RAW_BODY_BYTES as u64 => {
            metrics::counter!("nudge_events_rejected_total", "reason" => "body_too_large").increment(1);
            ApiError::body_too_large(MAX_BATCH_BYTES).into_response()
        }
        _ => next.run(request).await,
    }
}

/// `nudge_http_requests_total{route,status}`; the route is the matched pattern, never the raw
/// path, which would put tokens into metric labels.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics::counter!(
        "nudge_http_requests_total",
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// The credentials of a request: `Basic base64(key:)` as Segment's libraries send it, or `Bearer key`.
fn presented_key(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.as_bytes().to_vec())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(rest).ok()?;
        // The user name is the key; Segment ignores the password (its libraries send none).
        let user = match decoded.iter().position(|b| *b == b':') {
            Some(colon) => decoded[..colon].to_vec(),
            None => decoded,
        };
        Some(user)
    } else {
        None
    }
}

/// True when `candidate` is one of `keys`. Every key is compared, so timing does not tell which.
fn any_matches(keys: &[Secret], candidate: &[u8]) -> bool {
    keys.iter().fold(false, |found, k| k.matches(candidate) | found)
}

pub(crate) fn authorize_write(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = presented_key(headers) else {
        return Err(ApiError::unauthorized(
            "a write key is required: HTTP Basic with the key as user name, or Bearer <key>",
        ));
    };
    if key.is_empty() || !any_matches(&state.write_keys, &key) {
        return Err(ApiError::unauthorized("the write key is not valid"));
    }
    Ok(())
}

/// The admin API: the bearer admin key when one is configured, else loopback peers only.
async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let allowed = match &state.admin_key {
        Some(admin) => match presented_key(request.headers()) {
            Some(key) if admin.matches(&key) => Ok(()),
            Some(_) => Err(ApiError::unauthorized_bearer("the admin key is not valid")),
            None => Err(ApiError::unauthorized(
                "the admin key is required: Bearer <NUDGE_ADMIN_KEY>",
            )),
        },
        None => match request.extensions().get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) if peer.ip().is_loopback() => Ok(()),
            _ => Err(ApiError::forbidden(
                "the admin API is open to loopback clients only; set NUDGE_ADMIN_KEY to use it remotely",
            )),
        },
    };
    match allowed {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// How long `/healthz` waits for the database before calling it unreachable (the pool's own
/// acquire timeout is longer, and a health check must answer while the database is down).
const HEALTH_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `200 {"status": "ok"|"degraded", "database": "ok", "email": {...}, "push": {...}}`, or 503
/// with `"database": "unreachable"`. A failing transport degrades (events are still accepted
/// and kept for later delivery); only a database that does not answer is `unavailable`.
async fn healthz(State(state): State<AppState>) -> Response {
    let ping = tokio::time::timeout(HEALTH_PING_TIMEOUT, state.engine.store.ping()).await;
    let database_ok = match ping {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "HealthCheckFailed");
            false
        }
        Err(_) => {
            tracing::warn!(timeout = ?HEALTH_PING_TIMEOUT, "HealthCheckFailed: database did not answer");
            false
        }
    };
    let health = &state.engine.transport_health;
    let (email, push) = (health.channel("email"), health.channel("push"));
    let transports_ok = email.status() != "failing" && push.status() != "failing";
    let (code, status) = match (database_ok, transports_ok) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, false) => (StatusCode::OK, "degraded"),
        (true, true) => (StatusCode::OK, "ok"),
    };
    let body = json!({
        "status": status,
        "database": if database_ok { "ok" } else { "unreachable" },
        "email": email.to_json(),
        "push": push.to_json(),
    });
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            handle.run_upkeep();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                handle.render(),
            )
                .into_response()
        }
        None => ApiError::not_found("metrics are not enabled").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn credentials_from_basic_and_bearer() {
        let basic = format!("Basic {}", STANDARD.encode("wk:"));
        assert_eq!(presented_key(&headers(&basic)).as_deref(), Some(&b"wk"[..]));
        let no_colon = format!("Basic {}", STANDARD.encode("wk"));
        assert_eq!(presented_key(&headers(&no_colon)).as_deref(), Some(&b"wk"[..]));
        assert_eq!(presented_key(&headers("Bearer wk")).as_deref(), Some(&b"wk"[..]));
        assert_eq!(presented_key(&headers("Basic %%%")), None);
        assert_eq!(presented_key(&headers("Digest x")), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn secrets_are_redacted_and_compared() {
        let keys = Secret::parse_list(" a1, ,b2 ");
        assert_eq!(keys.len(), 2);
        assert_eq!(format!("{:?} {}", keys[0], keys[1]), "*** ***");
        assert!(any_matches(&keys, b"b2"));
        assert!(!any_matches(&keys, b"b"));
        assert!(!any_matches(&[], b"a1"));
    }
}
