//! The `challenge` role: the API identity servers call.
//!
//! - [`EnrollmentApi`]: begin enrollment, list and revoke devices;
//! - [`ChallengeApi`]: create, get, watch (server stream) and cancel challenges;
//! - [`WatchHub`]: wakes watch streams when an event says a challenge changed;
//! - [`TenantAuth`]: API-key authentication, keys stored as SHA-256 hashes;
//! - [`AuditApi`]: a tenant's own audit trail;
//! - [`WebhookApi`]: a tenant's verdict webhook (endpoint, secrets, dead
//!   deliveries); deliveries are `sesame_webhook`'s, whose worker this role runs;
//! - [`TenantAdminApi`]: the operator's API for tenants and their keys, and
//!   the whole audit trail for `sesame audit verify`.
//!
//! Both services are thin adapters from proto to the domain; all state lives
//! behind the `Storage` and `Queue` traits so any number of replicas can run.

pub mod admin;
mod audit;
mod challenges;
mod enrollment;
mod hub;
mod limits;
pub mod metrics;
mod shutdown;
mod webhooks;

use std::sync::Arc;

pub use admin::TenantAdminApi;
pub use audit::{audit_query, AuditApi};
pub use challenges::{create_args, ChallengeApi, CreateArgs};
pub use enrollment::{enrollment_uri, EnrollmentApi};
pub use hub::WatchHub;
pub use limits::{guard_error, refusal};
pub use sesame_grpc::{apikey, TenantAuth};
pub use shutdown::Shutdown;
pub use webhooks::WebhookApi;

use sesame_queue::{Event, EventError, Queue};
use sesame_storage::Storage;

/// Settings of the challenge role.
#[derive(Debug, Clone)]
pub struct ChallengeConfig {
    /// Where phones reach the device API; goes into enrollment URIs.
    pub public_device_url: String,
    /// Most active devices per user.
    pub max_devices_per_user: usize,
}

impl Default for ChallengeConfig {
    fn default() -> Self {
        ChallengeConfig {
            public_device_url: "http://127.0.0.1:50051".into(),
            max_devices_per_user: sesame_core::limits::MAX_DEVICES_PER_USER,
        }
    }
}

/// Applies events from other roles: wakes watch streams on verdicts and
/// disables push for dead tokens (this role owns storage). Runs until the
/// event stream closes.
pub async fn run_event_loop(queue: Arc<dyn Queue>, storage: Arc<dyn Storage>, hub: WatchHub) {
    let mut events = loop {
        match queue.subscribe_events().await {
            Ok(s) => break s,
            Err(e) => {
                // Watchers still re-read on their own meanwhile.
                tracing::warn!(error = %e, "cannot subscribe to events; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        match events.next().await {
            Ok(Event::Verdict { challenge_id, .. }) => hub.notify(&challenge_id),
            Ok(Event::PushTokenDead {
                device_id,
                push_token,
            }) => match storage.disable_push(&device_id, &push_token).await {
                Ok(changed) => {
                    tracing::info!(%device_id, changed, "push disabled for a dead token")
                }
                Err(e) => tracing::warn!(error = %e, %device_id, "cannot disable a dead token"),
            },
            Ok(Event::Audit(a)) => tracing::warn!(
                target: "sesame::audit",
                tenant = %a.tenant_id,
                challenge_id = ?a.challenge_id.as_ref().map(|c| c.to_string()),
                kind = ?a.kind,
                "security event"
            ),
            // Missed events: every watcher re-reads its challenge.
            Err(EventError::Lagged(n)) => {
                if n > 0 {
                    tracing::warn!(
                        missed = n,
                        "event subscriber lagged; refreshing all watchers"
                    );
                } else {
                    // A queue backend hiccup (broker away): maybe nothing
                    // was missed, but look again to be sure.
                    tracing::debug!("event stream interrupted; refreshing all watchers");
                }
                hub.notify_all();
            }
            Err(EventError::Closed) => return,
        }
    }
}

/// Keeps the per-tenant quota shares in step with the other instances:
/// reports this instance's demand and reads the others' once a second.
pub async fn run_quota_sync(quotas: Arc<sesame_ratelimit::TenantLimiter>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = quotas.sync(sesame_core::time::now_ms()).await {
            tracing::warn!(error = %e, "quota sync failed; keeping the last shares");
        }
    }
}
