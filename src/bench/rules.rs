//! Stage 2, rule evaluation: 20 campaigns × 3 CEL conditions over in-memory users on one core, vs
//! the same conditions written as plain Rust closures. The criterion bench (`benches/throughput.rs`)
//! measures the same [`conditions`] against the same [`closures`].

use std::{collections::HashMap, hint::black_box, sync::Arc, time::Instant};

use chrono::Utc;
use serde_json::{Value, json};

use super::{Ctx, StageResult};
use crate::{
    engine::conditions::{self, EvalInput, Verdict},
    rules::Condition,
    store::UserHistory,
};

const CAMPAIGNS: usize = 20;
const USERS: usize = 1_000;

pub(super) fn run(ctx: &Ctx) -> anyhow::Result<Vec<StageResult>> {
    let campaigns = conditions()?;
    let users: Vec<Value> = (0..USERS)
        .map(|i| {
            let plan = ["free", "pro", "enterprise_3"][i % 3];
            json!({"id": format!("u{i}"), "traits": {"plan": plan, "country": "DE"}})
        })
        .collect();
    let event = json!({"name": "cart_updated", "properties": {"cart_value": 42.5}});
    let predict = json!({"propensity": 0.2});
    let propensities = Arc::new(HashMap::new());
    let histories: Vec<UserHistory> = (0..USERS)
        .map(|i| {
            let mut h = UserHistory::default();
            h.counts
                .insert(("session_started".into(), "14d".into()), (i % 3) as i64);
            h
        })
        .collect();
    let now = Utc::now();
    let seconds = ctx.sizes.rules_seconds;

    // CEL, through the engine's own evaluation path: one scope (CEL context) per user, shared by
    // the 20 campaigns; then a fresh scope per campaign, as one decision of the engine builds.
    let mut cel = [0.0; 2];
    let mut passed = 0usize;
    for (mode, rate) in cel.iter_mut().enumerate() {
        let mut evaluations = 0u64;
        let started = Instant::now();
        while started.elapsed().as_secs_f64() < seconds {
            for (user, history) in users.iter().zip(&histories) {
                let input = EvalInput {
                    user,
                    event: &event,
                    now,
                    history,
                    predict: &predict,
                    propensities: &propensities,
                };
                let shared = conditions::Scope::new(&input);
                for conds in &campaigns {
                    let verdict = if mode == 0 {
                        shared.all_hold(conds)
                    } else {
                        conditions::Scope::new(&input).all_hold(conds)
                    };
                    if matches!(verdict, Verdict::Pass(_)) {
                        passed += 1;
                    }
                }
            }
            evaluations += (USERS * CAMPAIGNS * 3) as u64;
        }
        *rate = evaluations as f64 / started.elapsed().as_secs_f64();
    }
    black_box(passed);

    // Reference: the same conditions as closures over the same values.
    let native = closures();
    let (mut evaluations, mut passed_native) = (0u64, 0usize);
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        for (user, history) in users.iter().zip(&histories) {
            for conds in &native {
                if conds.iter().all(|f| f(black_box(user), &event, history)) {
                    passed_native += 1;
                }
            }
        }
        evaluations += (USERS * CAMPAIGNS * 3) as u64;
    }
    let reference = evaluations as f64 / started.elapsed().as_secs_f64();
    black_box(passed_native);

    let goal = "≥ 1,000,000/s/core and ratio ≥ 0.2";
    let reference_is = "the same 60 conditions as plain Rust closures over the same values";
    let shared = StageResult::new("rules", "condition evaluations/s/core", reference_is, goal)
        .throughput(cel[0], Some(reference))
        .note(format!(
            "{CAMPAIGNS} campaigns × 3 conditions over {USERS} users, one CEL context per user, one thread, {seconds:.0} s each"
        ));
    let per_decision = StageResult::new(
        "rules_per_decision",
        "condition evaluations/s/core",
        reference_is,
        goal,
    )
    .throughput(cel[1], Some(reference))
    .note("the same, with a fresh CEL context per campaign (what one engine decision builds)");
    let met = |r: &StageResult, rate: f64| rate >= 1_000_000.0 && r.ratio.is_some_and(|x| x >= 0.2);
    let (m0, m1) = (met(&shared, cel[0]), met(&per_decision, cel[1]));
    Ok(vec![shared.met(m0), per_decision.met(m1)])
}

/// A condition written as a Rust closure over (user, event, history): the stage's reference.
pub type Native = Box<dyn Fn(&Value, &Value, &UserHistory) -> bool>;

/// 20 campaigns of 3 conditions: a trait, an event property and a `count()` of the history.
pub fn conditions() -> anyhow::Result<Vec<Vec<Condition>>> {
    (0..CAMPAIGNS)
        .map(|i| {
            [
                format!(r#"user.traits.plan != "enterprise_{i}""#),
                format!("event.properties.cart_value >= {}", i + 1),
                r#"count("session_started", "14d") >= 1"#.to_string(),
            ]
            .into_iter()
            .map(|src| {
                Ok(Condition {
                    program: Arc::new(
                        cel::Program::compile(&src).map_err(|e| anyhow::anyhow!("{src}: {e}"))?,
                    ),
                    source: src,
                    location: "bench.yaml:1:1".into(),
                    propensity_of: Vec::new(),
                    uses_propensity: false,
                })
            })
            .collect()
        })
        .collect()
}

/// The same 60 conditions as [`conditions`], as closures.
pub fn closures() -> Vec<Vec<Native>> {
    (0..CAMPAIGNS)
        .map(|i| {
            let plan = format!("enterprise_{i}");
            let min = (i + 1) as f64;
            vec![
                Box::new(move |u: &Value, _: &Value, _: &UserHistory| {
                    u["traits"]["plan"].as_str() != Some(plan.as_str())
                }) as Native,
                Box::new(move |_: &Value, e: &Value, _: &UserHistory| {
                    e["properties"]["cart_value"].as_f64().unwrap_or(0.0) >= min
                }),
                Box::new(|_: &Value, _: &Value, h: &UserHistory| {
                    h.counts
                        .get(&("session_started".to_string(), "14d".to_string()))
                        .copied()
                        .unwrap_or(0)
                        >= 1
                }),
            ]
        })
        .collect()
}
