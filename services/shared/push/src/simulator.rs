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

/// Collapse ids remembered per phone to recognise duplicates.
pub const SEEN_PER_MAILBOX: usize = 64;

impl SimulatedPush {
    /// The push a job becomes: the challenge id and the generic alert only.
    pub fn for_job(job: &PushJob) -> SimulatedPush {
        SimulatedPush {
            challenge_id: job.challenge_id.to_string(),
            alert_title: ALERT_TITLE.into(),
            alert_body: ALERT_BODY.into(),
            collapse_id: job.challenge_id.to_string(),
            expires_at: job.expires_at,
        }
    }
}

#[derive(Default)]
struct Mailbox {
    queue: Mutex<MailboxState>,
    notify: Notify,
}

#[derive(Default)]
struct MailboxState {
    waiting: VecDeque<SimulatedPush>,
    /// The latest collapse ids this phone received (read or not).
    seen: VecDeque<String>,
}

#[derive(Default)]
pub struct SimulatorProvider {
    boxes: DashMap<String, Arc<Mailbox>>,
    delivered: AtomicU64,
    collapsed: AtomicU64,
    duplicates: AtomicU64,
}

/// What the simulator made of one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A new push for this phone.
    New,
    /// The phone already had a push with this collapse id (at-least-once
    /// delivery sent it twice): it replaces the first, the user sees one.
    Duplicate,
    /// Unregistered token.
    DeadToken,
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
            if let Some(p) = mb.queue.lock().ok()?.waiting.pop_front() {
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

    /// Pushes whose collapse id the phone had already received.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Accepts one push for `token`, as APNs or FCM would.
    pub fn accept(&self, token: &str, push: SimulatedPush) -> Accepted {
        if token.starts_with(DEAD_TOKEN_PREFIX) {
            return Accepted::DeadToken;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let Some(mb) = self.mailbox(token) else {
            return Accepted::New;
        };
        let mut accepted = Accepted::New;
        if let Ok(mut st) = mb.queue.lock() {
            if st.seen.contains(&push.collapse_id) {
                accepted = Accepted::Duplicate;
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                if st.seen.len() >= SEEN_PER_MAILBOX {
                    st.seen.pop_front();
                }
                st.seen.push_back(push.collapse_id.clone());
            }
            if let Some(pos) = st
                .waiting
                .iter()
                .position(|p| p.collapse_id == push.collapse_id)
            {
                st.waiting[pos] = push;
                self.collapsed.fetch_add(1, Ordering::Relaxed);
            } else if accepted == Accepted::New {
                if st.waiting.len() >= MAILBOX_CAPACITY {
                    st.waiting.pop_front();
                }
                st.waiting.push_back(push);
            }
        }
        mb.notify.notify_one();
        accepted
    }
}

#[async_trait]
impl PushProvider for SimulatorProvider {
    fn name(&self) -> &'static str {
        "simulator"
    }

    async fn send(&self, job: &PushJob, _now: UnixMillis) -> PushOutcome {
        match self.accept(&job.push_token, SimulatedPush::for_job(job)) {
            Accepted::DeadToken => PushOutcome::DeadToken,
            Accepted::New | Accepted::Duplicate => PushOutcome::Delivered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(id: &str) -> SimulatedPush {
        SimulatedPush {
            challenge_id: id.into(),
            alert_title: ALERT_TITLE.into(),
            alert_body: ALERT_BODY.into(),
            collapse_id: id.into(),
            expires_at: 0,
        }
    }

    #[tokio::test]
    async fn a_duplicate_is_counted_and_shown_once() {
        let sim = SimulatorProvider::new();
        assert_eq!(sim.accept("tok", push("a")), Accepted::New);
        assert_eq!(sim.recv("tok").await, Some(push("a")));
        // Read already: the duplicate is recognised but not shown again.
        assert_eq!(sim.accept("tok", push("a")), Accepted::Duplicate);
        // Not read yet: the duplicate replaces the waiting one.
        assert_eq!(sim.accept("tok", push("b")), Accepted::New);
        assert_eq!(sim.accept("tok", push("b")), Accepted::Duplicate);
        assert_eq!(sim.accept("tok", push("c")), Accepted::New);
        assert_eq!(sim.recv("tok").await, Some(push("b")));
        assert_eq!(sim.recv("tok").await, Some(push("c")));
        assert_eq!((sim.delivered(), sim.duplicates()), (5, 2));
        assert_eq!(sim.accept("dead:x", push("a")), Accepted::DeadToken);
    }
}
