//! Faithful local simulators of Apple's APNs and Google's FCM HTTP v1, for
//! tests, the load tester and demos: the real clients in `sesame-push`
//! talk to them exactly as to Apple and Google — TLS, HTTP/2, provider
//! tokens and OAuth, the same headers, limits and error bodies.
//!
//! - [`apns`]: `POST /3/device/<token>` over TLS with ALPN `h2` only,
//!   validating method, path, token, `apns-id`, topic, push type, priority,
//!   expiration, collapse id, payload size, and the ES256 provider token
//!   (signature, `kid`/team, `iat` age, the 20-minute refresh rule per
//!   connection), answering with Apple's status codes and reasons.
//! - [`fcm`]: the OAuth2 token endpoint (RS256 JWT-bearer assertions checked
//!   against the service account's key) and `messages:send` with Google's
//!   JSON error envelope and `FcmError` codes.
//! - [`control::SimControl`]: device states (good, unregistered, bad token,
//!   ...), faults (latency, 429/500/503 with `Retry-After`, connection reset,
//!   GOAWAY), a clock offset, counters and the last requests received.
//!   Accepted pushes land in a [`sesame_push::SimulatorProvider`] inbox
//!   where simulated phones read them.

pub mod apns;
pub mod bundle;
pub mod control;
pub mod credentials;
pub mod fcm;
mod server;
pub mod tls;
pub mod webhook;

pub use control::{DeviceState, Fault, FaultRule, SimControl};
pub use server::Running;
