//! The live Kafka runtime: a consumer group over the input topic, the
//! engine, the producers of the output topics, and the merge stage of the
//! global aggregates.
//!
//! Delivery protocol (at-least-once with deterministic ids): records are
//! processed in steps of up to `max_batch` records; the outputs of a step are
//! produced and flushed, and only when every one was acknowledged is the
//! step's state written to RocksDB together with the next input offsets (one
//! WriteBatch), and the offsets committed to the group. A crash at any point
//! leaves the store at the end of a fully delivered step; on restart the
//! partition resumes at the stored offset, so re-sent outputs carry the same
//! ids and nothing is lost.
//!
//! Partitions start where their stored state ends: the rebalance callback
//! sets each assigned partition's start offset from the store (or the
//! beginning of the topic when the store has no state for it). On revoke,
//! the in-flight step is delivered and committed inside the callback, before
//! the partition is let go.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use siklus_state::{Batch, Store};
use tracing::{debug, info, warn};

use crate::aggregate::{Aggregate, CohortCell, Merger, Partial};
use crate::changelog::{ChangeRecord, INPUT_OFFSET_HEADER, META_CHANGELOG_NEXT};
use crate::codec::registry::{value_subject, RegistryClient};
use crate::codec::{
    self, DecodeError, Decoder, OutputFormat, TransitionEncoder, STAGE_TRANSITION_AVSC,
};
use crate::config::{Config, Guarantee, ProductionErrorPolicy};
use crate::engine::{Engine, EngineError, Outputs, RawInput};
use crate::metrics::Metrics;
use crate::model::StageTransition;
use crate::restore::Restores;

/// How long start-up waits for an unreachable Schema Registry to register
/// the output schemas before giving up.
const REGISTRY_STARTUP_WAIT: Duration = Duration::from_secs(60);

const MERGE_STATE: &str = "merge.state";
const MERGE_OFFSET: &str = "merge.offset";
/// The latest closed windows (JSON), for the read API and the window gauges.
const MERGE_LATEST: &str = "merge.latest";

/// What [`MERGE_LATEST`] holds.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct StoredLatest {
    aggregates: Vec<Aggregate>,
    cohorts: Vec<CohortCell>,
}

/// The latest closed windows stored by the merge stage (empty if none).
pub fn load_latest(store: &Store) -> crate::metrics::LatestWindows {
    let mut latest = crate::metrics::LatestWindows::default();
    if let Some(stored) = store
        .global(MERGE_LATEST)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<StoredLatest>(&b).ok())
    {
        latest.absorb(&stored.aggregates, &stored.cohorts);
    }
    latest
}

/// Refreshes the per-partition figures, the restore progress, the state
/// size and readiness (about once a second).
fn update_figures(w: &mut Worker, consumer: &BaseConsumer<InputContext>, topic: &str) {
    let assigned = w.engine.assigned();
    for p in &assigned {
        let Some(target) = w.restoring.get(p).copied() else {
            continue;
        };
        let position = w.engine.next_offset(*p).unwrap_or(0);
        let target = match target {
            Some(t) => t,
            None => match consumer.fetch_watermarks(topic, *p as i32, Duration::from_secs(2)) {
                Ok((_, high)) => {
                    w.restoring.insert(*p, Some(high));
                    high
                }
                Err(_) => continue,
            },
        };
        let remaining = (target - position).max(0) as u64;
        w.metrics
            .with_partition(*p, |f| f.restore_remaining = remaining);
        if remaining == 0 {
            info!(partition = p, "partition state rebuilt");
            w.restoring.remove(p);
        }
    }
    for p in &assigned {
        let position = w.engine.next_offset(*p).unwrap_or(0);
        let watermark = w.engine.clock(*p).and_then(|c| c.watermark);
        w.metrics.with_partition(*p, |f| {
            f.assigned = true;
            f.position = position;
            f.watermark = watermark;
        });
    }
    w.metrics.set_counters(w.engine.partition_counters());
    let store = w.engine.store();
    w.metrics
        .state_size_bytes
        .store(store.approximate_size_bytes(), Ordering::Relaxed);
    w.metrics.state_live_bytes.store(
        store.property("rocksdb.estimate-live-data-size"),
        Ordering::Relaxed,
    );
    w.metrics
        .cache_profiles
        .store(w.engine.cached_profiles() as u64, Ordering::Relaxed);
    w.metrics
        .cache_bytes
        .store(w.engine.cached_bytes() as u64, Ordering::Relaxed);
    let restores_done = w.restores.as_ref().is_none_or(Restores::is_empty);
    w.metrics.ready.store(
        w.restoring.is_empty()
            && restores_done
            && w.failing_steps == 0
            && !w.metrics.brokers_down.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
}

/// The wait before the n-th retry in a row of a failed step: 100 ms,
/// doubling, at most 10 s.
fn step_retry_backoff(failures_in_a_row: u32) -> Duration {
    let exp = failures_in_a_row.saturating_sub(1).min(7);
    Duration::from_millis(100u64 << exp).min(Duration::from_secs(10))
}

/// How a run ends.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop once every input partition reached the end it had at start
    /// (used by the demo and by tests; a live job runs until signalled).
    pub stop_at_end: bool,
    /// With `stop_at_end`: advance event time to this instant at the end, so
    /// timers due by then fire and windows ending by then close.
    pub end_time: Option<i64>,
    /// Set to stop gracefully (SIGINT/SIGTERM).
    pub shutdown: Arc<AtomicBool>,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    /// Engine counters at the end.
    pub counters: crate::engine::Counters,
    /// Aggregates emitted by the merge stage of this instance.
    pub aggregates: u64,
    /// Cohort cells emitted by this instance.
    pub cohort_cells: u64,
    /// With `--stop-at-end`: seconds from the first input record polled to
    /// the commit of the step that applied the last record before the input's
    /// end (the processing span, without the group join and end detection).
    pub processing_secs: Option<f64>,
    /// Changelog records applied by restores of this run.
    pub restored_records: u64,
    /// Seconds from the first restore's start until no restore was left
    /// (restores of several partitions overlap).
    pub restore_secs: Option<f64>,
}

/// The input decoder the configuration asks for: schema files by id, or the
/// Schema Registry when one is configured.
pub fn input_decoder(cfg: &Config) -> anyhow::Result<Decoder> {
    let decoder = Decoder::new(cfg.processor.input_format, &cfg.schemas.ids)?;
    if !cfg.schema_registry.enabled() {
        return Ok(decoder);
    }
    let client = RegistryClient::new(&cfg.schema_registry)?;
    info!(
        url = client.url(),
        "input writer schemas come from the schema registry"
    );
    Ok(decoder.with_registry(client))
}

/// The schema id written in the Confluent header of Avro transitions: with
/// a Schema Registry, the id of `siklus.StageTransition` under the subject
/// `<transitions topic>-value`, registered at start-up (or only looked up
/// when `auto_register` is off); otherwise `processor.output_schema_id`.
/// An unreachable registry is retried with backoff for up to a minute.
pub fn transitions_schema_id(cfg: &Config) -> anyhow::Result<u32> {
    if cfg.processor.output_format != OutputFormat::Avro || !cfg.schema_registry.enabled() {
        return Ok(cfg.processor.output_schema_id);
    }
    let client = RegistryClient::new(&cfg.schema_registry)?;
    let subject = value_subject(&cfg.topics.transitions);
    let deadline = Instant::now() + REGISTRY_STARTUP_WAIT;
    let id = client
        .retrying(
            &|| Instant::now() >= deadline,
            |e, wait| {
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "schema registry unavailable at start-up; retrying")
            },
            |c| {
                if cfg.schema_registry.auto_register {
                    c.register(&subject, STAGE_TRANSITION_AVSC)
                } else {
                    c.lookup(&subject, STAGE_TRANSITION_AVSC)
                }
            },
        )
        .with_context(|| format!("output schema of subject {subject}"))?;
    info!(%subject, schema_id = id, "output schema registered");
    Ok(id)
}

/// The librdkafka client configuration of `[kafka]`, every property as given.
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c
}

/// A topic siklus needs, as [`topic_specs`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// Whether it is compacted (keyed upserts: the last value per key counts).
    pub compacted: bool,
    /// Whether its records carry event times as timestamps (transitions and
    /// audience events): it is created with `retention.ms = -1`, since a
    /// time-based retention would delete a backfill of old history at once.
    pub event_timed: bool,
}

/// Every topic a run with this configuration needs, given the input's
/// partition count: the one list that [`ensure_topics`] creates on a broker
/// and the demo creates on its in-process cluster (which cannot create
/// topics itself).
pub fn topic_specs(cfg: &Config, parts: i32) -> Vec<TopicSpec> {
    let spec = |name: String, partitions: i32, compacted: bool| TopicSpec {
        name,
        partitions,
        compacted,
        event_timed: false,
    };
    let timed = |name: String, partitions: i32| TopicSpec {
        event_timed: true,
        ..spec(name, partitions, false)
    };
    let mut wanted = vec![
        spec(cfg.topics.input.clone(), parts, false),
        timed(cfg.topics.transitions.clone(), parts),
        spec(cfg.topics.dlq.clone(), 1, false),
        spec(cfg.topics.aggregates.clone(), 1, true),
        spec(cfg.topics.cohorts.clone(), 1, true),
        // One partition: the merge stage sees every partition's partials in order.
        spec(cfg.partials_topic(), 1, false),
        spec(cfg.instances_topic(), 1, true),
    ];
    if !cfg.topics.segment.is_empty() {
        wanted.push(timed(cfg.topics.segment.clone(), parts));
    }
    if cfg.processor.changelog {
        wanted.push(spec(cfg.changelog_topic(), parts, true));
    }
    wanted
}

/// Creates the topics siklus needs when they do not exist (the input topic
/// too, with `processor.topic_partitions`). Returns the input's partition count.
pub fn ensure_topics(cfg: &Config) -> anyhow::Result<i32> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)
        .create()
        .context("creating the Kafka admin client")?;
    let probe: BaseConsumer = client_config(cfg)
        .create()
        .context("creating a metadata client")?;
    let md = probe
        .fetch_metadata(None, Duration::from_secs(10))
        .context("fetching cluster metadata")?;
    let existing: BTreeMap<String, i32> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect();
    let parts = existing
        .get(&cfg.topics.input)
        .copied()
        .unwrap_or(cfg.processor.topic_partitions);
    let rf = cfg.processor.replication_factor;
    if cfg.processor.changelog {
        let changelog = cfg.changelog_topic();
        if let Some(n) = existing.get(&changelog) {
            if *n != parts {
                bail!(
                    "the changelog topic {changelog} has {n} partitions, the input {parts}: \
                     a changelog partition holds the state of the input partition of the same number"
                );
            }
        }
    }
    let wanted = topic_specs(cfg, parts);
    let new: Vec<NewTopic> = wanted
        .iter()
        .filter(|t| !existing.contains_key(&t.name))
        .map(|spec| {
            let t = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(rf));
            if spec.compacted {
                t.set("cleanup.policy", "compact")
            } else if spec.event_timed {
                t.set("retention.ms", "-1")
            } else {
                t
            }
        })
        .collect();
    if !new.is_empty() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let results = rt.block_on(admin.create_topics(
            new.iter(),
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))?;
        for r in results {
            match r {
                Ok(name) => info!(topic = %name, "created topic"),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    debug!(topic = %name, "topic exists")
                }
                Err((name, code)) => bail!("cannot create topic {name}: {code}"),
            }
        }
        // Wait until the new topics show up in metadata, each partition
        // with a leader (a restore or a produce before that fails).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let md = probe.fetch_metadata(None, Duration::from_secs(5))?;
            let have: Vec<String> = md
                .topics()
                .iter()
                .filter(|t| {
                    t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
                .map(|t| t.name().to_string())
                .collect();
            if wanted.iter().all(|t| have.contains(&t.name)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("topics were created but do not appear in metadata with a leader for every partition");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(parts)
}

/// Counts delivery failures of the output producer.
pub struct DeliveryContext {
    failures: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Failures no retry can cure (see [`is_permanent`]) under the `fail`
    /// policy: the flush that sees one stops the instance.
    permanent: AtomicU64,
    /// Records skipped under the `skip` policy, since start.
    skipped: AtomicU64,
    /// `processor.production_error_policy = "skip"`.
    skip_permanent: bool,
    /// Topics whose records are never skipped (the changelog and the
    /// partials: skipping one would corrupt a restore or the aggregates).
    never_skip: Vec<String>,
    /// A topic whose records are best effort (the instances directory):
    /// their failures are logged, never fail a step.
    best_effort_topic: String,
    /// The changelog topic, whose delivered offsets are tracked.
    changelog_topic: String,
    /// Per changelog partition: one past the last delivered offset.
    changelog_next: Mutex<BTreeMap<i32, i64>>,
}

impl DeliveryContext {
    /// Counts a record that was not delivered (at send or in its delivery
    /// report), by the production error policy.
    fn failed(&self, topic: &str, e: &KafkaError) {
        if is_permanent(e) {
            if self.skip_permanent && !self.never_skip.iter().any(|t| t == topic) {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                warn!(%topic, error = %e, "output record skipped: the broker can never accept it (production_error_policy = \"skip\")");
                return;
            }
            self.permanent.fetch_add(1, Ordering::Relaxed);
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(format!("{topic}: {e}"));
        }
    }

    fn new(cfg: &Config) -> Self {
        DeliveryContext {
            failures: AtomicU64::new(0),
            first_error: Mutex::new(None),
            permanent: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            skip_permanent: cfg.processor.production_error_policy == ProductionErrorPolicy::Skip,
            never_skip: vec![cfg.changelog_topic(), cfg.partials_topic()],
            best_effort_topic: cfg.instances_topic(),
            changelog_topic: cfg.changelog_topic(),
            changelog_next: Mutex::new(BTreeMap::new()),
        }
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            if m.topic() == self.changelog_topic {
                let mut next = lock(&self.changelog_next);
                let e = next.entry(m.partition()).or_insert(0);
                *e = (*e).max(m.offset() + 1);
            }
        }
        if let Err((e, m)) = result {
            if m.topic() == self.best_effort_topic {
                debug!(error = %e, "instance record not delivered");
                return;
            }
            self.failed(m.topic(), e);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a produce error is one no retry can cure: the record is larger
/// than the broker or the client accepts, or the instance may not write the
/// topic.
pub fn is_permanent(e: &KafkaError) -> bool {
    let code = match e {
        KafkaError::MessageProduction(c) => *c,
        _ => match e.rdkafka_error_code() {
            Some(c) => c,
            None => return false,
        },
    };
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidTimestamp
    )
}

/// Whether a transactional producer error is fatal (the producer is fenced
/// or broken for good).
fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

/// Calls a transactional producer API, retrying retriable errors a few
/// times. Fatal errors become [`FatalProducerError`]; the others (abort
/// required, retries exhausted) are returned for the caller to abort.
fn txn_call(what: &str, mut f: impl FnMut() -> Result<(), KafkaError>) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        match f() {
            Ok(()) => return Ok(()),
            Err(e) if is_fatal(&e) => {
                return Err(FatalProducerError(format!("{what}: {e}")).into());
            }
            Err(KafkaError::Transaction(t)) if t.is_retriable() && attempt < 5 => {
                attempt += 1;
                warn!(error = %t, attempt, "retrying the transaction's {what}");
                std::thread::sleep(Duration::from_millis(100 << attempt));
            }
            Err(e) => return Err(anyhow!("transaction {what}: {e}")),
        }
    }
}

/// The key, value and headers of a consumed record, for its dead letter.
pub fn raw_input(m: &BorrowedMessage<'_>) -> RawInput {
    RawInput {
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Header of a dead letter whose value was cut to the size limit: the
/// original value's length in bytes.
pub const DLQ_TRUNCATED_HEADER: &str = "siklus.truncated";

/// Header of every transition record: its dimension.
pub const DIMENSION_HEADER: &str = "siklus.dimension";
/// Header of every transition record: the stage it enters.
pub const TO_STAGE_HEADER: &str = "siklus.to_stage";
/// Header of every transition record: the rule that fired.
pub const RULE_HEADER: &str = "siklus.rule";
/// Header of every transition record: its deterministic id.
pub const TRANSITION_ID_HEADER: &str = "siklus.transition_id";

/// The routing headers of a transition record.
pub fn transition_headers(t: &StageTransition) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: DIMENSION_HEADER,
            value: Some(t.dimension.as_str().as_bytes()),
        })
        .insert(Header {
            key: TO_STAGE_HEADER,
            value: Some(t.to_stage.as_bytes()),
        })
        .insert(Header {
            key: RULE_HEADER,
            value: Some(t.rule.as_bytes()),
        })
        .insert(Header {
            key: TRANSITION_ID_HEADER,
            value: Some(t.transition_id.as_bytes()),
        })
}

/// Whether `outputs.transition_stages` lets a stage through (empty: all).
pub fn stage_selected(stages: &[String], stage: &str) -> bool {
    stages.is_empty() || stages.iter().any(|s| s == stage)
}

/// A producer error that no retry or abort can cure (fenced by a newer
/// instance, or a fatal idempotence error): the process must stop.
#[derive(Debug, thiserror::Error)]
#[error("fatal producer error: {0}")]
pub struct FatalProducerError(pub String);

/// The state of a step could not be written (a disk error): the instance
/// must stop without committing anything more.
#[derive(Debug, thiserror::Error)]
#[error("the state write failed, stopping without committing: {0}")]
pub struct StateWriteFailed(pub String);

/// Whether a step error must stop the instance: a fatal producer error (a
/// fenced instance) or a failed state write. Any other error aborts the
/// step, which is redone from the stored offsets.
pub fn is_fatal_step_error(e: &anyhow::Error) -> bool {
    e.is::<FatalProducerError>() || e.is::<StateWriteFailed>()
}

/// Sends outputs and waits for their acknowledgement.
pub struct OutputSink {
    /// Step outputs and changelog records (transactional under exactly-once).
    producer: ThreadedProducer<DeliveryContext>,
    /// Under exactly-once: the merge stage's outputs and the instance
    /// directory, which live outside the step transactions.
    side: Option<ThreadedProducer<DeliveryContext>>,
    changelog_topic: String,
    encoder: TransitionEncoder,
    transitions_topic: String,
    /// Segment-style audience events, when turned on.
    segment_topic: Option<String>,
    /// `outputs.transition_stages`: the stages told to the segment topic
    /// (empty: every stage).
    segment_stages: Vec<String>,
    partials_topic: String,
    aggregates_topic: String,
    cohorts_topic: String,
    dlq_topic: String,
    input_topic: String,
    flush_timeout: Duration,
    /// `processor.dlq_max_value_bytes`.
    dlq_max_value_bytes: usize,
    /// Dead letters whose value was cut to that size, since start.
    dlq_truncated: AtomicU64,
}

impl OutputSink {
    /// An at-least-once sink for the configured topics.
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        Self::with_transactional_id(cfg, None)
    }

    /// A sink for `siklus run`: transactional, with `transactional.id`
    /// `siklus.<group>.<instance>`, when `processing.guarantee` is
    /// `exactly_once`. A restarted instance with the same id fences its
    /// previous incarnation and aborts its open transaction.
    pub fn for_run(cfg: &Config, instance: &str) -> anyhow::Result<Self> {
        match cfg.processing.guarantee {
            Guarantee::AtLeastOnce => Self::new(cfg),
            Guarantee::ExactlyOnce => Self::with_transactional_id(
                cfg,
                Some(format!("siklus.{}.{instance}", cfg.processor.group_id)),
            ),
        }
    }

    fn with_transactional_id(cfg: &Config, txn_id: Option<String>) -> anyhow::Result<Self> {
        let producer_config = || {
            let mut c = client_config(cfg);
            // Idempotence keeps each partition's output in order across retries.
            if !cfg.kafka.contains_key("enable.idempotence") {
                c.set("enable.idempotence", "true");
            }
            if !cfg.kafka.contains_key("linger.ms") {
                c.set("linger.ms", "5");
            }
            c
        };
        let mut c = producer_config();
        let mut side = None;
        if let Some(id) = &txn_id {
            c.set("transactional.id", id);
            // An instance that dies in a transaction and comes back with
            // another id (its state directory lost) leaves that transaction
            // open until this timeout, and `read_committed` readers of its
            // output partitions wait for it. Kafka Streams uses 10 s too.
            if !cfg.kafka.contains_key("transaction.timeout.ms") {
                c.set("transaction.timeout.ms", "10000");
            }
            side = Some(
                producer_config()
                    .create_with_context(DeliveryContext::new(cfg))
                    .context("creating the side producer")?,
            );
        }
        let producer: ThreadedProducer<DeliveryContext> = c
            .create_with_context(DeliveryContext::new(cfg))
            .context("creating the output producer")?;
        if let Some(id) = &txn_id {
            producer
                .init_transactions(Duration::from_secs(60))
                .with_context(|| format!("initialising transactions (transactional.id {id})"))?;
            info!(transactional_id = %id, "exactly-once outputs");
        }
        Ok(OutputSink {
            producer,
            side,
            changelog_topic: cfg.changelog_topic(),
            encoder: TransitionEncoder::new(
                cfg.processor.output_format,
                transitions_schema_id(cfg)?,
            )?
            .with_snapshot(cfg.outputs.snapshot == crate::config::SnapshotMode::Full),
            transitions_topic: cfg.topics.transitions.clone(),
            segment_topic: (!cfg.topics.segment.is_empty()).then(|| cfg.topics.segment.clone()),
            segment_stages: cfg.outputs.transition_stages.clone(),
            partials_topic: cfg.partials_topic(),
            aggregates_topic: cfg.topics.aggregates.clone(),
            cohorts_topic: cfg.topics.cohorts.clone(),
            dlq_topic: cfg.topics.dlq.clone(),
            input_topic: cfg.topics.input.clone(),
            dlq_max_value_bytes: cfg.processor.dlq_max_value_bytes,
            dlq_truncated: AtomicU64::new(0),
            flush_timeout: Duration::from_secs(60),
        })
    }

    /// Dead letters whose value was cut to `processor.dlq_max_value_bytes`
    /// since start.
    pub fn truncated_dead_letters(&self) -> u64 {
        self.dlq_truncated.load(Ordering::Relaxed)
    }

    /// Records skipped by the production error policy since start.
    pub fn skipped_records(&self) -> u64 {
        self.producer.context().skipped.load(Ordering::Relaxed)
            + self
                .side
                .as_ref()
                .map_or(0, |s| s.context().skipped.load(Ordering::Relaxed))
    }

    /// Whether step outputs go out in transactions.
    pub fn transactional(&self) -> bool {
        self.side.is_some()
    }

    fn side(&self) -> &ThreadedProducer<DeliveryContext> {
        self.side.as_ref().unwrap_or(&self.producer)
    }

    fn send(&self, topic: &str, key: &[u8], payload: &[u8], headers: Option<OwnedHeaders>) {
        self.send_record(topic, Some(key), Some(payload), headers);
    }

    fn send_record(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) {
        self.produce(&self.producer, topic, None, key, payload, headers);
    }

    /// Sends a transition: keyed by its customer, stamped with its event
    /// time, with the routing headers, so a consumer can filter on
    /// `(dimension, to_stage)` without decoding the value.
    fn send_transition(&self, t: &StageTransition, payload: &[u8]) {
        let h = transition_headers(t);
        let mut record = BaseRecord::<[u8], [u8], ()>::to(&self.transitions_topic)
            .key(t.customer_id.as_bytes())
            .payload(payload)
            .headers(h);
        // The event time, unless it lies ahead of the wall clock (a timer
        // fired by an end time in the future): brokers refuse timestamps
        // more than `log.message.timestamp.after.max.ms` (an hour, by
        // default on Kafka 4) ahead of their clock; the record then gets
        // the produce time.
        if (0..=crate::wall_clock_ms()).contains(&t.occurred_at) {
            record = record.timestamp(t.occurred_at);
        }
        self.produce_record(&self.producer, record);
    }

    /// Sends a step's changelog records, each to the partition of its input
    /// partition, with the step's next input offset as a header.
    fn send_changelog(&self, log: &[ChangeRecord]) {
        for r in log {
            let next = r.input_next.to_string();
            let h = OwnedHeaders::new().insert(Header {
                key: INPUT_OFFSET_HEADER,
                value: Some(next.as_bytes()),
            });
            self.produce(
                &self.producer,
                &self.changelog_topic,
                Some(r.partition as i32),
                Some(&r.key),
                r.value.as_deref(),
                Some(h),
            );
        }
    }

    /// Per changelog partition, one past the last offset delivered since
    /// the last call.
    fn take_changelog_positions(&self) -> BTreeMap<i32, i64> {
        std::mem::take(&mut *lock(&self.producer.context().changelog_next))
    }

    /// Produces one record, waiting on backpressure (QueueFull) rather than
    /// buffering without bound; any other error is counted as a failed
    /// delivery, which fails the step's flush.
    fn produce(
        &self,
        producer: &ThreadedProducer<DeliveryContext>,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) {
        let mut record = BaseRecord::<[u8], [u8], ()>::to(topic);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        self.produce_record(producer, record);
    }

    /// Produces a built record, waiting on backpressure (QueueFull); any
    /// other error is counted as a failed delivery.
    fn produce_record<'a>(
        &self,
        producer: &ThreadedProducer<DeliveryContext>,
        mut record: BaseRecord<'a, [u8], [u8], ()>,
    ) {
        let topic = record.topic;
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    producer.context().failed(topic, &e);
                    return;
                }
            }
        }
    }

    /// Publishes this instance's record to the instances topic (delivered
    /// with the next flush; a lost one is sent again within
    /// [`crate::instances::REPUBLISH`]).
    fn publish_instance(&self, topic: &str, http: &str, partitions: &[u32], merge: bool) {
        let record = crate::instances::InstanceRecord {
            http: http.to_string(),
            partitions: partitions.to_vec(),
            merge,
            updated_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        };
        match serde_json::to_vec(&record) {
            Ok(v) => self.produce(
                self.side(),
                topic,
                None,
                Some(http.as_bytes()),
                Some(&v),
                None,
            ),
            Err(e) => warn!(error = %e, "instance record"),
        }
    }

    fn send_outputs(&self, out: &Outputs) -> anyhow::Result<()> {
        for t in &out.transitions {
            let payload = self.encoder.encode(t)?;
            self.send_transition(t, &payload);
            if let Some(topic) = &self.segment_topic {
                // Each audience event by its own stage: leaving a selected
                // stage for an unselected one still says `Audience Exited`.
                for e in crate::segment::audience_events(t) {
                    if stage_selected(&self.segment_stages, &e.properties.stage) {
                        self.send(topic, t.customer_id.as_bytes(), &e.to_json(), None);
                    }
                }
            }
        }
        for p in &out.partials {
            self.send(&self.partials_topic, p.key().as_bytes(), &p.encode(), None);
        }
        for dl in &out.dead_letters {
            let r = &dl.record;
            let mut h = OwnedHeaders::new();
            for (k, v) in &r.headers {
                h = h.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            let part = dl.partition.to_string();
            let off = dl.offset.to_string();
            h = h
                .insert(Header {
                    key: "siklus.error",
                    value: Some(dl.reason.as_bytes()),
                })
                .insert(Header {
                    key: "siklus.error.kind",
                    value: Some(dl.kind.as_bytes()),
                })
                .insert(Header {
                    key: "siklus.source.topic",
                    value: Some(self.input_topic.as_bytes()),
                })
                .insert(Header {
                    key: "siklus.source.partition",
                    value: Some(part.as_bytes()),
                })
                .insert(Header {
                    key: "siklus.source.offset",
                    value: Some(off.as_bytes()),
                });
            let mut payload = r.payload.as_deref();
            if let Some(p) = payload.filter(|p| p.len() > self.dlq_max_value_bytes) {
                // A value the broker would refuse: keep its head, and say so.
                let len = p.len().to_string();
                h = h.insert(Header {
                    key: DLQ_TRUNCATED_HEADER,
                    value: Some(len.as_bytes()),
                });
                payload = Some(&p[..self.dlq_max_value_bytes]);
                self.dlq_truncated.fetch_add(1, Ordering::Relaxed);
            }
            self.send_record(&self.dlq_topic, r.key.as_deref(), payload, Some(h));
        }
        Ok(())
    }

    fn send_aggregates(&self, aggs: &[Aggregate], cells: &[CohortCell]) -> anyhow::Result<()> {
        for a in aggs {
            self.produce(
                self.side(),
                &self.aggregates_topic,
                None,
                Some(a.key().as_bytes()),
                Some(&serde_json::to_vec(a)?),
                None,
            );
        }
        for c in cells {
            self.produce(
                self.side(),
                &self.cohorts_topic,
                None,
                Some(c.key().as_bytes()),
                Some(&serde_json::to_vec(c)?),
                None,
            );
        }
        Ok(())
    }

    /// Sends a replay step (transitions, dead letters with their original
    /// key and value, closed windows) and waits for the acknowledgements.
    pub fn send_replay(
        &self,
        out: &Outputs,
        aggs: &[Aggregate],
        cells: &[CohortCell],
    ) -> anyhow::Result<()> {
        self.send_outputs(out)?;
        self.send_aggregates(aggs, cells)?;
        self.flush()?;
        self.flush_side()
    }

    /// Waits until everything sent was acknowledged; fails if anything was not.
    fn flush(&self) -> anyhow::Result<()> {
        self.flush_producer(&self.producer)
    }

    /// [`OutputSink::flush`] of the merge stage's and directory's producer.
    fn flush_side(&self) -> anyhow::Result<()> {
        match &self.side {
            Some(p) => self.flush_producer(p),
            None => Ok(()),
        }
    }

    fn flush_producer(&self, producer: &ThreadedProducer<DeliveryContext>) -> anyhow::Result<()> {
        self.flush_within(producer, self.flush_timeout)
    }

    fn flush_within(
        &self,
        producer: &ThreadedProducer<DeliveryContext>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let flushed = producer.flush(timeout);
        let failures = producer.context().failures.swap(0, Ordering::Relaxed);
        let permanent = producer.context().permanent.swap(0, Ordering::Relaxed);
        let first = lock(&producer.context().first_error).take();
        if permanent > 0 {
            return Err(FatalProducerError(format!(
                "{permanent} output records can never be accepted by the broker (first: {}); \
                 stopping (processor.production_error_policy = \"fail\"; \"skip\" skips such records)",
                first.unwrap_or_default()
            ))
            .into());
        }
        if let Err(e) = flushed {
            bail!("output flush failed: {e}");
        }
        if failures > 0 {
            bail!(
                "{failures} output records were not delivered (first error: {})",
                first.unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// Everything the processing thread and the rebalance callback share.
struct Worker {
    engine: Engine,
    sink: Arc<OutputSink>,
    out: Outputs,
    input_topic: String,
    /// A step was discarded inside a rebalance callback (its delivery
    /// failed during a revoke): the partitions this instance keeps were
    /// rolled back to their stored offsets, but the consumer's positions
    /// were not. The poll loop seeks them back before it applies anything.
    needs_rewind: bool,
    /// Steps failed in a row (outputs not delivered): not ready meanwhile,
    /// and each retry waits longer.
    failing_steps: u32,
    /// Last watermark announced per partition to the merge stage.
    announced: BTreeMap<u32, i64>,
    metrics: Arc<Metrics>,
    /// Steps delivered so far.
    steps: u64,
    /// Partitions assigned without local state, being rebuilt from the
    /// input: the end offset they had when assigned (`None` until probed).
    restoring: BTreeMap<u32, Option<i64>>,
    /// Fault injection for the crash tests: abort the process after this many
    /// steps, with the outputs delivered and the state not yet written
    /// (`SIKLUS_FAULT_ABORT_AFTER_STEPS`).
    abort_after_steps: Option<u64>,
    /// Whether state changes go to the changelog.
    changelog: bool,
    /// Partitions assigned and paused until their restore from the
    /// changelog ends (not yet in the engine).
    restores: Option<Restores>,
    /// Changelog records applied by restores so far.
    restored_records: u64,
    /// Set while a revoke delivers the last step: how long it may take.
    revoke_budget: Option<Duration>,
    /// The budget of a revoke (`session.timeout.ms`).
    revoke_timeout: Duration,
    /// When the restores running now began.
    restore_began: Option<Instant>,
    /// Seconds the restores of this run took (first start to last end).
    restore_secs: f64,
}

impl Worker {
    /// Delivers the step's outputs, then writes its state and offsets, then
    /// commits the offsets to the group.
    /// Fires the timers a jump of event time left due, a chunk of
    /// customers per step, committing each (bounded memory per step).
    fn fire_due_timers(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
    ) -> anyhow::Result<()> {
        while self.engine.timers_due() {
            let mut out = std::mem::take(&mut self.out);
            let fired = self.engine.fire_due_timers(&mut out);
            self.out = out;
            fired?;
            self.commit_step(consumer)?;
        }
        Ok(())
    }

    fn commit_step(&mut self, consumer: &BaseConsumer<impl ConsumerContext>) -> anyhow::Result<()> {
        // Announce watermark progress to the merge stage (heartbeats that let
        // it close windows and detect idle partitions).
        for p in self.engine.assigned() {
            if let Some(wm) = self.engine.clock(p).and_then(|c| c.watermark) {
                if self.announced.get(&p) != Some(&wm) {
                    self.out.partials.push(Partial::Progress {
                        partition: p,
                        watermark: wm,
                    });
                    self.announced.insert(p, wm);
                }
            }
        }
        if self.out.is_empty() && self.engine.step_size() == 0 {
            return self.commit_offsets(consumer, CommitMode::Async);
        }
        let mut log = Vec::new();
        let mut batch = match self
            .engine
            .prepare_commit(Batch::new(), self.changelog.then_some(&mut log))
        {
            Ok(b) => b,
            Err(e) => {
                self.discard_step()?;
                return Err(anyhow!("preparing the step's state: {e}"));
            }
        };
        let delivered = if self.sink.transactional() {
            self.deliver_transaction(&log, consumer)
        } else {
            self.sink.send_outputs(&self.out).and_then(|()| {
                self.sink.send_changelog(&log);
                self.sink
                    .flush_within(&self.sink.producer, self.delivery_budget())
            })
        };
        if let Err(e) = delivered {
            if !is_fatal_step_error(&e) {
                // Nothing of the step is written: it is redone from the stored offsets.
                self.discard_step()?;
            }
            return Err(e);
        }
        for (p, next) in self.sink.take_changelog_positions() {
            batch.put_meta(p as u32, META_CHANGELOG_NEXT, &next.to_be_bytes());
        }
        self.metrics.count_transitions(&self.out.transitions);
        self.metrics
            .production_skipped
            .store(self.sink.skipped_records(), Ordering::Relaxed);
        self.metrics
            .dead_letters_truncated
            .store(self.sink.truncated_dead_letters(), Ordering::Relaxed);
        self.steps += 1;
        if self.abort_after_steps.is_some_and(|n| self.steps >= n) {
            tracing::error!(
                steps = self.steps,
                "fault injection: aborting before the state write"
            );
            std::process::abort();
        }
        self.out.clear();
        // A failed state write is fatal (fail-stop, as Kafka Streams does):
        // the step's outputs are out but its state and offsets are not, and
        // the engine's memory already counts the step as written. Stopping
        // here commits nothing; the restarted instance redoes the step from
        // the stored offsets, with the same transition ids.
        if let Err(e) = self.engine.write_commit(batch) {
            return Err(StateWriteFailed(e.to_string()).into());
        }
        self.commit_offsets(consumer, CommitMode::Async)
    }

    /// How long the step's delivery may take: the flush timeout, or during a
    /// revoke the revoke budget (the partitions must be let go in time; an
    /// undelivered step is redone by their next owner).
    fn delivery_budget(&self) -> Duration {
        self.revoke_budget
            .unwrap_or(self.sink.flush_timeout)
            .min(self.sink.flush_timeout)
    }

    /// Drops the step in progress: nothing of it is written, and it is
    /// redone from the stored offsets.
    fn discard_step(&mut self) -> anyhow::Result<()> {
        self.out.clear();
        self.announced.clear();
        self.sink.take_changelog_positions();
        self.engine.rollback()?;
        Ok(())
    }

    /// The next input offset of every assigned partition.
    fn next_offsets(&self) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for p in self.engine.assigned() {
            if let Some(next) = self.engine.next_offset(p) {
                tpl.add_partition_offset(&self.input_topic, p as i32, Offset::Offset(next))?;
            }
        }
        Ok(tpl)
    }

    /// Sends the step's outputs, its changelog records and the input
    /// offsets in one transaction. Retriable errors are retried; an error
    /// that requires an abort aborts (the step is then redone); a fatal one
    /// (fenced by a newer instance) is a [`FatalProducerError`].
    fn deliver_transaction(
        &self,
        log: &[ChangeRecord],
        consumer: &BaseConsumer<impl ConsumerContext>,
    ) -> anyhow::Result<()> {
        let producer = &self.sink.producer;
        let timeout = self.delivery_budget();
        txn_call("begin", || producer.begin_transaction())?;
        let sent = self.sink.send_outputs(&self.out);
        self.sink.send_changelog(log);
        let offsets = self.next_offsets()?;
        let result = sent.and_then(|()| {
            let group = consumer
                .group_metadata()
                .ok_or_else(|| anyhow!("no consumer group metadata for the transaction"))?;
            if offsets.count() > 0 {
                txn_call("send offsets", || {
                    producer.send_offsets_to_transaction(&offsets, &group, timeout)
                })?;
            }
            txn_call("commit", || producer.commit_transaction(timeout))
        });
        let failures = producer.context().failures.swap(0, Ordering::Relaxed);
        let first = lock(&producer.context().first_error).take();
        match result {
            Ok(()) if failures == 0 => Ok(()),
            Ok(()) => Err(anyhow!(
                "{failures} records of a committed transaction failed (first error: {})",
                first.unwrap_or_default()
            )),
            Err(e) if e.is::<FatalProducerError>() => Err(e),
            Err(e) => {
                if let Err(a) = producer.abort_transaction(timeout) {
                    if a.rdkafka_error_code().is_some() && is_fatal(&a) {
                        return Err(FatalProducerError(format!("abort: {a}")).into());
                    }
                    warn!(error = %a, "transaction abort failed");
                }
                Err(e)
            }
        }
    }

    /// Commits the next input offsets to the group.
    fn commit_offsets(
        &self,
        consumer: &BaseConsumer<impl ConsumerContext>,
        mode: CommitMode,
    ) -> anyhow::Result<()> {
        if self.sink.transactional() {
            // They are committed in each step's transaction.
            return Ok(());
        }
        let tpl = self.next_offsets()?;
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, mode) {
                // The restore of a new owner reads only steps covered by the
                // committed offset; a failed commit only means more steps to redo.
                debug!(error = %e, "group offset commit failed");
            }
        }
        Ok(())
    }

    /// Seeks every assigned partition back to its stored offset (after a failed step).
    fn rewind(&self, consumer: &BaseConsumer<impl ConsumerContext>, rewind: i64) {
        for p in self.engine.assigned() {
            let off = start_offset(self.engine.next_offset(p), rewind);
            if let Err(e) = consumer.seek(&self.input_topic, p as i32, off, Duration::from_secs(10))
            {
                warn!(partition = p, error = %e, "seek after a failed step");
            }
        }
    }
}

/// Consumer context of the input: starts partitions at their stored offsets
/// and commits the in-flight step before a partition is revoked.
struct InputContext {
    worker: Arc<Mutex<Worker>>,
    topic: String,
    failed: AtomicBool,
    rewind: i64,
    metrics: Arc<Metrics>,
}

/// Where to start reading a partition whose state ends at `next`.
fn start_offset(next: Option<i64>, rewind: i64) -> Offset {
    match next {
        None => Offset::Beginning,
        Some(n) if rewind > 0 => {
            if n - rewind <= 0 {
                Offset::Beginning
            } else {
                Offset::Offset(n - rewind)
            }
        }
        Some(n) => Offset::Offset(n),
    }
}

impl ClientContext for InputContext {
    /// librdkafka's statistics carry each partition's high watermark (for
    /// the consumer lag) without a request of their own.
    fn stats(&self, stats: rdkafka::Statistics) {
        if let Some(t) = stats.topics.get(&self.topic) {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.hi_offset >= 0 {
                    self.metrics
                        .with_partition(*p as u32, |f| f.high_watermark = s.hi_offset);
                }
            }
        }
        // The connection to the cluster: any broker (not a bootstrap
        // address, whose node id is -1) up.
        let up = stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        let was_down = self.metrics.brokers_down.swap(!up, Ordering::Relaxed);
        if was_down && up {
            info!("connected to the Kafka cluster again");
        }
    }

    /// librdkafka's global errors. All brokers down makes the instance not
    /// ready until its statistics show a broker up again; librdkafka keeps
    /// reconnecting meanwhile, and the run goes on.
    fn error(&self, error: KafkaError, reason: &str) {
        let all_down = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        );
        if all_down {
            self.metrics.brokers_down.store(true, Ordering::Relaxed);
            self.metrics.ready.store(false, Ordering::Relaxed);
            warn!(%reason, "no Kafka broker reachable; not ready, reconnecting");
        } else {
            warn!(error = %error, %reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for InputContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut w = lock(&self.worker);
                let parts: Vec<i32> = tpl
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.topic)
                    .map(|e| e.partition())
                    .collect();
                let mut paused = TopicPartitionList::new();
                for p in parts {
                    if w.engine.assigned().contains(&(p as u32)) {
                        // Assigned again without a revoke in between (after a
                        // rebalance error): what the engine holds may be stale.
                        w.engine.revoke(p as u32);
                    }
                    let stored = w.engine.store().offset(p as u32).ok().flatten();
                    if let Some(restores) = w.restores.as_mut() {
                        // Paused until its state caught up with the changelog.
                        let off = start_offset(stored, self.rewind);
                        restores.add(p as u32, off);
                        if let Err(e) = tpl.set_partition_offset(&self.topic, p, off) {
                            warn!(partition = p, error = %e, "cannot set start offset");
                        }
                        paused.add_partition(&self.topic, p);
                        w.metrics.with_partition(p as u32, |f| f.assigned = true);
                        info!(
                            partition = p,
                            "checking the changelog of a newly assigned partition"
                        );
                        continue;
                    }
                    if let Err(e) = w.engine.assign(p as u32) {
                        warn!(partition = p, error = %e, "cannot load partition state");
                        self.failed.store(true, Ordering::SeqCst);
                        continue;
                    }
                    let next = w.engine.next_offset(p as u32);
                    if next.is_none() {
                        // No local state: it is rebuilt from the input.
                        w.restoring.insert(p as u32, None);
                    }
                    let off = start_offset(next, self.rewind);
                    if let Err(e) = tpl.set_partition_offset(&self.topic, p, off) {
                        warn!(partition = p, error = %e, "cannot set start offset");
                    }
                    w.metrics.with_partition(p as u32, |f| f.assigned = true);
                    info!(partition = p, offset = ?off, "partition assigned");
                }
                w.metrics
                    .assigned
                    .store(w.engine.assigned().len() as u64, Ordering::Relaxed);
                drop(w);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    warn!(error = %e, "assign failed");
                }
                if paused.count() > 0 {
                    if let Err(e) = consumer.pause(&paused) {
                        warn!(error = %e, "cannot pause partitions for their restore");
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut w = lock(&self.worker);
                w.revoke_budget = Some(w.revoke_timeout);
                let in_flight = w.engine.step_size();
                let committed = if in_flight > 0 && crate::faults::revoke_delivery_fails() {
                    // As a delivery that timed out: the step is discarded.
                    w.discard_step()
                        .and_then(|()| Err(anyhow!("injected delivery failure during a revoke")))
                } else {
                    w.commit_step(consumer)
                };
                w.revoke_budget = None;
                match committed {
                    Ok(()) => {
                        // The new owner restores up to the committed offset:
                        // commit it now, not in the background.
                        let _ = w.commit_offsets(consumer, CommitMode::Sync);
                    }
                    Err(e) => {
                        if is_fatal_step_error(&e) {
                            self.failed.store(true, Ordering::SeqCst);
                        }
                        // The partitions go uncommitted; their new owner redoes the step.
                        // The step was rolled back for the kept partitions too: they
                        // must be read again from their stored offsets.
                        w.needs_rewind = true;
                        w.metrics.failed_steps.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, records = in_flight, "could not commit before revoke");
                    }
                }
                for e in tpl.elements() {
                    let p = e.partition() as u32;
                    if let Some(r) = w.restores.as_mut() {
                        r.remove(p);
                    }
                    w.engine.revoke(p);
                    w.announced.remove(&p);
                    w.restoring.remove(&p);
                    w.metrics.with_partition(p, |f| {
                        f.assigned = false;
                        f.restore_remaining = 0;
                    });
                    info!(partition = e.partition(), "partition revoked");
                }
                w.metrics
                    .assigned
                    .store(w.engine.assigned().len() as u64, Ordering::Relaxed);
                drop(w);
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    warn!(error = %e, "unassign failed");
                }
            }
            other => {
                warn!(error = ?other, "rebalance error");
                // Nothing is owned any more: keep what is committed, drop the rest.
                let mut w = lock(&self.worker);
                if let Err(e) = w.commit_step(consumer) {
                    warn!(error = %e, "could not commit after a rebalance error");
                }
                for p in w.engine.assigned() {
                    w.engine.revoke(p);
                    w.announced.remove(&p);
                    w.restoring.remove(&p);
                }
                if let Some(r) = w.restores.as_mut() {
                    r.clear();
                }
                w.metrics.assigned.store(0, Ordering::Relaxed);
                drop(w);
                let _ = consumer.unassign();
            }
        }
    }
}

/// State of the merge stage while this instance owns the partials partition.
struct MergeState {
    merger: Merger,
    next_offset: i64,
    /// Last progress per input partition: watermark and when it last moved.
    progress: BTreeMap<u32, (i64, Instant)>,
}

struct MergeContext {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    state: Arc<Mutex<Option<MergeState>>>,
    partitions: u32,
    rewind: i64,
}

impl ClientContext for MergeContext {}

impl ConsumerContext for MergeContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let loaded = self.load();
                let off = start_offset(loaded.as_ref().map(|s| s.next_offset), self.rewind);
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                for (t, p) in parts {
                    let _ = tpl.set_partition_offset(&t, p, off);
                }
                *lock(&self.state) = Some(loaded.unwrap_or_else(|| MergeState {
                    merger: Merger::new(self.partitions),
                    next_offset: 0,
                    progress: BTreeMap::new(),
                }));
                self.metrics.set_latest(load_latest(&self.store));
                self.metrics.merge_owner.store(true, Ordering::Relaxed);
                info!(offset = ?off, "merge stage assigned");
                let _ = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Its state is already stored at the last delivered point.
                *lock(&self.state) = None;
                self.metrics.merge_owner.store(false, Ordering::Relaxed);
                info!("merge stage revoked");
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
            }
            _ => {
                let _ = consumer.unassign();
            }
        }
    }
}

/// Puts the merge stage back to its stored state and position, after a
/// failed merge step (nothing of it counts).
fn reset_merge(
    consumer: &BaseConsumer<MergeContext>,
    state: &Arc<Mutex<Option<MergeState>>>,
    rewind: i64,
) {
    let mut guard = lock(state);
    if guard.is_none() {
        return; // Not the merge owner.
    }
    let ctx = consumer.context();
    let loaded = ctx.load().unwrap_or_else(|| MergeState {
        merger: Merger::new(ctx.partitions),
        next_offset: 0,
        progress: BTreeMap::new(),
    });
    let off = start_offset(Some(loaded.next_offset), rewind);
    *guard = Some(loaded);
    drop(guard);
    if let Ok(assigned) = consumer.assignment() {
        for e in assigned.elements() {
            if let Err(err) = consumer.seek(e.topic(), e.partition(), off, Duration::from_secs(10))
            {
                warn!(error = %err, "merge stage: seek back failed");
            }
        }
    }
}

impl MergeContext {
    /// The stored merge state, or None to rebuild it from the start of
    /// the partials topic (none stored, or unreadable: said in the log).
    fn load(&self) -> Option<MergeState> {
        let unreadable = |what: &str| {
            warn!(
                reason = what,
                "stored merge state unreadable; rebuilding it from the partials topic"
            );
        };
        let bytes = match self.store.global(MERGE_STATE) {
            Ok(b) => b?,
            Err(e) => {
                unreadable(&e.to_string());
                return None;
            }
        };
        let off = self.store.global(MERGE_OFFSET).ok()??;
        let merger: Merger = match crate::persist::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                unreadable(&e.to_string());
                return None;
            }
        };
        let next_offset = i64::from_be_bytes(off.as_slice().try_into().ok()?);
        Some(MergeState {
            merger,
            next_offset,
            progress: BTreeMap::new(),
        })
    }
}

/// Runs the live job until shut down (or, with `stop_at_end`, until the input's end).
pub fn run(cfg: &Config, opts: RunOptions, metrics: Arc<Metrics>) -> anyhow::Result<RunSummary> {
    let partitions = ensure_topics(cfg)?;
    std::fs::create_dir_all(&cfg.processor.state_dir)
        .with_context(|| format!("creating {}", cfg.processor.state_dir.display()))?;
    let store = Arc::new(
        Store::open(&cfg.processor.state_dir, &cfg.store_options())
            .with_context(|| format!("opening state in {}", cfg.processor.state_dir.display()))?,
    );
    let _span = tracing::info_span!("run", group = %cfg.processor.group_id).entered();
    let stop_directory = Arc::new(AtomicBool::new(false));
    let mut advertised = None;
    let mut directory_reader = None;
    if !cfg.processor.http_listen.is_empty() {
        let directory = crate::instances::Directory::default();
        let bound = crate::http::spawn(
            &cfg.processor.http_listen,
            crate::http::AppState {
                metrics: metrics.clone(),
                store: store.clone(),
                rules: cfg.rules.clone(),
                partitioner: cfg.processor.key_partitioner,
                partitions: partitions as u32,
                directory: Some(directory.clone()),
                access: crate::http::Access::Closed,
            },
            |bound| crate::http::Access::new(&cfg.processor.http_token, bound),
        )?;
        advertised = crate::instances::advertised_address(cfg, bound);
        if advertised.is_none() {
            warn!("no advertised HTTP address (processor.advertised_http): other instances cannot redirect here");
        }
        directory_reader = Some(crate::instances::spawn_reader(
            cfg,
            directory,
            stop_directory.clone(),
        )?);
    }
    let instances_topic = cfg.instances_topic();
    let mut published: Option<(Vec<u32>, bool, Instant)> = None;
    let mut decoder = input_decoder(cfg)?;
    let sink = Arc::new(OutputSink::for_run(cfg, &instance_id(&store)?)?);
    let engine = Engine::new(store.clone(), cfg.engine(true));
    let worker = Arc::new(Mutex::new(Worker {
        engine,
        sink: sink.clone(),
        out: Outputs::default(),
        input_topic: cfg.topics.input.clone(),
        needs_rewind: false,
        failing_steps: 0,
        announced: BTreeMap::new(),
        metrics: metrics.clone(),
        steps: 0,
        restoring: BTreeMap::new(),
        abort_after_steps: std::env::var("SIKLUS_FAULT_ABORT_AFTER_STEPS")
            .ok()
            .and_then(|v| v.parse().ok()),
        changelog: cfg.processor.changelog,
        restores: if cfg.processor.changelog {
            Some(Restores::new(
                client_config(cfg),
                cfg.changelog_topic(),
                cfg.topics.input.clone(),
                cfg.processor.resume_rewind,
                cfg.processing.guarantee == Guarantee::ExactlyOnce,
                cfg.processor.standby_replicas.then_some(partitions as u32),
            )?)
        } else {
            None
        },
        restored_records: 0,
        revoke_budget: None,
        revoke_timeout: Duration::from_millis(
            cfg.kafka
                .get("session.timeout.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000),
        ),
        restore_began: None,
        restore_secs: 0.0,
    }));

    let mut cc = client_config(cfg);
    cc.set("group.id", &cfg.processor.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    for (k, v) in [
        ("auto.offset.reset", "earliest"),
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "1000"),
        // A fetch returns as soon as data arrives; when a partition is quiet the
        // broker holds it at most this long. librdkafka's 500 ms default put up
        // to 400 ms into every hop on a quiet topic (produce-to-transition latency).
        ("fetch.wait.max.ms", "20"),
        // High watermarks for the consumer lag metric.
        ("statistics.interval.ms", "5000"),
    ] {
        if !cfg.kafka.contains_key(k) {
            cc.set(k, v);
        }
    }
    let consumer: BaseConsumer<InputContext> = cc
        .create_with_context(InputContext {
            worker: worker.clone(),
            topic: cfg.topics.input.clone(),
            failed: AtomicBool::new(false),
            rewind: cfg.processor.resume_rewind,
            metrics: metrics.clone(),
        })
        .context("creating the input consumer")?;
    consumer.subscribe(&[&cfg.topics.input])?;

    let merge_state = Arc::new(Mutex::new(None));
    let mut mc = client_config(cfg);
    mc.set("group.id", format!("{}.merge", cfg.processor.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    if !cfg.kafka.contains_key("session.timeout.ms") {
        mc.set("session.timeout.ms", "10000");
    }
    let merge_consumer: BaseConsumer<MergeContext> = mc
        .create_with_context(MergeContext {
            store: store.clone(),
            metrics: metrics.clone(),
            state: merge_state.clone(),
            partitions: partitions as u32,
            rewind: cfg.processor.resume_rewind,
        })
        .context("creating the merge consumer")?;
    merge_consumer.subscribe(&[&cfg.partials_topic()])?;

    let ends: BTreeMap<u32, i64> = if opts.stop_at_end {
        // The high watermark of each partition, read by a consumer of its
        // own. On a broker that reports it below the true end (tansu 0.6,
        // configured with `resume_rewind` > 0) the last batch is probed, or
        // the run would end early, and the final watermark advance would
        // turn the records left into late events.
        let mut pc = client_config(cfg);
        pc.set("group.id", format!("{}.probe", cfg.processor.group_id))
            .set("enable.auto.commit", "false");
        let probe: BaseConsumer = pc.create().context("creating the end probe")?;
        crate::topic_replay::ends_at_start(
            &probe,
            &cfg.topics.input,
            partitions,
            cfg.processor.resume_rewind > 0,
        )?
        .into_iter()
        .map(|(p, e)| (p as u32, e))
        .collect()
    } else {
        BTreeMap::new()
    };

    let idle_timeout = Duration::from_millis(cfg.processor.idle_timeout_ms);
    let commit_interval = Duration::from_millis(cfg.processor.commit_interval_ms);
    let mut last_seen: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let mut summary = RunSummary::default();
    let mut ended = false;
    let mut end_deadline: Option<Instant> = None;
    // A broker that reports a high watermark below the true end of the log
    // (tansu 0.6, configured with `resume_rewind` > 0) also needs a quiet
    // period with no records before "caught up". Apache Kafka does not.
    let quiet = if cfg.processor.resume_rewind > 0 {
        Duration::from_millis(1_500)
    } else {
        Duration::ZERO
    };
    let mut last_input = Instant::now();
    let mut last_assigned: Vec<u32> = Vec::new();
    let mut last_merge_input = Instant::now();
    let mut first_input: Option<Instant> = None;
    let mut last_figures = Instant::now()
        .checked_sub(Duration::from_secs(60))
        .unwrap_or_else(Instant::now);

    loop {
        if opts.shutdown.load(Ordering::Relaxed) {
            info!("shutting down");
            break;
        }
        let restoring = {
            let mut w = lock(&worker);
            drive_restores(&mut w, &consumer, cfg)?;
            w.restores.as_ref().is_some_and(|r| !r.is_empty())
        };
        lock(&worker)
            .engine
            .set_wall_clock(Some(crate::wall_clock_ms()));
        // One step: up to max_batch records (no waiting for input while a
        // restore has work to do).
        let mut n = 0usize;
        let mut timeout = if restoring {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        let mut step_bytes = 0usize;
        while n < cfg.processor.max_batch && step_bytes < cfg.processor.max_batch_bytes {
            let Some(msg) = consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            {
                let mut w = lock(&worker);
                if w.needs_rewind {
                    // This record (and the rest of the kept partitions'
                    // positions) lies past what the rolled-back state holds:
                    // seek back and read it again.
                    w.needs_rewind = false;
                    w.rewind(&consumer, cfg.processor.resume_rewind);
                    break;
                }
            }
            match msg {
                Ok(m) => {
                    let mut w = lock(&worker);
                    let stop = || opts.shutdown.load(Ordering::Relaxed);
                    if !handle_message(&mut w, &mut decoder, &m, &stop)? {
                        // Shut down while waiting for the schema registry:
                        // the record stays unapplied and is read again on restart.
                        break;
                    }
                    n += 1;
                    step_bytes += m.payload_len() + m.key().map_or(0, <[u8]>::len);
                    last_seen.insert(m.partition() as u32, Instant::now());
                    if w.engine.timers_due() {
                        // A jump of event time with more timers due than a
                        // step holds: commit, then fire them in chunks.
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "consumer error");
                    metrics.consumer_errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        metrics
            .registry_retries
            .store(decoder.registry_retries(), Ordering::Relaxed);
        if n > 0 {
            last_input = Instant::now();
            first_input.get_or_insert(last_input);
        }
        {
            let mut w = lock(&worker);
            let input_topic = cfg.topics.input.as_str();
            advance_idle(&mut w, &mut last_seen, idle_timeout, |p| {
                consumer
                    .fetch_watermarks(input_topic, p as i32, Duration::from_secs(2))
                    .ok()
                    .map(|(_, high)| high)
            })?;
            if opts.stop_at_end && !ended {
                let assigned = w.engine.assigned();
                if assigned != last_assigned {
                    // New partitions have not been fetched yet: not quiet.
                    last_input = Instant::now();
                    last_assigned = assigned.clone();
                }
                let positions = crate::topic_replay::consumed_to(&consumer, &cfg.topics.input);
                let caught_up =
                    applied_to_ends(&w.engine, &ends, &positions) && last_input.elapsed() >= quiet;
                if caught_up {
                    if let Some(end) = opts.end_time {
                        let mut out = std::mem::take(&mut w.out);
                        for p in assigned {
                            w.engine.advance_in_chunks(p, end, &mut out)?;
                        }
                        w.out = out;
                    }
                    ended = true;
                    end_deadline = Some(Instant::now() + Duration::from_secs(30));
                }
            }
            if n > 0 || last_commit.elapsed() >= commit_interval || ended || w.engine.timers_due() {
                let _step = (n > 0).then(|| tracing::info_span!("step", records = n).entered());
                match w
                    .commit_step(&consumer)
                    .and_then(|()| w.fire_due_timers(&consumer))
                {
                    Ok(()) => w.failing_steps = 0,
                    Err(e) if is_fatal_step_error(&e) => return Err(e),
                    Err(e) => {
                        w.failing_steps = w.failing_steps.saturating_add(1);
                        let wait = step_retry_backoff(w.failing_steps);
                        warn!(
                            error = %e,
                            failures_in_a_row = w.failing_steps,
                            retry_in_ms = wait.as_millis() as u64,
                            "step failed; redoing it from the stored offsets"
                        );
                        metrics.failed_steps.fetch_add(1, Ordering::Relaxed);
                        metrics.ready.store(false, Ordering::Relaxed);
                        w.rewind(&consumer, cfg.processor.resume_rewind);
                        drop(w);
                        // Back off (a broker outage, a full queue): the
                        // consumer keeps its group membership meanwhile
                        // (librdkafka polls in the background for up to
                        // max.poll.interval.ms), and shutdown is honoured.
                        let until = Instant::now() + wait;
                        while Instant::now() < until && !opts.shutdown.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        w = lock(&worker);
                    }
                }
                last_commit = Instant::now();
            }
            if opts.stop_at_end && summary.processing_secs.is_none() {
                if let (true, Some(first)) = (
                    applied_to_ends(
                        &w.engine,
                        &ends,
                        &crate::topic_replay::consumed_to(&consumer, &cfg.topics.input),
                    ) && w.engine.step_size() == 0,
                    first_input,
                ) {
                    summary.processing_secs = Some(first.elapsed().as_secs_f64());
                }
            }
            if last_figures.elapsed() >= Duration::from_secs(1) {
                update_figures(&mut w, &consumer, input_topic);
                last_figures = Instant::now();
                if let Some(http) = &advertised {
                    let assigned = w.engine.assigned();
                    let merge = metrics.merge_owner.load(Ordering::Relaxed);
                    let stale = published.as_ref().is_none_or(|(a, m, at)| {
                        *a != assigned || *m != merge || at.elapsed() >= crate::instances::REPUBLISH
                    });
                    if stale {
                        sink.publish_instance(&instances_topic, http, &assigned, merge);
                        published = Some((assigned, merge, Instant::now()));
                    }
                }
            }
            summary.counters = w.engine.counters();
            summary.restored_records = w.restored_records;
            summary.restore_secs = (w.restore_secs > 0.0).then_some(w.restore_secs);
        }
        if consumer.context().failed.load(Ordering::SeqCst) {
            bail!(
                "stopping: a partition's state could not be loaded, or a step failed fatally \
                 during a rebalance (see the error logged above)"
            );
        }
        // The merge stage, when this instance owns it.
        let (got, aggs, cells) = match merge_step(
            &merge_consumer,
            &merge_state,
            &store,
            &sink,
            idle_timeout,
            &metrics,
        ) {
            Ok(r) => r,
            Err(e) => {
                // Undelivered aggregates or an unwritten merge state (a
                // broker outage): go back to what is stored and read the
                // partials again; the windows close again, with the same
                // content, once the broker is back.
                warn!(error = %e, "merge step failed; redoing it from the stored merge state");
                metrics.failed_steps.fetch_add(1, Ordering::Relaxed);
                reset_merge(&merge_consumer, &merge_state, cfg.processor.resume_rewind);
                (0, 0, 0)
            }
        };
        if got > 0 {
            last_merge_input = Instant::now();
        }
        summary.aggregates += aggs;
        summary.cohort_cells += cells;
        if ended {
            // Finish once the merge stage has read everything produced so far.
            let (_, high) = merge_consumer
                .fetch_watermarks(&cfg.partials_topic(), 0, Duration::from_secs(5))
                .unwrap_or((0, 0));
            let pos = lock(&merge_state).as_ref().map_or(-1, |s| s.next_offset);
            let drained = pos >= high && last_merge_input.elapsed() >= quiet;
            if drained || end_deadline.is_some_and(|d| Instant::now() > d) {
                break;
            }
        }
    }
    {
        let mut w = lock(&worker);
        match w.commit_step(&consumer) {
            // A new owner restores up to the committed offset: wait for it.
            Ok(()) => w.commit_offsets(&consumer, CommitMode::Sync)?,
            Err(e) => {
                warn!(error = %e, "final commit failed; the last step will be redone on restart")
            }
        }
        w.engine.store().flush()?;
        summary.counters = w.engine.counters();
    }
    merge_step(
        &merge_consumer,
        &merge_state,
        &store,
        &sink,
        idle_timeout,
        &metrics,
    )?;
    consumer.unsubscribe();
    merge_consumer.unsubscribe();
    metrics.ready.store(false, Ordering::Relaxed);
    metrics.set_counters(lock(&worker).engine.partition_counters());
    if let Some(http) = &advertised {
        // A tombstone: this instance owns nothing any more.
        sink.produce(
            sink.side(),
            &instances_topic,
            None,
            Some(http.as_bytes()),
            None,
            None,
        );
        if let Err(e) = sink.flush_producer(sink.side()) {
            warn!(error = %e, "could not withdraw this instance from the directory");
        }
    }
    stop_directory.store(true, Ordering::Relaxed);
    if let Some(h) = directory_reader {
        let _ = h.join();
    }
    Ok(summary)
}

/// Advances the restores from the changelog; partitions whose restore ended
/// join the engine and resume their input at the restored offset.
fn drive_restores(
    w: &mut Worker,
    consumer: &BaseConsumer<InputContext>,
    cfg: &Config,
) -> anyhow::Result<()> {
    let Some(mut restores) = w.restores.take() else {
        return Ok(());
    };
    let result = if restores.is_empty() && !restores.following() {
        Ok(Vec::new())
    } else {
        if !restores.is_empty() {
            w.restore_began.get_or_insert_with(Instant::now);
        }
        let store = w.engine.store().clone();
        let config = w.engine.config().clone();
        let owned = w.engine.assigned();
        restores.step(&store, &config, consumer, &w.metrics, &owned)
    };
    if restores.is_empty() {
        if let Some(began) = w.restore_began.take() {
            w.restore_secs += began.elapsed().as_secs_f64();
        }
    }
    w.restores = Some(restores);
    let finished = match result {
        Ok(f) => f,
        Err(e) => {
            // A broker outage (a watermark or offset fetch timing out): the
            // partitions stay paused and not ready; the next loop retries.
            w.metrics.consumer_errors.fetch_add(1, Ordering::Relaxed);
            w.metrics.ready.store(false, Ordering::Relaxed);
            warn!(error = %e, "restore step failed; retrying");
            return Ok(());
        }
    };
    for done in finished {
        w.restored_records += done.records;
        let p = done.partition;
        w.engine
            .assign(p)
            .with_context(|| format!("loading the restored state of partition {p}"))?;
        let next = w.engine.next_offset(p);
        if next.is_none() {
            // Nothing in the changelog either: rebuilt from the input.
            w.restoring.insert(p, None);
        }
        let start = start_offset(next, cfg.processor.resume_rewind);
        if start != done.input_start {
            if let Err(e) =
                consumer.seek(&cfg.topics.input, p as i32, start, Duration::from_secs(10))
            {
                warn!(partition = p, error = %e, "seek after the restore failed");
            }
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&cfg.topics.input, p as i32);
        consumer
            .resume(&tpl)
            .with_context(|| format!("resuming partition {p}"))?;
        info!(
            partition = p,
            offset = ?start,
            restored_records = done.records,
            "partition assigned"
        );
    }
    w.metrics
        .assigned
        .store(w.engine.assigned().len() as u64, Ordering::Relaxed);
    Ok(())
}

/// A stable id of this instance (of its state directory), for its
/// transactional id: created on first start and kept in the store.
fn instance_id(store: &Store) -> anyhow::Result<String> {
    const KEY: &str = "instance.id";
    if let Some(v) = store.global(KEY)? {
        return Ok(String::from_utf8_lossy(&v).into_owned());
    }
    let seed = format!(
        "{:?}{}{:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::env::var("HOSTNAME")
    );
    let id = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()));
    let mut b = Batch::new();
    b.put_global(KEY, id.as_bytes());
    store.write(b)?;
    Ok(id)
}

/// Whether every partition was applied up to its end. `positions`: the
/// consumer's position per partition. Records are applied as they are
/// polled, so a position at or past the end means the same, also when the
/// last offsets hold no record to apply (transaction markers, aborted
/// records).
fn applied_to_ends(
    engine: &Engine,
    ends: &BTreeMap<u32, i64>,
    positions: &BTreeMap<i32, i64>,
) -> bool {
    let assigned = engine.assigned();
    !assigned.is_empty()
        && assigned.len() == ends.len()
        && ends.iter().all(|(p, high)| {
            *high == 0
                || engine.next_offset(*p).is_some_and(|n| n >= *high)
                || positions.get(&(*p as i32)).is_some_and(|n| n >= high)
        })
}

/// Decodes and applies one record. Returns false, without applying it,
/// when `stop` turned true while its writer schema was being fetched from
/// an unreachable registry.
fn handle_message(
    w: &mut Worker,
    decoder: &mut Decoder,
    m: &BorrowedMessage<'_>,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<bool> {
    let partition = m.partition() as u32;
    let offset = m.offset();
    let restoring = w.restoring.contains_key(&partition);
    w.metrics.with_partition(partition, |f| {
        f.records_in += 1;
        if restoring {
            f.restored_records += 1;
        }
    });
    if w.engine.skip_if_applied(partition, offset) {
        return Ok(true);
    }
    if let Some(bytes) = m.payload() {
        if decoder.fetch_schema(bytes, stop).is_err() {
            return Ok(false);
        }
    }
    if let Some(next) = w.engine.next_offset(partition) {
        if offset > next {
            // Offsets with no record to deliver: transaction markers and
            // aborted records of a transactional producer (one per
            // transaction), or records removed by compaction or retention.
            // Normal on such topics, so counted rather than warned about.
            w.metrics
                .with_partition(partition, |f| f.offset_gaps += (offset - next) as u64);
            debug!(
                partition,
                expected = next,
                got = offset,
                "gap in input offsets"
            );
        }
    }
    let decoded = match m.payload() {
        None => Err(DecodeError::MissingField("value")),
        Some(bytes) => codec::check_record_key(m.key(), decoder.decode(bytes)),
    };
    let mut out = std::mem::take(&mut w.out);
    let r = w
        .engine
        .process_raw(partition, offset, decoded, |_| raw_input(m), &mut out);
    w.out = out;
    match r {
        Ok(()) => Ok(true),
        Err(EngineError::NotAssigned(p)) => {
            debug!(partition = p, "record of a partition no longer assigned");
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// Partitions with no records for the idle timeout, and no lag, follow the
/// slowest active partition of this instance, so they do not hold timers and
/// windows back forever. A partition that is only slow (it still has records
/// to read) is never treated as idle.
fn advance_idle(
    w: &mut Worker,
    last_seen: &mut BTreeMap<u32, Instant>,
    idle: Duration,
    high_watermark: impl Fn(u32) -> Option<i64>,
) -> anyhow::Result<()> {
    let assigned = w.engine.assigned();
    last_seen.retain(|p, _| assigned.contains(p));
    let mut idle_parts = Vec::new();
    let mut active = Vec::new();
    for p in &assigned {
        // A partition not heard from since it was assigned starts its idle
        // clock now: right after an assignment its records may not have been
        // fetched yet, and a high watermark reported below the true end (tansu
        // 0.6) would otherwise make it look idle and jump its watermark ahead
        // of its own records (firing timers early).
        let quiet = last_seen.entry(*p).or_insert_with(Instant::now).elapsed() >= idle;
        if !quiet {
            active.push(*p);
            continue;
        }
        let next = w.engine.next_offset(*p).unwrap_or(0);
        match high_watermark(*p) {
            Some(high) if next >= high => idle_parts.push(*p),
            _ => {
                // Lagging or unknown: not idle; look again after another timeout.
                last_seen.insert(*p, Instant::now());
                active.push(*p);
            }
        }
    }
    let active_min = active
        .iter()
        .filter_map(|p| w.engine.clock(*p).and_then(|c| c.watermark))
        .min();
    let Some(target) = active_min else {
        return Ok(());
    };
    let mut out = std::mem::take(&mut w.out);
    for p in idle_parts {
        w.engine.advance_in_chunks(p, target, &mut out)?;
    }
    w.out = out;
    Ok(())
}

fn merge_step(
    consumer: &BaseConsumer<MergeContext>,
    state: &Arc<Mutex<Option<MergeState>>>,
    store: &Store,
    sink: &OutputSink,
    idle: Duration,
    metrics: &Metrics,
) -> anyhow::Result<(u64, u64, u64)> {
    let mut got = 0u64;
    while got < 10_000 {
        let Some(msg) = consumer.poll(Duration::ZERO) else {
            break;
        };
        let m = match msg {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "merge consumer error");
                break;
            }
        };
        got += 1;
        let mut guard = lock(state);
        let Some(s) = guard.as_mut() else { continue };
        if m.offset() < s.next_offset {
            continue;
        }
        s.next_offset = m.offset() + 1;
        let Some(payload) = m.payload() else { continue };
        match Partial::decode(payload) {
            Ok(p) => {
                if let Partial::Progress {
                    partition,
                    watermark,
                } = &p
                {
                    let moved = s
                        .progress
                        .get(partition)
                        .is_none_or(|(w, _)| w != watermark);
                    if moved {
                        s.progress.insert(*partition, (*watermark, Instant::now()));
                        s.merger.set_idle(*partition, false);
                    }
                }
                s.merger.add(p);
            }
            Err(e) => warn!(offset = m.offset(), error = %e, "undecodable partial skipped"),
        }
    }
    let mut guard = lock(state);
    let Some(s) = guard.as_mut() else {
        return Ok((got, 0, 0));
    };
    // A partition whose watermark has not moved for the idle timeout, while
    // another's has, stops holding the job watermark back.
    let newest = s.progress.values().map(|(_, t)| *t).max();
    if let Some(newest) = newest {
        for (p, (_, t)) in &s.progress {
            if t.elapsed() >= idle && newest.duration_since(*t) >= idle / 2 {
                s.merger.set_idle(*p, true);
            }
        }
    }
    let mut aggs = Vec::new();
    let mut cells = Vec::new();
    s.merger.drain(&mut aggs, &mut cells);
    if got == 0 && aggs.is_empty() {
        return Ok((0, 0, 0));
    }
    let _span = (!aggs.is_empty()).then(|| {
        tracing::info_span!("merge", aggregates = aggs.len(), cohort_cells = cells.len()).entered()
    });
    sink.send_aggregates(&aggs, &cells)?;
    sink.flush_side()?;
    if !sink.transactional() {
        sink.flush()?;
    }
    let mut b = Batch::new();
    b.put_global(
        MERGE_STATE,
        &crate::persist::encode(&s.merger).map_err(|e| anyhow!("merge state: {e}"))?,
    );
    b.put_global(MERGE_OFFSET, &s.next_offset.to_be_bytes());
    if !aggs.is_empty() || !cells.is_empty() {
        metrics.absorb_windows(&aggs, &cells);
        let latest = metrics.latest();
        let stored = StoredLatest {
            aggregates: latest.aggregates.into_values().collect(),
            cohorts: latest.cohorts.into_values().collect(),
        };
        b.put_global(MERGE_LATEST, &serde_json::to_vec(&stored)?);
    }
    store.write(b)?;
    Ok((got, aggs.len() as u64, cells.len() as u64))
}
