//! The store: users, events, entries, assignments, the outbox and the message log.
//!
//! One interface over two backends: an SQLite file (WAL, `synchronous=FULL`) for one daemon, and
//! PostgreSQL for several daemons sharing the load. SQL is written once with `$N` placeholders, which
//! both backends accept; the few statements that differ (claiming with `FOR UPDATE SKIP LOCKED`,
//! JSON merging) choose by [`Backend`]. Times are stored as Unix milliseconds, JSON as text.

pub mod admin;
mod bench;
mod bulk;
mod entries;
mod history;
mod ingest;
mod inspect;
mod integrity;
mod lift;
mod models;
mod outbox;
mod replay;
mod snapshots;
mod users;

pub use bench::{BenchEvent, BenchUser};
pub use entries::{ClaimedEntry, Decision, DecisionLog, NewAssignment, NewOutbox, UserHistory};
pub use history::{HistoryEvent, HistoryUser};
pub use ingest::{IngestOutcome, Triggering};
pub use inspect::{AssignmentRow, Table};
pub use integrity::{INVARIANTS, OutboxState};
pub use lift::{ArmCounts, DailyCounts, LiftCounts, LiftQuery, SendTimeArmCounts};
pub use models::{ModelRow, NewModel};
pub use outbox::{
    CapRules, CappedMessage, Claim, ClaimedMessage, Finish, NewMessage, OutboxCount, OutboxRow,
};
pub use replay::CampaignOutcome;
pub use snapshots::LiftSnapshotRow;
pub use users::UserRecord;

use std::{str::FromStr, time::Duration};

use sqlx::{
    Executor, PgPool, SqlitePool, Transaction,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL `{0}` is neither sqlite:// nor postgres://")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored JSON is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// Only produced by a test build with an armed [`crate::fault`] point.
    #[error(transparent)]
    Fault(#[from] crate::fault::Fault),
}

impl StoreError {
    /// True when retrying later may succeed (database restarting, pool exhausted, lock contention).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                        | sqlx::Error::Protocol(_)
                ) || e.as_database_error().is_some_and(|d| {
                    let code = d.code().unwrap_or_default();
                    // SQLite BUSY/LOCKED; PostgreSQL serialization failure, deadlock, admin shutdown.
                    matches!(
                        &*code,
                        "5" | "6" | "517" | "40001" | "40P01" | "57P01" | "57P02" | "57P03"
                    )
                })
            }
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code against whichever pool the store holds. Both arms are the same tokens, so a
/// query written once type-checks against both drivers.
macro_rules! with_db {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_db;

/// The order in which this process's writers take SQLite's one write lock.
///
/// SQLite lets one writer in at a time; a connection that finds the lock taken waits in SQLite's
/// busy handler, which sleeps 1, 2, 5 … up to 100 ms between tries and lets whoever wakes first
/// in. With ingestion, the decision loop and four delivery workers writing at once, those sleeps
/// (not the writes) set the latency: the lock sat free while every waiter slept. Writers of one
/// [`Store`] queue here instead, first come first served, and each finds the lock free. Other
/// processes writing the same file still meet the busy handler. PostgreSQL has no gate.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteGate(Option<std::sync::Arc<tokio::sync::Mutex<()>>>);

impl WriteGate {
    fn sqlite() -> Self {
        WriteGate(Some(std::sync::Arc::default()))
    }

    /// Waits for this writer's turn; the turn lasts until the guard is dropped.
    pub(crate) async fn enter(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.0 {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        }
    }
}

/// A write transaction that holds its writer's turn (see [`WriteGate`]) until it commits, rolls
/// back or is dropped. Derefs to the connection, like sqlx's `Transaction`.
pub(crate) struct WriteTx<DB: sqlx::Database> {
    tx: Transaction<'static, DB>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<DB: sqlx::Database> WriteTx<DB> {
    pub(crate) async fn commit(self) -> sqlx::Result<()> {
        self.tx.commit().await
    }

    pub(crate) async fn rollback(self) -> sqlx::Result<()> {
        self.tx.rollback().await
    }

    /// Commits when `outcome` is `Ok`; on an error rolls back before returning it. A transaction
    /// that is only dropped is rolled back by sqlx when its connection goes back to the pool, in
    /// the background: until then, on PostgreSQL, the rows it locked stay locked and claims
    /// (`FOR UPDATE SKIP LOCKED`) pass them by as if they were taken.
    pub(crate) async fn settle<T>(self, outcome: Result<T>) -> Result<T> {
        match outcome {
            Ok(value) => {
                self.tx.commit().await?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = self.tx.rollback().await {
                    tracing::warn!(error = %rollback, "RollbackFailed: the connection's rollback is left to the pool");
                }
                Err(e)
            }
        }
    }
}

impl<DB: sqlx::Database> std::ops::Deref for WriteTx<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for WriteTx<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// Opens a write transaction in the writer's turn. On SQLite it is `BEGIN IMMEDIATE`: taking the
/// write lock up front avoids the deferred read→write upgrade that fails with SQLITE_BUSY under
/// concurrent writers.
pub(crate) trait WritePool: Sized {
    type Db: sqlx::Database;
    async fn begin_write(&self, gate: &WriteGate) -> sqlx::Result<WriteTx<Self::Db>>;
}

impl WritePool for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self, gate: &WriteGate) -> sqlx::Result<WriteTx<sqlx::Sqlite>> {
        let turn = gate.enter().await;
        let tx = self.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _turn: turn })
    }
}

impl WritePool for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self, gate: &WriteGate) -> sqlx::Result<WriteTx<sqlx::Postgres>> {
        let turn = gate.enter().await;
        let tx = self.begin().await?;
        Ok(WriteTx { tx, _turn: turn })
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    backend: Backend,
    gate: WriteGate,
}

/// How many connections a pool may open.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize(pub u32);

impl Default for PoolSize {
    fn default() -> Self {
        PoolSize(10)
    }
}

impl Store {
    /// Connects to `sqlite://path` (created if missing) or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Store> {
        Self::connect_with(url, PoolSize::default()).await
    }

    pub async fn connect_with(url: &str, size: PoolSize) -> Result<Store> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a 200 from ingestion means the event survives power loss, not just a crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .pragma("temp_store", "memory");
            let pool = SqlitePoolOptions::new()
                .max_connections(size.0)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await?;
            Ok(Store {
                db: Db::Sqlite(pool),
                backend: Backend::Sqlite,
                gate: WriteGate::sqlite(),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(size.0)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            Ok(Store {
                db: Db::Postgres(pool),
                backend: Backend::Postgres,
                gate: WriteGate::default(),
            })
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations under `migrations/<backend>/` that have not run yet.
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// A cheap round trip, for `/healthz`.
    pub async fn ping(&self) -> Result<()> {
        with_db!(self, |pool| {
            pool.execute("SELECT 1").await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        with_db!(self, |pool| pool.close().await)
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let value = with_db!(self, |pool| {
            sqlx::query_scalar::<_, String>("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        Ok(value)
    }

    /// Returns the stored value for `key`, storing `make()` first if there is none. Safe when
    /// several nodes race: the first insert wins and everyone reads it back.
    pub async fn setting_or_insert(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        let candidate = make();
        with_db!(self, |pool| {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(&candidate)
                .execute(pool)
                .await?;
        });
        Ok(self.setting(key).await?.unwrap_or(candidate))
    }
}

/// A database URL with its password replaced, safe to log.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://nudge.db"), "sqlite://nudge.db");
    }
}
