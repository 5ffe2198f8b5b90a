//! Segment's tracking API payloads → [`IncomingEvent`]s.
//!
//! Takes parsed JSON (an HTTP body or one line of an import file) and checks it the way Segment's
//! HTTP tracking API does: `userId` or `anonymousId`, `event` for track calls, objects where
//! objects belong, ISO 8601 times with clock-skew correction (`timestamp + (receivedAt - sentAt)`),
//! a generated UUID v7 `messageId` when none is given. Of `context`, only `context.device.token`
//! (the push token Segment's mobile libraries send) is kept. Every problem is a [`Rejection`]
//! naming the field path (`batch[3].userId`), so the HTTP layer and `nudge import` report the same.
//! `alias` and `group` calls are accepted and ignored (nudge has no accounts or identity merging).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Map, Value};

use super::{EventKind, IncomingEvent};

/// Segment's limit for one call (`track`, `identify`, …, or one item of a batch).
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Segment's limit for a whole `/v1/batch` body, measured after decompression.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// The Segment call types nudge understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    Track,
    Identify,
    Page,
    Screen,
    /// Accepted and ignored.
    Alias,
    /// Accepted and ignored.
    Group,
}

impl CallType {
    pub fn parse(s: &str) -> Option<CallType> {
        Some(match s {
            "track" => CallType::Track,
            "identify" => CallType::Identify,
            "page" => CallType::Page,
            "screen" => CallType::Screen,
            "alias" => CallType::Alias,
            "group" => CallType::Group,
            _ => return None,
        })
    }
}

/// Stable codes of rejected input; the HTTP error's `code` and the import summary use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    InvalidJson,
    MissingField,
    InvalidType,
    InvalidTimestamp,
    UnknownType,
    EventTooLarge,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::InvalidJson => "invalid_json",
            RejectCode::MissingField => "missing_field",
            RejectCode::InvalidType => "invalid_type",
            RejectCode::InvalidTimestamp => "invalid_timestamp",
            RejectCode::UnknownType => "unknown_type",
            RejectCode::EventTooLarge => "event_too_large",
        }
    }
}

/// Why a payload was refused, and which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", field.as_deref().unwrap_or("body"))]
pub struct Rejection {
    pub code: RejectCode,
    pub message: String,
    /// Path of the offending field (`batch[3].userId`); `None` for the body as a whole.
    pub field: Option<String>,
}

impl Rejection {
    pub fn new(code: RejectCode, field: Option<String>, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            field,
        }
    }

    /// A body that is not JSON.
    pub fn invalid_json(e: &serde_json::Error) -> Self {
        Rejection::new(
            RejectCode::InvalidJson,
            None,
            format!("body is not valid JSON: {e}"),
        )
    }
}

/// Where a call's type comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The endpoint fixes it (`/v1/track`); a `type` field is ignored, as Segment does.
    Fixed(CallType),
    /// The item's `type` field; `default` when absent (imports default to track), else required.
    FromField { default: Option<CallType> },
}

/// What surrounds one call: when it was received and the batch's own `sentAt` and `context`.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub received_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub context: Option<&'a Map<String, Value>>,
}

impl Envelope<'_> {
    pub fn at(received_at: DateTime<Utc>) -> Self {
        Envelope {
            received_at,
            sent_at: None,
            context: None,
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Parses one call. `Ok(None)` for calls nudge ignores (`alias`, `group`).
pub fn parse_call(
    value: &Value,
    expect: Expect,
    envelope: &Envelope<'_>,
    path: &str,
) -> Result<Option<IncomingEvent>, Rejection> {
    let field = |name: &str| Some(join(path, name));
    let Some(obj) = value.as_object() else {
        let at = (!path.is_empty()).then(|| path.to_string());
        return Err(Rejection::new(
            RejectCode::InvalidType,
            at,
            format!("expected a JSON object, got {}", type_name(value)),
        ));
    };
    let call = match expect {
        Expect::Fixed(t) => t,
        Expect::FromField { default } => match obj.get("type") {
            None | Some(Value::Null) => default.ok_or_else(|| {
                Rejection::new(
                    RejectCode::MissingField,
                    field("type"),
                    "type is required (track, identify, page, screen, alias or group)",
                )
            })?,
            Some(Value::String(s)) => CallType::parse(s).ok_or_else(|| {
                Rejection::new(
                    RejectCode::UnknownType,
                    field("type"),
                    format!("unknown type {s:?}: expected track, identify, page, screen, alias or group"),
                )
            })?,
            Some(other) => {
                return Err(Rejection::new(
                    RejectCode::InvalidType,
                    field("type"),
                    format!("type must be a string, got {}", type_name(other)),
                ));
            }
        },
    };

    let user_id = id_field(obj, "userId", path)?;
    let anonymous_id = id_field(obj, "anonymousId", path)?;
    let properties = object_field(obj, "properties", path)?;
    let traits = object_field(obj, "traits", path)?;
    let context = object_field(obj, "context", path)?;
    let timestamp = time_field(obj, "timestamp", path)?;
    let sent_at = time_field(obj, "sentAt", path)?.or(envelope.sent_at);
    let message_id = id_field(obj, "messageId", path)?;
    let kind = match call {
        CallType::Alias | CallType::Group => return Ok(None),
        CallType::Track => EventKind::Track,
        CallType::Identify => EventKind::Identify,
        CallType::Page => EventKind::Page,
        CallType::Screen => EventKind::Screen,
    };
    let Some(user_id) = user_id.or(anonymous_id) else {
        return Err(Rejection::new(
            RejectCode::MissingField,
            field("userId"),
            "userId or anonymousId is required",
        ));
    };
    let name = match kind {
        EventKind::Track => match obj.get("event") {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                return Err(Rejection::new(
                    RejectCode::MissingField,
                    field("event"),
                    "event is required for track calls",
                ));
            }
            Some(other) => {
                return Err(Rejection::new(
                    RejectCode::InvalidType,
                    field("event"),
                    format!("event must be a string, got {}", type_name(other)),
                ));
            }
        },
        EventKind::Page | EventKind::Screen => match obj.get("name") {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => None,
            Some(other) => {
                return Err(Rejection::new(
                    RejectCode::InvalidType,
                    field("name"),
                    format!("name must be a string, got {}", type_name(other)),
                ));
            }
        },
        EventKind::Identify => None,
    };
    // The batch's own context is checked in `parse_batch`; an item's context wins over it.
    let device_token = match device_token(context.as_ref(), path)? {
        Some(token) => Some(token),
        None => device_token(envelope.context, "context").unwrap_or(None),
    };

    // Segment's clock-skew correction: the device's clock may be off, but the gap between the
    // event and its sending is trusted, so the event is placed that long before we received it.
    let timestamp = match (timestamp, sent_at) {
        (Some(ts), Some(sent)) => ts + (envelope.received_at - sent),
        (Some(ts), None) => ts,
        (None, _) => envelope.received_at,
    };

    Ok(Some(IncomingEvent {
        message_id: message_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        user_id,
        kind,
        name,
        properties: properties.unwrap_or_default(),
        // Only identify calls change traits; `context.traits` is ignored like the rest of context.
        traits: match kind {
            EventKind::Identify => traits.unwrap_or_default(),
            _ => Map::new(),
        },
        device_token,
        timestamp,
    }))
}

/// Parses a `/v1/batch` body: `{"batch": [...], "sentAt": ..., "context": ...}`. Every item is
/// checked before anything is returned, so one bad item refuses the whole batch.
pub fn parse_batch(value: &Value, received_at: DateTime<Utc>) -> Result<Vec<IncomingEvent>, Rejection> {
    let Some(obj) = value.as_object() else {
        return Err(Rejection::new(
            RejectCode::InvalidType,
            None,
            format!(
                "expected a JSON object with a batch array, got {}",
                type_name(value)
            ),
        ));
    };
    let items = match obj.get("batch") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return Err(Rejection::new(
                RejectCode::MissingField,
                Some("batch".into()),
                "batch is required: an array of calls",
            ));
        }
        Some(other) => {
            return Err(Rejection::new(
                RejectCode::InvalidType,
                Some("batch".into()),
                format!("batch must be an array, got {}", type_name(other)),
            ));
        }
    };
    let context = object_field(obj, "context", "")?;
    device_token(context.as_ref(), "")?;
    let envelope = Envelope {
        received_at,
        sent_at: time_field(obj, "sentAt", "")?,
        context: context.as_ref(),
    };
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("batch[{i}]");
        check_event_size(item, Some(&path))?;
        if let Some(e) = parse_call(item, Expect::FromField { default: None }, &envelope, &path)? {
            events.push(e);
        }
    }
    Ok(events)
}

/// Parses an HTTP ingestion body (already decompressed): one call of type `call`
/// (`/v1/track`, …), or a `/v1/batch` body when `call` is `None`. A single call larger than
/// [`MAX_EVENT_BYTES`] is refused before it is parsed.
pub fn parse_body(
    body: &[u8],
    call: Option<CallType>,
    received_at: DateTime<Utc>,
) -> Result<Vec<IncomingEvent>, Rejection> {
    if call.is_some() && body.len() > MAX_EVENT_BYTES {
        return Err(Rejection::new(
            RejectCode::EventTooLarge,
            None,
            format!(
                "event is {} bytes; the limit is {MAX_EVENT_BYTES} bytes (32 KB)",
                body.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| Rejection::invalid_json(&e))?;
    match call {
        Some(call) => {
            let event = parse_call(&value, Expect::Fixed(call), &Envelope::at(received_at), "")?;
            Ok(event.into_iter().collect())
        }
        None => parse_batch(&value, received_at),
    }
}

/// Refuses one call larger than [`MAX_EVENT_BYTES`] once serialised.
pub fn check_event_size(item: &Value, path: Option<&str>) -> Result<(), Rejection> {
    let size = serde_json::to_vec(item).map_or(0, |v| v.len());
    if size > MAX_EVENT_BYTES {
        return Err(Rejection::new(
            RejectCode::EventTooLarge,
            path.map(str::to_string),
            format!("event is {size} bytes; the limit is {MAX_EVENT_BYTES} bytes (32 KB)"),
        ));
    }
    Ok(())
}

/// A user or message id: a non-empty string, or a number (Segment's libraries send numeric ids).
fn id_field(obj: &Map<String, Value>, name: &str, path: &str) -> Result<Option<String>, Rejection> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(Rejection::new(
            RejectCode::InvalidType,
            Some(join(path, name)),
            format!("{name} must be a string, got {}", type_name(other)),
        )),
    }
}

fn object_field(
    obj: &Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<Map<String, Value>>, Rejection> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(other) => Err(Rejection::new(
            RejectCode::InvalidType,
            Some(join(path, name)),
            format!("{name} must be an object, got {}", type_name(other)),
        )),
    }
}

fn time_field(obj: &Map<String, Value>, name: &str, path: &str) -> Result<Option<DateTime<Utc>>, Rejection> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_time(s).map(Some).ok_or_else(|| {
            Rejection::new(
                RejectCode::InvalidTimestamp,
                Some(join(path, name)),
                format!("{name} {s:?} is not an ISO 8601 date-time (e.g. 2024-05-01T12:00:00Z)"),
            )
        }),
        Some(other) => Err(Rejection::new(
            RejectCode::InvalidTimestamp,
            Some(join(path, name)),
            format!("{name} must be an ISO 8601 string, got {}", type_name(other)),
        )),
    }
}

fn device_token(context: Option<&Map<String, Value>>, path: &str) -> Result<Option<String>, Rejection> {
    let Some(device) = context.and_then(|c| c.get("device")) else {
        return Ok(None);
    };
    match device.get("token") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Rejection::new(
            RejectCode::InvalidType,
            Some(join(path, "context.device.token")),
            format!("context.device.token must be a string, got {}", type_name(other)),
        )),
    }
}

/// ISO 8601 as clients send it: RFC 3339 with an offset; without one (read as UTC); or a date.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    fn track(v: Value) -> Result<Option<IncomingEvent>, Rejection> {
        parse_call(&v, Expect::Fixed(CallType::Track), &Envelope::at(now()), "")
    }

    #[test]
    fn track_call_with_everything() {
        let e = track(json!({
            "userId": "u1", "anonymousId": "a1", "event": "Signed Up",
            "properties": {"plan": "pro"}, "context": {"device": {"token": "tok"}, "traits": {"x": 1}},
            "timestamp": "2024-05-01T11:00:00Z", "messageId": "m1"
        }))
        .unwrap()
        .unwrap();
        assert_eq!(e.user_id, "u1");
        assert_eq!(e.name.as_deref(), Some("Signed Up"));
        assert_eq!(e.properties["plan"], "pro");
        assert!(e.traits.is_empty(), "context.traits is ignored");
        assert_eq!(e.device_token.as_deref(), Some("tok"));
        assert_eq!(e.message_id, "m1");
        assert_eq!(
            e.timestamp,
            "2024-05-01T11:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn anonymous_id_and_generated_message_id() {
        let e = track(json!({"anonymousId": 42, "event": "x"})).unwrap().unwrap();
        assert_eq!(e.user_id, "42");
        assert!(uuid::Uuid::parse_str(&e.message_id).is_ok());
        assert_eq!(e.timestamp, now());
    }

    #[test]
    fn clock_skew_is_corrected() {
        // The device's clock is 1 h fast: it stamped the event at 12:59 and sent it at 13:00.
        let e = track(json!({"userId": "u", "event": "x",
            "timestamp": "2024-05-01T12:59:00Z", "sentAt": "2024-05-01T13:00:00Z"}))
        .unwrap()
        .unwrap();
        assert_eq!(
            e.timestamp,
            "2024-05-01T11:59:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (json!({"event": "x"}), RejectCode::MissingField, "userId"),
            (json!({"userId": "u"}), RejectCode::MissingField, "event"),
            (
                json!({"userId": "u", "event": 3}),
                RejectCode::InvalidType,
                "event",
            ),
            (
                json!({"userId": [], "event": "x"}),
                RejectCode::InvalidType,
                "userId",
            ),
            (
                json!({"userId": "u", "event": "x", "properties": []}),
                RejectCode::InvalidType,
                "properties",
            ),
            (
                json!({"userId": "u", "event": "x", "timestamp": "yesterday"}),
                RejectCode::InvalidTimestamp,
                "timestamp",
            ),
            (
                json!({"userId": "u", "event": "x", "sentAt": 5}),
                RejectCode::InvalidTimestamp,
                "sentAt",
            ),
        ];
        for (v, code, field) in cases {
            let r = track(v.clone()).unwrap_err();
            assert_eq!((r.code, r.field.as_deref()), (code, Some(field)), "{v}");
        }
    }

    #[test]
    fn batch_paths_and_types() {
        let body = json!({"batch": [
            {"type": "identify", "userId": "u", "traits": {"email": "a@b.c"}},
            {"type": "alias", "userId": "u", "previousId": "p"},
            {"type": "page", "userId": "u", "name": "Home"},
            {"type": "track", "userId": "u", "event": "x"},
        ], "context": {"device": {"token": "batch-token"}}});
        let events = parse_batch(&body, now()).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].traits["email"], "a@b.c");
        assert_eq!(events[0].device_token.as_deref(), Some("batch-token"));
        assert_eq!(events[1].kind, EventKind::Page);

        let bad = json!({"batch": [{"type": "track", "userId": "u", "event": "x"}, {"type": "nope", "userId": "u"}]});
        let r = parse_batch(&bad, now()).unwrap_err();
        assert_eq!(
            (r.code, r.field.as_deref()),
            (RejectCode::UnknownType, Some("batch[1].type"))
        );
        let r = parse_batch(&json!({"batch": [{"type": "track", "event": "x"}]}), now()).unwrap_err();
        assert_eq!(r.field.as_deref(), Some("batch[0].userId"));
        let r = parse_batch(&json!({"batch": [{"userId": "u", "event": "x"}]}), now()).unwrap_err();
        assert_eq!(r.field.as_deref(), Some("batch[0].type"));
        let r = parse_batch(&json!({"batch": {}}), now()).unwrap_err();
        assert_eq!(
            (r.code, r.field.as_deref()),
            (RejectCode::InvalidType, Some("batch"))
        );
    }

    #[test]
    fn oversized_event_in_batch() {
        let big = "x".repeat(MAX_EVENT_BYTES);
        let body =
            json!({"batch": [{"type": "track", "userId": "u", "event": "x", "properties": {"b": big}}]});
        let r = parse_batch(&body, now()).unwrap_err();
        assert_eq!(
            (r.code, r.field.as_deref()),
            (RejectCode::EventTooLarge, Some("batch[0]"))
        );
    }

    #[test]
    fn times_in_the_formats_clients_send() {
        for s in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.000+00:00",
            "2024-05-01T14:00:00.123456+02:00",
            "2024-05-01T12:00:00",
            "2024-05-01 12:00:00",
        ] {
            let t = parse_time(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(t.format("%Y-%m-%d %H:%M").to_string(), "2024-05-01 12:00", "{s}");
        }
        assert_eq!(
            parse_time("2024-05-01").unwrap(),
            "2024-05-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(parse_time("May 1st").is_none());
    }
}
