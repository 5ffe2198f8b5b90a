//! The simulated world written through ingestion, features read back from the store, and the
//! acceptance runs of issue 6 (items 1–3): the send-time, channel and propensity models scored
//! against the simulator's hidden truth.
//!
//! The acceptance world is `--users N --days 60 --seed 7` generated in memory (the same history
//! `simulate` stores). `N` is `NUDGE_ML_USERS`, default [`DEFAULT_USERS`] so the debug test stays
//! within minutes; the 50,000-user figures in `docs/ml.md` come from
//! `NUDGE_ML_USERS=50000 cargo test --release --test it ml::acceptance -- --nocapture --test-threads 1`.

use std::{
    collections::{HashMap, HashSet},
    sync::OnceLock,
    time::Instant,
};

use nudge::{
    clock::to_millis,
    ml::{
        features::{self, ORDER_COMPLETED, Smoothing, UserFeatures, is_engagement},
        metrics::{ece, roc_auc},
        models::{
            self, Goal, History, Model, ModelKind, TrainOptions, Trained, is_cold_start, population_best_hour,
        },
        simulate::{SimulateOptions, Truth, UserTruth, generate, simulate},
        trees::{ForestParams, ProbabilityForest},
    },
    rules::{RuleSet, RulesHandle},
    store::{HistoryEvent, HistoryUser},
};

use crate::{both_backends, util::*};

fn world(users: usize, days: u32) -> SimulateOptions {
    SimulateOptions::new(users, days, 7, t("2026-03-02T00:00:00Z"))
}

both_backends!(
    simulated_history_is_stored_once_and_read_back_point_in_time,
    |db: TestDb| async move {
        let opts = world(30, 14);
        let (engine, _clock) = engine(
            &db.store,
            RulesHandle::new(RuleSet::empty("rules".into())),
            t("2026-03-20T00:00:00Z"),
        )
        .await;
        let truth = simulate(&engine, &opts).await.unwrap();
        assert_eq!(truth.users.len(), 30);
        let stored = db.store.history_events(i64::MAX).await.unwrap();
        let users = db.store.history_users().await.unwrap();
        assert_eq!(users.len(), 30);
        // Every event but the identify calls is a stored track event.
        assert_eq!(stored.len() + 30, truth.events);
        assert!(stored.iter().any(|e| e.name == features::SESSION_STARTED));
        assert!(users.iter().all(|u| u.timezone.is_some()));

        // The in-memory world is the stored one.
        let (generated_truth, generated) = generate(&opts);
        assert_eq!(generated_truth, truth);
        assert_eq!(generated.users, users);
        assert_eq!(generated.events, stored);

        // Same seed again: same event ids, nothing new stored.
        let again = simulate(&engine, &opts).await.unwrap();
        assert_eq!(again, truth);
        assert_eq!(
            db.store.history_events(i64::MAX).await.unwrap().len(),
            stored.len()
        );

        // The store loader and the pure functions agree, and the loader reads nothing at or after T.
        let cutoff = to_millis(t("2026-03-09T00:00:00Z"));
        let (encoder, population, loaded) =
            features::load_features(&db.store, cutoff, ORDER_COMPLETED, Smoothing::default())
                .await
                .unwrap();
        let (population2, computed) = features::features_at(
            &users,
            &stored,
            cutoff,
            ORDER_COMPLETED,
            &encoder,
            Smoothing::default(),
        );
        assert_eq!(population, population2);
        assert_eq!(loaded, computed);
        assert!(
            db.store
                .history_events(cutoff)
                .await
                .unwrap()
                .iter()
                .all(|e| e.ts < cutoff)
        );

        let dir = db.scratch();
        let path = dir.path().join("truth.json");
        truth.write_json(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["users"].as_array().unwrap().len(), 30);
        assert!(json["users"][0]["peak_hours_of_week"].is_array());
        db.cleanup().await;
    }
);

/// The propensity model end to end on a small world: features as of day 21, the label is a goal in
/// the following 7 days; trained on half the users, scored on the other half against the truth.
/// `NUDGE_ML_USERS` makes the world bigger (e.g. 5000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propensity_beats_the_base_rate_on_a_simulated_world() {
    let users: usize = std::env::var("NUDGE_ML_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(800);
    let db = TestDb::new(Backend::Sqlite, "propensity").await.unwrap();
    let opts = world(users, 28);
    let (engine, _clock) = engine(
        &db.store,
        RulesHandle::new(RuleSet::empty("rules".into())),
        t("2026-04-01T00:00:00Z"),
    )
    .await;
    let started = std::time::Instant::now();
    let truth = simulate(&engine, &opts).await.unwrap();
    let simulated = started.elapsed();
    let cutoff = opts.start + chrono::Duration::days(21);
    let (_, _, rows) = features::load_features(
        &db.store,
        to_millis(cutoff),
        ORDER_COMPLETED,
        Smoothing::default(),
    )
    .await
    .unwrap();
    let all = db.store.history_events(i64::MAX).await.unwrap();
    let converted: std::collections::HashSet<&str> = all
        .iter()
        .filter(|e| e.name == ORDER_COMPLETED && e.ts >= to_millis(cutoff))
        .map(|e| e.user_id.as_str())
        .collect();
    let x = ndarray::Array2::from_shape_vec(
        (rows.len(), features::PROPENSITY_COLUMNS.len()),
        rows.iter().flat_map(|r| r.propensity_row()).collect(),
    )
    .unwrap();
    let y: Vec<bool> = rows
        .iter()
        .map(|r| converted.contains(r.user_id.as_str()))
        .collect();
    let true_p: Vec<f64> = rows
        .iter()
        .map(|r| {
            truth
                .users
                .iter()
                .find(|u| u.user_id == r.user_id)
                .unwrap()
                .propensity
        })
        .collect();
    // Even rows train, odd rows evaluate (users are independent draws).
    let (train, test): (Vec<usize>, Vec<usize>) = (0..rows.len()).partition(|i| i % 2 == 0);
    let fit_started = std::time::Instant::now();
    let forest = ProbabilityForest::fit(
        x.select(ndarray::Axis(0), &train).view(),
        &train.iter().map(|&i| y[i]).collect::<Vec<_>>(),
        &ForestParams {
            min_leaf: 10.0,
            max_depth: 5,
            ..ForestParams::default()
        },
    )
    .unwrap();
    let trained = fit_started.elapsed();
    let p = forest.predict_proba(x.select(ndarray::Axis(0), &test).view());
    let yt: Vec<bool> = test.iter().map(|&i| y[i]).collect();
    let pt: Vec<f64> = test.iter().map(|&i| true_p[i]).collect();
    let (auc, auc_truth) = (roc_auc(&p, &yt).unwrap(), roc_auc(&pt, &yt).unwrap());
    println!(
        "{users} users: {} events simulated in {simulated:.1?}, forest trained in {trained:.1?}; \
         base rate {:.3}, AUC {auc:.3} (true probabilities {auc_truth:.3}), ECE {:.3}",
        truth.events,
        forest.base_rate,
        ece(&p, &yt)
    );
    assert!(auc > 0.6, "AUC {auc}");
    assert!(auc > auc_truth - 0.1, "AUC {auc} vs truth {auc_truth}");
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Acceptance (issue 6 items 1–3) against the simulated truth.

/// Users in the acceptance worlds unless `NUDGE_ML_USERS` says otherwise: what fits a few
/// minutes of a debug test on 2 cores (docs/ml.md has the 50,000-user release figures).
const DEFAULT_USERS: usize = 3_000;
/// Users whose chosen hour or channel is scored against the truth, at most (a fixed sample).
const SCORED_USERS: usize = 4_000;
const DAY_MS: i64 = 86_400_000;

fn acceptance_users() -> usize {
    std::env::var("NUDGE_ML_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_USERS)
}

/// A generated world with indexes the checks need.
struct World {
    truth: Truth,
    history: History,
    now: i64,
    /// Each user's events, in time order.
    events: HashMap<String, Vec<usize>>,
    truth_of: HashMap<String, usize>,
}

impl World {
    fn new(opts: &SimulateOptions) -> World {
        let started = Instant::now();
        let (truth, history) = generate(opts);
        let mut events: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in history.events.iter().enumerate() {
            events.entry(e.user_id.clone()).or_default().push(i);
        }
        eprintln!(
            "world: {} users × {} days (seed {}, fixed send hour {:?}, explore {}): {} events generated in {:.1?}",
            opts.users,
            opts.days,
            opts.seed,
            opts.fixed_send_hour,
            opts.explore,
            truth.events,
            started.elapsed()
        );
        let truth_of = truth
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.user_id.clone(), i))
            .collect();
        World {
            now: to_millis(opts.start) + i64::from(opts.days) * DAY_MS,
            truth,
            history,
            events,
            truth_of,
        }
    }

    fn events_of(&self, user: &str) -> Vec<&HistoryEvent> {
        self.events
            .get(user)
            .map(|list| list.iter().map(|&i| &self.history.events[i]).collect())
            .unwrap_or_default()
    }

    fn truth(&self, user: &str) -> &UserTruth {
        &self.truth.users[self.truth_of[user]]
    }

    /// A fixed, evenly spread sample of the users `keep` accepts.
    fn sample(
        &self,
        keep: impl Fn(&HistoryUser, &[&HistoryEvent]) -> bool,
    ) -> Vec<(&HistoryUser, Vec<&HistoryEvent>)> {
        let all: Vec<_> = self
            .history
            .users
            .iter()
            .map(|u| (u, self.events_of(&u.id)))
            .filter(|(u, e)| keep(u, e))
            .collect();
        let step = all.len().div_ceil(SCORED_USERS).max(1);
        all.into_iter().step_by(step).collect()
    }
}

fn acceptance_options(users: usize) -> SimulateOptions {
    world(users, 60)
}

fn acceptance_world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World::new(&acceptance_options(acceptance_users())))
}

fn purchase_goal() -> Goal {
    Goal {
        event: ORDER_COMPLETED.into(),
        within_days: 7,
    }
}

fn train_timed(kind: ModelKind, goal: Option<&Goal>, history: &History, now: i64) -> Trained {
    let started = Instant::now();
    let trained = models::train(
        kind,
        goal,
        history,
        &TrainOptions {
            now,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    let c = &trained.card;
    eprintln!(
        "{kind}: trained in {:.1?} on {} rows ({} positives), {} held out: AUC {:.3} vs {:.3} ({}), \
         log loss {:.4} vs {:.4}, ECE {:.3}, lift quality {:.3}, engagement {:?} vs {:?}; top features {:?}; promote: {:?}",
        started.elapsed(),
        c.train_rows,
        c.positives,
        c.eval_rows,
        c.metrics.auc,
        c.baseline.auc,
        c.baseline_name,
        c.metrics.log_loss,
        c.baseline.log_loss,
        c.metrics.ece,
        c.metrics.lift_quality,
        c.metrics.engagement_rate,
        c.baseline.engagement_rate,
        &c.feature_importance[..4.min(c.feature_importance.len())],
        models::should_promote(c, None),
    );
    trained
}

/// The three models trained once on the acceptance world, shared by the acceptance tests.
fn acceptance_models() -> &'static [Trained; 3] {
    static MODELS: OnceLock<[Trained; 3]> = OnceLock::new();
    MODELS.get_or_init(|| {
        let w = acceptance_world();
        let goal = purchase_goal();
        ModelKind::ALL.map(|kind| train_timed(kind, Some(&goal), &w.history, w.now))
    })
}

fn circular(a: usize, b: usize) -> usize {
    let d = a.abs_diff(b) % 168;
    d.min(168 - d)
}

fn near_true_peak(truth: &UserTruth, hour_of_week: usize) -> bool {
    truth
        .peak_hours_of_week
        .iter()
        .any(|&p| circular(usize::from(p), hour_of_week) <= 1)
}

/// The send-time policy's candidates: 07:00–22:59 local on every day of the week.
fn allowed_hours() -> Vec<usize> {
    (0..7).flat_map(|d| (7..23).map(move |h| d * 24 + h)).collect()
}

fn engagements(events: &[&HistoryEvent]) -> usize {
    events.iter().filter(|e| is_engagement(&e.name)).count()
}

/// Share of users whose chosen hour is within ±1 h of a true peak, and the truth's open
/// probability at the chosen hours against 09:00 local the same day and the population's best hour.
struct SendTimeScore {
    users: usize,
    hit: f64,
    chosen: f64,
    nine: f64,
    population: f64,
    population_hit: f64,
}

fn score_send_time(w: &World, model: &Model, keep: impl Fn(&UserTruth) -> bool) -> SendTimeScore {
    let Model::SendTime(m) = model else {
        panic!("a send-time model")
    };
    let candidates = allowed_hours();
    let sample = w.sample(|u, e| engagements(e) >= 10 && keep(w.truth(&u.id)));
    let (mut hit, mut chosen, mut nine, mut population, mut population_hit) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let population_hour = population_best_hour(&m.space.population, &candidates).unwrap();
    for (user, events) in &sample {
        let truth = w.truth(&user.id);
        let f = m.space.features(user, events, w.now);
        let (h, scored) = m.best_hour(&f, &candidates).unwrap();
        assert!((0.0..=1.0).contains(&scored.probability));
        let channel = truth.best_channel.as_str();
        hit += f64::from(u8::from(near_true_peak(truth, h)));
        chosen += truth.open_probability(channel, h);
        nine += truth.open_probability(channel, h / 24 * 24 + 9);
        population += truth.open_probability(channel, population_hour);
        population_hit += f64::from(u8::from(near_true_peak(truth, population_hour)));
    }
    let n = sample.len() as f64;
    SendTimeScore {
        users: sample.len(),
        hit: hit / n,
        chosen: chosen / n,
        nine: nine / n,
        population: population / n,
        population_hit: population_hit / n,
    }
}

/// Item 1, send time: the chosen hour is within ±1 h of a true peak for at least 70% of users
/// with 10+ engagements, and the truth's open probability at the chosen hours is at least 1.15×
/// that at 09:00 local.
#[test]
fn acceptance_send_time_finds_the_true_peak() {
    let w = acceptance_world();
    let [send_time, ..] = acceptance_models();
    let started = Instant::now();
    let s = score_send_time(w, &send_time.model, |_| true);
    eprintln!(
        "send time: {} users with 10+ engagements scored in {:.1?}: chosen hour within ±1 h of a true peak for {:.1}% \
         (population best hour {:.1}%); truth's open probability at the chosen hours {:.4} vs {:.4} at 09:00 ({:.2}×), \
         {:.4} at the population's best hour",
        s.users,
        started.elapsed(),
        100.0 * s.hit,
        100.0 * s.population_hit,
        s.chosen,
        s.nine,
        s.chosen / s.nine,
        s.population
    );
    assert!(s.users >= 100, "{} users", s.users);
    assert!(s.hit >= 0.70, "±1 h of a true peak for {:.3}", s.hit);
    assert!(
        s.chosen >= 1.15 * s.nine,
        "{:.4} vs {:.4} at 09:00",
        s.chosen,
        s.nine
    );
}

/// Item 1, channel: the chosen channel against the truth's best channel for users with deliveries
/// on both channels.
#[test]
fn acceptance_channel_choice_matches_the_truth() {
    let w = acceptance_world();
    let [_, channel, _] = acceptance_models();
    let Model::Channel(m) = &channel.model else {
        panic!("a channel model")
    };
    let sample = w.sample(|_, events| {
        let mut seen = HashSet::new();
        for e in events.iter().filter(|e| e.name == features::MESSAGE_DELIVERED) {
            seen.insert(e.properties.get("channel").and_then(|c| c.as_str()).unwrap_or(""));
        }
        seen.contains("email") && seen.contains("push")
    });
    let (mut right, mut most_used_right, mut always_email_right) = (0usize, 0usize, 0usize);
    for (user, events) in &sample {
        let truth = w.truth(&user.id);
        let best = usize::from(truth.best_channel == "push");
        let f: UserFeatures = m.space.features(user, events, w.now);
        let (chosen, _) = m.best_channel(&f, &[0, 1]).unwrap();
        right += usize::from(chosen == best);
        let most_used = usize::from(f.channels[1].delivered > f.channels[0].delivered);
        most_used_right += usize::from(most_used == best);
        always_email_right += usize::from(best == 0);
    }
    let n = sample.len() as f64;
    let (accuracy, most_used, always_email) = (
        right as f64 / n,
        most_used_right as f64 / n,
        always_email_right as f64 / n,
    );
    eprintln!(
        "channel: {} users with deliveries on both: model picks the truth's best channel for {:.1}% \
         (most used channel {:.1}%, always email {:.1}%)",
        sample.len(),
        100.0 * accuracy,
        100.0 * most_used,
        100.0 * always_email
    );
    assert!(sample.len() >= 100);
    assert!(accuracy >= CHANNEL_ACCURACY, "accuracy {accuracy:.3}");
    assert!(accuracy > most_used + 0.05 && accuracy > always_email + 0.03);
}

/// What the channel test demands: issue 6's 85%. Most simulated users clearly prefer one
/// channel and 5% are near-indifferent; the Bayes-optimal choice from 60 days of opens is right
/// for about 90% of users with both channels (`scripts/ml_channel_bound.py`, docs/ml.md).
const CHANNEL_ACCURACY: f64 = 0.85;

/// The propensity model's held-out rows rebuilt with the truth beside them: every user known at
/// `T2 = now − 7 days`, features as of `T2`, label = a purchase in `[T2, now)`.
fn propensity_rows(w: &World, model: &Model) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
    let Model::Propensity(m) = model else {
        panic!("a propensity model")
    };
    let at = w.now - 7 * DAY_MS;
    let (mut p, mut truth, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for user in &w.history.users {
        let events = w.events_of(&user.id);
        let known = events.first().is_some_and(|e| e.ts < at)
            || features::created_at_of(&user.traits).is_some_and(|c| c < at);
        if !known {
            continue;
        }
        let f = m.space.features(user, &events, at);
        p.push(m.score(&f).probability);
        truth.push(w.truth(&user.id).propensity);
        y.push(
            events
                .iter()
                .any(|e| e.name == ORDER_COMPLETED && e.ts >= at && e.ts < w.now),
        );
    }
    (p, truth, y)
}

/// Item 1, propensity: held-out ROC AUC within 0.02 of the true probabilities' AUC, ECE < 0.03.
#[test]
fn acceptance_propensity_is_as_good_as_the_truth_allows() {
    propensity_close_to_the_truth(0.02);
}

/// Writes the propensity model's exact training and held-out rows, with each held-out user's
/// true probability, to `$NUDGE_ML_EXPORT/propensity.csv` for `scripts/ml_propensity_reference.py`
/// (scikit-learn models on the same rows: how much of the truth the observable features carry).
#[test]
#[ignore = "writes a CSV for scripts/ml_propensity_reference.py; needs NUDGE_ML_EXPORT"]
fn export_propensity_rows_for_scikit_learn() {
    let dir = std::path::PathBuf::from(std::env::var("NUDGE_ML_EXPORT").expect("NUDGE_ML_EXPORT: a folder"));
    let w = acceptance_world();
    let opts = TrainOptions {
        now: w.now,
        ..TrainOptions::default()
    };
    let (rows, ids) = models::export_propensity_rows(&purchase_goal(), &w.history, &opts);
    let mut out = String::new();
    out.push_str(&format!("{},label,held_out,truth\n", rows.columns.join(",")));
    let width = rows.columns.len();
    let cells = |row: &[f64]| row.iter().map(f64::to_string).collect::<Vec<_>>().join(",");
    for (row, y) in rows.train_x.chunks(width).zip(&rows.train_y) {
        out.push_str(&format!("{},{},0,\n", cells(row), u8::from(*y)));
    }
    for ((row, y), id) in rows.eval_x.chunks(width).zip(&rows.eval_y).zip(&ids) {
        let truth = w.truth(id).propensity;
        out.push_str(&format!("{},{},1,{truth}\n", cells(row), u8::from(*y)));
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("propensity.csv"), out).unwrap();
    eprintln!(
        "wrote {} training and {} held-out rows to {}",
        rows.train_y.len(),
        rows.eval_y.len(),
        dir.join("propensity.csv").display()
    );
}

/// Fits propensity forests of several shapes on the propensity model's own rows (the ones the
/// test above exports) and prints each one's held-out AUC beside the true probabilities': which
/// part of the forest's growing costs AUC on a rare outcome (docs/ml.md, "How the propensity gap
/// was closed").
/// `NUDGE_ML_USERS=50000 cargo test --release --test it propensity_forest_variants -- --ignored --nocapture`
#[test]
#[ignore = "an experiment (minutes at 50,000 users), not a check"]
fn propensity_forest_variants_on_the_exported_rows() {
    let w = acceptance_world();
    let opts = TrainOptions {
        now: w.now,
        ..TrainOptions::default()
    };
    let (rows, ids) = models::export_propensity_rows(&purchase_goal(), &w.history, &opts);
    let width = rows.columns.len();
    let train = ndarray::Array2::from_shape_vec((rows.train_y.len(), width), rows.train_x).unwrap();
    let eval = ndarray::Array2::from_shape_vec((rows.eval_y.len(), width), rows.eval_x).unwrap();
    let (train_y, eval_y) = (rows.train_y, rows.eval_y);
    let truth: Vec<f64> = ids.iter().map(|id| w.truth(id).propensity).collect();
    let auc_truth = roc_auc(&truth, &eval_y).unwrap();
    eprintln!("truth AUC {auc_truth:.4} on {} held-out rows", eval_y.len());
    let current = models::TrainOptions::propensity_forest();
    // Measured 2026-12-03 (50,000 users, truth 0.7128) with the propensity forest of then (40
    // trees of depth 8, all features; now the default forest, blended with an additive model):
    // 0.6903 (gap 0.0225); without
    // class weights 0.6689 (0.044); a leaf prior of 1 instead of 10, trees grown on 150,000 rows
    // instead of 80,000, linfa's `min_impurity_decrease` at 1e-10, or depth 10 change nothing
    // (0.0224-0.0232). scikit-learn's forest of the same shape, unweighted: 0.7013.
    let variants = [
        ("current", current.clone()),
        (
            "no class weights",
            ForestParams {
                balance_classes: false,
                ..current.clone()
            },
        ),
        (
            "weak leaf prior (1)",
            ForestParams {
                prior_strength: 1.0,
                ..current.clone()
            },
        ),
        (
            "grow on 80% (max 150k rows)",
            ForestParams {
                grow_fraction: 0.8,
                max_grow_rows: 150_000,
                ..current.clone()
            },
        ),
    ];
    for (name, params) in variants {
        let started = Instant::now();
        let forest = ProbabilityForest::fit(train.view(), &train_y, &params).unwrap();
        let p = forest.predict_proba(eval.view());
        let auc = roc_auc(&p, &eval_y).unwrap();
        eprintln!(
            "{name:<32} AUC {auc:.4} gap {:.4} ECE {:.4} ({:.0?})",
            auc_truth - auc,
            ece(&p, &eval_y),
            started.elapsed()
        );
    }
}

fn propensity_close_to_the_truth(max_gap: f64) {
    let w = acceptance_world();
    let [_, _, propensity] = acceptance_models();
    let (p, truth, y) = propensity_rows(w, &propensity.model);
    let (auc, auc_truth) = (roc_auc(&p, &y).unwrap(), roc_auc(&truth, &y).unwrap());
    let calibration = ece(&p, &y);
    let base_rate = y.iter().filter(|&&v| v).count() as f64 / y.len() as f64;
    if let Model::Propensity(m) = &propensity.model {
        eprintln!("propensity blend: {:?}", m.additive.as_ref().map(|a| a.blend));
    }
    eprintln!(
        "propensity: {} held-out users, base rate {base_rate:.4}: AUC {auc:.4} vs {auc_truth:.4} for the true \
         probabilities, ECE {calibration:.4} (card: AUC {:.4}, ECE {:.4})",
        y.len(),
        propensity.card.metrics.auc,
        propensity.card.metrics.ece
    );
    assert!(auc >= auc_truth - max_gap, "AUC {auc} vs truth {auc_truth}");
    assert!(calibration < 0.03, "ECE {calibration}");
    // The card's held-out slice is the same one.
    assert!((propensity.card.metrics.auc - auc).abs() < 0.01);
}

/// Item 3, cold start: a user with no events gets the population's best hour and the base rate.
#[test]
fn acceptance_cold_start_gets_the_fallbacks() {
    let w = acceptance_world();
    let [send_time, channel, propensity] = acceptance_models();
    let nobody = HistoryUser {
        id: "new-user".into(),
        traits: serde_json::Map::new(),
        timezone: None,
    };
    let candidates = allowed_hours();
    let Model::SendTime(st) = &send_time.model else {
        panic!()
    };
    let f = st.space.features(&nobody, &[], w.now);
    assert!(is_cold_start(&f));
    // Exactly the population's shares, up to rounding of (0 + m·p) / (0 + m).
    assert!(
        f.hour_of_week
            .iter()
            .zip(&st.space.population.hour_of_week)
            .all(|(a, b)| (a - b).abs() < 1e-15)
    );
    let (h, _) = st.best_hour(&f, &candidates).unwrap();
    assert_eq!(Some(h), population_best_hour(&st.space.population, &candidates));
    let Model::Propensity(pm) = &propensity.model else {
        panic!()
    };
    let f = pm.space.features(&nobody, &[], w.now);
    let scored = pm.score(&f);
    assert_eq!(scored.probability, pm.forest.forest.base_rate);
    assert!(scored.path.is_empty());
    // The base rate the card measured on the held-out users is close to the training one.
    let held_out_rate = propensity
        .card
        .baseline
        .calibration
        .iter()
        .map(|b| b.observed * b.count as f64)
        .sum::<f64>()
        / propensity.card.eval_rows as f64;
    assert!(
        (scored.probability - held_out_rate).abs() < 0.02,
        "{} vs {held_out_rate}",
        scored.probability
    );
    // A known user is not a cold start, and gets a path.
    let known = &w.history.users[0];
    let f = pm.space.features(known, &w.events_of(&known.id), w.now);
    assert!(!is_cold_start(&f));
    assert!(!pm.score(&f).path.is_empty());
    let Model::Channel(cm) = &channel.model else {
        panic!()
    };
    assert!(cm.score(&f, 0).probability > 0.0);
    eprintln!(
        "cold start: population best hour {h} (hour of week), base rate {:.4}",
        scored.probability
    );
}

/// Item 2, leakage: each purchase handed to a random user (times kept, owners shuffled) leaves
/// nothing to learn, so the same pipeline must score AUC 0.5 ± 0.03 on its held-out slice.
#[test]
fn acceptance_shuffled_goals_give_a_chance_auc() {
    let w = acceptance_world();
    let mut shuffled = w.history.clone();
    let ids: Vec<String> = shuffled.users.iter().map(|u| u.id.clone()).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for e in shuffled.events.iter_mut().filter(|e| e.name == ORDER_COMPLETED) {
        // xorshift: a fixed permutation-free reassignment, independent of everything else.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        e.user_id = ids[(state % ids.len() as u64) as usize].clone();
    }
    let trained = train_timed(ModelKind::Propensity, Some(&purchase_goal()), &shuffled, w.now);
    let auc = trained.card.metrics.auc;
    eprintln!("leakage: shuffled purchases, held-out AUC {auc:.4}");
    assert!((auc - 0.5).abs() <= 0.03, "AUC {auc}");
}

/// Item 2, a 09:00-only history with 5% exploration: the send-time model still finds the true
/// peak (±1 h) for at least 70% of users with a clear peak (a single peak in the truth) and 10+
/// engagements.
#[test]
fn acceptance_nine_oclock_history_still_finds_the_peak() {
    let opts = SimulateOptions {
        fixed_send_hour: Some(9),
        explore: 0.05,
        ..acceptance_options(acceptance_users())
    };
    let w = World::new(&opts);
    let nine = w
        .history
        .events
        .iter()
        .filter(|e| e.name == features::MESSAGE_DELIVERED)
        .filter(|e| {
            let tz = features::parse_tz(w.history.users[w.truth_of[&e.user_id]].timezone.as_deref());
            features::hour_of_week(e.ts, tz) % 24 == 9
        })
        .count() as f64
        / w.history
            .events
            .iter()
            .filter(|e| e.name == features::MESSAGE_DELIVERED)
            .count() as f64;
    let trained = train_timed(ModelKind::SendTime, None, &w.history, w.now);
    let s = score_send_time(&w, &trained.model, |t| t.peaks.len() == 1);
    eprintln!(
        "09:00 world ({:.1}% of messages at 09:xx): {} users with a single peak and 10+ engagements: chosen hour \
         within ±1 h of the true peak for {:.1}% (population best hour {:.1}%); open probability {:.4} vs {:.4} at 09:00 ({:.2}×)",
        100.0 * nine,
        s.users,
        100.0 * s.hit,
        100.0 * s.population_hit,
        s.chosen,
        s.nine,
        s.chosen / s.nine
    );
    assert!(nine > 0.9, "most messages went out at 09:00: {nine}");
    assert!(s.hit >= 0.70, "±1 h of the true peak for {:.3}", s.hit);
}
