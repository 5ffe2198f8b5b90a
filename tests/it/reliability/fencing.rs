//! Promise 3: leases with fencing, across two `nudge serve` processes on one database. Node A
//! claims the message and is frozen (SIGSTOP) while the SMTP server holds its reply; A's lease
//! runs out (no heartbeat from a stopped process) and node B takes the message over within
//! lease + one sweep, sends it and marks it sent. When A is continued its outcome is refused by
//! the lease version: the row stays B's, one `sent` in the message log, and A logs
//! `MessageFenced`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;

use super::harness::{
    Daemon, DaemonSpec, SmtpHooks, SmtpSink, Workdir, eventually, figure, global, send_signal,
};
use crate::{both_backends, delivery::email, util::TestDb};

const LEASE: Duration = Duration::from_secs(2);
/// Delivery workers look for due messages this often when idle.
const SWEEP: Duration = Duration::from_secs(1);

both_backends!(a_frozen_worker_is_fenced_out, |db: TestDb| async move {
    let backend = db.url.split(':').next().unwrap_or("db").to_string();
    let work = Workdir::new(&[("_global.yaml", &global(false))]);
    let now = Utc::now();
    let id = db
        .store
        .enqueue_message(&email("fence-key", "fran", "fencing", 0, now, false), now)
        .await
        .unwrap()
        .unwrap();
    // The SMTP server freezes node A as A's message arrives, before answering it.
    let frozen = Arc::new(AtomicU32::new(0));
    let a_pid = Arc::new(AtomicU32::new(0));
    let hooks = {
        let (frozen, a_pid) = (frozen.clone(), a_pid.clone());
        SmtpHooks {
            on_message: Some(Box::new(move |_, before| {
                if before == 0 {
                    send_signal(a_pid.load(Ordering::SeqCst), "STOP");
                    frozen.store(1, Ordering::SeqCst);
                }
            })),
        }
    };
    let (sink, smtp) = SmtpSink::start(hooks);
    let toml = format!(
        "lease = \"{}s\"\nattempt_timeout = \"1s\"\nworkers = 1\n",
        LEASE.as_secs()
    );
    let mut spec_a = DaemonSpec::new(&work, &db.url);
    spec_a.smtp_url = Some(smtp.clone());
    spec_a.toml = toml.clone();
    let mut a = Daemon::start(&spec_a);
    a_pid.store(a.pid(), Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(30), || {
            let f = frozen.load(Ordering::SeqCst);
            async move { f == 1 }
        })
        .await,
        "node A never sent:\n{}",
        a.log_text()
    );
    let first = db.store.outbox_message(id).await.unwrap().unwrap();
    assert_eq!((first.status.as_str(), first.lease_version), ("pending", 1));

    let mut spec_b = DaemonSpec::new(&work, &db.url);
    spec_b.node = "node-b".into();
    spec_b.smtp_url = Some(smtp);
    spec_b.toml = toml;
    let mut b = Daemon::start_ready(&spec_b).await;
    let b_ready = Instant::now();
    let store = db.store.clone();
    let taken_over = eventually(Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            let row = store.outbox_message(id).await.unwrap().unwrap();
            row.status == "sent"
        }
    })
    .await;
    let takeover = b_ready.elapsed();
    assert!(taken_over, "node B did not take over:\n{}", b.log_text());
    let by_b = db.store.outbox_message(id).await.unwrap().unwrap();
    assert_eq!(by_b.lease_version, 2, "B sent under the next lease version");
    // A claimed before B was up, so B waits at most the rest of A's lease plus one sweep.
    assert!(
        takeover <= LEASE + SWEEP + Duration::from_secs(1),
        "takeover took {takeover:?}"
    );

    a.signal("CONT");
    let fenced = eventually(Duration::from_secs(20), || {
        let log = a.log_text();
        async move { log.contains("MessageFenced") || log.contains("MessageLeaseLost") }
    })
    .await;
    // Give A's write (refused or not) time to land before reading the row again.
    let settled = eventually(Duration::from_secs(10), || {
        let log = a.log_text();
        async move { log.contains("MessageFenced") }
    })
    .await;
    a.stop();
    b.stop();
    assert!(
        fenced && settled,
        "A did not log MessageFenced:\n{}",
        a.log_text()
    );
    let after = db.store.outbox_message(id).await.unwrap().unwrap();
    assert_eq!(after, by_b, "A's late write changed nothing");
    assert_eq!(db.store.outbox_log_count(id, "sent").await.unwrap(), 1);
    let copies = sink.messages();
    assert_eq!(copies.len(), 2, "A's copy and B's");
    assert_eq!(
        copies[0].message_id, copies[1].message_id,
        "the duplicate is recognisable"
    );
    figure(
        &format!("fencing::{backend}"),
        format!("takeover {takeover:?} after B was up (lease {LEASE:?} + sweep {SWEEP:?}); A fenced"),
    );
    db.cleanup().await;
});
