//! The real binary, as an operator runs it: `nudge serve` in a fresh folder with the example rules,
//! events sent over HTTP as the README shows, the rendered email appearing under `./outbox/`, and a
//! broken rule file dropped into the running daemon's folder.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// A `nudge serve` child process in its own folder, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub base: String,
}

impl Daemon {
    /// Starts `nudge serve` in a fresh folder holding a copy of the example rules.
    ///
    /// The example rules keep a 5% global control group, hashed with a salt each deployment draws
    /// at first start, so a fresh database would put one of the tests' users among the never
    /// messaged now and then. The folder's database is created first with a salt that keeps
    /// `users` out, as a deployment that drew it would.
    pub async fn start_for(users: &[&str]) -> Daemon {
        nudge::delivery::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let rules_dir = dir.path().join("rules");
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"), &rules_dir);
        let rules = nudge::rules::load_dir(&rules_dir).unwrap();
        let salt = (0..)
            .map(|i| format!("salt-{i}"))
            .find(|salt| {
                users
                    .iter()
                    .all(|user| !nudge::experiments::arms::in_control_group(&rules.global, salt, user))
            })
            .unwrap();
        let url = format!("sqlite://{}", dir.path().join("nudge.db").display());
        let store = nudge::store::Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        store.setting_or_insert("control_salt", || salt).await.unwrap();
        store.close().await;

        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nudge"));
        cmd.arg("serve")
            .current_dir(dir.path())
            .env("NUDGE_BIND", format!("127.0.0.1:{port}"))
            .env("NUDGE_WRITE_KEYS", "wk_test")
            .env_remove("NUDGE_DATABASE_URL")
            .env_remove("NUDGE_RULES")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap());
        let child = cmd.spawn().expect("nudge serve starts");
        let daemon = Daemon {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
        };
        daemon.wait_healthy();
        daemon
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = blocking_get(&format!("{}/healthz", self.base))
                && r.0 == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("daemon did not become healthy; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::StatusCode {
        reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .basic_auth("wk_test", Some(""))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Emails written by the file transport so far.
    pub fn emails(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.path("outbox/email")) else {
            return Vec::new();
        };
        let mut mails: Vec<String> = dir
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect();
        mails.sort();
        mails
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn blocking_get(url: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, buf))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// How long a test waits for the daemon to act. Generous: the suite shares two cores with the ML
/// tests, and a wait ends as soon as its probe succeeds.
const PATIENCE: Duration = Duration::from_secs(60);

async fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    eventually_async(what, timeout, || std::future::ready(probe())).await
}

async fn eventually_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tour_sends_a_rendered_email() {
    let d = Daemon::start_for(&["ada", "grace"]).await;
    let identify = json!({"userId": "ada", "traits": {"email": "ada@example.com", "first_name": "Ada", "plan": "pro", "timezone": "Europe/London"}});
    assert_eq!(d.post("/v1/identify", identify).await, 200);
    assert_eq!(
        d.post("/v1/track", json!({"userId": "ada", "event": "signed_up"}))
            .await,
        200
    );

    let mail = eventually("the welcome email", PATIENCE, || d.emails().into_iter().next()).await;
    assert!(mail.contains("Subject: Welcome to Acme, Ada!"), "{mail}");
    assert!(mail.contains("To: ada@example.com"), "{mail}");
    assert!(mail.contains("List-Unsubscribe: <http://127.0.0.1:"), "{mail}");
    assert!(
        mail.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{mail}"
    );
    assert!(mail.contains("Welcome, Ada!"), "{mail}");

    // grace is in the welcome campaign's 10% holdout: no email, and the log says why.
    assert_eq!(
        d.post(
            "/v1/identify",
            json!({"userId": "grace", "traits": {"email": "grace@example.com"}})
        )
        .await,
        200
    );
    assert_eq!(
        d.post("/v1/track", json!({"userId": "grace", "event": "signed_up"}))
            .await,
        200
    );
    let log = eventually_async("grace's decision", PATIENCE, || async {
        let text = d.get_json("/v1/users/grace/messages").await.to_string();
        text.contains("held_out").then_some(text)
    })
    .await;
    assert!(log.contains("campaign holdout"), "{log}");
    assert_eq!(d.emails().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_rule_file_leaves_the_old_rules_serving() {
    let d = Daemon::start_for(&["ada"]).await;
    let campaigns = |v: &Value| -> Vec<String> {
        v.as_array()
            .or_else(|| v["campaigns"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c["id"].as_str().map(String::from))
            .collect()
    };
    let before = campaigns(&d.get_json("/v1/campaigns").await);
    assert!(before.contains(&"welcome".to_string()), "{before:?}");

    // A marketer saves a file with a typo'd duration and a bad CEL expression.
    std::fs::write(
        d.path("rules/broken.yaml"),
        "campaign: broken\nwhen:\n  event: x\nwait: 2 hours\nif:\n  - user.traits.plan ==\nthen:\n  channels: [email]\n  email: {subject: s, body: b}\n",
    )
    .unwrap();
    eventually("the rejection in the log", PATIENCE, || {
        d.log().contains("RulesRejected").then_some(())
    })
    .await;
    let log = d.log();
    assert!(log.contains("broken.yaml:4:7"), "{log}");
    assert_eq!(
        campaigns(&d.get_json("/v1/campaigns").await),
        before,
        "old rules still serve"
    );

    // The old rules still act on events.
    assert_eq!(
        d.post(
            "/v1/identify",
            json!({"userId": "ada", "traits": {"email": "ada@example.com"}})
        )
        .await,
        200
    );
    assert_eq!(
        d.post("/v1/track", json!({"userId": "ada", "event": "signed_up"}))
            .await,
        200
    );
    eventually("an email from the old rules", PATIENCE, || {
        (!d.emails().is_empty()).then_some(())
    })
    .await;

    // Fixing the file loads it.
    std::fs::write(
        d.path("rules/broken.yaml"),
        "campaign: broken\nwhen:\n  event: x\nwait: 2h\nthen:\n  channels: [email]\n  email: {subject: s, body: b}\n",
    )
    .unwrap();
    eventually_async("the fixed campaign", PATIENCE, || async {
        campaigns(&d.get_json("/v1/campaigns").await)
            .contains(&"broken".to_string())
            .then_some(())
    })
    .await;
}
