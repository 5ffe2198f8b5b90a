//! `POST /v1/track|identify|page|screen|alias|group|batch`: Segment's HTTP tracking API.
//!
//! In order: the write key, the body (gunzipped with a cap so a gzip bomb cannot exhaust memory),
//! the size limits, JSON, then every call is validated before anything is stored. The valid
//! events go to one [`Engine::ingest`](crate::engine::Engine::ingest) call — one transaction — and
//! `{"success": true}` is sent only after it committed. A store failure answers 503 with
//! `Retry-After`, never 200.

use std::io::Read;

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
};
use flate2::read::MultiGzDecoder;
use serde_json::{Value, json};

use super::{AppState, authorize_write, error::ApiError};
use crate::events::segment::{self, CallType, MAX_BATCH_BYTES};

type Answer = Result<Json<Value>, ApiError>;

pub async fn track(
    state: State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    accept(state, headers, body, Some(CallType::Track)).await
}

pub async fn identify(
    state: State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    accept(state, headers, body, Some(CallType::Identify)).await
}

pub async fn page(state: State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Answer {
    accept(state, headers, body, Some(CallType::Page)).await
}

pub async fn screen(
    state: State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    accept(state, headers, body, Some(CallType::Screen)).await
}

/// Accepted (validated) and ignored: nudge has no identity merging.
pub async fn alias(
    state: State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    accept(state, headers, body, Some(CallType::Alias)).await
}

/// Accepted (validated) and ignored: nudge has no accounts.
pub async fn group(
    state: State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    accept(state, headers, body, Some(CallType::Group)).await
}

pub async fn batch(
    state: State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    accept(state, headers, body, None).await
}

/// One call (`Some(type)`) or a batch (`None`).
async fn accept(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    call: Option<CallType>,
) -> Answer {
    authorize_write(&state, &headers)?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(MAX_BATCH_BYTES)
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the request body could not be read",
            )
        }
    })?;
    let body = decode(&headers, body).inspect_err(|e| rejected(e.code))?;
    let received_at = state.engine.now();
    let events = segment::parse_body(&body, call, received_at).map_err(|r| {
        rejected(r.code.as_str());
        ApiError::from(r)
    })?;
    if !events.is_empty() {
        state
            .engine
            .ingest(&events)
            .await
            .map_err(|e| ApiError::unavailable(&e))?;
    }
    Ok(Json(json!({ "success": true })))
}

fn rejected(reason: &'static str) {
    metrics::counter!("nudge_events_rejected_total", "reason" => reason).increment(1);
}

/// The body as JSON text: gunzipped when `Content-Encoding: gzip`, never more than the batch limit.
fn decode(headers: &HeaderMap, body: Bytes) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > MAX_BATCH_BYTES {
                return Err(ApiError::body_too_large(MAX_BATCH_BYTES));
            }
            Ok(body)
        }
        Some("gzip" | "x-gzip") => {
            // Reading one byte past the limit tells "too large" apart from "exactly the limit"
            // without ever inflating more than that: a gzip bomb stops here.
            let mut out = Vec::with_capacity(body.len() * 4);
            MultiGzDecoder::new(&body[..])
                .take(MAX_BATCH_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_gzip",
                        "Content-Encoding is gzip but the body is not valid gzip",
                    )
                })?;
            if out.len() > MAX_BATCH_BYTES {
                return Err(ApiError::body_too_large(MAX_BATCH_BYTES));
            }
            Ok(Bytes::from(out))
        }
        Some(_) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            "Content-Encoding must be gzip or identity",
        )),
    }
}
