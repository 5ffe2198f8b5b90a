//! Evaluating a campaign's CEL conditions against one user, without I/O: the history that
//! `count(...)` reads is loaded beforehand (see `Campaign::counts`).

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::{rules::Condition, store::UserHistory};

/// What conditions can see.
pub struct EvalInput<'a> {
    /// `{id, traits}`.
    pub user: &'a Json,
    /// `{name, properties, timestamp}` of the trigger; `{}` for a cron firing.
    pub event: &'a Json,
    pub now: DateTime<Utc>,
    pub history: &'a UserHistory,
    /// `{propensity: f64}` from the ML models, or their fallbacks (no key when the campaign has
    /// no goal; the compiler refuses `predict.propensity` there).
    pub predict: &'a Json,
    /// `predict.propensity_of(goal)` by goal event.
    pub propensities: &'a Arc<HashMap<String, f64>>,
}

/// One condition's outcome, for the message log.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConditionResult {
    pub condition: String,
    pub location: String,
    /// `true`, `false`, or the evaluation error.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every condition held.
    Pass(Vec<ConditionResult>),
    /// The last result is the condition that did not hold (false or an error).
    Fail(Vec<ConditionResult>),
}

/// The stdlib environment, built once: `Context::default()` would rebuild it per evaluation.
fn stdlib() -> Arc<cel::Env> {
    static ENV: std::sync::OnceLock<Arc<cel::Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| Arc::new(cel::Env::stdlib())).clone()
}

fn context<'a>(input: &EvalInput<'_>) -> Result<cel::Context<'a, 'a>, String> {
    let mut ctx = cel::Context::with_env(stdlib());
    ctx.add_variable("user", input.user).map_err(|e| e.to_string())?;
    ctx.add_variable("event", input.event)
        .map_err(|e| e.to_string())?;
    ctx.add_variable("predict", input.predict)
        .map_err(|e| e.to_string())?;
    ctx.add_variable_from_value("now", cel::Value::Timestamp(input.now.fixed_offset()));
    let counts: Arc<HashMap<(String, String), i64>> = Arc::new(input.history.counts.clone());
    ctx.add_function("count", move |event: Arc<String>, window: Arc<String>| -> i64 {
        // Unknown pairs cannot happen: the compiler lists every literal use and the engine loads them.
        counts
            .get(&(event.to_string(), window.to_string()))
            .copied()
            .unwrap_or(0)
    })
    .map_err(|e| e.to_string())?;
    let propensities = input.propensities.clone();
    ctx.add_function("propensity_of", move |goal: Arc<String>| -> f64 {
        // Every goal named in the rules is scored before evaluation (fallbacks included).
        propensities.get(goal.as_str()).copied().unwrap_or(0.0)
    })
    .map_err(|e| e.to_string())?;
    Ok(ctx)
}

/// The CEL context of one (user, trigger) pair, built on first use and shared by every condition
/// evaluated against it: `exclude_if` and `if` of one decision, or several campaigns' conditions
/// for the same user. Building the context (converting user, event and predictions to CEL
/// values, registering `count` and `propensity_of`) costs more than evaluating a condition.
pub struct Scope<'i> {
    input: &'i EvalInput<'i>,
    ctx: std::cell::OnceCell<Result<cel::Context<'static, 'static>, String>>,
}

impl<'i> Scope<'i> {
    pub fn new(input: &'i EvalInput<'i>) -> Scope<'i> {
        Scope {
            input,
            ctx: std::cell::OnceCell::new(),
        }
    }

    fn context(&self) -> &Result<cel::Context<'static, 'static>, String> {
        self.ctx.get_or_init(|| context(self.input))
    }

    /// Evaluates `if:` conditions in order, stopping at the first that does not hold. An error (a
    /// missing trait, a type mismatch) counts as not holding, with the error in the log.
    pub fn all_hold(&self, conditions: &[Condition]) -> Verdict {
        let mut results = Vec::with_capacity(conditions.len());
        if conditions.is_empty() {
            return Verdict::Pass(results);
        }
        let ctx = match self.context() {
            Ok(ctx) => ctx,
            Err(e) => {
                results.push(result(&conditions[0], format!("error: {e}")));
                return Verdict::Fail(results);
            }
        };
        for c in conditions {
            match c.program.execute(ctx) {
                Ok(cel::Value::Bool(true)) => results.push(result(c, "true".into())),
                Ok(cel::Value::Bool(false)) => {
                    results.push(result(c, "false".into()));
                    return Verdict::Fail(results);
                }
                Ok(other) => {
                    results.push(result(c, format!("error: not a bool: {other:?}")));
                    return Verdict::Fail(results);
                }
                Err(e) => {
                    results.push(result(c, format!("error: {e}")));
                    return Verdict::Fail(results);
                }
            }
        }
        Verdict::Pass(results)
    }

    /// Evaluates `exclude_if:`: the first condition that is true excludes the user. A missing key
    /// means the user is not in that segment (not excluded); any other error excludes, erring on
    /// the side of not messaging a sensitive segment.
    pub fn first_exclusion(&self, conditions: &[Condition]) -> Option<ConditionResult> {
        if conditions.is_empty() {
            return None;
        }
        let ctx = match self.context() {
            Ok(ctx) => ctx,
            Err(e) => return Some(result(&conditions[0], format!("error: {e}"))),
        };
        conditions.iter().find_map(|c| match c.program.execute(ctx) {
            Ok(cel::Value::Bool(true)) => Some(result(c, "true".into())),
            Ok(cel::Value::Bool(false)) => None,
            Err(cel::ExecutionError::NoSuchKey(_)) => None,
            Ok(other) => Some(result(c, format!("error: not a bool: {other:?}"))),
            Err(e) => Some(result(c, format!("error: {e}"))),
        })
    }
}

/// [`Scope::all_hold`] in a scope of its own.
pub fn all_hold(conditions: &[Condition], input: &EvalInput<'_>) -> Verdict {
    Scope::new(input).all_hold(conditions)
}

/// [`Scope::first_exclusion`] in a scope of its own.
pub fn first_exclusion(conditions: &[Condition], input: &EvalInput<'_>) -> Option<ConditionResult> {
    Scope::new(input).first_exclusion(conditions)
}

fn result(c: &Condition, value: String) -> ConditionResult {
    ConditionResult {
        condition: c.source.clone(),
        location: c.location.clone(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cond(src: &str) -> Condition {
        Condition {
            source: src.into(),
            program: Arc::new(cel::Program::compile(src).unwrap()),
            location: "t.yaml:1:1".into(),
            propensity_of: Vec::new(),
            uses_propensity: false,
        }
    }

    #[test]
    fn evaluates_traits_properties_counts_and_now() {
        let user = json!({"id": "u1", "traits": {"plan": "pro"}});
        let event = json!({"name": "cart_updated", "properties": {"cart_value": 25.5}});
        let mut history = UserHistory::default();
        history.counts.insert(("session_started".into(), "14d".into()), 2);
        let predict = json!({"propensity": 0.3});
        let propensities = Arc::new(HashMap::from([("order_completed".to_string(), 0.6)]));
        let now: DateTime<Utc> = "2026-01-05T10:00:00Z".parse().unwrap();
        let input = EvalInput {
            user: &user,
            event: &event,
            now,
            history: &history,
            predict: &predict,
            propensities: &propensities,
        };
        let conds = [
            cond(r#"user.traits.plan != "enterprise""#),
            cond("event.properties.cart_value >= 20"),
            cond(r#"count("session_started", "14d") >= 1"#),
            cond("predict.propensity < 0.8"),
            cond(r#"now > timestamp("2026-01-01T00:00:00Z")"#),
            cond(r#"predict.propensity_of("order_completed") > 0.5"#),
        ];
        assert!(matches!(all_hold(&conds, &input), Verdict::Pass(r) if r.len() == 6));
        let below = [cond(r#"predict.propensity_of("order_completed") < 0.5"#)];
        assert!(matches!(all_hold(&below, &input), Verdict::Fail(_)));

        let failing = [
            cond("event.properties.cart_value >= 20"),
            cond(r#"user.traits.missing == "x""#),
        ];
        let Verdict::Fail(r) = all_hold(&failing, &input) else {
            panic!("should fail")
        };
        assert!(r[1].value.starts_with("error:"), "{r:?}");

        assert!(first_exclusion(&[cond("user.traits.bereaved == true")], &input).is_none());
        assert!(first_exclusion(&[cond(r#"user.traits.plan == "pro""#)], &input).is_some());
    }
}
