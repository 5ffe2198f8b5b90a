//! The three models of issue 6 — send time, channel and propensity — trained from an in-memory
//! [`History`] (what `Store::history_users` / `history_events` return) with the calibrated
//! [`ProbabilityForest`] over point-in-time [`features`]. Pure: no database, no async, no clock
//! (`TrainOptions::now` is the clock). Hands on a [`Model`] (serde: stored as JSON by the model
//! store) and a [`ModelCard`] (metrics beside a baseline on held-out recent data, feature
//! importance, a drift reference); [`should_promote`] decides whether a new model replaces the one
//! in service and [`drift`] compares today's features to the training ones.
//!
//! ## Time split (no leakage)
//! `split = now − eval_days`. Nothing at or after `now` is read. Training rows see features from
//! events strictly before their own time and labels that end before `split`; held-out rows are
//! labelled inside `[split, now)`. Population priors (hour-of-week shares, channel open rates)
//! are computed from events before `split` and stored in the model's [`FeatureSpace`], so serving
//! computes a user's features exactly as training did.
//!
//! ## Send time
//! One row per delivery (`message_delivered`, property `channel`) at local hour of week `h`,
//! label = opened (`email_opened` / `push_opened` of the same message — its `message` property
//! — or, without one, of the same channel) within 24 h. Features are the user's as of just before
//! the delivery (a running [`FeatureAccumulator`] walk over the user's events in time order, so
//! the label's own open is never in them) plus hour features: hour of day, weekend, the user's
//! smoothed engagement share at `h` and around it (±1 h), the same pooled over days of the same
//! kind (weekday or weekend) and relative to the user's own peak, and the population's share at
//! `h`. Sessions count as engagement: they follow a user's hidden daily rhythm, which is what
//! lets the model find a user's peak hour even when every past message went out at 09:00 — the
//! model learns "a message at an hour where this user is usually active is opened more" across
//! users and hours, not "09:00 is good". Baseline: the population's best hour, as a predictor
//! the training open rate at each local hour of day and kind of day.
//!
//! ## Channel
//! The same delivery rows; features are the user's point-in-time stats for the delivery's channel
//! (deliveries, opens, smoothed open and click rates), the other channel's open rate, activity and
//! platform, plus the channel. Serving picks the argmax over the channels the user can receive.
//! Baseline: the user's most used channel; as a predictor, each channel's training open rate.
//!
//! ## Propensity
//! Rows are users' features as of a cut-off `T` with label = the goal event within
//! `[T, T + within)`. Training stacks weekly cut-offs ending at `T1 = now − eval_days − within`
//! (so the last training label ends at `split`); evaluation is at `T2 = now − within`, labels in
//! `[T2, now)`. Only users known before a cut-off (an event or `created_at` before it) are rows.
//! The model is a forest and an additive logistic model ([`linear`]) fitted on the same 80% of
//! the training rows, blended by a logistic fit on the other 20% (neither part has seen them).
//! Baseline: the training base rate.
//!
//! Rows are subsampled (deterministically) to at most [`TrainOptions::max_train_rows`] (default
//! [`MAX_TRAIN_ROWS`]; [`TrainOptions::max_propensity_rows`] for propensity) for training and
//! [`MAX_EVAL_ROWS`] for evaluation; the card's `train_rows` / `eval_rows` are the rows used.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    str::FromStr,
};

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    features::{
        self, CHANNELS, EMAIL_OPENED, Encoder, FeatureAccumulator, HOURS_OF_WEEK, MESSAGE_DELIVERED,
        ORDER_COMPLETED, PROPENSITY_COLUMNS, PUSH_OPENED, Population, Smoothing, UserFeatures,
    },
    linear::{Blend, ColumnKind, LinearError, LinearModel},
    metrics::{self, CalibrationBin},
    trees::{self, ForestParams, ProbabilityForest, TreeError},
};
use crate::store::{HistoryEvent, HistoryUser};

const DAY_MS: i64 = 86_400_000;
/// How long after a delivery an open still counts as its engagement.
pub const OPEN_WINDOW_MS: i64 = DAY_MS;
/// Training rows used at most (a deterministic sample beyond that).
pub const MAX_TRAIN_ROWS: usize = 150_000;
/// Propensity training rows used at most: one row per user and weekly cut-off, labels rare and
/// noisy, so it needs more rows than the delivery models for the same accuracy (50,000 users × 5
/// cut-offs fit under it).
pub const MAX_PROPENSITY_ROWS: usize = 250_000;
/// Held-out rows scored at most.
pub const MAX_EVAL_ROWS: usize = 60_000;
/// Users whose chosen hour or channel is compared with what they were sent, for `engagement_rate`.
const MAX_POLICY_USERS: usize = 3_000;
/// Users whose features make the drift reference.
const MAX_REFERENCE_USERS: usize = 20_000;
/// Positives needed to train at all.
pub const MIN_POSITIVES: usize = 30;
/// Local hours of the day a send-time policy may pick when a day's candidates are needed
/// (07:00–22:59, the hours the simulator's messages went out).
const POLICY_HOURS: std::ops::Range<usize> = 7..23;
const DRIFT_BINS: usize = 10;

/// Which model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    SendTime,
    Channel,
    Propensity,
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [ModelKind::SendTime, ModelKind::Channel, ModelKind::Propensity];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::SendTime => "send_time",
            ModelKind::Channel => "channel",
            ModelKind::Propensity => "propensity",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown model {0:?}: expected send_time, channel or propensity")]
pub struct UnknownModelKind(pub String);

impl FromStr for ModelKind {
    type Err = UnknownModelKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownModelKind(s.to_string()))
    }
}

/// Users and their track events, as the store hands them to training (any order).
#[derive(Debug, Clone, Default)]
pub struct History {
    pub users: Vec<HistoryUser>,
    pub events: Vec<HistoryEvent>,
}

impl History {
    /// Each user's events before `now`, in time order (stable for equal times).
    fn by_user(&self, now: i64) -> HashMap<&str, Vec<&HistoryEvent>> {
        let mut by_user: HashMap<&str, Vec<&HistoryEvent>> = HashMap::new();
        for e in self.events.iter().filter(|e| e.ts < now) {
            by_user.entry(e.user_id.as_str()).or_default().push(e);
        }
        for list in by_user.values_mut() {
            list.sort_by_key(|e| e.ts);
        }
        by_user
    }
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Unix ms: nothing at or after `now` is used.
    pub now: i64,
    /// The most recent days held out for evaluation.
    pub eval_days: u32,
    /// Below this many training rows (or fewer than [`MIN_POSITIVES`] positives):
    /// [`TrainError::NotEnoughData`].
    pub min_rows: usize,
    /// Training rows of a delivery model (send time, channel) kept at most (a deterministic
    /// sample above it); default [`MAX_TRAIN_ROWS`].
    pub max_train_rows: usize,
    /// The forest of the delivery models.
    pub params: ForestParams,
    /// Propensity training rows kept at most; default [`MAX_PROPENSITY_ROWS`].
    pub max_propensity_rows: usize,
    /// The forest of propensity models; default [`TrainOptions::propensity_forest`].
    pub propensity_params: ForestParams,
}

impl TrainOptions {
    /// The propensity forest: the delivery models' shape (30 trees of depth 6, 80% of the
    /// features per tree). Before the additive part existed a deeper forest (40 trees of depth 8,
    /// all features) narrowed the gap to the truth; blended with the additive model it no longer
    /// does (held-out AUC 0.7083 vs 0.7082 at 50,000 users) and took twice the time (44 s vs 21 s),
    /// docs/ml.md has the figures.
    pub fn propensity_forest() -> ForestParams {
        ForestParams::default()
    }
}

impl Default for TrainOptions {
    /// `now` is 0: set it (the library has no clock).
    fn default() -> Self {
        TrainOptions {
            now: 0,
            eval_days: 7,
            min_rows: 1_000,
            max_train_rows: MAX_TRAIN_ROWS,
            params: ForestParams::default(),
            max_propensity_rows: MAX_PROPENSITY_ROWS,
            propensity_params: TrainOptions::propensity_forest(),
        }
    }
}

/// What propensity is about. `within_days` is the campaign's `goal.within` in whole days (>= 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goal {
    pub event: String,
    pub within_days: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "not enough data: {rows} rows, {positives} positives; at least {needed} rows and 30 positives are needed"
    )]
    NotEnoughData {
        rows: usize,
        positives: usize,
        needed: usize,
    },
    #[error("a propensity model needs a goal")]
    NoGoal,
    #[error("the goal's window must be at least one day")]
    BadGoal,
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("additive model: {0}")]
    Linear(#[from] LinearError),
}

/// What serving needs to compute a user's features exactly as training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpace {
    pub encoder: Encoder,
    pub population: Population,
    pub smoothing: Smoothing,
    /// The event counted as `goals_*` in the features.
    pub goal: String,
}

impl FeatureSpace {
    /// One user's features as of `now` from that user's events (any order; events at/after `now`
    /// ignored).
    pub fn features(&self, user: &HistoryUser, events: &[&HistoryEvent], now: i64) -> UserFeatures {
        features::user_features(
            user,
            events,
            now,
            &self.goal,
            &self.population,
            &self.encoder,
            self.smoothing,
        )
    }
}

/// One split on a decision path, with the feature's name: `value < threshold` went left.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathStep {
    pub feature: String,
    pub threshold: f64,
    pub value: f64,
    pub went_left: bool,
}

/// The contract's name for [`PathStep`].
pub type Step = PathStep;

/// A probability with the decision path of the forest's most representative tree ("why") and,
/// for a propensity model with an additive part, the columns that moved its log-odds most.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub probability: f64,
    pub path: Vec<PathStep>,
    pub terms: Vec<Contribution>,
}

/// One column's part of a prediction's log-odds, against the average training row (the
/// additive part of a propensity model, scaled by its weight in the blend).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contribution {
    pub feature: String,
    pub value: f64,
    pub log_odds: f64,
}

/// How many contributions a prediction shows, largest first.
const CONTRIBUTIONS_SHOWN: usize = 5;

/// A forest with the names of its columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedForest {
    pub columns: Vec<String>,
    pub forest: ProbabilityForest,
}

impl NamedForest {
    fn probability(&self, row: &[f64]) -> f64 {
        self.forest.predict_slice(row)
    }

    fn scored(&self, row: &[f64]) -> Scored {
        let view = ndarray::ArrayView1::from(row);
        let path = self
            .forest
            .explain(view)
            .into_iter()
            .map(|s: trees::PathStep| PathStep {
                feature: self.columns.get(s.feature).cloned().unwrap_or_default(),
                threshold: s.threshold,
                value: s.value,
                went_left: s.went_left,
            })
            .collect();
        Scored {
            probability: self.probability(row),
            path,
            terms: Vec::new(),
        }
    }
}

/// True when nothing at all is known about the user: no event and no sign-up time. Such a user
/// is served by the fallbacks ([`population_best_hour`], the base rate, the first channel).
pub fn is_cold_start(f: &UserFeatures) -> bool {
    f.engagements_total == 0
        && f.goals_total == 0
        && f.channels.iter().all(|c| c.delivered == 0)
        && f.tenure_days == 0.0
}

/// Names of the columns of a send-time row.
pub const SEND_TIME_COLUMNS: [&str; 14] = [
    "hour_of_day",
    "weekend",
    "user_share_at_hour",
    "user_share_near_hour",
    "user_day_share_at_hour",
    "user_day_share_near_hour",
    "user_day_share_vs_peak",
    "population_share_at_hour",
    "population_day_share_at_hour",
    "hour_evidence",
    "recency_days",
    "sessions_30d",
    "email_open_rate",
    "push_open_rate",
];

/// Shares of a 168-bin histogram pooled per hour of day over days of one kind, relative to
/// uniform (1.0 = an average hour): `[weekday, weekend]` × 24.
fn day_shares(hours: &[f64]) -> [[f64; 24]; 2] {
    let mut out = [[0.0; 24]; 2];
    for (how, share) in hours.iter().enumerate() {
        let kind = usize::from(how / 24 >= 5);
        out[kind][how % 24] += share;
    }
    for (kind, days) in [(0, 5.0), (1, 2.0)] {
        out[kind]
            .iter_mut()
            .for_each(|s| *s *= HOURS_OF_WEEK as f64 / days);
    }
    out
}

/// A user's hour features, computed once and read for any hour.
struct HourProfile {
    user_day: [[f64; 24]; 2],
    user_peak: [f64; 2],
    population_day: [[f64; 24]; 2],
}

impl HourProfile {
    fn new(f: &UserFeatures, population: &Population) -> Self {
        let user_day = day_shares(&f.hour_of_week);
        let user_peak = [0, 1].map(|k| user_day[k].iter().copied().fold(f64::MIN_POSITIVE, f64::max));
        HourProfile {
            user_day,
            user_peak,
            population_day: day_shares(&population.hour_of_week),
        }
    }
}

fn send_time_row(f: &UserFeatures, p: &HourProfile, population: &Population, how: usize) -> Vec<f64> {
    let how = how % HOURS_OF_WEEK;
    let (hour, kind) = (how % 24, usize::from(how / 24 >= 5));
    let scale = HOURS_OF_WEEK as f64;
    let at = |h: isize| f.hour_of_week[(how as isize + h).rem_euclid(HOURS_OF_WEEK as isize) as usize];
    let day = |h: isize| p.user_day[kind][(hour as isize + h).rem_euclid(24) as usize];
    vec![
        hour as f64,
        kind as f64,
        at(0) * scale,
        (at(-1) + at(0) + at(1)) * scale / 3.0,
        day(0),
        (day(-1) + day(0) + day(1)) / 3.0,
        day(0) / p.user_peak[kind],
        population.hour_of_week[how] * scale,
        p.population_day[kind][hour],
        f64::from(f.hour_evidence),
        f.recency_days.unwrap_or(365.0),
        f64::from(f.sessions_30d),
        f.channels[0].open_rate,
        f.channels[1].open_rate,
    ]
}

/// Names of the columns of a channel row.
pub const CHANNEL_COLUMNS: [&str; 11] = [
    "channel",
    "delivered",
    "opened",
    "open_rate",
    "click_rate",
    "other_open_rate",
    "open_rate_vs_other",
    "hour_evidence",
    "sessions_30d",
    "recency_days",
    "platform",
];

fn channel_row(f: &UserFeatures, channel: usize) -> Vec<f64> {
    let c = &f.channels[channel.min(1)];
    let other = &f.channels[1 - channel.min(1)];
    vec![
        channel as f64,
        f64::from(c.delivered),
        f64::from(c.opened),
        c.open_rate,
        c.click_rate,
        other.open_rate,
        c.open_rate - other.open_rate,
        f64::from(f.hour_evidence),
        f64::from(f.sessions_30d),
        f.recency_days.unwrap_or(365.0),
        f64::from(f.traits[2]),
    ]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendTimeModel {
    pub space: FeatureSpace,
    pub forest: NamedForest,
}

impl SendTimeModel {
    /// P(engagement | user, local hour of week h) for a message at h.
    pub fn score(&self, f: &UserFeatures, hour_of_week: usize) -> Scored {
        let profile = HourProfile::new(f, &self.space.population);
        self.forest
            .scored(&send_time_row(f, &profile, &self.space.population, hour_of_week))
    }

    /// The best of `candidates` (local hours of week, Monday 00:00 = 0); ties -> first in the
    /// slice. None if empty. A cold-start user ([`is_cold_start`]) gets [`population_best_hour`].
    pub fn best_hour(&self, f: &UserFeatures, candidates: &[usize]) -> Option<(usize, Scored)> {
        if is_cold_start(f) {
            let h = population_best_hour(&self.space.population, candidates)?;
            return Some((h, self.score(f, h)));
        }
        let profile = HourProfile::new(f, &self.space.population);
        let mut best: Option<(usize, f64)> = None;
        for &h in candidates {
            let p = self
                .forest
                .probability(&send_time_row(f, &profile, &self.space.population, h));
            if best.is_none_or(|(_, b)| p > b) {
                best = Some((h, p));
            }
        }
        best.map(|(h, _)| (h, self.score(f, h)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelModel {
    pub space: FeatureSpace,
    pub forest: NamedForest,
}

impl ChannelModel {
    /// P(engagement | user, channel) where channel indexes [`CHANNELS`] (0 email, 1 push).
    pub fn score(&self, f: &UserFeatures, channel: usize) -> Scored {
        self.forest.scored(&channel_row(f, channel))
    }

    /// The best of `candidates` (indexes of [`CHANNELS`]); ties -> first. None if empty.
    pub fn best_channel(&self, f: &UserFeatures, candidates: &[usize]) -> Option<(usize, Scored)> {
        let mut best: Option<(usize, f64)> = None;
        for &c in candidates {
            let p = self.forest.probability(&channel_row(f, c));
            if best.is_none_or(|(_, b)| p > b) {
                best = Some((c, p));
            }
        }
        best.map(|(c, _)| (c, self.score(f, c)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropensityModel {
    pub space: FeatureSpace,
    pub goal: Goal,
    pub forest: NamedForest,
    /// The additive model blended with the forest ([`linear`]); models stored before it existed
    /// have none and serve the forest alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additive: Option<Additive>,
}

/// The additive part of a propensity model and its blend with the forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Additive {
    pub linear: LinearModel,
    pub blend: Blend,
}

impl Additive {
    /// The blended probability of a row the forest gives `forest_probability`, and the largest
    /// contributions to its log-odds, named (each column's part computed once for both).
    fn score(&self, row: &[f64], forest_probability: f64, columns: &[String]) -> (f64, Vec<Contribution>) {
        let parts = self.linear.contributions(row);
        let logit = self.linear.intercept + parts.iter().map(|(_, p)| p).sum::<f64>();
        let mut terms: Vec<Contribution> = parts
            .into_iter()
            .map(|(c, part)| Contribution {
                feature: columns.get(c).cloned().unwrap_or_default(),
                value: row.get(c).copied().unwrap_or_default(),
                log_odds: self.blend.linear * part,
            })
            .collect();
        terms.sort_by(|a, b| b.log_odds.abs().total_cmp(&a.log_odds.abs()));
        terms.truncate(CONTRIBUTIONS_SHOWN);
        (self.blend.probability(logit, forest_probability), terms)
    }
}

impl PropensityModel {
    pub fn goal(&self) -> &Goal {
        &self.goal
    }

    /// P(goal within `goal.within_days` | user). A cold-start user ([`is_cold_start`]) gets the
    /// training base rate with an empty path.
    pub fn score(&self, f: &UserFeatures) -> Scored {
        if is_cold_start(f) {
            return Scored {
                probability: self.forest.forest.base_rate,
                path: Vec::new(),
                terms: Vec::new(),
            };
        }
        let row = f.propensity_row();
        let mut scored = self.forest.scored(&row);
        if let Some(a) = &self.additive {
            (scored.probability, scored.terms) = a.score(&row, scored.probability, &self.forest.columns);
        }
        scored
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Model {
    SendTime(SendTimeModel),
    Channel(ChannelModel),
    Propensity(PropensityModel),
}

impl Model {
    pub fn kind(&self) -> ModelKind {
        match self {
            Model::SendTime(_) => ModelKind::SendTime,
            Model::Channel(_) => ModelKind::Channel,
            Model::Propensity(_) => ModelKind::Propensity,
        }
    }

    /// What serving needs to compute a user's features exactly as training did.
    pub fn feature_space(&self) -> &FeatureSpace {
        match self {
            Model::SendTime(m) => &m.space,
            Model::Channel(m) => &m.space,
            Model::Propensity(m) => &m.space,
        }
    }

    fn forest(&self) -> &NamedForest {
        match self {
            Model::SendTime(m) => &m.forest,
            Model::Channel(m) => &m.forest,
            Model::Propensity(m) => &m.forest,
        }
    }
}

/// The most engaged-with of `candidates` in the population's hour-of-week shares; ties -> first.
/// The fallback for cold start and when no send-time model is in service.
pub fn population_best_hour(population: &Population, candidates: &[usize]) -> Option<usize> {
    let share = |h: usize| {
        population
            .hour_of_week
            .get(h % HOURS_OF_WEEK)
            .copied()
            .unwrap_or(0.0)
    };
    let mut best: Option<usize> = None;
    for &h in candidates {
        if best.is_none_or(|b| share(h) > share(b)) {
            best = Some(h);
        }
    }
    best
}

/// A model and its card.
#[derive(Debug, Clone)]
pub struct Trained {
    pub model: Model,
    pub card: ModelCard,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    pub kind: ModelKind,
    pub goal: Option<Goal>,
    pub trained_at: i64,
    pub data_from: i64,
    pub data_to: i64,
    pub train_rows: usize,
    pub eval_rows: usize,
    /// Positives among the training rows.
    pub positives: usize,
    /// The model on the held-out slice.
    pub metrics: Metrics,
    /// The baseline it replaces, same slice.
    pub baseline: Metrics,
    /// "population best hour" | "most used channel" | "base rate".
    pub baseline_name: String,
    /// Each feature's share of the model's explanation, descending, summing to 1: split gain;
    /// for a propensity model with an additive part, mean absolute log-odds moved
    /// ([`propensity_importance`]).
    pub feature_importance: Vec<(String, f64)>,
    pub reference: DriftReference,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub auc: f64,
    pub log_loss: f64,
    pub brier: f64,
    pub ece: f64,
    pub calibration: Vec<CalibrationBin>,
    /// Send time: the observed open rate of held-out messages sent within ±1 h of the hour the
    /// policy (model or baseline) would have picked that day; channel: of held-out messages sent
    /// on the channel the policy would have picked. `None` for propensity, or with fewer than 30
    /// matching messages.
    pub engagement_rate: Option<f64>,
    /// Average lift over random targeting across audience sizes, 0..=1 ([`metrics::lift_quality`]).
    pub lift_quality: f64,
}

impl Metrics {
    fn of(probs: &[f64], labels: &[bool], engagement_rate: Option<f64>) -> Self {
        let calibration = metrics::calibration_table(probs, labels, 10);
        Metrics {
            auc: metrics::roc_auc(probs, labels).unwrap_or(0.5),
            log_loss: metrics::log_loss(probs, labels),
            brier: metrics::brier(probs, labels),
            ece: metrics::expected_calibration_error(&calibration),
            calibration,
            engagement_rate,
            lift_quality: metrics::lift_quality(probs, labels),
        }
    }

    /// Log-loss skill over a reference on the same rows: 1 − ll / ll_reference (> 0 is better).
    fn skill_over(&self, reference: &Metrics) -> f64 {
        if reference.log_loss > 0.0 {
            1.0 - self.log_loss / reference.log_loss
        } else {
            0.0
        }
    }
}

/// Per user-level feature column ([`PROPENSITY_COLUMNS`]): the bin edges and the training
/// population's shares, for PSI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DriftReference {
    pub columns: Vec<DriftColumn>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DriftColumn {
    pub name: String,
    pub edges: Vec<f64>,
    pub shares: Vec<f64>,
}

impl DriftReference {
    fn of(rows: &[UserFeatures]) -> Self {
        let table: Vec<Vec<f64>> = rows.iter().map(UserFeatures::propensity_row).collect();
        let columns = PROPENSITY_COLUMNS
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let values: Vec<f64> = table.iter().map(|r| r[c]).collect();
                let edges = metrics::quantile_edges(&values, DRIFT_BINS);
                DriftColumn {
                    name: name.to_string(),
                    shares: metrics::bin_shares(&edges, &values),
                    edges,
                }
            })
            .collect();
        DriftReference { columns }
    }
}

/// PSI per feature of `rows` (feature rows computed now) against the card's training reference.
/// Below 0.1 is stable, above 0.25 drifted. The model is not needed for the user-level columns
/// the reference holds; it is taken so a future reference may cover model-specific columns.
pub fn drift(card: &ModelCard, _model: &Model, rows: &[UserFeatures]) -> Vec<(String, f64)> {
    let table: Vec<Vec<f64>> = rows.iter().map(UserFeatures::propensity_row).collect();
    card.reference
        .columns
        .iter()
        .enumerate()
        .map(|(c, column)| {
            let values: Vec<f64> = table.iter().map(|r| r.get(c).copied().unwrap_or(0.0)).collect();
            let psi = if values.is_empty() {
                0.0
            } else {
                metrics::psi_shares(&column.shares, &metrics::bin_shares(&column.edges, &values))
            };
            (column.name.clone(), psi)
        })
        .collect()
}

/// True when `candidate` beats the model in service (if any) AND its own baseline on the
/// held-out slice; the String says why. "Beats the baseline": lower log loss and higher AUC than
/// the baseline on the same rows (and, where both have one, an engagement rate at least the
/// baseline's). "Beats the model in service": the two were evaluated on different slices, so they
/// are compared by log-loss skill over their own baselines (1 − ll / ll_baseline), which must not
/// be lower, and AUC, which may be at most 0.005 lower.
pub fn should_promote(candidate: &ModelCard, serving: Option<&ModelCard>) -> (bool, String) {
    let (m, b) = (&candidate.metrics, &candidate.baseline);
    let skill = m.skill_over(b);
    if m.log_loss >= b.log_loss {
        return (
            false,
            format!(
                "log loss {:.4} is not below the {}'s {:.4}",
                m.log_loss, candidate.baseline_name, b.log_loss
            ),
        );
    }
    if m.auc <= b.auc {
        return (
            false,
            format!(
                "AUC {:.3} is not above the {}'s {:.3}",
                m.auc, candidate.baseline_name, b.auc
            ),
        );
    }
    if let (Some(model), Some(base)) = (m.engagement_rate, b.engagement_rate)
        && model < base
    {
        return (
            false,
            format!(
                "engagement rate {model:.4} is below the {}'s {base:.4}",
                candidate.baseline_name
            ),
        );
    }
    let versus_baseline = format!(
        "log loss {:.4} vs {:.4} for the {} (skill {:.1}%), AUC {:.3} vs {:.3}",
        m.log_loss,
        b.log_loss,
        candidate.baseline_name,
        100.0 * skill,
        m.auc,
        b.auc
    );
    let Some(serving) = serving else {
        return (true, format!("no model in service; {versus_baseline}"));
    };
    if serving.kind != candidate.kind || serving.goal != candidate.goal {
        return (
            false,
            format!(
                "the model in service is a {} model{}: not comparable",
                serving.kind,
                serving
                    .goal
                    .as_ref()
                    .map(|g| format!(" for {}", g.event))
                    .unwrap_or_default()
            ),
        );
    }
    let serving_skill = serving.metrics.skill_over(&serving.baseline);
    if skill < serving_skill {
        return (
            false,
            format!(
                "skill over its baseline {:.1}% is below the model in service's {:.1}%",
                100.0 * skill,
                100.0 * serving_skill
            ),
        );
    }
    if m.auc < serving.metrics.auc - 0.005 {
        return (
            false,
            format!(
                "AUC {:.3} is below the model in service's {:.3}",
                m.auc, serving.metrics.auc
            ),
        );
    }
    (
        true,
        format!(
            "beats the model in service (skill {:.1}% vs {:.1}%, AUC {:.3} vs {:.3}); {versus_baseline}",
            100.0 * skill,
            100.0 * serving_skill,
            m.auc,
            serving.metrics.auc
        ),
    )
}

/// A deterministic pseudo-random number in `[0, 1)` for sampling rows (splitmix64).
fn unit(seed: u64, a: u64, b: u64) -> f64 {
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn keep_share(total: usize, cap: usize) -> f64 {
    if total <= cap {
        1.0
    } else {
        cap as f64 / total as f64
    }
}

/// Rows and labels on their way to a forest.
#[derive(Default)]
struct Rows {
    x: Vec<f64>,
    y: Vec<bool>,
    width: usize,
}

impl Rows {
    fn new(width: usize) -> Self {
        Rows {
            width,
            ..Rows::default()
        }
    }

    fn push(&mut self, row: Vec<f64>, label: bool) {
        debug_assert_eq!(row.len(), self.width);
        self.x.extend(row);
        self.y.push(label);
    }

    fn len(&self) -> usize {
        self.y.len()
    }

    fn positives(&self) -> usize {
        self.y.iter().filter(|&&y| y).count()
    }

    fn matrix(&self) -> Array2<f64> {
        Array2::from_shape_vec((self.len(), self.width), self.x.clone()).expect("rows of equal width")
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.width..(i + 1) * self.width]
    }

    /// Splits off a deterministic `share` of the rows: `(the rest, the share)`.
    fn split(&self, share: f64, seed: u64) -> (Rows, Rows) {
        let (mut rest, mut held) = (Rows::new(self.width), Rows::new(self.width));
        for i in 0..self.len() {
            let to = if unit(seed, 17, i as u64) < share {
                &mut held
            } else {
                &mut rest
            };
            to.push(self.row(i).to_vec(), self.y[i]);
        }
        (rest, held)
    }
}

fn check_enough(rows: &Rows, opts: &TrainOptions) -> Result<(), TrainError> {
    let positives = rows.positives();
    if rows.len() < opts.min_rows || positives < MIN_POSITIVES {
        return Err(TrainError::NotEnoughData {
            rows: rows.len(),
            positives,
            needed: opts.min_rows,
        });
    }
    Ok(())
}

fn fit(columns: &[&str], rows: &Rows, params: &ForestParams) -> Result<NamedForest, TrainError> {
    let forest = ProbabilityForest::fit(rows.matrix().view(), &rows.y, params)?;
    Ok(NamedForest {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        forest,
    })
}

fn importance(forest: &NamedForest) -> Vec<(String, f64)> {
    let shares = forest.forest.importance(forest.columns.len());
    let mut out: Vec<(String, f64)> = forest.columns.iter().cloned().zip(shares).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Shared setup: users, their sorted events, the trait encoder, the population before `split`.
struct Prepared<'h> {
    users: Vec<&'h HistoryUser>,
    events: HashMap<&'h str, Vec<&'h HistoryEvent>>,
    space: FeatureSpace,
    data_from: i64,
    data_to: i64,
    split: i64,
}

impl<'h> Prepared<'h> {
    fn new(history: &'h History, opts: &TrainOptions, goal: &str) -> Self {
        let split = opts.now - i64::from(opts.eval_days) * DAY_MS;
        let events = history.by_user(opts.now);
        let zones: HashMap<&str, chrono_tz::Tz> = history
            .users
            .iter()
            .map(|u| (u.id.as_str(), features::parse_tz(u.timezone.as_deref())))
            .collect();
        let population = Population::from_events(
            history.events.iter(),
            |id| zones.get(id).copied().unwrap_or(chrono_tz::Tz::UTC),
            split,
        );
        let mut users: Vec<&HistoryUser> = history.users.iter().collect();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        let used = events.values().flatten();
        let (data_from, data_to) =
            used.fold((i64::MAX, i64::MIN), |(lo, hi), e| (lo.min(e.ts), hi.max(e.ts)));
        Prepared {
            space: FeatureSpace {
                encoder: Encoder::fit(history.users.iter().map(|u| &u.traits)),
                population,
                smoothing: Smoothing::default(),
                goal: goal.to_string(),
            },
            events,
            users,
            data_from: if data_from == i64::MAX {
                opts.now
            } else {
                data_from
            },
            data_to: if data_to == i64::MIN { opts.now } else { data_to },
            split,
        }
    }

    fn events_of(&self, user: &str) -> &[&'h HistoryEvent] {
        self.events.get(user).map_or(&[][..], Vec::as_slice)
    }

    /// Features of (a sample of) users as of `at`, for the drift reference.
    fn reference(&self, at: i64, seed: u64) -> DriftReference {
        let share = keep_share(self.users.len(), MAX_REFERENCE_USERS);
        let rows: Vec<UserFeatures> = self
            .users
            .iter()
            .enumerate()
            .filter(|(i, _)| unit(seed, 7, *i as u64) < share)
            .map(|(_, u)| self.space.features(u, self.events_of(&u.id), at))
            .collect();
        DriftReference::of(&rows)
    }

    fn card(&self, kind: ModelKind, goal: Option<Goal>, opts: &TrainOptions) -> ModelCardDraft {
        ModelCardDraft {
            kind,
            goal,
            trained_at: opts.now,
            data_from: self.data_from,
            data_to: self.data_to,
        }
    }
}

struct ModelCardDraft {
    kind: ModelKind,
    goal: Option<Goal>,
    trained_at: i64,
    data_from: i64,
    data_to: i64,
}

impl ModelCardDraft {
    #[allow(clippy::too_many_arguments)]
    fn finish(
        self,
        train: &Rows,
        eval_rows: usize,
        metrics: Metrics,
        baseline: Metrics,
        baseline_name: &str,
        feature_importance: Vec<(String, f64)>,
        reference: DriftReference,
    ) -> ModelCard {
        ModelCard {
            kind: self.kind,
            goal: self.goal,
            trained_at: self.trained_at,
            data_from: self.data_from,
            data_to: self.data_to,
            train_rows: train.len(),
            eval_rows,
            positives: train.positives(),
            metrics,
            baseline,
            baseline_name: baseline_name.to_string(),
            feature_importance,
            reference,
        }
    }
}

/// Trains one model. `goal` is needed for [`ModelKind::Propensity`] and ignored otherwise.
pub fn train(
    kind: ModelKind,
    goal: Option<&Goal>,
    history: &History,
    opts: &TrainOptions,
) -> Result<Trained, TrainError> {
    match kind {
        ModelKind::SendTime | ModelKind::Channel => train_on_deliveries(kind, history, opts),
        ModelKind::Propensity => train_propensity(goal.ok_or(TrainError::NoGoal)?, history, opts),
    }
}

/// The feature rows of a delivery model (send time or channel), split into training and held-out.
fn delivery_matrix(
    kind: ModelKind,
    population: &Population,
    rows: &[Delivery],
) -> (&'static [&'static str], Rows, Rows) {
    let columns: &'static [&'static str] = match kind {
        ModelKind::SendTime => &SEND_TIME_COLUMNS,
        _ => &CHANNEL_COLUMNS,
    };
    let row_of = |d: &Delivery| match kind {
        ModelKind::SendTime => send_time_row(
            &d.features,
            &HourProfile::new(&d.features, population),
            population,
            d.how,
        ),
        _ => channel_row(&d.features, d.channel),
    };
    let (mut train_rows, mut eval_rows) = (Rows::new(columns.len()), Rows::new(columns.len()));
    for d in rows {
        let target = if d.held_out {
            &mut eval_rows
        } else {
            &mut train_rows
        };
        target.push(row_of(d), d.opened);
    }
    (columns, train_rows, eval_rows)
}

/// The exact training and held-out rows `train` would fit a delivery model (send time or channel)
/// on, for benchmarks and outside tools (e.g. scikit-learn on the same CSV).
#[derive(Debug, Clone)]
pub struct ExportedRows {
    pub columns: Vec<String>,
    /// Row-major, `columns.len()` values per row.
    pub train_x: Vec<f64>,
    pub train_y: Vec<bool>,
    pub eval_x: Vec<f64>,
    pub eval_y: Vec<bool>,
}

/// See [`ExportedRows`]. `kind` must be send time or channel.
pub fn export_delivery_rows(kind: ModelKind, history: &History, opts: &TrainOptions) -> ExportedRows {
    let prep = Prepared::new(history, opts, ORDER_COMPLETED);
    let rows = deliveries(&prep, opts, opts.params.seed);
    let (columns, train, eval) = delivery_matrix(kind, &prep.space.population, &rows);
    ExportedRows {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        train_x: train.x,
        train_y: train.y,
        eval_x: eval.x,
        eval_y: eval.y,
    }
}

/// One delivery with its label and the user's features just before it.
struct Delivery {
    user: usize,
    how: usize,
    channel: usize,
    opened: bool,
    held_out: bool,
    features: UserFeatures,
}

/// Walks every user's events in time order and reads features just before each sampled
/// delivery whose label window has closed (training: before `split`; held out: before `now`).
fn deliveries(prep: &Prepared, opts: &TrainOptions, seed: u64) -> Vec<Delivery> {
    let now = opts.now;
    // First pass: how many of each kind, to sample down to the caps.
    let (mut train_total, mut eval_total) = (0usize, 0usize);
    for list in prep.events.values() {
        for e in list.iter().filter(|e| e.name == MESSAGE_DELIVERED) {
            if e.ts + OPEN_WINDOW_MS <= prep.split {
                train_total += 1;
            } else if e.ts >= prep.split && e.ts + OPEN_WINDOW_MS <= now {
                eval_total += 1;
            }
        }
    }
    let (train_share, eval_share) = (
        keep_share(train_total, opts.max_train_rows),
        keep_share(eval_total, MAX_EVAL_ROWS),
    );
    let mut out = Vec::new();
    for (u, user) in prep.users.iter().enumerate() {
        let events = prep.events_of(&user.id);
        if events.is_empty() {
            continue;
        }
        // When each message was opened, by message id, and each channel's opens in time order.
        let mut opened_message: HashMap<&str, i64> = HashMap::new();
        let mut channel_opens: [Vec<i64>; 2] = Default::default();
        for e in events {
            let channel = match e.name.as_str() {
                EMAIL_OPENED => 0,
                PUSH_OPENED => 1,
                _ => continue,
            };
            channel_opens[channel].push(e.ts);
            if let Some(m) = e.properties.get("message").and_then(Value::as_str) {
                opened_message.entry(m).or_insert(e.ts);
            }
        }
        let mut acc = FeatureAccumulator::new(user, &prep.space.goal, &prep.space.encoder);
        let mut i = 0;
        while i < events.len() {
            // Events at the same instant are all "at" the delivery, so none is in its features.
            let ts = events[i].ts;
            let mut j = i;
            while j < events.len() && events[j].ts == ts {
                j += 1;
            }
            for (k, e) in events[i..j].iter().enumerate() {
                if e.name != MESSAGE_DELIVERED {
                    continue;
                }
                let Some(channel) = features::channel_of(e) else {
                    continue;
                };
                let (held_out, horizon, share) = if ts + OPEN_WINDOW_MS <= prep.split {
                    (false, prep.split, train_share)
                } else if ts >= prep.split && ts + OPEN_WINDOW_MS <= now {
                    (true, now, eval_share)
                } else {
                    continue;
                };
                if unit(seed, u as u64, (i + k) as u64) >= share {
                    continue;
                }
                let until = (ts + OPEN_WINDOW_MS).min(horizon);
                let opened = match e.properties.get("message").and_then(Value::as_str) {
                    Some(m) => opened_message.get(m).is_some_and(|&o| o >= ts && o < until),
                    None => channel_opens[channel].iter().any(|&o| o > ts && o < until),
                };
                out.push(Delivery {
                    user: u,
                    how: features::hour_of_week(ts, acc.tz()),
                    channel,
                    opened,
                    held_out,
                    features: acc.features(ts, &prep.space.population, prep.space.smoothing),
                });
            }
            for e in &events[i..j] {
                acc.push(e);
            }
            i = j;
        }
    }
    out
}

fn train_on_deliveries(
    kind: ModelKind,
    history: &History,
    opts: &TrainOptions,
) -> Result<Trained, TrainError> {
    let prep = Prepared::new(history, opts, ORDER_COMPLETED);
    let seed = opts.params.seed;
    let rows = deliveries(&prep, opts, seed);
    let population = &prep.space.population;
    let (columns, train_rows, eval_rows) = delivery_matrix(kind, population, &rows);
    check_enough(&train_rows, opts)?;
    let forest = fit(columns, &train_rows, &opts.params)?;
    let probs: Vec<f64> = (0..eval_rows.len())
        .map(|i| forest.probability(eval_rows.row(i)))
        .collect();

    // Baseline predictors from the training rows only.
    let train: Vec<&Delivery> = rows.iter().filter(|d| !d.held_out).collect();
    let held: Vec<&Delivery> = rows.iter().filter(|d| d.held_out).collect();
    let base_rate = train_rows.positives() as f64 / train_rows.len() as f64;
    let rate_by = |key: &dyn Fn(&Delivery) -> usize, cells: usize| -> Vec<f64> {
        let mut counts = vec![(0.0, 0.0); cells];
        for d in &train {
            let c = &mut counts[key(d)];
            c.0 += 1.0;
            c.1 += f64::from(u8::from(d.opened));
        }
        // Shrunk toward the overall rate by 20 pseudo-deliveries.
        counts
            .into_iter()
            .map(|(n, k)| (k + 20.0 * base_rate) / (n + 20.0))
            .collect()
    };
    let (baseline_name, baseline_probs, model_rate, baseline_rate) = match kind {
        ModelKind::SendTime => {
            let by_hour = rate_by(&|d| usize::from(d.how / 24 >= 5) * 24 + d.how % 24, 48);
            let baseline_probs: Vec<f64> = held
                .iter()
                .map(|d| by_hour[usize::from(d.how / 24 >= 5) * 24 + d.how % 24])
                .collect();
            let (model_rate, baseline_rate) = send_time_policy_rates(&prep, &forest, &held, seed);
            ("population best hour", baseline_probs, model_rate, baseline_rate)
        }
        _ => {
            let by_channel = rate_by(&|d| d.channel, 2);
            let baseline_probs: Vec<f64> = held.iter().map(|d| by_channel[d.channel]).collect();
            let (model_rate, baseline_rate) = channel_policy_rates(&forest, &held);
            ("most used channel", baseline_probs, model_rate, baseline_rate)
        }
    };
    let metrics = Metrics::of(&probs, &eval_rows.y, model_rate);
    let baseline = Metrics::of(&baseline_probs, &eval_rows.y, baseline_rate);
    let reference = prep.reference(prep.split, seed);
    let card = prep.card(kind, None, opts).finish(
        &train_rows,
        eval_rows.len(),
        metrics,
        baseline,
        baseline_name,
        importance(&forest),
        reference,
    );
    let model = match kind {
        ModelKind::SendTime => Model::SendTime(SendTimeModel {
            space: prep.space,
            forest,
        }),
        _ => Model::Channel(ChannelModel {
            space: prep.space,
            forest,
        }),
    };
    Ok(Trained { model, card })
}

/// The observed open rate of matched held-out messages, `None` below 30 matches.
fn matched_rate(matched: &[bool]) -> Option<f64> {
    (matched.len() >= 30).then(|| matched.iter().filter(|&&o| o).count() as f64 / matched.len() as f64)
}

fn circular_hour_distance(a: usize, b: usize) -> usize {
    let d = a.abs_diff(b) % HOURS_OF_WEEK;
    d.min(HOURS_OF_WEEK - d)
}

/// Off-policy engagement of the send-time model and the population-best-hour baseline: for a
/// sample of held-out messages, the hour each policy would have picked on that message's local
/// day (07:00–22:59, features just before the message); a message counts for a policy when it
/// went out within ±1 h of that hour.
fn send_time_policy_rates(
    prep: &Prepared,
    forest: &NamedForest,
    held: &[&Delivery],
    seed: u64,
) -> (Option<f64>, Option<f64>) {
    let users: HashSet<usize> = held.iter().map(|d| d.user).collect();
    let share = keep_share(users.len(), MAX_POLICY_USERS);
    let population = &prep.space.population;
    let (mut model, mut baseline) = (Vec::new(), Vec::new());
    for d in held.iter().filter(|d| unit(seed, 11, d.user as u64) < share) {
        let day = d.how / 24 * 24;
        let candidates: Vec<usize> = POLICY_HOURS.map(|h| day + h).collect();
        let profile = HourProfile::new(&d.features, population);
        let mut best: Option<(usize, f64)> = None;
        for &h in &candidates {
            let p = forest.probability(&send_time_row(&d.features, &profile, population, h));
            if best.is_none_or(|(_, b)| p > b) {
                best = Some((h, p));
            }
        }
        if let Some((h, _)) = best
            && circular_hour_distance(h, d.how) <= 1
        {
            model.push(d.opened);
        }
        if let Some(h) = population_best_hour(population, &candidates)
            && circular_hour_distance(h, d.how) <= 1
        {
            baseline.push(d.opened);
        }
    }
    (matched_rate(&model), matched_rate(&baseline))
}

/// Off-policy engagement of the channel model and the most-used-channel baseline over held-out
/// messages; a policy's candidates are the channels the user had received messages on before.
fn channel_policy_rates(forest: &NamedForest, held: &[&Delivery]) -> (Option<f64>, Option<f64>) {
    let (mut model, mut baseline) = (Vec::new(), Vec::new());
    for d in held {
        let f = &d.features;
        let mut candidates: Vec<usize> = (0..CHANNELS.len())
            .filter(|&c| f.channels[c].delivered > 0)
            .collect();
        if !candidates.contains(&d.channel) {
            candidates.push(d.channel);
        }
        let chosen = candidates
            .iter()
            .copied()
            .map(|c| (c, forest.probability(&channel_row(f, c))))
            .fold(None, |best: Option<(usize, f64)>, (c, p)| match best {
                Some((_, b)) if b >= p => best,
                _ => Some((c, p)),
            })
            .map(|(c, _)| c);
        if chosen == Some(d.channel) {
            model.push(d.opened);
        }
        let most_used = candidates
            .iter()
            .copied()
            .max_by_key(|&c| (f.channels[c].delivered, std::cmp::Reverse(c)));
        if most_used == Some(d.channel) {
            baseline.push(d.opened);
        }
    }
    (matched_rate(&model), matched_rate(&baseline))
}

/// The weekly training cut-offs of a propensity model, newest first: `T1 = now − eval − within`,
/// then a week earlier each, while at least two weeks of history lie before the cut-off (at most
/// six cut-offs).
pub fn propensity_cutoffs(data_from: i64, now: i64, eval_days: u32, within_days: u32) -> Vec<i64> {
    let t1 = now - i64::from(eval_days + within_days) * DAY_MS;
    (0..6)
        .map(|k| t1 - k * 7 * DAY_MS)
        .take_while(|&t| t >= data_from + 14 * DAY_MS)
        .collect()
}

/// The rows a propensity model trains and is judged on: one per user and weekly cut-off before
/// the evaluation cut-off (`now − within`), and one per user at the evaluation cut-off.
struct PropensityRows {
    train: Rows,
    eval: Rows,
    /// The features of each held-out row, in order.
    eval_users: Vec<UserFeatures>,
    /// The index in `Prepared::users` of each held-out row, in order.
    eval_user_index: Vec<usize>,
}

fn propensity_rows(goal: &Goal, prep: &Prepared, opts: &TrainOptions) -> PropensityRows {
    let seed = opts.propensity_params.seed;
    let within = i64::from(goal.within_days) * DAY_MS;
    let mut cutoffs = propensity_cutoffs(prep.data_from, opts.now, opts.eval_days, goal.within_days);
    cutoffs.sort_unstable();
    let eval_at = opts.now - within;
    let known = |user: &HistoryUser, events: &[&HistoryEvent], at: i64| {
        events.first().is_some_and(|e| e.ts < at)
            || features::created_at_of(&user.traits).is_some_and(|t| t < at)
    };
    let candidates = prep.users.len() * cutoffs.len();
    let (train_share, eval_share) = (
        keep_share(candidates, opts.max_propensity_rows),
        keep_share(prep.users.len(), MAX_EVAL_ROWS),
    );
    let width = PROPENSITY_COLUMNS.len();
    let mut out = PropensityRows {
        train: Rows::new(width),
        eval: Rows::new(width),
        eval_users: Vec::new(),
        eval_user_index: Vec::new(),
    };
    for (u, &user) in prep.users.iter().enumerate() {
        let events = prep.events_of(&user.id);
        let goals: Vec<i64> = events
            .iter()
            .filter(|e| e.name == goal.event)
            .map(|e| e.ts)
            .collect();
        let label = |at: i64| goals.iter().any(|&g| g >= at && g < at + within);
        let mut acc = FeatureAccumulator::new(user, &goal.event, &prep.space.encoder);
        let mut next = 0;
        let read = |acc: &FeatureAccumulator, at: i64, k: u64| -> Option<UserFeatures> {
            (known(user, events, at)
                && unit(seed, u as u64, k) < if k == 0 { eval_share } else { train_share })
            .then(|| acc.features(at, &prep.space.population, prep.space.smoothing))
        };
        // Cut-offs in time order, then the evaluation cut-off (after every training one).
        let mut stops: Vec<(i64, u64)> = cutoffs
            .iter()
            .enumerate()
            .map(|(k, &t)| (t, k as u64 + 1))
            .collect();
        stops.push((eval_at, 0));
        stops.sort_unstable();
        for (at, k) in stops {
            while next < events.len() && events[next].ts < at {
                acc.push(events[next]);
                next += 1;
            }
            if let Some(f) = read(&acc, at, k) {
                if k == 0 {
                    out.eval.push(f.propensity_row(), label(at));
                    out.eval_users.push(f);
                    out.eval_user_index.push(u);
                } else {
                    out.train.push(f.propensity_row(), label(at));
                }
            }
        }
    }
    out
}

/// The exact rows `train` would fit and judge a propensity model on, with the id of each
/// held-out row's user: for outside tools (scikit-learn on the same CSV) and for judging how
/// much of the truth the observable features carry.
pub fn export_propensity_rows(
    goal: &Goal,
    history: &History,
    opts: &TrainOptions,
) -> (ExportedRows, Vec<String>) {
    let prep = Prepared::new(history, opts, &goal.event);
    let rows = propensity_rows(goal, &prep, opts);
    let ids = rows
        .eval_user_index
        .iter()
        .map(|&u| prep.users[u].id.clone())
        .collect();
    (
        ExportedRows {
            columns: PROPENSITY_COLUMNS.iter().map(|c| c.to_string()).collect(),
            train_x: rows.train.x,
            train_y: rows.train.y,
            eval_x: rows.eval.x,
            eval_y: rows.eval.y,
        },
        ids,
    )
}

fn train_propensity(goal: &Goal, history: &History, opts: &TrainOptions) -> Result<Trained, TrainError> {
    if goal.within_days == 0 {
        return Err(TrainError::BadGoal);
    }
    let prep = Prepared::new(history, opts, &goal.event);
    let seed = opts.propensity_params.seed;
    let PropensityRows {
        train: train_rows,
        eval: eval_rows,
        eval_users,
        ..
    } = propensity_rows(goal, &prep, opts);
    check_enough(&train_rows, opts)?;
    let (fit_rows, blend_rows) = train_rows.split(BLEND_SHARE, seed);
    let blend_positives = blend_rows.positives();
    let (forest, additive) = if blend_rows.len() >= MIN_BLEND_ROWS && blend_positives >= MIN_POSITIVES {
        let forest = fit(&PROPENSITY_COLUMNS, &fit_rows, &opts.propensity_params)?;
        let kinds = propensity_kinds(&prep.space.encoder);
        let linear = LinearModel::fit(fit_rows.matrix().view(), &fit_rows.y, &kinds)?;
        let (logits, forest_probs): (Vec<f64>, Vec<f64>) = (0..blend_rows.len())
            .map(|i| {
                let row = blend_rows.row(i);
                (linear.logit(row), forest.probability(row))
            })
            .unzip();
        let blend = Blend::fit(&logits, &forest_probs, &blend_rows.y)?;
        (forest, Some(Additive { linear, blend }))
    } else {
        // Too few rows to fit a blend on unseen rows: the forest alone, on all of them.
        (
            fit(&PROPENSITY_COLUMNS, &train_rows, &opts.propensity_params)?,
            None,
        )
    };
    let model = PropensityModel {
        space: prep.space.clone(),
        goal: goal.clone(),
        forest,
        additive,
    };
    let probs: Vec<f64> = eval_users.iter().map(|f| model.score(f).probability).collect();
    let base_rate = model.forest.forest.base_rate;
    let metrics = Metrics::of(&probs, &eval_rows.y, None);
    let baseline = Metrics::of(&vec![base_rate; eval_rows.len()], &eval_rows.y, None);
    let reference = DriftReference::of(&eval_users_sample(&eval_users, seed));
    let card = prep.card(ModelKind::Propensity, Some(goal.clone()), opts).finish(
        &train_rows,
        eval_rows.len(),
        metrics,
        baseline,
        "base rate",
        propensity_importance(&model, &blend_rows),
        reference,
    );
    Ok(Trained {
        model: Model::Propensity(model),
        card,
    })
}

/// Share of the propensity training rows kept from both parts to fit their blend.
const BLEND_SHARE: f64 = 0.2;
/// Fewest blend rows worth fitting a blend on (otherwise the forest serves alone).
const MIN_BLEND_ROWS: usize = 200;

/// How each propensity column enters the additive model: trait codes as categories (code 0 is
/// "unknown"), everything else as a count or duration on the log scale.
fn propensity_kinds(encoder: &Encoder) -> Vec<ColumnKind> {
    PROPENSITY_COLUMNS
        .iter()
        .map(|c| match Encoder::TRAITS.iter().position(|t| t == c) {
            Some(i) => ColumnKind::Categorical {
                levels: encoder.values[i].len() + 1,
            },
            None => ColumnKind::Numeric,
        })
        .collect()
}

/// Each column's share of a propensity model's explanation. Forest alone: split gain. With an
/// additive part: the mean absolute log-odds each column moves over the blend rows — the
/// additive terms as they are, the forest's deviation from its mean log-odds shared out by its
/// split gains — so a forest the blend barely weighs does not claim the credit.
fn propensity_importance(model: &PropensityModel, rows: &Rows) -> Vec<(String, f64)> {
    let Some(a) = &model.additive else {
        return importance(&model.forest);
    };
    let columns = &model.forest.columns;
    let n = rows.len().max(1) as f64;
    let mut parts = vec![0.0; columns.len()];
    let forest_logits: Vec<f64> = (0..rows.len())
        .map(|i| trees::logit(model.forest.probability(rows.row(i))))
        .collect();
    let mean_forest = forest_logits.iter().sum::<f64>() / n;
    let forest_part = forest_logits
        .iter()
        .map(|l| (a.blend.forest * (l - mean_forest)).abs())
        .sum::<f64>()
        / n;
    for i in 0..rows.len() {
        for (c, part) in a.linear.contributions(rows.row(i)) {
            parts[c] += (a.blend.linear * part).abs() / n;
        }
    }
    for (c, gain) in model
        .forest
        .forest
        .importance(columns.len())
        .into_iter()
        .enumerate()
    {
        parts[c] += forest_part * gain;
    }
    let total: f64 = parts.iter().sum();
    if total > 0.0 {
        parts.iter_mut().for_each(|p| *p /= total);
    }
    let mut out: Vec<(String, f64)> = columns.iter().cloned().zip(parts).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

fn eval_users_sample(rows: &[UserFeatures], seed: u64) -> Vec<UserFeatures> {
    let share = keep_share(rows.len(), MAX_REFERENCE_USERS);
    rows.iter()
        .enumerate()
        .filter(|(i, _)| unit(seed, 13, *i as u64) < share)
        .map(|(_, f)| f.clone())
        .collect()
}

impl Model {
    /// The model's probability for a user with features `f`: send time at the user's best of all
    /// 168 hours, channel at the best channel, propensity as is. For reports and drift checks.
    pub fn headline(&self, f: &UserFeatures) -> f64 {
        let all: Vec<usize> = (0..HOURS_OF_WEEK).collect();
        match self {
            Model::SendTime(m) => m.best_hour(f, &all).map_or(0.0, |(_, s)| s.probability),
            Model::Channel(m) => m.best_channel(f, &[0, 1]).map_or(0.0, |(_, s)| s.probability),
            Model::Propensity(m) => m.score(f).probability,
        }
    }

    /// The names of the model's columns.
    pub fn columns(&self) -> &[String] {
        &self.forest().columns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::simulate::{SimulateOptions, generate};

    fn world(users: usize) -> (crate::ml::simulate::Truth, History, i64) {
        let opts = SimulateOptions::new(users, 35, 3, "2026-03-02T00:00:00Z".parse().unwrap());
        let now = opts.start.timestamp_millis() + 35 * DAY_MS;
        let (truth, history) = generate(&opts);
        (truth, history, now)
    }

    fn options(now: i64) -> TrainOptions {
        TrainOptions {
            now,
            min_rows: 200,
            params: ForestParams {
                trees: 8,
                max_depth: 5,
                ..ForestParams::default()
            },
            propensity_params: ForestParams {
                trees: 8,
                max_depth: 5,
                ..ForestParams::default()
            },
            ..TrainOptions::default()
        }
    }

    #[test]
    fn exported_rows_are_the_rows_trained_on_and_the_cap_holds() {
        let (_, history, now) = world(300);
        let mut opts = options(now);
        let trained = train(ModelKind::SendTime, None, &history, &opts).unwrap();
        let rows = export_delivery_rows(ModelKind::SendTime, &history, &opts);
        assert_eq!(rows.columns.len(), SEND_TIME_COLUMNS.len());
        assert_eq!(rows.train_y.len(), trained.card.train_rows);
        assert_eq!(rows.eval_y.len(), trained.card.eval_rows);
        assert_eq!(rows.train_x.len(), rows.train_y.len() * rows.columns.len());
        assert_eq!(rows.eval_x.len(), rows.eval_y.len() * rows.columns.len());
        opts.max_train_rows = rows.train_y.len() / 2;
        let capped = export_delivery_rows(ModelKind::SendTime, &history, &opts)
            .train_y
            .len();
        let share = capped as f64 / rows.train_y.len() as f64;
        assert!(
            (0.4..0.6).contains(&share),
            "kept {share} of the rows under a cap of half"
        );
    }

    #[test]
    fn model_kinds_read_and_print_as_snake_case() {
        for kind in ModelKind::ALL {
            assert_eq!(kind.to_string().parse::<ModelKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                Value::String(kind.to_string())
            );
        }
        assert!("sendtime".parse::<ModelKind>().is_err());
    }

    #[test]
    fn cutoffs_leave_the_eval_slice_alone() {
        let day = DAY_MS;
        let cuts = propensity_cutoffs(0, 60 * day, 7, 7);
        assert_eq!(cuts, vec![46 * day, 39 * day, 32 * day, 25 * day, 18 * day]);
        // The newest training label window ends where the held-out slice starts.
        assert_eq!(cuts[0] + 7 * day, 60 * day - 7 * day);
        assert!(propensity_cutoffs(0, 20 * day, 7, 7).is_empty());
    }

    #[test]
    fn trains_all_three_on_a_small_world_and_round_trips_through_json() {
        let (_, history, now) = world(400);
        let opts = options(now);
        let goal = Goal {
            event: ORDER_COMPLETED.into(),
            within_days: 7,
        };
        for kind in ModelKind::ALL {
            let trained = train(kind, Some(&goal), &history, &opts).unwrap();
            let card = &trained.card;
            assert_eq!(trained.model.kind(), kind);
            assert!(card.train_rows >= 200 && card.eval_rows > 0, "{card:?}");
            assert!(card.data_to < now && card.data_from < card.data_to);
            let total: f64 = card.feature_importance.iter().map(|(_, s)| s).sum();
            assert!((total - 1.0).abs() < 1e-9, "{kind}: importance sums to {total}");
            assert!(card.feature_importance.windows(2).all(|w| w[0].1 >= w[1].1));
            assert_eq!(card.reference.columns.len(), PROPENSITY_COLUMNS.len());
            // JSON keeps floats to within an ulp (serde_json's default parser), so compare answers.
            let json = serde_json::to_string(&trained.model).unwrap();
            let back: Model = serde_json::from_str(&json).unwrap();
            assert_eq!(back.kind(), kind);
            assert_eq!(back.columns(), trained.model.columns());
            let card_back: ModelCard = serde_json::from_str(&serde_json::to_string(card).unwrap()).unwrap();
            assert_eq!(card_back.train_rows, card.train_rows);
            assert!((card_back.metrics.auc - card.metrics.auc).abs() < 1e-12);
            // Features computed by serving score like training's: same space, same path.
            for user in history.users.iter().take(20) {
                let events: Vec<&HistoryEvent> =
                    history.events.iter().filter(|e| e.user_id == user.id).collect();
                let f = back.feature_space().features(user, &events, now);
                let p = back.headline(&f);
                assert!((0.0..=1.0).contains(&p));
                assert!((p - trained.model.headline(&f)).abs() < 1e-9);
            }
            // The same rows drift nothing.
            let rows: Vec<UserFeatures> = history
                .users
                .iter()
                .map(|u| {
                    let own: Vec<&HistoryEvent> =
                        history.events.iter().filter(|e| e.user_id == u.id).collect();
                    back.feature_space().features(u, &own, now)
                })
                .collect();
            assert_eq!(drift(card, &back, &rows).len(), PROPENSITY_COLUMNS.len());
        }
        assert!(matches!(
            train(ModelKind::Propensity, None, &history, &opts),
            Err(TrainError::NoGoal)
        ));
    }

    #[test]
    fn a_propensity_model_stored_before_the_additive_part_still_serves_its_forest() {
        // Enough users for 30 positives among the 20% of rows the blend is fitted on (1,500
        // users give 28).
        let (_, history, now) = world(2_500);
        let goal = Goal {
            event: ORDER_COMPLETED.into(),
            within_days: 7,
        };
        let trained = train(ModelKind::Propensity, Some(&goal), &history, &options(now)).unwrap();
        let Model::Propensity(m) = &trained.model else {
            panic!("a propensity model")
        };
        assert!(
            m.additive.is_some(),
            "enough rows for a blend: {:?}",
            (trained.card.train_rows, trained.card.positives)
        );
        let mut json = serde_json::to_value(&trained.model).unwrap();
        json["Propensity"]
            .as_object_mut()
            .unwrap()
            .remove("additive")
            .expect("stored with its additive part");
        let Model::Propensity(old) = serde_json::from_value::<Model>(json).unwrap() else {
            panic!("a propensity model")
        };
        assert!(old.additive.is_none());
        let mut differ = 0;
        for user in history.users.iter().take(50) {
            let events: Vec<&HistoryEvent> = history.events.iter().filter(|e| e.user_id == user.id).collect();
            let f = old.space.features(user, &events, now);
            if is_cold_start(&f) {
                continue;
            }
            let (blended, alone) = (m.score(&f), old.score(&f));
            assert!((alone.probability - old.forest.probability(&f.propensity_row())).abs() < 1e-12);
            assert!(alone.terms.is_empty() && !blended.terms.is_empty());
            assert_eq!(alone.path, blended.path);
            differ += usize::from((alone.probability - blended.probability).abs() > 1e-6);
        }
        assert!(differ > 0, "the additive part changes scores");
    }

    #[test]
    fn too_little_data_is_an_error_not_a_model() {
        let (_, history, now) = world(20);
        let err = train(ModelKind::Channel, None, &history, &options(now)).unwrap_err();
        assert!(
            matches!(err, TrainError::NotEnoughData { needed: 200, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("not enough data"));
    }

    #[test]
    fn promotion_needs_the_baseline_and_the_model_in_service_beaten() {
        let metrics = |ll: f64, auc: f64| Metrics {
            auc,
            log_loss: ll,
            brier: 0.1,
            ece: 0.01,
            calibration: Vec::new(),
            engagement_rate: None,
            lift_quality: 0.3,
        };
        let card = |ll: f64, auc: f64, base_ll: f64| ModelCard {
            kind: ModelKind::Propensity,
            goal: None,
            trained_at: 0,
            data_from: 0,
            data_to: 0,
            train_rows: 1,
            eval_rows: 1,
            positives: 1,
            metrics: metrics(ll, auc),
            baseline: metrics(base_ll, 0.5),
            baseline_name: "base rate".into(),
            feature_importance: Vec::new(),
            reference: DriftReference { columns: Vec::new() },
        };
        let good = card(0.30, 0.75, 0.40);
        assert!(should_promote(&good, None).0);
        let (no, why) = should_promote(&card(0.41, 0.75, 0.40), None);
        assert!(!no && why.contains("base rate"), "{why}");
        // Serving skill 0.35 vs candidate 0.25: keep the one in service.
        let (no, why) = should_promote(&good, Some(&card(0.26, 0.78, 0.40)));
        assert!(!no && why.contains("in service"), "{why}");
        assert!(should_promote(&good, Some(&card(0.35, 0.70, 0.40))).0);
        let mut other = good.clone();
        other.kind = ModelKind::Channel;
        assert!(!should_promote(&good, Some(&other)).0);
    }

    #[test]
    fn population_best_hour_takes_the_first_of_equals() {
        let mut population = Population {
            hour_of_week: vec![1.0 / 168.0; 168],
            open_rate: [0.1, 0.1],
            click_rate: [0.0, 0.0],
        };
        assert_eq!(population_best_hour(&population, &[5, 3, 9]), Some(5));
        population.hour_of_week[9] = 0.1;
        assert_eq!(population_best_hour(&population, &[5, 3, 9]), Some(9));
        assert_eq!(population_best_hour(&population, &[]), None);
    }
}
