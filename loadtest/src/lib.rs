//! `sesame-loadtest`: drives whole logins against any Sesame deployment.
//!
//! - **Population**: enrolls `users` simulated phones (P-256 keys, one
//!   user each) and keeps each phone's push inbox open on the built-in
//!   simulator.
//! - **Open loop**: logins start on a fixed schedule (`rate` per second),
//!   whatever the server's latency; each login's latency is measured from
//!   its *scheduled* start, so a slow server cannot hide behind a slower
//!   client (no coordinated omission).
//! - **A login**: `CreateChallenge` -> the push reaches the phone -> think
//!   time -> `GetChallengeDetails` (signed) -> signed approval with the typed
//!   number -> `GetChallenge` reads `APPROVED`. Latency excludes the think time.
//! - **Scenarios**: `steady`, `surge` (baseline, N x for a while, baseline),
//!   `ramp` (steps up until p99 passes a target: the capacity).
//! - **Results**: per-second series and HDR percentiles as JSON, and an SVG
//!   chart (offered / accepted / refused per second, p50 / p99 over time,
//!   server memory).

pub mod population;
pub mod report;
pub mod run;

pub use population::{Phone, Population};
pub use report::{Report, Second};
pub use run::{Engine, Options, Phase};

/// Adds the tenant's API key to a request.
pub fn authed<T>(api_key: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(message);
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {api_key}")
        .parse()
        .map_err(|_| anyhow::anyhow!("API key contains characters not allowed in metadata"))?;
    r.metadata_mut().insert("authorization", value);
    Ok(r)
}
