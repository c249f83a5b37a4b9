//! What a test or an operator controls in a simulator, and what it counts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use sesame_core::time::{now_ms, UnixMillis};
use sesame_push::SimulatorProvider;

/// How the simulated provider treats one device token (default: good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    Good,
    /// APNs 410 `Unregistered` / FCM 404 `UNREGISTERED`.
    Unregistered,
    /// APNs 410 `ExpiredToken`.
    ExpiredToken,
    /// APNs 400 `BadDeviceToken` / FCM 400 `INVALID_ARGUMENT`.
    BadToken,
    /// APNs 400 `DeviceTokenNotForTopic`.
    NotForTopic,
    /// FCM 403 `SENDER_ID_MISMATCH`.
    SenderIdMismatch,
    /// FCM 401 `THIRD_PARTY_AUTH_ERROR`.
    ThirdPartyAuthError,
    /// APNs 429 `TooManyRequests` / FCM 429 `QUOTA_EXCEEDED`, with `Retry-After: 1`.
    RateLimited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally, this much later.
    Latency(Duration),
    /// Answer with this status (429, 500 or 503) and the provider's reason,
    /// with `Retry-After` when given.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Drop the TCP connection under the request.
    Reset,
    /// Answer normally, then send GOAWAY.
    GoAway,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub fault: Fault,
    /// Only requests to this device token (any if `None`).
    pub token: Option<String>,
    /// Applies to this many requests, then is gone (`None`: until cleared).
    pub times: Option<u32>,
}

/// One request as received (the last [`RECENT`] are kept).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
    pub reason: String,
}

impl Recorded {
    pub(crate) fn of(req: &http::Request<bytes::Bytes>, status: u16, reason: &str) -> Recorded {
        Recorded {
            path: req.uri().path().to_owned(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: req.body().to_vec(),
            status,
            reason: reason.to_owned(),
        }
    }
}

/// What the faults for one request add up to: any latency is already
/// slept; the rest is for the handler to act on.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Drop the connection under the request.
    pub reset: bool,
    pub goaway: bool,
    /// Answer with this status and `Retry-After` instead.
    pub status: Option<(u16, Option<u64>)>,
}

impl Applied {
    /// What happens to the connection after this request.
    pub fn action(&self) -> crate::server::ConnAction {
        use crate::server::ConnAction;
        if self.reset {
            ConnAction::Reset
        } else if self.goaway {
            ConnAction::GoAway
        } else {
            ConnAction::Keep
        }
    }
}

pub const RECENT: usize = 256;

#[derive(Default)]
pub struct SimControl {
    devices: DashMap<String, DeviceState>,
    faults: Mutex<Vec<FaultRule>>,
    counts: DashMap<String, u64>,
    received: AtomicU64,
    clock_offset_ms: AtomicI64,
    recent: Mutex<VecDeque<Recorded>>,
    /// Where accepted pushes go; simulated phones read them here.
    pub inbox: Arc<SimulatorProvider>,
}

impl SimControl {
    pub fn new(inbox: Arc<SimulatorProvider>) -> Arc<Self> {
        Arc::new(SimControl {
            inbox,
            ..Default::default()
        })
    }

    pub fn set_device(&self, token: &str, state: DeviceState) {
        if state == DeviceState::Good {
            self.devices.remove(token);
        } else {
            self.devices.insert(token.to_owned(), state);
        }
    }

    pub fn device(&self, token: &str) -> DeviceState {
        self.devices
            .get(token)
            .map(|s| *s)
            .unwrap_or(DeviceState::Good)
    }

    pub fn add_fault(&self, rule: FaultRule) {
        if let Ok(mut f) = self.faults.lock() {
            f.push(rule);
        }
    }

    pub fn clear_faults(&self) {
        if let Ok(mut f) = self.faults.lock() {
            f.clear();
        }
    }

    /// The faults that apply to this request (each rule's count goes down).
    pub(crate) fn take_faults(&self, token: &str) -> Vec<Fault> {
        let Ok(mut rules) = self.faults.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for r in rules.iter_mut() {
            if r.token.as_deref().is_some_and(|t| t != token) {
                continue;
            }
            if let Some(n) = r.times.as_mut() {
                if *n == 0 {
                    continue;
                }
                *n -= 1;
            }
            out.push(r.fault);
        }
        rules.retain(|r| r.times != Some(0));
        out
    }

    /// Sleeps the injected latency of this request's faults and returns the rest.
    pub(crate) async fn apply_faults(&self, token: &str) -> Applied {
        let mut applied = Applied::default();
        for f in self.take_faults(token) {
            match f {
                Fault::Latency(d) => tokio::time::sleep(d).await,
                Fault::Status {
                    status,
                    retry_after,
                } => applied.status = Some((status, retry_after)),
                Fault::Reset => applied.reset = true,
                Fault::GoAway => applied.goaway = true,
            }
        }
        applied
    }

    /// Moves the simulator's clock (to test token ages without waiting).
    pub fn advance_clock(&self, by: Duration) {
        self.clock_offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }

    pub fn now(&self) -> UnixMillis {
        now_ms() + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, rec: Recorded) {
        self.received.fetch_add(1, Ordering::Relaxed);
        *self.counts.entry(rec.reason.clone()).or_insert(0) += 1;
        if let Ok(mut r) = self.recent.lock() {
            if r.len() >= RECENT {
                r.pop_front();
            }
            r.push_back(rec);
        }
    }

    pub(crate) fn count_event(&self, what: &str) {
        *self.counts.entry(what.to_owned()).or_insert(0) += 1;
    }

    /// Requests answered (all outcomes).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Requests answered with `reason` (`success` for 200), or events such
    /// as `token_issued` / `provider_token_accepted`.
    pub fn count(&self, reason: &str) -> u64 {
        self.counts.get(reason).map(|c| *c).unwrap_or(0)
    }

    pub fn recent(&self) -> Vec<Recorded> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.recent.lock().ok()?.back().cloned()
    }
}
