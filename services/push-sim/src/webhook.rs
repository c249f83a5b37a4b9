//! A tenant's webhook receiver, as a careful tenant would write it: HTTPS
//! (HTTP/1.1 or HTTP/2), every request's signature and timestamp checked
//! with the tenant's secret ([`sesame_core::webhook::verify`]), each
//! `webhook-id` processed once. It can be told to fail the next requests,
//! and it records everything it saw, for tests and demos.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sesame_core::webhook::{
    verify, Secret, DEFAULT_TOLERANCE_SECS, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use tokio::net::TcpListener;

use crate::tls::SimTls;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub body: Bytes,
    /// `Ok` when the signature and timestamp verified with the secret.
    pub verified: Result<(), String>,
    /// What the receiver answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    secrets: Mutex<Vec<Secret>>,
    fail_next: AtomicU32,
    received: Mutex<Vec<Received>>,
    /// webhook-id -> times answered 2xx.
    accepted: Mutex<HashMap<String, u32>>,
    /// Requests answered 2xx, in all.
    delivered: std::sync::atomic::AtomicU64,
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const MAX_BODY: usize = 256 * 1024;

impl WebhookReceiver {
    /// Listens on `listener` with `tls`'s certificate (for `localhost`).
    pub fn start(listener: TcpListener, tls: &SimTls) -> Result<WebhookReceiver, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let config = tls.server_config(&[b"h2", b"http/1.1"])?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let state = Arc::new(State::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(WebhookReceiver { addr, state, task })
    }

    /// `https://localhost:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// The secrets a request may be signed with (the tenant's, after
    /// `SetWebhook` or a rotation).
    pub fn set_secrets(&self, secrets: &[&str]) -> Result<(), String> {
        let parsed = secrets
            .iter()
            .map(|s| Secret::parse(s).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if let Ok(mut g) = self.state.secrets.lock() {
            *g = parsed;
        }
        Ok(())
    }

    /// Answers `503` (with `Retry-After: 0`) to the next `n` requests.
    pub fn fail_next(&self, n: u32) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// Requests answered 2xx so far (cheap: for benchmarks).
    pub fn delivered(&self) -> u64 {
        self.state.delivered.load(Ordering::SeqCst)
    }

    /// webhook-id -> how many times it was answered 2xx.
    pub fn accepted(&self) -> HashMap<String, u32> {
        self.state
            .accepted
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }
}

async fn handle(state: &State, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signatures) = (
        header(HEADER_ID),
        header(HEADER_TIMESTAMP),
        header(HEADER_SIGNATURE),
    );
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let now = sesame_core::time::now_ms().div_euclid(1000);
    let secrets = state.secrets.lock().map(|g| g.clone()).unwrap_or_default();
    // Verify before anything else: an unsigned request is not acted on.
    let verified = if secrets.iter().any(|s| {
        verify(
            s,
            &id,
            &timestamp,
            &signatures,
            &body,
            now,
            DEFAULT_TOLERANCE_SECS,
        )
        .is_ok()
    }) {
        Ok(())
    } else {
        Err(secrets
            .first()
            .map(|s| {
                verify(
                    s,
                    &id,
                    &timestamp,
                    &signatures,
                    &body,
                    now,
                    DEFAULT_TOLERANCE_SECS,
                )
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
            })
            .unwrap_or_else(|| "no secret set".into()))
    };
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if verified.is_err() {
        401
    } else if failing {
        503
    } else {
        if let Ok(mut a) = state.accepted.lock() {
            *a.entry(id.clone()).or_default() += 1;
        }
        state.delivered.fetch_add(1, Ordering::SeqCst);
        200
    };
    if let Ok(mut r) = state.received.lock() {
        r.push(Received {
            id,
            timestamp,
            body,
            verified,
            status,
        });
    }
    let mut b = http::Response::builder().status(status);
    if status == 503 {
        b = b.header("retry-after", "0");
    }
    b.body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}
