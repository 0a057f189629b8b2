//! A state written by the previous release is read and continued by this
//! one: resuming the previous release's interrupted replay gives the same
//! files as this release's replay of the same input from scratch.

mod common;

use std::path::Path;

use common::{siklus, stderr};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/interrupted-replay-149034a.tar.gz"
);

fn replay(dir: &Path, out: &str, state: &str) -> std::process::Output {
    siklus()
        .current_dir(dir)
        .args([
            "replay",
            "--commit-every",
            "200",
            "--until",
            "2025-06-01T00:00:00Z",
            "--input",
            "events.jsonl",
            "--output-dir",
            out,
            "--state-dir",
            state,
            "--progress",
            "none",
        ])
        .output()
        .expect("siklus runs")
}

#[test]
fn a_replay_interrupted_by_the_previous_release_resumes_with_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let untar = std::process::Command::new("tar")
        .arg("xzf")
        .arg(FIXTURE)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar runs");
    assert!(untar.success(), "cannot unpack {FIXTURE}");

    let resumed = replay(dir.path(), "out", "state");
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let summary: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    // The previous release committed three steps of 200 records.
    assert_eq!(
        summary["counters"]["skipped_offsets"].as_u64(),
        Some(600),
        "{summary}"
    );

    let fresh = replay(dir.path(), "fresh-out", "fresh-state");
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    for f in [
        "transitions.jsonl",
        "aggregates.jsonl",
        "cohorts.jsonl",
        "dlq.jsonl",
    ] {
        let a = std::fs::read(dir.path().join("fresh-out").join(f)).unwrap();
        let b = std::fs::read(dir.path().join("out").join(f)).unwrap();
        assert!(!a.is_empty() || f == "dlq.jsonl", "{f} is empty");
        assert!(
            a == b,
            "{f}: the resumed replay wrote {} bytes, a fresh one {}",
            b.len(),
            a.len()
        );
    }
}
