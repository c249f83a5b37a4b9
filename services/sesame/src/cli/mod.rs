//! Client commands: a tenant's side (`enroll`, `challenge`), a phone's side
//! (`device`), both at once (`demo`), and the operator's (`tenant`, `apikey`).

pub mod admin;
pub mod audit;
pub mod demo;
pub mod device;
pub mod tenant;

use std::path::Path;

use anyhow::Context;
use tonic::metadata::MetadataValue;
use tonic::Request;

use crate::server::DEV_KEY_FILE;

/// The tenant API key: `--api-key` / `SESAME_API_KEY`, else the development
/// tenant's key that `sesame serve` wrote to `<data_dir>/dev-tenant.key`.
pub fn resolve_api_key(explicit: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    resolve_key(explicit, data_dir, DEV_KEY_FILE, "API key", "--api-key")
}

/// A key given on the command line (or its variable), else the one
/// `sesame serve` wrote to `<data_dir>/<file>`.
pub fn resolve_key(
    explicit: Option<&str>,
    data_dir: &Path,
    file: &str,
    what: &str,
    flag: &str,
) -> anyhow::Result<String> {
    if let Some(k) = explicit.filter(|k| !k.is_empty()) {
        return Ok(k.trim().to_owned());
    }
    let path = data_dir.join(file);
    let key = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no {what} given and {} cannot be read; pass {flag} or run this in the directory where `sesame serve` runs",
            path.display()
        )
    })?;
    Ok(key.trim().to_owned())
}

/// A request carrying the tenant credential.
pub fn authed<T>(api_key: &str, message: T) -> anyhow::Result<Request<T>> {
    let mut r = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {api_key}")
        .parse()
        .context("API key contains characters not allowed in metadata")?;
    r.metadata_mut().insert("authorization", value);
    Ok(r)
}

/// A short random suffix for demo user names.
pub fn random_suffix() -> String {
    let b = sesame_core::ids::random_bytes::<4>();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A push token for a simulated phone: 128 random bits, so that nobody can
/// guess it and read that phone's pushes from the simulator's inbox.
pub fn simulated_push_token() -> String {
    let b = sesame_core::ids::random_bytes::<16>();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("sim-{hex}")
}
