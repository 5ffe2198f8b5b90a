//! Stage 1, ingest: events/s through `POST /v1/batch` (1,000-event batches, 4 concurrent clients on
//! loopback, the bench's rules loaded so each `cart_updated` enters a campaign) vs the same rows
//! written straight into `events` (batched multi-row INSERTs on SQLite, `COPY` on PostgreSQL),
//! with the same batches and concurrency, in a fresh database of its own.

use std::time::Instant;

use chrono::Utc;
use serde_json::{Value, json};

use super::{Ctx, StageResult};
use crate::store::{BenchEvent, Store};

const BATCH: usize = 1_000;
const CLIENTS: usize = 4;
const GOAL: &str = "ratio ≥ 0.5";

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<StageResult>> {
    let mut out = Vec::new();
    let dir = ctx.folder("ingest")?;
    std::fs::create_dir_all(dir.join("nudge"))?;
    std::fs::create_dir_all(dir.join("raw"))?;
    let (store, _) = super::sqlite_store(&dir.join("nudge")).await?;
    let (raw, _) = super::sqlite_store(&dir.join("raw")).await?;
    let (nudge, reference) = measure(ctx, &dir, store, raw).await?;
    out.push(
        StageResult::new(
            "ingest_sqlite",
            "events/s",
            "batched multi-row INSERT of the same rows into `events`, same batches and concurrency",
            GOAL,
        )
        .throughput(nudge, Some(reference))
        .note(format!(
            "{} events, {CLIENTS} clients × {BATCH}-event batches, synchronous=FULL",
            ctx.sizes.ingest_events
        )),
    );
    if let Some(last) = out.last_mut() {
        last.met = last.ratio.map(|r| r >= 0.5);
    }

    let pg = StageResult::new(
        "ingest_postgres",
        "events/s",
        "COPY of the same rows into `events`, same batches and concurrency",
        GOAL,
    );
    match &ctx.postgres {
        None => out.push(pg.skip("no --postgres URL (or NUDGE_BENCH_POSTGRES_URL)")),
        Some(admin) => {
            let (store, url) = super::postgres_store(admin).await?;
            let (raw, raw_url) = super::postgres_store(admin).await?;
            let measured = measure(ctx, &dir, store.clone(), raw.clone()).await;
            store.close().await;
            raw.close().await;
            super::drop_pg(admin, &url).await;
            super::drop_pg(admin, &raw_url).await;
            let (nudge, reference) = measured?;
            let r = pg.throughput(nudge, Some(reference)).note(format!(
                "{} events, {CLIENTS} clients × {BATCH}-event batches",
                ctx.sizes.ingest_events
            ));
            let met = r.ratio.map(|x| x >= 0.5);
            out.push(StageResult { met, ..r });
        }
    }
    Ok(out)
}

/// (nudge events/s, reference rows/s).
async fn measure(ctx: &Ctx, dir: &std::path::Path, store: Store, raw: Store) -> anyhow::Result<(f64, f64)> {
    let rules_dir = dir.join(format!("rules-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&rules_dir)?;
    let engine = super::engine(&store, super::write_rules(&rules_dir)?).await?;
    let base = super::serve_http(engine).await?;
    let batches = ctx.sizes.ingest_events.div_ceil(BATCH);

    // nudge: bodies built before the clock starts, as a client library would have them ready.
    let bodies: Vec<Vec<u8>> = (0..batches).map(|b| segment_batch(b, "n")).collect();
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/batch");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mine: Vec<Vec<u8>> = bodies.iter().skip(c).step_by(CLIENTS).cloned().collect();
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            for body in mine {
                super::post_batch(&client, &url, body).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let nudge = (batches * BATCH) as f64 / started.elapsed().as_secs_f64();
    let stored = store.count_rows(crate::store::Table::Events).await?;
    if stored as usize != batches * BATCH {
        anyhow::bail!("{stored} events stored of {} acknowledged", batches * BATCH);
    }
    store.close().await;

    // Reference: the same rows, same batches, same concurrency.
    let rows: Vec<Vec<BenchEvent>> = (0..batches).map(|b| raw_batch(b, "r")).collect();
    let received = Utc::now().timestamp_millis();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mine: Vec<Vec<BenchEvent>> = rows.iter().skip(c).step_by(CLIENTS).cloned().collect();
        let raw = raw.clone();
        tasks.spawn(async move {
            for batch in mine {
                raw.bench_insert_events(&batch, received).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let reference = (batches * BATCH) as f64 / started.elapsed().as_secs_f64();
    raw.close().await;
    Ok((nudge, reference))
}

fn user(b: usize, i: usize) -> String {
    format!("user-{}", (b * BATCH + i) % 50_000)
}

fn properties(i: usize) -> Value {
    json!({"cart_value": 20 + (i % 80), "product_name": "Lamp", "item_count": 1 + i % 4})
}

/// One Segment batch of `cart_updated` events for 1,000 distinct users.
fn segment_batch(b: usize, tag: &str) -> Vec<u8> {
    let now = Utc::now().to_rfc3339();
    let batch: Vec<Value> = (0..BATCH)
        .map(|i| {
            json!({
                "type": "track",
                "userId": user(b, i),
                "event": "cart_updated",
                "messageId": format!("bench-{tag}-{b}-{i}"),
                "properties": properties(i),
                "timestamp": now,
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "batch": batch })).expect("JSON values serialise")
}

fn raw_batch(b: usize, tag: &str) -> Vec<BenchEvent> {
    let ts = Utc::now().timestamp_millis();
    (0..BATCH)
        .map(|i| BenchEvent {
            message_id: format!("bench-{tag}-{b}-{i}"),
            user_id: user(b, i),
            name: "cart_updated".into(),
            properties: properties(i).to_string(),
            ts,
        })
        .collect()
}
