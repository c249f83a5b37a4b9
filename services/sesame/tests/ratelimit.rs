//! The `ratelimit` role over real gRPC: descriptor limits per tenant,
//! isolation, and bad input.

mod common;

use common::*;
use sesame_proto::ratelimit::v1 as pb;
use sesame_proto::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use sesame_ratelimit::{DescriptorLimit, LimitUnit};
use tonic::Code;

fn request(ips: &[&str], hits: u32) -> pb::RateLimitRequest {
    pb::RateLimitRequest {
        domain: "login".into(),
        descriptors: ips
            .iter()
            .map(|ip| pb::RateLimitDescriptor {
                entries: vec![pb::rate_limit_descriptor::Entry {
                    key: "ip".into(),
                    value: (*ip).into(),
                }],
            })
            .collect(),
        hits_addend: hits,
    }
}

#[tokio::test]
async fn descriptor_limits_per_tenant_over_grpc() {
    let h = Harness::start_configured(|c| {
        c.ratelimit.limits.push(DescriptorLimit {
            domain: "login".into(),
            keys: vec!["ip".into()],
            requests_per_unit: 3,
            unit: LimitUnit::Minute,
        })
    })
    .await;
    let mut client = RateLimitServiceClient::new(h.channel.clone());
    for remaining in [2, 1, 0] {
        let r = client
            .should_rate_limit(h.req(request(&["203.0.113.7"], 0)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.overall_code, pb::Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, remaining);
        assert_eq!(r.statuses[0].requests_per_unit, 3);
        assert_eq!(r.statuses[0].unit, pb::Unit::Minute as i32);
    }
    let r = client
        .should_rate_limit(h.req(request(&["203.0.113.7"], 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, pb::Code::OverLimit as i32);
    let wait = r.statuses[0].duration_until_reset_ms;
    assert!(
        (19_000..=20_000).contains(&wait),
        "one hit every 20 s: {wait}"
    );

    // Another address, and the same address for another tenant: own counters.
    let r = client
        .should_rate_limit(h.req(request(&["198.51.100.1"], 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, pb::Code::Ok as i32);
    let r = client
        .should_rate_limit(h.req_other(request(&["203.0.113.7"], 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, pb::Code::Ok as i32);
    // A domain with no configured limit is not limited.
    let mut free = request(&["203.0.113.7"], 0);
    free.domain = "signup".into();
    let r = client
        .should_rate_limit(h.req(free))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, pb::Code::Ok as i32);
    assert_eq!(r.statuses[0].requests_per_unit, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn ratelimit_requests_are_authenticated_and_validated() {
    let h = Harness::start().await;
    let mut client = RateLimitServiceClient::new(h.channel.clone());
    let r = client
        .should_rate_limit(tonic::Request::new(request(&["x"], 0)))
        .await;
    assert_eq!(status_of(r).code(), Code::Unauthenticated);
    let mut cases = Vec::new();
    let mut r = request(&["x"], 0);
    r.domain = String::new();
    cases.push((r, "domain"));
    cases.push((request(&[], 0), "descriptors"));
    cases.push((request(&["x"], 1001), "hits_addend"));
    let mut r = request(&["x"], 0);
    r.descriptors[0].entries[0].key = String::new();
    cases.push((r, "descriptors.entries.key"));
    let mut r = request(&["x"], 0);
    r.descriptors[0].entries[0].value = "v".repeat(257);
    cases.push((r, "descriptors.entries.value"));
    cases.push((request(&["x"; 17], 0), "descriptors"));
    for (req, field) in cases {
        let s = status_of(client.should_rate_limit(h.req(req)).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{field}");
        assert!(
            s.message().contains(field),
            "{} should name {field}",
            s.message()
        );
    }
    h.shutdown().await;
}
