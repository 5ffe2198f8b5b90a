//! The training benchmark of issue 6: nudge's send-time model on a large simulated world, and the
//! same rows exported as CSV for scikit-learn (`scripts/ml_bench.py` runs both and prints the
//! comparison). Build with `--release`.
//!
//! ```sh
//! cargo run --release --example ml_bench -- train --users 50000 --days 60 --rows 1000000 --csv target/ml-bench/rows.csv
//! cargo run --release --example ml_bench -- fit --csv target/ml-bench/rows.csv --trees 30 --depth 6
//! ```
//!
//! `train` generates the world in memory (`simulate::generate`), runs the full send-time training
//! (`models::train`: point-in-time rows, forest, baselines, card) with up to `--rows` training rows,
//! and writes those rows (and the held-out ones) to `--csv`. `fit` reads the CSV in a fresh process
//! and fits the forest alone, so its peak memory and time compare with scikit-learn's on the same
//! file; it prints one JSON line: rows, seconds, peak RSS, predictions per second, held-out AUC.

use std::{
    io::{BufRead, BufWriter, Write},
    path::PathBuf,
    time::Instant,
};

use chrono::{TimeZone, Utc};
use ndarray::{Array2, ArrayView1};
use nudge::ml::{
    metrics::roc_auc,
    models::{self, ModelKind, TrainOptions},
    simulate::{SimulateOptions, generate},
    trees::{ForestParams, ProbabilityForest},
};

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("train") => train(&args),
        Some("fit") => fit(&args),
        _ => {
            eprintln!(
                "usage: ml_bench train [--users N --days D --seed S --rows R --csv FILE] | fit --csv FILE [--trees T --depth D]"
            );
            std::process::exit(2);
        }
    }
}

fn train(args: &[String]) {
    let users: usize = arg(args, "--users", 50_000);
    let days: u32 = arg(args, "--days", 60);
    let seed: u64 = arg(args, "--seed", 7);
    let rows: usize = arg(args, "--rows", 1_000_000);
    let csv: PathBuf = arg(args, "--csv", PathBuf::from("target/ml-bench/rows.csv"));
    let start = Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap();
    let t = Instant::now();
    let (_truth, history) = generate(&SimulateOptions::new(users, days, seed, start));
    eprintln!(
        "generated {users} users × {days} days: {} events in {:.1} s",
        history.events.len(),
        t.elapsed().as_secs_f64()
    );
    let opts = TrainOptions {
        now: start.timestamp_millis() + i64::from(days) * 86_400_000,
        max_train_rows: rows,
        ..TrainOptions::default()
    };
    let t = Instant::now();
    let trained = models::train(ModelKind::SendTime, None, &history, &opts).expect("trains");
    let seconds = t.elapsed().as_secs_f64();
    let card = &trained.card;
    println!(
        "{{\"stage\":\"nudge train (send time, full run)\",\"train_rows\":{},\"eval_rows\":{},\"seconds\":{seconds:.2},\"peak_rss_mib\":{:.0},\"auc\":{:.4},\"baseline_auc\":{:.4}}}",
        card.train_rows,
        card.eval_rows,
        peak_rss_mib(),
        card.metrics.auc,
        card.baseline.auc
    );
    let exported = models::export_delivery_rows(ModelKind::SendTime, &history, &opts);
    if let Some(dir) = csv.parent() {
        std::fs::create_dir_all(dir).expect("CSV folder");
    }
    let mut out = BufWriter::new(std::fs::File::create(&csv).expect("CSV file"));
    writeln!(out, "{},label,held_out", exported.columns.join(",")).unwrap();
    let width = exported.columns.len();
    for (x, y, held) in [
        (&exported.train_x, &exported.train_y, 0),
        (&exported.eval_x, &exported.eval_y, 1),
    ] {
        for (row, label) in x.chunks(width).zip(y.iter()) {
            let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            writeln!(out, "{},{},{held}", cells.join(","), u8::from(*label)).unwrap();
        }
    }
    out.flush().unwrap();
    eprintln!(
        "wrote {} training and {} held-out rows to {}",
        exported.train_y.len(),
        exported.eval_y.len(),
        csv.display()
    );
}

fn fit(args: &[String]) {
    let csv: PathBuf = arg(args, "--csv", PathBuf::from("target/ml-bench/rows.csv"));
    let params = ForestParams {
        trees: arg(args, "--trees", ForestParams::default().trees),
        max_depth: arg(args, "--depth", ForestParams::default().max_depth),
        ..ForestParams::default()
    };
    let file = std::io::BufReader::new(std::fs::File::open(&csv).expect("CSV file"));
    let mut lines = file.lines();
    let header = lines.next().expect("header").unwrap();
    let width = header.split(',').count() - 2;
    let (mut train_x, mut train_y, mut eval_x, mut eval_y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for line in lines {
        let line = line.unwrap();
        let cells: Vec<f64> = line.split(',').map(|c| c.parse().expect("number")).collect();
        let (x, y) = if cells[width + 1] == 1.0 {
            (&mut eval_x, &mut eval_y)
        } else {
            (&mut train_x, &mut train_y)
        };
        x.extend_from_slice(&cells[..width]);
        y.push(cells[width] == 1.0);
    }
    let train = Array2::from_shape_vec((train_y.len(), width), train_x).unwrap();
    let loaded_rss = peak_rss_mib();
    let t = Instant::now();
    let forest = ProbabilityForest::fit(train.view(), &train_y, &params).expect("fits");
    let fit_seconds = t.elapsed().as_secs_f64();
    let peak = peak_rss_mib();
    let t = Instant::now();
    let probs: Vec<f64> = eval_x
        .chunks(width)
        .map(|row| forest.predict_one(ArrayView1::from(row)))
        .collect();
    let per_second = probs.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"stage\":\"nudge forest fit\",\"train_rows\":{},\"trees\":{},\"depth\":{},\"fit_seconds\":{fit_seconds:.2},\"peak_rss_mib\":{peak:.0},\"rss_after_load_mib\":{loaded_rss:.0},\"predictions_per_second\":{per_second:.0},\"auc\":{:.4}}}",
        train_y.len(),
        params.trees,
        params.max_depth,
        roc_auc(&probs, &eval_y).unwrap_or(f64::NAN)
    );
}
