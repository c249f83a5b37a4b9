//! The records Sesame keeps, and the challenge state machine.
//!
//! A challenge is created `Pending` and moves at most once, atomically, to a
//! final state: `Approved` or `Denied` by a device's signed answer, or
//! `Cancelled` by the tenant. `Expired` is not written: a pending challenge
//! whose expiry has passed *is* expired, whatever a clock-less store says, so
//! no sweeper is needed for correctness.

use serde::{Deserialize, Serialize};

pub use crate::crypto::KeyAlgorithm;
use crate::ids::{ChallengeId, DeviceId, TenantId};
use crate::time::UnixMillis;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub display_name: String,
    pub disabled: bool,
    pub created_at: UnixMillis,
    /// The client-certificate identity the tenant's calls must present
    /// (mTLS): a URI SAN such as `spiffe://bank.example/idp`, or a subject
    /// DN such as `O=Bank, CN=idp`. Empty: the API key alone suffices.
    #[serde(default)]
    pub client_identity: String,
}

/// A tenant API key as stored: only the SHA-256 of its secret part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public, non-secret part of the key, used to find the record.
    pub key_id: String,
    pub tenant_id: TenantId,
    pub secret_sha256: [u8; 32],
    pub created_at: UnixMillis,
    pub revoked: bool,
    /// When the key stops working (a rotated-out key keeps working for a
    /// grace period, so two keys are live at once); 0: never.
    #[serde(default)]
    pub expires_at: UnixMillis,
}

/// Where an API key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyState {
    Active,
    /// Rotated out: still accepted until `expires_at`.
    Expiring,
    Expired,
    Revoked,
}

impl ApiKeyRecord {
    pub fn state(&self, now: UnixMillis) -> ApiKeyState {
        if self.revoked {
            ApiKeyState::Revoked
        } else if self.expires_at == 0 {
            ApiKeyState::Active
        } else if now < self.expires_at {
            ApiKeyState::Expiring
        } else {
            ApiKeyState::Expired
        }
    }

    /// Accepted for a call at `now`.
    pub fn is_live(&self, now: UnixMillis) -> bool {
        matches!(self.state(now), ApiKeyState::Active | ApiKeyState::Expiring)
    }
}

/// A pending enrollment, keyed by the SHA-256 of its one-time token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentTicket {
    pub token_sha256: [u8; 32],
    pub tenant_id: TenantId,
    pub user_id: String,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Platform {
    Ios,
    Android,
}

impl Platform {
    pub fn code(self) -> u8 {
        match self {
            Platform::Ios => 1,
            Platform::Android => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub tenant_id: TenantId,
    pub user_id: String,
    pub display_name: String,
    pub platform: Platform,
    pub key_algorithm: KeyAlgorithm,
    pub public_key: Vec<u8>,
    pub push_token: String,
    /// The tenant's push app the device was enrolled through (its APNs or
    /// FCM credentials); empty with the built-in simulator.
    #[serde(default)]
    pub push_app: String,
    /// False once the provider reported the token dead; a new token re-enables it.
    pub push_enabled: bool,
    pub enrolled_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
}

impl Device {
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Login,
    Transaction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub amount: String,
    pub currency: String,
    pub payee: String,
}

/// Exactly what the phone displays (and whose hash it signs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeContext {
    pub client_name: String,
    pub action: Action,
    pub transaction: Option<Transaction>,
    pub ip_address: String,
    pub location: String,
    pub binding_message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NumberMatchMode {
    None,
    Choose,
    Enter,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberMatch {
    pub mode: NumberMatchMode,
    /// The number the login page shows; empty for mode `None`.
    pub code: String,
    /// For `Choose`: the numbers the app offers, `code` among them.
    pub choices: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    Approve,
    Deny,
    DenyFraud,
}

impl Decision {
    pub fn code(self) -> u8 {
        match self {
            Decision::Approve => 1,
            Decision::Deny => 2,
            Decision::DenyFraud => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DenyReason {
    UserDenied,
    FraudReported,
    NumberMismatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Approved,
    Denied(DenyReason),
    Cancelled,
}

/// The one final transition of a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub outcome: Outcome,
    /// The device whose answer decided it (none for a cancel).
    pub device_id: Option<DeviceId>,
    pub at: UnixMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
}

impl ChallengeStatus {
    pub fn is_final(self) -> bool {
        self != ChallengeStatus::Pending
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeStatus::Pending => "pending",
            ChallengeStatus::Approved => "approved",
            ChallengeStatus::Denied => "denied",
            ChallengeStatus::Expired => "expired",
            ChallengeStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub id: ChallengeId,
    pub tenant_id: TenantId,
    pub user_id: String,
    pub context: ChallengeContext,
    /// SHA-256 of the canonical context (see `payload::context_hash`).
    pub context_hash: [u8; 32],
    pub number_match: NumberMatch,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub idempotency_key: Option<String>,
    /// The user's active devices at creation: the only ones that may answer.
    pub devices: Vec<DeviceId>,
    pub resolution: Option<Resolution>,
}

impl Challenge {
    /// The state at time `now`.
    pub fn status(&self, now: UnixMillis) -> ChallengeStatus {
        match &self.resolution {
            Some(r) => match r.outcome {
                Outcome::Approved => ChallengeStatus::Approved,
                Outcome::Denied(_) => ChallengeStatus::Denied,
                Outcome::Cancelled => ChallengeStatus::Cancelled,
            },
            None if now >= self.expires_at => ChallengeStatus::Expired,
            None => ChallengeStatus::Pending,
        }
    }

    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self.resolution.as_ref()?.outcome {
            Outcome::Denied(r) => Some(r),
            _ => None,
        }
    }

    /// Whether `resolution` may be applied now; the storage backends call
    /// this inside their atomic compare-and-set so every backend enforces the
    /// same state machine.
    pub fn check_transition(&self, now: UnixMillis) -> Result<(), TransitionError> {
        match self.status(now) {
            ChallengeStatus::Pending => Ok(()),
            ChallengeStatus::Expired => Err(TransitionError::Expired),
            s => Err(TransitionError::AlreadyFinal(s)),
        }
    }
}

/// The push-bombing guard's record for one user of one tenant: what it needs
/// to enforce "one pending challenge", "at most N prompts in any trailing
/// window", and the escalations after denials. Stored through the `Storage`
/// trait with a version for compare-and-set, so every replica enforces the
/// same limits. The rules themselves live in `sesame-ratelimit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserGuardState {
    /// When each admitted challenge was created (only those still inside the
    /// longest window are kept): the exact sliding log.
    pub pushes: Vec<UnixMillis>,
    /// The challenge holding the user's one pending slot.
    pub pending: Option<PendingSlot>,
    /// When the user denied (deny, wrong number, "this wasn't me").
    pub denials: Vec<UnixMillis>,
    /// "This wasn't me" mutes new prompts until then.
    pub muted_until: UnixMillis,
    /// Too many denials lock new prompts until then.
    pub locked_until: UnixMillis,
}

/// One instance's report of a tenant's traffic, written in the background by
/// every instance that serves the tenant, so each can size its local share of
/// the tenant's quota without a storage call on the hot path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub instance: String,
    /// Challenges per second asked of this instance recently (accepted or not).
    pub demand_per_s: f64,
    /// The UTC day (days since the epoch) `day_used` counts.
    pub day: i64,
    /// Challenges this instance admitted that day.
    pub day_used: u64,
    pub reported_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSlot {
    pub challenge_id: ChallengeId,
    pub expires_at: UnixMillis,
}

impl UserGuardState {
    /// The last time anything in this record matters; after it plus the
    /// longest window, the record can be deleted.
    pub fn last_relevant(&self) -> UnixMillis {
        let mut t = self.muted_until.max(self.locked_until);
        t = t.max(self.pushes.iter().copied().max().unwrap_or(0));
        t = t.max(self.denials.iter().copied().max().unwrap_or(0));
        if let Some(p) = &self.pending {
            t = t.max(p.expires_at);
        }
        t
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("challenge has expired")]
    Expired,
    #[error("challenge is already {}", .0.as_str())]
    AlreadyFinal(ChallengeStatus),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(expires_at: UnixMillis) -> Challenge {
        Challenge {
            id: ChallengeId::generate(),
            tenant_id: TenantId::parse("t").unwrap(),
            user_id: "u".into(),
            context: ChallengeContext {
                client_name: "c".into(),
                action: Action::Login,
                transaction: None,
                ip_address: String::new(),
                location: String::new(),
                binding_message: String::new(),
            },
            context_hash: [0; 32],
            number_match: NumberMatch {
                mode: NumberMatchMode::None,
                code: String::new(),
                choices: vec![],
            },
            created_at: 0,
            expires_at,
            idempotency_key: None,
            devices: vec![],
            resolution: None,
        }
    }

    #[test]
    fn pending_until_expiry_then_expired() {
        let c = challenge(1000);
        assert_eq!(c.status(999), ChallengeStatus::Pending);
        assert_eq!(c.status(1000), ChallengeStatus::Expired);
        assert_eq!(c.check_transition(1000), Err(TransitionError::Expired));
    }

    #[test]
    fn final_states_do_not_move() {
        let mut c = challenge(1000);
        c.resolution = Some(Resolution {
            outcome: Outcome::Denied(DenyReason::FraudReported),
            device_id: None,
            at: 10,
        });
        assert_eq!(c.status(5000), ChallengeStatus::Denied);
        assert_eq!(c.deny_reason(), Some(DenyReason::FraudReported));
        assert_eq!(
            c.check_transition(20),
            Err(TransitionError::AlreadyFinal(ChallengeStatus::Denied))
        );
    }
}
