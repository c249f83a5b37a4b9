//! Wall-clock time as Unix milliseconds, the unit used on the wire and in storage.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// The current wall-clock time in Unix milliseconds.
pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Full-jitter exponential backoff before retry number `attempt` (1-based):
/// uniform in `0..=min(base * 2^(attempt-1), max)`, so retries of many
/// failures spread out instead of arriving together.
pub fn full_jitter_backoff(
    base: std::time::Duration,
    max: std::time::Duration,
    attempt: u32,
) -> std::time::Duration {
    use rand::Rng;
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(max).as_millis().max(1) as u64;
    std::time::Duration::from_millis(rand::thread_rng().gen_range(0..=cap))
}
