//! The one error type of the HTTP API.
//!
//! Every failure — bad JSON, a missing field, a wrong key, a database that is down — answers
//! `{"error": {"code": "...", "message": "...", "field": "batch[3].userId" | null}}` with a stable
//! `code` clients can branch on. Internals (SQL, file paths, keys) never reach the message.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{events::segment::Rejection, store::StoreError};

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Extra header for 401s: which scheme to use.
    authenticate: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            authenticate: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            authenticate: Some(r#"Basic realm="nudge""#),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
    }

    /// A 401 of the admin API, which takes only `Bearer` keys.
    pub fn unauthorized_bearer(message: impl Into<String>) -> Self {
        ApiError {
            authenticate: Some(r#"Bearer realm="nudge-admin""#),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn body_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {limit} bytes (500 KB) once decompressed"),
        )
    }

    /// The store failed: the client should retry; nothing was accepted.
    pub fn unavailable(e: &StoreError) -> Self {
        tracing::error!(error = %e, transient = e.is_transient(), "StoreUnavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unavailable; nothing was stored, retry later",
        )
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError {
            field: r.field,
            ..ApiError::new(StatusCode::BAD_REQUEST, r.code.as_str(), r.message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "code": self.code, "message": self.message, "field": self.field }
        });
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if let Some(scheme) = self.authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        response
    }
}
