//! Global aggregates across partitions and instances, idle partitions, and
//! a graceful shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use siklus::generator::{Generator, GeneratorConfig};
use siklus::replay::{replay_file, FileReplay, WatermarkPolicy};
use siklus_e2e::*;

fn events() -> Vec<siklus::model::InteractionEvent> {
    Generator::new(GeneratorConfig {
        customers: 800,
        seed: 5,
        ..Default::default()
    })
    .collect()
}

/// Aggregates by key (`granularity/window start`), as JSON values.
fn aggregates(broker: &Broker, topic: &str) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    for r in broker.read_all(topic) {
        let key = String::from_utf8(r.key.expect("key")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.value.expect("value")).unwrap();
        if let Some(prev) = m.insert(key.clone(), v.clone()) {
            assert_eq!(
                prev, v,
                "window {key} was emitted twice with different content"
            );
        }
    }
    m
}

#[test]
fn two_instances_aggregate_like_one_instance_and_like_the_replay() {
    let broker = Broker::shared();
    let input = unique("agg-in");
    broker.create_topic(&input, 4);
    let evs = events();
    let extra = "idle_timeout_ms = 600000";

    // Two instances in one group, both up before the data arrives.
    let group = unique("two");
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let c1 = write_config(d1.path(), broker, &input, &group, extra);
    let c2 = write_config(d2.path(), broker, &input, &group, extra);
    let mut a = spawn_run(&c1, &[], &[]);
    wait_until(
        "instance 1 to take partitions",
        Duration::from_secs(60),
        || log_of(&c1).contains("partition assigned"),
    );
    let mut b = spawn_run(&c2, &[], &[]);
    wait_until(
        "both instances to own partitions",
        Duration::from_secs(90),
        || {
            let l1 = log_of(&c1);
            let l2 = log_of(&c2);
            let owned = |l: &str| {
                l.matches("partition assigned").count() as i64
                    - l.matches("partition revoked").count() as i64
            };
            owned(&l2) > 0 && owned(&l1) + owned(&l2) == 4
        },
    );
    broker.produce(
        &input,
        evs.iter().map(|e| {
            (
                e.customer_id.clone().into_bytes(),
                siklus::codec::encode_event_json(e),
            )
        }),
    );
    // Wait for the aggregates to settle.
    let topic = format!("{group}.aggregates");
    let mut last = 0;
    let mut stable = 0;
    wait_until("the aggregates to settle", Duration::from_secs(180), || {
        let n = broker.read_all(&topic).len();
        if n > 0 && n == last {
            stable += 1;
        } else {
            stable = 0;
        }
        last = n;
        stable >= 3
    });
    // Graceful shutdown: both drain and exit cleanly on SIGTERM.
    terminate(&a);
    terminate(&b);
    assert!(
        wait_exit(&mut a, Duration::from_secs(60), &c1).success(),
        "{}",
        log_of(&c1)
    );
    assert!(
        wait_exit(&mut b, Duration::from_secs(60), &c2).success(),
        "{}",
        log_of(&c2)
    );
    let two = aggregates(broker, &topic);
    assert!(two.len() > 300, "too few closed windows: {}", two.len());

    // One instance over the same topic.
    let single = unique("one");
    let d3 = tempfile::tempdir().unwrap();
    let c3 = write_config(d3.path(), broker, &input, &single, extra);
    let mut one = spawn_run(&c3, &["--stop-at-end"], &[]);
    assert!(
        wait_exit(&mut one, Duration::from_secs(180), &c3).success(),
        "{}",
        log_of(&c3)
    );
    let one = aggregates(broker, &format!("{single}.aggregates"));
    assert_eq!(one, two, "one instance and two instances disagree");

    // The file replay with the live policy: every window the live runs closed
    // is equal in the replay.
    let file = d3.path().join("events.jsonl");
    let mut text = Vec::new();
    for e in &evs {
        text.extend(siklus::codec::encode_event_json(e));
        text.push(b'\n');
    }
    std::fs::write(&file, text).unwrap();
    let out = d3.path().join("replay");
    replay_file(
        &siklus::config::Config::default(),
        &FileReplay {
            input: file,
            output_dir: out.clone(),
            until: None,
            watermark: WatermarkPolicy::Live,
            state_dir: None,
            commit_every: 1000,
            bulk_load: true,
        },
    )
    .unwrap();
    let replayed: BTreeMap<String, serde_json::Value> =
        std::fs::read_to_string(out.join("aggregates.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let key = format!(
                    "{}/{}",
                    v["granularity"].as_str().unwrap(),
                    v["window_start"].as_str().unwrap()
                );
                (key, v)
            })
            .collect();
    for (k, v) in &two {
        assert_eq!(
            replayed.get(k),
            Some(v),
            "window {k} differs from the replay"
        );
    }
}

#[test]
fn an_idle_partition_does_not_hold_windows_back() {
    let broker = Broker::shared();
    let input = unique("idle-in");
    broker.create_topic(&input, 2);
    // Only partition 0 ever gets data.
    let evs: Vec<_> = events().into_iter().take(3000).collect();
    broker.produce_to(
        &input,
        Some(0),
        evs.iter().map(|e| {
            (
                e.customer_id.clone().into_bytes(),
                siklus::codec::encode_event_json(e),
            )
        }),
    );
    let group = unique("idle");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), broker, &input, &group, "");
    let mut child = spawn_run(&cfg, &[], &[]);
    let topic = format!("{group}.aggregates");
    wait_until(
        "windows to close with partition 1 idle",
        Duration::from_secs(120),
        || broker.read_all(&topic).len() > 30,
    );
    terminate(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(60), &cfg).success());
    let aggs = aggregates(broker, &topic);
    let days = aggs.keys().filter(|k| k.starts_with("day/")).count();
    assert!(days > 30, "{days} day windows closed");
}
