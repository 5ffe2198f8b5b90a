//! Email over a real SMTP server on loopback (mailin-embedded): the message as received, a
//! greylisting server (451 then accepted: one delivery), a 550 (failed with the reply), and
//! `?tls=required` against a server without STARTTLS (never sent in plain text).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

use chrono::Duration;
use mailin_embedded::{Handler, Response, Server, SslConfig, response};
use nudge::{
    clock::SharedClock,
    delivery::{Delivery, DeliveryConfig},
    events::IncomingEvent,
    rules::{
        Action, Campaign, ChannelChoice, EmailContent, Percent, Reentry, RuleSet, RulesHandle, SendTime,
        TemplateRef, Trigger,
    },
};
use serde_json::json;

use crate::{
    delivery::{START, config, delivery, email, rules_with_caps},
    util::{self, TestDb, t},
};

/// Accepts or refuses each message by a script of reply codes (then 250), keeping what it accepted.
#[derive(Clone)]
struct Mailbox {
    accepted: Arc<Mutex<Vec<String>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    current: Vec<u8>,
}

// Refusals are answered to RCPT TO, where greylisting and unknown users are refused in practice.
// (mailin 0.6 keeps the session in its DATA state after an error reply to the final ".", so the
// client's next command would be swallowed as message text.)
impl Handler for Mailbox {
    fn rcpt(&mut self, _to: &str) -> Response {
        match self.script.lock().unwrap().pop_front().unwrap_or(250) {
            250 => response::OK,
            451 => Response::custom(451, "4.7.1 Greylisted, try again later".into()),
            code => Response::custom(code, "5.1.1 No such user here".into()),
        }
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, _to: &[String]) -> Response {
        self.current.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let message = std::mem::take(&mut self.current);
        self.accepted
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&message).into_owned());
        response::OK
    }
}

/// Starts an SMTP server on 127.0.0.1; returns what it accepts and its `smtp://` URL.
fn smtp_server(script: &[u16]) -> (Arc<Mutex<Vec<String>>>, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let handler = Mailbox {
        accepted: accepted.clone(),
        script: Arc::new(Mutex::new(script.iter().copied().collect())),
        current: Vec::new(),
    };
    let mut server = Server::new(handler);
    server
        .with_name("mx.test")
        .with_ssl(SslConfig::None)
        .unwrap()
        .with_tcp_listener(listener);
    // serve() blocks for ever and its error is not Send: handle it on the thread.
    std::thread::spawn(move || {
        if let Err(e) = server.serve() {
            eprintln!("test SMTP server stopped: {e}");
        }
    });
    (accepted, format!("smtp://127.0.0.1:{port}"))
}

/// A welcome campaign built by hand (the rules compiler is not in this branch yet).
fn welcome_rules() -> RuleSet {
    let mut templates = minijinja::Environment::new();
    templates
        .add_template_owned("welcome/subject", "Welcome, {{ user.traits.name }}!")
        .unwrap();
    templates
        .add_template_owned(
            "welcome/body",
            r#"<html><body><p>Hi {{ user.traits.name }}, <a href="https://shop.example/start">start here</a>.</p></body></html>"#,
        )
        .unwrap();
    let campaign = Campaign {
        id: "welcome".into(),
        name: "Welcome".into(),
        enabled: true,
        priority: 50,
        trigger: Trigger::Event("signed_up".into()),
        reentry: Reentry::Never,
        wait: None,
        unless: vec![],
        conditions: vec![],
        exclude_if: vec![],
        action: Action {
            channels: vec![nudge::rules::Channel::Email],
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
        topic: None,
        holdout: Percent::ZERO,
        send_time_test: Percent::ZERO,
        send_time_fixed: chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
        caps: vec![],
        goal: None,
        guardrails: vec![],
        quiet_hours: true,
        counts: vec![],
        source: "rules/welcome.yaml".into(),
    };
    let mut set = RuleSet::empty("rules".into());
    set.campaigns = BTreeMap::from([("welcome".to_string(), Arc::new(campaign))]);
    set.templates = Arc::new(templates);
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_to_smtp_with_list_unsubscribe_and_message_id() {
    let db = TestDb::new(util::Backend::Sqlite, "smtp::engine_to_smtp")
        .await
        .unwrap();
    let dir = db.scratch();
    let (accepted, url) = smtp_server(&[]);
    let (engine, _clock) = util::engine(&db.store, RulesHandle::new(welcome_rules()), t(START)).await;
    let now = t(START);
    engine
        .ingest(&[
            IncomingEvent::identify("ann", json!({"email": "ann@example.com", "name": "Ann"}), now),
            IncomingEvent::track("ann", "signed_up", json!({}), now),
        ])
        .await
        .unwrap();
    assert_eq!(engine.run_until_idle().await.unwrap(), 1);

    let d = Delivery::new(
        db.store.clone(),
        engine.rules.clone(),
        engine.clock.clone(),
        engine.outbox_ready.clone(),
        DeliveryConfig {
            smtp_url: Some(url),
            ..config(dir.path())
        },
    )
    .unwrap();
    assert_eq!(d.run_until_idle().await.unwrap(), 1);

    let got = accepted.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let mail = &got[0];
    let key = nudge::engine::idempotency_key("welcome|ann");
    let unfolded = mail.replace("\r\n ", " ");
    for expected in [
        format!("Message-ID: <{key}@nudge.test>"),
        "Subject: Welcome, Ann!".to_string(),
        "To: ann@example.com".to_string(),
        "List-Unsubscribe: <http://nudge.test/u/".to_string(),
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click".to_string(),
        "multipart/alternative".to_string(),
        "Hi Ann".to_string(),
        "http://nudge.test/t/c/".to_string(),
    ] {
        assert!(unfolded.contains(&expected), "missing {expected:?} in\n{mail}");
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylisting_451_is_retried_and_delivered_once() {
    let db = TestDb::new(util::Backend::Sqlite, "smtp::greylisting")
        .await
        .unwrap();
    let dir = db.scratch();
    let (accepted, url) = smtp_server(&[451, 451]);
    let clock = nudge::clock::ManualClock::new(t(START));
    let shared: SharedClock = Arc::new(clock.clone());
    let now = t(START);
    let id = db
        .store
        .enqueue_message(&email("grey-1", "ann", "welcome", 0, now, true), now)
        .await
        .unwrap()
        .unwrap();
    let d = delivery(
        &db.store,
        rules_with_caps(vec![]),
        shared,
        DeliveryConfig {
            smtp_url: Some(url),
            ..config(dir.path())
        },
    );
    let mut sent = 0;
    for _ in 0..3 {
        sent += d.run_until_idle().await.unwrap();
        clock.advance(Duration::minutes(5));
    }
    assert_eq!(sent, 1);
    let row = db.store.outbox_message(id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("sent", 3));
    let log = db.store.outbox_log(id).await.unwrap();
    let kinds: Vec<&str> = log.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["retry", "retry", "sent"]);
    assert!(log[0].1["error"].as_str().unwrap().contains("451"), "{log:?}");
    let got = accepted.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "exactly one delivery");
    assert!(got[0].contains("Message-ID: <grey-1@nudge.test>"));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_550_fails_with_the_reply_as_reason() {
    let db = TestDb::new(util::Backend::Sqlite, "smtp::rejection")
        .await
        .unwrap();
    let dir = db.scratch();
    let (accepted, url) = smtp_server(&[550]);
    let now = t(START);
    let id = db
        .store
        .enqueue_message(&email("bounce-1", "nobody", "welcome", 0, now, false), now)
        .await
        .unwrap()
        .unwrap();
    let d = delivery(
        &db.store,
        rules_with_caps(vec![]),
        Arc::new(nudge::clock::ManualClock::new(now)),
        DeliveryConfig {
            smtp_url: Some(url),
            ..config(dir.path())
        },
    );
    let report = d.run_until_idle_report().await.unwrap();
    assert_eq!((report.sent, report.failed, report.retried), (0, 1, 0));
    let row = db.store.outbox_message(id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("failed", 1));
    assert_eq!(row.assignment_status, "failed");
    let reason = row.assignment_reason.unwrap();
    assert!(
        reason.contains("550") && reason.contains("No such user"),
        "{reason}"
    );
    assert!(accepted.lock().unwrap().is_empty());
    assert!(
        db.store
            .recent_sends("nobody", now - Duration::days(1))
            .await
            .unwrap()
            .is_empty()
    );
    db.cleanup().await;
}

/// `?tls=required` never falls back to plain text: against a server that offers no STARTTLS the
/// send fails (transient: an operator can fix the server) and nothing reaches it; with
/// `?tls=opportunistic` the same server gets the message in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_is_never_downgraded() {
    nudge::delivery::install_crypto_provider();
    let db = TestDb::new(util::Backend::Sqlite, "smtp::starttls")
        .await
        .unwrap();
    let dir = db.scratch();
    let (accepted, url) = smtp_server(&[]);
    let now = t(START);
    let clock = nudge::clock::ManualClock::new(now);
    let id = db
        .store
        .enqueue_message(&email("tls-1", "ann", "welcome", 0, now, false), now)
        .await
        .unwrap()
        .unwrap();
    let send_with = |tls: &str| {
        delivery(
            &db.store,
            rules_with_caps(vec![]),
            Arc::new(clock.clone()),
            DeliveryConfig {
                smtp_url: Some(format!("{url}?tls={tls}")),
                ..config(dir.path())
            },
        )
    };
    let report = send_with("required").run_until_idle_report().await.unwrap();
    assert_eq!((report.sent, report.failed, report.retried), (0, 0, 1));
    let row = db.store.outbox_message(id).await.unwrap().unwrap();
    let reason = row.last_error.clone().unwrap_or_default();
    assert!(reason.contains("STARTTLS"), "{row:?}");
    assert!(accepted.lock().unwrap().is_empty());

    clock.set(now + Duration::hours(1));
    let report = send_with("opportunistic").run_until_idle_report().await.unwrap();
    assert_eq!((report.sent, report.failed, report.retried), (1, 0, 0));
    assert_eq!(accepted.lock().unwrap().len(), 1);
    db.cleanup().await;
}
