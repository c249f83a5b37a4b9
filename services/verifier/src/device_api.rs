//! `sesame.device.v1.DeviceService`.

use std::sync::Arc;

use sesame_audit::AuditLog;
use sesame_core::audit::{AuditAction, AuditEntry};
use sesame_core::crypto::PublicKey;
use sesame_core::limits::{MAX_CLOCK_SKEW_MS, MAX_SIGNATURE_LEN};
use sesame_core::model::{
    Challenge, Decision, DenyReason, Device, NumberMatchMode, Outcome, Resolution,
};
use sesame_core::payload::{device_request_payload, enrollment_payload, AnswerPayload};
use sesame_core::push_apps::PushAppCatalog;
use sesame_core::time::now_ms;
use sesame_core::{number_match, validate, ChallengeId, DeviceId};
use sesame_grpc::{convert, ApiError};
use sesame_proto::device::v1 as pb;
use sesame_queue::{AuditEvent, AuditKind, Event, Queue};
use sesame_ratelimit::{Escalation, UserGuard};
use sesame_storage::{Storage, StorageError};
use sesame_webhook::Notifier;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::replay::{ReplayGuard, ReplayVerdict};

pub struct DeviceApi {
    storage: Arc<dyn Storage>,
    queue: Arc<dyn Queue>,
    guard: Arc<UserGuard>,
    replay: Arc<ReplayGuard>,
    max_devices_per_user: usize,
    push_apps: Arc<PushAppCatalog>,
    audit: AuditLog,
    webhooks: Notifier,
}

/// Method names inside signed device requests (part of the protocol).
pub mod method {
    pub const UPDATE_PUSH_TOKEN: &str = "UpdatePushToken";
    pub const LIST_PENDING: &str = "ListPendingChallenges";
    pub const GET_DETAILS: &str = "GetChallengeDetails";
}

pub const NONCE_LEN: usize = 16;

fn details_out(c: &Challenge, now: i64) -> pb::ChallengeDetails {
    pb::ChallengeDetails {
        challenge_id: c.id.to_string(),
        context: Some(convert::context_out(&c.context)),
        context_hash: c.context_hash.to_vec(),
        number_match: convert::number_match_out(c.number_match.mode),
        // Only CHOOSE shows numbers on the phone; for ENTER the number is on
        // the login page alone, or a phished user could just copy it.
        number_choices: match c.number_match.mode {
            NumberMatchMode::Choose => c.number_match.choices.clone(),
            _ => vec![],
        },
        created_at_unix_ms: c.created_at,
        expires_at_unix_ms: c.expires_at,
        status: convert::status_out(c.status(now)),
    }
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Approved => "approved",
        Outcome::Denied(DenyReason::UserDenied) => "denied",
        Outcome::Denied(DenyReason::FraudReported) => "fraud",
        Outcome::Denied(DenyReason::NumberMismatch) => "number_mismatch",
        Outcome::Cancelled => "cancelled",
    }
}

fn check_skew(field: &str, ts: i64, now: i64) -> Result<(), ApiError> {
    // Any i64 can arrive here before the signature is checked: no overflow.
    let skew_ms = ts.checked_sub(now).map(i64::unsigned_abs);
    match skew_ms {
        Some(s) if s <= MAX_CLOCK_SKEW_MS.unsigned_abs() => Ok(()),
        _ => Err(ApiError::Unauthenticated(format!(
            "{field} is more than {} s away from the server's clock: check the phone's time",
            MAX_CLOCK_SKEW_MS / 1000
        ))),
    }
}

fn signature_field(field: &'static str, sig: &[u8]) -> Result<(), ApiError> {
    if sig.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if sig.len() > MAX_SIGNATURE_LEN {
        return Err(ApiError::invalid(
            field,
            format!("is {} bytes; at most {MAX_SIGNATURE_LEN}", sig.len()),
        ));
    }
    Ok(())
}

impl DeviceApi {
    pub fn new(
        storage: Arc<dyn Storage>,
        queue: Arc<dyn Queue>,
        guard: Arc<UserGuard>,
        replay: Arc<ReplayGuard>,
        max_devices_per_user: usize,
    ) -> Self {
        DeviceApi {
            storage,
            queue,
            guard,
            replay,
            max_devices_per_user,
            push_apps: Arc::new(PushAppCatalog::default()),
            audit: AuditLog::disabled(),
            webhooks: Notifier::disabled(),
        }
    }

    /// Announces verdicts to the tenant's webhook.
    pub fn with_webhooks(mut self, webhooks: Notifier) -> Self {
        self.webhooks = webhooks;
        self
    }

    /// Records enrollments, answers (accepted and refused) and the guard's
    /// escalations in the audit trail.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    /// The push apps a device may be enrolled through (none: the built-in simulator).
    pub fn with_push_apps(mut self, catalog: PushAppCatalog) -> Self {
        self.push_apps = Arc::new(catalog);
        self
    }

    fn device_key(device: &Device) -> Result<PublicKey, ApiError> {
        PublicKey::parse(device.key_algorithm, &device.public_key)
            .map_err(|e| ApiError::Internal(format!("stored key of {} unusable: {e}", device.id)))
    }

    /// Checks a signed device request and returns its (active) device.
    async fn authenticate(
        &self,
        auth: Option<pb::DeviceAuth>,
        method: &str,
        args: &[&str],
    ) -> Result<Device, ApiError> {
        let auth = auth.ok_or_else(|| ApiError::invalid("auth", "is required"))?;
        let device_id = DeviceId::parse(&auth.device_id)?;
        if auth.nonce.len() != NONCE_LEN {
            return Err(ApiError::invalid(
                "auth.nonce",
                format!("must be {NONCE_LEN} random bytes"),
            ));
        }
        signature_field("auth.signature", &auth.signature)?;
        let now = now_ms();
        check_skew("auth.timestamp_unix_ms", auth.timestamp_unix_ms, now)?;
        let device = self
            .storage
            .get_device(&device_id)
            .await?
            .ok_or_else(|| ApiError::Unauthenticated("unknown device: enroll again".into()))?;
        let message = device_request_payload(
            method,
            device_id.as_str(),
            auth.timestamp_unix_ms,
            &auth.nonce,
            args,
        );
        if Self::device_key(&device)?
            .verify(&message, &auth.signature)
            .is_err()
        {
            crate::metrics::signature_failure("request");
            return Err(ApiError::Unauthenticated(
                "request signature does not verify with this device's key".into(),
            ));
        }
        let mut h = Sha256::new();
        h.update(device_id.as_str().as_bytes());
        h.update(&auth.nonce);
        match self.replay.check(h.finalize().into()) {
            ReplayVerdict::Fresh => {}
            ReplayVerdict::Replayed => {
                return Err(ApiError::Unauthenticated(
                    "replayed request: this nonce was already used; sign each request with a fresh nonce"
                        .into(),
                ))
            }
            ReplayVerdict::Full => {
                return Err(ApiError::Unavailable(
                    "too many device requests in flight; retry shortly".into(),
                ))
            }
        }
        if !device.is_active() {
            return Err(ApiError::PermissionDenied(
                "this device has been revoked; enroll it again".into(),
            ));
        }
        Ok(device)
    }

    /// The challenge if this device may see it; `NOT_FOUND` otherwise
    /// (another tenant's, another user's, or sent before this device enrolled).
    async fn challenge_for(
        &self,
        device: &Device,
        id: &ChallengeId,
    ) -> Result<Challenge, ApiError> {
        match self.storage.get_challenge(id).await? {
            Some(c) if c.tenant_id == device.tenant_id && c.devices.contains(&device.id) => Ok(c),
            _ => Err(ApiError::NotFound("challenge")),
        }
    }

    async fn complete_enrollment_inner(
        &self,
        req: pb::CompleteEnrollmentRequest,
        source: String,
    ) -> Result<pb::CompleteEnrollmentResponse, ApiError> {
        if req.enrollment_token.is_empty() {
            return Err(ApiError::invalid("enrollment_token", "is required"));
        }
        if req.enrollment_token.len() > 128 {
            return Err(ApiError::invalid(
                "enrollment_token",
                "is too long to be a token",
            ));
        }
        let alg = convert::key_algorithm_in(req.key_algorithm)?;
        let platform = convert::platform_in(req.platform)?;
        validate::push_token(&req.push_token)?;
        validate::device_name(&req.display_name)?;
        let key = PublicKey::parse(alg, &req.public_key)
            .map_err(|e| ApiError::invalid("public_key", e))?;
        signature_field("proof", &req.proof)?;

        let token_hash = sesame_core::payload::enrollment_token_sha256(&req.enrollment_token);
        let ticket = self
            .storage
            .get_enrollment(&token_hash)
            .await?
            .ok_or_else(|| {
                ApiError::FailedPrecondition(
                "enrollment token is unknown or was already used: ask the service for a new QR code"
                    .into(),
            )
            })?;
        let now = now_ms();
        if now >= ticket.expires_at {
            return Err(ApiError::FailedPrecondition(
                "enrollment token has expired: ask the service for a new QR code".into(),
            ));
        }
        if req.push_app.len() > 64 {
            return Err(ApiError::invalid("push_app", "is at most 64 characters"));
        }
        let push_app = self
            .push_apps
            .resolve(&ticket.tenant_id, platform, &req.push_app)
            .map_err(|e| ApiError::invalid("push_app", e))?;
        let message = enrollment_payload(
            &req.enrollment_token,
            alg,
            &req.public_key,
            platform,
            &req.push_token,
        );
        key.verify(&message, &req.proof).map_err(|_| {
            crate::metrics::signature_failure("enrollment");
            ApiError::invalid(
                "proof",
                "does not verify: sign the canonical enrollment payload with the new private key",
            )
        })?;
        let device = Device {
            id: DeviceId::generate(),
            tenant_id: ticket.tenant_id.clone(),
            user_id: ticket.user_id.clone(),
            display_name: req.display_name,
            platform,
            key_algorithm: alg,
            public_key: req.public_key,
            push_token: req.push_token,
            push_app,
            push_enabled: true,
            enrolled_at: now,
            revoked_at: None,
        };
        self.storage
            .complete_enrollment(&token_hash, &device, self.max_devices_per_user)
            .await
            .map_err(|e| match e {
                StorageError::Conflict(_) => ApiError::FailedPrecondition(
                    "enrollment token is unknown or was already used: ask the service for a new QR code"
                        .into(),
                ),
                e => e.into(),
            })?;
        metrics::counter!(crate::metrics::DEVICES_ENROLLED, "tenant" => device.tenant_id.to_string())
            .increment(1);
        tracing::info!(tenant = %device.tenant_id, device_id = %device.id, "device enrolled");
        self.audit.record(
            AuditEntry::new(now, device.tenant_id.as_str(), AuditAction::DeviceEnrolled)
                .user(&device.user_id)
                .device(&device.id)
                .actor(format!("device:{}", device.id))
                .source(source)
                .detail(format!(
                    "{:?} {:?} key",
                    device.platform, device.key_algorithm
                )),
        );
        Ok(pb::CompleteEnrollmentResponse {
            device_id: device.id.to_string(),
            tenant_id: device.tenant_id.to_string(),
            user_id: device.user_id,
        })
    }

    async fn respond_inner(
        &self,
        req: pb::RespondRequest,
        source: String,
    ) -> Result<pb::RespondResponse, ApiError> {
        let device_id = DeviceId::parse(&req.device_id)?;
        let challenge_id = ChallengeId::parse(&req.challenge_id)?;
        let decision = convert::decision_in(req.decision)?;
        if req.number_match_answer.len() > 16 {
            return Err(ApiError::invalid(
                "number_match_answer",
                "is at most 16 characters",
            ));
        }
        if req.context_hash.len() != 32 {
            return Err(ApiError::invalid(
                "context_hash",
                "must be the 32-byte SHA-256 from ChallengeDetails",
            ));
        }
        signature_field("signature", &req.signature)?;
        let now = now_ms();
        check_skew("timestamp_unix_ms", req.timestamp_unix_ms, now)?;

        let device = self
            .storage
            .get_device(&device_id)
            .await?
            .ok_or_else(|| ApiError::Unauthenticated("unknown device: enroll again".into()))?;
        // From here the device's tenant is known: a refused answer is on
        // its audit trail, with the reason it was given.
        let entry = |action: AuditAction| {
            AuditEntry::new(now, device.tenant_id.as_str(), action)
                .user(&device.user_id)
                .device(&device.id)
                .challenge(&challenge_id)
                .actor(format!("device:{}", device.id))
                .source(source.clone())
        };
        let refuse = |e: ApiError| {
            self.audit
                .record(entry(AuditAction::AnswerRefused).detail(e.summary()));
            e
        };
        let payload = AnswerPayload {
            challenge_id: challenge_id.as_str(),
            device_id: device_id.as_str(),
            decision,
            number_match_answer: &req.number_match_answer,
            context_hash: &req.context_hash,
            timestamp: req.timestamp_unix_ms,
        };
        if Self::device_key(&device)?
            .verify(&payload.encode(), &req.signature)
            .is_err()
        {
            crate::metrics::signature_failure("answer");
            return Err(refuse(ApiError::Unauthenticated(
                "answer signature does not verify with this device's key".into(),
            )));
        }
        if !device.is_active() {
            return Err(refuse(ApiError::PermissionDenied(
                "this device has been revoked; its answers are not accepted".into(),
            )));
        }
        let challenge = self
            .challenge_for(&device, &challenge_id)
            .await
            .map_err(refuse)?;
        if req.context_hash != challenge.context_hash {
            return Err(refuse(ApiError::invalid(
                "context_hash",
                "does not match the challenge: the app must sign exactly what it displayed",
            )));
        }
        challenge
            .check_transition(now)
            .map_err(|e| refuse(e.into()))?;

        let outcome = match decision {
            Decision::Approve
                if number_match::answer_matches(
                    &challenge.number_match,
                    &req.number_match_answer,
                ) =>
            {
                Outcome::Approved
            }
            // A wrong number is a signed user action, not a typo to retry:
            // retries would let a user who cannot see the page guess.
            Decision::Approve => Outcome::Denied(DenyReason::NumberMismatch),
            Decision::Deny => Outcome::Denied(DenyReason::UserDenied),
            Decision::DenyFraud => Outcome::Denied(DenyReason::FraudReported),
        };
        let resolution = Resolution {
            outcome,
            device_id: Some(device.id.clone()),
            at: now,
        };
        // Resolve and announce in a task of its own: if this call is
        // cancelled after the commit, watchers must still hear of it.
        let resolution_device = resolution.device_id.clone();
        let (storage, queue, guard, id, audit, webhooks) = (
            self.storage.clone(),
            self.queue.clone(),
            self.guard.clone(),
            challenge.id.clone(),
            self.audit.clone(),
            self.webhooks.clone(),
        );
        let accepted = entry(AuditAction::AnswerAccepted);
        let span = tracing::Span::current();
        let trace_id = sesame_grpc::trace::current().unwrap_or_default();
        let resolved = tokio::spawn(tracing::Instrument::instrument(async move {
            let resolved = storage.resolve_challenge(&id, &resolution, now).await?;
            audit.record(AuditEntry {
                detail: format!("verdict: {}", outcome_label(outcome)),
                ..accepted.clone()
            });
            let _ = queue.publish_event(Event::Verdict {
                tenant_id: resolved.tenant_id.clone(),
                challenge_id: resolved.id.clone(),
                status: resolved.status(now).into(),
            });
            // Off this path: the phone's answer and the guard's reaction
            // to a denial do not wait for the webhook job to be queued.
            let (t, c) = (resolved.tenant_id.clone(), resolved.id.clone());
            tokio::spawn(async move { webhooks.verdict(&t, &c, &trace_id).await });
            // Denials feed the push-bombing guard: escalation, lock, mute.
            if let Outcome::Denied(reason) = outcome {
                let fraud = reason == DenyReason::FraudReported;
                let escalations = guard
                    .record_denial(&resolved.tenant_id, &resolved.user_id, now, fraud)
                    .await;
                let kinds: Vec<AuditKind> = match escalations {
                    Ok(list) => list
                        .into_iter()
                        .map(|e| match e {
                            Escalation::NumberMatchForced => AuditKind::NumberMatchForced,
                            Escalation::Locked { until } => AuditKind::PromptsLocked {
                                locked_until: until,
                            },
                            Escalation::Muted { until } => AuditKind::FraudReported {
                                muted_until: until,
                            },
                        })
                        .collect(),
                    Err(e) => {
                        tracing::error!(error = %e, challenge_id = %resolved.id, "cannot record a denial");
                        // The report itself must still reach the audit trail.
                        if fraud {
                            vec![AuditKind::FraudReported { muted_until: 0 }]
                        } else {
                            vec![]
                        }
                    }
                };
                for kind in kinds {
                    let (action, detail) = match &kind {
                        AuditKind::FraudReported { muted_until } => (
                            AuditAction::FraudReported,
                            format!("prompts muted until {muted_until} ms"),
                        ),
                        AuditKind::PromptsLocked { locked_until } => (
                            AuditAction::PromptsLocked,
                            format!("prompts locked until {locked_until} ms"),
                        ),
                        AuditKind::NumberMatchForced => {
                            (AuditAction::NumberMatchForced, String::new())
                        }
                    };
                    audit.record(AuditEntry {
                        action,
                        detail,
                        ..accepted.clone()
                    });
                    let _ = queue.publish_event(Event::Audit(AuditEvent {
                        tenant_id: resolved.tenant_id.clone(),
                        user_id: resolved.user_id.clone(),
                        device_id: resolution_device.clone(),
                        challenge_id: Some(resolved.id.clone()),
                        kind,
                        at: now,
                    }));
                }
            }
            Ok::<_, StorageError>(resolved)
        }, span))
        .await
        .map_err(|e| ApiError::Internal(format!("answer task failed: {e}")))?
        // Another answer won the race, or the store refused: refused too.
        .map_err(|e| refuse(e.into()))?;
        let status = resolved.status(now);
        metrics::counter!(
            crate::metrics::CHALLENGES_RESOLVED,
            "tenant" => resolved.tenant_id.to_string(),
            "outcome" => outcome_label(outcome)
        )
        .increment(1);
        metrics::histogram!(crate::metrics::TIME_TO_VERDICT)
            .record((now - resolved.created_at).max(0) as f64 / 1000.0);
        if outcome == Outcome::Denied(DenyReason::FraudReported) {
            tracing::warn!(tenant = %resolved.tenant_id, challenge_id = %resolved.id, "fraud reported by the user");
        }
        if outcome == Outcome::Denied(DenyReason::NumberMismatch) {
            return Err(ApiError::PermissionDenied(
                "the number does not match the one on the sign-in page; this sign-in request has been denied"
                    .into(),
            ));
        }
        Ok(pb::RespondResponse {
            status: convert::status_out(status),
            deny_reason: convert::deny_reason_out(resolved.deny_reason()),
        })
    }
}

#[tonic::async_trait]
impl pb::device_service_server::DeviceService for DeviceApi {
    async fn complete_enrollment(
        &self,
        request: Request<pb::CompleteEnrollmentRequest>,
    ) -> Result<Response<pb::CompleteEnrollmentResponse>, Status> {
        let source = sesame_grpc::auth::source(&request);
        Ok(Response::new(
            self.complete_enrollment_inner(request.into_inner(), source)
                .await?,
        ))
    }

    async fn update_push_token(
        &self,
        request: Request<pb::UpdatePushTokenRequest>,
    ) -> Result<Response<pb::UpdatePushTokenResponse>, Status> {
        let req = request.into_inner();
        validate::push_token(&req.push_token).map_err(ApiError::from)?;
        let device = self
            .authenticate(req.auth, method::UPDATE_PUSH_TOKEN, &[&req.push_token])
            .await?;
        self.storage
            .update_push_token(&device.id, &req.push_token)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::UpdatePushTokenResponse {}))
    }

    async fn list_pending_challenges(
        &self,
        request: Request<pb::ListPendingChallengesRequest>,
    ) -> Result<Response<pb::ListPendingChallengesResponse>, Status> {
        let device = self
            .authenticate(request.into_inner().auth, method::LIST_PENDING, &[])
            .await?;
        let now = now_ms();
        let pending = self
            .storage
            .pending_challenges(&device.id, now)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListPendingChallengesResponse {
            challenges: pending
                .iter()
                .filter(|c| c.tenant_id == device.tenant_id)
                .map(|c| details_out(c, now))
                .collect(),
        }))
    }

    async fn get_challenge_details(
        &self,
        request: Request<pb::GetChallengeDetailsRequest>,
    ) -> Result<Response<pb::ChallengeDetails>, Status> {
        let req = request.into_inner();
        let id = ChallengeId::parse(&req.challenge_id).map_err(ApiError::from)?;
        let device = self
            .authenticate(req.auth, method::GET_DETAILS, &[id.as_str()])
            .await?;
        let c = self.challenge_for(&device, &id).await?;
        Ok(Response::new(details_out(&c, now_ms())))
    }

    async fn respond(
        &self,
        request: Request<pb::RespondRequest>,
    ) -> Result<Response<pb::RespondResponse>, Status> {
        let source = sesame_grpc::auth::source(&request);
        Ok(Response::new(
            self.respond_inner(request.into_inner(), source).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_check_never_overflows() {
        let now = 1_700_000_000_000;
        assert!(check_skew("t", now, now).is_ok());
        assert!(check_skew("t", now + MAX_CLOCK_SKEW_MS, now).is_ok());
        assert!(check_skew("t", now - MAX_CLOCK_SKEW_MS - 1, now).is_err());
        assert!(check_skew("t", i64::MIN, now).is_err());
        assert!(check_skew("t", i64::MAX, now).is_err());
        assert!(check_skew("t", i64::MIN, i64::MAX).is_err());
    }
}
