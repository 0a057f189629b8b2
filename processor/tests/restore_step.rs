//! A restore step that fails part-way (a changelog partition without a
//! leader, as on a topic created a moment ago) must not strand the
//! partitions whose restore already ended in that step: they are handed
//! over by the next step, and none stays paused for ever.

use std::collections::BTreeSet;
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::mocking::MockCluster;
use rdkafka::topic_partition_list::Offset;
use siklus::config::Config;
use siklus::metrics::Metrics;
use siklus::restore::Restores;
use siklus_state::{Store, StoreOptions};

#[test]
fn a_partition_restored_before_a_failure_in_the_same_step_is_still_handed_over() {
    let cluster = MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    let mut cfg = Config::default();
    cfg.kafka
        .insert("bootstrap.servers".into(), servers.clone());
    // Learn the new leader soon after it is back.
    cfg.kafka
        .insert("topic.metadata.refresh.interval.ms".into(), "200".into());
    cfg.processor.group_id = "restore-step".into();
    let changelog = cfg.changelog_topic();
    cluster.create_topic(&cfg.topics.input, 2, 1).unwrap();
    cluster.create_topic(&changelog, 2, 1).unwrap();
    // Partition 1 has no leader: its watermarks cannot be read.
    cluster.partition_leader(&changelog, 1, None).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", "restore-step")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut restores = Restores::new(
        siklus::kafka::client_config(&cfg),
        changelog.clone(),
        cfg.topics.input.clone(),
        0,
        false,
        None,
    )
    .unwrap();
    restores.add(0, Offset::Beginning);
    restores.add(1, Offset::Beginning);
    let config = cfg.engine(true);
    let metrics = Metrics::default();

    // Partition 0 (an empty changelog) ends at once; partition 1 fails.
    let mut handed = BTreeSet::new();
    let first = restores.step(&store, &config, &group, &metrics, &[]);
    match first {
        Ok(done) => panic!(
            "the step did not fail: {:?}",
            done.iter().map(|r| r.partition).collect::<Vec<_>>()
        ),
        Err(e) => eprintln!("first step failed as injected: {e:#}"),
    }
    assert!(
        restores.contains(0),
        "partition 0 ended its restore in the failed step and was dropped"
    );

    cluster.partition_leader(&changelog, 1, Some(1)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !restores.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "restores never ended; handed over: {handed:?}"
        );
        match restores.step(&store, &config, &group, &metrics, &[]) {
            Ok(done) => handed.extend(done.iter().map(|r| r.partition)),
            Err(e) => eprintln!("retrying after: {e:#}"),
        }
    }
    assert_eq!(handed, BTreeSet::from([0, 1]));
}
