//! Validation of caller-supplied fields, shared by every RPC so that limits
//! and messages are the same everywhere. Each error names the field and says
//! what would be accepted.

use crate::limits::*;
use crate::model::{Action, ChallengeContext};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        ValidationError {
            field,
            message: message.into(),
        }
    }
}

fn text(
    field: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), ValidationError> {
    if required && value.trim().is_empty() {
        return Err(ValidationError::new(field, "is required"));
    }
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes; at most {max} are allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn user_id(v: &str) -> Result<(), ValidationError> {
    text("user_id", v, MAX_USER_ID_LEN, true)
}

pub fn push_token(v: &str) -> Result<(), ValidationError> {
    text("push_token", v, MAX_PUSH_TOKEN_LEN, true)
}

pub fn device_name(v: &str) -> Result<(), ValidationError> {
    text("display_name", v, MAX_DEVICE_NAME_LEN, false)
}

pub fn tenant_display_name(v: &str) -> Result<(), ValidationError> {
    text("display_name", v, MAX_TENANT_NAME_LEN, false)
}

/// A client-certificate identity: a URI SAN (`spiffe://bank.example/idp`)
/// or a subject DN (`O=Bank, CN=idp`); empty: none.
pub fn client_identity(v: &str) -> Result<(), ValidationError> {
    text("client_identity", v, MAX_CLIENT_IDENTITY_LEN, false)?;
    if v.trim() != v {
        return Err(ValidationError::new(
            "client_identity",
            "must not start or end with spaces",
        ));
    }
    if !v.is_empty() && !v.contains("://") && !v.contains('=') {
        return Err(ValidationError::new(
            "client_identity",
            "must be a URI SAN with a scheme (spiffe://bank.example/idp) or a subject DN (O=Bank, CN=idp)",
        ));
    }
    Ok(())
}

pub fn idempotency_key(v: &str) -> Result<(), ValidationError> {
    text("options.idempotency_key", v, MAX_IDEMPOTENCY_KEY_LEN, false)
}

/// A decimal amount: 1–15 integer digits, optionally '.' and 1–4 fraction digits.
fn amount(v: &str) -> Result<(), ValidationError> {
    let (int, frac) = match v.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (v, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = digits(int) && int.len() <= 15 && frac.is_none_or(|f| digits(f) && f.len() <= 4);
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "context.transaction.amount",
            "must be a decimal like \"125.50\" (up to 15 integer and 4 fraction digits)",
        ))
    }
}

pub fn context(ctx: &ChallengeContext) -> Result<(), ValidationError> {
    text(
        "context.client_name",
        &ctx.client_name,
        MAX_CLIENT_NAME_LEN,
        true,
    )?;
    text("context.ip_address", &ctx.ip_address, MAX_IP_LEN, false)?;
    if !ctx.ip_address.is_empty() && ctx.ip_address.parse::<std::net::IpAddr>().is_err() {
        return Err(ValidationError::new(
            "context.ip_address",
            "must be an IPv4 or IPv6 address",
        ));
    }
    text("context.location", &ctx.location, MAX_LOCATION_LEN, false)?;
    text(
        "context.binding_message",
        &ctx.binding_message,
        MAX_BINDING_MESSAGE_LEN,
        false,
    )?;
    match (ctx.action, &ctx.transaction) {
        (Action::Transaction, None) => Err(ValidationError::new(
            "context.transaction",
            "is required when action is ACTION_TRANSACTION",
        )),
        (Action::Login, Some(_)) => Err(ValidationError::new(
            "context.transaction",
            "must be empty when action is ACTION_LOGIN",
        )),
        (Action::Transaction, Some(t)) => {
            amount(&t.amount)?;
            if !(t.currency.len() == 3 && t.currency.bytes().all(|b| b.is_ascii_uppercase())) {
                return Err(ValidationError::new(
                    "context.transaction.currency",
                    "must be an ISO 4217 code of three upper-case letters, e.g. \"EUR\"",
                ));
            }
            text("context.transaction.payee", &t.payee, MAX_PAYEE_LEN, true)
        }
        (Action::Login, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Transaction;

    fn login() -> ChallengeContext {
        ChallengeContext {
            client_name: "Bank".into(),
            action: Action::Login,
            transaction: None,
            ip_address: String::new(),
            location: String::new(),
            binding_message: String::new(),
        }
    }

    #[test]
    fn amounts() {
        for ok in ["1", "125.50", "0.0001", "999999999999999"] {
            assert!(amount(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1.",
            ".5",
            "1.23456",
            "-1",
            "1e5",
            "1,00",
            "1234567890123456",
        ] {
            assert!(amount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn contexts() {
        assert!(context(&login()).is_ok());
        let mut c = login();
        c.client_name = " ".into();
        assert_eq!(context(&c).unwrap_err().field, "context.client_name");
        let mut c = login();
        c.ip_address = "not-an-ip".into();
        assert!(context(&c).is_err());
        let mut c = login();
        c.action = Action::Transaction;
        assert!(context(&c).is_err());
        c.transaction = Some(Transaction {
            amount: "10".into(),
            currency: "eur".into(),
            payee: "x".into(),
        });
        assert_eq!(
            context(&c).unwrap_err().field,
            "context.transaction.currency"
        );
        let mut c = login();
        c.binding_message = "x".repeat(MAX_BINDING_MESSAGE_LEN + 1);
        assert!(context(&c).is_err());
    }

    #[test]
    fn user_ids() {
        assert!(user_id("alice@example.com").is_ok());
        assert!(user_id("").is_err());
        assert!(user_id("a\nb").is_err());
        assert!(user_id(&"a".repeat(129)).is_err());
    }
}
