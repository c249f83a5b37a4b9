//! Tenant and API-key administration over real gRPC: the operator creates a
//! tenant and its key works on the tenant API; rotation keeps two keys
//! working and then only the new one; revocation and disabling stop a
//! tenant's calls at once; the admin API takes only the admin key; every bad
//! input gets its status. And the `sesame tenant` / `sesame apikey` commands
//! against a running server.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sesame_proto::admin::v1 as apb;
use sesame_proto::admin::v1::tenant_admin_service_client::TenantAdminServiceClient;
use sesame_proto::tenant::v1 as pb;
use tonic::transport::Channel;
use tonic::{Code, Request};

struct Admin {
    h: Harness,
    key: String,
}

impl Admin {
    /// A server whose admin key is given in `admin_key_file`.
    async fn start() -> Admin {
        let key = sesame_challenge::admin::generate_admin_key();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{key}\n")).unwrap();
        let path = file.path().display().to_string();
        let h = Harness::start_configured(move |c| c.admin_key_file = path).await;
        // The server has read the file once it answers.
        h.enrollment()
            .list_devices(h.req(pb::ListDevicesRequest {
                user_id: "warm-up".into(),
            }))
            .await
            .unwrap();
        drop(file);
        Admin { h, key }
    }

    fn client(&self) -> TenantAdminServiceClient<Channel> {
        TenantAdminServiceClient::new(self.h.channel.clone())
    }

    fn req<T>(&self, m: T) -> Request<T> {
        sesame::cli::authed(&self.key, m).unwrap()
    }

    async fn create(&self, id: &str) -> apb::CreateTenantResponse {
        self.client()
            .create_tenant(self.req(apb::CreateTenantRequest {
                tenant_id: id.into(),
                display_name: format!("Tenant {id}"),
                client_identity: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn keys(&self, tenant: &str) -> Vec<apb::ApiKey> {
        self.client()
            .list_api_keys(self.req(apb::ListApiKeysRequest {
                tenant_id: tenant.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .keys
    }

    async fn revoke(&self, tenant: &str, api_key: &str) -> Result<apb::ApiKey, tonic::Status> {
        self.client()
            .revoke_api_key(self.req(apb::RevokeApiKeyRequest {
                tenant_id: tenant.into(),
                key_id: key_id(api_key),
            }))
            .await
            .map(|r| r.into_inner())
    }

    async fn rotate(
        &self,
        tenant: &str,
        api_key: &str,
        grace_seconds: Option<u32>,
    ) -> Result<apb::RotateApiKeyResponse, tonic::Status> {
        self.client()
            .rotate_api_key(self.req(apb::RotateApiKeyRequest {
                tenant_id: tenant.into(),
                key_id: key_id(api_key),
                grace_seconds,
            }))
            .await
            .map(|r| r.into_inner())
    }

    async fn update(&self, r: apb::UpdateTenantRequest) -> Result<apb::Tenant, tonic::Status> {
        self.client()
            .update_tenant(self.req(r))
            .await
            .map(|r| r.into_inner())
    }
}

/// A tenant-API call with `key`: Ok, or the refusal's code.
async fn tenant_call(h: &Harness, key: &str) -> Result<(), Code> {
    h.enrollment()
        .list_devices(
            sesame::cli::authed(
                key,
                pb::ListDevicesRequest {
                    user_id: "someone".into(),
                },
            )
            .unwrap(),
        )
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

fn key_id(api_key: &str) -> String {
    sesame_grpc::apikey::parse(api_key).unwrap().0.to_owned()
}

fn state(k: &apb::ApiKey) -> apb::ApiKeyState {
    apb::ApiKeyState::try_from(k.state).unwrap()
}

#[tokio::test]
async fn a_created_tenant_works_at_once_and_lists_in_pages() {
    let a = Admin::start().await;
    let made = a.create("bank-a").await;
    assert!(made.api_key.starts_with("sk_"));
    let t = made.tenant.unwrap();
    assert_eq!(
        (t.tenant_id.as_str(), t.display_name.as_str(), t.disabled),
        ("bank-a", "Tenant bank-a", false)
    );
    let k = made.key.unwrap();
    assert_eq!(k.key_id, key_id(&made.api_key));
    assert_eq!(state(&k), apb::ApiKeyState::Active);
    assert_eq!(tenant_call(&a.h, &made.api_key).await, Ok(()));

    let again = a
        .client()
        .create_tenant(a.req(apb::CreateTenantRequest {
            tenant_id: "bank-a".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(status_of(again).code(), Code::AlreadyExists);

    // dev and other-bank come with the harness.
    for i in 0..5 {
        a.create(&format!("p{i}")).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = a
            .client()
            .list_tenants(a.req(apb::ListTenantsRequest {
                page_size: 3,
                page_token: token,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(r.tenants.len() <= 3);
        pages += 1;
        seen.extend(r.tenants.into_iter().map(|t| t.tenant_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(
        seen,
        ["bank-a", "dev", "other-bank", "p0", "p1", "p2", "p3", "p4"]
    );
    assert_eq!(pages, 3);
    let got = a
        .client()
        .get_tenant(a.req(apb::GetTenantRequest {
            tenant_id: "p3".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.display_name, "Tenant p3");
}

#[tokio::test]
async fn rotation_keeps_both_keys_for_the_grace_period_then_only_the_new_one() {
    let a = Admin::start().await;
    let made = a.create("bank-r").await;
    let old = made.api_key;
    let r = a.rotate("bank-r", &old, None).await.unwrap();
    let new = r.api_key;
    let old_rec = r.old_key.unwrap();
    assert_eq!(state(&old_rec), apb::ApiKeyState::Expiring);
    let day = old_rec.expires_at_unix_ms - sesame_core::time::now_ms();
    assert!((86_300_000..=86_400_000).contains(&day), "{day}");
    assert_eq!(tenant_call(&a.h, &old).await, Ok(()));
    assert_eq!(tenant_call(&a.h, &new).await, Ok(()));

    // Ending the grace now: the old key stops at once, the new one goes on.
    let r = a.rotate("bank-r", &old, Some(0)).await.unwrap();
    let newest = r.api_key;
    assert_eq!(
        tenant_call(&a.h, &old).await,
        Err(Code::Unauthenticated),
        "a rotated-out key must stop when its grace ends"
    );
    assert_eq!(tenant_call(&a.h, &new).await, Ok(()));
    assert_eq!(tenant_call(&a.h, &newest).await, Ok(()));
    let keys = a.keys("bank-r").await;
    let state_of = |api_key: &str| {
        let id = key_id(api_key);
        state(keys.iter().find(|k| k.key_id == id).unwrap())
    };
    assert_eq!(keys.len(), 3);
    assert_eq!(state_of(&old), apb::ApiKeyState::Expired);
    assert_eq!(state_of(&new), apb::ApiKeyState::Active);
    assert_eq!(state_of(&newest), apb::ApiKeyState::Active);
    // An expired key cannot be rotated again.
    let r = a.rotate("bank-r", &old, Some(60)).await;
    assert_eq!(status_of(r).code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn revoking_a_key_and_disabling_a_tenant_take_effect_at_once() {
    let a = Admin::start().await;
    let made = a.create("bank-x").await;
    let first = made.api_key;
    let second = a
        .client()
        .create_api_key(a.req(apb::CreateApiKeyRequest {
            tenant_id: "bank-x".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    // Both cached as good by a call each.
    assert_eq!(tenant_call(&a.h, &first).await, Ok(()));
    assert_eq!(tenant_call(&a.h, &second).await, Ok(()));

    let revoked = a.revoke("bank-x", &first).await.unwrap();
    assert_eq!(state(&revoked), apb::ApiKeyState::Revoked);
    assert_eq!(tenant_call(&a.h, &first).await, Err(Code::Unauthenticated));
    assert_eq!(tenant_call(&a.h, &second).await, Ok(()));
    // Idempotent.
    let again = a.revoke("bank-x", &first).await.unwrap();
    assert_eq!(state(&again), apb::ApiKeyState::Revoked);

    let off = a
        .update(apb::UpdateTenantRequest {
            tenant_id: "bank-x".into(),
            disabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(off.disabled);
    assert_eq!(
        tenant_call(&a.h, &second).await,
        Err(Code::PermissionDenied)
    );
    // Other tenants are untouched.
    assert_eq!(tenant_call(&a.h, &a.h.key).await, Ok(()));
    a.update(apb::UpdateTenantRequest {
        tenant_id: "bank-x".into(),
        disabled: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(tenant_call(&a.h, &second).await, Ok(()));

    // Binding to a client certificate: the key alone no longer suffices.
    let bound = a
        .update(apb::UpdateTenantRequest {
            tenant_id: "bank-x".into(),
            client_identity: Some("spiffe://bank-x.example/idp".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bound.client_identity, "spiffe://bank-x.example/idp");
    assert_eq!(
        tenant_call(&a.h, &second).await,
        Err(Code::PermissionDenied)
    );
}

#[tokio::test]
async fn the_admin_api_takes_only_the_admin_key() {
    let a = Admin::start().await;
    let list = |auth: Option<String>| {
        let mut r = Request::new(apb::ListTenantsRequest::default());
        if let Some(v) = auth {
            r.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        let mut c = a.client();
        async move { c.list_tenants(r).await.map(|_| ()) }
    };
    let s = status_of(list(None).await);
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("admin key"), "{}", s.message());
    let s = status_of(list(Some(format!("Bearer {}", a.h.key))).await);
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("tenant API key"), "{}", s.message());
    let wrong = sesame_challenge::admin::generate_admin_key();
    let s = status_of(list(Some(format!("Bearer {wrong}"))).await);
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(list(Some(format!("Bearer {}", a.key))).await.is_ok());

    // The admin key is no tenant key either.
    assert_eq!(tenant_call(&a.h, &a.key).await, Err(Code::Unauthenticated));
}

#[tokio::test]
async fn bad_admin_input_gets_its_status_and_changes_nothing() {
    let a = Admin::start().await;
    a.create("bank-b").await;
    let mut c = a.client();
    let create = |id: &str, name: &str, identity: &str| {
        a.req(apb::CreateTenantRequest {
            tenant_id: id.into(),
            display_name: name.into(),
            client_identity: identity.into(),
        })
    };
    for (req, needle) in [
        (create("", "", ""), "tenant_id"),
        (create("Bank", "", ""), "tenant_id"),
        (create("-bank", "", ""), "letter or digit"),
        (create(&"a".repeat(65), "", ""), "tenant_id"),
        (create("ok", &"n".repeat(201), ""), "display_name"),
        (create("ok", "bad\nname", ""), "display_name"),
        (create("ok", "", "just-a-name"), "client_identity"),
        (create("ok", "", " spiffe://x/y"), "client_identity"),
    ] {
        let s = status_of(c.create_tenant(req).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        assert!(s.message().contains(needle), "{needle}: {}", s.message());
    }
    let s = status_of(
        c.get_tenant(a.req(apb::GetTenantRequest {
            tenant_id: "ok".into(),
        }))
        .await,
    );
    assert_eq!(s.code(), Code::NotFound, "nothing was created");

    let s = status_of(
        c.list_tenants(a.req(apb::ListTenantsRequest {
            page_size: 1001,
            page_token: String::new(),
        }))
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    let s = status_of(
        c.list_tenants(a.req(apb::ListTenantsRequest {
            page_size: 10,
            page_token: "%%%".into(),
        }))
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("page_token"));

    let s = status_of(
        a.update(apb::UpdateTenantRequest {
            tenant_id: "bank-b".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("nothing to change"));
    let s = status_of(
        a.update(apb::UpdateTenantRequest {
            tenant_id: "nobody".into(),
            disabled: Some(true),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(s.code(), Code::NotFound);

    // Key operations: a malformed id, an unknown one, and another
    // tenant's key all fail, and the other tenant's key keeps working.
    let other_key_id = key_id(&a.h.other_key);
    let rotate = |tenant: &str, key: &str, grace| {
        a.req(apb::RotateApiKeyRequest {
            tenant_id: tenant.into(),
            key_id: key.into(),
            grace_seconds: grace,
        })
    };
    for (req, code) in [
        (rotate("bank-b", "xyz", None), Code::InvalidArgument),
        (rotate("bank-b", "0123456789abcdef", None), Code::NotFound),
        (rotate("bank-b", &other_key_id, None), Code::NotFound),
        (
            rotate("other-bank", &other_key_id, Some(31 * 86_400)),
            Code::InvalidArgument,
        ),
    ] {
        let s = status_of(c.rotate_api_key(req).await);
        assert_eq!(s.code(), code, "{}", s.message());
    }
    let s = status_of(
        c.revoke_api_key(a.req(apb::RevokeApiKeyRequest {
            tenant_id: "bank-b".into(),
            key_id: other_key_id.clone(),
        }))
        .await,
    );
    assert_eq!(s.code(), Code::NotFound);
    assert_eq!(tenant_call(&a.h, &a.h.other_key).await, Ok(()));
    assert_eq!(a.keys("other-bank").await.len(), 1);

    // Live keys per tenant are bounded.
    for _ in 1..sesame_core::limits::MAX_LIVE_API_KEYS_PER_TENANT {
        c.create_api_key(a.req(apb::CreateApiKeyRequest {
            tenant_id: "bank-b".into(),
        }))
        .await
        .unwrap();
    }
    let s = status_of(
        c.create_api_key(a.req(apb::CreateApiKeyRequest {
            tenant_id: "bank-b".into(),
        }))
        .await,
    );
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("revoke one"), "{}", s.message());
}

/// Runs `sesame <args> --server <url> --data-dir <dir>`: (success, stdout, stderr).
async fn sesame(h: &Harness, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sesame"))
        .args(args)
        .arg("--server")
        .arg(&h.url)
        .arg("--data-dir")
        .arg(h.data_dir())
        .env_remove("SESAME_ADMIN_KEY")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

async fn sesame_ok(h: &Harness, args: &[&str]) -> String {
    let (ok, stdout, stderr) = sesame(h, args).await;
    assert!(ok, "sesame {args:?}: {stderr}");
    stdout
}

#[tokio::test]
async fn the_cli_manages_tenants_against_a_running_server() {
    // The zero-configuration path: the server generates <data_dir>/admin.key.
    let h = Harness::start().await;
    tenant_call(&h, &h.key).await.unwrap();
    let key = sesame_ok(
        &h,
        &["tenant", "create", "cli-bank", "--display-name", "CLI Bank"],
    )
    .await;
    let key = key.trim();
    assert!(key.starts_with("sk_"), "stdout is the key alone: {key:?}");
    assert_eq!(tenant_call(&h, key).await, Ok(()));
    let listed = sesame_ok(&h, &["tenant", "list"]).await;
    assert!(
        listed.lines().any(|l| l.starts_with("cli-bank\tenabled")),
        "{listed}"
    );

    let rotated = sesame_ok(
        &h,
        &[
            "apikey",
            "rotate",
            "cli-bank",
            &key_id(key),
            "--grace-seconds",
            "0",
        ],
    )
    .await;
    let new = rotated.trim();
    assert_eq!(tenant_call(&h, key).await, Err(Code::Unauthenticated));
    assert_eq!(tenant_call(&h, new).await, Ok(()));
    let keys = sesame_ok(&h, &["apikey", "list", "cli-bank"]).await;
    assert!(
        keys.contains("\texpired\t") && keys.contains("\tactive\t"),
        "{keys}"
    );

    sesame_ok(&h, &["tenant", "disable", "cli-bank"]).await;
    assert_eq!(tenant_call(&h, new).await, Err(Code::PermissionDenied));
    sesame_ok(&h, &["tenant", "enable", "cli-bank"]).await;
    assert_eq!(tenant_call(&h, new).await, Ok(()));

    // A refusal is an exit status and a message, not a panic.
    let (ok, _, stderr) = sesame(&h, &["tenant", "get", "nobody"]).await;
    assert!(!ok);
    assert!(stderr.contains("not found"), "{stderr}");
}

#[tokio::test]
async fn without_an_admin_key_the_admin_api_is_not_served() {
    // Production settings: no dev tenant, no admin_key_file.
    let h = Harness::start_configured(|c| c.dev_tenant = false).await;
    tenant_call(&h, &h.key).await.unwrap();
    assert!(!h.data_dir().join("admin.key").exists(), "no key generated");
    let key = sesame_challenge::admin::generate_admin_key();
    let r = TenantAdminServiceClient::new(h.channel.clone())
        .list_tenants(sesame::cli::authed(&key, apb::ListTenantsRequest::default()).unwrap())
        .await;
    assert_eq!(status_of(r).code(), Code::Unimplemented);
}

#[cfg(unix)]
#[tokio::test]
async fn generated_key_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::start().await;
    tenant_call(&h, &h.key).await.unwrap();
    for file in ["admin.key", "dev-tenant.key"] {
        let mode = std::fs::metadata(h.data_dir().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
}

/// What an attacker with a copy of the store learns: no API-key secret, no
/// admin key, no enrollment token in clear (only their SHA-256).
#[tokio::test]
async fn secrets_never_reach_the_store_in_clear() {
    let a = Admin::start().await;
    let made = a.create("bank-s").await;
    let enrollment = a.h.begin("someone").await.enrollment_token;
    let store = std::fs::read(sesame_storage::EmbeddedStorage::path_in(a.h.data_dir())).unwrap();
    assert!(store.len() > 4096, "the embedded store holds the data");
    // `sk_<16 hex>_<secret>`; the secret is base64url and may hold '_' itself.
    let secret_of = |key: &str| {
        let secret = &key["sk_".len() + 16 + 1..];
        assert!(secret.len() >= 40, "{key}");
        secret.to_owned()
    };
    for (what, s) in [
        ("the new tenant's key secret", secret_of(&made.api_key)),
        ("the dev tenant's key secret", secret_of(&a.h.key)),
        ("the admin key", a.key.clone()),
        ("an enrollment token", enrollment.clone()),
    ] {
        assert!(
            !store.windows(s.len()).any(|w| w == s.as_bytes()),
            "{what} is in the store in clear"
        );
    }
    // The check can fail: ids are stored as they are.
    let id = key_id(&made.api_key);
    assert!(store.windows(id.len()).any(|w| w == id.as_bytes()));
}
