//! Serving: the models in service and a per-user cache of their features, so a decision scores a
//! user in microseconds instead of reading the database once per rule.
//!
//! [`Predictor::reload`] reads the models with status `serving` from the store (at start, after a
//! training run, and every few minutes so every node follows promotions made elsewhere).
//! [`Predictor::prefetch`] loads the history of the users of a batch of decisions that the cache
//! does not hold (two queries per 500 users) and computes their features once per model;
//! ingestion calls [`Predictor::invalidate`] for the users it stored events of, and an entry older
//! than [`Predictor::ttl`] is recomputed (another node may have ingested for that user, and
//! recency moves with the clock).
//!
//! Every prediction says where it came from: `model:<version>` (e.g. `model:send_time-v3`) with
//! the decision path of the forest's first tree, or the fallback used — the population's best
//! hour and the base rate for a user without history, the first reachable channel or
//! `immediate` when no model is in service.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::{
    features::UserFeatures,
    models::{self, ChannelModel, FeatureSpace, Model, ModelCard, PropensityModel, SendTimeModel, Step},
};
use crate::{
    clock::to_millis,
    rules::{Channel, RuleSet},
    store::{HistoryEvent, HistoryUser, Store, StoreError},
};

/// A model in service.
#[derive(Debug)]
pub struct Loaded<M> {
    /// `send_time-v3`, `channel-v1`, `propensity.order_completed-v2`.
    pub version: String,
    pub model: M,
    /// How the model's features are computed.
    pub space: FeatureSpace,
    /// The share of positive rows the model was trained on (the cold-start answer of a propensity).
    pub base_rate: f64,
}

/// The models in service, swapped whole on reload.
#[derive(Debug, Default)]
pub struct Served {
    pub send_time: Option<Loaded<SendTimeModel>>,
    pub channel: Option<Loaded<ChannelModel>>,
    /// By goal event.
    pub propensity: HashMap<String, Loaded<PropensityModel>>,
    /// Base rates of goals used by the rules that have no model in service (by goal event).
    pub base_rates: HashMap<String, f64>,
    /// Bumped on every reload: cached features of an older generation are recomputed.
    pub generation: u64,
}

/// One scored answer and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub probability: f64,
    /// `model:<version>`, or `fallback: …` saying which.
    pub source: String,
    /// The decision path that led to the score (empty for a fallback).
    pub path: Vec<Step>,
    /// The columns that moved a propensity's log-odds most, when its model has an additive
    /// part (absent otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub terms: Vec<models::Contribution>,
}

/// The send time chosen for a message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HourPick {
    /// Local hour of week, Monday 00:00 = 0.
    pub hour_of_week: usize,
    #[serde(flatten)]
    pub prediction: Prediction,
}

/// The channel chosen among those the user can receive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelPick {
    pub choice: Channel,
    /// Scores of the reachable channels (empty for a fallback).
    pub scores: Vec<(Channel, f64)>,
    pub source: String,
    pub path: Vec<Step>,
}

/// A user's features, computed once per model in service.
#[derive(Debug)]
pub struct UserEntry {
    generation: u64,
    computed_at: DateTime<Utc>,
    /// False when the user has no stored event before the computation: a cold start.
    pub has_history: bool,
    send_time: Option<UserFeatures>,
    channel: Option<UserFeatures>,
    propensity: HashMap<String, UserFeatures>,
}

/// The models in service and the feature cache.
#[derive(Debug)]
pub struct Predictor {
    served: ArcSwap<Served>,
    cache: Mutex<HashMap<String, Arc<UserEntry>>>,
    /// Users kept in the cache; beyond it the cache is emptied (a batch refills what it needs).
    pub capacity: usize,
    /// How long cached features stay fresh.
    pub ttl: Duration,
}

impl Default for Predictor {
    fn default() -> Self {
        Predictor {
            served: ArcSwap::from_pointee(Served::default()),
            cache: Mutex::new(HashMap::new()),
            capacity: 200_000,
            ttl: Duration::minutes(10),
        }
    }
}

/// The version label of a stored model.
pub fn version_label(kind: &str, goal: &str, version: i64) -> String {
    if goal.is_empty() {
        format!("{kind}-v{version}")
    } else {
        format!("{kind}.{goal}-v{version}")
    }
}

/// Goal events the rules can ask a propensity of, with their windows: each campaign's `goal` and
/// every `predict.propensity_of("…")` (7 days unless a campaign names that goal with a window).
pub fn goals_of(rules: &RuleSet) -> Vec<models::Goal> {
    let mut goals: HashMap<String, u32> = HashMap::new();
    for c in rules.campaigns.values() {
        if let Some(g) = &c.goal {
            let days = (g.within.num_hours() as f64 / 24.0).ceil().max(1.0) as u32;
            goals.entry(g.event.clone()).or_insert(days);
        }
    }
    for c in rules.campaigns.values() {
        for event in c
            .conditions
            .iter()
            .chain(&c.exclude_if)
            .flat_map(|c| &c.propensity_of)
        {
            goals.entry(event.clone()).or_insert(7);
        }
    }
    let mut goals: Vec<models::Goal> = goals
        .into_iter()
        .map(|(event, within_days)| models::Goal { event, within_days })
        .collect();
    goals.sort_by(|a, b| a.event.cmp(&b.event));
    goals
}

impl Predictor {
    pub fn served(&self) -> Arc<Served> {
        self.served.load_full()
    }

    /// True when any model is in service (otherwise nothing needs prefetching).
    pub fn any_model(&self) -> bool {
        let s = self.served.load();
        s.send_time.is_some() || s.channel.is_some() || !s.propensity.is_empty()
    }

    /// Reads the models in service from the store, and the base rates of the rules' goals that
    /// have none. A model that no longer deserialises is skipped with a warning (the fallback
    /// serves) rather than stopping the daemon.
    pub async fn reload(&self, store: &Store, rules: &RuleSet, now: DateTime<Utc>) -> Result<(), StoreError> {
        let rows = store.serving_models().await?;
        let mut served = Served {
            generation: self.served.load().generation + 1,
            ..Served::default()
        };
        for row in rows {
            let version = version_label(&row.kind, &row.goal, row.version);
            let Some(text) = row.artifact.as_deref() else {
                continue;
            };
            let model: Model = match serde_json::from_str(text) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(model = %version, error = %e, "ModelUnreadable: its fallback serves");
                    continue;
                }
            };
            let card: Option<ModelCard> = serde_json::from_value(row.card.clone()).ok();
            let base_rate = card
                .as_ref()
                .filter(|c| c.train_rows > 0)
                .map_or(0.0, |c| c.positives as f64 / c.train_rows as f64);
            let space = model.feature_space().clone();
            match model {
                Model::SendTime(model) => {
                    served.send_time = Some(Loaded {
                        version,
                        model,
                        space,
                        base_rate,
                    });
                }
                Model::Channel(model) => {
                    served.channel = Some(Loaded {
                        version,
                        model,
                        space,
                        base_rate,
                    });
                }
                Model::Propensity(model) => {
                    let goal = model.goal().event.clone();
                    served.propensity.insert(
                        goal,
                        Loaded {
                            version,
                            model,
                            space,
                            base_rate,
                        },
                    );
                }
            }
        }
        for goal in goals_of(rules) {
            if !served.propensity.contains_key(&goal.event) {
                let since = now - Duration::days(i64::from(goal.within_days));
                let rate = store.goal_base_rate(&goal.event, since, now).await?;
                served.base_rates.insert(goal.event, rate);
            }
        }
        self.served.store(Arc::new(served));
        self.cache.lock().expect("cache lock").clear();
        Ok(())
    }

    /// Forgets the cached features of users who have new events.
    pub fn invalidate<'a>(&self, users: impl IntoIterator<Item = &'a str>) {
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.is_empty() {
            return;
        }
        for u in users {
            cache.remove(u);
        }
    }

    /// The cached features of `user`, if fresh.
    pub fn cached(&self, user: &str, now: DateTime<Utc>) -> Option<Arc<UserEntry>> {
        let generation = self.served.load().generation;
        let cache = self.cache.lock().expect("cache lock");
        cache
            .get(user)
            .filter(|e| e.generation == generation && now - e.computed_at < self.ttl)
            .cloned()
    }

    /// Makes sure every user of `ids` has fresh cached features, reading the missing ones'
    /// history in bulk. Does nothing when no model is in service.
    pub async fn prefetch(&self, store: &Store, ids: &[&str], now: DateTime<Utc>) -> Result<(), StoreError> {
        if !self.any_model() {
            return Ok(());
        }
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| self.cached(id, now).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let histories = store.user_histories(&missing, to_millis(now)).await?;
        let served = self.served();
        let mut computed = Vec::with_capacity(histories.len());
        for (id, (user, events)) in &histories {
            let refs: Vec<&HistoryEvent> = events.iter().collect();
            computed.push((id.clone(), Arc::new(entry_for(&served, user, &refs, now))));
        }
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() + computed.len() > self.capacity {
            cache.clear();
        }
        cache.extend(computed);
        Ok(())
    }
}

/// Computes a user's features for every model in service.
pub fn entry_for(
    served: &Served,
    user: &HistoryUser,
    events: &[&HistoryEvent],
    now: DateTime<Utc>,
) -> UserEntry {
    let at = to_millis(now);
    UserEntry {
        generation: served.generation,
        computed_at: now,
        has_history: events.iter().any(|e| e.ts < at),
        send_time: served
            .send_time
            .as_ref()
            .map(|l| l.space.features(user, events, at)),
        channel: served
            .channel
            .as_ref()
            .map(|l| l.space.features(user, events, at)),
        propensity: served
            .propensity
            .iter()
            .map(|(goal, l)| (goal.clone(), l.space.features(user, events, at)))
            .collect(),
    }
}

impl Served {
    /// `predict.propensity_of(goal)` for a user.
    pub fn propensity(&self, goal: &str, user: Option<&UserEntry>) -> Prediction {
        match self.propensity.get(goal) {
            Some(l) => match user
                .filter(|u| u.has_history)
                .and_then(|u| u.propensity.get(goal))
            {
                Some(f) => {
                    let s = l.model.score(f);
                    Prediction {
                        probability: s.probability,
                        source: format!("model:{}", l.version),
                        path: s.path,
                        terms: s.terms,
                    }
                }
                None => Prediction {
                    probability: l.base_rate,
                    source: format!("fallback: base rate of {} (no history)", l.version),
                    path: Vec::new(),
                    terms: Vec::new(),
                },
            },
            None => Prediction {
                probability: self.base_rates.get(goal).copied().unwrap_or(0.0),
                source: format!("fallback: base rate of {goal} (no propensity model in service)"),
                path: Vec::new(),
                terms: Vec::new(),
            },
        }
    }

    /// The best of `reachable` (non-empty) for a user; the first when no model serves.
    pub fn channel(&self, reachable: &[Channel], user: Option<&UserEntry>) -> ChannelPick {
        let first = ChannelPick {
            choice: reachable[0],
            scores: Vec::new(),
            source: "fallback: first reachable candidate (no channel model in service)".into(),
            path: Vec::new(),
        };
        let Some(l) = &self.channel else { return first };
        let Some(f) = user.and_then(|u| u.channel.as_ref()) else {
            return ChannelPick {
                source: format!(
                    "fallback: first reachable candidate (user not scored by {})",
                    l.version
                ),
                ..first
            };
        };
        let scored: Vec<(Channel, models::Scored)> = reachable
            .iter()
            .map(|&c| (c, l.model.score(f, channel_index(c))))
            .collect();
        let best = scored
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.1.probability.total_cmp(&b.1.probability).then(j.cmp(i)))
            .map(|(i, _)| i)
            .unwrap_or(0);
        ChannelPick {
            choice: scored[best].0,
            scores: scored.iter().map(|(c, s)| (*c, s.probability)).collect(),
            source: format!("model:{}", l.version),
            path: scored[best].1.path.clone(),
        }
    }

    /// The best of `candidates` (local hours of week, non-empty): the model's for a user with
    /// history, the population's best hour for a cold start. `None` when no model serves.
    pub fn send_hour(&self, candidates: &[usize], user: Option<&UserEntry>) -> Option<HourPick> {
        let l = self.send_time.as_ref()?;
        if let Some(f) = user.filter(|u| u.has_history).and_then(|u| u.send_time.as_ref())
            && let Some((hour, s)) = l.model.best_hour(f, candidates)
        {
            return Some(HourPick {
                hour_of_week: hour,
                prediction: Prediction {
                    probability: s.probability,
                    source: format!("model:{}", l.version),
                    path: s.path,
                    terms: Vec::new(),
                },
            });
        }
        let population = &l.space.population;
        let hour = models::population_best_hour(population, candidates)?;
        Some(HourPick {
            hour_of_week: hour,
            prediction: Prediction {
                probability: population.hour_of_week[hour],
                source: format!("fallback: population best hour of {} (no history)", l.version),
                path: Vec::new(),
                terms: Vec::new(),
            },
        })
    }
}

fn channel_index(c: Channel) -> usize {
    match c {
        Channel::Email => 0,
        Channel::Push => 1,
    }
}
