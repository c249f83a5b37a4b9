//! How the push-bombing guard's refusals read to the tenant.

use sesame_core::time::UnixMillis;
use sesame_grpc::ApiError;
use sesame_ratelimit::{GuardError, Refusal};

/// A guard refusal as `RESOURCE_EXHAUSTED`, with when to retry and why, and
/// a request not to retry automatically: a person has to act.
pub fn refusal(r: &Refusal, now: UnixMillis) -> ApiError {
    let left_ms = (r.retry_at() - now).max(0);
    let secs = left_ms / 1000;
    let message = match r {
        Refusal::Pending { challenge_id, .. } => format!(
            "the user already has a pending challenge ({challenge_id}); wait for its verdict, cancel it, or set options.replace_pending"
        ),
        Refusal::TooManyPrompts { .. } => format!(
            "the user got the maximum number of prompts in the current window; the next is possible in {secs} s"
        ),
        Refusal::Muted { .. } => format!(
            "the user reported a sign-in request as fraud; prompts are muted for {secs} s more"
        ),
        Refusal::Locked { .. } => {
            format!("the user denied too many requests; prompts are locked for {secs} s more")
        }
    };
    ApiError::Limited {
        message,
        reason: r.reason(),
        retry_after: std::time::Duration::from_millis(left_ms as u64),
        do_not_retry: true,
    }
}

pub fn guard_error(e: GuardError) -> ApiError {
    match e {
        GuardError::Refused(r) => refusal(&r, sesame_core::time::now_ms()),
        GuardError::Storage(s) => s.into(),
        GuardError::Contention => ApiError::Unavailable(
            "too many concurrent requests for this user; retry shortly".into(),
        ),
    }
}
