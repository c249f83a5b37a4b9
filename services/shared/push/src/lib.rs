//! The push-provider boundary: what a dispatcher calls to wake a phone.
//!
//! - [`apns::ApnsClient`] and [`fcm::FcmClient`] are Sesame's own thin
//!   clients of Apple's HTTP/2 provider API and Google's FCM HTTP v1 API
//!   (why not the `a2`/`fcm` crates: see the README, "Push providers");
//! - [`apps::PushApps`] routes each job to its tenant's app (own APNs key or
//!   FCM project);
//! - [`SimulatorProvider`] delivers into in-process inboxes so that the
//!   whole flow runs with no Apple or Google account. The faithful network
//!   simulators of APNs and FCM live in the `sesame-push-sim` crate.

use std::time::Duration;

use async_trait::async_trait;
use sesame_core::time::UnixMillis;
use sesame_queue::PushJob;

pub mod apns;
pub mod apps;
pub mod fcm;
mod http;
pub mod jwt;
pub mod metrics;
pub mod payload;
mod simulator;
pub use http::{client_tls_config, parse_retry_after, TlsOptions};
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
    /// Permanent failure for this message (a request we built wrong): do not retry.
    Failed { reason: String },
    /// The tenant's push credentials or app settings are wrong (bad key,
    /// topic, project): no push of that app can go out until an operator
    /// fixes them. Parked like `Failed`, and counted apart so it alarms.
    Misconfigured { reason: String },
}

/// Why a push app's settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PushConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Key(String),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("cannot build the HTTP/2 client: {0}")]
    Http(String),
}

#[async_trait]
pub trait PushProvider: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The provider that `job` goes to (the `provider` metric label).
    fn provider_for(&self, _job: &PushJob) -> &'static str {
        self.name()
    }
    async fn send(&self, job: &PushJob, now: UnixMillis) -> PushOutcome;
}
