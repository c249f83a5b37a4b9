//! The operators' side of a process: logging (JSON or text, its filter
//! changeable at run time), the Prometheus recorder (one per process) and the
//! admin listener serving `/metrics`, `/live`, `/ready` and `/log_level`,
//! apart from the gRPC port so that it can be firewalled separately.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sesame_queue::Queue;
use sesame_storage::Storage;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Latency buckets (seconds) for every histogram: 0.5 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Verdicts take human time, up to the 600 s maximum TTL; the sub-second
/// buckets show answers no person could give that fast (scripted phones,
/// load tests), which would otherwise all fall into the first bucket.
const VERDICT_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 300.0, 600.0,
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
            sesame_grpc::admission::describe();
            sesame_challenge::metrics::describe();
            sesame_verifier::metrics::describe();
            sesame_dispatcher::metrics::describe();
            sesame_push::metrics::describe();
            sesame_storage::metered::describe();
            sesame_queue::metrics::describe();
            sesame_webhook::metrics::describe();
            // Histograms are drained only by rendering or upkeep: without a
            // scraper they would grow, so run upkeep in the background.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("sesame-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            Some(handle)
        })
        .clone()
}

/// Changes the running process's log filter (`GET`/`PUT /log_level`).
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogControl {
    pub fn new(handle: reload::Handle<EnvFilter, Registry>) -> Self {
        LogControl { handle }
    }

    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }

    /// Replaces the filter, e.g. `debug` or `sesame=debug,info`.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives.trim()).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the process's logger: JSON (production) or text (development),
/// to stderr, with a filter from `SESAME_LOG` or `level` that can be changed
/// later through the returned [`LogControl`].
pub fn init_tracing(format: &str, level: &str) -> LogControl {
    install(format, level, None)
}

/// How a process logs and exports its spans.
#[derive(Debug, Clone, Default)]
pub struct TracingSettings {
    /// `json` or `text`.
    pub format: String,
    /// The initial filter, e.g. `info` (`SESAME_LOG` overrides).
    pub level: String,
    /// OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`; empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub otlp_service_name: String,
}

/// Exports spans while alive; [`OtlpExport::shutdown`] sends what is left.
pub struct OtlpExport {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl OtlpExport {
    /// Sends the finished spans now. Blocks: call it off the async threads.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::debug!(error = %e, "OTLP flush failed");
        }
    }

    /// Sends what is left and stops (at exit).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// [`init_tracing`], and with `otlp_endpoint` set the spans (one per RPC,
/// `rpc`, and per push, `push`, under the login's trace id) exported over
/// OTLP/gRPC in batches. Must run inside the Tokio runtime (the exporter
/// runs on it). The log filter decides which spans exist, so it applies to
/// the export too.
pub fn init_tracing_with(
    settings: &TracingSettings,
) -> anyhow::Result<(LogControl, Option<OtlpExport>)> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    if settings.otlp_endpoint.is_empty() {
        return Ok((install(&settings.format, &settings.level, None), None));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.otlp_endpoint.clone())
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow::anyhow!("otlp_endpoint {}: {e}", settings.otlp_endpoint))?;
    // The exporter's gRPC client needs the Tokio reactor: the batch
    // processor runs as a task on the runtime, not on a thread of its own.
    let batch =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(settings.otlp_service_name.clone())
                .build(),
        )
        .build();
    let control = install(
        &settings.format,
        &settings.level,
        Some(provider.tracer("sesame")),
    );
    Ok((control, Some(OtlpExport { provider })))
}

/// The global subscriber: the reloadable filter, then OpenTelemetry (given
/// a tracer), then the log lines.
fn install(
    format: &str,
    level: &str,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
) -> LogControl {
    let filter = EnvFilter::try_from_env("SESAME_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let otel = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = if format == "json" {
        registry.with(fmt.json()).try_init()
    } else {
        registry.with(fmt).try_init()
    };
    if let Err(e) = installed {
        // A second server in one process (tests): the first one's logger stays.
        eprintln!("sesame: a logger is installed already, keeping it: {e}");
    }
    LogControl::new(handle)
}

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    log: Option<LogControl>,
    metrics: Option<PrometheusHandle>,
    storage: Arc<dyn Storage>,
    /// Checked by `/ready` when the process can do nothing without it.
    queue: Option<Arc<dyn Queue>>,
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

/// Ready when the storage (and, for a dispatcher, the queue) answers and the
/// process is not draining.
async fn ready(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if s.storage.health_check().await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n");
    }
    match &s.queue {
        Some(q) if q.health_check().await.is_err() => {
            (StatusCode::SERVICE_UNAVAILABLE, "queue unavailable\n")
        }
        _ => (StatusCode::OK, "ready\n"),
    }
}

async fn get_log_level(State(s): State<AdminState>) -> (StatusCode, String) {
    match &s.log {
        Some(l) => (StatusCode::OK, format!("{}\n", l.current())),
        None => (
            StatusCode::NOT_FOUND,
            "no reloadable logger in this process\n".into(),
        ),
    }
}

async fn put_log_level(State(s): State<AdminState>, body: String) -> (StatusCode, String) {
    match &s.log {
        Some(l) => match l.set(&body) {
            Ok(()) => {
                tracing::info!(filter = %l.current(), "log filter changed");
                (StatusCode::OK, format!("{}\n", l.current()))
            }
            Err(e) => (
                StatusCode::BAD_REQUEST,
                format!("not a log filter ({e}); examples: info, debug, sesame=debug,info\n"),
            ),
        },
        None => (
            StatusCode::NOT_FOUND,
            "no reloadable logger in this process\n".into(),
        ),
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
impl AdminState {
    pub fn new(
        storage: Arc<dyn Storage>,
        queue: Option<Arc<dyn Queue>>,
        draining: Arc<AtomicBool>,
        log: Option<LogControl>,
    ) -> Self {
        AdminState {
            log,
            metrics: prometheus(),
            storage,
            queue,
            draining,
        }
    }
}

/// The admin port over TLS: established connections from a [`sesame_tls::TlsIncoming`].
pub struct TlsListener(pub sesame_tls::TlsIncoming);

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.next().await {
            Some(c) => c,
            // The accept task only ends with the process.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}

pub async fn serve_admin<L>(
    listener: L,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/log_level", get(get_log_level).put(put_log_level))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn request(addr: std::net::SocketAddr, method: &str, body: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} /log_level HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn log_level_changes_at_run_time() {
        let (layer, handle) = reload::Layer::<_, Registry>::new(EnvFilter::new("info"));
        // The subscriber holding the filter (not installed globally here).
        let _subscriber = tracing_subscriber::registry().with(layer);
        let control = LogControl::new(handle);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_admin(
            listener,
            AdminState::new(
                Arc::new(sesame_storage::MemStorage::new()),
                None,
                Arc::new(AtomicBool::new(false)),
                Some(control.clone()),
            ),
            std::future::pending(),
        ));
        assert!(request(addr, "GET", "").await.contains("\r\n\r\ninfo"));
        let r = request(addr, "PUT", "sesame=debug,warn").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert_eq!(control.current(), "sesame=debug,warn");
        let r = request(addr, "PUT", "sesame=loud[").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        assert_eq!(
            control.current(),
            "sesame=debug,warn",
            "a bad filter changes nothing"
        );
    }
}
