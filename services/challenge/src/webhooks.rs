//! `sesame.tenant.v1.WebhookService`: a tenant's verdict webhook endpoint,
//! its signing secrets, and its dead deliveries. Delivery itself is
//! `sesame_webhook`'s.

use std::sync::Arc;
use std::time::Duration;

use sesame_audit::AuditLog;
use sesame_core::audit::AuditAction;
use sesame_core::time::now_ms;
use sesame_core::webhook::{
    delivery_id, AddressPolicy, EndpointUrl, SealKey, Secret, StoredSecret, WebhookEndpoint,
};
use sesame_core::{ChallengeId, TenantId};
use sesame_grpc::auth::Origin;
use sesame_grpc::ApiError;
use sesame_proto::tenant::v1 as pb;
use sesame_queue::{Queue, WebhookJob};
use sesame_storage::Storage;
use sesame_webhook::Endpoints;
use tonic::{Request, Response, Status};

use crate::TenantAuth;

/// How long a rotated-out secret keeps signing by default, and at most.
pub const DEFAULT_GRACE_SECS: u32 = 86_400;
pub const MAX_GRACE_SECS: u32 = 7 * 86_400;
/// Longest delivery id or page token accepted.
const MAX_ID_LEN: usize = 200;
/// Redeliveries a tenant may queue: a burst, then this many a second, so
/// one tenant cannot fill the queue every tenant's verdicts share.
const REDELIVER_BURST: f64 = 100.0;
const REDELIVER_PER_SEC: f64 = 10.0;

pub struct WebhookApi {
    storage: Arc<dyn Storage>,
    queue: Arc<dyn Queue>,
    auth: TenantAuth,
    audit: AuditLog,
    endpoints: Arc<Endpoints>,
    policy: AddressPolicy,
    seal_key: Option<Arc<SealKey>>,
    /// tenant -> (tokens, when last refilled)
    redeliveries: dashmap::DashMap<TenantId, (f64, std::time::Instant)>,
}

fn webhook_out(e: &WebhookEndpoint, now: i64) -> pb::Webhook {
    let live: Vec<&StoredSecret> = e
        .secrets
        .iter()
        .filter(|s| s.retire_at.is_none_or(|t| now < t))
        .collect();
    pb::Webhook {
        url: e.url.clone(),
        created_at_unix_ms: e.created_at,
        updated_at_unix_ms: e.updated_at,
        live_secrets: live.len() as u32,
        previous_secret_retires_at_unix_ms: live
            .iter()
            .filter_map(|s| s.retire_at)
            .max()
            .unwrap_or(0),
    }
}

/// Host and port only: a URL's path or query may hold the receiver's own
/// routing token, which has no place in the audit trail.
fn host_of(u: &EndpointUrl) -> String {
    format!("{}:{}", u.url().host_str().unwrap_or_default(), u.port())
}

impl WebhookApi {
    pub fn new(
        storage: Arc<dyn Storage>,
        queue: Arc<dyn Queue>,
        auth: TenantAuth,
        audit: AuditLog,
        endpoints: Arc<Endpoints>,
        policy: AddressPolicy,
        seal_key: Option<Arc<SealKey>>,
    ) -> Self {
        WebhookApi {
            storage,
            queue,
            auth,
            audit,
            endpoints,
            policy,
            seal_key,
            redeliveries: dashmap::DashMap::new(),
        }
    }

    /// Takes one redelivery from the tenant's bucket.
    fn take_redelivery(&self, tenant: &TenantId) -> Result<(), ApiError> {
        let mut e = self
            .redeliveries
            .entry(tenant.clone())
            .or_insert((REDELIVER_BURST, std::time::Instant::now()));
        let (tokens, at) = *e;
        let now = std::time::Instant::now();
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * REDELIVER_PER_SEC)
            .min(REDELIVER_BURST);
        if tokens < 1.0 {
            *e = (tokens, now);
            return Err(ApiError::ResourceExhausted(format!(
                "at most {REDELIVER_PER_SEC} redeliveries a second (bursts of {REDELIVER_BURST}); retry shortly"
            )));
        }
        *e = (tokens - 1.0, now);
        Ok(())
    }

    /// The URL, checked: syntax, https, and where it points now. A name
    /// that resolves only to refused addresses is refused here for a clear
    /// answer; the sender checks again at every connection (DNS changes).
    async fn check_url(&self, url: &str) -> Result<EndpointUrl, ApiError> {
        let u = EndpointUrl::parse(url).map_err(|e| ApiError::invalid("url", e))?;
        if let Some(ip) = u.literal_ip() {
            self.policy
                .check(ip)
                .map_err(|e| ApiError::invalid("url", e))?;
            return Ok(u);
        }
        let host = u.url().host_str().unwrap_or_default().to_owned();
        let lookup = tokio::net::lookup_host((host.clone(), u.port()));
        // A name that does not resolve (yet) is accepted: deliveries retry.
        if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(2), lookup).await {
            let addrs: Vec<_> = addrs.map(|a| a.ip()).collect();
            if !addrs.is_empty() && addrs.iter().all(|ip| self.policy.check(*ip).is_err()) {
                // Which addresses is for the operator's log: a tenant must
                // not be able to map internal names through this answer.
                let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                tracing::info!(%host, addresses = %list.join(", "), "webhook URL refused: resolves only to non-public addresses");
                return Err(ApiError::invalid(
                    "url",
                    format!(
                        "{host} resolves only to non-public addresses; webhooks go to public addresses unless the operator allows a range (webhook.allow_private)"
                    ),
                ));
            }
        }
        Ok(u)
    }

    fn record(&self, origin: &Origin, tenant: &TenantId, detail: String) {
        self.audit.record(
            origin
                .entry(tenant.as_str(), AuditAction::WebhookChanged)
                .detail(detail),
        );
    }

    async fn endpoint(&self, tenant: &TenantId) -> Result<WebhookEndpoint, ApiError> {
        self.storage
            .get_webhook(tenant)
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("webhook"))
    }
}

/// The version a change writes: its time, and always past the one it read.
fn next_version(read: i64, now: i64) -> i64 {
    now.max(read.saturating_add(1))
}

fn concurrent() -> ApiError {
    ApiError::Aborted(
        "the webhook changed meanwhile (another SetWebhook, rotation or delete); read it and retry"
            .into(),
    )
}

impl WebhookApi {
    /// A new secret: what the tenant is shown, and what is stored (sealed
    /// with the operator's key when there is one).
    fn new_secret(&self, tenant: &TenantId) -> (String, String) {
        let s = Secret::generate();
        let stored = match &self.seal_key {
            Some(k) => k.seal(&s, tenant.as_str()),
            None => s.encode(),
        };
        (s.encode(), stored)
    }
}

fn check_id(field: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > MAX_ID_LEN || v.chars().any(|c| c.is_control()) {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_ID_LEN} characters, no control characters"),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for WebhookApi {
    async fn set_webhook(
        &self,
        request: Request<pb::SetWebhookRequest>,
    ) -> Result<Response<pb::SetWebhookResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let origin = Origin::of(&request);
        let url = self.check_url(&request.into_inner().url).await?;
        let now = now_ms();
        let (endpoint, secret, expected) = match self.endpoint(&tenant).await {
            Ok(mut e) => {
                let read = e.updated_at;
                e.url = url.as_str().to_owned();
                e.updated_at = next_version(read, now);
                (e, String::new(), Some(read))
            }
            Err(ApiError::NotFound(_)) => {
                let (secret, stored) = self.new_secret(&tenant);
                let e = WebhookEndpoint {
                    tenant_id: tenant.clone(),
                    url: url.as_str().to_owned(),
                    secrets: vec![StoredSecret {
                        secret: stored,
                        created_at: now,
                        retire_at: None,
                    }],
                    created_at: now,
                    updated_at: now,
                };
                (e, secret, None)
            }
            Err(e) => return Err(e.into()),
        };
        if !self
            .storage
            .put_webhook(&endpoint, expected)
            .await
            .map_err(ApiError::from)?
        {
            return Err(concurrent().into());
        }
        self.endpoints.invalidate(&tenant);
        let what = if secret.is_empty() {
            "URL changed"
        } else {
            "created"
        };
        self.record(
            &origin,
            &tenant,
            format!("endpoint {what} ({})", host_of(&url)),
        );
        Ok(Response::new(pb::SetWebhookResponse {
            webhook: Some(webhook_out(&endpoint, now)),
            secret,
        }))
    }

    async fn get_webhook(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let e = self.endpoint(&tenant).await?;
        Ok(Response::new(webhook_out(&e, now_ms())))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let origin = Origin::of(&request);
        if !self
            .storage
            .delete_webhook(&tenant)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound("webhook").into());
        }
        self.endpoints.invalidate(&tenant);
        self.record(&origin, &tenant, "endpoint deleted".into());
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let origin = Origin::of(&request);
        let grace = match request.into_inner().grace_seconds {
            0 => DEFAULT_GRACE_SECS,
            g if g > MAX_GRACE_SECS => {
                return Err(ApiError::invalid(
                    "grace_seconds",
                    format!("is {g}; at most {MAX_GRACE_SECS} (7 days)"),
                )
                .into())
            }
            g => g,
        };
        let mut e = self.endpoint(&tenant).await?;
        let now = now_ms();
        let (secret, stored) = self.new_secret(&tenant);
        // The current secret retires after the grace period; one rotated
        // out earlier stops now (two live secrets at most).
        let previous = e
            .secrets
            .iter()
            .find(|s| s.retire_at.is_none())
            .cloned()
            .map(|s| StoredSecret {
                retire_at: Some(now + i64::from(grace) * 1000),
                ..s
            });
        e.secrets = std::iter::once(StoredSecret {
            secret: stored,
            created_at: now,
            retire_at: None,
        })
        .chain(previous)
        .collect();
        let read = e.updated_at;
        e.updated_at = next_version(read, now);
        if !self
            .storage
            .put_webhook(&e, Some(read))
            .await
            .map_err(ApiError::from)?
        {
            // The secret made here was never stored: it is not shown.
            return Err(concurrent().into());
        }
        self.endpoints.invalidate(&tenant);
        self.record(
            &origin,
            &tenant,
            format!("secret rotated (previous one signs for {grace} s)"),
        );
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            webhook: Some(webhook_out(&e, now)),
            secret,
        }))
    }

    async fn list_dead_deliveries(
        &self,
        request: Request<pb::ListDeadDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeadDeliveriesResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let r = request.into_inner();
        let size = crate::admin::page_size(r.page_size)?;
        check_id("page_token", &r.page_token)?;
        let after = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let mut page = self
            .storage
            .list_dead_deliveries(&tenant, after, size + 1)
            .await
            .map_err(ApiError::from)?;
        let more = page.len() > size;
        page.truncate(size);
        let next_page_token = match page.last() {
            Some(d) if more => d.delivery_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListDeadDeliveriesResponse {
            deliveries: page
                .into_iter()
                .map(|d| pb::DeadDelivery {
                    delivery_id: d.delivery_id,
                    challenge_id: d.challenge_id,
                    attempts: d.attempts,
                    last_error: d.last_error,
                    failed_at_unix_ms: d.failed_at,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn redeliver_webhook(
        &self,
        request: Request<pb::RedeliverWebhookRequest>,
    ) -> Result<Response<pb::RedeliverWebhookResponse>, Status> {
        let tenant = self.auth.authenticate(&request).await?;
        let origin = Origin::of(&request);
        let id = request.into_inner().delivery_id;
        check_id("delivery_id", &id)?;
        // A verdict's delivery id is `vd_<challenge id>`.
        let challenge = id
            .strip_prefix("vd_")
            .and_then(|c| ChallengeId::parse(c).ok())
            .ok_or_else(|| ApiError::invalid("delivery_id", "not a delivery id (vd_ch_...)"))?;
        let c = self
            .storage
            .get_challenge(&challenge)
            .await
            .map_err(ApiError::from)?
            .filter(|c| c.tenant_id == tenant)
            .ok_or(ApiError::NotFound("delivery"))?;
        if sesame_webhook::worker::notice(&c, &id).is_none() {
            return Err(ApiError::FailedPrecondition(
                "that challenge has no verdict to announce (pending or expired)".into(),
            )
            .into());
        }
        self.endpoint(&tenant).await.map_err(|e| match e {
            ApiError::NotFound(_) => {
                ApiError::FailedPrecondition("no webhook endpoint is set; SetWebhook first".into())
            }
            e => e,
        })?;
        self.take_redelivery(&tenant)?;
        let job = WebhookJob {
            tenant_id: tenant.clone(),
            challenge_id: c.id.clone(),
            delivery_id: delivery_id(c.id.as_str()),
            attempt: 0,
            not_before: 0,
            enqueued_at: now_ms(),
            trace_id: String::new(),
            redelivery: true,
        };
        self.queue
            .publish_webhook(job)
            .await
            .map_err(|e| ApiError::Unavailable(format!("cannot queue the delivery now: {e}")))?;
        self.record(&origin, &tenant, format!("redelivery of {id} queued"));
        Ok(Response::new(pb::RedeliverWebhookResponse {}))
    }
}
