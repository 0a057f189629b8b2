//! The binary's file replay, dead-letter file and `inspect`, as a user runs them.

mod common;
use common::*;

#[test]
fn replay_writes_outputs_and_dead_letters_then_inspect_reads_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"event_id":"e1","customer_id":"ana","event_type":"account.signed_up","occurred_at":"2024-01-01T10:00:00Z","channel":"web"}"#, "\n",
            "this is not json\n",
            r#"{"event_id":"e2","customer_id":"ana","event_type":"order.completed","occurred_at":1704190000000,"amount_minor":1999,"currency":"EUR","order_id":"o1"}"#, "\n",
            r#"{"event_id":"e3","event_type":"page.viewed","occurred_at":"2024-01-03T10:00:00Z"}"#, "\n",
            "\n",
            r#"{"event_id":"e4","customer_id":"ana","event_type":"order.completed","occurred_at":"2024-01-04T10:00:00Z","amount_minor":-5,"currency":"EUR"}"#, "\n",
            r#"{"event_id":"e2","customer_id":"ana","event_type":"order.completed","occurred_at":1704190000000,"amount_minor":1999,"currency":"EUR","order_id":"o1"}"#, "\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let state = dir.path().join("state");
    let run = siklus()
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--output-dir")
        .arg(&out)
        .arg("--state-dir")
        .arg(&state)
        .args(["--until", "2024-06-01T00:00:00Z"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["dead_letters"], 3);
    assert_eq!(summary["counters"]["duplicates"], 1);

    let transitions = std::fs::read_to_string(out.join("transitions.jsonl")).unwrap();
    let rules: Vec<String> = transitions
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["rule"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        rules,
        [
            "first_activity",
            "acquisition",
            "first_order",
            "inactivity_at_risk",
            "inactivity_churned"
        ]
    );
    assert!(transitions.contains(r#""occurred_at":"2024-01-01T10:00:00.000Z""#));

    let dlq: Vec<serde_json::Value> = std::fs::read_to_string(out.join("dlq.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dlq.len(), 3);
    assert_eq!(dlq[0]["line"], 2);
    assert_eq!(dlq[0]["raw"], "this is not json");
    assert_eq!(dlq[1]["kind"], "missing_field");
    assert_eq!(dlq[1]["line"], 4);
    assert_eq!(dlq[2]["line"], 6, "line numbers count the blank line");
    assert!(
        dlq[2]["reason"].as_str().unwrap().contains("amount_minor"),
        "{}",
        dlq[2]
    );

    let aggs = std::fs::read_to_string(out.join("aggregates.jsonl")).unwrap();
    assert!(aggs.lines().count() > 100, "daily windows up to --until");

    let inspect = siklus()
        .args(["inspect", "--state-dir"])
        .arg(&state)
        .arg("ana")
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(view["profile"]["milestone"], "converted");
    assert_eq!(view["profile"]["activity"], "churned");
    assert_eq!(view["profile"]["net_revenue"]["EUR"], 1999);

    let missing = siklus()
        .args(["inspect", "--state-dir"])
        .arg(&state)
        .arg("nobody")
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

#[test]
fn config_check_names_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[processor]\nstate_dri = \"x\"\n").unwrap();
    let out = siklus()
        .arg("--config")
        .arg(&f)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("state_dri"));
}

#[test]
fn an_interrupted_replay_resumed_gives_the_same_outputs() {
    // With every commit durable, the resumed run continues from the last
    // one; as a bulk load, from the last one RocksDB flushed (here none: it
    // starts again, over files it cuts back).
    for bulk in ["false", "true"] {
        interrupted_replay_resumed(bulk);
    }
}

fn interrupted_replay_resumed(bulk: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 400, 3);
    let replay = |out: &std::path::Path, state: &std::path::Path, abort: Option<&str>| {
        let mut c = siklus();
        c.args([
            "replay",
            "--commit-every",
            "300",
            "--bulk-load",
            bulk,
            "--until",
            "2025-06-01T00:00:00Z",
            "--input",
        ])
        .arg(&input)
        .arg("--output-dir")
        .arg(out)
        .arg("--state-dir")
        .arg(state);
        if let Some(n) = abort {
            c.env("SIKLUS_FAULT_ABORT_AFTER_STEPS", n);
        }
        c.output().unwrap()
    };
    let whole = dir.path().join("whole");
    assert!(replay(&whole, &dir.path().join("s1"), None)
        .status
        .success());

    let resumed = dir.path().join("resumed");
    let state = dir.path().join("s2");
    assert!(
        !replay(&resumed, &state, Some("3")).status.success(),
        "the first abort did not fire"
    );
    assert!(
        !replay(&resumed, &state, Some("4")).status.success(),
        "the second abort did not fire"
    );
    let last = replay(&resumed, &state, None);
    assert!(last.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&last.stdout).unwrap();
    let skipped = summary["counters"]["skipped_offsets"].as_u64().unwrap();
    if bulk == "false" {
        // 3 + 4 commits of 300 records, less the one each abort lost.
        assert_eq!(skipped, 5 * 300, "bulk {bulk}: {summary}");
    }
    for f in [
        "transitions.jsonl",
        "aggregates.jsonl",
        "cohorts.jsonl",
        "dlq.jsonl",
    ] {
        let a = std::fs::read(whole.join(f)).unwrap();
        let b = std::fs::read(resumed.join(f)).unwrap();
        assert!(!a.is_empty() || f == "dlq.jsonl", "{f} is empty");
        assert!(
            a == b,
            "bulk {bulk}: {f} differs after resuming ({} vs {} bytes)",
            a.len(),
            b.len()
        );
    }
    // A finished replay is not run again over its own outputs.
    assert!(!replay(&resumed, &state, None).status.success());
}

/// `outputs.snapshot = "none"`: the transitions lose their `profile` and
/// nothing else; with Avro output the setting is refused.
#[test]
fn transitions_without_the_profile_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 300, 5);
    let replay = |out: &str, snapshot: &str| {
        let o = siklus()
            .env("SIKLUS_OUTPUTS__SNAPSHOT", snapshot)
            .args(["replay", "--progress", "none", "--input"])
            .arg(&input)
            .arg("--output-dir")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read_to_string(dir.path().join(out).join("transitions.jsonl")).unwrap()
    };
    let full = replay("full", "full");
    let none = replay("none", "none");
    assert!(
        full.len() > 2 * none.len(),
        "{} vs {} bytes",
        full.len(),
        none.len()
    );
    let lines = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (full, none) = (lines(&full), lines(&none));
    assert_eq!(full.len(), none.len());
    assert!(!full.is_empty());
    for (mut f, n) in full.into_iter().zip(none) {
        assert!(n.get("profile").is_none(), "{n}");
        f.as_object_mut().unwrap().remove("profile");
        assert_eq!(f, n);
    }

    let refused = siklus()
        .env("SIKLUS_OUTPUTS__SNAPSHOT", "none")
        .env("SIKLUS_PROCESSOR__OUTPUT_FORMAT", "avro")
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("outputs.snapshot"),
        "{}",
        stderr(&refused)
    );
}
