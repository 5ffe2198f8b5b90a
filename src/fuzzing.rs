//! Fuzz target bodies: plain functions over `&[u8]`, shared by the cargo-fuzz crate in `fuzz/`
//! and by the corpus replay test in `tests/it/hostile.rs` (which runs inside `cargo test`).
//!
//! Each target feeds hostile bytes through the same code the daemon runs on untrusted or
//! semi-trusted input, and checks the invariants that must hold whatever the input:
//! - [`segment`]: an HTTP ingestion body (`/v1/track`, `/v1/identify`, `/v1/batch`, …) through
//!   [`parse_body`](crate::events::segment::parse_body): never panics; what it accepts names a user
//!   and fits the size limits.
//! - [`rules`]: a whole rules folder (YAML, CEL, templates) held in memory, through the real
//!   compiler ([`load_files`](crate::rules::load_files)); when it compiles, every condition is
//!   evaluated and every template rendered with hostile user and event data.
//! - [`template`]: one template compiled as a campaign would register it and rendered through the
//!   [`Composer`](crate::engine::compose::Composer) with hostile data; output stays under the cap
//!   and data is never evaluated as template source.
//! - [`tokens`]: tracking and unsubscribe tokens: arbitrary strings never verify, signed payloads
//!   round-trip, and a changed byte or another kind never verifies.
//!
//! A panic is a finding; so is an invariant `assert!` that fails. Inputs are split into parts with
//! simple separators (documented per target) so seed corpora stay readable.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value as Json, json};

use crate::{
    engine::{
        compose::Composer,
        conditions::{self, EvalInput},
    },
    events::segment::{self, CallType, MAX_EVENT_BYTES},
    rules::{
        self, Action, Campaign, ChannelChoice, EmailContent, Percent, PushContent, Reentry, SendTime,
        TemplateRef, Trigger,
        templates::{self, CONTEXT_VARIABLES, MAX_OUTPUT_BYTES, TemplatePart},
    },
    store::UserHistory,
    tracking::{
        engagement,
        tokens::{Signer, TokenError, TokenKind, click_payload, unsubscribe_payload},
    },
};

/// A fixed "now" so runs are reproducible.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default() // 2026-01-01T00:00:00Z
}

/// Strings an attacker would put into traits and properties: template syntax, markup, header
/// injection, log injection, format strings, control characters, big values.
fn hostile_strings() -> Vec<String> {
    vec![
        "{{ 7*7 }}".into(),
        "{% for i in range(100000) %}x{% endfor %}".into(),
        "{% include '/etc/passwd' %}".into(),
        "<script>alert(1)</script>".into(),
        "\"><img src=x onerror=alert(1)>".into(),
        "a\r\nBcc: victim@example.com".into(),
        "u1\n{\"level\":\"ERROR\",\"message\":\"forged\"}".into(),
        "%s%n%x{0}${jndi:ldap://x}".into(),
        "\u{0}\u{1b}[31m\u{202e}".into(),
        "https://evil.example/?a=1&b=2".into(),
        "x".repeat(20_000),
    ]
}

/// Hostile user (`{id, traits}`) and trigger event (`{name, properties, timestamp}`), as the
/// engine builds them. `extra` (fuzz data) is merged into both when it is a JSON object.
fn hostile_context(extra: Option<&Json>) -> (Json, Json) {
    let strings = hostile_strings();
    let mut traits = serde_json::Map::new();
    let mut properties = serde_json::Map::new();
    for (i, s) in strings.iter().enumerate() {
        traits.insert(format!("t{i}"), json!(s));
        properties.insert(format!("p{i}"), json!(s));
    }
    for key in ["first_name", "name", "email", "plan", "product_name", "url"] {
        traits.insert(key.into(), json!(strings[0]));
        properties.insert(key.into(), json!(strings[3]));
    }
    properties.insert("cart_value".into(), json!(1e308));
    properties.insert("item_count".into(), json!(i64::MIN));
    properties.insert("items".into(), json!(vec![json!({"name": strings[0]}); 50]));
    properties.insert("nested".into(), nested(60));
    if let Some(Json::Object(extra)) = extra {
        for (k, v) in extra {
            traits.insert(k.clone(), v.clone());
            properties.insert(k.clone(), v.clone());
        }
    }
    let user = json!({ "id": strings[6], "traits": traits });
    let event = json!({ "name": "cart_updated", "properties": properties, "timestamp": now().to_rfc3339() });
    (user, event)
}

fn nested(depth: usize) -> Json {
    (0..depth).fold(json!("bottom {{ 7*7 }}"), |inner, _| json!({ "a": [inner] }))
}

// ------------------------------------------------------------------------------------------------
// Segment payloads

/// `segment` target. The input is an HTTP body; its first byte picks the endpoint (the rest is
/// the body): `b` → `/v1/batch`, `i` → `/v1/identify`, `p` → `/v1/page`, `s` → `/v1/screen`,
/// `a` → `/v1/alias`, `g` → `/v1/group`, anything else → `/v1/track` with the whole input as body.
pub fn segment(data: &[u8]) {
    let (call, body) = match data.split_first() {
        Some((b'b', rest)) => (None, rest),
        Some((b'i', rest)) => (Some(CallType::Identify), rest),
        Some((b'p', rest)) => (Some(CallType::Page), rest),
        Some((b's', rest)) => (Some(CallType::Screen), rest),
        Some((b'a', rest)) => (Some(CallType::Alias), rest),
        Some((b'g', rest)) => (Some(CallType::Group), rest),
        _ => (Some(CallType::Track), data),
    };
    let Ok(events) = segment::parse_body(body, call, now()) else {
        return;
    };
    for e in &events {
        assert!(!e.user_id.trim().is_empty(), "an accepted event names a user");
        assert!(
            !e.message_id.trim().is_empty(),
            "an accepted event has a message id"
        );
        if call.is_some() {
            assert!(
                body.len() <= MAX_EVENT_BYTES,
                "a single call fits the event limit"
            );
        }
        // The stored forms must serialise: the store writes them as JSON text.
        let _ = serde_json::to_string(&e.properties).expect("properties serialise");
        let _ = serde_json::to_string(&e.traits).expect("traits serialise");
    }
    // Strings that look like times go through the same parser as `timestamp`/`sentAt`.
    if let Ok(text) = std::str::from_utf8(body)
        && text.len() < 256
    {
        let _ = segment::parse_time(text);
    }
}

// ------------------------------------------------------------------------------------------------
// Rule folders

/// Splits a rules-folder archive: files start with a line `==> <path> <==` (as `head` prints
/// them); text before the first header is `campaign.yaml`. Paths may name subfolders
/// (`templates/x.html`); only top-level `*.yaml` are rule files.
pub fn rules_archive(text: &str) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut name = "campaign.yaml".to_string();
    let mut body = String::new();
    for line in text.split_inclusive('\n') {
        let header = line
            .trim_end_matches(['\n', '\r'])
            .strip_prefix("==> ")
            .and_then(|l| l.strip_suffix(" <=="));
        if let Some(next) = header {
            if !body.is_empty() || name != "campaign.yaml" {
                files.insert(
                    std::mem::replace(&mut name, next.to_string()),
                    std::mem::take(&mut body),
                );
            } else {
                name = next.to_string();
            }
        } else {
            body.push_str(line);
        }
    }
    files.insert(name, body);
    files
}

/// `rules` target. The input is a rules folder as [`rules_archive`] reads it. It is compiled by
/// the same code as `nudge validate`; when it compiles, each campaign's `if:`/`exclude_if:` is
/// evaluated and each of its templates rendered with hostile data.
pub fn rules(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let files = rules_archive(&text);
    let report = rules::load_files(Path::new("rules"), &files);
    let set = match report.result {
        Ok(set) => set,
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "a refused folder says why");
            for d in &diagnostics {
                let _ = d.to_string();
            }
            return;
        }
    };
    let (user, event) = hostile_context(None);
    let history = UserHistory {
        counts: HashMap::new(),
    };
    let predict = json!({ "propensity": 0.5 });
    let propensities = std::sync::Arc::new(HashMap::new());
    let input = EvalInput {
        user: &user,
        event: &event,
        now: now(),
        history: &history,
        predict: &predict,
        propensities: &propensities,
    };
    let signer = Signer::new(b"fuzz");
    let composer = Composer {
        templates: &set.templates,
        signer: &signer,
        public_url: "https://nudge.test",
    };
    for campaign in set.campaigns.values() {
        let _ = conditions::all_hold(&campaign.conditions, &input);
        let _ = conditions::first_exclusion(&campaign.exclude_if, &input);
        if let Some(email) = &campaign.action.email {
            check_composed(composer.email(campaign, email, "u1", &user, &event, "key"));
        }
        if let Some(push) = &campaign.action.push {
            check_composed(composer.push(campaign, push, "u1", &user, &event, "key"));
        }
    }
}

fn check_composed(composed: Result<crate::engine::compose::Composed, crate::engine::compose::RenderError>) {
    let Ok(composed) = composed else { return };
    let payload = serde_json::to_value(&composed.payload).expect("payload serialises");
    // Rendered parts are each capped; tracking links and the pixel add a bounded amount per link.
    let size = payload.to_string().len();
    let budget = 3 * MAX_OUTPUT_BYTES + composed.links.len() * 256 + 4096;
    assert!(size <= budget * 2, "payload of {size} bytes");
    for link in &composed.links {
        assert!(
            link.starts_with("http://") || link.starts_with("https://"),
            "only web links are tracked: {link}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Templates

/// `template` target. The input is a template source, optionally followed by a NUL byte and a JSON
/// object merged into the user's traits and the event's properties. The template is registered
/// as a campaign's email body (HTML when it starts with `<`) and push body, then rendered.
pub fn template(data: &[u8]) {
    let (source, extra) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], serde_json::from_slice::<Json>(&data[at + 1..]).ok()),
        None => (data, None),
    };
    let source = String::from_utf8_lossy(source);
    let html = templates::is_html(None, Some(&source));
    let mut env = templates::environment();
    let subject = TemplatePart::EmailSubject.name("fuzz");
    let body = TemplatePart::EmailBody.name("fuzz");
    let push_title = TemplatePart::PushTitle.name("fuzz");
    let push_body = TemplatePart::PushBody.name("fuzz");
    templates::register(
        &mut env,
        &subject,
        "{{ user.traits.name }}",
        false,
        &CONTEXT_VARIABLES,
    )
    .expect("the probe template compiles");
    templates::register(
        &mut env,
        &push_title,
        "{{ event.properties.name }}",
        false,
        &CONTEXT_VARIABLES,
    )
    .expect("the probe template compiles");
    let body_ok = templates::register(&mut env, &body, &source, html, &CONTEXT_VARIABLES).is_ok();
    let push_ok = templates::register(&mut env, &push_body, &source, false, &CONTEXT_VARIABLES).is_ok();

    let (user, event) = hostile_context(extra.as_ref());
    let signer = Signer::new(b"fuzz");
    let composer = Composer {
        templates: &env,
        signer: &signer,
        public_url: "https://nudge.test",
    };
    let campaign = fuzz_campaign(html);
    if body_ok && let Some(content) = &campaign.action.email {
        let composed = composer.email(&campaign, content, "u1", &user, &event, "key");
        if let Ok(c) = &composed {
            let crate::outbox::Payload::Email(e) = &c.payload else {
                panic!("an email composes to an email payload")
            };
            // Data is a value, never source: the subject prints the trait exactly as given.
            let name = user["traits"]["name"].as_str().unwrap_or_default();
            assert_eq!(e.subject, name.trim(), "the subject is the value, unevaluated");
        }
        check_composed(composed);
    }
    if push_ok && let Some(content) = &campaign.action.push {
        let composed = composer.push(&campaign, content, "u1", &user, &event, "key");
        if let Ok(c) = &composed {
            let crate::outbox::Payload::Push(p) = &c.payload else {
                panic!("a push composes to a push payload")
            };
            let name = event["properties"]["name"].as_str().unwrap_or_default();
            assert_eq!(p.title, name.trim(), "the title is the value, unevaluated");
            assert!(p.body.len() <= MAX_OUTPUT_BYTES, "output stays under the cap");
        }
        check_composed(composed);
    }
}

/// A campaign whose parts are the templates registered by [`template`].
fn fuzz_campaign(html: bool) -> Campaign {
    let part = |p: TemplatePart| TemplateRef(p.name("fuzz"));
    Campaign {
        id: "fuzz".into(),
        name: "Fuzz".into(),
        enabled: true,
        priority: 0,
        trigger: Trigger::Event("cart_updated".into()),
        reentry: Reentry::Never,
        wait: None,
        unless: vec![],
        conditions: vec![],
        exclude_if: vec![],
        action: Action {
            channels: vec![rules::Channel::Email, rules::Channel::Push],
            choose: ChannelChoice::First,
            send_time: SendTime::Immediate,
            within: Duration::hours(24),
            email: Some(EmailContent {
                subject: part(TemplatePart::EmailSubject),
                body: part(TemplatePart::EmailBody),
                html,
            }),
            push: Some(PushContent {
                title: part(TemplatePart::PushTitle),
                body: part(TemplatePart::PushBody),
            }),
        },
        topic: Some("news".into()),
        holdout: Percent::ZERO,
        send_time_test: Percent::ZERO,
        send_time_fixed: chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
        caps: vec![],
        goal: None,
        guardrails: vec![],
        quiet_hours: false,
        counts: vec![],
        source: PathBuf::from("rules/fuzz.yaml"),
    }
}

// ------------------------------------------------------------------------------------------------
// Tokens

/// `tokens` target. The input is used three ways: as a token presented to every endpoint (it must
/// not verify); as a payload that is signed, checked, then tampered with; and as a user id and
/// topic inside unsubscribe and click payloads.
pub fn tokens(data: &[u8]) {
    let signer = Signer::new(b"fuzz-secret");
    let other = Signer::new(b"another-deployment");
    let kinds = [TokenKind::Open, TokenKind::Click, TokenKind::Unsubscribe];
    let text = String::from_utf8_lossy(data);

    // 1. Presented as is: a forged token never verifies, and nothing panics on the way.
    for kind in kinds {
        if let Ok(payload) = signer.verify(kind, &text) {
            let made = signer.sign(kind, &payload);
            assert!(
                made == text || canonical_alias(&made, &text),
                "only a token this signer made verifies"
            );
        }
    }
    let _ = engagement::unsubscribe_target(&signer, &text);
    let _ = engagement::click_target(&signer, &text);

    // 2. Signed: round-trips for its own kind only and with its own key only.
    for kind in kinds {
        let token = signer.sign(kind, &text);
        assert_eq!(signer.verify(kind, &token).as_deref(), Ok(text.as_ref()));
        for other_kind in kinds.iter().filter(|k| **k != kind) {
            assert_eq!(
                signer.verify(*other_kind, &token),
                Err(TokenError::BadSignature),
                "a {kind:?} token is not a {other_kind:?} token"
            );
        }
        assert_eq!(other.verify(kind, &token), Err(TokenError::BadSignature));
        // Tampered: every change of one character, and every truncation, is refused.
        let bytes = token.as_bytes();
        let pick = data.first().copied().unwrap_or(0) as usize;
        for at in [0, pick % bytes.len(), bytes.len() / 2, bytes.len() - 1] {
            for replacement in [b'A', b'_', b'.', b'-'] {
                if bytes[at] == replacement {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[at] = replacement;
                let changed = String::from_utf8(changed).expect("tokens are ASCII");
                assert!(
                    signer.verify(kind, &changed).is_err() || canonical_alias(&token, &changed),
                    "a changed token is refused: {changed}"
                );
            }
        }
        for len in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                signer.verify(kind, &token[..len]).is_err(),
                "a truncated token is refused"
            );
        }
    }

    // 3. As identities inside payloads: only the signed user and link come back out.
    let (user, topic) = match text.split_once('\n') {
        Some((u, t)) => (u.to_string(), Some(t.to_string())),
        None => (text.to_string(), None),
    };
    let unsub = signer.sign(
        TokenKind::Unsubscribe,
        &unsubscribe_payload(&user, topic.as_deref()),
    );
    let target = engagement::unsubscribe_target(&signer, &unsub).expect("a signed unsubscribe verifies");
    assert_eq!(
        (target.user_id.as_str(), target.topic.as_deref()),
        (user.as_str(), topic.as_deref())
    );
    let index = data.len() % 7;
    let click = signer.sign(TokenKind::Click, &click_payload(&user, index));
    let (message, link) = engagement::click_target(&signer, &click).expect("a signed click verifies");
    assert_eq!((message.as_str(), link), (user.as_str(), index as i64));
    assert!(engagement::unsubscribe_target(&signer, &click).is_err());
    assert!(engagement::click_target(&signer, &unsub).is_err());
}

/// True when `changed` decodes to the same bytes as `token`: base64 without padding has
/// non-canonical spellings of the last character, which carry the same payload and MAC.
fn canonical_alias(token: &str, changed: &str) -> bool {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let decode = |t: &str| -> Option<(Vec<u8>, Vec<u8>)> {
        let (p, m) = t.split_once('.')?;
        Some((URL_SAFE_NO_PAD.decode(p).ok()?, URL_SAFE_NO_PAD.decode(m).ok()?))
    };
    decode(token).is_some() && decode(token) == decode(changed)
}
