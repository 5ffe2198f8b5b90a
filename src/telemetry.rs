//! Telemetry: the process-wide Prometheus recorder behind `GET /metrics`.
//!
//! Counters are recorded with the `metrics` facade wherever something happens; this module installs
//! the one recorder that collects them and hands out the handle that renders them.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder (once per process) and returns its handle. Safe to call many
/// times: later calls return the same handle. If another recorder was installed first, the handle
/// renders an empty, unattached registry rather than failing.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            match builder.install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "MetricsRecorderNotInstalled: another recorder is in place");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}
