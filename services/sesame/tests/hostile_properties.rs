//! Property test of every RPC against hostile bytes, over real gRPC: random
//! protobuf-shaped inputs (every wire type, nested messages, huge and
//! non-UTF-8 strings, the ids of real objects mixed in) are decoded as each
//! request type and sent with a valid credential — tenant key, admin key, or
//! a valid device signature re-made over the random fields — so that they
//! get past authentication into the handlers. Each answer must be a success
//! or a refusal with a documented status and a message; `INTERNAL` or
//! `UNKNOWN` (what a panicking handler yields) fail the test, and the server
//! must still run a whole login afterwards.
//!
//! `SESAME_HOSTILE_CASES` (default 256) sets the number of inputs; each is
//! tried as every request type. `SESAME_HOSTILE_SEED` (default fixed)
//! picks other inputs. The figures printed at the end are in the
//! README ("Hostile input").

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use prost::Message;
use sesame_core::model::Decision;
use sesame_device_sim::{Answer, SimDevice};
use sesame_proto::admin::v1 as apb;
use sesame_proto::admin::v1::audit_admin_service_client::AuditAdminServiceClient;
use sesame_proto::admin::v1::tenant_admin_service_client::TenantAdminServiceClient;
use sesame_proto::device::v1 as dpb;
use sesame_proto::device::v1::device_service_client::DeviceServiceClient;
use sesame_proto::ratelimit::v1 as rpb;
use sesame_proto::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::audit_service_client::AuditServiceClient;
use sesame_proto::tenant::v1::webhook_service_client::WebhookServiceClient;
use tonic::Code;

/// Bytes shaped like a protobuf message: fields 1-12 of every wire type,
/// with payloads that are plausible values, real ids, or garbage.
fn message(ids: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof![
        6 => proptest::sample::select(ids).prop_map(String::into_bytes),
        3 => "[a-z0-9-]{0,12}".prop_map(String::into_bytes),
        2 => ".{0,40}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (0usize..6000).prop_map(|n| "x".repeat(n).into_bytes()),
    ];
    let leaf = proptest::collection::vec(field(text.boxed()), 1..6).prop_map(|f| f.concat());
    leaf.prop_recursive(2, 24, 6, |inner| {
        proptest::collection::vec(
            prop_oneof![
                3 => field(inner.clone().boxed()),
                1 => (field_number(), inner).prop_map(|(n, m)| len_field(n, &m)),
            ],
            0..8,
        )
        .prop_map(|f| f.concat())
    })
}

fn field(payload: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let varint = prop_oneof![
        3 => 0u64..8,
        1 => any::<u64>(),
        1 => Just(u64::MAX),
    ];
    prop_oneof![
        3 => (field_number(), varint).prop_map(|(n, v)| {
            let mut b = Vec::new();
            prost::encoding::encode_key(n, prost::encoding::WireType::Varint, &mut b);
            prost::encoding::encode_varint(v, &mut b);
            b
        }),
        5 => (field_number(), payload).prop_map(|(n, p)| len_field(n, &p)),
        1 => (field_number(), any::<u32>()).prop_map(|(n, v)| {
            let mut b = Vec::new();
            prost::encoding::encode_key(n, prost::encoding::WireType::ThirtyTwoBit, &mut b);
            b.extend_from_slice(&v.to_le_bytes());
            b
        }),
        1 => (field_number(), any::<u64>()).prop_map(|(n, v)| {
            let mut b = Vec::new();
            prost::encoding::encode_key(n, prost::encoding::WireType::SixtyFourBit, &mut b);
            b.extend_from_slice(&v.to_le_bytes());
            b
        }),
    ]
}

/// Low field numbers most often: they are the ones every request has.
fn field_number() -> impl Strategy<Value = u32> {
    prop_oneof![6 => 1u32..4, 3 => 4u32..9, 1 => 9u32..13]
}

fn len_field(n: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    prost::encoding::encode_key(n, prost::encoding::WireType::LengthDelimited, &mut b);
    prost::encoding::encode_varint(payload.len() as u64, &mut b);
    b.extend_from_slice(payload);
    b
}

/// What came back, per RPC: decoded inputs sent, and the codes answered.
#[derive(Default)]
struct Tally {
    sent: BTreeMap<&'static str, usize>,
    codes: BTreeMap<String, usize>,
}

struct World {
    h: Harness,
    phone: SimDevice,
    admin_key: String,
    tally: Mutex<Tally>,
}

impl World {
    /// Accepts a success or a documented refusal; anything else is a bug.
    fn check<T>(&self, rpc: &'static str, r: Result<T, tonic::Status>) -> Result<(), String> {
        let code = match &r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        let mut t = self.tally.lock().unwrap();
        *t.sent.entry(rpc).or_default() += 1;
        *t.codes.entry(format!("{code:?}")).or_default() += 1;
        drop(t);

        match r {
            Err(s)
                if matches!(
                    s.code(),
                    Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented
                ) =>
            {
                Err(format!("{rpc}: {:?} {}", s.code(), s.message()))
            }
            Err(s) if s.message().trim().is_empty() => {
                Err(format!("{rpc}: {:?} without a message", s.code()))
            }
            _ => Ok(()),
        }
    }

    fn admin<T>(&self, m: T) -> tonic::Request<T> {
        sesame::cli::authed(&self.admin_key, m).unwrap()
    }

    /// One input, tried as every request type.
    async fn try_all(&self, bytes: &[u8], resign: bool) -> Result<(), String> {
        let h = &self.h;
        let mut enr = h.enrollment();
        let mut ch = h.challenges();
        let mut dev = DeviceServiceClient::new(h.channel.clone());
        let mut rl = RateLimitServiceClient::new(h.channel.clone());
        let mut adm = TenantAdminServiceClient::new(h.channel.clone());
        macro_rules! each {
            ($ty:ty, $rpc:literal, |$m:ident| $call:expr) => {
                if let Ok($m) = <$ty>::decode(bytes) {
                    self.check($rpc, $call.await)?;
                }
            };
        }
        each!(pb::BeginEnrollmentRequest, "BeginEnrollment", |m| enr
            .begin_enrollment(h.req(m)));
        each!(pb::ListDevicesRequest, "ListDevices", |m| enr
            .list_devices(h.req(m)));
        // Destructive calls come from the other tenant: they must find
        // nothing of the first tenant's (NOT_FOUND), whatever ids they name.
        each!(pb::RevokeDeviceRequest, "RevokeDevice", |m| enr
            .revoke_device(h.req_other(m)));
        each!(pb::CancelChallengeRequest, "CancelChallenge", |m| ch
            .cancel_challenge(h.req_other(m)));
        each!(pb::CreateChallengeRequest, "CreateChallenge", |m| ch
            .create_challenge(h.req(m)));
        each!(pb::GetChallengeRequest, "GetChallenge", |m| ch
            .get_challenge(h.req(m)));
        each!(pb::GetUserStatusRequest, "GetUserStatus", |m| ch
            .get_user_status(h.req(m)));
        if let Ok(m) = pb::WatchChallengeRequest::decode(bytes) {
            let r = match ch.watch_challenge(h.req(m)).await {
                Ok(s) => {
                    let mut s = s.into_inner();
                    // The first message (the current state) or a refusal.
                    match tokio::time::timeout(std::time::Duration::from_secs(2), s.message()).await
                    {
                        Ok(r) => r.map(|_| ()),
                        Err(_) => Ok(()),
                    }
                }
                Err(e) => Err(e),
            };
            self.check("WatchChallenge", r)?;
        }
        each!(rpb::RateLimitRequest, "ShouldRateLimit", |m| rl
            .should_rate_limit(h.req(m)));

        each!(dpb::CompleteEnrollmentRequest, "CompleteEnrollment", |m| {
            dev.complete_enrollment(m)
        });
        let auth = |method: &str, args: &[&str], given: Option<dpb::DeviceAuth>| {
            if resign {
                Some(self.phone.auth(method, args))
            } else {
                given
            }
        };
        each!(dpb::UpdatePushTokenRequest, "UpdatePushToken", |m| {
            let a = auth("UpdatePushToken", &[&m.push_token], m.auth.clone());
            dev.update_push_token(dpb::UpdatePushTokenRequest { auth: a, ..m })
        });
        each!(
            dpb::ListPendingChallengesRequest,
            "ListPendingChallenges",
            |m| {
                let a = auth("ListPendingChallenges", &[], m.auth.clone());
                dev.list_pending_challenges(dpb::ListPendingChallengesRequest { auth: a })
            }
        );
        each!(
            dpb::GetChallengeDetailsRequest,
            "GetChallengeDetails",
            |m| {
                let a = auth("GetChallengeDetails", &[&m.challenge_id], m.auth.clone());
                dev.get_challenge_details(dpb::GetChallengeDetailsRequest { auth: a, ..m })
            }
        );
        each!(dpb::RespondRequest, "Respond", |m| {
            let m = if resign {
                // A valid signature over whatever the fields say.
                let decision =
                    sesame_grpc::convert::decision_in(m.decision).unwrap_or(Decision::Approve);
                let signed = self.phone.sign_answer_fields(
                    &m.challenge_id,
                    &Answer {
                        decision,
                        number: m.number_match_answer.clone(),
                    },
                    &m.context_hash,
                    m.timestamp_unix_ms,
                );
                dpb::RespondRequest {
                    decision: m.decision,
                    ..signed
                }
            } else {
                m
            };
            dev.respond(m)
        });

        each!(apb::CreateTenantRequest, "CreateTenant", |m| adm
            .create_tenant(self.admin(m)));
        each!(apb::GetTenantRequest, "GetTenant", |m| adm
            .get_tenant(self.admin(m)));
        each!(apb::ListTenantsRequest, "ListTenants", |m| adm
            .list_tenants(self.admin(m)));
        // Never the tenants the other calls need.
        if let Ok(m) = apb::UpdateTenantRequest::decode(bytes) {
            if m.tenant_id != "dev" && m.tenant_id != "other-bank" {
                self.check("UpdateTenant", adm.update_tenant(self.admin(m)).await)?;
            }
        }
        each!(apb::CreateApiKeyRequest, "CreateApiKey", |m| adm
            .create_api_key(self.admin(m)));
        each!(apb::ListApiKeysRequest, "ListApiKeys", |m| adm
            .list_api_keys(self.admin(m)));
        each!(apb::RotateApiKeyRequest, "RotateApiKey", |m| adm
            .rotate_api_key(self.admin(m)));
        each!(apb::RevokeApiKeyRequest, "RevokeApiKey", |m| adm
            .revoke_api_key(self.admin(m)));

        let mut audit = AuditServiceClient::new(h.channel.clone());
        let mut audit_adm = AuditAdminServiceClient::new(h.channel.clone());
        each!(pb::ListAuditRecordsRequest, "ListAuditRecords", |m| audit
            .list_audit_records(h.req(m)));
        each!(apb::ListAuditChainsRequest, "ListAuditChains", |m| {
            audit_adm.list_audit_chains(self.admin(m))
        });
        each!(apb::ReadAuditChainRequest, "ReadAuditChain", |m| audit_adm
            .read_audit_chain(self.admin(m)));

        let mut hooks = WebhookServiceClient::new(h.channel.clone());
        each!(pb::SetWebhookRequest, "SetWebhook", |m| hooks
            .set_webhook(h.req(m)));
        each!(pb::GetWebhookRequest, "GetWebhook", |m| hooks
            .get_webhook(h.req(m)));
        // Destructive calls from the other tenant again.
        each!(pb::DeleteWebhookRequest, "DeleteWebhook", |m| hooks
            .delete_webhook(h.req_other(m)));
        each!(pb::RotateWebhookSecretRequest, "RotateWebhookSecret", |m| {
            hooks.rotate_webhook_secret(h.req_other(m))
        });
        each!(pb::ListDeadDeliveriesRequest, "ListDeadDeliveries", |m| {
            hooks.list_dead_deliveries(h.req(m))
        });
        each!(pb::RedeliverWebhookRequest, "RedeliverWebhook", |m| hooks
            .redeliver_webhook(h.req(m)));
        Ok(())
    }
}

#[test]
fn every_rpc_answers_hostile_input_with_a_documented_status() {
    let cases: u32 = std::env::var("SESAME_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(async {
        let h = Harness::start().await;
        let phone = h.enroll("alice").await;
        let pending = h.create("alice", ENTER, 600).await;
        // A zero-configuration server writes its admin key by now.
        let admin_key = std::fs::read_to_string(h.data_dir().join("admin.key"))
            .unwrap()
            .trim()
            .to_owned();
        let ids = vec![
            "alice".to_owned(),
            "dev".to_owned(),
            "other-bank".to_owned(),
            phone.device_id().to_owned(),
            pending.challenge_id.clone(),
            sesame_grpc::apikey::parse(&h.key).unwrap().0.to_owned(),
            phone.identity.push_token.clone(),
            // Well formed, but nobody's.
            sesame_core::ChallengeId::generate().to_string(),
            sesame_core::DeviceId::generate().to_string(),
            "0123456789abcdef".to_owned(),
            format!("vd_{}", pending.challenge_id),
            // Endpoints the SSRF guard must refuse.
            "https://localhost:1/hook".to_owned(),
            "https://203.0.113.9/hook".to_owned(),
        ];
        (
            World {
                h,
                phone,
                admin_key,
                tally: Mutex::default(),
            },
            ids,
        )
    });
    let (world, ids) = world;
    // A fixed seed by default, so that CI sees the same inputs each run and
    // the coverage checks below cannot flake; SESAME_HOSTILE_SEED=<u64>
    // explores others (the seed is printed).
    let seed: u64 = std::env::var("SESAME_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_261_204);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        PropConfig {
            cases,
            failure_persistence: None,
            ..PropConfig::default()
        },
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &seed_bytes,
        ),
    );
    let result = runner.run(&(message(ids), any::<bool>()), |(bytes, resign)| {
        rt.block_on(world.try_all(&bytes, resign))
            .map_err(proptest::test_runner::TestCaseError::fail)
    });
    let tally = world.tally.lock().unwrap();
    let total: usize = tally.sent.values().sum();
    println!(
        "hostile input (seed {seed}): {cases} inputs, {total} requests decoded and sent over {} RPCs",
        tally.sent.len()
    );
    println!("  per RPC: {:?}", tally.sent);
    println!("  answers: {:?}", tally.codes);
    drop(tally);
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = world.tally.lock().unwrap();
    // The generator must reach every RPC, or the test proves little.
    assert_eq!(
        tally.sent.len(),
        31,
        "RPCs reached: {:?}",
        tally.sent.keys()
    );
    for (rpc, n) in &tally.sent {
        assert!(
            *n as u32 * 8 >= cases,
            "{rpc}: only {n} of {cases} inputs decoded"
        );
    }
    // ... and some get past validation to storage.
    assert!(
        tally.codes.contains_key("Ok"),
        "no input got past validation: {:?}",
        tally.codes
    );
    drop(tally);

    // Still serving: a whole login after all that.
    rt.block_on(async {
        let h = &world.h;
        let phone = h.enroll("after-the-storm").await;
        let c = h.create("after-the-storm", ENTER, 60).await;
        let d = details(&phone, &c.challenge_id).await;
        phone
            .respond(&d, &approve(&c.number_match_code))
            .await
            .unwrap();
        assert_eq!(
            h.get(&c.challenge_id).await.status,
            st(sesame_proto::types::v1::ChallengeStatus::Approved)
        );
    });
}

proptest! {
    #![proptest_config(PropConfig { cases: 2048, failure_persistence: None, ..PropConfig::default() })]

    /// Credentials as presented: any string is a key or not, never a panic;
    /// a generated key always parses back to its own id.
    #[test]
    fn credential_parsing_never_panics(s in ".{0,200}", prefix in prop_oneof![Just("sk_"), Just("adm_"), Just("")]) {
        let presented = format!("{prefix}{s}");
        let _ = sesame_grpc::apikey::parse(&presented);
        let _ = sesame_challenge::admin::admin_key_sha256(&presented);
    }

    /// Enrollment URIs as a phone scans them (any QR code): parsed or
    /// refused, never a panic; a well-formed one gives back its parts.
    #[test]
    fn enrollment_uris_never_panic(
        url in ".{1,60}",
        token in ".{1,60}",
        junk in "[%&=?a-z0-9]{0,40}",
    ) {
        let _ = sesame_device_sim::parse_enrollment_uri(&format!("sesame://enroll?{junk}"));
        let _ = sesame_device_sim::parse_enrollment_uri(&junk);
        let uri = sesame_challenge::enrollment_uri(&url, &token);
        let (u, t) = sesame_device_sim::parse_enrollment_uri(&uri).unwrap();
        prop_assert_eq!((u, t), (url, token));
    }
}
