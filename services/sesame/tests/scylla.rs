#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

//! Two `sesame` replicas (challenge, verifier and ratelimit roles) sharing
//! one ScyllaDB keyspace: what one writes the other serves, and a challenge
//! answered on both at once still gets exactly one verdict.
//!
//! `SESAME_SCYLLA_NODES=host:9042 cargo test -p sesame --test scylla`
//! (optional `SESAME_SCYLLA_DC` / `SESAME_SCYLLA_RF`, default
//! `datacenter1` / 1). Without a cluster every test is listed as ignored.

mod common;

use common::*;
use sesame_device_sim::SimDevice;
use sesame_proto::types::v1::ChallengeStatus as S;

fn scylla(config: &mut sesame::Config) {
    let nodes = std::env::var("SESAME_SCYLLA_NODES").unwrap_or_default();
    config.storage = format!("scylla://{nodes}/sesame_e2e");
    let dc = std::env::var("SESAME_SCYLLA_DC").unwrap_or_else(|_| "datacenter1".into());
    let rf = std::env::var("SESAME_SCYLLA_RF")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    config.scylla.replication = [(dc, rf)].into();
    config.scylla.request_timeout_ms = 10_000;
    // A watch on one replica learns of a verdict given on the other by
    // re-reading (there is no Kafka between them in this test).
    config.watch_resync_ms = 200;
}

async fn replicas() -> (Harness, Harness) {
    let mut config = sesame::Config::default();
    scylla(&mut config);
    let c = config.scylla_config().unwrap().unwrap();
    let (session, flavor) = sesame_storage_scylla::connect(&c).await.unwrap();
    sesame_storage_scylla::migrate(&session, &c, flavor)
        .await
        .unwrap();
    let a = Harness::start_configured(scylla).await;
    let b = Harness::start_configured(scylla).await;
    (a, b)
}

/// Enrolled through A, challenged through A, answered through B: A sees the verdict.
#[cfg_attr(
    not(scylla_live),
    ignore = "needs a cluster: set SESAME_SCYLLA_NODES=host:9042[,host...] and rebuild"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_spans_two_replicas() {
    let (a, b) = replicas().await;
    let user = format!("alice-{}", sesame::cli::random_suffix());
    let on_a = a.enroll(&user).await;
    let on_b = SimDevice::from_identity(on_a.identity.clone(), b.channel.clone()).unwrap();

    let c = a.create(&user, ENTER, 60).await;
    let pending = on_b.pending().await.unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|p| p.challenge_id.as_str())
            .collect::<Vec<_>>(),
        vec![c.challenge_id.as_str()],
        "B lists the challenge A created"
    );
    let r = on_b
        .respond(&pending[0], &approve(&c.number_match_code))
        .await
        .unwrap();
    assert_eq!(r.status, st(S::Approved));
    assert_eq!(a.get(&c.challenge_id).await.status, st(S::Approved));
    assert_eq!(b.get(&c.challenge_id).await.status, st(S::Approved));
    a.shutdown().await;
    b.shutdown().await;
}

/// The same signed answer and a conflicting one, sent to both replicas at
/// once, many times over: one verdict, the same everywhere.
#[cfg_attr(
    not(scylla_live),
    ignore = "needs a cluster: set SESAME_SCYLLA_NODES=host:9042[,host...] and rebuild"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_answers_on_two_replicas_give_one_verdict() {
    let (a, b) = replicas().await;
    let user = format!("racer-{}", sesame::cli::random_suffix());
    let on_a = std::sync::Arc::new(a.enroll(&user).await);
    let on_b = std::sync::Arc::new(
        SimDevice::from_identity(on_a.identity.clone(), b.channel.clone()).unwrap(),
    );
    for _ in 0..5 {
        let c = a.create(&user, NONE, 60).await;
        let d = details(&on_a, &c.challenge_id).await;
        let yes = on_a
            .signed_answer(&d, &approve(&c.number_match_code))
            .unwrap();
        let no = on_b
            .signed_answer(&d, &answer(sesame_core::model::Decision::Deny))
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (phone, req) = match i % 4 {
                0 => (on_a.clone(), yes.clone()),
                1 => (on_b.clone(), yes.clone()),
                2 => (on_a.clone(), no.clone()),
                _ => (on_b.clone(), no.clone()),
            };
            tasks.push(tokio::spawn(async move { phone.send_answer(req).await }));
        }
        let mut accepted = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await.unwrap() {
                accepted.push(r.status);
            }
        }
        let final_a = a.get(&c.challenge_id).await.status;
        let final_b = b.get(&c.challenge_id).await.status;
        assert_eq!(final_a, final_b);
        assert!(
            final_a == st(S::Approved) || final_a == st(S::Denied),
            "{final_a}"
        );
        assert!(
            !accepted.is_empty() && accepted.iter().all(|s| *s == final_a),
            "every accepted answer reports the one verdict: {accepted:?} vs {final_a}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
