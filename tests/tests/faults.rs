//! Faults other than a SIGKILL, injected on purpose (the `fault-injection`
//! feature of siklus, on in this crate): a disk error on the state write.
//! The run is compared with an uninterrupted one: the same final state, and
//! every transition of the reference on the output with the same content.

use std::path::Path;
use std::time::Duration;

use siklus::generator::GeneratorConfig;
use siklus_e2e::*;

const UNTIL: &str = "2025-03-01T00:00:00Z";
const EXTRA: &str = "max_batch = 300\nidle_timeout_ms = 600000";

fn load_input(broker: &Broker, topic: &str) {
    broker.create_topic(topic, 4);
    let records = generated(GeneratorConfig {
        customers: 800,
        seed: 21,
        ..Default::default()
    });
    broker.produce(topic, records);
}

fn run_to_end(
    dir: &Path,
    broker: &Broker,
    input: &str,
    group: &str,
    envs: &[(&str, &str)],
) -> (std::process::ExitStatus, String) {
    let cfg = write_config(dir, broker, input, group, EXTRA);
    let mut child = spawn_run(&cfg, &["--stop-at-end", "--until", UNTIL], envs);
    let log = cfg.with_extension("log");
    let status = wait_exit(&mut child, Duration::from_secs(240), &log);
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

fn profiles(dir: &Path) -> Vec<(u32, String, Vec<u8>)> {
    let store =
        siklus_state::Store::open(&dir.join("state"), &Default::default()).expect("open state");
    let mut all = Vec::new();
    for p in store.partitions().expect("partitions") {
        for (c, v) in store.profiles(p).expect("profiles") {
            all.push((p, c, v));
        }
    }
    all
}

#[test]
fn a_failed_state_write_stops_the_instance_and_a_restart_loses_nothing() {
    let broker = Broker::shared();
    let input = unique("disk-in");
    load_input(broker, &input);
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_group = unique("disk-ref");
    let (ok, log) = run_to_end(ref_dir.path(), broker, &input, &ref_group, &[]);
    assert!(ok.success(), "{log}");
    let expected = transitions_by_id(broker, &format!("{ref_group}.transitions"));
    assert!(expected.len() > 500, "{}", expected.len());

    let dir = tempfile::tempdir().unwrap();
    let group = unique("disk");
    let (status, log) = run_to_end(
        dir.path(),
        broker,
        &input,
        &group,
        &[(siklus::faults::STATE_WRITE_FAILS_AT, "4")],
    );
    assert!(
        !status.success(),
        "the injected write failure did not stop it:\n{log}"
    );
    assert!(log.contains("state write failed"), "{log}");
    // Nothing past the failed step was committed: the restart redoes it.
    let (ok, log) = run_to_end(dir.path(), broker, &input, &group, &[]);
    assert!(ok.success(), "{log}");
    assert_eq!(profiles(dir.path()), profiles(ref_dir.path()));
    assert_eq!(
        transitions_by_id(broker, &format!("{group}.transitions")),
        expected
    );
}
