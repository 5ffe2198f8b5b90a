//! Stage 5, latency: from an event sent to nudge to its immediate push arriving at a local push
//! gateway, at a steady rate (batches of 20 every 10 ms), through the whole daemon in one process:
//! HTTP ingestion, the decision loop, the delivery workers. This includes the send itself, so it
//! bounds "accepted → claimed for delivery" from above. The reference is the HTTP round trip of
//! the same requests (sent → 200, the event durable): the part no message can beat.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Ctx, StageResult, percentile};
use crate::{
    delivery::{Delivery, DeliveryConfig},
    engine::Engine,
};

const PER_BATCH: u64 = 20;
const GOAL: &str = "p99 ≤ 50 ms on SQLite";

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<StageResult>> {
    let dir = ctx.folder("latency")?;
    std::fs::create_dir_all(dir.join("rules"))?;
    let (store, _) = super::sqlite_store(&dir).await?;
    let engine = super::engine(&store, super::write_rules(&dir.join("rules"))?).await?;
    let base = super::serve_http(engine.clone()).await?;
    let (push_url, arrivals) = arrival_sink().await?;
    let delivery = Arc::new(
        Delivery::new(
            store.clone(),
            engine.rules.clone(),
            engine.clock.clone(),
            engine.outbox_ready.clone(),
            DeliveryConfig {
                node_id: "bench".into(),
                workers: 4,
                push_url: Some(push_url),
                outbox_dir: dir.join("outbox"),
                lease: Duration::from_secs(60),
                attempt_timeout: Duration::from_secs(10),
                ..DeliveryConfig::default()
            },
        )?
        .with_health(engine.transport_health.clone()),
    );
    let cancel = CancellationToken::new();
    let decisions = tokio::spawn(Engine::run(engine.clone(), cancel.clone()));
    let workers = tokio::spawn(delivery.run(cancel.clone()));

    let rate = ctx.sizes.latency_rate;
    let seconds = ctx.sizes.latency_seconds;
    let batches = rate * seconds / PER_BATCH;
    let every = Duration::from_secs_f64(PER_BATCH as f64 / rate as f64);
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/batch");
    let origin = Instant::now();
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let round_trips: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = tokio::task::JoinSet::new();
    for b in 0..batches {
        tick.tick().await;
        let body = batch(b);
        let (client, url, sent_at, round_trips) =
            (client.clone(), url.clone(), sent_at.clone(), round_trips.clone());
        requests.spawn(async move {
            let start = Instant::now();
            {
                let mut s = sent_at.lock().expect("not poisoned");
                for i in 0..PER_BATCH {
                    s.insert(b * PER_BATCH + i, start);
                }
            }
            super::post_batch(&client, &url, body).await?;
            round_trips
                .lock()
                .expect("not poisoned")
                .push(start.elapsed().as_secs_f64() * 1_000.0);
            anyhow::Ok(())
        });
        while let Some(done) = requests.try_join_next() {
            done??;
        }
    }
    while let Some(done) = requests.join_next().await {
        done??;
    }
    let offered = batches * PER_BATCH;
    let achieved_rate = offered as f64 / origin.elapsed().as_secs_f64();
    // Users in the global control group (5%) get no message; wait for the rest to arrive.
    let expected = (offered as f64 * 0.90) as usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrivals.lock().expect("not poisoned").len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    let _ = decisions.await;
    let _ = workers.await;
    store.close().await;

    let sent_at = sent_at.lock().expect("not poisoned");
    let mut latencies: Vec<f64> = arrivals
        .lock()
        .expect("not poisoned")
        .iter()
        .filter_map(|(seq, at)| Some(at.duration_since(*sent_at.get(seq)?).as_secs_f64() * 1_000.0))
        .collect();
    anyhow::ensure!(!latencies.is_empty(), "no push arrived");
    latencies.sort_by(f64::total_cmp);
    let mut trips = round_trips.lock().expect("not poisoned").clone();
    trips.sort_by(f64::total_cmp);
    let note = format!(
        "{offered} events at {achieved_rate:.0}/s for {seconds} s ({rate}/s asked), {} pushes arrived; \
         engine + 4 delivery workers + HTTP in one process, SQLite",
        latencies.len()
    );
    let p50 = StageResult::new(
        "latency_p50",
        "ms",
        "HTTP round trip of the same requests (sent → 200, event durable), p50",
        "—",
    )
    .cost(percentile(&latencies, 50.0), Some(percentile(&trips, 50.0)))
    .note(note.clone());
    let p99_value = percentile(&latencies, 99.0);
    let p99 = StageResult::new(
        "latency_p99",
        "ms",
        "HTTP round trip of the same requests (sent → 200, event durable), p99",
        GOAL,
    )
    .cost(p99_value, Some(percentile(&trips, 99.0)))
    .note(note)
    .met(p99_value <= 50.0);
    Ok(vec![p50, p99])
}

/// `PER_BATCH` `bench_ping` events from new users with a device token.
fn batch(b: u64) -> Vec<u8> {
    let now = Utc::now().to_rfc3339();
    let events: Vec<Value> = (0..PER_BATCH)
        .map(|i| {
            let seq = b * PER_BATCH + i;
            json!({
                "type": "track",
                "userId": format!("lat-{seq}"),
                "event": "bench_ping",
                "messageId": format!("lat-{seq}"),
                "properties": {"seq": seq},
                "context": {"device": {"token": format!("device-{seq}")}},
                "timestamp": now,
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "batch": events })).expect("JSON values serialise")
}

pub(super) type Arrivals = Arc<Mutex<Vec<(u64, Instant)>>>;

/// A push gateway on loopback that answers 200 and records each push's arrival (with its body
/// as a number when it is one: the latency stage's `seq`; 0 otherwise).
pub(super) async fn arrival_sink() -> anyhow::Result<(String, Arrivals)> {
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    let app = axum::Router::new().route(
        "/send",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                let at = Instant::now();
                let seq = body["message"]["notification"]["body"]
                    .as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                seen.lock().expect("not poisoned").push((seq, at));
                axum::Json(json!({"name": "ok"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/send"), arrivals))
}
