//! Consistency checks over what the decision, claim and finish transactions write together.
//! Each check counts rows that break one invariant; a healthy store has none, whatever crashed
//! when. The reliability tests run these after every injected fault and every `kill -9`
//! (`RELIABILITY.md`), and an operator can run them against a live database: they only read.

use super::{Result, Store, with_db};

/// Every invariant, as (what must hold, SQL counting the rows that break it).
pub const INVARIANTS: &[(&str, &str)] = &[
    (
        "every outbox row has its assignment",
        "SELECT COUNT(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM assignments a WHERE a.id = o.assignment_id)",
    ),
    (
        "every scheduled or delivered treatment assignment has its outbox row",
        "SELECT COUNT(*) FROM assignments a WHERE a.arm = 'treatment' AND a.status IN ('scheduled', 'delivered')
             AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.assignment_id = a.id)",
    ),
    (
        "every decided entry has its assignment",
        "SELECT COUNT(*) FROM entries e WHERE e.status = 'decided'
             AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.entry_id = e.id)",
    ),
    (
        "every assignment belongs to a decided entry",
        "SELECT COUNT(*) FROM assignments a WHERE NOT EXISTS
             (SELECT 1 FROM entries e WHERE e.id = a.entry_id AND e.status = 'decided')",
    ),
    (
        "outbox and assignment agree (sent = delivered, pending = scheduled, capped = capped)",
        "SELECT COUNT(*) FROM outbox o JOIN assignments a ON a.id = o.assignment_id WHERE
             (o.status = 'sent' AND a.status <> 'delivered') OR (a.status = 'delivered' AND o.status <> 'sent')
             OR (o.status = 'pending' AND a.status <> 'scheduled') OR (o.status = 'capped' AND a.status <> 'capped')",
    ),
    (
        "every send record belongs to a sent or currently leased message",
        "SELECT COUNT(*) FROM sends s WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.id = s.outbox_id
             AND (o.status = 'sent' OR (o.status = 'pending' AND o.lease_owner IS NOT NULL)))",
    ),
    (
        "every sent or currently leased message has its send record",
        "SELECT COUNT(*) FROM outbox o WHERE (o.status = 'sent' OR (o.status = 'pending' AND o.lease_owner IS NOT NULL))
             AND NOT EXISTS (SELECT 1 FROM sends s WHERE s.outbox_id = o.id)",
    ),
    (
        "every engine-written outbox row has the decision's log row",
        "SELECT COUNT(*) FROM outbox o JOIN assignments a ON a.id = o.assignment_id
             JOIN entries e ON e.id = a.entry_id WHERE e.trigger_id NOT LIKE 'direct:%'
             AND NOT EXISTS (SELECT 1 FROM message_log m WHERE m.outbox_id = o.id AND m.entry_id = e.id)",
    ),
];

/// One outbox row as the reliability checks read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxState {
    pub id: i64,
    pub idempotency_key: String,
    pub user_id: String,
    pub recipient: String,
    pub status: String,
    pub lease_owner: Option<String>,
    pub lease_version: i64,
    pub attempts: i64,
}

impl Store {
    /// The invariants that do not hold, with how many rows break each. Empty when consistent.
    pub async fn integrity_violations(&self) -> Result<Vec<(&'static str, i64)>> {
        let mut broken = Vec::new();
        for (what, sql) in INVARIANTS {
            let n: i64 = with_db!(self, |pool| sqlx::query_scalar(*sql).fetch_one(pool).await?);
            if n > 0 {
                broken.push((*what, n));
            }
        }
        Ok(broken)
    }

    /// Every outbox row, by id.
    pub async fn outbox_states(&self) -> Result<Vec<OutboxState>> {
        let rows = with_db!(self, |pool| {
            sqlx::query_as::<_, (i64, String, String, String, String, Option<String>, i64, i64)>(
                "SELECT id, idempotency_key, user_id, recipient, status, lease_owner, lease_version, attempts
                 FROM outbox ORDER BY id",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(id, idempotency_key, user_id, recipient, status, lease_owner, lease_version, attempts)| {
                    OutboxState {
                        id,
                        idempotency_key,
                        user_id,
                        recipient,
                        status,
                        lease_owner,
                        lease_version,
                        attempts,
                    }
                },
            )
            .collect())
    }

    /// Send records per user, most first: what frequency caps count.
    pub async fn sends_per_user(&self) -> Result<Vec<(String, i64)>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT user_id, COUNT(*) AS n FROM sends GROUP BY user_id ORDER BY n DESC, user_id",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Message ids of the stored events (for "every acknowledged event is stored").
    pub async fn event_message_ids(&self) -> Result<Vec<String>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, String>("SELECT message_id FROM events")
                .fetch_all(pool)
                .await?
        }))
    }

    /// Message-log rows of one kind (`sent`, `bounced`, …) about outbox message `id`.
    pub async fn outbox_log_count(&self, id: i64, kind: &str) -> Result<i64> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM message_log WHERE outbox_id = $1 AND kind = $2",
            )
            .bind(id)
            .bind(kind)
            .fetch_one(pool)
            .await?
        }))
    }
}
