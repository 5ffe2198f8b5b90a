//! Promise 7, hostile input: the fuzz seed corpora replayed inside `cargo test`, hostile templates
//! failing with a clear error (at validate time or at render time) while the engine keeps deciding,
//! and user data entering templates only as values.

use std::{
    path::{Path, PathBuf},
    time::{Duration as StdDuration, Instant},
};

use chrono::Duration;
use nudge::{events::IncomingEvent, fuzzing, rules};
use serde_json::json;

use crate::util::{self, Backend, TestDb, t};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

/// Runs every seed of `target` through `run`; reports every seed that panicked, not just the first.
fn replay(target: &str, run: fn(&[u8])) {
    let mut failed = Vec::new();
    let files = corpus(target);
    for path in &files {
        let data = std::fs::read(path).expect("seed reads");
        let started = Instant::now();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(path.display().to_string());
        }
        assert!(
            started.elapsed() < StdDuration::from_secs(20),
            "{} took {:?}",
            path.display(),
            started.elapsed()
        );
    }
    assert!(failed.is_empty(), "{target}: seeds that panicked: {failed:#?}");
    println!("{target}: {} seeds replayed", files.len());
}

#[test]
fn segment_corpus_replays() {
    replay("segment", fuzzing::segment);
}

#[test]
fn rules_corpus_replays() {
    replay("rules", fuzzing::rules);
}

#[test]
fn template_corpus_replays() {
    replay("template", fuzzing::template);
}

#[test]
fn tokens_corpus_replays() {
    replay("tokens", fuzzing::tokens);
}

/// A hostile template, and what must refuse it: `Validate` (the rule compiler, so `nudge validate`
/// and hot reload) or `Render` (the decision that renders it), with a fragment of the message.
enum Refused {
    Validate(&'static str),
    Render(&'static str),
    /// Not refused because it reaches nothing: it renders, to exactly this text.
    Inert(&'static str),
}

const HOSTILE: &[(&str, &str, Refused)] = &[
    (
        "infinite loop",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        Refused::Render("fuel"),
    ),
    (
        "unbounded macro recursion",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        Refused::Render("recursion"),
    ),
    (
        "macro fan-out: a million calls",
        "{% macro f(n) %}{% if n > 0 %}{% for i in range(1000) %}{{ f(n - 1) }}{% endfor %}{% endif %}{% endmacro %}{{ f(2) }}",
        Refused::Render("fuel"),
    ),
    (
        "huge output via repeat",
        "{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}",
        Refused::Render("256 KiB"),
    ),
    (
        "one huge string",
        "{{ 'x' * 100000000 }}",
        Refused::Render("fuel"),
    ),
    (
        "output flood",
        "{% for i in range(90000) %}0123456789abcdef{% endfor %}",
        Refused::Render("256 KiB"),
    ),
    (
        "include a file",
        "{% include '/etc/passwd' %}",
        Refused::Render("not found"),
    ),
    (
        "include a relative file",
        "{% include '../../../../etc/passwd' %}",
        Refused::Render("not found"),
    ),
    (
        "include itself",
        "{% include 'hostile/email_body' %}",
        Refused::Render("recursion"),
    ),
    (
        "extends itself",
        "{% extends 'hostile/email_body' %}",
        Refused::Render("cycle in template inheritance"),
    ),
    (
        "read the environment",
        "{{ env.HOME }}",
        Refused::Validate("unknown variable `env`"),
    ),
    (
        "python-style escape",
        "[{{ self.__init__.__globals__ }}{{ user.__class__ }}{{ range.__globals__ }}]",
        Refused::Inert("[]"),
    ),
    (
        "huge power",
        "{{ 10 ** 10 ** 10 }}",
        Refused::Render("invalid operation"),
    ),
    (
        "syntax error",
        "{{ user.id }",
        Refused::Validate("template syntax error"),
    ),
];

const NEXT: &str = r#"
campaign: next_in_line
name: Next in line
priority: 1
when:
  event: signed_up
then:
  channels: [email]
  email:
    subject: "Welcome"
    body: "Welcome {{ user.id }}"
holdout: 0%
"#;

fn hostile_campaign() -> String {
    r#"
campaign: hostile
name: Hostile
priority: 99
when:
  event: signed_up
then:
  channels: [email]
  email:
    subject: "Hi"
    template: templates/hostile.txt
holdout: 0%
"#
    .to_string()
}

/// Every hostile template fails with a clear error where it should; at render time the engine
/// records that one assignment `failed` with the reason and decides the next campaign as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_templates_fail_cleanly_and_the_engine_keeps_running() {
    for (what, source, refused) in HOSTILE {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/hostile.txt"), source).unwrap();
        std::fs::write(dir.path().join("hostile.yaml"), hostile_campaign()).unwrap();
        std::fs::write(dir.path().join("next.yaml"), NEXT).unwrap();
        std::fs::write(dir.path().join("_global.yaml"), "control_group: 0%\n").unwrap();
        let loaded = rules::load_dir(dir.path());
        match refused {
            Refused::Validate(fragment) => {
                let diagnostics = loaded.expect_err(what);
                let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
                assert!(
                    text.iter()
                        .any(|d| d.contains(fragment) && d.contains("hostile.txt")),
                    "{what}: {text:#?}"
                );
            }
            Refused::Inert(expected) => {
                let set = loaded.unwrap_or_else(|d| panic!("{what}: {d:?}"));
                let db = TestDb::new(Backend::Sqlite, what).await.unwrap();
                let start = t("2026-01-05T10:00:00Z");
                let (engine, _clock) = util::engine(&db.store, rules::RulesHandle::new(set), start).await;
                engine
                    .ingest(&[
                        IncomingEvent::identify("ann", json!({"email": "ann@example.com"}), start),
                        IncomingEvent::track("ann", "signed_up", json!({}), start),
                    ])
                    .await
                    .unwrap();
                engine.run_until_idle().await.unwrap();
                let bodies: Vec<String> = db
                    .store
                    .outbox_messages()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(_, _, payload, _)| {
                        let p: serde_json::Value = serde_json::from_str(&payload).unwrap();
                        p["text"].as_str().unwrap_or_default().to_string()
                    })
                    .collect();
                assert!(bodies.iter().any(|b| b == expected), "{what}: {bodies:?}");
                db.cleanup().await;
            }
            Refused::Render(fragment) => {
                let set = loaded.unwrap_or_else(|d| panic!("{what}: {d:?}"));
                let db = TestDb::new(Backend::Sqlite, what).await.unwrap();
                let start = t("2026-01-05T10:00:00Z");
                let (engine, _clock) = util::engine(&db.store, rules::RulesHandle::new(set), start).await;
                engine
                    .ingest(&[
                        IncomingEvent::identify("ann", json!({"email": "ann@example.com"}), start),
                        IncomingEvent::track("ann", "signed_up", json!({}), start),
                    ])
                    .await
                    .unwrap();
                let started = Instant::now();
                assert_eq!(engine.run_until_idle().await.unwrap(), 2, "{what}");
                let took = started.elapsed();
                assert!(took < StdDuration::from_secs(10), "{what}: {took:?}");
                let log = db.store.message_log("ann", 10).await.unwrap();
                let failed = log
                    .iter()
                    .find(|r| r.campaign.as_deref() == Some("hostile"))
                    .unwrap_or_else(|| panic!("{what}: {log:?}"));
                let reason = failed.detail["reason"].as_str().unwrap_or_default();
                assert_eq!(failed.kind, "failed", "{what}: {reason}");
                assert!(
                    reason.starts_with("render failed: template hostile/email_body")
                        && reason.contains(fragment),
                    "{what}: {reason}"
                );
                let next = log
                    .iter()
                    .find(|r| r.campaign.as_deref() == Some("next_in_line"))
                    .unwrap_or_else(|| panic!("{what}: {log:?}"));
                assert_eq!(next.kind, "scheduled", "{what}: the next campaign still works");
                let counts = db.store.campaign_counts().await.unwrap();
                assert_eq!(
                    counts["hostile"].assignments,
                    [("failed".to_string(), 1)].into(),
                    "{what}"
                );
                let outbox = db.store.user_outbox("ann", 10).await.unwrap();
                assert_eq!(outbox.len(), 1, "{what}: only the healthy campaign enqueued");
                assert_eq!(outbox[0].subject.as_deref(), Some("Welcome"));
                db.cleanup().await;
            }
        }
    }
}

/// Event and user data are values: template syntax inside them renders literally, in subjects,
/// text bodies, HTML bodies (escaped) and push messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_rendered_as_values_never_as_templates() {
    let campaign = r#"
campaign: echo
name: Echo
when:
  event: cart_updated
reentry: always
then:
  channels: [email]
  email:
    subject: "{{ event.properties.product_name }}"
    body: "<p>{{ user.traits.first_name }} {{ event.properties.product_name }}</p>"
holdout: 0%
"#;
    let push = r#"
campaign: echo_push
name: Echo push
when:
  event: cart_updated
reentry: always
then:
  channels: [push]
  push:
    title: "{{ event.properties.product_name }}"
    body: "{{ user.traits.first_name }}"
holdout: 0%
"#;
    let (_dir, handle) = util::rules_dir(&[
        ("_global.yaml", "control_group: 0%\n"),
        ("echo.yaml", campaign),
        ("echo_push.yaml", push),
    ]);
    let db = TestDb::new(Backend::Sqlite, "data_is_rendered_as_values")
        .await
        .unwrap();
    let start = t("2026-01-05T10:00:00Z");
    let (engine, clock) = util::engine(&db.store, handle, start).await;
    let payload = "{{ 7*7 }}{% for i in range(3) %}{{ i }}{% endfor %}";
    engine
        .ingest(&[IncomingEvent::identify(
            "eve",
            json!({"email": "eve@example.com", "push_token": "tok", "first_name": payload}),
            start,
        )])
        .await
        .unwrap();
    engine
        .ingest(&[IncomingEvent::track(
            "eve",
            "cart_updated",
            json!({"product_name": payload}),
            start,
        )])
        .await
        .unwrap();
    clock.advance(Duration::seconds(1));
    engine.run_until_idle().await.unwrap();
    let rows = db.store.outbox_messages().await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (_, channel, payload_json, _) in &rows {
        let p: serde_json::Value = serde_json::from_str(payload_json).unwrap();
        // Only what the templates rendered: ids and signed URLs are random hex, which may
        // contain "49" by chance.
        let rendered: Vec<&str> = ["subject", "html", "text", "title", "body"]
            .iter()
            .filter_map(|k| p[*k].as_str())
            .collect();
        assert!(!rendered.is_empty(), "{channel}: {p}");
        for text in rendered {
            assert!(!text.contains("49"), "{channel}: data was evaluated: {text}");
            assert!(!text.contains("012"), "{channel}: data was evaluated: {text}");
        }
        match channel.as_str() {
            "email" => {
                assert_eq!(p["subject"], payload);
                let html = p["html"].as_str().unwrap();
                assert!(html.contains(&format!("<p>{payload} {payload}</p>")), "{html}");
            }
            _ => {
                assert_eq!(p["title"], payload);
                assert_eq!(p["body"], payload);
            }
        }
    }
    db.cleanup().await;
}
