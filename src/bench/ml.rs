//! Stage 7, ML: the send-time model's training rows from a simulated world (1,000,000 rows at
//! full size), the forest fitted in a fresh `nudge` process beside scikit-learn's
//! DecisionTree and RandomForest (same depth, trees and features) on the same exported CSV, in the
//! same run: training time, peak memory, predictions/s and AUC on the same held-out rows.
//! scikit-learn comes from PyPI into a venv in the user's cache folder; without Python or network
//! the comparison is skipped with the reason.

use std::{
    io::{BufRead, BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use chrono::{TimeZone, Utc};
use ndarray::{Array2, ArrayView1};
use serde::{Deserialize, Serialize};

use super::{Ctx, StageResult};
use crate::ml::{
    metrics::roc_auc,
    models::{self, ModelKind, TrainOptions},
    simulate::{SimulateOptions, generate},
    trees::{ForestParams, ProbabilityForest},
};

/// The scikit-learn side, run with the venv's Python.
const SKLEARN: &str = include_str!("../../scripts/ml_bench.py");
const SKLEARN_VERSION: &str = "scikit-learn==1.9.1";

/// What one fit reports (nudge's child process and the Python script print the same fields).
#[derive(Debug, Serialize, Deserialize)]
pub struct FitReport {
    pub stage: String,
    pub train_rows: usize,
    pub fit_seconds: f64,
    pub peak_rss_mib: f64,
    pub predictions_per_second: f64,
    pub auc: f64,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<StageResult>> {
    let sizes = ctx.sizes;
    let dir = ctx.folder("ml")?;
    let csv = dir.join("rows.csv");
    let (train_seconds, train_rows, world) = {
        let csv = csv.clone();
        tokio::task::spawn_blocking(move || export(sizes.ml_users, sizes.ml_days, sizes.ml_rows, &csv))
            .await??
    };
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(&exe)
        .args(["bench", "--ml-fit"])
        .arg(&csv)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "the forest fit failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let nudge: FitReport = last_json(&out.stdout)?;
    let params = ForestParams::default();
    let sklearn = match sklearn_python() {
        Err(why) => Err(why),
        Ok(python) => {
            let script = dir.join("ml_bench.py");
            std::fs::write(&script, SKLEARN)?;
            let mut fits = Vec::new();
            for model in ["tree", "forest"] {
                let out = tokio::process::Command::new(&python)
                    .arg(&script)
                    .args([
                        "--trees",
                        &params.trees.to_string(),
                        "--depth",
                        &params.max_depth.to_string(),
                        "--features",
                        &params.feature_fraction.to_string(),
                        "--grow-fraction",
                        &(params.grow_fraction * (1.0 - params.recalibration_fraction)).to_string(),
                        "--max-grow-rows",
                        &params.max_grow_rows.to_string(),
                    ])
                    .arg("--sklearn-child")
                    .arg(&csv)
                    .arg(model)
                    .output()
                    .await?;
                anyhow::ensure!(
                    out.status.success(),
                    "scikit-learn {model} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                fits.push(last_json::<FitReport>(&out.stdout)?);
            }
            Ok(fits)
        }
    };
    let shape = format!(
        "{} training rows ({world}), {} trees of depth {}",
        nudge.train_rows, params.trees, params.max_depth
    );
    let full = format!("full `nudge train` send-time run on {train_rows} rows: {train_seconds:.1} s");
    let time = StageResult::new(
        "ml_fit",
        "s",
        "scikit-learn RandomForest fit, same rows, depth, trees, features",
        "ratio ≥ 0.5",
    );
    let auc = StageResult::new(
        "ml_auc",
        "AUC",
        "scikit-learn RandomForest, same held-out rows",
        "within 0.005",
    );
    let memory = StageResult::new("ml_memory", "MiB", "scikit-learn RandomForest peak RSS", "—");
    let predict = StageResult::new(
        "ml_predict",
        "predictions/s",
        "scikit-learn RandomForest predict_proba, same rows",
        "—",
    );
    Ok(match sklearn {
        Err(why) => vec![
            time.cost(nudge.fit_seconds, None)
                .note(format!("{shape}; {full}"))
                .skip(why.clone()),
            auc.throughput(nudge.auc, None).skip(why.clone()),
            memory.cost(nudge.peak_rss_mib, None).skip(why.clone()),
            predict.throughput(nudge.predictions_per_second, None).skip(why),
        ],
        Ok(fits) => {
            let (tree, forest) = (&fits[0], &fits[1]);
            let t = time
                .cost(nudge.fit_seconds, Some(forest.fit_seconds))
                .note(format!(
                    "{shape}; DecisionTree {:.1} s (AUC {:.4}); {full}",
                    tree.fit_seconds, tree.auc
                ));
            let met = t.ratio.is_some_and(|r| r >= 0.5);
            let a = auc
                .throughput(nudge.auc, Some(forest.auc))
                .note(format!("DecisionTree AUC {:.4}", tree.auc))
                .met((nudge.auc - forest.auc).abs() <= 0.005 || nudge.auc > forest.auc);
            vec![
                t.met(met),
                a,
                memory.cost(nudge.peak_rss_mib, Some(forest.peak_rss_mib)),
                predict.throughput(nudge.predictions_per_second, Some(forest.predictions_per_second)),
            ]
        }
    })
}

/// Generates the world, runs the full send-time training, writes its rows as CSV;
/// (training seconds, training rows, world in words).
fn export(users: usize, days: u32, rows: usize, csv: &Path) -> anyhow::Result<(f64, usize, String)> {
    let start = Utc
        .with_ymd_and_hms(2026, 3, 2, 0, 0, 0)
        .single()
        .expect("a valid date");
    let (_truth, history) = generate(&SimulateOptions::new(users, days, 7, start));
    let world = format!("{users} users × {days} days, {} events", history.events.len());
    let opts = TrainOptions {
        now: start.timestamp_millis() + i64::from(days) * 86_400_000,
        max_train_rows: rows,
        ..TrainOptions::default()
    };
    let t = Instant::now();
    let trained = models::train(ModelKind::SendTime, None, &history, &opts)?;
    let seconds = t.elapsed().as_secs_f64();
    let exported = models::export_delivery_rows(ModelKind::SendTime, &history, &opts);
    let mut out = BufWriter::new(std::fs::File::create(csv)?);
    writeln!(out, "{},label,held_out", exported.columns.join(","))?;
    let width = exported.columns.len();
    for (x, y, held) in [
        (&exported.train_x, &exported.train_y, 0),
        (&exported.eval_x, &exported.eval_y, 1),
    ] {
        for (row, label) in x.chunks(width).zip(y.iter()) {
            let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            writeln!(out, "{},{},{held}", cells.join(","), u8::from(*label))?;
        }
    }
    out.flush()?;
    Ok((seconds, trained.card.train_rows, world))
}

/// `nudge bench --ml-fit FILE`: fits the forest on the CSV's training rows in this (fresh)
/// process and prints a [`FitReport`] as one JSON line.
pub fn fit_csv(csv: &Path) -> anyhow::Result<()> {
    let params = ForestParams::default();
    let file = std::io::BufReader::new(std::fs::File::open(csv)?);
    let mut lines = file.lines();
    let header = lines.next().ok_or_else(|| anyhow::anyhow!("empty CSV"))??;
    let width = header.split(',').count() - 2;
    let (mut train_x, mut train_y, mut eval_x, mut eval_y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for line in lines {
        let line = line?;
        let cells: Vec<f64> = line.split(',').map(str::parse).collect::<Result<_, _>>()?;
        let (x, y) = if cells[width + 1] == 1.0 {
            (&mut eval_x, &mut eval_y)
        } else {
            (&mut train_x, &mut train_y)
        };
        x.extend_from_slice(&cells[..width]);
        y.push(cells[width] == 1.0);
    }
    let train = Array2::from_shape_vec((train_y.len(), width), train_x)?;
    let t = Instant::now();
    let forest = ProbabilityForest::fit(train.view(), &train_y, &params)?;
    let fit_seconds = t.elapsed().as_secs_f64();
    let peak = super::peak_rss_mib("self").unwrap_or(f64::NAN);
    let t = Instant::now();
    let probs: Vec<f64> = eval_x
        .chunks(width)
        .map(|row| forest.predict_one(ArrayView1::from(row)))
        .collect();
    let per_second = probs.len() as f64 / t.elapsed().as_secs_f64();
    let report = FitReport {
        stage: "nudge forest fit".into(),
        train_rows: train_y.len(),
        fit_seconds,
        peak_rss_mib: peak,
        predictions_per_second: per_second,
        auc: roc_auc(&probs, &eval_y).unwrap_or(f64::NAN),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn last_json<T: serde::de::DeserializeOwned>(stdout: &[u8]) -> anyhow::Result<T> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| anyhow::anyhow!("no JSON line in: {text}"))?;
    Ok(serde_json::from_str(line)?)
}

/// A Python with scikit-learn: a venv in the cache folder, made on first use. `Err` says why not.
fn sklearn_python() -> Result<PathBuf, String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("no HOME or XDG_CACHE_HOME for the scikit-learn venv")?;
    let venv = cache.join("nudge").join("bench-venv");
    let python = venv.join("bin").join("python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import sklearn, pandas"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if python.exists() && ready(&python) {
        return Ok(python);
    }
    eprintln!(
        "bench: installing {SKLEARN_VERSION} and pandas into {} (once)",
        venv.display()
    );
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 not found ({e}): scikit-learn reference unavailable"))?;
    if !made.status.success() {
        return Err(format!(
            "`python3 -m venv` failed (on Debian: apt-get install python3-venv): {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "-q", SKLEARN_VERSION, "pandas"])
        .output()
        .map_err(|e| format!("pip did not run: {e}"))?;
    if !pip.status.success() || !ready(&python) {
        return Err(format!(
            "could not install {SKLEARN_VERSION} from PyPI: {}",
            String::from_utf8_lossy(&pip.stderr).trim()
        ));
    }
    Ok(python)
}
