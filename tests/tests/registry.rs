//! Schema Registry support against the in-test registry: decoding by the
//! schema id of each record, unknown and unusable ids, a registry that is
//! down, schema evolution, registration of the output schemas, basic auth.
//! No broker: the decoder and the start-up registration are called directly.

use std::time::{Duration, Instant};

use apache_avro::types::Value;
use siklus::codec::registry::{RegistryClient, RegistryError};
use siklus::codec::{
    decode_transition_avro, encode_event_avro_wire, event_to_value, wire, DecodeError, Decoder,
    InputFormat, OutputFormat, TransitionEncoder, INTERACTION_EVENT_AVSC, STAGE_TRANSITION_AVSC,
};
use siklus::config::{Config, SchemaRegistry};
use siklus::model::InteractionEvent;
use siklus_e2e::registry::{base64, MockRegistry};

fn event(id: &str) -> InteractionEvent {
    InteractionEvent {
        event_id: id.into(),
        customer_id: "alice".into(),
        event_type: "order.completed".into(),
        occurred_at: 1_704_272_400_000,
        order_id: Some(format!("o-{id}")),
        amount_minor: Some(2500),
        currency: Some("EUR".into()),
        ..Default::default()
    }
}

fn registry_cfg(url: &str) -> SchemaRegistry {
    SchemaRegistry {
        url: url.into(),
        retry_backoff_ms: 20,
        retry_backoff_max_ms: 200,
        timeout_ms: 2_000,
        ..Default::default()
    }
}

fn decoder(cfg: &SchemaRegistry) -> Decoder {
    Decoder::new(InputFormat::Auto, &Default::default())
        .unwrap()
        .with_registry(RegistryClient::new(cfg).unwrap())
}

fn decode(d: &mut Decoder, bytes: &[u8]) -> Result<InteractionEvent, DecodeError> {
    d.fetch_schema(bytes, &|| false)
        .expect("registry reachable");
    d.decode(bytes)
}

/// The InteractionEvent schema as a newer producer has it: one more
/// optional field with a default, in the middle of the record.
const EVOLVED_AVSC: &str = r#"{
  "type": "record", "name": "InteractionEvent", "namespace": "siklus",
  "fields": [
    {"name": "event_id", "type": "string"},
    {"name": "customer_id", "type": "string"},
    {"name": "loyalty_tier", "type": ["null", "string"], "default": null},
    {"name": "event_type", "type": "string"},
    {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "channel", "type": ["null", "string"], "default": null},
    {"name": "campaign_id", "type": ["null", "string"], "default": null},
    {"name": "order_id", "type": ["null", "string"], "default": null},
    {"name": "amount_minor", "type": ["null", "long"], "default": null},
    {"name": "currency", "type": ["null", "string"], "default": null},
    {"name": "survey_type", "type": ["null", "string"], "default": null},
    {"name": "score", "type": ["null", "int"], "default": null},
    {"name": "referee_id", "type": ["null", "string"], "default": null},
    {"name": "properties", "type": ["null", {"type": "map", "values": "string"}], "default": null}
  ]
}"#;

fn evolved_wire(e: &InteractionEvent, id: u32) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(EVOLVED_AVSC).unwrap();
    let Value::Record(mut fields) = event_to_value(e) else {
        unreachable!()
    };
    fields.insert(
        2,
        (
            "loyalty_tier".into(),
            Value::Union(1, Box::new(Value::String("gold".into()))),
        ),
    );
    let datum = apache_avro::to_avro_datum(&schema, Value::Record(fields)).unwrap();
    let mut out = Vec::new();
    wire::put_header(&mut out, id);
    out.extend(datum);
    out
}

fn gets(reg: &MockRegistry, id: u32) -> usize {
    let path = format!("/schemas/ids/{id}");
    reg.seen().iter().filter(|s| s.path == path).count()
}

#[test]
fn registry_decodes_by_the_schema_id_of_each_record_and_caches_it() {
    let reg = MockRegistry::start();
    let id = reg.add("events-value", INTERACTION_EVENT_AVSC);
    let mut d = decoder(&registry_cfg(&reg.url));
    assert!(
        !d.knows_schema(1),
        "the registry's ids replace the built-in id 1"
    );
    for n in 0..3 {
        let e = event(&format!("e{n}"));
        assert_eq!(decode(&mut d, &encode_event_avro_wire(&e, id)).unwrap(), e);
    }
    assert!(d.knows_schema(id));
    assert_eq!(gets(&reg, id), 1, "the schema is fetched once");
    // JSON records still pass in auto mode, without a registry call.
    let e = event("j1");
    assert_eq!(
        decode(&mut d, &siklus::codec::encode_event_json(&e)).unwrap(),
        e
    );
}

#[test]
fn registry_unknown_schema_id_is_rejected_with_the_reason() {
    let reg = MockRegistry::start();
    let mut d = decoder(&registry_cfg(&reg.url));
    let bytes = encode_event_avro_wire(&event("e1"), 4242);
    for _ in 0..2 {
        let err = decode(&mut d, &bytes).unwrap_err();
        assert_eq!(err, DecodeError::SchemaNotInRegistry(4242));
        assert_eq!(err.kind(), "schema_id");
        assert_eq!(
            err.to_string(),
            "Avro schema id 4242 is not in the schema registry"
        );
    }
    assert_eq!(gets(&reg, 4242), 1, "a definite answer is remembered");
}

#[test]
fn registry_schema_that_cannot_be_resolved_is_rejected_with_the_reason() {
    let reg = MockRegistry::start();
    // customer_id is an int here: the reader schema cannot read it.
    let bad = INTERACTION_EVENT_AVSC.replacen(
        r#"{"name": "customer_id", "type": "string""#,
        r#"{"name": "customer_id", "type": "int""#,
        1,
    );
    assert_ne!(bad, INTERACTION_EVENT_AVSC);
    let bad_id = reg.add("events-value", &bad);
    let proto_id = reg.add_typed(
        "other-value",
        "syntax = \"proto3\"; message M {}",
        Some("PROTOBUF"),
    );
    let mut d = decoder(&registry_cfg(&reg.url));
    let err = decode(&mut d, &encode_event_avro_wire(&event("e1"), bad_id)).unwrap_err();
    assert_eq!(err.kind(), "schema");
    assert!(
        err.to_string().starts_with(&format!(
            "Avro schema id {bad_id} cannot be read as siklus.InteractionEvent"
        )),
        "{err}"
    );
    let err = decode(&mut d, &encode_event_avro_wire(&event("e1"), proto_id)).unwrap_err();
    assert!(err.to_string().contains("PROTOBUF"), "{err}");
}

#[test]
fn registry_evolved_producer_schema_is_resolved_without_restart() {
    let reg = MockRegistry::start();
    let v1 = reg.add("events-value", INTERACTION_EVENT_AVSC);
    let mut d = decoder(&registry_cfg(&reg.url));
    let e1 = event("e1");
    assert_eq!(
        decode(&mut d, &encode_event_avro_wire(&e1, v1)).unwrap(),
        e1
    );
    // A producer upgrades: a new version with an optional field.
    let v2 = reg.add("events-value", EVOLVED_AVSC);
    let e2 = event("e2");
    assert_eq!(decode(&mut d, &evolved_wire(&e2, v2)).unwrap(), e2);
    // Old records still decode.
    assert_eq!(
        decode(&mut d, &encode_event_avro_wire(&e1, v1)).unwrap(),
        e1
    );
}

#[test]
fn registry_down_with_5xx_is_retried_until_it_answers() {
    let reg = MockRegistry::start();
    let id = reg.add("events-value", INTERACTION_EVENT_AVSC);
    reg.fail_next(3);
    let mut d = decoder(&registry_cfg(&reg.url));
    let e = event("e1");
    assert_eq!(decode(&mut d, &encode_event_avro_wire(&e, id)).unwrap(), e);
    assert_eq!(d.registry_retries(), 3);
    assert_eq!(gets(&reg, id), 4);
}

#[test]
fn registry_refusing_connections_is_waited_for_then_used() {
    // A port nothing listens on: connections are refused until the
    // registry comes up there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = registry_cfg(&format!("http://{addr}"));
    let mut d = decoder(&cfg);
    let bytes = encode_event_avro_wire(&event("e1"), 101);
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let reg = MockRegistry::start_on(addr);
        // The first schema it hands out gets id 101.
        assert_eq!(reg.add("events-value", INTERACTION_EVENT_AVSC), 101);
        reg
    });
    let t0 = Instant::now();
    let got = decode(&mut d, &bytes);
    let reg = starter.join().unwrap();
    assert_eq!(got.unwrap(), event("e1"));
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert!(d.registry_retries() >= 2, "{}", d.registry_retries());
    assert_eq!(gets(&reg, 101), 1);
}

#[test]
fn registry_down_and_asked_to_stop_leaves_the_record_undecided() {
    let reg = MockRegistry::start();
    let id = reg.add("events-value", INTERACTION_EVENT_AVSC);
    reg.fail_next(1_000);
    let mut d = decoder(&registry_cfg(&reg.url));
    let bytes = encode_event_avro_wire(&event("e1"), id);
    let t0 = Instant::now();
    let err = d
        .fetch_schema(&bytes, &|| t0.elapsed() > Duration::from_millis(300))
        .unwrap_err();
    assert!(err.is_retriable(), "{err}");
    // Nothing was concluded about the id: once the registry is back, it decodes.
    reg.fail_next(0);
    assert_eq!(decode(&mut d, &bytes).unwrap(), event("e1"));
}

#[test]
fn registry_basic_auth_is_sent_and_a_refused_login_is_not_blamed_on_records() {
    let reg = MockRegistry::start();
    let id = reg.add("events-value", INTERACTION_EVENT_AVSC);
    reg.require_auth("siklus:s3cret");
    let cfg = SchemaRegistry {
        basic_auth_user_info: "siklus:s3cret".into(),
        ..registry_cfg(&reg.url)
    };
    let mut d = decoder(&cfg);
    assert_eq!(
        decode(&mut d, &encode_event_avro_wire(&event("e1"), id)).unwrap(),
        event("e1")
    );
    let seen = reg.seen();
    assert_eq!(
        seen.last().unwrap().authorization.as_deref(),
        Some(format!("Basic {}", base64(b"siklus:s3cret")).as_str())
    );

    let wrong = RegistryClient::new(&SchemaRegistry {
        basic_auth_user_info: "siklus:wrong".into(),
        ..registry_cfg(&reg.url)
    })
    .unwrap();
    let err = wrong.schema_by_id(id).unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(err.to_string().contains("401"), "{err}");
}

#[test]
fn registry_output_schema_is_registered_under_the_topic_subject() {
    let reg = MockRegistry::start();
    let mut cfg = Config::default();
    cfg.topics.transitions = "crm.transitions".into();
    cfg.processor.output_format = OutputFormat::Avro;
    cfg.schema_registry = registry_cfg(&reg.url);

    // Without auto-registration the schema must exist already.
    cfg.schema_registry.auto_register = false;
    cfg.schema_registry.retry_backoff_max_ms = 20;
    let err = siklus::kafka::transitions_schema_id(&cfg).unwrap_err();
    assert!(
        format!("{err:#}").contains("crm.transitions-value"),
        "{err:#}"
    );

    cfg.schema_registry.auto_register = true;
    let id = siklus::kafka::transitions_schema_id(&cfg).unwrap();
    assert_eq!(reg.versions("crm.transitions-value"), vec![id]);
    assert!(reg
        .seen()
        .iter()
        .any(|s| s.method == "POST" && s.path == "/subjects/crm.transitions-value/versions"));
    let stored = apache_avro::Schema::parse_str(&reg.schema(id).unwrap()).unwrap();
    assert_eq!(
        stored,
        apache_avro::Schema::parse_str(STAGE_TRANSITION_AVSC).unwrap()
    );
    // Registering again (a restart) finds the same id.
    assert_eq!(siklus::kafka::transitions_schema_id(&cfg).unwrap(), id);
    // And a lookup finds it too.
    cfg.schema_registry.auto_register = false;
    assert_eq!(siklus::kafka::transitions_schema_id(&cfg).unwrap(), id);

    // Outputs carry the registered id.
    let enc = TransitionEncoder::new(OutputFormat::Avro, id).unwrap();
    let t = sample_transition();
    let bytes = enc.encode(&t).unwrap();
    assert_eq!(wire::split_header(&bytes).unwrap().0, id);
    assert_eq!(decode_transition_avro(&bytes).unwrap(), t);

    // JSON output registers nothing.
    cfg.processor.output_format = OutputFormat::Json;
    cfg.processor.output_schema_id = 9;
    assert_eq!(siklus::kafka::transitions_schema_id(&cfg).unwrap(), 9);
}

#[test]
fn registry_rejection_at_start_up_is_an_error_not_a_wait() {
    let reg = MockRegistry::start();
    reg.require_auth("a:b");
    let mut cfg = Config::default();
    cfg.processor.output_format = OutputFormat::Avro;
    cfg.schema_registry = SchemaRegistry {
        basic_auth_user_info: "a:b".into(),
        ..registry_cfg(&reg.url)
    };
    let client = RegistryClient::new(&cfg.schema_registry).unwrap();
    let err = client.register("x-value", "{not avro").unwrap_err();
    assert!(
        matches!(err, RegistryError::Rejected { status: 422, .. }),
        "{err}"
    );
    assert!(!err.is_retriable());
}

pub fn sample_transition() -> siklus::model::StageTransition {
    siklus::model::StageTransition {
        transition_id: "t-1".into(),
        customer_id: "alice".into(),
        dimension: siklus::model::Dimension::Milestone,
        from_stage: Some("acquired".into()),
        to_stage: "converted".into(),
        occurred_at: 1_704_272_400_000,
        triggering_event_id: Some("e1".into()),
        rule: "first_order".into(),
        seq: 3,
        profile: siklus::model::ProfileSnapshot {
            milestone: Some("converted".into()),
            activity: Some("active".into()),
            order_count: 1,
            net_revenue: [("EUR".to_string(), 2500)].into_iter().collect(),
            ..Default::default()
        },
    }
}
