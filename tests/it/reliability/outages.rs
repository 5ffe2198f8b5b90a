//! Promise 5: outages of a dependency. The SMTP server down, the push gateway answering 503, and
//! PostgreSQL "restarted" (a TCP proxy between nudge and the shared server drops every
//! connection and refuses new ones for a while — the machine's PostgreSQL itself is never
//! touched). Meanwhile the daemon keeps accepting events, or answers 503 without acknowledging
//! them; `/healthz` says which dependency is failing; once it is back, everything accepted is
//! delivered. Minutes of outage are scaled down to seconds (retry backoff of 1–2 s).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{net::TcpListener, task::JoinHandle};

use super::harness::{
    self, Daemon, DaemonSpec, PUSH, SmtpHooks, SmtpSink, WELCOME, Workdir, assert_consistent, eventually,
    figure, free_port, global, health, post_until_ok, signups,
};
use crate::{
    both_backends,
    delivery::PushSink,
    util::{Backend, TestDb},
};

/// Fast retries, so an outage of seconds behaves like one of minutes with the default policy.
const FAST_RETRY: &str =
    "lease = \"2s\"\nworkers = 4\n[retry]\nattempts = 100\ninitial = \"1s\"\nmax = \"2s\"\n";

fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Waits until every message to `users` is sent.
async fn all_sent(db: &TestDb, users: &[String], within: Duration) -> bool {
    let store = db.store.clone();
    let users: std::collections::HashSet<String> = users.iter().cloned().collect();
    eventually(within, || {
        let (store, users) = (store.clone(), users.clone());
        async move {
            let rows = store.outbox_states().await.unwrap_or_default();
            let mine: Vec<_> = rows.iter().filter(|r| users.contains(&r.user_id)).collect();
            mine.len() == users.len() && mine.iter().all(|r| r.status == "sent")
        }
    })
    .await
}

/// Waits until `/healthz` answers `code` and `check` holds for its body.
async fn health_says(base: &str, code: u16, check: impl Fn(&serde_json::Value) -> bool) -> bool {
    let base = base.to_string();
    let check = &check;
    eventually(Duration::from_secs(30), || {
        let base = base.clone();
        async move {
            health(&base)
                .await
                .is_some_and(|(c, body)| c == code && check(&body))
        }
    })
    .await
}

both_backends!(smtp_down_then_back, |db: TestDb| async move {
    let work = Workdir::new(&[("welcome.yaml", WELCOME), ("_global.yaml", &global(false))]);
    let port = free_port();
    let mut spec = DaemonSpec::new(&work, &db.url);
    spec.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
    spec.toml = FAST_RETRY.into();
    let mut daemon = Daemon::start_ready(&spec).await;
    let down_since = Instant::now();
    let early = users("early", 20);
    post_until_ok(
        &spec.base(),
        "/v1/batch",
        &signups(&early, "signed_up"),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        health_says(&spec.base(), 200, |b| b["status"] == "degraded"
            && b["email"]["status"] == "failing")
        .await,
        "healthz never reported SMTP failing"
    );
    // Still accepting while the server is down.
    let during = users("during", 20);
    post_until_ok(
        &spec.base(),
        "/v1/batch",
        &signups(&during, "signed_up"),
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down_since.elapsed())).await;
    let (sink, _) = SmtpSink::start_on(port, SmtpHooks::default());
    let outage = down_since.elapsed();
    let everyone: Vec<String> = early.iter().chain(&during).cloned().collect();
    let sent = all_sent(&db, &everyone, Duration::from_secs(60)).await;
    let recovered = health_says(&spec.base(), 200, |b| {
        b["status"] == "ok" && b["email"]["status"] == "ok"
    })
    .await;
    daemon.stop();
    assert!(
        sent,
        "not everything was delivered after the outage:\n{}",
        daemon.log_text()
    );
    assert!(recovered, "healthz did not recover");
    let mut to: Vec<String> = sink.messages().into_iter().map(|m| m.to).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), everyone.len(), "every user got their message");
    assert_consistent(&db.store, "after the SMTP outage").await;
    figure(
        &format!("outages::smtp::{}", db.url.split(':').next().unwrap_or("db")),
        format!(
            "SMTP down {outage:?}: {} messages accepted, all delivered after",
            everyone.len()
        ),
    );
    db.cleanup().await;
});

both_backends!(push_gateway_503_then_back, |db: TestDb| async move {
    let work = Workdir::new(&[("comeback.yaml", PUSH), ("_global.yaml", &global(false))]);
    let (sink, url) = PushSink::start(&[503; 12]).await;
    let mut spec = DaemonSpec::new(&work, &db.url);
    spec.push_url = Some(url);
    spec.toml = FAST_RETRY.into();
    let mut daemon = Daemon::start_ready(&spec).await;
    let who = users("p", 5);
    post_until_ok(
        &spec.base(),
        "/v1/batch",
        &signups(&who, "app_opened"),
        Duration::from_secs(30),
    )
    .await;
    let failing = health_says(&spec.base(), 200, |b| {
        b["status"] == "degraded" && b["push"]["status"] == "failing"
    })
    .await;
    let sent = all_sent(&db, &who, Duration::from_secs(60)).await;
    let recovered = health_says(&spec.base(), 200, |b| b["push"]["status"] == "ok").await;
    daemon.stop();
    assert!(failing, "healthz never reported the push gateway failing");
    assert!(sent, "not every push was delivered:\n{}", daemon.log_text());
    assert!(recovered, "healthz did not recover");
    let mut delivered = sink.delivered();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), who.len());
    assert_consistent(&db.store, "after the push outage").await;
    db.cleanup().await;
});

/// A TCP proxy that can drop every connection and refuse new ones, like a restarting server.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Proxy { port, up, conns }
    }

    /// Drops every open connection and refuses new ones.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_during_a_run() {
    let Some(db) = TestDb::new(Backend::Postgres, "outages::postgres_restart_during_a_run").await else {
        return;
    };
    // postgres://user@host:port/name → the proxy in place of host:port.
    let (head, rest) = db.url.split_once('@').expect("user@host in the URL");
    let (authority, name) = rest.split_once('/').expect("a database name");
    let target: SocketAddr = tokio::net::lookup_host(authority).await.unwrap().next().unwrap();
    let proxy = Proxy::start(target).await;
    let proxied = format!("{head}@127.0.0.1:{}/{name}", proxy.port);

    let work = Workdir::new(&[("welcome.yaml", WELCOME), ("_global.yaml", &global(false))]);
    let (sink, smtp) = SmtpSink::start(SmtpHooks::default());
    let mut spec = DaemonSpec::new(&work, &proxied);
    spec.smtp_url = Some(smtp);
    spec.toml = FAST_RETRY.into();
    let mut daemon = Daemon::start_ready(&spec).await;
    let before = users("before", 10);
    post_until_ok(
        &spec.base(),
        "/v1/batch",
        &signups(&before, "signed_up"),
        Duration::from_secs(30),
    )
    .await;
    assert!(all_sent(&db, &before, Duration::from_secs(30)).await);

    proxy.down();
    let down_at = Instant::now();
    assert!(
        health_says(&spec.base(), 503, |b| b["database"] == "unreachable").await,
        "healthz did not report the database down"
    );
    // Nothing is acknowledged that was not committed.
    let during = users("during", 10);
    let answer = harness::post(
        &harness::client(),
        &spec.base(),
        "/v1/batch",
        &signups(&during, "signed_up"),
    )
    .await;
    assert_ne!(answer, Some(200), "a 200 while the database is down");
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(down_at.elapsed())).await;
    proxy.up();
    let outage = down_at.elapsed();

    // The client sends again what was not acknowledged; and new events flow.
    post_until_ok(
        &spec.base(),
        "/v1/batch",
        &signups(&during, "signed_up"),
        Duration::from_secs(60),
    )
    .await;
    let after = users("after", 10);
    post_until_ok(
        &spec.base(),
        "/v1/batch",
        &signups(&after, "signed_up"),
        Duration::from_secs(60),
    )
    .await;
    let everyone: Vec<String> = before.iter().chain(&during).chain(&after).cloned().collect();
    let sent = all_sent(&db, &everyone, Duration::from_secs(60)).await;
    let healthy = health_says(&spec.base(), 200, |b| b["database"] == "ok").await;
    daemon.stop();
    assert!(
        sent,
        "not everything was delivered after the restart:\n{}",
        daemon.log_text()
    );
    assert!(healthy, "healthz did not recover");
    let mut to: Vec<String> = sink.messages().into_iter().map(|m| m.to).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), everyone.len());
    assert_consistent(&db.store, "after the PostgreSQL restart").await;
    figure(
        "outages::postgres_restart",
        format!(
            "database unreachable {outage:?}: 503s meanwhile, {} users all delivered",
            everyone.len()
        ),
    );
    db.cleanup().await;
}
