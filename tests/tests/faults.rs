//! Faults other than a SIGKILL, injected on purpose (the `fault-injection`
//! feature of siklus, on in this crate): a disk error on the state write.
//! The run is compared with an uninterrupted one: the same final state, and
//! every transition of the reference on the output with the same content.

use siklus_e2e::*;

const UNTIL: &str = "2025-03-01T00:00:00Z";
const EXTRA: &str = "max_batch = 300\nidle_timeout_ms = 600000";

#[test]
fn a_failed_state_write_stops_the_instance_and_a_restart_loses_nothing() {
    let broker = Broker::shared();
    let input = unique("disk-in");
    load_generated(broker, &input, 4, 800, 21);
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_group = unique("disk-ref");
    let (ok, log) = run_until_end(
        ref_dir.path(),
        broker,
        &input,
        &ref_group,
        EXTRA,
        UNTIL,
        &[],
    );
    assert!(ok.success(), "{log}");
    let expected = transitions_by_id(broker, &format!("{ref_group}.transitions"));
    assert!(expected.len() > 500, "{}", expected.len());

    let dir = tempfile::tempdir().unwrap();
    let group = unique("disk");
    let (status, log) = run_until_end(
        dir.path(),
        broker,
        &input,
        &group,
        EXTRA,
        UNTIL,
        &[(siklus::faults::STATE_WRITE_FAILS_AT, "4")],
    );
    assert!(
        !status.success(),
        "the injected write failure did not stop it:\n{log}"
    );
    assert!(log.contains("state write failed"), "{log}");
    // Nothing past the failed step was committed: the restart redoes it.
    let (ok, log) = run_until_end(dir.path(), broker, &input, &group, EXTRA, UNTIL, &[]);
    assert!(ok.success(), "{log}");
    assert_eq!(all_profiles(dir.path()), all_profiles(ref_dir.path()));
    assert_eq!(
        transitions_by_id(broker, &format!("{group}.transitions")),
        expected
    );
}
