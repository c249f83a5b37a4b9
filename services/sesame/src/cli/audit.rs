//! `sesame audit verify|export`: the operator checks the audit trail.
//!
//! Verification reads every chain through the admin API and recomputes
//! every hash here, so a server (or store) that changed a record cannot
//! vouch for it. `--file` checks a copy instead: JSON lines, one record
//! each, as on the Kafka audit topic or written by `sesame audit export`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use sesame_core::audit::{verify_chain, AuditRecord, ChainHead, ChainProblem};
use sesame_proto::admin::v1 as pb;
use sesame_proto::admin::v1::audit_admin_service_client::AuditAdminServiceClient;
use tonic::transport::Channel;

use super::authed;

const PAGE: u32 = 1000;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub chains: usize,
    pub records: u64,
    pub problems: Vec<(String, ChainProblem)>,
}

impl Report {
    fn check(&mut self, chain: &str, records: &[AuditRecord], head: Option<&ChainHead>) {
        self.chains += 1;
        self.records += records.len() as u64;
        for p in verify_chain(chain, records, head) {
            self.problems.push((chain.to_owned(), p));
        }
    }

    /// Prints the problems (stdout) and a summary (stderr); `true` when clean.
    pub fn print(&self) -> bool {
        for (chain, p) in &self.problems {
            println!("{chain}: {p}");
        }
        if self.problems.is_empty() {
            eprintln!(
                "audit trail intact: {} chains, {} records, every hash and link verified",
                self.chains, self.records
            );
            true
        } else {
            eprintln!(
                "AUDIT TRAIL TAMPERED WITH OR DAMAGED: {} problems in {} chains ({} records read)",
                self.problems.len(),
                self.chains,
                self.records
            );
            false
        }
    }
}

pub struct AuditAdmin {
    client: AuditAdminServiceClient<Channel>,
    key: String,
}

impl AuditAdmin {
    pub async fn connect(server: &str, key: String) -> anyhow::Result<Self> {
        let channel = sesame_device_sim::connect(server)
            .await
            .with_context(|| format!("connecting to {server}"))?;
        Ok(AuditAdmin {
            client: AuditAdminServiceClient::new(channel),
            key,
        })
    }

    async fn heads(&mut self) -> anyhow::Result<Vec<ChainHead>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .client
                .list_audit_chains(authed(
                    &self.key,
                    pb::ListAuditChainsRequest {
                        page_size: PAGE,
                        page_token: token.clone(),
                    },
                )?)
                .await
                .context("listing audit chains")?
                .into_inner();
            for h in page.chains {
                let hash: [u8; 32] = h
                    .hash
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("chain {}: head hash is not 32 bytes", h.chain))?;
                out.push(ChainHead {
                    chain: h.chain,
                    tenant_id: h.tenant_id,
                    started_at: h.started_at_unix_ms,
                    seq: h.seq,
                    hash,
                });
            }
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// Every record of a chain, read up to its head (and past it, if a
    /// crash left records beyond the stored head).
    async fn chain(&mut self, chain: &str) -> anyhow::Result<Vec<AuditRecord>> {
        let mut out: Vec<AuditRecord> = Vec::new();
        let mut from = 0u64;
        loop {
            let page = self
                .client
                .read_audit_chain(authed(
                    &self.key,
                    pb::ReadAuditChainRequest {
                        chain: chain.to_owned(),
                        from_seq: from,
                        page_size: PAGE,
                    },
                )?)
                .await
                .with_context(|| format!("reading audit chain {chain}"))?
                .into_inner();
            let n = page.records.len();
            for r in page.records {
                let r = sesame_grpc::convert::audit_record_in(r)
                    .map_err(|e| anyhow::anyhow!("chain {chain}: {e}"))?;
                from = r.seq.saturating_add(1);
                out.push(r);
            }
            if n < PAGE as usize {
                return Ok(out);
            }
        }
    }

    pub async fn verify(&mut self) -> anyhow::Result<Report> {
        let mut report = Report::default();
        for head in self.heads().await? {
            let records = self.chain(&head.chain).await?;
            report.check(&head.chain, &records, Some(&head));
        }
        Ok(report)
    }

    /// Every record as JSON lines on stdout, chain by chain.
    pub async fn export(&mut self) -> anyhow::Result<u64> {
        let mut n = 0;
        for head in self.heads().await? {
            for r in self.chain(&head.chain).await? {
                println!("{}", serde_json::to_string(&r)?);
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Verifies a copy of the trail (JSON lines). A copy has no stored heads,
/// so a dropped tail cannot be told from the end; and the Kafka topic may
/// hold a record twice (at-least-once): identical repeats count once.
pub fn verify_file(path: &Path) -> anyhow::Result<Report> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut chains: BTreeMap<String, BTreeMap<u64, Vec<AuditRecord>>> = BTreeMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let r: AuditRecord = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not an audit record", path.display(), i + 1))?;
        let at = chains
            .entry(r.chain.clone())
            .or_default()
            .entry(r.seq)
            .or_default();
        if !at.contains(&r) {
            at.push(r);
        }
    }
    let mut report = Report::default();
    for (chain, by_seq) in chains {
        // Two different records at one position: both go in, and the
        // second breaks the chain where it stands.
        let records: Vec<AuditRecord> = by_seq.into_values().flatten().collect();
        report.check(&chain, &records, None);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sesame_core::audit::{chain_id, AuditAction, AuditEntry, Chainer};

    #[test]
    fn a_copy_with_repeats_verifies_and_an_edit_in_it_does_not() {
        let mut c = Chainer::new(chain_id("bank", "w"), "bank".into(), 0);
        let records: Vec<_> = (0..4)
            .map(|i| c.append(AuditEntry::new(i, "bank", AuditAction::PushSent)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.jsonl");
        let mut lines: Vec<String> = records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        lines.push(lines[1].clone());
        std::fs::write(&path, lines.join("\n")).unwrap();
        let report = verify_file(&path).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, 4);

        lines[2] = lines[2].replace("\"at\":2", "\"at\":3");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let report = verify_file(&path).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert_eq!(report.problems[0].1, ChainProblem::Edited { seq: 2 });
    }
}
