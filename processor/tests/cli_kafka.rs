//! `siklus produce` and `replay --from-topic --verify-against` against
//! librdkafka's mock cluster, run in this test process (the binary reaches
//! it over TCP). The mock has no CreateTopics: every topic is created here.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

mod common;
use common::*;

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// Produces the lines of a transitions file to `topic`, keyed by customer.
fn produce_lines(servers: &str, topic: &str, lines: &[&str]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = v["customer_id"].as_str().unwrap().to_string();
        p.send(BaseRecord::to(topic).key(&key).payload(*l)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn replay(servers: &str, extra: &[&str], dir: &Path) -> Output {
    siklus()
        .args([
            "replay",
            "--from-topic",
            "--topic",
            "ev",
            "--progress",
            "none",
        ])
        .args(["--bootstrap-servers", servers])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn produce_then_verify_a_replay_against_a_topic() {
    let cluster = MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    cluster.create_topic("ev", 2, 1).unwrap();
    cluster.create_topic("same", 1, 1).unwrap();
    cluster.create_topic("other", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 40, 9);
    let events = std::fs::read_to_string(&input).unwrap().lines().count() as u64;
    // One line that is not an event: skipped and counted.
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("not an event\n");
    std::fs::write(&input, text).unwrap();

    let o = siklus()
        .args(["produce", "--input"])
        .arg(&input)
        .args(["--topic", "ev", "--bootstrap-server", &servers])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = json(&o);
    assert_eq!(summary["records"], events, "{summary}");
    assert_eq!(summary["invalid"], 1, "{summary}");
    assert_eq!(summary["topic"], "ev");
    assert!(summary["secs"].is_number(), "{summary}");

    // The replay's transitions, to files.
    let o = replay(&servers, &["--output-dir", "out"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["records"], events);
    let transitions = std::fs::read_to_string(dir.path().join("out/transitions.jsonl")).unwrap();
    let lines: Vec<&str> = transitions.lines().collect();
    assert!(lines.len() > 40, "{} transitions", lines.len());

    // A topic holding the same transitions: identical, exit 0.
    produce_lines(&servers, "same", &lines);
    let o = replay(&servers, &["--verify-against", "same"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["verify"], "identical");

    // One transition missing: a difference, exit 3, said on stderr.
    produce_lines(&servers, "other", &lines[1..]);
    let o = replay(&servers, &["--verify-against", "other"], dir.path());
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let verdict = json(&o)["verify"].as_str().unwrap().to_string();
    assert!(verdict.starts_with("first difference"), "{verdict}");
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the replay differs from other: first difference"),
        "{err}"
    );
}

#[test]
fn the_registry_url_is_logged_without_its_password() {
    let cluster = MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    cluster.create_topic("ev", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = siklus()
        .args([
            "replay",
            "--from-topic",
            "--topic",
            "ev",
            "--progress",
            "none",
        ])
        .args(["--bootstrap-servers", &servers, "--output-dir", "out2"])
        .env("SIKLUS_LOG", "info")
        .env(
            "SIKLUS_SCHEMA_REGISTRY__URL",
            "http://svc:registry-sekret@127.0.0.1:1",
        )
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("schema registry"), "{err}");
    assert!(err.contains("http://svc:***@127.0.0.1:1"), "{err}");
    assert!(!err.contains("registry-sekret"), "{err}");
}
