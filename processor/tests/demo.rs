//! `siklus demo` end to end, the way the README's first command runs it:
//! the binary, no arguments, no external services. The report must show the
//! events, a transition into every stage of both dimensions, the dead
//! letters and the monthly aggregates.

use std::collections::BTreeMap;
use std::process::Command;

/// Every stage of both dimensions, as the report prints them.
const STAGES: [(&str, &str); 9] = [
    ("milestone", "reached"),
    ("milestone", "acquired"),
    ("milestone", "converted"),
    ("milestone", "developing"),
    ("milestone", "loyal"),
    ("milestone", "advocate"),
    ("activity", "active"),
    ("activity", "at_risk"),
    ("activity", "churned"),
];

fn number_after(line: &str, prefix: &str) -> u64 {
    let rest = line
        .split(prefix)
        .nth(1)
        .unwrap_or_else(|| panic!("{prefix:?} not in {line:?}"));
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?} in {line:?}"))
}

#[test]
fn the_demo_runs_end_to_end_and_reports_every_stage_dead_letters_and_aggregates() {
    let out = Command::new(env!("CARGO_BIN_EXE_siklus"))
        .arg("demo")
        .env_remove("SIKLUS_CONFIG")
        .output()
        .expect("run siklus demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "siklus demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();

    // The headline: events and poison records produced.
    let head = lines.first().copied().unwrap_or_default();
    let events = number_after(head, "siklus demo:");
    let poison = number_after(head, "events (");
    assert!(events > 10_000, "too few events: {head}");
    assert_eq!(poison, 3, "{head}");

    // A transition into every stage, and the total adds up.
    let total_line = lines
        .iter()
        .find(|l| l.starts_with("Transitions by stage"))
        .expect("a transitions section");
    let total = number_after(total_line, "(");
    let mut by_stage = BTreeMap::new();
    for l in &lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 4 && f[1] == "->" {
            by_stage.insert(
                (f[0].to_string(), f[2].to_string()),
                f[3].parse::<u64>().unwrap(),
            );
        }
    }
    for (d, s) in STAGES {
        let n = by_stage.get(&(d.to_string(), s.to_string())).copied();
        assert!(
            n.is_some_and(|n| n > 0),
            "no transition into {d}/{s}:\n{stdout}"
        );
    }
    assert_eq!(by_stage.values().sum::<u64>(), total, "{stdout}");

    // Every poison record is a dead letter (the engine's own rejections too).
    let dl = lines
        .iter()
        .find(|l| l.starts_with("Dead-letter records:"))
        .expect("a dead-letter line");
    assert_eq!(number_after(dl, "Dead-letter records:"), poison, "{dl}");

    // Most of a year of monthly aggregates, with active customers in each.
    let start = lines
        .iter()
        .position(|l| l.starts_with("Monthly lifecycle"))
        .expect("a monthly table");
    let months: Vec<&str> = lines[start + 2..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .copied()
        .collect();
    assert!(months.len() >= 10, "{stdout}");
    for m in &months {
        let active: u64 = m.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(active > 0, "a month without active customers: {m}");
    }

    // Nothing on stderr but what a person should see: no backtrace, no
    // colour codes when it is not a terminal.
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}
