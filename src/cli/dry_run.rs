//! `nudge dry-run`: replays stored history through a rules folder, sending and writing nothing.
//!
//! The users and events are copied into a scratch SQLite file and fed through the very engine
//! `serve` runs, with a manual clock stepped from one due time (or cron firing) to the next, so
//! the counts are what `serve` would have done with the same events. The scratch file is deleted
//! afterwards. Caps checked at delivery time are not simulated (nothing is delivered).
//! Predictions (`predict.*`, `send_time: predicted`, `choose: predicted`) come from the models
//! in service in the deployment, scored on its history as it stood at each decision.

use std::{collections::BTreeMap, fmt::Write, path::Path, sync::Arc};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::AppError;
use crate::{
    clock::{ManualClock, SharedClock},
    config::Settings,
    engine::{Engine, EngineConfig, cron},
    ml::serving::Predictor,
    rules::{self, RulesHandle, Trigger},
    store::{CampaignOutcome, Store, Triggering},
    tracking::tokens::Signer,
};

#[derive(Debug, Serialize)]
pub struct DryRunReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub users: usize,
    pub events_replayed: usize,
    pub cron_firings: usize,
    pub campaigns: BTreeMap<String, CampaignOutcome>,
}

impl DryRunReport {
    /// Users who would have been messaged by a campaign, per channel.
    pub fn messaged(&self, campaign: &str) -> BTreeMap<String, i64> {
        let mut by_channel = BTreeMap::new();
        if let Some(o) = self.campaigns.get(campaign) {
            for (arm, status, channel, n) in &o.assignments {
                if arm == "treatment" && status == "scheduled" {
                    *by_channel.entry(channel.clone().unwrap_or_default()).or_default() += n;
                }
            }
        }
        by_channel
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dry run {} → {}: {} users, {} events replayed, {} cron firings\n",
            self.from.format("%Y-%m-%d %H:%M"),
            self.to.format("%Y-%m-%d %H:%M"),
            self.users,
            self.events_replayed,
            self.cron_firings
        );
        if self.campaigns.is_empty() {
            let _ = writeln!(s, "no campaign was entered");
        }
        for (campaign, o) in &self.campaigns {
            let messaged = self.messaged(campaign);
            let total: i64 = messaged.values().sum();
            let channels: Vec<String> = messaged.iter().map(|(c, n)| format!("{c} {n}")).collect();
            let _ = writeln!(s, "{campaign}");
            let _ = writeln!(s, "  entered         {}", o.entered);
            let _ = writeln!(
                s,
                "  would message   {total}  ({})",
                if channels.is_empty() {
                    "-".into()
                } else {
                    channels.join(", ")
                }
            );
            for (arm, status, channel, n) in &o.assignments {
                if !(arm == "treatment" && status == "scheduled") {
                    let _ = writeln!(
                        s,
                        "  {arm:<9} {status:<10} {:<6} {n}",
                        channel.as_deref().unwrap_or("-")
                    );
                }
            }
            if o.still_waiting > 0 {
                let _ = writeln!(s, "  still waiting   {}", o.still_waiting);
            }
            for (reason, n) in &o.skipped {
                let _ = writeln!(s, "  skipped {n:>7}  {reason}");
            }
            for (user, channel, at) in &o.sample {
                let _ = writeln!(
                    s,
                    "  e.g. {user} by {channel} at {}",
                    at.format("%Y-%m-%d %H:%M UTC")
                );
            }
            let _ = writeln!(s);
        }
        s
    }
}

/// Replays the last `since` of stored events through the rules in `dir`.
pub async fn dry_run(
    settings: &Settings,
    dir: &Path,
    since: Duration,
    sample: usize,
) -> Result<DryRunReport, AppError> {
    let rules = rules::load_dir(dir).map_err(AppError::InvalidRules)?;
    let source = Store::connect(&settings.database_url).await?;
    let now = Utc::now();
    replay(&source, rules, now - since, now, sample).await
}

/// The replay itself, over any source store and window (tests call it with their own clock).
pub async fn replay(
    source: &Store,
    rules: rules::RuleSet,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    sample: usize,
) -> Result<DryRunReport, AppError> {
    // Conditions may count events from before the window: bring that history along untriggered.
    let lookback = rules
        .campaigns
        .values()
        .flat_map(|c| c.counts.iter().map(|u| u.window))
        .max()
        .unwrap_or_default();
    let scratch_path =
        std::env::temp_dir().join(format!("nudge-dry-run-{}.db", uuid::Uuid::new_v4().simple()));
    let scratch = Store::connect(&format!("sqlite://{}", scratch_path.display())).await?;
    let result = async {
        scratch.migrate().await?;
        // Same salt, same global control group as the deployment being replayed.
        if let Some(salt) = source.setting("control_salt").await? {
            scratch.setting_or_insert("control_salt", || salt).await?;
        }
        let users = source.copy_users_to(&scratch).await?;
        scratch
            .ingest(&source.events_between(from - lookback, from).await?, None)
            .await?;
        let events = source.events_between(from, to).await?;

        let firings = cron_firings(&rules, from, to);
        let handle = Arc::new(RulesHandle::new(rules));
        let clock = ManualClock::new(from);
        let shared: SharedClock = Arc::new(clock.clone());
        let config = EngineConfig {
            node_id: "dry-run".into(),
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(
            scratch.clone(),
            handle.clone(),
            shared,
            Signer::new(b"dry-run"),
            config,
        )
        .await?;
        // The deployment's models in service and goal base rates, as `serve` loads them at start;
        // features are read from the deployment's own history, cut off at each decision's time.
        // Cached features last a millisecond of replay time: `serve` drops a user's cache when
        // their events arrive, and here every event is stored up front.
        let mut predictor = Predictor::default();
        predictor.ttl = Duration::milliseconds(1);
        predictor.reload(source, &handle.current(), from).await?;
        engine.predictor = Arc::new(predictor);
        engine.features_from = Some(source.clone());

        // Every event is stored up front (triggers keyed to their own timestamps); decisions then
        // happen in time order, each seeing only the events up to its own time.
        let current = handle.current();
        let paused = source.paused_campaigns().await?;
        let triggering = Triggering {
            rules: &current,
            paused: &paused,
            max_age: Duration::MAX,
            now: from,
        };
        scratch.ingest(&events, Some(&triggering)).await?;

        let mut pending_firings = firings.iter().peekable();
        loop {
            let next_due = scratch.next_due_entry().await?;
            let next_fire = pending_firings.peek().map(|(t, _)| *t);
            let t = match (next_due, next_fire) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if t > to {
                break;
            }
            clock.set(t.max(engine.now()));
            while let Some((at, campaign)) = pending_firings.peek() {
                if *at > t {
                    break;
                }
                cron::fire(&engine, campaign, *at).await?;
                pending_firings.next();
            }
            engine.run_until_idle().await?;
        }
        let campaigns = scratch.campaign_outcomes(sample as i64).await?;
        Ok::<_, AppError>(DryRunReport {
            from,
            to,
            users,
            events_replayed: events.len(),
            cron_firings: firings.len(),
            campaigns,
        })
    }
    .await;
    scratch.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", scratch_path.display()));
    }
    result
}

/// Every scheduled firing in (from, to], in time order.
fn cron_firings(
    rules: &rules::RuleSet,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, String)> {
    let mut firings = Vec::new();
    for c in rules.campaigns.values().filter(|c| c.enabled) {
        let Trigger::Schedule(expr) = &c.trigger else {
            continue;
        };
        let mut t = to;
        // Walk back from the end of the window; a campaign firing every second over a week is
        // 600k firings, so stop at a sane bound.
        while firings.len() < 100_000 {
            let Some(at) = cron::scheduled_instant(expr, rules.global.timezone, t) else {
                break;
            };
            if at <= from {
                break;
            }
            firings.push((at, c.id.clone()));
            // croner works in whole seconds: step back a full one to reach the previous firing.
            t = at - Duration::seconds(1);
        }
    }
    firings.sort();
    firings
}
