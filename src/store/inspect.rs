//! Read-only views used by tests, dry-run and operators: row counts, outbox contents, a user's log.

use super::{Result, Store, with_db};

/// Tables whose rows may be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Users,
    Events,
    Entries,
    Assignments,
    Outbox,
    Sends,
    MessageLog,
}

impl Store {
    pub async fn count_rows(&self, table: Table) -> Result<i64> {
        let sql = match table {
            Table::Users => "SELECT COUNT(*) FROM users",
            Table::Events => "SELECT COUNT(*) FROM events",
            Table::Entries => "SELECT COUNT(*) FROM entries",
            Table::Assignments => "SELECT COUNT(*) FROM assignments",
            Table::Outbox => "SELECT COUNT(*) FROM outbox",
            Table::Sends => "SELECT COUNT(*) FROM sends",
            Table::MessageLog => "SELECT COUNT(*) FROM message_log",
        };
        Ok(with_db!(self, |pool| sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await?))
    }

    /// Every outbox row as (user, channel, payload JSON, due time in ms), oldest first.
    pub async fn outbox_messages(&self) -> Result<Vec<(String, String, String, i64)>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, String, i64)>(
                "SELECT user_id, channel, payload, due_at FROM outbox ORDER BY id",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn distinct_outbox_keys(&self) -> Result<i64> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(DISTINCT idempotency_key) FROM outbox")
                .fetch_one(pool)
                .await?
        }))
    }

    /// A user's message log as (kind, detail JSON), oldest first.
    pub async fn log_entries(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String)>(
                "SELECT kind, detail FROM message_log WHERE user_id = $1 ORDER BY id",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?
        }))
    }
}

impl Store {
    /// The ingest benchmark's reference: `n` event rows of the benchmark's shape inserted in one
    /// transaction with prepared statements, nothing else (no users, triggers, HTTP or JSON).
    #[doc(hidden)]
    pub async fn bench_raw_insert(&self, round: u64, n: u64) -> Result<()> {
        use super::WritePool;
        let now = chrono::Utc::now().timestamp_millis();
        with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            for i in 0..n {
                sqlx::query(
                    "INSERT INTO events (message_id, user_id, kind, name, properties, ts, received_at)
                     VALUES ($1, $2, 'track', 'cart_updated', $3, $4, $4)",
                )
                .bind(format!("raw-{round}-{i}"))
                .bind(format!("user-{}", (round * n + i) % 50_000))
                .bind(r#"{"cart_value":42.5,"product_name":"Lamp","item_count":2}"#)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

/// One assignment as tests and operators read it, with the trigger of its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentRow {
    pub user_id: String,
    pub trigger_id: String,
    pub arm: String,
    pub status: String,
    pub reason: Option<String>,
}

impl Store {
    /// Every assignment of `campaign_id`, in entry order.
    pub async fn assignments_of(&self, campaign_id: &str) -> Result<Vec<AssignmentRow>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, String, String, Option<String>)>(
                "SELECT a.user_id, e.trigger_id, a.arm, a.status, a.reason
                 FROM assignments a JOIN entries e ON e.id = a.entry_id
                 WHERE a.campaign_id = $1 ORDER BY a.entry_id",
            )
            .bind(campaign_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(user_id, trigger_id, arm, status, reason)| AssignmentRow {
                user_id,
                trigger_id,
                arm,
                status,
                reason,
            })
            .collect()
        }))
    }

    /// Every outbox row as (user, campaign, outbox status, arm of its assignment).
    pub async fn outbox_arms(&self) -> Result<Vec<(String, String, String, String)>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, String, String)>(
                "SELECT o.user_id, o.campaign_id, o.status, a.arm
                 FROM outbox o JOIN assignments a ON a.id = o.assignment_id ORDER BY o.id",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Every send record as (user, campaign, channel), for caps and holdout checks.
    pub async fn all_sends(&self) -> Result<Vec<(String, String, String)>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT user_id, campaign_id, channel FROM sends ORDER BY id",
            )
            .fetch_all(pool)
            .await?
        }))
    }
}
