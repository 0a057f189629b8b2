//! `siklus run` with a Schema Registry, through a real broker: Avro input of
//! two writer schemas (one evolved) decoded by id while the registry first
//! answers 503, an unknown id dead-lettered with the reason, Avro
//! transitions under the registered id, and Segment-style audience events.

use std::collections::BTreeSet;
use std::time::Duration;

use apache_avro::types::Value;
use siklus::codec::{
    decode_transition_avro, encode_event_avro_wire, event_to_value, wire, INTERACTION_EVENT_AVSC,
};
use siklus::model::{InteractionEvent, StageTransition};
use siklus_e2e::registry::MockRegistry;
use siklus_e2e::*;

fn ev(id: &str, customer: &str, ty: &str, at: &str) -> InteractionEvent {
    let order = ty == "order.completed";
    InteractionEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: ty.into(),
        occurred_at: siklus::time::parse_rfc3339(at).expect("time"),
        amount_minor: order.then_some(2500),
        currency: order.then(|| "EUR".into()),
        order_id: order.then(|| format!("o-{id}")),
        ..Default::default()
    }
}

/// A producer's newer schema: one more optional field, first in the record.
fn evolved() -> String {
    INTERACTION_EVENT_AVSC.replacen(
        r#""fields": ["#,
        r#""fields": [
    {"name": "tenant", "type": ["null", "string"], "default": null},"#,
        1,
    )
}

fn evolved_wire(e: &InteractionEvent, id: u32) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(&evolved()).expect("evolved schema");
    let Value::Record(mut fields) = event_to_value(e) else {
        unreachable!()
    };
    fields.insert(
        0,
        (
            "tenant".into(),
            Value::Union(1, Box::new(Value::String("acme".into()))),
        ),
    );
    let mut out = Vec::new();
    wire::put_header(&mut out, id);
    out.extend(apache_avro::to_avro_datum(&schema, Value::Record(fields)).expect("datum"));
    out
}

#[test]
fn registry_run_decodes_by_id_dead_letters_unknown_ids_and_registers_outputs() {
    let broker = Broker::shared();
    let reg = MockRegistry::start();
    let group = unique("reg");
    let input = format!("{group}.events");
    broker.create_topic(&input, 2);
    let v1 = reg.add(&format!("{input}-value"), INTERACTION_EVENT_AVSC);
    let v2 = reg.add(&format!("{input}-value"), &evolved());

    let records = vec![
        (
            b"alice".to_vec(),
            encode_event_avro_wire(
                &ev("a1", "alice", "account.signed_up", "2024-01-02T09:00:00Z"),
                v1,
            ),
        ),
        // The producer upgraded its schema: siklus keeps up without a restart.
        (
            b"alice".to_vec(),
            evolved_wire(
                &ev("a2", "alice", "order.completed", "2024-01-03T09:00:00Z"),
                v2,
            ),
        ),
        // A schema id the registry never issued.
        (
            b"alice".to_vec(),
            encode_event_avro_wire(
                &ev("a3", "alice", "page.viewed", "2024-01-04T09:00:00Z"),
                4242,
            ),
        ),
        (
            b"bob".to_vec(),
            encode_event_avro_wire(&ev("b1", "bob", "page.viewed", "2024-01-02T10:00:00Z"), v1),
        ),
    ];
    broker.produce(&input, records.clone());

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        broker,
        &input,
        &group,
        &format!(
            "output_format = \"avro\"\n\n[schema_registry]\nurl = \"{}\"\nbasic_auth_user_info = \"siklus:pw\"\nretry_backoff_ms = 50\nretry_backoff_max_ms = 400\n",
            reg.url
        ),
    );
    reg.require_auth("siklus:pw");
    // The registry is unavailable for its first answers: the output
    // registration and the first fetches wait for it.
    reg.fail_next(4);
    let segment = format!("{group}.segment");
    let mut child = spawn_run(
        &cfg,
        &["--stop-at-end", "--until", "2024-01-10T00:00:00Z"],
        &[("SIKLUS_TOPICS__SEGMENT", segment.as_str())],
    );
    let log = cfg.with_extension("log");
    let status = wait_exit(&mut child, Duration::from_secs(120), &log);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "siklus failed: {log_text}");
    assert!(
        log_text.contains("schema registry unavailable"),
        "the 503s were retried: {log_text}"
    );

    // Transitions: Avro under the id registered for <topic>-value.
    let out_subject = format!("{group}.transitions-value");
    let ids = reg.versions(&out_subject);
    assert_eq!(ids.len(), 1, "{out_subject} registered once");
    let out = broker.read_all(&format!("{group}.transitions"));
    let transitions: Vec<StageTransition> = out
        .iter()
        .map(|r| {
            let v = r.value.as_deref().expect("value");
            assert_eq!(wire::split_header(v).map(|(id, _)| id), Some(ids[0]));
            decode_transition_avro(v).expect("avro transition")
        })
        .collect();
    let has = |c: &str, to: &str| {
        transitions
            .iter()
            .any(|t| t.customer_id == c && t.to_stage == to)
    };
    assert!(has("alice", "acquired"), "{transitions:?}");
    assert!(has("alice", "converted"), "the evolved record was applied");
    assert!(has("bob", "reached"), "{transitions:?}");

    // The unknown id went to the DLQ, with its bytes and the reason.
    let dlq = broker.read_all(&format!("{group}.dlq"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].value.as_deref(), Some(records[2].1.as_slice()));
    assert_eq!(
        dlq[0].header("siklus.error"),
        Some("Avro schema id 4242 is not in the schema registry")
    );
    assert_eq!(dlq[0].header("siklus.error.kind"), Some("schema_id"));

    // Every transition is told as audience events, with distinct message ids.
    let seg = broker.read_all(&segment);
    let events: Vec<serde_json::Value> = seg
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).expect("segment json"))
        .collect();
    let entered = events
        .iter()
        .filter(|e| e["event"] == "Audience Entered")
        .count();
    let exited = events
        .iter()
        .filter(|e| e["event"] == "Audience Exited")
        .count();
    assert_eq!(entered, transitions.len());
    assert_eq!(
        exited,
        transitions
            .iter()
            .filter(|t| t.from_stage.is_some())
            .count()
    );
    let message_ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(message_ids.len(), events.len());
    assert!(events.iter().any(|e| e["userId"] == "alice"
        && e["event"] == "Audience Entered"
        && e["properties"]["audience_key"] == "lifecycle_converted"));
    for r in &seg {
        let e: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(r.key.as_deref(), e["userId"].as_str().map(str::as_bytes));
    }
}
