//! `siklus demo`: the whole Kafka code path on an in-process broker
//! (librdkafka's mock cluster), over a synthetic population, with a report
//! of what happened. No external services.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::aggregate::{Aggregate, CohortCell};
use crate::codec;
use crate::config::Config;
use crate::generator::{Generator, GeneratorConfig};
use crate::kafka::{self, RunOptions};
use crate::metrics::Metrics;
use crate::model::StageTransition;
use crate::time::{format_rfc3339, Granularity, DAY_MS};

/// Demo parameters.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Customers in the synthetic population.
    pub customers: u64,
    /// Generator seed.
    pub seed: u64,
    /// Days of history.
    pub days: u32,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            customers: 3_000,
            seed: 7,
            days: 365,
        }
    }
}

/// What the demo saw, also used by its test.
#[derive(Debug, Default)]
pub struct DemoReport {
    /// Input events produced (valid ones).
    pub events: u64,
    /// Poison records produced.
    pub poison: u64,
    /// Transitions read back from the output topic.
    pub transitions: Vec<StageTransition>,
    /// Aggregates read back.
    pub aggregates: Vec<Aggregate>,
    /// Cohort cells read back.
    pub cohorts: Vec<CohortCell>,
    /// Dead letters read back.
    pub dead_letters: u64,
    /// Seconds the processor ran.
    pub processing_secs: f64,
}

/// Runs the demo and returns what it read back from the output topics.
pub fn run_demo(opts: &DemoOptions) -> anyhow::Result<DemoReport> {
    let cluster = MockCluster::new(1).context("starting the in-process broker")?;
    let servers = cluster.bootstrap_servers();
    let state = tempfile::tempdir()?;
    let mut cfg = Config::default();
    cfg.kafka
        .insert("bootstrap.servers".into(), servers.clone());
    cfg.processor.state_dir = state.path().to_path_buf();
    cfg.processor.group_id = "siklus-demo".into();
    cfg.processor.topic_partitions = 4;
    cfg.processor.idle_timeout_ms = 2_000;
    cfg.processor.commit_interval_ms = 200;
    // The in-process cluster does not serve CreateTopics: every topic the
    // run needs is created here, from the list `kafka::ensure_topics` works
    // through on a real broker (which then finds them all present).
    for t in kafka::topic_specs(&cfg, cfg.processor.topic_partitions) {
        cluster
            .create_topic(&t.name, t.partitions, 1)
            .with_context(|| format!("creating the topic {} on the in-process broker", t.name))?;
    }

    let gen_cfg = GeneratorConfig {
        customers: opts.customers,
        seed: opts.seed,
        days: opts.days,
        ..GeneratorConfig::default()
    };
    let end_time = gen_cfg.start + i64::from(opts.days) * DAY_MS;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("linger.ms", "5")
        .create()?;
    let mut report = DemoReport::default();
    for (i, e) in Generator::new(gen_cfg).enumerate() {
        let payload = codec::encode_event_json(&e);
        send(
            &producer,
            &cfg.topics.input,
            e.customer_id.as_bytes(),
            &payload,
        );
        report.events += 1;
        if i == 100 {
            // Poison: not JSON at all, an event without a customer, and one
            // keyed by another customer.
            send(
                &producer,
                &cfg.topics.input,
                b"cust-000001",
                b"\x07not json{",
            );
            send(&producer, &cfg.topics.input, b"cust-000002", br#"{"event_id":"x","event_type":"page.viewed","occurred_at":"2024-01-02T00:00:00Z"}"#);
            // A valid event keyed by another customer: rejected after
            // decoding, by the key rule, and dead-lettered with its own bytes.
            send(&producer, &cfg.topics.input, b"cust-000003", br#"{"event_id":"y","customer_id":"someone-else","event_type":"page.viewed","occurred_at":"2024-01-02T00:00:00Z"}"#);
            report.poison += 3;
        }
    }
    producer.flush(Duration::from_secs(30))?;

    let started = Instant::now();
    let metrics = Arc::new(Metrics::default());
    kafka::run(
        &cfg,
        RunOptions {
            stop_at_end: true,
            end_time: Some(end_time),
            ..Default::default()
        },
        metrics,
    )?;
    report.processing_secs = started.elapsed().as_secs_f64();

    for bytes in read_topic(&servers, &cfg.topics.transitions, 4)? {
        report.transitions.push(serde_json::from_slice(&bytes)?);
    }
    for bytes in read_topic(&servers, &cfg.topics.aggregates, 1)? {
        report.aggregates.push(serde_json::from_slice(&bytes)?);
    }
    for bytes in read_topic(&servers, &cfg.topics.cohorts, 1)? {
        report.cohorts.push(serde_json::from_slice(&bytes)?);
    }
    report.dead_letters = read_topic(&servers, &cfg.topics.dlq, 1)?.len() as u64;
    Ok(report)
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &[u8], payload: &[u8]) {
    let mut rec = BaseRecord::<[u8], [u8]>::to(topic)
        .key(key)
        .payload(payload);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Reads a whole topic (every partition up to its current end).
fn read_topic(servers: &str, topic: &str, partitions: i32) -> anyhow::Result<Vec<Vec<u8>>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "siklus-demo-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends.insert(p, high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut pos: BTreeMap<i32, i64> = BTreeMap::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends
        .iter()
        .any(|(p, h)| pos.get(p).copied().unwrap_or(0) < *h)
    {
        if Instant::now() > deadline {
            anyhow::bail!("timed out reading {topic}");
        }
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m?;
            pos.insert(m.partition(), m.offset() + 1);
            if let Some(p) = m.payload() {
                out.push(p.to_vec());
            }
        }
    }
    Ok(out)
}

/// Renders the report for a terminal.
pub fn render(r: &DemoReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "siklus demo: {} events ({} poison) through the Kafka path on an in-process broker, processed in {:.1}s\n",
        r.events, r.poison, r.processing_secs
    );
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for t in &r.transitions {
        *counts
            .entry((t.dimension.as_str().to_string(), t.to_stage.to_string()))
            .or_default() += 1;
    }
    let _ = writeln!(s, "Transitions by stage ({} in all):", r.transitions.len());
    for ((d, st), n) in &counts {
        let _ = writeln!(s, "  {d:<10} -> {st:<12} {n:>7}");
    }
    let reactivated = r
        .transitions
        .iter()
        .filter(|t| t.rule == "reactivated")
        .count();
    let reverted = r
        .transitions
        .iter()
        .filter(|t| t.rule == "order_reverted")
        .count();
    let _ = writeln!(
        s,
        "  (of which reactivated: {reactivated}, reverted by refund: {reverted})"
    );
    let _ = writeln!(s, "\nDead-letter records: {}\n", r.dead_letters);

    // Example journeys: customers with the most varied paths.
    let mut by_customer: BTreeMap<&str, Vec<&StageTransition>> = BTreeMap::new();
    for t in &r.transitions {
        by_customer.entry(&t.customer_id).or_default().push(t);
    }
    let mut ranked: Vec<(&str, &Vec<&StageTransition>)> =
        by_customer.iter().map(|(k, v)| (*k, v)).collect();
    ranked.sort_by_key(|(c, v)| {
        let distinct: std::collections::BTreeSet<&str> =
            v.iter().map(|t| t.to_stage.as_ref()).collect();
        (
            std::cmp::Reverse(distinct.len()),
            std::cmp::Reverse(v.len()),
            *c,
        )
    });
    let _ = writeln!(s, "Example journeys:");
    for (c, ts) in ranked.iter().take(3) {
        let _ = writeln!(s, "  {c}:");
        let mut ts = (*ts).clone();
        ts.sort_by_key(|t| t.seq);
        for t in ts {
            let _ = writeln!(
                s,
                "    {}  {:<9} {:>10} -> {:<10} ({})",
                &format_rfc3339(t.occurred_at)[..10],
                t.dimension.as_str(),
                t.from_stage.as_deref().unwrap_or("-"),
                t.to_stage,
                t.rule
            );
        }
    }

    let months: Vec<&Aggregate> = r
        .aggregates
        .iter()
        .filter(|a| a.granularity == Granularity::Month)
        .collect();
    let _ = writeln!(s, "\nMonthly lifecycle, retention and churn:");
    let _ = writeln!(
        s,
        "  {:<7} {:>6} {:>5} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "month",
        "active",
        "new",
        "return",
        "resurr",
        "dormant",
        "at_risk",
        "churned",
        "churn%",
        "retain%"
    );
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}", x * 100.0));
    for a in &months {
        let _ = writeln!(
            s,
            "  {:<7} {:>6} {:>5} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7}",
            &format_rfc3339(a.window_start)[..7],
            a.active,
            a.new,
            a.returning,
            a.resurrecting,
            a.dormant,
            a.at_risk_entered,
            a.churned,
            pct(a.churn_rate),
            pct(a.retention_rate)
        );
    }

    // Cohort heatmap: monthly acquisition cohorts by months since.
    let cells: Vec<&CohortCell> = r
        .cohorts
        .iter()
        .filter(|c| c.granularity == Granularity::Month)
        .collect();
    let mut grid: BTreeMap<i64, BTreeMap<i64, (u64, u64)>> = BTreeMap::new();
    for c in &cells {
        grid.entry(c.cohort_start)
            .or_default()
            .insert(c.offset, (c.retained, c.cohort_size));
    }
    if !grid.is_empty() {
        let _ = writeln!(
            s,
            "\nMonthly cohort retention (share of the cohort active k months later):"
        );
        let shades = [' ', '░', '▒', '▓', '█'];
        let max_k = grid
            .values()
            .flat_map(|m| m.keys())
            .copied()
            .max()
            .unwrap_or(0)
            .min(11);
        let _ = write!(s, "  {:<7} {:>5} ", "cohort", "size");
        for k in 0..=max_k {
            let _ = write!(s, "{k:>4}");
        }
        let _ = writeln!(s);
        for (cohort, row) in &grid {
            let size = row.values().next().map_or(0, |v| v.1);
            let _ = write!(s, "  {:<7} {:>5} ", &format_rfc3339(*cohort)[..7], size);
            for k in 0..=max_k {
                match row.get(&k) {
                    Some((ret, size)) if *size > 0 => {
                        let share = *ret as f64 / *size as f64;
                        let shade = shades[((share * 4.0).round() as usize).min(4)];
                        let _ = write!(s, " {}{:>2}", shade, (share * 100.0).round() as u64);
                    }
                    _ => {
                        let _ = write!(s, "    ");
                    }
                }
            }
            let _ = writeln!(s);
        }
    }
    s
}
