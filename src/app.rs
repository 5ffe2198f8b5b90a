//! Wiring: `serve` starts every part of the daemon over one store and one rule set, and stops them
//! in order on a signal; `import` loads history.

use std::{net::SocketAddr, path::Path, sync::Arc};

use rand::RngCore;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::AppError,
    clock::{SharedClock, SystemClock},
    config::{ConfigError, LogFormat, Secret, Settings},
    delivery::{Delivery, DeliveryConfig, rate::Rate},
    engine::{Engine, EngineConfig, cron},
    events::import::ImportOptions,
    http::{AppState, router},
    rules::{self, RulesHandle},
    store::{Store, redact_url},
    tracking::tokens::Signer,
};

/// Starts tracing on stderr: human-readable lines, or JSON lines with `--log-format json`.
/// `NUDGE_LOG_LEVEL`, else `RUST_LOG`, filters; else `default_filter` (the daemon's is `info` for
/// nudge and `warn` for dependencies). Every event is exactly one line (see [`OneLine`]), so
/// user-supplied strings cannot forge lines.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = std::env::var("NUDGE_LOG_LEVEL")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(|| OneLine(std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// A log writer that keeps every event on one line: line breaks inside an event are written as
/// `\n` and `\r`. Field values reach the human format through `Display`, and a user id such as
/// `"u1\n2026-01-01T00:00:00Z ERROR forged"` would otherwise start a line of its own; JSON
/// escapes them already, so this changes nothing there. tracing-subscriber formats each event
/// into one buffer and hands it over in one `write_all`, which is what makes this exact.
pub struct OneLine<W>(pub W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|b| matches!(b, b'\n' | b'\r')) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                _ => line.push(b),
            }
        }
        line.extend_from_slice(end);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The deployment's HMAC key: `NUDGE_SECRET`, else one generated once and kept in the database.
pub async fn signing_secret(store: &Store, configured: Option<&Secret>) -> Result<Secret, AppError> {
    if let Some(s) = configured {
        return Ok(s.clone());
    }
    let stored = store
        .setting_or_insert("hmac_secret", || {
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            hex::encode(key)
        })
        .await?;
    Ok(Secret::new(stored))
}

/// Connects and migrates, naming the database (without its password) when that fails.
pub async fn open_store(settings: &Settings) -> Result<Store, AppError> {
    let store = Store::connect(&settings.database_url).await.inspect_err(|e| {
        tracing::error!(database = %redact_url(&settings.database_url), error = %e, "DatabaseUnavailable");
    })?;
    store.migrate().await?;
    Ok(store)
}

/// Builds the engine over a connected store with the system clock.
pub async fn engine(
    settings: &Settings,
    store: Store,
    rules: Arc<RulesHandle>,
) -> Result<Arc<Engine>, AppError> {
    let secret = signing_secret(&store, settings.secret.as_ref()).await?;
    let mut config = EngineConfig {
        public_url: settings.public_url.clone(),
        trigger_max_age: settings.trigger_max_age,
        lease: chrono::Duration::from_std(settings.lease)
            .map_err(|_| AppError::Config(ConfigError::Invalid("lease is too long".into())))?,
        ..EngineConfig::default()
    };
    if let Some(node) = &settings.node_id {
        config.node_id = node.clone();
    }
    let clock: SharedClock = Arc::new(SystemClock);
    let engine = Engine::new(
        store,
        rules,
        clock,
        Signer::new(secret.expose().as_bytes()),
        config,
    )
    .await?;
    Ok(Arc::new(engine))
}

/// Delivery settings from the resolved configuration.
pub fn delivery_config(settings: &Settings, node_id: &str) -> Result<DeliveryConfig, AppError> {
    let rate = |name: &str, text: &Option<String>| -> Result<Option<Rate>, AppError> {
        text.as_deref()
            .map(|t| {
                t.parse::<Rate>()
                    .map_err(|e| AppError::Config(ConfigError::Invalid(format!("{name}: {e}"))))
            })
            .transpose()
    };
    let config = DeliveryConfig {
        node_id: node_id.to_string(),
        workers: settings.workers,
        smtp_url: settings.smtp_url.as_ref().map(|s| s.expose().to_string()),
        push_url: settings.push_url.clone(),
        outbox_dir: settings.outbox_dir.clone(),
        email_from: settings.email_from.clone(),
        message_id_domain: DeliveryConfig::domain_of(&settings.public_url)
            .unwrap_or_else(|| "localhost".into()),
        smtp_rate: rate("smtp_rate", &settings.smtp_rate)?,
        push_rate: rate("push_rate", &settings.push_rate)?,
        lease: settings.lease,
        attempt_timeout: settings.attempt_timeout,
        retry: settings.retry.clone(),
        ..DeliveryConfig::default()
    };
    config
        .validate()
        .map_err(|e| AppError::Config(ConfigError::Invalid(e.to_string())))?;
    Ok(config)
}

/// `nudge serve`.
pub async fn serve(settings: Settings) -> Result<(), AppError> {
    crate::delivery::install_crypto_provider();
    let store = open_store(&settings).await?;
    let rule_set = rules::load_dir(&settings.rules_dir).map_err(|diags| {
        for d in &diags {
            tracing::error!(diagnostic = %d, "RulesRejected");
        }
        AppError::InvalidRules(diags)
    })?;
    tracing::info!(campaigns = rule_set.campaigns.len(), dir = %settings.rules_dir.display(), "RulesLoaded");
    let handle = Arc::new(RulesHandle::new(rule_set));
    let engine = engine(&settings, store.clone(), handle.clone()).await?;

    let delivery = Arc::new(
        Delivery::new(
            store.clone(),
            handle.clone(),
            engine.clock.clone(),
            engine.outbox_ready.clone(),
            delivery_config(&settings, &engine.config.node_id)?,
        )
        .map_err(|e| AppError::Config(ConfigError::Invalid(e.to_string())))?
        .with_health(engine.transport_health.clone()),
    );
    let write_keys = write_keys(&settings, &store).await?;
    let state = AppState {
        engine: engine.clone(),
        write_keys: Arc::new(write_keys),
        admin_key: settings.admin_key.clone(),
        metrics: Some(crate::telemetry::install_metrics()),
    };
    let listener = tokio::net::TcpListener::bind(&settings.bind).await.map_err(|e| {
        AppError::Config(ConfigError::Invalid(format!(
            "cannot listen on {}: {e}",
            settings.bind
        )))
    })?;

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let http_cancel = cancel.child_token();
    tasks.spawn(async move {
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(http_cancel.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "HttpServerFailed");
        }
    });
    tasks.spawn(engine.clone().run(cancel.child_token()));
    tasks.spawn(delivery.run(cancel.child_token()));
    tasks.spawn(cron::run(engine.clone(), cancel.child_token()));
    tasks.spawn(crate::ml::training::run_in_daemon(
        engine.clone(),
        settings.train_schedule.clone(),
        cancel.child_token(),
    ));
    tasks.spawn(crate::experiments::snapshots::run(
        engine.clone(),
        cancel.child_token(),
    ));
    tasks.spawn(rules::watch::run(
        settings.rules_dir.clone(),
        handle.clone(),
        cancel.child_token(),
    ));
    tracing::info!(
        node = %engine.config.node_id,
        bind = %settings.bind,
        database = %redact_url(&settings.database_url),
        "NudgeStarted"
    );

    shutdown_signal().await;
    tracing::info!("ShutdownStarted: finishing in-flight work (signal again to quit at once)");
    cancel.cancel();
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {}
        _ = shutdown_signal() => tracing::warn!("ShutdownForced"),
    }
    store.close().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Write keys for `/v1/*` ingestion: `NUDGE_WRITE_KEYS`, or one generated on first start, kept
/// in the database (so it survives restarts) and printed so the operator can use it.
async fn write_keys(settings: &Settings, store: &Store) -> Result<Vec<Secret>, AppError> {
    if !settings.write_keys.is_empty() {
        return Ok(settings.write_keys.clone());
    }
    let key = store
        .setting_or_insert("generated_write_key", || {
            let mut bytes = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut bytes);
            format!("wk_{}", hex::encode(bytes))
        })
        .await?;
    // Printed on stdout on purpose: this is how a first-time user learns the key.
    println!("NUDGE_WRITE_KEYS is not set; ingestion accepts the generated write key: {key}");
    Ok(vec![Secret::new(key)])
}

/// `nudge import FILE`.
pub async fn import(settings: &Settings, file: &Path, trigger: bool) -> Result<(), AppError> {
    let store = open_store(settings).await?;
    let rule_set = if trigger {
        rules::load_dir(&settings.rules_dir).map_err(AppError::InvalidRules)?
    } else {
        rules::RuleSet::empty(settings.rules_dir.clone())
    };
    let engine = engine(settings, store.clone(), Arc::new(RulesHandle::new(rule_set))).await?;
    let options = ImportOptions {
        trigger,
        ..ImportOptions::default()
    };
    let summary = crate::events::import::import(&engine, file, options)
        .await
        .map_err(|e| AppError::Other(anyhow::Error::from(e)))?;
    println!("{summary}");
    store.close().await;
    if summary.rejected > 0 {
        return Err(AppError::Rejected(summary.rejected));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::OneLine;

    #[test]
    fn one_event_is_one_line() {
        let mut out = OneLine(Vec::new());
        out.write_all(b"INFO MessageSent user=u1\n2026-01-01T00:00:00Z ERROR forged\r\n")
            .unwrap();
        out.write_all(b"INFO plain\n").unwrap();
        let text = String::from_utf8(out.0).unwrap();
        assert_eq!(
            text,
            "INFO MessageSent user=u1\\n2026-01-01T00:00:00Z ERROR forged\\r\nINFO plain\n"
        );
        assert_eq!(text.lines().count(), 2);
    }
}
