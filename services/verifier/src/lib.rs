//! The `verifier` role: the API the authenticator app calls.
//!
//! Every call is authenticated by the device key: enrollment by a proof of
//! possession over the one-time token, `Respond` by the signed canonical
//! answer, and the other calls by a [`DeviceAuth`](sesame_proto::device::v1::DeviceAuth)
//! signature whose nonce is accepted once ([`ReplayGuard`]). Verdicts are
//! written with an atomic compare-and-set (first valid answer wins) and
//! announced on the queue so every `challenge` replica's watch streams see them.

mod device_api;
pub mod metrics;
mod replay;

pub use device_api::DeviceApi;
pub use replay::ReplayGuard;
