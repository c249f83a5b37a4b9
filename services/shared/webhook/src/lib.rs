//! Signed verdict webhooks.
//!
//! A tenant registers one HTTPS endpoint (`sesame.tenant.v1.WebhookService`)
//! and gets a secret, shown once. Then:
//!
//! 1. whoever commits a verdict (the `verifier` for an answer, the
//!    `challenge` role for a cancel) calls [`Notifier::verdict`], which
//!    enqueues a [`WebhookJob`] if the tenant has an endpoint (looked up
//!    through a short-lived cache, so a login costs no extra read);
//! 2. a [`Worker`] in each `challenge` process takes jobs from the queue
//!    (Kafka: a consumer group, so each job goes to one replica), reads the
//!    final challenge and the endpoint, signs the body with every live
//!    secret (Standard Webhooks, see [`sesame_core::webhook`]) and POSTs it;
//! 3. a 2xx ends it; anything else is retried through the queue with
//!    full-jitter exponential backoff (or the receiver's `Retry-After`), at
//!    most [`WebhookConfig::max_attempts`] times, then kept as a dead
//!    delivery the tenant can list and redeliver.
//!
//! The body names the challenge's final state only, so every attempt of a
//! delivery carries the same bytes and the same `webhook-id`, which is the
//! receiver's idempotency key: at least once, deduplicated by the receiver.
//!
//! Requests go only to `https` URLs whose address is public, unless the
//! operator allow-lists a range ([`sender`]); redirects are not followed.

pub mod metrics;
pub mod sender;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use sesame_core::time::now_ms;
use sesame_core::webhook::{delivery_id, AddressPolicy, DeadDelivery, WebhookEndpoint};
use sesame_core::{ChallengeId, TenantId};
use sesame_queue::{Queue, WebhookJob};
use sesame_storage::{Storage, StorageError};

pub use sender::{Attempt, Sender};
pub use worker::Worker;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Tries per delivery, the first included.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt (with full jitter).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// One request's limit (connect, TLS, answer).
    pub timeout: Duration,
    /// Requests in flight at once, all tenants.
    pub concurrency: usize,
    /// Requests in flight at once to one tenant's endpoint, so one slow or
    /// dead receiver cannot hold every slot.
    pub per_tenant_concurrency: usize,
    /// Retries taken from the queue that may wait for their time at once.
    pub max_waiting_retries: usize,
    /// Non-public ranges requests may go to (a loopback test receiver, an
    /// internal gateway); empty by default.
    pub allow: AddressPolicy,
    /// Extra trusted CA certificates (PEM), on top of the public roots.
    pub extra_ca_pem: Option<String>,
    /// How long a tenant's endpoint is cached (a change takes this long to
    /// reach other processes).
    pub cache_ttl: Duration,
    /// Seals new secrets at rest and opens sealed ones; none: secrets are
    /// stored as they are shown.
    pub seal_key: Option<Arc<sesame_core::webhook::SealKey>>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            max_attempts: 10,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            concurrency: 256,
            per_tenant_concurrency: 16,
            max_waiting_retries: 10_000,
            allow: AddressPolicy::default(),
            extra_ca_pem: None,
            cache_ttl: Duration::from_secs(5),
            seal_key: None,
        }
    }
}

/// Most tenants' endpoints kept in one cache; past it the cache starts over.
const CACHE_CAPACITY: usize = 100_000;

/// Tenants' endpoints, read through storage at most once per `ttl`.
pub struct Endpoints {
    storage: Arc<dyn Storage>,
    ttl: Duration,
    cache: DashMap<TenantId, (Instant, Option<Arc<WebhookEndpoint>>)>,
}

impl Endpoints {
    pub fn new(storage: Arc<dyn Storage>, ttl: Duration) -> Arc<Endpoints> {
        Arc::new(Endpoints {
            storage,
            ttl,
            cache: DashMap::new(),
        })
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Arc<WebhookEndpoint>>, StorageError> {
        if let Some(e) = self.cache.get(tenant) {
            if e.0.elapsed() < self.ttl {
                return Ok(e.1.clone());
            }
        }
        let endpoint = self.storage.get_webhook(tenant).await?.map(Arc::new);
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache.clear();
        }
        self.cache
            .insert(tenant.clone(), (Instant::now(), endpoint.clone()));
        Ok(endpoint)
    }

    /// Forgets the tenant's entry (its endpoint changed in this process).
    pub fn invalidate(&self, tenant: &TenantId) {
        self.cache.remove(tenant);
    }
}

/// Turns committed verdicts into webhook jobs. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<NotifierInner>>,
}

struct NotifierInner {
    queue: Arc<dyn Queue>,
    storage: Arc<dyn Storage>,
    endpoints: Arc<Endpoints>,
}

impl Notifier {
    pub fn new(
        queue: Arc<dyn Queue>,
        storage: Arc<dyn Storage>,
        endpoints: Arc<Endpoints>,
    ) -> Notifier {
        Notifier {
            inner: Some(Arc::new(NotifierInner {
                queue,
                storage,
                endpoints,
            })),
        }
    }

    /// Sends nothing (unit tests of the roles).
    pub fn disabled() -> Notifier {
        Notifier { inner: None }
    }

    /// Called after a verdict is committed: enqueues its delivery if the
    /// tenant has an endpoint. Never fails the caller: a job the queue
    /// refuses is kept as a dead delivery (the tenant sees it and can
    /// redeliver), and an endpoint that cannot be read is logged.
    pub async fn verdict(&self, tenant: &TenantId, challenge: &ChallengeId, trace_id: &str) {
        let Some(n) = &self.inner else {
            return;
        };
        match n.endpoints.get(tenant).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, %tenant, challenge_id = %challenge, "webhook endpoint unreadable; verdict not announced");
                return;
            }
        }
        let job = WebhookJob {
            tenant_id: tenant.clone(),
            challenge_id: challenge.clone(),
            delivery_id: delivery_id(challenge.as_str()),
            attempt: 0,
            not_before: 0,
            enqueued_at: now_ms(),
            trace_id: trace_id.to_owned(),
            redelivery: false,
        };
        if let Err(e) = n.queue.publish_webhook(job.clone()).await {
            ::metrics::counter!(metrics::ENQUEUE_ERRORS).increment(1);
            tracing::warn!(error = %e, %tenant, challenge_id = %challenge, "webhook job not queued; kept as a dead delivery");
            let dead = DeadDelivery {
                tenant_id: tenant.clone(),
                delivery_id: job.delivery_id,
                challenge_id: challenge.to_string(),
                attempts: 0,
                last_error: format!("not queued: {e}"),
                failed_at: now_ms(),
            };
            if let Err(e) = n.storage.put_dead_delivery(&dead).await {
                tracing::error!(error = %e, %tenant, challenge_id = %challenge, "webhook delivery lost: neither queued nor kept");
            }
        }
    }
}
