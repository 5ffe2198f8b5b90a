//! Raw rule files → the compiled model: every string the marketer wrote is checked here.
//!
//! Takes the serde structs of [`raw`](super::raw) and the file's [`SourceMap`]; hands on a
//! [`Campaign`] or [`Global`] and, for every problem, a [`Diagnostic`] at the file:line:column of
//! the offending value with its text and a hint. A file with problems still has all its other
//! values checked, so one `validate` run lists everything.

use std::path::Path;

use chrono::{Duration, NaiveTime};
use chrono_tz::Tz;
use minijinja::Environment;
use serde::de::DeserializeOwned;

use super::{
    Diagnostic, Folder,
    conditions::{self, CheckedCondition},
    duration::parse_duration,
    model::*,
    raw::*,
    source_map::{Pos, SourceMap},
    templates::{self, TemplatePart},
};

/// One rule file's text, its display name and its position index.
pub(crate) struct SourceFile {
    /// As shown in diagnostics: the rules folder joined with the file name.
    pub name: String,
    pub text: String,
    pub map: SourceMap,
}

impl SourceFile {
    pub fn new(name: String, text: String) -> Self {
        let map = SourceMap::new(&text);
        SourceFile { name, text, map }
    }

    /// True when the file holds nothing but comments and blank lines.
    pub fn is_blank(&self) -> bool {
        self.text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        })
    }

    fn diagnostic(
        &self,
        pos: Pos,
        message: String,
        snippet: Option<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: self.name.clone(),
            line: pos.line,
            column: pos.column,
            message,
            snippet,
            hint,
        }
    }

    /// Deserializes the whole file; a serde error becomes a diagnostic at serde's position.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Diagnostic> {
        serde_yaml::from_str(&self.text).map_err(|err| {
            let pos = err
                .location()
                .map(|l| Pos {
                    line: l.line(),
                    column: l.column(),
                })
                .unwrap_or(Pos::START);
            let message = strip_location(&err.to_string())
                .replace("expected i32", "expected a whole number")
                .replace("expected u32", "expected a whole number >= 0");
            let hint = serde_hint(&message);
            let snippet = self
                .map
                .text_at(pos)
                .map(|t| t.trim_end_matches([']', '}', ',', ' ']).to_string());
            self.diagnostic(pos, message, snippet, hint)
        })
    }
}

/// serde_yaml appends ` at line L column C`; the diagnostic already starts with the position.
fn strip_location(message: &str) -> String {
    if let Some(at) = message.rfind(" at line ") {
        let tail = &message[at + " at line ".len()..];
        let is_position = tail.split_once(" column ").is_some_and(|(l, c)| {
            l.chars().all(|ch| ch.is_ascii_digit()) && c.chars().all(|ch| ch.is_ascii_digit())
        });
        if is_position {
            return message[..at].to_string();
        }
    }
    message.to_string()
}

fn serde_hint(message: &str) -> Option<String> {
    let hint = if message.contains("unknown field") {
        "check the spelling: docs/rules.md lists every key"
    } else if message.contains("unknown variant") && message.contains("`email`") {
        "channels are `email` and `push` (caps also take `any`)"
    } else if message.contains("unknown variant") {
        "use one of the values listed above"
    } else if message.contains("missing field") {
        "add the key: docs/rules.md shows a complete campaign"
    } else if message.contains("invalid type") {
        "check the value's type; quote text that YAML could read as a number, boolean or time"
    } else if message.contains("duplicate") {
        "each key may appear once per mapping"
    } else {
        "YAML syntax: check indentation, and quote values containing `: `, `#`, `{` or `[`"
    };
    Some(hint.to_string())
}

/// Errors and warnings of a whole load.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// Compiles values of one file, reporting into the sink.
struct Cx<'a> {
    src: &'a SourceFile,
    sink: &'a mut Sink,
}

impl Cx<'_> {
    fn error_at(&mut self, pos: Pos, message: impl Into<String>, snippet: Option<&str>, hint: Option<&str>) {
        let d = self.src.diagnostic(
            pos,
            message.into(),
            snippet.map(str::to_string),
            hint.map(str::to_string),
        );
        self.sink.errors.push(d);
    }

    /// An error at the value at `path`.
    fn error(&mut self, path: &str, message: impl Into<String>, snippet: Option<&str>, hint: Option<&str>) {
        self.error_at(self.src.map.value(path), message, snippet, hint);
    }

    fn warn(&mut self, path: &str, message: impl Into<String>, hint: Option<&str>) {
        let pos = self.src.map.value(path);
        let d = self
            .src
            .diagnostic(pos, message.into(), None, hint.map(str::to_string));
        self.sink.warnings.push(d);
    }

    fn duration(&mut self, path: &str, text: &str) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) if d > Duration::zero() => Some(d),
            Ok(_) => {
                self.error(
                    path,
                    format!("`{path}` must be longer than zero"),
                    Some(text),
                    Some("e.g. 30s, 15m, 2h, 3d, 1w"),
                );
                None
            }
            Err(message) => {
                self.error(
                    path,
                    message,
                    Some(text),
                    Some("durations are a whole number and a unit: 30s 15m 2h 3d 1w"),
                );
                None
            }
        }
    }

    fn percent(&mut self, path: &str, text: &str) -> Option<Percent> {
        match parse_percent(text) {
            Ok(p) => Some(p),
            Err(message) => {
                self.error(
                    path,
                    message,
                    Some(text),
                    Some("a share between 0% and 100%, e.g. 10% or 2.5%"),
                );
                None
            }
        }
    }

    fn clock(&mut self, path: &str, text: &str) -> Option<NaiveTime> {
        match parse_clock(text) {
            Some(t) => Some(t),
            None => {
                self.error(
                    path,
                    format!("invalid time of day `{text}`"),
                    Some(text),
                    Some(r#"24-hour "HH:MM" in quotes, e.g. "09:30" or "21:00""#),
                );
                None
            }
        }
    }

    fn event_name(&mut self, path: &str, name: &str) {
        if name.trim().is_empty() {
            self.error(path, "event name is empty", None, Some("e.g. `order_completed`"));
        }
    }

    fn caps(&mut self, prefix: &str, raw: &[RawCap]) -> Vec<Cap> {
        let mut caps = Vec::new();
        for (i, cap) in raw.iter().enumerate() {
            let channel = match cap.channel {
                RawCapChannel::Any => CapChannel::Any,
                RawCapChannel::Email => CapChannel::Only(Channel::Email),
                RawCapChannel::Push => CapChannel::Only(Channel::Push),
            };
            if let Some(per) = self.duration(&format!("{prefix}[{i}].per"), &cap.per) {
                caps.push(Cap {
                    channel,
                    max: cap.max,
                    per,
                });
            }
        }
        caps
    }

    /// Compiles a condition at `path`; its errors are mapped into the file.
    fn condition(&mut self, path: &str, source: &str, scheduled: bool) -> Option<(Condition, Vec<CountUse>)> {
        let pos = self.src.map.value(path);
        match conditions::check(source, scheduled) {
            Ok(CheckedCondition {
                program,
                counts,
                propensities,
                uses_propensity,
            }) => {
                let condition = Condition {
                    source: source.to_string(),
                    program: std::sync::Arc::new(program),
                    location: format!("{}:{}:{}", self.src.name, pos.line, pos.column),
                    propensity_of: propensities,
                    uses_propensity,
                };
                Some((condition, counts))
            }
            Err(errors) => {
                for e in errors {
                    let at = self.src.map.inside(path, e.offset);
                    self.error_at(at, e.message, Some(&e.snippet), e.hint.as_deref());
                }
                None
            }
        }
    }

    /// Registers an inline template written at `path`.
    fn inline_template(
        &mut self,
        env: &mut Environment<'static>,
        path: &str,
        name: String,
        source: &str,
        html: bool,
        allowed: &[&str],
    ) -> Option<TemplateRef> {
        match templates::register(env, &name, source, html, allowed) {
            Ok(()) => Some(TemplateRef(name)),
            Err(e) => {
                let at = self.src.map.inside(path, e.offset);
                let snippet = source.lines().nth(e.line.saturating_sub(1)).map(str::trim);
                self.error_at(at, e.message, snippet, e.hint.as_deref());
                None
            }
        }
    }
}

/// `10%`, `2.5%`, `0.25%` → basis points; 0%–100%, at most two decimals.
pub fn parse_percent(text: &str) -> Result<Percent, String> {
    let t = text.trim();
    let Some(number) = t.strip_suffix('%') else {
        return Err(format!(
            "invalid percentage `{text}`: write it with a `%`, e.g. 10%"
        ));
    };
    let (whole, frac) = number.trim().split_once('.').unwrap_or((number.trim(), ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 2 || whole.len() > 3 {
        return Err(format!(
            "invalid percentage `{text}`: expected e.g. 10% or 2.5% (at most two decimals)"
        ));
    }
    let whole: u32 = whole
        .parse()
        .map_err(|_| format!("invalid percentage `{text}`"))?;
    let frac: u32 = format!("{frac:0<2}")
        .parse()
        .map_err(|_| format!("invalid percentage `{text}`"))?;
    let basis_points = whole * 100 + frac;
    if basis_points > 10_000 {
        return Err(format!("percentage `{text}` is out of range: 0% to 100%"));
    }
    Ok(Percent { basis_points })
}

/// `"09:30"` → 09:30. Hours 00–23, minutes 00–59, two digits each.
pub fn parse_clock(text: &str) -> Option<NaiveTime> {
    let (h, m) = text.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// A schedule as tokio-cron-scheduler parses it (croner, seconds required).
pub fn parse_schedule(text: &str) -> Result<(), String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn is_campaign_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `_global.yaml`.
pub(crate) fn compile_global(src: &SourceFile, raw: RawGlobal, sink: &mut Sink) -> Global {
    let mut cx = Cx { src, sink };
    let mut global = Global::default();
    if let Some(text) = &raw.control_group
        && let Some(p) = cx.percent("control_group", text)
    {
        global.control_group = p;
    }
    if let Some(text) = &raw.explore
        && let Some(p) = cx.percent("explore", text)
    {
        global.explore = p;
    }
    if let Some(tz) = &raw.timezone {
        match tz.trim().parse::<Tz>() {
            Ok(tz) => global.timezone = tz,
            Err(_) => cx.error(
                "timezone",
                format!("unknown time zone `{tz}`"),
                Some(tz),
                Some("an IANA name such as `UTC`, `Europe/Berlin` or `America/New_York`"),
            ),
        }
    }
    if let Some(q) = &raw.quiet_hours {
        let from = cx.clock("quiet_hours.from", &q.from);
        let to = cx.clock("quiet_hours.to", &q.to);
        if let (Some(from), Some(to)) = (from, to) {
            if from == to {
                cx.warn(
                    "quiet_hours",
                    "quiet hours start and end at the same time: they have no effect",
                    None,
                );
            }
            global.quiet_hours = Some(QuietHours { from, to });
        }
    }
    global.caps = cx.caps("caps", &raw.caps);
    for (i, g) in raw.guardrails.iter().enumerate() {
        cx.event_name(&format!("guardrails[{i}]"), g);
    }
    global.guardrails = raw.guardrails;
    global
}

/// One campaign file. `None` when it has errors (they are in the sink).
pub(crate) fn compile_campaign(
    src: &SourceFile,
    raw: RawCampaign,
    dir: &Path,
    folder: &Folder<'_>,
    env: &mut Environment<'static>,
    sink: &mut Sink,
) -> Option<Campaign> {
    let errors_before = sink.errors.len();
    let mut cx = Cx { src, sink };

    let id = raw.campaign.clone();
    if !is_campaign_id(&id) {
        cx.error(
            "campaign",
            format!("invalid campaign id `{id}`"),
            Some(&id),
            Some("lowercase letters, digits and `_` only, e.g. `cart_abandonment`"),
        );
    }
    let stem = Path::new(&src.name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if is_campaign_id(&id) && stem != id {
        cx.warn(
            "campaign",
            format!("campaign `{id}` is in a file named `{stem}`"),
            Some("naming the file after the campaign id makes it easy to find"),
        );
    }

    let trigger = match (&raw.when.event, &raw.when.schedule) {
        (Some(event), None) => {
            cx.event_name("when.event", event);
            Some(Trigger::Event(event.trim().to_string()))
        }
        (None, Some(schedule)) => match parse_schedule(schedule) {
            Ok(()) => Some(Trigger::Schedule(schedule.trim().to_string())),
            Err(message) => {
                cx.error(
                    "when.schedule",
                    format!("invalid cron schedule `{schedule}`: {message}"),
                    Some(schedule),
                    Some(r#"6 fields with seconds: "sec min hour day-of-month month day-of-week", e.g. "0 0 9 * * Mon" (Mondays 09:00)"#),
                );
                None
            }
        },
        _ => {
            cx.error_at(
                cx.src.map.key("when"),
                "`when` needs exactly one of `event` or `schedule`",
                None,
                Some(r#"e.g. `when: { event: cart_updated }` or `when: { schedule: "0 0 9 * * Mon" }`"#),
            );
            None
        }
    };
    let scheduled = matches!(trigger, Some(Trigger::Schedule(_)));

    let reentry = match raw.reentry.as_deref().map(str::trim) {
        None | Some("never") => Reentry::Never,
        Some("always") => Reentry::Always,
        Some(text) => match parse_duration(text) {
            Ok(d) => Reentry::After(d),
            Err(message) => {
                cx.error(
                    "reentry",
                    message,
                    Some(text),
                    Some("`never` (default), `always`, or a duration such as `7d`"),
                );
                Reentry::Never
            }
        },
    };
    let wait = match raw.wait.as_deref() {
        Some(text) => match parse_duration(text) {
            Ok(d) => Some(d),
            Err(message) => {
                cx.error(
                    "wait",
                    message,
                    Some(text),
                    Some("durations are a whole number and a unit: 30s 15m 2h 3d 1w"),
                );
                None
            }
        },
        None => None,
    };
    for (i, u) in raw.unless.iter().enumerate() {
        cx.event_name(&format!("unless[{i}].event"), &u.event);
    }

    let mut counts: Vec<CountUse> = Vec::new();
    let mut compile_list = |cx: &mut Cx, key: &str, sources: &[String]| -> Vec<Condition> {
        let mut out = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            if let Some((condition, used)) = cx.condition(&format!("{key}[{i}]"), source, scheduled) {
                for c in used {
                    if !counts.contains(&c) {
                        counts.push(c);
                    }
                }
                out.push(condition);
            }
        }
        out
    };
    let conditions = compile_list(&mut cx, "if", &raw.conditions);
    let exclude_if = compile_list(&mut cx, "exclude_if", &raw.exclude_if);

    let action = compile_action(&mut cx, &raw, &id, scheduled, dir, folder, env);

    let holdout = match &raw.holdout {
        Some(text) => cx.percent("holdout", text).unwrap_or(Percent::ZERO),
        None => Percent::ZERO,
    };
    if holdout == Percent::ZERO && errors_before == cx.sink.errors.len() {
        let path = if raw.holdout.is_some() {
            "holdout"
        } else {
            "campaign"
        };
        cx.warn(
            path,
            "holdout is 0%: no lift can be measured for this campaign",
            Some("e.g. `holdout: 10%`"),
        );
    }
    let send_time_test = match &raw.send_time_test {
        Some(text) => cx.percent("send_time_test", text).unwrap_or(Percent::ZERO),
        None => Percent::ZERO,
    };
    if raw.send_time_test.is_some() && raw.then.send_time.as_deref().map(str::trim) != Some("predicted") {
        cx.error(
            "send_time_test",
            "`send_time_test` compares predicted send times with a fixed one, and this campaign's send time is not predicted",
            raw.send_time_test.as_deref(),
            Some("set `then.send_time: predicted`, or remove `send_time_test`"),
        );
    }
    let send_time_fixed = match raw.send_time_fixed.as_deref().map(str::trim) {
        None => NaiveTime::from_hms_opt(9, 0, 0).expect("09:00"),
        Some(text) => parse_clock(text).unwrap_or_else(|| {
            cx.error(
                "send_time_fixed",
                format!("invalid send_time_fixed `{text}`"),
                Some(text),
                Some(r#"a local time "HH:MM" such as "09:00""#),
            );
            NaiveTime::from_hms_opt(9, 0, 0).expect("09:00")
        }),
    };
    let caps = cx.caps("caps", &raw.caps);
    let goal = raw.goal.as_ref().and_then(|g| {
        cx.event_name("goal.event", &g.event);
        let within = match &g.within {
            Some(text) => cx.duration("goal.within", text)?,
            None => Duration::days(3),
        };
        if let Some(value) = &g.value
            && (value.is_empty() || value.split('.').any(|seg| seg.is_empty()))
        {
            cx.error(
                "goal.value",
                format!("invalid value path `{value}`"),
                Some(value),
                Some("a dotted path, e.g. `properties.revenue`"),
            );
        }
        Some(Goal {
            event: g.event.trim().to_string(),
            within,
            value: g.value.clone(),
        })
    });
    if raw.goal.is_none() {
        for (key, sources, compiled) in [
            ("if", &raw.conditions, &conditions),
            ("exclude_if", &raw.exclude_if, &exclude_if),
        ] {
            for (i, source) in sources.iter().enumerate() {
                if compiled.iter().any(|c| c.source == *source && c.uses_propensity) {
                    cx.error(
                        &format!("{key}[{i}]"),
                        "`predict.propensity` is the propensity to reach this campaign's goal, and it has no `goal:`"
                            .to_string(),
                        Some(source),
                        Some(r#"add `goal: { event: order_completed, within: 7d }`, or write `predict.propensity_of("order_completed")`"#),
                    );
                }
            }
        }
    }
    for (i, g) in raw.guardrails.iter().enumerate() {
        cx.event_name(&format!("guardrails[{i}]"), g);
    }
    if let Some(topic) = &raw.topic
        && topic.trim().is_empty()
    {
        cx.error(
            "topic",
            "topic is empty",
            None,
            Some("omit `topic` or name one, e.g. `reminders`"),
        );
    }

    if cx.sink.errors.len() != errors_before {
        return None;
    }
    Some(Campaign {
        name: raw.name.clone().unwrap_or_else(|| id.clone()),
        id,
        enabled: raw.enabled.unwrap_or(true),
        priority: raw.priority.unwrap_or(0),
        trigger: trigger?,
        reentry,
        wait,
        unless: raw.unless.iter().map(|u| u.event.trim().to_string()).collect(),
        conditions,
        exclude_if,
        action: action?,
        topic: raw.topic.clone(),
        holdout,
        send_time_test,
        send_time_fixed,
        caps,
        goal,
        guardrails: raw.guardrails.clone(),
        quiet_hours: raw.quiet_hours.unwrap_or(true),
        counts,
        source: std::path::PathBuf::from(&src.name),
    })
}

fn compile_action(
    cx: &mut Cx,
    raw: &RawCampaign,
    id: &str,
    scheduled: bool,
    dir: &Path,
    folder: &Folder<'_>,
    env: &mut Environment<'static>,
) -> Option<Action> {
    let then = &raw.then;
    let allowed: Vec<&str> = templates::CONTEXT_VARIABLES
        .iter()
        .copied()
        .filter(|v| !(scheduled && *v == "event"))
        .collect();
    let mut ok = true;

    let mut channels = Vec::new();
    for (i, ch) in then.channels.iter().enumerate() {
        let channel = match ch {
            RawChannel::Email => Channel::Email,
            RawChannel::Push => Channel::Push,
        };
        let path = format!("then.channels[{i}]");
        if channels.contains(&channel) {
            cx.error(
                &path,
                format!("channel `{channel}` is listed twice"),
                Some(channel.as_str()),
                None,
            );
            ok = false;
            continue;
        }
        let has_content = match channel {
            Channel::Email => then.email.is_some(),
            Channel::Push => then.push.is_some(),
        };
        if !has_content {
            cx.error(
                &path,
                format!("channel `{channel}` has no `{channel}:` content block"),
                Some(channel.as_str()),
                Some(match channel {
                    Channel::Email => "add `email: { subject: …, template: … }` under `then`",
                    Channel::Push => "add `push: { title: …, body: … }` under `then`",
                }),
            );
            ok = false;
        }
        channels.push(channel);
    }
    if channels.is_empty() {
        cx.error(
            "then.channels",
            "`channels` is empty",
            None,
            Some("list at least one of `email`, `push`"),
        );
        ok = false;
    }
    if then.email.is_some() && !channels.contains(&Channel::Email) {
        cx.warn(
            "then.email",
            "`email:` content is never used: `email` is not in `channels`",
            None,
        );
    }
    if then.push.is_some() && !channels.contains(&Channel::Push) {
        cx.warn(
            "then.push",
            "`push:` content is never used: `push` is not in `channels`",
            None,
        );
    }

    let choose = match then.choose {
        Some(RawChoose::Predicted) => ChannelChoice::Predicted,
        Some(RawChoose::First) | None => ChannelChoice::First,
    };
    let send_time = match then.send_time.as_deref().map(str::trim) {
        None | Some("immediate") => SendTime::Immediate,
        Some("predicted") => SendTime::Predicted,
        Some(text) => match parse_clock(text) {
            Some(t) => SendTime::At(t),
            None => {
                cx.error(
                    "then.send_time",
                    format!("invalid send_time `{text}`"),
                    Some(text),
                    Some(r#"`immediate` (default), `predicted`, or a local time "HH:MM" such as "09:30""#),
                );
                ok = false;
                SendTime::Immediate
            }
        },
    };
    let within = match &then.within {
        Some(text) => cx.duration("then.within", text).unwrap_or_else(|| {
            ok = false;
            Duration::hours(24)
        }),
        None => Duration::hours(24),
    };

    let email = then.email.as_ref().and_then(|email| {
        let subject = cx.inline_template(
            env,
            "then.email.subject",
            TemplatePart::EmailSubject.name(id),
            &email.subject,
            false,
            &allowed,
        );
        let body_name = TemplatePart::EmailBody.name(id);
        let html = templates::is_html(email.template.as_deref(), email.body.as_deref());
        let body = match (&email.template, &email.body) {
            (Some(rel), None) => match folder.read_template(dir, rel) {
                Ok((path, text)) => match templates::register(env, &body_name, &text, html, &allowed) {
                    Ok(()) => Some(TemplateRef(body_name)),
                    Err(e) => {
                        let snippet = text
                            .lines()
                            .nth(e.line.saturating_sub(1))
                            .map(|l| l.trim().to_string());
                        cx.sink.errors.push(Diagnostic {
                            file: path.display().to_string(),
                            line: e.line,
                            column: e.column,
                            message: e.message,
                            snippet,
                            hint: e.hint,
                        });
                        None
                    }
                },
                Err(e) => {
                    cx.error(
                        "then.email.template",
                        e.to_string(),
                        Some(rel),
                        Some("a path relative to the rules folder, e.g. `templates/welcome.html`"),
                    );
                    None
                }
            },
            (None, Some(body)) => cx.inline_template(env, "then.email.body", body_name, body, html, &allowed),
            _ => {
                cx.error(
                    "then.email",
                    "`email` needs exactly one of `template` or `body`",
                    None,
                    Some("`template: templates/x.html` (a file) or `body: …` (inline)"),
                );
                None
            }
        };
        Some(EmailContent {
            subject: subject?,
            body: body?,
            html,
        })
    });
    if then.email.is_some() && email.is_none() {
        ok = false;
    }
    let push = then.push.as_ref().and_then(|push| {
        let title = cx.inline_template(
            env,
            "then.push.title",
            TemplatePart::PushTitle.name(id),
            &push.title,
            false,
            &allowed,
        );
        let body = cx.inline_template(
            env,
            "then.push.body",
            TemplatePart::PushBody.name(id),
            &push.body,
            false,
            &allowed,
        );
        Some(PushContent {
            title: title?,
            body: body?,
        })
    });
    if then.push.is_some() && push.is_none() {
        ok = false;
    }

    ok.then_some(Action {
        channels,
        choose,
        send_time,
        within,
        email,
        push,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_basis_points() {
        assert_eq!(parse_percent("10%"), Ok(Percent { basis_points: 1000 }));
        assert_eq!(parse_percent("2.5%"), Ok(Percent { basis_points: 250 }));
        assert_eq!(parse_percent("0.25%"), Ok(Percent { basis_points: 25 }));
        assert_eq!(parse_percent("100%"), Ok(Percent { basis_points: 10_000 }));
        assert_eq!(parse_percent("0%"), Ok(Percent::ZERO));
        for bad in ["10", "101%", "-1%", "1.234%", "%", "ten%", "1e2%", "1000%"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clock_times_are_strict() {
        assert_eq!(parse_clock("09:30"), NaiveTime::from_hms_opt(9, 30, 0));
        for bad in ["9:30", "24:00", "12:60", "noon", "12:3"] {
            assert_eq!(parse_clock(bad), None, "{bad}");
        }
    }

    #[test]
    fn schedules_need_seconds() {
        assert!(parse_schedule("0 0 9 * * Mon").is_ok());
        assert!(parse_schedule("0 0 10 * * *").is_ok());
        assert!(parse_schedule("0 9 * * Mon").is_err());
        assert!(parse_schedule("0 0 25 * * *").is_err());
    }

    #[test]
    fn serde_positions_are_stripped_from_messages() {
        assert_eq!(strip_location("x: bad at line 3 column 4"), "x: bad");
        assert_eq!(strip_location("at line one"), "at line one");
    }
}
