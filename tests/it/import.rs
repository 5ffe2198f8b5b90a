//! `nudge import`: NDJSON and CSV fixtures, rejected lines with numbers and fields, batches,
//! re-import as duplicates, and triggering only when asked.

use std::path::{Path, PathBuf};

use nudge::{
    events::import::{ImportError, ImportOptions, import},
    rules::{RuleSet, RulesHandle},
};
use serde_json::json;

use crate::{
    both_backends,
    util::{TestDb, engine},
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name)
}

fn quiet() -> ImportOptions {
    ImportOptions {
        progress: false,
        batch_size: 2,
        ..ImportOptions::default()
    }
}

fn rejected(summary: &nudge::events::import::ImportSummary) -> Vec<(usize, &str, Option<&str>)> {
    summary
        .rejections
        .iter()
        .map(|r| (r.line, r.code, r.field.as_deref()))
        .collect()
}

both_backends!(imports_ndjson, |db: TestDb| async move {
    let (engine, _) = engine(
        &db.store,
        RulesHandle::new(RuleSet::empty("rules".into())),
        crate::util::t("2024-06-01T00:00:00Z"),
    )
    .await;
    let summary = import(&engine, &fixture("events.ndjson"), quiet()).await.unwrap();
    assert_eq!(
        (
            summary.records,
            summary.stored,
            summary.duplicates,
            summary.ignored,
            summary.rejected
        ),
        (9, 3, 1, 1, 4),
        "{summary}"
    );
    assert_eq!(
        rejected(&summary),
        [
            (5, "missing_field", Some("userId")),
            (6, "invalid_timestamp", Some("timestamp")),
            (7, "invalid_json", None),
            (9, "invalid_type", Some("properties")),
        ]
    );
    let text = summary.to_string();
    assert!(
        text.contains("line 5: userId: userId or anonymousId is required"),
        "{text}"
    );

    let user = db.store.user("imp1").await.unwrap().unwrap();
    assert_eq!(user.email.as_deref(), Some("imp1@example.com"));
    let events = db.store.user_events("imp1", 10).await.unwrap();
    let order = events.iter().find(|e| e.message_id == "n-2").unwrap();
    assert_eq!(order.properties, json!({"revenue": 42.5}));
    assert_eq!(order.timestamp, crate::util::t("2024-03-02T10:00:00Z"));
    assert_eq!(db.store.event_count().await.unwrap(), 3);

    // Importing the same file again stores nothing new.
    let again = import(&engine, &fixture("events.ndjson"), quiet()).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 4));
    db.cleanup().await;
});

both_backends!(imports_csv, |db: TestDb| async move {
    let (engine, _) = engine(
        &db.store,
        RulesHandle::new(RuleSet::empty("rules".into())),
        crate::util::t("2024-06-01T00:00:00Z"),
    )
    .await;
    let summary = import(&engine, &fixture("events.csv"), quiet()).await.unwrap();
    assert_eq!(
        (summary.records, summary.stored, summary.rejected),
        (6, 3, 3),
        "{summary}"
    );
    assert_eq!(
        rejected(&summary),
        [
            (5, "missing_field", Some("userId")),
            (6, "invalid_timestamp", Some("timestamp")),
            (7, "invalid_type", None),
        ]
    );
    let user = db.store.user("c1").await.unwrap().unwrap();
    assert_eq!(
        user.traits,
        json!({"email": "c1@example.com", "vip": true})
            .as_object()
            .unwrap()
            .clone()
    );
    let events = db.store.user_events("c1", 10).await.unwrap();
    let order = events.iter().find(|e| e.message_id == "c-2").unwrap();
    assert_eq!(order.properties, json!({"revenue": 19.99, "coupon": "007"}));
    let c2 = db.store.user_events("c2", 10).await.unwrap();
    assert_eq!(
        c2[0].name.as_deref(),
        Some("order_completed"),
        "type defaults to track"
    );

    let err = import(&engine, &fixture("bad_header.csv"), quiet())
        .await
        .unwrap_err();
    assert!(matches!(err, ImportError::CsvHeader { .. }), "{err}");
    assert!(err.to_string().contains("\"colour\""), "{err}");
    let err = import(&engine, Path::new("/nonexistent/events.ndjson"), quiet())
        .await
        .unwrap_err();
    assert!(matches!(err, ImportError::Io { .. }), "{err}");
    let err = import(&engine, &fixture("README.md"), quiet()).await.unwrap_err();
    assert!(matches!(err, ImportError::UnknownFormat { .. }), "{err}");
    db.cleanup().await;
});

both_backends!(import_triggers_only_when_asked, |db: TestDb| async move {
    let now = chrono::Utc::now();
    let (engine, _) = engine(&db.store, RulesHandle::new(crate::http::tracked_rules()), now).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signups.ndjson");
    let line =
        |id: &str| json!({"userId": id, "event": "signed_up", "timestamp": now.to_rfc3339()}).to_string();
    std::fs::write(&file, format!("{}\n", line("quiet"))).unwrap();
    let summary = import(&engine, &file, quiet()).await.unwrap();
    assert_eq!((summary.stored, summary.entries), (1, 0));

    std::fs::write(&file, format!("{}\n", line("loud"))).unwrap();
    let opts = ImportOptions {
        trigger: true,
        ..quiet()
    };
    let summary = import(&engine, &file, opts).await.unwrap();
    assert_eq!((summary.stored, summary.entries), (1, 1));
    db.cleanup().await;
});
