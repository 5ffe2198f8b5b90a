//! Daily lift snapshots: one row per campaign per UTC day, written by
//! [`crate::experiments::snapshots`] and read back for `nudge report lift --history`.
//!
//! The primary key (campaign, day) is what makes a day's snapshot happen once across nodes: every
//! node may compute it, the first insert wins and the others' inserts do nothing.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Result, Store, WritePool, with_db};
use crate::clock::{from_millis, to_millis};

/// One campaign's lift as of the end of one day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiftSnapshotRow {
    pub campaign_id: String,
    pub day: NaiveDate,
    /// The end of the report's window: the end of `day`, or when it was taken if earlier.
    pub as_of: DateTime<Utc>,
    pub treatment_users: i64,
    pub treatment_conversions: i64,
    /// Sum of goal values; `None` when the goal has no `value:`.
    pub treatment_value: Option<f64>,
    pub holdout_users: i64,
    pub holdout_conversions: i64,
    pub holdout_value: Option<f64>,
    /// The whole `LiftReport`, as the JSON report prints it.
    pub report: Value,
    pub node: String,
    pub taken_at: DateTime<Utc>,
}

type Row = (
    String,
    String,
    i64,
    i64,
    i64,
    Option<f64>,
    i64,
    i64,
    Option<f64>,
    String,
    String,
    i64,
);

impl Store {
    /// How many snapshots exist for `day` (any campaign).
    pub async fn lift_snapshots_on(&self, day: NaiveDate) -> Result<i64> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM lift_snapshots WHERE day = $1")
                .bind(day.to_string())
                .fetch_one(pool)
                .await?
        }))
    }

    /// Writes `rows` in one transaction; a (campaign, day) already stored is left as it is.
    /// Returns how many rows were written.
    pub async fn insert_lift_snapshots(&self, rows: &[LiftSnapshotRow]) -> Result<u64> {
        let mut written = 0;
        with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            for r in rows {
                written += sqlx::query(
                    "INSERT INTO lift_snapshots (campaign_id, day, as_of, treatment_users, treatment_conversions,
                        treatment_value, holdout_users, holdout_conversions, holdout_value, report, node, taken_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (campaign_id, day) DO NOTHING",
                )
                .bind(&r.campaign_id)
                .bind(r.day.to_string())
                .bind(to_millis(r.as_of))
                .bind(r.treatment_users)
                .bind(r.treatment_conversions)
                .bind(r.treatment_value)
                .bind(r.holdout_users)
                .bind(r.holdout_conversions)
                .bind(r.holdout_value)
                .bind(r.report.to_string())
                .bind(&r.node)
                .bind(to_millis(r.taken_at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
        });
        Ok(written)
    }

    /// Stored snapshots, by campaign then day; only `campaign`'s when given.
    pub async fn lift_snapshots(&self, campaign: Option<&str>) -> Result<Vec<LiftSnapshotRow>> {
        let rows: Vec<Row> = with_db!(self, |pool| {
            sqlx::query_as::<_, Row>(
                "SELECT campaign_id, day, as_of, treatment_users, treatment_conversions, treatment_value,
                     holdout_users, holdout_conversions, holdout_value, report, node, taken_at
                 FROM lift_snapshots WHERE $1 IS NULL OR campaign_id = $1 ORDER BY campaign_id, day",
            )
            .bind(campaign)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(LiftSnapshotRow {
                    campaign_id: r.0,
                    day: r.1.parse().unwrap_or_default(),
                    as_of: from_millis(r.2),
                    treatment_users: r.3,
                    treatment_conversions: r.4,
                    treatment_value: r.5,
                    holdout_users: r.6,
                    holdout_conversions: r.7,
                    holdout_value: r.8,
                    report: serde_json::from_str(&r.9)?,
                    node: r.10,
                    taken_at: from_millis(r.11),
                })
            })
            .collect()
    }
}
