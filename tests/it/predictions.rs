//! The models in production: trained on a simulated history by the same run `nudge train` and the
//! daemon use, promoted, loaded by the engine, and used by a campaign with
//! `predict.propensity < 0.8`, `choose: predicted` and `send_time: predicted`; the message log,
//! `GET /v1/users/{id}/predictions` and `GET /v1/models` say which model version answered and
//! the decision path behind it, and a user without history gets the labelled fallbacks.

use std::{net::SocketAddr, sync::Arc};

use chrono::{Duration, Timelike};
use nudge::{
    events::IncomingEvent,
    http::{AppState, router},
    ml::{
        models::TrainOptions,
        simulate::{SimulateOptions, simulate},
        training,
    },
};
use serde_json::{Value, json};

use crate::{
    both_backends,
    util::{self, TestDb, t},
};

const GLOBAL: &str = "control_group: 0%\ntimezone: UTC\nquiet_hours: { from: \"22:00\", to: \"07:00\" }\n";

const CAMPAIGN: &str = r#"
campaign: cart_nudge
name: Cart nudge
when:
  event: cart_updated
reentry: always
if:
  - predict.propensity < 0.8
then:
  channels: [email, push]
  choose: predicted
  send_time: predicted
  within: 24h
  email:
    subject: "Your cart"
    body: "Hello {{ user.id }}"
  push:
    title: "Your cart"
    body: "Still there"
holdout: 0%
goal:
  event: order_completed
  within: 7d
"#;

const TIMING: &str = r#"
campaign: cart_timing
name: Cart timing test
when:
  event: checkout_started
reentry: always
send_time_test: 50%
send_time_fixed: "09:00"
then:
  channels: [email, push]
  send_time: predicted
  within: 48h
  email:
    subject: "Checkout"
    body: "Hello {{ user.id }}"
  push:
    title: "Checkout"
    body: "Finish it"
holdout: 0%
goal:
  event: order_completed
  within: 3d
"#;

fn detail_of(log: &[(String, String)], kind: &str) -> Value {
    let (_, detail) = log
        .iter()
        .rev()
        .find(|(k, _)| k == kind)
        .unwrap_or_else(|| panic!("no {kind} entry in {log:?}"));
    serde_json::from_str(detail).unwrap()
}

both_backends!(
    trained_models_serve_decisions_and_explain_them,
    |db: TestDb| async move {
        nudge::delivery::install_crypto_provider();
        let (dir, rules) = util::rules_dir(&[
            ("_global.yaml", GLOBAL),
            ("cart_nudge.yaml", CAMPAIGN),
            ("cart_timing.yaml", TIMING),
        ]);
        let start = t("2026-03-02T00:00:00Z");
        let days = 35;
        let now = start + Duration::days(days) + Duration::hours(10);
        let (engine, _clock) = util::engine(&db.store, rules, now).await;
        let world = SimulateOptions::new(2_000, days as u32, 11, start);
        let truth = simulate(&engine, &world).await.unwrap();

        let opts = TrainOptions {
            min_rows: 200,
            ..TrainOptions::default()
        };
        let rules = engine.rules.current();
        let outcomes = training::run(&db.store, &rules, None, now, "test-node", &opts, &|_| {})
            .await
            .unwrap();
        let summary: Vec<(String, String, String)> = outcomes
            .iter()
            .map(|o| (o.version.clone(), o.status.clone(), o.reason.clone()))
            .collect();
        eprintln!("training: {summary:#?}");
        let versions: Vec<&str> = outcomes.iter().map(|o| o.version.as_str()).collect();
        assert_eq!(
            versions,
            ["send_time-v1", "channel-v1", "propensity.order_completed-v1"]
        );
        assert!(
            outcomes.iter().all(|o| o.status == "serving"),
            "a first model that beats its baseline is promoted: {summary:#?}"
        );
        engine.predictor.reload(&db.store, &rules, now).await.unwrap();

        // A user with history triggers the campaign.
        let user = truth
            .users
            .iter()
            .find(|u| u.email_consent && u.push_consent)
            .expect("a user reachable on both channels");
        let trigger = IncomingEvent::track(&user.user_id, "cart_updated", json!({"cart_value": 30}), now);
        engine.ingest(&[trigger]).await.unwrap();
        engine.run_until_idle().await.unwrap();
        let log = db.store.log_entries(&user.user_id).await.unwrap();
        let d = detail_of(&log, "scheduled");
        let propensity = &d["predictions"]["propensity_of(order_completed)"];
        assert_eq!(
            propensity["source"], "model:propensity.order_completed-v1",
            "{d:#}"
        );
        assert!(propensity["probability"].as_f64().unwrap() < 0.8);
        assert!(!propensity["path"].as_array().unwrap().is_empty(), "{d:#}");
        // The additive part says which columns moved the score, largest first.
        let terms = propensity["terms"]
            .as_array()
            .unwrap_or_else(|| panic!("no terms: {d:#}"));
        assert!(!terms.is_empty() && terms.len() <= 5, "{d:#}");
        let sizes: Vec<f64> = terms
            .iter()
            .map(|t| t["log_odds"].as_f64().unwrap().abs())
            .collect();
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{d:#}");
        assert!(
            terms
                .iter()
                .all(|t| nudge::ml::features::PROPENSITY_COLUMNS.contains(&t["feature"].as_str().unwrap()))
        );
        assert_eq!(d["send_time"]["source"], "model:send_time-v1", "{d:#}");
        assert_eq!(d["send_time"]["arm"], "predicted");
        assert!(!d["send_time"]["path"].as_array().unwrap().is_empty(), "{d:#}");
        assert_eq!(d["channel_source"], "model:channel-v1", "{d:#}");
        assert!(d["channel_scores"]["email"].is_number() && d["channel_scores"]["push"].is_number());
        // The chosen slot: inside the window, outside quiet hours, at the chosen local hour.
        let send_at: chrono::DateTime<chrono::Utc> = d["send_at"].as_str().unwrap().parse().unwrap();
        assert!(
            send_at >= now && send_at <= now + Duration::hours(24),
            "{send_at}"
        );
        let tz: chrono_tz::Tz = user.timezone.parse().unwrap();
        let local = send_at.with_timezone(&tz);
        assert!((7..22).contains(&local.hour()), "{local} is in quiet hours");
        let hour = d["send_time"]["hour_of_week"].as_u64().unwrap() as usize;
        assert_eq!(
            nudge::ml::features::hour_of_week(send_at.timestamp_millis(), tz),
            hour
        );
        let arms = db.store.send_time_arms().await.unwrap();
        assert_eq!(arms, [("predicted".to_string(), 1)]);

        // A user with no history: the population's best hour and the base rate, labelled.
        let cold = IncomingEvent::identify(
            "newcomer",
            json!({"email": "new@example.test", "email_consent": true, "timezone": "Europe/Berlin"}),
            now,
        );
        engine.ingest(&[cold]).await.unwrap();
        engine
            .ingest(&[IncomingEvent::track("newcomer", "cart_updated", json!({}), now)])
            .await
            .unwrap();
        engine.run_until_idle().await.unwrap();
        let d = detail_of(&db.store.log_entries("newcomer").await.unwrap(), "scheduled");
        // Its own trigger event is history: the engine scores it with the model like anyone.
        // What matters for a cold start is that an answer exists and says where it came from.
        let src = d["send_time"]["source"].as_str().unwrap();
        assert!(
            src.starts_with("model:send_time-v1") || src.starts_with("fallback: population best hour"),
            "{d:#}"
        );

        // The same answers over HTTP.
        let state = AppState {
            engine: engine.clone(),
            write_keys: Arc::new(Vec::new()),
            admin_key: None,
            metrics: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await });
        let get = |path: String| async move {
            reqwest::get(format!("http://{addr}{path}"))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        };
        let p = get(format!("/v1/users/{}/predictions", user.user_id)).await;
        assert_eq!(p["send_time"]["source"], "model:send_time-v1", "{p:#}");
        assert!(p["send_time"]["local_time"].is_string());
        assert_eq!(p["channel"]["source"], "model:channel-v1");
        assert!(p["channel"]["scores"]["email"].is_number());
        assert!(p["propensity"]["order_completed"].is_number());
        assert_eq!(p["has_history"], true);

        // Someone never seen: 404. Someone with traits but no events: every answer a fallback.
        let missing = reqwest::get(format!("http://{addr}/v1/users/nobody/predictions"))
            .await
            .unwrap();
        assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
        engine
            .ingest_history(&[IncomingEvent::identify(
                "silent",
                json!({"email": "s@example.test", "email_consent": true}),
                now,
            )])
            .await
            .unwrap();
        let p = get("/v1/users/silent/predictions".into()).await;
        assert_eq!(p["has_history"], false, "{p:#}");
        assert!(
            p["send_time"]["source"]
                .as_str()
                .unwrap()
                .starts_with("fallback: population best hour"),
            "{p:#}"
        );
        assert!(
            p["propensity_detail"]["order_completed"]["source"]
                .as_str()
                .unwrap()
                .starts_with("fallback: base rate"),
            "{p:#}"
        );
        let card = outcomes[2].card.as_ref().unwrap();
        let base_rate = card.positives as f64 / card.train_rows as f64;
        let served = p["propensity"]["order_completed"].as_f64().unwrap();
        assert!(
            (served - base_rate).abs() < 1e-12,
            "{served} vs the training base rate {base_rate}"
        );

        let models = get("/v1/models".into()).await;
        let list = models["models"].as_array().unwrap();
        assert_eq!(list.len(), 3, "{models:#}");
        assert!(
            list.iter()
                .all(|m| m["status"] == "serving" && m["card"]["metrics"]["auc"].is_number())
        );

        // The send-time test: a stable half of the users get the fixed 09:00, the others the
        // model's hour; the lift report compares the two arms' conversion and engagement.
        // (Not the user above, so each tester's only scheduled message is this campaign's.)
        let testers: Vec<&str> = truth
            .users
            .iter()
            .map(|u| u.user_id.as_str())
            .filter(|u| *u != user.user_id)
            .take(120)
            .collect();
        let checkouts: Vec<IncomingEvent> = testers
            .iter()
            .map(|u| IncomingEvent::track(u, "checkout_started", json!({}), now))
            .collect();
        engine.ingest(&checkouts).await.unwrap();
        engine.run_until_idle().await.unwrap();
        let mut arms: std::collections::HashMap<String, Vec<&str>> = Default::default();
        for u in &testers {
            let log = db.store.log_entries(u).await.unwrap();
            let Some((_, detail)) = log.iter().rev().find(|(k, _)| k == "scheduled") else {
                continue; // unreachable users are suppressed
            };
            let d: Value = serde_json::from_str(detail).unwrap();
            let arm = d["send_time"]["arm"].as_str().unwrap().to_string();
            if arm == "fixed" {
                let at: chrono::DateTime<chrono::Utc> = d["send_at"].as_str().unwrap().parse().unwrap();
                let tz: chrono_tz::Tz = truth
                    .users
                    .iter()
                    .find(|x| x.user_id == *u)
                    .unwrap()
                    .timezone
                    .parse()
                    .unwrap();
                assert_eq!(
                    at.with_timezone(&tz).format("%H:%M").to_string(),
                    "09:00",
                    "{d:#}"
                );
            }
            arms.entry(arm).or_default().push(u);
        }
        let (fixed, predicted) = (arms["fixed"].clone(), arms["predicted"].clone());
        let scheduled = fixed.len() + predicted.len();
        assert!(
            (0.3..0.7).contains(&(fixed.len() as f64 / scheduled as f64)),
            "fixed {} of {scheduled}",
            fixed.len()
        );
        let later = now + Duration::hours(30);
        let mut follow_up = Vec::new();
        for u in fixed.iter().take(5).chain(predicted.iter().take(7)) {
            follow_up.push(IncomingEvent::track(u, "order_completed", json!({}), later));
        }
        for u in fixed.iter().take(3) {
            follow_up.push(IncomingEvent::track(u, "email_opened", json!({}), later));
        }
        engine.ingest_history(&follow_up).await.unwrap();
        let reports = nudge::experiments::lift::lift_reports(
            &db.store,
            &rules,
            Some("cart_timing"),
            None,
            later + Duration::hours(1),
            0.95,
        )
        .await
        .unwrap();
        let st = reports[0]
            .send_time_test
            .as_ref()
            .expect("a send-time test section");
        assert_eq!(
            (st.fixed.users, st.predicted.users),
            (fixed.len() as u64, predicted.len() as u64)
        );
        assert_eq!((st.fixed.conversions, st.predicted.conversions), (5, 7));
        assert_eq!(st.fixed.engaged, 3);
        assert_eq!(st.fixed_time, "09:00");
        assert!(st.conversion.p_value > 0.0 && st.conversion.p_value <= 1.0);
        let table = nudge::experiments::report::render(&reports, "table".parse().unwrap());
        assert!(table.contains("send time predicted vs fixed 09:00"), "{table}");

        // dry-run over the same moment decides as serve did: the models in service, scored on
        // each user's history as it stood then, pick the same send times and channels.
        let decided = |log: &[(String, String)]| {
            let (_, detail) = log.iter().rev().find(|(k, _)| k == "scheduled")?;
            let d: Value = serde_json::from_str(detail).unwrap();
            let at: chrono::DateTime<chrono::Utc> = d["send_at"].as_str()?.parse().ok()?;
            Some((d["channel"].as_str()?.to_string(), at))
        };
        let mut served = std::collections::BTreeMap::new();
        for u in &testers {
            if let Some(choice) = decided(&db.store.log_entries(u).await.unwrap()) {
                served.insert(u.to_string(), choice);
            }
        }
        let report = nudge::cli::replay(
            &db.store,
            util::load(dir.path()),
            now,
            now + Duration::hours(1),
            500,
        )
        .await
        .unwrap();
        let replayed: std::collections::BTreeMap<String, (String, chrono::DateTime<chrono::Utc>)> = report
            .campaigns["cart_timing"]
            .sample
            .iter()
            .map(|(user, channel, at)| (user.clone(), (channel.clone(), *at)))
            .collect();
        assert_eq!(replayed.len(), served.len());
        let differ: Vec<_> = served
            .iter()
            .filter(|(u, choice)| replayed.get(*u) != Some(choice))
            .map(|(u, choice)| (u, choice, replayed.get(u)))
            .collect();
        assert!(differ.is_empty(), "dry-run decided otherwise: {differ:#?}");

        // A second run records new versions; the report shows all of them.
        let again = training::run(&db.store, &rules, None, now, "test-node", &opts, &|_| {})
            .await
            .unwrap();
        assert!(again.iter().all(|o| o.version.ends_with("-v2")));
        let html = nudge::ml::report::models_report(&db.store, now, "html")
            .await
            .unwrap();
        assert!(html.contains("send_time-v2") && html.contains("send_time-v1") && html.contains("<svg"));
        let table = nudge::ml::report::models_report(&db.store, now, "table")
            .await
            .unwrap();
        assert!(table.contains("propensity.order_completed-v2"), "{table}");
        db.cleanup().await;
    }
);

both_backends!(
    scheduled_training_runs_on_one_node_per_firing,
    |db: TestDb| async move {
        let (_dir, rules) = util::rules_dir(&[("_global.yaml", GLOBAL), ("cart_nudge.yaml", CAMPAIGN)]);
        let now = t("2026-04-07T03:00:00.250Z");
        let (a, _) = util::engine(&db.store, rules, now).await;
        let (_dir2, rules2) = util::rules_dir(&[("_global.yaml", GLOBAL), ("cart_nudge.yaml", CAMPAIGN)]);
        let (b, _) = util::engine(&db.store, rules2, now).await;
        let due = t("2026-04-07T03:00:00Z");
        // Both nodes fire at once; one firing row, one training run.
        tokio::join!(training::scheduled_run(&a, due), training::scheduled_run(&b, due));
        let runs = db.store.model_history().await.unwrap();
        let versions: Vec<String> = runs
            .iter()
            .map(|r| nudge::ml::serving::version_label(&r.kind, &r.goal, r.version))
            .collect();
        assert_eq!(
            versions,
            ["channel-v1", "propensity.order_completed-v1", "send_time-v1"],
            "exactly one node trained"
        );
        // Nothing to learn from: recorded as insufficient, and the fallbacks serve.
        assert!(
            runs.iter()
                .all(|r| r.status == "insufficient" && r.reason.contains("fallback"))
        );
        assert!(!a.predictor.any_model());
        // The next night is a new firing.
        training::scheduled_run(&b, due + Duration::days(1)).await;
        assert_eq!(db.store.model_history().await.unwrap().len(), 6);
        db.cleanup().await;
    }
);
