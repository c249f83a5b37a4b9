//! End-to-end logins over real gRPC on loopback: every verdict, expiry,
//! cancel, number matching, replay, races, isolation, revocation, watch
//! streams, polling and dead push tokens.

mod common;

use std::time::Duration;

use common::*;
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::Decision;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::types::v1::{ChallengeStatus as S, DenyReason};
use tonic::Code;

#[tokio::test]
async fn approve_with_pushed_challenge_and_entered_number() {
    let h = Harness::start().await;
    let phone = h.enroll("alice").await;
    let mut inbox = phone.push_inbox().await.unwrap();
    let c = h.create("alice", ENTER, 0).await;
    assert_eq!(c.status, st(S::Pending));
    assert_eq!(c.number_match_code.len(), 2);
    assert_eq!(c.devices_notified, 1);
    assert!(
        c.expires_at_unix_ms - c.created_at_unix_ms == 120_000,
        "default TTL is 120 s"
    );

    let pushed = next_push(&phone, &mut inbox).await;
    assert_eq!(pushed, c.challenge_id);
    let d = details(&phone, &pushed).await;
    assert!(
        d.number_choices.is_empty(),
        "ENTER mode never shows the number on the phone"
    );
    assert_eq!(d.context.as_ref().unwrap().client_name, "Test bank");
    let r = phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    assert_eq!(r.status, st(S::Approved));

    let got = h.get(&c.challenge_id).await;
    assert_eq!(got.status, st(S::Approved));
    assert_eq!(got.answered_by_device_id, phone.device_id());
    assert!(got.resolved_at_unix_ms > 0);
    h.shutdown().await;
}

#[tokio::test]
async fn deny_and_deny_as_fraud() {
    let h = Harness::start().await;
    let phone = h.enroll("bob").await;
    for (decision, reason) in [
        (Decision::Deny, DenyReason::UserDenied),
        (Decision::DenyFraud, DenyReason::FraudReported),
    ] {
        let c = h.create("bob", ENTER, 0).await;
        let d = details(&phone, &c.challenge_id).await;
        let r = phone.respond(&d, &answer(decision)).await.unwrap();
        assert_eq!(r.status, st(S::Denied));
        assert_eq!(r.deny_reason, reason as i32);
        let got = h.get(&c.challenge_id).await;
        assert_eq!(got.status, st(S::Denied));
        assert_eq!(got.deny_reason, reason as i32);
    }
    h.shutdown().await;
}

#[tokio::test]
async fn choose_and_none_modes() {
    let h = Harness::start().await;
    let phone = h.enroll("carol").await;
    let c = h.create("carol", CHOOSE, 0).await;
    let d = details(&phone, &c.challenge_id).await;
    assert_eq!(d.number_choices.len(), 3);
    assert!(d.number_choices.contains(&c.number_match_code));
    let r = phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    assert_eq!(r.status, st(S::Approved));

    let c = h.create("carol", NONE, 0).await;
    assert!(c.number_match_code.is_empty());
    let d = details(&phone, &c.challenge_id).await;
    let r = phone.respond(&d, &approve("")).await.unwrap();
    assert_eq!(r.status, st(S::Approved));
    h.shutdown().await;
}

#[tokio::test]
async fn wrong_number_denies_the_challenge() {
    let h = Harness::start().await;
    let phone = h.enroll("dave").await;
    let c = h.create("dave", ENTER, 0).await;
    let wrong = if c.number_match_code == "10" {
        "11"
    } else {
        "10"
    };
    let d = details(&phone, &c.challenge_id).await;
    let err = phone.respond(&d, &approve(wrong)).await;
    assert_eq!(code_of(err), Code::PermissionDenied);
    let got = h.get(&c.challenge_id).await;
    assert_eq!(got.status, st(S::Denied));
    assert_eq!(got.deny_reason, DenyReason::NumberMismatch as i32);
    // No second guess.
    let again = phone.respond(&d, &approve(&c.number_match_code)).await;
    assert_eq!(code_of(again), Code::FailedPrecondition);
    h.shutdown().await;
}

#[tokio::test]
async fn expiry_is_seen_by_get_watch_and_refuses_answers() {
    let h = Harness::start().await;
    let phone = h.enroll("erin").await;
    let c = h.create("erin", ENTER, 1).await;
    let d = details(&phone, &c.challenge_id).await;
    let mut watch = h
        .challenges()
        .watch_challenge(h.req(pb::WatchChallengeRequest {
            challenge_id: c.challenge_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        st(S::Pending)
    );
    let last = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("expiry within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(last.status, st(S::Expired));
    assert!(
        watch.message().await.unwrap().is_none(),
        "stream ends after a final state"
    );
    assert_eq!(h.get(&c.challenge_id).await.status, st(S::Expired));
    let late = phone.respond(&d, &approve(&c.number_match_code)).await;
    assert_eq!(code_of(late), Code::FailedPrecondition);
    assert!(phone.pending().await.unwrap().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn cancel_then_answers_and_cancels_are_refused() {
    let h = Harness::start().await;
    let phone = h.enroll("frank").await;
    let c = h.create("frank", ENTER, 0).await;
    let d = details(&phone, &c.challenge_id).await;
    let cancelled = h
        .challenges()
        .cancel_challenge(h.req(pb::CancelChallengeRequest {
            challenge_id: c.challenge_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, st(S::Cancelled));
    assert_eq!(
        code_of(phone.respond(&d, &approve(&c.number_match_code)).await),
        Code::FailedPrecondition
    );
    let again = h
        .challenges()
        .cancel_challenge(h.req(pb::CancelChallengeRequest {
            challenge_id: c.challenge_id.clone(),
        }))
        .await;
    assert_eq!(status_of(again).code(), Code::FailedPrecondition);
    h.shutdown().await;
}

#[tokio::test]
async fn replayed_answer_and_answer_after_verdict_are_refused() {
    let h = Harness::start().await;
    let phone = h.enroll("gina").await;
    let second = h.enroll("gina").await;
    let c = h.create("gina", ENTER, 0).await;
    assert_eq!(c.devices_notified, 2);
    let d = details(&phone, &c.challenge_id).await;
    let signed = phone
        .signed_answer(&d, &approve(&c.number_match_code))
        .unwrap();
    phone.send_answer(signed.clone()).await.unwrap();
    let replay = phone.send_answer(signed).await;
    assert_eq!(code_of(replay), Code::FailedPrecondition);
    let d2 = details(&second, &c.challenge_id).await;
    let late = second.respond(&d2, &answer(Decision::Deny)).await;
    assert_eq!(code_of(late), Code::FailedPrecondition);
    let got = h.get(&c.challenge_id).await;
    assert_eq!(got.status, st(S::Approved));
    assert_eq!(got.answered_by_device_id, phone.device_id());
    h.shutdown().await;
}

#[tokio::test]
async fn two_devices_racing_exactly_one_wins() {
    let h = Harness::start().await;
    let a = h.enroll("hank").await;
    let b = h.enroll("hank").await;
    for _ in 0..20 {
        let c = h.create("hank", ENTER, 0).await;
        let ra = a
            .signed_answer(
                &details(&a, &c.challenge_id).await,
                &approve(&c.number_match_code),
            )
            .unwrap();
        let rb = b
            .signed_answer(&details(&b, &c.challenge_id).await, &answer(Decision::Deny))
            .unwrap();
        let (x, y) = tokio::join!(a.send_answer(ra), b.send_answer(rb));
        let wins = [x.is_ok(), y.is_ok()];
        assert_eq!(
            wins.iter().filter(|w| **w).count(),
            1,
            "exactly one answer wins: {wins:?}"
        );
        let loser = if x.is_ok() { y } else { x };
        assert_eq!(code_of(loser), Code::FailedPrecondition);
        let got = h.get(&c.challenge_id).await;
        let winner = if wins[0] {
            a.device_id()
        } else {
            b.device_id()
        };
        assert_eq!(got.answered_by_device_id, winner);
        assert_eq!(
            got.status,
            if wins[0] {
                st(S::Approved)
            } else {
                st(S::Denied)
            }
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn cross_user_and_cross_tenant_answers_are_not_found() {
    let h = Harness::start().await;
    let alice = h.enroll("ivy").await;
    let mallory = h.enroll("mallory").await;
    let foreign = h.enroll_other("ivy").await;
    let c = h.create("ivy", ENTER, 0).await;
    let d = details(&alice, &c.challenge_id).await;

    // Another user's device of the same tenant, and a device of another tenant
    // (even for a user with the same name), can neither see nor answer it.
    for intruder in [&mallory, &foreign] {
        assert_eq!(
            code_of(intruder.details(&c.challenge_id).await),
            Code::NotFound
        );
        let forged = intruder
            .signed_answer(&d, &approve(&c.number_match_code))
            .unwrap();
        assert_eq!(code_of(intruder.send_answer(forged).await), Code::NotFound);
    }
    // The other tenant cannot read, watch or cancel it, nor touch the device.
    let get = h
        .challenges()
        .get_challenge(h.req_other(pb::GetChallengeRequest {
            challenge_id: c.challenge_id.clone(),
        }))
        .await;
    assert_eq!(status_of(get).code(), Code::NotFound);
    let watch = h
        .challenges()
        .watch_challenge(h.req_other(pb::WatchChallengeRequest {
            challenge_id: c.challenge_id.clone(),
        }))
        .await;
    assert_eq!(status_of(watch).code(), Code::NotFound);
    let cancel = h
        .challenges()
        .cancel_challenge(h.req_other(pb::CancelChallengeRequest {
            challenge_id: c.challenge_id.clone(),
        }))
        .await;
    assert_eq!(status_of(cancel).code(), Code::NotFound);
    let revoke = h
        .enrollment()
        .revoke_device(h.req_other(pb::RevokeDeviceRequest {
            device_id: alice.device_id().into(),
        }))
        .await;
    assert_eq!(status_of(revoke).code(), Code::NotFound);
    let list = h
        .enrollment()
        .list_devices(h.req_other(pb::ListDevicesRequest {
            user_id: "ivy".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.devices.len(), 1);
    assert_eq!(list.devices[0].device_id, foreign.device_id());

    assert_eq!(
        h.get(&c.challenge_id).await.status,
        st(S::Pending),
        "nothing changed"
    );
    alice
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn revoked_device_cannot_answer_and_gets_no_new_challenges() {
    let h = Harness::start().await;
    let old = h.enroll("jack").await;
    let new = h.enroll("jack").await;
    let c = h.create("jack", ENTER, 0).await;
    let d = details(&old, &c.challenge_id).await;
    let revoked = h
        .enrollment()
        .revoke_device(h.req(pb::RevokeDeviceRequest {
            device_id: old.device_id().into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .device
        .unwrap();
    assert!(revoked.revoked && !revoked.push_enabled);
    assert_eq!(
        code_of(old.respond(&d, &approve(&c.number_match_code)).await),
        Code::PermissionDenied
    );
    assert_eq!(code_of(old.pending().await), Code::PermissionDenied);
    assert_eq!(h.get(&c.challenge_id).await.status, st(S::Pending));

    let c2 = h.create("jack", ENTER, 0).await;
    assert_eq!(c2.devices_notified, 1, "only the active device");
    let d2 = details(&new, &c2.challenge_id).await;
    new.respond(&d2, &approve(&c2.number_match_code))
        .await
        .unwrap();

    h.enrollment()
        .revoke_device(h.req(pb::RevokeDeviceRequest {
            device_id: new.device_id().into(),
        }))
        .await
        .unwrap();
    let none = h
        .challenges()
        .create_challenge(h.req(Harness::login_request("jack", ENTER, 0)))
        .await;
    assert_eq!(status_of(none).code(), Code::FailedPrecondition);
    h.shutdown().await;
}

#[tokio::test]
async fn watch_stream_sees_the_verdict_from_the_device() {
    let h = Harness::start().await;
    let phone = h.enroll("kim").await;
    let c = h.create("kim", ENTER, 0).await;
    let mut watch = h
        .challenges()
        .watch_challenge(h.req(pb::WatchChallengeRequest {
            challenge_id: c.challenge_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        st(S::Pending)
    );
    let d = details(&phone, &c.challenge_id).await;
    phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("verdict within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(update.status, st(S::Approved));
    assert_eq!(update.answered_by_device_id, phone.device_id());
    assert!(watch.message().await.unwrap().is_none());
    h.shutdown().await;
}

#[tokio::test]
async fn polling_fallback_lists_live_challenges_only() {
    let h = Harness::start().await;
    let phone = h.enroll("lea").await;
    assert!(phone.pending().await.unwrap().is_empty());
    let c1 = h.create("lea", ENTER, 0).await;
    let c2 = h.create("lea", NONE, 0).await;
    let ids: Vec<String> = phone
        .pending()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.challenge_id)
        .collect();
    assert_eq!(ids, vec![c1.challenge_id.clone(), c2.challenge_id.clone()]);
    let d = details(&phone, &c2.challenge_id).await;
    phone.respond(&d, &approve("")).await.unwrap();
    let ids: Vec<String> = phone
        .pending()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.challenge_id)
        .collect();
    assert_eq!(ids, vec![c1.challenge_id]);
    h.shutdown().await;
}

#[tokio::test]
async fn dead_token_disables_only_that_device_until_it_registers_a_new_one() {
    let h = Harness::start().await;
    let mut dead = h
        .enroll_with("max", KeyAlgorithm::EcdsaP256Sha256, "dead:expired-token")
        .await;
    let healthy = h.enroll("max").await;
    let mut inbox = healthy.push_inbox().await.unwrap();
    let c = h.create("max", ENTER, 0).await;
    assert_eq!(next_push(&healthy, &mut inbox).await, c.challenge_id);

    let list = || async {
        h.enrollment()
            .list_devices(h.req(pb::ListDevicesRequest {
                user_id: "max".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .devices
    };
    let mut disabled = false;
    for _ in 0..100 {
        let devices = list().await;
        let d = devices
            .iter()
            .find(|d| d.device_id == dead.device_id())
            .unwrap();
        if !d.push_enabled {
            disabled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(disabled, "dead token disabled push for that device");
    assert!(
        list()
            .await
            .iter()
            .find(|d| d.device_id == healthy.device_id())
            .unwrap()
            .push_enabled
    );
    // The dead device can still poll and answer.
    assert_eq!(dead.pending().await.unwrap().len(), 1);

    dead.update_push_token("fresh-token").await.unwrap();
    assert!(list().await.iter().all(|d| d.push_enabled));
    let mut fresh_inbox = dead.push_inbox().await.unwrap();
    let c2 = h.create("max", ENTER, 0).await;
    assert_eq!(next_push(&dead, &mut fresh_inbox).await, c2.challenge_id);
    h.shutdown().await;
}

#[tokio::test]
async fn ed25519_device_logs_in() {
    let h = Harness::start().await;
    let phone = h
        .enroll_with("nina", KeyAlgorithm::Ed25519, "ed-token")
        .await;
    let c = h.create("nina", ENTER, 0).await;
    let d = details(&phone, &c.challenge_id).await;
    let r = phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    assert_eq!(r.status, st(S::Approved));
    h.shutdown().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_first_challenge() {
    let h = Harness::start().await;
    let phone = h.enroll("otto").await;
    let mut inbox = phone.push_inbox().await.unwrap();
    let mut req = Harness::login_request("otto", ENTER, 0);
    req.options.as_mut().unwrap().idempotency_key = "login-attempt-1".into();
    let a = h
        .challenges()
        .create_challenge(h.req(req.clone()))
        .await
        .unwrap()
        .into_inner()
        .challenge
        .unwrap();
    let b = h
        .challenges()
        .create_challenge(h.req(req.clone()))
        .await
        .unwrap()
        .into_inner()
        .challenge
        .unwrap();
    assert_eq!(a.challenge_id, b.challenge_id);
    assert_eq!(a.number_match_code, b.number_match_code);
    assert_eq!(next_push(&phone, &mut inbox).await, a.challenge_id);
    // Had the retry queued a second push, it would be delivered by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.simulator.delivered(), 1, "one push, not two");
    let _other_phone = h.enroll("someone-else").await;
    req.user_id = "someone-else".into();
    let clash = h.challenges().create_challenge(h.req(req)).await;
    assert_eq!(status_of(clash).code(), Code::InvalidArgument);
    h.shutdown().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let h = Harness::start().await;
    let mut health = HealthClient::new(h.channel.clone());
    for svc in [
        "",
        "sesame.tenant.v1.ChallengeService",
        "sesame.device.v1.DeviceService",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: svc.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "{svc} is SERVING");
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(h.channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for svc in [
        "sesame.tenant.v1.EnrollmentService",
        "sesame.tenant.v1.ChallengeService",
        "sesame.device.v1.DeviceService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == svc),
            "{svc} missing from {names:?}"
        );
    }
    h.shutdown().await;
}

/// A caller's W3C trace id is echoed back and travels with the challenge's
/// push job to the dispatcher; a call without one gets a fresh id.
#[tokio::test]
async fn trace_id_follows_a_challenge_into_its_push_job() {
    // No dispatcher in this process, so the test can take the job itself.
    let h = Harness::start_configured(|c| {
        c.roles = vec!["challenge".into(), "verifier".into()];
    })
    .await;
    let _phone = h.enroll("traced").await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = h.req(Harness::login_request("traced", ENTER, 0));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    let resp = h.challenges().create_challenge(req).await.unwrap();
    assert_eq!(
        resp.metadata()
            .get("x-sesame-trace-id")
            .unwrap()
            .to_str()
            .unwrap(),
        trace
    );
    let challenge_id = resp.into_inner().challenge.unwrap().challenge_id;
    let mut consumer = h.queue.push_consumer().await.unwrap();
    let job = tokio::time::timeout(std::time::Duration::from_secs(5), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .job;
    assert_eq!(job.challenge_id.to_string(), challenge_id);
    assert_eq!(job.trace_id, trace);

    let untraced = h
        .challenges()
        .get_challenge(h.req(sesame_proto::tenant::v1::GetChallengeRequest { challenge_id }))
        .await
        .unwrap();
    let fresh = untraced
        .metadata()
        .get("x-sesame-trace-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(fresh.len(), 32);
    assert_ne!(fresh, trace);
    h.shutdown().await;
}

/// A `dev_tenant_key` given in the configuration (as a Kubernetes Secret
/// gives it to every replica) is the key that works; none is generated or
/// written, and a key that merely looks similar is refused.
#[tokio::test]
async fn a_configured_dev_tenant_key_is_the_one_accepted() {
    let key = "sk_00112233aabbccdd_configured-secret-from-a-kubernetes-secret";
    let h = Harness::start_configured(|c| c.dev_tenant_key = key.into()).await;
    assert_eq!(h.key, key);
    assert!(
        !h.data_dir().join(sesame::server::DEV_KEY_FILE).exists(),
        "no key file is written when the key is configured"
    );
    let phone = h.enroll("configured-key-user").await;
    assert!(!phone.device_id().is_empty());

    let wrong = sesame::cli::authed(
        "sk_00112233aabbccdd_another-secret",
        pb::BeginEnrollmentRequest {
            user_id: "u".into(),
            ttl_seconds: 0,
        },
    )
    .unwrap();
    let refused = h.enrollment().begin_enrollment(wrong).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    h.shutdown().await;
}

#[test]
fn a_malformed_dev_tenant_key_is_a_configuration_error() {
    let env: std::collections::BTreeMap<String, String> =
        [("SESAME_DEV_TENANT_KEY".to_string(), "not-a-key".to_string())].into();
    let err = sesame::Config::load(None, &env).unwrap_err().to_string();
    assert!(err.contains("dev_tenant_key"), "{err}");
}

/// Whoever can write to the events stream (the Kafka topic, in distributed
/// mode) can claim any verdict; a `Verdict` event only makes watchers look
/// again, so a forged one changes nothing a tenant sees.
#[tokio::test]
async fn a_forged_verdict_event_changes_nothing() {
    let h = Harness::start().await;
    let phone = h.enroll("gina").await;
    let c = h.create("gina", ENTER, 0).await;
    let mut watch = h
        .challenges()
        .watch_challenge(h.req(pb::WatchChallengeRequest {
            challenge_id: c.challenge_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        st(S::Pending)
    );
    h.queue
        .publish_event(sesame_queue::Event::Verdict {
            tenant_id: sesame_core::TenantId::parse("dev").unwrap(),
            challenge_id: sesame_core::ChallengeId::parse(&c.challenge_id).unwrap(),
            status: sesame_queue::ChallengeStatusWire::Approved,
        })
        .unwrap();
    // The watcher re-reads storage: still pending, whatever it says.
    if let Ok(said) = tokio::time::timeout(Duration::from_millis(500), watch.message()).await {
        let said = said.unwrap().unwrap();
        assert_eq!(
            said.status,
            st(S::Pending),
            "a forged verdict reached the tenant"
        );
    }
    assert_eq!(h.get(&c.challenge_id).await.status, st(S::Pending));
    // The real answer still decides, and the watcher hears that one.
    let d = details(&phone, &c.challenge_id).await;
    phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    let last = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the real verdict within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(last.status, st(S::Approved));
    h.shutdown().await;
}

/// A phone that signs an approval over something other than what the
/// challenge shows (another amount or payee: another context hash) is
/// refused, validly signed or not, and the challenge is still open.
#[tokio::test]
async fn a_validly_signed_answer_over_a_foreign_context_is_refused() {
    let h = Harness::start().await;
    let phone = h.enroll("hugo").await;
    let c = h.create("hugo", ENTER, 0).await;
    let d = details(&phone, &c.challenge_id).await;
    let mut foreign = d.context_hash.clone();
    foreign[0] ^= 1;
    let req = phone.sign_answer_fields(
        &c.challenge_id,
        &approve(&c.number_match_code),
        &foreign,
        sesame_core::time::now_ms(),
    );
    let r = sesame_proto::device::v1::device_service_client::DeviceServiceClient::new(
        h.channel.clone(),
    )
    .respond(req)
    .await;
    let s = status_of(r);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("context_hash"), "{}", s.message());
    assert_eq!(h.get(&c.challenge_id).await.status, st(S::Pending));
    // The same phone approving what it was shown still works.
    phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    assert_eq!(h.get(&c.challenge_id).await.status, st(S::Approved));
    h.shutdown().await;
}

/// A device enrolled with a P-256 key cannot answer with a signature of
/// another algorithm: the stored key's algorithm decides how an answer is
/// verified, never the signature's shape (no algorithm confusion).
#[tokio::test]
async fn an_answer_signed_with_another_algorithm_is_refused() {
    let h = Harness::start().await;
    let phone = h.enroll("jack").await;
    assert_eq!(phone.identity.key_algorithm, KeyAlgorithm::EcdsaP256Sha256);
    let other = h
        .enroll_with("jill", KeyAlgorithm::Ed25519, "tok-jill")
        .await;
    let c = h.create("jack", ENTER, 0).await;
    let d = details(&phone, &c.challenge_id).await;
    // The Ed25519 key of another phone, presented under jack's device id.
    let impostor = sesame_device_sim::SimDevice::from_identity(
        sesame_device_sim::DeviceIdentity {
            device_id: phone.identity.device_id.clone(),
            ..other.identity.clone()
        },
        h.channel.clone(),
    )
    .unwrap();
    let r = impostor.respond(&d, &approve(&c.number_match_code)).await;
    assert_eq!(code_of(r), Code::Unauthenticated);
    assert_eq!(h.get(&c.challenge_id).await.status, st(S::Pending));
    phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    assert_eq!(h.get(&c.challenge_id).await.status, st(S::Approved));
    h.shutdown().await;
}

/// A queue that takes everything except push jobs while `fail` is set: the
/// broker refusing a challenge's pushes after the room check passed.
struct RefusingPushes {
    inner: std::sync::Arc<dyn sesame_queue::Queue>,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl sesame_queue::Queue for RefusingPushes {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn check_room_for_pushes(&self, n: usize) -> Result<(), sesame_queue::QueueError> {
        self.inner.check_room_for_pushes(n)
    }
    async fn publish_pushes(
        &self,
        jobs: Vec<sesame_queue::PushJob>,
    ) -> Result<(), sesame_queue::QueueError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(sesame_queue::QueueError::Unavailable(
                "brokers did not acknowledge in time".into(),
            ));
        }
        self.inner.publish_pushes(jobs).await
    }
    async fn publish_retry(
        &self,
        job: sesame_queue::PushJob,
    ) -> Result<(), sesame_queue::QueueError> {
        self.inner.publish_retry(job).await
    }
    async fn publish_dead_letter(
        &self,
        job: &sesame_queue::PushJob,
        reason: &str,
    ) -> Result<(), sesame_queue::QueueError> {
        self.inner.publish_dead_letter(job, reason).await
    }
    async fn publish_webhook(
        &self,
        job: sesame_queue::WebhookJob,
    ) -> Result<(), sesame_queue::QueueError> {
        self.inner.publish_webhook(job).await
    }
    async fn webhook_consumer(
        &self,
    ) -> Result<Box<dyn sesame_queue::WebhookConsumer>, sesame_queue::QueueError> {
        self.inner.webhook_consumer().await
    }
    fn publish_event(&self, event: sesame_queue::Event) -> Result<(), sesame_queue::QueueError> {
        self.inner.publish_event(event)
    }
    async fn publish_audit(
        &self,
        records: &[sesame_core::audit::AuditRecord],
    ) -> Result<(), sesame_queue::QueueError> {
        self.inner.publish_audit(records).await
    }
    async fn push_consumer(
        &self,
    ) -> Result<Box<dyn sesame_queue::PushConsumer>, sesame_queue::QueueError> {
        self.inner.push_consumer().await
    }
    async fn subscribe_events(
        &self,
    ) -> Result<Box<dyn sesame_queue::EventSubscriber>, sesame_queue::QueueError> {
        self.inner.subscribe_events().await
    }
    fn close(&self) {
        self.inner.close()
    }
    async fn flush(&self) {
        self.inner.flush().await
    }
}

/// A challenge stored while its pushes could not be queued is cancelled
/// before the tenant hears `UNAVAILABLE`: no phone can be asked later by a
/// push that still goes out, and a retry with the same idempotency key
/// sees it cancelled (and uses a new key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_whose_pushes_were_not_queued_is_cancelled() {
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = fail.clone();
    let h = Harness::start_wrapping_queue(Box::new(move |inner| {
        std::sync::Arc::new(RefusingPushes { inner, fail: f })
    }))
    .await;
    let phone = h.enroll("queue-alice").await;
    let mut req = Harness::login_request("queue-alice", ENTER, 0);
    req.options.as_mut().unwrap().idempotency_key = "order-7".into();
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = h.challenges().create_challenge(h.req(req.clone())).await;
    let refused = status_of(refused);
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    // Nothing left for the phone to answer...
    assert!(phone.pending().await.unwrap().is_empty());
    // ... and the stored challenge is cancelled, as the same key shows.
    let again = h
        .challenges()
        .create_challenge(h.req(req))
        .await
        .unwrap()
        .into_inner()
        .challenge
        .unwrap();
    assert_eq!(again.status, st(S::Cancelled));
    h.shutdown().await;
}
