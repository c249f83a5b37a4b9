//! The Kafka backend of [`Queue`], with `rdkafka` (librdkafka).
//!
//! Topics (names in [`KafkaConfig`], created when missing):
//!
//! | topic | key | consumed by |
//! |---|---|---|
//! | push jobs (`sesame.push`) | device id (per-device order) | the dispatchers' consumer group |
//! | retries (`sesame.push.retry`) | device id | the same group; a job waits for its `not_before` |
//! | dead letters (`sesame.push.dead`) | device id | operators (reason in the `sesame-dead-reason` header) |
//! | events (`sesame.events`) | challenge id (device id for dead tokens) | every `challenge` replica, each from "now" |
//! | audit copies (`sesame.audit`) | audit chain | a SIEM |
//! | webhook jobs (`sesame.webhooks`) | tenant id | the `challenge` replicas' webhook group |
//! | webhook retries (`sesame.webhooks.retry`) | tenant id | the same group; a job waits for its `not_before` |
//!
//! An undecodable message on a consumed topic goes to the dead-letter topic
//! as it is, with its source in the `sesame-dead-source` header.
//!
//! Delivery is at least once. Each producer has `acks=all` and idempotence;
//! [`Queue::publish_pushes`] returns only once the broker has acknowledged
//! every job of the challenge, so a challenge the tenant was told about has
//! its pushes on the brokers' disks. Push jobs have a producer of their own
//! (librdkafka queues all topics of one producer together), so a burst of
//! events or retries cannot hold back login pushes. A dispatcher's offsets are
//! stored only up to the oldest job still in flight in each partition, and
//! committed from there, so a crash re-delivers what was not finished (a
//! duplicate push carries the same collapse id and replaces the first).
//!
//! When every broker is down, publishing fails at once with `Unavailable`
//! instead of waiting for `message.timeout.ms`; a background probe notices
//! when a broker answers again (and re-creates topics a new, empty cluster
//! lacks) and publishing resumes by itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sesame_core::audit::AuditRecord;
use tokio::sync::{watch, Notify};

use crate::{
    Acker, Delivery, Event, EventError, EventSubscriber, PushConsumer, PushDelivery, PushJob,
    Queue, QueueError, WebhookConsumer, WebhookDelivery, WebhookJob,
};

/// Header naming why a message is in the dead-letter topic.
pub const DEAD_REASON_HEADER: &str = "sesame-dead-reason";
/// Header naming where a dead letter came from (`topic/partition/offset`).
pub const DEAD_SOURCE_HEADER: &str = "sesame-dead-source";
/// Header carrying the login's trace id, so a push can be followed across processes.
pub const TRACE_HEADER: &str = "sesame-trace-id";

/// Kafka settings (`[kafka]` in the server configuration; the brokers come
/// from `queue = "kafka://host:port,..."`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]` (from the queue URI).
    #[serde(skip)]
    pub brokers: String,
    pub push_topic: String,
    pub retry_topic: String,
    pub dead_letter_topic: String,
    pub events_topic: String,
    /// A copy of every audit record, keyed by chain, for a SIEM to read.
    pub audit_topic: String,
    /// Verdicts to deliver to tenants' webhooks, and their retries.
    pub webhook_topic: String,
    pub webhook_retry_topic: String,
    /// The webhook senders' consumer group (the `challenge` replicas).
    pub webhook_group: String,
    /// Partitions of the push and retry topics when they are created: the
    /// most dispatchers that can share the work.
    pub push_partitions: i32,
    /// Partitions of the events and dead-letter topics when created.
    pub events_partitions: i32,
    /// Replication factor of created topics (3 for production; 1 for a
    /// single development broker).
    pub replication_factor: i32,
    /// The dispatchers' consumer group.
    pub consumer_group: String,
    /// librdkafka's `message.timeout.ms`, and how long `CreateChallenge`
    /// waits for its pushes to be acknowledged. At most the shortest
    /// challenge TTL you use (default TTL 120 s).
    pub message_timeout_ms: u64,
    /// Messages a producer may hold before publishing fails fast with `Full`.
    pub max_local_messages: usize,
    /// A dispatcher that stops heartbeating for this long loses its
    /// partitions to the others.
    pub session_timeout_ms: u64,
    /// How often consumed offsets are committed.
    pub commit_interval_ms: u64,
    /// librdkafka's `fetch.wait.max.ms` for the dispatchers and event
    /// subscribers: the longest a fetch waits on a broker that holds it
    /// open (Kafka answers as soon as data arrives; some brokers wait).
    pub fetch_wait_max_ms: u64,
    /// Extra librdkafka properties for every client, e.g.
    /// `"security.protocol" = "SASL_SSL"`, `"sasl.mechanism" = "SCRAM-SHA-512"`.
    pub properties: BTreeMap<String, String>,
    /// A file holding `sasl.password` (e.g. a mounted Kubernetes Secret),
    /// read when connecting, so the password stays out of configuration
    /// files and environment listings. Empty: none.
    pub sasl_password_file: std::path::PathBuf,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            push_topic: "sesame.push".into(),
            retry_topic: "sesame.push.retry".into(),
            dead_letter_topic: "sesame.push.dead".into(),
            events_topic: "sesame.events".into(),
            audit_topic: "sesame.audit".into(),
            webhook_topic: "sesame.webhooks".into(),
            webhook_retry_topic: "sesame.webhooks.retry".into(),
            webhook_group: "sesame-webhooks".into(),
            push_partitions: 12,
            events_partitions: 6,
            replication_factor: 3,
            consumer_group: "sesame-dispatchers".into(),
            message_timeout_ms: 5_000,
            max_local_messages: 100_000,
            session_timeout_ms: 10_000,
            commit_interval_ms: 1_000,
            fetch_wait_max_ms: 10,
            properties: BTreeMap::new(),
            sasl_password_file: std::path::PathBuf::new(),
        }
    }
}

impl KafkaConfig {
    /// Parses `kafka://host:port[,host:port...]` into the broker list.
    pub fn brokers_from_uri(uri: &str) -> Option<String> {
        let rest = uri.strip_prefix("kafka://")?.trim_end_matches('/');
        let ok = !rest.is_empty()
            && rest.split(',').all(|hp| {
                hp.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            });
        ok.then(|| rest.to_owned())
    }

    /// Reads `sasl_password_file` into the `sasl.password` property.
    pub fn with_secret_files(mut self) -> Result<KafkaConfig, String> {
        if self.sasl_password_file.as_os_str().is_empty() {
            return Ok(self);
        }
        let path = &self.sasl_password_file;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("kafka.sasl_password_file {}: {e}", path.display()))?;
        // Secrets written by hand often end with a newline; it is not part of it.
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(format!(
                "kafka.sasl_password_file {} is empty",
                path.display()
            ));
        }
        self.properties
            .insert("sasl.password".into(), password.to_owned());
        Ok(self)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.sasl_password_file.as_os_str().is_empty()
            && self.properties.contains_key("sasl.password")
        {
            return Err(
                "kafka: set sasl.password in properties or sasl_password_file, not both".into(),
            );
        }
        let topics = [
            ("push_topic", &self.push_topic),
            ("retry_topic", &self.retry_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
            ("events_topic", &self.events_topic),
            ("audit_topic", &self.audit_topic),
            ("webhook_topic", &self.webhook_topic),
            ("webhook_retry_topic", &self.webhook_retry_topic),
        ];
        for (key, t) in topics {
            let valid = !t.is_empty()
                && t.len() <= 249
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !valid {
                return Err(format!(
                    "kafka.{key} = {t:?}: 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-'"
                ));
            }
        }
        let mut names: Vec<&String> = topics.iter().map(|(_, t)| *t).collect();
        names.sort();
        names.dedup();
        if names.len() != topics.len() {
            return Err("kafka topics must all have different names".into());
        }
        if !(1..=10_000).contains(&self.push_partitions)
            || !(1..=10_000).contains(&self.events_partitions)
        {
            return Err("kafka.push_partitions and kafka.events_partitions: 1-10000".into());
        }
        if !(1..=16).contains(&self.replication_factor) {
            return Err("kafka.replication_factor: 1-16".into());
        }
        if self.consumer_group.is_empty() || self.webhook_group.is_empty() {
            return Err("kafka.consumer_group and kafka.webhook_group must not be empty".into());
        }
        if self.consumer_group == self.webhook_group {
            return Err("kafka.consumer_group and kafka.webhook_group must differ".into());
        }
        if !(100..=600_000).contains(&self.message_timeout_ms) {
            return Err("kafka.message_timeout_ms: 100-600000 (at most the challenge TTL)".into());
        }
        if !(1..=10_000_000).contains(&self.max_local_messages) {
            return Err("kafka.max_local_messages: 1-10000000".into());
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            return Err("kafka.session_timeout_ms: 1000-300000".into());
        }
        if !(100..=60_000).contains(&self.commit_interval_ms) {
            return Err("kafka.commit_interval_ms: 100-60000".into());
        }
        if !(1..=5_000).contains(&self.fetch_wait_max_ms) {
            return Err("kafka.fetch_wait_max_ms: 1-5000".into());
        }
        Ok(())
    }

    fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // Notice a dead broker in about a second, not minutes.
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "1000")
            .set("socket.connection.setup.timeout.ms", "5000")
            .set("log.connection.close", "false")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        if self.properties.contains_key("debug") {
            // librdkafka's own debug contexts asked for: let them through.
            c.set_log_level(RDKafkaLogLevel::Debug);
        }
        c
    }

    fn producer_config(&self, lane: &str, linger_ms: u32) -> ClientConfig {
        let mut c = self.client_config(&format!("sesame-{lane}"));
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                self.max_local_messages.to_string(),
            )
            .set("linger.ms", linger_ms.to_string());
        c
    }
}

/// Whether any broker answers, shared by the clients of one queue.
#[derive(Default)]
struct BrokerHealth {
    down: AtomicBool,
    /// A producer hit a fatal error (its idempotence state is broken):
    /// nothing it publishes will be accepted again until a restart.
    fatal: AtomicBool,
    changed: Notify,
    /// A client saw a broker connection fail: probe now, not at the next tick.
    suspect: Notify,
    reported: AtomicU64,
}

impl BrokerHealth {
    fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire) || self.fatal.load(Ordering::Acquire)
    }

    fn set_down(&self, down: bool) {
        let was = self.down.swap(down, Ordering::AcqRel);
        if was != down {
            crate::metrics::broker_up(!down);
            if down {
                tracing::warn!("no Kafka broker answers: publishing fails fast until one does");
            } else {
                tracing::info!("a Kafka broker answers again");
            }
            self.changed.notify_waiters();
        }
    }

    /// Resolves once the brokers are known to be down.
    async fn wait_down(&self) {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_down() {
                return;
            }
            n.await;
        }
    }
}

/// Routes librdkafka's errors to the health flag and its logs to `tracing`.
#[derive(Clone)]
struct Context {
    health: Arc<BrokerHealth>,
    offsets: Option<Arc<Mutex<Offsets>>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            // Mostly "connection refused" while a broker is away, which the
            // health flag and the metrics already tell: a warning, not an error.
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, message),
            _ => tracing::debug!(target: "librdkafka", fac, message),
        }
    }

    /// Dispatcher consumers report their lag every few seconds: per topic,
    /// the jobs in their partitions not finished yet (high watermark minus
    /// the stored offset). Summed over dispatchers it is the backlog.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if self.offsets.is_none() {
            return;
        }
        for (name, topic) in &statistics.topics {
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.desired && p.partition >= 0)
                .map(|p| p.consumer_lag_stored.max(0))
                .sum();
            crate::metrics::consumer_lag(name, lag);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(%error, reason, "fatal kafka client error: restart this process");
                self.health.fatal.store(true, Ordering::Release);
                crate::metrics::broker_up(false);
                self.health.changed.notify_waiters();
                return;
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => self.health.set_down(true),
            // librdkafka reports a lost connection, not always "all down"
            // (idle clients have no connection to lose): let the probe decide.
            Some(RDKafkaErrorCode::BrokerTransportFailure) => self.health.suspect.notify_one(),
            _ => {}
        }
        // The same broker error repeats every reconnect: log one in 100.
        if self
            .health
            .reported
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(100)
        {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Partitions that move away (or arrive) start a new generation:
        // acknowledgements of jobs taken before no longer move offsets.
        if let (Some(offsets), Rebalance::Revoke(tpl) | Rebalance::Assign(tpl)) =
            (&self.offsets, rebalance)
        {
            if let Ok(mut o) = offsets.lock() {
                for e in tpl.elements() {
                    o.forget(e.topic(), e.partition());
                }
            }
        }
    }
}

/// Which offsets of each partition may be committed: everything before the
/// oldest job still in flight. Jobs run concurrently and finish out of
/// order, so a job's own offset is no safe commit point on its own.
#[derive(Default)]
pub(crate) struct Offsets {
    parts: HashMap<(String, i32), Track>,
    generations: u64,
}

struct Track {
    generation: u64,
    /// Offsets taken and not finished, with how often each was taken in
    /// this generation (a seek or offset reset can deliver one twice).
    in_flight: BTreeMap<i64, u32>,
    /// One past the highest finished offset: the commit point once nothing
    /// is in flight.
    next: i64,
}

impl Offsets {
    /// Records a job taken from the partition; returns its generation.
    pub(crate) fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> u64 {
        let generations = &mut self.generations;
        let t = self
            .parts
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| {
                *generations += 1;
                Track {
                    generation: *generations,
                    in_flight: BTreeMap::new(),
                    next: offset,
                }
            });
        *t.in_flight.entry(offset).or_default() += 1;
        t.generation
    }

    /// Records a finished job; returns the offset to commit (the next one
    /// to consume), or `None` if the partition moved since the job began.
    pub(crate) fn done(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        generation: u64,
    ) -> Option<i64> {
        let t = self.parts.get_mut(&(topic.to_owned(), partition))?;
        if t.generation != generation {
            return None;
        }
        if let Some(n) = t.in_flight.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                t.in_flight.remove(&offset);
            }
        }
        t.next = t.next.max(offset.saturating_add(1));
        Some(
            t.in_flight
                .first_key_value()
                .map(|(o, _)| *o)
                .unwrap_or(t.next),
        )
    }

    pub(crate) fn forget(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_owned(), partition));
    }
}

/// The Kafka queue: two producers (push lane and everything else) and
/// consumers made on demand.
pub struct KafkaQueue {
    config: KafkaConfig,
    push_producer: FutureProducer<Context>,
    aux_producer: FutureProducer<Context>,
    health: Arc<BrokerHealth>,
    closed: watch::Sender<bool>,
    probe: tokio::task::JoinHandle<()>,
    closing: Arc<Closes>,
}

/// How long [`Queue::flush`] waits for consumers still closing: their last
/// offset commit and group leave, when a broker answers.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Consumers whose close is running on a thread of its own.
#[derive(Default)]
struct Closes {
    running: AtomicU64,
    done: Notify,
}

impl Closes {
    /// Until every close has finished, or `limit` has passed.
    async fn wait(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return false;
            }
        }
    }
}

/// A consumer that closes off the async runtime. Dropping a group consumer
/// runs librdkafka's consumer close, which leaves the group and commits the
/// stored offsets, and rust-rdkafka's drop polls until that is done with no
/// time limit (fede1024/rust-rdkafka#509): with no broker answering, a
/// Tokio worker would be stuck there, and with it everything scheduled on
/// that worker, the server's shutdown included. Here the drop hands the
/// consumer to a short-lived thread; [`Queue::flush`] waits for it a bounded
/// time.
struct OwnedConsumer {
    inner: Option<StreamConsumer<Context>>,
    closes: Arc<Closes>,
}

impl OwnedConsumer {
    fn new(inner: StreamConsumer<Context>, closes: Arc<Closes>) -> Arc<OwnedConsumer> {
        Arc::new(OwnedConsumer {
            inner: Some(inner),
            closes,
        })
    }
}

impl std::ops::Deref for OwnedConsumer {
    type Target = StreamConsumer<Context>;

    fn deref(&self) -> &StreamConsumer<Context> {
        // Only `drop` takes it.
        self.inner.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for OwnedConsumer {
    fn drop(&mut self) {
        let Some(consumer) = self.inner.take() else {
            return;
        };
        /// Counts the close as finished however the thread ends.
        struct Finished(Arc<Closes>);
        impl Drop for Finished {
            fn drop(&mut self) {
                self.0.running.fetch_sub(1, Ordering::AcqRel);
                self.0.done.notify_waiters();
            }
        }
        self.closes.running.fetch_add(1, Ordering::AcqRel);
        let finished = Finished(self.closes.clone());
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                drop(consumer);
                tracing::debug!(elapsed = ?started.elapsed(), "kafka consumer closed");
                drop(finished);
            });
        if let Err(e) = spawned {
            // No thread to be had: the closure (consumer and count with
            // it) was dropped right here, on this thread.
            tracing::warn!(error = %e, "kafka consumer closed on the calling thread");
        }
    }
}

impl Drop for KafkaQueue {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

fn backend(e: KafkaError) -> QueueError {
    QueueError::Backend(e.to_string())
}

impl KafkaQueue {
    /// Builds the clients and creates missing topics. Brokers that do not
    /// answer yet are no error: the queue starts as unavailable (`/ready`
    /// fails, publishing fails fast) and recovers when one answers.
    pub async fn connect(config: KafkaConfig) -> Result<KafkaQueue, QueueError> {
        config.validate().map_err(QueueError::Backend)?;
        let config = config.with_secret_files().map_err(QueueError::Backend)?;
        let health = Arc::new(BrokerHealth::default());
        let ctx = Context {
            health: health.clone(),
            offsets: None,
        };
        let push_producer: FutureProducer<Context> = config
            .producer_config("push", 1)
            .create_with_context(ctx.clone())
            .map_err(backend)?;
        let aux_producer: FutureProducer<Context> = config
            .producer_config("aux", 5)
            .create_with_context(ctx.clone())
            .map_err(backend)?;
        crate::metrics::broker_up(true);
        // Zero from the start, so that rate() and the alerts see a series
        // before the first error, not an absent one.
        for topic in [
            &config.push_topic,
            &config.retry_topic,
            &config.dead_letter_topic,
            &config.events_topic,
            &config.audit_topic,
            &config.webhook_topic,
            &config.webhook_retry_topic,
        ] {
            crate::metrics::produce_errors_start(topic);
        }
        if let Err(e) = ensure_topics(&config, ctx.clone()).await {
            tracing::warn!(error = %e, brokers = %config.brokers, "kafka topics not ready; will retry");
            health.set_down(true);
        }
        let probe = tokio::spawn(probe_loop(
            config.clone(),
            aux_producer.clone(),
            ctx,
            health.clone(),
        ));
        let (closed, _) = watch::channel(false);
        Ok(KafkaQueue {
            config,
            push_producer,
            aux_producer,
            health,
            closed,
            probe,
            closing: Arc::default(),
        })
    }

    /// A member of consumer group `group` reading `topics`, whose offsets
    /// are stored only up to the oldest job still in flight.
    fn group_consumer<T>(
        &self,
        client_id: &str,
        group: &str,
        topics: &[&str],
    ) -> Result<KafkaConsumer<T>, QueueError> {
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let ctx = Context {
            health: self.health.clone(),
            offsets: Some(offsets.clone()),
        };
        let mut c = self.config.client_config(client_id);
        c.set("group.id", group)
            .set("statistics.interval.ms", "5000")
            .set(
                "fetch.wait.max.ms",
                self.config.fetch_wait_max_ms.to_string(),
            )
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                self.config.commit_interval_ms.to_string(),
            )
            // Offsets are stored by us, only up to what is finished.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.config.session_timeout_ms.to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.config.session_timeout_ms / 4).max(250).to_string(),
            );
        let consumer: StreamConsumer<Context> = c.create_with_context(ctx).map_err(backend)?;
        consumer.subscribe(topics).map_err(backend)?;
        Ok(KafkaConsumer {
            consumer: OwnedConsumer::new(consumer, self.closing.clone()),
            offsets,
            closed: self.closed.subscribe(),
            dead_letters: self.aux_producer.clone(),
            dead_letter_topic: self.config.dead_letter_topic.clone(),
            job: std::marker::PhantomData,
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn send_aux(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<rdkafka::producer::DeliveryFuture, QueueError> {
        if self.health.is_down() {
            return Err(QueueError::Unavailable("no Kafka broker answers".into()));
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.aux_producer.send_result(record).map_err(|(e, _)| {
            crate::metrics::produce_error(topic);
            produce_error(e)
        })
    }

    /// Waits for the broker's acknowledgement of `futures`, at most the
    /// message timeout, and no longer once the brokers are known to be down.
    async fn acknowledged(
        &self,
        topic: &str,
        futures: Vec<rdkafka::producer::DeliveryFuture>,
    ) -> Result<(), QueueError> {
        let all = async {
            for f in futures {
                match f.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(delivery_error(e)),
                    Err(_) => return Err(QueueError::Closed),
                }
            }
            Ok(())
        };
        let limit = Duration::from_millis(self.config.message_timeout_ms + 500);
        let r = tokio::select! {
            r = all => r,
            _ = self.health.wait_down() => {
                Err(QueueError::Unavailable("no Kafka broker answers".into()))
            }
            _ = tokio::time::sleep(limit) => Err(QueueError::Unavailable(format!(
                "Kafka did not acknowledge within {} ms", self.config.message_timeout_ms
            ))),
        };
        if let Err(e) = &r {
            crate::metrics::produce_error(topic);
            if matches!(e, QueueError::Unavailable(_)) {
                self.health.suspect.notify_one();
            }
        }
        r
    }
}

/// A failed delivery: transient unless the brokers refused the message for
/// good (too large, not authorised), which retrying cannot mend.
fn delivery_error(e: KafkaError) -> QueueError {
    use RDKafkaErrorCode::*;
    match e.rdkafka_error_code() {
        Some(
            MessageSizeTooLarge
            | InvalidMessageSize
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | InvalidMessage
            | InvalidRecord,
        ) => QueueError::Backend(e.to_string()),
        _ => QueueError::Unavailable(e.to_string()),
    }
}

fn produce_error(e: KafkaError) -> QueueError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => QueueError::Full("kafka producer"),
        _ => QueueError::Backend(e.to_string()),
    }
}

fn trace_headers(trace_id: &str) -> OwnedHeaders {
    let h = OwnedHeaders::new();
    if trace_id.is_empty() {
        h
    } else {
        h.insert(Header {
            key: TRACE_HEADER,
            value: Some(trace_id),
        })
    }
}

/// Creates the topics when missing (an existing topic is left as it is).
async fn ensure_topics(config: &KafkaConfig, ctx: Context) -> Result<(), QueueError> {
    let admin: AdminClient<Context> = config
        .client_config("sesame-admin")
        .create_with_context(ctx)
        .map_err(backend)?;
    let min_isr = (config.replication_factor >= 3).then(|| "2".to_owned());
    let topics: Vec<NewTopic<'_>> = [
        (&config.push_topic, config.push_partitions),
        (&config.retry_topic, config.push_partitions),
        (&config.dead_letter_topic, config.events_partitions),
        (&config.events_topic, config.events_partitions),
        (&config.audit_topic, config.events_partitions),
        (&config.webhook_topic, config.events_partitions),
        (&config.webhook_retry_topic, config.events_partitions),
    ]
    .into_iter()
    .map(|(name, partitions)| {
        let t = NewTopic::new(
            name,
            partitions,
            TopicReplication::Fixed(config.replication_factor),
        );
        match &min_isr {
            Some(v) => t.set("min.insync.replicas", v),
            None => t,
        }
    })
    .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .map_err(backend)?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(QueueError::Backend(format!(
                    "cannot create topic {topic}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// Asks a broker for metadata every second, and at once when a client saw
/// a connection fail: two unanswered probes in a row mark the brokers down (publishing then
/// fails fast, and callers waiting for acknowledgements give up), an answer
/// marks them up again after (re-)creating topics a new cluster lacks.
/// librdkafka alone does not say reliably that every broker is gone: an idle
/// client has no connection to lose.
async fn probe_loop(
    config: KafkaConfig,
    producer: FutureProducer<Context>,
    ctx: Context,
    health: Arc<BrokerHealth>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One slow answer is no outage: marking the brokers down aborts every
    // publish in flight (their challenges are cancelled), so it takes two
    // unanswered probes in a row.
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = health.suspect.notified() => {}
        }
        let p = producer.clone();
        let topic = config.push_topic.clone();
        let meta = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&topic), Duration::from_secs(1))
                .map(|m| m.topics().iter().any(|t| !t.partitions().is_empty()))
        })
        .await;
        let answered = match meta {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => match ensure_topics(&config, ctx.clone()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "kafka topics still missing");
                    false
                }
            },
            _ => false,
        };
        failures = if answered { 0 } else { failures + 1 };
        if answered {
            health.set_down(false);
        } else if failures >= 2 {
            health.set_down(true);
        }
    }
}

#[async_trait]
impl Queue for KafkaQueue {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn check_room_for_pushes(&self, n: usize) -> Result<(), QueueError> {
        if self.health.is_down() {
            return Err(QueueError::Unavailable("no Kafka broker answers".into()));
        }
        let held = self.push_producer.in_flight_count().max(0) as usize;
        if held.saturating_add(n) > self.config.max_local_messages {
            return Err(QueueError::Full("kafka producer"));
        }
        Ok(())
    }

    async fn publish_pushes(&self, jobs: Vec<PushJob>) -> Result<(), QueueError> {
        if *self.closed.borrow() {
            return Err(QueueError::Closed);
        }
        self.check_room_for_pushes(jobs.len())?;
        let topic = &self.config.push_topic;
        let mut futures = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let payload = job.encode();
            let record = FutureRecord::to(topic)
                .key(job.device_id.as_str())
                .payload(&payload)
                .headers(trace_headers(&job.trace_id));
            match self.push_producer.send_result(record) {
                Ok(f) => futures.push(f),
                Err((e, _)) => {
                    crate::metrics::produce_error(topic);
                    return Err(produce_error(e));
                }
            }
        }
        self.acknowledged(topic, futures).await?;
        self.health.set_down(false);
        Ok(())
    }

    async fn publish_retry(&self, job: PushJob) -> Result<(), QueueError> {
        let topic = &self.config.retry_topic;
        let f = self.send_aux(
            topic,
            job.device_id.as_str(),
            &job.encode(),
            trace_headers(&job.trace_id),
        )?;
        self.acknowledged(topic, vec![f]).await
    }

    async fn publish_dead_letter(&self, job: &PushJob, reason: &str) -> Result<(), QueueError> {
        let topic = &self.config.dead_letter_topic;
        let headers = trace_headers(&job.trace_id).insert(Header {
            key: DEAD_REASON_HEADER,
            value: Some(reason),
        });
        let f = self.send_aux(topic, job.device_id.as_str(), &job.encode(), headers)?;
        self.acknowledged(topic, vec![f]).await
    }

    fn publish_event(&self, event: Event) -> Result<(), QueueError> {
        let key = match &event {
            Event::Verdict { challenge_id, .. } => challenge_id.to_string(),
            Event::PushTokenDead { device_id, .. } => device_id.to_string(),
            Event::Audit(a) => a
                .challenge_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_else(|| a.tenant_id.to_string()),
        };
        let payload = serde_json::to_vec(&event).map_err(|e| QueueError::Backend(e.to_string()))?;
        // Fire and forget: an event only says "look again"; watchers also
        // re-read on their own, so a lost one costs seconds, not a verdict.
        let topic = &self.config.events_topic;
        let _delivery = self.send_aux(topic, &key, &payload, OwnedHeaders::new())?;
        Ok(())
    }

    async fn publish_audit(&self, records: &[AuditRecord]) -> Result<(), QueueError> {
        let topic = &self.config.audit_topic;
        let mut sent = Vec::with_capacity(records.len());
        for r in records {
            let payload = serde_json::to_vec(r).map_err(|e| QueueError::Backend(e.to_string()))?;
            sent.push(self.send_aux(topic, &r.chain, &payload, OwnedHeaders::new())?);
        }
        self.acknowledged(topic, sent).await
    }

    async fn health_check(&self) -> Result<(), QueueError> {
        if self.health.is_down() {
            Err(QueueError::Unavailable("no Kafka broker answers".into()))
        } else {
            Ok(())
        }
    }

    async fn push_consumer(&self) -> Result<Box<dyn PushConsumer>, QueueError> {
        let c: KafkaConsumer<PushJob> = self.group_consumer(
            "sesame-dispatcher",
            &self.config.consumer_group,
            &[&self.config.push_topic, &self.config.retry_topic],
        )?;
        Ok(Box::new(c))
    }

    async fn publish_webhook(&self, job: WebhookJob) -> Result<(), QueueError> {
        let topic = if job.not_before > 0 {
            &self.config.webhook_retry_topic
        } else {
            &self.config.webhook_topic
        };
        let f = self.send_aux(
            topic,
            job.tenant_id.as_str(),
            &job.encode(),
            trace_headers(&job.trace_id),
        )?;
        self.acknowledged(topic, vec![f]).await
    }

    async fn webhook_consumer(&self) -> Result<Box<dyn WebhookConsumer>, QueueError> {
        let c: KafkaConsumer<WebhookJob> = self.group_consumer(
            "sesame-webhooks",
            &self.config.webhook_group,
            &[&self.config.webhook_topic, &self.config.webhook_retry_topic],
        )?;
        Ok(Box::new(c))
    }

    async fn subscribe_events(&self) -> Result<Box<dyn EventSubscriber>, QueueError> {
        let ctx = Context {
            health: self.health.clone(),
            offsets: None,
        };
        let mut c = self.config.client_config("sesame-events");
        // Every subscriber reads every partition itself (no group
        // membership, nothing committed); the id only names the client.
        c.set(
            "group.id",
            format!("sesame-events-{}", rand::random::<u64>()),
        )
        .set("enable.auto.commit", "false")
        .set(
            "fetch.wait.max.ms",
            self.config.fetch_wait_max_ms.to_string(),
        )
        .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer<Context> = c.create_with_context(ctx).map_err(backend)?;
        let consumer = OwnedConsumer::new(consumer, self.closing.clone());
        let topic = self.config.events_topic.clone();
        let partitions = self.config.events_partitions;
        // "From now on": start at each partition's current end, read now,
        // so an event published after this call returns cannot be missed.
        let c2 = consumer.clone();
        let tpl = tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(2);
            let meta = c2.fetch_metadata(Some(&topic), timeout).ok();
            let ids: Vec<i32> = meta
                .as_ref()
                .and_then(|m| m.topics().first())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .filter(|v: &Vec<i32>| !v.is_empty())
                .unwrap_or_else(|| (0..partitions).collect());
            let mut tpl = TopicPartitionList::new();
            let mut exact = true;
            for p in ids {
                let offset = match c2.fetch_watermarks(&topic, p, timeout) {
                    Ok((_, high)) if exact => Offset::Offset(high),
                    _ => {
                        exact = false;
                        Offset::End
                    }
                };
                // Only fails for a partition listed twice.
                let _ = tpl.add_partition_offset(&topic, p, offset);
            }
            if !exact {
                tracing::warn!("kafka unreachable: events subscriber starts at the end");
            }
            tpl
        })
        .await
        .map_err(|e| QueueError::Backend(e.to_string()))?;
        consumer.assign(&tpl).map_err(backend)?;
        Ok(Box::new(KafkaSubscriber {
            consumer,
            closed: self.closed.subscribe(),
            last_lagged: None,
        }))
    }

    fn close(&self) {
        let _ = self.closed.send(true);
    }

    async fn flush(&self) {
        // Events and retries are fire-and-forget; give the last ones up to
        // two seconds to reach the brokers before the process exits.
        let (a, b) = (self.aux_producer.clone(), self.push_producer.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let _ = a.flush(Duration::from_secs(2));
            let _ = b.flush(Duration::from_secs(1));
        })
        .await;
        // And dropped consumers their final commit.
        if !self.closing.wait(CLOSE_WAIT).await {
            tracing::warn!(
                "kafka consumers still closing after {CLOSE_WAIT:?} (no broker answers?); \
                 their last offsets may be delivered again"
            );
        }
    }
}

struct KafkaConsumer<T> {
    consumer: Arc<OwnedConsumer>,
    offsets: Arc<Mutex<Offsets>>,
    closed: watch::Receiver<bool>,
    dead_letters: FutureProducer<Context>,
    dead_letter_topic: String,
    job: std::marker::PhantomData<fn() -> T>,
}

/// What a group consumer hands out.
trait Job: Sized {
    /// For metrics and logs.
    const KIND: &'static str;
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

impl Job for PushJob {
    const KIND: &'static str = "push";
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        PushJob::decode(bytes)
    }
}

impl Job for WebhookJob {
    const KIND: &'static str = "webhook";
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        WebhookJob::decode(bytes)
    }
}

struct KafkaAcker {
    consumer: Arc<OwnedConsumer>,
    offsets: Arc<Mutex<Offsets>>,
    topic: String,
    partition: i32,
    offset: i64,
    generation: u64,
}

impl Acker for KafkaAcker {
    fn ack(self: Box<Self>) {
        let next =
            self.offsets.lock().ok().and_then(|mut o| {
                o.done(&self.topic, self.partition, self.offset, self.generation)
            });
        if let Some(next) = next {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&self.topic, self.partition, Offset::Offset(next))
                .is_ok()
            {
                // Fails only if the partition was just revoked: the next
                // owner re-delivers from the last commit.
                if let Err(e) = self.consumer.store_offsets(&tpl) {
                    tracing::debug!(error = %e, "offset not stored");
                }
            }
        }
    }
}

#[async_trait]
impl PushConsumer for KafkaConsumer<PushJob> {
    async fn next(&mut self) -> Option<PushDelivery> {
        self.next_job().await
    }
}

#[async_trait]
impl WebhookConsumer for KafkaConsumer<WebhookJob> {
    async fn next(&mut self) -> Option<WebhookDelivery> {
        self.next_job().await
    }
}

impl<T: Job> KafkaConsumer<T> {
    async fn next_job(&mut self) -> Option<Delivery<T>> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            let taken = tokio::select! {
                changed = self.closed.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    continue;
                }
                m = self.consumer.recv() => match m {
                    Err(e) => Err(e),
                    Ok(m) => Ok((
                        m.topic().to_owned(),
                        m.partition(),
                        m.offset(),
                        m.payload().map(<[u8]>::to_vec),
                    )),
                },
            };
            let (topic, partition, offset, payload) = match taken {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let generation = self
                .offsets
                .lock()
                .map(|mut o| o.begin(&topic, partition, offset))
                .unwrap_or(0);
            let acker = KafkaAcker {
                consumer: self.consumer.clone(),
                offsets: self.offsets.clone(),
                topic,
                partition,
                offset,
                generation,
            };
            let bytes = payload.unwrap_or_default();
            match T::decode(&bytes) {
                Ok(job) => return Some(Delivery::new(job, Some(Box::new(acker)))),
                Err(reason) => {
                    if self.poison(&acker, &bytes, &reason).await {
                        Box::new(acker).ack();
                    }
                }
            }
        }
    }

    /// An undecodable message goes to dead letters as it is, and the
    /// consumer moves on: one bad message must not stop delivery.
    async fn poison(&self, at: &KafkaAcker, bytes: &[u8], reason: &str) -> bool {
        crate::metrics::undecodable(T::KIND);
        let source = format!("{}/{}/{}", at.topic, at.partition, at.offset);
        tracing::warn!(%source, %reason, kind = T::KIND, "undecodable job moved to dead letters");
        let reason = format!("undecodable {} job: {reason}", T::KIND);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: DEAD_REASON_HEADER,
                value: Some(&reason),
            })
            .insert(Header {
                key: DEAD_SOURCE_HEADER,
                value: Some(&source),
            });
        // Retried until it is stored (or the queue closes, and the message
        // is delivered again later): a dead letter is not dropped.
        let mut backoff = Duration::from_millis(200);
        loop {
            let record = FutureRecord::<(), [u8]>::to(&self.dead_letter_topic)
                .payload(bytes)
                .headers(headers.clone());
            if let Ok(f) = self.dead_letters.send_result(record) {
                if matches!(
                    tokio::time::timeout(Duration::from_secs(10), f).await,
                    Ok(Ok(Ok(_)))
                ) {
                    return true;
                }
            }
            crate::metrics::produce_error(&self.dead_letter_topic);
            tracing::warn!(%source, "dead letter not stored yet; retrying");
            if *self.closed.borrow() {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

struct KafkaSubscriber {
    consumer: Arc<OwnedConsumer>,
    closed: watch::Receiver<bool>,
    last_lagged: Option<std::time::Instant>,
}

#[async_trait]
impl EventSubscriber for KafkaSubscriber {
    async fn next(&mut self) -> Result<Event, EventError> {
        loop {
            if *self.closed.borrow() {
                return Err(EventError::Closed);
            }
            let r = tokio::select! {
                changed = self.closed.changed() => {
                    if changed.is_err() {
                        return Err(EventError::Closed);
                    }
                    continue;
                }
                m = self.consumer.recv() => m.map(|m| m.payload().map(serde_json::from_slice::<Event>)),
            };
            match r {
                Ok(Some(Ok(event))) => return Ok(event),
                // Not ours to read: skip it.
                Ok(_) => crate::metrics::undecodable("events"),
                Err(e) => {
                    // librdkafka resumes at the right offset after routine
                    // errors, but an offset reset can skip events: have
                    // watchers re-read, at most every 5 s.
                    tracing::debug!(error = %e, "kafka events consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let due = self
                        .last_lagged
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
                    if due {
                        self.last_lagged = Some(std::time::Instant::now());
                        return Err(EventError::Lagged(0));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_waits_for_the_oldest_job_in_flight() {
        let mut o = Offsets::default();
        let g = o.begin("t", 0, 10);
        assert_eq!(o.begin("t", 0, 11), g);
        o.begin("t", 0, 12);
        // 11 and 12 finish first: 10 is still in flight, so commit 10.
        assert_eq!(o.done("t", 0, 12, g), Some(10));
        assert_eq!(o.done("t", 0, 11, g), Some(10));
        assert_eq!(o.done("t", 0, 10, g), Some(13));
        // Other partitions are independent.
        let g1 = o.begin("t", 1, 0);
        assert_eq!(o.done("t", 1, 0, g1), Some(1));
    }

    #[test]
    fn acks_from_before_a_rebalance_are_ignored() {
        let mut o = Offsets::default();
        let old = o.begin("t", 0, 5);
        o.forget("t", 0);
        assert_eq!(o.done("t", 0, 5, old), None, "partition gone");
        let new = o.begin("t", 0, 5);
        assert_ne!(old, new);
        assert_eq!(o.done("t", 0, 5, old), None, "stale generation");
        assert_eq!(o.done("t", 0, 5, new), Some(6));
    }

    #[test]
    fn the_sasl_password_comes_from_its_file_without_the_newline() {
        let path = std::env::temp_dir().join(format!("sesame-kafka-pw-{}", std::process::id()));
        std::fs::write(&path, "s3cret=,x\n").unwrap();
        let c = KafkaConfig {
            sasl_password_file: path.clone(),
            ..KafkaConfig::default()
        };
        assert!(c.validate().is_ok());
        let read = c.clone().with_secret_files().unwrap();
        assert_eq!(read.properties["sasl.password"], "s3cret=,x");

        std::fs::write(&path, "\n").unwrap();
        assert!(c
            .clone()
            .with_secret_files()
            .unwrap_err()
            .contains("is empty"));
        std::fs::remove_file(&path).unwrap();
        assert!(c
            .clone()
            .with_secret_files()
            .unwrap_err()
            .contains("sasl_password_file"));

        let mut both = c;
        both.properties.insert("sasl.password".into(), "x".into());
        assert!(both.validate().unwrap_err().contains("not both"));
    }

    #[test]
    fn broker_uris_and_settings_are_checked() {
        assert_eq!(
            KafkaConfig::brokers_from_uri("kafka://a:9092,b:9093"),
            Some("a:9092,b:9093".into())
        );
        assert_eq!(KafkaConfig::brokers_from_uri("kafka://"), None);
        assert_eq!(KafkaConfig::brokers_from_uri("kafka://host"), None);
        assert_eq!(KafkaConfig::brokers_from_uri("http://a:1"), None);
        assert!(KafkaConfig::default().validate().is_ok());
        let same = KafkaConfig {
            retry_topic: "sesame.push".into(),
            ..Default::default()
        };
        assert!(same.validate().is_err());
        let bad = KafkaConfig {
            events_topic: "no spaces".into(),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("events_topic"));
    }
}
