//! The audit trail's writer.
//!
//! Every role records what it decides through an [`AuditLog`] handle:
//! `record` never waits (it puts the entry in a bounded buffer), so the
//! audit trail adds no latency to a login. One writer task per process
//! takes what is buffered, chains it per tenant (one chain per tenant per
//! process start: `<tenant>/<writer>`, see [`sesame_core::audit`]), stores
//! each batch with the chains' new heads through [`Storage::append_audit`],
//! retrying until it is stored, then copies it to the queue's audit topic
//! for a SIEM ([`Queue::publish_audit`]). A dispatcher running alone has
//! no store: its records (push outcomes) go to the audit topic only.
//!
//! What can be lost, and how it shows: entries still in the buffer when the
//! process dies (at most one batch interval's worth) are gone without a
//! trace in the chain, which stays valid; entries refused because the
//! buffer is full (the store has been failing for a while) are counted in
//! `sesame_audit_lost_total` and logged. Neither can be passed off as
//! tampering, and nothing stored can be edited, dropped or reordered
//! without `sesame audit verify` seeing it.

pub mod metrics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sesame_core::audit::{chain_id, AuditEntry, AuditRecord, Chainer};
use sesame_core::time::now_ms;
use sesame_queue::Queue;
use sesame_storage::Storage;
use tokio::sync::{mpsc, watch};

/// Entries that may wait for the writer; beyond, `record` drops and counts.
pub const BUFFER: usize = 65_536;
/// Most entries stored in one batch.
const MAX_BATCH: usize = 2_048;
/// How long a batch may gather before it is stored.
const LINGER: Duration = Duration::from_millis(20);
/// Tries to copy a batch to the queue before giving it up (the store has it).
const QUEUE_TRIES: u32 = 3;

/// A handle to this process's audit writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<AuditEntry>>,
    lost: Arc<AtomicU64>,
}

impl AuditLog {
    /// A log that records nothing (unit tests of the roles).
    pub fn disabled() -> AuditLog {
        AuditLog {
            tx: None,
            lost: Arc::default(),
        }
    }

    /// Starts this process's writer; `writer` names its chains (unique per
    /// process start). With `store` false (a process without a store of its
    /// own: a dispatcher alone) records only go to the queue's audit topic.
    /// Stop it with [`AuditWriter::shutdown`].
    pub fn start(
        storage: Arc<dyn Storage>,
        queue: Arc<dyn Queue>,
        writer: String,
        store: bool,
    ) -> (AuditLog, AuditWriter) {
        metrics::describe();
        let (tx, rx) = mpsc::channel(BUFFER);
        let (stop, stopping) = watch::channel(false);
        let lost = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(
            Writer {
                storage,
                queue,
                writer,
                store,
                chains: HashMap::new(),
                lost: lost.clone(),
            }
            .run(rx, stopping),
        );
        (AuditLog { tx: Some(tx), lost }, AuditWriter { stop, task })
    }

    /// Records an entry; never waits. Dropped (and counted) only when the
    /// writer is that far behind.
    pub fn record(&self, entry: AuditEntry) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(entry) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::lost(1);
                // Logged once per thousand, not per entry: the store is
                // down and the log must not drown too.
                if self
                    .lost
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(1000)
                {
                    tracing::error!(
                        lost = self.lost.load(Ordering::Relaxed),
                        "audit buffer full: audit entries are being dropped (is the store failing?)"
                    );
                }
            }
            // The writer has stopped (shutdown): a call finishing this late
            // is not on the trail.
            Err(mpsc::error::TrySendError::Closed(e)) => {
                metrics::lost(1);
                self.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(action = e.action.as_str(), tenant = %e.tenant_id, "audit entry after the writer stopped: lost");
            }
        }
    }
}

/// The running writer.
pub struct AuditWriter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AuditWriter {
    /// Stores what is buffered, then stops; waits at most `limit`.
    pub async fn shutdown(self, limit: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            tracing::warn!("audit writer still storing after {limit:?}; stopping it");
            task.abort();
        }
    }
}

struct Writer {
    storage: Arc<dyn Storage>,
    queue: Arc<dyn Queue>,
    writer: String,
    store: bool,
    chains: HashMap<String, Chainer>,
    lost: Arc<AtomicU64>,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<AuditEntry>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let stop = *stopping.borrow();
            if stop {
                // Whatever is buffered now, then done.
                rx.close();
            }
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => n,
                _ = stopping.changed(), if !stop => continue,
            };
            if n == 0 {
                return;
            }
            // Let a batch gather for a moment: one store write per LINGER
            // instead of one per login costs the store (and the CPU) far
            // less, and nobody waits on an audit write.
            if !stop && batch.len() < MAX_BATCH {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = stopping.changed() => {}
                }
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
            }
            self.store(std::mem::take(&mut batch), &stopping).await;
        }
    }

    async fn store(&mut self, entries: Vec<AuditEntry>, stopping: &watch::Receiver<bool>) {
        let at = now_ms();
        let mut records: Vec<AuditRecord> = Vec::with_capacity(entries.len());
        let mut touched = Vec::new();
        for entry in entries {
            let chain = self
                .chains
                .entry(entry.tenant_id.clone())
                .or_insert_with(|| {
                    Chainer::new(
                        chain_id(&entry.tenant_id, &self.writer),
                        entry.tenant_id.clone(),
                        at,
                    )
                });
            if !touched.contains(&entry.tenant_id) {
                touched.push(entry.tenant_id.clone());
            }
            records.push(chain.append(entry));
        }
        let heads: Vec<_> = touched
            .iter()
            .filter_map(|t| self.chains.get(t).and_then(Chainer::head))
            .collect();
        if self.store && !self.persist(&records, &heads, stopping).await {
            return;
        }
        let mut by_action: HashMap<&'static str, u64> = HashMap::new();
        for r in &records {
            *by_action.entry(r.entry.action.as_str()).or_default() += 1;
        }
        for (action, n) in by_action {
            metrics::stored(action, n);
        }
        // The SIEM copy: the store has the records, so a queue outage costs
        // the copy of this batch, counted, never the record.
        for attempt in 1..=QUEUE_TRIES {
            match self.queue.publish_audit(&records).await {
                Ok(()) => break,
                Err(e) => {
                    metrics::write_error("queue");
                    if attempt == QUEUE_TRIES {
                        tracing::warn!(error = %e, records = records.len(), "audit batch not copied to the queue");
                    } else {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    }
                }
            }
        }
    }
}

impl Writer {
    /// The records are chained already: they must be stored, or the chain
    /// has a hole the writer made. Retries until stored; during shutdown
    /// it gives up after a few tries (the caller bounds the wait too).
    async fn persist(
        &self,
        records: &[AuditRecord],
        heads: &[sesame_core::audit::ChainHead],
        stopping: &watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.storage.append_audit(records, heads).await {
                Ok(()) => return true,
                Err(e) => {
                    metrics::write_error("storage");
                    tracing::warn!(error = %e, records = records.len(), "audit batch not stored; retrying");
                    if *stopping.borrow() && backoff >= Duration::from_secs(1) {
                        tracing::error!(
                            records = records.len(),
                            "audit batch not stored before shutdown: lost"
                        );
                        self.lost.fetch_add(records.len() as u64, Ordering::Relaxed);
                        metrics::lost(records.len() as u64);
                        return false;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sesame_core::audit::{verify_chain, AuditAction};
    use sesame_core::TenantId;
    use sesame_storage::{AuditQuery, MemStorage};

    fn entry(tenant: &str, i: i64) -> AuditEntry {
        AuditEntry::new(i, tenant, AuditAction::ChallengeCreated).user(format!("u{i}"))
    }

    #[tokio::test]
    async fn entries_are_chained_per_tenant_stored_and_verifiable() {
        let storage = Arc::new(MemStorage::new());
        let queue = Arc::new(sesame_queue::MemQueue::new(
            sesame_queue::MemQueueConfig::default(),
        ));
        let (log, writer) = AuditLog::start(storage.clone(), queue, "w1".into(), true);
        for i in 0..500 {
            log.record(entry(if i % 3 == 0 { "bank-a" } else { "bank-b" }, i));
        }
        writer.shutdown(Duration::from_secs(5)).await;
        let heads = storage.list_audit_chains(None, 10).await.unwrap();
        assert_eq!(heads.len(), 2);
        let mut total = 0;
        for h in &heads {
            let records = storage.read_audit_chain(&h.chain, 0, 1000).await.unwrap();
            assert!(verify_chain(&h.chain, &records, Some(h)).is_empty());
            assert!(records.iter().all(|r| r.entry.tenant_id == h.tenant_id));
            total += records.len();
        }
        assert_eq!(total, 500, "shutdown stores everything recorded before it");
        let a = TenantId::parse("bank-a").unwrap();
        let all = AuditQuery {
            to: i64::MAX,
            ..AuditQuery::default()
        };
        assert_eq!(
            storage.query_audit(&a, &all, 1000).await.unwrap().len(),
            167
        );
    }
}
