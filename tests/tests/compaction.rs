//! The changelog is a compacted topic: the broker's log cleaner removes
//! every value of a key but the last. Here compaction really runs (segments
//! of half a second, any dirty ratio), and a new instance that restores from
//! the compacted changelog has the same state as the instance that wrote it.

use std::time::Duration;

use siklus::generator::GeneratorConfig;
use siklus_e2e::*;

const EXTRA: &str = "max_batch = 300\nidle_timeout_ms = 600000";

#[test]
fn a_restore_from_a_compacted_changelog_equals_the_state() {
    let broker = Broker::shared();
    let group = unique("compact");
    let input = format!("{group}.events");
    broker.create_topic(&input, 2);
    // Few customers with many events: many values per changelog key.
    broker.produce(
        &input,
        generated(GeneratorConfig {
            customers: 300,
            events_per_customer: 40.0,
            seed: 17,
            ..Default::default()
        }),
    );
    // The changelog, created before siklus would: compacted, in segments
    // that roll every 500 ms, cleaned at any dirty ratio.
    let changelog = format!("siklus.{group}.profiles-changelog");
    broker.create_topic_with(
        &changelog,
        2,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "500"),
            ("min.cleanable.dirty.ratio", "0.001"),
            ("delete.retention.ms", "100"),
            ("min.compaction.lag.ms", "0"),
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), broker, &input, &group, EXTRA);
    let mut run = spawn_run(&cfg, &["--stop-at-end"], &[]);
    assert!(
        wait_exit(
            &mut run,
            Duration::from_secs(300),
            &cfg.with_extension("log")
        )
        .success(),
        "{}",
        log_of(&cfg)
    );
    let want = partitions_of(dir.path());

    // Wait for the cleaner: values gone from below the end. It cleans
    // every segment but the active one, and the run rolled many (one
    // every 500 ms of appends).
    let written = broker.read_all(&changelog).len();
    let mut left = written;
    wait_until(
        "the log cleaner to compact the changelog",
        Duration::from_secs(180),
        || {
            left = broker.read_all(&changelog).len();
            left < written
        },
    );
    eprintln!("changelog compacted: {written} records, {left} left");

    // A new instance of the group, with no state: everything from the
    // compacted changelog, nothing left to process.
    let fresh = tempfile::tempdir().unwrap();
    let fresh_cfg = write_config(fresh.path(), broker, &input, &group, EXTRA);
    let mut restore = spawn_run(&fresh_cfg, &["--stop-at-end"], &[]);
    assert!(
        wait_exit(
            &mut restore,
            Duration::from_secs(300),
            &fresh_cfg.with_extension("log")
        )
        .success(),
        "{}",
        log_of(&fresh_cfg)
    );
    assert!(
        log_of(&fresh_cfg).contains("partition restored from the changelog"),
        "{}",
        log_of(&fresh_cfg)
    );
    let got = partitions_of(fresh.path());
    assert_eq!(got.len(), want.len());
    for (p, (off, profiles)) in &want {
        let (goff, gprof) = &got[p];
        assert_eq!(goff, off, "partition {p}: offset");
        assert_eq!(gprof.len(), profiles.len(), "partition {p}: profiles");
        let differ = profiles
            .iter()
            .filter(|(c, v)| gprof.get(*c) != Some(*v))
            .count();
        assert_eq!(differ, 0, "partition {p}: {differ} profiles differ");
    }
}
