//! Limits: exact where security depends on them, cheap everywhere else.
//!
//! - [`rules`]: the pure decision over a user's [`UserGuardState`]: one
//!   pending challenge, at most N prompts in any trailing window (an exact
//!   sliding log — GCRA and fixed windows let about twice that through at
//!   window edges), escalation after repeated denials, and the mute after
//!   "this wasn't me".
//! - [`UserGuard`]: applies the rules through the storage trait with a
//!   compare-and-set, so every replica enforces the same limit, with a local
//!   cache of refusals so that a refused caller costs no storage call.
//!
//! [`UserGuardState`]: sesame_core::model::UserGuardState

pub mod bucket;
pub mod descriptors;
pub mod quota;
pub mod rules;
mod service;
mod user_guard;

pub use descriptors::{DescriptorDecision, DescriptorLimit, DescriptorLimiter, LimitUnit};
pub use quota::{QuotaRefusal, TenantLimiter, TenantQuota};
pub use rules::{Escalation, GuardPolicy, Refusal};
pub use service::RateLimitApi;
pub use user_guard::{Admission, GuardError, UserGuard};
