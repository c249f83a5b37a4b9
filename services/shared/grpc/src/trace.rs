//! Trace context: one id follows a login across roles. The gRPC layer takes
//! it from a W3C `traceparent` header (or makes a new one), puts it on the
//! span of the call (so every log line of the call carries `trace_id`),
//! echoes it in the `x-sesame-trace-id` response header, and makes it
//! available to the handler ([`current`]) so it travels on in push jobs (and
//! Kafka headers once the queue is Kafka).

tokio::task_local! {
    static TRACE_ID: String;
}

/// Response header carrying the call's trace id.
pub const TRACE_ID_HEADER: &str = "x-sesame-trace-id";

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
pub fn from_traceparent(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && hex(flags, 2);
    valid.then(|| trace.to_owned())
}

/// A fresh random trace id (32 lower-case hex digits).
pub fn new_trace_id() -> String {
    hex::encode(sesame_core::ids::random_bytes::<16>())
}

/// The trace id of the gRPC call being handled, if any.
pub fn current() -> Option<String> {
    TRACE_ID.try_with(|t| t.clone()).ok()
}

/// Runs `fut` with `trace_id` as the current trace id.
pub async fn scope<F: std::future::Future>(trace_id: String, fut: F) -> F::Output {
    TRACE_ID.scope(trace_id, fut).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_w3c_traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            from_traceparent(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
            Some(id)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(from_traceparent(bad), None, "{bad}");
        }
        assert_eq!(new_trace_id().len(), 32);
    }

    #[tokio::test]
    async fn current_is_scoped() {
        assert_eq!(current(), None);
        let inner = scope("abc".into(), async { current() }).await;
        assert_eq!(inner.as_deref(), Some("abc"));
    }
}
