//! The provider clients' metric names, all here. Labels are bounded: the
//! provider and a reason from Apple's and Google's published lists (an
//! unknown reason is counted as `other` and logged in full).

/// `sesame_push_provider_responses_total{provider, reason}`: every answer
/// from APNs or FCM (`success`, `Unregistered`, `QUOTA_EXCEEDED`, `transport`, ...).
pub const PROVIDER_RESPONSES: &str = "sesame_push_provider_responses_total";
/// `sesame_push_provider_request_seconds{provider}`: one HTTP/2 request.
pub const PROVIDER_REQUEST: &str = "sesame_push_provider_request_seconds";
/// `sesame_push_credential_refreshes_total{provider, result}`: APNs provider
/// tokens minted and FCM OAuth tokens fetched.
pub const CREDENTIAL_REFRESHES: &str = "sesame_push_credential_refreshes_total";

pub fn describe() {
    metrics::describe_counter!(
        PROVIDER_RESPONSES,
        "answers from APNs/FCM by provider and reason code"
    );
    metrics::describe_histogram!(
        PROVIDER_REQUEST,
        metrics::Unit::Seconds,
        "duration of one request to APNs/FCM"
    );
    metrics::describe_counter!(
        CREDENTIAL_REFRESHES,
        "APNs provider tokens minted and FCM OAuth tokens fetched, by result"
    );
}

pub(crate) fn response(provider: &'static str, reason: &'static str) {
    metrics::counter!(PROVIDER_RESPONSES, "provider" => provider, "reason" => reason).increment(1);
}

pub(crate) fn request_time(provider: &'static str, seconds: f64) {
    metrics::histogram!(PROVIDER_REQUEST, "provider" => provider).record(seconds);
}

pub(crate) fn refresh(provider: &'static str, result: &'static str) {
    metrics::counter!(CREDENTIAL_REFRESHES, "provider" => provider, "result" => result)
        .increment(1);
}
