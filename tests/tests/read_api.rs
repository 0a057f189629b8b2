//! The HTTP endpoint of a live run: metrics, readiness, the read API
//! (`GET /customers/{id}`) compared with `siklus inspect`, and
//! `GET /aggregates/latest`.

use std::process::Command;
use std::time::Duration;

use siklus::model::InteractionEvent;
use siklus_e2e::*;

fn ev(id: &str, customer: &str, ty: &str, at: &str) -> Vec<u8> {
    let order = ty == "order.completed";
    siklus::codec::encode_event_json(&InteractionEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: ty.into(),
        occurred_at: siklus::time::parse_rfc3339(at).expect("time"),
        amount_minor: order.then_some(2500),
        currency: order.then(|| "EUR".into()),
        order_id: order.then(|| format!("o-{id}")),
        ..Default::default()
    })
}

#[test]
fn metrics_readiness_and_read_api_during_a_live_run() {
    let broker = Broker::shared();
    let group = unique("api");
    let input = format!("{group}.events");
    broker.create_topic(&input, 2);
    // Within a few days: no inactivity deadline falls due during the run,
    // so the profiles do not change between the API call and `inspect`.
    let events = [
        ("a1", "alice", "ad.impression", "2024-01-01T09:00:00Z"),
        ("a2", "alice", "account.signed_up", "2024-01-02T09:00:00Z"),
        ("b1", "bob", "page.viewed", "2024-01-02T10:00:00Z"),
        ("a3", "alice", "order.completed", "2024-01-03T09:00:00Z"),
        (
            "c1",
            "carol",
            "newsletter.subscribed",
            "2024-01-04T09:00:00Z",
        ),
        ("a4", "alice", "order.completed", "2024-01-05T09:00:00Z"),
        ("b2", "bob", "page.viewed", "2024-01-06T10:00:00Z"),
    ];
    broker.produce(
        &input,
        events
            .iter()
            .map(|(id, c, ty, at)| (c.as_bytes().to_vec(), ev(id, c, ty, at))),
    );

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = write_config(
        dir.path(),
        broker,
        &input,
        &group,
        &format!("http_listen = \"{addr}\"\nkey_partitioner = \"crc32\"\n"),
    );
    let log = cfg.with_extension("log");
    let mut child = spawn_run(&cfg, &[], &[]);

    wait_until("/healthz", Duration::from_secs(60), || {
        http_get(&addr, "/healthz").is_ok_and(|(s, _, _)| s == 200)
    });
    let mut scrape = String::new();
    wait_until("every event applied", Duration::from_secs(90), || {
        scrape = http_get(&addr, "/metrics").map(|r| r.2).unwrap_or_default();
        metric_sum(&scrape, "siklus_events_applied_total") >= events.len() as f64
            && metric_sum(&scrape, "siklus_transitions_out_total") > 0.0
    });
    assert!(metric_sum(&scrape, "siklus_records_in_total") >= events.len() as f64);
    assert!(scrape.contains("siklus_records_in_total{partition=\""));
    assert!(scrape
        .contains("siklus_transitions_out_total{dimension=\"milestone\",to_stage=\"converted\"}"));
    assert!(
        scrape.contains("siklus_consumer_lag{partition=\"")
            || scrape.contains("siklus_partition_position{partition=\"")
    );
    wait_until("/readyz", Duration::from_secs(30), || {
        http_get(&addr, "/readyz").is_ok_and(|(s, _, _)| s == 200)
    });

    let (status, _, body) = http_get(&addr, "/customers/alice").unwrap();
    assert_eq!(status, 200, "{body}");
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["customer_id"], "alice");
    let last: Vec<&str> = api["last_transitions"]
        .as_array()
        .expect("last transitions")
        .iter()
        .map(|t| t["to_stage"].as_str().unwrap())
        .collect();
    // Newest first: the second order made alice `developing`.
    assert_eq!(last.first(), Some(&"developing"), "{body}");
    assert!(last.contains(&"converted") && last.contains(&"acquired"));

    let (status, _, body) = http_get(&addr, "/customers/nobody-here").unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = http_get(&addr, "/customers/bad%07id").unwrap();
    assert_eq!(status, 400, "{body}");

    let (status, _, body) = http_get(&addr, "/aggregates/latest").unwrap();
    assert_eq!(status, 200, "{body}");
    let latest: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(latest["aggregates"].is_object(), "{body}");

    terminate(&child);
    let status = wait_exit(&mut child, Duration::from_secs(60), &log);
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // `inspect` on the state the run left shows the same profile.
    let out = Command::new(siklus_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["inspect", "alice"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["profile"], api["profile"]);
    assert_eq!(inspect["partition"], api["partition"]);
    assert_eq!(inspect["next_deadline"], api["next_deadline"]);
    assert_eq!(api["profile"]["order_count"], 2);
}
