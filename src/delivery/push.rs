//! Push: a [`PushPayload`] as an FCM HTTP v1 message
//! (`{"message": {"token", "notification": {"title", "body"}, "data"}}`), POSTed to
//! `NUDGE_PUSH_URL` with the idempotency key in `X-Nudge-Message-Id`, or by default appended as
//! one JSON line to `<outbox_dir>/push.ndjson`.
//!
//! Gateways answer with HTTP statuses, classified by [`super::retry::classify_http_status`]:
//! 2xx sent, 408/429/5xx and network errors retried (honouring `Retry-After` in seconds), other
//! 4xx failed with the status and the start of the body as the reason.

use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, sync::Mutex};

use super::{
    DeliveryConfig, DeliveryError, SendError,
    rate::RateLimiter,
    retry::{Verdict, classify_http_status},
};
use crate::{outbox::PushPayload, store::redact_url};

/// The header carrying the idempotency key, so a gateway can drop a resend after a crash.
pub const MESSAGE_ID_HEADER: &str = "X-Nudge-Message-Id";

/// The FCM HTTP v1 request body for one message.
pub fn fcm_message(token: &str, payload: &PushPayload) -> Value {
    json!({
        "message": {
            "token": token,
            "notification": { "title": payload.title, "body": payload.body },
            "data": payload.data,
        }
    })
}

/// A gateway's answer, by what to do next.
pub fn classify_response(status: u16, retry_after: Option<Duration>, body: &str) -> Result<(), SendError> {
    let reason = || {
        let body: String = body.chars().take(200).collect();
        format!("push gateway answered HTTP {status}: {}", body.trim())
    };
    match classify_http_status(status) {
        Verdict::Delivered => Ok(()),
        Verdict::Retry => Err(SendError::Transient {
            reason: reason(),
            retry_after,
        }),
        Verdict::GiveUp | Verdict::HardBounce => Err(SendError::permanent(reason())),
    }
}

enum Transport {
    Http {
        client: reqwest::Client,
        url: String,
    },
    /// Appends are serialised so that lines from concurrent workers never interleave.
    File {
        path: PathBuf,
        lock: Mutex<()>,
    },
}

/// The push channel: a transport and the send-rate limit.
pub struct PushSender {
    transport: Transport,
    rate: Option<RateLimiter>,
    target: String,
}

impl PushSender {
    /// Builds the transport named by the configuration. Call [`super::install_crypto_provider`]
    /// first: reqwest is built without a default rustls provider.
    pub fn new(config: &DeliveryConfig) -> Result<PushSender, DeliveryError> {
        let (transport, target) = match &config.push_url {
            Some(url) => {
                let shown = redact_url(url);
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(DeliveryError::Config(format!(
                        "NUDGE_PUSH_URL `{shown}` must start with http:// or https://"
                    )));
                }
                let client = reqwest::Client::builder()
                    .timeout(config.attempt_timeout)
                    .connect_timeout(config.attempt_timeout.min(Duration::from_secs(10)))
                    .user_agent(concat!("nudge/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| DeliveryError::Config(format!("cannot build the push HTTP client: {e}")))?;
                (
                    Transport::Http {
                        client,
                        url: url.clone(),
                    },
                    format!("HTTP {shown}"),
                )
            }
            None => {
                std::fs::create_dir_all(&config.outbox_dir).map_err(|source| DeliveryError::Io {
                    path: config.outbox_dir.clone(),
                    source,
                })?;
                let path = config.outbox_dir.join("push.ndjson");
                let target = format!("file {}", path.display());
                (
                    Transport::File {
                        path,
                        lock: Mutex::new(()),
                    },
                    target,
                )
            }
        };
        Ok(PushSender {
            transport,
            rate: config.push_rate.map(RateLimiter::new),
            target,
        })
    }

    /// Where pushes go, safe to log.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Waits for the rate limit to allow one more push.
    pub async fn ready(&self) {
        if let Some(rate) = &self.rate {
            rate.acquire().await;
        }
    }

    /// Sends one push to device `token`; the caller bounds it with the attempt timeout.
    pub async fn send(&self, token: &str, key: &str, payload: &PushPayload) -> Result<(), SendError> {
        if token.trim().is_empty() {
            return Err(SendError::permanent("no push token"));
        }
        let body = fcm_message(token, payload);
        match &self.transport {
            Transport::Http { client, url } => {
                let response = client
                    .post(url)
                    .header(MESSAGE_ID_HEADER, key)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| {
                        // Strip the URL from reqwest's message: it may hold a credential.
                        let e = e.without_url();
                        if e.is_builder() {
                            SendError::permanent(format!("cannot build the push request: {e}"))
                        } else {
                            SendError::transient(format!("push gateway unreachable: {e}"))
                        }
                    })?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text = if (200..300).contains(&status) {
                    String::new()
                } else {
                    response.text().await.unwrap_or_default()
                };
                classify_response(status, retry_after, &text)
            }
            Transport::File { path, lock } => {
                let mut line = json!({ "message_id": key, "message": body["message"] }).to_string();
                line.push('\n');
                let _guard = lock.lock().await;
                let write = async {
                    let mut file = tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await?;
                    file.write_all(line.as_bytes()).await?;
                    file.flush().await
                };
                write
                    .await
                    .map_err(|e| SendError::transient(format!("cannot append to {}: {e}", path.display())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn fcm_v1_shape() {
        let p = PushPayload {
            title: "Your cart".into(),
            body: "3 items".into(),
            data: BTreeMap::from([("nudge_message_id".to_string(), "k1".to_string())]),
        };
        assert_eq!(
            fcm_message("tok", &p),
            json!({"message": {"token": "tok", "notification": {"title": "Your cart", "body": "3 items"},
                   "data": {"nudge_message_id": "k1"}}})
        );
    }

    #[test]
    fn responses_by_status() {
        assert_eq!(classify_response(200, None, ""), Ok(()));
        assert!(matches!(
            classify_response(503, Some(Duration::from_secs(7)), "busy"),
            Err(SendError::Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(7)
        ));
        let err = classify_response(400, None, r#"{"error":"INVALID_ARGUMENT"}"#).unwrap_err();
        assert!(
            matches!(&err, SendError::Permanent { reason } if reason.contains("400") && reason.contains("INVALID_ARGUMENT"))
        );
    }
}
