//! Per-tenant quotas: approximate and cheap.
//!
//! Each instance enforces a tenant's rate with a local token bucket whose
//! rate is the tenant's quota times this instance's share of the tenant's
//! recent demand (Doorman-style proportional share). Shares come from usage
//! reports that every instance writes and reads through the storage trait in
//! the background ([`TenantLimiter::sync`], about once a second), so the hot
//! path ([`TenantLimiter::check`]) never touches storage. The daily quota is
//! checked against this instance's count plus the other instances' counts
//! from their last reports. Idle tenants are evicted (unless they used part
//! of a daily quota today), and the number of tenants tracked is bounded: when
//! every tracked tenant is busy, a new tenant goes unlimited rather than
//! making the others forget their counts.
//!
//! Known limits: a restarted instance with a random `instance_id` starts its
//! own daily count from zero (its previous reports still count as another
//! instance's until the day ends); and sync costs one durable write and one
//! read per active tenant per second, so thousands of active tenants need the
//! ScyllaDB backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sesame_core::model::UsageReport;
use sesame_core::time::UnixMillis;
use sesame_core::TenantId;
use sesame_storage::{Storage, StorageError};

use crate::bucket::Bucket;

const DAY_MS: i64 = 86_400_000;
/// How often [`TenantLimiter::sync`] is expected to run.
pub const SYNC_INTERVAL_MS: i64 = 1_000;
/// Reports older than this do not count toward shares.
const REPORT_FRESH_MS: i64 = 5_000;
/// A tenant with no request for this long is forgotten locally.
const IDLE_EVICT_MS: i64 = 300_000;
/// Tenants tracked at most; past it, the idlest are evicted first.
const MAX_TENANTS: usize = 100_000;

/// A tenant's quota. 0 means unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantQuota {
    /// Challenges per second across all instances.
    pub per_second: f64,
    /// Challenges per UTC day across all instances.
    pub per_day: u64,
}

impl Default for TenantQuota {
    fn default() -> Self {
        TenantQuota {
            per_second: 0.0,
            per_day: 0,
        }
    }
}

impl TenantQuota {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.per_second >= 0.0 && self.per_second.is_finite()) {
            return Err("per_second must be a finite number >= 0".into());
        }
        Ok(())
    }
}

/// Why a challenge was refused by the tenant quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    PerSecond { retry_after_ms: i64 },
    PerDay { retry_after_ms: i64 },
}

impl QuotaRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            QuotaRefusal::PerSecond { .. } => "TENANT_RATE_QUOTA",
            QuotaRefusal::PerDay { .. } => "TENANT_DAILY_QUOTA",
        }
    }

    pub fn retry_after_ms(&self) -> i64 {
        match self {
            QuotaRefusal::PerSecond { retry_after_ms }
            | QuotaRefusal::PerDay { retry_after_ms } => *retry_after_ms,
        }
    }
}

struct TenantState {
    quota: TenantQuota,
    bucket: Bucket,
    share: f64,
    /// Requests since the last sync, and the smoothed rate derived from them.
    demand_since_sync: u64,
    demand_per_s: f64,
    day: i64,
    day_used_local: u64,
    day_used_others: u64,
    last_request_ms: i64,
    last_sync_ms: i64,
}

fn bucket_size(rate: f64) -> f64 {
    // One second's worth, and at least one request, so a small share still
    // lets single requests through.
    rate.max(1.0)
}

pub struct TenantLimiter {
    instance: String,
    storage: Arc<dyn Storage>,
    default_quota: TenantQuota,
    tenant_quotas: HashMap<TenantId, TenantQuota>,
    tenants: DashMap<TenantId, Mutex<TenantState>>,
}

impl TenantLimiter {
    pub fn new(
        instance: impl Into<String>,
        storage: Arc<dyn Storage>,
        default_quota: TenantQuota,
        tenant_quotas: HashMap<TenantId, TenantQuota>,
    ) -> Self {
        TenantLimiter {
            instance: instance.into(),
            storage,
            default_quota,
            tenant_quotas,
            tenants: DashMap::new(),
        }
    }

    pub fn quota(&self, tenant: &TenantId) -> &TenantQuota {
        self.tenant_quotas
            .get(tenant)
            .unwrap_or(&self.default_quota)
    }

    /// The hot path: may this tenant create one more challenge now? No I/O.
    pub fn check(&self, tenant: &TenantId, now: UnixMillis) -> Result<(), QuotaRefusal> {
        let quota = self.quota(tenant);
        if quota.per_second <= 0.0 && quota.per_day == 0 {
            return Ok(());
        }
        if !self.tenants.contains_key(tenant) {
            if self.tenants.len() >= MAX_TENANTS {
                self.evict_idle(now, IDLE_EVICT_MS / 10);
                if self.tenants.len() >= MAX_TENANTS {
                    // Every tracked tenant is busy: do not forget their daily
                    // counts to make room; this tenant goes unlimited for now.
                    return Ok(());
                }
            }
            // Alone until the first sync says otherwise: a new instance may
            // briefly admit up to the whole rate.
            self.tenants.entry(tenant.clone()).or_insert_with(|| {
                Mutex::new(TenantState {
                    quota: quota.clone(),
                    bucket: Bucket::new(quota.per_second, bucket_size(quota.per_second), now),
                    share: 1.0,
                    demand_since_sync: 0,
                    demand_per_s: 0.0,
                    day: now.div_euclid(DAY_MS),
                    day_used_local: 0,
                    day_used_others: 0,
                    last_request_ms: now,
                    last_sync_ms: now,
                })
            });
        }
        let Some(entry) = self.tenants.get(tenant) else {
            return Ok(());
        };
        let Ok(mut st) = entry.lock() else {
            return Ok(());
        };
        st.demand_since_sync += 1;
        st.last_request_ms = now;
        let day = now.div_euclid(DAY_MS);
        if day != st.day {
            st.day = day;
            st.day_used_local = 0;
            st.day_used_others = 0;
        }
        if st.quota.per_day > 0 && st.day_used_local + st.day_used_others >= st.quota.per_day {
            return Err(QuotaRefusal::PerDay {
                retry_after_ms: (day + 1) * DAY_MS - now,
            });
        }
        if st.quota.per_second > 0.0 {
            st.bucket
                .take(1.0, now)
                .map_err(|wait_ms| QuotaRefusal::PerSecond {
                    // A tiny share gives a tiny rate, but shares move every sync.
                    retry_after_ms: wait_ms.clamp(1, SYNC_INTERVAL_MS),
                })?;
        }
        st.day_used_local += 1;
        Ok(())
    }

    /// Gives back one admission that another limit then refused (the
    /// push-bombing guard), so refused requests do not use the tenant's quota.
    pub fn refund(&self, tenant: &TenantId, now: UnixMillis) {
        if let Some(entry) = self.tenants.get(tenant) {
            if let Ok(mut st) = entry.lock() {
                st.day_used_local = st.day_used_local.saturating_sub(1);
                st.bucket.give_back(1.0, now);
            }
        }
    }

    /// Reports this instance's usage for every active tenant, reads the
    /// others', and resizes the local buckets. Call about once a second.
    pub async fn sync(&self, now: UnixMillis) -> Result<(), StorageError> {
        self.evict_idle(now, IDLE_EVICT_MS);
        let tenants: Vec<TenantId> = self.tenants.iter().map(|e| e.key().clone()).collect();
        for tenant in tenants {
            let report = {
                let Some(entry) = self.tenants.get(&tenant) else {
                    continue;
                };
                let Ok(mut st) = entry.lock() else { continue };
                let dt = ((now - st.last_sync_ms).max(1)) as f64 / 1000.0;
                let rate = st.demand_since_sync as f64 / dt;
                // Smooth, but follow a surge within a couple of syncs.
                st.demand_per_s = 0.5 * st.demand_per_s + 0.5 * rate;
                st.demand_since_sync = 0;
                st.last_sync_ms = now;
                UsageReport {
                    instance: self.instance.clone(),
                    demand_per_s: st.demand_per_s,
                    day: st.day,
                    day_used: st.day_used_local,
                    reported_at: now,
                }
            };
            self.storage.put_usage(&tenant, &report).await?;
            let reports = self.storage.list_usage(&tenant).await?;
            let fresh: Vec<&UsageReport> = reports
                .iter()
                .filter(|r| r.reported_at >= now - REPORT_FRESH_MS)
                .collect();
            let total: f64 = fresh.iter().map(|r| r.demand_per_s).sum();
            let share = if total > 0.0 {
                report.demand_per_s / total
            } else {
                1.0 / fresh.len().max(1) as f64
            };
            let others_today: u64 = reports
                .iter()
                .filter(|r| r.instance != self.instance && r.day == report.day)
                .map(|r| r.day_used)
                .sum();
            if let Some(entry) = self.tenants.get(&tenant) {
                if let Ok(mut st) = entry.lock() {
                    st.share = share;
                    st.day_used_others = others_today;
                    let rate = st.quota.per_second * share;
                    st.bucket.resize(rate, bucket_size(rate), now);
                }
            }
        }
        Ok(())
    }

    /// This instance's current share of a tenant's quota (1.0 when alone).
    pub fn share(&self, tenant: &TenantId) -> Option<f64> {
        let e = self.tenants.get(tenant)?;
        let st = e.lock().ok()?;
        Some(st.share)
    }

    /// Tenants tracked now.
    pub fn tracked(&self) -> usize {
        self.tenants.len()
    }

    /// Forgets tenants idle for `idle_ms`, except those that used part of
    /// a daily quota today: their count must survive until the day ends.
    fn evict_idle(&self, now: UnixMillis, idle_ms: i64) {
        let today = now.div_euclid(DAY_MS);
        self.tenants.retain(|_, st| {
            st.get_mut()
                .map(|s| {
                    now - s.last_request_ms < idle_ms
                        || (s.quota.per_day > 0 && s.day == today && s.day_used_local > 0)
                })
                .unwrap_or(false)
        });
    }
}
