//! Benchmark helpers behind `siklus bench …`: write a generated workload as
//! an Avro container file, load it into a topic, and read a topic with a raw
//! consumer that does nothing else (the physical limit siklus is compared with).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::generator::{Generator, GeneratorConfig};

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

fn client(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c
}

/// Produces the generated events (JSON or Avro wire format) to the input
/// topic, keyed by customer. Returns the number of records.
pub fn load(cfg: &Config, gen: GeneratorConfig, avro: bool) -> anyhow::Result<u64> {
    crate::kafka::ensure_topics(cfg)?;
    let p: ThreadedProducer<DefaultProducerContext> = client(cfg)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let mut n = 0u64;
    for e in Generator::new(gen) {
        let payload = if avro {
            crate::codec::encode_event_avro_wire(&e, crate::codec::DEFAULT_EVENT_SCHEMA_ID)
        } else {
            crate::codec::encode_event_json(&e)
        };
        let mut rec = BaseRecord::<[u8], [u8]>::to(&cfg.topics.input)
            .key(e.customer_id.as_bytes())
            .payload(&payload);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
        n += 1;
    }
    p.flush(Duration::from_secs(300))?;
    Ok(n)
}

/// Reads every partition of the input topic to its end with a consumer that
/// only counts: the ceiling for any processor of the same topic.
pub fn consume(cfg: &Config) -> anyhow::Result<(u64, f64)> {
    let topic = &cfg.topics.input;
    let c: BaseConsumer = client(cfg)
        .set(
            "group.id",
            format!("siklus-bench-raw-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let ends = crate::topic_replay::ends_at_start(&c, topic, parts)?;
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
    while done.iter().any(|d| !d) && last.elapsed() < Duration::from_secs(10) {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
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
