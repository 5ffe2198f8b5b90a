//! The HTTP API over real sockets: ingestion (auth, validation, gzip, limits, atomic batches),
//! tracking (opens, clicks, unsubscribes; forged tokens refused), the admin API, health, metrics.

use std::{io::Write, net::SocketAddr, path::PathBuf, sync::Arc};

use chrono::{Duration, DurationRound, Utc};
use nudge::{
    clock::ManualClock,
    engine::Engine,
    http::{AppState, Secret, router},
    rules::{
        Action, Campaign, Channel, ChannelChoice, EmailContent, Percent, Reentry, RuleSet, RulesHandle,
        SendTime, TemplateRef, Trigger,
    },
    tracking::tokens::{TokenKind, click_payload, unsubscribe_payload},
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::{both_backends, util::TestDb};

pub const WRITE_KEY: &str = "wk_test_123";
const LINK: &str = "https://shop.example/cart?id=7&src=mail";

/// A nudge HTTP server on a random loopback port.
pub struct TestServer {
    pub base: String,
    pub engine: Arc<Engine>,
    #[allow(dead_code)]
    pub clock: ManualClock,
    pub client: reqwest::Client,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON with the write key (HTTP Basic, as Segment's libraries do).
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .basic_auth(WRITE_KEY, Some(""))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn events(&self) -> i64 {
        self.engine.store.event_count().await.expect("count events")
    }
}

pub struct ServeOptions {
    pub rules: RuleSet,
    pub admin_key: Option<&'static str>,
    /// Serve with the peer address (the admin API's loopback rule needs it).
    pub connect_info: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            rules: RuleSet::empty(PathBuf::from("rules")),
            admin_key: None,
            connect_info: true,
        }
    }
}

pub async fn serve(db: &TestDb, opts: ServeOptions) -> TestServer {
    nudge::delivery::install_crypto_provider();
    let start = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let (engine, clock) = crate::util::engine(&db.store, RulesHandle::new(opts.rules), start).await;
    let state = AppState {
        engine: engine.clone(),
        write_keys: Arc::new(vec![Secret::new("other-key"), Secret::new(WRITE_KEY)]),
        admin_key: opts.admin_key.map(Secret::new),
        metrics: Some(nudge::telemetry::install_metrics()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let app = router(state);
    if opts.connect_info {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await });
    } else {
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    TestServer {
        base: format!("http://{addr}"),
        engine,
        clock,
        client,
    }
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body: Value = response.json().await.expect("JSON error body");
    (status, body["error"].clone())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

both_backends!(ingests_segment_calls, |db: TestDb| async move {
    let s = serve(&db, ServeOptions::default()).await;
    let r = s
        .post(
            "/v1/identify",
            &json!({"userId": "u1", "traits": {"email": "u1@example.com", "timezone": "Europe/Paris"},
                    "context": {"device": {"token": "dev-tok"}, "traits": {"ignored": true}}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), r#"{"success":true}"#);

    let r = s
        .post(
            "/v1/track",
            &json!({"userId": "u1", "event": "cart_updated", "properties": {"value": 25},
                    "timestamp": "2024-05-01T12:00:00Z", "messageId": "m-track"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    for path in ["/v1/page", "/v1/screen"] {
        let r = s
            .post(path, &json!({"anonymousId": "anon", "name": "Home"}))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    for path in ["/v1/alias", "/v1/group"] {
        let r = s
            .post(path, &json!({"userId": "u1", "previousId": "x", "groupId": "g"}))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let user = s.engine.store.user("u1").await.unwrap().expect("user stored");
    assert_eq!(user.email.as_deref(), Some("u1@example.com"));
    assert_eq!(user.timezone.as_deref(), Some("Europe/Paris"));
    assert_eq!(user.push_token.as_deref(), Some("dev-tok"));
    assert!(!user.traits.contains_key("ignored"), "context.traits is not kept");
    let events = s.engine.store.user_events("u1", 10).await.unwrap();
    let track = events
        .iter()
        .find(|e| e.message_id == "m-track")
        .expect("track stored");
    assert_eq!(track.name.as_deref(), Some("cart_updated"));
    assert_eq!(track.properties, json!({"value": 25}));
    assert_eq!(track.timestamp, crate::util::t("2024-05-01T12:00:00Z"));
    // identify + track + page + screen; alias and group are not stored.
    assert_eq!(s.events().await, 4);
    db.cleanup().await;
});

both_backends!(batch_corrects_clock_skew_and_dedupes, |db: TestDb| async move {
    let s = serve(&db, ServeOptions::default()).await;
    let now = s.engine.now();
    // The device clock is 1 h ahead: timestamp and sentAt are both an hour in the future.
    let sent = now + Duration::hours(1);
    let body = json!({
        "batch": [
            {"type": "track", "userId": "u2", "event": "a", "messageId": "b-1",
             "timestamp": (sent - Duration::minutes(5)).to_rfc3339()},
            {"type": "identify", "userId": "u2", "traits": {"plan": "pro"}, "messageId": "b-2"},
        ],
        "sentAt": sent.to_rfc3339(),
        "context": {"device": {"token": "batch-token"}},
    });
    assert_eq!(s.post("/v1/batch", &body).await.status(), StatusCode::OK);
    let events = s.engine.store.user_events("u2", 10).await.unwrap();
    let a = events.iter().find(|e| e.message_id == "b-1").unwrap();
    assert_eq!(a.timestamp, now - Duration::minutes(5));
    let user = s.engine.store.user("u2").await.unwrap().unwrap();
    assert_eq!(user.traits["plan"], "pro");
    assert_eq!(user.push_token.as_deref(), Some("batch-token"));

    // A resend (same messageIds) is accepted and stores nothing new.
    assert_eq!(s.post("/v1/batch", &body).await.status(), StatusCode::OK);
    let once = json!({"userId": "u2", "event": "a", "messageId": "b-1"});
    assert_eq!(s.post("/v1/track", &once).await.status(), StatusCode::OK);
    assert_eq!(s.events().await, 2);
    db.cleanup().await;
});

both_backends!(bad_input_is_refused_with_the_field, |db: TestDb| async move {
    let s = serve(&db, ServeOptions::default()).await;
    let ok = json!({"type": "track", "userId": "u", "event": "e"});
    let cases: Vec<(&str, Value, &str, Option<&str>)> = vec![
        (
            "/v1/track",
            json!({"event": "e"}),
            "missing_field",
            Some("userId"),
        ),
        (
            "/v1/track",
            json!({"userId": "", "anonymousId": null, "event": "e"}),
            "missing_field",
            Some("userId"),
        ),
        (
            "/v1/track",
            json!({"userId": "u"}),
            "missing_field",
            Some("event"),
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": ""}),
            "missing_field",
            Some("event"),
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": 7}),
            "invalid_type",
            Some("event"),
        ),
        (
            "/v1/track",
            json!({"userId": {"a": 1}, "event": "e"}),
            "invalid_type",
            Some("userId"),
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "properties": "x"}),
            "invalid_type",
            Some("properties"),
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "context": []}),
            "invalid_type",
            Some("context"),
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "messageId": true}),
            "invalid_type",
            Some("messageId"),
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "timestamp": "not a date"}),
            "invalid_timestamp",
            Some("timestamp"),
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "e", "timestamp": 1714561200}),
            "invalid_timestamp",
            Some("timestamp"),
        ),
        ("/v1/track", json!([1, 2]), "invalid_type", None),
        (
            "/v1/identify",
            json!({"userId": "u", "traits": [1]}),
            "invalid_type",
            Some("traits"),
        ),
        (
            "/v1/identify",
            json!({"traits": {}}),
            "missing_field",
            Some("userId"),
        ),
        ("/v1/batch", json!({}), "missing_field", Some("batch")),
        (
            "/v1/batch",
            json!({"batch": {"type": "track"}}),
            "invalid_type",
            Some("batch"),
        ),
        (
            "/v1/batch",
            json!({"batch": [ok, ok, ok, {"type": "track", "event": "e"}]}),
            "missing_field",
            Some("batch[3].userId"),
        ),
        (
            "/v1/batch",
            json!({"batch": [ok, {"type": "purchase", "userId": "u"}]}),
            "unknown_type",
            Some("batch[1].type"),
        ),
        (
            "/v1/batch",
            json!({"batch": [ok, {"userId": "u", "event": "e"}]}),
            "missing_field",
            Some("batch[1].type"),
        ),
        (
            "/v1/batch",
            json!({"batch": [ok, "track"]}),
            "invalid_type",
            Some("batch[1]"),
        ),
        (
            "/v1/batch",
            json!({"batch": [ok], "sentAt": "soon"}),
            "invalid_timestamp",
            Some("sentAt"),
        ),
        (
            "/v1/batch",
            json!({"batch": [ok, {"type": "track", "userId": "u", "event": "e", "properties": 1}]}),
            "invalid_type",
            Some("batch[1].properties"),
        ),
    ];
    for (path, body, code, field) in cases {
        let (status, err) = error_of(s.post(path, &body).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert_eq!(err["code"], code, "{path} {body}: {err}");
        assert_eq!(err["field"].as_str(), field, "{path} {body}: {err}");
        assert!(!err["message"].as_str().unwrap_or_default().is_empty());
    }

    // Malformed JSON goes through the same error shape.
    let r = s
        .client
        .post(s.url("/v1/track"))
        .basic_auth(WRITE_KEY, Some(""))
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"userId": "u", "event": "#)
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["code"], "invalid_json");
    assert!(err["message"].as_str().unwrap().contains("line 1"), "{err}");

    // A batch with one bad event stores none of it: the good ones before it were not written.
    assert_eq!(s.events().await, 0);
    db.cleanup().await;
});

#[tokio::test]
async fn write_keys_are_required() {
    let db = TestDb::new(crate::util::Backend::Sqlite, "write_keys_are_required")
        .await
        .unwrap();
    let s = serve(&db, ServeOptions::default()).await;
    let body = json!({"userId": "u", "event": "e"});
    let send = |auth: Option<(&'static str, &'static str)>| {
        let mut req = s.client.post(s.url("/v1/track")).json(&body);
        match auth {
            Some(("basic", key)) => req = req.basic_auth(key, Some("")),
            Some(("basic-no-password", key)) => req = req.basic_auth(key, None::<&str>),
            Some(("bearer", key)) => req = req.bearer_auth(key),
            Some((_, raw)) => req = req.header(header::AUTHORIZATION, raw),
            None => {}
        }
        req.send()
    };
    for ok in [
        Some(("basic", WRITE_KEY)),
        Some(("basic-no-password", WRITE_KEY)),
        Some(("bearer", WRITE_KEY)),
        Some(("basic", "other-key")),
    ] {
        assert_eq!(send(ok).await.unwrap().status(), StatusCode::OK, "{ok:?}");
    }
    for bad in [
        None,
        Some(("basic", "wrong")),
        Some(("basic", "")),
        Some(("bearer", "wk_test_12")),
        Some(("bearer", "wk_test_1234")),
        Some(("raw", "Basic !!!notbase64")),
        Some(("raw", "Token wk_test_123")),
    ] {
        let r = send(bad).await.unwrap();
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        let (status, err) = error_of(r).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(err["code"], "unauthorized");
    }
    assert_eq!(s.events().await, 4);
    db.cleanup().await;
}

both_backends!(gzip_bodies_and_size_limits, |db: TestDb| async move {
    let s = serve(&db, ServeOptions::default()).await;
    let post_raw = |path: &str, body: Vec<u8>, gzipped: bool| {
        let mut req = s
            .client
            .post(s.url(path))
            .basic_auth(WRITE_KEY, Some(""))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if gzipped {
            req = req.header(header::CONTENT_ENCODING, "gzip");
        }
        req.send()
    };
    let batch = json!({"batch": [
        {"type": "identify", "userId": "gz", "traits": {"email": "gz@example.com"}},
        {"type": "track", "userId": "gz", "event": "compressed"},
    ]});
    let r = post_raw("/v1/batch", gzip(batch.to_string().as_bytes()), true)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.events().await, 2);

    let (status, err) = error_of(post_raw("/v1/batch", b"not gzip".to_vec(), true).await.unwrap()).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_gzip"))
    );

    // A gzip bomb: 20 MB of spaces compress to ~20 KB; inflating stops at the 500 KB limit.
    let mut bomb = br#"{"batch": [], "x": ""#.to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 20 * 1024 * 1024));
    let bomb = gzip(&bomb);
    assert!(bomb.len() < 100 * 1024);
    let (status, err) = error_of(post_raw("/v1/batch", bomb, true).await.unwrap()).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );

    // One event above 32 KB: 400, on its own or inside a batch.
    let big = "x".repeat(33 * 1024);
    let event = json!({"userId": "gz", "event": "big", "properties": {"blob": big}});
    let (status, err) = error_of(s.post("/v1/track", &event).await).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("event_too_large"))
    );
    let mut item = event.clone();
    item["type"] = json!("track");
    let (status, err) = error_of(
        s.post("/v1/batch", &json!({"batch": [batch["batch"][1], item]}))
            .await,
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str(), err["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("event_too_large"), Some("batch[1]"))
    );

    // A batch above 500 KB made of events under 32 KB each: 413, plain and gzipped.
    let item =
        json!({"type": "track", "userId": "gz", "event": "e", "properties": {"blob": "y".repeat(30 * 1024)}});
    // Under the raw read limit (500 KiB + 64 KiB), so the server reads all of it before refusing
    // and the client is never cut off mid-upload.
    let large = json!({"batch": vec![item; 17]}).to_string().into_bytes();
    assert!(large.len() > 500 * 1024 && large.len() < 564 * 1024);
    for gzipped in [false, true] {
        let body = if gzipped { gzip(&large) } else { large.clone() };
        let (status, err) = error_of(post_raw("/v1/batch", body, gzipped).await.unwrap()).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
        );
    }
    // A body declared far above the limit is refused before any of it is sent: the client
    // writes only the head and reads a complete 413.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, head.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("body_too_large") {
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut conn, &mut buf),
        )
        .await
        .expect("the 413 comes without the body being sent")
        .unwrap();
        assert!(
            n > 0,
            "connection closed before a full answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let r = reqwest::Client::new()
        .post(s.url("/v1/track"))
        .basic_auth(WRITE_KEY, Some(""))
        .header(header::CONTENT_ENCODING, "br")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(s.events().await, 2, "nothing stored by refused requests");
    db.cleanup().await;
});

both_backends!(store_down_answers_503_never_200, |db: TestDb| async move {
    let s = serve(&db, ServeOptions::default()).await;
    let health: Value = s
        .client
        .get(s.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&health["status"], &health["database"]),
        (&json!("ok"), &json!("ok"))
    );
    assert_eq!(health["email"]["status"], "unknown", "{health}");
    db.store.close().await;
    let r = s.post("/v1/track", &json!({"userId": "u", "event": "e"})).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    let (_, err) = error_of(r).await;
    assert_eq!(err["code"], "unavailable");
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    db.cleanup().await;
});

/// A campaign that emails `signed_up` users with one tracked link, and a follow-up that enters
/// when they open it (tracking events trigger campaigns like any other event).
pub fn tracked_rules() -> RuleSet {
    let mut set = RuleSet::empty(PathBuf::from("rules"));
    let mut env = minijinja::Environment::new();
    env.add_template_owned("welcome/subject", "Welcome {{ user.id }}")
        .unwrap();
    env.add_template_owned(
        "welcome/body",
        format!(
            r#"<html><body><p>Hi</p><a href="{}">Your cart</a></body></html>"#,
            LINK.replace('&', "&amp;")
        ),
    )
    .unwrap();
    set.templates = Arc::new(env);
    let campaign = |id: &str, trigger: &str, wait: Option<Duration>| Campaign {
        id: id.into(),
        name: format!("{id} campaign"),
        enabled: true,
        priority: 10,
        trigger: Trigger::Event(trigger.into()),
        reentry: Reentry::Never,
        wait,
        unless: vec![],
        conditions: vec![],
        exclude_if: vec![],
        action: Action {
            channels: vec![Channel::Email],
            choose: ChannelChoice::First,
            send_time: SendTime::Immediate,
            within: Duration::hours(24),
            email: Some(EmailContent {
                subject: TemplateRef("welcome/subject".into()),
                body: TemplateRef("welcome/body".into()),
                html: true,
            }),
            push: None,
        },
        topic: Some("news".into()),
        holdout: Percent::ZERO,
        send_time_test: Percent::ZERO,
        send_time_fixed: chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
        caps: vec![],
        goal: None,
        guardrails: vec![],
        quiet_hours: true,
        counts: vec![],
        source: PathBuf::from(format!("rules/{id}.yaml")),
    };
    for c in [
        campaign("welcome", "signed_up", None),
        campaign("opened_followup", "email_opened", Some(Duration::days(1))),
    ] {
        set.campaigns.insert(c.id.clone(), Arc::new(c));
    }
    set
}

/// Signs a user up and lets the engine write the welcome email; returns its idempotency key.
async fn welcome_sent(s: &TestServer, user: &str) -> String {
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

async fn names(s: &TestServer, user: &str) -> Vec<String> {
    let mut names: Vec<String> = s
        .engine
        .store
        .user_events(user, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.name)
        .collect();
    names.sort();
    names
}

both_backends!(opens_clicks_and_unsubscribes, |db: TestDb| async move {
    let s = serve(
        &db,
        ServeOptions {
            rules: tracked_rules(),
            ..ServeOptions::default()
        },
    )
    .await;
    let key = welcome_sent(&s, "ann").await;
    let signer = &s.engine.signer;

    // Open: a GIF that is never cached, one email_opened however often it loads.
    let open = signer.sign(TokenKind::Open, &key);
    for _ in 0..3 {
        let r = s.client.get(s.url(&format!("/t/o/{open}"))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "image/gif");
        assert!(
            r.headers()[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("no-store")
        );
        assert!(r.bytes().await.unwrap().starts_with(b"GIF89a"));
    }
    let opened = s.engine.store.user_events("ann", 100).await.unwrap();
    let opened = opened
        .iter()
        .find(|e| e.name.as_deref() == Some("email_opened"))
        .expect("open event");
    assert_eq!(
        opened.properties,
        json!({"campaign": "welcome", "message_id": key, "channel": "email"})
    );

    // Click: a redirect to the stored link, whatever else the request says.
    let click = signer.sign(TokenKind::Click, &click_payload(&key, 0));
    let r = s
        .client
        .get(s.url(&format!("/t/c/{click}?url=https://evil.example")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[header::LOCATION], LINK);

    // Unsubscribe: GET only shows the page, POST (one-click) takes effect and answers 200.
    let unsub = signer.sign(TokenKind::Unsubscribe, &unsubscribe_payload("ann", Some("news")));
    let r = s.client.get(s.url(&format!("/u/{unsub}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(
        page.contains(r#"<form method="post">"#) && page.contains("news"),
        "{page}"
    );
    assert!(
        s.engine
            .store
            .user("ann")
            .await
            .unwrap()
            .unwrap()
            .topic_optouts
            .is_empty()
    );
    for _ in 0..2 {
        let r = s
            .client
            .post(s.url(&format!("/u/{unsub}")))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.text().await.unwrap().contains("unsubscribed"));
    }
    let user = s.engine.store.user("ann").await.unwrap().unwrap();
    assert!(user.opted_out_of("news"));
    assert!(user.can_receive_email(), "a topic unsubscribe keeps other email");

    assert_eq!(
        names(&s, "ann").await,
        ["email_clicked", "email_opened", "signed_up", "unsubscribed"]
    );
    let kinds: Vec<String> = s
        .engine
        .store
        .message_log("ann", 50)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["unsubscribed", "clicked", "opened", "scheduled"]);

    // The open entered the follow-up campaign (waiting a day).
    let counts = s.engine.store.campaign_counts().await.unwrap();
    assert_eq!(counts["opened_followup"].entries_waiting, 1);
    db.cleanup().await;
});

both_backends!(forged_tokens_change_nothing, |db: TestDb| async move {
    let s = serve(
        &db,
        ServeOptions {
            rules: tracked_rules(),
            ..ServeOptions::default()
        },
    )
    .await;
    let key = welcome_sent(&s, "bob").await;
    let _ = welcome_sent(&s, "eve").await;
    let signer = &s.engine.signer;
    let open = signer.sign(TokenKind::Open, &key);
    let click = signer.sign(TokenKind::Click, &click_payload(&key, 0));
    let unsub = signer.sign(TokenKind::Unsubscribe, &unsubscribe_payload("bob", Some("news")));
    let other = nudge::tracking::tokens::Signer::new(b"another deployment");
    // Eve keeps her own signature but swaps in Bob's payload.
    let eve_unsub = signer.sign(TokenKind::Unsubscribe, &unsubscribe_payload("eve", Some("news")));
    let bob_payload = unsub.split_once('.').unwrap().0;
    let swapped = format!("{bob_payload}.{}", eve_unsub.split_once('.').unwrap().1);

    let before_events = s.events().await;
    let before_log = s.engine.store.message_log("bob", 50).await.unwrap().len();
    let cases: Vec<(&str, String)> = vec![
        ("/t/o/", open[..open.len() - 4].to_string()),
        ("/t/o/", "garbage".into()),
        ("/t/o/", click.clone()),
        ("/t/o/", other.sign(TokenKind::Open, &key)),
        ("/t/o/", signer.sign(TokenKind::Open, "no-such-message")),
        ("/t/c/", open.clone()),
        ("/t/c/", click[..click.len() - 1].to_string()),
        ("/t/c/", signer.sign(TokenKind::Click, &click_payload(&key, 7))),
        ("/t/c/", signer.sign(TokenKind::Click, "https://evil.example")),
        ("/u/", swapped.clone()),
        ("/u/", open.clone()),
        (
            "/u/",
            other.sign(TokenKind::Unsubscribe, &unsubscribe_payload("bob", None)),
        ),
    ];
    for (prefix, token) in &cases {
        let r = s
            .client
            .get(s.url(&format!("{prefix}{token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "GET {prefix}{token}");
        if *prefix == "/u/" {
            let r = s
                .client
                .post(s.url(&format!("{prefix}{token}")))
                .body("List-Unsubscribe=One-Click")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "POST {prefix}{token}");
        }
    }
    assert_eq!(s.events().await, before_events);
    assert_eq!(
        s.engine.store.message_log("bob", 50).await.unwrap().len(),
        before_log
    );
    for user in ["bob", "eve"] {
        let u = s.engine.store.user(user).await.unwrap().unwrap();
        assert!(u.topic_optouts.is_empty() && !u.unsubscribed, "{user} untouched");
    }
    db.cleanup().await;
});

both_backends!(admin_api, |db: TestDb| async move {
    let s = serve(
        &db,
        ServeOptions {
            rules: tracked_rules(),
            ..ServeOptions::default()
        },
    )
    .await;
    let key = welcome_sent(&s, "cat").await;

    // No admin key configured: open to loopback peers.
    let r = s.client.get(s.url("/v1/campaigns")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let welcome = body["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "welcome")
        .unwrap()
        .clone();
    assert_eq!(welcome["trigger"], json!({"event": "signed_up"}));
    assert_eq!(welcome["paused"], false);
    assert_eq!(welcome["assignments"], json!({"scheduled": 1}));
    assert_eq!(welcome["outbox"], json!({"pending": 1}));
    assert_eq!(welcome["entries_waiting"], 0);

    let r = s
        .client
        .post(s.url("/v1/campaigns/welcome/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"id": "welcome", "paused": true})
    );
    assert!(s.engine.is_paused("welcome"));
    let body: Value = s
        .client
        .get(s.url("/v1/campaigns"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        body["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "welcome" && c["paused"] == true)
    );
    let r = s
        .client
        .post(s.url("/v1/campaigns/welcome/resume"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!s.engine.is_paused("welcome"));
    let (status, err) = error_of(
        s.client
            .post(s.url("/v1/campaigns/nope/pause"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let r = s
        .client
        .get(s.url("/v1/users/cat/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let history: Value = r.json().await.unwrap();
    assert_eq!(history["messages"][0]["message_id"], key.as_str());
    assert_eq!(history["messages"][0]["status"], "pending");
    assert_eq!(history["messages"][0]["subject"], "Welcome cat");
    assert_eq!(history["log"][0]["kind"], "scheduled");
    assert_eq!(history["log"][0]["campaign"], "welcome");
    assert_eq!(history["log"][0]["detail"]["arm"], "treatment");
    let r = s
        .client
        .get(s.url("/v1/users/nobody/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    db.cleanup().await;
});

#[tokio::test]
async fn admin_key_and_remote_peers() {
    let db = TestDb::new(crate::util::Backend::Sqlite, "admin_key_and_remote_peers")
        .await
        .unwrap();
    let s = serve(
        &db,
        ServeOptions {
            admin_key: Some("admin-secret"),
            ..ServeOptions::default()
        },
    )
    .await;
    let get = |auth: Option<&str>| {
        let mut req = s.client.get(s.url("/v1/campaigns"));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        req.send()
    };
    assert_eq!(get(Some("admin-secret")).await.unwrap().status(), StatusCode::OK);
    for bad in [None, Some("admin-secre"), Some(WRITE_KEY)] {
        let (status, err) = error_of(get(bad).await.unwrap()).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{bad:?}"
        );
    }
    // Tracking, health and metrics need no key.
    assert_eq!(
        s.client.get(s.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );

    // Without a key and without the peer address (served without connect info) the admin API
    // refuses rather than guessing the peer is local.
    let open = serve(
        &db,
        ServeOptions {
            connect_info: false,
            ..ServeOptions::default()
        },
    )
    .await;
    let (status, err) = error_of(open.client.get(open.url("/v1/campaigns")).send().await.unwrap()).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    db.cleanup().await;
}

#[tokio::test]
async fn metrics_count_requests_and_rejections() {
    let db = TestDb::new(
        crate::util::Backend::Sqlite,
        "metrics_count_requests_and_rejections",
    )
    .await
    .unwrap();
    let s = serve(&db, ServeOptions::default()).await;
    assert_eq!(
        s.post("/v1/track", &json!({"userId": "u"})).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.post("/v1/track", &json!({"userId": "u", "event": "e"}))
            .await
            .status(),
        StatusCode::OK
    );
    let r = s.client.get(s.url("/t/o/forged.token")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"nudge_http_requests_total{route="/v1/track",status="200"}"#),
        "{text}"
    );
    assert!(text.contains(r#"route="/t/o/{token}",status="404""#), "{text}");
    assert!(
        text.contains(r#"nudge_events_rejected_total{reason="missing_field"}"#),
        "{text}"
    );
    assert!(!text.contains("forged.token"), "tokens never become labels");
    let (status, _) = error_of(s.client.get(s.url("/nope")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    db.cleanup().await;
}
