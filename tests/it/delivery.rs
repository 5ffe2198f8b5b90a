//! Delivery on both backends: file transports, push over HTTP with retries, lease fencing and
//! heartbeats, caps checked at claim time under concurrent claimers, priority order, shutdown.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration as StdDuration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use chrono::{DateTime, Duration, Utc};
use nudge::{
    clock::{ManualClock, SharedClock, SystemClock},
    delivery::{Delivery, DeliveryConfig, DeliveryError, RetryPolicy},
    events::IncomingEvent,
    outbox::{EmailPayload, Payload, PushPayload},
    rules::{Cap, CapChannel, Channel, RuleSet, RulesHandle},
    store::{CapRules, NewMessage, Store},
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    both_backends,
    util::{TestDb, t},
};

pub const START: &str = "2025-03-03T10:00:00Z";

pub fn email(
    key: &str,
    user: &str,
    campaign: &str,
    priority: i32,
    due: DateTime<Utc>,
    html: bool,
) -> NewMessage {
    NewMessage {
        idempotency_key: key.into(),
        campaign_id: campaign.into(),
        user_id: user.into(),
        priority,
        recipient: format!("{user}@example.com"),
        payload: Payload::Email(EmailPayload {
            subject: format!("Hello from {campaign}"),
            html: html.then(|| format!("<html><body><p>Hi {user}</p></body></html>")),
            text: format!("Hi {user}"),
            unsubscribe_url: format!("http://nudge.test/u/tok-{user}"),
        }),
        due_at: due,
    }
}

pub fn push(key: &str, user: &str, campaign: &str, due: DateTime<Utc>) -> NewMessage {
    NewMessage {
        idempotency_key: key.into(),
        campaign_id: campaign.into(),
        user_id: user.into(),
        priority: 0,
        recipient: format!("device-{user}"),
        payload: Payload::Push(PushPayload {
            title: "Your cart".into(),
            body: "2 items are waiting".into(),
            data: BTreeMap::from([("nudge_message_id".to_string(), key.to_string())]),
        }),
        due_at: due,
    }
}

/// Small leases and a jitter-free retry policy, files under `dir`.
pub fn config(dir: &Path) -> DeliveryConfig {
    DeliveryConfig {
        node_id: "test-node".into(),
        workers: 2,
        batch: 4,
        lease: StdDuration::from_secs(30),
        attempt_timeout: StdDuration::from_secs(10),
        poll: StdDuration::from_millis(50),
        outbox_dir: dir.to_path_buf(),
        email_from: "Shop <hello@shop.example>".into(),
        message_id_domain: "nudge.test".into(),
        retry: RetryPolicy {
            max_attempts: 3,
            initial: StdDuration::from_secs(60),
            max: StdDuration::from_secs(600),
            factor: 2.0,
            jitter: 0.0,
        },
        ..DeliveryConfig::default()
    }
}

pub fn rules_with_caps(caps: Vec<Cap>) -> Arc<RulesHandle> {
    let mut set = RuleSet::empty("rules".into());
    set.global.caps = caps;
    Arc::new(RulesHandle::new(set))
}

pub fn delivery(
    store: &Store,
    rules: Arc<RulesHandle>,
    clock: SharedClock,
    config: DeliveryConfig,
) -> Delivery {
    Delivery::new(store.clone(), rules, clock, Arc::new(Notify::new()), config).expect("delivery starts")
}

fn manual() -> (ManualClock, SharedClock) {
    let clock = ManualClock::new(t(START));
    let shared: SharedClock = Arc::new(clock.clone());
    (clock, shared)
}

fn cap(channel: CapChannel, max: u32, per: Duration) -> Cap {
    Cap { channel, max, per }
}

fn eml_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir.join("email"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .map(|e| std::fs::read_to_string(e.path()).expect("readable .eml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// One request the push sink got: the `X-Nudge-Message-Id`, the body, the status it answered.
pub type Received = (Option<String>, Value, u16);

/// A push gateway on loopback that answers from a script (then 200) and records what it got.
#[derive(Clone, Default)]
pub struct PushSink {
    pub script: Arc<Mutex<Vec<u16>>>,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub delay: Arc<Mutex<StdDuration>>,
    /// Requests that have arrived (counted before the delay, so a test can tell a send is in flight).
    pub arrived: Arc<std::sync::atomic::AtomicUsize>,
}

impl PushSink {
    pub async fn start(script: &[u16]) -> (PushSink, String) {
        let sink = PushSink {
            script: Arc::new(Mutex::new(script.iter().rev().copied().collect())),
            ..PushSink::default()
        };
        async fn handle(
            State(sink): State<PushSink>,
            headers: HeaderMap,
            Json(body): Json<Value>,
        ) -> StatusCode {
            sink.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let delay = *sink.delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let status = sink.script.lock().unwrap().pop().unwrap_or(200);
            let key = headers
                .get("x-nudge-message-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            sink.received.lock().unwrap().push((key, body, status));
            StatusCode::from_u16(status).unwrap()
        }
        let app = Router::new()
            .route("/send", post(handle))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/send", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (sink, url)
    }

    pub fn delivered(&self) -> Vec<String> {
        let got = self.received.lock().unwrap();
        got.iter()
            .filter(|(_, _, s)| *s == 200)
            .filter_map(|(k, _, _)| k.clone())
            .collect()
    }
}

both_backends!(file_transports_write_eml_and_ndjson, |db: TestDb| async move {
    let store = &db.store;
    let dir = db.scratch();
    let (_clock, shared) = manual();
    let now = t(START);
    let html = store
        .enqueue_message(&email("key-html", "ann", "welcome", 0, now, true), now)
        .await
        .unwrap()
        .unwrap();
    let text = store
        .enqueue_message(&email("key-text", "bob", "welcome", 0, now, false), now)
        .await
        .unwrap()
        .unwrap();
    let p = store
        .enqueue_message(&push("key-push", "cat", "welcome", now), now)
        .await
        .unwrap()
        .unwrap();
    // The same key twice is one message.
    assert_eq!(
        store
            .enqueue_message(&email("key-html", "ann", "welcome", 0, now, true), now)
            .await
            .unwrap(),
        None
    );
    let d = delivery(store, rules_with_caps(vec![]), shared, config(dir.path()));
    assert_eq!(d.run_until_idle().await.unwrap(), 3);
    assert_eq!(d.run_until_idle().await.unwrap(), 0, "nothing is sent twice");

    let files = eml_files(dir.path());
    assert_eq!(files.len(), 2);
    let staged = std::fs::read_dir(dir.path().join(".partial"))
        .expect("the staging folder")
        .count();
    assert_eq!(
        staged, 0,
        "every finished email is moved out of the staging folder"
    );
    let ann = files
        .iter()
        .find(|f| f.contains("To: ann@example.com"))
        .expect("ann's email");
    for header in [
        "Message-ID: <key-html@nudge.test>\r\n",
        "List-Unsubscribe: <http://nudge.test/u/tok-ann>\r\n",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        "Subject: Hello from welcome\r\n",
        "From: Shop <hello@shop.example>\r\n",
        "multipart/alternative",
    ] {
        assert!(ann.contains(header), "missing {header:?} in\n{ann}");
    }
    let bob = files
        .iter()
        .find(|f| f.contains("To: bob@example.com"))
        .expect("bob's email");
    assert!(bob.contains("Message-ID: <key-text@nudge.test>\r\n"), "{bob}");
    assert!(!bob.contains("multipart"), "{bob}");

    let lines = std::fs::read_to_string(dir.path().join("push.ndjson")).unwrap();
    let line: Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(line["message_id"], "key-push");
    assert_eq!(line["message"]["token"], "device-cat");
    assert_eq!(line["message"]["notification"]["title"], "Your cart");

    for id in [html, text, p] {
        let row = store.outbox_message(id).await.unwrap().unwrap();
        assert_eq!(row.status, "sent");
        assert_eq!(row.attempts, 1);
        assert_eq!(row.sent_at, Some(now));
        assert_eq!(row.lease_owner, None);
        assert_eq!(row.assignment_status, "delivered");
        let log = store.outbox_log(id).await.unwrap();
        assert_eq!(log.last().map(|(k, _)| k.as_str()), Some("sent"));
    }
    let counts = store.outbox_counts().await.unwrap();
    let sent: i64 = counts
        .iter()
        .filter(|c| c.status == "sent")
        .map(|c| c.count)
        .sum();
    assert_eq!(sent, 3);
    db.cleanup().await;
});

both_backends!(push_503_is_retried_then_delivered_once, |db: TestDb| async move {
    let store = &db.store;
    let dir = db.scratch();
    let (clock, shared) = manual();
    let now = t(START);
    let (sink, url) = PushSink::start(&[503]).await;
    let id = store
        .enqueue_message(&push("key-1", "ann", "cart", now), now)
        .await
        .unwrap()
        .unwrap();
    let d = delivery(
        store,
        rules_with_caps(vec![]),
        shared,
        DeliveryConfig {
            push_url: Some(url),
            ..config(dir.path())
        },
    );
    let first = d.run_until_idle_report().await.unwrap();
    assert_eq!((first.sent, first.retried), (0, 1));
    let row = store.outbox_message(id).await.unwrap().unwrap();
    assert_eq!(row.status, "pending");
    assert_eq!(row.attempts, 1);
    assert_eq!(row.next_attempt_at, now + Duration::seconds(60));
    assert!(row.last_error.as_deref().unwrap().contains("503"), "{row:?}");
    assert!(
        store
            .recent_sends("ann", now - Duration::days(1))
            .await
            .unwrap()
            .is_empty(),
        "a retried message does not count against caps"
    );

    // Not due yet; then due.
    clock.advance(Duration::seconds(59));
    assert_eq!(d.run_until_idle().await.unwrap(), 0);
    clock.advance(Duration::seconds(1));
    assert_eq!(d.run_until_idle().await.unwrap(), 1);

    let row = store.outbox_message(id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("sent", 2));
    assert_eq!(row.assignment_status, "delivered");
    assert_eq!(
        store
            .recent_sends("ann", now - Duration::days(1))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(sink.delivered(), vec!["key-1".to_string()]);
    let received = sink.received.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    for (key, body, _) in &received {
        assert_eq!(key.as_deref(), Some("key-1"));
        assert_eq!(body["message"]["token"], "device-ann");
        assert_eq!(body["message"]["notification"]["body"], "2 items are waiting");
        assert_eq!(body["message"]["data"]["nudge_message_id"], "key-1");
    }
    let kinds: Vec<String> = store
        .outbox_log(id)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["retry", "sent"]);
    db.cleanup().await;
});

both_backends!(
    push_400_fails_at_once_and_retries_give_up,
    |db: TestDb| async move {
        let store = &db.store;
        let dir = db.scratch();
        let (clock, shared) = manual();
        let now = t(START);
        let (sink, url) = PushSink::start(&[400, 500, 500, 500]).await;
        let bad = store
            .enqueue_message(&push("key-bad", "ann", "cart", now), now)
            .await
            .unwrap()
            .unwrap();
        let d = delivery(
            store,
            rules_with_caps(vec![]),
            shared,
            DeliveryConfig {
                push_url: Some(url),
                ..config(dir.path())
            },
        );
        let report = d.run_until_idle_report().await.unwrap();
        assert_eq!((report.sent, report.failed), (0, 1));
        let row = store.outbox_message(bad).await.unwrap().unwrap();
        assert_eq!(row.status, "failed");
        assert_eq!(row.attempts, 1);
        assert_eq!(row.assignment_status, "failed");
        assert!(
            row.assignment_reason.as_deref().unwrap().contains("HTTP 400"),
            "{row:?}"
        );

        // 500 three times with max_attempts = 3: two retries, then failed.
        let flaky = store
            .enqueue_message(&push("key-flaky", "bob", "cart", now), now)
            .await
            .unwrap()
            .unwrap();
        for _ in 0..3 {
            d.run_until_idle().await.unwrap();
            clock.advance(Duration::minutes(10));
        }
        let row = store.outbox_message(flaky).await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("failed", 3));
        assert!(
            row.last_error
                .as_deref()
                .unwrap()
                .starts_with("gave up after 3 attempts"),
            "{row:?}"
        );
        assert!(sink.delivered().is_empty());
        assert!(
            store
                .recent_sends("bob", now - Duration::days(1))
                .await
                .unwrap()
                .is_empty()
        );
        db.cleanup().await;
    }
);

both_backends!(a_taken_over_lease_cannot_mark, |db: TestDb| async move {
    let store = &db.store;
    let now = t(START);
    let id = store
        .enqueue_message(&email("key-1", "ann", "welcome", 0, now, false), now)
        .await
        .unwrap()
        .unwrap();
    let lease = Duration::seconds(60);
    let none = CapRules::default();
    let a = store
        .claim_due_messages("node-a", now, lease, 10, &none)
        .await
        .unwrap();
    assert_eq!(a.messages.len(), 1);
    let a = &a.messages[0];
    assert_eq!(a.attempt, 1);
    // Held: nobody else gets it.
    let early = store
        .claim_due_messages("node-b", now + Duration::seconds(30), lease, 10, &none)
        .await
        .unwrap();
    assert!(early.messages.is_empty());
    // A heartbeat keeps it.
    assert!(
        store
            .extend_lease(id, a.lease_version, now + Duration::seconds(90))
            .await
            .unwrap()
    );
    let still = store
        .claim_due_messages("node-b", now + Duration::seconds(70), lease, 10, &none)
        .await
        .unwrap();
    assert!(still.messages.is_empty());
    // Expired: taken over, with a new fencing token.
    let later = now + Duration::seconds(91);
    let b = store
        .claim_due_messages("node-b", later, lease, 10, &none)
        .await
        .unwrap();
    assert_eq!(b.messages.len(), 1);
    let b = &b.messages[0];
    assert!(b.lease_version > a.lease_version);
    assert_eq!(b.attempt, 2);
    assert!(!store.mark_sent(id, a.lease_version, later).await.unwrap());
    assert!(
        !store
            .extend_lease(id, a.lease_version, later + lease)
            .await
            .unwrap()
    );
    assert!(
        !store
            .mark_failed(id, a.lease_version, "late", later)
            .await
            .unwrap()
    );
    assert!(
        !store
            .mark_retry(id, a.lease_version, later, "late", later)
            .await
            .unwrap()
    );
    assert!(store.mark_sent(id, b.lease_version, later).await.unwrap());
    let row = store.outbox_message(id).await.unwrap().unwrap();
    assert_eq!(row.status, "sent");
    // One send recorded, not one per claim.
    assert_eq!(
        store
            .recent_sends("ann", now - Duration::days(1))
            .await
            .unwrap()
            .len(),
        1
    );
    db.cleanup().await;
});

both_backends!(
    heartbeat_keeps_a_slow_batch_from_being_taken_over,
    |db: TestDb| async move {
        let store = &db.store;
        let dir = db.scratch();
        let clock: SharedClock = Arc::new(SystemClock);
        let now = clock.now();
        let (sink, url) = PushSink::start(&[]).await;
        *sink.delay.lock().unwrap() = StdDuration::from_millis(500);
        let names: Vec<String> = (0..8).map(|i| format!("slow-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            store
                .enqueue_message(&push(name, &format!("u{i}"), "cart", now), now)
                .await
                .unwrap();
        }
        let slow_config = DeliveryConfig {
            push_url: Some(url),
            // Generous against a loaded CI machine: a 500 ms send has 2.5 s before it times out,
            // and heartbeats every 1 s keep the 3 s lease alive.
            lease: StdDuration::from_millis(3_000),
            attempt_timeout: StdDuration::from_millis(2_500),
            batch: 8,
            ..config(dir.path())
        };
        let a = delivery(store, rules_with_caps(vec![]), clock.clone(), slow_config.clone());
        let b = delivery(
            store,
            rules_with_caps(vec![]),
            clock.clone(),
            DeliveryConfig {
                node_id: "other-node".into(),
                ..slow_config
            },
        );
        // One batch of 8 × 500 ms = 4 s, longer than the 3 s lease: only the heartbeat keeps it.
        let done = std::sync::atomic::AtomicBool::new(false);
        let worker = async {
            let report = a.run_once().await.unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            report
        };
        let thief = async {
            let mut stolen = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(StdDuration::from_millis(100)).await;
                stolen += b.run_once().await.unwrap().claimed;
            }
            stolen
        };
        let (report, stolen) = tokio::join!(worker, thief);
        assert_eq!(report.sent, 8, "{report:?}");
        assert_eq!(stolen, 0);
        let mut delivered = sink.delivered();
        delivered.sort();
        assert_eq!(delivered, names);
        db.cleanup().await;
    }
);

/// Five cron campaigns, email to the same 1,000 users, a global cap of 2 per day.
fn capped_campaigns() -> Vec<(String, String)> {
    let mut files = vec![(
        "_global.yaml".to_string(),
        "control_group: 0%\ntimezone: UTC\ncaps:\n  - { channel: any, max: 2, per: 1d }\n  - { channel: email, max: 5, per: 7d }\n"
            .to_string(),
    )];
    for c in 0..5 {
        files.push((
            format!("c{c}.yaml"),
            format!(
                "campaign: c{c}\nname: Campaign {c}\nwhen:\n  schedule: \"0 0 10 * * *\"\nreentry: always\n\
                 then:\n  channels: [email]\n  send_time: immediate\n  email:\n    subject: \"c{c}\"\n    \
                 body: \"Hello {{{{ user.id }}}}\"\nholdout: 0%\n"
            ),
        ));
    }
    files
}

/// Runs `deliveries` (each with its own workers) until no message is pending.
async fn drain(store: &Store, deliveries: Vec<Arc<Delivery>>) {
    let cancel = CancellationToken::new();
    let running: Vec<_> = deliveries
        .into_iter()
        .map(|d| tokio::spawn(d.run(cancel.clone())))
        .collect();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(300);
    loop {
        let counts = store.outbox_counts().await.unwrap();
        if counts.iter().all(|c| c.status != "pending") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery did not finish: {counts:?}"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    cancel.cancel();
    for r in running {
        r.await.unwrap();
    }
}

// Issue 5, acceptance 4: five campaigns race to the same 1,000 users under a cap of 2 per day.
// On SQLite one daemon runs two delivery workers; on PostgreSQL two daemons (engine + delivery,
// each with its own pool and two workers) share the database. Every campaign decides every user
// (the cap cannot stop anything at decision time, as nothing has been sent yet); the claims must.
both_backends!(caps_hold_under_two_racing_daemons, |db: TestDb| async move {
    let dir = db.scratch();
    let users = 1_000;
    let now = t(START);
    let files = capped_campaigns();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let daemons = match db.store.backend() {
        nudge::store::Backend::Sqlite => 1,
        nudge::store::Backend::Postgres => 2,
    };
    let mut engines = Vec::new();
    let mut stores = Vec::new();
    let mut rule_dirs = Vec::new();
    for n in 0..daemons {
        let store = if n == 0 {
            db.store.clone()
        } else {
            Store::connect(&db.url).await.unwrap()
        };
        let (rules_dir, rules) = crate::util::rules_dir(&refs);
        let (engine, _clock) = crate::util::engine(&store, rules, now).await;
        rule_dirs.push(rules_dir);
        stores.push(store);
        engines.push(engine);
    }
    let identifies: Vec<IncomingEvent> = (0..users)
        .map(|i| {
            IncomingEvent::identify(
                &format!("u{i:04}"),
                json!({ "email": format!("u{i:04}@example.com") }),
                now - Duration::days(1),
            )
        })
        .collect();
    engines[0].ingest_history(&identifies).await.unwrap();
    // Every daemon's scheduler fires every campaign; one node wins each firing.
    let mut fanned = 0;
    for c in 0..5 {
        for engine in &engines {
            fanned += nudge::engine::cron::fire(engine, &format!("c{c}"), now)
                .await
                .unwrap()
                .unwrap_or(0);
        }
    }
    assert_eq!(fanned, 5 * users as u64);
    // The daemons decide at the same time.
    let decided = match engines.as_slice() {
        [one] => one.run_until_idle().await.unwrap(),
        [a, b] => {
            let (x, y) = tokio::join!(a.run_until_idle(), b.run_until_idle());
            x.unwrap() + y.unwrap()
        }
        _ => unreachable!("one or two daemons"),
    };
    assert_eq!(decided, 5 * users);

    let deliveries: Vec<Arc<Delivery>> = engines
        .iter()
        .zip(&stores)
        .enumerate()
        .map(|(n, (engine, store))| {
            Arc::new(
                Delivery::new(
                    store.clone(),
                    engine.rules.clone(),
                    engine.clock.clone(),
                    engine.outbox_ready.clone(),
                    DeliveryConfig {
                        node_id: format!("daemon-{n}"),
                        workers: 2,
                        batch: 3,
                        ..config(dir.path())
                    },
                )
                .unwrap(),
            )
        })
        .collect();
    drain(&db.store, deliveries).await;

    // No user got more than 2: by send records and by delivered files.
    let mut sends: HashMap<String, usize> = HashMap::new();
    for (user, _, _) in db.store.all_sends().await.unwrap() {
        *sends.entry(user).or_default() += 1;
    }
    assert_eq!(sends.len(), users, "every user got something");
    assert!(sends.values().all(|n| *n == 2), "{sends:?}");
    let mut files_per_user: HashMap<String, usize> = HashMap::new();
    for eml in eml_files(dir.path()) {
        let to = eml
            .lines()
            .find_map(|l| l.strip_prefix("To: "))
            .expect("a To: header")
            .to_string();
        *files_per_user.entry(to).or_default() += 1;
    }
    assert_eq!(files_per_user.len(), users);
    assert!(files_per_user.values().all(|n| *n == 2));

    // Every other message is recorded as capped, naming the cap: outbox, assignment, log.
    let mut capped = 0;
    for c in 0..5 {
        for a in db.store.assignments_of(&format!("c{c}")).await.unwrap() {
            match a.status.as_str() {
                "delivered" => {}
                "capped" => {
                    capped += 1;
                    assert_eq!(a.reason.as_deref(), Some("capped: any: max 2 per 1d"));
                }
                other => panic!("{} in c{c} ended {other}", a.user_id),
            }
        }
    }
    assert_eq!(capped, users * 3);
    let outbox = db.store.outbox_counts().await.unwrap();
    let count = |status: &str| {
        outbox
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.count)
            .sum::<i64>()
    };
    assert_eq!(
        (count("sent"), count("capped")),
        (2 * users as i64, 3 * users as i64)
    );
    let log = db.store.log_entries("u0007").await.unwrap();
    assert_eq!(log.iter().filter(|(k, _)| k == "capped").count(), 3, "{log:?}");
    assert!(
        log.iter()
            .filter(|(k, _)| k == "capped")
            .all(|(_, d)| d.contains("capped: any: max 2 per 1d"))
    );
    for store in stores.into_iter().skip(1) {
        store.close().await;
    }
    drop(rule_dirs);
    db.cleanup().await;
});

both_backends!(
    higher_priority_wins_when_caps_allow_only_some,
    |db: TestDb| async move {
        let store = &db.store;
        let dir = db.scratch();
        let (_clock, shared) = manual();
        let now = t(START);
        let mut by_campaign = HashMap::new();
        for (campaign, priority) in [("low", 10), ("high", 50), ("mid", 30)] {
            let id = store
                .enqueue_message(
                    &email(&format!("k-{campaign}"), "ann", campaign, priority, now, false),
                    now,
                )
                .await
                .unwrap()
                .unwrap();
            by_campaign.insert(campaign, id);
        }
        // An older message due earlier goes first whatever its priority.
        let early = store
            .enqueue_message(
                &email("k-early", "bob", "low", 1, now - Duration::minutes(5), false),
                now,
            )
            .await
            .unwrap()
            .unwrap();
        let late_high = store
            .enqueue_message(&email("k-late", "bob", "high", 99, now, false), now)
            .await
            .unwrap()
            .unwrap();
        let d = delivery(
            store,
            rules_with_caps(vec![cap(CapChannel::Only(Channel::Email), 1, Duration::days(1))]),
            shared,
            config(dir.path()),
        );
        let report = d.run_until_idle_report().await.unwrap();
        assert_eq!((report.sent, report.capped), (2, 3));
        let status = |id: i64| {
            let store = store.clone();
            async move { store.outbox_message(id).await.unwrap().unwrap().status }
        };
        assert_eq!(status(by_campaign["high"]).await, "sent");
        assert_eq!(status(by_campaign["mid"]).await, "capped");
        assert_eq!(status(by_campaign["low"]).await, "capped");
        assert_eq!(status(early).await, "sent");
        assert_eq!(status(late_high).await, "capped");
        db.cleanup().await;
    }
);

both_backends!(
    campaign_caps_count_only_their_own_sends,
    |db: TestDb| async move {
        let store = &db.store;
        let now = t(START);
        let a1 = store
            .enqueue_message(&email("a1", "ann", "promo", 0, now, false), now)
            .await
            .unwrap()
            .unwrap();
        let a2 = store
            .enqueue_message(&email("a2", "ann", "promo", 0, now, false), now)
            .await
            .unwrap()
            .unwrap();
        let other = store
            .enqueue_message(&email("o1", "ann", "welcome", 0, now, false), now)
            .await
            .unwrap()
            .unwrap();
        let caps = CapRules {
            global: vec![],
            campaigns: HashMap::from([(
                "promo".to_string(),
                vec![cap(CapChannel::Only(Channel::Email), 1, Duration::days(7))],
            )]),
        };
        let claim = store
            .claim_due_messages("node", now, Duration::seconds(60), 10, &caps)
            .await
            .unwrap();
        let mut claimed: Vec<i64> = claim.messages.iter().map(|m| m.id).collect();
        claimed.sort();
        assert_eq!(claimed, vec![a1, other]);
        assert_eq!(claim.capped.len(), 1);
        assert_eq!(claim.capped[0].id, a2);
        assert_eq!(claim.capped[0].reason, "capped: email: max 1 per 1w");
        db.cleanup().await;
    }
);

both_backends!(
    run_wakes_on_outbox_ready_and_stops_on_cancel,
    |db: TestDb| async move {
        let store = db.store.clone();
        let dir = db.scratch();
        let (_clock, shared) = manual();
        let now = t(START);
        let ready = Arc::new(Notify::new());
        let d = Arc::new(
            Delivery::new(
                store.clone(),
                rules_with_caps(vec![]),
                shared,
                ready.clone(),
                DeliveryConfig {
                    // Only the notification can wake the workers in time.
                    poll: StdDuration::from_secs(3600),
                    ..config(dir.path())
                },
            )
            .unwrap(),
        );
        let cancel = CancellationToken::new();
        let running = tokio::spawn(d.clone().run(cancel.clone()));
        // Let the workers reach their first wait (they register for the notification before claiming).
        tokio::time::sleep(StdDuration::from_millis(500)).await;
        let id = store
            .enqueue_message(&email("k-1", "ann", "welcome", 0, now, false), now)
            .await
            .unwrap()
            .unwrap();
        ready.notify_waiters();
        let mut status = String::new();
        for _ in 0..100 {
            status = store.outbox_message(id).await.unwrap().unwrap().status;
            if status == "sent" {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        }
        assert_eq!(status, "sent");
        cancel.cancel();
        tokio::time::timeout(StdDuration::from_secs(5), running)
            .await
            .expect("workers stop promptly")
            .unwrap();
        db.cleanup().await;
    }
);

#[tokio::test]
async fn refuses_an_attempt_timeout_not_shorter_than_the_lease() {
    let db = crate::util::TestDb::new(crate::util::Backend::Sqlite, "refuses")
        .await
        .unwrap();
    let dir = db.scratch();
    let (_clock, shared) = manual();
    let err = Delivery::new(
        db.store.clone(),
        rules_with_caps(vec![]),
        shared,
        Arc::new(Notify::new()),
        DeliveryConfig {
            lease: StdDuration::from_secs(5),
            attempt_timeout: StdDuration::from_secs(5),
            ..config(dir.path())
        },
    )
    .unwrap_err();
    assert!(matches!(err, DeliveryError::Config(_)), "{err}");
    assert!(err.to_string().contains("shorter than the lease"), "{err}");
    let err = Delivery::new(
        db.store.clone(),
        rules_with_caps(vec![]),
        Arc::new(SystemClock),
        Arc::new(Notify::new()),
        DeliveryConfig {
            smtp_url: Some("ftp://user:hunter2@mail.example".into()),
            ..config(dir.path())
        },
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    db.cleanup().await;
}

both_backends!(
    consent_withdrawn_after_the_decision_suppresses,
    |db: TestDb| async move {
        let store = &db.store;
        let dir = db.scratch();
        let (_clock, shared) = manual();
        let now = t(START);
        store
            .ingest(
                &[
                    IncomingEvent::identify("ann", json!({"email": "ann@example.com"}), now),
                    IncomingEvent::identify(
                        "bob",
                        json!({"push_token": "device-bob", "push_consent": false}),
                        now,
                    ),
                    IncomingEvent::identify("cat", json!({"email": "cat@example.com"}), now),
                ],
                None,
            )
            .await
            .unwrap();
        let ann = store
            .enqueue_message(&email("k-ann", "ann", "welcome", 0, now, false), now)
            .await
            .unwrap()
            .unwrap();
        let bob = store
            .enqueue_message(&push("k-bob", "bob", "welcome", now), now)
            .await
            .unwrap()
            .unwrap();
        let cat = store
            .enqueue_message(&email("k-cat", "cat", "welcome", 0, now, false), now)
            .await
            .unwrap()
            .unwrap();
        store.unsubscribe("ann", None, now).await.unwrap();
        let d = delivery(store, rules_with_caps(vec![]), shared, config(dir.path()));
        let report = d.run_until_idle_report().await.unwrap();
        assert_eq!((report.sent, report.suppressed), (1, 2), "{report:?}");
        for id in [ann, bob] {
            let row = store.outbox_message(id).await.unwrap().unwrap();
            assert_eq!(row.status, "cancelled");
            assert_eq!(row.assignment_status, "suppressed");
            assert!(
                row.assignment_reason
                    .as_deref()
                    .unwrap()
                    .starts_with("suppressed at send time"),
                "{row:?}"
            );
        }
        assert_eq!(store.outbox_message(cat).await.unwrap().unwrap().status, "sent");
        assert_eq!(eml_files(dir.path()).len(), 1);
        assert!(!dir.path().join("push.ndjson").exists());
        db.cleanup().await;
    }
);

both_backends!(
    shutdown_finishes_the_send_in_flight_and_releases_the_rest,
    |db: TestDb| async move {
        let store = db.store.clone();
        let dir = db.scratch();
        let (_clock, shared) = manual();
        let now = t(START);
        let (sink, url) = PushSink::start(&[]).await;
        *sink.delay.lock().unwrap() = StdDuration::from_millis(400);
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(
                store
                    .enqueue_message(&push(&format!("k-{i}"), &format!("u{i}"), "cart", now), now)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let d = Arc::new(delivery(
            &store,
            rules_with_caps(vec![]),
            shared,
            DeliveryConfig {
                push_url: Some(url),
                workers: 1,
                batch: 4,
                ..config(dir.path())
            },
        ));
        let cancel = CancellationToken::new();
        let running = tokio::spawn(d.clone().run(cancel.clone()));
        // Shut down while the first send is in flight (the sink holds it for 400 ms).
        let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
        while sink.arrived.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first send never started"
            );
            tokio::time::sleep(StdDuration::from_millis(5)).await;
        }
        cancel.cancel();
        tokio::time::timeout(StdDuration::from_secs(5), running)
            .await
            .expect("stops after the send in flight")
            .unwrap();
        let mut statuses = Vec::new();
        for id in &ids {
            let row = store.outbox_message(*id).await.unwrap().unwrap();
            if row.status == "pending" {
                assert_eq!((row.attempts, row.lease_owner.as_deref()), (0, None), "{row:?}");
            }
            statuses.push(row.status);
        }
        assert_eq!(statuses, ["sent", "pending", "pending", "pending"]);
        assert_eq!(sink.delivered(), ["k-0"]);
        // Released messages are due again at once, for whoever claims next.
        assert_eq!(d.run_until_idle().await.unwrap(), 3);
        db.cleanup().await;
    }
);
