//! The TLS + HTTP/2 server both simulators run on, with the connection-level
//! faults a real provider shows: GOAWAY (graceful: streams in flight finish,
//! new ones go to a new connection) and an abrupt reset (the TCP connection
//! dropped under a request).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What happens to the connection after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnAction {
    Keep,
    GoAway,
    Reset,
}

pub struct Reply {
    pub response: http::Response<Full<Bytes>>,
    pub then: ConnAction,
}

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Handler: Send + Sync + 'static {
    /// Per-connection state (APNs binds a provider token to a connection).
    type Conn: Default + Send + Sync + 'static;
    fn handle<'a>(&'a self, req: http::Request<Bytes>, conn: &'a Self::Conn) -> BoxFut<'a, Reply>;
}

/// A simulator that is listening.
pub struct Running {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bodies larger than this are cut off (a real provider refuses long before).
const MAX_BODY: usize = 64 * 1024;

pub fn serve<H: Handler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            while conns.try_join_next().is_some() {}
            conns.spawn(connection(acceptor.clone(), tcp, handler.clone()));
        }
    });
    Ok(Running { addr, task })
}

async fn connection<H: Handler>(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    handler: Arc<H>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    // HTTP/2 only, like APNs: a client that did not negotiate h2 is dropped.
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return;
    }
    let state = Arc::new(H::Conn::default());
    let (tx, mut actions) = mpsc::unbounded_channel::<ConnAction>();
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let handler = handler.clone();
        let state = state.clone();
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            let reply = handler
                .handle(http::Request::from_parts(parts, body), &state)
                .await;
            if reply.then == ConnAction::Reset {
                let _ = tx.send(ConnAction::Reset);
                // Never answered: the connection is dropped under it.
                std::future::pending::<()>().await;
            }
            if reply.then == ConnAction::GoAway {
                let _ = tx.send(ConnAction::GoAway);
            }
            Ok::<_, std::convert::Infallible>(reply.response)
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(1000)
        .serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            action = actions.recv() => match action {
                Some(ConnAction::GoAway) => conn.as_mut().graceful_shutdown(),
                Some(ConnAction::Reset) => return,
                _ => {}
            },
        }
    }
}

pub fn json_response(
    status: u16,
    headers: &[(&str, String)],
    body: serde_json::Value,
) -> http::Response<Full<Bytes>> {
    let mut b = http::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}

pub fn empty_response(status: u16, headers: &[(&str, String)]) -> http::Response<Full<Bytes>> {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}
