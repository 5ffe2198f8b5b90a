//! What the reliability tests share: the real `nudge` binary as a child process (started,
//! `kill -9`ed, stopped and continued), an SMTP server on loopback that records every message's
//! Message-ID, free ports, rule files, and the run counts for CI and full runs.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mailin_embedded::{Handler, Response, Server, SslConfig, response};
use nudge::store::Store;
use serde_json::{Value, json};

/// The write key every daemon here accepts.
pub const WRITE_KEY: &str = "wk_reliability";

/// `NUDGE_RELIABILITY_FULL=1`: the full runs of `RELIABILITY.md` instead of CI's few.
pub fn full() -> bool {
    std::env::var("NUDGE_RELIABILITY_FULL").is_ok_and(|v| v == "1")
}

/// How many runs: `NUDGE_RELIABILITY_RUNS` if set, else `full_runs` in a full run, else `ci_runs`.
pub fn runs(ci_runs: usize, full_runs: usize) -> usize {
    if let Some(n) = std::env::var("NUDGE_RELIABILITY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if full() { full_runs } else { ci_runs }
}

/// Prints a figure for `RELIABILITY.md` (visible with `--nocapture`).
pub fn figure(test: &str, text: impl std::fmt::Display) {
    println!("FIGURE {test}: {text}");
}

/// An HTTP client (rustls needs its crypto provider installed first in test builds).
pub fn client() -> reqwest::Client {
    nudge::delivery::install_crypto_provider();
    reqwest::Client::new()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A campaign emailing every `signed_up` user once.
pub const WELCOME: &str = r#"
campaign: welcome
name: Welcome
when:
  event: signed_up
then:
  channels: [email]
  send_time: immediate
  email:
    subject: "Welcome {{ user.id }}"
    body: "Hello {{ user.id }}. Unsubscribe: {{ unsubscribe_url }}"
holdout: 0%
"#;

/// A second campaign on the same trigger: with a cap of one email a day, one of the two is capped.
pub const TIPS: &str = r#"
campaign: tips
name: Tips
when:
  event: signed_up
then:
  channels: [email]
  send_time: immediate
  email:
    subject: "Tips for {{ user.id }}"
    body: "Some tips. Unsubscribe: {{ unsubscribe_url }}"
holdout: 0%
"#;

/// A push campaign on `app_opened`.
pub const PUSH: &str = r#"
campaign: comeback
name: Come back
when:
  event: app_opened
then:
  channels: [push]
  send_time: immediate
  push:
    title: "Hi {{ user.id }}"
    body: "Something new"
holdout: 0%
"#;

/// No control group (every user is in treatment), optionally one email a day.
pub fn global(capped: bool) -> String {
    let caps = if capped {
        "caps:\n  - { channel: email, max: 1, per: 1d }\n"
    } else {
        ""
    };
    format!("control_group: 0%\n{caps}")
}

/// A folder with `rules/` (the given files), `outbox/`, and the daemon logs.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new(rules: &[(&str, &str)]) -> Workdir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        for (name, text) in rules {
            std::fs::write(dir.path().join("rules").join(name), text).unwrap();
        }
        Workdir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// How to start one `nudge serve`.
#[derive(Clone)]
pub struct DaemonSpec {
    pub workdir: PathBuf,
    pub database_url: String,
    pub port: u16,
    pub node: String,
    pub smtp_url: Option<String>,
    pub push_url: Option<String>,
    /// Lines of `nudge.toml`.
    pub toml: String,
    /// Extra environment, e.g. `NUDGE_FAULT`.
    pub env: Vec<(String, String)>,
}

impl DaemonSpec {
    pub fn new(workdir: &Workdir, database_url: &str) -> DaemonSpec {
        DaemonSpec {
            workdir: workdir.path().to_path_buf(),
            database_url: database_url.to_string(),
            port: free_port(),
            node: "node-a".into(),
            smtp_url: None,
            push_url: None,
            toml: "lease = \"2s\"\nworkers = 4\n".into(),
            env: Vec::new(),
        }
    }

    pub fn with_env(mut self, key: &str, value: &str) -> DaemonSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A running `nudge serve`, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub spec: DaemonSpec,
    pub log: PathBuf,
}

static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Daemon {
    /// Starts the binary; does not wait for it to listen (see [`Daemon::wait_ready`]).
    pub fn start(spec: &DaemonSpec) -> Daemon {
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let config = spec.workdir.join(format!("nudge-{}.toml", spec.node));
        std::fs::write(&config, &spec.toml).unwrap();
        let log = spec.workdir.join(format!("{}-{n}.log", spec.node));
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nudge"));
        cmd.arg("serve")
            .current_dir(&spec.workdir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NUDGE_DATABASE_URL", &spec.database_url)
            .env("NUDGE_RULES", spec.workdir.join("rules"))
            .env("NUDGE_CONFIG", &config)
            .env("NUDGE_BIND", format!("127.0.0.1:{}", spec.port))
            .env("NUDGE_OUTBOX_DIR", spec.workdir.join("outbox"))
            .env("NUDGE_WRITE_KEYS", WRITE_KEY)
            .env("NUDGE_SECRET", "reliability-secret")
            .env("NUDGE_NODE_ID", &spec.node)
            .env("NUDGE_PUBLIC_URL", "http://nudge.test")
            .env("NUDGE_LOG_LEVEL", "warn,nudge=info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Some(url) = &spec.smtp_url {
            cmd.env("NUDGE_SMTP_URL", url);
        }
        if let Some(url) = &spec.push_url {
            cmd.env("NUDGE_PUSH_URL", url);
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("nudge starts");
        Daemon {
            child,
            spec: spec.clone(),
            log,
        }
    }

    /// Waits until `/healthz` answers (any status), or the process exits. True when it answers.
    pub async fn wait_ready(&mut self, within: Duration) -> bool {
        let client = client();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            let url = format!("{}/healthz", self.spec.base());
            if client
                .get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Starts and waits for it to listen; panics with its log if it does not.
    pub async fn start_ready(spec: &DaemonSpec) -> Daemon {
        let mut d = Daemon::start(spec);
        assert!(
            d.wait_ready(Duration::from_secs(30)).await,
            "nudge did not start:\n{}",
            d.log_text()
        );
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM and wait (graceful shutdown), SIGKILL after 20 s.
    pub fn stop(&mut self) {
        self.signal("TERM");
        if self.wait_exit(Duration::from_secs(20)).is_none() {
            self.kill9();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // A stopped process must be continued to die promptly on some systems.
            send_signal(self.child.id(), "CONT");
            self.kill9();
        }
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Segment calls for `users`: an identify with an email address, then `event`.
pub fn signups(users: &[String], event: &str) -> Value {
    let mut batch = Vec::with_capacity(users.len() * 2);
    for u in users {
        batch.push(
            json!({"type": "identify", "userId": u, "messageId": format!("id-{u}"),
            "traits": {"email": format!("{u}@example.com"), "push_token": format!("device-{u}")}}),
        );
        batch.push(json!({"type": "track", "userId": u, "event": event,
            "messageId": format!("{event}-{u}")}));
    }
    json!({ "batch": batch })
}

/// POSTs to the daemon with the write key; `None` when it did not answer (down, killed).
pub async fn post(client: &reqwest::Client, base: &str, path: &str, body: &Value) -> Option<u16> {
    client
        .post(format!("{base}{path}"))
        .basic_auth(WRITE_KEY, Some(""))
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// POSTs until the daemon acknowledges with 200 (retrying while it is down or answers 503).
pub async fn post_until_ok(base: &str, path: &str, body: &Value, within: Duration) {
    let client = client();
    let deadline = Instant::now() + within;
    loop {
        if post(&client, base, path, body).await == Some(200) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} was never acknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /healthz` as (status, body); `None` when the daemon does not answer.
pub async fn health(base: &str) -> Option<(u16, Value)> {
    let r = client()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// Polls `check` every 50 ms until it holds; false after `within`.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Panics with every broken invariant.
pub async fn assert_consistent(store: &Store, context: &str) {
    let broken = store.integrity_violations().await.expect("integrity checks run");
    assert!(broken.is_empty(), "{context}: invariants broken: {broken:?}");
}

/// One message as the SMTP server accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub to: String,
    pub subject: String,
}

/// Called with a message and how many were accepted before it.
pub type MessageHook = Box<dyn Fn(&Received, usize) + Send + Sync>;

/// Hooks that let a test act from inside the SMTP conversation.
#[derive(Default)]
pub struct SmtpHooks {
    /// Called at the end of each message's DATA, before the 250 reply, with the message and how
    /// many were accepted before it.
    pub on_message: Option<MessageHook>,
}

/// An SMTP server on loopback (mailin-embedded) that accepts everything and records it.
#[derive(Clone)]
pub struct SmtpSink {
    pub received: Arc<Mutex<Vec<Received>>>,
    hooks: Arc<SmtpHooks>,
    current: Vec<u8>,
}

impl SmtpSink {
    /// Starts on `port` (0: any); returns the sink and its `smtp://` URL.
    pub fn start_on(port: u16, hooks: SmtpHooks) -> (SmtpSink, String) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("SMTP port");
        let port = listener.local_addr().unwrap().port();
        let sink = SmtpSink {
            received: Arc::new(Mutex::new(Vec::new())),
            hooks: Arc::new(hooks),
            current: Vec::new(),
        };
        let mut server = Server::new(sink.clone());
        server
            .with_name("mx.test")
            .with_ssl(SslConfig::None)
            .unwrap()
            .with_num_threads(16)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            if let Err(e) = server.serve() {
                eprintln!("test SMTP server stopped: {e}");
            }
        });
        (sink, format!("smtp://127.0.0.1:{port}"))
    }

    pub fn start(hooks: SmtpHooks) -> (SmtpSink, String) {
        SmtpSink::start_on(0, hooks)
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn header(message: &str, name: &str) -> String {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
        .unwrap_or_default()
}

impl Handler for SmtpSink {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, _to: &[String]) -> Response {
        self.current.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let text = String::from_utf8_lossy(&std::mem::take(&mut self.current)).replace("\r\n", "\n");
        let message = Received {
            message_id: header(&text, "Message-ID"),
            to: header(&text, "To"),
            subject: header(&text, "Subject"),
        };
        let before = self.count();
        if let Some(hook) = &self.hooks.on_message {
            hook(&message, before);
        }
        self.received.lock().unwrap().push(message);
        response::OK
    }
}
