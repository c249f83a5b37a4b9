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
    parse_traceparent(value).map(|(trace, _)| trace)
}

/// The trace id and the caller's span id of a valid W3C `traceparent`.
pub fn parse_traceparent(value: &str) -> Option<(String, String)> {
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
        && span.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| (trace.to_owned(), span.to_owned()))
}

/// Puts `span` into the trace `trace_id`, as a child of the caller's span
/// `parent` when it is known, so that spans exported over OTLP carry the
/// same trace id as the logs and the `x-sesame-trace-id` header. Without a
/// known parent a random one stands in: OpenTelemetry takes a trace id only
/// from a parent. Does nothing when no OpenTelemetry layer is installed.
pub fn link(span: &tracing::Span, trace_id: &str, parent: Option<&str>) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Ok(trace) = opentelemetry::trace::TraceId::from_hex(trace_id) else {
        return;
    };
    let parent = parent
        .and_then(|p| SpanId::from_hex(p).ok())
        .unwrap_or_else(|| SpanId::from_bytes(sesame_core::ids::random_bytes::<8>()));
    let remote = SpanContext::new(
        trace,
        parent,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
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
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert_eq!(from_traceparent(bad), None, "{bad}");
        }
        assert_eq!(new_trace_id().len(), 32);
        assert_eq!(
            parse_traceparent(&format!("00-{id}-00f067aa0ba902b7-01")),
            Some((id.to_owned(), "00f067aa0ba902b7".to_owned()))
        );
    }

    #[tokio::test]
    async fn current_is_scoped() {
        assert_eq!(current(), None);
        let inner = scope("abc".into(), async { current() }).await;
        assert_eq!(inner.as_deref(), Some("abc"));
    }
}
