//! Hot reload: watches the rules folder and swaps in a new [`RuleSet`](super::RuleSet) only when
//! it compiles.
//!
//! Takes the rules folder and the shared [`RulesHandle`]; reacts to file changes (notify,
//! debounced so an editor's save-rename-chmod burst or a `git pull` reloads once) and to SIGHUP.
//! Every reload compiles the whole folder first; a broken file never replaces working rules: the
//! old set stays and every diagnostic is logged.

use std::{path::PathBuf, sync::Arc, time::Duration};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RulesHandle, reload};

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Runs until `cancel` fires. Never fails: problems are logged and the current rules kept.
pub async fn run(dir: PathBuf, handle: Arc<RulesHandle>, cancel: CancellationToken) {
    // One pending notification is enough: a reload reads the whole folder. When the channel is
    // full, further changes are dropped because the pending reload will see them.
    let (tx, mut changes) = mpsc::channel::<()>(1);
    let _watcher = watch(&dir, tx);
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            Some(()) = changes.recv() => {
                // Debounce: wait until the folder has been quiet for DEBOUNCE.
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                        Some(()) = changes.recv() => continue,
                    }
                }
                reload_in_background(&dir, &handle).await;
            }
            () = next_hangup(&mut hangup) => {
                tracing::info!(dir = %dir.display(), "SIGHUP: reloading rules");
                reload_in_background(&dir, &handle).await;
            }
        }
    }
}

/// Compiling reads files and parses templates: keep it off the async workers.
async fn reload_in_background(dir: &std::path::Path, handle: &Arc<RulesHandle>) {
    let (dir, handle) = (dir.to_path_buf(), handle.clone());
    if let Err(e) = tokio::task::spawn_blocking(move || reload(&dir, &handle)).await {
        tracing::error!(error = %e, "rules reload task failed");
    }
}

fn watch(dir: &std::path::Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && is_relevant(&event)
        {
            let _ = tx.try_send(());
        }
    });
    // Recursive: templates live in a subfolder.
    match watcher.and_then(|mut w| w.watch(dir, RecursiveMode::Recursive).map(|()| w)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the rules folder; reload with SIGHUP");
            None
        }
    }
}

/// Reads and editor scratch files (`.x.swp`, `x~`, `.#x`, `4913`) are not rule changes.
fn is_relevant(event: &notify::Event) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        !(name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp") || name == "4913")
    })
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

async fn next_hangup(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup
        && signal.recv().await.is_some()
    {
        return;
    }
    #[cfg(not(unix))]
    let _ = hangup;
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAMPAIGN: &str = "campaign: a\nwhen: { event: x }\nholdout: 10%\nthen:\n  channels: [push]\n  push: { title: t, body: b }\n";

    #[tokio::test]
    async fn reloads_on_change_and_keeps_old_rules_when_broken() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), CAMPAIGN).expect("write");
        let handle = Arc::new(RulesHandle::new(
            super::super::load_dir(dir.path()).expect("loads"),
        ));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(dir.path().to_path_buf(), handle.clone(), cancel.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;

        std::fs::write(
            dir.path().join("b.yaml"),
            CAMPAIGN.replace("campaign: a", "campaign: b"),
        )
        .expect("write");
        wait_for(|| handle.current().campaigns.len() == 2).await;

        std::fs::write(dir.path().join("c.yaml"), "campaign: c\nwhen: {}\n").expect("write");
        tokio::time::sleep(DEBOUNCE * 4).await;
        assert_eq!(
            handle.current().campaigns.len(),
            2,
            "a broken file must not replace working rules"
        );

        cancel.cancel();
        task.await.expect("watcher stops");
    }

    async fn wait_for(done: impl Fn() -> bool) {
        for _ in 0..100 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition not reached in 5 s");
    }
}
