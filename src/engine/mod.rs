//! The engine: from a due entry to a decision.
//!
//! Takes in entries (created by ingestion for event triggers, by [`cron`] for schedules), claims
//! the due ones with a lease, and for each decides: unless → exclude_if → topic → if → arm →
//! channel → send time → quiet hours → caps → render. It hands on an assignment (every arm, for
//! intent-to-treat lift), an outbox row (treatment only) and a message-log row, committed together.

pub mod compose;
pub mod conditions;
pub mod cron;
pub mod schedule;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use arc_swap::ArcSwap;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::SharedClock,
    events::IncomingEvent,
    experiments::{
        arms::{self, Arm},
        caps,
    },
    ml::serving::{Predictor, Served, UserEntry},
    rules::{Campaign, Channel, ChannelChoice, QuietHours, RuleSet, RulesHandle, SendTime},
    store::{
        ClaimedEntry, Decision, DecisionLog, IngestOutcome, NewAssignment, NewOutbox, Store, StoreError,
        Triggering, UserRecord,
    },
    tracking::tokens::Signer,
};
use compose::Composer;
use conditions::{EvalInput, Verdict};

/// How the engine runs; defaults suit one daemon on a laptop.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This process's name in leases and cron firings.
    pub node_id: String,
    /// Base of tracking and unsubscribe links, without a trailing slash.
    pub public_url: String,
    /// How long a claimed entry is ours before another node may take it over.
    pub lease: Duration,
    /// Entries claimed (and decided in one transaction) at a time.
    pub batch: i64,
    /// How often to look for due entries when nothing wakes the engine earlier.
    pub poll: std::time::Duration,
    /// Events older than this trigger nothing (see [`Triggering::max_age`]).
    pub trigger_max_age: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            public_url: "http://127.0.0.1:8080".into(),
            lease: Duration::seconds(60),
            batch: 200,
            poll: std::time::Duration::from_millis(500),
            trigger_max_age: Duration::days(1),
        }
    }
}

#[derive(Debug)]
pub struct Engine {
    pub store: Store,
    pub rules: Arc<RulesHandle>,
    pub clock: SharedClock,
    pub signer: Signer,
    /// Salt of the global control group's hash, stored once per deployment.
    pub salt: String,
    pub config: EngineConfig,
    paused: ArcSwap<HashSet<String>>,
    wake: Notify,
    /// Woken when new outbox rows are written, so delivery does not wait for its poll.
    pub outbox_ready: Arc<Notify>,
    /// Users already warned about an unknown `traits.timezone`.
    pub unknown_timezones: schedule::UnknownTimezones,
    /// What delivery's recent attempts said about the transports (shared with
    /// [`crate::delivery::Delivery::with_health`]; read by `/healthz`).
    pub transport_health: Arc<crate::delivery::TransportHealth>,
    /// The models in service and the users' cached features.
    pub predictor: Arc<Predictor>,
    /// Where the features of predictions are read: the engine's own store unless set (`nudge
    /// dry-run` decides in a scratch store but reads histories from the deployment's, so its
    /// models see what `serve` saw).
    pub features_from: Option<Store>,
}

impl Engine {
    /// Builds the engine, reading (or creating) the deployment's salt and the paused campaigns.
    pub async fn new(
        store: Store,
        rules: Arc<RulesHandle>,
        clock: SharedClock,
        signer: Signer,
        config: EngineConfig,
    ) -> Result<Engine, StoreError> {
        let salt = store
            .setting_or_insert("control_salt", || uuid::Uuid::new_v4().to_string())
            .await?;
        let paused = store.paused_campaigns().await?;
        Ok(Engine {
            store,
            rules,
            clock,
            signer,
            salt,
            config,
            paused: ArcSwap::from_pointee(paused),
            wake: Notify::new(),
            outbox_ready: Arc::new(Notify::new()),
            unknown_timezones: schedule::UnknownTimezones::default(),
            transport_health: Arc::default(),
            predictor: Arc::default(),
            features_from: None,
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Stores events durably and enters the campaigns they trigger; returns once committed.
    pub async fn ingest(&self, events: &[IncomingEvent]) -> Result<IngestOutcome, StoreError> {
        let rules = self.rules.current();
        let paused = self.paused.load();
        let triggering = Triggering {
            rules: &rules,
            paused: &paused,
            max_age: self.config.trigger_max_age,
            now: self.now(),
        };
        let outcome = self.store.ingest(events, Some(&triggering)).await?;
        metrics::counter!("nudge_events_ingested_total").increment(outcome.stored as u64);
        self.predictor
            .invalidate(events.iter().map(|e| e.user_id.as_str()));
        if outcome.entries > 0 {
            self.wake.notify_one();
        }
        Ok(outcome)
    }

    /// Stores events without triggering anything (history imports).
    pub async fn ingest_history(&self, events: &[IncomingEvent]) -> Result<IngestOutcome, StoreError> {
        let outcome = self.store.ingest(events, None).await?;
        metrics::counter!("nudge_events_ingested_total").increment(outcome.stored as u64);
        Ok(outcome)
    }

    pub fn is_paused(&self, campaign: &str) -> bool {
        self.paused.load().contains(campaign)
    }

    pub async fn set_paused(&self, campaign: &str, paused: bool) -> Result<(), StoreError> {
        self.store.set_paused(campaign, paused, self.now()).await?;
        self.refresh_paused().await
    }

    /// Re-reads paused campaigns (another node may have changed them).
    pub async fn refresh_paused(&self) -> Result<(), StoreError> {
        self.paused.store(Arc::new(self.store.paused_campaigns().await?));
        Ok(())
    }

    /// Wakes the decision loop (new entries, a test moving the clock).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Claims one batch of due entries and decides it. Returns how many entries were decided.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = self.now();
        let claimed = self
            .store
            .claim_due_entries(&self.config.node_id, now, self.config.lease, self.config.batch)
            .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let rules = self.rules.current();
        // Users and their recent sends for the whole batch in a few queries: per-entry reads
        // made the round trips to the database, not the decisions, the cost of a large fan-out.
        let ids: Vec<&str> = claimed.iter().map(|e| e.user_id.as_str()).collect();
        let users = self.store.users(&ids).await?;
        let longest_cap = rules
            .global
            .caps
            .iter()
            .chain(rules.campaigns.values().flat_map(|c| c.caps.iter()))
            .map(|c| c.per)
            .max();
        let sends = match longest_cap {
            Some(window) => self.store.recent_sends_of(&ids, now - window).await?,
            None => Default::default(),
        };
        let predicted: Vec<&str> = claimed
            .iter()
            .filter(|e| {
                rules
                    .campaigns
                    .get(&e.campaign_id)
                    .is_some_and(|c| c.uses_predictions())
            })
            .map(|e| e.user_id.as_str())
            .collect();
        if !predicted.is_empty() {
            let history = self.features_from.as_ref().unwrap_or(&self.store);
            self.predictor.prefetch(history, &predicted, now).await?;
        }
        let mut decisions = Vec::with_capacity(claimed.len());
        for entry in claimed {
            let user = users.get(&entry.user_id);
            let user_sends = sends.get(&entry.user_id).map_or(&[][..], Vec::as_slice);
            let decision = self.decide(&rules, &entry, user, user_sends, now).await?;
            decisions.push((entry, decision));
        }
        let committed = self.store.record_decisions(&decisions, now).await?;
        for (_, d) in &decisions {
            let status = d.assignment.as_ref().map_or(d.entry_status, |a| a.status);
            metrics::counter!("nudge_decisions_total", "status" => status).increment(1);
        }
        if decisions.iter().any(|(_, d)| d.outbox.is_some()) {
            self.outbox_ready.notify_waiters();
        }
        Ok(committed)
    }

    /// Decides until nothing is due (tests and dry runs).
    pub async fn run_until_idle(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.run_once().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// The decision loop: runs until cancelled, waking on new entries or every poll interval.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut paused_refresh = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            match self.run_once().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "DecisionsFailed: will retry"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = paused_refresh.tick() => {
                    if let Err(e) = self.refresh_paused().await {
                        tracing::warn!(error = %e, "PausedRefreshFailed");
                    }
                }
            }
        }
    }

    /// Everything that decides one entry. Reads only; the caller commits.
    async fn decide(
        &self,
        rules: &RuleSet,
        entry: &ClaimedEntry,
        user: Option<&UserRecord>,
        sends: &[(String, String, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<Decision, StoreError> {
        let Some(campaign) = rules.campaigns.get(&entry.campaign_id) else {
            return Ok(skip(entry, "campaign no longer exists in the rules"));
        };
        if !campaign.enabled {
            return Ok(skip(entry, "campaign disabled (enabled: false)"));
        }
        if self.is_paused(&campaign.id) {
            return Ok(skip(entry, "campaign paused"));
        }
        let Some(user) = user else {
            return Ok(skip(entry, "user unknown"));
        };
        if !campaign.unless.is_empty()
            && let Some((name, at)) = self
                .store
                .first_event_between(&user.id, &campaign.unless, entry.trigger_ts, now)
                .await?
        {
            let reason = format!("unless: {name} at {}", at.to_rfc3339());
            return Ok(Decision {
                entry_status: "cancelled",
                reason: Some(reason.clone()),
                assignment: None,
                outbox: None,
                log: DecisionLog {
                    kind: "cancelled",
                    detail: json!({ "reason": reason, "trigger": entry.trigger_id }),
                },
            });
        }
        let history = self.store.user_history(&user.id, &campaign.counts, now).await?;
        let scored = if campaign.uses_predictions() {
            self.predictor.cached(&user.id, now)
        } else {
            None
        };
        let facts = UserFacts {
            user,
            history: &history,
            sends,
            scored: scored.as_deref(),
        };
        Ok(self.decide_with(rules, campaign, entry, &facts, now))
    }

    /// The pure part of a decision, given everything read for it.
    pub fn decide_with(
        &self,
        rules: &RuleSet,
        campaign: &Campaign,
        entry: &ClaimedEntry,
        facts: &UserFacts<'_>,
        now: DateTime<Utc>,
    ) -> Decision {
        let user = facts.user;
        let user_json = user.to_value();
        let served = campaign.uses_predictions().then(|| self.predictor.served());
        let mut predictions = serde_json::Map::new();
        let mut predict = json!({});
        let mut propensities = HashMap::new();
        if let Some(served) = &served {
            let goals = campaign
                .conditions
                .iter()
                .chain(&campaign.exclude_if)
                .flat_map(|c| c.propensity_of.iter().cloned())
                .chain(campaign.goal.as_ref().map(|g| g.event.clone()));
            for goal in goals {
                if propensities.contains_key(&goal) {
                    continue;
                }
                let p = served.propensity(&goal, facts.scored);
                propensities.insert(goal.clone(), p.probability);
                predictions.insert(format!("propensity_of({goal})"), json!(p));
            }
            if let Some(g) = &campaign.goal {
                predict["propensity"] = json!(propensities[&g.event]);
            }
        }
        let propensities = Arc::new(propensities);
        let input = EvalInput {
            user: &user_json,
            event: &entry.trigger_event,
            now,
            history: facts.history,
            predict: &predict,
            propensities: &propensities,
        };
        let scope = conditions::Scope::new(&input);
        if let Some(hit) = scope.first_exclusion(&campaign.exclude_if) {
            return skip_with(
                entry,
                "excluded",
                format!("exclude_if: {} ({})", hit.condition, hit.value),
            );
        }
        if let Some(topic) = &campaign.topic
            && user.opted_out_of(topic)
        {
            return skip_with(entry, "excluded", format!("opted out of topic {topic}"));
        }
        let conditions = match scope.all_hold(&campaign.conditions) {
            Verdict::Pass(results) => results,
            Verdict::Fail(results) => {
                let last = results.last().expect("a failing verdict names its condition");
                let reason = format!("if: {} was {}", last.condition, last.value);
                let mut d = skip(entry, &reason);
                d.log.detail["conditions"] = json!(results);
                if !predictions.is_empty() {
                    d.log.detail["predictions"] = json!(predictions);
                }
                return d;
            }
        };

        let arm = arms::assign(campaign, &rules.global, &self.salt, &user.id);
        let reachable: Vec<Channel> = campaign
            .action
            .channels
            .iter()
            .copied()
            .filter(|c| match c {
                Channel::Email => user.can_receive_email(),
                Channel::Push => user.can_receive_push(),
            })
            .collect();
        let mut detail = json!({
            "trigger": entry.trigger_id,
            "conditions": conditions,
            "arm": arm.as_str(),
            "candidates": campaign.action.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "reachable": reachable.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        });
        if !predictions.is_empty() {
            detail["predictions"] = json!(predictions);
        }
        let Some(&first) = reachable.first() else {
            let reason = unreachable_reason(user, &campaign.action.channels);
            return assigned(arm, None, None, "suppressed", Some(reason), None, detail);
        };
        let channel = match (campaign.action.choose, &served) {
            (ChannelChoice::Predicted, Some(served)) => {
                let pick = served.channel(&reachable, facts.scored);
                detail["channel_source"] = json!(pick.source);
                if !pick.scores.is_empty() {
                    detail["channel_scores"] = json!(
                        pick.scores
                            .iter()
                            .map(|(c, p)| (c.as_str(), *p))
                            .collect::<std::collections::BTreeMap<_, _>>()
                    );
                    detail["channel_path"] = json!(pick.path);
                }
                pick.choice
            }
            _ => {
                detail["channel_source"] = json!("first reachable candidate");
                first
            }
        };
        detail["channel"] = json!(channel.as_str());

        let (tz, invalid_tz) = schedule::user_timezone(user.timezone.as_deref(), rules.global.timezone);
        if invalid_tz {
            detail["timezone_warning"] = json!(format!("unknown time zone {:?}, used {}", user.timezone, tz));
            self.unknown_timezones
                .report(&user.id, user.timezone.as_deref().unwrap_or_default(), tz);
        }
        let quiet = if campaign.quiet_hours {
            rules.global.quiet_hours
        } else {
            None
        };
        let requested = match (campaign.action.send_time, &served) {
            (SendTime::Predicted, Some(served)) => {
                let (at, choice) = predicted_time(
                    &rules.global,
                    entry,
                    served,
                    facts.scored,
                    now,
                    campaign,
                    quiet,
                    tz,
                );
                detail["send_time"] = choice;
                at
            }
            (send_time, _) => schedule::requested_time(send_time, now, tz),
        };
        let send_at = schedule::outside_quiet_hours(requested, quiet, tz);
        detail["timezone"] = json!(tz.name());
        detail["send_at"] = json!(send_at.to_rfc3339());
        if send_at != requested {
            detail["quiet_hours"] = json!(format!("moved from {}", requested.to_rfc3339()));
        }

        let sends: Vec<(Channel, DateTime<Utc>)> = facts
            .sends
            .iter()
            .filter_map(|(c, _, t)| Channel::parse(c).map(|c| (c, *t)))
            .collect();
        let own: Vec<(Channel, DateTime<Utc>)> = facts
            .sends
            .iter()
            .filter(|(_, campaign_id, _)| *campaign_id == campaign.id)
            .filter_map(|(c, _, t)| Channel::parse(c).map(|c| (c, *t)))
            .collect();
        if let Some(cap) = caps::exceeded(&rules.global.caps, &sends, channel, send_at)
            .or_else(|| caps::exceeded(&campaign.caps, &own, channel, send_at))
        {
            let reason = format!("capped: {}", caps::describe(cap));
            return assigned(
                arm,
                Some(channel),
                Some(send_at),
                "capped",
                Some(reason),
                None,
                detail,
            );
        }

        if arm != Arm::Treatment {
            let reason = match arm {
                Arm::Control => "global control group: never messaged",
                _ => "campaign holdout: not messaged",
            };
            return assigned(
                arm,
                Some(channel),
                Some(send_at),
                "held_out",
                Some(reason.into()),
                None,
                detail,
            );
        }

        let key = idempotency_key(&entry.dedupe_key);
        let composer = Composer {
            templates: &rules.templates,
            signer: &self.signer,
            public_url: &self.config.public_url,
        };
        let composed = match channel {
            Channel::Email => campaign
                .action
                .email
                .as_ref()
                .map(|c| composer.email(campaign, c, &user.id, &user_json, &entry.trigger_event, &key)),
            Channel::Push => campaign
                .action
                .push
                .as_ref()
                .map(|c| composer.push(campaign, c, &user.id, &user_json, &entry.trigger_event, &key)),
        };
        let composed = match composed {
            Some(Ok(c)) => c,
            failure => {
                let reason = match failure {
                    Some(Err(e)) => format!("render failed: {e}"),
                    _ => format!("no {channel} content in the campaign"),
                };
                return assigned(
                    arm,
                    Some(channel),
                    Some(send_at),
                    "failed",
                    Some(reason),
                    None,
                    detail,
                );
            }
        };
        let recipient = match channel {
            Channel::Email => user.email.clone().unwrap_or_default(),
            Channel::Push => user.push_token.clone().unwrap_or_default(),
        };
        detail["message_key"] = json!(key);
        let outbox = NewOutbox {
            idempotency_key: key,
            channel: channel.as_str().into(),
            priority: campaign.priority,
            recipient,
            payload: serde_json::to_value(&composed.payload).expect("payload serialises"),
            due_at: send_at,
            links: composed.links,
        };
        assigned(
            arm,
            Some(channel),
            Some(send_at),
            "scheduled",
            None,
            Some(outbox),
            detail,
        )
    }
}

/// What was read about the user for one decision.
pub struct UserFacts<'a> {
    pub user: &'a UserRecord,
    pub history: &'a crate::store::UserHistory,
    /// Recent sends as (channel, campaign, time), for caps.
    pub sends: &'a [(String, String, DateTime<Utc>)],
    /// The user's features for the models in service (`None`: not scored, fallbacks answer).
    pub scored: Option<&'a UserEntry>,
}

/// A predicted send time and how it was chosen (`{arm, source, hour_of_week, probability, path}`
/// for the message log): the `explore` share of messages at a random allowed hour, the others
/// at the model's best hour in the campaign's `within` window (the population's for a cold
/// start), or immediately when no send-time model is in service or every slot is quiet.
#[allow(clippy::too_many_arguments)]
fn predicted_time(
    global: &crate::rules::Global,
    entry: &ClaimedEntry,
    served: &Served,
    scored: Option<&UserEntry>,
    now: DateTime<Utc>,
    campaign: &Campaign,
    quiet: Option<QuietHours>,
    tz: chrono_tz::Tz,
) -> (DateTime<Utc>, Json) {
    // The send-time test: a stable share of users (per campaign, like the holdout) gets the
    // campaign's fixed local time, whether or not a model serves, so lift compares the two.
    let test = f64::from(arms::bucket(&["send_time_test", &campaign.id, &entry.user_id])) / 10_000.0;
    if test < campaign.send_time_test.fraction() {
        let at = schedule::next_local(campaign.send_time_fixed, now, tz);
        return (
            at,
            json!({
                "arm": "fixed",
                "source": format!("send_time_test: fixed {}", campaign.send_time_fixed.format("%H:%M")),
                "hour_of_week": crate::ml::features::hour_of_week(at.timestamp_millis(), tz),
            }),
        );
    }
    let slots = schedule::predicted_slots(now, campaign.action.within, quiet, tz);
    let hours: Vec<usize> = slots.iter().map(|(_, h)| *h).collect();
    let at_hour = |h: usize| slots.iter().find(|(_, s)| *s == h).map(|(t, _)| *t);
    if slots.is_empty() {
        return (
            now,
            json!({"arm": "fallback", "source": "fallback: immediate (every slot in the window is in quiet hours)"}),
        );
    }
    let explore = f64::from(arms::bucket(&["explore", &entry.dedupe_key])) / 10_000.0;
    if served.send_time.is_some() && explore < global.explore.fraction() {
        let i = arms::bucket(&["explore-hour", &entry.dedupe_key]) as usize % slots.len();
        let (at, hour) = slots[i];
        return (
            at,
            json!({"arm": "explore", "source": "explore: a random allowed hour", "hour_of_week": hour}),
        );
    }
    match served.send_hour(&hours, scored) {
        Some(pick) => {
            let at = at_hour(pick.hour_of_week).unwrap_or(now);
            let arm = if pick.prediction.source.starts_with("model:") {
                "predicted"
            } else {
                "fallback"
            };
            let mut choice = json!(pick);
            choice["arm"] = json!(arm);
            (at, choice)
        }
        None => (
            now,
            json!({"arm": "fallback", "source": "fallback: immediate (no send-time model in service)"}),
        ),
    }
}

/// The outbox idempotency key: derived from the entry's dedupe key, so the same trigger can never
/// produce two different messages, on any node.
pub fn idempotency_key(dedupe_key: &str) -> String {
    let digest = Sha256::digest(dedupe_key.as_bytes());
    hex::encode(&digest[..16])
}

fn unreachable_reason(user: &UserRecord, candidates: &[Channel]) -> String {
    let why = |c: &Channel| match c {
        Channel::Email if user.email.as_deref().is_none_or(str::is_empty) => "email: no address",
        Channel::Email if user.unsubscribed => "email: unsubscribed",
        Channel::Email if user.email_bounced => "email: address hard-bounced (suppressed)",
        Channel::Email => "email: email_consent is false",
        Channel::Push if user.push_token.as_deref().is_none_or(str::is_empty) => "push: no device token",
        Channel::Push => "push: push_consent is false",
    };
    format!(
        "no reachable channel ({})",
        candidates.iter().map(why).collect::<Vec<_>>().join("; ")
    )
}

fn skip(entry: &ClaimedEntry, reason: &str) -> Decision {
    skip_with(entry, "skipped", reason.to_string())
}

fn skip_with(entry: &ClaimedEntry, kind: &'static str, reason: String) -> Decision {
    Decision {
        entry_status: "skipped",
        reason: Some(reason.clone()),
        assignment: None,
        outbox: None,
        log: DecisionLog {
            kind,
            detail: json!({ "reason": reason, "trigger": entry.trigger_id }),
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn assigned(
    arm: Arm,
    channel: Option<Channel>,
    send_at: Option<DateTime<Utc>>,
    status: &'static str,
    reason: Option<String>,
    outbox: Option<NewOutbox>,
    mut detail: Json,
) -> Decision {
    if let Some(r) = &reason {
        detail["reason"] = json!(r);
    }
    // The message log's `send_time.arm` is the assignment's: one source for both.
    let send_time_arm = match detail.pointer("/send_time/arm").and_then(Json::as_str) {
        Some("predicted") => Some("predicted"),
        Some("explore") => Some("explore"),
        Some("fixed") => Some("fixed"),
        Some(_) => Some("fallback"),
        None => None,
    };
    Decision {
        entry_status: "decided",
        reason: reason.clone(),
        assignment: Some(NewAssignment {
            arm: arm.as_str(),
            channel: channel.map(|c| c.as_str().to_string()),
            send_at,
            status,
            reason,
            send_time_arm,
        }),
        outbox,
        log: DecisionLog { kind: status, detail },
    }
}
