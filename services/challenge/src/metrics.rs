//! The challenge role's metric names, all here. Labels: tenant (operators'
//! customers, a bounded set) and reason; never users, devices or challenges.

/// `sesame_challenges_created_total{tenant}`
pub const CHALLENGES_CREATED: &str = "sesame_challenges_created_total";
/// `sesame_challenges_refused_total{tenant, reason}`: guard and quota refusals.
pub const CHALLENGES_REFUSED: &str = "sesame_challenges_refused_total";
/// `sesame_challenges_cancelled_total{tenant}`
pub const CHALLENGES_CANCELLED: &str = "sesame_challenges_cancelled_total";

pub fn describe() {
    metrics::describe_counter!(CHALLENGES_CREATED, "challenges created, by tenant");
    metrics::describe_counter!(
        CHALLENGES_REFUSED,
        "challenges refused by the push-bombing guard or a tenant quota, by reason"
    );
    metrics::describe_counter!(CHALLENGES_CANCELLED, "challenges cancelled by the tenant");
}

pub fn refused(tenant: &sesame_core::TenantId, reason: &'static str) {
    metrics::counter!(CHALLENGES_REFUSED, "tenant" => tenant.to_string(), "reason" => reason)
        .increment(1);
}
