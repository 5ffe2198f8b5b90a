//! A training run: read the store's history once, train each model asked for (a propensity model
//! per goal the rules use), compare each with the model in service and its baseline on the
//! held-out recent slice, promote the winners, and record every outcome — promoted, rejected, or
//! not trained for lack of data — with the drift of the model in service.
//!
//! Runs from `nudge train` and on the daemon's schedule (one node per firing, see
//! [`crate::app`]). Training is CPU work and runs on a blocking thread.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::{
    models::{self, Goal, History, Model, ModelCard, ModelKind, TrainError, TrainOptions},
    serving::{goals_of, version_label},
};
use crate::{
    clock::to_millis,
    rules::RuleSet,
    store::{HistoryEvent, NewModel, Store, StoreError},
};

/// What one model's training came to.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub kind: ModelKind,
    /// The goal event of a propensity model.
    pub goal: Option<String>,
    /// `serving` (promoted), `rejected`, or `insufficient` (not trained).
    pub status: String,
    pub reason: String,
    /// `send_time-v3`, …
    pub version: String,
    pub seconds: f64,
    pub card: Option<ModelCard>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("training {kind} failed: {source}")]
    Train { kind: String, source: TrainError },
    #[error("training thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The models a run trains: `only`, or all three kinds (propensity once per goal of the rules).
pub fn plan(rules: &RuleSet, only: Option<ModelKind>) -> Vec<(ModelKind, Option<Goal>)> {
    let mut plan = Vec::new();
    for kind in [ModelKind::SendTime, ModelKind::Channel, ModelKind::Propensity] {
        if only.is_some_and(|k| k != kind) {
            continue;
        }
        if kind == ModelKind::Propensity {
            plan.extend(goals_of(rules).into_iter().map(|g| (kind, Some(g))));
        } else {
            plan.push((kind, None));
        }
    }
    plan
}

/// Trains, judges and records every model of `plan(rules, only)`; `progress` hears of each step.
pub async fn run(
    store: &Store,
    rules: &RuleSet,
    only: Option<ModelKind>,
    now: DateTime<Utc>,
    node: &str,
    opts: &TrainOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<TrainOutcome>, TrainingError> {
    let plan = plan(rules, only);
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    progress("reading history");
    let at = to_millis(now);
    let history = std::sync::Arc::new(History {
        users: store.history_users().await?,
        events: store.history_events(at).await?,
    });
    progress(&format!(
        "read {} users and {} events",
        history.users.len(),
        history.events.len()
    ));
    let serving = store.serving_models().await?;
    let mut outcomes = Vec::with_capacity(plan.len());
    for (kind, goal) in plan {
        let goal_event = goal.as_ref().map(|g| g.event.clone()).unwrap_or_default();
        let label = if goal_event.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{goal_event}")
        };
        progress(&format!("training {label}"));
        let started = Instant::now();
        let mut opts = opts.clone();
        opts.now = at;
        let trained = {
            let history = history.clone();
            let goal = goal.clone();
            tokio::task::spawn_blocking(move || models::train(kind, goal.as_ref(), &history, &opts)).await?
        };
        let seconds = started.elapsed().as_secs_f64();
        let current = serving
            .iter()
            .find(|r| r.kind == kind.to_string() && r.goal == goal_event);
        let (status, reason, card, artifact) = match trained {
            Ok(t) => {
                let current_card: Option<ModelCard> =
                    current.and_then(|r| serde_json::from_value(r.card.clone()).ok());
                let (promote, why) = models::should_promote(&t.card, current_card.as_ref());
                let artifact = serde_json::to_string(&t.model).expect("a model serialises");
                let status = if promote { "serving" } else { "rejected" };
                (status, why, Some(t.card), Some(artifact))
            }
            Err(TrainError::NotEnoughData {
                rows,
                positives,
                needed,
            }) => (
                "insufficient",
                format!(
                    "not trained: {rows} rows and {positives} positives, at least {needed} rows and 30 positives needed; the fallback serves"
                ),
                None,
                None,
            ),
            Err(source) => {
                return Err(TrainingError::Train { kind: label, source });
            }
        };
        let card_json = card.as_ref().map_or_else(|| json!({}), |c| json!(c));
        let row = store
            .insert_model(&NewModel {
                kind: &kind.to_string(),
                goal: &goal_event,
                status,
                reason: &reason,
                trained_at: now,
                node,
                card: &card_json,
                artifact: artifact.as_deref(),
            })
            .await?;
        if let Some(current) = current {
            record_drift(store, &history, current, now).await?;
        }
        let version = version_label(&row.kind, &row.goal, row.version);
        tracing::info!(model = %version, status, reason = %reason, seconds, "ModelTrained");
        progress(&format!("{version}: {status} ({reason})"));
        outcomes.push(TrainOutcome {
            kind,
            goal: goal.map(|g| g.event),
            status: status.to_string(),
            reason,
            version,
            seconds,
            card,
        });
    }
    Ok(outcomes)
}

/// PSI of today's features against the training reference of the model in service.
async fn record_drift(
    store: &Store,
    history: &History,
    current: &crate::store::ModelRow,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(card) = serde_json::from_value::<ModelCard>(current.card.clone()).ok() else {
        return Ok(());
    };
    let Some(model) = current
        .artifact
        .as_deref()
        .and_then(|a| serde_json::from_str::<Model>(a).ok())
    else {
        return Ok(());
    };
    let at = to_millis(now);
    let space = model.feature_space();
    let mut by_user: std::collections::HashMap<&str, Vec<&HistoryEvent>> = std::collections::HashMap::new();
    for e in &history.events {
        by_user.entry(e.user_id.as_str()).or_default().push(e);
    }
    let rows: Vec<_> = history
        .users
        .iter()
        .map(|u| {
            let events = by_user.get(u.id.as_str()).map_or(&[][..], Vec::as_slice);
            space.features(u, events, at)
        })
        .collect();
    let psi = models::drift(&card, &model, &rows);
    store.insert_model_drift(current.id, now, &json!(psi)).await
}

/// The daemon's model loop: loads the models in service at start, re-reads them every
/// [`RELOAD_EVERY`] (promotions made by another node, and the base rates that move with the data)
/// and trains on `schedule` (cron with seconds, UTC, through tokio-cron-scheduler), on the one
/// node whose firing row wins.
pub async fn run_in_daemon(
    engine: std::sync::Arc<crate::engine::Engine>,
    schedule: Option<String>,
    cancel: tokio_util::sync::CancellationToken,
) {
    reload(&engine).await;
    let mut scheduler = match schedule {
        Some(expr) => match schedule_training(engine.clone(), expr).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "TrainingScheduleFailed: models are trained by `nudge train` only");
                None
            }
        },
        None => None,
    };
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => reload(&engine).await,
        }
    }
    if let Some(s) = scheduler.as_mut() {
        let _ = s.shutdown().await;
    }
}

async fn reload(engine: &crate::engine::Engine) {
    let rules = engine.rules.current();
    if let Err(e) = engine.predictor.reload(&engine.store, &rules, engine.now()).await {
        tracing::warn!(error = %e, "ModelReloadFailed: the models loaded before stay in service");
    }
}

async fn schedule_training(
    engine: std::sync::Arc<crate::engine::Engine>,
    expr: String,
) -> Result<tokio_cron_scheduler::JobScheduler, tokio_cron_scheduler::JobSchedulerError> {
    let scheduler = tokio_cron_scheduler::JobScheduler::new().await?;
    let job_expr = expr.clone();
    let job = tokio_cron_scheduler::Job::new_async_tz(expr.as_str(), chrono_tz::UTC, move |_id, _lock| {
        let engine = engine.clone();
        let expr = job_expr.clone();
        Box::pin(async move {
            let now = engine.now();
            let Some(due) = crate::engine::cron::scheduled_instant(&expr, chrono_tz::UTC, now) else {
                return;
            };
            scheduled_run(&engine, due).await;
        })
    })?;
    scheduler.add(job).await?;
    scheduler.start().await?;
    Ok(scheduler)
}

/// One scheduled training: trains on this node only if its firing row wins, then reloads.
pub async fn scheduled_run(engine: &crate::engine::Engine, due: DateTime<Utc>) {
    let now = engine.now();
    match engine
        .store
        .claim_job_firing("@train", due, &engine.config.node_id, now)
        .await
    {
        Ok(true) => {
            tracing::info!(fire_at = %due, "TrainingStarted");
            let rules = engine.rules.current();
            let opts = TrainOptions::default();
            match run(
                &engine.store,
                &rules,
                None,
                now,
                &engine.config.node_id,
                &opts,
                &|_| {},
            )
            .await
            {
                Ok(outcomes) => {
                    let promoted = outcomes.iter().filter(|o| o.status == "serving").count();
                    tracing::info!(models = outcomes.len(), promoted, "TrainingFinished");
                }
                Err(e) => tracing::error!(error = %e, "TrainingFailed: the models in service stay"),
            }
            reload(engine).await;
        }
        Ok(false) => tracing::debug!(fire_at = %due, "TrainingRanElsewhere"),
        Err(e) => tracing::warn!(error = %e, "TrainingNotClaimed"),
    }
}

/// How often a daemon re-reads the models in service.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(300);
