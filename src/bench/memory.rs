//! Stage 6, memory: peak resident memory of a real `nudge serve` process over a database holding
//! the full-size population (1,000,000 users and 10,000,000 events), idle and while a scheduled
//! campaign fans out to every user. The reference is the size of that database on disk: the data
//! nudge serves, which a process that held it all in memory would need at least.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chrono::{Timelike, Utc};

use super::{Ctx, StageResult};
use crate::store::{BenchEvent, Table};

const GIB: f64 = 1024.0;

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<StageResult>> {
    let (users, events) = (ctx.sizes.memory_users, ctx.sizes.memory_events);
    let dir = ctx.folder("memory")?;
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules)?;
    let (store, url) = super::sqlite_store(&dir).await?;
    let loading = Instant::now();
    super::fanout::add_users(&store, 0, users).await?;
    let mut written = 0;
    let ts = Utc::now().timestamp_millis() - 3_600_000;
    while written < events {
        let end = (written + 50_000).min(events);
        let rows: Vec<BenchEvent> = (written..end)
            .map(|e| BenchEvent {
                message_id: format!("m{e}"),
                user_id: format!("user-{:07}", e % users),
                name: [
                    "session_started",
                    "page_viewed",
                    "cart_updated",
                    "order_completed",
                ][e % 4]
                    .into(),
                properties: format!(r#"{{"n":{e},"path":"/products/{}"}}"#, e % 997),
                ts: ts - (e as i64 % 5_000_000),
            })
            .collect();
        store.bench_insert_events(&rows, ts).await?;
        written = end;
    }
    store.close().await;
    let load_seconds = loading.elapsed().as_secs_f64();
    let db_mib = ["bench.db", "bench.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len() as f64 / 1_048_576.0)
        .sum::<f64>();

    // The campaign fires 20 s after start, once; its messages are due hours later, so the
    // measurement is the fan-out and not the delivery.
    let fire = Utc::now() + chrono::Duration::seconds(20);
    let send = Utc::now() + chrono::Duration::hours(12);
    std::fs::write(rules.join("_global.yaml"), "control_group: 5%\ntimezone: UTC\n")?;
    std::fs::write(
        rules.join("digest.yaml"),
        format!(
            "campaign: digest\nname: Digest\nwhen:\n  schedule: \"{} {} {} * * *\"\nreentry: always\n\
             if:\n  - user.traits.plan != \"free\"\nthen:\n  channels: [email]\n  send_time: \"{:02}:{:02}\"\n  \
             email:\n    subject: \"Your week\"\n    body: \"Hello {{{{ user.id }}}}\"\nholdout: 10%\n",
            fire.second(),
            fire.minute(),
            fire.hour(),
            send.hour(),
            send.minute()
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("NUDGE_DATABASE_URL", &url)
        .env("NUDGE_RULES", &rules)
        .env("NUDGE_OUTBOX_DIR", dir.join("outbox"))
        .env("NUDGE_WRITE_KEYS", super::WRITE_KEY)
        .env("NUDGE_TRAIN_SCHEDULE", "off")
        .env_remove("NUDGE_CONFIG")
        .env_remove("NUDGE_SMTP_URL")
        .env_remove("NUDGE_PUSH_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id().to_string();
    let measured = measure(&pid, port, &url, users, fire).await;
    let _ = child.kill();
    let _ = child.wait();
    let (idle, peak, fanout_seconds) = measured?;
    let note = format!(
        "{users} users, {events} events ({db_mib:.0} MiB on disk, loaded in {load_seconds:.0} s); \
         fan-out of {users} users took {fanout_seconds:.0} s"
    );
    Ok(vec![
        StageResult::new("memory_idle", "MiB", "database size on disk", "≤ 1 GiB")
            .cost(idle, Some(db_mib))
            .note(note.clone())
            .met(idle <= GIB),
        StageResult::new("memory_fanout", "MiB", "database size on disk", "≤ 1 GiB")
            .cost(peak, Some(db_mib))
            .note(note)
            .met(peak <= GIB),
    ])
}

/// (idle RSS, peak RSS by the end of the fan-out, fan-out seconds).
async fn measure(
    pid: &str,
    port: u16,
    url: &str,
    users: usize,
    fire: chrono::DateTime<Utc>,
) -> anyhow::Result<(f64, f64, f64)> {
    let health = format!("http://127.0.0.1:{port}/healthz");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "nudge serve did not start in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settle, then read the idle figure before the firing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = super::rss_mib(pid).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}/status"))?;
    let store = crate::store::Store::connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut fanout_started = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the fan-out did not finish in 15 minutes"
        );
        if Utc::now() < fire {
            continue;
        }
        let since = *fanout_started.get_or_insert_with(Instant::now);
        let entries = store.count_rows(Table::Entries).await?;
        if entries as usize >= users && store.bench_waiting_entries().await? == 0 {
            let peak = super::peak_rss_mib(pid).ok_or_else(|| anyhow::anyhow!("process {pid} is gone"))?;
            store.close().await;
            return Ok((idle, peak, since.elapsed().as_secs_f64()));
        }
    }
}
