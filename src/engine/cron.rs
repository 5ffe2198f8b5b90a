//! Scheduled campaigns (`when.schedule`).
//!
//! tokio-cron-scheduler fires the schedule on every node; [`fire`] inserts a firing row keyed by
//! (campaign, scheduled time), and only the node whose insert wins fans the campaign out to all
//! users, in the same transaction. A unique row rather than an advisory lock, so it also holds on
//! PostgreSQL-compatible distributed databases. The scheduler is rebuilt when the rules change.

use std::sync::Arc;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::{rules::Trigger, store::StoreError};

/// The scheduled instant a firing at `now` belongs to: the latest occurrence at or before `now`.
/// Every node computes the same instant, which is what makes the firing row unique.
pub fn scheduled_instant(expr: &str, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .ok()?;
    // Whole seconds: croner hands back the input itself when it falls in a matching second, and
    // two nodes firing a few milliseconds apart must name the same instant.
    let now = now.with_nanosecond(0).unwrap_or(now);
    cron.find_previous_occurrence(&now.with_timezone(&tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Fans one firing of `campaign_id` out to every user, unless another node already did.
/// Returns the number of entries created, or `None` when this node lost the race.
pub async fn fire(
    engine: &Engine,
    campaign_id: &str,
    fire_at: DateTime<Utc>,
) -> Result<Option<u64>, StoreError> {
    let rules = engine.rules.current();
    let Some(campaign) = rules.campaigns.get(campaign_id) else {
        return Ok(None);
    };
    if !campaign.enabled || engine.is_paused(campaign_id) {
        tracing::info!(campaign = campaign_id, "CronSkipped: campaign disabled or paused");
        return Ok(None);
    }
    let created = engine
        .store
        .fire_cron(campaign, fire_at, &engine.config.node_id, engine.now())
        .await?;
    match created {
        Some(n) => {
            tracing::info!(campaign = campaign_id, fire_at = %fire_at, entries = n, "CronFired");
            metrics::counter!("nudge_cron_firings_total").increment(1);
            engine.wake();
        }
        None => tracing::debug!(campaign = campaign_id, fire_at = %fire_at, "CronFiredElsewhere"),
    }
    Ok(created)
}

/// Runs the schedules of the rule set in service until cancelled, rebuilding them on reload.
pub async fn run(engine: Arc<Engine>, cancel: CancellationToken) {
    loop {
        let rules = engine.rules.current();
        let mut scheduler = match schedule_all(&engine).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "CronSchedulerFailed");
                None
            }
        };
        // Wait for a reload (a new rule set) or shutdown.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    if let Some(s) = scheduler.as_mut() { let _ = s.shutdown().await; }
                    return;
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            if !Arc::ptr_eq(&rules, &engine.rules.current()) {
                break;
            }
        }
        if let Some(s) = scheduler.as_mut() {
            let _ = s.shutdown().await;
        }
    }
}

async fn schedule_all(
    engine: &Arc<Engine>,
) -> Result<Option<JobScheduler>, tokio_cron_scheduler::JobSchedulerError> {
    let rules = engine.rules.current();
    let tz = rules.global.timezone;
    let schedules: Vec<(String, String)> = rules
        .campaigns
        .values()
        .filter(|c| c.enabled)
        .filter_map(|c| match &c.trigger {
            Trigger::Schedule(expr) => Some((c.id.clone(), expr.clone())),
            Trigger::Event(_) => None,
        })
        .collect();
    if schedules.is_empty() {
        return Ok(None);
    }
    let scheduler = JobScheduler::new().await?;
    for (campaign_id, expr) in schedules {
        let engine = engine.clone();
        let job_expr = expr.clone();
        let job = Job::new_async_tz(expr.as_str(), tz, move |_id, _lock| {
            let engine = engine.clone();
            let campaign_id = campaign_id.clone();
            let expr = job_expr.clone();
            Box::pin(async move {
                let Some(fire_at) = scheduled_instant(&expr, tz, Utc::now()) else {
                    return;
                };
                if let Err(e) = fire(&engine, &campaign_id, fire_at).await {
                    tracing::error!(campaign = %campaign_id, error = %e, "CronFireFailed");
                }
            })
        })?;
        scheduler.add(job).await?;
    }
    scheduler.start().await?;
    Ok(Some(scheduler))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_instant_is_the_tick_just_passed() {
        let now: DateTime<Utc> = "2026-11-23T09:00:00.400Z".parse().unwrap(); // a Monday
        let at = scheduled_instant("0 0 9 * * Mon", Tz::UTC, now).unwrap();
        assert_eq!(at, "2026-11-23T09:00:00Z".parse::<DateTime<Utc>>().unwrap());
        let berlin = scheduled_instant("0 0 9 * * *", chrono_tz::Europe::Berlin, now).unwrap();
        assert_eq!(berlin, "2026-11-23T08:00:00Z".parse::<DateTime<Utc>>().unwrap());
    }
}
