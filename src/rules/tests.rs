//! Whole-folder tests: the example rules, and every bad-input fixture with its expected message.
//!
//! Fixtures live in `tests/fixtures/rules/bad/`: `x.yaml` has exactly one problem and `x.expected`
//! holds the first line `validate` must print for it (`x.yaml:line:column: message`). Further
//! lines `with: y.yaml` name companion files loaded alongside (a duplicate id needs two files).
//! `NUDGE_UPDATE_FIXTURES=1 cargo test --lib rules::tests` rewrites the `.expected` files; review
//! the diff before committing.

use std::path::{Path, PathBuf};

use super::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bad_dir() -> PathBuf {
    repo().join("tests/fixtures/rules/bad")
}

/// `file:line:column: message`, with the folder prefix removed from `file`.
fn first_line(d: &Diagnostic, dir: &Path) -> String {
    let shown = d.to_string();
    let line = shown.lines().next().unwrap_or_default().to_string();
    let prefix = format!("{}/", dir.display());
    line.strip_prefix(&prefix).map(str::to_string).unwrap_or(line)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture templates") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn errors_of(dir: &Path) -> Vec<Diagnostic> {
    match load_dir(dir) {
        Ok(set) => panic!(
            "{} loaded with {} campaigns, expected errors",
            dir.display(),
            set.campaigns.len()
        ),
        Err(diagnostics) => diagnostics,
    }
}

#[test]
fn example_rules_load_without_diagnostics() {
    let report = load_dir_with_warnings(&repo().join("rules"));
    let warnings: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    assert!(warnings.is_empty(), "warnings:\n{}", warnings.join("\n"));
    let set = match report.result {
        Ok(set) => set,
        Err(errors) => {
            panic!(
                "errors:\n{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }
    };
    let ids: Vec<&str> = set.campaigns.keys().map(String::as_str).collect();
    assert_eq!(ids, ["cart_abandonment", "weekly_digest", "welcome", "win_back"]);
    assert_eq!(set.global.control_group, Percent { basis_points: 500 });
    assert_eq!(set.global.caps.len(), 2);

    let cart = &set.campaigns["cart_abandonment"];
    assert_eq!(cart.trigger, Trigger::Event("cart_updated".into()));
    assert_eq!(cart.wait, Some(chrono::Duration::hours(2)));
    assert_eq!(cart.reentry, Reentry::After(chrono::Duration::days(7)));
    assert_eq!(cart.unless, ["order_completed"]);
    assert_eq!(cart.holdout, Percent { basis_points: 1000 });
    assert_eq!(cart.action.channels, [Channel::Email, Channel::Push]);
    let email = cart.action.email.as_ref().expect("email content");
    assert!(email.html);
    assert_eq!(email.body, TemplateRef("cart_abandonment/email_body".into()));
    assert!(set.templates.get_template("cart_abandonment/push_title").is_ok());
    let goal = cart.goal.as_ref().expect("goal");
    assert_eq!(
        (goal.event.as_str(), goal.within, goal.value.as_deref()),
        (
            "order_completed",
            chrono::Duration::days(3),
            Some("properties.revenue")
        )
    );
    assert!(
        cart.conditions[0]
            .location
            .ends_with("cart_abandonment.yaml:12:5"),
        "{}",
        cart.conditions[0].location
    );

    let win_back = &set.campaigns["win_back"];
    let counts: Vec<(&str, &str)> = win_back
        .counts
        .iter()
        .map(|c| (c.event.as_str(), c.window_text.as_str()))
        .collect();
    assert_eq!(counts, [("session_started", "30d"), ("order_completed", "90d")]);
    assert_eq!(win_back.action.send_time, SendTime::Predicted);
    assert_eq!(
        set.campaigns["weekly_digest"].trigger,
        Trigger::Schedule("0 0 9 * * Mon".into())
    );
}

#[test]
fn example_html_templates_escape_user_data() {
    let set = load_dir(&repo().join("rules")).expect("examples load");
    let ctx = minijinja::context! {
        user => minijinja::context! { traits => minijinja::context! { first_name => "<script>" } },
        event => minijinja::context! { properties => minijinja::context! { item_count => 2 } },
        unsubscribe_url => "https://x.example/u/abc",
    };
    let html = set
        .templates
        .get_template("cart_abandonment/email_body")
        .and_then(|t| t.render(&ctx))
        .expect("renders");
    assert!(html.contains("Hi &lt;script&gt;,"), "{html}");
    assert!(
        html.contains("https:&#x2f;&#x2f;x.example&#x2f;u&#x2f;abc")
            || html.contains("https://x.example/u/abc")
    );
}

/// Every `bad/*.expected` with its fixture and companions.
fn fixtures() -> Vec<(String, PathBuf, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(bad_dir()).expect("fixtures folder") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("expected") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read expected");
        let with = text
            .lines()
            .filter_map(|l| l.strip_prefix("with: "))
            .map(str::to_string)
            .collect();
        out.push((name, path, with));
    }
    out.sort();
    out
}

#[test]
fn each_bad_fixture_reports_its_problem_where_it_is() {
    let update = std::env::var_os("NUDGE_UPDATE_FIXTURES").is_some();
    let fixtures = fixtures();
    assert!(fixtures.len() >= 10, "only {} fixtures", fixtures.len());
    let mut failures = Vec::new();
    for (name, expected_path, with) in &fixtures {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = format!("{name}.yaml");
        for f in std::iter::once(&file).chain(with) {
            std::fs::copy(bad_dir().join(f), tmp.path().join(f)).expect("copy fixture");
        }
        copy_dir(&bad_dir().join("templates"), &tmp.path().join("templates"));
        let errors = errors_of(tmp.path());
        let got = first_line(&errors[0], tmp.path());
        let text = std::fs::read_to_string(expected_path).expect("read expected");
        let expected = text.lines().next().unwrap_or_default();
        if update {
            let mut new = format!("{got}\n");
            for w in with {
                new.push_str(&format!("with: {w}\n"));
            }
            std::fs::write(expected_path, new).expect("update expected");
        } else if got != expected || errors.len() != 1 {
            let all: Vec<String> = errors.iter().map(|d| first_line(d, tmp.path())).collect();
            failures.push(format!(
                "{name}:\n  expected: {expected}\n  got:      {}",
                all.join("\n            ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_whole_bad_folder_reports_every_problem_at_once() {
    let dir = bad_dir();
    let errors = errors_of(&dir);
    let got: Vec<String> = errors.iter().map(|d| first_line(d, &dir)).collect();
    let mut expected: Vec<String> = fixtures()
        .iter()
        .map(|(_, path, _)| {
            std::fs::read_to_string(path)
                .expect("read")
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    expected.sort();
    assert_eq!(got, expected, "one error per fixture, sorted by file and line");
}

#[test]
fn bad_global_settings_are_reported() {
    let dir = repo().join("tests/fixtures/rules/bad_global");
    let errors = errors_of(&dir);
    let got: Vec<String> = errors.iter().map(|d| first_line(d, &dir)).collect();
    assert_eq!(got, [r#"_global.yaml:4:35: invalid time of day `8am`"#]);
    assert_eq!(errors[0].snippet.as_deref(), Some("8am"));
}

#[test]
fn a_missing_folder_is_one_diagnostic() {
    let errors = errors_of(Path::new("/nonexistent/rules"));
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string().lines().next(),
        Some("/nonexistent/rules: rules folder not found")
    );
}

#[test]
fn an_empty_folder_is_an_empty_rule_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let set = load_dir(tmp.path()).expect("loads");
    assert!(set.campaigns.is_empty());
    assert_eq!(set.global.timezone, chrono_tz::Tz::UTC);
}

#[test]
fn warnings_are_kept_apart_from_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("hello.yaml"),
        "campaign: hello\nwhen: { event: x }\nholdout: 0%\nthen:\n  channels: [push]\n  push: { title: t, body: b }\n  email: { subject: s, body: b }\n",
    )
    .expect("write");
    let report = load_dir_with_warnings(tmp.path());
    assert!(report.result.is_ok());
    let messages: Vec<String> = report
        .warnings
        .iter()
        .map(|w| first_line(w, tmp.path()))
        .collect();
    assert_eq!(
        messages,
        [
            "hello.yaml:3:10: holdout is 0%: no lift can be measured for this campaign",
            "hello.yaml:7:3: `email:` content is never used: `email` is not in `channels`",
        ]
    );
}

#[test]
fn defaults_apply_when_keys_are_omitted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("d.yaml"),
        "campaign: d\nwhen: { event: x }\nthen:\n  channels: [push]\n  push: { title: t, body: b }\ngoal: { event: y }\n",
    )
    .expect("write");
    let set = load_dir(tmp.path()).expect("loads");
    let c = &set.campaigns["d"];
    assert!(c.enabled);
    assert_eq!(
        (c.priority, c.reentry, c.holdout, c.name.as_str()),
        (0, Reentry::Never, Percent::ZERO, "d")
    );
    assert_eq!(c.action.choose, ChannelChoice::First);
    assert_eq!(c.action.send_time, SendTime::Immediate);
    assert_eq!(c.action.within, chrono::Duration::hours(24));
    assert_eq!(c.goal.as_ref().map(|g| g.within), Some(chrono::Duration::days(3)));
}

#[test]
fn errors_in_several_files_are_all_reported_sorted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ok = "when: { event: x }\nholdout: 10%\nthen:\n  channels: [push]\n  push: { title: t, body: b }\n";
    std::fs::write(
        tmp.path().join("b.yaml"),
        format!("campaign: b\nwait: soon\nreentry: later\n{ok}"),
    )
    .expect("write");
    std::fs::write(
        tmp.path().join("a.yaml"),
        format!("campaign: a\nif: [nope == 1]\n{ok}"),
    )
    .expect("write");
    let got: Vec<String> = errors_of(tmp.path())
        .iter()
        .map(|d| first_line(d, tmp.path()))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with("a.yaml:2:6: unknown identifier `nope`"),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("b.yaml:2:7: invalid duration `soon`"),
        "{got:?}"
    );
    assert!(
        got[2].starts_with("b.yaml:3:10: invalid duration `later`"),
        "{got:?}"
    );
}

#[test]
fn reload_swaps_only_a_set_that_compiles() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let campaign = "campaign: a\nwhen: { event: x }\nholdout: 10%\nthen:\n  channels: [push]\n  push: { title: t, body: b }\n";
    std::fs::write(tmp.path().join("a.yaml"), campaign).expect("write");
    let handle = RulesHandle::new(RuleSet::empty(tmp.path().to_path_buf()));
    assert_eq!(reload(tmp.path(), &handle), Ok(1));
    std::fs::write(tmp.path().join("b.yaml"), "campaign: b\n").expect("write");
    assert!(reload(tmp.path(), &handle).is_err());
    assert_eq!(handle.current().campaigns.len(), 1);
}

#[test]
fn positions_inside_block_scalars_and_templates_of_scheduled_campaigns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("m.yaml"),
        "campaign: m\nwhen: { schedule: \"0 0 9 * * *\" }\nif:\n  - |\n    user.a == 1 &&\n      nope\nholdout: 10%\nthen:\n  channels: [push]\n  push: { title: \"Hi {{ event.name }}\", body: b }\n",
    )
    .expect("write");
    let got: Vec<String> = errors_of(tmp.path())
        .iter()
        .map(|d| first_line(d, tmp.path()))
        .collect();
    assert_eq!(
        got,
        [
            "m.yaml:6:7: unknown identifier `nope` in condition",
            "m.yaml:10:19: template uses unknown variable `event`",
        ]
    );
}
