//! The per-user guard over real storage backends: concurrency, time, and
//! property tests of the rules.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use sesame_core::model::UserGuardState;
use sesame_core::{ChallengeId, TenantId};
use sesame_ratelimit::rules::{self, GuardPolicy};
use sesame_ratelimit::{GuardError, Refusal, UserGuard};
use sesame_storage::{EmbeddedConfig, EmbeddedStorage, MemStorage, Storage};

const MIN: i64 = 60_000;

fn embedded() -> Arc<dyn Storage> {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    Arc::new(
        EmbeddedStorage::open(EmbeddedConfig::new(EmbeddedStorage::path_in(&dir))).expect("open"),
    )
}

fn guard(storage: Arc<dyn Storage>) -> Arc<UserGuard> {
    Arc::new(UserGuard::new(
        storage,
        GuardPolicy::default(),
        HashMap::new(),
    ))
}

fn tenant() -> TenantId {
    TenantId::parse("bank").expect("tenant id")
}

/// 100 concurrent requests for one user: exactly one is admitted (one
/// pending challenge), on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_burst_admits_exactly_one() {
    for storage in [embedded(), Arc::new(MemStorage::new()) as Arc<dyn Storage>] {
        let g = guard(storage);
        let now = 10 * MIN;
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let g = g.clone();
                tokio::spawn(async move {
                    g.admit(
                        &tenant(),
                        "alice",
                        &ChallengeId::generate(),
                        now + 2 * MIN,
                        now,
                        false,
                    )
                    .await
                })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(GuardError::Refused(Refusal::Pending { .. })) => {}
                Err(GuardError::Contention) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(admitted, 1);
    }
}

/// Without the one-pending rule, the prompt limit alone still holds exactly
/// under concurrency: 5, never 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_exceed_the_prompt_limit() {
    let policy = GuardPolicy {
        one_pending: false,
        ..GuardPolicy::default()
    };
    let g = Arc::new(UserGuard::new(embedded(), policy, HashMap::new()));
    let now = 10 * MIN;
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let g = g.clone();
            tokio::spawn(async move {
                loop {
                    match g
                        .admit(
                            &tenant(),
                            "bob",
                            &ChallengeId::generate(),
                            now + MIN,
                            now,
                            true,
                        )
                        .await
                    {
                        Err(GuardError::Contention) => continue,
                        other => return other,
                    }
                }
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(GuardError::Refused(Refusal::TooManyPrompts { retry_at })) => {
                assert_eq!(retry_at, now + 10 * MIN)
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(admitted, 5);
}

/// Driven by tokio's paused clock: five prompts, the sixth refused at every
/// instant of the window, admitted once the first leaves it.
#[tokio::test(start_paused = true)]
async fn sliding_window_with_paused_time() {
    let g = guard(Arc::new(MemStorage::new()));
    let start = tokio::time::Instant::now();
    let base = 1_000 * MIN;
    let now = || base + start.elapsed().as_millis() as i64;
    for _ in 0..5 {
        g.admit(
            &tenant(),
            "carol",
            &ChallengeId::generate(),
            now() + 30_000,
            now(),
            true,
        )
        .await
        .unwrap();
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
    }
    // t = 5 min .. 10 min - 1 ms: always refused, up to the last millisecond.
    for step_ms in [0i64, 60_000, 120_000, 299_999] {
        let t = now() + step_ms;
        let r = g
            .admit(
                &tenant(),
                "carol",
                &ChallengeId::generate(),
                t + 30_000,
                t,
                true,
            )
            .await;
        assert!(
            matches!(r, Err(GuardError::Refused(Refusal::TooManyPrompts { .. }))),
            "{step_ms}: {r:?}"
        );
    }
    tokio::time::advance(std::time::Duration::from_secs(300)).await;
    // t = 10 min: the first prompt (t = 0) left the window.
    g.admit(
        &tenant(),
        "carol",
        &ChallengeId::generate(),
        now() + 30_000,
        now(),
        true,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn fraud_report_mutes_and_refusals_are_served_from_the_cache() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let g = guard(storage.clone());
    let e = g.record_denial(&tenant(), "dave", 0, true).await.unwrap();
    assert_eq!(
        e,
        vec![sesame_ratelimit::Escalation::Muted { until: 20 * MIN }]
    );
    let r = g
        .admit(
            &tenant(),
            "dave",
            &ChallengeId::generate(),
            MIN,
            MIN / 2,
            false,
        )
        .await;
    assert!(matches!(r, Err(GuardError::Refused(Refusal::Muted { until })) if until == 20 * MIN));
    // Even if the record vanished, this instance refuses from its cache.
    assert!(storage
        .put_user_guard(&tenant(), "dave", 1, &UserGuardState::default())
        .await
        .unwrap());
    let r = g
        .admit(
            &tenant(),
            "dave",
            &ChallengeId::generate(),
            2 * MIN,
            MIN,
            false,
        )
        .await;
    assert!(matches!(r, Err(GuardError::Refused(Refusal::Muted { .. }))));
    // Other users and other tenants are unaffected.
    g.admit(
        &tenant(),
        "erin",
        &ChallengeId::generate(),
        2 * MIN,
        MIN,
        false,
    )
    .await
    .unwrap();
    g.admit(
        &TenantId::parse("other").unwrap(),
        "dave",
        &ChallengeId::generate(),
        2 * MIN,
        MIN,
        false,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn release_frees_the_slot_and_the_prompt() {
    let g = guard(Arc::new(MemStorage::new()));
    let id = ChallengeId::generate();
    g.admit(&tenant(), "fay", &id, 2 * MIN, MIN, false)
        .await
        .unwrap();
    assert!(g
        .admit(
            &tenant(),
            "fay",
            &ChallengeId::generate(),
            2 * MIN,
            MIN,
            false
        )
        .await
        .is_err());
    g.release(&tenant(), "fay", &id, MIN, None).await.unwrap();
    let st = g.status(&tenant(), "fay", MIN).await.unwrap();
    assert!(st.pending.is_none() && st.pushes.is_empty());
    g.admit(
        &tenant(),
        "fay",
        &ChallengeId::generate(),
        2 * MIN,
        MIN,
        false,
    )
    .await
    .unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    /// Wait this many seconds, then ask for a challenge.
    Request {
        wait_s: u32,
        answered_before: bool,
    },
    Deny {
        wait_s: u32,
        fraud: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..400, any::<bool>()).prop_map(|(wait_s, answered_before)| Op::Request { wait_s, answered_before }),
        1 => (0u32..400, any::<bool>()).prop_map(|(wait_s, fraud)| Op::Deny { wait_s, fraud }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the sequence: never more than `max_prompts` admissions in
    /// any window, none while a challenge is live, muted or locked.
    #[test]
    fn rules_hold_for_any_sequence(ops in prop::collection::vec(op(), 1..120)) {
        let p = GuardPolicy::default();
        let mut s = UserGuardState::default();
        let mut now = 0i64;
        let mut admitted: Vec<i64> = Vec::new();
        let mut pending_until = i64::MIN;
        for o in ops {
            match o {
                Op::Request { wait_s, answered_before } => {
                    now += i64::from(wait_s) * 1000;
                    let live = !answered_before && pending_until > now;
                    let blocked = s.muted_until > now || s.locked_until > now;
                    if rules::decide(&s, now, &p, live).is_ok() {
                        prop_assert!(!live, "admitted while a challenge was pending");
                        prop_assert!(!blocked, "admitted while muted or locked");
                        rules::admit(&mut s, now, &p, &ChallengeId::generate(), now + 120_000);
                        admitted.push(now);
                        pending_until = now + 120_000;
                    } else if answered_before {
                        pending_until = i64::MIN;
                    }
                }
                Op::Deny { wait_s, fraud } => {
                    now += i64::from(wait_s) * 1000;
                    rules::record_denial(&mut s, now, &p, fraud);
                    pending_until = i64::MIN;
                }
            }
        }
        let window = p.prompt_window_secs as i64 * 1000;
        for &t in &admitted {
            let n = admitted.iter().filter(|&&u| u > t - window && u <= t).count();
            prop_assert!(n <= p.max_prompts as usize, "{n} prompts in the window ending at {t}");
        }
    }
}

/// A replacement needs the pending challenge to be stored (else it could
/// still be stored and pushed after being "replaced"), and releasing a
/// replacement that failed hands the slot back to the replaced challenge.
#[tokio::test]
async fn replace_needs_a_stored_challenge_and_release_restores_it() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let g = guard(storage.clone());
    let t = tenant();
    let now = sesame_core::time::now_ms();
    let first = sesame_storage::testsuite::challenge(&t, "hal", vec![], 60_000);
    g.admit(&t, "hal", &first.id, first.expires_at, now, false)
        .await
        .unwrap();
    // Admitted but not stored yet: cannot be replaced.
    let r = g
        .admit(&t, "hal", &ChallengeId::generate(), now + 60_000, now, true)
        .await;
    assert!(
        matches!(r, Err(GuardError::Refused(Refusal::Pending { .. }))),
        "{r:?}"
    );
    storage.create_challenge(&first).await.unwrap();
    let second = ChallengeId::generate();
    let a = g
        .admit(&t, "hal", &second, now + 60_000, now, true)
        .await
        .unwrap();
    assert_eq!(
        a.replaced.as_ref().map(|p| &p.challenge_id),
        Some(&first.id)
    );
    // The replacement failed: the first challenge blocks again.
    g.release(&t, "hal", &second, now, a.replaced)
        .await
        .unwrap();
    let st = g.status(&t, "hal", now).await.unwrap();
    assert_eq!(st.pending.map(|p| p.challenge_id), Some(first.id.clone()));
    let r = g
        .admit(
            &t,
            "hal",
            &ChallengeId::generate(),
            now + 60_000,
            now,
            false,
        )
        .await;
    assert!(
        matches!(&r, Err(GuardError::Refused(Refusal::Pending { challenge_id, .. })) if challenge_id == &first.id),
        "{r:?}"
    );
}
