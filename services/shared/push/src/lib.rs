//! The push-provider boundary: what a dispatcher calls to wake a phone.
//!
//! Real APNs and FCM clients plug in behind [`PushProvider`]; the built-in
//! [`SimulatorProvider`] delivers into in-process inboxes so that the whole
//! flow runs with no Apple or Google account.

use std::time::Duration;

use async_trait::async_trait;
use sesame_core::time::UnixMillis;
use sesame_queue::PushJob;

mod simulator;
pub use simulator::{Accepted, SimulatedPush, SimulatorProvider, DEAD_TOKEN_PREFIX};

/// The generic, localisable alert: no personal data goes through Apple or Google.
pub const ALERT_TITLE: &str = "Sign-in request";
pub const ALERT_BODY: &str = "Open to review and approve or deny.";

/// What a provider made of one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Accepted by the provider.
    Delivered,
    /// The token is no longer valid (APNs 410 `Unregistered`, FCM
    /// `UNREGISTERED`): disable push for that device only.
    DeadToken,
    /// Transient failure: try again after `after` (from `Retry-After`) or a backoff.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Permanent failure for this message (bad request, configuration): do not retry.
    Failed { reason: String },
}

#[async_trait]
pub trait PushProvider: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn send(&self, job: &PushJob, now: UnixMillis) -> PushOutcome;
}
