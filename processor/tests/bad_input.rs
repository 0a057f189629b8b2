//! Bad input through the binary's file replay: every dead letter carries its
//! own bytes and reason, whichever stage rejected it, and one poison record
//! with a wild clock changes no other customer's transitions.

use std::collections::BTreeMap;
use std::path::Path;

mod common;
use common::*;

fn replay(input: &Path, out: &Path, extra: &[&str]) {
    let run = siklus()
        .args(["replay", "--progress", "none", "--input"])
        .arg(input)
        .arg("--output-dir")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn each_dead_letter_carries_its_own_line_whichever_check_rejected_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let long_id = "x".repeat(2000);
    let future = r#"{"event_id":"f1","customer_id":"bob","event_type":"page.viewed","occurred_at":"2099-01-01T00:00:00Z"}"#;
    let too_long = format!(
        r#"{{"event_id":"l1","customer_id":"{long_id}","event_type":"page.viewed","occurred_at":"2024-01-02T00:00:00Z"}}"#
    );
    let overflow = r#"{"event_id":"o2","customer_id":"ana","event_type":"order.completed","occurred_at":"2024-01-01T11:00:00Z","amount_minor":9223372036854775807,"currency":"EUR","order_id":"b"}"#;
    let late = r#"{"event_id":"old","customer_id":"ana","event_type":"page.viewed","occurred_at":"2023-01-01T00:00:00Z"}"#;
    let text = [
        r#"{"event_id":"g1","customer_id":"ana","event_type":"account.signed_up","occurred_at":"2024-01-01T10:00:00Z"}"#,
        future,
        "not json",
        &too_long,
        r#"{"event_id":"o1","customer_id":"ana","event_type":"order.completed","occurred_at":"2024-01-01T10:30:00Z","amount_minor":9223372036854775807,"currency":"EUR","order_id":"a"}"#,
        overflow,
        late,
    ]
    .join("\n");
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("out");
    replay(&input, &out, &[]);
    let dlq = lines(&out.join("dlq.jsonl"));
    let got: Vec<(i64, String, String)> = dlq
        .iter()
        .map(|d| {
            (
                d["line"].as_i64().unwrap(),
                d["kind"].as_str().unwrap().to_string(),
                d["raw"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "future".to_string(), future.to_string()),
            (3, "json".to_string(), "not json".to_string()),
            (4, "invalid_field".to_string(), too_long.clone()),
            (6, "overflow".to_string(), overflow.to_string()),
            (7, "too_late".to_string(), late.to_string()),
        ],
        "{dlq:#?}"
    );
    // The revenue did not wrap.
    let state = dir.path().join("state");
    replay(
        &input,
        &dir.path().join("out2"),
        &["--state-dir", state.to_str().unwrap()],
    );
    let inspect = siklus()
        .args(["inspect", "--state-dir"])
        .arg(&state)
        .arg("ana")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("9223372036854775807"), "{text}");
    assert!(!text.contains("-2"), "{text}");
}

/// Transitions per customer, in sequence order.
fn by_customer(path: &Path) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for t in lines(path) {
        m.entry(t["customer_id"].as_str().unwrap().to_string())
            .or_default()
            .push((t["seq"].as_u64().unwrap(), t.to_string()));
    }
    m.into_iter()
        .map(|(c, mut v)| {
            v.sort();
            (c, v.into_iter().map(|(_, t)| t).collect())
        })
        .collect()
}

#[test]
fn one_poison_record_first_or_in_the_middle_changes_no_other_customer() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.jsonl");
    generate(&clean, 300, 5);
    let text = std::fs::read_to_string(&clean).unwrap();
    let events: Vec<&str> = text.lines().collect();
    assert!(events.len() > 1000);
    let until = ["--watermark", "live", "--until", "2026-06-01T00:00:00Z"];
    replay(&clean, &dir.path().join("ref"), &until);
    let reference = by_customer(&dir.path().join("ref/transitions.jsonl"));

    // The first record dated 1970; a record 273 days ahead (a typo of the
    // year) in the middle; one from the epoch's far side in the middle.
    let first_ts = serde_json::from_str::<serde_json::Value>(events[0]).unwrap()["occurred_at"]
        .as_str()
        .unwrap()
        .to_string();
    let ahead = {
        let mid: serde_json::Value = serde_json::from_str(events[events.len() / 2]).unwrap();
        let t = mid["occurred_at"].as_str().unwrap().to_string();
        let year: i32 = t[..4].parse().unwrap();
        format!("{}{}", year + 1, &t[4..])
    };
    for (name, at, when) in [
        ("first-1970", 0, "1970-01-02T00:00:00Z".to_string()),
        ("middle-typo", events.len() / 2, ahead),
        (
            "middle-1970",
            events.len() / 3,
            "1970-01-02T00:00:00Z".to_string(),
        ),
    ] {
        let poison = format!(
            r#"{{"event_id":"p-{name}","customer_id":"poison","event_type":"order.completed","occurred_at":"{when}","amount_minor":100,"currency":"EUR"}}"#
        );
        let mut with: Vec<String> = events.iter().map(|s| s.to_string()).collect();
        with.insert(at, poison);
        let input = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&input, with.join("\n")).unwrap();
        let out = dir.path().join(name);
        replay(&input, &out, &until);
        let mut got = by_customer(&out.join("transitions.jsonl"));
        got.remove("poison");
        assert_eq!(
            got.len(),
            reference.len(),
            "{name}: customers with transitions differ (first event at {first_ts})"
        );
        for (c, ts) in &reference {
            assert_eq!(
                got.get(c),
                Some(ts),
                "{name}: the transitions of {c} changed"
            );
        }
    }
}
