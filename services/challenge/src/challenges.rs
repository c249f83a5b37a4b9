//! `sesame.tenant.v1.ChallengeService`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sesame_audit::AuditLog;
use sesame_core::audit::AuditAction;
use sesame_core::limits::{
    DEFAULT_CHALLENGE_TTL_SECS, MAX_CHALLENGE_TTL_SECS, MIN_CHALLENGE_TTL_SECS,
};
use sesame_core::model::{
    Challenge, ChallengeContext, ChallengeStatus, NumberMatchMode, Outcome, Resolution,
};
use sesame_core::time::now_ms;
use sesame_core::{number_match, payload, validate, ChallengeId, TenantId};
use sesame_grpc::{convert, ApiError};
use sesame_proto::tenant::v1 as pb;
use sesame_queue::{Event, PushJob, Queue};
use sesame_ratelimit::{rules, GuardError, QuotaRefusal, TenantLimiter, UserGuard};
use sesame_storage::{GuardedCreate, Storage, StorageError};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{Shutdown, TenantAuth, WatchHub};
use sesame_grpc::auth::Origin;
use sesame_webhook::Notifier;

pub struct ChallengeApi {
    storage: Arc<dyn Storage>,
    queue: Arc<dyn Queue>,
    auth: TenantAuth,
    hub: WatchHub,
    guard: Arc<UserGuard>,
    quotas: Option<Arc<TenantLimiter>>,
    shutdown: Shutdown,
    watch_resync: Duration,
    audit: AuditLog,
    webhooks: Notifier,
}

pub fn challenge_out(c: &Challenge, now: i64) -> pb::Challenge {
    let res = c.resolution.as_ref();
    pb::Challenge {
        challenge_id: c.id.to_string(),
        user_id: c.user_id.clone(),
        status: convert::status_out(c.status(now)),
        context: Some(convert::context_out(&c.context)),
        number_match: convert::number_match_out(c.number_match.mode),
        number_match_code: c.number_match.code.clone(),
        created_at_unix_ms: c.created_at,
        expires_at_unix_ms: c.expires_at,
        devices_notified: c.devices.len() as u32,
        answered_by_device_id: res
            .and_then(|r| r.device_id.as_ref())
            .map(|d| d.to_string())
            .unwrap_or_default(),
        resolved_at_unix_ms: res.map(|r| r.at).unwrap_or(0),
        deny_reason: convert::deny_reason_out(c.deny_reason()),
    }
}

impl ChallengeApi {
    pub fn new(
        storage: Arc<dyn Storage>,
        queue: Arc<dyn Queue>,
        auth: TenantAuth,
        hub: WatchHub,
        guard: Arc<UserGuard>,
    ) -> Self {
        ChallengeApi {
            storage,
            queue,
            auth,
            hub,
            guard,
            quotas: None,
            shutdown: Shutdown::never(),
            watch_resync: WATCH_RESYNC,
            audit: AuditLog::disabled(),
            webhooks: Notifier::disabled(),
        }
    }

    /// Announces cancellations to the tenant's webhook.
    pub fn with_webhooks(mut self, webhooks: Notifier) -> Self {
        self.webhooks = webhooks;
        self
    }

    /// Records creations, refusals and cancellations in the audit trail.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    /// How often a watch stream re-reads its challenge without an event
    /// (default [`WATCH_RESYNC`]).
    pub fn with_watch_resync(mut self, every: Duration) -> Self {
        self.watch_resync = every.max(Duration::from_millis(100));
        self
    }

    /// Enforces per-tenant quotas (checked before anything else, no I/O).
    pub fn with_quotas(mut self, quotas: Arc<TenantLimiter>) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// Ends open watch streams (with `UNAVAILABLE`, so clients re-watch
    /// elsewhere) when `shutdown` fires; graceful shutdown waits for streams.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The tenant's challenge, or `NOT_FOUND` (also for another tenant's).
    async fn load(&self, tenant: &TenantId, id: &str) -> Result<Challenge, ApiError> {
        let id = ChallengeId::parse(id)?;
        match self.storage.get_challenge(&id).await? {
            Some(c) if &c.tenant_id == tenant => Ok(c),
            _ => Err(ApiError::NotFound("challenge")),
        }
    }

    /// The part of CreateChallenge with side effects, detached from the call.
    fn creator(&self) -> Creator {
        Creator {
            storage: self.storage.clone(),
            queue: self.queue.clone(),
            guard: self.guard.clone(),
            quotas: self.quotas.clone(),
            audit: self.audit.clone(),
            webhooks: self.webhooks.clone(),
        }
    }
}

/// Runs CreateChallenge in a task of its own: once the guard has admitted a
/// challenge, storing it, queueing its pushes and (on failure) releasing the
/// admission must finish even if the caller goes away, or the user would be
/// blocked until the challenge would have expired.
#[derive(Clone)]
/// What a `CreateChallengeRequest` asks for, checked and converted: every
/// refusal of bad input, before any storage work (the fuzz target
/// `tenant_requests` runs exactly this).
pub struct CreateArgs {
    pub user_id: String,
    pub context: ChallengeContext,
    pub ttl: u32,
    pub mode: NumberMatchMode,
    pub options: pb::ChallengeOptions,
}

pub fn create_args(req: pb::CreateChallengeRequest) -> Result<CreateArgs, ApiError> {
    validate::user_id(&req.user_id)?;
    let context = convert::context_in(req.context)?;
    validate::context(&context)?;
    let options = req.options.unwrap_or_default();
    let ttl = match options.ttl_seconds {
        0 => DEFAULT_CHALLENGE_TTL_SECS,
        t if (MIN_CHALLENGE_TTL_SECS..=MAX_CHALLENGE_TTL_SECS).contains(&t) => t,
        t => {
            return Err(ApiError::invalid(
                "options.ttl_seconds",
                format!(
                    "{t} is outside {MIN_CHALLENGE_TTL_SECS}..={MAX_CHALLENGE_TTL_SECS} (0 means the default, {DEFAULT_CHALLENGE_TTL_SECS})"
                ),
            ))
        }
    };
    let mode = convert::number_match_in(options.number_match)?;
    validate::idempotency_key(&options.idempotency_key)?;
    Ok(CreateArgs {
        user_id: req.user_id,
        context,
        ttl,
        mode,
        options,
    })
}

struct Creator {
    storage: Arc<dyn Storage>,
    queue: Arc<dyn Queue>,
    guard: Arc<UserGuard>,
    quotas: Option<Arc<TenantLimiter>>,
    audit: AuditLog,
    webhooks: Notifier,
}

impl Creator {
    /// CreateChallenge's work, with its outcome in the audit trail: the
    /// challenge created, or the limit that refused it.
    async fn create(
        &self,
        tenant: TenantId,
        req: pb::CreateChallengeRequest,
        trace_id: String,
        origin: Origin,
    ) -> Result<Challenge, ApiError> {
        let user = req.user_id.clone();
        let r = self.create_inner(tenant.clone(), req, trace_id).await;
        match &r {
            Ok(c) => self.audit.record(
                origin
                    .entry(tenant.as_str(), AuditAction::ChallengeCreated)
                    .user(&c.user_id)
                    .challenge(&c.id)
                    .detail(format!("devices={}", c.devices.len())),
            ),
            Err(ApiError::Limited {
                reason, message, ..
            }) => self.audit.record(
                origin
                    .entry(tenant.as_str(), AuditAction::ChallengeRefused)
                    .user(user)
                    .detail(format!("{reason}: {message}")),
            ),
            Err(_) => {}
        }
        r
    }

    async fn create_inner(
        &self,
        tenant: TenantId,
        req: pb::CreateChallengeRequest,
        trace_id: String,
    ) -> Result<Challenge, ApiError> {
        let CreateArgs {
            user_id,
            context,
            ttl,
            mode,
            options,
        } = create_args(req)?;

        let devices: Vec<_> = self
            .storage
            .list_devices(&tenant, &user_id)
            .await?
            .into_iter()
            .filter(|d| d.is_active())
            .collect();
        if devices.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "user {:?} has no active device: enroll one first (BeginEnrollment)",
                user_id
            )));
        }

        let pushable = devices
            .iter()
            .filter(|d| d.push_enabled && !d.push_token.is_empty())
            .count();
        self.queue.check_room_for_pushes(pushable)?;

        let now = now_ms();
        // A retry of the still-pending challenge gets it back, before any
        // limit is charged for it.
        if !options.idempotency_key.is_empty() {
            if let Some(c) = self
                .pending_with_key(&tenant, &user_id, &options.idempotency_key, now)
                .await?
            {
                return Ok(c);
            }
        }
        if let Some(q) = &self.quotas {
            q.check(&tenant, now).map_err(|r| {
                crate::metrics::refused(&tenant, r.reason());
                ApiError::Limited {
                    message: match r {
                        QuotaRefusal::PerSecond { .. } => {
                            "the tenant's challenges-per-second quota is used up; retry shortly"
                                .into()
                        }
                        QuotaRefusal::PerDay { .. } => {
                            "the tenant's daily challenge quota is used up".into()
                        }
                    },
                    reason: r.reason(),
                    retry_after: Duration::from_millis(r.retry_after_ms().max(0) as u64),
                    do_not_retry: false,
                }
            })?;
        }
        let id = ChallengeId::generate();
        let expires_at = now + i64::from(ttl) * 1000;
        let challenge = Challenge {
            id: id.clone(),
            tenant_id: tenant.clone(),
            user_id: user_id.clone(),
            context_hash: payload::context_hash(&context),
            context,
            number_match: number_match::generate(mode),
            created_at: now,
            expires_at,
            idempotency_key: (!options.idempotency_key.is_empty())
                .then_some(options.idempotency_key),
            devices: devices.iter().map(|d| d.id.clone()).collect(),
            resolution: None,
        };
        // The guard's record and the challenge go to storage in one write
        // (one durable commit on the embedded store).
        let mut replaced = None;
        let admitted = self
            .guard
            .admit_with(
                &tenant,
                &user_id,
                &id,
                expires_at,
                now,
                options.replace_pending,
                |version, state, admission| {
                    let mut c = challenge.clone();
                    // Repeated denials: the user must prove they see the page.
                    if admission.number_match_forced && mode == NumberMatchMode::None {
                        c.number_match = number_match::generate(NumberMatchMode::Enter);
                    }
                    replaced = admission.replaced.clone();
                    let storage = self.storage.clone();
                    async move {
                        Ok(
                            match storage
                                .create_challenge_guarded(&c, version, &state)
                                .await?
                            {
                                GuardedCreate::Stale => None,
                                GuardedCreate::New => Some(Ok(c)),
                                GuardedCreate::Existing(earlier) => Some(Err(earlier)),
                            },
                        )
                    }
                },
            )
            .await;
        let (admission, stored) = match admitted {
            Ok(a) => a,
            Err(e) => {
                // Refused for this user: it must not cost the tenant's quota,
                // or bombing one user would lock out the tenant's others.
                if let Some(q) = &self.quotas {
                    q.refund(&tenant, now);
                }
                if matches!(e, GuardError::Storage(_)) {
                    // A backend without multi-key transactions may have
                    // stored the admission before failing on the challenge.
                    self.release(&tenant, &user_id, &id, now, replaced).await;
                }
                return Err(match e {
                    GuardError::Refused(r) => {
                        crate::metrics::refused(&tenant, r.reason());
                        crate::refusal(&r, now)
                    }
                    e => crate::guard_error(e),
                });
            }
        };
        let challenge = match stored {
            Ok(c) => c,
            Err(earlier) => {
                // The idempotency key named an earlier challenge: nothing new
                // reached the user.
                self.release(&tenant, &user_id, &id, now, admission.replaced)
                    .await;
                if earlier.user_id != user_id {
                    return Err(ApiError::invalid(
                        "options.idempotency_key",
                        "was already used for a challenge to another user",
                    ));
                }
                return Ok(*earlier);
            }
        };
        if let Err(e) = self.push(&challenge, &devices, &trace_id).await {
            self.release(&tenant, &user_id, &id, now, admission.replaced)
                .await;
            return Err(e);
        }
        metrics::counter!(crate::metrics::CHALLENGES_CREATED, "tenant" => tenant.to_string())
            .increment(1);
        if let Some(old) = admission.replaced {
            self.cancel_replaced(&tenant, &old.challenge_id).await;
        }
        Ok(challenge)
    }

    /// Gives back an admission whose challenge never reached the user: the
    /// prompt, and the slot to the challenge it was to replace. Does nothing
    /// when the guard's record does not hold it.
    async fn release(
        &self,
        tenant: &TenantId,
        user_id: &str,
        id: &ChallengeId,
        admitted_at: i64,
        replaced: Option<sesame_core::model::PendingSlot>,
    ) {
        if let Err(e) = self
            .guard
            .release(tenant, user_id, id, admitted_at, replaced)
            .await
        {
            tracing::warn!(error = %e, challenge_id = %id, "cannot release a guard admission");
        }
    }

    /// The user's pending challenge, if it carries this idempotency key.
    async fn pending_with_key(
        &self,
        tenant: &TenantId,
        user: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<Challenge>, ApiError> {
        let state = self
            .guard
            .status(tenant, user, now)
            .await
            .map_err(crate::guard_error)?;
        let Some(slot) = state.pending else {
            return Ok(None);
        };
        Ok(self
            .storage
            .get_challenge(&slot.challenge_id)
            .await?
            .filter(|c| {
                &c.tenant_id == tenant
                    && c.user_id == user
                    && c.idempotency_key.as_deref() == Some(key)
                    && c.status(now) == ChallengeStatus::Pending
            }))
    }

    /// Queues the pushes of a stored challenge; if the queue refuses them,
    /// cancels it.
    async fn push(
        &self,
        challenge: &Challenge,
        devices: &[sesame_core::Device],
        trace_id: &str,
    ) -> Result<(), ApiError> {
        let now = challenge.created_at;

        let jobs: Vec<PushJob> = devices
            .iter()
            .filter(|d| d.push_enabled && !d.push_token.is_empty())
            .map(|d| PushJob {
                tenant_id: challenge.tenant_id.clone(),
                user_id: challenge.user_id.clone(),
                device_id: d.id.clone(),
                challenge_id: challenge.id.clone(),
                platform: d.platform,
                push_token: d.push_token.clone(),
                push_app: d.push_app.clone(),
                expires_at: challenge.expires_at,
                enqueued_at: now,
                attempt: 0,
                trace_id: trace_id.to_owned(),
                not_before: 0,
            })
            .collect();
        if let Err(e) = self.queue.publish_pushes(jobs).await {
            // No push will go out: cancel so that nothing can answer a
            // challenge the tenant was told failed, then tell it to retry.
            let cancel = Resolution {
                outcome: Outcome::Cancelled,
                device_id: None,
                at: now_ms(),
            };
            if let Err(cancel_err) = self
                .storage
                .resolve_challenge(&challenge.id, &cancel, now_ms())
                .await
            {
                // Still answerable by polling; it expires at its TTL.
                tracing::error!(error = %cancel_err, challenge_id = %challenge.id, "cannot cancel a challenge whose pushes were refused");
            }
            return Err(e.into());
        }
        tracing::debug!(tenant = %challenge.tenant_id, challenge_id = %challenge.id, "challenge created");
        Ok(())
    }

    /// Cancels the pending challenge a new one replaced (`replace_pending`).
    async fn cancel_replaced(&self, tenant: &TenantId, old: &ChallengeId) {
        let now = now_ms();
        let cancel = Resolution {
            outcome: Outcome::Cancelled,
            device_id: None,
            at: now,
        };
        match self.storage.resolve_challenge(old, &cancel, now).await {
            Ok(_) => {
                let _ = self.queue.publish_event(Event::Verdict {
                    tenant_id: tenant.clone(),
                    challenge_id: old.clone(),
                    status: ChallengeStatus::Cancelled.into(),
                });
                let trace_id = sesame_grpc::trace::current().unwrap_or_default();
                let (w, t, c) = (self.webhooks.clone(), tenant.clone(), old.clone());
                tokio::spawn(async move { w.verdict(&t, &c, &trace_id).await });
            }
            // Answered or expired in the meantime: nothing to cancel.
            Err(StorageError::Transition(_)) | Err(StorageError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, challenge_id = %old, "cannot cancel a replaced challenge")
            }
        }
    }
}

/// How often a watch stream re-reads its challenge without being woken, by default.
pub const WATCH_RESYNC: Duration = Duration::from_secs(5);

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Challenge, Status>> + Send>>;

#[tonic::async_trait]
impl pb::challenge_service_server::ChallengeService for ChallengeApi {
    async fn create_challenge(
        &self,
        request: Request<pb::CreateChallengeRequest>,
    ) -> Result<Response<pb::CreateChallengeResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let creator = self.creator();
        let origin = Origin::of(&request);
        let req = request.into_inner();
        // The task outlives the call if need be; it keeps the call's trace.
        let trace_id = sesame_grpc::trace::current().unwrap_or_default();
        let span = tracing::Span::current();
        let c = tokio::spawn(tracing::Instrument::instrument(
            async move { creator.create(tenant, req, trace_id, origin).await },
            span,
        ))
        .await
        .map_err(|e| ApiError::Internal(format!("create task failed: {e}")))??;
        Ok(Response::new(pb::CreateChallengeResponse {
            challenge: Some(challenge_out(&c, now_ms())),
        }))
    }

    async fn get_challenge(
        &self,
        request: Request<pb::GetChallengeRequest>,
    ) -> Result<Response<pb::Challenge>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let c = self.load(&tenant, &request.get_ref().challenge_id).await?;
        Ok(Response::new(challenge_out(&c, now_ms())))
    }

    type WatchChallengeStream = WatchStream;

    async fn watch_challenge(
        &self,
        request: Request<pb::WatchChallengeRequest>,
    ) -> Result<Response<Self::WatchChallengeStream>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let first = self.load(&tenant, &request.get_ref().challenge_id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let storage = self.storage.clone();
        let watch = self.hub.watch(&first.id);
        let mut shutdown = self.shutdown.clone();
        let id = first.id.clone();
        let resync = self.watch_resync;
        tokio::spawn(async move {
            let mut last: Option<ChallengeStatus> = None;
            loop {
                let notified = watch.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // Read only after registering for wake-ups: a verdict written
                // between the read and the wait then still wakes us.
                let current = match storage.get_challenge(&id).await {
                    Ok(Some(c)) => c,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(ApiError::from(e)))).await;
                        return;
                    }
                };
                let now = now_ms();
                let status = current.status(now);
                if last != Some(status) {
                    if tx.send(Ok(challenge_out(&current, now))).await.is_err() {
                        return;
                    }
                    last = Some(status);
                }
                if status.is_final() {
                    return;
                }
                let until_expiry = Duration::from_millis((current.expires_at - now).max(0) as u64);
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(until_expiry) => {}
                    // Storage is the truth: re-read now and then even without
                    // an event, so a lost event costs seconds, not the whole TTL.
                    _ = tokio::time::sleep(resync) => {}
                    _ = tx.closed() => return,
                    _ = shutdown.wait() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down; watch again"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_user_status(
        &self,
        request: Request<pb::GetUserStatusRequest>,
    ) -> Result<Response<pb::UserStatus>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let user = request.into_inner().user_id;
        validate::user_id(&user).map_err(ApiError::from)?;
        let now = now_ms();
        let state = self
            .guard
            .status(&tenant, &user, now)
            .await
            .map_err(crate::guard_error)?;
        let policy = self.guard.policy(&tenant);
        let since = |secs: u64| now - (secs as i64).saturating_mul(1000);
        let pending_challenge_id = match &state.pending {
            Some(p) => match self.storage.get_challenge(&p.challenge_id).await {
                Ok(Some(c)) if c.status(now) == ChallengeStatus::Pending => c.id.to_string(),
                _ => String::new(),
            },
            None => String::new(),
        };
        Ok(Response::new(pb::UserStatus {
            prompts_in_window: state
                .pushes
                .iter()
                .filter(|t| **t > since(policy.prompt_window_secs))
                .count() as u32,
            prompt_limit: policy.max_prompts,
            prompt_window_seconds: policy.prompt_window_secs.try_into().unwrap_or(u32::MAX),
            pending_challenge_id,
            recent_denials: state
                .denials
                .iter()
                .filter(|t| **t > since(policy.escalate_window_secs))
                .count() as u32,
            number_match_forced: rules::number_match_forced(&state, now, policy),
            muted_until_unix_ms: if state.muted_until > now {
                state.muted_until
            } else {
                0
            },
            locked_until_unix_ms: if state.locked_until > now {
                state.locked_until
            } else {
                0
            },
            user_id: user,
        }))
    }

    async fn cancel_challenge(
        &self,
        request: Request<pb::CancelChallengeRequest>,
    ) -> Result<Response<pb::Challenge>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let c = self.load(&tenant, &request.get_ref().challenge_id).await?;
        let origin = Origin::of(&request);
        let now = now_ms();
        let resolution = Resolution {
            outcome: Outcome::Cancelled,
            device_id: None,
            at: now,
        };
        // Resolve and announce in a task of its own: if this call is cancelled
        // after the commit, the event must still go out.
        let (storage, queue, audit, webhooks) = (
            self.storage.clone(),
            self.queue.clone(),
            self.audit.clone(),
            self.webhooks.clone(),
        );
        let trace_id = sesame_grpc::trace::current().unwrap_or_default();
        let c = tokio::spawn(async move {
            let c = storage.resolve_challenge(&c.id, &resolution, now).await?;
            audit.record(
                origin
                    .entry(tenant.as_str(), AuditAction::ChallengeCancelled)
                    .user(&c.user_id)
                    .challenge(&c.id),
            );
            let _ = queue.publish_event(Event::Verdict {
                tenant_id: tenant.clone(),
                challenge_id: c.id.clone(),
                status: ChallengeStatus::Cancelled.into(),
            });
            let (t, id) = (tenant.clone(), c.id.clone());
            tokio::spawn(async move { webhooks.verdict(&t, &id, &trace_id).await });
            metrics::counter!(crate::metrics::CHALLENGES_CANCELLED, "tenant" => c.tenant_id.to_string())
                .increment(1);
            Ok::<_, StorageError>(c)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("cancel task failed: {e}")))?
        .map_err(ApiError::from)?;
        Ok(Response::new(challenge_out(&c, now)))
    }
}
