//! Promise 6: a 200 is a commit. Clients send track calls (each with its own messageId) and
//! record every 200 while the daemon is SIGKILLed at random moments and restarted; afterwards
//! every acknowledged event is in the database. Ingestion answers only after its transaction
//! committed, and SQLite runs with `synchronous=FULL` (see `Store::connect_with`).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use serde_json::json;

use super::harness::{self, Daemon, DaemonSpec, Workdir, figure, global};
use crate::{both_backends, util::TestDb};

/// Concurrent clients, so some requests are always in flight when the kill lands.
const CLIENTS: usize = 4;

async fn acknowledged_events_survive(db: TestDb, name: &str) {
    let requests = if harness::full() { 10_000 } else { 2_000 };
    let work = Workdir::new(&[("_global.yaml", &global(false))]);
    let spec = DaemonSpec::new(&work, &db.url);
    let daemon = Arc::new(Mutex::new(Daemon::start_ready(&spec).await));
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (next, acked, refused, base) = (next.clone(), acked.clone(), refused.clone(), spec.base());
        clients.spawn(async move {
            let client = harness::client();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= requests {
                    return;
                }
                let id = format!("ack-{i}");
                let body = json!({"userId": format!("u{}", i % 100), "event": "ping", "messageId": id});
                // Sent until acknowledged: a request cut by a kill is retried (a resend is a
                // no-op), but only a 200 counts.
                loop {
                    match harness::post(&client, &base, "/v1/track", &body).await {
                        Some(200) => {
                            acked.lock().unwrap().push(id.clone());
                            break;
                        }
                        _ => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        });
    }
    let killer = {
        let (daemon, done, spec) = (daemon.clone(), done.clone(), spec.clone());
        tokio::spawn(async move {
            let mut kills = 0;
            while !done.load(Ordering::SeqCst) {
                let pause = rand::thread_rng().gen_range(100..700);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if done.load(Ordering::SeqCst) {
                    break;
                }
                daemon.lock().unwrap().kill9();
                kills += 1;
                let mut fresh = Daemon::start(&spec);
                fresh.wait_ready(Duration::from_secs(30)).await;
                *daemon.lock().unwrap() = fresh;
            }
            kills
        })
    };
    while clients.join_next().await.is_some() {}
    done.store(true, Ordering::SeqCst);
    let kills = killer.await.unwrap();
    daemon.lock().unwrap().stop();

    let stored: HashSet<String> = db.store.event_message_ids().await.unwrap().into_iter().collect();
    let acked = acked.lock().unwrap().clone();
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(kills >= 1, "the daemon was never killed");
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(acked.len(), requests);
    figure(
        name,
        format!(
            "{requests} requests acknowledged across {kills} SIGKILLs ({} attempts cut or refused and retried), \
             missing 0",
            refused.load(Ordering::SeqCst)
        ),
    );
    db.cleanup().await;
}

both_backends!(
    every_acknowledged_event_survives_kill_9,
    |db: TestDb| async move {
        let name = format!("acks::{}", db.url.split(':').next().unwrap_or("db"));
        acknowledged_events_survive(db, &name).await;
    }
);
