//! Promise 9, no secrets in logs: the real `nudge serve` binary, every secret set to a canary
//! value (write key, admin key, HMAC secret, SMTP password, push token, database password when
//! PostgreSQL is available), debug logging for nudge and every dependency, and every flow
//! exercised — ingestion, decisions, SMTP delivery with AUTH, a bounced (failed) send, push,
//! opens, clicks, unsubscribes, forged tokens, refused keys, the admin API, metrics. Then every
//! line the process wrote is searched for the canaries. The same run checks that a user id
//! carrying a line break and a fake log line cannot forge a line, in JSON and in human format.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use nudge::tracking::tokens::{Signer, TokenKind, click_payload};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

const WRITE_KEY: &str = "CANARY-write-key-7f3a9c";
const ADMIN_KEY: &str = "CANARY-admin-key-2b8e41";
const HMAC_SECRET: &str = "CANARY-hmac-secret-c41d07";
const SMTP_PASSWORD: &str = "CANARY-smtp-pass-9e2f6a";
const PUSH_TOKEN: &str = "CANARY-push-token-5a1b3c";
const DEVICE_TOKEN: &str = "CANARY-device-token-0d9e8f";
const DB_PASSWORD: &str = "CANARY-db-pass-8c7b6a";
const CANARIES: [&str; 7] = [
    WRITE_KEY,
    ADMIN_KEY,
    HMAC_SECRET,
    SMTP_PASSWORD,
    PUSH_TOKEN,
    DEVICE_TOKEN,
    DB_PASSWORD,
];

const WELCOME: &str = r#"
campaign: welcome
name: Welcome
when:
  event: signed_up
then:
  channels: [email]
  email:
    subject: "Welcome {{ user.id }}"
    body: '<html><body><p>Hi</p><a href="https://shop.example/start">Start</a> <a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>'
topic: news
holdout: 0%
"#;

const PUSH: &str = r#"
campaign: app_hello
name: App hello
when:
  event: app_opened
then:
  channels: [push]
  push:
    title: "Hello {{ user.id }}"
    body: "Welcome to the app"
holdout: 0%
"#;

/// A minimal SMTP server on loopback that advertises AUTH PLAIN over plain text (so the
/// client really sends the password), refuses recipients containing `bounce` with a 550, and
/// accepts everything else.
#[derive(Clone, Default)]
struct Smtp {
    passwords: Arc<Mutex<Vec<String>>>,
    messages: Arc<Mutex<Vec<String>>>,
}

impl Smtp {
    fn start() -> (Smtp, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let smtp = Smtp::default();
        let server = smtp.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = server.clone();
                std::thread::spawn(move || {
                    let _ = s.session(stream);
                });
            }
        });
        (smtp, port)
    }

    fn session(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut out = stream.try_clone()?;
        let mut lines = BufReader::new(stream);
        out.write_all(b"220 mx.test ESMTP\r\n")?;
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let command = line.trim_end().to_string();
            let upper = command.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                out.write_all(b"250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")?;
            } else if upper.starts_with("AUTH PLAIN") {
                let encoded = command.split_whitespace().nth(2).unwrap_or_default();
                let decoded = STANDARD.decode(encoded).unwrap_or_default();
                let password = decoded.rsplit(|b| *b == 0).next().unwrap_or_default();
                self.passwords
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(password).into_owned());
                out.write_all(b"235 2.7.0 Authentication successful\r\n")?;
            } else if upper.starts_with("RCPT") && upper.contains("BOUNCE") {
                out.write_all(b"550 5.1.1 <bounce@example.com>: no such user here\r\n")?;
            } else if upper.starts_with("DATA") {
                out.write_all(b"354 go ahead\r\n")?;
                let mut message = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    message.push_str(&line);
                }
                self.messages.lock().unwrap().push(message);
                out.write_all(b"250 2.0.0 queued\r\n")?;
            } else if upper.starts_with("QUIT") {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            } else {
                out.write_all(b"250 ok\r\n")?;
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A database URL whose password is the canary: a PostgreSQL role made for this run when
/// `NUDGE_TEST_POSTGRES_URL` is set (returned with what to drop afterwards), else SQLite.
async fn database(dir: &Path, use_postgres: bool) -> (String, Option<(String, String, String)>) {
    let sqlite = format!("sqlite://{}", dir.join("nudge.db").display());
    let admin = match std::env::var("NUDGE_TEST_POSTGRES_URL") {
        Ok(url) if use_postgres => url,
        _ => {
            if use_postgres {
                println!(
                    "no NUDGE_TEST_POSTGRES_URL: the database-password canary is checked only on \
                     the failed-connection path (nudge migrate against a closed port)"
                );
            }
            return (sqlite, None);
        }
    };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (role, db) = (format!("nudge_canary_{suffix}"), format!("nudge_canary_{suffix}"));
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .expect("postgres admin connects");
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'"),
        format!("CREATE DATABASE {db} OWNER {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    let rest = admin.split_once("://").map_or(admin.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (
        format!("postgres://{role}:{DB_PASSWORD}@{host}/{db}"),
        Some((admin, role, db)),
    )
}

async fn drop_database(admin: &str, role: &str, db: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(admin).await {
        for sql in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS {role}"),
        ] {
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
        }
        pool.close().await;
    }
}

struct Daemon {
    child: Child,
    base: String,
    client: reqwest::Client,
    stderr: std::path::PathBuf,
    stdout: std::path::PathBuf,
}

impl Daemon {
    fn start(dir: &Path, database: &str, smtp_port: u16, format: &str) -> Daemon {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rules = dir.join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::write(rules.join("_global.yaml"), "control_group: 0%\n").unwrap();
        std::fs::write(rules.join("welcome.yaml"), WELCOME).unwrap();
        std::fs::write(rules.join("push.yaml"), PUSH).unwrap();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let stderr = dir.join("stderr.log");
        let stdout = dir.join("stdout.log");
        let child = Command::new(env!("CARGO_BIN_EXE_nudge"))
            .arg("serve")
            .args(["--database", database])
            .args(["--rules", rules.to_str().unwrap()])
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args([
                "--smtp",
                &format!("smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{smtp_port}"),
            ])
            .args(["--outbox", dir.join("outbox").to_str().unwrap()])
            .args(["--log-format", format])
            .current_dir(dir)
            .env_remove("NUDGE_LOG")
            .env("NUDGE_WRITE_KEYS", format!("other-key,{WRITE_KEY}"))
            .env("NUDGE_ADMIN_KEY", ADMIN_KEY)
            .env("NUDGE_SECRET", HMAC_SECRET)
            .env("NUDGE_PUBLIC_URL", &base)
            .env("RUST_LOG", "debug")
            .env("NUDGE_LOG_LEVEL", "debug")
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .spawn()
            .expect("nudge starts");
        Daemon {
            child,
            base,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            stderr,
            stdout,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.client.get(self.url("/healthz")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "nudge exited with {status}:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "nudge did not become healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ingest(&self, path: &str, body: &Value) -> StatusCode {
        self.client
            .post(self.url(path))
            .basic_auth(WRITE_KEY, Some(""))
            .json(body)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn admin(&self, path: &str) -> Value {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json().await.unwrap()
    }

    /// Waits until the user has a message on `channel` with `status`; returns its idempotency key.
    async fn message_with_status(&self, user: &str, channel: &str, status: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let path = format!("/v1/users/{}/messages", urlencode(user));
        loop {
            let history = self.admin(&path).await;
            if let Some(m) = history["messages"].as_array().and_then(|m| {
                m.iter()
                    .find(|m| m["status"] == status && m["channel"] == channel)
            }) {
                return m["message_id"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{user}: no {status} message: {history}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM (graceful shutdown logs too), then the process's whole output.
    fn stop(mut self) -> (String, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
        (
            std::fs::read_to_string(&self.stderr).unwrap(),
            std::fs::read_to_string(&self.stdout).unwrap(),
        )
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every flow that handles a secret, against a running daemon.
async fn exercise(d: &Daemon, smtp: &Smtp, forger: &str) {
    // Ingestion: users with an address, a push token (trait) and a device token (context).
    let batch = json!({"batch": [
        {"type": "identify", "userId": "ann", "traits": {"email": "ann@example.com", "push_token": PUSH_TOKEN}},
        {"type": "identify", "userId": "bob", "traits": {"email": "bounce@example.com"}},
        {"type": "identify", "userId": forger, "traits": {"email": "mallory@example.com"}},
        {"type": "track", "userId": "ann", "event": "signed_up"},
        {"type": "track", "userId": "bob", "event": "signed_up"},
        {"type": "track", "userId": forger, "event": "signed_up"},
        {"type": "track", "userId": "ann", "event": "app_opened"},
    ]});
    assert_eq!(d.ingest("/v1/batch", &batch).await, StatusCode::OK);
    let device =
        json!({"userId": "dan", "event": "app_opened", "context": {"device": {"token": DEVICE_TOKEN}}});
    assert_eq!(d.ingest("/v1/track", &device).await, StatusCode::OK);
    // Refused ingestion: wrong key, no key, the admin key, bad JSON.
    for auth in [Some("Bearer nope"), None, Some("Bearer CANARY-admin-key-2b8e41")] {
        let mut req = d.client.post(d.url("/v1/track")).json(&device);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let r = d
        .client
        .post(d.url("/v1/track"))
        .bearer_auth(WRITE_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Delivery: SMTP with AUTH (sent), a 550 (failed), push to the file transport.
    let ann_key = d.message_with_status("ann", "email", "sent").await;
    d.message_with_status("ann", "push", "sent").await;
    d.message_with_status("bob", "email", "failed").await;
    d.message_with_status(forger, "email", "sent").await;
    d.message_with_status("dan", "push", "sent").await;
    assert!(
        smtp.passwords.lock().unwrap().iter().any(|p| p == SMTP_PASSWORD),
        "the SMTP password really flowed through the client"
    );
    let mail = smtp
        .messages
        .lock()
        .unwrap()
        .iter()
        .find(|m| m.contains("ann@example.com"))
        .cloned()
        .expect("ann's email arrived");
    let unsubscribe = mail
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: <"))
        .and_then(|l| l.split('>').next())
        .expect("List-Unsubscribe header")
        .to_string();

    // Tracking: open, click, unsubscribe page and one-click, forged tokens.
    let signer = Signer::new(HMAC_SECRET.as_bytes());
    let open = signer.sign(TokenKind::Open, &ann_key);
    let click = signer.sign(TokenKind::Click, &click_payload(&ann_key, 0));
    let r = d.client.get(d.url(&format!("/t/o/{open}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = d
        .client
        .get(d.url(&format!("/t/c/{click}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        d.client.get(&unsubscribe).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        d.client.post(&unsubscribe).send().await.unwrap().status(),
        StatusCode::OK
    );
    for forged in ["/t/o/forged.token", "/t/c/x.y", "/u/eyJ1IjoiYm9iIn0.AAAA"] {
        let r = d.client.get(d.url(forged)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{forged}");
    }

    // Admin API: with the key, with wrong keys, pause/resume, reports, metrics.
    d.admin("/v1/campaigns").await;
    d.admin("/v1/reports/lift").await;
    d.admin(&format!("/v1/users/{}/messages", urlencode(forger)))
        .await;
    for path in ["/v1/campaigns/welcome/pause", "/v1/campaigns/welcome/resume"] {
        let r = d
            .client
            .post(d.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    for auth in ["Bearer wrong", "Bearer CANARY-write-key-7f3a9c"] {
        let r = d
            .client
            .get(d.url("/v1/campaigns"))
            .header(header::AUTHORIZATION, auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let metrics = d
        .client
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for canary in CANARIES {
        assert!(!metrics.contains(canary), "{canary} in /metrics");
    }
}

/// Fails with every offending line when a canary appears anywhere in `output`.
fn assert_no_canaries(what: &str, output: &str) {
    let leaks: Vec<(&str, &str)> = output
        .lines()
        .flat_map(|line| {
            CANARIES
                .iter()
                .filter(move |c| line.contains(**c))
                .map(move |c| (*c, line))
        })
        .collect();
    assert!(leaks.is_empty(), "{what}: secrets in the logs: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp, smtp_port) = Smtp::start();
    let (database, pg) = database(dir.path(), true).await;
    let forger = "mallory\n{\"timestamp\":\"2026-01-01T00:00:00Z\",\"level\":\"ERROR\",\"fields\":{\"message\":\"forged\"},\"message\":\"forged\"}";
    let mut d = Daemon::start(dir.path(), &database, smtp_port, "json");
    d.wait_healthy().await;
    exercise(&d, &smtp, forger).await;
    let (stderr, stdout) = d.stop();
    if let Some((admin, role, db)) = &pg {
        drop_database(admin, role, db).await;
    }

    assert_no_canaries("stderr", &stderr);
    assert_no_canaries("stdout", &stdout);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON event per line ({e}): {l}")))
        .collect();
    assert!(lines.len() > 20, "debug logging was on: {} lines", lines.len());
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    // The 550 5.1.1 is a hard bounce: it fails the message and suppresses the address.
    for expected in [
        "NudgeStarted",
        "MessageSent",
        "AddressSuppressed",
        "UserUnsubscribed",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "{expected} logged: {messages:?}"
        );
    }
    assert!(
        !lines.iter().any(|l| l["message"] == "forged"),
        "a user id forged a log event"
    );
    assert!(
        lines.iter().any(|l| l["user"] == forger),
        "the forger's id was logged, as one escaped field"
    );
    println!(
        "{} log lines, {} canaries, database {}",
        lines.len(),
        CANARIES.len(),
        if pg.is_some() { "postgres" } else { "sqlite" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_human() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp, smtp_port) = Smtp::start();
    let (database, _) = database(dir.path(), false).await;
    let forger = "mallory\n2026-01-01T00:00:00.000000Z ERROR nudge: forged";
    let mut d = Daemon::start(dir.path(), &database, smtp_port, "human");
    d.wait_healthy().await;
    exercise(&d, &smtp, forger).await;
    let (stderr, stdout) = d.stop();
    assert_no_canaries("stderr", &stderr);
    assert_no_canaries("stdout", &stdout);
    assert!(stderr.lines().count() > 20, "debug logging was on");
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00.000000Z")),
        "a user id forged a log line:\n{stderr}"
    );
    assert!(
        stderr.contains("mallory\\n2026-01-01"),
        "the forger's id was logged, escaped"
    );
}

/// A database that cannot be reached: the error path names the database without its password.
#[test]
fn database_password_stays_out_of_connection_errors() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    for (command, format) in [("migrate", "json"), ("migrate", "human"), ("serve", "json")] {
        let out = Command::new(env!("CARGO_BIN_EXE_nudge"))
            .arg(command)
            .args([
                "--database",
                &format!("postgres://nudge:{DB_PASSWORD}@127.0.0.1:{closed}/nudge"),
            ])
            .args(["--log-format", format])
            .current_dir(dir.path())
            .env("RUST_LOG", "trace")
            .env("NUDGE_LOG_LEVEL", "trace")
            .output()
            .expect("nudge runs");
        assert!(!out.status.success(), "the database is unreachable");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_no_canaries(format, &all);
        assert!(all.contains("error"), "the failure is reported: {all}");
    }
}
