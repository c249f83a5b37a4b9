//! Metric names of the TLS layer, in one place.

/// Handshakes by listener (`grpc`, `admin`) and result (`ok`, `failed`, `timeout`).
pub const HANDSHAKES: &str = "sesame_tls_handshakes_total";
/// Certificate reloads by result (`changed`, `refused`).
pub const RELOADS: &str = "sesame_tls_reloads_total";
/// When the server certificate being served expires (Unix seconds).
pub const CERT_EXPIRY: &str = "sesame_tls_cert_expiry_timestamp_seconds";

pub fn describe() {
    metrics::describe_counter!(
        HANDSHAKES,
        "TLS handshakes on Sesame's listeners, by listener and result"
    );
    metrics::describe_counter!(
        RELOADS,
        "Reloads of the TLS certificate files: changed (now served) or refused (previous kept)"
    );
    metrics::describe_gauge!(
        CERT_EXPIRY,
        metrics::Unit::Seconds,
        "Expiry (notAfter, Unix time) of the server certificate being served"
    );
}
