//! Events coming in: Segment-compatible payloads (HTTP and `nudge import`) and the events nudge
//! makes itself (opens, clicks, unsubscribes), all turned into [`IncomingEvent`] before the store.

pub mod import;
pub mod segment;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// What kind of call produced an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Track,
    Identify,
    Page,
    Screen,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Track => "track",
            EventKind::Identify => "identify",
            EventKind::Page => "page",
            EventKind::Screen => "screen",
        }
    }
}

/// One validated event, ready to store. Everything a campaign may need and nothing more: the
/// Segment `context` is not kept beyond the device token.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    /// Segment `messageId` (generated when absent); a resend with the same id is a no-op.
    pub message_id: String,
    /// `userId`, else `anonymousId`.
    pub user_id: String,
    pub kind: EventKind,
    /// Track event name (or page/screen name).
    pub name: Option<String>,
    pub properties: Map<String, Value>,
    /// Identify traits, merged into the user's traits.
    pub traits: Map<String, Value>,
    /// `context.device.token`, the push token Segment's mobile libraries send.
    pub device_token: Option<String>,
    /// The event's own time (`timestamp`, corrected by `sentAt` clock skew when both are given).
    pub timestamp: DateTime<Utc>,
}

impl IncomingEvent {
    /// A track event, for events nudge produces itself and for tests.
    pub fn track(user_id: &str, name: &str, properties: Value, at: DateTime<Utc>) -> Self {
        IncomingEvent {
            message_id: uuid::Uuid::now_v7().to_string(),
            user_id: user_id.to_string(),
            kind: EventKind::Track,
            name: Some(name.to_string()),
            properties: properties.as_object().cloned().unwrap_or_default(),
            traits: Map::new(),
            device_token: None,
            timestamp: at,
        }
    }

    /// An identify call, for tests and simulations.
    pub fn identify(user_id: &str, traits: Value, at: DateTime<Utc>) -> Self {
        IncomingEvent {
            message_id: uuid::Uuid::now_v7().to_string(),
            user_id: user_id.to_string(),
            kind: EventKind::Identify,
            name: None,
            properties: Map::new(),
            traits: traits.as_object().cloned().unwrap_or_default(),
            device_token: None,
            timestamp: at,
        }
    }

    pub fn with_message_id(mut self, id: &str) -> Self {
        self.message_id = id.to_string();
        self
    }
}
