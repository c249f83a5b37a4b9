//! Hostile and malformed input, RPC by RPC: each gets the documented gRPC
//! status and a message naming what is wrong, and nothing is stored.

mod common;

use common::*;
use sesame_core::crypto::{KeyAlgorithm, SigningKey};
use sesame_core::model::{Decision, Platform};
use sesame_core::payload;
use sesame_grpc::convert;
use sesame_proto::device::v1 as dpb;
use sesame_proto::device::v1::device_service_client::DeviceServiceClient;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::types::v1 as types;
use tonic::{Code, Request};

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let s = status_of(r);
    assert_eq!(s.code(), code, "{}", s.message());
    assert!(
        s.message().contains(needle),
        "message {:?} should mention {needle:?}",
        s.message()
    );
}

#[tokio::test]
async fn tenant_credentials_are_required_and_checked() {
    let h = Harness::start().await;
    let plain = |m| Request::new(m);
    let r = h
        .enrollment()
        .list_devices(plain(pb::ListDevicesRequest {
            user_id: "a".into(),
        }))
        .await;
    assert_code(r, Code::Unauthenticated, "missing credential");
    for bad in [
        "Bearer nope",
        "Bearer sk_0123456789abcdef_wrongsecret",
        "Basic abc",
    ] {
        let mut req = plain(pb::ListDevicesRequest {
            user_id: "a".into(),
        });
        req.metadata_mut()
            .insert("authorization", bad.parse().unwrap());
        let r = h.enrollment().list_devices(req).await;
        assert_eq!(status_of(r).code(), Code::Unauthenticated, "{bad}");
    }
    // Right key id, wrong secret.
    let (id_part, _) = h.key.rsplit_once('_').unwrap();
    let forged = format!("{id_part}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let r = h
        .enrollment()
        .list_devices(
            sesame::cli::authed(
                &forged,
                pb::ListDevicesRequest {
                    user_id: "a".into(),
                },
            )
            .unwrap(),
        )
        .await;
    assert_code(r, Code::Unauthenticated, "invalid API key");
    h.shutdown().await;
}

#[tokio::test]
async fn create_challenge_validates_every_field_and_stores_nothing() {
    let h = Harness::start().await;
    let phone = h.enroll("alice").await;
    let base = Harness::login_request("alice", ENTER, 0);
    let tx = |amount: &str, currency: &str, payee: &str| {
        let mut r = base.clone();
        let ctx = r.context.as_mut().unwrap();
        ctx.action = types::Action::Transaction as i32;
        ctx.transaction = Some(types::Transaction {
            amount: amount.into(),
            currency: currency.into(),
            payee: payee.into(),
        });
        r
    };
    let mut cases: Vec<(pb::CreateChallengeRequest, &str)> = Vec::new();
    let mut r = base.clone();
    r.user_id = String::new();
    cases.push((r, "user_id: is required"));
    let mut r = base.clone();
    r.user_id = "u".repeat(129);
    cases.push((r, "user_id: is 129 bytes"));
    let mut r = base.clone();
    r.user_id = "a\u{0}b".into();
    cases.push((r, "control characters"));
    let mut r = base.clone();
    r.context = None;
    cases.push((r, "context: is required"));
    let mut r = base.clone();
    r.context.as_mut().unwrap().action = 99;
    cases.push((r, "context.action"));
    let mut r = base.clone();
    r.context.as_mut().unwrap().client_name = String::new();
    cases.push((r, "context.client_name"));
    let mut r = base.clone();
    r.context.as_mut().unwrap().binding_message = "x".repeat(257);
    cases.push((r, "context.binding_message"));
    let mut r = base.clone();
    r.context.as_mut().unwrap().ip_address = "999.1.1.1".into();
    cases.push((r, "context.ip_address"));
    cases.push((tx("12,50", "EUR", "Shop"), "context.transaction.amount"));
    cases.push((tx("-1", "EUR", "Shop"), "context.transaction.amount"));
    cases.push((tx("12.50", "euro", "Shop"), "context.transaction.currency"));
    cases.push((tx("12.50", "EUR", ""), "context.transaction.payee"));
    let mut r = base.clone();
    r.context.as_mut().unwrap().action = types::Action::Transaction as i32;
    cases.push((r, "context.transaction: is required"));
    let mut r = base.clone();
    r.options.as_mut().unwrap().ttl_seconds = 601;
    cases.push((r, "options.ttl_seconds"));
    let mut r = base.clone();
    r.options.as_mut().unwrap().number_match = 42;
    cases.push((r, "options.number_match"));
    let mut r = base.clone();
    r.options.as_mut().unwrap().idempotency_key = "k".repeat(129);
    cases.push((r, "options.idempotency_key"));

    for (req, needle) in cases {
        let r = h.challenges().create_challenge(h.req(req)).await;
        assert_code(r, Code::InvalidArgument, needle);
    }
    assert!(
        phone.pending().await.unwrap().is_empty(),
        "nothing was stored"
    );
    assert_eq!(h.simulator.delivered(), 0, "no push went out");

    let r = h
        .challenges()
        .create_challenge(h.req(Harness::login_request("nobody", ENTER, 0)))
        .await;
    assert_code(r, Code::FailedPrecondition, "no active device");
    h.shutdown().await;
}

#[tokio::test]
async fn ids_are_validated_before_lookup() {
    let h = Harness::start().await;
    for (id, code) in [
        ("", Code::InvalidArgument),
        ("ch_xyz", Code::InvalidArgument),
        ("dv_0123456789abcdef0123456789abcdef", Code::InvalidArgument),
        ("ch_0123456789abcdef0123456789abcdef", Code::NotFound),
    ] {
        let get = h
            .challenges()
            .get_challenge(h.req(pb::GetChallengeRequest {
                challenge_id: id.into(),
            }))
            .await;
        assert_eq!(status_of(get).code(), code, "get {id:?}");
        let watch = h
            .challenges()
            .watch_challenge(h.req(pb::WatchChallengeRequest {
                challenge_id: id.into(),
            }))
            .await;
        assert_eq!(status_of(watch).code(), code, "watch {id:?}");
        let cancel = h
            .challenges()
            .cancel_challenge(h.req(pb::CancelChallengeRequest {
                challenge_id: id.into(),
            }))
            .await;
        assert_eq!(status_of(cancel).code(), code, "cancel {id:?}");
    }
    let revoke = h
        .enrollment()
        .revoke_device(h.req(pb::RevokeDeviceRequest {
            device_id: "nope".into(),
        }))
        .await;
    assert_code(revoke, Code::InvalidArgument, "device_id");
    let begin = h
        .enrollment()
        .begin_enrollment(h.req(pb::BeginEnrollmentRequest {
            user_id: "a".into(),
            ttl_seconds: 3601,
        }))
        .await;
    assert_code(begin, Code::InvalidArgument, "ttl_seconds");
    h.shutdown().await;
}

fn enrollment_request(
    token: &str,
    key: &SigningKey,
    platform: Platform,
    push: &str,
) -> dpb::CompleteEnrollmentRequest {
    let pk = key.public_key_bytes();
    let proof = key.sign(&payload::enrollment_payload(
        token,
        key.algorithm(),
        &pk,
        platform,
        push,
    ));
    dpb::CompleteEnrollmentRequest {
        enrollment_token: token.into(),
        key_algorithm: convert::key_algorithm_out(key.algorithm()),
        public_key: pk,
        platform: convert::platform_out(platform),
        push_token: push.into(),
        proof,
        display_name: "phone".into(),
        push_app: String::new(),
    }
}

#[tokio::test]
async fn complete_enrollment_refusals_consume_nothing() {
    let h = Harness::start().await;
    let mut device = DeviceServiceClient::new(h.channel.clone());
    let token = h.begin("alice").await.enrollment_token;
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256Sha256);
    let good = enrollment_request(&token, &key, Platform::Ios, "push-1");

    let mut cases: Vec<(dpb::CompleteEnrollmentRequest, Code, &str)> = Vec::new();
    let mut r = good.clone();
    r.proof = SigningKey::generate(KeyAlgorithm::EcdsaP256Sha256).sign(b"x");
    cases.push((r, Code::InvalidArgument, "proof"));
    let mut r = good.clone();
    r.push_token = "push-2".into(); // proof no longer covers what is registered
    cases.push((r, Code::InvalidArgument, "proof"));
    let mut r = good.clone();
    r.public_key = vec![4; 65];
    cases.push((r, Code::InvalidArgument, "public_key"));
    let mut r = good.clone();
    r.public_key = vec![];
    cases.push((r, Code::InvalidArgument, "public_key"));
    let mut r = good.clone();
    r.platform = 7;
    cases.push((r, Code::InvalidArgument, "platform"));
    let mut r = good.clone();
    r.key_algorithm = 0;
    cases.push((r, Code::InvalidArgument, "key_algorithm"));
    let mut r = good.clone();
    r.push_token = String::new();
    cases.push((r, Code::InvalidArgument, "push_token"));
    let mut r = good.clone();
    r.proof = vec![];
    cases.push((r, Code::InvalidArgument, "proof"));
    let mut r = good.clone();
    r.display_name = "n".repeat(65);
    cases.push((r, Code::InvalidArgument, "display_name"));
    let mut r = good.clone();
    r.enrollment_token = "et_unknown".into();
    cases.push((r, Code::FailedPrecondition, "unknown or was already used"));
    let mut r = good.clone();
    r.enrollment_token = String::new();
    cases.push((r, Code::InvalidArgument, "enrollment_token"));
    for (req, code, needle) in cases {
        assert_code(device.complete_enrollment(req).await, code, needle);
    }
    // The token survived every refusal; it works once, then never again.
    device
        .complete_enrollment(good.clone())
        .await
        .expect("first use");
    let reuse = device.complete_enrollment(good).await;
    assert_code(reuse, Code::FailedPrecondition, "already used");
    let devices = h
        .enrollment()
        .list_devices(h.req(pb::ListDevicesRequest {
            user_id: "alice".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert_eq!(devices.len(), 1);

    // An expired token.
    let short = h
        .enrollment()
        .begin_enrollment(h.req(pb::BeginEnrollmentRequest {
            user_id: "bob".into(),
            ttl_seconds: 1,
        }))
        .await
        .unwrap()
        .into_inner()
        .enrollment_token;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let late = device
        .complete_enrollment(enrollment_request(&short, &key, Platform::Android, "p"))
        .await;
    assert_code(late, Code::FailedPrecondition, "expired");
    h.shutdown().await;
}

#[tokio::test]
async fn device_requests_must_be_signed_fresh_and_unreplayed() {
    let h = Harness::start().await;
    let phone = h.enroll("carl").await;
    let mut client = DeviceServiceClient::new(h.channel.clone());
    let list = |auth: Option<dpb::DeviceAuth>| dpb::ListPendingChallengesRequest { auth };

    let good = phone.auth("ListPendingChallenges", &[]);
    client
        .list_pending_challenges(list(Some(good.clone())))
        .await
        .expect("fresh request");
    assert_code(
        client
            .list_pending_challenges(list(Some(good.clone())))
            .await,
        Code::Unauthenticated,
        "replayed",
    );

    let mut other_method = phone.auth("UpdatePushToken", &[]);
    other_method.nonce = sesame_core::ids::random_bytes::<16>().to_vec();
    assert_code(
        client
            .list_pending_challenges(list(Some(other_method)))
            .await,
        Code::Unauthenticated,
        "signature",
    );
    let mut stale = phone.auth("ListPendingChallenges", &[]);
    stale.timestamp_unix_ms -= 120_000;
    assert_code(
        client.list_pending_challenges(list(Some(stale))).await,
        Code::Unauthenticated,
        "clock",
    );
    let mut short_nonce = phone.auth("ListPendingChallenges", &[]);
    short_nonce.nonce.truncate(8);
    assert_code(
        client
            .list_pending_challenges(list(Some(short_nonce)))
            .await,
        Code::InvalidArgument,
        "auth.nonce",
    );
    assert_code(
        client.list_pending_challenges(list(None)).await,
        Code::InvalidArgument,
        "auth",
    );
    let mut unknown = phone.auth("ListPendingChallenges", &[]);
    unknown.device_id = "dv_0123456789abcdef0123456789abcdef".into();
    assert_code(
        client.list_pending_challenges(list(Some(unknown))).await,
        Code::Unauthenticated,
        "unknown device",
    );

    // Push token updates are bound to the token signed.
    let auth = phone.auth("UpdatePushToken", &["token-a"]);
    let r = client
        .update_push_token(dpb::UpdatePushTokenRequest {
            auth: Some(auth),
            push_token: "token-b".into(),
        })
        .await;
    assert_code(r, Code::Unauthenticated, "signature");
    h.shutdown().await;
}

#[tokio::test]
async fn respond_refusals_leave_the_challenge_pending() {
    let h = Harness::start().await;
    let phone = h.enroll("dora").await;
    let c = h.create("dora", ENTER, 0).await;
    let d = details(&phone, &c.challenge_id).await;
    let good = phone
        .signed_answer(&d, &approve(&c.number_match_code))
        .unwrap();
    let mut client = DeviceServiceClient::new(h.channel.clone());

    let mut cases: Vec<(dpb::RespondRequest, Code, &str)> = Vec::new();
    let mut r = good.clone();
    r.decision = 9;
    cases.push((r, Code::InvalidArgument, "decision"));
    let mut r = good.clone();
    r.decision = convert::decision_out(Decision::Deny); // not what was signed
    cases.push((r, Code::Unauthenticated, "signature"));
    let mut r = good.clone();
    r.signature = vec![];
    cases.push((r, Code::InvalidArgument, "signature"));
    let mut r = good.clone();
    r.signature[10] ^= 0xff;
    cases.push((r, Code::Unauthenticated, "signature"));
    let mut r = good.clone();
    r.context_hash = vec![0; 32];
    cases.push((r, Code::Unauthenticated, "signature"));
    let mut r = good.clone();
    r.context_hash = vec![0; 3];
    cases.push((r, Code::InvalidArgument, "context_hash"));
    let mut r = good.clone();
    r.challenge_id = "bogus".into();
    cases.push((r, Code::InvalidArgument, "challenge_id"));
    let mut r = good.clone();
    r.device_id = String::new();
    cases.push((r, Code::InvalidArgument, "device_id"));
    let mut r = good.clone();
    r.number_match_answer = "1".repeat(17);
    cases.push((r, Code::InvalidArgument, "number_match_answer"));
    let mut r = good.clone();
    r.timestamp_unix_ms += 600_000;
    cases.push((r, Code::Unauthenticated, "clock"));
    let mut r = good.clone();
    r.signature = vec![0x30; 300];
    cases.push((r, Code::InvalidArgument, "signature"));
    for (req, code, needle) in cases {
        assert_code(client.respond(req).await, code, needle);
    }
    assert_eq!(
        h.get(&c.challenge_id).await.status,
        st(types::ChallengeStatus::Pending)
    );

    // A message over the size limit is refused by the transport layer.
    let mut huge = good.clone();
    huge.number_match_answer = "9".repeat(100_000);
    assert_eq!(
        status_of(client.respond(huge).await).code(),
        Code::OutOfRange
    );

    client
        .respond(good)
        .await
        .expect("the genuine answer still works");
    h.shutdown().await;
}
