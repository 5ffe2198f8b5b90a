//! Promise 10, holdout and control users are never messaged, whatever happens: a property test
//! over generated interleavings of identifies, triggers, `unless` events, clock moves, engine
//! restarts (a new [`Engine`] on the same store), rule edits (`if:`, `wait:`, holdout %, control %)
//! and delivery runs, on SQLite. After every case:
//! - no outbox row, and no send, belongs to an assignment whose arm is not `treatment`, and the
//!   file transports hold exactly the messages recorded as sent (nothing bypassed the outbox);
//! - every recorded arm is the deterministic hash of (campaign, user) under the shares in force
//!   when it was decided — so a user's arm never changes across restarts or edits of other fields,
//!   and the same shares always give the same arm;
//! - frequency caps are never exceeded in any rolling window.
//!
//! Bounded for CI (24 cases); `PROPTEST_CASES=1000 cargo test --test it holdout_property` for
//! a longer run.

use std::{path::Path, sync::Arc};

use chrono::{DateTime, Duration, Utc};
use nudge::{
    clock::{Clock, ManualClock, SharedClock},
    delivery::{Delivery, DeliveryConfig},
    engine::{Engine, EngineConfig},
    events::IncomingEvent,
    experiments::arms,
    rules::{self, RulesHandle},
    store::Store,
    tracking::tokens::Signer,
};
use proptest::prelude::*;
use serde_json::json;
use tokio::sync::Notify;

use crate::util::{Backend, TestDb, t};

const USERS: usize = 10;
const SHARES: [u32; 4] = [0, 30, 50, 90];

#[derive(Debug, Clone)]
enum Op {
    Identify { user: usize, email: bool, push: bool },
    Cart { user: usize, value: u32 },
    SignUp { user: usize },
    Order { user: usize },
    Advance { minutes: i64 },
    Decide,
    Deliver,
    Restart,
    Edit(Edit),
}

#[derive(Debug, Clone, Copy)]
enum Edit {
    Threshold(u32),
    Wait(i64),
    CartHoldout(u32),
    WelcomeHoldout(u32),
    Control(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    let share = prop::sample::select(SHARES.to_vec());
    prop_oneof![
        2 => (user.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(user, email, push)| Op::Identify { user, email, push }),
        6 => (user.clone(), 0u32..60).prop_map(|(user, value)| Op::Cart { user, value }),
        3 => user.clone().prop_map(|user| Op::SignUp { user }),
        1 => user.prop_map(|user| Op::Order { user }),
        3 => (1i64..600).prop_map(|minutes| Op::Advance { minutes }),
        3 => Just(Op::Decide),
        3 => Just(Op::Deliver),
        1 => Just(Op::Restart),
        1 => (0u32..50).prop_map(|v| Op::Edit(Edit::Threshold(v))),
        1 => (0i64..120).prop_map(|m| Op::Edit(Edit::Wait(m))),
        1 => share.clone().prop_map(|p| Op::Edit(Edit::CartHoldout(p))),
        1 => share.clone().prop_map(|p| Op::Edit(Edit::WelcomeHoldout(p))),
        1 => share.prop_map(|p| Op::Edit(Edit::Control(p))),
    ]
}

/// The rule files' editable values.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    threshold: u32,
    wait_minutes: i64,
    cart_holdout: u32,
    welcome_holdout: u32,
    control: u32,
}

fn write_rules(dir: &Path, k: &Knobs) {
    let global = format!(
        "control_group: {}%\ntimezone: UTC\ncaps:\n  - {{ channel: any, max: 3, per: 1d }}\n",
        k.control
    );
    let cart = format!(
        r#"campaign: cart
name: Cart
priority: 50
when:
  event: cart_updated
reentry: always
wait: {}m
unless:
  - event: order_completed
if:
  - event.properties.value >= {}
then:
  channels: [email, push]
  email:
    subject: "Your cart"
    body: "Hi {{{{ user.id }}}}"
  push:
    title: "Your cart"
    body: "It is waiting"
holdout: {}%
caps:
  - {{ channel: email, max: 2, per: 1d }}
"#,
        k.wait_minutes, k.threshold, k.cart_holdout
    );
    let welcome = format!(
        r#"campaign: welcome
name: Welcome
priority: 10
when:
  event: signed_up
reentry: 1h
then:
  channels: [push, email]
  email:
    subject: "Welcome"
    body: "Welcome {{{{ user.id }}}}"
  push:
    title: "Welcome"
    body: "Hello"
holdout: {}%
"#,
        k.welcome_holdout
    );
    std::fs::write(dir.join("_global.yaml"), global).unwrap();
    std::fs::write(dir.join("cart.yaml"), cart).unwrap();
    std::fs::write(dir.join("welcome.yaml"), welcome).unwrap();
}

async fn new_engine(store: &Store, rules: &Arc<RulesHandle>, clock: &ManualClock) -> Arc<Engine> {
    let shared: SharedClock = Arc::new(clock.clone());
    let config = EngineConfig {
        public_url: "http://nudge.test".into(),
        ..EngineConfig::default()
    };
    Arc::new(
        Engine::new(store.clone(), rules.clone(), shared, Signer::new(b"prop"), config)
            .await
            .expect("engine starts"),
    )
}

fn new_delivery(store: &Store, rules: &Arc<RulesHandle>, clock: &ManualClock, outbox: &Path) -> Delivery {
    let shared: SharedClock = Arc::new(clock.clone());
    let config = DeliveryConfig {
        node_id: "prop".into(),
        workers: 1,
        outbox_dir: outbox.to_path_buf(),
        email_from: "shop@example.com".into(),
        message_id_domain: "nudge.test".into(),
        ..DeliveryConfig::default()
    };
    Delivery::new(
        store.clone(),
        rules.clone(),
        shared,
        Arc::new(Notify::new()),
        config,
    )
    .expect("delivery starts")
}

type Assignment = (i64, String, String, String);
/// (user, channel, campaign, at in ms).
type SendRow = (String, String, String, i64);

/// Assignments decided since `after`, as (id, campaign, user, arm).
async fn assignments_since(pool: &sqlx::SqlitePool, after: i64) -> Vec<Assignment> {
    sqlx::query_as("SELECT id, campaign_id, user_id, arm FROM assignments WHERE id > $1 ORDER BY id")
        .bind(after)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Decides everything due, then checks the arm of each new assignment against the hash under the
/// shares in force now (decisions read the current rules, so these are the shares it used).
async fn decide(
    pool: &sqlx::SqlitePool,
    handle: &RulesHandle,
    engine: &Engine,
    seen: &mut i64,
) -> Result<(), TestCaseError> {
    engine.run_until_idle().await.unwrap();
    let rules = handle.current();
    for (id, campaign, user, arm) in assignments_since(pool, *seen).await {
        let expected = arms::assign(&rules.campaigns[&campaign], &rules.global, &engine.salt, &user);
        prop_assert_eq!(&arm, expected.as_str(), "{} for {}", campaign, user);
        *seen = id;
    }
    Ok(())
}

type Stats = std::sync::Mutex<std::collections::BTreeMap<String, i64>>;

async fn run_case(ops: Vec<Op>, stats: &Stats) -> Result<(), TestCaseError> {
    let db = TestDb::new(Backend::Sqlite, "holdout_property").await.unwrap();
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let scratch = db.scratch();
    let rules_dir = scratch.path().join("rules");
    let outbox = scratch.path().join("outbox");
    std::fs::create_dir_all(&rules_dir).unwrap();
    let mut knobs = Knobs {
        threshold: 20,
        wait_minutes: 30,
        cart_holdout: 30,
        welcome_holdout: 50,
        control: 30,
    };
    write_rules(&rules_dir, &knobs);
    let handle = Arc::new(RulesHandle::new(crate::util::load(&rules_dir)));
    let start: DateTime<Utc> = t("2026-03-02T09:00:00Z");
    let clock = ManualClock::new(start);
    let mut engine = new_engine(&db.store, &handle, &clock).await;
    let delivery = new_delivery(&db.store, &handle, &clock, &outbox);
    let user = |i: usize| format!("user-{i}");
    let mut seen = 0;

    // Everyone starts reachable on both channels; `Identify` ops take channels away and back.
    for u in 0..USERS {
        let traits = json!({ "email": format!("{}@example.com", user(u)), "push_token": format!("tok-{u}") });
        engine
            .ingest(&[IncomingEvent::identify(&user(u), traits, start)])
            .await
            .unwrap();
    }
    for op in ops {
        let now = clock.now();
        match op {
            Op::Identify { user: u, email, push } => {
                let mut traits = json!({ "plan": "pro" });
                traits["email"] = if email {
                    json!(format!("{}@example.com", user(u)))
                } else {
                    json!(null)
                };
                traits["push_token"] = if push {
                    json!(format!("tok-{u}"))
                } else {
                    json!(null)
                };
                engine
                    .ingest(&[IncomingEvent::identify(&user(u), traits, now)])
                    .await
                    .unwrap();
            }
            Op::Cart { user: u, value } => {
                let e = IncomingEvent::track(&user(u), "cart_updated", json!({ "value": value }), now);
                engine.ingest(&[e]).await.unwrap();
            }
            Op::SignUp { user: u } => {
                let e = IncomingEvent::track(&user(u), "signed_up", json!({}), now);
                engine.ingest(&[e]).await.unwrap();
            }
            Op::Order { user: u } => {
                let e = IncomingEvent::track(&user(u), "order_completed", json!({}), now);
                engine.ingest(&[e]).await.unwrap();
            }
            Op::Advance { minutes } => clock.advance(Duration::minutes(minutes)),
            Op::Decide => decide(&pool, &handle, &engine, &mut seen).await?,
            Op::Deliver => {
                delivery.run_until_idle().await.unwrap();
            }
            Op::Restart => engine = new_engine(&db.store, &handle, &clock).await,
            Op::Edit(edit) => {
                match edit {
                    Edit::Threshold(v) => knobs.threshold = v,
                    Edit::Wait(m) => knobs.wait_minutes = m,
                    Edit::CartHoldout(p) => knobs.cart_holdout = p,
                    Edit::WelcomeHoldout(p) => knobs.welcome_holdout = p,
                    Edit::Control(p) => knobs.control = p,
                }
                write_rules(&rules_dir, &knobs);
                rules::reload(&rules_dir, &handle).expect("edited rules compile");
            }
        }
    }
    // Let everything pending come due, decide it and send it.
    clock.advance(Duration::days(1));
    decide(&pool, &handle, &engine, &mut seen).await?;
    delivery.run_until_idle().await.unwrap();

    // 1. Nothing reaches a holdout or control user: no outbox row, no send.
    let leaked: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.campaign_id, a.user_id, a.arm FROM outbox o JOIN assignments a ON a.id = o.assignment_id
         WHERE a.arm <> 'treatment'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    prop_assert!(
        leaked.is_empty(),
        "outbox rows for non-treatment arms: {:?}",
        leaked
    );
    let sent_to_non_treatment: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sends s JOIN outbox o ON o.id = s.outbox_id
         JOIN assignments a ON a.id = o.assignment_id WHERE a.arm <> 'treatment'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    prop_assert_eq!(sent_to_non_treatment, 0);
    let orphans: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox o LEFT JOIN assignments a ON a.id = o.assignment_id WHERE a.id IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    prop_assert_eq!(orphans, 0, "every outbox row has its assignment");
    // What the transports hold is exactly what the outbox says was sent.
    let sent: Vec<(String, i64)> =
        sqlx::query_as("SELECT channel, COUNT(*) FROM outbox WHERE status = 'sent' GROUP BY channel")
            .fetch_all(&pool)
            .await
            .unwrap();
    let sent_of = |c: &str| sent.iter().find(|(ch, _)| ch == c).map_or(0, |(_, n)| *n);
    let emails = std::fs::read_dir(outbox.join("email")).map_or(0, |d| d.count()) as i64;
    let pushes = std::fs::read_to_string(outbox.join("push.ndjson")).map_or(0, |s| s.lines().count()) as i64;
    prop_assert_eq!((emails, pushes), (sent_of("email"), sent_of("push")));

    // 2. Arms were checked after every decision run (check_arms); every arm is a function of
    //    (campaign, user, shares): nothing else moved it.
    // 3. Caps: any ≤ 3 per day per user, cart email ≤ 2 per day per user, in every window.
    let sends: Vec<SendRow> =
        sqlx::query_as("SELECT user_id, channel, campaign_id, at FROM sends ORDER BY at")
            .fetch_all(&pool)
            .await
            .unwrap();
    let day = Duration::days(1).num_milliseconds();
    for (u, _, _, at) in &sends {
        let window = |filter: &dyn Fn(&SendRow) -> bool| {
            sends
                .iter()
                .filter(|s| &s.0 == u && s.3 > at - day && s.3 <= *at && filter(s))
                .count()
        };
        let any = window(&|_| true);
        prop_assert!(any <= 3, "{} sends in a day to {}", any, u);
        let cart_email = window(&|s| s.1 == "email" && s.2 == "cart");
        prop_assert!(cart_email <= 2, "{} cart emails in a day to {}", cart_email, u);
    }
    let capped: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM outbox WHERE status = 'capped') + (SELECT COUNT(*) FROM assignments WHERE status = 'capped')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let arms: Vec<(String, i64)> = sqlx::query_as("SELECT arm, COUNT(*) FROM assignments GROUP BY arm")
        .fetch_all(&pool)
        .await
        .unwrap();
    {
        let mut totals = stats.lock().unwrap();
        for (arm, n) in arms {
            *totals.entry(arm).or_insert(0) += n;
        }
        *totals.entry("sends".into()).or_insert(0) += sends.len() as i64;
        *totals.entry("capped".into()).or_insert(0) += capped;
        *totals.entry("cases".into()).or_insert(0) += 1;
    }
    pool.close().await;
    db.cleanup().await;
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

#[test]
fn holdout_and_control_users_are_never_messaged() {
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let stats = Stats::default();
    let result = runner.run(&prop::collection::vec(op(), 5..40), |ops| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_case(ops, &stats))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let totals = stats.into_inner().unwrap();
    println!("holdout property: {totals:?}");
    for arm in ["treatment", "holdout", "control"] {
        assert!(
            totals.get(arm).copied().unwrap_or(0) > 0,
            "no {arm} assignment in any case: {totals:?}"
        );
    }
}
