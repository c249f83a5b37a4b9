//! Wakes `WatchChallenge` streams. A stream registers interest in one
//! challenge; an event (local or from another replica through the queue)
//! wakes it, and it re-reads the challenge from storage. Storage stays the
//! truth: a missed or duplicated wake-up cannot show a wrong state.

use std::sync::Arc;

use dashmap::DashMap;
use sesame_core::ChallengeId;
use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct WatchHub {
    watchers: Arc<DashMap<ChallengeId, Arc<Notify>>>,
}

/// Interest in one challenge; unregisters when dropped.
pub struct Watch {
    hub: WatchHub,
    id: ChallengeId,
    pub notify: Arc<Notify>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Remove the entry when this was the last watcher (the map holds one ref).
        self.hub
            .watchers
            .remove_if(&self.id, |_, n| Arc::strong_count(n) <= 2);
    }
}

impl WatchHub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn watch(&self, id: &ChallengeId) -> Watch {
        let notify = self.watchers.entry(id.clone()).or_default().clone();
        Watch {
            hub: self.clone(),
            id: id.clone(),
            notify,
        }
    }

    pub fn notify(&self, id: &ChallengeId) {
        if let Some(n) = self.watchers.get(id) {
            n.notify_waiters();
        }
    }

    pub fn notify_all(&self) {
        for n in self.watchers.iter() {
            n.notify_waiters();
        }
    }

    /// Challenges with at least one open watch stream.
    pub fn watched(&self) -> usize {
        self.watchers.len()
    }
}
