//! The signed payloads of the protocol (docs/protocol.md), built with the
//! canonical encoding. The device and the server each build them from their
//! own copy of the fields; the server never trusts bytes the device sends
//! instead of fields.

use sha2::{Digest, Sha256};

use crate::canonical::Canonical;
use crate::crypto::KeyAlgorithm;
use crate::model::{Action, ChallengeContext, Decision, Platform};
use crate::time::UnixMillis;

pub const CONTEXT_DOMAIN: &str = "sesame.context.v1";
pub const ANSWER_DOMAIN: &str = "sesame.answer.v1";
pub const ENROLL_DOMAIN: &str = "sesame.enroll.v1";
pub const DEVICE_REQUEST_DOMAIN: &str = "sesame.device-request.v1";

/// SHA-256 of exactly what the phone displays: who asks, what (including
/// amount, currency and payee for a transaction), from where, and the binding
/// message. Signed inside the answer (PSD2 dynamic linking).
pub fn context_hash(ctx: &ChallengeContext) -> [u8; 32] {
    let action = match ctx.action {
        Action::Login => 1,
        Action::Transaction => 2,
    };
    let mut c = Canonical::new(CONTEXT_DOMAIN)
        .str(&ctx.client_name)
        .u8(action);
    c = match &ctx.transaction {
        Some(t) => c.u8(1).str(&t.amount).str(&t.currency).str(&t.payee),
        None => c.u8(0),
    };
    let bytes = c
        .str(&ctx.ip_address)
        .str(&ctx.location)
        .str(&ctx.binding_message)
        .finish();
    Sha256::digest(&bytes).into()
}

/// How enrollment tokens are stored and looked up: only their SHA-256.
pub fn enrollment_token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Fields of a device's answer to a challenge.
#[derive(Debug, Clone)]
pub struct AnswerPayload<'a> {
    pub challenge_id: &'a str,
    pub device_id: &'a str,
    pub decision: Decision,
    pub number_match_answer: &'a str,
    pub context_hash: &'a [u8],
    pub timestamp: UnixMillis,
}

impl AnswerPayload<'_> {
    pub fn encode(&self) -> Vec<u8> {
        Canonical::new(ANSWER_DOMAIN)
            .str(self.challenge_id)
            .str(self.device_id)
            .u8(self.decision.code())
            .str(self.number_match_answer)
            .bytes(self.context_hash)
            .i64(self.timestamp)
            .finish()
    }
}

/// Proof of possession at enrollment: the new key signs the one-time token
/// together with everything it registers.
pub fn enrollment_payload(
    token: &str,
    alg: KeyAlgorithm,
    public_key: &[u8],
    platform: Platform,
    push_token: &str,
) -> Vec<u8> {
    Canonical::new(ENROLL_DOMAIN)
        .str(token)
        .u8(alg.code())
        .bytes(public_key)
        .u8(platform.code())
        .str(push_token)
        .finish()
}

/// A signed device request: method name, device, time, a one-time nonce, and
/// the request's own arguments in a fixed order per method.
pub fn device_request_payload(
    method: &str,
    device_id: &str,
    timestamp: UnixMillis,
    nonce: &[u8],
    args: &[&str],
) -> Vec<u8> {
    let mut c = Canonical::new(DEVICE_REQUEST_DOMAIN)
        .str(method)
        .str(device_id)
        .i64(timestamp)
        .bytes(nonce);
    for a in args {
        c = c.str(a);
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Transaction;

    fn ctx(amount: &str) -> ChallengeContext {
        ChallengeContext {
            client_name: "Bank".into(),
            action: Action::Transaction,
            transaction: Some(Transaction {
                amount: amount.into(),
                currency: "EUR".into(),
                payee: "ACME".into(),
            }),
            ip_address: "192.0.2.1".into(),
            location: "Brussels".into(),
            binding_message: String::new(),
        }
    }

    #[test]
    fn context_hash_covers_amount_and_payee() {
        assert_ne!(context_hash(&ctx("10.00")), context_hash(&ctx("100.00")));
        let mut other = ctx("10.00");
        other.transaction.as_mut().unwrap().payee = "EVIL".into();
        assert_ne!(context_hash(&ctx("10.00")), context_hash(&other));
    }

    #[test]
    fn answer_payload_covers_every_field() {
        let h = [7u8; 32];
        let base = AnswerPayload {
            challenge_id: "ch_1",
            device_id: "dv_1",
            decision: Decision::Approve,
            number_match_answer: "42",
            context_hash: &h,
            timestamp: 5,
        };
        let b = base.encode();
        let mut v = base.clone();
        v.decision = Decision::Deny;
        assert_ne!(v.encode(), b);
        let mut v = base.clone();
        v.number_match_answer = "43";
        assert_ne!(v.encode(), b);
        let mut v = base.clone();
        v.timestamp = 6;
        assert_ne!(v.encode(), b);
        let mut v = base.clone();
        v.device_id = "dv_2";
        assert_ne!(v.encode(), b);
        assert!(b.starts_with(&[0, 0, 0, ANSWER_DOMAIN.len() as u8]));
    }
}
