//! The operators' side of a process: the Prometheus recorder (one per
//! process) and the admin listener serving `/metrics`, `/live` and `/ready`,
//! apart from the gRPC port so that it can be firewalled separately.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sesame_storage::Storage;

/// Latency buckets (seconds) for every histogram: 0.5 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Verdicts take human time, up to the 600 s maximum TTL.
const VERDICT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 300.0, 600.0,
];

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and describes every
/// metric; later calls (tests start several servers) reuse it. `None` when
/// another recorder was installed first.
pub fn prometheus() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(sesame_verifier::metrics::TIME_TO_VERDICT.into()),
                    VERDICT_BUCKETS,
                )
                .ok()?
                .install_recorder()
                .ok()?;
            sesame_grpc::metrics::describe();
            sesame_challenge::metrics::describe();
            sesame_verifier::metrics::describe();
            sesame_dispatcher::metrics::describe();
            Some(handle)
        })
        .clone()
}

#[derive(Clone)]
struct AdminState {
    metrics: Option<PrometheusHandle>,
    storage: Arc<dyn Storage>,
    draining: Arc<AtomicBool>,
}

async fn metrics_text(State(s): State<AdminState>) -> (StatusCode, String) {
    match &s.metrics {
        Some(h) => (StatusCode::OK, h.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder in this process\n".into(),
        ),
    }
}

/// Ready when the storage answers and the process is not draining.
async fn ready(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match s.storage.health_check().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n"),
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    storage: Arc<dyn Storage>,
    draining: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AdminState {
        metrics: prometheus(),
        storage,
        draining,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
