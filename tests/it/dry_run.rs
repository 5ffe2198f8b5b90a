//! `dry-run` predicts what `serve` does: the example rules over a stored history, replayed, give the
//! same per-campaign counts as the engine deciding the same events as they arrive.

use std::path::Path;

use chrono::Duration;
use nudge::{cli::replay, events::IncomingEvent, rules};
use serde_json::json;

use crate::util::{self, Backend, TestDb, t};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_match_what_serve_sends() {
    let db = TestDb::new(Backend::Sqlite, "dry_run").await.unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let from = t("2026-01-04T00:00:00Z");
    let to = from + Duration::days(3);
    let (engine, clock) = util::engine(&db.store, rules::RulesHandle::new(util::load(&examples)), from).await;

    // 400 users across time zones and consent; a cart for most, an order for some in time, some too late.
    let zones = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata"];
    let mut timeline = Vec::new();
    for i in 0..400 {
        let user = format!("user-{i:03}");
        let mut traits =
            json!({"plan": if i % 10 == 0 { "enterprise" } else { "pro" }, "timezone": zones[i % 4]});
        if i % 7 != 0 {
            traits["email"] = json!(format!("{user}@example.com"));
        }
        if i % 3 == 0 {
            traits["push_token"] = json!(format!("tok-{i}"));
        }
        timeline.push(IncomingEvent::identify(&user, traits, from));
        let cart_at = from + Duration::minutes(9 * i as i64);
        let cart = json!({"cart_value": (i % 50) as f64 + 0.5, "product_name": "Lamp", "item_count": 2});
        timeline.push(IncomingEvent::track(&user, "cart_updated", cart, cart_at));
        if i % 5 == 0 {
            timeline.push(IncomingEvent::track(
                &user,
                "order_completed",
                json!({"revenue": 30}),
                cart_at + Duration::minutes(45),
            ));
        } else if i % 5 == 1 {
            timeline.push(IncomingEvent::track(
                &user,
                "order_completed",
                json!({"revenue": 30}),
                cart_at + Duration::hours(5),
            ));
        }
        if i % 11 == 0 {
            timeline.push(IncomingEvent::track(
                &user,
                "session_started",
                json!({}),
                cart_at - Duration::days(1),
            ));
        }
    }
    timeline.sort_by_key(|e| e.timestamp);

    // serve: events arrive in time order; the engine decides each entry when it falls due.
    let decide_until = |until| {
        let (engine, clock, store) = (engine.clone(), clock.clone(), db.store.clone());
        async move {
            while let Some(due) = store.next_due_entry().await.unwrap().filter(|d| *d <= until) {
                clock.set(due);
                engine.run_until_idle().await.unwrap();
            }
        }
    };
    for event in timeline.into_iter().filter(|e| e.timestamp < to) {
        decide_until(event.timestamp).await;
        clock.set(event.timestamp);
        engine.ingest(&[event]).await.unwrap();
    }
    decide_until(to).await;
    let served = db.store.outbox_messages().await.unwrap();
    assert!(
        served.len() > 100,
        "the scenario sends something: {}",
        served.len()
    );

    // dry-run over the same store and window.
    let report = replay(&db.store, util::load(&examples), from, to, 3)
        .await
        .unwrap();
    let predicted = report.messaged("cart_abandonment");
    let mut actual = std::collections::BTreeMap::<String, i64>::new();
    for (_, channel, _, _) in &served {
        *actual.entry(channel.clone()).or_default() += 1;
    }
    let served_outcomes = db.store.campaign_outcomes(3).await.unwrap();
    assert_eq!(
        predicted,
        actual,
        "dry-run\n{}\nserve\n{:#?}",
        report.to_table(),
        served_outcomes
    );
    let outcome = &report.campaigns["cart_abandonment"];
    assert!(
        outcome
            .skipped
            .keys()
            .any(|r| r.starts_with("unless: order_completed")),
        "{:?}",
        outcome.skipped
    );
    assert!(
        outcome.assignments.iter().any(|(arm, ..)| arm == "holdout"),
        "{:?}",
        outcome.assignments
    );
    assert_eq!(outcome.sample.len(), 3);
    db.cleanup().await;
}
