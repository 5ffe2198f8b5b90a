//! Promise 2: `kill -9` in the middle of sending loses nothing, and the duplicates it causes are
//! bounded and detectable. 1,000 messages go to a real SMTP server on loopback through several
//! workers; the daemon is SIGKILLed when a random number of them has arrived, restarted, and left
//! to finish. Every message must arrive at least once; the extra copies may not outnumber the
//! claims that were in flight at the kill; every copy carries the Message-ID fixed (and stored)
//! when the decision created the message.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use rand::Rng;

use super::harness::{
    self, Daemon, DaemonSpec, SmtpHooks, SmtpSink, WELCOME, Workdir, assert_consistent, eventually, figure,
    global, post_until_ok, signups,
};
use crate::{both_backends, util::TestDb};

/// What one run measured.
#[derive(Debug, Default, Clone, Copy)]
struct RunFigures {
    messages: usize,
    received: usize,
    lost: usize,
    duplicates: usize,
    in_flight_at_kill: usize,
    /// Messages the SMTP server had accepted when the kill landed.
    sent_before_kill: usize,
}

async fn one_run(db: &TestDb, run: usize, messages: usize) -> RunFigures {
    let work = Workdir::new(&[("welcome.yaml", WELCOME), ("_global.yaml", &global(false))]);
    let (sink, smtp) = SmtpSink::start(SmtpHooks::default());
    let mut spec = DaemonSpec::new(&work, &db.url);
    spec.smtp_url = Some(smtp);
    // A 1 s attempt timeout (half of a 2 s lease) is too tight on a loaded 2-core machine: a
    // slow send times out, is retried after the default 30 s, and may arrive twice for a reason
    // other than the kill.
    spec.toml =
        "lease = \"4s\"\nattempt_timeout = \"3s\"\nworkers = 4\n[retry]\ninitial = \"1s\"\nmax = \"2s\"\n"
            .into();
    let users: Vec<String> = (0..messages).map(|i| format!("m{run}-{i}")).collect();
    let mut daemon = Daemon::start_ready(&spec).await;
    for chunk in users.chunks(250) {
        post_until_ok(
            &spec.base(),
            "/v1/batch",
            &signups(chunk, "signed_up"),
            Duration::from_secs(60),
        )
        .await;
    }
    let kill_at = rand::thread_rng().gen_range(1..messages * 3 / 4);
    let reached = eventually(Duration::from_secs(120), || {
        let n = sink.count();
        async move { n >= kill_at }
    })
    .await;
    assert!(reached, "run {run}: only {} messages arrived", sink.count());
    daemon.kill9();
    let sent_before_kill = sink.count();
    // Claims in flight: leased and not finished when the process died.
    let states = db.store.outbox_states().await.unwrap();
    let in_flight = states
        .iter()
        .filter(|r| r.status == "pending" && r.lease_owner.is_some())
        .count();
    assert_consistent(&db.store, &format!("run {run} right after the kill")).await;

    let mut daemon = Daemon::start_ready(&spec).await;
    let store = db.store.clone();
    let users_done: HashSet<String> = users.iter().cloned().collect();
    let finished = eventually(Duration::from_secs(180), || {
        let store = store.clone();
        let users = users_done.clone();
        async move {
            let rows = store.outbox_states().await.unwrap();
            let mine: Vec<_> = rows.iter().filter(|r| users.contains(&r.user_id)).collect();
            mine.len() == users.len() && mine.iter().all(|r| r.status == "sent")
        }
    })
    .await;
    daemon.stop();
    assert!(
        finished,
        "run {run}: not everything was sent:\n{}",
        daemon.log_text()
    );
    assert_consistent(&db.store, &format!("run {run} after the restart")).await;

    // The Message-ID of each user's message, as stored when the decision created it.
    let users: HashSet<String> = users.into_iter().collect();
    let rows = db.store.outbox_states().await.unwrap();
    let stored: HashMap<String, String> = rows
        .iter()
        .filter(|r| users.contains(&r.user_id))
        .map(|r| (r.recipient.clone(), format!("<{}@nudge.test>", r.idempotency_key)))
        .collect();
    for r in rows.iter().filter(|r| users.contains(&r.user_id)) {
        // Derived from the entry (campaign and user), so no send-time state could change it.
        let expected = nudge::engine::idempotency_key(&format!("welcome|{}", r.user_id));
        assert_eq!(r.idempotency_key, expected, "the key is fixed by the entry");
    }
    let received = sink.messages();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for m in &received {
        let want = stored
            .get(&m.to)
            .unwrap_or_else(|| panic!("run {run}: a message nobody decided: {m:?}"));
        assert_eq!(
            &m.message_id, want,
            "run {run}: every copy carries its stored Message-ID"
        );
        *copies.entry(m.message_id.as_str()).or_default() += 1;
    }
    let lost = stored
        .values()
        .filter(|id| !copies.contains_key(id.as_str()))
        .count();
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let figures = RunFigures {
        messages,
        received: received.len(),
        lost,
        duplicates,
        in_flight_at_kill: in_flight,
        sent_before_kill,
    };
    assert_eq!(lost, 0, "run {run}: {figures:?}");
    assert!(
        duplicates <= in_flight,
        "run {run}: more duplicates than claims in flight at the kill: {figures:?}"
    );
    figures
}

async fn runs(db: TestDb, name: &str) {
    let (runs, messages) = (harness::runs(2, 20), 1000);
    let mut total = RunFigures::default();
    for run in 0..runs {
        let f = one_run(&db, run, messages).await;
        println!("{name} run {run}: {f:?}");
        total.messages += f.messages;
        total.received += f.received;
        total.lost += f.lost;
        total.duplicates += f.duplicates;
        total.in_flight_at_kill += f.in_flight_at_kill;
        total.sent_before_kill += f.sent_before_kill;
    }
    figure(
        name,
        format!(
            "{runs} runs, {} messages, {} received ({} before the kills), lost {}, duplicates {} \
             (claims in flight at the kills: {})",
            total.messages,
            total.received,
            total.sent_before_kill,
            total.lost,
            total.duplicates,
            total.in_flight_at_kill
        ),
    );
    db.cleanup().await;
}

both_backends!(kill_mid_send_loses_nothing, |db: TestDb| async move {
    let name = format!("mid_send::{}", db.url.split(':').next().unwrap_or("db"));
    runs(db, &name).await;
});
