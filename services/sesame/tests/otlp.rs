//! Traces exported over OTLP (gRPC) to a collector, here a real OTLP
//! `TraceService` on loopback that records what it receives: one login's
//! spans — the tenant's `CreateChallenge` call, the dispatcher's push, the
//! phone's answer — arrive under the trace id the identity server sent in
//! `traceparent`, as children of its span, with the service's name.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// (service.name, span name, trace id, parent span id) of every span received.
fn spans(c: &Collector) -> Vec<(String, String, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for req in c.0.lock().unwrap().iter() {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((
                        service.clone(),
                        s.name.clone(),
                        s.trace_id.clone(),
                        s.parent_span_id.clone(),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_is_one_trace_at_the_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = collector.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (_log, otlp) = sesame::telemetry::init_tracing_with(&sesame::telemetry::TracingSettings {
        format: "text".into(),
        level: "info".into(),
        otlp_endpoint: endpoint,
        otlp_service_name: "sesame-test".into(),
    })
    .unwrap();
    let otlp = otlp.expect("an OTLP exporter for a configured endpoint");

    let h = Harness::start().await;
    let phone = h.enroll("traced").await;
    let mut inbox = phone.push_inbox().await.unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let mut req = h.req(Harness::login_request("traced", ENTER, 0));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent}-01").parse().unwrap(),
    );
    let c = h
        .challenges()
        .create_challenge(req)
        .await
        .unwrap()
        .into_inner()
        .challenge
        .unwrap();
    next_push(&phone, &mut inbox).await;
    let d = details(&phone, &c.challenge_id).await;
    phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();

    let tid = hex::decode(trace_id).unwrap();
    let pid = hex::decode(parent).unwrap();
    let mut found = Vec::new();
    for _ in 0..50 {
        tokio::task::block_in_place(|| otlp.flush());
        found = spans(&collector)
            .into_iter()
            .filter(|s| s.2 == tid)
            .collect();
        if found.iter().any(|s| s.1 == "rpc") && found.iter().any(|s| s.1 == "push") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        found.iter().any(|s| s.1 == "rpc" && s.3 == pid),
        "the CreateChallenge span, a child of the caller's: {found:?}"
    );
    assert!(
        found.iter().any(|s| s.1 == "push"),
        "the dispatcher's push span: {found:?}"
    );
    assert!(found.iter().all(|s| s.0 == "sesame-test"), "{found:?}");
    // Calls without a traceparent get traces of their own.
    assert!(spans(&collector).iter().any(|s| s.1 == "rpc" && s.2 != tid));
}
