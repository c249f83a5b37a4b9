//! Per-tenant push apps: each tenant brings its own APNs key, team and
//! bundle id, and its own Firebase project, so one tenant's credentials
//! never sign another's pushes and a revoked key stops one tenant only.
//! A device is tied to one app at enrollment (`push_app`); its push jobs
//! carry the app id and [`PushApps`] sends each through that app's client.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sesame_core::model::Platform;
use sesame_core::push_apps::PushAppCatalog;
use sesame_core::time::UnixMillis;
use sesame_core::TenantId;
use sesame_queue::PushJob;

use crate::apns::{ApnsAuth, ApnsClient, ApnsConfig};
use crate::fcm::{FcmClient, FcmConfig, ServiceAccount};
use crate::http::read_file;
use crate::payload::AlertText;
use crate::{PushConfigError, PushOutcome, PushProvider, TlsOptions};

/// `[push_apps.<app id>]`: one tenant's app on one platform.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushAppConfig {
    pub tenant: String,
    /// `ios` (sent through APNs) or `android` (through FCM).
    pub platform: String,
    pub apns: Option<ApnsAppConfig>,
    pub fcm: Option<FcmAppConfig>,
    pub alert: AlertText,
}

/// `[push_apps.<id>.apns]`: token auth (`key_file`, `key_id`, `team_id`)
/// or certificate auth (`cert_file`, `cert_key_file`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsAppConfig {
    /// `production`, `sandbox`, or an https:// URL (a simulator).
    pub base_url: String,
    /// The app's bundle id.
    pub topic: String,
    /// The `AuthKey_<key id>.p8` file.
    pub key_file: String,
    pub key_id: String,
    pub team_id: String,
    /// PEM client certificate chain and key, for certificate auth.
    pub cert_file: String,
    pub cert_key_file: String,
    /// Extra CA certificates (PEM) to trust, e.g. a simulator's.
    pub ca_file: String,
    pub connections: usize,
    pub timeout_ms: u64,
}

impl Default for ApnsAppConfig {
    fn default() -> Self {
        ApnsAppConfig {
            base_url: "production".into(),
            topic: String::new(),
            key_file: String::new(),
            key_id: String::new(),
            team_id: String::new(),
            cert_file: String::new(),
            cert_key_file: String::new(),
            ca_file: String::new(),
            connections: 2,
            timeout_ms: 10_000,
        }
    }
}

/// `[push_apps.<id>.fcm]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmAppConfig {
    /// `production` or an https:// URL (a simulator).
    pub base_url: String,
    /// The service-account key file downloaded from the Firebase console;
    /// its `project_id` is the project pushes are sent through.
    pub service_account_file: String,
    pub ca_file: String,
    pub timeout_ms: u64,
}

impl Default for FcmAppConfig {
    fn default() -> Self {
        FcmAppConfig {
            base_url: "production".into(),
            service_account_file: String::new(),
            ca_file: String::new(),
            timeout_ms: 10_000,
        }
    }
}

fn platform_of(id: &str, s: &str) -> Result<Platform, PushConfigError> {
    match s {
        "ios" => Ok(Platform::Ios),
        "android" => Ok(Platform::Android),
        other => Err(PushConfigError::Invalid(format!(
            "push_apps.{id}.platform = {other:?}: \"ios\" or \"android\""
        ))),
    }
}

fn opt_file(path: &str) -> Result<Option<String>, PushConfigError> {
    if path.is_empty() {
        Ok(None)
    } else {
        read_file(path).map(Some)
    }
}

/// The catalog enrollment checks `push_app` against (no key files read).
pub fn catalog(apps: &BTreeMap<String, PushAppConfig>) -> Result<PushAppCatalog, PushConfigError> {
    let mut catalog = PushAppCatalog::default();
    for (id, app) in apps {
        let tenant = TenantId::parse(&app.tenant)
            .map_err(|e| PushConfigError::Invalid(format!("push_apps.{id}.tenant: {e}")))?;
        catalog
            .insert(id, tenant, platform_of(id, &app.platform)?)
            .map_err(PushConfigError::Invalid)?;
    }
    Ok(catalog)
}

enum Client {
    Apns(ApnsClient),
    Fcm(FcmClient),
}

struct App {
    tenant: TenantId,
    client: Client,
}

/// Sends each job through its app's APNs or FCM client.
pub struct PushApps {
    apps: HashMap<String, App>,
}

impl PushApps {
    /// Reads every app's key files and builds its clients; any error names
    /// the app and the setting.
    pub fn from_config(apps: &BTreeMap<String, PushAppConfig>) -> Result<Self, PushConfigError> {
        let mut out = HashMap::new();
        for (id, app) in apps {
            let ctx = |e: PushConfigError| PushConfigError::Invalid(format!("push_apps.{id}: {e}"));
            let tenant = TenantId::parse(&app.tenant)
                .map_err(|e| PushConfigError::Invalid(format!("push_apps.{id}.tenant: {e}")))?;
            let client = match platform_of(id, &app.platform)? {
                Platform::Ios => {
                    let a = app.apns.as_ref().ok_or_else(|| {
                        PushConfigError::Invalid(format!(
                            "push_apps.{id}: an ios app needs an [push_apps.{id}.apns] section"
                        ))
                    })?;
                    let cert = !a.cert_file.is_empty();
                    let auth = if cert {
                        ApnsAuth::Certificate
                    } else {
                        if a.key_file.is_empty() {
                            return Err(PushConfigError::Invalid(format!(
                                "push_apps.{id}.apns: set key_file, key_id and team_id (token auth) or cert_file and cert_key_file"
                            )));
                        }
                        ApnsAuth::Token {
                            p8_pem: read_file(&a.key_file).map_err(ctx)?,
                            key_id: a.key_id.clone(),
                            team_id: a.team_id.clone(),
                        }
                    };
                    let identity = if cert {
                        Some((
                            read_file(&a.cert_file).map_err(ctx)?,
                            read_file(&a.cert_key_file).map_err(ctx)?,
                        ))
                    } else {
                        None
                    };
                    Client::Apns(
                        ApnsClient::new(ApnsConfig {
                            base_url: a.base_url.clone(),
                            topic: a.topic.clone(),
                            auth,
                            tls: TlsOptions {
                                extra_ca_pem: opt_file(&a.ca_file).map_err(ctx)?,
                                client_identity_pem: identity,
                            },
                            connections: a.connections,
                            request_timeout: Duration::from_millis(a.timeout_ms.max(100)),
                            alert: app.alert.clone(),
                        })
                        .map_err(ctx)?,
                    )
                }
                Platform::Android => {
                    let f = app.fcm.as_ref().ok_or_else(|| {
                        PushConfigError::Invalid(format!(
                            "push_apps.{id}: an android app needs an [push_apps.{id}.fcm] section"
                        ))
                    })?;
                    let sa = ServiceAccount::from_json(
                        &read_file(&f.service_account_file).map_err(ctx)?,
                    )
                    .map_err(ctx)?;
                    Client::Fcm(
                        FcmClient::new(FcmConfig {
                            base_url: f.base_url.clone(),
                            service_account: sa,
                            tls: TlsOptions {
                                extra_ca_pem: opt_file(&f.ca_file).map_err(ctx)?,
                                client_identity_pem: None,
                            },
                            request_timeout: Duration::from_millis(f.timeout_ms.max(100)),
                            alert: app.alert.clone(),
                        })
                        .map_err(ctx)?,
                    )
                }
            };
            out.insert(id.clone(), App { tenant, client });
        }
        Ok(PushApps { apps: out })
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

#[async_trait]
impl PushProvider for PushApps {
    fn name(&self) -> &'static str {
        "push_apps"
    }

    fn provider_for(&self, job: &PushJob) -> &'static str {
        match job.platform {
            Platform::Ios => "apns",
            Platform::Android => "fcm",
        }
    }

    async fn send(&self, job: &PushJob, now: UnixMillis) -> PushOutcome {
        let Some(app) = self.apps.get(&job.push_app) else {
            return PushOutcome::Misconfigured {
                reason: format!(
                    "push app {:?} of device {} is not configured here (push_apps)",
                    job.push_app, job.device_id
                ),
            };
        };
        if app.tenant != job.tenant_id {
            // Never sign one tenant's push with another tenant's key.
            return PushOutcome::Misconfigured {
                reason: format!(
                    "push app {:?} does not belong to tenant {}",
                    job.push_app, job.tenant_id
                ),
            };
        }
        match &app.client {
            Client::Apns(c) => c.send(job, now).await,
            Client::Fcm(c) => c.send(job, now).await,
        }
    }
}
