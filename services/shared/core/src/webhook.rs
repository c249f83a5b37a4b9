//! Signed verdict webhooks, without I/O: the endpoint rules (HTTPS only, no
//! private address unless allow-listed), the secrets, the signature, and
//! the body a tenant receives.
//!
//! The signature follows the Standard Webhooks specification
//! (<https://www.standardwebhooks.com>), so a receiver can use one of its
//! libraries or the few lines in `docs/webhooks.md`:
//!
//! ```text
//! webhook-id:        <delivery id>            (the same on every retry: the idempotency key)
//! webhook-timestamp: <unix seconds>           (when this attempt was signed)
//! webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")> [v1,<...> ...]
//! ```
//!
//! During a secret rotation each request carries one signature per live
//! secret, so a receiver may switch secrets at its own pace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::model::{ChallengeStatus, DenyReason};
use crate::time::UnixMillis;

/// The prefix of a secret as shown to the tenant (as in Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a secret.
pub const SECRET_BYTES: usize = 32;
/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// How far a receiver should accept `webhook-timestamp` from its clock.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Url(String),
    #[error("{0} is not a public address; add it to webhook.allow_private to allow it")]
    PrivateAddress(IpAddr),
    #[error("not a webhook secret (whsec_ followed by base64)")]
    Secret,
    #[error("{0}")]
    Signature(&'static str),
    #[error("not an address range (want a.b.c.d/n or x::y/n): {0}")]
    Cidr(String),
    #[error("seal key: {0}")]
    Key(String),
}

/// A webhook endpoint URL, checked: `https`, a host, no credentials, no
/// fragment, at most [`MAX_URL_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    url: url::Url,
}

impl EndpointUrl {
    pub fn parse(s: &str) -> Result<EndpointUrl, WebhookError> {
        let err = |m: &str| WebhookError::Url(m.to_owned());
        if s.is_empty() {
            return Err(err("url is required"));
        }
        if s.len() > MAX_URL_LEN {
            return Err(WebhookError::Url(format!(
                "url is {} characters; at most {MAX_URL_LEN}",
                s.len()
            )));
        }
        let url = url::Url::parse(s).map_err(|e| WebhookError::Url(format!("not a URL: {e}")))?;
        if url.scheme() != "https" {
            return Err(WebhookError::Url(format!(
                "scheme {:?} refused: webhooks go over https only",
                url.scheme()
            )));
        }
        if url.host().is_none() {
            return Err(err("url has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                "url must not hold credentials; the signature authenticates Sesame",
            ));
        }
        if url.fragment().is_some() {
            return Err(err("url must not have a #fragment"));
        }
        Ok(EndpointUrl { url })
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The host's address when the URL names one literally (no DNS).
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match self.url.host()? {
            url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
            url::Host::Domain(_) => None,
        }
    }

    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(443)
    }
}

/// One address range (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, WebhookError> {
        let bad = || WebhookError::Cidr(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        // Addresses are judged in their IPv4 form when IPv6 maps one
        // (`canonical`): a range written as `::ffff:a.b.c.d/n` is the same.
        match (net, canonical(net)) {
            (IpAddr::V6(_), v4 @ IpAddr::V4(_)) if prefix >= 96 => Ok(Cidr {
                net: v4,
                prefix: prefix - 96,
            }),
            (IpAddr::V6(_), IpAddr::V4(_)) => Err(bad()),
            _ => Ok(Cidr { net, prefix }),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// An IPv4 address carried in IPv6 (mapped `::ffff:a.b.c.d`) is judged as
/// the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Whether `ip` is a globally routable unicast address: not loopback,
/// private (RFC 1918, unique local), link-local (cloud metadata lives at
/// 169.254.169.254), carrier-grade NAT, multicast, documentation,
/// benchmarking, reserved, or an IPv6 form that embeds one of those
/// (mapped, NAT64, 6to4) or that cannot be judged (Teredo).
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => is_public_v6(a),
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    let in_net = |net: [u8; 4], prefix: u32| {
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        u32::from(a) & mask == u32::from(Ipv4Addr::from(net)) & mask
    };
    !(o[0] == 0
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_broadcast()
        || a.is_multicast()
        || a.is_documentation()
        || in_net([100, 64, 0, 0], 10)
        || in_net([192, 0, 0, 0], 24)
        || in_net([192, 88, 99, 0], 24)
        || in_net([198, 18, 0, 0], 15)
        || o[0] >= 240)
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    let embedded_v4 = |hi: usize| {
        Ipv4Addr::new(
            (s[hi] >> 8) as u8,
            s[hi] as u8,
            (s[hi + 1] >> 8) as u8,
            s[hi + 1] as u8,
        )
    };
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
        return false;
    }
    match s[0] {
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10.
        x if x & 0xfe00 == 0xfc00 || x & 0xffc0 == 0xfe80 || x & 0xffc0 == 0xfec0 => false,
        // Documentation 2001:db8::/32, Teredo 2001::/32 (hides its
        // target), benchmarking 2001:2::/48.
        0x2001 if s[1] == 0x0db8 || s[1] == 0 || (s[1] == 2 && s[2] == 0) => false,
        // Documentation 3fff::/20.
        0x3fff if s[1] & 0xf000 == 0 => false,
        // Local-use NAT64 64:ff9b:1::/48 (RFC 8215): where it translates
        // is the local network's choice.
        0x0064 if s[1] == 0xff9b && s[2] == 1 => false,
        // 6to4: judged by the IPv4 address it tunnels to.
        0x2002 => is_public_v4(embedded_v4(1)),
        // NAT64 64:ff9b::/96: the IPv4 address it translates to.
        0x0064 if s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] => is_public_v4(embedded_v4(6)),
        // The rest of ::/8 (IPv4-compatible, discard 100::/64...) is not
        // routable unicast.
        0 | 0x0100 => false,
        _ => true,
    }
}

/// Which non-public addresses an operator lets webhooks reach (a test
/// receiver on loopback, an internal gateway). Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn new(allow: Vec<Cidr>) -> AddressPolicy {
        AddressPolicy { allow }
    }

    pub fn parse(list: &[String]) -> Result<AddressPolicy, WebhookError> {
        list.iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map(AddressPolicy::new)
    }

    /// `Ok` when a request may go to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), WebhookError> {
        if is_public(ip) || self.allow.iter().any(|c| c.contains(ip)) {
            Ok(())
        } else {
            Err(WebhookError::PrivateAddress(ip))
        }
    }
}

/// A signing secret: 32 random bytes, shown as `whsec_<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn generate() -> Secret {
        Secret(crate::ids::random_bytes::<SECRET_BYTES>().to_vec())
    }

    pub fn parse(s: &str) -> Result<Secret, WebhookError> {
        let b64 = s.strip_prefix(SECRET_PREFIX).ok_or(WebhookError::Secret)?;
        let bytes = B64.decode(b64).map_err(|_| WebhookError::Secret)?;
        if bytes.len() < 16 || bytes.len() > 64 {
            return Err(WebhookError::Secret);
        }
        Ok(Secret(bytes))
    }

    pub fn encode(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.0))
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }

    /// `v1,<base64 signature>` of one delivery attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = hmac::sign(&self.key(), &signed_content(id, timestamp, body));
        format!("v1,{}", B64.encode(tag.as_ref()))
    }
}

fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(id.len() + body.len() + 24);
    m.extend_from_slice(id.as_bytes());
    m.push(b'.');
    m.extend_from_slice(timestamp.to_string().as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

/// The `webhook-signature` value: one `v1,` signature per secret.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a receiver does with a request: the timestamp is within
/// `tolerance_secs` of `now_secs` (either way) and one of the signatures
/// is `secret`'s over exactly `id`, `timestamp` and `body` (compared in
/// constant time). Replays inside the window are the receiver's to drop
/// by `webhook-id`.
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), WebhookError> {
    if id.is_empty() {
        return Err(WebhookError::Signature("webhook-id is missing"));
    }
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| WebhookError::Signature("webhook-timestamp is not a number"))?;
    if now_secs.abs_diff(ts) > tolerance_secs.unsigned_abs() {
        return Err(WebhookError::Signature(
            "webhook-timestamp is outside the replay window",
        ));
    }
    let content = signed_content(id, ts, body);
    let key = secret.key();
    for sig in signatures.split(' ') {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = B64.decode(b64) else {
            continue;
        };
        if hmac::verify(&key, &content, &tag).is_ok() {
            return Ok(());
        }
    }
    Err(WebhookError::Signature("no valid v1 signature"))
}

/// A tenant's registered endpoint (one per tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub tenant_id: crate::TenantId,
    pub url: String,
    /// Live secrets, newest first; a rotated-out one signs until its
    /// `retire_at`. Kept in clear: an HMAC needs the secret itself (see
    /// `docs/security.md`, webhooks).
    pub secrets: Vec<StoredSecret>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// `whsec_<base64>`.
    pub secret: String,
    pub created_at: UnixMillis,
    /// When a rotated-out secret stops signing (none: the current one).
    #[serde(default)]
    pub retire_at: Option<UnixMillis>,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret")
            .field("created_at", &self.created_at)
            .field("retire_at", &self.retire_at)
            .finish_non_exhaustive()
    }
}

impl WebhookEndpoint {
    /// The secrets that sign at `now`, opened with `key` where sealed.
    /// One that cannot be read (sealed without the key, or with another
    /// key) is skipped: the caller refuses to send unsigned.
    pub fn signing_secrets(&self, now: UnixMillis, key: Option<&SealKey>) -> Vec<Secret> {
        self.secrets
            .iter()
            .filter(|s| s.retire_at.is_none_or(|t| now < t))
            .filter_map(|s| match s.secret.strip_prefix(SEALED_PREFIX) {
                Some(_) => key?.open(&s.secret, self.tenant_id.as_str()).ok(),
                None => Secret::parse(&s.secret).ok(),
            })
            .collect()
    }
}

/// A stored secret sealed with the operator's key: `sealed:v1:` and the
/// base64 of a 96-bit nonce, the AES-256-GCM ciphertext and its tag.
pub const SEALED_PREFIX: &str = "sealed:v1:";

/// The operator's key for webhook secrets at rest (`webhook.seal_key_file`):
/// with it, storage (and its backups) holds only sealed secrets, bound to
/// their tenant (the tenant id is the associated data, so a sealed secret
/// copied to another tenant's row does not open).
pub struct SealKey(ring::aead::LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// 32 bytes, given as base64 (what `head -c 32 /dev/urandom | base64`
    /// prints); surrounding whitespace is ignored.
    pub fn parse(b64: &str) -> Result<SealKey, WebhookError> {
        let bytes = B64
            .decode(b64.trim())
            .map_err(|_| WebhookError::Key("not base64".into()))?;
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &bytes)
            .map_err(|_| WebhookError::Key(format!("{} bytes; need 32", bytes.len())))?;
        Ok(SealKey(ring::aead::LessSafeKey::new(key)))
    }

    pub fn seal(&self, secret: &Secret, tenant: &str) -> String {
        let nonce = crate::ids::random_bytes::<12>();
        let mut data = secret.encode().into_bytes();
        // Sealing only fails for inputs beyond AES-GCM's size limit.
        if self
            .0
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(tenant.as_bytes()),
                &mut data,
            )
            .is_err()
        {
            return String::new();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{SEALED_PREFIX}{}", B64.encode(out))
    }

    pub fn open(&self, sealed: &str, tenant: &str) -> Result<Secret, WebhookError> {
        let raw = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .filter(|r| r.len() > 12 + 16)
            .ok_or(WebhookError::Secret)?;
        let (nonce, rest) = raw.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| WebhookError::Secret)?;
        let mut data = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, ring::aead::Aad::from(tenant.as_bytes()), &mut data)
            .map_err(|_| WebhookError::Secret)?;
        Secret::parse(std::str::from_utf8(plain).map_err(|_| WebhookError::Secret)?)
    }
}

/// A verdict delivery given up on, kept for the tenant to inspect and
/// redeliver (until the challenge's retention ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadDelivery {
    pub tenant_id: crate::TenantId,
    pub delivery_id: String,
    pub challenge_id: String,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: UnixMillis,
}

/// The JSON body of a verdict delivery (`type` = `challenge.verdict`).
/// Fields only grow; a receiver must ignore ones it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictNotice {
    #[serde(rename = "type")]
    pub kind: String,
    /// The same as `webhook-id`.
    pub delivery_id: String,
    pub tenant_id: String,
    pub challenge_id: String,
    pub user_id: String,
    /// `approved`, `denied` or `cancelled`.
    pub status: String,
    /// For a denial: `user_denied`, `fraud_reported` or `number_mismatch`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deny_reason: String,
    /// The device whose answer decided it (empty for a cancel).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_id: String,
    pub decided_at_unix_ms: UnixMillis,
}

pub const VERDICT_TYPE: &str = "challenge.verdict";

pub fn deny_reason_str(r: DenyReason) -> &'static str {
    match r {
        DenyReason::UserDenied => "user_denied",
        DenyReason::FraudReported => "fraud_reported",
        DenyReason::NumberMismatch => "number_mismatch",
    }
}

/// The delivery id of a challenge's verdict: one verdict per challenge, so
/// a retry, a duplicate from the queue and a redelivery from the dead
/// letters all carry the same id and the receiver keeps one.
pub fn delivery_id(challenge_id: &str) -> String {
    format!("vd_{challenge_id}")
}

/// Whether a status is one a webhook announces (expiry is derived from
/// `expires_at`, which the tenant already has, and is not announced).
pub fn announced(status: ChallengeStatus) -> bool {
    matches!(
        status,
        ChallengeStatus::Approved | ChallengeStatus::Denied | ChallengeStatus::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn only_https_urls_without_credentials_are_endpoints() {
        assert!(EndpointUrl::parse("https://idp.example.com/hooks/sesame").is_ok());
        for bad in [
            "",
            "http://idp.example.com/hook",
            "ftp://idp.example.com/",
            "https://user:pw@idp.example.com/",
            "https://idp.example.com/#x",
            "https://",
            "https://:443/",
            "not a url",
        ] {
            assert!(EndpointUrl::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("https://a.example/{}", "x".repeat(MAX_URL_LEN));
        assert!(EndpointUrl::parse(&long).is_err());
        let u = EndpointUrl::parse("https://[::1]:8443/h").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.literal_ip(), Some(ip("::1")));
        assert_eq!(u.port(), 8443);
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::127.0.0.1",
            "64:ff9b:1::a9fe:a9fe",
            "2001:2::1",
            "3fff::1",
        ] {
            assert!(!is_public(ip(a)), "{a} judged public");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::",
            "3fff:1000::1",
        ] {
            assert!(is_public(ip(a)), "{a} judged private");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_ranges() {
        let p = AddressPolicy::parse(&["127.0.0.1/32".into(), "fd00::/8".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(p.check(ip("127.0.0.1")).is_ok());
        assert!(p.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(p.check(ip("127.0.0.2")).is_err());
        assert!(p.check(ip("fd00::5")).is_ok());
        assert!(p.check(ip("fc00::5")).is_err());
        // A mapped range is the IPv4 range.
        let mapped =
            AddressPolicy::parse(&["::ffff:10.1.0.0/112".into()]).unwrap_or_else(|e| panic!("{e}"));
        assert!(mapped.check(ip("10.1.2.3")).is_ok());
        assert!(mapped.check(ip("10.2.0.1")).is_err());
        assert!(Cidr::parse("::ffff:10.0.0.0/90").is_err());
        assert!(p.check(ip("8.8.8.8")).is_ok());
        assert!(AddressPolicy::default().check(ip("127.0.0.1")).is_err());
        for bad in ["127.0.0.1/33", "::/129", "x/8", "10.0.0.0/-1", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad} parsed");
        }
        assert_eq!(
            Cidr::parse("0.0.0.0/0").map(|c| c.contains(ip("9.9.9.9"))),
            Ok(true)
        );
    }

    #[test]
    fn signatures_verify_and_any_change_breaks_them() {
        let s = Secret::generate();
        let other = Secret::generate();
        let body = br#"{"type":"challenge.verdict"}"#;
        let header = signature_header(&[other.clone(), s.clone()], "vd_1", 1_700_000_000, body);
        let ok = |id: &str, ts: &str, sig: &str, b: &[u8], now: i64| {
            verify(&s, id, ts, sig, b, now, DEFAULT_TOLERANCE_SECS)
        };
        assert_eq!(
            ok("vd_1", "1700000000", &header, body, 1_700_000_010),
            Ok(())
        );
        assert!(ok("vd_2", "1700000000", &header, body, 1_700_000_010).is_err());
        assert!(ok("vd_1", "1700000001", &header, body, 1_700_000_010).is_err());
        assert!(ok("vd_1", "1700000000", &header, b"{}", 1_700_000_010).is_err());
        assert!(ok("vd_1", "1700000000", &header, body, 1_700_000_400).is_err());
        assert!(ok("vd_1", "1700000000", "v1,AAAA", body, 1_700_000_000).is_err());
        assert!(ok("", "1700000000", &header, body, 1_700_000_000).is_err());
        // Extreme timestamps are refused, not overflowed.
        let min = i64::MIN.to_string();
        assert!(ok("vd_1", &min, &header, body, i64::MAX).is_err());
        assert!(ok("vd_1", &i64::MAX.to_string(), &header, body, i64::MIN).is_err());
        // A secret round-trips through its shown form; junk is refused.
        assert_eq!(Secret::parse(&s.encode()), Ok(s.clone()));
        assert!(Secret::parse("whsec_!!").is_err());
        assert!(Secret::parse(&s.encode()[6..]).is_err());
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_tenant() {
        let key = SealKey::parse(&B64.encode([7u8; 32])).unwrap_or_else(|e| panic!("{e}"));
        let other = SealKey::parse(&B64.encode([8u8; 32])).unwrap_or_else(|e| panic!("{e}"));
        let s = Secret::generate();
        let sealed = key.seal(&s, "bank-a");
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(
            !sealed.contains(&s.encode()[6..]),
            "the secret shows through"
        );
        assert_ne!(key.seal(&s, "bank-a"), sealed, "a fresh nonce each time");
        assert_eq!(key.open(&sealed, "bank-a"), Ok(s.clone()));
        assert!(
            key.open(&sealed, "bank-b").is_err(),
            "moved to another tenant"
        );
        assert!(other.open(&sealed, "bank-a").is_err(), "another key");
        let mut tampered = sealed.clone().into_bytes();
        let i = tampered.len() - 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(key
            .open(std::str::from_utf8(&tampered).unwrap_or_default(), "bank-a")
            .is_err());
        assert!(key.open("sealed:v1:AAAA", "bank-a").is_err());
        assert!(SealKey::parse("c2hvcnQ=").is_err());
        assert_eq!(format!("{key:?}"), "SealKey(..)");
        // An endpoint mixing a clear and a sealed secret signs with both
        // when the key is there, with the clear one alone when it is not.
        let e = WebhookEndpoint {
            tenant_id: crate::TenantId::parse("bank-a").unwrap_or_else(|e| panic!("{e}")),
            url: "https://idp.example.com/h".into(),
            secrets: vec![
                StoredSecret {
                    secret: sealed,
                    created_at: 0,
                    retire_at: None,
                },
                StoredSecret {
                    secret: Secret::generate().encode(),
                    created_at: 0,
                    retire_at: Some(10),
                },
            ],
            created_at: 0,
            updated_at: 0,
        };
        assert_eq!(e.signing_secrets(5, Some(&key)).len(), 2);
        assert_eq!(e.signing_secrets(5, None).len(), 1);
        assert_eq!(e.signing_secrets(5, Some(&key))[0], s);
        assert_eq!(
            e.signing_secrets(10, Some(&key)).len(),
            1,
            "the old one retired"
        );
    }

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks reference libraries' tests.
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_or_else(|e| panic!("{e}"));
        let sig = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
