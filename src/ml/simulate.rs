//! `nudge simulate`: a synthetic history with a known truth, written through the engine's own
//! ingestion path ([`Engine::ingest_history`]: identify + track, batched, nothing triggered).
//!
//! Each user has traits (plan, country and its time zone, platform, channel consent, `created_at`)
//! and hidden parameters the data is drawn from:
//! - an engagement curve over local time: one or two peaks (bimodal users have a weekday commute
//!   peak and an evening peak) over a small floor; sessions, opens and goals happen at its hours;
//! - a channel affinity, as real users have one: most prefer one channel (push more often on
//!   phones, email more often on paid plans) and open the other far less (0.1–0.4× the preferred
//!   channel's rate); a few (5%) are near-indifferent. A message is opened with probability
//!   `base × (0.2 + 0.8 × curve(send hour))`, so timing matters as well as channel;
//! - a daily conversion rate, the logistic of plan, country, tenure and activity; the truth states
//!   it as the probability of a goal within [`PROPENSITY_WINDOW_DAYS`].
//!
//! Messages go out at uniformly varied local hours (07:00–22:59), so the data is not blind to any
//! hour — or, with [`SimulateOptions::fixed_send_hour`], all at one local hour (09:00–09:14 for
//! 9) except an [`SimulateOptions::explore`] share at a random allowed hour: the history of a
//! sender who always mailed at 09:00. The same seed gives the same history and truth, event ids
//! included (a rerun is a no-op). The returned [`Truth`] can be written as JSON for tests and
//! benchmarks to score models against.
//!
//! [`generate`] builds the world in memory (truth plus the [`History`] the store would hand
//! training); [`simulate`] stores the same world (users through ingestion, track events through
//! the bulk loader).

use std::path::Path;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;
use serde_json::json;

use super::features::{
    EMAIL_CLICKED, EMAIL_OPENED, HOURS_OF_WEEK, MESSAGE_DELIVERED, ORDER_COMPLETED, PUSH_OPENED,
    SESSION_STARTED,
};
use super::models::History;
use crate::{
    engine::Engine,
    events::{EventKind, IncomingEvent},
    store::{HistoryEvent, HistoryUser, StoreError},
};

/// The goal window the truth's `propensity` refers to.
pub const PROPENSITY_WINDOW_DAYS: u32 = 7;

/// Events generated before each bulk write.
const BATCH: usize = 100_000;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateOptions {
    pub users: usize,
    pub days: u32,
    pub seed: u64,
    /// The first simulated instant; the history covers `[start, start + days)`.
    pub start: DateTime<Utc>,
    /// Send every message at this local hour (e.g. 9 for 09:00–09:14) instead of a uniformly
    /// varied hour: the world of a sender who always mailed at 09:00. `None`: varied hours.
    pub fixed_send_hour: Option<u32>,
    /// With `fixed_send_hour`, the share of messages sent at a uniformly random allowed hour
    /// (07:00–22:59) instead: the exploration that lets a model see other hours.
    pub explore: f64,
}

impl SimulateOptions {
    /// Varied send hours, no fixed hour.
    pub fn new(users: usize, days: u32, seed: u64, start: DateTime<Utc>) -> Self {
        SimulateOptions {
            users,
            days,
            seed,
            start,
            fixed_send_hour: None,
            explore: 0.0,
        }
    }
}

/// `nudge simulate` flags, for the CLI to flatten into its subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    #[arg(long, default_value_t = 60)]
    pub days: u32,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// First simulated day (RFC 3339); default: `days` days before now, at midnight UTC.
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// Where to write the hidden truth as JSON.
    #[arg(long)]
    pub truth: Option<std::path::PathBuf>,
    /// Send every past message at this local hour (0–23) instead of varied hours 07–22.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..24))]
    pub fixed_send_hour: Option<u32>,
    /// With `--fixed-send-hour`, the share of messages sent at a random allowed hour instead.
    #[arg(long, default_value_t = 0.05)]
    pub explore: f64,
}

impl SimulateArgs {
    pub fn options(&self, now: DateTime<Utc>) -> SimulateOptions {
        let start = self.start.unwrap_or_else(|| {
            let day = (now - Duration::days(i64::from(self.days))).date_naive();
            day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
        });
        SimulateOptions {
            users: self.users,
            days: self.days,
            seed: self.seed,
            start,
            fixed_send_hour: self.fixed_send_hour,
            explore: if self.fixed_send_hour.is_some() {
                self.explore.clamp(0.0, 1.0)
            } else {
                0.0
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the truth file: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode the truth: {0}")]
    Json(#[from] serde_json::Error),
}

/// A peak of the engagement curve, in local hours of the day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peak {
    pub hour: f64,
    /// Standard deviation in hours.
    pub width: f64,
    pub weight: f64,
    /// A commute peak: Monday to Friday only.
    pub weekdays_only: bool,
}

/// One user's hidden parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserTruth {
    pub user_id: String,
    pub timezone: String,
    pub plan: String,
    pub country: String,
    pub platform: String,
    pub email_consent: bool,
    pub push_consent: bool,
    pub peaks: Vec<Peak>,
    /// Local hours of week (Monday 00:00 = 0) where the engagement curve is within 90% of its top.
    pub peak_hours_of_week: Vec<u16>,
    /// Mean sessions per day.
    pub activity: f64,
    /// Base open rate per channel at a perfect hour (see [`draw_open_rates`]): the preferred
    /// channel's in 0.3–0.7, the other 0.1–0.4× that; near-indifferent users have two rates
    /// within ±15% of a common one.
    pub email_open_rate: f64,
    pub push_open_rate: f64,
    /// The channel with the higher base open rate (consent aside).
    pub best_channel: String,
    pub daily_goal_rate: f64,
    /// P(at least one goal within [`PROPENSITY_WINDOW_DAYS`] days).
    pub propensity: f64,
    /// When the user signed up (may be before the simulated period).
    pub created_at: DateTime<Utc>,
}

impl UserTruth {
    /// The engagement curve at a local hour of week, scaled so its top is 1.
    pub fn engagement(&self, hour_of_week: usize) -> f64 {
        let top = (0..HOURS_OF_WEEK)
            .map(|h| raw_curve(&self.peaks, h))
            .fold(0.0, f64::max);
        raw_curve(&self.peaks, hour_of_week) / top
    }

    /// The probability that a message on `channel` sent at a local hour of week is opened.
    pub fn open_probability(&self, channel: &str, hour_of_week: usize) -> f64 {
        let base = if channel == "push" {
            self.push_open_rate
        } else {
            self.email_open_rate
        };
        base * (0.2 + 0.8 * self.engagement(hour_of_week))
    }
}

/// The unscaled curve: a floor plus Gaussian bumps around each peak (distance on the 24 h circle).
fn raw_curve(peaks: &[Peak], hour_of_week: usize) -> f64 {
    let weekend = hour_of_week / 24 >= 5;
    let hour = (hour_of_week % 24) as f64 + 0.5;
    0.05 + peaks
        .iter()
        .filter(|p| !(weekend && p.weekdays_only))
        .map(|p| {
            let d = (hour - p.hour).abs();
            let d = d.min(24.0 - d);
            p.weight * (-(d * d) / (2.0 * p.width * p.width)).exp()
        })
        .sum::<f64>()
}

/// The hidden truth of a simulated world.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Truth {
    pub seed: u64,
    pub start: DateTime<Utc>,
    pub days: u32,
    /// Events written (identify calls included).
    pub events: usize,
    pub users: Vec<UserTruth>,
}

impl Truth {
    pub fn write_json(&self, path: &Path) -> Result<(), SimulateError> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer(file, self)?;
        Ok(())
    }
}

const COUNTRIES: [(&str, &[&str], f64, f64); 6] = [
    // (country, time zones, share, effect on conversion)
    (
        "US",
        &["America/New_York", "America/Chicago", "America/Los_Angeles"],
        0.35,
        0.3,
    ),
    ("GB", &["Europe/London"], 0.15, 0.2),
    ("DE", &["Europe/Berlin"], 0.15, 0.1),
    ("IN", &["Asia/Kolkata"], 0.15, -0.4),
    ("BR", &["America/Sao_Paulo"], 0.1, -0.2),
    ("JP", &["Asia/Tokyo"], 0.1, 0.0),
];
const PLANS: [(&str, f64, f64, f64, f64); 3] = [
    // (plan, share, effect on conversion, mean order value, shift away from preferring push)
    ("free", 0.6, 0.0, 25.0, 0.0),
    ("basic", 0.3, 0.6, 40.0, 0.1),
    ("pro", 0.1, 1.2, 80.0, 0.2),
];
const PLATFORMS: [(&str, f64, f64); 3] = [
    // (platform, share, share preferring push before the plan's shift)
    ("ios", 0.35, 0.55),
    ("android", 0.4, 0.45),
    ("web", 0.25, 0.15),
];
/// Users whose two channels are about as good as each other: their best channel is a coin flip
/// no history can call, so a perfect score is out of reach by design.
const INDIFFERENT_SHARE: f64 = 0.05;

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T], share: impl Fn(&T) -> f64) -> &'a T {
    let total: f64 = items.iter().map(&share).sum();
    let mut u = rng.r#gen::<f64>() * total;
    for item in items {
        u -= share(item);
        if u < 0.0 {
            return item;
        }
    }
    &items[items.len() - 1]
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm finite.
    let (u, v): (f64, f64) = (1.0 - rng.r#gen::<f64>(), rng.r#gen());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn poisson(rng: &mut StdRng, mean: f64) -> u32 {
    // Knuth's method: fine for the small means of daily counts.
    let limit = (-mean).exp();
    let (mut k, mut p) = (0, rng.r#gen::<f64>());
    while p > limit {
        k += 1;
        p *= rng.r#gen::<f64>();
    }
    k
}

fn logistic(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Base open rates (email, push) at a perfect hour. Real users mostly have a channel they use
/// and one they neglect (many never open push, others never read email): with probability
/// `push_share` push is preferred, else email; the preferred channel's rate is U(0.3, 0.7) (about
/// 10–24% of messages opened at uniformly varied hours) and the other's U(0.1, 0.4)× that. A
/// share [`INDIFFERENT_SHARE`] has no preference: a common rate U(0.2, 0.6) times U(0.85, 1.15)
/// per channel. `scripts/ml_channel_bound.py` mirrors this draw.
fn draw_open_rates(rng: &mut StdRng, push_share: f64) -> (f64, f64) {
    let prefers_push = rng.r#gen::<f64>() < push_share;
    if rng.r#gen::<f64>() < INDIFFERENT_SHARE {
        let common = rng.gen_range(0.2..0.6);
        return (
            common * rng.gen_range(0.85..1.15),
            common * rng.gen_range(0.85..1.15),
        );
    }
    let preferred = rng.gen_range(0.3..0.7);
    let other = preferred * rng.gen_range(0.1..0.4);
    if prefers_push {
        (other, preferred)
    } else {
        (preferred, other)
    }
}

/// Draws one user's hidden parameters.
fn draw_user(rng: &mut StdRng, index: usize, opts: &SimulateOptions) -> UserTruth {
    let (country, zones, _, country_effect) = *pick(rng, &COUNTRIES, |c| c.2);
    let timezone = zones[rng.gen_range(0..zones.len())];
    let (plan, _, plan_effect, _, away_from_push) = *pick(rng, &PLANS, |p| p.1);
    let (platform, _, push_share) = *pick(rng, &PLATFORMS, |p| p.1);
    let jitter = |rng: &mut StdRng, spread: f64| normal(rng) * spread;
    let profile = rng.r#gen::<f64>();
    let peaks = if profile < 0.35 {
        vec![
            Peak {
                hour: 8.0 + jitter(rng, 0.5),
                width: 0.75,
                weight: 1.0,
                weekdays_only: true,
            },
            Peak {
                hour: 20.0 + jitter(rng, 1.0),
                width: 1.0,
                weight: 0.8 + 0.4 * rng.r#gen::<f64>(),
                weekdays_only: false,
            },
        ]
    } else {
        let centre = if profile < 0.6 {
            20.5
        } else if profile < 0.8 {
            12.5
        } else {
            8.5
        };
        vec![Peak {
            hour: centre + jitter(rng, 1.0),
            width: 1.0,
            weight: 1.0,
            weekdays_only: false,
        }]
    };
    let activity = (-0.3 + 0.7 * normal(rng)).exp().min(8.0);
    let mobile = platform != "web";
    let email_consent = rng.r#gen::<f64>() < 0.9;
    let push_consent = mobile && rng.r#gen::<f64>() < 0.6;
    let (email_open_rate, push_open_rate) = draw_open_rates(rng, push_share - away_from_push);
    let signup_days_before = if rng.r#gen::<f64>() < 0.85 {
        rng.gen_range(0.0..730.0)
    } else {
        -rng.gen_range(0.0..f64::from(opts.days.max(1)))
    };
    let created_at = opts.start - Duration::seconds((signup_days_before * 86_400.0) as i64);
    let tenure_years = signup_days_before.max(0.0) / 365.0;
    let z = -5.0 + plan_effect + country_effect + 0.3 * tenure_years.min(3.0) + 0.8 * activity.ln();
    let daily_goal_rate = logistic(z);
    let mut user = UserTruth {
        user_id: format!("sim-{index:06}"),
        timezone: timezone.to_string(),
        plan: plan.to_string(),
        country: country.to_string(),
        platform: platform.to_string(),
        email_consent,
        push_consent,
        peaks,
        peak_hours_of_week: Vec::new(),
        activity,
        email_open_rate,
        push_open_rate,
        best_channel: if email_open_rate >= push_open_rate {
            "email"
        } else {
            "push"
        }
        .to_string(),
        daily_goal_rate,
        propensity: 1.0 - (1.0 - daily_goal_rate).powi(PROPENSITY_WINDOW_DAYS as i32),
        created_at,
    };
    let curve: Vec<f64> = (0..HOURS_OF_WEEK).map(|h| user.engagement(h)).collect();
    user.peak_hours_of_week = (0..HOURS_OF_WEEK as u16)
        .filter(|&h| curve[h as usize] >= 0.9)
        .collect();
    user
}

/// The UTC instant of a local date and fractional hour, `None` in a DST gap.
fn local_instant(tz: Tz, date: NaiveDate, hour: f64) -> Option<DateTime<Utc>> {
    let seconds = (hour * 3600.0) as u32;
    let naive = date.and_hms_opt(seconds / 3600, (seconds / 60) % 60, seconds % 60)?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// A local hour of the day drawn from the user's curve on that weekday, with random minutes.
fn draw_hour(rng: &mut StdRng, curve: &[f64], weekday: usize) -> f64 {
    let day = &curve[weekday * 24..weekday * 24 + 24];
    let hours: Vec<usize> = (0..24).collect();
    *pick(rng, &hours, |&h| day[h]) as f64 + rng.r#gen::<f64>()
}

/// One user's events over the simulated period, in time order, identify first.
fn user_events(user: &UserTruth, opts: &SimulateOptions, rng: &mut StdRng) -> Vec<IncomingEvent> {
    let tz: Tz = user.timezone.parse().unwrap_or(Tz::UTC);
    let end = opts.start + Duration::days(i64::from(opts.days));
    let first = opts.start.max(user.created_at);
    let curve: Vec<f64> = (0..HOURS_OF_WEEK).map(|h| user.engagement(h)).collect();
    let mut traits = json!({
        "plan": user.plan,
        "country": user.country,
        "platform": user.platform,
        "timezone": user.timezone,
        "created_at": user.created_at.to_rfc3339(),
        "email_consent": user.email_consent,
        "push_consent": user.push_consent,
    });
    if user.email_consent {
        traits["email"] = json!(format!("{}@example.test", user.user_id));
    }
    if user.push_consent {
        traits["push_token"] = json!(format!("tok-{}", user.user_id));
    }
    let mut counter = 0usize;
    let mut id = |kind: &str| {
        counter += 1;
        format!("{}-{}-{kind}-{counter}", user.user_id, opts.seed)
    };
    let mut out =
        vec![IncomingEvent::identify(&user.user_id, traits, first).with_message_id(&id("identify"))];
    let track = |out: &mut Vec<IncomingEvent>, id: String, name: &str, props, at: DateTime<Utc>| {
        if at >= first && at < end {
            out.push(IncomingEvent::track(&user.user_id, name, props, at).with_message_id(&id));
        }
    };
    let first_local = opts.start.with_timezone(&tz).date_naive();
    // One local day either side so every UTC instant of the period is covered.
    for d in -1..=i64::from(opts.days) {
        let date = first_local + Duration::days(d);
        let weekday = chrono::Datelike::weekday(&date).num_days_from_monday() as usize;
        for _ in 0..poisson(rng, user.activity) {
            let hour = draw_hour(rng, &curve, weekday);
            if let Some(at) = local_instant(tz, date, hour) {
                track(
                    &mut out,
                    id("session"),
                    SESSION_STARTED,
                    json!({ "platform": user.platform }),
                    at,
                );
            }
        }
        for (channel, consent, daily) in [
            ("email", user.email_consent, 0.35),
            ("push", user.push_consent, 0.25),
        ] {
            if !consent || rng.r#gen::<f64>() >= daily {
                continue;
            }
            // Only the fixed-hour world draws the extra number: the varied world stays as it was.
            let hour = match opts.fixed_send_hour {
                Some(fixed) if rng.r#gen::<f64>() >= opts.explore => {
                    f64::from(fixed) + 0.25 * rng.r#gen::<f64>()
                }
                _ => rng.gen_range(7.0..23.0),
            };
            let Some(sent) = local_instant(tz, date, hour) else {
                continue;
            };
            let how = weekday * 24 + hour as usize;
            let message = id("message");
            let props = json!({ "channel": channel, "message": message });
            track(&mut out, message.clone(), MESSAGE_DELIVERED, props, sent);
            if rng.r#gen::<f64>() < user.open_probability(channel, how) {
                let delay =
                    Duration::seconds((-1200.0 * (1.0 - rng.r#gen::<f64>()).ln()).min(10_800.0) as i64);
                let opened = sent + delay;
                let name = if channel == "push" {
                    PUSH_OPENED
                } else {
                    EMAIL_OPENED
                };
                track(&mut out, id("open"), name, json!({ "message": message }), opened);
                if channel == "email" && rng.r#gen::<f64>() < 0.25 {
                    let clicked = opened + Duration::seconds(rng.gen_range(5..300));
                    track(
                        &mut out,
                        id("click"),
                        EMAIL_CLICKED,
                        json!({ "message": message }),
                        clicked,
                    );
                }
            }
        }
        if rng.r#gen::<f64>() < user.daily_goal_rate {
            let hour = draw_hour(rng, &curve, weekday);
            let mean = PLANS.iter().find(|p| p.0 == user.plan).map_or(30.0, |p| p.3);
            let revenue = (mean * (0.5 + rng.r#gen::<f64>()) * 100.0).round() / 100.0;
            if let Some(at) = local_instant(tz, date, hour) {
                track(
                    &mut out,
                    id("order"),
                    ORDER_COMPLETED,
                    json!({ "revenue": revenue }),
                    at,
                );
            }
        }
    }
    out[1..].sort_by_key(|e| e.timestamp);
    out
}

/// One user of the world: hidden parameters and events (identify first, then in time order).
fn world_user(opts: &SimulateOptions, index: usize) -> (UserTruth, Vec<IncomingEvent>) {
    // One generator per user: a user's history does not depend on how many came before.
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
    let user = draw_user(&mut rng, index, opts);
    let events = user_events(&user, opts, &mut rng);
    (user, events)
}

fn empty_truth(opts: &SimulateOptions) -> Truth {
    Truth {
        seed: opts.seed,
        start: opts.start,
        days: opts.days,
        events: 0,
        users: Vec::with_capacity(opts.users),
    }
}

/// The world [`simulate`] stores, in memory: its truth and the history the store would hand
/// training (`Store::history_users` / `history_events` after `simulate`: users with their merged
/// identify traits and time zone, track events by user then time). Pure and deterministic.
pub fn generate(opts: &SimulateOptions) -> (Truth, History) {
    let mut truth = empty_truth(opts);
    let mut history = History::default();
    for index in 0..opts.users {
        let (user, events) = world_user(opts, index);
        truth.events += events.len();
        for e in events {
            match e.kind {
                EventKind::Identify => history.users.push(HistoryUser {
                    id: e.user_id,
                    timezone: e
                        .traits
                        .get("timezone")
                        .and_then(|v| v.as_str())
                        .map(str::to_string),
                    traits: e.traits,
                }),
                _ => history.events.push(HistoryEvent {
                    user_id: e.user_id,
                    name: e.name.unwrap_or_default(),
                    properties: e.properties,
                    ts: e.timestamp.timestamp_millis(),
                }),
            }
        }
        truth.users.push(user);
    }
    (truth, history)
}

/// Writes a simulated history through `engine` and returns its hidden truth: the users through
/// ingestion (traits merge as for any identify call), their track events in bulk
/// ([`Store::bulk_ingest_history`](crate::store::Store::bulk_ingest_history): the same rows,
/// large multi-row transactions, nothing triggered). Idempotent: a rerun stores nothing new.
pub async fn simulate(engine: &Engine, opts: &SimulateOptions) -> Result<Truth, SimulateError> {
    let mut truth = empty_truth(opts);
    let mut batch = Vec::with_capacity(BATCH * 2);
    for index in 0..opts.users {
        let (user, events) = world_user(opts, index);
        batch.extend(events);
        truth.users.push(user);
        if batch.len() >= BATCH {
            truth.events += batch.len();
            store(engine, &batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        truth.events += batch.len();
        store(engine, &batch).await?;
    }
    Ok(truth)
}

async fn store(engine: &Engine, events: &[IncomingEvent]) -> Result<(), SimulateError> {
    let outcome = engine.store.bulk_ingest_history(events).await?;
    metrics::counter!("nudge_events_ingested_total").increment(outcome.stored as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(users: usize, days: u32) -> SimulateOptions {
        SimulateOptions::new(users, days, 7, "2026-03-02T00:00:00Z".parse().unwrap())
    }

    #[test]
    fn the_same_seed_gives_the_same_world() {
        let o = opts(5, 10);
        let draw = |i| {
            let mut rng = StdRng::seed_from_u64(i);
            let user = draw_user(&mut rng, 0, &o);
            let events = user_events(&user, &o, &mut rng);
            (user, events)
        };
        let (a, ea) = draw(3);
        let (b, eb) = draw(3);
        assert_eq!(a, b);
        assert_eq!(ea, eb);
        let (c, _) = draw(4);
        assert_ne!(a, c);
    }

    #[test]
    fn events_stay_inside_the_period_and_follow_the_curve() {
        let o = opts(1, 28);
        let end = o.start + Duration::days(28);
        let mut near_peak = 0usize;
        let mut sessions = 0usize;
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let user = draw_user(&mut rng, 0, &o);
            assert!(!user.peak_hours_of_week.is_empty());
            assert!((0.0..1.0).contains(&user.propensity));
            let tz: Tz = user.timezone.parse().unwrap();
            let events = user_events(&user, &o, &mut rng);
            assert_eq!(events[0].kind, crate::events::EventKind::Identify);
            assert!(
                events
                    .windows(2)
                    .skip(1)
                    .all(|w| w[0].timestamp <= w[1].timestamp)
            );
            for e in &events[1..] {
                assert!(e.timestamp >= o.start && e.timestamp < end, "{:?}", e.timestamp);
                if e.name.as_deref() == Some(SESSION_STARTED) {
                    sessions += 1;
                    let how = super::super::features::hour_of_week(e.timestamp.timestamp_millis(), tz);
                    near_peak += usize::from(user.engagement(how) > 0.5);
                }
            }
        }
        // Sessions mostly land where the curve is high.
        assert!(near_peak * 2 > sessions, "{near_peak} of {sessions}");
    }

    #[test]
    fn the_engagement_curve_peaks_at_one_and_commute_peaks_skip_weekends() {
        let user = UserTruth {
            peaks: vec![
                Peak {
                    hour: 8.5,
                    width: 0.75,
                    weight: 1.0,
                    weekdays_only: true,
                },
                Peak {
                    hour: 20.5,
                    width: 1.0,
                    weight: 0.5,
                    weekdays_only: false,
                },
            ],
            ..draw_user(&mut StdRng::seed_from_u64(1), 0, &opts(1, 1))
        };
        assert!((user.engagement(8) - 1.0).abs() < 1e-9, "Monday 08:00");
        assert!(user.engagement(5 * 24 + 8) < 0.2, "Saturday 08:00");
        assert!(user.engagement(5 * 24 + 20) > 0.4, "Saturday 20:00");
        assert!(user.open_probability("email", 8) > user.open_probability("email", 3));
    }

    #[test]
    fn generate_is_the_stored_world_and_the_fixed_hour_world_sends_at_nine() {
        let o = opts(40, 21);
        let (truth, history) = generate(&o);
        assert_eq!(truth.users.len(), 40);
        assert_eq!(history.users.len(), 40);
        // Identify calls become users, everything else a track event.
        assert_eq!(history.events.len() + 40, truth.events);
        assert_eq!(generate(&o).1.events, history.events);
        let local_hour = |h: &History, e: &HistoryEvent| {
            let user = h.users.iter().find(|u| u.id == e.user_id).unwrap();
            let tz: Tz = user.timezone.as_deref().unwrap().parse().unwrap();
            super::super::features::hour_of_week(e.ts, tz) % 24
        };
        let sent_at = |h: &History| -> Vec<usize> {
            h.events
                .iter()
                .filter(|e| e.name == MESSAGE_DELIVERED)
                .map(|e| local_hour(h, e))
                .collect()
        };
        let varied = sent_at(&history);
        assert!(varied.iter().all(|h| (7..23).contains(h)));
        assert!(varied.iter().filter(|&&h| h == 9).count() * 4 < varied.len());
        let fixed = SimulateOptions {
            fixed_send_hour: Some(9),
            explore: 0.1,
            ..o.clone()
        };
        let (fixed_truth, fixed_history) = generate(&fixed);
        // The same people; only when their messages went out (and so what they did) differs.
        assert_eq!(fixed_truth.users, truth.users);
        let at = sent_at(&fixed_history);
        let nine = at.iter().filter(|&&h| h == 9).count() as f64 / at.len() as f64;
        assert!(nine > 0.85 && nine < 0.97, "{nine}");
    }

    #[test]
    fn most_users_clearly_prefer_one_channel() {
        let o = opts(1, 1);
        let users: Vec<UserTruth> = (0..4_000)
            .map(|i| draw_user(&mut StdRng::seed_from_u64(i), 0, &o))
            .collect();
        let ratio =
            |u: &UserTruth| u.email_open_rate.min(u.push_open_rate) / u.email_open_rate.max(u.push_open_rate);
        let share = |keep: &dyn Fn(&UserTruth) -> bool, among: &dyn Fn(&UserTruth) -> bool| {
            let group: Vec<_> = users.iter().filter(|u| among(u)).collect();
            group.iter().filter(|u| keep(u)).count() as f64 / group.len() as f64
        };
        // About 95% prefer a channel at 0.1–0.4× the other; the rest are near-indifferent.
        let clear = share(&|u| ratio(u) <= 0.4, &|_| true);
        assert!((0.93..0.97).contains(&clear), "{clear}");
        assert!(users.iter().all(|u| ratio(u) >= 0.1 * 0.85 / 1.15 - 1e-9));
        assert!(
            users
                .iter()
                .all(|u| u.email_open_rate.max(u.push_open_rate) < 0.7)
        );
        // Phones lean to push, the web and paid plans to email.
        let push_best = |u: &UserTruth| u.best_channel == "push";
        let ios = share(&push_best, &|u| u.platform == "ios");
        let web = share(&push_best, &|u| u.platform == "web");
        let pro = share(&push_best, &|u| u.platform == "ios" && u.plan == "pro");
        assert!(ios > 0.45 && web < 0.25 && pro < ios, "{ios} {web} {pro}");
    }

    #[test]
    fn local_instants_skip_daylight_saving_gaps() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap();
        assert_eq!(local_instant(berlin, day, 2.5), None);
        assert_eq!(
            local_instant(berlin, day, 14.0),
            Some("2026-03-29T12:00:00Z".parse().unwrap())
        );
    }
}
