//! Trained models: every training run's outcome (promoted, rejected, or not trained for lack of
//! data), the one in service per (kind, goal), and the feature drift measured at each run.
//!
//! The store keeps models as JSON text and knows nothing of their insides ([`crate::ml::models`]
//! does). Promotion is one transaction: the new row becomes `serving` and the previous one
//! `retired`, so at most one model per (kind, goal) serves, on every node.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Result, Store, WritePool, with_db};
use crate::clock::{from_millis, to_millis};

/// A training run's outcome, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRow {
    pub id: i64,
    pub kind: String,
    /// The goal event of a propensity model; empty otherwise.
    pub goal: String,
    pub version: i64,
    /// `serving`, `retired`, `rejected` or `insufficient`.
    pub status: String,
    pub reason: String,
    pub trained_at: DateTime<Utc>,
    pub node: String,
    /// The model card (metrics, baselines, drift reference); `{}` when nothing was trained.
    pub card: Value,
    /// The model itself (JSON), when it was trained and asked for.
    #[serde(skip)]
    pub artifact: Option<String>,
}

/// What a training run hands the store.
#[derive(Debug, Clone)]
pub struct NewModel<'a> {
    pub kind: &'a str,
    pub goal: &'a str,
    /// `serving` promotes it (retiring the model in service); anything else only records it.
    pub status: &'a str,
    pub reason: &'a str,
    pub trained_at: DateTime<Utc>,
    pub node: &'a str,
    pub card: &'a Value,
    pub artifact: Option<&'a str>,
}

#[derive(Clone, Copy)]
enum Filter {
    Id(i64),
    Serving,
    All,
}

type Row = (
    i64,
    String,
    String,
    i64,
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
);

fn model_row(r: Row) -> Result<ModelRow> {
    Ok(ModelRow {
        id: r.0,
        kind: r.1,
        goal: r.2,
        version: r.3,
        status: r.4,
        reason: r.5,
        trained_at: from_millis(r.6),
        node: r.7,
        card: serde_json::from_str(&r.8)?,
        artifact: r.9,
    })
}

impl Store {
    /// Records a training run's outcome under the next version of its (kind, goal); a `serving`
    /// row retires the one it replaces in the same transaction.
    pub async fn insert_model(&self, m: &NewModel<'_>) -> Result<ModelRow> {
        let card = serde_json::to_string(m.card)?;
        let id = with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            let version: i64 = sqlx::query_scalar::<_, i64>(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE kind = $1 AND goal = $2",
            )
            .bind(m.kind)
            .bind(m.goal)
            .fetch_one(&mut *tx)
            .await?;
            if m.status == "serving" {
                sqlx::query(
                    "UPDATE models SET status = 'retired' WHERE kind = $1 AND goal = $2 AND status = 'serving'",
                )
                .bind(m.kind)
                .bind(m.goal)
                .execute(&mut *tx)
                .await?;
            }
            let id: i64 = sqlx::query_scalar::<_, i64>(
                "INSERT INTO models (kind, goal, version, status, reason, trained_at, node, card, artifact)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .bind(m.kind)
            .bind(m.goal)
            .bind(version)
            .bind(m.status)
            .bind(m.reason)
            .bind(to_millis(m.trained_at))
            .bind(m.node)
            .bind(&card)
            .bind(m.artifact)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            id
        });
        let mut rows = self.models_where(Filter::Id(id)).await?;
        Ok(rows.remove(0))
    }

    /// The models in service, with their artifacts.
    pub async fn serving_models(&self) -> Result<Vec<ModelRow>> {
        self.models_where(Filter::Serving).await
    }

    /// Every recorded run, newest first, without artifacts (model cards and reports).
    pub async fn model_history(&self) -> Result<Vec<ModelRow>> {
        self.models_where(Filter::All).await
    }

    async fn models_where(&self, filter: Filter) -> Result<Vec<ModelRow>> {
        macro_rules! select {
            ($artifact:literal, $condition:literal) => {
                concat!(
                    "SELECT id, kind, goal, version, status, reason, trained_at, node, card, ",
                    $artifact,
                    " FROM models WHERE ",
                    $condition,
                    " ORDER BY kind, goal, version DESC"
                )
            };
        }
        let sql = match filter {
            Filter::Id(_) => select!("NULL", "id = $1"),
            Filter::Serving => select!("artifact", "status = 'serving'"),
            Filter::All => select!("NULL", "1 = 1"),
        };
        let rows = with_db!(self, |pool| {
            let mut q = sqlx::query_as::<_, Row>(sql);
            if let Filter::Id(id) = filter {
                q = q.bind(id);
            }
            q.fetch_all(pool).await?
        });
        rows.into_iter().map(model_row).collect()
    }

    /// Records the drift (PSI per feature) of a model in service, measured at `at`.
    pub async fn insert_model_drift(&self, model_id: i64, at: DateTime<Utc>, psi: &Value) -> Result<()> {
        let psi = serde_json::to_string(psi)?;
        with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            sqlx::query(
                "INSERT INTO model_drift (model_id, measured_at, psi) VALUES ($1, $2, $3)
                 ON CONFLICT (model_id, measured_at) DO NOTHING",
            )
            .bind(model_id)
            .bind(to_millis(at))
            .bind(&psi)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Every drift measurement, oldest first: (model id, when, PSI per feature).
    pub async fn model_drift(&self) -> Result<Vec<(i64, DateTime<Utc>, Value)>> {
        let rows = with_db!(self, |pool| {
            sqlx::query_as::<_, (i64, i64, String)>(
                "SELECT model_id, measured_at, psi FROM model_drift ORDER BY measured_at, model_id",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(id, at, psi)| Ok((id, from_millis(at), serde_json::from_str(&psi)?)))
            .collect()
    }

    /// Claims one firing of a daemon job (e.g. `@train`) for this node: true for exactly one
    /// node per (job, scheduled instant), through the same unique row as campaign schedules.
    pub async fn claim_job_firing(
        &self,
        job: &str,
        fire_at: DateTime<Utc>,
        node: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let won = with_db!(self, |pool| {
            let mut tx = pool.begin_write(&self.gate).await?;
            let won = sqlx::query(
                "INSERT INTO cron_firings (campaign_id, fire_at, node, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (campaign_id, fire_at) DO NOTHING",
            )
            .bind(job)
            .bind(to_millis(fire_at))
            .bind(node)
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            won
        });
        Ok(won == 1)
    }

    /// (all users, users with no stored event): the cold starts the fallbacks serve.
    pub async fn cold_start_users(&self) -> Result<(i64, i64)> {
        Ok(with_db!(self, |pool| {
            let all: i64 = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
                .fetch_one(pool)
                .await?;
            let cold: i64 = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id)",
            )
            .fetch_one(pool)
            .await?;
            (all, cold)
        }))
    }

    /// Assignments with a predicted send time, by how it was chosen.
    pub async fn send_time_arms(&self) -> Result<Vec<(String, i64)>> {
        Ok(with_db!(self, |pool| {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT send_time_arm, COUNT(*) FROM assignments WHERE send_time_arm IS NOT NULL
                 GROUP BY send_time_arm ORDER BY send_time_arm",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// The share of users with `event` in `[since, now)`: the base rate a propensity falls back
    /// to before any model of that goal was trained.
    pub async fn goal_base_rate(&self, event: &str, since: DateTime<Utc>, now: DateTime<Utc>) -> Result<f64> {
        let (with_goal, users) = with_db!(self, |pool| {
            let with_goal: i64 = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(DISTINCT user_id) FROM events WHERE name = $1 AND ts >= $2 AND ts < $3",
            )
            .bind(event)
            .bind(to_millis(since))
            .bind(to_millis(now))
            .fetch_one(pool)
            .await?;
            let users: i64 = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
                .fetch_one(pool)
                .await?;
            (with_goal, users)
        });
        Ok(if users == 0 {
            0.0
        } else {
            with_goal as f64 / users as f64
        })
    }
}
