//! Identifiers. Device and challenge ids are 128 bits from the operating
//! system's CSPRNG (through `rand::rngs::OsRng`), written as a short type
//! prefix and 32 lower-case hex digits, so a mistyped kind of id is caught
//! early and ids cannot be guessed or enumerated.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is malformed: expected {expected}")]
    Malformed {
        kind: &'static str,
        expected: &'static str,
    },
}

/// Fills `N` bytes from the OS CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

macro_rules! random_id {
    ($name:ident, $prefix:literal, $kind:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh 128-bit random id.
            pub fn generate() -> Self {
                $name(format!("{}{}", $prefix, hex::encode(random_bytes::<16>())))
            }

            /// Validates an id received from the network.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if s.is_empty() {
                    return Err(IdError::Empty { kind: $kind });
                }
                let ok = s.len() == $prefix.len() + 32
                    && s.starts_with($prefix)
                    && s[$prefix.len()..]
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !ok {
                    return Err(IdError::Malformed {
                        kind: $kind,
                        expected: concat!("\"", $prefix, "\" followed by 32 lower-case hex digits"),
                    });
                }
                Ok($name(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

random_id!(DeviceId, "dv_", "device_id");
random_id!(ChallengeId, "ch_", "challenge_id");

/// A tenant's id: 1 to 64 characters of `a-z`, `0-9` and `-`, chosen by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty { kind: "tenant_id" });
        }
        let ok = s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(IdError::Malformed {
                kind: "tenant_id",
                expected: "1 to 64 characters of a-z, 0-9 and '-'",
            });
        }
        Ok(TenantId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = ChallengeId::generate();
        let b = ChallengeId::generate();
        assert_ne!(a, b);
        assert_eq!(ChallengeId::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn wrong_kind_or_shape_is_refused() {
        let d = DeviceId::generate();
        assert!(ChallengeId::parse(d.as_str()).is_err());
        assert!(ChallengeId::parse("").is_err());
        assert!(ChallengeId::parse("ch_ABCDEF0123456789abcdef0123456789").is_err());
        assert!(ChallengeId::parse("ch_abc").is_err());
        assert!(TenantId::parse("Bank").is_err());
        assert!(TenantId::parse("bank-1").is_ok());
    }
}
