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

use sesame_audit::AuditLog;
use sesame_core::audit::{AuditAction, AuditEntry};
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
    /// Retries taken from the queue that may wait for their time at once.
    pub max_waiting_retries: usize,
}

/// No challenge lives longer than the longest TTL (600 s); a job claiming
/// an expiry or retry time further ahead than this is garbage.
pub const MAX_JOB_HORIZON_MS: i64 = 3_600_000;

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            concurrency: 512,
            max_attempts: 5,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_waiting_retries: 10_000,
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
    audit: AuditLog,
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
    sesame_core::time::full_jitter_backoff(config.base_backoff, config.max_backoff, attempt)
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
            audit: AuditLog::disabled(),
        }
    }

    /// Records each push's outcome (sent, or failed and why) in the audit trail.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    fn record(&self, job: &PushJob, action: AuditAction, detail: String) {
        self.audit.record(
            AuditEntry::new(now_ms(), job.tenant_id.as_str(), action)
                .user(&job.user_id)
                .device(&job.device_id)
                .challenge(&job.challenge_id)
                .actor("dispatcher")
                .detail(detail),
        );
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
        // Two budgets of jobs taken from the queue: fresh ones (up to
        // 4 x concurrency, sends bounded by `sending`), and retries still
        // waiting for their time, which have a budget of their own so that
        // a provider asking everyone to come back later cannot fill the
        // dispatcher with sleepers and stop fresh pushes.
        let concurrency = self.config.concurrency.max(1);
        let fresh_limit = concurrency.saturating_mul(4);
        let waiting_limit = self.config.max_waiting_retries.max(1);
        let fresh = Arc::new(Semaphore::new(fresh_limit));
        let waiting = Arc::new(Semaphore::new(waiting_limit));
        let sending = Arc::new(Semaphore::new(concurrency));
        // Set when the queue closes: retries still waiting give up without
        // an acknowledgement (the queue delivers them again later).
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(self);
        while let Some(delivery) = consumer.next().await {
            let budget = if delivery.job.not_before > now_ms() {
                &waiting
            } else {
                &fresh
            };
            let Ok(permit) = budget.clone().acquire_owned().await else {
                break;
            };
            let me = shared.clone();
            let sending = sending.clone();
            let stop = stop_rx.clone();
            // Every log line about this push carries the login's trace id.
            let span = tracing::info_span!(
                "push",
                trace_id = %delivery.job.trace_id,
                challenge_id = %delivery.job.challenge_id,
                provider = me.provider.name()
            );
            sesame_grpc::trace::link(&span, &delivery.job.trace_id, None);
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    me.handle(delivery, &sending, stop).await;
                    drop(permit);
                },
                span,
            ));
        }
        let _ = stop_tx.send(true);
        // Drain: wait until every job taken has finished.
        let _ = fresh.acquire_many(fresh_limit as u32).await;
        let _ = waiting.acquire_many(waiting_limit as u32).await;
    }

    async fn handle(
        &self,
        delivery: PushDelivery,
        sending: &Semaphore,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut job = delivery.job.clone();
        // A job from the queue is input like any other: a challenge cannot
        // live longer than the longest TTL, so a later expiry is garbage.
        let horizon = now_ms().saturating_add(MAX_JOB_HORIZON_MS);
        if job.expires_at > horizon || job.not_before > horizon {
            self.fail(&job, "implausible expiry or retry time").await;
            delivery.ack();
            return;
        }
        // A retry waits for its time (never past the challenge's expiry).
        let wait = job.not_before.min(job.expires_at).saturating_sub(now_ms());
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                // Shutting down: not acknowledged, so delivered again later.
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let Ok(_slot) = sending.acquire().await else {
            return;
        };
        let provider = self.provider.provider_for(&job);
        loop {
            let now = now_ms();
            if now >= job.expires_at {
                self.stats.expired_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::push(provider, "expired_dropped");
                tracing::debug!(challenge_id = %job.challenge_id, "push dropped: challenge expired");
                self.record(
                    &job,
                    AuditAction::PushFailed,
                    format!("{provider}: challenge expired before delivery"),
                );
                break;
            }
            match self.provider.send(&job, now).await {
                PushOutcome::Delivered => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    metrics::push(provider, "delivered");
                    self.record(
                        &job,
                        AuditAction::PushSent,
                        format!("{provider}: accepted (attempt {})", job.attempt + 1),
                    );
                    ::metrics::histogram!(metrics::PUSH_DELIVERY, "provider" => provider)
                        .record((now_ms() - job.enqueued_at).max(0) as f64 / 1000.0);
                    break;
                }
                PushOutcome::DeadToken => {
                    self.stats.dead_tokens.fetch_add(1, Ordering::Relaxed);
                    metrics::push(provider, "dead_token");
                    self.record(
                        &job,
                        AuditAction::PushFailed,
                        format!("{provider}: the push token is no longer valid"),
                    );
                    let _ = self.queue.publish_event(Event::PushTokenDead {
                        device_id: job.device_id.clone(),
                        push_token: job.push_token.clone(),
                    });
                    break;
                }
                PushOutcome::Misconfigured { reason } => {
                    metrics::push(provider, "misconfigured");
                    if !self.fail(&job, &format!("misconfigured: {reason}")).await {
                        return;
                    }
                    break;
                }
                PushOutcome::Failed { reason } => {
                    if !self.fail(&job, &format!("permanent: {reason}")).await {
                        // Not parked: leave it to be delivered again.
                        return;
                    }
                    break;
                }
                PushOutcome::Retry { after, reason } => {
                    job.attempt = job.attempt.saturating_add(1);
                    if job.attempt >= self.config.max_attempts {
                        let why = format!("gave up after {} attempts: {reason}", job.attempt);
                        if !self.fail(&job, &why).await {
                            return;
                        }
                        break;
                    }
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    metrics::push(provider, "retry");
                    let delay = retry_delay(&self.config, job.attempt, after);
                    job.not_before = now_ms().saturating_add(delay.as_millis() as i64);
                    // Handed back to the queue (Kafka: the retry topic), this
                    // job's offset can be committed and the slot freed. If
                    // the queue cannot take it, wait here instead.
                    match self.queue.publish_retry(job.clone()).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "retry kept in process");
                            let left = job.expires_at.saturating_sub(now_ms()).max(0) as u64;
                            tokio::time::sleep(delay.min(Duration::from_millis(left))).await;
                        }
                    }
                }
            }
        }
        delivery.ack();
    }

    /// A push that will never be delivered: counted, logged and parked in
    /// the dead letters with the reason. `false` if the dead letter could
    /// not be stored: the caller then leaves the job unacknowledged.
    async fn fail(&self, job: &PushJob, reason: &str) -> bool {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let provider = self.provider.provider_for(job);
        metrics::push(provider, "failed");
        tracing::warn!(%reason, provider, device_id = %job.device_id, "push failed");
        self.record(
            job,
            AuditAction::PushFailed,
            format!("{provider}: {reason}"),
        );
        match self.queue.publish_dead_letter(job, reason).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, device_id = %job.device_id, "dead letter not stored");
                false
            }
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
            user_id: String::new(),
            device_id: DeviceId::generate(),
            challenge_id: ChallengeId::generate(),
            platform: Platform::Ios,
            push_token: "tok".into(),
            push_app: String::new(),
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
    async fn implausible_jobs_go_to_dead_letters_unsent() {
        let mut j = job(60_000);
        j.expires_at = i64::MAX;
        let mut k = job(60_000);
        k.not_before = now_ms() + 10 * MAX_JOB_HORIZON_MS;
        let (stats, sends, _, queue) = run_with(vec![], vec![j, k]).await;
        assert_eq!(sends, 0);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 2);
        assert_eq!(queue.dead_letters().len(), 2);
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
