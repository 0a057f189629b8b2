//! Events in, transitions and dead letters out, through a real broker.

use std::collections::BTreeMap;
use std::time::Duration;

use siklus::model::{InteractionEvent, StageTransition};
use siklus::replay::{replay_file, FileReplay, WatermarkPolicy};
use siklus_e2e::*;

fn ev(id: &str, customer: &str, ty: &str, at: &str) -> InteractionEvent {
    InteractionEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: ty.into(),
        occurred_at: siklus::time::parse_rfc3339(at).expect("time"),
        amount_minor: if ty == "order.completed" {
            Some(2500)
        } else {
            None
        },
        currency: if ty == "order.completed" {
            Some("EUR".into())
        } else {
            None
        },
        order_id: if ty == "order.completed" {
            Some(format!("o-{id}"))
        } else {
            None
        },
        ..Default::default()
    }
}

fn json(e: &InteractionEvent) -> Vec<u8> {
    siklus::codec::encode_event_json(e)
}

#[test]
fn events_become_transitions_and_poison_goes_to_the_dlq() {
    let broker = Broker::shared();
    let group = unique("life");
    let input = format!("{group}.events");
    broker.create_topic(&input, 4);

    let events = vec![
        ev("a1", "alice", "ad.impression", "2024-01-01T09:00:00Z"),
        ev("a2", "alice", "account.signed_up", "2024-01-02T09:00:00Z"),
        ev("b1", "bob", "page.viewed", "2024-01-02T10:00:00Z"),
        ev("a3", "alice", "order.completed", "2024-01-03T09:00:00Z"),
        ev("a4", "alice", "order.completed", "2024-01-20T09:00:00Z"),
        // bob goes silent; carol's events move time on: bob becomes at risk, then churns.
        ev("c1", "carol", "page.viewed", "2024-03-01T00:00:00Z"),
        ev("c2", "carol", "page.viewed", "2024-05-15T00:00:00Z"),
        // bob returns after 150 days.
        ev("b2", "bob", "page.viewed", "2024-06-01T00:00:00Z"),
    ];
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        records.push((e.customer_id.clone().into_bytes(), json(e)));
        if i == 2 {
            records.push((b"alice".to_vec(), b"\x00\x01garbage".to_vec()));
            records.push((
                b"dave".to_vec(),
                br#"{"event_id":"d1","customer_id":"dave","event_type":"page.viewed","occurred_at":"not a time"}"#.to_vec(),
            ));
        }
    }
    broker.produce(&input, records);

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), broker, &input, &group, "");
    let mut child = spawn_run(
        &cfg,
        &["--stop-at-end", "--until", "2024-07-01T00:00:00Z"],
        &[],
    );
    let status = wait_exit(
        &mut child,
        Duration::from_secs(120),
        &cfg.with_extension("log"),
    );
    assert!(
        status.success(),
        "siklus failed: {}",
        std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default()
    );

    let out: Vec<StageTransition> = broker
        .read_all(&format!("{group}.transitions"))
        .iter()
        .map(|r| {
            serde_json::from_slice(r.value.as_deref().expect("value")).expect("transition json")
        })
        .collect();
    let mut by: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    let mut sorted = out.clone();
    sorted.sort_by_key(|t| (t.customer_id.clone(), t.seq));
    for t in &sorted {
        by.entry(t.customer_id.clone()).or_default().push((
            t.dimension.as_str().to_string(),
            t.to_stage.to_string(),
            t.rule.to_string(),
        ));
    }
    let s = |d: &str, to: &str, r: &str| (d.to_string(), to.to_string(), r.to_string());
    assert_eq!(
        by["bob"],
        vec![
            s("activity", "active", "first_activity"),
            s("milestone", "reached", "first_touch"),
            s("activity", "at_risk", "inactivity_at_risk"),
            s("activity", "churned", "inactivity_churned"),
            s("activity", "active", "reactivated"),
        ]
    );
    assert_eq!(
        by["alice"][..4],
        [
            s("milestone", "reached", "first_touch"),
            s("activity", "active", "first_activity"),
            s("milestone", "acquired", "acquisition"),
            s("milestone", "converted", "first_order"),
        ]
    );
    assert!(by["alice"].contains(&s("milestone", "developing", "second_order")));
    // Transitions are keyed by customer.
    for r in broker.read_all(&format!("{group}.transitions")) {
        let t: StageTransition = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(r.key.as_deref(), Some(t.customer_id.as_bytes()));
    }

    // Both poison records are in the DLQ with their original bytes and the reason.
    let dlq = broker.read_all(&format!("{group}.dlq"));
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let garbage = dlq
        .iter()
        .find(|r| r.key.as_deref() == Some(b"alice"))
        .expect("garbage record");
    assert_eq!(garbage.value.as_deref(), Some(&b"\x00\x01garbage"[..]));
    assert_eq!(garbage.header("siklus.source.topic"), Some(input.as_str()));
    assert!(garbage.header("siklus.source.offset").is_some());
    assert!(garbage.header("siklus.source.partition").is_some());
    assert!(garbage
        .header("siklus.error")
        .is_some_and(|e| !e.is_empty()));
    let dave = dlq
        .iter()
        .find(|r| r.key.as_deref() == Some(b"dave"))
        .expect("dave record");
    assert!(
        dave.header("siklus.error")
            .unwrap_or("")
            .contains("occurred_at"),
        "{dave:?}"
    );

    // The file replay of the same events gives the same transitions.
    let file = dir.path().join("events.jsonl");
    let mut text = Vec::new();
    for e in &events {
        text.extend(json(e));
        text.push(b'\n');
    }
    std::fs::write(&file, text).unwrap();
    let replay_out = dir.path().join("replay");
    replay_file(
        &siklus::config::Config::default(),
        &FileReplay {
            input: file,
            output_dir: replay_out.clone(),
            until: Some(siklus::time::parse_rfc3339("2024-07-01T00:00:00Z").unwrap()),
            watermark: WatermarkPolicy::Live,
            state_dir: None,
            commit_every: 3,
            bulk_load: true,
        },
    )
    .unwrap();
    let replayed: Vec<StageTransition> =
        std::fs::read_to_string(replay_out.join("transitions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let ids = |v: &[StageTransition]| {
        let mut m: Vec<String> = v
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect();
        m.sort();
        m
    };
    assert_eq!(ids(&replayed), ids(&out));
}
