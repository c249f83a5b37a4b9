#![allow(clippy::unwrap_used)]
//! Signed verdict webhooks, end to end: real gRPC on loopback, a tenant's
//! receiver over real TLS (`sesame_push_sim::webhook`) that verifies every
//! signature with the secret it was shown, a receiver that is down and then
//! comes back, one that fails until the delivery is dead-lettered, secret
//! rotation, and the SSRF guard at registration and at delivery.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use sesame_core::model::Decision;
use sesame_core::webhook::{StoredSecret, VerdictNotice, WebhookEndpoint};
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::webhook_service_client::WebhookServiceClient;
use sesame_push_sim::tls::SimTls;
use sesame_push_sim::webhook::WebhookReceiver;
use tonic::Code;

struct Setup {
    h: Harness,
    tls: SimTls,
    _ca_dir: tempfile::TempDir,
}

/// A server whose webhooks may reach loopback (the test receiver), trust
/// the receiver's CA, and retry quickly.
async fn setup(max_attempts: u32, allow_loopback: bool) -> Setup {
    let tls = SimTls::generate().unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("receiver-ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    // Secrets at rest sealed with an operator key.
    let seal = ca_dir.path().join("seal.key");
    std::fs::write(&seal, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
    let h = Harness::start_configured(|c| {
        c.webhook.ca_file = ca.display().to_string();
        c.webhook.seal_key_file = seal.display().to_string();
        c.webhook.base_backoff_ms = 50;
        c.webhook.max_backoff_ms = 400;
        c.webhook.max_attempts = max_attempts;
        c.webhook.timeout_ms = 2_000;
        if allow_loopback {
            c.webhook.allow_private = vec!["127.0.0.1/32".into(), "::1/128".into()];
        }
    })
    .await;
    Setup {
        h,
        tls,
        _ca_dir: ca_dir,
    }
}

fn hooks(h: &Harness) -> WebhookServiceClient<tonic::transport::Channel> {
    WebhookServiceClient::new(h.channel.clone())
}

async fn set_webhook(h: &Harness, url: &str) -> pb::SetWebhookResponse {
    hooks(h)
        .set_webhook(h.req(pb::SetWebhookRequest { url: url.into() }))
        .await
        .unwrap()
        .into_inner()
}

async fn free_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Waits until the receiver has accepted every id in `want`.
async fn accepted_all(r: &WebhookReceiver, want: &HashSet<String>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = r.accepted();
        if want.iter().all(|id| got.contains_key(id)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every verdict was delivered: want {want:?}, accepted {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One login answered with `decision` by a fresh user's phone; returns the
/// challenge id.
async fn login(h: &Harness, user: &str, decision: Decision) -> String {
    let phone = h.enroll(user).await;
    let mut inbox = phone.push_inbox().await.unwrap();
    let c = h.create(user, ENTER, 0).await;
    next_push(&phone, &mut inbox).await;
    let d = details(&phone, &c.challenge_id).await;
    let a = match decision {
        Decision::Approve => approve(&c.number_match_code),
        other => answer(other),
    };
    phone.respond(&d, &a).await.unwrap();
    c.challenge_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verdict_reaches_the_receiver_signed_once_even_after_it_was_down() {
    let s = setup(50, true).await;
    let h = &s.h;
    // The receiver's port, at first held by a listener that drops every
    // connection at once (a receiver that is down): the first attempts fail.
    let down = free_listener().await;
    let port = down.local_addr().unwrap().port();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = dropped.clone();
    let down_task = tokio::spawn(async move {
        while let Ok((s, _)) = down.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let url = format!("https://localhost:{port}/hooks/sesame");
    let set = set_webhook(h, &url).await;
    assert!(set.secret.starts_with("whsec_"), "{:?}", set.secret);
    let w = set.webhook.unwrap();
    assert_eq!(w.url, url);
    assert_eq!(w.live_secrets, 1);
    // Setting it again keeps the secret and does not show it again.
    let again = set_webhook(h, &url).await;
    assert!(again.secret.is_empty());
    // Storage holds it sealed, not as shown.
    let stored = h
        .storage
        .get_webhook(&sesame_core::TenantId::parse("dev").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.secrets.len(), 1);
    assert!(
        stored.secrets[0].secret.starts_with("sealed:v1:"),
        "stored in clear"
    );
    assert!(!stored.secrets[0].secret.contains(&set.secret[6..]));

    let mut expect = Vec::new();
    expect.push((
        login(h, "wh-alice", Decision::Approve).await,
        "approved",
        "",
    ));
    expect.push((
        login(h, "wh-bob", Decision::Deny).await,
        "denied",
        "user_denied",
    ));
    expect.push((
        login(h, "wh-carol", Decision::DenyFraud).await,
        "denied",
        "fraud_reported",
    ));
    let _dave = h.enroll("wh-dave").await;
    let cancelled = h.create("wh-dave", ENTER, 0).await;
    h.challenges()
        .cancel_challenge(h.req(pb::CancelChallengeRequest {
            challenge_id: cancelled.challenge_id.clone(),
        }))
        .await
        .unwrap();
    expect.push((cancelled.challenge_id.clone(), "cancelled", ""));

    // Every verdict was tried, and failed, while the receiver was down.
    for _ in 0..600 {
        if dropped.load(std::sync::atomic::Ordering::SeqCst) >= expect.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst) >= expect.len(),
        "attempts while down: {dropped:?}"
    );
    // The receiver comes up on that port, and answers 503 to its first
    // three requests.
    down_task.abort();
    let _ = down_task.await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let r = WebhookReceiver::start(listener, &s.tls).unwrap();
    r.set_secrets(&[&set.secret]).unwrap();
    r.fail_next(3);
    let ids: HashSet<String> = expect.iter().map(|(c, _, _)| format!("vd_{c}")).collect();
    accepted_all(&r, &ids, Duration::from_secs(30)).await;
    // Nothing more arrives once every delivery was answered 2xx.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let seen = r.received();
    assert!(seen.iter().all(|x| x.verified.is_ok()), "{seen:#?}");
    assert_eq!(seen.iter().filter(|x| x.status == 503).count(), 3);
    let accepted = r.accepted();
    assert_eq!(accepted.len(), ids.len(), "{accepted:?}");
    assert!(
        accepted.values().all(|n| *n == 1),
        "a delivery answered 2xx was sent again: {accepted:?}"
    );
    for (challenge, status, reason) in &expect {
        let id = format!("vd_{challenge}");
        let tries: Vec<_> = seen.iter().filter(|x| x.id == id).collect();
        // Every attempt of one delivery carries the same bytes.
        assert!(tries.windows(2).all(|w| w[0].body == w[1].body));
        let n: VerdictNotice = serde_json::from_slice(&tries[0].body).unwrap();
        assert_eq!(n.kind, "challenge.verdict");
        assert_eq!(n.delivery_id, id);
        assert_eq!(n.challenge_id, *challenge);
        assert_eq!(n.tenant_id, "dev");
        assert_eq!(n.status, *status);
        assert_eq!(n.deny_reason, *reason);
        assert!(n.decided_at_unix_ms > 0);
    }
    // The approval names the phone that decided it; the cancel none.
    let approved: VerdictNotice = serde_json::from_slice(
        &seen
            .iter()
            .find(|x| x.id == format!("vd_{}", expect[0].0))
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(approved.device_id.starts_with("dv_"), "{approved:?}");
    assert_eq!(approved.user_id, "wh-alice");
    s.h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_dead_letters_and_redelivery() {
    let s = setup(3, true).await;
    let h = &s.h;
    let r = WebhookReceiver::start(free_listener().await, &s.tls).unwrap();
    let first = set_webhook(h, &r.url("/hook")).await.secret;

    // Rotation: the receiver switches to the new secret at once; the old
    // one still signs too, so either verifies during the grace period.
    let rotated = hooks(h)
        .rotate_webhook_secret(h.req(pb::RotateWebhookSecretRequest { grace_seconds: 600 }))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, first);
    let w = rotated.webhook.unwrap();
    assert_eq!(w.live_secrets, 2);
    assert!(w.previous_secret_retires_at_unix_ms > sesame_core::time::now_ms());
    let too_long = hooks(h)
        .rotate_webhook_secret(h.req(pb::RotateWebhookSecretRequest {
            grace_seconds: 8 * 86_400,
        }))
        .await;
    assert_eq!(status_of(too_long).code(), Code::InvalidArgument);
    r.set_secrets(&[&rotated.secret]).unwrap();
    let c1 = login(h, "rot-alice", Decision::Approve).await;
    accepted_all(
        &r,
        &HashSet::from([format!("vd_{c1}")]),
        Duration::from_secs(10),
    )
    .await;
    r.set_secrets(&[&first]).unwrap();
    let c2 = login(h, "rot-bob", Decision::Approve).await;
    accepted_all(
        &r,
        &HashSet::from([format!("vd_{c2}")]),
        Duration::from_secs(10),
    )
    .await;
    assert!(r.received().iter().all(|x| x.verified.is_ok()));

    // A receiver that keeps failing: three attempts, then a dead delivery.
    r.fail_next(1_000);
    let c3 = login(h, "rot-carol", Decision::Approve).await;
    let id3 = format!("vd_{c3}");
    let dead = loop {
        let page = hooks(h)
            .list_dead_deliveries(h.req(pb::ListDeadDeliveriesRequest::default()))
            .await
            .unwrap()
            .into_inner();
        if let Some(d) = page.deliveries.into_iter().find(|d| d.delivery_id == id3) {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.challenge_id, c3);
    assert_eq!(dead.attempts, 3);
    assert!(dead.last_error.contains("503"), "{dead:?}");
    assert_eq!(r.received().iter().filter(|x| x.id == id3).count(), 3);

    // Another tenant sees none of it and cannot redeliver it.
    let theirs = hooks(h)
        .get_webhook(h.req_other(pb::GetWebhookRequest {}))
        .await;
    assert_eq!(status_of(theirs).code(), Code::NotFound);
    let their_dead = hooks(h)
        .list_dead_deliveries(h.req_other(pb::ListDeadDeliveriesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert!(their_dead.is_empty(), "{their_dead:?}");
    let foreign = hooks(h)
        .redeliver_webhook(h.req_other(pb::RedeliverWebhookRequest {
            delivery_id: id3.clone(),
        }))
        .await;
    assert_eq!(status_of(foreign).code(), Code::NotFound);
    let garbage = hooks(h)
        .redeliver_webhook(h.req(pb::RedeliverWebhookRequest {
            delivery_id: "vd_not-a-challenge".into(),
        }))
        .await;
    assert_eq!(status_of(garbage).code(), Code::InvalidArgument);

    // The receiver is fixed; the tenant redelivers: same id, same body.
    r.fail_next(0);
    hooks(h)
        .redeliver_webhook(h.req(pb::RedeliverWebhookRequest {
            delivery_id: id3.clone(),
        }))
        .await
        .unwrap();
    accepted_all(&r, &HashSet::from([id3.clone()]), Duration::from_secs(10)).await;
    let tries: Vec<_> = r.received().into_iter().filter(|x| x.id == id3).collect();
    assert_eq!(tries.len(), 4);
    assert!(tries.windows(2).all(|w| w[0].body == w[1].body));
    // ... and its dead delivery is gone.
    for _ in 0..100 {
        let left = hooks(h)
            .list_dead_deliveries(h.req(pb::ListDeadDeliveriesRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if left.iter().all(|d| d.delivery_id != id3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = hooks(h)
        .list_dead_deliveries(h.req(pb::ListDeadDeliveriesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert!(left.iter().all(|d| d.delivery_id != id3), "{left:?}");

    // Deleted: no more deliveries, and nothing to get.
    hooks(h)
        .delete_webhook(h.req(pb::DeleteWebhookRequest {}))
        .await
        .unwrap();
    let gone = hooks(h).get_webhook(h.req(pb::GetWebhookRequest {})).await;
    assert_eq!(status_of(gone).code(), Code::NotFound);
    s.h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_goes_to_a_private_address_without_the_allow_list() {
    let s = setup(5, false).await;
    let h = &s.h;
    let r = WebhookReceiver::start(free_listener().await, &s.tls).unwrap();
    let port = r.addr.port();
    for (url, why) in [
        (
            format!("https://127.0.0.1:{port}/h"),
            "not a public address",
        ),
        (format!("https://[::1]:{port}/h"), "not a public address"),
        (
            "https://169.254.169.254/latest/meta-data".into(),
            "not a public address",
        ),
        ("https://10.0.0.8/h".into(), "not a public address"),
        (r.url("/h"), "resolves only to non-public addresses"),
        ("http://idp.example.com/h".into(), "https only"),
        ("https://user:pw@idp.example.com/h".into(), "credentials"),
        (String::new(), "required"),
    ] {
        let e = hooks(h)
            .set_webhook(h.req(pb::SetWebhookRequest { url: url.clone() }))
            .await;
        let e = status_of(e);
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(e.message().contains(why), "{url}: {}", e.message());
    }
    // A name that pointed elsewhere at registration and at loopback now
    // (DNS rebinding): stored behind the API's back, refused at delivery.
    let tenant = sesame_core::TenantId::parse("dev").unwrap();
    h.storage
        .put_webhook(&endpoint_behind_the_apis_back(&tenant, &r.url("/h")), None)
        .await
        .unwrap();
    let c = login(h, "ssrf-alice", Decision::Approve).await;
    let id = format!("vd_{c}");
    let dead = stored_dead_delivery(h, &tenant, &id).await;
    assert!(
        dead.last_error.contains("non-public"),
        "{:?}",
        dead.last_error
    );
    // Refused once, never retried, and nothing reached the receiver.
    assert_eq!(dead.attempts, 0);
    // The reason names no address the name resolved to.
    assert!(
        !dead.last_error.contains("127.0.0.1"),
        "{:?}",
        dead.last_error
    );

    // A literal private address stored behind the API's back (the HTTP
    // client resolves nothing for it: the sender's own check refuses it).
    let other = sesame_core::TenantId::parse("other-bank").unwrap();
    h.storage
        .put_webhook(
            &endpoint_behind_the_apis_back(&other, &format!("https://127.0.0.1:{port}/h")),
            None,
        )
        .await
        .unwrap();
    let phone = h.enroll_other("ssrf-bob").await;
    let mut inbox = phone.push_inbox().await.unwrap();
    let theirs = h
        .challenges()
        .create_challenge(h.req_other(Harness::login_request("ssrf-bob", ENTER, 0)))
        .await
        .unwrap()
        .into_inner()
        .challenge
        .unwrap();
    next_push(&phone, &mut inbox).await;
    let d = details(&phone, &theirs.challenge_id).await;
    phone
        .respond(&d, &approve(&theirs.number_match_code))
        .await
        .unwrap();
    let id = format!("vd_{}", theirs.challenge_id);
    let dead = stored_dead_delivery(h, &other, &id).await;
    assert!(
        dead.last_error.contains("not a public address"),
        "{:?}",
        dead.last_error
    );
    assert!(r.received().is_empty(), "{:?}", r.received());
    s.h.shutdown().await;
}

/// An endpoint written straight into storage, past `SetWebhook`'s checks
/// (as if its name had been re-pointed after registration).
fn endpoint_behind_the_apis_back(tenant: &sesame_core::TenantId, url: &str) -> WebhookEndpoint {
    WebhookEndpoint {
        tenant_id: tenant.clone(),
        url: url.to_owned(),
        secrets: vec![StoredSecret {
            secret: sesame_core::webhook::Secret::generate().encode(),
            created_at: 0,
            retire_at: None,
        }],
        created_at: 0,
        updated_at: 0,
    }
}

/// Waits (up to 30 s) for the dead delivery `id` of `tenant` in storage.
async fn stored_dead_delivery(
    h: &Harness,
    tenant: &sesame_core::TenantId,
    id: &str,
) -> sesame_core::webhook::DeadDelivery {
    for _ in 0..600 {
        let page = h
            .storage
            .list_dead_deliveries(tenant, None, 100)
            .await
            .unwrap();
        if let Some(d) = page.into_iter().find(|d| d.delivery_id == id) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no dead delivery {id} for {tenant}");
}

/// Creates a challenge for `user` of the tenant `req` authenticates as;
/// returns its id.
async fn pending_challenge<F>(h: &Harness, user: &str, req: F) -> String
where
    F: Fn(pb::CreateChallengeRequest) -> tonic::Request<pb::CreateChallengeRequest>,
{
    let c = h
        .challenges()
        .create_challenge(req(Harness::login_request(user, ENTER, 0)))
        .await
        .unwrap()
        .into_inner()
        .challenge
        .unwrap();
    c.challenge_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_receiver_hangs_does_not_hold_up_another_tenants_deliveries() {
    let tls = SimTls::generate().unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("receiver-ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let h = Harness::start_configured(|c| {
        c.webhook.ca_file = ca.display().to_string();
        c.webhook.allow_private = vec!["127.0.0.1/32".into(), "::1/128".into()];
        c.webhook.timeout_ms = 10_000;
        c.webhook.concurrency = 4;
        c.webhook.per_tenant_concurrency = 2;
        c.shutdown_grace_seconds = 2;
    })
    .await;
    // The other tenant's endpoint accepts connections and never answers.
    let blackhole = free_listener().await;
    let hole_port = blackhole.local_addr().unwrap().port();
    let first_hang = std::sync::Arc::new(std::sync::Mutex::new(None::<tokio::time::Instant>));
    let hung = first_hang.clone();
    let _hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = blackhole.accept().await {
            hung.lock()
                .unwrap()
                .get_or_insert_with(tokio::time::Instant::now);
            held.push(s);
        }
    });
    hooks(&h)
        .set_webhook(h.req_other(pb::SetWebhookRequest {
            url: format!("https://localhost:{hole_port}/hook"),
        }))
        .await
        .unwrap();
    let r = WebhookReceiver::start(free_listener().await, &tls).unwrap();
    let secret = set_webhook(&h, &r.url("/hook")).await.secret;
    r.set_secrets(&[&secret]).unwrap();

    let _theirs = h.enroll_other("stuck-user").await;
    let _ours = h.enroll("ok-user").await;
    // Eight verdicts for the hanging tenant: more than every sender slot.
    for _ in 0..8 {
        let id = pending_challenge(&h, "stuck-user", |m| h.req_other(m)).await;
        h.challenges()
            .cancel_challenge(h.req_other(pb::CancelChallengeRequest { challenge_id: id }))
            .await
            .unwrap();
    }
    // Its requests are hanging now.
    for _ in 0..200 {
        if first_hang.lock().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hang_started = first_hang
        .lock()
        .unwrap()
        .expect("the hanging receiver was reached");
    let ours = pending_challenge(&h, "ok-user", |m| h.req(m)).await;
    h.challenges()
        .cancel_challenge(h.req(pb::CancelChallengeRequest {
            challenge_id: ours.clone(),
        }))
        .await
        .unwrap();
    accepted_all(
        &r,
        &HashSet::from([format!("vd_{ours}")]),
        Duration::from_secs(30),
    )
    .await;
    // Delivered while the other tenant's first requests still hang (their
    // timeout is 10 s): it did not wait for a slot they held.
    let waited = hang_started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "our delivery waited {waited:?}, past the other tenant's request timeout"
    );
    assert!(r.received().iter().all(|x| x.verified.is_ok()));
    h.shutdown().await;
}
