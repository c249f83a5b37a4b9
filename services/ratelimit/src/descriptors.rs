//! Descriptor-based limits for tenants' own keys (the `ratelimit` role):
//! a request names a domain and descriptors (ordered key/value pairs); a
//! configured limit applies to a descriptor whose keys equal its `keys`.
//! Each (tenant, domain, descriptor) gets a token bucket of
//! `requests_per_unit` refilled over the unit, so bursts up to the limit pass
//! and the long-run rate is the limit. Counters are per instance: run one
//! replica of the role per key range, or accept N replicas admitting up to N
//! times the limit (documented in ARCHITECTURE.md). Concurrent requests for
//! the same key check and then take under two separate locks, so a burst of
//! simultaneous requests can pass a few hits over the limit.

use std::sync::Mutex;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sesame_core::time::UnixMillis;
use sesame_core::TenantId;

use crate::bucket::Bucket;

/// Counters kept at most; past it, full (idle) ones are dropped first.
pub const MAX_COUNTERS: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl LimitUnit {
    pub fn seconds(self) -> u64 {
        match self {
            LimitUnit::Second => 1,
            LimitUnit::Minute => 60,
            LimitUnit::Hour => 3600,
            LimitUnit::Day => 86_400,
        }
    }
}

/// One configured limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorLimit {
    pub domain: String,
    /// The descriptor's keys, in order, e.g. `["ip"]` or `["account", "action"]`.
    pub keys: Vec<String>,
    pub requests_per_unit: u32,
    pub unit: LimitUnit,
}

impl DescriptorLimit {
    pub fn validate(&self) -> Result<(), String> {
        if self.domain.is_empty() || self.keys.is_empty() {
            return Err("domain and keys must not be empty".into());
        }
        if self.requests_per_unit == 0 {
            return Err("requests_per_unit must be at least 1".into());
        }
        Ok(())
    }

    fn rate_per_s(&self) -> f64 {
        f64::from(self.requests_per_unit) / self.unit.seconds() as f64
    }
}

/// The answer for one descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct DescriptorDecision {
    pub over_limit: bool,
    /// The limit that applied; `None`: no limit configured for it.
    pub limit: Option<DescriptorLimit>,
    pub remaining: u32,
    pub reset_ms: i64,
}

pub struct DescriptorLimiter {
    limits: Vec<DescriptorLimit>,
    counters: DashMap<Vec<u8>, Mutex<Bucket>>,
}

fn counter_key(tenant: &TenantId, domain: &str, entries: &[(String, String)]) -> Vec<u8> {
    // Length-prefixed, so ("a","bc") and ("ab","c") never share a counter.
    let mut k = Vec::new();
    for part in std::iter::once(tenant.as_str())
        .chain(std::iter::once(domain))
        .chain(entries.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]))
    {
        k.extend_from_slice(&(part.len() as u32).to_be_bytes());
        k.extend_from_slice(part.as_bytes());
    }
    k
}

impl DescriptorLimiter {
    pub fn new(limits: Vec<DescriptorLimit>) -> Self {
        DescriptorLimiter {
            limits,
            counters: DashMap::new(),
        }
    }

    fn limit_for(&self, domain: &str, entries: &[(String, String)]) -> Option<&DescriptorLimit> {
        self.limits.iter().find(|l| {
            l.domain == domain
                && l.keys.len() == entries.len()
                && l.keys.iter().zip(entries).all(|(k, (ek, _))| k == ek)
        })
    }

    /// Whether a new counter may be created: at the cap, full (idle)
    /// counters are dropped first; live counters are never dropped to make
    /// room, so one tenant cannot reset another's limits by flooding keys.
    fn make_room(&self, now: UnixMillis) -> bool {
        if self.counters.len() < MAX_COUNTERS {
            return true;
        }
        self.counters
            .retain(|_, b| b.get_mut().map(|b| !b.is_full(now)).unwrap_or(false));
        self.counters.len() < MAX_COUNTERS
    }

    /// Decides on every descriptor. If any is over its limit, none consume.
    pub fn should_rate_limit(
        &self,
        tenant: &TenantId,
        domain: &str,
        descriptors: &[Vec<(String, String)>],
        hits: u32,
        now: UnixMillis,
    ) -> Vec<DescriptorDecision> {
        let hits = f64::from(hits.max(1));
        let mut plan = Vec::with_capacity(descriptors.len());
        for entries in descriptors {
            let limit = self.limit_for(domain, entries).cloned();
            let key = limit.as_ref().map(|_| counter_key(tenant, domain, entries));
            if let (Some(l), Some(k)) = (&limit, &key) {
                if !self.counters.contains_key(k) {
                    if !self.make_room(now) {
                        // No room without forgetting live counters: this key
                        // goes uncounted (fail open, as Envoy's service does).
                        plan.push((limit, None));
                        continue;
                    }
                    self.counters.entry(k.clone()).or_insert_with(|| {
                        let burst = f64::from(l.requests_per_unit);
                        Mutex::new(Bucket::new(l.rate_per_s(), burst, now))
                    });
                }
            }
            plan.push((limit, key));
        }
        // First pass: would every descriptor fit?
        let fits: Vec<Result<(), i64>> = plan
            .iter()
            .map(
                |(_, key)| match key.as_ref().and_then(|k| self.counters.get(k)) {
                    Some(b) => b
                        .lock()
                        .map(|mut b| b.would_take(hits, now))
                        .unwrap_or(Ok(())),
                    None => Ok(()),
                },
            )
            .collect();
        let all_fit = fits.iter().all(Result::is_ok);
        plan.into_iter()
            .zip(fits)
            .map(|((limit, key), fit)| {
                let Some(bucket) = key.as_ref().and_then(|k| self.counters.get(k)) else {
                    return DescriptorDecision {
                        over_limit: false,
                        limit,
                        remaining: u32::MAX,
                        reset_ms: 0,
                    };
                };
                let Ok(mut b) = bucket.lock() else {
                    return DescriptorDecision {
                        over_limit: false,
                        limit,
                        remaining: 0,
                        reset_ms: 0,
                    };
                };
                match fit {
                    Err(wait_ms) => DescriptorDecision {
                        over_limit: true,
                        limit,
                        remaining: b.available(now).floor() as u32,
                        reset_ms: wait_ms,
                    },
                    Ok(()) => {
                        if all_fit {
                            let _ = b.take(hits, now);
                        }
                        DescriptorDecision {
                            over_limit: false,
                            limit,
                            remaining: b.available(now).floor() as u32,
                            reset_ms: b.time_to_full_ms(now),
                        }
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> DescriptorLimiter {
        DescriptorLimiter::new(vec![DescriptorLimit {
            domain: "login".into(),
            keys: vec!["ip".into()],
            requests_per_unit: 3,
            unit: LimitUnit::Minute,
        }])
    }

    fn ip(v: &str) -> Vec<(String, String)> {
        vec![("ip".into(), v.into())]
    }

    #[test]
    fn limit_per_descriptor_value_and_tenant() {
        let l = limiter();
        let t = TenantId::parse("bank").unwrap();
        for i in 0..3 {
            let d = &l.should_rate_limit(&t, "login", &[ip("1.2.3.4")], 1, 0)[0];
            assert!(!d.over_limit, "{i}");
            assert_eq!(d.remaining, 2 - i);
        }
        let d = &l.should_rate_limit(&t, "login", &[ip("1.2.3.4")], 1, 0)[0];
        assert!(d.over_limit);
        assert_eq!(d.reset_ms, 20_000, "one token every 20 s");
        assert!(!l.should_rate_limit(&t, "login", &[ip("5.6.7.8")], 1, 0)[0].over_limit);
        let other = TenantId::parse("other").unwrap();
        assert!(!l.should_rate_limit(&other, "login", &[ip("1.2.3.4")], 1, 0)[0].over_limit);
        assert!(!l.should_rate_limit(&t, "login", &[ip("1.2.3.4")], 1, 20_000)[0].over_limit);
    }

    /// Accuracy: offered 6 per minute against a limit of 10 per minute for an
    /// hour, then 60 per minute for an hour: the second hour admits the limit
    /// (600) plus at most the burst left from the first.
    #[test]
    fn long_run_rate_equals_the_limit() {
        let l = DescriptorLimiter::new(vec![DescriptorLimit {
            domain: "d".into(),
            keys: vec!["k".into()],
            requests_per_unit: 10,
            unit: LimitUnit::Minute,
        }]);
        let t = TenantId::parse("bank").unwrap();
        let key = vec![("k".to_string(), "v".to_string())];
        let mut admitted_first = 0;
        for i in 0..360 {
            if !l.should_rate_limit(&t, "d", std::slice::from_ref(&key), 1, i * 10_000)[0]
                .over_limit
            {
                admitted_first += 1;
            }
        }
        assert_eq!(admitted_first, 360, "under the limit everything passes");
        let mut admitted = 0;
        for i in 0..3600 {
            if !l.should_rate_limit(&t, "d", std::slice::from_ref(&key), 1, 3_600_000 + i * 1000)[0]
                .over_limit
            {
                admitted += 1;
            }
        }
        assert!((600..=611).contains(&admitted), "{admitted}");
    }

    #[test]
    fn unmatched_descriptors_are_unlimited_and_over_limit_consumes_nothing() {
        let l = limiter();
        let t = TenantId::parse("bank").unwrap();
        let other_keys = vec![("account".to_string(), "a".to_string())];
        let d = l.should_rate_limit(&t, "login", &[other_keys], 100, 0);
        assert!(!d[0].over_limit && d[0].limit.is_none());
        // 2 hits fit, then a request with 2 descriptors where one is over: nothing consumed.
        l.should_rate_limit(&t, "login", &[ip("9.9.9.9")], 2, 0);
        let both = l.should_rate_limit(&t, "login", &[ip("9.9.9.9"), ip("8.8.8.8")], 2, 0);
        assert!(both[0].over_limit && !both[1].over_limit);
        assert_eq!(
            both[1].remaining, 3,
            "the fitting descriptor did not consume"
        );
    }
}
