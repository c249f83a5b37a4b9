//! `sesame.ratelimit.v1.RateLimitService`: the `ratelimit` role's gRPC face
//! over [`DescriptorLimiter`].

use std::sync::Arc;

use sesame_core::time::now_ms;
use sesame_grpc::{ApiError, TenantAuth};
use sesame_proto::ratelimit::v1 as pb;
use tonic::{Request, Response, Status};

use crate::descriptors::{DescriptorLimiter, LimitUnit};

/// Request limits (README "API limits").
pub const MAX_DOMAIN_LEN: usize = 64;
pub const MAX_DESCRIPTORS: usize = 16;
pub const MAX_ENTRIES: usize = 8;
pub const MAX_KEY_LEN: usize = 64;
pub const MAX_VALUE_LEN: usize = 256;
pub const MAX_HITS: u32 = 1000;

pub struct RateLimitApi {
    limiter: Arc<DescriptorLimiter>,
    auth: TenantAuth,
}

impl RateLimitApi {
    pub fn new(limiter: Arc<DescriptorLimiter>, auth: TenantAuth) -> Self {
        RateLimitApi { limiter, auth }
    }
}

fn unit_out(u: LimitUnit) -> i32 {
    (match u {
        LimitUnit::Second => pb::Unit::Second,
        LimitUnit::Minute => pb::Unit::Minute,
        LimitUnit::Hour => pb::Unit::Hour,
        LimitUnit::Day => pb::Unit::Day,
    }) as i32
}

fn text(field: &str, v: &str, max: usize, required: bool) -> Result<(), ApiError> {
    if required && v.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if v.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("is {} bytes; at most {max}", v.len()),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A validated request: domain, descriptors (key/value pairs), hits.
type Parsed = (String, Vec<Vec<(String, String)>>, u32);

/// Validates the request.
fn parse(req: pb::RateLimitRequest) -> Result<Parsed, ApiError> {
    text("domain", &req.domain, MAX_DOMAIN_LEN, true)?;
    if req.descriptors.is_empty() || req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(ApiError::invalid(
            "descriptors",
            format!("must hold 1 to {MAX_DESCRIPTORS} descriptors"),
        ));
    }
    if req.hits_addend > MAX_HITS {
        return Err(ApiError::invalid(
            "hits_addend",
            format!("is at most {MAX_HITS}"),
        ));
    }
    let mut descriptors = Vec::with_capacity(req.descriptors.len());
    for d in req.descriptors {
        if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
            return Err(ApiError::invalid(
                "descriptors.entries",
                format!("must hold 1 to {MAX_ENTRIES} entries"),
            ));
        }
        let mut entries = Vec::with_capacity(d.entries.len());
        for e in d.entries {
            text("descriptors.entries.key", &e.key, MAX_KEY_LEN, true)?;
            text("descriptors.entries.value", &e.value, MAX_VALUE_LEN, false)?;
            entries.push((e.key, e.value));
        }
        descriptors.push(entries);
    }
    Ok((req.domain, descriptors, req.hits_addend))
}

#[tonic::async_trait]
impl pb::rate_limit_service_server::RateLimitService for RateLimitApi {
    async fn should_rate_limit(
        &self,
        request: Request<pb::RateLimitRequest>,
    ) -> Result<Response<pb::RateLimitResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let (domain, descriptors, hits) = parse(request.into_inner())?;
        let decisions =
            self.limiter
                .should_rate_limit(&tenant, &domain, &descriptors, hits, now_ms());
        let over = decisions.iter().any(|d| d.over_limit);
        Ok(Response::new(pb::RateLimitResponse {
            overall_code: if over {
                pb::Code::OverLimit as i32
            } else {
                pb::Code::Ok as i32
            },
            statuses: decisions
                .into_iter()
                .map(|d| pb::DescriptorStatus {
                    code: if d.over_limit {
                        pb::Code::OverLimit as i32
                    } else {
                        pb::Code::Ok as i32
                    },
                    requests_per_unit: d.limit.as_ref().map_or(0, |l| l.requests_per_unit),
                    unit: d.limit.as_ref().map_or(0, |l| unit_out(l.unit)),
                    limit_remaining: if d.limit.is_some() { d.remaining } else { 0 },
                    duration_until_reset_ms: d.reset_ms,
                })
                .collect(),
        }))
    }
}
