//! Replays from Kafka history give the live run's outputs.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use siklus::generator::{Generator, GeneratorConfig};
use siklus::model::{InteractionEvent, StageTransition};
use siklus_e2e::*;

/// Transitions per customer by seq, as JSON; a re-delivered duplicate must
/// be identical to the first copy.
fn per_customer(
    ts: impl IntoIterator<Item = StageTransition>,
) -> BTreeMap<String, BTreeMap<u64, String>> {
    let mut m: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for t in ts {
        let text = serde_json::to_string(&t).unwrap();
        if let Some(prev) = m
            .entry(t.customer_id.clone())
            .or_default()
            .insert(t.seq, text.clone())
        {
            assert_eq!(prev, text, "two different transitions with one seq");
        }
    }
    m
}

fn keyed(broker: &Broker, topic: &str) -> BTreeMap<String, serde_json::Value> {
    broker
        .read_all(topic)
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.unwrap()).unwrap(),
                serde_json::from_slice(&r.value.unwrap()).unwrap(),
            )
        })
        .collect()
}

fn lines_keyed(
    path: &std::path::Path,
    key: impl Fn(&serde_json::Value) -> String,
) -> BTreeMap<String, serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (key(&v), v)
        })
        .collect()
}

#[test]
fn topic_replay_with_the_live_policy_reproduces_the_live_run() {
    let broker = Broker::shared();
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
    // The live job, SIGKILLed once its output has begun, then restarted
    // from its state.
    let dir = tempfile::tempdir().unwrap();
    let group = unique("live");
    let cfg = write_config(
        dir.path(),
        broker,
        &input,
        &group,
        "idle_timeout_ms = 600000\nmax_batch = 300",
    );
    let mut live = spawn_run(&cfg, &[], &[]);
    let out_topic = format!("{group}.transitions");
    wait_until(
        "the live job's first output",
        Duration::from_secs(120),
        || {
            live.try_wait().unwrap().is_some()
                || std::panic::catch_unwind(|| broker.read_all(&out_topic).len()).unwrap_or(0) > 200
        },
    );
    let _ = live.kill(); // SIGKILL
    let _ = live.wait();
    let mut live = spawn_run(&cfg, &["--stop-at-end"], &[]);
    assert!(wait_exit(&mut live, Duration::from_secs(180), &cfg).success());
    let live_transitions = per_customer(
        broker
            .read_all(&format!("{group}.transitions"))
            .into_iter()
            .map(|r| serde_json::from_slice::<StageTransition>(&r.value.unwrap()).unwrap()),
    );
    let live_aggs = keyed(broker, &format!("{group}.aggregates"));
    let live_cohorts = keyed(broker, &format!("{group}.cohorts"));
    assert!(live_aggs.len() > 100);
    assert!(!live_cohorts.is_empty());

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
            "--progress",
            "json",
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
    assert_eq!(summary["records"], events.len() as u64);

    let replayed = per_customer(
        std::fs::read_to_string(out.join("transitions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<StageTransition>(l).unwrap()),
    );
    // Each customer's transitions, in order and byte for byte.
    assert_eq!(replayed, live_transitions);
    let window_key = |v: &serde_json::Value| {
        format!(
            "{}/{}",
            v["granularity"].as_str().unwrap(),
            v["window_start"].as_str().unwrap()
        )
    };
    assert_eq!(
        lines_keyed(&out.join("aggregates.jsonl"), window_key),
        live_aggs
    );
    let cell_key = |v: &serde_json::Value| {
        format!(
            "{}/{}/{}",
            v["granularity"].as_str().unwrap(),
            v["cohort_start"].as_str().unwrap(),
            v["offset"]
        )
    };
    assert_eq!(
        lines_keyed(&out.join("cohorts.jsonl"), cell_key),
        live_cohorts
    );

    // The same replay interrupted twice (outputs written, state not) and
    // resumed with its state dir ends with the same files.
    let resumed = dir.path().join("resumed");
    let rstate = dir.path().join("resumed-state");
    for abort in [Some("2"), Some("1"), None] {
        let mut c = Command::new(siklus_bin());
        c.arg("--config")
            .arg(&cfg)
            .args([
                "replay",
                "--from-topic",
                "--watermark",
                "live",
                "--state-dir",
            ])
            .arg(&rstate)
            .arg("--output-dir")
            .arg(&resumed);
        if let Some(n) = abort {
            c.env("SIKLUS_FAULT_ABORT_AFTER_STEPS", n);
        }
        let ok = c.output().unwrap().status.success();
        assert_eq!(ok, abort.is_none(), "abort {abort:?}");
    }
    for f in [
        "transitions.jsonl",
        "aggregates.jsonl",
        "cohorts.jsonl",
        "dlq.jsonl",
    ] {
        let a = std::fs::read(out.join(f)).unwrap();
        let b = std::fs::read(resumed.join(f)).unwrap();
        let sorted = |x: &[u8]| {
            let mut l: Vec<&[u8]> = x.split(|c| *c == b'\n').collect();
            l.sort();
            l.into_iter().map(<[u8]>::to_vec).collect::<Vec<_>>()
        };
        // Partitions interleave in the order the broker serves them; the
        // lines are the same.
        assert!(sorted(&a) == sorted(&b), "{f} differs after resuming");
    }

    // --verify-against compares without writing: identical here…
    // Exit 0 when identical, 3 when the replay differs.
    let verify = |envs: &[(&str, &str)], code: i32| -> String {
        let mut c = Command::new(siklus_bin());
        c.arg("--config")
            .arg(&cfg)
            .args([
                "replay",
                "--from-topic",
                "--watermark",
                "live",
                "--verify-against",
            ])
            .arg(format!("{group}.transitions"));
        for (k, v) in envs {
            c.env(k, v);
        }
        let r = c.output().unwrap();
        assert_eq!(
            r.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let s: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        s["verify"].as_str().unwrap().to_string()
    };
    assert_eq!(verify(&[], 0), "identical");
    // …and after a rule change it names the first difference.
    let changed = verify(&[("SIKLUS_RULES__AT_RISK_AFTER_MS", "1728000000")], 3);
    assert!(
        changed.starts_with("first difference at customer"),
        "{changed}"
    );

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

fn ev(id: &str, customer: &str, at: i64) -> InteractionEvent {
    InteractionEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: "page.viewed".into(),
        occurred_at: at,
        ..Default::default()
    }
}

#[test]
fn a_replay_between_two_timestamps_reads_exactly_that_range() {
    let broker = Broker::shared();
    let input = unique("range-in");
    broker.create_topic(&input, 3);
    let t0 = siklus::time::parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
    let hour = 3_600_000;
    // Partitions 0 and 1: 40 records an hour apart; partition 2: only
    // records before the range.
    let mut expected = 0;
    let (from, to) = (t0 + 10 * hour, t0 + 30 * hour);
    for p in 0..2 {
        let recs: Vec<_> = (0..40)
            .map(|i| {
                let t = t0 + i * hour;
                if t >= from && t < to {
                    expected += 1;
                }
                let e = ev(&format!("p{p}-{i}"), &format!("c{p}"), t);
                (
                    e.customer_id.clone().into_bytes(),
                    siklus::codec::encode_event_json(&e),
                    Some(t),
                )
            })
            .collect();
        broker.produce_timed(&input, Some(p), recs);
    }
    broker.produce_timed(
        &input,
        Some(2),
        (0..5).map(|i| {
            let e = ev(&format!("p2-{i}"), "c2", t0 + i * hour);
            (
                e.customer_id.clone().into_bytes(),
                siklus::codec::encode_event_json(&e),
                Some(t0 + i * hour),
            )
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), broker, &input, &unique("range"), "");
    let out = dir.path().join("out");
    let run = Command::new(siklus_bin())
        .arg("--config")
        .arg(&cfg)
        .args([
            "replay",
            "--from-topic",
            "--start",
            "2024-01-01T10:00:00Z",
            "--end",
            "2024-01-02T06:00:00Z",
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
    assert_eq!(summary["records"], expected, "{summary}");
    assert_eq!(expected, 40);
    // The first event seen of each customer is the first in the range.
    let first: BTreeMap<String, String> = std::fs::read_to_string(out.join("transitions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<StageTransition>(l).unwrap())
        .filter(|t| t.seq == 1)
        .map(|t| {
            (
                t.customer_id.clone(),
                t.triggering_event_id.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(first.get("c0").map(String::as_str), Some("p0-10"));
    assert_eq!(first.get("c1").map(String::as_str), Some("p1-10"));
    assert!(!first.contains_key("c2"));
}

#[test]
fn state_rebuilt_by_a_replay_seeds_the_live_run_without_gap_or_overlap() {
    let broker = Broker::shared();
    let input = unique("seed-in");
    broker.create_topic(&input, 2);
    let events: Vec<InteractionEvent> = Generator::new(GeneratorConfig {
        customers: 300,
        seed: 21,
        ..Default::default()
    })
    .collect();
    let half = events.len() / 2;
    let to_records = |evs: &[InteractionEvent]| -> Vec<(Vec<u8>, Vec<u8>)> {
        evs.iter()
            .map(|e| {
                (
                    e.customer_id.clone().into_bytes(),
                    siklus::codec::encode_event_json(e),
                )
            })
            .collect()
    };
    broker.produce(&input, to_records(&events[..half]));

    // A replay with the live policy rebuilds the state of the first half.
    let dir = tempfile::tempdir().unwrap();
    let group = unique("seeded");
    let cfg = write_config(
        dir.path(),
        broker,
        &input,
        &group,
        "idle_timeout_ms = 600000",
    );
    let replay_state = dir.path().join("replay-state");
    let out = dir.path().join("replay-out");
    let run = Command::new(siklus_bin())
        .arg("--config")
        .arg(&cfg)
        .args([
            "replay",
            "--from-topic",
            "--watermark",
            "live",
            "--state-dir",
        ])
        .arg(&replay_state)
        .arg("--output-dir")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let snap = dir.path().join("snapshot");
    for args in [
        vec![
            "state".to_string(),
            "export".into(),
            "--state-dir".into(),
            replay_state.display().to_string(),
            "--output".into(),
            snap.display().to_string(),
        ],
        vec![
            "state".to_string(),
            "import".into(),
            "--input".into(),
            snap.display().to_string(),
        ],
    ] {
        let r = Command::new(siklus_bin())
            .arg("--config")
            .arg(&cfg)
            .args(&args)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    // The rest arrives; the live job starts from the imported state.
    broker.produce(&input, to_records(&events[half..]));
    let mut live = spawn_run(&cfg, &["--stop-at-end"], &[]);
    assert!(wait_exit(&mut live, Duration::from_secs(180), &cfg).success());

    // Reference: one live run over everything from scratch.
    let rdir = tempfile::tempdir().unwrap();
    let rgroup = unique("whole");
    let rcfg = write_config(
        rdir.path(),
        broker,
        &input,
        &rgroup,
        "idle_timeout_ms = 600000",
    );
    let mut whole = spawn_run(&rcfg, &["--stop-at-end"], &[]);
    assert!(wait_exit(&mut whole, Duration::from_secs(180), &rcfg).success());

    let ids = |ts: Vec<StageTransition>| -> BTreeMap<String, String> {
        ts.into_iter()
            .map(|t| (t.transition_id.clone(), serde_json::to_string(&t).unwrap()))
            .collect()
    };
    let from_replay = ids(std::fs::read_to_string(out.join("transitions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect());
    let from_live = ids(broker
        .read_all(&format!("{group}.transitions"))
        .into_iter()
        .map(|r| serde_json::from_slice(&r.value.unwrap()).unwrap())
        .collect());
    let reference = ids(broker
        .read_all(&format!("{rgroup}.transitions"))
        .into_iter()
        .map(|r| serde_json::from_slice(&r.value.unwrap()).unwrap())
        .collect());
    assert!(!from_replay.is_empty() && !from_live.is_empty());
    let repeated: Vec<&String> = from_live
        .keys()
        .filter(|k| from_replay.contains_key(*k))
        .collect();
    assert!(
        repeated.is_empty(),
        "transitions repeated after the seed: {}",
        repeated.len()
    );
    let mut union = from_replay.clone();
    union.extend(from_live);
    assert_eq!(
        union, reference,
        "seeded replay + live differs from one live run"
    );
}
