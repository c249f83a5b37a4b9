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
    fallback: Arc<Notify>,
}

/// Interest in one challenge; unregisters when dropped.
pub struct Watch {
    hub: WatchHub,
    id: ChallengeId,
    notify: Option<Arc<Notify>>,
}

impl Watch {
    /// A future that completes at the next wake-up for this challenge.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        match &self.notify {
            Some(n) => n.notified(),
            // Unreachable: only `drop` takes it.
            None => self.hub.fallback.notified(),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Release our reference first, then remove the entry if only the
        // map's own reference is left. Two watchers dropping at once cannot
        // both see each other's reference and leave the entry behind.
        drop(self.notify.take());
        self.hub
            .watchers
            .remove_if(&self.id, |_, n| Arc::strong_count(n) == 1);
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
            notify: Some(notify),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_go_when_the_last_watcher_goes() {
        let hub = WatchHub::new();
        let id = ChallengeId::generate();
        let a = hub.watch(&id);
        let b = hub.watch(&id);
        assert_eq!(hub.watched(), 1);
        drop(a);
        assert_eq!(hub.watched(), 1);
        drop(b);
        assert_eq!(hub.watched(), 0);
    }

    #[tokio::test]
    async fn concurrent_drops_leave_no_entry() {
        let hub = WatchHub::new();
        for _ in 0..200 {
            let id = ChallengeId::generate();
            let watches: Vec<Watch> = (0..4).map(|_| hub.watch(&id)).collect();
            let handles: Vec<_> = watches
                .into_iter()
                .map(|w| tokio::task::spawn_blocking(move || drop(w)))
                .collect();
            for h in handles {
                h.await.unwrap();
            }
        }
        assert_eq!(hub.watched(), 0);
    }

    #[tokio::test]
    async fn notify_wakes_a_registered_waiter() {
        let hub = WatchHub::new();
        let id = ChallengeId::generate();
        let w = hub.watch(&id);
        let n = w.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        hub.notify(&id);
        tokio::time::timeout(std::time::Duration::from_secs(1), n)
            .await
            .unwrap();
    }
}
