//! `cargo bench -p sesame-ratelimit --bench limits`
//!
//! The cost of each limit decision, with a bare `governor` check (one atomic
//! compare-and-swap) measured in the same run as the floor.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use sesame_core::model::UserGuardState;
use sesame_core::{ChallengeId, TenantId};
use sesame_ratelimit::rules::{self, GuardPolicy};
use sesame_ratelimit::{TenantLimiter, TenantQuota, UserGuard};
use sesame_storage::{EmbeddedConfig, EmbeddedStorage, MemStorage, Storage};

fn limits(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits");

    // Floor: governor's GCRA on one atomic, effectively unlimited so every check passes.
    let gov = governor::RateLimiter::direct(governor::Quota::per_second(
        NonZeroU32::new(u32::MAX).expect("non-zero"),
    ));
    g.bench_function("governor_direct_check (floor)", |b| {
        b.iter(|| gov.check().is_ok())
    });

    // Local tenant-quota decision (token bucket behind a DashMap + mutex).
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let quota = TenantQuota {
        per_second: 1e12,
        per_day: 0,
    };
    let limiter = TenantLimiter::new("bench", storage.clone(), quota, HashMap::new());
    let tenant = TenantId::parse("bank").expect("tenant");
    let mut now = 1_000_000_000i64;
    g.bench_function("tenant_quota_check (local)", |b| {
        b.iter(|| {
            now += 1;
            limiter.check(&tenant, now).is_ok()
        })
    });

    // The guard's pure rule over a realistic state (4 prompts, 2 denials).
    let policy = GuardPolicy::default();
    let state = UserGuardState {
        pushes: vec![1_000, 60_000, 120_000, 180_000],
        denials: vec![100_000, 200_000],
        ..Default::default()
    };
    g.bench_function("guard_rules_decide (pure)", |b| {
        b.iter(|| rules::decide(std::hint::black_box(&state), 240_000, &policy, false).is_ok())
    });

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let lenient = GuardPolicy {
        one_pending: false,
        max_prompts: u32::MAX,
        ..GuardPolicy::default()
    };
    // One full guard check: read + decide + compare-and-set, per storage backend.
    let mem_guard = UserGuard::new(Arc::new(MemStorage::new()), lenient.clone(), HashMap::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded: Arc<dyn Storage> = Arc::new(
        EmbeddedStorage::open(EmbeddedConfig::new(EmbeddedStorage::path_in(dir.path())))
            .expect("open"),
    );
    let embedded_guard = UserGuard::new(embedded, lenient, HashMap::new());
    let tenant_ref = &tenant;
    for (name, guard) in [
        ("guard_admit (mem storage)", &mem_guard),
        ("guard_admit (embedded, fsync)", &embedded_guard),
    ] {
        let mut i = 0i64;
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i += 1;
                let user = format!("user-{}", i % 1000);
                let now = 1_000_000_000 + i;
                async move {
                    guard
                        .admit(
                            tenant_ref,
                            &user,
                            &ChallengeId::generate(),
                            now + 60_000,
                            now,
                            true,
                        )
                        .await
                        .expect("admitted")
                }
            })
        });
    }

    // A refusal served from the local cache (a muted user): no storage call.
    let muted = UserGuard::new(
        Arc::new(MemStorage::new()),
        GuardPolicy::default(),
        HashMap::new(),
    );
    rt.block_on(muted.record_denial(&tenant, "victim", 0, true))
        .expect("denial");
    g.bench_function("guard_refusal_from_cache", |b| {
        b.to_async(&rt).iter(|| async {
            muted
                .admit(
                    &tenant,
                    "victim",
                    &ChallengeId::generate(),
                    70_000,
                    60_000,
                    false,
                )
                .await
                .is_err()
        })
    });
    g.finish();
}

criterion_group!(benches, limits);
criterion_main!(benches);
