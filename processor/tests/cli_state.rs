//! `inspect` on a state that is missing or in use, and the progress of a
//! file replay.

use std::path::Path;

mod common;
use common::*;

/// A state directory holding the profile of `ana`, from a file replay.
fn replayed_state(dir: &Path) -> std::path::PathBuf {
    let input = dir.join("events.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"event_id":"e1","customer_id":"ana","event_type":"account.signed_up","occurred_at":"2024-01-01T10:00:00Z","channel":"web"}"#,
            "\n",
            r#"{"event_id":"e2","customer_id":"ana","event_type":"order.completed","occurred_at":"2024-01-02T10:00:00Z","amount_minor":1999,"currency":"EUR","order_id":"o1"}"#,
            "\n",
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let o = siklus()
        .args(["replay", "--progress", "none", "--input"])
        .arg(&input)
        .arg("--output-dir")
        .arg(dir.join("out"))
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    state
}

#[test]
fn inspect_never_creates_a_missing_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-state");
    let o = siklus()
        .args(["inspect", "--state-dir"])
        .arg(&missing)
        .arg("ana")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: no state directory at {}",
            missing.display()
        )),
        "{err}"
    );
    assert!(err.contains("--state-dir"), "{err}");
    assert!(!missing.exists(), "inspect created {}", missing.display());

    // An existing directory without a store is not one either, and stays empty.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = siklus()
        .args(["inspect", "--state-dir"])
        .arg(&empty)
        .arg("ana")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("holds no siklus state"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    // A state export does not create one either.
    let o = siklus()
        .args(["state", "export", "--state-dir"])
        .arg(&missing)
        .arg("--output")
        .arg(dir.path().join("snap"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(!missing.exists());
}

#[test]
fn inspect_reads_a_state_held_open_by_a_running_instance() {
    let dir = tempfile::tempdir().unwrap();
    let state = replayed_state(dir.path());
    // This test process holds RocksDB's LOCK, as a running `siklus run` does.
    let held = siklus_state::Store::open(&state, &Default::default()).unwrap();

    let o = siklus()
        .args(["inspect", "--state-dir"])
        .arg(&state)
        .arg("ana")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let view: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(view["profile"]["milestone"], "converted");
    assert_eq!(view["profile"]["net_revenue"]["EUR"], 1999);

    let o = siklus()
        .args(["state", "export", "--state-dir"])
        .arg(&state)
        .arg("--output")
        .arg(dir.path().join("snap"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // A command that writes says who holds it.
    let o = siklus()
        .args(["state", "import", "--state-dir"])
        .arg(&state)
        .arg("--input")
        .arg(dir.path().join("snap"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("error: {} is in use: ", state.display())),
        "{err}"
    );
    assert!(err.contains("a running siklus instance holds"), "{err}");
    drop(held);
}

#[test]
fn a_file_replay_reports_progress_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 300, 5);
    let size = std::fs::metadata(&input).unwrap().len();
    let lines = std::fs::read_to_string(&input).unwrap().lines().count() as u64;

    let o = siklus()
        .args([
            "replay",
            "--progress",
            "json",
            "--progress-interval-ms",
            "0",
        ])
        .arg("--input")
        .arg(&input)
        .arg("--output-dir")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let progress: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(progress.len() >= 2, "{}", stderr(&o));
    let mut last_records = 0;
    for p in &progress {
        for k in [
            "records",
            "bytes",
            "total_bytes",
            "elapsed_s",
            "records_per_sec",
        ] {
            assert!(p[k].is_number(), "{k} in {p}");
        }
        assert_eq!(p["total_bytes"], size);
        let r = p["records"].as_u64().unwrap();
        assert!(r >= last_records, "{p}");
        assert!(p["bytes"].as_u64().unwrap() <= size, "{p}");
        last_records = r;
    }
    let last = progress.last().unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["records"], lines);
    assert_eq!(last["bytes"], size);
    assert!(progress[..progress.len() - 1]
        .iter()
        .all(|p| p["done"] == false));
    // The summary on stdout is unchanged.
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["records"], lines);

    // --progress none: nothing but logs.
    let o = siklus()
        .args(["replay", "--progress", "none", "--input"])
        .arg(&input)
        .arg("--output-dir")
        .arg(dir.path().join("out2"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        !stderr(&o).lines().any(|l| l.starts_with('{')),
        "{}",
        stderr(&o)
    );
}
