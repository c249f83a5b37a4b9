//! The in-process queue: a bounded multi-consumer channel for push jobs and a
//! broadcast channel for events. Nothing here survives a restart: a push
//! job lost in a crash is covered by the device's polling fallback
//! (`ListPendingChallenges`), since the challenge itself is durable.

use std::collections::VecDeque;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{
    Event, EventError, EventSubscriber, PushConsumer, PushDelivery, PushJob, Queue, QueueError,
    WebhookConsumer, WebhookDelivery, WebhookJob,
};

#[derive(Debug, Clone)]
pub struct MemQueueConfig {
    /// Push jobs that may wait for a dispatcher.
    pub push_capacity: usize,
    /// Events a slow subscriber may fall behind before it lags.
    pub event_capacity: usize,
    /// Dead letters kept for inspection (the oldest go first).
    pub dead_letter_capacity: usize,
    /// Webhook jobs (fresh and retries) that may wait for a sender.
    pub webhook_capacity: usize,
}

impl Default for MemQueueConfig {
    fn default() -> Self {
        MemQueueConfig {
            push_capacity: 100_000,
            event_capacity: 16_384,
            dead_letter_capacity: 1_000,
            webhook_capacity: 50_000,
        }
    }
}

pub struct MemQueue {
    /// Serialises publishers so that a challenge's jobs go in all together
    /// or not at all (consumers never take it).
    publish: std::sync::Mutex<()>,
    push_tx: async_channel::Sender<PushJob>,
    push_rx: async_channel::Receiver<PushJob>,
    events: broadcast::Sender<Event>,
    dead_letters: std::sync::Mutex<VecDeque<(PushJob, String)>>,
    dead_letter_capacity: usize,
    webhook_tx: async_channel::Sender<WebhookJob>,
    webhook_rx: async_channel::Receiver<WebhookJob>,
}

impl MemQueue {
    pub fn new(config: MemQueueConfig) -> Self {
        let (push_tx, push_rx) = async_channel::bounded(config.push_capacity.max(1));
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let (webhook_tx, webhook_rx) = async_channel::bounded(config.webhook_capacity.max(1));
        MemQueue {
            publish: std::sync::Mutex::new(()),
            push_tx,
            push_rx,
            events,
            dead_letters: std::sync::Mutex::new(VecDeque::new()),
            dead_letter_capacity: config.dead_letter_capacity.max(1),
            webhook_tx,
            webhook_rx,
        }
    }

    /// The latest dead letters, oldest first, with their reasons.
    pub fn dead_letters(&self) -> Vec<(PushJob, String)> {
        self.dead_letters
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Jobs waiting for a dispatcher.
    pub fn push_backlog(&self) -> usize {
        self.push_tx.len()
    }

    fn has_room(&self, n: usize) -> bool {
        let cap = self.push_tx.capacity().unwrap_or(usize::MAX);
        self.push_tx.len().saturating_add(n) <= cap
    }
}

struct MemConsumer(async_channel::Receiver<PushJob>);

#[async_trait]
impl PushConsumer for MemConsumer {
    async fn next(&mut self) -> Option<PushDelivery> {
        self.0
            .recv()
            .await
            .ok()
            .map(|job| PushDelivery::new(job, None))
    }
}

struct MemWebhooks(async_channel::Receiver<WebhookJob>);

#[async_trait]
impl WebhookConsumer for MemWebhooks {
    async fn next(&mut self) -> Option<WebhookDelivery> {
        self.0
            .recv()
            .await
            .ok()
            .map(|job| WebhookDelivery::new(job, None))
    }
}

struct MemSubscriber(broadcast::Receiver<Event>);

#[async_trait]
impl EventSubscriber for MemSubscriber {
    async fn next(&mut self) -> Result<Event, EventError> {
        match self.0.recv().await {
            Ok(e) => Ok(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Err(EventError::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => Err(EventError::Closed),
        }
    }
}

#[async_trait]
impl Queue for MemQueue {
    fn name(&self) -> &'static str {
        "mem"
    }

    fn check_room_for_pushes(&self, n: usize) -> Result<(), QueueError> {
        if self.has_room(n) {
            Ok(())
        } else {
            Err(QueueError::Full("push jobs"))
        }
    }

    async fn publish_pushes(&self, jobs: Vec<PushJob>) -> Result<(), QueueError> {
        if self.push_tx.is_closed() {
            return Err(QueueError::Closed);
        }
        let _guard = self
            .publish
            .lock()
            .map_err(|_| QueueError::Backend("publisher lock poisoned".into()))?;
        // Under the lock only consumers run concurrently, and they only make
        // room: if all jobs fit now, every `try_send` below succeeds.
        if !self.has_room(jobs.len()) {
            return Err(QueueError::Full("push jobs"));
        }
        for job in jobs {
            self.push_tx.try_send(job).map_err(|e| match e {
                async_channel::TrySendError::Full(_) => QueueError::Full("push jobs"),
                async_channel::TrySendError::Closed(_) => QueueError::Closed,
            })?;
        }
        Ok(())
    }

    async fn publish_retry(&self, job: PushJob) -> Result<(), QueueError> {
        // The job carries its `not_before`; the dispatcher that takes it
        // waits. A closed or full queue makes the caller retry in place.
        self.push_tx.try_send(job).map_err(|e| match e {
            async_channel::TrySendError::Full(_) => QueueError::Full("push jobs"),
            async_channel::TrySendError::Closed(_) => QueueError::Closed,
        })
    }

    async fn publish_dead_letter(&self, job: &PushJob, reason: &str) -> Result<(), QueueError> {
        let mut d = self
            .dead_letters
            .lock()
            .map_err(|_| QueueError::Backend("dead-letter lock poisoned".into()))?;
        if d.len() >= self.dead_letter_capacity {
            d.pop_front();
        }
        d.push_back((job.clone(), reason.to_owned()));
        Ok(())
    }

    async fn publish_webhook(&self, job: WebhookJob) -> Result<(), QueueError> {
        // A retry carries its `not_before`; the sender that takes it waits.
        self.webhook_tx.try_send(job).map_err(|e| match e {
            async_channel::TrySendError::Full(_) => QueueError::Full("webhook jobs"),
            async_channel::TrySendError::Closed(_) => QueueError::Closed,
        })
    }

    async fn webhook_consumer(&self) -> Result<Box<dyn WebhookConsumer>, QueueError> {
        Ok(Box::new(MemWebhooks(self.webhook_rx.clone())))
    }

    fn publish_event(&self, event: Event) -> Result<(), QueueError> {
        // No subscriber is not an error: nobody is watching.
        let _ = self.events.send(event);
        Ok(())
    }

    async fn push_consumer(&self) -> Result<Box<dyn PushConsumer>, QueueError> {
        Ok(Box::new(MemConsumer(self.push_rx.clone())))
    }

    async fn subscribe_events(&self) -> Result<Box<dyn EventSubscriber>, QueueError> {
        Ok(Box::new(MemSubscriber(self.events.subscribe())))
    }

    fn close(&self) {
        self.push_tx.close();
        self.webhook_tx.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesame_core::model::Platform;
    use sesame_core::{ChallengeId, DeviceId, TenantId};

    fn job() -> PushJob {
        PushJob {
            tenant_id: TenantId::parse("t").unwrap(),
            user_id: String::new(),
            device_id: DeviceId::generate(),
            challenge_id: ChallengeId::generate(),
            platform: Platform::Android,
            push_token: "x".into(),
            push_app: String::new(),
            expires_at: 0,
            enqueued_at: 0,
            attempt: 0,
            trace_id: String::new(),
            not_before: 0,
        }
    }

    #[tokio::test]
    async fn full_queue_fails_fast_all_or_nothing() {
        let q = MemQueue::new(MemQueueConfig {
            push_capacity: 3,
            event_capacity: 4,
            dead_letter_capacity: 2,
            webhook_capacity: 1,
        });
        q.publish_pushes(vec![job(), job()]).await.unwrap();
        assert_eq!(
            q.publish_pushes(vec![job(), job()]).await,
            Err(QueueError::Full("push jobs"))
        );
        assert_eq!(
            q.check_room_for_pushes(2),
            Err(QueueError::Full("push jobs"))
        );
        assert_eq!(q.check_room_for_pushes(1), Ok(()));
        assert_eq!(q.push_backlog(), 2);
        let mut c = q.push_consumer().await.unwrap();
        assert!(c.next().await.is_some());
        q.close();
        assert!(c.next().await.is_some());
        assert!(c.next().await.is_none());
    }

    #[tokio::test]
    async fn webhook_jobs_are_bounded_and_round_trip() {
        let q = MemQueue::new(MemQueueConfig {
            webhook_capacity: 1,
            ..Default::default()
        });
        let job = WebhookJob {
            tenant_id: TenantId::parse("t").unwrap(),
            challenge_id: ChallengeId::generate(),
            delivery_id: "vd_x".into(),
            attempt: 2,
            not_before: 5,
            enqueued_at: 1,
            trace_id: String::new(),
            redelivery: true,
        };
        assert_eq!(WebhookJob::decode(&job.encode()), Ok(job.clone()));
        assert!(WebhookJob::decode(b"{}").is_err());
        let mut c = q.webhook_consumer().await.unwrap();
        q.publish_webhook(job.clone()).await.unwrap();
        assert_eq!(
            q.publish_webhook(job.clone()).await,
            Err(QueueError::Full("webhook jobs"))
        );
        assert_eq!(c.next().await.map(|d| d.job), Some(job.clone()));
        q.close();
        assert_eq!(q.publish_webhook(job).await, Err(QueueError::Closed));
        assert!(c.next().await.is_none());
    }

    #[tokio::test]
    async fn dead_letters_are_bounded_and_keep_the_reason() {
        let q = MemQueue::new(MemQueueConfig {
            dead_letter_capacity: 2,
            ..Default::default()
        });
        let jobs = [job(), job(), job()];
        for (i, j) in jobs.iter().enumerate() {
            q.publish_dead_letter(j, &format!("reason {i}"))
                .await
                .unwrap();
        }
        let d = q.dead_letters();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], (jobs[1].clone(), "reason 1".to_owned()));
        assert_eq!(d[1], (jobs[2].clone(), "reason 2".to_owned()));
    }

    #[test]
    fn jobs_round_trip_and_garbage_is_refused() {
        let j = job();
        assert_eq!(PushJob::decode(&j.encode()), Ok(j));
        assert!(PushJob::decode(b"\xff not json").is_err());
        assert!(PushJob::decode(b"{}").is_err());
    }

    #[tokio::test]
    async fn events_reach_every_subscriber() {
        let q = MemQueue::new(MemQueueConfig::default());
        let mut a = q.subscribe_events().await.unwrap();
        let mut b = q.subscribe_events().await.unwrap();
        let e = Event::PushTokenDead {
            device_id: DeviceId::generate(),
            push_token: "t".into(),
        };
        q.publish_event(e.clone()).unwrap();
        assert_eq!(a.next().await, Ok(e.clone()));
        assert_eq!(b.next().await, Ok(e));
    }
}
