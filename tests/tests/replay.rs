//! Replays from Kafka history give the live run's outputs.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use siklus::generator::{Generator, GeneratorConfig};
use siklus::model::{InteractionEvent, StageTransition};
use siklus_e2e::*;

/// Transitions per customer, in order, as JSON.
fn per_customer(ts: impl IntoIterator<Item = StageTransition>) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in ts {
        m.entry(t.customer_id.clone())
            .or_default()
            .push(serde_json::to_string(&t).unwrap());
    }
    m
}

#[test]
fn topic_replay_with_the_live_policy_reproduces_the_live_run() {
    let broker = Broker::start();
    let input = unique("replay-in");
    broker.create_topic(&input, 4);
    let events: Vec<InteractionEvent> = Generator::new(GeneratorConfig {
        customers: 600,
        seed: 9,
        ..Default::default()
    })
    .collect();
    broker.produce(
        &input,
        events.iter().map(|e| {
            (
                e.customer_id.clone().into_bytes(),
                siklus::codec::encode_event_json(e),
            )
        }),
    );
    // One last single-record batch per partition, so that tansu's reported
    // end of each partition (the last batch's base offset + 1) is the real end.
    let last = events.last().unwrap().occurred_at;
    for p in 0..4 {
        let e = InteractionEvent {
            event_id: format!("sentinel-{p}"),
            customer_id: format!("sentinel-{p}"),
            event_type: "page.viewed".into(),
            occurred_at: last,
            ..Default::default()
        };
        broker.produce_to(
            &input,
            Some(p),
            [(
                e.customer_id.clone().into_bytes(),
                siklus::codec::encode_event_json(&e),
            )],
        );
    }

    // The live job.
    let dir = tempfile::tempdir().unwrap();
    let group = unique("live");
    let cfg = write_config(
        dir.path(),
        &broker,
        &input,
        &group,
        "idle_timeout_ms = 600000",
    );
    let mut live = spawn_run(&cfg, &["--stop-at-end"], &[]);
    assert!(wait_exit(&mut live, Duration::from_secs(180), &cfg).success());
    let live_transitions = per_customer(
        broker
            .read_all(&format!("{group}.transitions"))
            .into_iter()
            .map(|r| serde_json::from_slice::<StageTransition>(&r.value.unwrap()).unwrap()),
    );
    let live_aggs: BTreeMap<String, serde_json::Value> = broker
        .read_all(&format!("{group}.aggregates"))
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.unwrap()).unwrap(),
                serde_json::from_slice(&r.value.unwrap()).unwrap(),
            )
        })
        .collect();
    assert!(live_aggs.len() > 100);

    // The replay of the same topic, to files.
    let out = dir.path().join("replay");
    let run = Command::new(siklus_bin())
        .arg("--config")
        .arg(&cfg)
        .args([
            "replay",
            "--from-topic",
            "--watermark",
            "live",
            "--output-dir",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["records"], events.len() as u64 + 4);

    let replayed = per_customer(
        std::fs::read_to_string(out.join("transitions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<StageTransition>(l).unwrap()),
    );
    // Each customer's transitions, in order and byte for byte.
    assert_eq!(replayed, live_transitions);
    let replayed_aggs: BTreeMap<String, serde_json::Value> =
        std::fs::read_to_string(out.join("aggregates.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    format!(
                        "{}/{}",
                        v["granularity"].as_str().unwrap(),
                        v["window_start"].as_str().unwrap()
                    ),
                    v,
                )
            })
            .collect();
    assert_eq!(replayed_aggs, live_aggs);

    // A replay of an empty range reads nothing and succeeds.
    let none = dir.path().join("none");
    let run = Command::new(siklus_bin())
        .arg("--config")
        .arg(&cfg)
        .args([
            "replay",
            "--from-topic",
            "--start",
            "latest-at-start",
            "--output-dir",
        ])
        .arg(&none)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["records"], 0);
}
