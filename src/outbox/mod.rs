//! The outbox: rendered messages waiting for delivery, one per treatment assignment.
//!
//! The engine writes a row with its payload (below) and an idempotency key fixed at creation;
//! delivery workers claim due rows with a lease, send, and mark them. The key doubles as the
//! email's Message-ID and the push message id, so a duplicate after a crash is detectable downstream.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What is sent, rendered at decision time so retries send exactly the same message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "lowercase")]
pub enum Payload {
    Email(EmailPayload),
    Push(PushPayload),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailPayload {
    pub subject: String,
    /// HTML body with tracked links and the open pixel, when the template is HTML.
    pub html: Option<String>,
    /// Plain-text body (always present: derived from the HTML when the template is HTML).
    pub text: String,
    /// One-click unsubscribe URL (`List-Unsubscribe`, RFC 8058).
    pub unsubscribe_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushPayload {
    pub title: String,
    pub body: String,
    /// Extra key/values for the app: `nudge_message_id`, `open_url` (report a push open there).
    pub data: BTreeMap<String, String>,
}

/// The Message-ID header value for an idempotency key.
pub fn message_id(key: &str, domain: &str) -> String {
    format!("<{key}@{domain}>")
}
