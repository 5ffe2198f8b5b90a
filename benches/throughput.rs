//! Throughput benchmarks, each beside a reference measured in the same run:
//! - `rules/cel`: 20 campaigns × 3 CEL conditions evaluated for one user, vs the same conditions
//!   as plain Rust closures (`rules/native`); both from `nudge::bench::rules`, which `nudge bench`
//!   measures over 1,000 users.
//! - `ingest/http_batch`: events/s through `POST /v1/batch` (1,000-event batches) into SQLite, vs
//!   `ingest/raw_insert`: the same rows inserted with sqlx in one transaction.
//!
//! Run: `cargo bench --bench throughput`. Figures go into BENCHMARKS.md.

use std::{hint::black_box, sync::Arc};

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nudge::{
    engine::conditions::{self, EvalInput, Verdict},
    store::UserHistory,
};
use serde_json::{Value, json};

fn bench_rules(c: &mut Criterion) {
    let campaigns = nudge::bench::rules::conditions().expect("valid CEL");
    let user = json!({"id": "u1", "traits": {"plan": "pro", "country": "DE"}});
    let event = json!({"name": "cart_updated", "properties": {"cart_value": 42.5}});
    let predict = json!({"propensity": 0.2});
    let propensities = Arc::new(std::collections::HashMap::new());
    let mut history = UserHistory::default();
    history.counts.insert(("session_started".into(), "14d".into()), 3);
    let now = Utc::now();

    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(20 * 3));
    group.bench_function("cel", |b| {
        b.iter(|| {
            let input = EvalInput {
                user: &user,
                event: &event,
                now,
                history: &history,
                predict: &predict,
                propensities: &propensities,
            };
            let passed = campaigns
                .iter()
                .filter(|conds| matches!(conditions::all_hold(conds, &input), Verdict::Pass(_)))
                .count();
            black_box(passed)
        })
    });
    let native = nudge::bench::rules::closures();
    group.bench_function("native", |b| {
        b.iter(|| {
            let passed = native
                .iter()
                .filter(|conds| conds.iter().all(|f| f(&user, &event, &history)))
                .count();
            black_box(passed)
        })
    });
    group.finish();
}

/// A 1,000-event Segment batch for 1,000 distinct users, with fresh message ids.
fn batch_body(round: u64) -> Vec<u8> {
    let batch: Vec<Value> = (0..1_000)
        .map(|i| {
            json!({
                "type": "track",
                "userId": format!("user-{}", (round * 1_000 + i) % 50_000),
                "event": "cart_updated",
                "messageId": format!("bench-{round}-{i}"),
                "properties": {"cart_value": 42.5, "product_name": "Lamp", "item_count": 2},
                "timestamp": Utc::now().to_rfc3339(),
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "batch": batch })).expect("serialises")
}

fn bench_ingest(c: &mut Criterion) {
    nudge::delivery::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (base, store) = rt.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = nudge::store::Store::connect(&url).await.expect("sqlite");
        store.migrate().await.expect("migrate");
        let rules = nudge::rules::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
            .expect("example rules");
        let engine = nudge::engine::Engine::new(
            store.clone(),
            Arc::new(nudge::rules::RulesHandle::new(rules)),
            Arc::new(nudge::clock::SystemClock),
            nudge::tracking::tokens::Signer::new(b"bench"),
            nudge::engine::EngineConfig::default(),
        )
        .await
        .expect("engine");
        let state = nudge::http::AppState {
            engine: Arc::new(engine),
            write_keys: Arc::new(vec![nudge::config::Secret::new("wk")]),
            admin_key: None,
            metrics: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let app =
                nudge::http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).await.expect("serve");
        });
        (format!("http://{addr}/v1/batch"), store)
    });
    let client = reqwest::Client::new();
    let round = std::sync::atomic::AtomicU64::new(0);

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1_000));
    group.sample_size(20);
    group.bench_function("http_batch", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let bodies: Vec<Vec<u8>> = (0..iters)
                .map(|_| batch_body(round.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
                .collect();
            let (client, base) = (client.clone(), base.clone());
            async move {
                let start = std::time::Instant::now();
                for body in bodies {
                    let r = client
                        .post(&base)
                        .basic_auth("wk", Some(""))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .expect("request");
                    assert!(r.status().is_success(), "{}", r.status());
                }
                start.elapsed()
            }
        })
    });
    // Reference: the same rows written straight into the events table, one transaction per batch.
    group.bench_function("raw_insert", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            let first = round.fetch_add(iters, std::sync::atomic::Ordering::Relaxed);
            async move {
                let start = std::time::Instant::now();
                for r in first..first + iters {
                    store.bench_raw_insert(r, 1_000).await.expect("insert");
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_rules, bench_ingest);
criterion_main!(benches);
