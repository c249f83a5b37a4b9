//! Configuration of the ScyllaDB backend: contact points and keyspace from
//! the storage URI (`scylla://host1:9042,host2/keyspace`), everything else
//! from the `[scylla]` section of Sesame's configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Port of the CQL native protocol when a contact point names none.
pub const DEFAULT_PORT: u16 = 9042;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Which dialect the cluster speaks. ScyllaDB understands `USING TIMEOUT`
/// (the caller's deadline bounds the work on the server) and tablets;
/// Apache Cassandra does not, and then the deadline only bounds the wait
/// in the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlavorSetting {
    /// Decide from the nodes after connecting (ScyllaDB nodes announce
    /// their shards; Cassandra nodes do not).
    #[default]
    Auto,
    Scylla,
    Cassandra,
}

/// TLS to the nodes (rustls). The driver checks each node's certificate
/// against the address it connects to, so node certificates need an IP
/// subject alternative name for each node address.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    pub enabled: bool,
    /// PEM file of the CA(s) that signed the nodes' certificates; empty:
    /// the Mozilla roots (webpki-roots).
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) when the cluster requires mutual TLS.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The `[scylla]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaSection {
    /// Datacenter this process prefers (token-aware routing stays inside it;
    /// `LOCAL_*` consistency levels count its replicas). Empty: no preference.
    pub local_datacenter: String,
    /// Replication factor per datacenter for `sesame migrate` when it
    /// creates the keyspace (`NetworkTopologyStrategy`).
    pub replication: BTreeMap<String, u32>,
    /// ScyllaDB tablets for the keyspace. LWT (which Sesame's one-time
    /// answers need) is supported on tablet keyspaces only by recent
    /// ScyllaDB releases, so the default is vnodes (`false`).
    pub tablets: bool,
    pub username: String,
    /// The password, or (preferred) `password_file` with it.
    pub password: String,
    pub password_file: PathBuf,
    pub tls: TlsSection,
    /// `auto`, `scylla` or `cassandra`.
    pub flavor: FlavorSetting,
    /// Longest time one statement may take when the caller set no deadline.
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Idempotent reads are sent to a second replica when the first has not
    /// answered after this long (0: no speculative execution).
    pub speculative_delay_ms: u64,
    /// Rows per page when listing (devices, usage reports, pending challenges).
    pub page_size: u32,
}

impl Default for ScyllaSection {
    fn default() -> Self {
        ScyllaSection {
            local_datacenter: String::new(),
            replication: BTreeMap::from([("datacenter1".to_owned(), 3)]),
            tablets: false,
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            tls: TlsSection::default(),
            flavor: FlavorSetting::Auto,
            request_timeout_ms: 2_000,
            connect_timeout_ms: 5_000,
            speculative_delay_ms: 50,
            page_size: 1_000,
        }
    }
}

/// Everything the backend needs: the URI's nodes and keyspace, the section,
/// and how long records are kept (they carry TTLs computed from these).
#[derive(Debug, Clone, PartialEq)]
pub struct ScyllaConfig {
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub section: ScyllaSection,
    /// How long a challenge and its verdict are kept after it expires.
    pub challenge_retention: Duration,
    /// How long a push-bombing guard record is kept after its last relevant time.
    pub guard_retention: Duration,
}

impl ScyllaConfig {
    /// Parses `scylla://host[:port][,host[:port]...]/keyspace`.
    pub fn from_uri(uri: &str, section: ScyllaSection) -> Result<ScyllaConfig, ConfigError> {
        let rest = uri
            .strip_prefix("scylla://")
            .ok_or_else(|| err(format!("{uri:?}: a ScyllaDB URI starts with scylla://")))?;
        let (hosts, keyspace) = rest.split_once('/').ok_or_else(|| {
            err(format!(
                "{uri:?}: name the keyspace, e.g. scylla://host1,host2/sesame"
            ))
        })?;
        validate_keyspace(keyspace).map_err(|e| err(format!("{uri:?}: {e}")))?;
        let mut nodes = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            nodes.push(with_port(host).map_err(|e| err(format!("{uri:?}: {e}")))?);
        }
        if nodes.is_empty() {
            return Err(err(format!("{uri:?}: give at least one contact point")));
        }
        let config = ScyllaConfig {
            nodes,
            keyspace: keyspace.to_owned(),
            section,
            challenge_retention: Duration::from_secs(24 * 3600),
            guard_retention: Duration::from_secs(3600),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.section;
        if s.replication.is_empty() {
            return Err(err(
                "scylla.replication: give at least one datacenter, e.g. { datacenter1 = 3 }",
            ));
        }
        for (dc, rf) in &s.replication {
            if dc.is_empty()
                || !dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                return Err(err(format!(
                    "scylla.replication: {dc:?} is not a datacenter name (letters, digits, _ - .)"
                )));
            }
            if !(1..=10).contains(rf) {
                return Err(err(format!(
                    "scylla.replication.{dc} = {rf}: a replication factor of 1-10"
                )));
            }
        }
        if !(10..=60_000).contains(&s.request_timeout_ms) {
            return Err(err("scylla.request_timeout_ms: 10-60000"));
        }
        if !(100..=120_000).contains(&s.connect_timeout_ms) {
            return Err(err("scylla.connect_timeout_ms: 100-120000"));
        }
        if s.speculative_delay_ms >= s.request_timeout_ms {
            return Err(err(
                "scylla.speculative_delay_ms must be below scylla.request_timeout_ms (0: off)",
            ));
        }
        if !(1..=100_000).contains(&s.page_size) {
            return Err(err("scylla.page_size: 1-100000"));
        }
        if !s.password.is_empty() && !s.password_file.as_os_str().is_empty() {
            return Err(err("scylla: give password or password_file, not both"));
        }
        let has_password = !s.password.is_empty() || !s.password_file.as_os_str().is_empty();
        if has_password && s.username.is_empty() {
            return Err(err("scylla: a password needs scylla.username"));
        }
        let (cert, key) = (
            s.tls.cert_file.as_os_str().is_empty(),
            s.tls.key_file.as_os_str().is_empty(),
        );
        if cert != key {
            return Err(err(
                "scylla.tls: a client certificate needs both cert_file and key_file",
            ));
        }
        Ok(())
    }

    /// The password from `password` or `password_file` (trailing newline cut).
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        let s = &self.section;
        if !s.password_file.as_os_str().is_empty() {
            let text = std::fs::read_to_string(&s.password_file).map_err(|e| {
                err(format!(
                    "scylla.password_file {}: {e}",
                    s.password_file.display()
                ))
            })?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        Ok((!s.password.is_empty()).then(|| s.password.clone()))
    }
}

/// Keyspace names are unquoted CQL identifiers: they are spliced into the
/// schema and statements, so nothing else may pass.
pub fn validate_keyspace(name: &str) -> Result<(), String> {
    let ok = (1..=48).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "keyspace {name:?}: 1-48 letters, digits or _, starting with a letter"
        ))
    }
}

fn with_port(host: &str) -> Result<String, String> {
    // `[v6]:port`, `[v6]`, `host:port`, `host`.
    if let Some(rest) = host.strip_prefix('[') {
        let (addr, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("{host:?}: unclosed [ in an IPv6 address"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => parse_port(host, p)?,
            None if tail.is_empty() => DEFAULT_PORT,
            None => return Err(format!("{host:?}: expected :port after ]")),
        };
        return Ok(format!("[{addr}]:{port}"));
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok(format!("{h}:{}", parse_port(host, p)?)),
        Some(_) => Err(format!("{host:?}: write IPv6 addresses as [addr]:port")),
        None => Ok(format!("{host}:{DEFAULT_PORT}")),
    }
}

fn parse_port(host: &str, p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{host:?}: {p:?} is not a port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_contact_points_and_keyspace() {
        let c = ScyllaConfig::from_uri(
            "scylla://10.0.0.1,10.0.0.2:19042,[::1]:9043,[fe80::1],db.example/sesame_prod",
            ScyllaSection::default(),
        )
        .unwrap();
        assert_eq!(
            c.nodes,
            vec![
                "10.0.0.1:9042",
                "10.0.0.2:19042",
                "[::1]:9043",
                "[fe80::1]:9042",
                "db.example:9042"
            ]
        );
        assert_eq!(c.keyspace, "sesame_prod");
    }

    #[test]
    fn refuses_bad_uris_with_a_reason() {
        for (uri, says) in [
            ("cassandra://h/ks", "starts with scylla://"),
            ("scylla://h", "name the keyspace"),
            ("scylla:///ks", "at least one contact point"),
            ("scylla://h/ks;drop", "keyspace"),
            ("scylla://h/1ks", "keyspace"),
            ("scylla://h:0/ks", "not a port"),
            ("scylla://h:99999/ks", "not a port"),
            ("scylla://::1/ks", "IPv6"),
            ("scylla://[::1/ks", "unclosed"),
        ] {
            let e = ScyllaConfig::from_uri(uri, ScyllaSection::default()).unwrap_err();
            assert!(e.0.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn validates_the_section() {
        let bad = |f: &dyn Fn(&mut ScyllaSection)| {
            let mut s = ScyllaSection::default();
            f(&mut s);
            ScyllaConfig::from_uri("scylla://h/ks", s).unwrap_err().0
        };
        assert!(bad(&|s| s.replication.clear()).contains("at least one datacenter"));
        assert!(bad(&|s| {
            s.replication.insert("dc'1".into(), 3);
        })
        .contains("not a datacenter name"));
        assert!(bad(&|s| {
            s.replication.insert("dc2".into(), 0);
        })
        .contains("replication factor"));
        assert!(bad(&|s| s.password = "x".into()).contains("username"));
        assert!(bad(&|s| s.tls.cert_file = "c.pem".into()).contains("both cert_file and key_file"));
        assert!(bad(&|s| s.speculative_delay_ms = 5_000).contains("speculative_delay_ms"));
        assert!(bad(&|s| s.page_size = 0).contains("page_size"));
    }

    #[test]
    fn reads_the_password_file() {
        let dir = std::env::temp_dir().join(format!("sesame-scylla-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let section = ScyllaSection {
            username: "sesame".into(),
            password_file: file,
            ..Default::default()
        };
        let c = ScyllaConfig::from_uri("scylla://h/ks", section).unwrap();
        assert_eq!(c.password().unwrap().as_deref(), Some("s3cret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
