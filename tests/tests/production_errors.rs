//! An output record the broker can never accept (here: every transition is
//! larger than its topic's `max.message.bytes`). Under the default
//! `production_error_policy = "fail"` the instance stops with an error that
//! names the topic and commits nothing past the failed step; under `skip`
//! the records are dropped, logged and counted, and the run goes on.

use std::time::Duration;

use siklus::model::InteractionEvent;
use siklus_e2e::*;

const EVENTS: usize = 40;

/// An input topic of 20 customers with two events each, and a transitions
/// topic that accepts no record of a transition's size.
fn setup(broker: &Broker, group: &str) -> String {
    let input = format!("{group}.events");
    broker.create_topic(&input, 2);
    broker.produce(
        &input,
        (0..EVENTS).map(|i| {
            let customer = format!("c{}", i % 20);
            let e = InteractionEvent {
                event_id: format!("e{i}"),
                customer_id: customer.clone(),
                event_type: if i < 20 {
                    "account.signed_up".into()
                } else {
                    "page.viewed".into()
                },
                occurred_at: 1_704_067_200_000 + i as i64 * 60_000,
                ..Default::default()
            };
            (customer.into_bytes(), siklus::codec::encode_event_json(&e))
        }),
    );
    broker.create_topic_with(
        &format!("{group}.transitions"),
        2,
        &[("max.message.bytes", "200")],
    );
    input
}

#[test]
fn under_fail_a_record_the_broker_refuses_stops_the_instance_and_commits_nothing() {
    let broker = Broker::shared();
    let group = unique("prodfail");
    let input = setup(broker, &group);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), broker, &input, &group, "");
    let mut run = spawn_run(&cfg, &["--stop-at-end"], &[]);
    let status = wait_exit(
        &mut run,
        Duration::from_secs(180),
        &cfg.with_extension("log"),
    );
    let log = log_of(&cfg);
    assert!(!status.success(), "the run succeeded:\n{log}");
    assert!(
        log.contains(&format!("{group}.transitions")),
        "the error does not name the topic:\n{log}"
    );
    // No offset committed (the harness shows none as -1).
    let committed = broker.committed(&group, &input);
    assert!(
        committed.values().all(|o| *o <= 0),
        "offsets committed past the failed step: {committed:?}"
    );
    assert!(broker.read_all(&format!("{group}.transitions")).is_empty());
}

#[test]
fn under_skip_a_record_the_broker_refuses_is_dropped_counted_and_the_run_goes_on() {
    let broker = Broker::shared();
    let group = unique("prodskip");
    let input = setup(broker, &group);
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = write_config(
        dir.path(),
        broker,
        &input,
        &group,
        &format!("production_error_policy = \"skip\"\nhttp_listen = \"{addr}\"\n"),
    );
    let mut run = spawn_run(&cfg, &[], &[]);
    wait_until("every record committed", Duration::from_secs(180), || {
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run stopped:\n{}",
            log_of(&cfg)
        );
        broker.committed(&group, &input).values().sum::<i64>() == EVENTS as i64
    });
    let scrape = http_get(&addr, "/metrics").unwrap().2;
    let skipped = metric_sum(&scrape, "siklus_production_skipped_total");
    assert!(skipped >= 20.0, "{skipped} records counted as skipped");
    terminate(&run);
    assert!(wait_exit(
        &mut run,
        Duration::from_secs(60),
        &cfg.with_extension("log")
    )
    .success());
    let log = log_of(&cfg);
    assert!(
        log.contains("output record skipped"),
        "no log line for the skipped records:\n{log}"
    );
    assert!(broker.read_all(&format!("{group}.transitions")).is_empty());
}
