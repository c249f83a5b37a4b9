//! The webhook sender's metric names, all here. No per-tenant labels: a
//! tenant's own deliveries are in its audit trail and dead letters.

/// `sesame_webhook_deliveries_total{outcome}`: what became of each attempt
/// (`delivered`, `retry`, `dead_lettered`, `refused_address`, `dropped`:
/// endpoint deleted or challenge purged meanwhile, `deferred`: the
/// tenant's endpoint already had its share of requests in flight).
pub const DELIVERIES: &str = "sesame_webhook_deliveries_total";
/// `sesame_webhook_delivery_seconds`: from the verdict to the receiver's
/// 2xx, retries included.
pub const DELIVERY_SECONDS: &str = "sesame_webhook_delivery_seconds";
/// `sesame_webhook_request_seconds`: one HTTP attempt.
pub const REQUEST_SECONDS: &str = "sesame_webhook_request_seconds";
/// `sesame_webhook_enqueue_errors_total`: verdicts whose job the queue
/// refused (kept as dead deliveries instead, for redelivery).
pub const ENQUEUE_ERRORS: &str = "sesame_webhook_enqueue_errors_total";

pub const OUTCOMES: [&str; 6] = [
    "delivered",
    "retry",
    "dead_lettered",
    "refused_address",
    "dropped",
    "deferred",
];

pub fn describe() {
    metrics::describe_counter!(DELIVERIES, "webhook delivery attempts, by outcome");
    metrics::describe_histogram!(
        DELIVERY_SECONDS,
        metrics::Unit::Seconds,
        "verdict to webhook receiver's 2xx, retries included"
    );
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "one webhook HTTP request"
    );
    metrics::describe_counter!(
        ENQUEUE_ERRORS,
        "verdicts whose webhook job the queue refused (kept as dead deliveries)"
    );
    // Zero from the start, so that rate() and the alerts see a series.
    for o in OUTCOMES {
        metrics::counter!(DELIVERIES, "outcome" => o).increment(0);
    }
    metrics::counter!(ENQUEUE_ERRORS).increment(0);
}

pub fn outcome(o: &'static str) {
    metrics::counter!(DELIVERIES, "outcome" => o).increment(1);
}
