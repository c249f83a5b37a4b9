//! The dispatcher's metric names, all here.

/// `sesame_pushes_total{provider, outcome}`: delivered, dead_token, retry,
/// failed, expired_dropped, and misconfigured (also counted as failed: the
/// tenant's push credentials or app settings are refused).
pub const PUSHES: &str = "sesame_pushes_total";
/// `sesame_push_delivery_seconds{provider}`: from queueing to the provider's acceptance.
pub const PUSH_DELIVERY: &str = "sesame_push_delivery_seconds";

/// `sesame_push_duplicates_total{provider}`: pushes the provider reported as
/// duplicates of one already delivered (at-least-once delivery after a
/// crash or rebalance); the shared collapse id makes the phone show one.
pub const PUSH_DUPLICATES: &str = "sesame_push_duplicates_total";

pub fn describe() {
    metrics::describe_counter!(
        PUSH_DUPLICATES,
        "pushes delivered twice (same collapse id), by provider"
    );
    metrics::describe_counter!(PUSHES, "push attempts by provider and outcome");
    metrics::describe_histogram!(
        PUSH_DELIVERY,
        metrics::Unit::Seconds,
        "time from the challenge's push being queued to the provider accepting it"
    );
}

pub fn push(provider: &'static str, outcome: &'static str) {
    metrics::counter!(PUSHES, "provider" => provider, "outcome" => outcome).increment(1);
}

pub fn duplicate(provider: &'static str) {
    metrics::counter!(PUSH_DUPLICATES, "provider" => provider).increment(1);
}
