//! `if:` and `exclude_if:` conditions: CEL compiled once at load, checked for what they use.
//!
//! Takes one expression's text; hands back the compiled [`cel::Program`], the
//! `count("event", "window")` uses the engine must preload, or every problem with its character
//! offset inside the expression (the compiler maps offsets to file positions).
//!
//! What a condition may reference is fixed here, in one place: the variables `user`, `event`
//! (not in scheduled campaigns: there is no trigger event), `now` and `predict`; the CEL standard
//! library; `count(event_name, window)` with two string literals, so the history it needs is
//! known before evaluation; and `predict.propensity_of(event_name)`.

use std::sync::{Arc, LazyLock};

use cel::{
    Context, Env, Program,
    common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo},
};

use super::{duration::parse_duration, model::CountUse};

/// Variables the engine puts in every condition's context.
pub const VARIABLES: [&str; 4] = ["user", "event", "now", "predict"];

/// A condition that compiled and references only what exists.
#[derive(Debug)]
pub struct CheckedCondition {
    pub program: Program,
    pub counts: Vec<CountUse>,
    /// Goal events named by `predict.propensity_of("…")`.
    pub propensities: Vec<String>,
    /// True when the condition reads `predict.propensity` (the campaign's own goal).
    pub uses_propensity: bool,
}

/// One problem in a condition, at a character offset of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    pub offset: usize,
    pub message: String,
    /// The offending part of the expression.
    pub snippet: String,
    pub hint: Option<String>,
}

/// Compiles `source` and checks its references. `scheduled` campaigns have no `event`.
pub fn check(source: &str, scheduled: bool) -> Result<CheckedCondition, Vec<ConditionError>> {
    let program = Program::compile(source).map_err(|errors| {
        errors
            .errors
            .iter()
            .take(1)
            .map(|e| {
                let offset = offset_of_line_col(source, e.pos.0, e.pos.1);
                ConditionError {
                    offset,
                    message: format!("CEL syntax error: {}", e.msg.trim_start_matches("Syntax error: ")),
                    snippet: source.to_string(),
                    hint: Some(
                        r#"conditions are CEL, e.g. `user.traits.plan != "enterprise" && count("session_started", "14d") >= 1`"#
                            .to_string(),
                    ),
                }
            })
            .collect::<Vec<_>>()
    })?;
    let mut walker = Walker {
        source,
        info: program.source_info(),
        scheduled,
        bound: Vec::new(),
        errors: Vec::new(),
        counts: Vec::new(),
        propensities: Vec::new(),
        uses_propensity: false,
    };
    walker.walk(program.expression());
    let Walker {
        errors,
        counts,
        propensities,
        uses_propensity,
        ..
    } = walker;
    if errors.is_empty() {
        Ok(CheckedCondition {
            program,
            counts,
            propensities,
            uses_propensity,
        })
    } else {
        Err(errors)
    }
}

/// CEL reports (1-based line, 1-based column); the compiler wants a character offset.
fn offset_of_line_col(source: &str, line: isize, column: isize) -> usize {
    let line = usize::try_from(line).unwrap_or(1).max(1);
    let column = usize::try_from(column).unwrap_or(1).max(1);
    let before: usize = source
        .split_inclusive('\n')
        .take(line - 1)
        .map(|l| l.chars().count())
        .sum();
    before + column - 1
}

/// The standard environment, built once: asked whether a function name exists.
static STDLIB: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// True when the CEL standard library declares `name` (as a function or a member function).
fn is_stdlib_function(name: &str) -> bool {
    let mut probe = Context::with_env(STDLIB.clone());
    // `add_function` refuses exactly the names the environment already declares.
    probe.add_function(name, || false).is_err()
}

/// Operators are calls too: `_&&_`, `!_`, `-_`, `@in`, `_[_]`, `_?_:_`, …
fn is_operator(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('@') || name.ends_with('_')
}

struct Walker<'a> {
    source: &'a str,
    info: &'a SourceInfo,
    scheduled: bool,
    /// Names bound by enclosing comprehensions (`exists(t, …)`).
    bound: Vec<String>,
    errors: Vec<ConditionError>,
    counts: Vec<CountUse>,
    propensities: Vec<String>,
    uses_propensity: bool,
}

impl Walker<'_> {
    fn walk(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Ident(name) => self.ident(name, e.id),
            Expr::Select(select) => {
                if let Expr::Ident(name) = &select.operand.expr
                    && name == "predict"
                    && !self.bound.iter().any(|b| b == name)
                {
                    if select.field == "propensity" {
                        self.uses_propensity = true;
                    } else {
                        // Point at `predict.<field>` as written: CEL places a select at its dot.
                        let start = self
                            .info
                            .offset_for(select.operand.id)
                            .map_or(0, |(a, _)| a as usize);
                        let dot = self.info.offset_for(e.id).map_or(start, |(a, _)| a as usize);
                        self.error_span(
                            start,
                            dot + select.field.len(),
                            format!("unknown prediction `predict.{}`", select.field),
                            Some(r#"predictions are `predict.propensity` (this campaign's goal) and `predict.propensity_of("event")`"#),
                        );
                    }
                }
                self.walk(&select.operand)
            }
            Expr::Call(call) => self.call(call, e.id),
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                let depth = self.bound.len();
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.clone());
                self.bound.push(c.accu_var.clone());
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                self.walk(&c.result);
                self.bound.truncate(depth);
            }
            Expr::List(list) => list.elements.iter().for_each(|el| self.walk(el)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(m) => {
                            self.walk(&m.key);
                            self.walk(&m.value);
                        }
                        EntryExpr::StructField(f) => self.walk(&f.value),
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(m) => self.walk(&m.value),
                        EntryExpr::StructField(f) => self.walk(&f.value),
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn ident(&mut self, name: &str, id: u64) {
        if name.starts_with('@') || self.bound.iter().any(|b| b == name) {
            return;
        }
        match name {
            "event" if self.scheduled => self.error(
                id,
                "`event` is not available in a scheduled campaign".to_string(),
                Some("a schedule enters users without a trigger event: use `user.…` or `count(…)`"),
            ),
            n if VARIABLES.contains(&n) => {}
            _ => self.error(
                id,
                format!("unknown identifier `{name}` in condition"),
                Some("conditions can use `user`, `event`, `now` and `predict`; strings need double quotes"),
            ),
        }
    }

    fn call(&mut self, call: &CallExpr, id: u64) {
        let target = call.target.as_deref();
        match (call.func_name.as_str(), target) {
            ("count", None) => self.count(call, id),
            (
                "propensity_of",
                Some(IdedExpr {
                    expr: Expr::Ident(t), ..
                }),
            ) if t == "predict" => self.propensity_of(call, id),
            ("count" | "propensity_of", _) => self.call_error(
                id,
                &call.func_name,
                format!("`{}` is called the wrong way", call.func_name),
                Some(r#"write `count("event_name", "14d")` and `predict.propensity_of("event_name")`"#),
            ),
            (name, _) if is_operator(name) || is_stdlib_function(name) => {
                target.into_iter().for_each(|t| self.walk(t));
                call.args.iter().for_each(|a| self.walk(a));
            }
            (name, Some(t))
                if qualified_name(t).is_some_and(|q| is_stdlib_function(&format!("{q}.{name}"))) =>
            {
                call.args.iter().for_each(|a| self.walk(a));
            }
            (name, _) => {
                self.call_error(
                    id,
                    name,
                    format!("unknown function `{name}` in condition"),
                    Some(
                        r#"conditions can call the CEL standard library, `count("event", "14d")` and `predict.propensity_of("event")`"#,
                    ),
                );
                target.into_iter().for_each(|t| self.walk(t));
                call.args.iter().for_each(|a| self.walk(a));
            }
        }
    }

    fn count(&mut self, call: &CallExpr, id: u64) {
        let hint = Some(r#"e.g. `count("session_started", "14d") >= 1`: both arguments are string literals"#);
        let (Some(event), Some(window), 2) = (
            call.args.first().and_then(string_literal),
            call.args.get(1).and_then(string_literal),
            call.args.len(),
        ) else {
            return self.call_error(
                id,
                "count",
                "count() takes an event name and a window, both quoted".to_string(),
                hint,
            );
        };
        if event.is_empty() {
            return self.error(call.args[0].id, "count() needs an event name".to_string(), hint);
        }
        match parse_duration(&window) {
            Ok(duration) => {
                let used = CountUse {
                    event,
                    window: duration,
                    window_text: window,
                };
                if !self.counts.contains(&used) {
                    self.counts.push(used);
                }
            }
            Err(message) => self.error(
                call.args[1].id,
                message,
                Some("windows are durations: 30s 15m 2h 3d 1w"),
            ),
        }
    }

    fn propensity_of(&mut self, call: &CallExpr, id: u64) {
        match (call.args.first().and_then(string_literal), call.args.len()) {
            (Some(event), 1) if !event.is_empty() => {
                if !self.propensities.contains(&event) {
                    self.propensities.push(event);
                }
            }
            _ => self.call_error(
                id,
                "propensity_of",
                "propensity_of() takes one quoted goal event name".to_string(),
                Some(r#"e.g. `predict.propensity_of("order_completed") > 0.3`"#),
            ),
        }
    }

    /// An error about a call: CEL places a call at its `(`; point at the function name before it.
    fn call_error(&mut self, id: u64, name: &str, message: String, hint: Option<&str>) {
        let paren = self.info.offset_for(id).map_or(0, |(a, _)| a as usize);
        let before = self.source.get(..paren).unwrap_or_default().trim_end();
        match before.strip_suffix(name) {
            Some(rest) => self.error_span(rest.len(), rest.len() + name.len() - 1, message, hint),
            None => self.error(id, message, hint),
        }
    }

    fn error(&mut self, id: u64, message: String, hint: Option<&str>) {
        // CEL records byte offsets of the node's first and last token, both inclusive.
        let (start, stop) = self
            .info
            .offset_for(id)
            .map(|(a, b)| (a as usize, b as usize))
            .unwrap_or((0, 0));
        self.error_span(start, stop, message, hint);
    }

    fn error_span(&mut self, start: usize, stop: usize, message: String, hint: Option<&str>) {
        let offset = self
            .source
            .get(..start)
            .map_or(0, |before| before.chars().count());
        let snippet = (start..=stop.max(start))
            .rev()
            .find_map(|end| self.source.get(start..=end))
            .unwrap_or_default()
            .to_string();
        self.errors.push(ConditionError {
            offset,
            message,
            snippet,
            hint: hint.map(str::to_string),
        });
    }
}

fn string_literal(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_string()),
        _ => None,
    }
}

/// `a.b.c` spelled by identifiers and field selections, if it is one.
fn qualified_name(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(s) if !s.test => Some(format!("{}.{}", qualified_name(&s.operand)?, s.field)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(source: &str, scheduled: bool) -> Vec<ConditionError> {
        check(source, scheduled).err().unwrap_or_default()
    }

    #[test]
    fn accepts_the_documented_forms() {
        for ok in [
            r#"user.traits.plan != "enterprise""#,
            "event.properties.cart_value >= 20",
            r#"count("session_started", "14d") >= 1"#,
            "predict.propensity < 0.8",
            r#"predict.propensity_of("order_completed") > 0.2"#,
            r#"user.traits.tags.exists(t, t == "vip")"#,
            r#"has(user.traits.email) && user.traits.email.endsWith("@example.com")"#,
            r#"size(user.traits.tags) > 0 && now > timestamp("2024-01-01T00:00:00Z")"#,
            r#"[1, 2].map(x, x * 2).all(y, y > 0) && {"a": 1}["a"] == 1 && !false"#,
        ] {
            assert!(check(ok, false).is_ok(), "{ok}: {:?}", errors(ok, false));
        }
    }

    #[test]
    fn extracts_counts_once() {
        let c = check(
            r#"count("a", "14d") >= 1 && count("a", "14d") < 5 && count("b", "1w") == 0"#,
            true,
        )
        .expect("compiles");
        let uses: Vec<_> = c
            .counts
            .iter()
            .map(|u| (u.event.as_str(), u.window_text.as_str()))
            .collect();
        assert_eq!(uses, [("a", "14d"), ("b", "1w")]);
    }

    #[test]
    fn reports_unknown_names_where_they_are() {
        let e = errors(r#"usr.traits.plan == "x""#, false);
        assert_eq!((e[0].offset, e[0].snippet.as_str()), (0, "usr"));
        assert!(e[0].message.contains("unknown identifier `usr`"));
        let e = errors("user.a == 1 && frobnicate(user)", false);
        assert_eq!(e[0].offset, 15);
        assert!(e[0].message.contains("unknown function `frobnicate`"));
    }

    #[test]
    fn refuses_event_in_scheduled_campaigns() {
        let e = errors("user.a == 1 || event.x == 2", true);
        assert_eq!(e[0].offset, 15);
        assert!(check("user.a == 1 || event.x == 2", false).is_ok());
    }

    #[test]
    fn checks_count_arguments() {
        assert!(
            errors(r#"count(user.x, "14d") > 1"#, false)[0]
                .message
                .contains("count() takes")
        );
        let e = errors(r#"count("a", "14 days") > 1"#, false);
        assert_eq!(e[0].offset, 11);
        assert!(e[0].message.contains("invalid duration"));
        assert!(
            errors(r#"propensity_of("a") > 1.0"#, false)[0]
                .message
                .contains("wrong way")
        );
    }

    #[test]
    fn syntax_errors_have_an_offset() {
        let e = errors("user.a == ", false);
        assert!(e[0].message.starts_with("CEL syntax error"), "{e:?}");
        assert_eq!(e[0].offset, 10);
    }

    #[test]
    fn offsets_count_characters() {
        let e = errors(r#"user.name == "é" && nope"#, false);
        assert_eq!(e[0].offset, 20);
    }
}
