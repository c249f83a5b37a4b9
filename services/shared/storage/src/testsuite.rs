#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

//! The conformance suite every storage backend must pass. Each case is a
//! plain async function over `Arc<dyn Storage>`; [`storage_suite!`] expands
//! to one `#[tokio::test]` per case for a given constructor, so the same code
//! runs against the embedded backend in CI and against ScyllaDB wherever one
//! is reachable.

use std::sync::Arc;

use sesame_core::model::*;
use sesame_core::time::now_ms;
use sesame_core::{ChallengeId, DeviceId, TenantId};

use sesame_core::audit::{
    chain_id, verify_chain, AuditAction, AuditEntry, AuditRecord, ChainHead, Chainer,
};

use crate::{AuditCursor, AuditQuery, Created, GuardedCreate, Storage, StorageError};

pub type Store = Arc<dyn Storage>;

fn tenant(s: &str) -> TenantId {
    TenantId::parse(s).expect("valid tenant id")
}

/// A unique tenant per test, so a shared cluster can run cases concurrently.
pub fn fresh_tenant() -> TenantId {
    tenant(&format!("t-{}", &ChallengeId::generate().as_str()[3..15]))
}

pub fn device(tenant: &TenantId, user: &str, enrolled_at: i64) -> Device {
    Device {
        id: DeviceId::generate(),
        tenant_id: tenant.clone(),
        user_id: user.to_owned(),
        display_name: "phone".into(),
        platform: Platform::Ios,
        key_algorithm: KeyAlgorithm::EcdsaP256Sha256,
        public_key: vec![4; 65],
        push_token: "tok".into(),
        push_app: String::new(),
        push_enabled: true,
        enrolled_at,
        revoked_at: None,
    }
}

pub fn challenge(tenant: &TenantId, user: &str, devices: Vec<DeviceId>, ttl_ms: i64) -> Challenge {
    let now = now_ms();
    Challenge {
        id: ChallengeId::generate(),
        tenant_id: tenant.clone(),
        user_id: user.to_owned(),
        context: ChallengeContext {
            client_name: "Bank".into(),
            action: Action::Login,
            transaction: None,
            ip_address: String::new(),
            location: String::new(),
            binding_message: String::new(),
        },
        context_hash: [1; 32],
        number_match: NumberMatch {
            mode: NumberMatchMode::Enter,
            code: "42".into(),
            choices: vec![],
        },
        created_at: now,
        expires_at: now + ttl_ms,
        idempotency_key: None,
        devices,
        resolution: None,
    }
}

fn approve(device: &DeviceId) -> Resolution {
    Resolution {
        outcome: Outcome::Approved,
        device_id: Some(device.clone()),
        at: now_ms(),
    }
}

async fn enroll(s: &Store, d: &Device) {
    let token = sesame_core::ids::random_bytes::<32>();
    s.create_enrollment(&EnrollmentTicket {
        token_sha256: token,
        tenant_id: d.tenant_id.clone(),
        user_id: d.user_id.clone(),
        created_at: now_ms(),
        expires_at: now_ms() + 60_000,
    })
    .await
    .expect("create enrollment");
    s.complete_enrollment(&token, d, 16)
        .await
        .expect("complete enrollment");
}

pub async fn tenants_and_keys(s: Store) {
    let t = Tenant {
        id: fresh_tenant(),
        display_name: "Bank".into(),
        disabled: false,
        created_at: 1,
        client_identity: String::new(),
    };
    assert_eq!(s.get_tenant(&t.id).await.unwrap(), None);
    s.put_tenant(&t).await.unwrap();
    assert_eq!(s.get_tenant(&t.id).await.unwrap(), Some(t.clone()));
    // Binding the tenant to a client certificate is an update in place.
    let bound = Tenant {
        client_identity: "spiffe://bank.example/idp".into(),
        ..t.clone()
    };
    s.put_tenant(&bound).await.unwrap();
    assert_eq!(s.get_tenant(&t.id).await.unwrap(), Some(bound));
    s.put_tenant(&t).await.unwrap();
    let k = ApiKeyRecord {
        key_id: format!("k{}", &ChallengeId::generate().as_str()[3..]),
        tenant_id: t.id.clone(),
        secret_sha256: [9; 32],
        created_at: 1,
        revoked: false,
        expires_at: 0,
    };
    s.put_api_key(&k).await.unwrap();
    assert_eq!(s.get_api_key(&k.key_id).await.unwrap(), Some(k.clone()));
    assert_eq!(s.get_api_key("nope").await.unwrap(), None);
    // A rotated-out key keeps its record, with an expiry.
    let expiring = ApiKeyRecord {
        expires_at: 5_000,
        ..k.clone()
    };
    s.put_api_key(&expiring).await.unwrap();
    assert_eq!(s.get_api_key(&k.key_id).await.unwrap(), Some(expiring));
    s.health_check().await.unwrap();
}

fn new_tenant(id: TenantId, name: &str) -> Tenant {
    Tenant {
        id,
        display_name: name.into(),
        disabled: false,
        created_at: now_ms(),
        client_identity: String::new(),
    }
}

pub async fn create_tenant_is_insert_if_absent(s: Store) {
    let t = new_tenant(fresh_tenant(), "First");
    assert!(s.create_tenant(&t).await.unwrap());
    let again = new_tenant(t.id.clone(), "Second");
    assert!(!s.create_tenant(&again).await.unwrap());
    assert_eq!(s.get_tenant(&t.id).await.unwrap(), Some(t.clone()));
    // Racing creators of one id: exactly one wins.
    let id = fresh_tenant();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (s, t) = (s.clone(), new_tenant(id.clone(), &format!("racer {i}")));
        tasks.push(tokio::spawn(
            async move { s.create_tenant(&t).await.unwrap() },
        ));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
}

pub async fn tenants_listed_in_pages(s: Store) {
    let mut mine = std::collections::BTreeSet::new();
    for _ in 0..7 {
        let t = new_tenant(fresh_tenant(), "Paged");
        assert!(s.create_tenant(&t).await.unwrap());
        mine.insert(t.id.as_str().to_owned());
    }
    // A shared cluster holds other tests' tenants too: walk every page and
    // check each of ours comes exactly once, and no page repeats a tenant.
    let mut seen = std::collections::BTreeSet::new();
    let mut after: Option<TenantId> = None;
    loop {
        let page = s.list_tenants(after.as_ref(), 3).await.unwrap();
        assert!(page.len() <= 3);
        for t in &page {
            assert!(
                seen.insert(t.id.as_str().to_owned()),
                "{} listed twice",
                t.id
            );
        }
        if page.len() < 3 {
            break;
        }
        after = page.last().map(|t| t.id.clone());
    }
    assert!(
        mine.is_subset(&seen),
        "missing {:?}",
        mine.difference(&seen)
    );
    assert!(s.list_tenants(None, 0).await.unwrap().is_empty());
}

pub async fn api_keys_listed_per_tenant(s: Store) {
    let (a, b) = (fresh_tenant(), fresh_tenant());
    let key = |t: &TenantId, created_at: i64| ApiKeyRecord {
        key_id: format!("k{}", &ChallengeId::generate().as_str()[3..]),
        tenant_id: t.clone(),
        secret_sha256: [3; 32],
        created_at,
        revoked: false,
        expires_at: 0,
    };
    let (a1, a2, b1) = (key(&a, 10), key(&a, 20), key(&b, 15));
    for k in [&a2, &b1, &a1] {
        s.put_api_key(k).await.unwrap();
    }
    let revoked = ApiKeyRecord {
        revoked: true,
        ..a1.clone()
    };
    s.put_api_key(&revoked).await.unwrap();
    assert_eq!(s.list_api_keys(&a).await.unwrap(), vec![revoked, a2]);
    assert_eq!(s.list_api_keys(&b).await.unwrap(), vec![b1]);
    assert!(s.list_api_keys(&fresh_tenant()).await.unwrap().is_empty());
}

pub async fn enrollment_token_is_single_use(s: Store) {
    let t = fresh_tenant();
    let token = [7u8; 32];
    let ticket = EnrollmentTicket {
        token_sha256: token,
        tenant_id: t.clone(),
        user_id: "alice".into(),
        created_at: now_ms(),
        expires_at: now_ms() + 60_000,
    };
    s.create_enrollment(&ticket).await.unwrap();
    assert_eq!(s.get_enrollment(&token).await.unwrap(), Some(ticket));
    let d1 = device(&t, "alice", 1);
    s.complete_enrollment(&token, &d1, 16).await.unwrap();
    let d2 = device(&t, "alice", 2);
    assert!(matches!(
        s.complete_enrollment(&token, &d2, 16).await,
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(
        s.get_device(&d2.id).await.unwrap(),
        None,
        "nothing stored on refusal"
    );
    assert_eq!(s.get_enrollment(&token).await.unwrap(), None);
    assert_eq!(s.get_device(&d1.id).await.unwrap(), Some(d1));
}

pub async fn device_limit_per_user(s: Store) {
    let t = fresh_tenant();
    for i in 0..2 {
        let token = sesame_core::ids::random_bytes::<32>();
        s.create_enrollment(&EnrollmentTicket {
            token_sha256: token,
            tenant_id: t.clone(),
            user_id: "bob".into(),
            created_at: 0,
            expires_at: now_ms() + 60_000,
        })
        .await
        .unwrap();
        let r = s
            .complete_enrollment(&token, &device(&t, "bob", i), 1)
            .await;
        if i == 0 {
            r.unwrap();
        } else {
            assert!(matches!(r, Err(StorageError::LimitExceeded(_))), "{r:?}");
            assert!(
                s.get_enrollment(&token).await.unwrap().is_some(),
                "ticket kept"
            );
        }
    }
}

/// Many concurrent completions of one token: exactly one device is stored.
pub async fn enrollment_token_race_has_one_winner(s: Store) {
    let t = fresh_tenant();
    let token = sesame_core::ids::random_bytes::<32>();
    s.create_enrollment(&EnrollmentTicket {
        token_sha256: token,
        tenant_id: t.clone(),
        user_id: "racer".into(),
        created_at: now_ms(),
        expires_at: now_ms() + 60_000,
    })
    .await
    .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (s, t) = (s.clone(), t.clone());
            tokio::spawn(async move {
                s.complete_enrollment(&token, &device(&t, "racer", i), 16)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(()) => ok += 1,
            Err(StorageError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(s.list_devices(&t, "racer").await.unwrap().len(), 1);
}

/// Revoked devices do not count toward the per-user limit.
pub async fn revoked_devices_free_their_slot(s: Store) {
    let t = fresh_tenant();
    let first = device(&t, "dana", 1);
    enroll(&s, &first).await;
    s.revoke_device(&t, &first.id, 5).await.unwrap();
    let token = sesame_core::ids::random_bytes::<32>();
    s.create_enrollment(&EnrollmentTicket {
        token_sha256: token,
        tenant_id: t.clone(),
        user_id: "dana".into(),
        created_at: 0,
        expires_at: now_ms() + 60_000,
    })
    .await
    .unwrap();
    s.complete_enrollment(&token, &device(&t, "dana", 2), 1)
        .await
        .unwrap();
    assert_eq!(s.list_devices(&t, "dana").await.unwrap().len(), 2);
}

pub async fn devices_listed_per_user_and_tenant(s: Store) {
    let (t1, t2) = (fresh_tenant(), fresh_tenant());
    let a1 = device(&t1, "alice", 1);
    let a2 = device(&t1, "alice", 2);
    let b = device(&t1, "alice2", 3);
    let other = device(&t2, "alice", 4);
    for d in [&a1, &a2, &b, &other] {
        enroll(&s, d).await;
    }
    let list = s.list_devices(&t1, "alice").await.unwrap();
    assert_eq!(list, vec![a1.clone(), a2.clone()]);
    assert_eq!(s.list_devices(&t2, "alice").await.unwrap(), vec![other]);
    assert!(s.list_devices(&t1, "nobody").await.unwrap().is_empty());
}

pub async fn revoke_is_tenant_scoped_and_idempotent(s: Store) {
    let (t1, t2) = (fresh_tenant(), fresh_tenant());
    let d = device(&t1, "alice", 1);
    enroll(&s, &d).await;
    assert_eq!(
        s.revoke_device(&t2, &d.id, 10).await,
        Err(StorageError::NotFound("device"))
    );
    assert!(s.get_device(&d.id).await.unwrap().unwrap().is_active());
    let r = s.revoke_device(&t1, &d.id, 10).await.unwrap();
    assert_eq!(r.revoked_at, Some(10));
    let again = s.revoke_device(&t1, &d.id, 20).await.unwrap();
    assert_eq!(again.revoked_at, Some(10));
    assert!(matches!(
        s.update_push_token(&d.id, "new").await,
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(
        s.revoke_device(&t1, &DeviceId::generate(), 1).await,
        Err(StorageError::NotFound("device"))
    );
}

pub async fn dead_token_only_disables_that_token(s: Store) {
    let t = fresh_tenant();
    let d = device(&t, "alice", 1);
    enroll(&s, &d).await;
    assert!(s.disable_push(&d.id, "tok").await.unwrap());
    assert!(!s.get_device(&d.id).await.unwrap().unwrap().push_enabled);
    assert!(!s.disable_push(&d.id, "tok").await.unwrap());
    let d2 = s.update_push_token(&d.id, "fresh").await.unwrap();
    assert!(d2.push_enabled);
    // A late report about the old token must not disable the new one.
    assert!(!s.disable_push(&d.id, "tok").await.unwrap());
    assert!(s.get_device(&d.id).await.unwrap().unwrap().push_enabled);
    assert!(!s.disable_push(&DeviceId::generate(), "tok").await.unwrap());
}

pub async fn challenge_roundtrip_and_pending(s: Store) {
    let t = fresh_tenant();
    let (d1, d2) = (DeviceId::generate(), DeviceId::generate());
    let c = challenge(&t, "alice", vec![d1.clone(), d2.clone()], 60_000);
    assert_eq!(s.create_challenge(&c).await.unwrap(), Created::New);
    assert_eq!(s.get_challenge(&c.id).await.unwrap(), Some(c.clone()));
    let now = now_ms();
    assert_eq!(
        s.pending_challenges(&d1, now).await.unwrap(),
        vec![c.clone()]
    );
    assert_eq!(
        s.pending_challenges(&d2, now).await.unwrap(),
        vec![c.clone()]
    );
    assert!(s
        .pending_challenges(&DeviceId::generate(), now)
        .await
        .unwrap()
        .is_empty());
    let resolved = s
        .resolve_challenge(&c.id, &approve(&d1), now)
        .await
        .unwrap();
    assert_eq!(resolved.status(now), ChallengeStatus::Approved);
    assert!(s.pending_challenges(&d2, now).await.unwrap().is_empty());
    assert_eq!(
        s.get_challenge(&c.id).await.unwrap().unwrap().resolution,
        resolved.resolution
    );
}

pub async fn expired_challenge_cannot_resolve(s: Store) {
    let t = fresh_tenant();
    let d = DeviceId::generate();
    let c = challenge(&t, "alice", vec![d.clone()], 1_000);
    s.create_challenge(&c).await.unwrap();
    let later = c.expires_at + 1;
    assert!(s.pending_challenges(&d, later).await.unwrap().is_empty());
    assert_eq!(
        s.resolve_challenge(&c.id, &approve(&d), later).await,
        Err(StorageError::Transition(TransitionError::Expired))
    );
    assert_eq!(
        s.get_challenge(&c.id).await.unwrap().unwrap().resolution,
        None
    );
    assert_eq!(
        s.resolve_challenge(&ChallengeId::generate(), &approve(&d), later)
            .await,
        Err(StorageError::NotFound("challenge"))
    );
}

pub async fn idempotency_key_returns_first_challenge(s: Store) {
    let (t1, t2) = (fresh_tenant(), fresh_tenant());
    let mut c1 = challenge(&t1, "alice", vec![], 60_000);
    c1.idempotency_key = Some("login-1".into());
    assert_eq!(s.create_challenge(&c1).await.unwrap(), Created::New);
    let mut c2 = challenge(&t1, "alice", vec![], 60_000);
    c2.idempotency_key = Some("login-1".into());
    assert_eq!(
        s.create_challenge(&c2).await.unwrap(),
        Created::Existing(Box::new(c1.clone()))
    );
    assert_eq!(s.get_challenge(&c2.id).await.unwrap(), None);
    // Keys are per tenant.
    let mut c3 = challenge(&t2, "alice", vec![], 60_000);
    c3.idempotency_key = Some("login-1".into());
    assert_eq!(s.create_challenge(&c3).await.unwrap(), Created::New);
}

/// Many concurrent answers to one challenge: exactly one wins.
pub async fn answer_race_has_one_winner(s: Store) {
    let t = fresh_tenant();
    let devices: Vec<DeviceId> = (0..8).map(|_| DeviceId::generate()).collect();
    let c = challenge(&t, "alice", devices.clone(), 60_000);
    s.create_challenge(&c).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (s, id, d) = (s.clone(), c.id.clone(), devices[i % devices.len()].clone());
        tasks.push(tokio::spawn(async move {
            let res = Resolution {
                outcome: if i % 2 == 0 {
                    Outcome::Approved
                } else {
                    Outcome::Denied(DenyReason::UserDenied)
                },
                device_id: Some(d),
                at: now_ms(),
            };
            s.resolve_challenge(&id, &res, now_ms())
                .await
                .map(|c| c.resolution)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => winners.push(r),
            Err(StorageError::Transition(TransitionError::AlreadyFinal(_))) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one answer wins");
    let stored = s.get_challenge(&c.id).await.unwrap().unwrap();
    assert_eq!(stored.resolution, winners[0]);
}

pub async fn purge_removes_only_expired(s: Store) {
    let t = fresh_tenant();
    let d = DeviceId::generate();
    let mut old = challenge(&t, "alice", vec![d.clone()], 10);
    old.expires_at = 1_000;
    old.idempotency_key = Some("k".into());
    let live = challenge(&t, "alice", vec![d.clone()], 60_000);
    s.create_challenge(&old).await.unwrap();
    s.create_challenge(&live).await.unwrap();
    let stale_ticket = EnrollmentTicket {
        token_sha256: [3; 32],
        tenant_id: t.clone(),
        user_id: "alice".into(),
        created_at: 0,
        expires_at: 500,
    };
    s.create_enrollment(&stale_ticket).await.unwrap();
    let old_guard = UserGuardState {
        pushes: vec![1_500],
        ..Default::default()
    };
    assert!(s
        .put_user_guard(&t, "old-user", 0, &old_guard)
        .await
        .unwrap());
    let live_guard = UserGuardState {
        pushes: vec![now_ms()],
        ..Default::default()
    };
    assert!(s
        .put_user_guard(&t, "live-user", 0, &live_guard)
        .await
        .unwrap());
    let mut old_dead = dead_delivery(&t, "vd_old");
    old_dead.failed_at = 1_500;
    s.put_dead_delivery(&old_dead).await.unwrap();
    let live_dead = dead_delivery(&t, "vd_live");
    s.put_dead_delivery(&live_dead).await.unwrap();
    let n = s.purge_expired(now_ms(), 2_000, 2_000).await.unwrap();
    match s.ttl_expiry() {
        // Rows with TTLs: the backend drops them by itself, soon.
        Some(lag) => tokio::time::sleep(lag).await,
        None => assert!(n >= 4, "purged {n}"),
    }
    assert_eq!(
        s.list_dead_deliveries(&t, None, 10).await.unwrap(),
        vec![live_dead],
        "a dead delivery goes with its challenge's retention"
    );
    assert_eq!(
        s.get_user_guard(&t, "old-user").await.unwrap(),
        (0, UserGuardState::default())
    );
    assert_eq!(
        s.get_user_guard(&t, "live-user").await.unwrap(),
        (1, live_guard)
    );
    assert_eq!(s.get_challenge(&old.id).await.unwrap(), None);
    assert!(s.get_challenge(&live.id).await.unwrap().is_some());
    assert_eq!(s.get_enrollment(&[3; 32]).await.unwrap(), None);
    // The idempotency key went with its challenge.
    let mut again = challenge(&t, "alice", vec![], 60_000);
    again.idempotency_key = Some("k".into());
    assert_eq!(s.create_challenge(&again).await.unwrap(), Created::New);
}

/// The guard record is a compare-and-set register, isolated per tenant and user.
pub async fn user_guard_compare_and_set(s: Store) {
    let (t1, t2) = (fresh_tenant(), fresh_tenant());
    assert_eq!(
        s.get_user_guard(&t1, "u").await.unwrap(),
        (0, UserGuardState::default())
    );
    let a = UserGuardState {
        pushes: vec![now_ms()],
        ..Default::default()
    };
    assert!(
        !s.put_user_guard(&t1, "u", 1, &a).await.unwrap(),
        "no record yet: version 0"
    );
    assert!(s.put_user_guard(&t1, "u", 0, &a).await.unwrap());
    assert!(
        !s.put_user_guard(&t1, "u", 0, &a).await.unwrap(),
        "stale version"
    );
    assert_eq!(s.get_user_guard(&t1, "u").await.unwrap(), (1, a.clone()));
    let mut b = a.clone();
    b.muted_until = 42;
    assert!(s.put_user_guard(&t1, "u", 1, &b).await.unwrap());
    assert_eq!(s.get_user_guard(&t1, "u").await.unwrap(), (2, b));
    assert_eq!(
        s.get_user_guard(&t2, "u").await.unwrap().0,
        0,
        "other tenant"
    );
    assert_eq!(
        s.get_user_guard(&t1, "u2").await.unwrap().0,
        0,
        "other user"
    );
}

/// Concurrent writers of the same version: exactly one wins.
pub async fn user_guard_race_has_one_winner(s: Store) {
    let t = fresh_tenant();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (s, t) = (s.clone(), t.clone());
            tokio::spawn(async move {
                let st = UserGuardState {
                    pushes: vec![i],
                    ..Default::default()
                };
                s.put_user_guard(&t, "racer", 0, &st).await.unwrap()
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        wins += usize::from(task.await.expect("task"));
    }
    assert_eq!(wins, 1);
    assert_eq!(s.get_user_guard(&t, "racer").await.unwrap().0, 1);
}

/// A challenge stored with its guard record: both written, or on a stale
/// version neither.
pub async fn guarded_create_writes_both_or_neither(s: Store) {
    let t = fresh_tenant();
    let d = DeviceId::generate();
    let a = UserGuardState {
        pushes: vec![now_ms()],
        ..Default::default()
    };
    let mut c1 = challenge(&t, "alice", vec![d.clone()], 60_000);
    c1.idempotency_key = Some("k".into());
    assert_eq!(
        s.create_challenge_guarded(&c1, 1, &a).await.unwrap(),
        GuardedCreate::Stale,
        "no record yet: version 0"
    );
    assert_eq!(s.get_challenge(&c1.id).await.unwrap(), None);
    assert_eq!(
        s.create_challenge_guarded(&c1, 0, &a).await.unwrap(),
        GuardedCreate::New
    );
    assert_eq!(s.get_challenge(&c1.id).await.unwrap(), Some(c1.clone()));
    assert_eq!(s.get_user_guard(&t, "alice").await.unwrap(), (1, a.clone()));
    // The challenge's indexes were written too.
    assert_eq!(
        s.pending_challenges(&d, now_ms()).await.unwrap(),
        vec![c1.clone()]
    );

    // A stale version writes nothing.
    let b = UserGuardState {
        muted_until: 42,
        ..Default::default()
    };
    let c2 = challenge(&t, "alice", vec![d.clone()], 60_000);
    assert_eq!(
        s.create_challenge_guarded(&c2, 0, &b).await.unwrap(),
        GuardedCreate::Stale
    );
    assert_eq!(s.get_challenge(&c2.id).await.unwrap(), None);
    assert_eq!(s.get_user_guard(&t, "alice").await.unwrap(), (1, a.clone()));

    // The idempotency key returns the first challenge and stores no second.
    let mut c3 = challenge(&t, "alice", vec![d.clone()], 60_000);
    c3.idempotency_key = Some("k".into());
    assert_eq!(
        s.create_challenge_guarded(&c3, 1, &b).await.unwrap(),
        GuardedCreate::Existing(Box::new(c1.clone()))
    );
    assert_eq!(s.get_challenge(&c3.id).await.unwrap(), None);

    // Another user's record is untouched.
    assert_eq!(s.get_user_guard(&t, "bob").await.unwrap().0, 0);
}

/// On backends that write both in one transaction, an idempotent retry
/// leaves the guard record as it was (not part of the shared suite: the
/// trait's default, used by ScyllaDB, writes the record first).
pub async fn guarded_create_is_atomic(s: Store) {
    let t = fresh_tenant();
    let a = UserGuardState {
        pushes: vec![1],
        ..Default::default()
    };
    let mut c1 = challenge(&t, "alice", vec![], 60_000);
    c1.idempotency_key = Some("k".into());
    assert_eq!(
        s.create_challenge_guarded(&c1, 0, &a).await.unwrap(),
        GuardedCreate::New
    );
    let b = UserGuardState {
        pushes: vec![1, 2],
        ..Default::default()
    };
    let mut c2 = challenge(&t, "alice", vec![], 60_000);
    c2.idempotency_key = Some("k".into());
    assert_eq!(
        s.create_challenge_guarded(&c2, 1, &b).await.unwrap(),
        GuardedCreate::Existing(Box::new(c1))
    );
    assert_eq!(s.get_user_guard(&t, "alice").await.unwrap(), (1, a));
}

/// Concurrent guarded creates from the same version: exactly one challenge.
pub async fn guarded_create_race_has_one_winner(s: Store) {
    let t = fresh_tenant();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (s, t) = (s.clone(), t.clone());
            tokio::spawn(async move {
                let c = challenge(&t, "racer", vec![], 60_000);
                let st = UserGuardState {
                    pushes: vec![i],
                    ..Default::default()
                };
                let r = s.create_challenge_guarded(&c, 0, &st).await.unwrap();
                let stored = s.get_challenge(&c.id).await.unwrap().is_some();
                assert_eq!(stored, r == GuardedCreate::New, "{r:?}");
                r
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            GuardedCreate::New => wins += 1,
            GuardedCreate::Stale => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(s.get_user_guard(&t, "racer").await.unwrap().0, 1);
}

/// Usage reports: one per (tenant, instance), overwritten, listed per tenant.
pub async fn usage_reports_overwrite_per_instance(s: Store) {
    let (t1, t2) = (fresh_tenant(), fresh_tenant());
    let report = |instance: &str, day_used: u64| UsageReport {
        instance: instance.into(),
        demand_per_s: 1.5,
        day: 20_000,
        day_used,
        reported_at: now_ms(),
    };
    assert!(s.list_usage(&t1).await.unwrap().is_empty());
    s.put_usage(&t1, &report("a", 1)).await.unwrap();
    s.put_usage(&t1, &report("b", 2)).await.unwrap();
    s.put_usage(&t1, &report("a", 3)).await.unwrap();
    s.put_usage(&t2, &report("a", 9)).await.unwrap();
    let mut got = s.list_usage(&t1).await.unwrap();
    got.sort_by(|x, y| x.instance.cmp(&y.instance));
    assert_eq!(
        got.iter()
            .map(|r| (r.instance.as_str(), r.day_used))
            .collect::<Vec<_>>(),
        vec![("a", 3), ("b", 2)]
    );
    assert_eq!(s.list_usage(&t2).await.unwrap().len(), 1);
}

/// Lists longer than a backend's page (the ScyllaDB suite runs with a page
/// of 7 rows) come back whole and in order.
/// Two chains of one tenant (two writers) and one of another tenant.
async fn audit_trail(s: &Store) -> (TenantId, TenantId, Vec<AuditRecord>, Vec<Chainer>) {
    let (t, other) = (fresh_tenant(), fresh_tenant());
    let id = ChallengeId::generate();
    let writer = &id.as_str()[3..11];
    let mut chains: Vec<Chainer> = [(&t, "a"), (&t, "b"), (&other, "a")]
        .iter()
        .map(|(tenant, w)| {
            Chainer::new(
                chain_id(tenant.as_str(), &format!("{w}{writer}")),
                tenant.as_str().to_owned(),
                1,
            )
        })
        .collect();
    let mut all = Vec::new();
    for i in 0..30i64 {
        let c = &mut chains[(i % 3) as usize];
        let tenant = c.tenant_id.clone();
        let e = AuditEntry::new(10_000 + i * 10, tenant, AuditAction::ChallengeCreated)
            .user(format!("user{}", i % 2))
            .challenge(format!("ch{}", i % 5))
            .detail(format!("n{i}"));
        all.push(c.append(e));
    }
    // Two batches, each with the heads as they stand after it.
    let (first, second) = all.split_at(12);
    let heads: Vec<_> = chains.iter().filter_map(Chainer::head).collect();
    let early_heads: Vec<_> = heads
        .iter()
        .filter_map(|h| {
            let last = first.iter().rev().find(|r| r.chain == h.chain)?;
            Some(ChainHead {
                seq: last.seq,
                hash: last.hash,
                ..h.clone()
            })
        })
        .collect();
    s.append_audit(first, &early_heads).await.unwrap();
    s.append_audit(second, &heads).await.unwrap();
    (t, other, all, chains)
}

pub async fn audit_chains_read_back_in_order(s: Store) {
    let (_, _, all, chains) = audit_trail(&s).await;
    for c in &chains {
        let want: Vec<_> = all.iter().filter(|r| r.chain == c.chain).cloned().collect();
        // Read in pages of 4: positions continue where the page ended.
        let mut got = Vec::new();
        loop {
            let page = s
                .read_audit_chain(&c.chain, got.len() as u64, 4)
                .await
                .unwrap();
            let n = page.len();
            got.extend(page);
            if n < 4 {
                break;
            }
        }
        assert_eq!(got, want, "chain {}", c.chain);
        let head = c.head().unwrap();
        assert!(verify_chain(&c.chain, &got, Some(&head)).is_empty());
    }
    // Every chain's head is listed, the latest one, in pages.
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list_audit_chains(after.as_deref(), 2).await.unwrap();
        after = page.last().map(|h| h.chain.clone());
        let n = page.len();
        listed.extend(page);
        if n < 2 {
            break;
        }
    }
    for c in &chains {
        let head = c.head().unwrap();
        assert_eq!(listed.iter().filter(|h| h.chain == c.chain).count(), 1);
        assert!(listed.contains(&head), "{} not at its latest head", c.chain);
    }
    assert!(s
        .read_audit_chain("nobody/none", 0, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn audit_queries_by_user_challenge_and_time(s: Store) {
    let (t, other, all, _) = audit_trail(&s).await;
    let mine = |f: &dyn Fn(&AuditRecord) -> bool| -> Vec<AuditRecord> {
        let mut v: Vec<_> = all
            .iter()
            .filter(|r| r.entry.tenant_id == t.as_str() && f(r))
            .cloned()
            .collect();
        v.sort_by_key(AuditCursor::of);
        v
    };
    let every = AuditQuery {
        to: i64::MAX,
        ..AuditQuery::default()
    };
    // Paged: each page continues after the last record of the one before.
    let mut got = Vec::new();
    let mut q = every.clone();
    loop {
        let page = s.query_audit(&t, &q, 3).await.unwrap();
        q.after = page.last().map(AuditCursor::of);
        let n = page.len();
        got.extend(page);
        if n < 3 {
            break;
        }
    }
    assert_eq!(got, mine(&|_| true));
    assert_eq!(got.len(), 20, "the other tenant's records are not listed");

    let by_user = AuditQuery {
        user_id: Some("user1".into()),
        ..every.clone()
    };
    assert_eq!(
        s.query_audit(&t, &by_user, 100).await.unwrap(),
        mine(&|r| r.entry.user_id == "user1")
    );
    let by_challenge = AuditQuery {
        challenge_id: Some("ch3".into()),
        ..every.clone()
    };
    assert_eq!(
        s.query_audit(&t, &by_challenge, 100).await.unwrap(),
        mine(&|r| r.entry.challenge_id == "ch3")
    );
    let both = AuditQuery {
        challenge_id: Some("ch3".into()),
        user_id: Some("user1".into()),
        ..every.clone()
    };
    assert_eq!(
        s.query_audit(&t, &both, 100).await.unwrap(),
        mine(&|r| r.entry.challenge_id == "ch3" && r.entry.user_id == "user1")
    );
    let window = AuditQuery {
        from: 10_050,
        to: 10_150,
        ..every.clone()
    };
    let in_window = s.query_audit(&t, &window, 100).await.unwrap();
    assert_eq!(in_window, mine(&|r| (10_050..10_150).contains(&r.entry.at)));
    assert!(!in_window.is_empty());
    // Another tenant's challenge ids find nothing of this tenant's.
    let theirs = s.query_audit(&other, &by_user, 100).await.unwrap();
    assert!(theirs.iter().all(|r| r.entry.tenant_id == other.as_str()));
    assert_eq!(theirs.len(), 5);
}

pub async fn lists_span_pages(s: Store) {
    let t = fresh_tenant();
    let mut enrolled = Vec::new();
    for i in 0..23 {
        let d = device(&t, "many", 1_000 + i);
        let token = sesame_core::ids::random_bytes::<32>();
        s.create_enrollment(&EnrollmentTicket {
            token_sha256: token,
            tenant_id: t.clone(),
            user_id: "many".into(),
            created_at: now_ms(),
            expires_at: now_ms() + 60_000,
        })
        .await
        .unwrap();
        s.complete_enrollment(&token, &d, 100).await.unwrap();
        enrolled.push(d);
    }
    assert_eq!(s.list_devices(&t, "many").await.unwrap(), enrolled);

    for i in 0..19 {
        let report = UsageReport {
            instance: format!("instance-{i:02}"),
            demand_per_s: i as f64,
            day: 20_000,
            day_used: i,
            reported_at: now_ms(),
        };
        s.put_usage(&t, &report).await.unwrap();
    }
    let mut usage = s.list_usage(&t).await.unwrap();
    usage.sort_by(|a, b| a.instance.cmp(&b.instance));
    assert_eq!(usage.len(), 19);
    assert_eq!(usage[18].day_used, 18);

    let phone = DeviceId::generate();
    let mut created = Vec::new();
    for i in 0..17 {
        let mut c = challenge(&t, "many", vec![phone.clone()], 60_000 + i);
        c.created_at += i;
        s.create_challenge(&c).await.unwrap();
        created.push(c);
    }
    let pending = s.pending_challenges(&phone, now_ms()).await.unwrap();
    assert_eq!(pending, created, "every pending challenge, oldest first");
}

/// A challenge is pending until its expiry and never after, whatever the
/// backend does with expired rows; an expired ticket cannot be used.
pub async fn expiry_is_exact(s: Store) {
    let t = fresh_tenant();
    let phone = DeviceId::generate();
    let c = challenge(&t, "alice", vec![phone.clone()], 1_500);
    s.create_challenge(&c).await.unwrap();
    assert_eq!(
        s.pending_challenges(&phone, c.expires_at - 1)
            .await
            .unwrap(),
        vec![c.clone()]
    );
    assert!(s
        .pending_challenges(&phone, c.expires_at)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.resolve_challenge(&c.id, &approve(&phone), c.expires_at)
            .await,
        Err(StorageError::Transition(TransitionError::Expired))
    );
    // Still readable (its verdict, "expired", is kept for the retention).
    assert_eq!(s.get_challenge(&c.id).await.unwrap(), Some(c));
}

fn dead_delivery(t: &TenantId, id: &str) -> sesame_core::webhook::DeadDelivery {
    sesame_core::webhook::DeadDelivery {
        tenant_id: t.clone(),
        delivery_id: id.to_owned(),
        challenge_id: ChallengeId::generate().to_string(),
        attempts: 8,
        last_error: "receiver answered 503".into(),
        failed_at: now_ms(),
    }
}

/// One endpoint per tenant, replaced whole, deleted once; dead deliveries
/// listed per tenant in delivery-id order across pages, deleted once.
pub async fn webhooks_and_dead_deliveries(s: Store) {
    use sesame_core::webhook::{StoredSecret, WebhookEndpoint};
    let (t, other) = (fresh_tenant(), fresh_tenant());
    assert_eq!(s.get_webhook(&t).await.unwrap(), None);
    let mut e = WebhookEndpoint {
        tenant_id: t.clone(),
        url: "https://idp.example.com/hook".into(),
        secrets: vec![StoredSecret {
            secret: sesame_core::webhook::Secret::generate().encode(),
            created_at: 1,
            retire_at: None,
        }],
        created_at: 1,
        updated_at: 1,
    };
    assert!(s.put_webhook(&e, None).await.unwrap());
    // Set once: a second "create" loses, and so does a stale version.
    assert!(!s.put_webhook(&e, None).await.unwrap());
    let first = e.clone();
    e.updated_at = 2;
    assert!(!s.put_webhook(&e, Some(7)).await.unwrap());
    assert_eq!(s.get_webhook(&t).await.unwrap(), Some(first));
    e.url = "https://idp.example.com/hook2".into();
    e.secrets.push(StoredSecret {
        secret: sesame_core::webhook::Secret::generate().encode(),
        created_at: 2,
        retire_at: Some(now_ms() + 60_000),
    });
    assert!(s.put_webhook(&e, Some(1)).await.unwrap());
    assert_eq!(s.get_webhook(&t).await.unwrap(), Some(e.clone()));
    assert_eq!(s.get_webhook(&other).await.unwrap(), None);
    assert!(!s.delete_webhook(&other).await.unwrap());
    assert!(s.delete_webhook(&t).await.unwrap());
    assert!(!s.delete_webhook(&t).await.unwrap());
    assert_eq!(s.get_webhook(&t).await.unwrap(), None);

    let mut ids: Vec<String> = (0..7).map(|i| format!("vd_ch_{i:02}")).collect();
    for id in ids.iter().rev() {
        s.put_dead_delivery(&dead_delivery(&t, id)).await.unwrap();
    }
    s.put_dead_delivery(&dead_delivery(&other, "vd_ch_03"))
        .await
        .unwrap();
    // Replacing keeps one row per delivery id.
    let mut again = dead_delivery(&t, "vd_ch_03");
    again.attempts = 9;
    s.put_dead_delivery(&again).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .list_dead_deliveries(&t, after.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.len() <= 3);
        assert!(page.iter().all(|d| d.tenant_id == t));
        if page.is_empty() {
            break;
        }
        after = page.last().map(|d| d.delivery_id.clone());
        seen.extend(page);
    }
    assert_eq!(
        seen.iter()
            .map(|d| d.delivery_id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(seen[3].attempts, 9);
    assert!(s.delete_dead_delivery(&t, "vd_ch_03").await.unwrap());
    assert!(!s.delete_dead_delivery(&t, "vd_ch_03").await.unwrap());
    ids.remove(3);
    let left: Vec<String> = s
        .list_dead_deliveries(&t, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.delivery_id)
        .collect();
    assert_eq!(left, ids);
    assert_eq!(
        s.list_dead_deliveries(&other, None, 100)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Expands to one `#[tokio::test]` per conformance case for the backend
/// built by `$make` (an async expression yielding `Arc<dyn Storage>`).
///
/// `storage_suite!(@attrs [#[ignore = "why"]] make())` puts the attributes
/// on every test (the ScyllaDB suite is ignored, and says so, unless a
/// cluster is named).
#[macro_export]
macro_rules! storage_suite {
    ($make:expr) => {
        $crate::storage_suite!(@attrs [] $make);
    };
    (@attrs $attrs:tt $make:expr) => {
        $crate::storage_suite!(@cases $attrs $make;
            tenants_and_keys,
            create_tenant_is_insert_if_absent,
            tenants_listed_in_pages,
            api_keys_listed_per_tenant,
            enrollment_token_is_single_use,
            device_limit_per_user,
            enrollment_token_race_has_one_winner,
            revoked_devices_free_their_slot,
            devices_listed_per_user_and_tenant,
            revoke_is_tenant_scoped_and_idempotent,
            dead_token_only_disables_that_token,
            challenge_roundtrip_and_pending,
            expired_challenge_cannot_resolve,
            idempotency_key_returns_first_challenge,
            answer_race_has_one_winner,
            user_guard_compare_and_set,
            user_guard_race_has_one_winner,
            guarded_create_writes_both_or_neither,
            guarded_create_race_has_one_winner,
            usage_reports_overwrite_per_instance,
            purge_removes_only_expired,
            lists_span_pages,
            expiry_is_exact,
            audit_chains_read_back_in_order,
            audit_queries_by_user_challenge_and_time,
            webhooks_and_dead_deliveries
        );
    };
    (@cases $attrs:tt $make:expr; $($case:ident),*) => {
        $( $crate::storage_suite!(@one $attrs $make; $case); )*
    };
    (@one [$(#[$attr:meta])*] $make:expr; $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $case() {
            let store = $make;
            $crate::testsuite::$case(store).await;
        }
    };
}
