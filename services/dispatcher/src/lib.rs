//! The `dispatcher` role: takes push jobs from the queue and sends each one
//! through the push provider. Stateless (a job carries all it needs), so any
//! number of dispatchers can share a queue.
//!
//! Per job: a job whose challenge has expired is dropped, not sent; a dead
//! token is reported back as an event for the role that owns storage; a
//! transient failure is retried after `Retry-After` or an exponential
//! backoff with full jitter, at most [`DispatcherConfig::max_attempts`]
//! times and never past the challenge's expiry; the job is acknowledged only
//! once its outcome is known. Concurrency is bounded by a semaphore, so a
//! slow provider applies back-pressure to the queue instead of growing memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod metrics;

use rand::Rng;
use sesame_core::time::now_ms;
use sesame_push::{PushOutcome, PushProvider};
use sesame_queue::{Event, PushDelivery, PushJob, Queue};
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// Tries per push, the first included.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt (with full jitter).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            concurrency: 512,
            max_attempts: 5,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Counters of what the dispatcher did (exported as metrics by the binary).
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub delivered: AtomicU64,
    pub expired_dropped: AtomicU64,
    pub dead_tokens: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
}

impl DispatchStats {
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        [
            ("delivered", self.delivered.load(Ordering::Relaxed)),
            (
                "expired_dropped",
                self.expired_dropped.load(Ordering::Relaxed),
            ),
            ("dead_token", self.dead_tokens.load(Ordering::Relaxed)),
            ("retried", self.retried.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
        ]
    }
}

pub struct Dispatcher {
    queue: Arc<dyn Queue>,
    provider: Arc<dyn PushProvider>,
    config: DispatcherConfig,
    stats: Arc<DispatchStats>,
}

/// Delay before retry number `attempt` (1-based): `Retry-After` when the
/// provider gave one (never shortened), else full-jitter exponential backoff
/// capped at `max_backoff`.
pub fn retry_delay(
    config: &DispatcherConfig,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    if let Some(d) = retry_after {
        // The provider's word wins; the caller still never waits past the
        // challenge's expiry.
        return d;
    }
    let exp = config
        .base_backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(config.max_backoff);
    let millis = cap.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
}

impl Dispatcher {
    pub fn new(
        queue: Arc<dyn Queue>,
        provider: Arc<dyn PushProvider>,
        config: DispatcherConfig,
    ) -> Self {
        Dispatcher {
            queue,
            provider,
            config,
            stats: Arc::new(DispatchStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<DispatchStats> {
        self.stats.clone()
    }

    /// Consumes until the queue closes, then waits for in-flight pushes.
    pub async fn run(self) {
        let mut consumer = match self.queue.push_consumer().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "dispatcher cannot consume push jobs");
                return;
            }
        };
        // Jobs taken from the queue, some of them waiting for their retry
        // time; and, among them, sends in flight. A waiting retry holds no
        // send slot, so retries cannot starve fresh pushes.
        let held_limit = self.config.concurrency.max(1).saturating_mul(4);
        let held = Arc::new(Semaphore::new(held_limit));
        let sending = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let shared = Arc::new(self);
        while let Some(delivery) = consumer.next().await {
            let Ok(permit) = held.clone().acquire_owned().await else {
                break;
            };
            let me = shared.clone();
            let sending = sending.clone();
            // Every log line about this push carries the login's trace id.
            let span = tracing::info_span!(
                "push",
                trace_id = %delivery.job.trace_id,
                challenge_id = %delivery.job.challenge_id,
                provider = me.provider.name()
            );
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    me.handle(delivery, &sending).await;
                    drop(permit);
                },
                span,
            ));
        }
        // Drain: wait until every job taken has finished.
        let _ = held.acquire_many(held_limit as u32).await;
    }

    async fn handle(&self, delivery: PushDelivery, sending: &Semaphore) {
        let mut job = delivery.job.clone();
        // A retry waits for its time (never past the challenge's expiry).
        let wait = job.not_before.min(job.expires_at) - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let Ok(_slot) = sending.acquire().await else {
            return;
        };
        let provider = self.provider.name();
        loop {
            let now = now_ms();
            if now >= job.expires_at {
                self.stats.expired_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::push(provider, "expired_dropped");
                tracing::debug!(challenge_id = %job.challenge_id, "push dropped: challenge expired");
                break;
            }
            match self.provider.send(&job, now).await {
                PushOutcome::Delivered => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    metrics::push(provider, "delivered");
                    ::metrics::histogram!(metrics::PUSH_DELIVERY, "provider" => provider)
                        .record((now_ms() - job.enqueued_at).max(0) as f64 / 1000.0);
                    break;
                }
                PushOutcome::DeadToken => {
                    self.stats.dead_tokens.fetch_add(1, Ordering::Relaxed);
                    metrics::push(provider, "dead_token");
                    let _ = self.queue.publish_event(Event::PushTokenDead {
                        device_id: job.device_id.clone(),
                        push_token: job.push_token.clone(),
                    });
                    break;
                }
                PushOutcome::Failed { reason } => {
                    self.fail(&job, &format!("permanent: {reason}")).await;
                    break;
                }
                PushOutcome::Retry { after, reason } => {
                    job.attempt += 1;
                    if job.attempt >= self.config.max_attempts {
                        let why = format!("gave up after {} attempts: {reason}", job.attempt);
                        self.fail(&job, &why).await;
                        break;
                    }
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    metrics::push(provider, "retry");
                    let delay = retry_delay(&self.config, job.attempt, after);
                    job.not_before = now_ms() + delay.as_millis() as i64;
                    // Handed back to the queue (Kafka: the retry topic), this
                    // job's offset can be committed and the slot freed. If
                    // the queue cannot take it, wait here instead.
                    match self.queue.publish_retry(job.clone()).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "retry kept in process");
                            let left = (job.expires_at - now_ms()).max(0) as u64;
                            tokio::time::sleep(delay.min(Duration::from_millis(left))).await;
                        }
                    }
                }
            }
        }
        delivery.ack();
    }

    /// A push that will never be delivered: counted, logged and parked in
    /// the dead letters with the reason.
    async fn fail(&self, job: &PushJob, reason: &str) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        metrics::push(self.provider.name(), "failed");
        tracing::warn!(%reason, provider = self.provider.name(), device_id = %job.device_id, "push failed");
        if let Err(e) = self.queue.publish_dead_letter(job, reason).await {
            tracing::warn!(error = %e, device_id = %job.device_id, "dead letter not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use sesame_core::model::Platform;
    use sesame_core::{ChallengeId, DeviceId, TenantId};
    use sesame_queue::{MemQueue, MemQueueConfig};
    use std::sync::Mutex;

    struct Scripted(Mutex<Vec<PushOutcome>>, AtomicU64);

    #[async_trait]
    impl PushProvider for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        async fn send(&self, _job: &PushJob, _now: i64) -> PushOutcome {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(PushOutcome::Delivered)
        }
    }

    fn job(expires_in: i64) -> PushJob {
        PushJob {
            tenant_id: TenantId::parse("t").unwrap(),
            device_id: DeviceId::generate(),
            challenge_id: ChallengeId::generate(),
            platform: Platform::Ios,
            push_token: "tok".into(),
            expires_at: now_ms() + expires_in,
            enqueued_at: now_ms(),
            attempt: 0,
            trace_id: String::new(),
            not_before: 0,
        }
    }

    async fn run_with(
        outcomes: Vec<PushOutcome>,
        jobs: Vec<PushJob>,
    ) -> (Arc<DispatchStats>, u64, Vec<Event>, Arc<MemQueue>) {
        let queue = Arc::new(MemQueue::new(MemQueueConfig::default()));
        let mut events = queue.subscribe_events().await.unwrap();
        let provider = Arc::new(Scripted(Mutex::new(outcomes), AtomicU64::new(0)));
        let config = DispatcherConfig {
            base_backoff: Duration::from_millis(1),
            ..Default::default()
        };
        let d = Dispatcher::new(queue.clone(), provider.clone(), config);
        let stats = d.stats();
        let n = jobs.len() as u64;
        queue.publish_pushes(jobs).await.unwrap();
        let run = tokio::spawn(d.run());
        // Close only once every job has its outcome: retries go back
        // through the queue, so closing early would test the fallback.
        let finished = |s: &DispatchStats| {
            s.delivered.load(Ordering::Relaxed)
                + s.failed.load(Ordering::Relaxed)
                + s.dead_tokens.load(Ordering::Relaxed)
                + s.expired_dropped.load(Ordering::Relaxed)
        };
        for _ in 0..500 {
            if finished(&stats) >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        queue.close();
        run.await.unwrap();
        let mut seen = Vec::new();
        while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(10), events.next()).await {
            seen.push(e);
        }
        (stats, provider.1.load(Ordering::Relaxed), seen, queue)
    }

    #[tokio::test]
    async fn expired_jobs_are_dropped_not_sent() {
        let (stats, sends, _, _) = run_with(vec![], vec![job(-1), job(60_000)]).await;
        assert_eq!(sends, 1);
        assert_eq!(stats.expired_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn retries_then_delivers() {
        let retry = PushOutcome::Retry {
            after: Some(Duration::from_millis(1)),
            reason: "503".into(),
        };
        let (stats, sends, _, queue) =
            run_with(vec![retry.clone(), retry], vec![job(60_000)]).await;
        assert_eq!(sends, 3);
        assert!(queue.dead_letters().is_empty());
        assert_eq!(stats.retried.load(Ordering::Relaxed), 2);
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let retry = PushOutcome::Retry {
            after: None,
            reason: "503".into(),
        };
        let j = job(60_000);
        let (stats, sends, _, queue) = run_with(vec![retry; 10], vec![j.clone()]).await;
        assert_eq!(sends, 5);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
        let dead = queue.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0.challenge_id, j.challenge_id);
        assert_eq!(dead[0].0.attempt, 5);
        assert!(
            dead[0].1.contains("gave up after 5 attempts: 503"),
            "{}",
            dead[0].1
        );
    }

    #[tokio::test]
    async fn permanent_failures_go_to_dead_letters_at_once() {
        let failed = PushOutcome::Failed {
            reason: "BadDeviceToken".into(),
        };
        let (stats, sends, _, queue) = run_with(vec![failed], vec![job(60_000)]).await;
        assert_eq!(sends, 1);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
        assert_eq!(queue.dead_letters()[0].1, "permanent: BadDeviceToken");
    }

    #[tokio::test]
    async fn a_retry_waits_for_its_time_and_keeps_the_expiry() {
        // A retry due in 200 ms, for a challenge that expires in 100 ms:
        // dropped at the expiry, not sent.
        let mut j = job(100);
        j.not_before = now_ms() + 200;
        let started = std::time::Instant::now();
        let (stats, sends, _, _) = run_with(vec![], vec![j]).await;
        assert_eq!(sends, 0);
        assert_eq!(stats.expired_dropped.load(Ordering::Relaxed), 1);
        assert!(started.elapsed() >= Duration::from_millis(90));
    }

    #[tokio::test]
    async fn dead_token_is_reported_back() {
        let j = job(60_000);
        let (stats, _, events, _) = run_with(vec![PushOutcome::DeadToken], vec![j.clone()]).await;
        assert_eq!(stats.dead_tokens.load(Ordering::Relaxed), 1);
        assert_eq!(
            events,
            vec![Event::PushTokenDead {
                device_id: j.device_id,
                push_token: j.push_token
            }]
        );
    }

    #[test]
    fn backoff_is_capped_and_honours_retry_after() {
        let c = DispatcherConfig::default();
        assert_eq!(
            retry_delay(&c, 3, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        // Never shorter than the provider asked (the expiry still bounds the wait).
        assert_eq!(
            retry_delay(&c, 1, Some(Duration::from_secs(99))),
            Duration::from_secs(99)
        );
        for a in 1..30 {
            assert!(retry_delay(&c, a, None) <= c.max_backoff);
        }
    }
}
