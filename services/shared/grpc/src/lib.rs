//! What every gRPC role shares: conversions between the wire types of
//! `sesame-proto` and the domain types of `sesame-core` (validating enums on
//! the way in), and [`ApiError`], the single place where failures become a
//! `tonic::Status` with a message a person can act on; and tenant
//! authentication by API key ([`TenantAuth`]), shared by every tenant-facing role.

pub mod admission;
pub mod apikey;
pub mod auth;
pub mod convert;
mod error;
pub mod metrics;
pub mod trace;

pub use auth::TenantAuth;
pub use error::ApiError;
