//! `sesame tenant ...` and `sesame apikey ...`: the operator's side, over
//! `sesame.admin.v1.TenantAdminService` with the admin key.
//!
//! A new key's secret is the only thing written to stdout, so that
//! `KEY=$(sesame tenant create bank)` captures it; everything else a person
//! reads goes to stderr, and listings to stdout.

use std::path::Path;

use anyhow::Context;
use sesame_proto::admin::v1 as pb;
use sesame_proto::admin::v1::tenant_admin_service_client::TenantAdminServiceClient;
use tonic::transport::Channel;

use super::authed;
use crate::server::ADMIN_KEY_FILE;

/// The admin key: `--admin-key` / `SESAME_ADMIN_KEY`, else the one
/// `sesame serve` generated in `<data_dir>/admin.key`.
pub fn resolve_admin_key(explicit: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    super::resolve_key(
        explicit,
        data_dir,
        ADMIN_KEY_FILE,
        "admin key",
        "--admin-key (or SESAME_ADMIN_KEY)",
    )
}

pub struct Admin {
    client: TenantAdminServiceClient<Channel>,
    key: String,
}

fn state_name(state: i32) -> &'static str {
    match pb::ApiKeyState::try_from(state) {
        Ok(pb::ApiKeyState::Active) => "active",
        Ok(pb::ApiKeyState::Expiring) => "expiring",
        Ok(pb::ApiKeyState::Expired) => "expired",
        Ok(pb::ApiKeyState::Revoked) => "revoked",
        _ => "unknown",
    }
}

/// A Unix-milliseconds time as UTC `YYYY-MM-DD hh:mm:ss` (0: "-").
fn when(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn print_tenant(t: &pb::Tenant) {
    println!(
        "{}\t{}\t{}\t{}\t{}",
        t.tenant_id,
        if t.disabled { "disabled" } else { "enabled" },
        when(t.created_at_unix_ms),
        if t.client_identity.is_empty() {
            "-"
        } else {
            &t.client_identity
        },
        t.display_name
    );
}

fn print_key(k: &pb::ApiKey) {
    println!(
        "{}\t{}\t{}\t{}",
        k.key_id,
        state_name(k.state),
        when(k.created_at_unix_ms),
        when(k.expires_at_unix_ms)
    );
}

impl Admin {
    pub async fn connect(server: &str, key: String) -> anyhow::Result<Self> {
        let channel = sesame_device_sim::connect(server)
            .await
            .with_context(|| format!("connecting to {server}"))?;
        Ok(Admin {
            client: TenantAdminServiceClient::new(channel),
            key,
        })
    }

    pub async fn create_tenant(
        &mut self,
        tenant_id: &str,
        display_name: &str,
        client_identity: &str,
    ) -> anyhow::Result<()> {
        let r = self
            .client
            .create_tenant(authed(
                &self.key,
                pb::CreateTenantRequest {
                    tenant_id: tenant_id.to_owned(),
                    display_name: display_name.to_owned(),
                    client_identity: client_identity.to_owned(),
                },
            )?)
            .await
            .context("CreateTenant")?
            .into_inner();
        eprintln!(
            "tenant {tenant_id} created; its API key (key id {}) follows, shown this once",
            r.key.map(|k| k.key_id).unwrap_or_default()
        );
        println!("{}", r.api_key);
        Ok(())
    }

    pub async fn get_tenant(&mut self, tenant_id: &str) -> anyhow::Result<()> {
        let t = self
            .client
            .get_tenant(authed(
                &self.key,
                pb::GetTenantRequest {
                    tenant_id: tenant_id.to_owned(),
                },
            )?)
            .await
            .context("GetTenant")?
            .into_inner();
        print_tenant(&t);
        Ok(())
    }

    /// Every tenant, page after page.
    pub async fn list_tenants(&mut self) -> anyhow::Result<()> {
        let mut page_token = String::new();
        loop {
            let r = self
                .client
                .list_tenants(authed(
                    &self.key,
                    pb::ListTenantsRequest {
                        page_size: 500,
                        page_token,
                    },
                )?)
                .await
                .context("ListTenants")?
                .into_inner();
            r.tenants.iter().for_each(print_tenant);
            if r.next_page_token.is_empty() {
                return Ok(());
            }
            page_token = r.next_page_token;
        }
    }

    pub async fn update_tenant(&mut self, request: pb::UpdateTenantRequest) -> anyhow::Result<()> {
        let t = self
            .client
            .update_tenant(authed(&self.key, request)?)
            .await
            .context("UpdateTenant")?
            .into_inner();
        print_tenant(&t);
        Ok(())
    }

    pub async fn create_key(&mut self, tenant_id: &str) -> anyhow::Result<()> {
        let r = self
            .client
            .create_api_key(authed(
                &self.key,
                pb::CreateApiKeyRequest {
                    tenant_id: tenant_id.to_owned(),
                },
            )?)
            .await
            .context("CreateApiKey")?
            .into_inner();
        eprintln!(
            "new API key for {tenant_id} (key id {}), shown this once:",
            r.key.map(|k| k.key_id).unwrap_or_default()
        );
        println!("{}", r.api_key);
        Ok(())
    }

    pub async fn list_keys(&mut self, tenant_id: &str) -> anyhow::Result<()> {
        let r = self
            .client
            .list_api_keys(authed(
                &self.key,
                pb::ListApiKeysRequest {
                    tenant_id: tenant_id.to_owned(),
                },
            )?)
            .await
            .context("ListApiKeys")?
            .into_inner();
        r.keys.iter().for_each(print_key);
        Ok(())
    }

    pub async fn rotate_key(
        &mut self,
        tenant_id: &str,
        key_id: &str,
        grace_seconds: Option<u32>,
    ) -> anyhow::Result<()> {
        let r = self
            .client
            .rotate_api_key(authed(
                &self.key,
                pb::RotateApiKeyRequest {
                    tenant_id: tenant_id.to_owned(),
                    key_id: key_id.to_owned(),
                    grace_seconds,
                },
            )?)
            .await
            .context("RotateApiKey")?
            .into_inner();
        let old = r.old_key.unwrap_or_default();
        eprintln!(
            "key {} keeps working until {} UTC; its replacement (key id {}) follows, shown this once",
            old.key_id,
            when(old.expires_at_unix_ms),
            r.new_key.map(|k| k.key_id).unwrap_or_default()
        );
        println!("{}", r.api_key);
        Ok(())
    }

    pub async fn revoke_key(&mut self, tenant_id: &str, key_id: &str) -> anyhow::Result<()> {
        let k = self
            .client
            .revoke_api_key(authed(
                &self.key,
                pb::RevokeApiKeyRequest {
                    tenant_id: tenant_id.to_owned(),
                    key_id: key_id.to_owned(),
                },
            )?)
            .await
            .context("RevokeApiKey")?
            .into_inner();
        print_key(&k);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::when;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(when(0), "-");
        assert_eq!(when(1), "1970-01-01 00:00:00");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(when(1_796_428_799_000), "2026-12-04 23:59:59");
    }
}
