//! The command line as a marketer or a script uses it: output and exit codes.

use std::{path::Path, process::Command};

fn nudge(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(args)
        .current_dir(cwd)
        .env_remove("NUDGE_DATABASE_URL")
        .env_remove("NUDGE_RULES")
        .output()
        .expect("nudge runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_prints_every_broken_file_with_its_position_and_exits_3() {
    let bad = root().join("tests/fixtures/rules/bad");
    let (code, out, _) = nudge(&["validate", bad.to_str().unwrap()], root());
    assert_eq!(code, 3, "{out}");
    let mut files = 0;
    for entry in std::fs::read_dir(&bad).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "expected") {
            // Each fixture's expected first line: `file:line:column: message`.
            let expected = std::fs::read_to_string(&path).unwrap();
            let first = expected
                .lines()
                .find(|l| !l.starts_with("with:"))
                .unwrap()
                .to_string();
            assert!(out.contains(&first), "missing `{first}` in:\n{out}");
            files += 1;
        }
    }
    assert!(files >= 10, "at least 10 different broken files, found {files}");
    assert!(out.contains("    | "), "offending text is shown");
    assert!(out.contains("= hint: "), "hints are shown");
}

#[test]
fn validate_accepts_the_example_rules() {
    let (code, out, err) = nudge(&["validate", "rules"], root());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("4 campaign(s) valid"), "{out}");
}

#[test]
fn schema_is_the_committed_one() {
    let (code, out, _) = nudge(&["schema"], root());
    assert_eq!(code, 0);
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("rules/nudge.schema.json")).unwrap())
            .unwrap();
    assert_eq!(printed, committed);
}

#[test]
fn import_reports_rejected_lines_and_exits_6() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(
        &file,
        concat!(
            r#"{"type":"identify","userId":"u1","traits":{"email":"u1@example.com"}}"#,
            "\n",
            r#"{"type":"track","userId":"u1","event":"signed_up","timestamp":"2026-01-05T10:00:00Z"}"#,
            "\n",
            r#"{"type":"track","event":"no_user"}"#,
            "\n",
            "not json\n",
        ),
    )
    .unwrap();
    let (code, out, err) = nudge(&["import", file.to_str().unwrap()], dir.path());
    assert_eq!(code, 6, "{out}{err}");
    assert!(out.contains("line 3"), "{out}");
    assert!(out.contains("line 4"), "{out}");
    assert!(dir.path().join("nudge.db").exists());
}

#[test]
fn a_database_that_is_down_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = nudge(
        &["migrate", "--database", "postgres://nobody@127.0.0.1:1/none"],
        dir.path(),
    );
    assert_eq!(code, 4, "{err}");
}

#[test]
fn simulate_train_and_report_models_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = root().join("rules");
    let db = format!("sqlite://{}", dir.path().join("nudge.db").display());
    let common = ["--database", db.as_str(), "--rules", rules.to_str().unwrap()];
    let with =
        |extra: &[&str]| -> Vec<String> { extra.iter().chain(&common).map(|s| s.to_string()).collect() };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        nudge(&refs, dir.path())
    };
    let (code, out, err) = run(with(&["train", "--model", "churn"]));
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains("send_time, channel or propensity"), "{err}");

    // Too little history: every model is recorded as not trained, and the command still succeeds.
    let (code, out, err) = run(with(&["simulate", "--users", "40", "--days", "7", "--seed", "3"]));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(with(&["train"]));
    assert_eq!(code, 0, "{out}{err}");
    for model in ["send_time-v1", "channel-v1", "propensity.order_completed-v1"] {
        assert!(out.contains(model), "{model} missing from:\n{out}");
    }
    assert!(out.contains("insufficient"), "{out}");
    let (code, json, err) = run(with(&["report", "models", "--format", "json"]));
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["users"], 40);
    assert!(
        report["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "insufficient")
    );
    let out_file = dir.path().join("models.html");
    let (code, _, err) = run(with(&[
        "report",
        "models",
        "--format",
        "html",
        "--out",
        out_file.to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(out_file).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("send_time-v1"));
    let (code, _, err) = run(with(&["report", "models", "--format", "pdf"]));
    assert_eq!(code, 5, "{err}");
}
