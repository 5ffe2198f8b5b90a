//! Promise 8, nobody acts for someone else: every way we know to bend a tracking or unsubscribe
//! token (truncated, one character changed, kind swapped, signed with another secret, payload
//! swapped between users, link index changed) is refused over HTTP with no state change at all;
//! clicks only ever redirect to the link stored for that message; ingestion without a valid write
//! key and the admin API without the admin key are refused and change nothing.
//!
//! `tests/it/http.rs` covers the happy paths and a first set of forgeries; this module is the
//! exhaustive version.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use nudge::{
    store::Table,
    tracking::tokens::{Signer, TokenKind, click_payload, unsubscribe_payload},
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::{
    both_backends,
    http::{ServeOptions, TestServer, WRITE_KEY, serve, tracked_rules},
    util::{Backend, TestDb},
};

const LINK: &str = "https://shop.example/cart?id=7&src=mail";
const TABLES: [Table; 7] = [
    Table::Users,
    Table::Events,
    Table::Entries,
    Table::Assignments,
    Table::Outbox,
    Table::Sends,
    Table::MessageLog,
];

/// Signs a user up and lets the engine write the welcome email; returns its idempotency key.
async fn welcome(s: &TestServer, user: &str) -> String {
    let r = s
        .post(
            "/v1/batch",
            &json!({"batch": [
                {"type": "identify", "userId": user, "traits": {"email": format!("{user}@example.com")}},
                {"type": "track", "userId": user, "event": "signed_up"},
            ]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    s.engine.run_until_idle().await.unwrap();
    let outbox = s.engine.store.user_outbox(user, 10).await.unwrap();
    assert_eq!(outbox.len(), 1, "one welcome email for {user}");
    outbox[0].message_id.clone()
}

/// Everything a forged request could change: row counts of every table, and both users' state.
async fn snapshot(s: &TestServer) -> Value {
    let store = &s.engine.store;
    let mut counts = Vec::new();
    for table in TABLES {
        counts.push(store.count_rows(table).await.unwrap());
    }
    let mut users = Vec::new();
    for id in ["bob", "eve"] {
        let u = store.user(id).await.unwrap().unwrap();
        users.push(json!({
            "unsubscribed": u.unsubscribed,
            "optouts": u.topic_optouts.iter().collect::<Vec<_>>(),
            "log": store.message_log(id, 100).await.unwrap().len(),
            "events": store.user_events(id, 100).await.unwrap().len(),
        }));
    }
    json!({ "counts": counts, "users": users })
}

/// One character of a base64url token replaced by another of the same alphabet (so the token
/// still parses and only the MAC check can refuse it).
fn substitutions(token: &str) -> Vec<String> {
    token
        .char_indices()
        .filter(|(_, c)| *c != '.')
        .map(|(i, c)| {
            let replacement = if c == 'A' { 'B' } else { 'A' };
            let mut t = token.to_string();
            t.replace_range(i..i + 1, &replacement.to_string());
            t
        })
        .collect()
}

fn truncations(token: &str) -> Vec<String> {
    (1..token.len()).map(|n| token[..n].to_string()).collect()
}

/// `payload` (JSON text) with `signature`'s MAC: a user trying to reuse their own signature.
fn with_mac_of(payload: &str, signature: &str) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        signature.split_once('.').unwrap().1
    )
}

both_backends!(no_token_acts_for_another_user, |db: TestDb| async move {
    let s = serve(
        &db,
        ServeOptions {
            rules: tracked_rules(),
            ..ServeOptions::default()
        },
    )
    .await;
    let bob = welcome(&s, "bob").await;
    let eve = welcome(&s, "eve").await;
    let signer = &s.engine.signer;
    let open = signer.sign(TokenKind::Open, &bob);
    let click = signer.sign(TokenKind::Click, &click_payload(&bob, 0));
    let unsub = signer.sign(TokenKind::Unsubscribe, &unsubscribe_payload("bob", Some("news")));
    let unsub_all = signer.sign(TokenKind::Unsubscribe, &unsubscribe_payload("bob", None));
    let eve_unsub = signer.sign(TokenKind::Unsubscribe, &unsubscribe_payload("eve", Some("news")));
    let eve_click = signer.sign(TokenKind::Click, &click_payload(&eve, 0));
    let other = Signer::new(b"another deployment's secret");

    // (endpoint, token) pairs; `/u/` is tried with GET (page) and POST (one-click).
    let mut cases: Vec<(&str, String)> = Vec::new();
    for (prefix, token) in [("/t/o/", &open), ("/t/c/", &click), ("/u/", &unsub)] {
        for t in truncations(token).into_iter().chain(substitutions(token)) {
            cases.push((prefix, t));
        }
        // Kind swapped: each valid token presented at the two other endpoints.
        for other_prefix in ["/t/o/", "/t/c/", "/u/"].into_iter().filter(|p| p != &prefix) {
            cases.push((other_prefix, token.clone()));
        }
        // Extended: the valid token with something appended.
        cases.push((prefix, format!("{token}A")));
        cases.push((prefix, format!("{token}.x")));
    }
    // The same payloads signed with another deployment's secret.
    cases.push(("/t/o/", other.sign(TokenKind::Open, &bob)));
    cases.push(("/t/c/", other.sign(TokenKind::Click, &click_payload(&bob, 0))));
    cases.push((
        "/u/",
        other.sign(TokenKind::Unsubscribe, &unsubscribe_payload("eve", None)),
    ));
    // Replayed for another user: Bob's own valid signatures over payloads naming Eve.
    cases.push((
        "/u/",
        with_mac_of(&unsubscribe_payload("eve", Some("news")), &unsub),
    ));
    cases.push(("/u/", with_mac_of(&unsubscribe_payload("eve", None), &unsub_all)));
    cases.push(("/t/o/", with_mac_of(&eve, &open)));
    cases.push(("/t/c/", with_mac_of(&click_payload(&eve, 0), &click)));
    // Eve's signature over her own payload with Bob's payload swapped in.
    cases.push(("/u/", with_mac_of(&unsubscribe_payload("bob", None), &eve_unsub)));
    cases.push(("/t/c/", with_mac_of(&click_payload(&bob, 0), &eve_click)));
    // A click token with a modified link index (no such link) or a hand-made payload.
    for index in [1, 2, -1, i64::MAX, i64::MIN] {
        let payload = json!({ "m": bob, "l": index }).to_string();
        cases.push(("/t/c/", signer.sign(TokenKind::Click, &payload)));
        cases.push(("/t/c/", with_mac_of(&payload, &click)));
    }
    cases.push((
        "/t/c/",
        signer.sign(TokenKind::Click, &json!({"m": bob, "l": "0"}).to_string()),
    ));
    cases.push((
        "/t/c/",
        signer.sign(TokenKind::Click, &json!({"m": bob, "u": LINK}).to_string()),
    ));
    cases.push(("/t/o/", signer.sign(TokenKind::Open, "no-such-message")));
    cases.push(("/u/", signer.sign(TokenKind::Unsubscribe, "{\"user\":\"bob\"}")));

    let before = snapshot(&s).await;
    for (prefix, token) in &cases {
        let url = s.url(&format!("{prefix}{token}"));
        let r = s.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "GET {prefix}{token}");
        assert!(!r.headers().contains_key(header::LOCATION), "{prefix}{token}");
        if *prefix == "/u/" {
            let r = s
                .client
                .post(&url)
                .body("List-Unsubscribe=One-Click")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "POST {prefix}{token}");
        }
    }
    assert_eq!(snapshot(&s).await, before, "no forged request changed anything");
    println!("{} forged tokens refused", cases.len());

    // The genuine click goes to the stored link only, whatever the request adds.
    for extra in ["", "?url=https://evil.example", "?next=//evil.example&l=1"] {
        let r = s
            .client
            .get(s.url(&format!("/t/c/{click}{extra}")))
            .header(header::HOST, "evil.example")
            .header(header::REFERER, "https://evil.example/")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FOUND, "{extra}");
        assert_eq!(r.headers()[header::LOCATION], LINK, "{extra}");
    }
    // Bob's genuine unsubscribe unsubscribes Bob, and only Bob.
    let r = s.client.post(s.url(&format!("/u/{unsub}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let store = &s.engine.store;
    assert!(store.user("bob").await.unwrap().unwrap().opted_out_of("news"));
    let eve_after = store.user("eve").await.unwrap().unwrap();
    assert!(eve_after.topic_optouts.is_empty() && !eve_after.unsubscribed);
    db.cleanup().await;
});

const INGESTION: [&str; 7] = [
    "/v1/track",
    "/v1/identify",
    "/v1/page",
    "/v1/screen",
    "/v1/alias",
    "/v1/group",
    "/v1/batch",
];

fn body_for(path: &str) -> Value {
    match path {
        "/v1/batch" => json!({"batch": [{"type": "track", "userId": "mallory", "event": "e"}]}),
        "/v1/identify" => json!({"userId": "mallory", "traits": {"email": "m@example.com"}}),
        _ => json!({"userId": "mallory", "event": "e", "name": "n"}),
    }
}

/// Ingestion without a valid write key, and the admin API without the admin key, are refused on
/// every endpoint, whatever the credentials look like, and nothing is stored or changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_on_every_endpoint() {
    let db = TestDb::new(Backend::Sqlite, "keys_are_required_on_every_endpoint")
        .await
        .unwrap();
    let s = serve(
        &db,
        ServeOptions {
            rules: tracked_rules(),
            admin_key: Some("admin-key-123"),
            ..ServeOptions::default()
        },
    )
    .await;
    let basic = |key: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
        )
    };
    let bad_credentials: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("Bearer {}", &WRITE_KEY[..WRITE_KEY.len() - 1])),
        Some(format!("Bearer {WRITE_KEY}x")),
        Some(format!("Bearer {}", WRITE_KEY.to_uppercase())),
        Some(format!("Bearer  {WRITE_KEY}\0")),
        Some("Bearer admin-key-123".into()),
        Some(basic("admin-key-123")),
        Some(basic("")),
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(":{WRITE_KEY}"))
        )),
        Some(format!("Token {WRITE_KEY}")),
        Some(WRITE_KEY.to_string()),
    ];
    for path in INGESTION {
        for auth in &bad_credentials {
            let mut req = s.client.post(s.url(path)).json(&body_for(path));
            if let Some(a) = auth {
                match header::HeaderValue::from_str(a) {
                    Ok(v) => req = req.header(header::AUTHORIZATION, v),
                    Err(_) => continue,
                }
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} with {auth:?}");
        }
    }
    assert_eq!(s.events().await, 0, "no refused request stored anything");
    assert!(s.engine.store.user("mallory").await.unwrap().is_none());

    // The admin API: the admin key only (not a write key, not the key as Basic user name twice).
    let admin: [(&str, bool); 6] = [
        ("/v1/campaigns", false),
        ("/v1/campaigns/welcome/pause", true),
        ("/v1/campaigns/welcome/resume", true),
        ("/v1/users/bob/messages", false),
        ("/v1/reports/lift?campaign=welcome", false),
        ("/v1/reports/lift", false),
    ];
    let bad_admin = [
        None,
        Some(format!("Bearer {WRITE_KEY}")),
        Some("Bearer admin-key-12".into()),
        Some("Bearer admin-key-1234".into()),
        Some("Bearer ADMIN-KEY-123".into()),
        Some(basic(WRITE_KEY)),
        Some("admin-key-123".into()),
    ];
    for (path, is_post) in admin {
        for auth in &bad_admin {
            let mut req = if is_post {
                s.client.post(s.url(path))
            } else {
                s.client.get(s.url(path))
            };
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a.as_str());
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} with {auth:?}");
        }
        assert!(!s.engine.is_paused("welcome"), "a refused pause changed nothing");
    }
    let r = s
        .client
        .post(s.url("/v1/campaigns/welcome/pause"))
        .bearer_auth("admin-key-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(s.engine.is_paused("welcome"));

    // With the right key everything is accepted, so the refusals above were about the key.
    for path in INGESTION {
        let r = s.post(path, &body_for(path)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    assert!(s.events().await > 0);
    db.cleanup().await;
}
