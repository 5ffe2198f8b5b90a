//! The compiled rule set: what the engine, delivery and reports read.
//!
//! Everything here is already validated: durations parsed, CEL compiled, templates parsed, cron
//! checked. Nothing in this module can fail at send time because of a rule file.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use chrono::{Duration, NaiveTime};
use chrono_tz::Tz;

/// One `rules/` folder, compiled. Swapped as a whole on reload.
#[derive(Debug)]
pub struct RuleSet {
    pub dir: PathBuf,
    pub global: Global,
    /// By campaign id.
    pub campaigns: BTreeMap<String, Arc<Campaign>>,
    /// Every campaign's templates, named `"<campaign>/<part>"` (see [`TemplateRef`]).
    pub templates: Arc<minijinja::Environment<'static>>,
}

impl RuleSet {
    /// An empty rule set (a fresh deployment with no `rules/` folder yet).
    pub fn empty(dir: PathBuf) -> Self {
        Self {
            dir,
            global: Global::default(),
            campaigns: BTreeMap::new(),
            templates: Arc::new(minijinja::Environment::new()),
        }
    }

    /// Campaigns triggered by an event with this name, highest priority first.
    pub fn triggered_by<'a>(&'a self, event: &'a str) -> impl Iterator<Item = &'a Arc<Campaign>> + 'a {
        let mut hits: Vec<&Arc<Campaign>> = self
            .campaigns
            .values()
            .filter(move |c| matches!(&c.trigger, Trigger::Event(name) if name == event))
            .collect();
        hits.sort_by_key(|c| std::cmp::Reverse(c.priority));
        hits.into_iter()
    }
}

/// `rules/_global.yaml`.
#[derive(Debug, Clone)]
pub struct Global {
    /// Share of all users in the global control group (never messaged).
    pub control_group: Percent,
    /// Default time zone for users without a valid `traits.timezone`.
    pub timezone: Tz,
    pub quiet_hours: Option<QuietHours>,
    pub caps: Vec<Cap>,
    pub guardrails: Vec<String>,
    /// Share of predicted-time messages sent at a random allowed hour (ML exploration).
    pub explore: Percent,
}

impl Default for Global {
    fn default() -> Self {
        Self {
            control_group: Percent::ZERO,
            timezone: Tz::UTC,
            quiet_hours: None,
            caps: Vec::new(),
            guardrails: Vec::new(),
            explore: Percent::ZERO,
        }
    }
}

/// A share of users, kept in basis points (1% = 100) so hashing and comparisons are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Percent {
    pub basis_points: u32,
}

impl Percent {
    pub const ZERO: Percent = Percent { basis_points: 0 };

    pub fn fraction(self) -> f64 {
        f64::from(self.basis_points) / 10_000.0
    }
}

/// Local-time window in which nothing is sent; `from > to` wraps midnight (21:00 → 08:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub from: NaiveTime,
    pub to: NaiveTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub channel: CapChannel,
    pub max: u32,
    pub per: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapChannel {
    Any,
    Only(Channel),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Push,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Email, Channel::Push];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Push => "push",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "email" => Some(Channel::Email),
            "push" => Some(Channel::Push),
            _ => None,
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One campaign file.
#[derive(Debug)]
pub struct Campaign {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub priority: i32,
    pub trigger: Trigger,
    pub reentry: Reentry,
    pub wait: Option<Duration>,
    /// Event names that cancel a pending entry when they happen between trigger and send.
    pub unless: Vec<String>,
    /// `if:` — all must hold.
    pub conditions: Vec<Condition>,
    /// `exclude_if:` — any true keeps the user out of both arms.
    pub exclude_if: Vec<Condition>,
    pub action: Action,
    pub topic: Option<String>,
    pub holdout: Percent,
    /// Share of predicted-send-time users sent at `send_time_fixed` instead (by stable hash).
    pub send_time_test: Percent,
    /// Local time of day of the `send_time_test` share.
    pub send_time_fixed: NaiveTime,
    pub caps: Vec<Cap>,
    pub goal: Option<Goal>,
    pub guardrails: Vec<String>,
    /// Whether the global quiet hours apply to this campaign (default true).
    pub quiet_hours: bool,
    /// Every `count("event", "window")` used by the conditions, so the engine loads exactly the
    /// history they need before evaluating (conditions run without I/O).
    pub counts: Vec<CountUse>,
    /// The file this campaign came from.
    pub source: PathBuf,
}

impl Campaign {
    /// True when deciding for this campaign reads the models: a `predict.*` condition, a
    /// predicted channel or a predicted send time.
    pub fn uses_predictions(&self) -> bool {
        self.conditions
            .iter()
            .chain(&self.exclude_if)
            .any(|c| c.uses_propensity || !c.propensity_of.is_empty())
            || self.action.choose == ChannelChoice::Predicted
            || self.action.send_time == SendTime::Predicted
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Event(String),
    /// Cron with seconds, as tokio-cron-scheduler takes it.
    Schedule(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    Never,
    Always,
    After(Duration),
}

/// A compiled CEL expression and where it was written.
#[derive(Debug, Clone)]
pub struct Condition {
    pub source: String,
    pub program: Arc<cel::Program>,
    /// `file:line:column` of the expression, for the message log and errors.
    pub location: String,
    /// Goal events named by `predict.propensity_of("…")`.
    pub propensity_of: Vec<String>,
    /// True when it reads `predict.propensity`.
    pub uses_propensity: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CountUse {
    pub event: String,
    pub window: Duration,
    /// The literal window text, e.g. `"14d"`: the key the `count` function is called with.
    pub window_text: String,
}

#[derive(Debug, Clone)]
pub struct Action {
    /// Candidates in the marketer's order.
    pub channels: Vec<Channel>,
    pub choose: ChannelChoice,
    pub send_time: SendTime,
    /// Window within which a predicted send time is chosen.
    pub within: Duration,
    pub email: Option<EmailContent>,
    pub push: Option<PushContent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelChoice {
    Predicted,
    First,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTime {
    Predicted,
    Immediate,
    /// Local time of day in the user's time zone.
    At(NaiveTime),
}

/// Name of a template registered in [`RuleSet::templates`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef(pub String);

#[derive(Debug, Clone)]
pub struct EmailContent {
    pub subject: TemplateRef,
    pub body: TemplateRef,
    /// True when the body is HTML (a `.html` template, or inline body starting with `<`).
    pub html: bool,
}

#[derive(Debug, Clone)]
pub struct PushContent {
    pub title: TemplateRef,
    pub body: TemplateRef,
}

#[derive(Debug, Clone)]
pub struct Goal {
    pub event: String,
    pub within: Duration,
    /// Dotted path into the goal event, e.g. `properties.revenue`.
    pub value: Option<String>,
}
