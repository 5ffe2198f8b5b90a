//! Writers for `nudge bench`: the raw references each stage is measured against, and bulk set-up
//! of users. Nothing here runs in the daemon.
//!
//! The references write the same rows into the same tables as nudge does, with nothing else:
//! no HTTP, JSON parsing, validation, user merging, rules or decisions. Multi-row INSERTs of
//! [`ROWS_PER_STATEMENT`] rows on SQLite; `COPY … FROM STDIN` on PostgreSQL where the stage says so.

use super::{Db, Result, Store, WritePool, with_db};

/// Rows per multi-row INSERT: 8 binds a row stays far below both backends' bind limits.
const ROWS_PER_STATEMENT: usize = 500;

/// One event row as the ingest benchmark sends it.
#[derive(Debug, Clone)]
pub struct BenchEvent {
    pub message_id: String,
    pub user_id: String,
    pub name: String,
    /// The properties as JSON text.
    pub properties: String,
    pub ts: i64,
}

/// One user row for bulk set-up.
#[derive(Debug, Clone)]
pub struct BenchUser {
    pub id: String,
    /// The traits as JSON text.
    pub traits: String,
    pub email: Option<String>,
    pub push_token: Option<String>,
    pub timezone: Option<String>,
    pub created_at: i64,
}

impl Store {
    /// The ingest reference: `rows` into `events` in one transaction, with batched multi-row
    /// INSERTs on SQLite and one `COPY` on PostgreSQL.
    pub async fn bench_insert_events(&self, rows: &[BenchEvent], received_at: i64) -> Result<()> {
        match &self.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_write(&self.gate).await?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let mut insert = sqlx::QueryBuilder::new(
                        "INSERT INTO events (message_id, user_id, kind, name, properties, ts, received_at) ",
                    );
                    insert.push_values(chunk, |mut row, e| {
                        row.push_bind(&e.message_id)
                            .push_bind(&e.user_id)
                            .push_bind("track")
                            .push_bind(&e.name)
                            .push_bind(&e.properties)
                            .push_bind(e.ts)
                            .push_bind(received_at);
                    });
                    insert.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut csv = String::with_capacity(rows.len() * 160);
                for e in rows {
                    csv.push_str(&format!(
                        "{},{},track,{},{},{},{received_at}\n",
                        csv_field(&e.message_id),
                        csv_field(&e.user_id),
                        csv_field(&e.name),
                        csv_field(&e.properties),
                        e.ts
                    ));
                }
                let mut conn = pool.acquire().await?;
                let mut copy = conn
                    .copy_in_raw(
                        "COPY events (message_id, user_id, kind, name, properties, ts, received_at) \
                         FROM STDIN (FORMAT csv)",
                    )
                    .await?;
                copy.send(csv.into_bytes()).await?;
                copy.finish().await?;
            }
        }
        Ok(())
    }

    /// Set-up: new users in one transaction, skipping ids already stored.
    pub async fn bench_insert_users(&self, users: &[BenchUser], now: i64) -> Result<()> {
        with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            for chunk in users.chunks(ROWS_PER_STATEMENT) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO users (id, traits, email, push_token, timezone, created_at, updated_at) ",
                );
                insert.push_values(chunk, |mut row, u| {
                    row.push_bind(&u.id)
                        .push_bind(&u.traits)
                        .push_bind(u.email.as_deref())
                        .push_bind(u.push_token.as_deref())
                        .push_bind(u.timezone.as_deref())
                        .push_bind(u.created_at)
                        .push_bind(now);
                });
                insert.push(" ON CONFLICT (id) DO NOTHING");
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The cron fan-out reference: for each of `users`, the rows a decision writes (an entry, an
    /// assignment, an outbox row and a message-log row of the same widths), batched multi-row
    /// INSERTs, one transaction per call. `first_id` keeps ids and keys unique across calls.
    pub async fn bench_insert_decisions(
        &self,
        users: &[String],
        first_id: i64,
        payload: &str,
        detail: &str,
        now: i64,
    ) -> Result<()> {
        with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            for (c, chunk) in users.chunks(ROWS_PER_STATEMENT).enumerate() {
                let base = first_id + (c * ROWS_PER_STATEMENT) as i64;
                let ids: Vec<i64> = (0..chunk.len() as i64).map(|i| base + i).collect();
                let keys: Vec<String> = ids.iter().map(|id| format!("bench:{id}")).collect();
                let mut entries = sqlx::QueryBuilder::new(
                    "INSERT INTO entries (id, campaign_id, user_id, trigger_id, dedupe_key, trigger_ts, \
                     trigger_event, due_at, status, created_at, decided_at) ",
                );
                entries.push_values(chunk.iter().zip(&ids).zip(&keys), |mut row, ((user, id), key)| {
                    row.push_bind(*id)
                        .push_bind("bench_reference")
                        .push_bind(user)
                        .push_bind("cron:bench")
                        .push_bind(key)
                        .push_bind(now)
                        .push_bind("{}")
                        .push_bind(now)
                        .push_bind("decided")
                        .push_bind(now)
                        .push_bind(now);
                });
                entries.build().execute(&mut *tx).await?;
                let mut assignments = sqlx::QueryBuilder::new(
                    "INSERT INTO assignments (id, entry_id, campaign_id, user_id, arm, channel, send_at, \
                     status, assigned_at, send_time_arm) ",
                );
                assignments.push_values(chunk.iter().zip(&ids), |mut row, (user, id)| {
                    row.push_bind(*id)
                        .push_bind(*id)
                        .push_bind("bench_reference")
                        .push_bind(user)
                        .push_bind("treatment")
                        .push_bind("email")
                        .push_bind(now)
                        .push_bind("scheduled")
                        .push_bind(now)
                        .push_bind("fallback");
                });
                assignments.build().execute(&mut *tx).await?;
                let mut outbox = sqlx::QueryBuilder::new(
                    "INSERT INTO outbox (id, idempotency_key, assignment_id, campaign_id, user_id, channel, \
                     priority, recipient, payload, status, due_at, next_attempt_at, created_at) ",
                );
                outbox.push_values(chunk.iter().zip(&ids).zip(&keys), |mut row, ((user, id), key)| {
                    row.push_bind(*id)
                        .push_bind(key)
                        .push_bind(*id)
                        .push_bind("bench_reference")
                        .push_bind(user)
                        .push_bind("email")
                        .push_bind(10_i64)
                        .push_bind(user)
                        .push_bind(payload)
                        .push_bind("pending")
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(now);
                });
                outbox.build().execute(&mut *tx).await?;
                let mut log = sqlx::QueryBuilder::new(
                    "INSERT INTO message_log (user_id, campaign_id, entry_id, outbox_id, at, kind, detail) ",
                );
                log.push_values(chunk.iter().zip(&ids), |mut row, (user, id)| {
                    row.push_bind(user)
                        .push_bind("bench_reference")
                        .push_bind(*id)
                        .push_bind(*id)
                        .push_bind(now)
                        .push_bind("decided")
                        .push_bind(detail);
                });
                log.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes every row the cron fan-out reference wrote.
    pub async fn bench_clear_reference(&self) -> Result<()> {
        with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            for sql in [
                "DELETE FROM message_log WHERE campaign_id = 'bench_reference'",
                "DELETE FROM outbox WHERE campaign_id = 'bench_reference'",
                "DELETE FROM assignments WHERE campaign_id = 'bench_reference'",
                "DELETE FROM entries WHERE campaign_id = 'bench_reference'",
            ] {
                sqlx::query(sql).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// One stored outbox payload and one message-log detail, so a reference writes rows of the
    /// width nudge writes.
    pub async fn bench_sample_rows(&self) -> Result<(String, String)> {
        Ok(with_db!(self, |pool| {
            let payload = sqlx::query_scalar::<_, String>("SELECT payload FROM outbox ORDER BY id LIMIT 1")
                .fetch_optional(pool)
                .await?
                .unwrap_or_default();
            let detail =
                sqlx::query_scalar::<_, String>("SELECT detail FROM message_log ORDER BY id DESC LIMIT 1")
                    .fetch_optional(pool)
                    .await?
                    .unwrap_or_default();
            (payload, detail)
        }))
    }

    /// Entries not yet decided.
    pub async fn bench_waiting_entries(&self) -> Result<i64> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM entries WHERE status = 'waiting'")
                .fetch_one(pool)
                .await?
        }))
    }

    /// Messages no longer pending (sent, failed or capped): the delivery stage's progress.
    pub async fn bench_finished(&self) -> Result<i64> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox WHERE status <> 'pending'")
                .fetch_one(pool)
                .await?
        }))
    }
}

/// A CSV field for `COPY … (FORMAT csv)`: quoted, with quotes doubled.
fn csv_field(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}
