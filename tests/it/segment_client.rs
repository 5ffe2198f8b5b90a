//! Segment's official Python library (`segment-analytics-python`) pointed at nudge, unchanged:
//! `tests/clients/segment_client.py` sends an identify and a track (plain and gzipped bodies,
//! HTTP Basic auth on `/v1/batch`), and the user and event must be in the store.
//!
//! The library is installed into a venv under Cargo's test temp dir on first use. When Python or
//! PyPI is not reachable the test prints why and passes.

use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::process::Command;

use crate::{
    http::{ServeOptions, WRITE_KEY, serve},
    util::{Backend, TestDb},
};

/// A Python with `segment.analytics` importable, or why there is none.
async fn python_with_segment() -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("segment-venv");
    let python = venv.join("bin").join("python");
    let importable = |python: PathBuf| async move {
        Command::new(&python)
            .args(["-c", "import segment.analytics"])
            .output()
            .await
            .is_ok_and(|o| o.status.success())
    };
    if importable(python.clone()).await {
        return Ok(python);
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .await
        .map_err(|e| format!("python3 is not available: {e}"))?;
    if !created.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&created.stderr)
        ));
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "segment-analytics-python"])
        .output()
        .await
        .map_err(|e| format!("pip did not run: {e}"))?;
    if !pip.status.success() {
        return Err(format!(
            "pip install segment-analytics-python failed (PyPI unreachable?): {}",
            String::from_utf8_lossy(&pip.stderr)
        ));
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client_works_unchanged() {
    let python = match python_with_segment().await {
        Ok(p) => p,
        Err(why) => {
            println!("skipped official_python_client_works_unchanged: {why}");
            return;
        }
    };
    let db = TestDb::new(Backend::Sqlite, "official_python_client_works_unchanged")
        .await
        .unwrap();
    let s = serve(&db, ServeOptions::default()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/segment_client.py");
    let run = |key: &'static str, user: &'static str, gzip: bool| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).args([s.base.as_str(), key, user]);
        if gzip {
            cmd.arg("gzip");
        }
        cmd.output()
    };

    for (user, gzip) in [("py-plain", false), ("py-gzip", true)] {
        let out = run(WRITE_KEY, user, gzip).await.expect("python runs");
        assert!(
            out.status.success(),
            "{user}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let u = db.store.user(user).await.unwrap().expect("user stored");
        assert_eq!(u.email.as_deref(), Some(format!("{user}@example.com").as_str()));
        assert_eq!(u.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(u.traits["plan"], "pro");
        let events = db.store.user_events(user, 10).await.unwrap();
        let order = events
            .iter()
            .find(|e| e.name.as_deref() == Some("Order Completed"))
            .expect("track stored");
        assert_eq!(order.message_id, format!("{user}-order"));
        assert_eq!(order.properties, json!({"revenue": 42.5, "items": 3}));
        // The library stamps events with the local clock; after skew correction they sit at or
        // just before the moment nudge received them.
        assert!((order.received_at - order.timestamp).num_seconds().abs() < 60);
    }

    // A wrong write key: the library reports the 401 and nothing is stored.
    let before = s.events().await;
    let out = run("not-the-key", "py-intruder", false)
        .await
        .expect("python runs");
    assert!(!out.status.success(), "a wrong key must fail");
    assert!(db.store.user("py-intruder").await.unwrap().is_none());
    assert_eq!(s.events().await, before);
    db.cleanup().await;
}
