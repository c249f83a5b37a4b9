//! The verifier role's metric names, all here. No per-user or per-device labels.

/// `sesame_challenges_resolved_total{tenant, outcome}`: approved, denied, fraud, number_mismatch.
pub const CHALLENGES_RESOLVED: &str = "sesame_challenges_resolved_total";
/// `sesame_challenge_verdict_seconds`: from creation to the verdict.
pub const TIME_TO_VERDICT: &str = "sesame_challenge_verdict_seconds";
/// `sesame_signature_failures_total{kind}`: request, answer, enrollment.
pub const SIGNATURE_FAILURES: &str = "sesame_signature_failures_total";
/// `sesame_devices_enrolled_total{tenant}`
pub const DEVICES_ENROLLED: &str = "sesame_devices_enrolled_total";

pub fn describe() {
    metrics::describe_counter!(
        CHALLENGES_RESOLVED,
        "challenges answered, by tenant and outcome"
    );
    metrics::describe_histogram!(
        TIME_TO_VERDICT,
        metrics::Unit::Seconds,
        "time from challenge creation to the device's verdict"
    );
    metrics::describe_counter!(
        SIGNATURE_FAILURES,
        "device signatures that did not verify, by kind"
    );
    metrics::describe_counter!(DEVICES_ENROLLED, "devices enrolled, by tenant");
}

pub fn signature_failure(kind: &'static str) {
    metrics::counter!(SIGNATURE_FAILURES, "kind" => kind).increment(1);
}
