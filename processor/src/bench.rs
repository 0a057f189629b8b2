//! Producing events into a topic (`siklus produce`), and the benchmark
//! helpers behind `siklus bench …`: write a generated workload as an Avro
//! container file, load it into a topic, and read a topic with a raw
//! consumer that does nothing else (the physical limit siklus is compared with).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::codec::registry::{value_subject, RegistryClient};
use crate::config::Config;
use crate::generator::{Generator, GeneratorConfig};
use crate::model::InteractionEvent;

/// Writes the generated events as an Avro container file (streaming).
pub fn write_avro(gen: GeneratorConfig, path: &Path) -> anyhow::Result<u64> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let schema = crate::codec::interaction_event_schema()?;
    let mut w = apache_avro::Writer::new(schema, std::io::BufWriter::new(file));
    let mut n = 0u64;
    for e in Generator::new(gen) {
        w.append(crate::codec::event_to_value(&e))
            .map_err(|err| anyhow::anyhow!("event {}: {err}", e.event_id))?;
        n += 1;
    }
    let mut inner = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    inner.flush()?;
    Ok(n)
}

/// How produced records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProduceFormat {
    /// One JSON object per record (what `processor.input_format = "auto"`
    /// or `"json"` reads).
    #[default]
    Json,
    /// Avro in the Confluent wire format: the schema id is the registry's
    /// id of `siklus.InteractionEvent` under `<topic>-value` when a Schema
    /// Registry is configured, else the built-in schema's id (1).
    Avro,
}

/// What `siklus produce` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProduceSummary {
    /// The topic written to.
    pub topic: String,
    /// Records delivered (acknowledged by the broker).
    pub records: u64,
    /// Input records skipped because they do not decode or validate.
    pub invalid: u64,
    /// Bytes of record values delivered.
    pub bytes: u64,
    /// Wall time, from the first record to the last acknowledgement.
    pub secs: f64,
    /// Records per second of wall time.
    pub records_per_sec: f64,
}

/// Counts the records the broker did not accept.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Throughput settings of the loading producers, which the `[kafka]`
/// section overrides.
fn producer_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4");
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c
}

/// Creates `topic` when the cluster does not have it (with
/// `processor.topic_partitions` and `processor.replication_factor`). Fails
/// within seconds when no broker answers.
pub fn ensure_topic(cfg: &Config, topic: &str) -> anyhow::Result<()> {
    let probe: BaseConsumer = crate::kafka::client_config(cfg)
        .create()
        .context("creating a metadata client")?;
    let md = probe
        .fetch_metadata(None, Duration::from_secs(10))
        .context("fetching cluster metadata")?;
    let exists = md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if exists {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = crate::kafka::client_config(cfg)
        .create()
        .context("creating the Kafka admin client")?;
    let new = NewTopic::new(
        topic,
        cfg.processor.topic_partitions,
        TopicReplication::Fixed(cfg.processor.replication_factor),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt
        .block_on(admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .with_context(|| format!("creating topic {topic}"))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The schema id to write in Avro records of `topic`: the registry's id of
/// the InteractionEvent schema under `<topic>-value` (registered when
/// `auto_register` is on), else the built-in one.
fn event_schema_id(cfg: &Config, topic: &str) -> anyhow::Result<u32> {
    if !cfg.schema_registry.enabled() {
        return Ok(crate::codec::DEFAULT_EVENT_SCHEMA_ID);
    }
    let client = RegistryClient::new(&cfg.schema_registry)?;
    let subject = value_subject(topic);
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = client.retrying(
        &|| Instant::now() >= deadline,
        |e, wait| {
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "schema registry unavailable; retrying")
        },
        |c| {
            if cfg.schema_registry.auto_register {
                c.register(&subject, crate::codec::INTERACTION_EVENT_AVSC)
            } else {
                c.lookup(&subject, crate::codec::INTERACTION_EVENT_AVSC)
            }
        },
    )?;
    Ok(id)
}

/// Produces `events` to `topic`, keyed by customer id, and waits for every
/// acknowledgement. Fails when a record is not delivered. Returns the
/// records and value bytes delivered, and the seconds it took.
pub fn produce_events(
    cfg: &Config,
    topic: &str,
    events: impl Iterator<Item = InteractionEvent>,
    format: ProduceFormat,
) -> anyhow::Result<(u64, u64, f64)> {
    let schema_id = match format {
        ProduceFormat::Json => 0,
        ProduceFormat::Avro => event_schema_id(cfg, topic)?,
    };
    let p: ThreadedProducer<Deliveries> = producer_config(cfg)
        .create_with_context(Deliveries::default())
        .context("creating the Kafka producer")?;
    let started = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    for e in events {
        let payload = match format {
            ProduceFormat::Avro => crate::codec::encode_event_avro_wire(&e, schema_id),
            ProduceFormat::Json => crate::codec::encode_event_json(&e),
        };
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic)
            .key(e.customer_id.as_bytes())
            .payload(&payload);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((err, r)) => {
                    if err.rdkafka_error_code() != Some(RDKafkaErrorCode::QueueFull) {
                        return Err(err).with_context(|| format!("producing to {topic}"));
                    }
                    rec = r;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
        n += 1;
        bytes += payload.len() as u64;
    }
    p.flush(Duration::from_secs(300))
        .with_context(|| format!("waiting for the broker to acknowledge {n} records"))?;
    let failed = p.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = p
            .context()
            .first_error
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_default();
        anyhow::bail!("{failed} of {n} records were not delivered to {topic}: {first}");
    }
    Ok((n, bytes, started.elapsed().as_secs_f64()))
}

/// `siklus produce`: the events of a JSONL or Avro container file (from
/// `siklus generate`, or exported) into `topic`, keyed by customer id.
/// Records that do not decode are skipped, counted and logged.
pub fn produce_file(
    cfg: &Config,
    input: &Path,
    topic: &str,
    format: ProduceFormat,
) -> anyhow::Result<ProduceSummary> {
    let records = crate::replay::read_input(input)?;
    ensure_topic(cfg, topic)?;
    let mut invalid = 0u64;
    let events = records.filter_map(|(i, decoded, _)| match decoded {
        Ok(e) => Some(e),
        Err(err) => {
            invalid += 1;
            if invalid <= 5 {
                tracing::warn!(record = i + 1, error = %err, "skipped: not a valid event");
            }
            None
        }
    });
    let (records, bytes, secs) = produce_events(cfg, topic, events, format)?;
    Ok(ProduceSummary {
        topic: topic.to_string(),
        records,
        invalid,
        bytes,
        secs,
        records_per_sec: (records as f64 / secs.max(1e-9)).round(),
    })
}

/// Produces the generated events (JSON or Avro wire format) to the input
/// topic, keyed by customer, after creating every topic siklus uses.
/// Returns the number of records.
pub fn load(cfg: &Config, gen: GeneratorConfig, avro: bool) -> anyhow::Result<u64> {
    crate::kafka::ensure_topics(cfg)?;
    let format = if avro {
        ProduceFormat::Avro
    } else {
        ProduceFormat::Json
    };
    let (n, _, _) = produce_events(cfg, &cfg.topics.input, Generator::new(gen), format)?;
    Ok(n)
}

/// Reads every partition of the input topic to its end with a consumer that
/// only counts: the ceiling for any processor of the same topic.
pub fn consume(cfg: &Config) -> anyhow::Result<(u64, f64)> {
    let topic = &cfg.topics.input;
    let c: BaseConsumer = crate::kafka::client_config(cfg)
        .set(
            "group.id",
            format!("siklus-bench-raw-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let ends = crate::topic_replay::ends_at_start(&c, topic, parts, false)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let started = Instant::now();
    let mut done: Vec<bool> = (0..parts)
        .map(|p| ends.get(&p).copied().unwrap_or(0) == 0)
        .collect();
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut last = Instant::now();
    while done.iter().any(|d| !d) {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            for (p, pos) in crate::topic_replay::consumed_to(&c, topic) {
                if ends.get(&p).is_some_and(|e| pos >= *e) {
                    if let Some(d) = done.get_mut(p as usize) {
                        *d = true;
                    }
                }
            }
            anyhow::ensure!(
                last.elapsed() < Duration::from_secs(60),
                "{topic}: no records for 60 s before the end of the topic"
            );
            continue;
        };
        let m = m?;
        last = Instant::now();
        n += 1;
        bytes += m.payload().map_or(0, <[u8]>::len) as u64;
        let end = ends.get(&m.partition()).copied().unwrap_or(0);
        if m.offset() + 1 >= end {
            if let Some(d) = done.get_mut(m.partition() as usize) {
                *d = true;
            }
        }
    }
    std::hint::black_box(bytes);
    Ok((n, started.elapsed().as_secs_f64()))
}
