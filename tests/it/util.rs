//! Builders and helpers shared by the integration tests.
#![allow(dead_code)]

use std::{path::Path, sync::Arc};

use chrono::{DateTime, Utc};
use nudge::{
    clock::{ManualClock, SharedClock},
    engine::{Engine, EngineConfig},
    rules::{self, RulesHandle},
    store::Store,
    tracking::tokens::Signer,
};
use tempfile::TempDir;

/// Which database a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, migrated database; dropped (PostgreSQL) by [`TestDb::cleanup`].
pub struct TestDb {
    pub store: Store,
    pub url: String,
    dir: Option<TempDir>,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// A fresh database on `backend`, or `None` (after printing why) when PostgreSQL is not configured.
    pub async fn new(backend: Backend, test: &str) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("nudge.db").display());
                let store = Store::connect(&url).await.expect("sqlite connects");
                store.migrate().await.expect("migrations apply");
                Some(TestDb {
                    store,
                    url,
                    dir: Some(dir),
                    pg: None,
                })
            }
            Backend::Postgres => {
                let Ok(admin) = std::env::var("NUDGE_TEST_POSTGRES_URL") else {
                    println!("skipped (no NUDGE_TEST_POSTGRES_URL): {test}");
                    return None;
                };
                let name = format!("nudge_t_{}", uuid::Uuid::new_v4().simple());
                let admin_pool = sqlx::PgPool::connect(&admin)
                    .await
                    .expect("postgres admin connects");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin_pool)
                    .await
                    .expect("create test database");
                admin_pool.close().await;
                let url = match admin.rsplit_once('/') {
                    Some((base, _)) => format!("{base}/{name}"),
                    None => panic!("NUDGE_TEST_POSTGRES_URL needs a database path"),
                };
                let store = Store::connect(&url).await.expect("postgres connects");
                store.migrate().await.expect("migrations apply");
                Some(TestDb {
                    store,
                    url,
                    dir: None,
                    pg: Some((admin, name)),
                })
            }
        }
    }

    /// Folder next to the database for rules, outbox files and the like.
    pub fn scratch(&self) -> TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some((admin, name)) = self.pg
            && let Ok(pool) = sqlx::PgPool::connect(&admin).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&pool)
            .await;
            pool.close().await;
        }
        drop(self.dir);
    }
}

/// Runs one async scenario on SQLite and on PostgreSQL: `both_backends!(name, |db: TestDb| async move { … })`
/// defines `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::util::TestDb::new(
                    $crate::util::Backend::Sqlite,
                    concat!(stringify!($name), "::sqlite"),
                )
                .await
                .expect("sqlite is always available");
                let run = $body;
                run(db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::util::TestDb::new(
                    $crate::util::Backend::Postgres,
                    concat!(stringify!($name), "::postgres"),
                )
                .await
                else {
                    return;
                };
                let run = $body;
                run(db).await;
            }
        }
    };
}

/// Writes rule files into a fresh folder and compiles them; panics with every diagnostic if they fail.
pub fn rules_dir(files: &[(&str, &str)]) -> (TempDir, RulesHandle) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let set = load(dir.path());
    (dir, RulesHandle::new(set))
}

pub fn load(dir: &Path) -> rules::RuleSet {
    match rules::load_dir(dir) {
        Ok(set) => set,
        Err(diags) => panic!(
            "rules do not compile:\n{}",
            diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
        ),
    }
}

pub fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("RFC 3339 time")
}

/// An engine on `store` with a manual clock starting at `start`.
pub async fn engine(store: &Store, rules: RulesHandle, start: DateTime<Utc>) -> (Arc<Engine>, ManualClock) {
    let clock = ManualClock::new(start);
    let shared: SharedClock = Arc::new(clock.clone());
    let config = EngineConfig {
        public_url: "http://nudge.test".into(),
        ..EngineConfig::default()
    };
    let engine = Engine::new(
        store.clone(),
        Arc::new(rules),
        shared,
        Signer::new(b"test-secret"),
        config,
    )
    .await
    .expect("engine starts");
    (Arc::new(engine), clock)
}
