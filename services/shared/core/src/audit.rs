//! The audit trail's records and their hash chain.
//!
//! Every decision and administrative act becomes an [`AuditEntry`]. A
//! writer (one per process) appends entries to one chain per tenant; each
//! [`AuditRecord`] carries its chain, its position in it and the SHA-256 of
//! the previous record, so editing, dropping or reordering any record of a
//! chain changes a hash that [`verify_chain`] recomputes. Appending needs no
//! coordination between processes: no two writers share a chain.
//!
//! What the chain does not do on its own: someone who can rewrite the whole
//! store can also recompute every hash after an edit. Against that, a copy
//! of the records outside the store (the Kafka audit topic read by a SIEM)
//! is the witness: `sesame audit verify --file` checks such a copy, and its
//! last hashes must match the store's.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::time::UnixMillis;

/// What happened. The string forms (`as_str`) are the wire and log names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    EnrollmentStarted,
    DeviceEnrolled,
    DeviceRevoked,
    ChallengeCreated,
    ChallengeCancelled,
    /// Refused by a quota or the push-bombing guard (reason in `detail`).
    ChallengeRefused,
    /// The provider took the push (or refused it: `detail`).
    PushSent,
    PushFailed,
    /// A signed answer was accepted; `detail` is the verdict.
    AnswerAccepted,
    /// An answer was refused (bad signature, wrong number, late...): `detail`.
    AnswerRefused,
    FraudReported,
    PromptsLocked,
    NumberMatchForced,
    TenantCreated,
    TenantChanged,
    ApiKeyCreated,
    ApiKeyRotated,
    ApiKeyRevoked,
    /// A webhook endpoint was set, changed, deleted or its secret rotated
    /// (`detail` says which; never the secret).
    WebhookChanged,
    /// A verdict was delivered to the tenant's webhook (`detail`: attempts).
    WebhookDelivered,
    /// A verdict delivery was given up and dead-lettered (`detail`: why).
    WebhookFailed,
}

impl AuditAction {
    pub const ALL: [AuditAction; 21] = [
        AuditAction::EnrollmentStarted,
        AuditAction::DeviceEnrolled,
        AuditAction::DeviceRevoked,
        AuditAction::ChallengeCreated,
        AuditAction::ChallengeCancelled,
        AuditAction::ChallengeRefused,
        AuditAction::PushSent,
        AuditAction::PushFailed,
        AuditAction::AnswerAccepted,
        AuditAction::AnswerRefused,
        AuditAction::FraudReported,
        AuditAction::PromptsLocked,
        AuditAction::NumberMatchForced,
        AuditAction::TenantCreated,
        AuditAction::TenantChanged,
        AuditAction::ApiKeyCreated,
        AuditAction::ApiKeyRotated,
        AuditAction::ApiKeyRevoked,
        AuditAction::WebhookChanged,
        AuditAction::WebhookDelivered,
        AuditAction::WebhookFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::EnrollmentStarted => "enrollment_started",
            AuditAction::DeviceEnrolled => "device_enrolled",
            AuditAction::DeviceRevoked => "device_revoked",
            AuditAction::ChallengeCreated => "challenge_created",
            AuditAction::ChallengeCancelled => "challenge_cancelled",
            AuditAction::ChallengeRefused => "challenge_refused",
            AuditAction::PushSent => "push_sent",
            AuditAction::PushFailed => "push_failed",
            AuditAction::AnswerAccepted => "answer_accepted",
            AuditAction::AnswerRefused => "answer_refused",
            AuditAction::FraudReported => "fraud_reported",
            AuditAction::PromptsLocked => "prompts_locked",
            AuditAction::NumberMatchForced => "number_match_forced",
            AuditAction::TenantCreated => "tenant_created",
            AuditAction::TenantChanged => "tenant_changed",
            AuditAction::ApiKeyCreated => "api_key_created",
            AuditAction::ApiKeyRotated => "api_key_rotated",
            AuditAction::ApiKeyRevoked => "api_key_revoked",
            AuditAction::WebhookChanged => "webhook_changed",
            AuditAction::WebhookDelivered => "webhook_delivered",
            AuditAction::WebhookFailed => "webhook_failed",
        }
    }

    pub fn parse(s: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One act, as recorded. Ids are strings so that a record stays readable
/// (and verifiable) whatever the id types become; empty means "none".
/// Never key material, secrets or push tokens: `detail` is a reason or an
/// outcome, `actor` an API-key id or "admin", `source` a peer address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: UnixMillis,
    pub tenant_id: String,
    pub action: AuditAction,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub challenge_id: String,
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub detail: String,
}

impl AuditEntry {
    pub fn new(at: UnixMillis, tenant_id: impl Into<String>, action: AuditAction) -> AuditEntry {
        AuditEntry {
            at,
            tenant_id: tenant_id.into(),
            action,
            user_id: String::new(),
            device_id: String::new(),
            challenge_id: String::new(),
            actor: String::new(),
            source: String::new(),
            detail: String::new(),
        }
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user_id = user.into();
        self
    }

    pub fn device(mut self, device: impl ToString) -> Self {
        self.device_id = device.to_string();
        self
    }

    pub fn challenge(mut self, challenge: impl ToString) -> Self {
        self.challenge_id = challenge.to_string();
        self
    }

    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// A chained record: the entry, where it sits and the hashes that bind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// `<tenant>/<writer>`: one chain per tenant per writing process.
    pub chain: String,
    /// 0 for a chain's first record, then +1 each.
    pub seq: u64,
    #[serde(with = "hex32")]
    pub prev: [u8; 32],
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    pub entry: AuditEntry,
}

/// Where a chain stands, stored with each batch appended to it: a dropped
/// tail shows as records missing before the head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub chain: String,
    pub tenant_id: String,
    pub started_at: UnixMillis,
    /// Seq of the last record appended.
    pub seq: u64,
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// The `prev` of a chain's first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// The chain id of `tenant`'s records written by `writer`.
pub fn chain_id(tenant: &str, writer: &str) -> String {
    format!("{tenant}/{writer}")
}

/// SHA-256 over a domain tag and every field, each length-prefixed, so no
/// two different records hash alike by shifting bytes between fields.
pub fn record_hash(chain: &str, seq: u64, prev: &[u8; 32], e: &AuditEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sesame-audit-v1");
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(chain.as_bytes());
    field(&seq.to_be_bytes());
    field(prev);
    field(&e.at.to_be_bytes());
    field(e.tenant_id.as_bytes());
    field(e.action.as_str().as_bytes());
    field(e.user_id.as_bytes());
    field(e.device_id.as_bytes());
    field(e.challenge_id.as_bytes());
    field(e.actor.as_bytes());
    field(e.source.as_bytes());
    field(e.detail.as_bytes());
    h.finalize().into()
}

/// Chains entries for one chain: the writer keeps one per tenant.
#[derive(Debug, Clone)]
pub struct Chainer {
    pub chain: String,
    pub tenant_id: String,
    pub started_at: UnixMillis,
    next: u64,
    prev: [u8; 32],
}

impl Chainer {
    pub fn new(chain: String, tenant_id: String, started_at: UnixMillis) -> Chainer {
        Chainer {
            chain,
            tenant_id,
            started_at,
            next: 0,
            prev: GENESIS,
        }
    }

    pub fn append(&mut self, entry: AuditEntry) -> AuditRecord {
        let seq = self.next;
        let hash = record_hash(&self.chain, seq, &self.prev, &entry);
        let record = AuditRecord {
            chain: self.chain.clone(),
            seq,
            prev: self.prev,
            hash,
            entry,
        };
        self.next += 1;
        self.prev = hash;
        record
    }

    /// The head after the last `append`, `None` before the first.
    pub fn head(&self) -> Option<ChainHead> {
        self.next.checked_sub(1).map(|seq| ChainHead {
            chain: self.chain.clone(),
            tenant_id: self.tenant_id.clone(),
            started_at: self.started_at,
            seq,
            hash: self.prev,
        })
    }
}

/// What is wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainProblem {
    /// The record's hash is not the hash of its contents: edited.
    Edited { seq: u64 },
    /// Records missing (dropped), from `from` to `to` inclusive.
    Missing { from: u64, to: u64 },
    /// A record does not follow the one before it: its `prev` is another
    /// record's hash (reordered or spliced) or it repeats a position.
    Broken { seq: u64 },
    /// The record belongs to another chain or tenant than the one it is in.
    Misplaced { seq: u64 },
    /// The chain ends before the head stored with it: its tail was dropped.
    Truncated { last: Option<u64>, head: u64 },
    /// The chain's last record is not the one the head names.
    HeadMismatch { seq: u64 },
}

impl std::fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainProblem::Edited { seq } => write!(
                f,
                "record {seq} was edited (its hash does not match its contents)"
            ),
            ChainProblem::Missing { from, to } if from == to => {
                write!(f, "record {from} is missing")
            }
            ChainProblem::Missing { from, to } => write!(f, "records {from}..={to} are missing"),
            ChainProblem::Broken { seq } => write!(
                f,
                "record {seq} does not follow the record before it (reordered or replaced)"
            ),
            ChainProblem::Misplaced { seq } => {
                write!(f, "record {seq} belongs to another chain or tenant")
            }
            ChainProblem::Truncated {
                last: Some(l),
                head,
            } => write!(
                f,
                "chain ends at record {l} but its head says {head}: the tail was dropped"
            ),
            ChainProblem::Truncated { last: None, head } => write!(
                f,
                "chain is empty but its head says {head}: every record was dropped"
            ),
            ChainProblem::HeadMismatch { seq } => {
                write!(f, "record {seq} is not the record the chain's head names")
            }
        }
    }
}

/// Checks one chain's records in the order they were read (by position, as
/// every store returns them), against its stored head when there is one.
/// Finds every problem, not only the first.
pub fn verify_chain(
    chain: &str,
    records: &[AuditRecord],
    head: Option<&ChainHead>,
) -> Vec<ChainProblem> {
    let mut problems = Vec::new();
    let tenant = chain.split('/').next().unwrap_or_default();
    let mut expected_seq = 0u64;
    let mut prev = GENESIS;
    for r in records {
        if r.chain != chain || r.entry.tenant_id != tenant {
            problems.push(ChainProblem::Misplaced { seq: r.seq });
        }
        if record_hash(&r.chain, r.seq, &r.prev, &r.entry) != r.hash {
            problems.push(ChainProblem::Edited { seq: r.seq });
        }
        if r.seq > expected_seq {
            problems.push(ChainProblem::Missing {
                from: expected_seq,
                to: r.seq - 1,
            });
        } else if r.seq < expected_seq || r.prev != prev {
            problems.push(ChainProblem::Broken { seq: r.seq });
        }
        // A gap was reported already: judge the next link from here on.
        expected_seq = r.seq.saturating_add(1).max(expected_seq);
        prev = r.hash;
    }
    if let Some(h) = head {
        let last = records.last().map(|r| r.seq);
        match last {
            Some(l) if l == h.seq => {
                if records.last().map(|r| r.hash) != Some(h.hash) {
                    problems.push(ChainProblem::HeadMismatch { seq: l });
                }
            }
            // A crash between a batch's records and its head leaves the
            // head behind: records past it are no tampering.
            Some(l) if l > h.seq => {}
            _ => problems.push(ChainProblem::Truncated { last, head: h.seq }),
        }
    }
    problems
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(n: u64) -> (Chainer, Vec<AuditRecord>) {
        let mut c = Chainer::new(chain_id("bank", "w1"), "bank".into(), 1);
        let records = (0..n)
            .map(|i| {
                c.append(
                    AuditEntry::new(1000 + i as i64, "bank", AuditAction::ChallengeCreated)
                        .user(format!("user{i}"))
                        .challenge(format!("c{i}")),
                )
            })
            .collect();
        (c, records)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (c, records) = chain_of(5);
        let head = c.head().unwrap();
        assert_eq!(head.seq, 4);
        assert!(verify_chain(&c.chain, &records, Some(&head)).is_empty());
        assert!(verify_chain(&c.chain, &[], None).is_empty());
    }

    #[test]
    fn an_edited_record_is_caught() {
        let (c, mut records) = chain_of(5);
        records[2].entry.detail = "approved".into();
        assert_eq!(
            verify_chain(&c.chain, &records, c.head().as_ref()),
            vec![ChainProblem::Edited { seq: 2 }]
        );
        // Recomputing the edited record's hash breaks the next link instead.
        let r = &mut records[2];
        r.hash = record_hash(&r.chain, r.seq, &r.prev, &r.entry);
        assert_eq!(
            verify_chain(&c.chain, &records, c.head().as_ref()),
            vec![ChainProblem::Broken { seq: 3 }]
        );
    }

    #[test]
    fn a_dropped_record_is_caught() {
        let (c, mut records) = chain_of(5);
        records.remove(1);
        assert_eq!(
            verify_chain(&c.chain, &records, c.head().as_ref()),
            vec![ChainProblem::Missing { from: 1, to: 1 }]
        );
    }

    #[test]
    fn a_dropped_tail_is_caught_by_the_head() {
        let (c, mut records) = chain_of(5);
        records.truncate(3);
        assert_eq!(
            verify_chain(&c.chain, &records, c.head().as_ref()),
            vec![ChainProblem::Truncated {
                last: Some(2),
                head: 4
            }]
        );
        assert_eq!(
            verify_chain(&c.chain, &[], c.head().as_ref()),
            vec![ChainProblem::Truncated {
                last: None,
                head: 4
            }]
        );
    }

    #[test]
    fn reordered_records_are_caught() {
        let (c, mut records) = chain_of(5);
        // Swap the contents of two records, keeping the positions: what a
        // store keyed by position shows after a reorder.
        let (a, b) = (records[1].clone(), records[3].clone());
        records[1] = AuditRecord { seq: 1, ..b };
        records[3] = AuditRecord { seq: 3, ..a };
        let problems = verify_chain(&c.chain, &records, c.head().as_ref());
        assert!(
            problems.contains(&ChainProblem::Edited { seq: 1 }),
            "{problems:?}"
        );
        assert!(
            problems.contains(&ChainProblem::Edited { seq: 3 }),
            "{problems:?}"
        );
        // Records moved with their positions: each link breaks.
        let (_, mut records) = chain_of(5);
        records.swap(1, 3);
        let problems = verify_chain(&c.chain, &records, None);
        assert!(
            problems.contains(&ChainProblem::Missing { from: 1, to: 2 }),
            "{problems:?}"
        );
        assert!(
            problems.contains(&ChainProblem::Broken { seq: 1 }),
            "{problems:?}"
        );
    }

    #[test]
    fn a_record_moved_to_another_tenant_is_caught() {
        let (c, mut records) = chain_of(3);
        records[1].entry.tenant_id = "other".into();
        let r = &mut records[1];
        r.hash = record_hash(&r.chain, r.seq, &r.prev, &r.entry);
        let problems = verify_chain(&c.chain, &records, None);
        assert!(
            problems.contains(&ChainProblem::Misplaced { seq: 1 }),
            "{problems:?}"
        );
    }

    #[test]
    fn records_survive_json_and_fields_do_not_shift() {
        let (_, records) = chain_of(2);
        let json = serde_json::to_string(&records[1]).unwrap();
        assert!(json.contains(&hex::encode(records[1].hash)), "{json}");
        assert!(json.contains("\"challenge_created\""), "{json}");
        let back: AuditRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, records[1]);
        // Moving bytes from one field to the next changes the hash.
        let a = AuditEntry::new(1, "t", AuditAction::PushSent)
            .user("ab")
            .device("c");
        let b = AuditEntry::new(1, "t", AuditAction::PushSent)
            .user("a")
            .device("bc");
        assert_ne!(
            record_hash("t/w", 0, &GENESIS, &a),
            record_hash("t/w", 0, &GENESIS, &b)
        );
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
    }
}
