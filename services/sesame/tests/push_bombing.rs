//! The push-bombing defence end to end, with the default policy: one pending
//! challenge per user, 5 prompts per 10 minutes, escalation after denials,
//! and the mute after "this wasn't me" — over real gRPC.

mod common;

use std::time::Duration;

use common::*;
use sesame_core::model::Decision;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::types::v1::{ChallengeStatus as S, NumberMatchMode};
use tonic::Code;
use tonic_types::StatusExt;

/// The reason in `google.rpc.ErrorInfo`, checking the rest of the contract.
fn limited(status: tonic::Status) -> String {
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.get_details_retry_info().is_some(),
        "RetryInfo detail"
    );
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .map(|v| v.to_str().expect("ascii")),
        Some("-1"),
        "clients are told not to retry automatically"
    );
    status
        .get_details_error_info()
        .expect("ErrorInfo detail")
        .reason
}

async fn user_status(h: &Harness, user: &str) -> pb::UserStatus {
    h.challenges()
        .get_user_status(h.req(pb::GetUserStatusRequest {
            user_id: user.into(),
        }))
        .await
        .expect("GetUserStatus")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_100_for_one_user_sends_exactly_one_push() {
    let h = Harness::start_with(GuardPolicy::default()).await;
    let victim = h.enroll("victim").await;
    let mut inbox = victim.push_inbox().await.unwrap();
    let bystander = h.enroll("bystander").await;
    let mut bystander_inbox = bystander.push_inbox().await.unwrap();

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let mut client = h.challenges();
            let req = h.req(Harness::login_request("victim", ENTER, 0));
            tokio::spawn(async move { client.create_challenge(req).await })
        })
        .collect();
    let mut created = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => created.push(r.into_inner().challenge.unwrap().challenge_id),
            Err(s) => assert_eq!(limited(s), "USER_CHALLENGE_PENDING"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one challenge admitted");
    assert_eq!(next_push(&victim, &mut inbox).await, created[0]);
    let extra = tokio::time::timeout(Duration::from_millis(500), inbox.message()).await;
    assert!(
        extra.is_err(),
        "no second push reached the phone: {extra:?}"
    );

    // Other users of the same tenant are unaffected.
    let c = h.create("bystander", ENTER, 0).await;
    assert_eq!(
        next_push(&bystander, &mut bystander_inbox).await,
        c.challenge_id
    );
    assert_eq!(h.simulator.delivered(), 2);
    let st = user_status(&h, "victim").await;
    assert_eq!((st.prompts_in_window, st.prompt_limit), (1, 5));
    assert_eq!(st.pending_challenge_id, created[0]);
    h.shutdown().await;
}

#[tokio::test]
async fn sixth_prompt_in_ten_minutes_is_refused() {
    let h = Harness::start_with(GuardPolicy::default()).await;
    let phone = h.enroll("alice").await;
    for _ in 0..5 {
        let c = h.create("alice", ENTER, 0).await;
        let d = details(&phone, &c.challenge_id).await;
        phone
            .respond(&d, &approve(&c.number_match_code))
            .await
            .unwrap();
    }
    let r = h
        .challenges()
        .create_challenge(h.req(Harness::login_request("alice", ENTER, 0)))
        .await;
    let s = status_of(r);
    let retry = s.get_details_retry_info().unwrap().retry_delay.unwrap();
    assert!(
        retry > Duration::from_secs(590) && retry <= Duration::from_secs(600),
        "{retry:?}"
    );
    assert_eq!(limited(s), "USER_PROMPT_LIMIT");
    assert_eq!(user_status(&h, "alice").await.prompts_in_window, 5);
    h.shutdown().await;
}

#[tokio::test]
async fn fraud_report_mutes_the_user_and_the_tenant_sees_it() {
    let h = Harness::start_with(GuardPolicy::default()).await;
    let phone = h.enroll("bob").await;
    let _other = h.enroll("carol").await;
    let mut events = h.queue.subscribe_events().await.unwrap();
    let c = h.create("bob", ENTER, 0).await;
    let d = details(&phone, &c.challenge_id).await;
    phone
        .respond(&d, &answer(Decision::DenyFraud))
        .await
        .unwrap();

    // The report is on the audit stream, with who, which challenge and until when.
    let audit = loop {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("audit event within 5 s")
            .expect("event stream");
        if let sesame_queue::Event::Audit(a) = e {
            break a;
        }
    };
    assert_eq!(audit.tenant_id.as_str(), "dev");
    assert_eq!(audit.user_id, "bob");
    assert_eq!(
        audit.challenge_id.map(|c| c.to_string()),
        Some(c.challenge_id.clone())
    );
    assert_eq!(
        audit.device_id.map(|d| d.to_string()),
        Some(phone.device_id().to_string())
    );
    assert!(
        matches!(audit.kind, sesame_queue::AuditKind::FraudReported { muted_until } if muted_until > 0)
    );

    let st = user_status(&h, "bob").await;
    let left = st.muted_until_unix_ms - sesame_core::time::now_ms();
    assert!(
        left > 19 * 60_000 && left <= 20 * 60_000,
        "muted for 20 minutes: {left}"
    );
    assert_eq!(st.recent_denials, 1);
    let r = h
        .challenges()
        .create_challenge(h.req(Harness::login_request("bob", ENTER, 0)))
        .await;
    assert_eq!(limited(status_of(r)), "USER_MUTED_AFTER_FRAUD_REPORT");
    // The verdict says why, and other users still get prompts.
    assert_eq!(
        h.get(&c.challenge_id).await.deny_reason,
        sesame_proto::types::v1::DenyReason::FraudReported as i32
    );
    h.create("carol", ENTER, 0).await;
    h.shutdown().await;
}

#[tokio::test]
async fn repeated_denials_force_number_matching_then_lock() {
    let h = Harness::start_with(GuardPolicy::default()).await;
    let phone = h.enroll("dave").await;
    let deny_one = |mode| {
        let (h, phone) = (&h, &phone);
        async move {
            let c = h.create("dave", mode, 0).await;
            let d = details(phone, &c.challenge_id).await;
            phone.respond(&d, &answer(Decision::Deny)).await.unwrap();
            c
        }
    };
    for _ in 0..3 {
        let c = deny_one(NONE).await;
        assert_eq!(c.number_match, NumberMatchMode::None as i32);
    }
    assert!(user_status(&h, "dave").await.number_match_forced);
    // Asked without number matching, the challenge uses it anyway.
    let forced = deny_one(NONE).await;
    assert_eq!(forced.number_match, NumberMatchMode::Enter as i32);
    assert_eq!(forced.number_match_code.len(), 2);
    deny_one(ENTER).await;
    // The prompt limit (5) is reached first with the defaults; raise it to see the lock.
    h.shutdown().await;

    let h = Harness::start_with(GuardPolicy {
        max_prompts: 100,
        ..GuardPolicy::default()
    })
    .await;
    let phone = h.enroll("erin").await;
    for _ in 0..6 {
        let c = h.create("erin", ENTER, 0).await;
        let d = details(&phone, &c.challenge_id).await;
        phone.respond(&d, &answer(Decision::Deny)).await.unwrap();
    }
    let st = user_status(&h, "erin").await;
    let left = st.locked_until_unix_ms - sesame_core::time::now_ms();
    assert!(
        left > 59 * 60_000 && left <= 60 * 60_000,
        "locked for an hour: {left}"
    );
    let r = h
        .challenges()
        .create_challenge(h.req(Harness::login_request("erin", ENTER, 0)))
        .await;
    assert_eq!(limited(status_of(r)), "USER_LOCKED_AFTER_DENIALS");
    h.shutdown().await;
}

#[tokio::test]
async fn replace_pending_cancels_the_previous_challenge() {
    let h = Harness::start_with(GuardPolicy::default()).await;
    let phone = h.enroll("fay").await;
    let first = h.create("fay", ENTER, 0).await;
    let mut req = Harness::login_request("fay", ENTER, 0);
    let refused = h.challenges().create_challenge(h.req(req.clone())).await;
    assert_eq!(limited(status_of(refused)), "USER_CHALLENGE_PENDING");
    req.options.as_mut().unwrap().replace_pending = true;
    let second = h
        .challenges()
        .create_challenge(h.req(req))
        .await
        .unwrap()
        .into_inner()
        .challenge
        .unwrap();
    assert_eq!(h.get(&first.challenge_id).await.status, st(S::Cancelled));
    let d = details(&phone, &second.challenge_id).await;
    phone
        .respond(&d, &approve(&second.number_match_code))
        .await
        .unwrap();
    assert_eq!(user_status(&h, "fay").await.prompts_in_window, 2);
    h.shutdown().await;
}

#[tokio::test]
async fn idempotent_retry_of_the_pending_challenge_returns_it() {
    let h = Harness::start_with(GuardPolicy::default()).await;
    let _phone = h.enroll("gus").await;
    let mut req = Harness::login_request("gus", ENTER, 0);
    req.options.as_mut().unwrap().idempotency_key = "attempt-1".into();
    let a = h
        .challenges()
        .create_challenge(h.req(req.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = h
        .challenges()
        .create_challenge(h.req(req))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a.challenge.unwrap().challenge_id,
        b.challenge.unwrap().challenge_id
    );
    assert_eq!(
        user_status(&h, "gus").await.prompts_in_window,
        1,
        "a retry is not a new prompt"
    );
    h.shutdown().await;
}

/// One noisy tenant is held to its quota; another tenant is unaffected.
#[tokio::test]
async fn tenant_quota_limits_one_tenant_only() {
    let h = Harness::start_configured(|c| {
        c.quotas.tenants.insert(
            "other-bank".into(),
            // A burst of one, refilled every 100 s: no timing in this test.
            sesame_ratelimit::TenantQuota {
                per_second: 0.01,
                per_day: 0,
            },
        );
    })
    .await;
    let _theirs = h.enroll_other("zed").await;
    let _ours = h.enroll("zed").await;
    let mut ok = 0;
    let mut limited_count = 0;
    for _ in 0..6 {
        let r = h
            .challenges()
            .create_challenge(h.req_other(Harness::login_request("zed", ENTER, 0)))
            .await;
        match r {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted);
                assert_eq!(
                    s.get_details_error_info().unwrap().reason,
                    "TENANT_RATE_QUOTA"
                );
                assert!(
                    s.metadata().get("grpc-retry-pushback-ms").is_none(),
                    "may retry later"
                );
                limited_count += 1;
            }
        }
    }
    assert_eq!(ok, 1, "a burst of one");
    assert_eq!(limited_count, 5);
    for _ in 0..6 {
        h.create("zed", ENTER, 0).await;
    }
    h.shutdown().await;
}

/// Requests the guard refuses for one user do not use up the tenant's quota,
/// or bombing one user would lock out the tenant's other users.
#[tokio::test]
async fn guard_refusals_do_not_use_the_tenant_quota() {
    let h = Harness::start_configured(|c| {
        c.guard.defaults = GuardPolicy::default();
        c.quotas.defaults = sesame_ratelimit::TenantQuota {
            per_second: 0.0,
            per_day: 3,
        };
    })
    .await;
    let _victim = h.enroll("victim").await;
    let _a = h.enroll("ann").await;
    let _b = h.enroll("ben").await;
    h.create("victim", ENTER, 0).await;
    for _ in 0..20 {
        let r = h
            .challenges()
            .create_challenge(h.req(Harness::login_request("victim", ENTER, 0)))
            .await;
        assert_eq!(limited(status_of(r)), "USER_CHALLENGE_PENDING");
    }
    h.create("ann", ENTER, 0).await;
    h.create("ben", ENTER, 0).await;
    let r = h
        .challenges()
        .create_challenge(h.req(Harness::login_request("ann", ENTER, 0)))
        .await;
    let s = status_of(r);
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert_eq!(
        s.get_details_error_info().unwrap().reason,
        "TENANT_DAILY_QUOTA"
    );
    h.shutdown().await;
}

/// A retry with the same idempotency key and `replace_pending` returns the
/// pending challenge instead of replacing it with a second one.
#[tokio::test]
async fn idempotent_retry_with_replace_returns_the_same_challenge() {
    let h = Harness::start_with(GuardPolicy::default()).await;
    let _phone = h.enroll("ivy").await;
    let mut req = Harness::login_request("ivy", ENTER, 0);
    let opts = req.options.as_mut().unwrap();
    opts.idempotency_key = "attempt-7".into();
    opts.replace_pending = true;
    let a = h
        .challenges()
        .create_challenge(h.req(req.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = h
        .challenges()
        .create_challenge(h.req(req))
        .await
        .unwrap()
        .into_inner();
    let (a, b) = (a.challenge.unwrap(), b.challenge.unwrap());
    assert_eq!(a.challenge_id, b.challenge_id);
    assert_eq!(h.get(&a.challenge_id).await.status, st(S::Pending));
    let status = user_status(&h, "ivy").await;
    assert_eq!(status.pending_challenge_id, a.challenge_id);
    assert_eq!(status.prompts_in_window, 1);
    h.shutdown().await;
}
