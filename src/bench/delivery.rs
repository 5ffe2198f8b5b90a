//! Stage 4, delivery: messages/s from the outbox through lettre's pooled SMTP transport to
//! Postfix's `smtp-sink` on loopback, vs Postfix's own `smtp-source` blasting the same sink with
//! the same message size and concurrency; and pushes/s to a local HTTP sink, vs plain HTTP
//! requests of the same body and concurrency to the same sink.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Ctx, StageResult};
use crate::{
    clock::{SharedClock, SystemClock},
    delivery::{Delivery, DeliveryConfig},
    outbox::{EmailPayload, Payload, PushPayload},
    store::{NewMessage, Store},
};

/// Concurrent sessions / requests on both sides.
const CONCURRENCY: usize = 20;
/// Message size, as `smtp-source -l`.
const MESSAGE_BYTES: usize = 2_048;

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<StageResult>> {
    Ok(vec![smtp(ctx).await?, push(ctx).await?])
}

fn postfix_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `smtp-sink` on a loopback port until dropped.
struct Sink {
    child: std::process::Child,
    port: u16,
}

impl Sink {
    fn start(binary: &PathBuf) -> anyhow::Result<Sink> {
        let port = free_port()?;
        let mut cmd = Command::new(binary);
        if running_as_root() {
            // smtp-sink refuses to run as root without a user to switch to.
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args(["-c", &format!("127.0.0.1:{port}"), "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let sink = Sink { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(sink);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("smtp-sink did not start listening on 127.0.0.1:{port}")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn smtp(ctx: &Ctx) -> anyhow::Result<StageResult> {
    let n = ctx.sizes.delivery_messages;
    let result = StageResult::new(
        "delivery_smtp",
        "messages/s",
        "Postfix smtp-source to the same smtp-sink, same size and concurrency",
        "ratio ≥ 0.8",
    );
    let (Some(sink_bin), Some(source_bin)) = (postfix_tool("smtp-sink"), postfix_tool("smtp-source")) else {
        return Ok(result.skip(
            "Postfix's smtp-sink/smtp-source not found: `apt-get install postfix` (Debian ships both in /usr/sbin)",
        ));
    };
    let sink = Sink::start(&sink_bin)?;
    let dir = ctx.folder("delivery-smtp")?;
    let (store, _) = super::sqlite_store(&dir).await?;
    let now = Utc::now();
    let text = "x".repeat(MESSAGE_BYTES - 400);
    let messages: Vec<NewMessage> = (0..n)
        .map(|i| NewMessage {
            idempotency_key: format!("bench-email-{i}"),
            campaign_id: "bench".into(),
            user_id: format!("user-{i}"),
            priority: 0,
            recipient: format!("user{i}@example.com"),
            payload: Payload::Email(EmailPayload {
                subject: "Your week at Acme".into(),
                html: None,
                text: text.clone(),
                unsubscribe_url: format!("http://127.0.0.1:8080/u/token-{i}"),
            }),
            due_at: now,
        })
        .collect();
    enqueue(&store, &messages).await?;
    let config = DeliveryConfig {
        smtp_url: Some(format!("smtp://127.0.0.1:{}", sink.port)),
        outbox_dir: dir.join("outbox"),
        ..bench_config()
    };
    let seconds = deliver(&store, config, n).await?;
    store.close().await;
    let nudge = n as f64 / seconds;

    // Reference: smtp-source, one message per connection (its fastest mode on loopback).
    let started = Instant::now();
    let status = tokio::process::Command::new(&source_bin)
        .args([
            "-s",
            &CONCURRENCY.to_string(),
            "-m",
            &n.to_string(),
            "-l",
            &MESSAGE_BYTES.to_string(),
            &format!("127.0.0.1:{}", sink.port),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await?;
    let reference_seconds = started.elapsed().as_secs_f64();
    drop(sink);
    if !status.status.success() {
        anyhow::bail!(
            "smtp-source failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    let r = result
        .throughput(nudge, Some(n as f64 / reference_seconds))
        .note(format!(
            "{n} messages of ~{MESSAGE_BYTES} B, {CONCURRENCY} workers / sessions; nudge {seconds:.1} s, smtp-source {reference_seconds:.1} s"
        ));
    let met = r.ratio.is_some_and(|x| x >= 0.8);
    Ok(r.met(met))
}

async fn push(ctx: &Ctx) -> anyhow::Result<StageResult> {
    let n = ctx.sizes.delivery_messages;
    let (url, received) = super::latency::arrival_sink().await?;
    let dir = ctx.folder("delivery-push")?;
    let (store, _) = super::sqlite_store(&dir).await?;
    let now = Utc::now();
    let payload = |i: usize| PushPayload {
        title: "Your cart".into(),
        body: "2 items are waiting".into(),
        data: BTreeMap::from([("nudge_message_id".to_string(), format!("bench-push-{i}"))]),
    };
    let messages: Vec<NewMessage> = (0..n)
        .map(|i| NewMessage {
            idempotency_key: format!("bench-push-{i}"),
            campaign_id: "bench".into(),
            user_id: format!("user-{i}"),
            priority: 0,
            recipient: format!("device-{i}"),
            payload: Payload::Push(payload(i)),
            due_at: now,
        })
        .collect();
    enqueue(&store, &messages).await?;
    let config = DeliveryConfig {
        push_url: Some(url.clone()),
        outbox_dir: dir.join("outbox"),
        ..bench_config()
    };
    let seconds = deliver(&store, config, n).await?;
    store.close().await;
    let seen = received.lock().expect("not poisoned").len();
    anyhow::ensure!(seen >= n, "the push sink saw {seen} of {n} pushes");

    // Reference: the same request bodies, same concurrency, a plain HTTP client.
    let bodies: Vec<String> = (0..n)
        .map(|i| crate::delivery::push::fcm_message(&format!("device-{i}"), &payload(i)).to_string())
        .collect();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONCURRENCY {
        let mine: Vec<String> = bodies.iter().skip(c).step_by(CONCURRENCY).cloned().collect();
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            for body in mine {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "push sink answered {}", r.status());
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let reference_seconds = started.elapsed().as_secs_f64();
    Ok(StageResult::new(
        "delivery_push",
        "pushes/s",
        "the same request bodies from a plain reqwest client to the same sink, same concurrency",
        "(no goal set)",
    )
    .throughput(n as f64 / seconds, Some(n as f64 / reference_seconds))
    .note(format!(
        "{n} pushes, {CONCURRENCY} workers / tasks, local axum sink"
    )))
}

fn bench_config() -> DeliveryConfig {
    DeliveryConfig {
        node_id: "bench".into(),
        workers: CONCURRENCY,
        batch: 50,
        lease: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(30),
        poll: Duration::from_millis(20),
        email_from: "Acme <hello@acme.example>".into(),
        message_id_domain: "acme.example".into(),
        ..DeliveryConfig::default()
    }
}

async fn enqueue(store: &Store, messages: &[NewMessage]) -> anyhow::Result<()> {
    let now = Utc::now();
    for m in messages {
        store.enqueue_message(m, now).await?;
    }
    Ok(())
}

/// Runs the delivery workers until all `n` messages are finished; seconds.
async fn deliver(store: &Store, config: DeliveryConfig, n: usize) -> anyhow::Result<f64> {
    let rules = crate::rules::RulesHandle::new(crate::rules::RuleSet::empty(PathBuf::new()));
    let clock: SharedClock = Arc::new(SystemClock);
    let delivery = Arc::new(Delivery::new(
        store.clone(),
        Arc::new(rules),
        clock,
        Arc::new(Notify::new()),
        config,
    )?);
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let workers = tokio::spawn(delivery.clone().run(cancel.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if store.bench_finished().await? as usize >= n {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "delivery did not finish in 10 minutes");
    }
    let seconds = started.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = workers.await;
    let sent = store.count_rows(crate::store::Table::Sends).await?;
    anyhow::ensure!(
        sent as usize == n,
        "{sent} of {n} messages sent (the rest failed)"
    );
    Ok(seconds)
}
