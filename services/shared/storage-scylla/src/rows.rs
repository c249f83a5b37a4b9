//! Rows ↔ domain records. Columns that are queried, conditioned on or
//! updated are typed CQL columns; the immutable nested parts of a challenge
//! (what the phone displays, the number-matching setup) and the guard's
//! register are JSON text, read and written whole.

use sesame_core::model::{
    Challenge, ChallengeContext, DenyReason, Device, KeyAlgorithm, NumberMatch, Outcome, Platform,
    Resolution, Tenant, UserGuardState,
};
use sesame_core::{ChallengeId, DeviceId, TenantId};
use sesame_storage::StorageError;

fn corrupt(table: &str, message: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        table: table.to_owned(),
        message: message.to_string(),
    }
}

/// `tenants`: id, display name, disabled, created at, client identity
/// (absent in rows written before schema version 2).
pub type TenantRow = (String, String, bool, i64, Option<String>);

pub fn tenant_of(row: TenantRow) -> Result<Tenant, StorageError> {
    let (id, display_name, disabled, created_at, client_identity) = row;
    Ok(Tenant {
        id: TenantId::parse(&id).map_err(|e| corrupt("tenants", e))?,
        display_name,
        disabled,
        created_at,
        client_identity: client_identity.unwrap_or_default(),
    })
}

pub fn platform_text(p: Platform) -> &'static str {
    match p {
        Platform::Ios => "ios",
        Platform::Android => "android",
    }
}

pub fn platform_of(s: &str) -> Option<Platform> {
    match s {
        "ios" => Some(Platform::Ios),
        "android" => Some(Platform::Android),
        _ => None,
    }
}

pub fn algorithm_text(a: KeyAlgorithm) -> &'static str {
    match a {
        KeyAlgorithm::EcdsaP256Sha256 => "ecdsa_p256_sha256",
        KeyAlgorithm::Ed25519 => "ed25519",
    }
}

pub fn algorithm_of(s: &str) -> Option<KeyAlgorithm> {
    match s {
        "ecdsa_p256_sha256" => Some(KeyAlgorithm::EcdsaP256Sha256),
        "ed25519" => Some(KeyAlgorithm::Ed25519),
        _ => None,
    }
}

pub fn outcome_text(o: Outcome) -> &'static str {
    match o {
        Outcome::Approved => "approved",
        Outcome::Denied(DenyReason::UserDenied) => "denied",
        Outcome::Denied(DenyReason::FraudReported) => "fraud",
        Outcome::Denied(DenyReason::NumberMismatch) => "number_mismatch",
        Outcome::Cancelled => "cancelled",
    }
}

pub fn outcome_of(s: &str) -> Option<Outcome> {
    Some(match s {
        "approved" => Outcome::Approved,
        "denied" => Outcome::Denied(DenyReason::UserDenied),
        "fraud" => Outcome::Denied(DenyReason::FraudReported),
        "number_mismatch" => Outcome::Denied(DenyReason::NumberMismatch),
        "cancelled" => Outcome::Cancelled,
        _ => return None,
    })
}

/// `devices` columns, in [`DEVICE_COLUMNS`] order.
pub type DeviceRow = (
    String,         // device_id
    String,         // tenant_id
    String,         // user_id
    String,         // display_name
    String,         // platform
    String,         // key_algorithm
    Vec<u8>,        // public_key
    String,         // push_token
    Option<String>, // push_app
    bool,           // push_enabled
    i64,            // enrolled_at
    Option<i64>,    // revoked_at
);

pub const DEVICE_COLUMNS: &str =
    "device_id, tenant_id, user_id, display_name, platform, key_algorithm, \
     public_key, push_token, push_app, push_enabled, enrolled_at, revoked_at";

pub fn device_row(d: &Device) -> DeviceRow {
    (
        d.id.as_str().to_owned(),
        d.tenant_id.as_str().to_owned(),
        d.user_id.clone(),
        d.display_name.clone(),
        platform_text(d.platform).to_owned(),
        algorithm_text(d.key_algorithm).to_owned(),
        d.public_key.clone(),
        d.push_token.clone(),
        Some(d.push_app.clone()),
        d.push_enabled,
        d.enrolled_at,
        d.revoked_at,
    )
}

pub fn device_of(row: DeviceRow) -> Result<Device, StorageError> {
    let t = "devices";
    let (id, tenant, user, name, platform, alg, key, token, app, enabled, at, revoked) = row;
    Ok(Device {
        id: DeviceId::parse(&id).map_err(|e| corrupt(t, e))?,
        tenant_id: TenantId::parse(&tenant).map_err(|e| corrupt(t, e))?,
        user_id: user,
        display_name: name,
        platform: platform_of(&platform)
            .ok_or_else(|| corrupt(t, format!("unknown platform {platform:?}")))?,
        key_algorithm: algorithm_of(&alg)
            .ok_or_else(|| corrupt(t, format!("unknown key algorithm {alg:?}")))?,
        public_key: key,
        push_token: token,
        push_app: app.unwrap_or_default(),
        push_enabled: enabled,
        enrolled_at: at,
        revoked_at: revoked,
    })
}

/// `challenges` columns, in [`CHALLENGE_COLUMNS`] order.
pub type ChallengeRow = (
    String,              // challenge_id
    String,              // tenant_id
    String,              // user_id
    String,              // context (JSON)
    Vec<u8>,             // context_hash
    String,              // number_match (JSON)
    i64,                 // created_at
    i64,                 // expires_at
    Option<String>,      // idempotency_key
    Option<Vec<String>>, // devices (an empty list is stored as null)
    Option<String>,      // outcome
    Option<String>,      // resolved_by
    Option<i64>,         // resolved_at
);

pub const CHALLENGE_COLUMNS: &str =
    "challenge_id, tenant_id, user_id, context, context_hash, number_match, \
     created_at, expires_at, idempotency_key, devices, outcome, resolved_by, resolved_at";

/// The row of a new (unresolved) challenge; the three resolution columns
/// are written only by the resolving transaction.
pub type NewChallengeRow = (
    String,
    String,
    String,
    String,
    Vec<u8>,
    String,
    i64,
    i64,
    Option<String>,
    Vec<String>,
);

pub fn new_challenge_row(c: &Challenge) -> Result<NewChallengeRow, StorageError> {
    Ok((
        c.id.as_str().to_owned(),
        c.tenant_id.as_str().to_owned(),
        c.user_id.clone(),
        to_json(&c.context)?,
        c.context_hash.to_vec(),
        to_json(&c.number_match)?,
        c.created_at,
        c.expires_at,
        c.idempotency_key.clone(),
        c.devices.iter().map(|d| d.as_str().to_owned()).collect(),
    ))
}

pub fn challenge_of(row: ChallengeRow) -> Result<Challenge, StorageError> {
    let t = "challenges";
    let (id, tenant, user, context, hash, nm, created, expires, key, devices, outcome, by, at) =
        row;
    let resolution = match (outcome, at) {
        (None, _) => None,
        (Some(o), Some(at)) => Some(Resolution {
            outcome: outcome_of(&o).ok_or_else(|| corrupt(t, format!("unknown outcome {o:?}")))?,
            device_id: by
                .filter(|s| !s.is_empty())
                .map(|s| DeviceId::parse(&s))
                .transpose()
                .map_err(|e| corrupt(t, e))?,
            at,
        }),
        (Some(_), None) => return Err(corrupt(t, "outcome without resolved_at")),
    };
    Ok(Challenge {
        id: ChallengeId::parse(&id).map_err(|e| corrupt(t, e))?,
        tenant_id: TenantId::parse(&tenant).map_err(|e| corrupt(t, e))?,
        user_id: user,
        context: serde_json::from_str::<ChallengeContext>(&context)
            .map_err(|e| corrupt(t, format!("context: {e}")))?,
        context_hash: hash
            .try_into()
            .map_err(|_| corrupt(t, "context_hash is not 32 bytes"))?,
        number_match: serde_json::from_str::<NumberMatch>(&nm)
            .map_err(|e| corrupt(t, format!("number_match: {e}")))?,
        created_at: created,
        expires_at: expires,
        idempotency_key: key,
        devices: devices
            .unwrap_or_default()
            .iter()
            .map(|d| DeviceId::parse(d))
            .collect::<Result<_, _>>()
            .map_err(|e| corrupt(t, e))?,
        resolution,
    })
}

/// The resolution columns `(outcome, resolved_by, resolved_at)`.
pub fn resolution_columns(r: &Resolution) -> (String, Option<String>, i64) {
    (
        outcome_text(r.outcome).to_owned(),
        r.device_id.as_ref().map(|d| d.as_str().to_owned()),
        r.at,
    )
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StorageError> {
    serde_json::to_string(v).map_err(|e| StorageError::Backend(e.to_string()))
}

pub fn guard_json(state: &UserGuardState) -> Result<String, StorageError> {
    to_json(state)
}

pub fn guard_of(json: &str) -> Result<UserGuardState, StorageError> {
    serde_json::from_str(json).map_err(|e| corrupt("user_guards", e))
}

/// A version column (bigint) as the trait's u64.
pub fn version_of(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| corrupt("user_guards", format!("negative version {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesame_core::model::{Action, NumberMatchMode, Transaction};

    fn device() -> Device {
        Device {
            id: DeviceId::generate(),
            tenant_id: TenantId::parse("bank").unwrap(),
            user_id: "alice".into(),
            display_name: "Alice's phone".into(),
            platform: Platform::Android,
            key_algorithm: KeyAlgorithm::EcdsaP256Sha256,
            public_key: vec![4; 65],
            push_token: "fcm-token".into(),
            push_app: "bank-android".into(),
            push_enabled: true,
            enrolled_at: 1_700_000_000_000,
            revoked_at: Some(1_700_000_001_000),
        }
    }

    fn challenge() -> Challenge {
        Challenge {
            id: ChallengeId::generate(),
            tenant_id: TenantId::parse("bank").unwrap(),
            user_id: "alice".into(),
            context: ChallengeContext {
                client_name: "Bank".into(),
                action: Action::Transaction,
                transaction: Some(Transaction {
                    amount: "125.50".into(),
                    currency: "EUR".into(),
                    payee: "ACME".into(),
                }),
                ip_address: "203.0.113.7".into(),
                location: "Brussels".into(),
                binding_message: "Pay ACME".into(),
            },
            context_hash: [7; 32],
            number_match: NumberMatch {
                mode: NumberMatchMode::Choose,
                code: "42".into(),
                choices: vec!["17".into(), "42".into(), "88".into()],
            },
            created_at: 1_000,
            expires_at: 61_000,
            idempotency_key: Some("login-1".into()),
            devices: vec![DeviceId::generate(), DeviceId::generate()],
            resolution: None,
        }
    }

    /// What a SELECT returns for a row written by `new_challenge_row`.
    fn read_back(c: &Challenge) -> ChallengeRow {
        let n = new_challenge_row(c).unwrap();
        let (outcome, by, at) = match &c.resolution {
            Some(r) => {
                let (o, b, a) = resolution_columns(r);
                (Some(o), b, Some(a))
            }
            None => (None, None, None),
        };
        let devices = (!n.9.is_empty()).then_some(n.9);
        (
            n.0, n.1, n.2, n.3, n.4, n.5, n.6, n.7, n.8, devices, outcome, by, at,
        )
    }

    #[test]
    fn devices_round_trip() {
        let d = device();
        assert_eq!(device_of(device_row(&d)).unwrap(), d);
        let mut plain = device();
        plain.push_app = String::new();
        plain.revoked_at = None;
        plain.platform = Platform::Ios;
        plain.key_algorithm = KeyAlgorithm::Ed25519;
        let mut row = device_row(&plain);
        row.8 = None; // written before push apps existed
        assert_eq!(device_of(row).unwrap(), plain);
    }

    #[test]
    fn challenges_round_trip_pending_and_resolved() {
        let mut c = challenge();
        assert_eq!(challenge_of(read_back(&c)).unwrap(), c);
        for outcome in [
            Outcome::Approved,
            Outcome::Denied(DenyReason::UserDenied),
            Outcome::Denied(DenyReason::FraudReported),
            Outcome::Denied(DenyReason::NumberMismatch),
        ] {
            c.resolution = Some(Resolution {
                outcome,
                device_id: Some(c.devices[1].clone()),
                at: 5_000,
            });
            assert_eq!(challenge_of(read_back(&c)).unwrap(), c);
        }
        c.resolution = Some(Resolution {
            outcome: Outcome::Cancelled,
            device_id: None,
            at: 6_000,
        });
        c.devices.clear();
        c.idempotency_key = None;
        assert_eq!(challenge_of(read_back(&c)).unwrap(), c);
    }

    #[test]
    fn damaged_rows_are_reported_as_corrupt_not_guessed() {
        let mut row = device_row(&device());
        row.4 = "windows-phone".into();
        assert!(
            matches!(device_of(row), Err(StorageError::Corrupt { table, .. }) if table == "devices")
        );
        let mut row = read_back(&challenge());
        row.4 = vec![1, 2, 3];
        assert!(matches!(
            challenge_of(row),
            Err(StorageError::Corrupt { .. })
        ));
        let mut row = read_back(&challenge());
        row.10 = Some("approved".into()); // outcome without resolved_at
        assert!(matches!(
            challenge_of(row),
            Err(StorageError::Corrupt { .. })
        ));
        let mut row = read_back(&challenge());
        row.3 = "{".into();
        assert!(matches!(
            challenge_of(row),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(version_of(-1).is_err());
        assert!(guard_of("[]").is_err());
    }

    #[test]
    fn enum_texts_are_stable_and_invertible() {
        for p in [Platform::Ios, Platform::Android] {
            assert_eq!(platform_of(platform_text(p)), Some(p));
        }
        for a in [KeyAlgorithm::EcdsaP256Sha256, KeyAlgorithm::Ed25519] {
            assert_eq!(algorithm_of(algorithm_text(a)), Some(a));
        }
        // Stored data: these strings must never change.
        assert_eq!(
            outcome_text(Outcome::Denied(DenyReason::FraudReported)),
            "fraud"
        );
        assert_eq!(
            algorithm_text(KeyAlgorithm::EcdsaP256Sha256),
            "ecdsa_p256_sha256"
        );
    }
}
