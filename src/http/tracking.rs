//! `GET /t/o/{token}` (open pixel), `GET /t/c/{token}` (click redirect), `GET|POST /u/{token}`
//! (unsubscribe page and RFC 8058 one-click unsubscribe).
//!
//! A token that does not verify answers 404 and records nothing. Tokens are never logged.

use axum::{
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use super::{AppState, error::ApiError};
use crate::tracking::engagement::{self, TrackingError};

/// A 1×1 transparent GIF.
const PIXEL: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

fn refused(e: TrackingError) -> ApiError {
    match e {
        TrackingError::Store(e) => ApiError::unavailable(&e),
        TrackingError::InvalidToken | TrackingError::UnknownMessage | TrackingError::UnknownLink => {
            metrics::counter!("nudge_tracking_refused_total").increment(1);
            ApiError::not_found("unknown or invalid link")
        }
    }
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=0"),
    );
    response
}

pub async fn open(State(state): State<AppState>, Path(token): Path<String>) -> Result<Response, ApiError> {
    engagement::record_open(&state.engine, &token)
        .await
        .map_err(refused)?;
    Ok(no_store(
        ([(header::CONTENT_TYPE, "image/gif")], PIXEL).into_response(),
    ))
}

/// Redirects to the URL stored for (message, link index) — never one taken from the request. When
/// recording the click fails the reader is still sent on (and the failure logged): losing one
/// click event is better than a broken link in someone's inbox.
pub async fn click(State(state): State<AppState>, Path(token): Path<String>) -> Result<Response, ApiError> {
    let click = engagement::resolve_click(&state.engine, &token)
        .await
        .map_err(refused)?;
    if let Err(e) = engagement::record_click(&state.engine, &click).await {
        tracing::warn!(error = %e, campaign = %click.message.campaign_id, "ClickNotRecorded");
    }
    let location =
        HeaderValue::from_str(&click.url).map_err(|_| ApiError::not_found("unknown or invalid link"))?;
    let mut response = StatusCode::FOUND.into_response();
    response.headers_mut().insert(header::LOCATION, location);
    Ok(no_store(response))
}

/// The confirmation page. Changes nothing: link scanners and prefetchers GET every URL in a mail.
pub async fn unsubscribe_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let target = engagement::unsubscribe_target(&state.engine.signer, &token).map_err(refused)?;
    let what = match &target.topic {
        Some(topic) => format!("emails about <strong>{}</strong>", escape(topic)),
        None => "all marketing email".to_string(),
    };
    let page = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>Unsubscribe</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto">
<h1>Unsubscribe</h1>
<p>Stop receiving {what}?</p>
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>
</body></html>
"#
    );
    Ok(no_store(Html(page).into_response()))
}

/// RFC 8058 one-click: takes effect at once, without cookies or auth, answered 200 (never a
/// redirect). The body (`List-Unsubscribe=One-Click`) is not required: the signed token is what
/// authorises, and some clients post an empty or multipart body.
pub async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let target = engagement::unsubscribe_target(&state.engine.signer, &token).map_err(refused)?;
    engagement::unsubscribe(&state.engine, &target)
        .await
        .map_err(refused)?;
    let page = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head>\
                <body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">\
                <h1>You are unsubscribed</h1><p>You will not receive these emails any more.</p></body></html>\n";
    Ok(no_store(Html(page).into_response()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
