//! Point-in-time features: what was known about each user strictly before a cut-off time `T`.
//!
//! Takes stored track events and users (from [`Store::history_events`] and
//! [`Store::history_users`], or built by hand in tests) and hands on one [`UserFeatures`] per user
//! plus the population's hour-of-week engagement histogram. Every function drops events with
//! `ts >= T` itself, so a training row can never see its own future, whatever the caller loads.
//!
//! Hours of week are in the user's local time (their `timezone`, UTC when unknown or invalid):
//! Monday 00:00–00:59 is 0, Sunday 23:00–23:59 is 167.
//!
//! Known limit: traits come from the `users` table, which holds current values only; a trait that
//! changed after `T` (a plan upgrade) is seen with its new value. Simulated traits never change.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Timelike};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    clock::from_millis,
    store::{HistoryEvent, HistoryUser, Store, StoreError},
};

pub const SESSION_STARTED: &str = "session_started";
/// A message reached the user; `properties.channel` is `email` or `push`.
pub const MESSAGE_DELIVERED: &str = "message_delivered";
pub const EMAIL_OPENED: &str = "email_opened";
pub const EMAIL_CLICKED: &str = "email_clicked";
pub const PUSH_OPENED: &str = "push_opened";
/// The goal event the simulator writes and the default propensity goal.
pub const ORDER_COMPLETED: &str = "order_completed";

pub const HOURS_OF_WEEK: usize = 168;
const DAY_MS: f64 = 86_400_000.0;

/// Events that show the user paying attention, counted in the hour-of-week histogram.
pub fn is_engagement(name: &str) -> bool {
    matches!(name, SESSION_STARTED | EMAIL_OPENED | EMAIL_CLICKED | PUSH_OPENED)
}

/// The channels features count, in the order of [`UserFeatures::channels`].
pub const CHANNELS: [&str; 2] = ["email", "push"];

/// Deliveries, opens and clicks on one channel, with rates smoothed toward the population's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelStats {
    pub delivered: u32,
    pub opened: u32,
    pub clicked: u32,
    pub open_rate: f64,
    pub click_rate: f64,
}

/// Everything known about one user before the cut-off.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserFeatures {
    pub user_id: String,
    /// Days since the last engagement (or `None` for no engagement yet).
    pub recency_days: Option<f64>,
    pub sessions_7d: u32,
    pub sessions_30d: u32,
    /// All sessions before the cut-off.
    pub sessions_total: u32,
    pub engagements_total: u32,
    /// Days since the user's first event or `created_at` trait, whichever is earlier.
    pub tenure_days: f64,
    /// Days since the user's first event (0 without one): how long the counts had to accumulate,
    /// so `sessions_total / observed_days` estimates the user's daily activity from all of it.
    pub observed_days: f64,
    pub goals_30d: u32,
    pub goals_total: u32,
    /// Indexed like [`CHANNELS`].
    pub channels: [ChannelStats; 2],
    /// Share of the user's engagement per local hour of week, smoothed toward the population:
    /// sums to 1; a user with no engagement gets the population's histogram.
    pub hour_of_week: Vec<f64>,
    /// Engagements behind `hour_of_week` (0 = pure population prior).
    pub hour_evidence: u32,
    /// `plan`, `country`, `platform` as codes from an [`Encoder`] (0 = unknown).
    pub traits: [u32; 3],
}

/// Turns trait strings into small integer codes. Code 0 is "unknown or unseen"; codes are
/// assigned in sorted order of the values seen at fit time, so they do not depend on row order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Encoder {
    /// For each of [`Encoder::TRAITS`], the known values; value `i` has code `i + 1`.
    pub values: [Vec<String>; 3],
}

impl Encoder {
    pub const TRAITS: [&'static str; 3] = ["plan", "country", "platform"];

    pub fn fit<'a>(traits: impl IntoIterator<Item = &'a Map<String, Value>>) -> Self {
        let mut seen: [std::collections::BTreeSet<String>; 3] = Default::default();
        for t in traits {
            for (i, key) in Self::TRAITS.iter().enumerate() {
                if let Some(v) = t.get(*key).and_then(Value::as_str) {
                    seen[i].insert(v.to_string());
                }
            }
        }
        Encoder {
            values: seen.map(|s| s.into_iter().collect()),
        }
    }

    pub fn encode(&self, traits: &Map<String, Value>) -> [u32; 3] {
        std::array::from_fn(|i| {
            traits
                .get(Self::TRAITS[i])
                .and_then(Value::as_str)
                .and_then(|v| self.values[i].binary_search_by(|k| k.as_str().cmp(v)).ok())
                .map_or(0, |at| at as u32 + 1)
        })
    }

    /// One-hot columns for all three traits (unknown included), for models that need them.
    pub fn one_hot(&self, codes: [u32; 3]) -> Vec<f64> {
        let mut out = Vec::new();
        for (i, code) in codes.iter().enumerate() {
            let mut block = vec![0.0; self.values[i].len() + 1];
            block[*code as usize] = 1.0;
            out.extend(block);
        }
        out
    }
}

/// The local hour of week of a Unix-ms time in `tz`.
pub fn hour_of_week(ts: i64, tz: Tz) -> usize {
    let local = from_millis(ts).with_timezone(&tz);
    local.weekday().num_days_from_monday() as usize * 24 + local.hour() as usize
}

/// Parses a stored time zone, UTC when absent or unknown.
pub fn parse_tz(name: Option<&str>) -> Tz {
    name.and_then(|n| n.parse().ok()).unwrap_or(Tz::UTC)
}

/// The population's engagement histogram before `cutoff`: shares summing to 1 (uniform when
/// nobody engaged). `events` may hold several users; `tz_of` gives each user's zone.
pub fn population_hours<'a>(
    events: impl IntoIterator<Item = &'a HistoryEvent>,
    tz_of: impl Fn(&str) -> Tz,
    cutoff: i64,
) -> Vec<f64> {
    let mut counts = vec![0.0; HOURS_OF_WEEK];
    for e in events {
        if e.ts < cutoff && is_engagement(&e.name) {
            counts[hour_of_week(e.ts, tz_of(&e.user_id))] += 1.0;
        }
    }
    normalise(counts)
}

fn normalise(mut counts: Vec<f64>) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 {
        return vec![1.0 / HOURS_OF_WEEK as f64; HOURS_OF_WEEK];
    }
    counts.iter_mut().for_each(|c| *c /= total);
    counts
}

/// Population-level numbers that individual features shrink toward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Population {
    pub hour_of_week: Vec<f64>,
    /// Open and click rates per channel (indexed like [`CHANNELS`]).
    pub open_rate: [f64; 2],
    pub click_rate: [f64; 2],
}

/// How strongly features lean on the population.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Smoothing {
    /// Pseudo-engagements of the population histogram added to each user's.
    pub hours: f64,
    /// Pseudo-deliveries at the population's rates added to each user's channel counts.
    pub rates: f64,
}

impl Default for Smoothing {
    fn default() -> Self {
        Smoothing {
            hours: 20.0,
            rates: 5.0,
        }
    }
}

impl Population {
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a HistoryEvent> + Clone,
        tz_of: impl Fn(&str) -> Tz,
        cutoff: i64,
    ) -> Self {
        let mut delivered = [0.0; 2];
        let mut opened = [0.0; 2];
        let mut clicked = [0.0; 2];
        for e in events.clone() {
            if e.ts >= cutoff {
                continue;
            }
            match e.name.as_str() {
                MESSAGE_DELIVERED => {
                    if let Some(c) = channel_of(e) {
                        delivered[c] += 1.0;
                    }
                }
                EMAIL_OPENED => opened[0] += 1.0,
                PUSH_OPENED => opened[1] += 1.0,
                EMAIL_CLICKED => clicked[0] += 1.0,
                _ => {}
            }
        }
        let rate = |k: f64, n: f64| if n > 0.0 { (k / n).min(1.0) } else { 0.0 };
        Population {
            hour_of_week: population_hours(events, tz_of, cutoff),
            open_rate: [rate(opened[0], delivered[0]), rate(opened[1], delivered[1])],
            click_rate: [rate(clicked[0], delivered[0]), rate(clicked[1], delivered[1])],
        }
    }
}

/// The channel index (in [`CHANNELS`]) of a delivery's `channel` property.
pub fn channel_of(e: &HistoryEvent) -> Option<usize> {
    let c = e.properties.get("channel").and_then(Value::as_str)?;
    CHANNELS.iter().position(|k| *k == c)
}

/// The `created_at` trait (RFC 3339 or Unix ms), Segment's sign-up time.
pub fn created_at_of(traits: &Map<String, Value>) -> Option<i64> {
    match traits.get("created_at")? {
        Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis()),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// One user's features as of `cutoff` from that user's events (any order; later ones ignored).
pub fn user_features(
    user: &HistoryUser,
    events: &[&HistoryEvent],
    cutoff: i64,
    goal: &str,
    population: &Population,
    encoder: &Encoder,
    smoothing: Smoothing,
) -> UserFeatures {
    let mut acc = FeatureAccumulator::new(user, goal, encoder);
    for e in events.iter().filter(|e| e.ts < cutoff) {
        acc.push(e);
    }
    acc.features(cutoff, population, smoothing)
}

/// Running counts over one user's events, read out as [`UserFeatures`] at any cut-off after the
/// last event pushed. Training walks a user's events once in time order and reads features
/// just before each delivery; serving pushes everything before now and reads once: both go
/// through [`FeatureAccumulator::features`], so they cannot disagree.
#[derive(Debug, Clone)]
pub struct FeatureAccumulator<'a> {
    user_id: &'a str,
    tz: Tz,
    goal: &'a str,
    traits: [u32; 3],
    created_at: Option<i64>,
    first_event: Option<i64>,
    last_engagement: Option<i64>,
    engagements_total: u32,
    hours: Vec<f64>,
    sessions: Vec<i64>,
    goals: Vec<i64>,
    delivered: [u32; 2],
    opened: [u32; 2],
    clicked: [u32; 2],
}

impl<'a> FeatureAccumulator<'a> {
    pub fn new(user: &'a HistoryUser, goal: &'a str, encoder: &Encoder) -> Self {
        FeatureAccumulator {
            user_id: &user.id,
            tz: parse_tz(user.timezone.as_deref()),
            goal,
            traits: encoder.encode(&user.traits),
            created_at: created_at_of(&user.traits),
            first_event: None,
            last_engagement: None,
            engagements_total: 0,
            hours: vec![0.0; HOURS_OF_WEEK],
            sessions: Vec::new(),
            goals: Vec::new(),
            delivered: [0; 2],
            opened: [0; 2],
            clicked: [0; 2],
        }
    }

    /// The user's time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// Counts one event; it must be before every cut-off later read with [`Self::features`].
    pub fn push(&mut self, e: &HistoryEvent) {
        self.first_event = Some(self.first_event.map_or(e.ts, |f| f.min(e.ts)));
        if is_engagement(&e.name) {
            self.engagements_total += 1;
            self.hours[hour_of_week(e.ts, self.tz)] += 1.0;
            self.last_engagement = Some(self.last_engagement.map_or(e.ts, |l| l.max(e.ts)));
        }
        match e.name.as_str() {
            SESSION_STARTED => self.sessions.push(e.ts),
            MESSAGE_DELIVERED => {
                if let Some(c) = channel_of(e) {
                    self.delivered[c] += 1;
                }
            }
            EMAIL_OPENED => self.opened[0] += 1,
            PUSH_OPENED => self.opened[1] += 1,
            EMAIL_CLICKED => self.clicked[0] += 1,
            _ => {}
        }
        if e.name == self.goal {
            self.goals.push(e.ts);
        }
    }

    /// The features as of `cutoff` (after every event pushed).
    pub fn features(&self, cutoff: i64, population: &Population, smoothing: Smoothing) -> UserFeatures {
        let days_ago = |ts: i64| (cutoff - ts) as f64 / DAY_MS;
        let within = |list: &[i64], days: f64| list.iter().filter(|&&ts| days_ago(ts) <= days).count() as u32;
        let first = match (self.created_at.filter(|&t| t < cutoff), self.first_event) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let channels = std::array::from_fn(|c| {
            let n = f64::from(self.delivered[c]) + smoothing.rates;
            ChannelStats {
                delivered: self.delivered[c],
                opened: self.opened[c],
                clicked: self.clicked[c],
                open_rate: (f64::from(self.opened[c]) + smoothing.rates * population.open_rate[c]) / n,
                click_rate: (f64::from(self.clicked[c]) + smoothing.rates * population.click_rate[c]) / n,
            }
        });
        let n = f64::from(self.engagements_total);
        UserFeatures {
            user_id: self.user_id.to_string(),
            recency_days: self.last_engagement.map(days_ago),
            sessions_7d: within(&self.sessions, 7.0),
            sessions_30d: within(&self.sessions, 30.0),
            sessions_total: self.sessions.len() as u32,
            engagements_total: self.engagements_total,
            tenure_days: first.map_or(0.0, days_ago),
            observed_days: self.first_event.map_or(0.0, days_ago),
            goals_30d: within(&self.goals, 30.0),
            goals_total: self.goals.len() as u32,
            channels,
            hour_of_week: self
                .hours
                .iter()
                .zip(&population.hour_of_week)
                .map(|(k, p)| (k + smoothing.hours * p) / (n + smoothing.hours))
                .collect(),
            hour_evidence: self.engagements_total,
            traits: self.traits,
        }
    }
}

/// Features of every user in `users` as of `cutoff`, with the population they were smoothed
/// toward. `events` may be in any order and may reach past `cutoff`.
pub fn features_at(
    users: &[HistoryUser],
    events: &[HistoryEvent],
    cutoff: i64,
    goal: &str,
    encoder: &Encoder,
    smoothing: Smoothing,
) -> (Population, Vec<UserFeatures>) {
    let zones: HashMap<&str, Tz> = users
        .iter()
        .map(|u| (u.id.as_str(), parse_tz(u.timezone.as_deref())))
        .collect();
    let tz_of = |id: &str| zones.get(id).copied().unwrap_or(Tz::UTC);
    let population = Population::from_events(events, tz_of, cutoff);
    let mut by_user: BTreeMap<&str, Vec<&HistoryEvent>> = BTreeMap::new();
    for e in events {
        by_user.entry(&e.user_id).or_default().push(e);
    }
    let features = users
        .iter()
        .map(|u| {
            let own = by_user.get(u.id.as_str()).map_or(&[][..], Vec::as_slice);
            user_features(u, own, cutoff, goal, &population, encoder, smoothing)
        })
        .collect();
    (population, features)
}

/// Loads users and events before `cutoff` from the store and computes their features, fitting the
/// trait encoder on the users' traits.
pub async fn load_features(
    store: &Store,
    cutoff: i64,
    goal: &str,
    smoothing: Smoothing,
) -> Result<(Encoder, Population, Vec<UserFeatures>), StoreError> {
    let users = store.history_users().await?;
    let events = store.history_events(cutoff).await?;
    let encoder = Encoder::fit(users.iter().map(|u| &u.traits));
    let (population, features) = features_at(&users, &events, cutoff, goal, &encoder, smoothing);
    Ok((encoder, population, features))
}

/// Names of the columns of [`UserFeatures::propensity_row`]. New columns go at the end: stored
/// models and drift references index the columns by position.
pub const PROPENSITY_COLUMNS: [&str; 18] = [
    "recency_days",
    "sessions_7d",
    "sessions_30d",
    "engagements_total",
    "tenure_days",
    "goals_30d",
    "goals_total",
    "email_delivered",
    "email_open_rate",
    "email_click_rate",
    "push_delivered",
    "push_open_rate",
    "plan",
    "country",
    "platform",
    "observed_days",
    "sessions_per_day",
    "goals_per_day",
];

impl UserFeatures {
    /// The numeric row propensity models train on (trait codes as ordinal numbers: trees split
    /// them fine when few values exist). No engagement yet reads as a recency of 365 days.
    /// Per-day rates divide by at least one day, so a user first seen an hour ago is not read
    /// as hyperactive.
    pub fn propensity_row(&self) -> Vec<f64> {
        let [email, push] = &self.channels;
        let days = self.observed_days.max(1.0);
        vec![
            self.recency_days.unwrap_or(365.0),
            f64::from(self.sessions_7d),
            f64::from(self.sessions_30d),
            f64::from(self.engagements_total),
            self.tenure_days,
            f64::from(self.goals_30d),
            f64::from(self.goals_total),
            f64::from(email.delivered),
            email.open_rate,
            email.click_rate,
            f64::from(push.delivered),
            push.open_rate,
            f64::from(self.traits[0]),
            f64::from(self.traits[1]),
            f64::from(self.traits[2]),
            self.observed_days,
            f64::from(self.sessions_total) / days,
            f64::from(self.goals_total) / days,
        ]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::clock::to_millis;

    fn ms(s: &str) -> i64 {
        to_millis(s.parse().unwrap())
    }

    fn event(user: &str, name: &str, at: &str, props: Value) -> HistoryEvent {
        HistoryEvent {
            user_id: user.into(),
            name: name.into(),
            properties: props.as_object().cloned().unwrap_or_default(),
            ts: ms(at),
        }
    }

    fn user(id: &str, tz: Option<&str>, traits: Value) -> HistoryUser {
        HistoryUser {
            id: id.into(),
            traits: traits.as_object().cloned().unwrap(),
            timezone: tz.map(str::to_string),
        }
    }

    fn history() -> (Vec<HistoryUser>, Vec<HistoryEvent>) {
        let users = vec![
            user(
                "a",
                Some("Europe/Berlin"),
                json!({"plan": "pro", "country": "DE", "platform": "ios"}),
            ),
            user(
                "b",
                Some("America/New_York"),
                json!({"plan": "free", "country": "US"}),
            ),
            user(
                "cold",
                None,
                json!({"plan": "free", "created_at": "2026-03-01T00:00:00Z"}),
            ),
        ];
        let events = vec![
            // 2026-03-02 is a Monday; 07:00Z is 08:00 in Berlin → hour of week 8.
            event("a", SESSION_STARTED, "2026-03-02T07:00:00Z", json!({})),
            event(
                "a",
                MESSAGE_DELIVERED,
                "2026-03-02T07:05:00Z",
                json!({"channel": "email"}),
            ),
            event("a", EMAIL_OPENED, "2026-03-02T07:10:00Z", json!({})),
            event("a", EMAIL_CLICKED, "2026-03-02T07:11:00Z", json!({})),
            event(
                "a",
                MESSAGE_DELIVERED,
                "2026-03-03T18:00:00Z",
                json!({"channel": "push"}),
            ),
            event(
                "a",
                ORDER_COMPLETED,
                "2026-03-04T12:00:00Z",
                json!({"revenue": 30}),
            ),
            // 2026-03-02 23:30Z is Monday 18:30 in New York → hour of week 18.
            event("b", SESSION_STARTED, "2026-03-02T23:30:00Z", json!({})),
            event("b", PUSH_OPENED, "2026-03-05T23:30:00Z", json!({})),
        ];
        (users, events)
    }

    #[test]
    fn counts_rates_recency_and_local_hours() {
        let (users, events) = history();
        let encoder = Encoder::fit(users.iter().map(|u| &u.traits));
        let cutoff = ms("2026-03-10T00:00:00Z");
        let (pop, f) = features_at(
            &users,
            &events,
            cutoff,
            ORDER_COMPLETED,
            &encoder,
            Smoothing::default(),
        );
        let a = &f[0];
        assert_eq!((a.sessions_7d, a.sessions_30d, a.engagements_total), (0, 1, 3));
        assert_eq!(a.sessions_total, 1);
        // First event 2026-03-02T07:00Z, 7 days 17 h before the cut-off.
        assert!((a.observed_days - (cutoff - ms("2026-03-02T07:00:00Z")) as f64 / DAY_MS).abs() < 1e-9);
        let row = a.propensity_row();
        assert!(
            (row[16] - 1.0 / a.observed_days).abs() < 1e-12,
            "sessions per day"
        );
        assert!((row[17] - 1.0 / a.observed_days).abs() < 1e-12, "goals per day");
        assert_eq!((a.goals_total, a.goals_30d), (1, 1));
        assert_eq!(a.channels[0].delivered, 1);
        assert_eq!((a.channels[0].opened, a.channels[0].clicked), (1, 1));
        assert_eq!(a.channels[1].delivered, 1);
        assert!(
            (a.recency_days.unwrap() - (cutoff - ms("2026-03-02T07:11:00Z")) as f64 / DAY_MS).abs() < 1e-9
        );
        assert!((a.tenure_days - (cutoff - ms("2026-03-02T07:00:00Z")) as f64 / DAY_MS).abs() < 1e-9);
        // Three engagements at Berlin's Monday 08:00, shrunk toward the population.
        let peak = (0..HOURS_OF_WEEK).max_by(|&x, &y| a.hour_of_week[x].total_cmp(&a.hour_of_week[y]));
        assert_eq!(peak, Some(8));
        assert!((a.hour_of_week.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(f[1].hour_of_week[18] > f[1].hour_of_week[0]);
        // Population: email opened 1 of 1 delivered, push 1 opened of 1 delivered.
        assert_eq!(pop.open_rate, [1.0, 1.0]);
        assert_eq!(pop.hour_of_week.iter().filter(|&&s| s > 0.0).count(), 3);
        // Traits: sorted codes, 0 for missing.
        assert_eq!(encoder.values[0], vec!["free".to_string(), "pro".to_string()]);
        assert_eq!(a.traits, [2, 1, 1]);
        assert_eq!(f[1].traits, [1, 2, 0]);
        assert_eq!(encoder.one_hot(a.traits).len(), 3 + 3 + 2);
        assert_eq!(a.propensity_row().len(), PROPENSITY_COLUMNS.len());
    }

    #[test]
    fn a_cold_start_user_gets_the_population() {
        let (users, events) = history();
        let encoder = Encoder::fit(users.iter().map(|u| &u.traits));
        let cutoff = ms("2026-03-10T00:00:00Z");
        let (pop, f) = features_at(
            &users,
            &events,
            cutoff,
            ORDER_COMPLETED,
            &encoder,
            Smoothing::default(),
        );
        let cold = &f[2];
        assert_eq!(cold.hour_evidence, 0);
        assert_eq!(cold.hour_of_week, pop.hour_of_week);
        assert_eq!(cold.recency_days, None);
        assert_eq!(cold.channels[0].open_rate, pop.open_rate[0]);
        // Tenure from the created_at trait.
        assert!((cold.tenure_days - 9.0).abs() < 1e-9);
    }

    #[test]
    fn nothing_at_or_after_the_cutoff_changes_a_feature() {
        let (users, events) = history();
        let encoder = Encoder::fit(users.iter().map(|u| &u.traits));
        let cutoff = ms("2026-03-04T12:00:00Z");
        let (pop, before) = features_at(
            &users,
            &events,
            cutoff,
            ORDER_COMPLETED,
            &encoder,
            Smoothing::default(),
        );
        let mut leaky = events.clone();
        // At the cut-off exactly, and after it, for every user and every kind of event.
        for (i, u) in ["a", "b", "cold"].iter().enumerate() {
            for name in [
                SESSION_STARTED,
                EMAIL_OPENED,
                EMAIL_CLICKED,
                PUSH_OPENED,
                ORDER_COMPLETED,
            ] {
                for ts in [cutoff, cutoff + 1, cutoff + 86_400_000 * (i as i64 + 1)] {
                    leaky.push(HistoryEvent {
                        user_id: u.to_string(),
                        name: name.into(),
                        properties: Map::new(),
                        ts,
                    });
                }
            }
            leaky.push(event(
                u,
                MESSAGE_DELIVERED,
                "2026-03-20T00:00:00Z",
                json!({"channel": "push"}),
            ));
        }
        let (pop2, after) = features_at(
            &users,
            &leaky,
            cutoff,
            ORDER_COMPLETED,
            &encoder,
            Smoothing::default(),
        );
        assert_eq!(pop, pop2);
        assert_eq!(before, after);
        // The order_completed exactly at the cut-off is not a past goal.
        assert_eq!(before[0].goals_total, 0);
    }

    #[test]
    fn hour_of_week_follows_daylight_saving() {
        // 2026-03-29 is the EU switch to summer time (Sunday): 12:00Z is 14:00 in Berlin.
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(hour_of_week(ms("2026-03-29T12:00:00Z"), berlin), 6 * 24 + 14);
        assert_eq!(hour_of_week(ms("2026-03-28T12:00:00Z"), berlin), 5 * 24 + 13);
        assert_eq!(parse_tz(Some("Not/AZone")), Tz::UTC);
    }
}
