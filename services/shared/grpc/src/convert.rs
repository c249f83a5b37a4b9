//! proto <-> domain. Inbound conversions validate: an unknown or unspecified
//! enum value is an `INVALID_ARGUMENT` naming the field.

use sesame_core::model::{self as m, ChallengeStatus};
use sesame_proto::types::v1 as pb;

use crate::ApiError;

pub fn platform_in(v: i32) -> Result<m::Platform, ApiError> {
    match pb::Platform::try_from(v) {
        Ok(pb::Platform::Ios) => Ok(m::Platform::Ios),
        Ok(pb::Platform::Android) => Ok(m::Platform::Android),
        _ => Err(ApiError::invalid(
            "platform",
            format!("{v} is not a known platform; use PLATFORM_IOS or PLATFORM_ANDROID"),
        )),
    }
}

pub fn platform_out(p: m::Platform) -> i32 {
    match p {
        m::Platform::Ios => pb::Platform::Ios as i32,
        m::Platform::Android => pb::Platform::Android as i32,
    }
}

pub fn key_algorithm_in(v: i32) -> Result<m::KeyAlgorithm, ApiError> {
    match pb::KeyAlgorithm::try_from(v) {
        Ok(pb::KeyAlgorithm::EcdsaP256Sha256) => Ok(m::KeyAlgorithm::EcdsaP256Sha256),
        Ok(pb::KeyAlgorithm::Ed25519) => Ok(m::KeyAlgorithm::Ed25519),
        _ => Err(ApiError::invalid(
            "key_algorithm",
            format!(
                "{v} is not a supported algorithm; use KEY_ALGORITHM_ECDSA_P256_SHA256 or KEY_ALGORITHM_ED25519"
            ),
        )),
    }
}

pub fn key_algorithm_out(a: m::KeyAlgorithm) -> i32 {
    match a {
        m::KeyAlgorithm::EcdsaP256Sha256 => pb::KeyAlgorithm::EcdsaP256Sha256 as i32,
        m::KeyAlgorithm::Ed25519 => pb::KeyAlgorithm::Ed25519 as i32,
    }
}

/// Unspecified means the default, `Enter`.
pub fn number_match_in(v: i32) -> Result<m::NumberMatchMode, ApiError> {
    match pb::NumberMatchMode::try_from(v) {
        Ok(pb::NumberMatchMode::Unspecified) | Ok(pb::NumberMatchMode::Enter) => {
            Ok(m::NumberMatchMode::Enter)
        }
        Ok(pb::NumberMatchMode::None) => Ok(m::NumberMatchMode::None),
        Ok(pb::NumberMatchMode::Choose) => Ok(m::NumberMatchMode::Choose),
        Err(_) => Err(ApiError::invalid(
            "options.number_match",
            format!("{v} is not a known number-matching mode"),
        )),
    }
}

pub fn number_match_out(mode: m::NumberMatchMode) -> i32 {
    match mode {
        m::NumberMatchMode::None => pb::NumberMatchMode::None as i32,
        m::NumberMatchMode::Choose => pb::NumberMatchMode::Choose as i32,
        m::NumberMatchMode::Enter => pb::NumberMatchMode::Enter as i32,
    }
}

pub fn decision_in(v: i32) -> Result<m::Decision, ApiError> {
    match pb::Decision::try_from(v) {
        Ok(pb::Decision::Approve) => Ok(m::Decision::Approve),
        Ok(pb::Decision::Deny) => Ok(m::Decision::Deny),
        Ok(pb::Decision::DenyFraud) => Ok(m::Decision::DenyFraud),
        _ => Err(ApiError::invalid(
            "decision",
            format!(
                "{v} is not a decision; use DECISION_APPROVE, DECISION_DENY or DECISION_DENY_FRAUD"
            ),
        )),
    }
}

pub fn decision_out(d: m::Decision) -> i32 {
    match d {
        m::Decision::Approve => pb::Decision::Approve as i32,
        m::Decision::Deny => pb::Decision::Deny as i32,
        m::Decision::DenyFraud => pb::Decision::DenyFraud as i32,
    }
}

pub fn status_out(s: ChallengeStatus) -> i32 {
    (match s {
        ChallengeStatus::Pending => pb::ChallengeStatus::Pending,
        ChallengeStatus::Approved => pb::ChallengeStatus::Approved,
        ChallengeStatus::Denied => pb::ChallengeStatus::Denied,
        ChallengeStatus::Expired => pb::ChallengeStatus::Expired,
        ChallengeStatus::Cancelled => pb::ChallengeStatus::Cancelled,
    }) as i32
}

pub fn status_in(v: i32) -> Option<ChallengeStatus> {
    match pb::ChallengeStatus::try_from(v).ok()? {
        pb::ChallengeStatus::Pending => Some(ChallengeStatus::Pending),
        pb::ChallengeStatus::Approved => Some(ChallengeStatus::Approved),
        pb::ChallengeStatus::Denied => Some(ChallengeStatus::Denied),
        pb::ChallengeStatus::Expired => Some(ChallengeStatus::Expired),
        pb::ChallengeStatus::Cancelled => Some(ChallengeStatus::Cancelled),
        pb::ChallengeStatus::Unspecified => None,
    }
}

pub fn deny_reason_out(r: Option<m::DenyReason>) -> i32 {
    (match r {
        None => pb::DenyReason::Unspecified,
        Some(m::DenyReason::UserDenied) => pb::DenyReason::UserDenied,
        Some(m::DenyReason::FraudReported) => pb::DenyReason::FraudReported,
        Some(m::DenyReason::NumberMismatch) => pb::DenyReason::NumberMismatch,
    }) as i32
}

/// A missing context is an error; unknown actions too.
pub fn context_in(ctx: Option<pb::ChallengeContext>) -> Result<m::ChallengeContext, ApiError> {
    let ctx = ctx.ok_or_else(|| ApiError::invalid("context", "is required"))?;
    let action = match pb::Action::try_from(ctx.action) {
        Ok(pb::Action::Login) => m::Action::Login,
        Ok(pb::Action::Transaction) => m::Action::Transaction,
        _ => {
            return Err(ApiError::invalid(
                "context.action",
                format!(
                    "{} is not an action; use ACTION_LOGIN or ACTION_TRANSACTION",
                    ctx.action
                ),
            ))
        }
    };
    Ok(m::ChallengeContext {
        client_name: ctx.client_name,
        action,
        transaction: ctx.transaction.map(|t| m::Transaction {
            amount: t.amount,
            currency: t.currency,
            payee: t.payee,
        }),
        ip_address: ctx.ip_address,
        location: ctx.location,
        binding_message: ctx.binding_message,
    })
}

pub fn context_out(ctx: &m::ChallengeContext) -> pb::ChallengeContext {
    pb::ChallengeContext {
        client_name: ctx.client_name.clone(),
        action: match ctx.action {
            m::Action::Login => pb::Action::Login as i32,
            m::Action::Transaction => pb::Action::Transaction as i32,
        },
        transaction: ctx.transaction.as_ref().map(|t| pb::Transaction {
            amount: t.amount.clone(),
            currency: t.currency.clone(),
            payee: t.payee.clone(),
        }),
        ip_address: ctx.ip_address.clone(),
        location: ctx.location.clone(),
        binding_message: ctx.binding_message.clone(),
    }
}

pub fn audit_record_out(r: &sesame_core::audit::AuditRecord) -> pb::AuditRecord {
    let e = &r.entry;
    pb::AuditRecord {
        chain: r.chain.clone(),
        seq: r.seq,
        prev: r.prev.to_vec(),
        hash: r.hash.to_vec(),
        at_unix_ms: e.at,
        tenant_id: e.tenant_id.clone(),
        action: e.action.as_str().to_owned(),
        user_id: e.user_id.clone(),
        device_id: e.device_id.clone(),
        challenge_id: e.challenge_id.clone(),
        actor: e.actor.clone(),
        source: e.source.clone(),
        detail: e.detail.clone(),
    }
}

/// The record as the server sent it, for verification; `Err` names the
/// field that cannot be a record's.
pub fn audit_record_in(r: pb::AuditRecord) -> Result<sesame_core::audit::AuditRecord, String> {
    let hash32 = |field: &str, b: Vec<u8>| -> Result<[u8; 32], String> {
        b.try_into()
            .map_err(|b: Vec<u8>| format!("{field} is {} bytes, not 32", b.len()))
    };
    let action = sesame_core::audit::AuditAction::parse(&r.action)
        .ok_or_else(|| format!("unknown action {:?}", r.action))?;
    Ok(sesame_core::audit::AuditRecord {
        chain: r.chain,
        seq: r.seq,
        prev: hash32("prev", r.prev)?,
        hash: hash32("hash", r.hash)?,
        entry: sesame_core::audit::AuditEntry {
            at: r.at_unix_ms,
            tenant_id: r.tenant_id,
            action,
            user_id: r.user_id,
            device_id: r.device_id,
            challenge_id: r.challenge_id,
            actor: r.actor,
            source: r.source,
            detail: r.detail,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enums_are_refused() {
        assert!(platform_in(0).is_err());
        assert!(platform_in(99).is_err());
        assert!(key_algorithm_in(7).is_err());
        assert!(decision_in(0).is_err());
        assert!(number_match_in(42).is_err());
        assert_eq!(number_match_in(0).unwrap(), m::NumberMatchMode::Enter);
    }

    #[test]
    fn context_roundtrip() {
        let ctx = m::ChallengeContext {
            client_name: "Bank".into(),
            action: m::Action::Transaction,
            transaction: Some(m::Transaction {
                amount: "1.00".into(),
                currency: "EUR".into(),
                payee: "Shop".into(),
            }),
            ip_address: "::1".into(),
            location: "Gent".into(),
            binding_message: "hello".into(),
        };
        assert_eq!(context_in(Some(context_out(&ctx))).unwrap(), ctx);
        assert!(context_in(None).is_err());
    }
}
