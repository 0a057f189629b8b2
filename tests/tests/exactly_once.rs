//! `processing.guarantee = "exactly_once"` on the real broker: a run is
//! aborted right after a step's transaction committed and before its state
//! reached RocksDB, then restarted. A `read_committed` reader of the
//! transitions sees each one exactly once, because the restart restores the
//! committed step from the changelog instead of processing it again. The
//! same scenario at least once repeats the step's transitions, which shows
//! the test can tell the two apart. A SIGKILL in the middle of a
//! transaction leaves records on the topic that such a reader never sees,
//! and a restore from the changelog applies none of the aborted ones. A
//! zombie with the same transactional id is fenced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use siklus::generator::GeneratorConfig;
use siklus::model::StageTransition;
use siklus_e2e::*;

const PARTITIONS: i32 = 4;

fn config(dir: &Path, broker: &Broker, input: &str, group: &str, guarantee: &str) -> PathBuf {
    let p = dir.join("siklus.toml");
    std::fs::write(
        &p,
        format!(
            "[kafka]\n\"bootstrap.servers\" = \"{}\"\n\n[topics]\ninput = \"{input}\"\ntransitions = \"{group}.transitions\"\naggregates = \"{group}.aggregates\"\ncohorts = \"{group}.cohorts\"\ndlq = \"{group}.dlq\"\n\n[processor]\ngroup_id = \"{group}\"\nstate_dir = \"{}\"\ncommit_interval_ms = 200\nmax_batch = 300\nidle_timeout_ms = 600000\n\n[processing]\nguarantee = \"{guarantee}\"\n",
            broker.addr,
            dir.join("state").display(),
        ),
    )
    .unwrap();
    p
}

fn run(cfg: &Path, envs: &[(&str, &str)]) -> std::process::ExitStatus {
    let mut c = spawn_run(cfg, &["--stop-at-end"], envs);
    wait_exit(&mut c, Duration::from_secs(300), &cfg.with_extension("log"))
}

/// How many times each transition id was read (read_committed).
fn counts(broker: &Broker, topic: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in broker.read_all_decided(topic) {
        let t: StageTransition = serde_json::from_slice(&r.value.unwrap()).unwrap();
        *m.entry(t.transition_id).or_default() += 1;
    }
    m
}

/// Fails unless `got` holds each transition id of `want` once, and no other.
fn assert_exactly_once(got: &BTreeMap<String, usize>, want: &BTreeMap<String, usize>) {
    let twice = got.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} transitions read more than once");
    assert_same_ids(got, want);
}

/// Fails, with the number missing and extra and a few of each, unless
/// `got` and `want` hold the same transition ids.
fn assert_same_ids(got: &BTreeMap<String, usize>, want: &BTreeMap<String, usize>) {
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "not the same transitions as the uninterrupted run: {} of {} missing (e.g. {:?}), {} extra (e.g. {:?})",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(3)],
        extra.len(),
        &extra[..extra.len().min(3)]
    );
}

/// Aborts after the 3rd step's delivery, restarts, runs to the end.
fn aborted_then_restarted(
    broker: &Broker,
    input: &str,
    guarantee: &str,
) -> (BTreeMap<String, usize>, String) {
    let dir = tempfile::tempdir().unwrap();
    let group = unique(&format!("eos-{guarantee}"));
    let cfg = config(dir.path(), broker, input, &group, guarantee);
    let status = run(&cfg, &[("SIKLUS_FAULT_ABORT_AFTER_STEPS", "3")]);
    assert!(!status.success(), "the fault injection did not fire");
    assert!(run(&cfg, &[]).success());
    let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
    (counts(broker, &format!("{group}.transitions")), log)
}

/// A new input topic with the events of `customers` customers.
fn load_input(broker: &Broker, customers: u64) -> String {
    let input = unique("eos-in");
    broker.create_topic(&input, PARTITIONS);
    broker.produce(
        &input,
        generated(GeneratorConfig {
            customers,
            seed: 21,
            ..Default::default()
        }),
    );
    input
}

/// One uninterrupted exactly-once run: each transition id, read once.
fn reference(broker: &Broker, input: &str) -> BTreeMap<String, usize> {
    let rd = tempfile::tempdir().unwrap();
    let rg = unique("eos-ref");
    let rc = config(rd.path(), broker, input, &rg, "exactly_once");
    assert!(run(&rc, &[]).success());
    let log = std::fs::read_to_string(rc.with_extension("log")).unwrap_or_default();
    assert!(log.contains("exactly-once outputs"), "{log}");
    let want = counts(broker, &format!("{rg}.transitions"));
    assert!(want.len() > 100);
    assert!(want.values().all(|n| *n == 1));
    want
}

#[test]
fn exactly_once_outputs_survive_a_kill_after_the_commit() {
    let broker = Broker::shared();
    let input = load_input(broker, 400);
    let want = reference(broker, &input);

    let (got, log) = aborted_then_restarted(broker, &input, "exactly_once");
    assert!(
        log.contains("partition restored from the changelog"),
        "the committed step was not restored:\n{log}"
    );
    assert_exactly_once(&got, &want);

    // At least once, the same abort repeats the step's transitions.
    let (alo, _) = aborted_then_restarted(broker, &input, "at_least_once");
    assert!(
        alo.values().any(|n| *n > 1),
        "at least once repeated nothing: the scenario tests nothing"
    );
    assert_same_ids(&alo, &want);
}

/// A SIGKILL in the middle of the stream leaves a transaction open, whose
/// records are on the topic but never committed: the restarted run fences
/// the killed producer (same transactional.id), the broker aborts that
/// transaction, and `read_committed` readers see each transition once.
#[test]
fn exactly_once_outputs_survive_a_sigkill_mid_stream() {
    let broker = Broker::shared();
    let input = load_input(broker, 1500);
    let want = reference(broker, &input);

    let dir = tempfile::tempdir().unwrap();
    let group = unique("eos-kill");
    let out = format!("{group}.transitions");
    let cfg = config(dir.path(), broker, &input, &group, "exactly_once");
    let mut child = spawn_run(&cfg, &["--stop-at-end"], &[]);
    wait_until("committed output", Duration::from_secs(120), || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill:\n{}",
            log_of(&cfg)
        );
        broker.read_all_committed(&out).len() > want.len() / 4
    });
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let written = broker.read_all(&out).len();
    let committed = broker.read_all_committed(&out).len();
    eprintln!("at the kill: {written} transitions written, {committed} committed");
    // The state directory is lost with the machine: the restart restores
    // from the changelog, which holds the aborted transaction's records
    // too. Only committed ones may be applied, or the restored state would
    // be ahead of the committed input offsets and transitions would be lost.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    assert!(run(&cfg, &[]).success(), "{}", log_of(&cfg));
    assert!(
        log_of(&cfg).contains("partition restored from the changelog"),
        "{}",
        log_of(&cfg)
    );

    let got = counts(broker, &out);
    assert_exactly_once(&got, &want);
}

/// Copies a state directory (of a stopped instance).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A zombie: a copy of an instance's state directory (a restored volume
/// snapshot, a cloned machine) starts while the instance still runs, with
/// the same transactional id. The newer one fences the older, which stops
/// with an error that says so, and a `read_committed` reader sees each
/// transition once.
#[test]
fn a_zombie_with_the_same_transactional_id_is_fenced_and_nothing_is_written_twice() {
    let broker = Broker::shared();
    let input = load_input(broker, 1500);
    let want = reference(broker, &input);

    let dir = tempfile::tempdir().unwrap();
    let group = unique("eos-zombie");
    let out = format!("{group}.transitions");
    let cfg = config(dir.path(), broker, &input, &group, "exactly_once");
    // A short first run gives the state directory its instance id.
    let mut first = spawn_run(&cfg, &[], &[]);
    wait_until(
        "the first committed output",
        Duration::from_secs(120),
        || broker.read_all_committed(&out).len() > want.len() / 10,
    );
    terminate(&first);
    assert!(wait_exit(
        &mut first,
        Duration::from_secs(60),
        &cfg.with_extension("log")
    )
    .success());
    let twin_dir = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("state"), &twin_dir.path().join("state"));
    let twin_cfg = config(twin_dir.path(), broker, &input, &group, "exactly_once");

    let mut old = spawn_run(&cfg, &[], &[]);
    let seen = broker.read_all_committed(&out).len();
    wait_until(
        "the old instance's next output",
        Duration::from_secs(120),
        || broker.read_all_committed(&out).len() > seen,
    );
    // The twin initialises the same transactional id: the old one is fenced.
    let mut twin = spawn_run(&twin_cfg, &["--stop-at-end"], &[]);
    let status = wait_exit(
        &mut old,
        Duration::from_secs(180),
        &cfg.with_extension("log"),
    );
    assert!(!status.success(), "the fenced instance went on running");
    let log = log_of(&cfg);
    assert!(
        log.to_lowercase().contains("fenced"),
        "the fenced instance's error does not say so:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let status = wait_exit(
        &mut twin,
        Duration::from_secs(300),
        &twin_cfg.with_extension("log"),
    );
    assert!(status.success(), "{}", log_of(&twin_cfg));

    let got = counts(broker, &out);
    assert_exactly_once(&got, &want);
}
