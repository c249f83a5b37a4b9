//! Sesame's domain model, with no I/O: identifiers, the challenge state
//! machine, the canonical signing payloads of the protocol, device-key
//! verification and number matching. Every role and backend builds on it.

pub mod audit;
pub mod canonical;
pub mod crypto;
pub mod ids;
pub mod limits;
pub mod model;
pub mod number_match;
pub mod payload;
pub mod push_apps;
pub mod time;
pub mod validate;
pub mod webhook;

pub use ids::{ChallengeId, DeviceId, TenantId};
pub use model::*;
