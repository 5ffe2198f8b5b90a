//! Promise 4: failures are classified by what to do next. Against a scripted SMTP server on
//! loopback: a 4xx reply, a connection lost after DATA and a server that never answers are
//! retried; a 5xx fails at once; a multi-line `550 5.1.1` hard bounce fails and suppresses the
//! address (no later message goes to it, and the engine says why). And `nudge serve` refuses to
//! start (exit code 5) when a send could outlive its lease. The reply-code table (30+ replies)
//! and the backoff property tests are unit tests in `src/delivery/retry.rs`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use nudge::{clock::SharedClock, events::IncomingEvent};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

use super::harness::{Daemon, DaemonSpec, Workdir, global};
use crate::{
    both_backends,
    delivery::{config, delivery, email, rules_with_caps},
    util::TestDb,
};

/// What the scripted server does at the end of a message's DATA.
#[derive(Debug, Clone)]
enum AtDataEnd {
    /// Sends this (possibly multi-line) reply.
    Reply(&'static str),
    /// Closes the connection without a reply.
    Hangup,
    /// Never answers.
    Silence,
}

/// A minimal SMTP server: answers RCPT with `rcpt`, and the end of DATA by the script (one
/// entry per message, then `250`).
async fn scripted_smtp(rcpt: &'static str, script: Vec<AtDataEnd>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://{}", listener.local_addr().unwrap());
    let script = Arc::new(Mutex::new(script.into_iter().rev().collect::<Vec<_>>()));
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 mx.test ESMTP\r\n").await;
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line != "." {
                            continue;
                        }
                        in_data = false;
                        let next = script.lock().unwrap().pop();
                        match next.unwrap_or(AtDataEnd::Reply("250 2.0.0 Ok: queued")) {
                            AtDataEnd::Reply(r) => {
                                let _ = write.write_all(format!("{r}\r\n").as_bytes()).await;
                            }
                            AtDataEnd::Hangup => return,
                            AtDataEnd::Silence => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                        }
                        continue;
                    }
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    let reply = match verb.as_str() {
                        "EHLO" | "HELO" => "250 mx.test".to_string(),
                        "RCPT" => rcpt.to_string(),
                        "DATA" => {
                            in_data = true;
                            "354 End data with <CR><LF>.<CR><LF>".to_string()
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
                            return;
                        }
                        _ => "250 2.0.0 Ok".to_string(),
                    };
                    let _ = write.write_all(format!("{reply}\r\n").as_bytes()).await;
                }
            });
        }
    });
    url
}

const GMAIL_NO_SUCH_USER: &str = "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n\
550-5.1.1 double-checking the recipient's email address for typos or\r\n\
550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser";

/// Sends one message through `smtp` with a 1 s attempt timeout; returns the outbox row after.
async fn one_attempt(db: &TestDb, smtp: String, user: &str) -> nudge::store::OutboxRow {
    let now = Utc::now();
    let clock: SharedClock = Arc::new(nudge::clock::SystemClock);
    let scratch = db.scratch();
    let mut cfg = config(scratch.path());
    cfg.smtp_url = Some(smtp);
    cfg.attempt_timeout = Duration::from_secs(1);
    let d = delivery(&db.store, rules_with_caps(vec![]), clock, cfg);
    let key = format!("key-{user}-{}", uuid::Uuid::new_v4().simple());
    let mut msg = email(&key, user, "classify", 0, now, false);
    msg.recipient = format!("{user}@example.com");
    let id = db.store.enqueue_message(&msg, now).await.unwrap().unwrap();
    d.run_once().await.unwrap();
    let transport = d.health().channel("email");
    let row = db.store.outbox_message(id).await.unwrap().unwrap();
    // Health follows the transport, not the recipient.
    let want = match row.status.as_str() {
        "pending" => "failing",
        "cancelled" => "unknown",
        _ => "ok",
    };
    assert_eq!(transport.status(), want, "{row:?}");
    row
}

both_backends!(transient_failures_are_retried, |db: TestDb| async move {
    let cases = [
        (
            "greylisted",
            "250 2.1.5 Ok",
            vec![AtDataEnd::Reply("451 4.7.1 Greylisted, try again later")],
        ),
        ("hangup", "250 2.1.5 Ok", vec![AtDataEnd::Hangup]),
        ("silence", "250 2.1.5 Ok", vec![AtDataEnd::Silence]),
        ("rcpt_busy", "450 4.2.1 Mailbox busy", vec![]),
        (
            "multiline_421",
            "250 2.1.5 Ok",
            vec![AtDataEnd::Reply(
                "421-4.7.0 Too many connections\r\n421 4.7.0 Try again later",
            )],
        ),
    ];
    for (user, rcpt, script) in cases {
        let row = one_attempt(&db, scripted_smtp(rcpt, script).await, user).await;
        assert_eq!(row.status, "pending", "{user}: retried later: {row:?}");
        assert_eq!(row.attempts, 1, "{user}");
        assert!(row.next_attempt_at > Utc::now(), "{user}: backoff applies");
        assert!(row.last_error.is_some(), "{user}");
    }
    db.cleanup().await;
});

both_backends!(permanent_failures_fail_at_once, |db: TestDb| async move {
    let row = one_attempt(
        &db,
        scripted_smtp(
            "250 2.1.5 Ok",
            vec![AtDataEnd::Reply("554 5.7.1 Rejected as spam")],
        )
        .await,
        "spammy",
    )
    .await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(
        row.last_error.as_deref().unwrap_or_default().contains("554"),
        "{row:?}"
    );
    db.cleanup().await;
});

both_backends!(a_hard_bounce_suppresses_the_address, |db: TestDb| async move {
    let now = Utc::now();
    db.store
        .ingest(
            &[IncomingEvent::identify(
                "bob",
                json!({"email": "bob@example.com"}),
                now,
            )],
            None,
        )
        .await
        .unwrap();
    assert!(db.store.user("bob").await.unwrap().unwrap().can_receive_email());
    let row = one_attempt(&db, scripted_smtp(GMAIL_NO_SUCH_USER, vec![]).await, "bob").await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(
        row.last_error.as_deref().unwrap_or_default().contains("5.1.1"),
        "{row:?}"
    );
    assert_eq!(db.store.outbox_log_count(row.id, "bounced").await.unwrap(), 1);
    let bob = db.store.user("bob").await.unwrap().unwrap();
    assert!(bob.email_bounced && !bob.can_receive_email(), "{bob:?}");

    // A message already queued for the address is not sent: suppressed at send time.
    let smtp = scripted_smtp("250 2.1.5 Ok", vec![]).await;
    let later = one_attempt(&db, smtp, "bob").await;
    assert_eq!(later.status, "cancelled", "{later:?}");
    assert!(
        later
            .assignment_reason
            .as_deref()
            .unwrap_or_default()
            .contains("hard-bounced"),
        "{later:?}"
    );

    // A new address lifts the suppression.
    db.store
        .ingest(
            &[IncomingEvent::identify(
                "bob",
                json!({"email": "bob@new.example"}),
                now,
            )],
            None,
        )
        .await
        .unwrap();
    assert!(db.store.user("bob").await.unwrap().unwrap().can_receive_email());
    db.cleanup().await;
});

#[tokio::test]
async fn serve_refuses_a_timeout_that_outlives_the_lease() {
    let work = Workdir::new(&[("_global.yaml", &global(false))]);
    let db = format!("sqlite://{}", work.path().join("nudge.db").display());
    let mut spec = DaemonSpec::new(&work, &db);
    spec.toml = "lease = \"2s\"\nattempt_timeout = \"5s\"\n".into();
    let mut daemon = Daemon::start(&spec);
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("nudge exits on its own");
    let log = daemon.log_text();
    assert_eq!(status.code(), Some(5), "{log}");
    assert!(log.contains("must be shorter than the lease"), "{log}");

    spec.toml = "lease = \"500ms\"\n".into();
    let mut daemon = Daemon::start(&spec);
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("nudge exits on its own");
    assert_eq!(status.code(), Some(5), "{}", daemon.log_text());
    assert!(daemon.log_text().contains("lease"), "{}", daemon.log_text());
}
