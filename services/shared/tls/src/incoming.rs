//! Accepting TLS connections without letting one slow client hold the door.
//!
//! Each handshake runs in its own task with a deadline, so a client that
//! opens a TCP connection and says nothing costs one task for at most
//! [`HANDSHAKE_TIMEOUT`], never the accept loop. The number of handshakes
//! in flight is bounded: past it, accepting pauses and the kernel's backlog
//! holds the rest.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::{metrics as m, Alpn, ServerTls};

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HANDSHAKES: usize = 1024;

/// A stream of established TLS connections from one listener.
pub struct TlsIncoming {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TlsIncoming {
    /// Starts accepting on `listener`; `name` labels the handshake metric.
    pub fn new(
        listener: TcpListener,
        tls: ServerTls,
        alpn: Alpn,
        name: &'static str,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(256);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, retry.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                // Small gRPC frames must not wait for Nagle and delayed ACKs.
                let _ = tcp.set_nodelay(true);
                // Each connection gets the configuration current when it arrives.
                let acceptor = TlsAcceptor::from(tls.config(alpn));
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            metrics::counter!(m::HANDSHAKES, "listener" => name, "result" => "ok")
                                .increment(1);
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!(m::HANDSHAKES, "listener" => name, "result" => "failed")
                                .increment(1);
                            tracing::debug!(%peer, error = %e, listener = name, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!(m::HANDSHAKES, "listener" => name, "result" => "timeout")
                                .increment(1);
                            tracing::debug!(%peer, listener = name, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsIncoming {
            rx,
            local,
            accept_task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next established connection; `None` once the listener is gone.
    pub async fn next(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.rx.recv().await
    }
}

/// For `Server::serve_with_incoming`: established connections, never an
/// error item (failed handshakes are counted and dropped above).
impl tokio_stream::Stream for TlsIncoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|(stream, _)| Ok(stream)))
    }
}
