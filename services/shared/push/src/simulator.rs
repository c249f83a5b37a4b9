//! The simulated push provider: each push token has a small mailbox that a
//! simulated phone reads (in-process, or over the `PushInbox` gRPC service
//! that `sesame serve` exposes when this provider is active).
//!
//! Like APNs, it keeps only the latest pushes for a phone that is offline
//! (at most [`MAILBOX_CAPACITY`] per token) and a bounded number of
//! mailboxes, so memory does not grow with traffic. Tokens starting with
//! [`DEAD_TOKEN_PREFIX`] behave like unregistered devices.
//!
//! The inbox is for development and tests: whoever knows a push token can
//! read that phone's pushes (which carry only a challenge id). Production
//! deployments configure APNs/FCM, and then no inbox is served.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dashmap::DashMap;
use sesame_core::time::UnixMillis;
use sesame_queue::PushJob;
use tokio::sync::Notify;

use crate::{PushOutcome, PushProvider, ALERT_BODY, ALERT_TITLE};

/// A token with this prefix is reported dead, as APNs does with 410 `Unregistered`.
pub const DEAD_TOKEN_PREFIX: &str = "dead:";
/// Pushes kept per offline phone.
pub const MAILBOX_CAPACITY: usize = 16;
/// Mailboxes kept. Past this, pushes to new tokens fail (like a provider
/// refusing) and subscriptions to new tokens are refused: memory stays bounded
/// even if someone subscribes to made-up tokens.
pub const MAX_MAILBOXES: usize = 100_000;

/// What the phone receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedPush {
    pub challenge_id: String,
    pub alert_title: String,
    pub alert_body: String,
    /// Same as the challenge id: a duplicate push replaces, not adds.
    pub collapse_id: String,
    pub expires_at: UnixMillis,
}

#[derive(Default)]
struct Mailbox {
    queue: Mutex<VecDeque<SimulatedPush>>,
    notify: Notify,
}

#[derive(Default)]
pub struct SimulatorProvider {
    boxes: DashMap<String, Arc<Mailbox>>,
    delivered: AtomicU64,
    collapsed: AtomicU64,
}

impl SimulatorProvider {
    pub fn new() -> Self {
        Self::default()
    }

    fn mailbox(&self, token: &str) -> Option<Arc<Mailbox>> {
        if let Some(b) = self.boxes.get(token) {
            return Some(b.clone());
        }
        if self.boxes.len() >= MAX_MAILBOXES {
            return None;
        }
        Some(self.boxes.entry(token.to_owned()).or_default().clone())
    }

    /// Waits for the next push to `token`.
    pub async fn recv(&self, token: &str) -> Option<SimulatedPush> {
        let mb = self.mailbox(token)?;
        loop {
            let notified = mb.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = mb.queue.lock().ok()?.pop_front() {
                return Some(p);
            }
            notified.await;
        }
    }

    /// Pushes accepted so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Duplicate pushes that replaced an undelivered one with the same collapse id.
    pub fn collapsed(&self) -> u64 {
        self.collapsed.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl PushProvider for SimulatorProvider {
    fn name(&self) -> &'static str {
        "simulator"
    }

    async fn send(&self, job: &PushJob, _now: UnixMillis) -> PushOutcome {
        if job.push_token.starts_with(DEAD_TOKEN_PREFIX) {
            return PushOutcome::DeadToken;
        }
        let push = SimulatedPush {
            challenge_id: job.challenge_id.to_string(),
            alert_title: ALERT_TITLE.into(),
            alert_body: ALERT_BODY.into(),
            collapse_id: job.challenge_id.to_string(),
            expires_at: job.expires_at,
        };
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let Some(mb) = self.mailbox(&job.push_token) else {
            return PushOutcome::Delivered;
        };
        if let Ok(mut q) = mb.queue.lock() {
            if let Some(pos) = q.iter().position(|p| p.collapse_id == push.collapse_id) {
                q[pos] = push;
                self.collapsed.fetch_add(1, Ordering::Relaxed);
            } else {
                if q.len() >= MAILBOX_CAPACITY {
                    q.pop_front();
                }
                q.push_back(push);
            }
        }
        mb.notify.notify_one();
        PushOutcome::Delivered
    }
}
