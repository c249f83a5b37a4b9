//! The audit writer's metric names, all here.

/// `sesame_audit_records_total{action}`: records stored.
pub const RECORDS: &str = "sesame_audit_records_total";
/// `sesame_audit_lost_total`: entries dropped because the writer's buffer
/// was full (the store has been failing or too slow for that long).
pub const LOST: &str = "sesame_audit_lost_total";
/// `sesame_audit_write_errors_total{target}`: failed writes of a batch, to
/// the store (`storage`, retried until stored) or the queue's audit topic
/// (`queue`, retried a few times).
pub const WRITE_ERRORS: &str = "sesame_audit_write_errors_total";

pub fn describe() {
    metrics::describe_counter!(RECORDS, "audit records stored, by action");
    metrics::describe_counter!(
        LOST,
        "audit entries dropped because the writer's buffer was full"
    );
    metrics::describe_counter!(
        WRITE_ERRORS,
        "failed audit batch writes, by target (storage, queue)"
    );
    // Zero from the start, so that rate() and the alerts see a series.
    metrics::counter!(LOST).increment(0);
    for target in ["storage", "queue"] {
        metrics::counter!(WRITE_ERRORS, "target" => target).increment(0);
    }
}

pub fn stored(action: &'static str, n: u64) {
    metrics::counter!(RECORDS, "action" => action).increment(n);
}

pub fn lost(n: u64) {
    metrics::counter!(LOST).increment(n);
}

pub fn write_error(target: &'static str) {
    metrics::counter!(WRITE_ERRORS, "target" => target).increment(1);
}
