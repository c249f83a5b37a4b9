//! The queue boundary between roles: push jobs from the `challenge` role to
//! dispatchers, and events (verdicts, dead push tokens) back to the roles
//! that serve watch streams and own storage.
//!
//! [`MemQueue`] is the in-process, bounded default; `KafkaQueue` (feature
//! `kafka`) fans the same traffic out over Kafka topics to any number of
//! processes. That is why a push job carries everything a dispatcher needs
//! to send (a dispatcher has no database) and why delivery is acknowledged
//! explicitly (Kafka offsets are committed only after the outcome is known).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sesame_core::model::{ChallengeStatus, Platform};
use sesame_core::time::UnixMillis;
use sesame_core::{ChallengeId, DeviceId, TenantId};

#[cfg(feature = "kafka")]
pub mod kafka;
mod mem;
pub mod metrics;
#[cfg(feature = "kafka")]
pub use kafka::{KafkaConfig, KafkaQueue};
pub use mem::{MemQueue, MemQueueConfig};

/// One push to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    pub tenant_id: TenantId,
    /// The tenant's id of the user (for the audit trail); empty in jobs
    /// queued before it was carried.
    #[serde(default)]
    pub user_id: String,
    pub device_id: DeviceId,
    pub challenge_id: ChallengeId,
    pub platform: Platform,
    pub push_token: String,
    /// The tenant's push app (credentials) to send through; empty with the
    /// built-in simulator.
    #[serde(default)]
    pub push_app: String,
    /// The challenge's expiry: a job still queued after it is dropped, not sent.
    pub expires_at: UnixMillis,
    pub enqueued_at: UnixMillis,
    /// 0 for the first try; retries count up.
    pub attempt: u32,
    /// The trace id of the call that created the challenge (empty if none),
    /// so the push can be followed in the dispatcher's logs.
    #[serde(default)]
    pub trace_id: String,
    /// A retry is not sent before this time (0: at once).
    #[serde(default)]
    pub not_before: UnixMillis,
}

impl PushJob {
    /// The wire form (JSON): the same in every backend, and readable with
    /// standard Kafka tools.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<PushJob, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// One verdict to deliver to a tenant's webhook. It names the challenge
/// only: the body is built from the stored, final challenge when sent (the
/// same bytes on every attempt), and the endpoint and its secrets are read
/// then too, so a job in the queue holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookJob {
    pub tenant_id: TenantId,
    pub challenge_id: ChallengeId,
    /// `webhook-id`: the same on every attempt and redelivery.
    pub delivery_id: String,
    /// 0 for the first try; retries count up.
    pub attempt: u32,
    /// Not sent before this time (0: at once).
    #[serde(default)]
    pub not_before: UnixMillis,
    pub enqueued_at: UnixMillis,
    #[serde(default)]
    pub trace_id: String,
    /// Asked for by the tenant (`RedeliverWebhook`): its dead delivery is
    /// removed once this one succeeds.
    #[serde(default)]
    pub redelivery: bool,
}

impl WebhookJob {
    pub fn encode(&self) -> Vec<u8> {
        // Plain strings and integers: cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<WebhookJob, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// Events fanned out to every interested replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A challenge reached a final state.
    Verdict {
        tenant_id: TenantId,
        challenge_id: ChallengeId,
        status: ChallengeStatusWire,
    },
    /// The provider said this token is dead: disable push for the device
    /// (if it still has this token).
    PushTokenDead {
        device_id: DeviceId,
        push_token: String,
    },
    /// A security-relevant act a tenant must be able to see. Today these
    /// go to every subscriber (and the `challenge` role's log); the
    /// tamper-evident audit log and tenant webhooks will consume them.
    Audit(AuditEvent),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub tenant_id: TenantId,
    pub user_id: String,
    pub device_id: Option<DeviceId>,
    pub challenge_id: Option<ChallengeId>,
    pub kind: AuditKind,
    pub at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditKind {
    /// "Deny: this wasn't me": the user's prompts are muted until then.
    FraudReported { muted_until: UnixMillis },
    /// Too many denials: prompts locked until then.
    PromptsLocked { locked_until: UnixMillis },
    /// Repeated denials: number matching is now forced for the user.
    NumberMatchForced,
}

/// Serializable mirror of [`ChallengeStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeStatusWire {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
}

impl From<ChallengeStatus> for ChallengeStatusWire {
    fn from(s: ChallengeStatus) -> Self {
        match s {
            ChallengeStatus::Pending => ChallengeStatusWire::Pending,
            ChallengeStatus::Approved => ChallengeStatusWire::Approved,
            ChallengeStatus::Denied => ChallengeStatusWire::Denied,
            ChallengeStatus::Expired => ChallengeStatusWire::Expired,
            ChallengeStatus::Cancelled => ChallengeStatusWire::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The local queue is full: the caller should answer `UNAVAILABLE` now
    /// rather than wait.
    #[error("queue is full ({0})")]
    Full(&'static str),
    #[error("queue is closed")]
    Closed,
    /// The backend cannot take messages now (Kafka brokers down or too
    /// slow): retry later.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("queue backend error: {0}")]
    Backend(String),
}

/// Acknowledges one delivered push job (commits its offset in Kafka).
pub trait Acker: Send {
    fn ack(self: Box<Self>);
}

/// A job handed to a consumer, to be acknowledged once its outcome is known.
pub struct Delivery<T> {
    pub job: T,
    acker: Option<Box<dyn Acker>>,
}

/// A push job for a dispatcher.
pub type PushDelivery = Delivery<PushJob>;
/// A verdict for a webhook sender.
pub type WebhookDelivery = Delivery<WebhookJob>;

impl<T> Delivery<T> {
    pub fn new(job: T, acker: Option<Box<dyn Acker>>) -> Self {
        Delivery { job, acker }
    }

    pub fn ack(mut self) {
        if let Some(a) = self.acker.take() {
            a.ack();
        }
    }
}

#[async_trait]
pub trait PushConsumer: Send {
    /// The next job; `None` once the queue is closed.
    async fn next(&mut self) -> Option<PushDelivery>;
}

#[async_trait]
pub trait WebhookConsumer: Send {
    /// The next job; `None` once the queue is closed.
    async fn next(&mut self) -> Option<WebhookDelivery>;
}

#[async_trait]
pub trait EventSubscriber: Send {
    /// The next event. `Err(Lagged(n))` when `n` events were missed: the
    /// subscriber must re-read the state it derives from events.
    async fn next(&mut self) -> Result<Event, EventError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("subscriber lagged and missed {0} events")]
    Lagged(u64),
    #[error("event stream closed")]
    Closed,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Whether `n` more push jobs would be taken now: `Full` or
    /// `Unavailable` (a broker known to be down) otherwise. A hint checked
    /// before a challenge is stored, so overload is refused before anything
    /// is written.
    fn check_room_for_pushes(&self, n: usize) -> Result<(), QueueError>;

    /// Enqueues the jobs of one challenge and returns once they are durable
    /// in the backend (Kafka: acknowledged by all in-sync replicas). Fails
    /// fast with `Full` when the local queue has no room, and with
    /// `Unavailable` when the backend cannot take them in time; never waits
    /// unboundedly. On an error none, some or all jobs may still go out
    /// later: callers cancel the challenge, so a late push is harmless.
    async fn publish_pushes(&self, jobs: Vec<PushJob>) -> Result<(), QueueError>;

    /// Hands a job back for another try no earlier than `job.not_before`
    /// (Kafka: the retry topic, so a waiting retry blocks no fresh push).
    async fn publish_retry(&self, job: PushJob) -> Result<(), QueueError>;

    /// Parks a job that cannot be delivered (permanent failure, retries
    /// exhausted) with the reason, for operators to inspect.
    async fn publish_dead_letter(&self, job: &PushJob, reason: &str) -> Result<(), QueueError>;

    /// Enqueues a verdict for the tenant's webhook, or a retry of one (its
    /// `not_before` in the future; Kafka: the webhook retry topic), and
    /// returns once it is durable in the backend. Fails fast when full.
    async fn publish_webhook(&self, job: WebhookJob) -> Result<(), QueueError>;

    /// A consumer of webhook jobs; consumers share the jobs between them.
    async fn webhook_consumer(&self) -> Result<Box<dyn WebhookConsumer>, QueueError>;

    /// Publishes an event to every subscriber; never blocks.
    fn publish_event(&self, event: Event) -> Result<(), QueueError>;

    /// Copies stored audit records to where a SIEM reads them (Kafka: the
    /// audit topic, keyed by chain), returning once they are acknowledged.
    /// The in-process queue has no such reader: nothing to do.
    async fn publish_audit(
        &self,
        _records: &[sesame_core::audit::AuditRecord],
    ) -> Result<(), QueueError> {
        Ok(())
    }

    /// Whether the backend answers (for `/ready`).
    async fn health_check(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// A consumer of push jobs; consumers share the jobs between them.
    async fn push_consumer(&self) -> Result<Box<dyn PushConsumer>, QueueError>;

    /// A subscriber that sees every event published from now on.
    async fn subscribe_events(&self) -> Result<Box<dyn EventSubscriber>, QueueError>;

    /// Stops handing out jobs; consumers see `None` once the queue drains.
    fn close(&self);

    /// Sends what is still buffered locally (before the process exits).
    async fn flush(&self) {}
}
