//! One signed POST to a tenant's endpoint, and the SSRF guard.
//!
//! The guard sits where the address is chosen, not only where the URL is
//! registered: a literal IP in the URL is checked before connecting, and
//! every name is resolved by [`GuardedResolver`], which hands the HTTP
//! client only the addresses the policy allows. A name that resolved to a
//! public address at registration and to `169.254.169.254` now (DNS
//! rebinding) is refused at the connection it would have been used for.
//! Redirects are not followed (a 3xx is a failed attempt) and no proxy is
//! used, so nothing else picks the address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sesame_core::webhook::{
    signature_header, AddressPolicy, EndpointUrl, Secret, HEADER_ID, HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
};

use crate::WebhookConfig;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// Anything else that may pass: a non-2xx answer, a timeout, a refused
    /// connection, a TLS failure. `after`: the receiver's `Retry-After`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Not sent, and not to be retried: the endpoint's address is not
    /// allowed.
    Refused { reason: String },
}

/// The endpoint's name resolved only to addresses the policy refuses.
#[derive(Debug)]
struct Blocked(String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Blocked {}

/// System DNS, then the address policy: refused addresses are dropped; if
/// none is left the connection fails with [`Blocked`].
pub struct GuardedResolver {
    policy: AddressPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
                .into_iter()
                .partition(|a| policy.check(a.ip()).is_ok());
            if allowed.is_empty() {
                // The addresses go to the operator's log only: the reason
                // reaches the tenant (dead deliveries), who must not learn
                // how internal names resolve.
                let list: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
                tracing::warn!(%host, addresses = %list.join(", "), "webhook endpoint resolves only to non-public addresses; refused");
                return Err(Box::new(Blocked(format!(
                    "{host} resolves only to non-public addresses (refused; the operator may allow a range with webhook.allow_private)"
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

pub struct Sender {
    client: reqwest::Client,
    policy: AddressPolicy,
}

/// `e` with its sources (reqwest's own message hides the cause).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> (String, bool) {
    let mut s = e.to_string();
    let mut blocked = false;
    let mut cur = e.source();
    while let Some(c) = cur {
        blocked |= c.downcast_ref::<Blocked>().is_some();
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    (s, blocked)
}

impl Sender {
    pub fn new(config: &WebhookConfig) -> Result<Sender, String> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(
                sesame_push::client_tls_config(
                    &sesame_push::TlsOptions {
                        extra_ca_pem: config.extra_ca_pem.clone(),
                        client_identity_pem: None,
                    },
                    // Whatever the receiver speaks.
                    &[b"h2", b"http/1.1"],
                )
                .map_err(|e| format!("webhook.ca_file: {e}"))?,
            )
            .dns_resolver(Arc::new(GuardedResolver {
                policy: config.allow.clone(),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.per_tenant_concurrency.max(1))
            .user_agent(concat!("Sesame-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Sender {
            client,
            policy: config.allow.clone(),
        })
    }

    /// POSTs `body` to `url`, signed with each of `secrets` for this
    /// attempt's timestamp.
    pub async fn post(
        &self,
        url: &EndpointUrl,
        id: &str,
        secrets: &[Secret],
        body: Vec<u8>,
    ) -> Attempt {
        if let Some(ip) = url.literal_ip() {
            if let Err(e) = self.policy.check(ip) {
                return Attempt::Refused {
                    reason: e.to_string(),
                };
            }
        }
        let timestamp = now_secs();
        let signature = signature_header(secrets, id, timestamp, &body);
        let started = Instant::now();
        let sent = self
            .client
            .post(url.url().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(body)
            .send()
            .await;
        ::metrics::histogram!(crate::metrics::REQUEST_SECONDS)
            .record(started.elapsed().as_secs_f64());
        match sent {
            // The body is never read: nothing the receiver says matters
            // beyond its status and when to come back.
            Ok(r) => read_answer(
                r.status().as_u16(),
                r.headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()),
            ),
            Err(e) => {
                // Without the URL: its path or query may hold the
                // receiver's own token, and the reason is logged, audited
                // and shown in dead deliveries.
                let e = e.without_url();
                let (reason, blocked) = error_chain(&e);
                if blocked {
                    Attempt::Refused { reason }
                } else {
                    Attempt::Retry {
                        reason,
                        after: None,
                    }
                }
            }
        }
    }
}

/// What a receiver's answer means: 2xx delivered, anything else another
/// try, after `Retry-After` seconds when it gave them (an HTTP date or
/// garbage is ignored; the worker caps the wait at its `max_backoff`).
pub fn read_answer(status: u16, retry_after: Option<&str>) -> Attempt {
    if (200..300).contains(&status) {
        return Attempt::Delivered { status };
    }
    let after = retry_after.and_then(sesame_push::parse_retry_after);
    let reason = if (300..400).contains(&status) {
        format!("receiver answered {status} (redirects are not followed)")
    } else {
        format!("receiver answered {status}")
    };
    Attempt::Retry { reason, after }
}

fn now_secs() -> i64 {
    sesame_core::time::now_ms().div_euclid(1000)
}
