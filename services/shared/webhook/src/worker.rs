//! Takes webhook jobs from the queue and delivers them: wait for a retry's
//! time, read the endpoint and the final challenge, sign, POST, then ack,
//! retry through the queue, or keep as a dead delivery.
//!
//! Bounded everywhere, like the dispatcher: jobs taken from the queue (fresh
//! and waiting retries have budgets of their own), requests in flight, and
//! requests in flight per tenant; a tenant whose endpoint already has its
//! share in flight gets its job back in the queue for later instead of a
//! slot, so one dead receiver cannot stall the others.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use sesame_audit::AuditLog;
use sesame_core::audit::{AuditAction, AuditEntry};
use sesame_core::model::Outcome;
use sesame_core::time::now_ms;
use sesame_core::webhook::{
    announced, deny_reason_str, DeadDelivery, EndpointUrl, VerdictNotice, VERDICT_TYPE,
};
use sesame_core::{Challenge, TenantId};
use sesame_queue::{Queue, WebhookDelivery, WebhookJob};
use sesame_storage::Storage;
use tokio::sync::{watch, Semaphore};

use crate::metrics;
use crate::{Attempt, Endpoints, Sender, WebhookConfig};

pub struct Worker {
    queue: Arc<dyn Queue>,
    storage: Arc<dyn Storage>,
    endpoints: Arc<Endpoints>,
    sender: Sender,
    config: WebhookConfig,
    audit: AuditLog,
    per_tenant: DashMap<TenantId, Arc<TenantSlots>>,
}

/// One tenant's requests in flight, and jobs waiting for one of them.
struct TenantSlots {
    sending: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// Jobs of one tenant that may wait for its slots, per slot: enough that a
/// busy, healthy endpoint keeps its slots full; few enough that a dead one
/// holds a small part of the jobs taken from the queue.
const WAITING_PER_SLOT: usize = 8;
/// How long a job over its tenant's waiting bound goes back to the queue.
const DEFER: Duration = Duration::from_secs(1);

/// Delay before retry number `attempt` (1-based): the receiver's
/// `Retry-After` when it gave one, else full-jitter exponential backoff;
/// both capped at `max_backoff`.
pub fn retry_delay(
    config: &WebhookConfig,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    if let Some(d) = retry_after {
        return d.min(config.max_backoff);
    }
    sesame_core::time::full_jitter_backoff(config.base_backoff, config.max_backoff, attempt)
}

/// The body of a challenge's verdict delivery; `None` unless final and
/// announced (approved, denied, cancelled).
pub fn notice(c: &Challenge, delivery_id: &str) -> Option<Vec<u8>> {
    let r = c.resolution.as_ref()?;
    let status = c.status(r.at);
    if !announced(status) {
        return None;
    }
    let deny_reason = match r.outcome {
        Outcome::Denied(d) => deny_reason_str(d).to_owned(),
        _ => String::new(),
    };
    let n = VerdictNotice {
        kind: VERDICT_TYPE.into(),
        delivery_id: delivery_id.to_owned(),
        tenant_id: c.tenant_id.to_string(),
        challenge_id: c.id.to_string(),
        user_id: c.user_id.clone(),
        status: status.as_str().to_owned(),
        deny_reason,
        device_id: r
            .device_id
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default(),
        decided_at_unix_ms: r.at,
    };
    serde_json::to_vec(&n).ok()
}

impl Worker {
    pub fn new(
        queue: Arc<dyn Queue>,
        storage: Arc<dyn Storage>,
        endpoints: Arc<Endpoints>,
        config: WebhookConfig,
        audit: AuditLog,
    ) -> Result<Worker, String> {
        Ok(Worker {
            sender: Sender::new(&config)?,
            queue,
            storage,
            endpoints,
            config,
            audit,
            per_tenant: DashMap::new(),
        })
    }

    /// Consumes until the queue closes, then waits for requests in flight.
    pub async fn run(self) {
        let mut consumer = match self.queue.webhook_consumer().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot consume webhook jobs");
                return;
            }
        };
        let concurrency = self.config.concurrency.max(1);
        let fresh_limit = concurrency.saturating_mul(4);
        let waiting_limit = self.config.max_waiting_retries.max(1);
        let fresh = Arc::new(Semaphore::new(fresh_limit));
        let waiting = Arc::new(Semaphore::new(waiting_limit));
        let sending = Arc::new(Semaphore::new(concurrency));
        let (stop_tx, stop_rx) = watch::channel(false);
        let me = Arc::new(self);
        while let Some(delivery) = consumer.next().await {
            let permit = if delivery.job.not_before > now_ms() {
                // A retry waits for its time in a budget of its own. When
                // that is full it goes back to the queue rather than block
                // the loop: fresh verdicts must not wait behind retries.
                match waiting.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(tokio::sync::TryAcquireError::Closed) => break,
                    Err(tokio::sync::TryAcquireError::NoPermits) => {
                        if me.queue.publish_webhook(delivery.job.clone()).await.is_ok() {
                            delivery.ack();
                            // Not a hot loop over a queue full of retries.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                        let Ok(p) = waiting.clone().acquire_owned().await else {
                            break;
                        };
                        p
                    }
                }
            } else {
                let Ok(p) = fresh.clone().acquire_owned().await else {
                    break;
                };
                p
            };
            let (me, sending, stop) = (me.clone(), sending.clone(), stop_rx.clone());
            let span = tracing::info_span!(
                "webhook",
                trace_id = %delivery.job.trace_id,
                challenge_id = %delivery.job.challenge_id,
                tenant = %delivery.job.tenant_id,
            );
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    me.handle(delivery, &sending, stop).await;
                    drop(permit);
                },
                span,
            ));
        }
        let _ = stop_tx.send(true);
        let _ = fresh.acquire_many(fresh_limit as u32).await;
        let _ = waiting.acquire_many(waiting_limit as u32).await;
    }

    fn tenant_slots(&self, tenant: &TenantId) -> Arc<TenantSlots> {
        if let Some(s) = self.per_tenant.get(tenant) {
            return s.clone();
        }
        let slots = self.config.per_tenant_concurrency.max(1);
        // Tenants are few; a bound keeps garbage tenant ids from growing it.
        if self.per_tenant.len() >= 100_000 {
            self.per_tenant
                .retain(|_, s| s.sending.available_permits() < slots);
        }
        self.per_tenant
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(TenantSlots {
                    sending: Arc::new(Semaphore::new(slots)),
                    waiting: Default::default(),
                })
            })
            .clone()
    }

    async fn handle(
        &self,
        delivery: WebhookDelivery,
        sending: &Semaphore,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut job = delivery.job.clone();
        // A job from the queue is input like any other.
        let horizon = now_ms()
            .saturating_add(self.config.max_backoff.as_millis() as i64)
            .saturating_add(3_600_000);
        if job.not_before > horizon {
            tracing::warn!(
                not_before = job.not_before,
                "implausible webhook retry time; dropped"
            );
            metrics::outcome("dropped");
            delivery.ack();
            return;
        }
        let wait = job.not_before.saturating_sub(now_ms());
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                // Shutting down: not acknowledged, so delivered again later.
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let endpoint = match self.endpoints.get(&job.tenant_id).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                // Deleted since the verdict: nobody to tell.
                metrics::outcome("dropped");
                delivery.ack();
                return;
            }
            Err(e) => {
                job.attempt = job.attempt.saturating_add(1);
                self.retry_or_give_up(delivery, job, format!("endpoint unreadable: {e}"), None)
                    .await;
                return;
            }
        };
        let challenge = match self.storage.get_challenge(&job.challenge_id).await {
            Ok(Some(c)) if c.tenant_id == job.tenant_id => c,
            Ok(_) => {
                tracing::debug!("webhook for a challenge that is gone; dropped");
                metrics::outcome("dropped");
                delivery.ack();
                return;
            }
            Err(e) => {
                job.attempt = job.attempt.saturating_add(1);
                self.retry_or_give_up(delivery, job, format!("challenge unreadable: {e}"), None)
                    .await;
                return;
            }
        };
        let Some(body) = notice(&challenge, &job.delivery_id) else {
            tracing::debug!("webhook for a challenge with no announced verdict; dropped");
            metrics::outcome("dropped");
            delivery.ack();
            return;
        };
        let url = match EndpointUrl::parse(&endpoint.url) {
            Ok(u) => u,
            Err(e) => {
                self.give_up(delivery, &job, format!("endpoint URL refused: {e}"))
                    .await;
                return;
            }
        };
        // This tenant's share of requests in flight. A job waits for one
        // while few of its tenant's jobs do; past that (a slow or dead
        // endpoint) it goes back to the queue for a moment, so that one
        // tenant's jobs cannot fill everything taken from the queue.
        let slots = self.tenant_slots(&job.tenant_id);
        let _tenant_slot = match slots.sending.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let bound = self.config.per_tenant_concurrency.max(1) * WAITING_PER_SLOT;
                if slots.waiting.fetch_add(1, Ordering::SeqCst) >= bound {
                    slots.waiting.fetch_sub(1, Ordering::SeqCst);
                    let mut later = job.clone();
                    later.not_before = now_ms().saturating_add(DEFER.as_millis() as i64);
                    if self.queue.publish_webhook(later).await.is_ok() {
                        metrics::outcome("deferred");
                        delivery.ack();
                        return;
                    }
                    slots.waiting.fetch_add(1, Ordering::SeqCst);
                }
                let p = slots.sending.clone().acquire_owned().await;
                slots.waiting.fetch_sub(1, Ordering::SeqCst);
                let Ok(p) = p else {
                    return;
                };
                p
            }
        };
        let Ok(_slot) = sending.acquire().await else {
            return;
        };
        let secrets = endpoint.signing_secrets(now_ms(), self.config.seal_key.as_deref());
        if secrets.is_empty() {
            // Never an unsigned request: the receiver could not tell it
            // from a forgery.
            self.give_up(
                delivery,
                &job,
                "no live signing secret could be read (sealed with a key this process lacks? see webhook.seal_key_file)".into(),
            )
            .await;
            return;
        }
        match self
            .sender
            .post(&url, &job.delivery_id, &secrets, body)
            .await
        {
            Attempt::Delivered { status } => {
                metrics::outcome("delivered");
                ::metrics::histogram!(metrics::DELIVERY_SECONDS)
                    .record((now_ms() - job.enqueued_at).max(0) as f64 / 1000.0);
                self.record(
                    &job,
                    AuditAction::WebhookDelivered,
                    format!("receiver answered {status} (attempt {})", job.attempt + 1),
                );
                if job.redelivery {
                    if let Err(e) = self
                        .storage
                        .delete_dead_delivery(&job.tenant_id, &job.delivery_id)
                        .await
                    {
                        tracing::warn!(error = %e, "redelivered, but its dead delivery stays listed");
                    }
                }
                delivery.ack();
            }
            Attempt::Refused { reason } => {
                metrics::outcome("refused_address");
                self.give_up(delivery, &job, reason).await;
            }
            Attempt::Retry { reason, after } => {
                job.attempt = job.attempt.saturating_add(1);
                self.retry_or_give_up(delivery, job, reason, after).await;
            }
        }
    }

    /// Hands the job back to the queue for its next attempt, or gives it up
    /// after the last one. `job.attempt` counts the attempts made, this one
    /// included.
    async fn retry_or_give_up(
        &self,
        delivery: WebhookDelivery,
        mut job: WebhookJob,
        reason: String,
        after: Option<Duration>,
    ) {
        if job.attempt >= self.config.max_attempts {
            let why = format!("gave up after {} attempts: {reason}", job.attempt);
            self.give_up(delivery, &job, why).await;
            return;
        }
        metrics::outcome("retry");
        tracing::debug!(%reason, attempt = job.attempt, "webhook attempt failed; retrying");
        let delay = retry_delay(&self.config, job.attempt, after);
        job.not_before = now_ms().saturating_add(delay.as_millis() as i64);
        if let Err(e) = self.queue.publish_webhook(job.clone()).await {
            // The queue cannot take it now: wait here, then try once more.
            tracing::debug!(error = %e, "webhook retry kept in process");
            tokio::time::sleep(delay.max(Duration::from_millis(100))).await;
            if let Err(e) = self.queue.publish_webhook(job.clone()).await {
                self.give_up(delivery, &job, format!("retry not queued: {e}"))
                    .await;
                return;
            }
        }
        delivery.ack();
    }

    /// Keeps the delivery for the tenant to see and redeliver. If the store
    /// cannot take it now, the job goes back to the queue to be given up
    /// again later; acknowledged either way, so that one stuck job cannot
    /// hold a Kafka partition's offsets.
    async fn give_up(&self, delivery: WebhookDelivery, job: &WebhookJob, reason: String) {
        metrics::outcome("dead_lettered");
        tracing::warn!(%reason, delivery_id = %job.delivery_id, "webhook delivery given up");
        let dead = DeadDelivery {
            tenant_id: job.tenant_id.clone(),
            delivery_id: job.delivery_id.clone(),
            challenge_id: job.challenge_id.to_string(),
            attempts: job.attempt,
            last_error: reason.clone(),
            failed_at: now_ms(),
        };
        self.record(job, AuditAction::WebhookFailed, reason);
        if let Err(e) = self.storage.put_dead_delivery(&dead).await {
            let mut later = job.clone();
            later.not_before =
                now_ms().saturating_add(self.config.base_backoff.as_millis() as i64 * 5);
            match self.queue.publish_webhook(later).await {
                Ok(()) => {
                    tracing::warn!(error = %e, "dead webhook delivery not stored yet; queued again")
                }
                Err(q) => {
                    tracing::error!(error = %e, queue_error = %q, delivery_id = %job.delivery_id, "webhook delivery lost: neither stored as dead nor queued again")
                }
            }
        }
        delivery.ack();
    }

    fn record(&self, job: &WebhookJob, action: AuditAction, detail: String) {
        self.audit.record(
            AuditEntry::new(now_ms(), job.tenant_id.as_str(), action)
                .challenge(&job.challenge_id)
                .actor("webhook")
                .detail(detail),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sender::read_answer;
    use sesame_core::model::{DenyReason, Resolution};

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let c = WebhookConfig {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
            ..Default::default()
        };
        for attempt in 1..40 {
            let cap = (100u64 << (attempt - 1).min(16)).min(1_000);
            for _ in 0..50 {
                let d = retry_delay(&c, attempt, None).as_millis() as u64;
                assert!(d <= cap, "attempt {attempt}: {d} > {cap}");
            }
        }
        // The receiver's Retry-After is honoured, but not past the cap.
        assert_eq!(
            retry_delay(&c, 1, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert_eq!(
            retry_delay(&c, 1, Some(Duration::from_secs(3_600))),
            Duration::from_millis(1_000)
        );
    }

    #[test]
    fn only_2xx_is_a_delivery() {
        for s in [200, 201, 204, 299] {
            assert_eq!(read_answer(s, None), Attempt::Delivered { status: s });
        }
        for s in [0, 100, 199, 301, 400, 401, 404, 410, 429, 500, 503, 999] {
            assert!(matches!(
                read_answer(s, Some("x")),
                Attempt::Retry { after: None, .. }
            ));
        }
        assert!(matches!(
            read_answer(302, None),
            Attempt::Retry { reason, .. } if reason.contains("redirects are not followed")
        ));
        assert_eq!(
            read_answer(503, Some(" 7 ")),
            Attempt::Retry {
                reason: "receiver answered 503".into(),
                after: Some(Duration::from_secs(7))
            }
        );
    }

    fn challenge(resolution: Option<Resolution>) -> Challenge {
        Challenge {
            id: sesame_core::ChallengeId::generate(),
            tenant_id: TenantId::parse("bank").unwrap_or_else(|e| panic!("{e}")),
            user_id: "alice".into(),
            context: sesame_core::model::ChallengeContext {
                client_name: "Bank".into(),
                action: sesame_core::model::Action::Login,
                transaction: None,
                ip_address: String::new(),
                location: String::new(),
                binding_message: String::new(),
            },
            context_hash: [0; 32],
            number_match: sesame_core::model::NumberMatch {
                mode: sesame_core::model::NumberMatchMode::None,
                code: String::new(),
                choices: vec![],
            },
            created_at: 1,
            expires_at: 1_000,
            idempotency_key: None,
            devices: vec![],
            resolution,
        }
    }

    #[test]
    fn only_final_written_verdicts_have_a_body() {
        assert_eq!(notice(&challenge(None), "vd_x"), None);
        let denied = challenge(Some(Resolution {
            outcome: Outcome::Denied(DenyReason::NumberMismatch),
            device_id: None,
            at: 500,
        }));
        let body = notice(&denied, "vd_x").unwrap_or_default();
        let n: VerdictNotice = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                n.status.as_str(),
                n.deny_reason.as_str(),
                n.decided_at_unix_ms
            ),
            ("denied", "number_mismatch", 500)
        );
        // The same challenge gives the same bytes every time.
        assert_eq!(notice(&denied, "vd_x"), Some(body));
    }
}
