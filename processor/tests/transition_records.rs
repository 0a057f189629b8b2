//! What a transition record carries on the wire, for consumers that route
//! on it without decoding the value: the routing headers, the event time as
//! the record timestamp, and the stage filter of the Segment-style topic.
//! Runs the live job in process on librdkafka's mock cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use siklus::config::Config;
use siklus::kafka::{self, RunOptions};
use siklus::metrics::Metrics;

struct Rec {
    headers: BTreeMap<String, String>,
    timestamp: Option<i64>,
    value: serde_json::Value,
}

fn read_all(servers: &str, topic: &str, partitions: i32) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        ends.insert(p, high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut pos: BTreeMap<i32, i64> = BTreeMap::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends
        .iter()
        .any(|(p, h)| pos.get(p).copied().unwrap_or(0) < *h)
    {
        assert!(Instant::now() < deadline, "timed out reading {topic}");
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            pos.insert(m.partition(), m.offset() + 1);
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Rec {
                headers,
                timestamp: m.timestamp().to_millis(),
                value: serde_json::from_slice(m.payload().unwrap()).unwrap(),
            });
        }
    }
    out
}

#[test]
fn transitions_carry_routing_headers_and_their_event_time_and_the_segment_topic_is_filtered() {
    let cluster = MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.kafka
        .insert("bootstrap.servers".into(), servers.clone());
    cfg.processor.state_dir = state.path().to_path_buf();
    cfg.processor.group_id = "headers".into();
    cfg.processor.topic_partitions = 2;
    cfg.processor.idle_timeout_ms = 1_000;
    cfg.processor.commit_interval_ms = 100;
    cfg.topics.segment = "siklus.segment".into();
    cfg.outputs.transition_stages = vec!["converted".into(), "churned".into()];
    for t in kafka::topic_specs(&cfg, 2) {
        cluster.create_topic(&t.name, t.partitions, 1).unwrap();
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .unwrap();
    let events = [
        r#"{"event_id":"a1","customer_id":"ana","event_type":"account.signed_up","occurred_at":"2024-01-01T10:00:00Z"}"#,
        r#"{"event_id":"a2","customer_id":"ana","event_type":"order.completed","occurred_at":"2024-01-02T10:00:00Z","amount_minor":500,"currency":"EUR"}"#,
        r#"{"event_id":"b1","customer_id":"bob","event_type":"ad.impression","occurred_at":"2024-01-02T11:00:00Z"}"#,
        r#"{"event_id":"b2","customer_id":"bob","event_type":"page.viewed","occurred_at":"2024-01-03T11:00:00Z"}"#,
    ];
    for e in events {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        let key = v["customer_id"].as_str().unwrap().to_string();
        producer
            .send(BaseRecord::to(&cfg.topics.input).key(&key).payload(e))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    kafka::run(
        &cfg,
        RunOptions {
            stop_at_end: true,
            // Far enough for both customers to churn (90 days).
            end_time: siklus::time::parse_rfc3339("2024-06-01T00:00:00Z"),
            ..Default::default()
        },
        Arc::new(Metrics::default()),
    )
    .unwrap();

    let transitions = read_all(&servers, &cfg.topics.transitions, 2);
    assert!(transitions.len() >= 8, "{}", transitions.len());
    for t in &transitions {
        let v = &t.value;
        assert_eq!(
            t.headers["siklus.dimension"],
            v["dimension"].as_str().unwrap()
        );
        assert_eq!(
            t.headers["siklus.to_stage"],
            v["to_stage"].as_str().unwrap()
        );
        assert_eq!(t.headers["siklus.rule"], v["rule"].as_str().unwrap());
        assert_eq!(
            t.headers["siklus.transition_id"],
            v["transition_id"].as_str().unwrap()
        );
        let occurred = siklus::time::parse_rfc3339(v["occurred_at"].as_str().unwrap());
        assert_eq!(t.timestamp, occurred, "record timestamp = occurred_at: {v}");
    }
    let stages: Vec<&str> = transitions
        .iter()
        .map(|t| t.headers["siklus.to_stage"].as_str())
        .collect();
    for s in [
        "reached",
        "acquired",
        "converted",
        "active",
        "at_risk",
        "churned",
    ] {
        assert!(stages.contains(&s), "no {s} in {stages:?}");
    }

    // The Segment-style topic tells only the selected stages.
    let segment = read_all(&servers, "siklus.segment", 2);
    assert!(!segment.is_empty());
    for e in &segment {
        let stage = e.value["properties"]["stage"].as_str().unwrap();
        assert!(
            stage == "converted" || stage == "churned",
            "unselected stage {stage} in the segment topic"
        );
    }
    let entered: Vec<&str> = segment
        .iter()
        .filter(|e| e.value["event"] == "Audience Entered")
        .map(|e| e.value["properties"]["stage"].as_str().unwrap())
        .collect();
    assert!(
        entered.contains(&"converted") && entered.contains(&"churned"),
        "{entered:?}"
    );
}
