//! `sesame.tenant.v1.EnrollmentService`.

use std::sync::Arc;

use base64::Engine;
use sesame_audit::AuditLog;
use sesame_core::audit::AuditAction;
use sesame_core::limits::{DEFAULT_ENROLLMENT_TTL_SECS, MAX_ENROLLMENT_TTL_SECS};
use sesame_core::time::now_ms;
use sesame_core::{payload, validate, Device, DeviceId, EnrollmentTicket};
use sesame_grpc::auth::Origin;
use sesame_grpc::{convert, ApiError};
use sesame_proto::tenant::v1 as pb;
use sesame_storage::Storage;
use tonic::{Request, Response, Status};

use crate::{ChallengeConfig, TenantAuth};

/// Enrollment tokens: `et_` and 20 random bytes (160 bits), base64url.
pub const TOKEN_PREFIX: &str = "et_";

pub fn new_enrollment_token() -> String {
    let raw = sesame_core::ids::random_bytes::<20>();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URI an app scans: `sesame://enroll?v=1&url=<device API>&token=<token>`.
pub fn enrollment_uri(device_url: &str, token: &str) -> String {
    format!(
        "sesame://enroll?v=1&url={}&token={}",
        percent_encode(device_url),
        percent_encode(token)
    )
}

pub struct EnrollmentApi {
    storage: Arc<dyn Storage>,
    auth: TenantAuth,
    config: ChallengeConfig,
    audit: AuditLog,
}

impl EnrollmentApi {
    pub fn new(storage: Arc<dyn Storage>, auth: TenantAuth, config: ChallengeConfig) -> Self {
        EnrollmentApi {
            storage,
            auth,
            config,
            audit: AuditLog::disabled(),
        }
    }

    /// Records enrollments begun and devices revoked in the audit trail.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }
}

pub fn device_out(d: &Device) -> pb::Device {
    pb::Device {
        device_id: d.id.to_string(),
        user_id: d.user_id.clone(),
        platform: convert::platform_out(d.platform),
        key_algorithm: convert::key_algorithm_out(d.key_algorithm),
        display_name: d.display_name.clone(),
        enrolled_at_unix_ms: d.enrolled_at,
        revoked: d.revoked_at.is_some(),
        revoked_at_unix_ms: d.revoked_at.unwrap_or(0),
        push_enabled: d.push_enabled && d.is_active(),
    }
}

#[tonic::async_trait]
impl pb::enrollment_service_server::EnrollmentService for EnrollmentApi {
    async fn begin_enrollment(
        &self,
        request: Request<pb::BeginEnrollmentRequest>,
    ) -> Result<Response<pb::BeginEnrollmentResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let origin = Origin::of(&request);
        let req = request.into_inner();
        validate::user_id(&req.user_id).map_err(ApiError::from)?;
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_ENROLLMENT_TTL_SECS,
            t if t <= MAX_ENROLLMENT_TTL_SECS => t,
            t => {
                return Err(ApiError::invalid(
                    "ttl_seconds",
                    format!("{t} is above the maximum of {MAX_ENROLLMENT_TTL_SECS}"),
                )
                .into())
            }
        };
        let token = new_enrollment_token();
        let now = now_ms();
        let ticket = EnrollmentTicket {
            token_sha256: payload::enrollment_token_sha256(&token),
            tenant_id: tenant,
            user_id: req.user_id,
            created_at: now,
            expires_at: now + i64::from(ttl) * 1000,
        };
        self.storage
            .create_enrollment(&ticket)
            .await
            .map_err(ApiError::from)?;
        self.audit.record(
            origin
                .entry(ticket.tenant_id.as_str(), AuditAction::EnrollmentStarted)
                .user(&ticket.user_id)
                .detail(format!("ttl={ttl}s")),
        );
        Ok(Response::new(pb::BeginEnrollmentResponse {
            enrollment_uri: enrollment_uri(&self.config.public_device_url, &token),
            enrollment_token: token,
            expires_at_unix_ms: ticket.expires_at,
        }))
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let req = request.into_inner();
        validate::user_id(&req.user_id).map_err(ApiError::from)?;
        let devices = self
            .storage
            .list_devices(&tenant, &req.user_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: devices.iter().map(device_out).collect(),
        }))
    }

    async fn revoke_device(
        &self,
        request: Request<pb::RevokeDeviceRequest>,
    ) -> Result<Response<pb::RevokeDeviceResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let id = DeviceId::parse(&request.get_ref().device_id).map_err(ApiError::from)?;
        let device = self
            .storage
            .revoke_device(&tenant, &id, now_ms())
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %tenant, device_id = %id, "device revoked");
        self.audit.record(
            Origin::of(&request)
                .entry(tenant.as_str(), AuditAction::DeviceRevoked)
                .user(&device.user_id)
                .device(&id),
        );
        Ok(Response::new(pb::RevokeDeviceResponse {
            device: Some(device_out(&device)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_carries_url_and_token() {
        let t = new_enrollment_token();
        assert!(t.len() >= 3 + 26);
        let uri = enrollment_uri("http://127.0.0.1:50051", &t);
        assert!(uri.starts_with("sesame://enroll?v=1&url=http%3A%2F%2F127.0.0.1%3A50051&token=et_"));
    }
}
