//! A rebalance in the middle of the stream: a second instance joins while the
//! first is processing. Partitions move; nothing is lost or applied twice.

use std::time::Duration;

use siklus::generator::GeneratorConfig;
use siklus_e2e::*;

#[test]
fn a_rebalance_mid_stream_loses_nothing() {
    let broker = Broker::shared();
    let input = unique("reb-in");
    broker.create_topic(&input, 4);
    broker.produce(
        &input,
        generated(GeneratorConfig {
            customers: 2000,
            seed: 3,
            ..Default::default()
        }),
    );
    let extra = "max_batch = 200\nidle_timeout_ms = 600000";

    // Reference: one instance, uninterrupted.
    let rd = tempfile::tempdir().unwrap();
    let rg = unique("ref");
    let rc = write_config(rd.path(), broker, &input, &rg, extra);
    let mut r = spawn_run(&rc, &["--stop-at-end"], &[]);
    assert!(wait_exit(&mut r, Duration::from_secs(180), &rc).success());
    let want_state = partitions_of(rd.path());
    let want = transitions_by_id(broker, &format!("{rg}.transitions"));

    // Instance A starts; B joins once A has produced output.
    let group = unique("reb");
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let ca = write_config(da.path(), broker, &input, &group, extra);
    let cb = write_config(db.path(), broker, &input, &group, extra);
    let out = format!("{group}.transitions");
    let mut a = spawn_run(&ca, &[], &[]);
    wait_until("instance A's first output", Duration::from_secs(90), || {
        std::panic::catch_unwind(|| broker.read_all(&out).len()).unwrap_or(0) > 100
    });
    let mut b = spawn_run(&cb, &[], &[]);
    wait_until(
        "B to take partitions from A",
        Duration::from_secs(120),
        || log_of(&ca).contains("partition revoked") && log_of(&cb).contains("partition assigned"),
    );
    let mut last = 0;
    let mut stable = 0;
    wait_until("the output to settle", Duration::from_secs(240), || {
        let n = transitions_by_id(broker, &out).len();
        stable = if n == last { stable + 1 } else { 0 };
        last = n;
        n >= want.len() && stable >= 3
    });
    terminate(&a);
    terminate(&b);
    assert!(
        wait_exit(&mut a, Duration::from_secs(60), &ca).success(),
        "{}",
        log_of(&ca)
    );
    assert!(
        wait_exit(&mut b, Duration::from_secs(60), &cb).success(),
        "{}",
        log_of(&cb)
    );

    // Every transition is there, once per id, with the same content.
    assert_eq!(transitions_by_id(broker, &out), want);
    // Each partition's state, at its latest owner (the store that got
    // furthest), equals the reference.
    let (sa, sb) = (partitions_of(da.path()), partitions_of(db.path()));
    for (p, (off, profiles)) in &want_state {
        let best = [sa.get(p), sb.get(p)]
            .into_iter()
            .flatten()
            .max_by_key(|(o, _)| *o)
            .expect("some instance owned the partition");
        assert_eq!(best.0, *off, "partition {p} did not reach the end");
        assert!(
            best.1 == *profiles,
            "partition {p}: profiles differ from the reference"
        );
    }
}
