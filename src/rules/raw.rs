//! The rule files exactly as written: serde structs that mirror the YAML, key for key.
//!
//! Nothing here is interpreted: durations, percentages, CEL and templates stay strings so that
//! [`compile`](super::compile) can check each one and point at it. Unknown keys are refused
//! (`deny_unknown_fields`) so a typo never silently disables a setting. The doc comments become
//! the descriptions of the JSON Schema (`nudge schema`, `rules/nudge.schema.json`), which editors
//! show as hover help and completion.

use schemars::JsonSchema;
use serde::Deserialize;

/// A campaign file (`rules/<campaign>.yaml`): one if/then rule.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Campaign")]
pub struct RawCampaign {
    /// Campaign id: lowercase letters, digits and `_`, unique across files. Holdout assignment
    /// hashes it, so never reuse an id for a different campaign.
    #[schemars(regex(pattern = r"^[a-z0-9_]+$"), example = "cart_abandonment".to_string())]
    pub campaign: String,
    /// Human-readable name shown in reports. Defaults to the campaign id.
    pub name: Option<String>,
    /// `false` pauses the campaign: nobody enters it. Default `true`.
    pub enabled: Option<bool>,
    /// Higher goes first when frequency caps allow only some messages. Default 0.
    pub priority: Option<i32>,
    /// What makes a user enter the campaign: exactly one of `event` or `schedule`.
    pub when: RawWhen,
    /// May a user enter again, and when: `never` (default), `always`, or a duration such as `7d`
    /// (again once that long has passed since the last entry).
    #[schemars(regex(pattern = r"^(never|always|[0-9]+[smhdw])$"), example = "7d".to_string())]
    pub reentry: Option<String>,
    /// Delay between the trigger and the send, e.g. `2h`. Durations: `30s 15m 2h 3d 1w`.
    #[schemars(regex(pattern = r"^[0-9]+[smhdw]$"), example = "2h".to_string())]
    pub wait: Option<String>,
    /// Cancel the pending message if any of these events happens between trigger and send.
    #[serde(default)]
    pub unless: Vec<RawUnless>,
    /// Conditions (CEL) that must all hold when the message is due. Variables: `user`, `event`,
    /// `now`, `predict`; functions: the CEL standard library, `count("event", "14d")` and
    /// `predict.propensity_of("event")`.
    #[serde(default, rename = "if")]
    #[schemars(example = vec![r#"user.traits.plan != "enterprise""#.to_string()])]
    pub conditions: Vec<String>,
    /// What to send, on which channels, and when.
    pub then: RawThen,
    /// Subscription topic; users who opted out of it are excluded.
    pub topic: Option<String>,
    /// Conditions (CEL); a user for whom any holds is in neither arm (sensitive segments).
    #[serde(default)]
    pub exclude_if: Vec<String>,
    /// Share of entering users kept as a holdout (never messaged) to measure lift, e.g. `10%`.
    /// Default `0%`, which sends to everyone but measures no lift.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]{1,2})?%$"), example = "10%".to_string())]
    pub holdout: Option<String>,
    /// With `then.send_time: predicted`: share of users (by a stable hash, like the holdout) sent at
    /// the fixed `send_time_fixed` instead of the predicted time, so the lift report can compare
    /// predicted against fixed send times, e.g. `20%`. Default `0%`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]{1,2})?%$"), example = "20%".to_string())]
    pub send_time_test: Option<String>,
    /// The local time of day of the `send_time_test` share, `"HH:MM"`. Default `"09:00"`.
    #[schemars(regex(pattern = r"^[0-2][0-9]:[0-5][0-9]$"), example = "09:00".to_string())]
    pub send_time_fixed: Option<String>,
    /// Frequency caps for this campaign, on top of the global caps.
    #[serde(default)]
    pub caps: Vec<RawCap>,
    /// What counts as a conversion, for lift reports and the propensity model.
    pub goal: Option<RawGoal>,
    /// Events whose rates are compared per arm ("do no harm"), e.g. `unsubscribed`.
    #[serde(default)]
    pub guardrails: Vec<String>,
    /// `false` lets this campaign send during the global quiet hours (welcome and other
    /// transactional messages a user expects at once). Default `true`.
    pub quiet_hours: Option<bool>,
}

/// The trigger: exactly one of `event` or `schedule`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{ "required": ["event"] }, { "required": ["schedule"] }]))]
#[schemars(rename = "When")]
pub struct RawWhen {
    /// Enter when this event is tracked for the user, e.g. `cart_updated`.
    pub event: Option<String>,
    /// Enter every user on a cron schedule with seconds (tokio-cron-scheduler):
    /// `sec min hour day-of-month month day-of-week`, e.g. `"0 0 9 * * Mon"`.
    #[schemars(example = "0 0 9 * * Mon".to_string())]
    pub schedule: Option<String>,
}

/// An event that cancels a pending message.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Unless")]
pub struct RawUnless {
    /// Event name, e.g. `order_completed`.
    pub event: String,
}

/// The action.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Then")]
pub struct RawThen {
    /// Candidate channels in order of preference; those the user can receive (consent and
    /// address) remain. Each needs its content block (`email:` / `push:`).
    pub channels: Vec<RawChannel>,
    /// `predicted` (the channel model picks among the candidates) or `first` (default: the first
    /// one the user can receive).
    pub choose: Option<RawChoose>,
    /// `immediate` (default), `predicted` (the send-time model picks a time within `within`), or a
    /// local time of day `"HH:MM"` in the user's time zone.
    #[schemars(regex(pattern = r"^(predicted|immediate|[0-9]{2}:[0-9]{2})$"), example = "09:30".to_string())]
    pub send_time: Option<String>,
    /// Window in which a predicted send time is chosen. Default `24h`.
    #[schemars(regex(pattern = r"^[0-9]+[smhdw]$"), example = "24h".to_string())]
    pub within: Option<String>,
    /// Email content (required when `channels` lists `email`).
    pub email: Option<RawEmail>,
    /// Push content (required when `channels` lists `push`).
    pub push: Option<RawPush>,
}

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Channel")]
pub enum RawChannel {
    Email,
    Push,
}

/// How the channel is chosen among the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Choose")]
pub enum RawChoose {
    /// The channel model picks the channel the user is most likely to engage with.
    Predicted,
    /// The first candidate the user can receive.
    First,
}

/// Email content. Subject and body are minijinja templates with `user`, `event`, `campaign` and
/// `unsubscribe_url` in scope.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Email")]
pub struct RawEmail {
    /// Subject line template, e.g. `"Still thinking about {{ event.properties.product_name }}?"`.
    pub subject: String,
    /// Body template file, relative to the rules folder (e.g. `templates/welcome.html`).
    /// `.html`/`.htm` bodies are HTML-escaped automatically. Exactly one of `template` or `body`.
    pub template: Option<String>,
    /// Inline body template. HTML when it starts with `<`. Exactly one of `template` or `body`.
    pub body: Option<String>,
}

/// Push notification content: minijinja templates with `user`, `event`, `campaign` in scope.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Push")]
pub struct RawPush {
    /// Notification title template.
    pub title: String,
    /// Notification body template.
    pub body: String,
}

/// A frequency cap: at most `max` messages per `per` window.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Cap")]
pub struct RawCap {
    /// `any` (all channels together), `email` or `push`.
    pub channel: RawCapChannel,
    /// Most messages allowed within the window.
    pub max: u32,
    /// Window length, e.g. `1d`.
    #[schemars(regex(pattern = r"^[0-9]+[smhdw]$"), example = "1d".to_string())]
    pub per: String,
}

/// Channel a cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "CapChannel")]
pub enum RawCapChannel {
    Any,
    Email,
    Push,
}

/// The conversion a campaign aims for.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Goal")]
pub struct RawGoal {
    /// Goal event name, e.g. `order_completed`.
    pub event: String,
    /// How long after the assignment a goal event counts. Default `3d`.
    #[schemars(regex(pattern = r"^[0-9]+[smhdw]$"), example = "3d".to_string())]
    pub within: Option<String>,
    /// Optional dotted path to a numeric value in the goal event for revenue lift, e.g.
    /// `properties.revenue`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"), example = "properties.revenue".to_string())]
    pub value: Option<String>,
}

/// `rules/_global.yaml`: settings for all campaigns.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "GlobalSettings")]
pub struct RawGlobal {
    /// Share of all users in the global control group, never messaged by any campaign (long-term
    /// lift), e.g. `5%`. Default `0%`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]{1,2})?%$"), example = "5%".to_string())]
    pub control_group: Option<String>,
    /// IANA time zone used when a user has no valid `traits.timezone`. Default `UTC`.
    #[schemars(example = "Europe/Berlin".to_string())]
    pub timezone: Option<String>,
    /// Local-time window in which nothing is sent; sends move to the next allowed minute.
    pub quiet_hours: Option<RawQuietHours>,
    /// Frequency caps that hold across all campaigns.
    #[serde(default)]
    pub caps: Vec<RawCap>,
    /// Guardrail events watched for every campaign, e.g. `unsubscribed`.
    #[serde(default)]
    pub guardrails: Vec<String>,
    /// Share of predicted-time messages sent at a random allowed hour so the send-time model keeps
    /// learning (exploration), e.g. `5%`. Default `0%`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]{1,2})?%$"), example = "5%".to_string())]
    pub explore: Option<String>,
}

/// Quiet hours: `from` → `to` in the user's local time; `from` after `to` wraps midnight.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "QuietHours")]
pub struct RawQuietHours {
    /// Start, `"HH:MM"`, e.g. `"21:00"`.
    #[schemars(regex(pattern = r"^[0-9]{2}:[0-9]{2}$"), example = "21:00".to_string())]
    pub from: String,
    /// End, `"HH:MM"`, e.g. `"08:00"`.
    #[schemars(regex(pattern = r"^[0-9]{2}:[0-9]{2}$"), example = "08:00".to_string())]
    pub to: String,
}
