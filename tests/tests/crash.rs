//! Crash safety: a processor killed mid-stream and restarted ends with the
//! same state as an uninterrupted run, and every transition is on the output
//! (duplicates only with identical ids and content).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use siklus::model::StageTransition;
use siklus_e2e::*;

const UNTIL: &str = "2025-03-01T00:00:00Z";
// Every partition is busy here: no idle shortcuts.
const EXTRA: &str = "max_batch = 300\nidle_timeout_ms = 600000";

/// Asserts two states are equal, describing the first differences readably.
fn assert_same_state(
    got: &BTreeMap<(u32, String), Vec<u8>>,
    want: &BTreeMap<(u32, String), Vec<u8>>,
    what: &str,
) {
    if got == want {
        return;
    }
    let mut report = String::new();
    let only_got: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let only_want: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    report.push_str(&format!(
        "{} vs {} profiles; only in result: {only_got:?}; missing: {only_want:?}\n",
        got.len(),
        want.len()
    ));
    let mut n = 0;
    for (k, v) in got {
        if let Some(w) = want.get(k) {
            if v != w && n < 3 {
                n += 1;
                let a =
                    siklus::engine::decode_profile(v).map(|p| serde_json::to_string(&p).unwrap());
                let b =
                    siklus::engine::decode_profile(w).map(|p| serde_json::to_string(&p).unwrap());
                report.push_str(&format!("{k:?}:\n  got  {a:?}\n  want {b:?}\n"));
            }
        }
    }
    let differing = got
        .iter()
        .filter(|(k, v)| want.get(*k).is_some_and(|w| w != *v))
        .count();
    panic!("{what}: {differing} profiles differ\n{report}");
}

#[test]
fn killed_mid_stream_and_restarted_matches_an_uninterrupted_run() {
    let broker = Broker::shared();
    let input = unique("crash-in");
    load_generated(broker, &input, 4, 1500, 11);

    // Reference: one uninterrupted run.
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_group = unique("ref");
    assert!(run_until_end(
        ref_dir.path(),
        broker,
        &input,
        &ref_group,
        EXTRA,
        UNTIL,
        &[]
    )
    .0
    .success());
    let expected_state = all_profiles(ref_dir.path());
    let expected = transitions_by_id(broker, &format!("{ref_group}.transitions"));
    assert!(
        expected.len() > 1000,
        "too few transitions to be meaningful: {}",
        expected.len()
    );

    // 2. SIGKILL at a moment chosen by the output's progress.
    let dir = tempfile::tempdir().unwrap();
    let group = unique("kill");
    let cfg = write_config(dir.path(), broker, &input, &group, "max_batch = 300\n# every partition is busy here: no idle shortcuts\nidle_timeout_ms = 600000");
    let mut child = spawn_run(&cfg, &["--stop-at-end", "--until", UNTIL], &[]);
    let out_topic = format!("{group}.transitions");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no output before the kill");
        std::thread::sleep(Duration::from_millis(100));
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill: still checked below
        }
        let md_ok = std::panic::catch_unwind(|| broker.read_all(&out_topic).len()).unwrap_or(0);
        if md_ok > 200 {
            child.kill().unwrap(); // SIGKILL
            let _ = child.wait();
            break;
        }
    }
    // Restarted at once: the successor joins while the dead member is still
    // in the group, until the coordinator evicts it (session.timeout.ms).
    assert!(
        run_until_end(dir.path(), broker, &input, &group, EXTRA, UNTIL, &[])
            .0
            .success()
    );
    let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("assigned"))
        .take(40)
        .collect();
    eprintln!("siklus warnings:\n{}", warnings.join("\n"));
    assert_same_state(
        &all_profiles(dir.path()),
        &expected_state,
        "state after SIGKILL",
    );
    assert_eq!(transitions_by_id(broker, &out_topic), expected);
}

/// The process aborts right after a step's outputs were delivered and before
/// its state was written (SIKLUS_FAULT_ABORT_AFTER_STEPS), twice, then runs to
/// the end. This once failed with extra at_risk/churned/reactivated cycles:
/// right after the restart, a partition not yet fetched counted as idle (the
/// broker under-reports its high watermark) and its watermark jumped ahead,
/// firing timers before the events that precede them.
#[test]
fn aborted_between_delivery_and_state_write_matches_an_uninterrupted_run() {
    let broker = Broker::shared();
    let input = unique("abort-in");
    load_generated(broker, &input, 4, 1500, 11);
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_group = unique("ref");
    assert!(run_until_end(
        ref_dir.path(),
        broker,
        &input,
        &ref_group,
        EXTRA,
        UNTIL,
        &[]
    )
    .0
    .success());
    let expected_state = all_profiles(ref_dir.path());
    let expected = transitions_by_id(broker, &format!("{ref_group}.transitions"));

    // 1. Aborted after delivering a step's outputs but before writing its state.
    let dir = tempfile::tempdir().unwrap();
    let group = unique("abort");
    let status = run_until_end(
        dir.path(),
        broker,
        &input,
        &group,
        EXTRA,
        UNTIL,
        &[("SIKLUS_FAULT_ABORT_AFTER_STEPS", "5")],
    )
    .0;
    assert!(!status.success(), "the fault injection did not fire");
    let status = run_until_end(
        dir.path(),
        broker,
        &input,
        &group,
        EXTRA,
        UNTIL,
        &[("SIKLUS_FAULT_ABORT_AFTER_STEPS", "17")],
    )
    .0;
    assert!(!status.success(), "the second fault injection did not fire");
    assert!(
        run_until_end(dir.path(), broker, &input, &group, EXTRA, UNTIL, &[])
            .0
            .success()
    );
    {
        let got_state = all_profiles(dir.path());
        if let Some(((_, cust), _)) = got_state
            .iter()
            .find(|(k, v)| expected_state.get(*k) != Some(*v))
        {
            for (label, topic) in [
                ("reference", format!("{ref_group}.transitions")),
                ("aborted", format!("{group}.transitions")),
            ] {
                let mut ts: Vec<StageTransition> = broker
                    .read_all(&topic)
                    .into_iter()
                    .map(|r| serde_json::from_slice::<StageTransition>(&r.value.unwrap()).unwrap())
                    .filter(|t| &t.customer_id == cust)
                    .collect();
                ts.sort_by_key(|t| t.seq);
                ts.dedup_by_key(|t| t.seq);
                eprintln!("{label} {cust}:");
                for t in ts {
                    eprintln!(
                        "  {} {} {:?}->{} {} {:?}",
                        t.seq,
                        t.occurred_at,
                        t.from_stage,
                        t.to_stage,
                        t.rule,
                        t.triggering_event_id
                    );
                }
            }
        }
    }
    assert_same_state(
        &all_profiles(dir.path()),
        &expected_state,
        "state after aborts",
    );
    assert_eq!(
        transitions_by_id(broker, &format!("{group}.transitions")),
        expected
    );
}
