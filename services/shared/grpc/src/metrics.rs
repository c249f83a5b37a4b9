//! Per-RPC metrics (rate, errors by status code, latency) and trace context
//! (see [`crate::trace`]) for every gRPC service, as one tower layer on the
//! server. Metric names live here.
//!
//! The status code comes from the `grpc-status` response header: tonic sends
//! every error as a trailers-only response, so a response without that header
//! is a call that started successfully (`OK`; for server streams, the code of
//! the stream's end is not counted here); a call dropped before it answered
//! (timeout, disconnect) counts as `CANCELLED`. Labels are bounded: service
//! and method only for Sesame's and gRPC's own services and only if a service
//! answered (`UNIMPLEMENTED` paths are `other`), `other` for anything else.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// `sesame_grpc_requests_total{service, method, code}`
pub const GRPC_REQUESTS: &str = "sesame_grpc_requests_total";
/// `sesame_grpc_request_duration_seconds{service, method}`: until the response headers.
pub const GRPC_DURATION: &str = "sesame_grpc_request_duration_seconds";

pub fn describe() {
    metrics::describe_counter!(
        GRPC_REQUESTS,
        "gRPC calls by service, method and status code"
    );
    metrics::describe_histogram!(
        GRPC_DURATION,
        metrics::Unit::Seconds,
        "gRPC call latency until the response headers"
    );
}

fn labels(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let known = (service.starts_with("sesame.") || service.starts_with("grpc."))
        && service.len() <= 64
        && method.len() <= 64
        && method.bytes().all(|b| b.is_ascii_alphanumeric());
    if known {
        (service.to_owned(), method.to_owned())
    } else {
        ("other".into(), "other".into())
    }
}

fn code_name(header: Option<&http::HeaderValue>) -> &'static str {
    let code = header
        .and_then(|v| v.to_str().ok())
        .map(|v| v.parse::<i32>().unwrap_or(2)) // malformed: UNKNOWN
        .unwrap_or(0);
    match tonic::Code::from(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The layer to add to the tonic server.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = labels(req.uri().path());
        let (trace_id, parent) = match req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::trace::parse_traceparent)
        {
            Some((trace, parent)) => (trace, Some(parent)),
            None => (crate::trace::new_trace_id(), None),
        };
        let span =
            tracing::info_span!("rpc", %trace_id, rpc.service = %service, rpc.method = %method);
        crate::trace::link(&span, &trace_id, parent.as_deref());
        let start = Instant::now();
        let fut = self.inner.call(req);
        let header = http::HeaderValue::from_str(&trace_id).ok();
        let fut = crate::trace::scope(trace_id, tracing::Instrument::instrument(fut, span));
        let mut record = Record {
            service,
            method,
            start,
            done: false,
        };
        Box::pin(async move {
            let mut res = fut.await;
            if let (Ok(r), Some(h)) = (&mut res, header) {
                r.headers_mut().insert(crate::trace::TRACE_ID_HEADER, h);
            }
            let code = match &res {
                Ok(r) => code_name(r.headers().get("grpc-status")),
                Err(_) => "UNAVAILABLE",
            };
            record.finish(code);
            res
        })
    }
}

/// Records one call once: when it completes, or — if its future is dropped
/// first (the server's timeout, the caller's `grpc-timeout`, a disconnect) —
/// as `CANCELLED`, so the slowest calls do not vanish from the error ratio
/// and the latency percentiles.
struct Record {
    service: String,
    method: String,
    start: Instant,
    done: bool,
}

impl Record {
    fn finish(&mut self, code: &'static str) {
        if self.done {
            return;
        }
        self.done = true;
        // A path no service answers must not mint label values: it is `other`.
        let (service, method) = if code == "UNIMPLEMENTED" {
            ("other".to_owned(), "other".to_owned())
        } else {
            (self.service.clone(), self.method.clone())
        };
        metrics::counter!(GRPC_REQUESTS, "service" => service.clone(), "method" => method.clone(), "code" => code)
            .increment(1);
        metrics::histogram!(GRPC_DURATION, "service" => service, "method" => method)
            .record(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            labels("/sesame.tenant.v1.ChallengeService/CreateChallenge"),
            (
                "sesame.tenant.v1.ChallengeService".into(),
                "CreateChallenge".into()
            )
        );
        assert_eq!(labels("/evil/../x"), ("other".into(), "other".into()));
        assert_eq!(labels(&format!("/sesame.x/{}", "a".repeat(100))).0, "other");
        assert_eq!(
            code_name(Some(&http::HeaderValue::from_static("8"))),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(code_name(None), "OK");
    }
}
