//! The decision path end to end on a real database: triggers, wait/unless, cron fan-out, restarts,
//! consent, local send times, and two engines sharing one PostgreSQL database.

use std::sync::Arc;

use chrono::Duration;
use nudge::{
    delivery::{Delivery, DeliveryConfig},
    engine::{Engine, cron},
    events::IncomingEvent,
    store::{Store, Table},
};
use serde_json::json;

use crate::{
    both_backends,
    util::{self, TestDb, t},
};

const GLOBAL: &str = "control_group: 0%\ntimezone: UTC\n";

const CART: &str = r#"
campaign: cart_abandonment
name: Cart abandonment
when:
  event: cart_updated
reentry: always
wait: 2h
unless:
  - event: order_completed
if:
  - event.properties.cart_value >= 20
then:
  channels: [email]
  email:
    subject: "Still thinking about {{ event.properties.product_name }}?"
    body: "Hi {{ user.traits.first_name }}, your cart is waiting. Unsubscribe: {{ unsubscribe_url }}"
holdout: 0%
"#;

const DIGEST: &str = r#"
campaign: weekly_digest
name: Weekly digest
when:
  schedule: "0 0 9 * * Mon"
reentry: always
then:
  channels: [email, push]
  email:
    subject: "Your week"
    body: "Hello {{ user.id }}"
  push:
    title: "Your week"
    body: "Open the app"
holdout: 0%
"#;

fn identify(user: &str, traits: serde_json::Value) -> IncomingEvent {
    IncomingEvent::identify(user, traits, t("2026-01-05T08:00:00Z"))
}

async fn outbox_rows(store: &Store) -> Vec<(String, String, String, i64)> {
    store.outbox_messages().await.expect("outbox reads")
}

both_backends!(unless_in_time_cancels_the_message, |db: TestDb| async move {
    let (_dir, rules) = util::rules_dir(&[("_global.yaml", GLOBAL), ("cart.yaml", CART)]);
    let start = t("2026-01-05T10:00:00Z");
    let (engine, clock) = util::engine(&db.store, rules, start).await;
    engine
        .ingest(&[identify("u1", json!({"email": "u1@example.com"}))])
        .await
        .unwrap();
    let cart = IncomingEvent::track("u1", "cart_updated", json!({"cart_value": 30}), start);
    assert_eq!(engine.ingest(&[cart]).await.unwrap().entries, 1);

    clock.advance(Duration::hours(1));
    engine.run_until_idle().await.unwrap();
    assert!(
        outbox_rows(&db.store).await.is_empty(),
        "nothing is due during the wait"
    );
    let order = IncomingEvent::track("u1", "order_completed", json!({}), clock_now(&engine));
    engine.ingest(&[order]).await.unwrap();

    clock.advance(Duration::hours(1));
    assert_eq!(engine.run_until_idle().await.unwrap(), 1);
    assert!(
        outbox_rows(&db.store).await.is_empty(),
        "the order cancelled the reminder"
    );
    let log = db.store.log_entries("u1").await.unwrap();
    assert!(
        log.iter()
            .any(|(kind, detail)| kind == "cancelled" && detail.contains("order_completed")),
        "{log:?}"
    );
    db.cleanup().await;
});

both_backends!(unless_too_late_does_not_cancel, |db: TestDb| async move {
    let (_dir, rules) = util::rules_dir(&[("_global.yaml", GLOBAL), ("cart.yaml", CART)]);
    let start = t("2026-01-05T10:00:00Z");
    let (engine, clock) = util::engine(&db.store, rules, start).await;
    engine
        .ingest(&[identify(
            "u1",
            json!({"email": "u1@example.com", "first_name": "Ada"}),
        )])
        .await
        .unwrap();
    engine
        .ingest(&[IncomingEvent::track(
            "u1",
            "cart_updated",
            json!({"cart_value": 30, "product_name": "Lamp"}),
            start,
        )])
        .await
        .unwrap();
    clock.advance(Duration::hours(2));
    assert_eq!(engine.run_until_idle().await.unwrap(), 1);
    clock.advance(Duration::hours(1));
    engine
        .ingest(&[IncomingEvent::track(
            "u1",
            "order_completed",
            json!({}),
            clock_now(&engine),
        )])
        .await
        .unwrap();
    engine.run_until_idle().await.unwrap();

    let rows = outbox_rows(&db.store).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (user, channel, payload, due) = &rows[0];
    assert_eq!((user.as_str(), channel.as_str()), ("u1", "email"));
    assert!(payload.contains("Still thinking about Lamp?"), "{payload}");
    assert!(payload.contains("Hi Ada"), "{payload}");
    assert_eq!(*due, t("2026-01-05T12:00:00Z").timestamp_millis());
    db.cleanup().await;
});

both_backends!(conditions_and_replayed_triggers, |db: TestDb| async move {
    let (_dir, rules) = util::rules_dir(&[("_global.yaml", GLOBAL), ("cart.yaml", CART)]);
    let start = t("2026-01-05T10:00:00Z");
    let (engine, clock) = util::engine(&db.store, rules, start).await;
    engine
        .ingest(&[identify("u1", json!({"email": "u1@example.com"}))])
        .await
        .unwrap();
    let small = IncomingEvent::track("u1", "cart_updated", json!({"cart_value": 5}), start)
        .with_message_id("m-small");
    let big =
        IncomingEvent::track("u1", "cart_updated", json!({"cart_value": 50}), start).with_message_id("m-big");
    engine.ingest(&[small, big.clone()]).await.unwrap();
    // A client retrying the same messageId is a no-op: no second event, no second entry.
    let again = engine.ingest(&[big]).await.unwrap();
    assert_eq!((again.stored, again.duplicates, again.entries), (0, 1, 0));
    clock.advance(Duration::hours(2));
    assert_eq!(engine.run_until_idle().await.unwrap(), 2);
    assert_eq!(
        outbox_rows(&db.store).await.len(),
        1,
        "only the cart over 20 qualifies"
    );
    let log = db.store.log_entries("u1").await.unwrap();
    assert!(
        log.iter()
            .any(|(k, d)| k == "skipped" && d.contains("cart_value >= 20")),
        "{log:?}"
    );
    db.cleanup().await;
});

// Ingestion writes a batch with a few multi-row statements; the re-entry gap must still see the
// entries the same batch created, and a messageId repeated inside one batch is stored once.
both_backends!(
    reentry_gap_holds_within_and_across_batches,
    |db: TestDb| async move {
        let gapped = CART
            .replace("reentry: always", "reentry: 1d")
            .replace("wait: 2h\n", "");
        let (_dir, rules) = util::rules_dir(&[("_global.yaml", GLOBAL), ("cart.yaml", &gapped)]);
        let start = t("2026-01-05T10:00:00Z");
        let (engine, clock) = util::engine(&db.store, rules, start).await;
        let cart = |user: &str, id: &str, hours: i64| {
            IncomingEvent::track(
                user,
                "cart_updated",
                json!({"cart_value": 50}),
                start + Duration::hours(hours),
            )
            .with_message_id(id)
        };
        clock.advance(Duration::hours(60));
        // Triggers up to a day old count (trigger_max_age), so the batch is stamped near "now".
        let first = engine
            .ingest(&[
                cart("a", "a1", 40),
                cart("a", "a2", 41), // 1 h after a1: inside the gap
                cart("a", "a1", 40), // the same messageId again: a no-op
                cart("b", "b1", 41),
                cart("a", "a3", 59), // 19 h after a1: inside the gap
            ])
            .await
            .unwrap();
        assert_eq!(
            (first.stored, first.duplicates, first.entries),
            (4, 1, 2),
            "{first:?}"
        );
        clock.advance(Duration::hours(25));
        let second = engine
            .ingest(&[cart("a", "a4", 63), cart("a", "a5", 84), cart("b", "b2", 84)])
            .await
            .unwrap();
        // a4: 23 h after a1, still inside; a5: 44 h after a1, enters; b2: 43 h after b1, enters.
        assert_eq!((second.stored, second.entries), (3, 2), "{second:?}");
        assert_eq!(db.store.count_rows(Table::Entries).await.unwrap(), 4);
        assert_eq!(db.store.count_rows(Table::Events).await.unwrap(), 7);
        db.cleanup().await;
    }
);

both_backends!(restart_during_wait_sends_once, |db: TestDb| async move {
    let files = [("_global.yaml", GLOBAL), ("cart.yaml", CART)];
    let start = t("2026-01-05T10:00:00Z");
    {
        let (_dir, rules) = util::rules_dir(&files);
        let (engine, _clock) = util::engine(&db.store, rules, start).await;
        engine
            .ingest(&[identify("u1", json!({"email": "u1@example.com"}))])
            .await
            .unwrap();
        engine
            .ingest(&[IncomingEvent::track(
                "u1",
                "cart_updated",
                json!({"cart_value": 30}),
                start,
            )])
            .await
            .unwrap();
    }
    // A new process: new connection pool, new engine, same database.
    let store = Store::connect(&db.url).await.unwrap();
    let (_dir, rules) = util::rules_dir(&files);
    let (engine, clock) = util::engine(&store, rules, start + Duration::hours(3)).await;
    assert_eq!(engine.run_until_idle().await.unwrap(), 1);
    clock.advance(Duration::hours(1));
    assert_eq!(engine.run_until_idle().await.unwrap(), 0);
    assert_eq!(outbox_rows(&store).await.len(), 1);
    store.close().await;
    db.cleanup().await;
});

both_backends!(consent_and_unsubscribe_are_honoured, |db: TestDb| async move {
    let (_dir, rules) = util::rules_dir(&[("_global.yaml", GLOBAL), ("digest.yaml", DIGEST)]);
    let fire = t("2026-01-05T09:00:00Z");
    let (engine, _clock) = util::engine(&db.store, rules, fire).await;
    engine
        .ingest(&[
            identify("no_address", json!({})),
            identify(
                "email_off",
                json!({"email": "a@example.com", "email_consent": false}),
            ),
            identify("unsubscribed", json!({"email": "b@example.com"})),
            identify("push_off", json!({"push_token": "tok-1", "push_consent": false})),
            identify("push_only", json!({"push_token": "tok-2"})),
            identify("ok", json!({"email": "c@example.com"})),
        ])
        .await
        .unwrap();
    db.store.unsubscribe("unsubscribed", None, fire).await.unwrap();
    assert_eq!(cron::fire(&engine, "weekly_digest", fire).await.unwrap(), Some(6));
    engine.run_until_idle().await.unwrap();
    let mut got: Vec<(String, String)> = outbox_rows(&db.store)
        .await
        .into_iter()
        .map(|(u, c, _, _)| (u, c))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("ok".into(), "email".into()), ("push_only".into(), "push".into())]
    );
    let log = db.store.log_entries("unsubscribed").await.unwrap();
    assert!(
        log.iter()
            .any(|(k, d)| k == "suppressed" && d.contains("email: unsubscribed")),
        "{log:?}"
    );
    db.cleanup().await;
});

both_backends!(local_send_time_in_three_time_zones, |db: TestDb| async move {
    let rule = CART
        .replace(
            "  channels: [email]",
            "  channels: [email]\n  send_time: \"09:30\"",
        )
        .replace("wait: 2h\n", "");
    let (_dir, rules) = util::rules_dir(&[("_global.yaml", GLOBAL), ("cart.yaml", &rule)]);
    // 2026-03-10 12:00 UTC: 08:00 in New York (EDT), 13:00 in Berlin (CET), 17:30 in Kolkata.
    let now = t("2026-03-10T12:00:00Z");
    let (engine, _clock) = util::engine(&db.store, rules, now).await;
    for (user, tz) in [
        ("ny", "America/New_York"),
        ("be", "Europe/Berlin"),
        ("in", "Asia/Kolkata"),
        ("xx", "Mars/Base"),
    ] {
        engine
            .ingest(&[identify(
                user,
                json!({"email": format!("{user}@example.com"), "timezone": tz}),
            )])
            .await
            .unwrap();
        engine
            .ingest(&[IncomingEvent::track(
                user,
                "cart_updated",
                json!({"cart_value": 30}),
                now,
            )])
            .await
            .unwrap();
    }
    engine.run_until_idle().await.unwrap();
    let mut due: Vec<(String, i64)> = outbox_rows(&db.store)
        .await
        .into_iter()
        .map(|(u, _, _, d)| (u, d))
        .collect();
    due.sort();
    let ms = |s: &str| t(s).timestamp_millis();
    assert_eq!(
        due,
        vec![
            ("be".into(), ms("2026-03-11T08:30:00Z")),
            ("in".into(), ms("2026-03-11T04:00:00Z")),
            ("ny".into(), ms("2026-03-10T13:30:00Z")),
            // An unknown zone falls back to the default (UTC) and says so in the log.
            ("xx".into(), ms("2026-03-11T09:30:00Z")),
        ]
    );
    let log = db.store.log_entries("xx").await.unwrap();
    assert!(
        log.iter().any(|(_, d)| d.contains("unknown time zone")),
        "{log:?}"
    );
    db.cleanup().await;
});

both_backends!(cron_campaign_over_ten_thousand_users, |db: TestDb| async move {
    let (_dir, rules) = util::rules_dir(&[("_global.yaml", GLOBAL), ("digest.yaml", DIGEST)]);
    let fire = t("2026-01-05T09:00:00Z");
    let (engine, _clock) = util::engine(&db.store, rules, fire).await;
    add_users(&engine, 10_000).await;
    assert_eq!(
        cron::fire(&engine, "weekly_digest", fire).await.unwrap(),
        Some(10_000)
    );
    assert_eq!(
        cron::fire(&engine, "weekly_digest", fire).await.unwrap(),
        None,
        "a firing fans out once"
    );
    assert_eq!(engine.run_until_idle().await.unwrap(), 10_000);
    assert_eq!(db.store.count_rows(Table::Outbox).await.unwrap(), 10_000);
    assert_eq!(db.store.count_rows(Table::Assignments).await.unwrap(), 10_000);
    db.cleanup().await;
});

async fn add_users(engine: &Engine, n: usize) {
    let users: Vec<IncomingEvent> = (0..n)
        .map(|i| {
            identify(
                &format!("user-{i:05}"),
                json!({"email": format!("user{i}@example.com")}),
            )
        })
        .collect();
    for chunk in users.chunks(1_000) {
        engine.ingest(chunk).await.unwrap();
    }
}

fn clock_now(engine: &Engine) -> chrono::DateTime<chrono::Utc> {
    engine.now()
}

/// Two daemons on one PostgreSQL database: every message is decided exactly once, and both share the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_share_one_postgres_database() {
    let Some(db) = TestDb::new(util::Backend::Postgres, "two_engines_share_one_postgres_database").await
    else {
        return;
    };
    let files = [
        ("_global.yaml", GLOBAL),
        ("digest.yaml", DIGEST),
        ("cart.yaml", &CART.replace("wait: 2h\n", "")),
    ];
    let fire = t("2026-01-05T09:00:00Z");
    let (_d1, r1) = util::rules_dir(&files);
    let (_d2, r2) = util::rules_dir(&files);
    let store_b = Store::connect(&db.url).await.unwrap();
    let (a, _) = util::engine(&db.store, r1, fire).await;
    let (b, _) = util::engine(&store_b, r2, fire).await;
    add_users(&a, 10_000).await;

    // Both nodes' schedulers fire the same tick; one fans out.
    let (fa, fb) = tokio::join!(
        cron::fire(&a, "weekly_digest", fire),
        cron::fire(&b, "weekly_digest", fire)
    );
    let fanned: Vec<u64> = [fa.unwrap(), fb.unwrap()].into_iter().flatten().collect();
    assert_eq!(fanned, vec![10_000]);

    // 5,000 cart events arrive through both nodes.
    let carts: Vec<IncomingEvent> = (0..5_000)
        .map(|i| {
            IncomingEvent::track(
                &format!("user-{i:05}"),
                "cart_updated",
                json!({"cart_value": 25}),
                fire,
            )
        })
        .collect();
    for (i, chunk) in carts.chunks(500).enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        node.ingest(chunk).await.unwrap();
    }

    let (na, nb) = tokio::join!(drain(a.clone()), drain(b.clone()));
    assert_eq!(na + nb, 15_000);
    assert!(na > 0 && nb > 0, "both nodes decided: {na} and {nb}");
    assert_eq!(db.store.count_rows(Table::Outbox).await.unwrap(), 15_000);
    let distinct = db.store.distinct_outbox_keys().await.unwrap();
    assert_eq!(distinct, 15_000);

    // Each node delivers from the same outbox into its own folder: every message goes out exactly
    // once, and both nodes send.
    let (out_a, out_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let delivery = |engine: &Arc<Engine>, store: &Store, dir: &std::path::Path| {
        let config = DeliveryConfig {
            node_id: engine.config.node_id.clone(),
            outbox_dir: dir.to_path_buf(),
            ..DeliveryConfig::default()
        };
        Arc::new(
            Delivery::new(
                store.clone(),
                engine.rules.clone(),
                engine.clock.clone(),
                engine.outbox_ready.clone(),
                config,
            )
            .unwrap(),
        )
    };
    let (da, db_) = (
        delivery(&a, &db.store, out_a.path()),
        delivery(&b, &store_b, out_b.path()),
    );
    let (sa, sb) = tokio::join!(da.run_until_idle(), db_.run_until_idle());
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa + sb, 15_000);
    assert!(sa > 0 && sb > 0, "both nodes delivered: {sa} and {sb}");
    let files = |d: &tempfile::TempDir| std::fs::read_dir(d.path().join("email")).map_or(0, |r| r.count());
    assert_eq!(
        files(&out_a) + files(&out_b),
        15_000,
        "one file per message, no duplicates"
    );
    assert_eq!(db.store.count_rows(Table::Sends).await.unwrap(), 15_000);
    store_b.close().await;
    db.cleanup().await;
}

async fn drain(engine: Arc<Engine>) -> usize {
    let mut total = 0;
    let mut idle = 0;
    while idle < 3 {
        let n = engine.run_once().await.unwrap();
        total += n;
        idle = if n == 0 { idle + 1 } else { 0 };
        tokio::task::yield_now().await;
    }
    total
}
