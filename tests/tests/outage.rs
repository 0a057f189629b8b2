//! The broker goes away in the middle of a run. siklus keeps running, says
//! it is not ready while the broker is away, and when the broker is back
//! goes on to the end: every transition of an uninterrupted run, and any
//! repeat (at least once) with the same id and content. Once for 60 s, and
//! once with deliveries that time out after 3 s, so that steps fail and are
//! redone while the broker is away.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use siklus::generator::GeneratorConfig;
use siklus_e2e::*;

/// Every transition of a topic, by id: the values read with that id.
fn by_id(broker: &Broker, topic: &str) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut m: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for r in broker.read_all(topic) {
        let v = r.value.expect("a transition value");
        let t: siklus::model::StageTransition = serde_json::from_slice(&v).expect("transition");
        m.entry(t.transition_id).or_default().push(v);
    }
    m
}

#[test]
fn a_broker_away_for_60_s_makes_the_run_not_ready_and_loses_nothing() {
    away(Duration::from_secs(60), &[]);
}

#[test]
fn deliveries_timing_out_while_the_broker_is_away_are_redone_and_lose_nothing() {
    let log = away(
        Duration::from_secs(20),
        &[("SIKLUS_KAFKA__MESSAGE_TIMEOUT_MS", "3000")],
    );
    assert!(
        log.contains("step failed; redoing it"),
        "no step failed while the broker was away:\n{log}"
    );
}

/// The scenario: the broker away for `down`, siklus with `env`. Returns
/// siklus's log.
fn away(down_for: Duration, env: &[(&str, &str)]) -> String {
    let broker = Broker::start();
    let group = unique("outage");
    let input = format!("{group}.events");
    broker.create_topic(&input, 4);
    broker.produce(
        &input,
        generated(GeneratorConfig {
            customers: 4000,
            seed: 5,
            ..Default::default()
        }),
    );

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let extra = format!("http_listen = \"{addr}\"\nidle_timeout_ms = 600000\nmax_batch = 200\n");
    let cfg = write_config(dir.path(), &broker, &input, &group, &extra);
    let out = format!("{group}.transitions");
    let mut child = spawn_run(&cfg, &["--stop-at-end"], env);
    wait_until("/readyz", Duration::from_secs(120), || {
        http_get(&addr, "/readyz").is_ok_and(|(s, _, _)| s == 200)
    });
    wait_until("the first transitions", Duration::from_secs(120), || {
        !broker.read_all(&out).is_empty()
    });

    broker.stop();
    let down = Instant::now();
    wait_until("/readyz to say not ready", Duration::from_secs(45), || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "siklus stopped while the broker was away:\n{}",
            log_of(&cfg)
        );
        http_get(&addr, "/readyz").is_ok_and(|(s, _, _)| s == 503)
    });
    let scrape = http_get(&addr, "/metrics").unwrap().2;
    assert_eq!(metric_sum(&scrape, "siklus_ready"), 0.0);
    // Away for `down_for` in all, the run alive throughout.
    while down.elapsed() < down_for {
        assert!(
            child.try_wait().unwrap().is_none(),
            "siklus stopped while the broker was away:\n{}",
            log_of(&cfg)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    broker.restart();
    wait_until("/readyz again", Duration::from_secs(120), || {
        let ended = child.try_wait().unwrap().is_some();
        ended || http_get(&addr, "/readyz").is_ok_and(|(s, _, _)| s == 200)
    });
    let status = wait_exit(
        &mut child,
        Duration::from_secs(300),
        &cfg.with_extension("log"),
    );
    assert!(status.success(), "{}", log_of(&cfg));
    let got = by_id(&broker, &out);

    // The same input, uninterrupted.
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_group = unique("outage-ref");
    let ref_cfg = write_config(
        ref_dir.path(),
        &broker,
        &input,
        &ref_group,
        "idle_timeout_ms = 600000\n",
    );
    let mut reference = spawn_run(&ref_cfg, &["--stop-at-end"], &[]);
    let status = wait_exit(
        &mut reference,
        Duration::from_secs(300),
        &ref_cfg.with_extension("log"),
    );
    assert!(status.success(), "{}", log_of(&ref_cfg));
    let want = by_id(&broker, &format!("{ref_group}.transitions"));
    assert!(want.len() > 1000, "{} transitions", want.len());

    let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
    let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
    assert_eq!(
        (missing, extra),
        (0, 0),
        "missing and extra transitions of {}",
        want.len()
    );
    for (id, values) in &got {
        assert!(
            values.iter().all(|v| v == &want[id][0]),
            "transition {id} repeated with another content"
        );
    }
    let repeats: usize = got.values().map(|v| v.len() - 1).sum();
    eprintln!(
        "{} transitions, {repeats} repeats (at least once)",
        got.len()
    );
    log_of(&cfg)
}
