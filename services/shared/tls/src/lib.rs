//! TLS for Sesame's listeners, with rustls (ring) as the one TLS stack.
//!
//! - [`ServerTls`]: a server certificate, its key and the optional client
//!   CAs, read from PEM files and **re-read while serving**: a reloader
//!   compares the files' contents every few seconds and swaps the
//!   configuration that new connections get; connections already open keep
//!   theirs, so a rotation loses no call. A file that is half-written or
//!   does not match its key is refused and the previous configuration kept.
//! - Client certificates are optional at the handshake (phones have none);
//!   when one is given it must chain to `client_ca` (tenants) or
//!   `internal_ca` (Sesame's own roles). [`PeerLayer`] puts what the
//!   certificate proves ([`PeerInfo`]) into every request, where tenant
//!   authentication checks it against the tenant's bound identity and
//!   internal services check it came from the internal CA.
//! - [`ClientTls`]: the settings of Sesame's own clients (CLI, load tester,
//!   role-to-role calls): the CA to trust and an optional client identity.

mod client;
mod incoming;
pub mod metrics;
mod peer;
mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::ClientTls;
pub use incoming::TlsIncoming;
pub use peer::{require_internal, PeerInfo, PeerLayer, PeerService};
pub use server::{Alpn, ServerTls, TlsFiles};

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Config(String),
}

impl TlsError {
    fn file(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        TlsError::File {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The one crypto provider every configuration is built with.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
