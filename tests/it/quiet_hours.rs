//! Quiet hours and local send times through the engine, on the nights clocks change (issue 5,
//! acceptance 5): America/New_York and Europe/Berlin spring forward and fall back, Asia/Kolkata
//! is +05:30 all year, and a user whose `traits.timezone` is not an IANA name gets the default
//! zone and one `UnknownTimezone` warning however many decisions are made for them.
//!
//! These tests run on a current-thread runtime so a thread-local tracing subscriber sees every
//! event the engine logs.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use nudge::{engine::Engine, events::IncomingEvent};
use serde_json::json;

use crate::util::{self, Backend, TestDb, t};

const GLOBAL: &str = r#"
control_group: 0%
timezone: UTC
quiet_hours: { from: "21:00", to: "08:00" }
"#;

/// Sent at once, unless quiet hours say otherwise.
const NOW: &str = r#"
campaign: reminder
name: Reminder
when:
  event: cart_updated
reentry: always
then:
  channels: [push]
  send_time: immediate
  push:
    title: "Your cart"
    body: "Still there"
holdout: 0%
"#;

/// Sent at 02:30 local time; quiet hours do not apply (it would never go out otherwise).
const HALF_TWO: &str = r#"
campaign: night_owl
name: Night owl
when:
  event: ping
reentry: always
then:
  channels: [push]
  send_time: "02:30"
  push:
    title: "Hi"
    body: "Late night"
holdout: 0%
quiet_hours: false
"#;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Ingests `event` for `user` at `at` (the clock set there), decides, and returns the due time of
/// the message it queued.
async fn due_of(
    engine: &Engine,
    clock: &nudge::clock::ManualClock,
    user: &str,
    event: &str,
    at: &str,
) -> DateTime<Utc> {
    let at = t(at);
    clock.set(at);
    engine
        .ingest(&[IncomingEvent::track(user, event, json!({}), at)])
        .await
        .unwrap();
    engine.run_until_idle().await.unwrap();
    let rows = engine.store.outbox_messages().await.unwrap();
    let (_, _, _, due) = rows.last().expect("a message was queued");
    DateTime::from_timestamp_millis(*due).unwrap()
}

async fn scenario(backend: Backend, name: &str) {
    let Some(db) = TestDb::new(backend, name).await else {
        return;
    };
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (_dir, rules) = util::rules_dir(&[
        ("_global.yaml", GLOBAL),
        ("reminder.yaml", NOW),
        ("night_owl.yaml", HALF_TWO),
    ]);
    let (engine, clock) = util::engine(&db.store, rules, t("2026-03-01T00:00:00Z")).await;
    let users = [
        ("ny", "America/New_York"),
        ("berlin", "Europe/Berlin"),
        ("kolkata", "Asia/Kolkata"),
        ("mars", "Mars/Olympus_Mons"),
    ];
    let identifies: Vec<IncomingEvent> = users
        .iter()
        .map(|(id, tz)| {
            IncomingEvent::identify(
                id,
                json!({ "timezone": tz, "push_token": format!("tok-{id}") }),
                t("2026-03-01T00:00:00Z"),
            )
        })
        .collect();
    engine.ingest(&identifies).await.unwrap();

    // Chronological, since the clock only moves forward in a real deployment.
    let cases = [
        // New York springs forward at 07:00Z: `02:30` does not exist that night → 03:00 EDT.
        ("ny", "ping", "2026-03-08T05:00:00Z", "2026-03-08T07:00:00Z"),
        // 01:30 EST, inside quiet hours → 08:00 EDT (UTC−4), the first allowed minute.
        (
            "ny",
            "cart_updated",
            "2026-03-08T06:30:00Z",
            "2026-03-08T12:00:00Z",
        ),
        // Kolkata (+05:30): 21:00 IST is 15:30Z → 08:00 IST next day is 02:30Z.
        (
            "kolkata",
            "cart_updated",
            "2026-03-08T15:30:00Z",
            "2026-03-09T02:30:00Z",
        ),
        // Berlin springs forward at 01:00Z: 01:30 CET → 08:00 CEST = 06:00Z.
        (
            "berlin",
            "cart_updated",
            "2026-03-29T00:30:00Z",
            "2026-03-29T06:00:00Z",
        ),
        // Berlin falls back at 01:00Z: `02:30` happens twice → the first, CEST (00:30Z).
        ("berlin", "ping", "2026-10-24T22:00:00Z", "2026-10-25T00:30:00Z"),
        // The second 02:30 (CET, 01:30Z) is quiet → 08:00 CET = 07:00Z.
        (
            "berlin",
            "cart_updated",
            "2026-10-25T01:30:00Z",
            "2026-10-25T07:00:00Z",
        ),
        // New York falls back at 06:00Z: the second 01:30 (EST, 06:30Z) → 08:00 EST = 13:00Z.
        (
            "ny",
            "cart_updated",
            "2026-11-01T06:30:00Z",
            "2026-11-01T13:00:00Z",
        ),
        // An unknown zone is UTC here (the default): 22:00Z is quiet → 08:00Z, twice.
        (
            "mars",
            "cart_updated",
            "2026-11-02T22:00:00Z",
            "2026-11-03T08:00:00Z",
        ),
        (
            "mars",
            "cart_updated",
            "2026-11-02T23:00:00Z",
            "2026-11-03T08:00:00Z",
        ),
    ];
    for (user, event, at, expected) in cases {
        assert_eq!(
            due_of(&engine, &clock, user, event, at).await,
            t(expected),
            "{user} {event} at {at}"
        );
    }

    let log = db.store.log_entries("mars").await.unwrap();
    let warned = log
        .iter()
        .filter(|(_, d)| d.contains("unknown time zone"))
        .count();
    assert_eq!(warned, 2, "every decision says why it used the default: {log:?}");
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text.matches("UnknownTimezone").count(),
        1,
        "one warning per user and process:\n{text}"
    );
    assert!(text.contains("Mars/Olympus_Mons"), "{text}");
    db.cleanup().await;
}

#[tokio::test]
async fn dst_nights_and_unknown_zones_sqlite() {
    scenario(Backend::Sqlite, "quiet_hours::sqlite").await;
}

#[tokio::test]
async fn dst_nights_and_unknown_zones_postgres() {
    scenario(Backend::Postgres, "quiet_hours::postgres").await;
}
