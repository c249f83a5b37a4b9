//! `sesame.tenant.v1.AuditService`: a tenant reads its own audit trail.

use std::sync::Arc;

use sesame_core::{validate, ChallengeId};
use sesame_grpc::{convert, ApiError};
use sesame_proto::tenant::v1 as pb;
use sesame_storage::{AuditCursor, AuditQuery, Storage};
use tonic::{Request, Response, Status};

use crate::TenantAuth;

pub struct AuditApi {
    storage: Arc<dyn Storage>,
    auth: TenantAuth,
}

impl AuditApi {
    pub fn new(storage: Arc<dyn Storage>, auth: TenantAuth) -> Self {
        AuditApi { storage, auth }
    }
}

/// `<at>.<seq>.<chain>`: the chain last, as it may hold dots.
fn cursor_out(c: &AuditCursor) -> String {
    format!("{}.{}.{}", c.at, c.seq, c.chain)
}

fn cursor_in(token: &str) -> Option<AuditCursor> {
    let mut parts = token.splitn(3, '.');
    let at = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let chain = parts.next()?.to_owned();
    (!chain.is_empty()).then_some(AuditCursor { at, chain, seq })
}

/// The request, checked, as a storage query and a page size.
pub fn audit_query(r: pb::ListAuditRecordsRequest) -> Result<(AuditQuery, usize), ApiError> {
    if !r.user_id.is_empty() {
        validate::user_id(&r.user_id)?;
    }
    if !r.challenge_id.is_empty() {
        ChallengeId::parse(&r.challenge_id)?;
    }
    if r.start_unix_ms < 0 || r.end_unix_ms < 0 {
        return Err(ApiError::invalid(
            "start_unix_ms",
            "start_unix_ms and end_unix_ms must not be negative",
        ));
    }
    if r.end_unix_ms != 0 && r.end_unix_ms <= r.start_unix_ms {
        return Err(ApiError::invalid(
            "end_unix_ms",
            format!(
                "{} is not after start_unix_ms {} (0 means no end)",
                r.end_unix_ms, r.start_unix_ms
            ),
        ));
    }
    let size = crate::admin::page_size(r.page_size)?;
    let after = if r.page_token.is_empty() {
        None
    } else {
        Some(cursor_in(&r.page_token).ok_or_else(|| {
            ApiError::invalid(
                "page_token",
                "is not a next_page_token from ListAuditRecords",
            )
        })?)
    };
    Ok((
        AuditQuery {
            user_id: (!r.user_id.is_empty()).then_some(r.user_id),
            challenge_id: (!r.challenge_id.is_empty()).then_some(r.challenge_id),
            from: r.start_unix_ms,
            to: if r.end_unix_ms == 0 {
                i64::MAX
            } else {
                r.end_unix_ms
            },
            after,
        },
        size,
    ))
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn list_audit_records(
        &self,
        request: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let (query, size) = audit_query(request.into_inner())?;
        let mut records = self
            .storage
            .query_audit(&tenant, &query, size + 1)
            .await
            .map_err(ApiError::from)?;
        let more = records.len() > size;
        records.truncate(size);
        let next_page_token = match records.last() {
            Some(r) if more => cursor_out(&AuditCursor::of(r)),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAuditRecordsResponse {
            records: records.iter().map(convert::audit_record_out).collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_with_dots_in_the_chain() {
        let c = AuditCursor {
            at: 1_700_000_000_123,
            chain: "bank.example/sesame-1.a-18c".into(),
            seq: 42,
        };
        assert_eq!(cursor_in(&cursor_out(&c)), Some(c));
        for bad in ["", "1", "1.2", "1.2.", "x.2.c", "1.-2.c"] {
            assert_eq!(cursor_in(bad), None, "{bad:?}");
        }
    }
}
