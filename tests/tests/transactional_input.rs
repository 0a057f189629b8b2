//! An input topic written by a transactional producer (an upstream
//! exactly-once job) ends each transaction with a marker: the last offset
//! of a partition holds no record. A run with `--stop-at-end` and a replay
//! from the topic must still see their end promptly, and neither applies a
//! record of an aborted transaction.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use siklus::model::{InteractionEvent, StageTransition};
use siklus_e2e::*;

fn event(i: usize, customer: &str) -> InteractionEvent {
    InteractionEvent {
        event_id: format!("{customer}-{i}"),
        customer_id: customer.into(),
        event_type: if i == 0 {
            "account.signed_up".into()
        } else {
            "page.viewed".into()
        },
        occurred_at: 1_704_067_200_000 + (i as i64) * 3_600_000,
        ..Default::default()
    }
}

/// Writes three transactions: customers `c0..c20` committed, `ghost*`
/// aborted, `d0..d20` committed.
fn load_transactionally(broker: &Broker, topic: &str) {
    let producer: ThreadedProducer<DefaultProducerContext> = broker
        .client()
        .set("transactional.id", unique("upstream"))
        .create()
        .unwrap();
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).unwrap();
    let txn = |prefix: &str, commit: bool| {
        producer.begin_transaction().unwrap();
        for c in 0..20 {
            let customer = format!("{prefix}{c}");
            for i in 0..3 {
                let value = siklus::codec::encode_event_json(&event(i, &customer));
                producer
                    .send(BaseRecord::to(topic).key(&customer).payload(&value))
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        }
        producer.flush(timeout).unwrap();
        if commit {
            producer.commit_transaction(timeout).unwrap();
        } else {
            producer.abort_transaction(timeout).unwrap();
        }
    };
    txn("c", true);
    txn("ghost", false);
    txn("d", true);
}

fn customers(broker: &Broker, topic: &str) -> BTreeSet<String> {
    broker
        .read_all(topic)
        .iter()
        .map(|r| {
            serde_json::from_slice::<StageTransition>(r.value.as_deref().unwrap())
                .unwrap()
                .customer_id
        })
        .collect()
}

#[test]
fn a_transactional_input_ends_promptly_and_its_aborted_records_are_never_applied() {
    let broker = Broker::shared();
    let group = unique("txin");
    let input = format!("{group}.events");
    broker.create_topic(&input, 4);
    load_transactionally(broker, &input);
    let want: BTreeSet<String> = (0..20)
        .flat_map(|c| [format!("c{c}"), format!("d{c}")])
        .collect();

    // A live run to the end of the input.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), broker, &input, &group, "");
    let began = Instant::now();
    let mut child = spawn_run(&cfg, &["--stop-at-end"], &[]);
    let status = wait_exit(
        &mut child,
        Duration::from_secs(120),
        &cfg.with_extension("log"),
    );
    assert!(status.success(), "{}", log_of(&cfg));
    let took = began.elapsed();
    assert_eq!(customers(broker, &format!("{group}.transitions")), want);
    // The end is the high watermark, a marker: no wait for a record there.
    assert!(
        took < Duration::from_secs(30),
        "--stop-at-end took {took:?} on a transactional input:\n{}",
        log_of(&cfg)
    );

    // A replay from the topic, to files.
    let out = tempfile::tempdir().unwrap();
    let began = Instant::now();
    let replay = Command::new(siklus_bin())
        .arg("--config")
        .arg(&cfg)
        .args([
            "replay",
            "--from-topic",
            "--progress",
            "none",
            "--output-dir",
        ])
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let took = began.elapsed();
    let text = std::fs::read_to_string(out.path().join("transitions.jsonl")).unwrap();
    let replayed: BTreeSet<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<StageTransition>(l)
                .unwrap()
                .customer_id
        })
        .collect();
    assert_eq!(replayed, want);
    assert!(
        took < Duration::from_secs(30),
        "the replay took {took:?} on a transactional input"
    );
}
