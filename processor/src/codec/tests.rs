use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use apache_avro::types::Value;
use apache_avro::Schema;
use proptest::prelude::*;

use super::*;
use crate::model::{Dimension, ProfileSnapshot};
use crate::time::parse_rfc3339;

fn full_event() -> InteractionEvent {
    InteractionEvent {
        event_id: "evt-1".into(),
        customer_id: "cust-42".into(),
        event_type: "order.completed".into(),
        occurred_at: parse_rfc3339("2024-03-05T10:15:30.123Z").unwrap(),
        channel: Some("web".into()),
        campaign_id: Some("spring".into()),
        order_id: Some("o-9".into()),
        amount_minor: Some(12_345),
        currency: Some("IDR".into()),
        survey_type: Some("nps".into()),
        score: Some(9),
        referee_id: Some("cust-7".into()),
        properties: Some(BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("é".to_string(), "ü".to_string()),
        ])),
    }
}

fn minimal_event() -> InteractionEvent {
    InteractionEvent {
        event_id: "e".into(),
        customer_id: "c".into(),
        event_type: "page.viewed".into(),
        occurred_at: 1_700_000_000_000,
        ..Default::default()
    }
}

fn decoder() -> Decoder {
    Decoder::new(InputFormat::Auto, &BTreeMap::new()).unwrap()
}

fn kind(r: Result<InteractionEvent, DecodeError>) -> &'static str {
    r.unwrap_err().kind()
}

// ----- JSON -------------------------------------------------------------

#[test]
fn json_full_round_trip() {
    let e = full_event();
    let bytes = encode_event_json(&e);
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.contains(r#""occurred_at":"2024-03-05T10:15:30.123Z""#),
        "{text}"
    );
    assert_eq!(decoder().decode(&bytes).unwrap(), e);
    assert_eq!(decode_json_line(&bytes).unwrap(), e);
    let min = minimal_event();
    assert_eq!(decode_json_line(&encode_event_json(&min)).unwrap(), min);
}

#[test]
fn json_occurred_at_forms() {
    let base = r#"{"event_id":"e","customer_id":"c","event_type":"page.viewed","occurred_at":"#;
    let want = parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
    for form in [
        r#""2024-01-01T07:00:00+07:00""#,
        "1704067200000",
        r#""1704067200000""#,
        "1704067200000.0",
    ] {
        let json = format!("{base}{form}}}");
        let e = decode_json_line(json.as_bytes()).unwrap_or_else(|err| panic!("{form}: {err}"));
        assert_eq!(e.occurred_at, want, "{form}");
    }
}

#[test]
fn json_ignores_unknown_fields_and_nulls() {
    let json = br#"{"event_id":"e","customer_id":"c","event_type":"something.new","occurred_at":0,
        "channel":null,"amount_minor":null,"properties":null,"extra":{"nested":[1,2]}}
"#;
    let e = decode_json_line(json).unwrap();
    assert_eq!(e.event_type, "something.new");
    assert_eq!(e.channel, None);
    assert_eq!(e.properties, None);
    // CRLF and a byte order mark are tolerated.
    let mut crlf = b"\xEF\xBB\xBF".to_vec();
    crlf.extend_from_slice(&encode_event_json(&minimal_event()));
    crlf.extend_from_slice(b"\r\n");
    assert_eq!(decode_json_line(&crlf).unwrap(), minimal_event());
}

fn json_with(field: &str, raw: Option<&str>) -> Vec<u8> {
    let mut v = serde_json::to_value(full_event()).unwrap();
    let obj = v.as_object_mut().unwrap();
    match raw {
        None => {
            obj.remove(field);
        }
        Some(raw) => {
            obj.insert(field.to_string(), serde_json::from_str(raw).unwrap());
        }
    }
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn json_validation_failures() {
    let d = decoder();
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (
            json_with("customer_id", None),
            DecodeError::MissingField("customer_id"),
        ),
        (
            json_with("customer_id", Some("null")),
            DecodeError::MissingField("customer_id"),
        ),
        (
            json_with("event_id", Some(r#""""#)),
            DecodeError::MissingField("event_id"),
        ),
        (
            json_with("occurred_at", None),
            DecodeError::MissingField("occurred_at"),
        ),
        (
            json_with("event_type", Some(r#""  ""#)),
            DecodeError::MissingField("event_type"),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(d.decode(&bytes).unwrap_err(), want);
    }
    let invalid = [
        ("occurred_at", r#""yesterday""#),
        ("occurred_at", r#""2024-13-01T00:00:00Z""#),
        ("occurred_at", "1.5"),
        ("occurred_at", "true"),
        ("occurred_at", "-1"),
        ("occurred_at", "253402300800000"),
        ("amount_minor", "-1"),
        ("amount_minor", "12.5"),
        ("amount_minor", r#""100""#),
        ("score", "11"),
        ("score", "4294967296"),
        ("currency", r#""idr""#),
        ("currency", r#""RUPIAH""#),
        ("channel", r#""carrier-pigeon""#),
        ("customer_id", "42"),
        ("properties", r#"{"a":1}"#),
        ("properties", "[]"),
    ];
    for (field, raw) in invalid {
        let err = d.decode(&json_with(field, Some(raw))).unwrap_err();
        assert_eq!(err.kind(), "invalid_field", "{field}={raw}: {err}");
        assert_eq!(err.field(), Some(field), "{field}={raw}: {err}");
    }
    // csat has a narrower range than nps.
    let mut csat = full_event();
    csat.survey_type = Some("csat".into());
    csat.score = Some(0);
    assert_eq!(kind(d.decode(&encode_event_json(&csat))), "invalid_field");
    csat.score = Some(5);
    assert!(d.decode(&encode_event_json(&csat)).is_ok());
    // An unknown survey type does not constrain the score.
    csat.survey_type = Some("ces".into());
    csat.score = Some(7);
    assert!(d.decode(&encode_event_json(&csat)).is_ok());
}

#[test]
fn json_garbage_and_truncation() {
    let d = decoder();
    let full = encode_event_json(&full_event());
    for bad in [
        &b"hello world"[..],
        b"",
        b"   ",
        b"\xff\xfe\x01",
        &full[..full.len() / 2],
        &full[..full.len() - 1],
        b"[1,2,3]",
        b"\"just a string\"",
        b"42",
    ] {
        let err = d.decode(bad).unwrap_err();
        assert_eq!(
            err.kind(),
            "json",
            "{:?}: {err}",
            String::from_utf8_lossy(bad)
        );
    }
    // In JSON-only mode a wire-format record is not JSON.
    let json_only = Decoder::new(InputFormat::Json, &BTreeMap::new()).unwrap();
    let avro = encode_event_avro_wire(&full_event(), 1);
    assert_eq!(kind(json_only.decode(&avro)), "json");
}

#[test]
fn error_messages_are_precise() {
    let err = decoder()
        .decode(&json_with("occurred_at", Some(r#""yesterday""#)))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid field occurred_at: cannot parse "yesterday": expected RFC 3339 or epoch milliseconds"#
    );
    assert_eq!(
        DecodeError::MissingField("customer_id").to_string(),
        "missing required field customer_id"
    );
    assert_eq!(DecodeError::UnknownSchemaId(7).kind(), "schema_id");
}

// ----- Avro wire format -----------------------------------------------------

#[test]
fn avro_wire_round_trip() {
    let d = decoder();
    for e in [full_event(), minimal_event()] {
        let bytes = encode_event_avro_wire(&e, 1);
        assert_eq!(bytes[..5], [0, 0, 0, 0, 1]);
        assert_eq!(d.decode(&bytes).unwrap(), e);
        // The hand-written encoder agrees with apache-avro (whose map order is
        // a hash order, hence at most one property here).
        let schema = interaction_event_schema().unwrap();
        let mut one = e.clone();
        if let Some(m) = one.properties.as_mut() {
            m.retain(|k, _| k == "a");
        }
        let datum = apache_avro::to_avro_datum(schema, event_to_value(&one)).unwrap();
        assert_eq!(datum, encode_event_avro_wire(&one, 1)[5..]);
        let back = apache_avro::from_avro_datum(schema, &mut &bytes[5..], None).unwrap();
        assert_eq!(event_from_value(back).unwrap(), e);
    }
    let avro_only = Decoder::new(InputFormat::Avro, &BTreeMap::new()).unwrap();
    assert_eq!(
        avro_only
            .decode(&encode_event_avro_wire(&full_event(), 1))
            .unwrap(),
        full_event()
    );
    assert_eq!(
        kind(avro_only.decode(&encode_event_json(&full_event()))),
        "avro"
    );
}

#[test]
fn avro_unknown_schema_id() {
    let bytes = encode_event_avro_wire(&full_event(), 77);
    assert_eq!(
        decoder().decode(&bytes).unwrap_err(),
        DecodeError::UnknownSchemaId(77)
    );
}

#[test]
fn avro_truncated_and_malformed() {
    let d = decoder();
    let bytes = encode_event_avro_wire(&full_event(), 1);
    for cut in [1, 3, 5, 6, 12, bytes.len() / 2, bytes.len() - 1] {
        assert_eq!(kind(d.decode(&bytes[..cut])), "avro", "cut at {cut}");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(kind(d.decode(&trailing)), "avro");
    // A string length far beyond the record.
    let mut huge = vec![0, 0, 0, 0, 1];
    wire::put_long(&mut huge, 1 << 40);
    assert_eq!(kind(d.decode(&huge)), "avro");
    // An invalid union branch.
    let mut bad = encode_event_avro_wire(&minimal_event(), 1);
    let at = bad.len() - 9; // the channel union index of a minimal event
    assert_eq!(bad[at..], [0; 9]);
    bad[at] = 4;
    assert_eq!(kind(d.decode(&bad)), "avro");
}

#[test]
fn avro_validates_after_decoding() {
    let mut e = full_event();
    e.amount_minor = Some(-5);
    let err = decoder()
        .decode(&encode_event_avro_wire(&e, 1))
        .unwrap_err();
    assert_eq!(err.field(), Some("amount_minor"));
    e = full_event();
    e.customer_id.clear();
    assert_eq!(
        decoder()
            .decode(&encode_event_avro_wire(&e, 1))
            .unwrap_err(),
        DecodeError::MissingField("customer_id")
    );
}

/// A producer schema that added `user_agent` and dropped `campaign_id`,
/// `referee_id` and `properties`, with fields reordered.
const EVOLVED: &str = r#"{
  "type": "record", "name": "InteractionEvent", "namespace": "siklus",
  "fields": [
    {"name": "customer_id", "type": "string"},
    {"name": "event_id", "type": "string"},
    {"name": "event_type", "type": "string"},
    {"name": "occurred_at", "type": "long"},
    {"name": "user_agent", "type": "string"},
    {"name": "channel", "type": ["null", "string"], "default": null},
    {"name": "order_id", "type": ["null", "string"], "default": null},
    {"name": "amount_minor", "type": ["null", "long"], "default": null},
    {"name": "currency", "type": ["null", "string"], "default": null},
    {"name": "survey_type", "type": ["null", "string"], "default": null},
    {"name": "score", "type": ["null", "int"], "default": null}
  ]
}"#;

fn evolved_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evolved.avsc");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(EVOLVED.as_bytes())
        .unwrap();
    (dir, path)
}

#[test]
fn avro_evolved_writer_schema_resolves() {
    let (_dir, path) = evolved_file();
    let d = Decoder::new(InputFormat::Auto, &BTreeMap::from([(2, path)])).unwrap();
    assert!(d.knows_schema(1) && d.knows_schema(2));
    let writer = Schema::parse_str(EVOLVED).unwrap();
    let value = Value::Record(vec![
        ("customer_id".into(), Value::String("cust-1".into())),
        ("event_id".into(), Value::String("evt-1".into())),
        ("event_type".into(), Value::String("order.completed".into())),
        ("occurred_at".into(), Value::Long(1_700_000_000_000)),
        ("user_agent".into(), Value::String("Mozilla".into())),
        (
            "channel".into(),
            Value::Union(1, Box::new(Value::String("app".into()))),
        ),
        (
            "order_id".into(),
            Value::Union(1, Box::new(Value::String("o-1".into()))),
        ),
        (
            "amount_minor".into(),
            Value::Union(1, Box::new(Value::Long(500))),
        ),
        (
            "currency".into(),
            Value::Union(1, Box::new(Value::String("EUR".into()))),
        ),
        ("survey_type".into(), Value::Union(0, Box::new(Value::Null))),
        ("score".into(), Value::Union(0, Box::new(Value::Null))),
    ]);
    let mut bytes = vec![0, 0, 0, 0, 2];
    bytes.extend(apache_avro::to_avro_datum(&writer, value).unwrap());
    let e = d.decode(&bytes).unwrap();
    assert_eq!(
        e,
        InteractionEvent {
            event_id: "evt-1".into(),
            customer_id: "cust-1".into(),
            event_type: "order.completed".into(),
            occurred_at: 1_700_000_000_000,
            channel: Some("app".into()),
            order_id: Some("o-1".into()),
            amount_minor: Some(500),
            currency: Some("EUR".into()),
            ..Default::default()
        }
    );
    // The same bytes under id 1 do not parse as the embedded schema.
    bytes[4] = 1;
    assert_eq!(kind(d.decode(&bytes)), "avro");
}

#[test]
fn incompatible_or_missing_writer_schema_fails_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.avsc");
    // Drops the required customer_id, which has no default in the reader.
    std::fs::write(
        &path,
        r#"{"type":"record","name":"InteractionEvent","namespace":"siklus","fields":[
            {"name":"event_id","type":"string"},{"name":"event_type","type":"string"},
            {"name":"occurred_at","type":"long"}]}"#,
    )
    .unwrap();
    let err = Decoder::new(InputFormat::Auto, &BTreeMap::from([(3, path)])).unwrap_err();
    assert!(
        matches!(err, CodecError::IncompatibleSchema { .. }),
        "{err}"
    );
    let missing = dir.path().join("nope.avsc");
    let err = Decoder::new(InputFormat::Auto, &BTreeMap::from([(3, missing)])).unwrap_err();
    assert!(matches!(err, CodecError::SchemaFile { .. }), "{err}");
    let mut d = decoder();
    let err = d.register_schema(4, "inline", "{not json").unwrap_err();
    assert!(matches!(err, CodecError::InvalidSchema { .. }), "{err}");
    // Registering the embedded schema text under another id uses the fast path.
    d.register_schema(5, "inline", INTERACTION_EVENT_AVSC)
        .unwrap();
    assert_eq!(
        d.decode(&encode_event_avro_wire(&full_event(), 5)).unwrap(),
        full_event()
    );
}

// ----- Container files ------------------------------------------------------

#[test]
fn container_round_trip() {
    let mut events: Vec<InteractionEvent> = (0..50)
        .map(|i| {
            let mut e = full_event();
            e.event_id = format!("evt-{i}");
            e.occurred_at += i;
            if i % 3 == 0 {
                e.properties = None;
                e.channel = None;
            }
            e
        })
        .collect();
    events.push(minimal_event());
    let bytes = write_avro_container(&events, Vec::new()).unwrap();
    let back: Vec<_> = read_avro_container(&bytes[..])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back, events);
}

/// The block-by-block reader of plain embedded-schema files agrees with
/// apache-avro over many blocks, and a cut or corrupted file ends in an error.
#[test]
fn container_fast_path_matches_apache_avro_and_catches_damage() {
    let events: Vec<InteractionEvent> = (0..3000)
        .map(|i| {
            let mut e = full_event();
            e.event_id = format!("evt-{i}");
            e.customer_id = format!("c-{}", i % 97);
            e.occurred_at += i;
            e
        })
        .collect();
    let bytes = write_avro_container(&events, Vec::new()).unwrap();
    let schema = interaction_event_schema().unwrap();
    let slow: Vec<InteractionEvent> = apache_avro::Reader::with_schema(schema, &bytes[..])
        .unwrap()
        .map(|v| crate::codec::avro::event_from_value(v.unwrap()).unwrap())
        .collect();
    let fast: Vec<InteractionEvent> = read_avro_container(&bytes[..])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(fast, slow);
    assert_eq!(fast, events);
    // Cut in the middle: the events before the cut's block, then one error.
    let cut = &bytes[..bytes.len() / 2];
    let results: Vec<_> = read_avro_container(cut).unwrap().collect();
    assert!(results.last().unwrap().is_err());
    assert!(results[..results.len() - 1].iter().all(|r| r.is_ok()));
    assert!(results.len() > 1 && results.len() < events.len());
    // A damaged sync marker (the file's last 16 bytes) is reported.
    let mut damaged = bytes.clone();
    let n = damaged.len();
    damaged[n - 1] ^= 0xff;
    let results: Vec<_> = read_avro_container(&damaged[..]).unwrap().collect();
    assert!(results.last().unwrap().is_err());
}

#[test]
fn container_records_are_validated_and_garbage_rejected() {
    let mut bad = minimal_event();
    bad.currency = Some("usd".into());
    let bytes = write_avro_container([&minimal_event(), &bad], Vec::new()).unwrap();
    let results: Vec<_> = read_avro_container(&bytes[..]).unwrap().collect();
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().field(), Some("currency"));
    assert!(read_avro_container(&b"not an avro file"[..]).is_err());
}

#[test]
fn container_with_evolved_writer_schema() {
    let writer = Schema::parse_str(EVOLVED).unwrap();
    let mut w = apache_avro::Writer::new(&writer, Vec::new());
    let mut r = apache_avro::types::Record::new(&writer).unwrap();
    r.put("customer_id", "c");
    r.put("event_id", "e");
    r.put("event_type", "page.viewed");
    r.put("occurred_at", Value::Long(5));
    r.put("user_agent", "x");
    for f in [
        "channel",
        "order_id",
        "amount_minor",
        "currency",
        "survey_type",
        "score",
    ] {
        r.put(f, Value::Union(0, Box::new(Value::Null)));
    }
    w.append(r).unwrap();
    let bytes = w.into_inner().unwrap();
    let back: Vec<_> = read_avro_container(&bytes[..]).unwrap().collect();
    assert_eq!(
        back,
        vec![Ok(InteractionEvent {
            event_id: "e".into(),
            customer_id: "c".into(),
            event_type: "page.viewed".into(),
            occurred_at: 5,
            ..Default::default()
        })]
    );
}

// ----- Transitions ------------------------------------------------------------

fn transition() -> StageTransition {
    StageTransition {
        transition_id: "tr-abc".into(),
        customer_id: "cust-42".into(),
        dimension: Dimension::Activity,
        from_stage: Some("active".into()),
        to_stage: "at_risk".into(),
        occurred_at: parse_rfc3339("2024-04-04T00:00:00Z").unwrap(),
        triggering_event_id: None,
        rule: "inactivity_30d".into(),
        seq: 7,
        profile: ProfileSnapshot {
            milestone: Some("converted".into()),
            activity: Some("at_risk".into()),
            first_seen_at: Some(1_700_000_000_000),
            first_order_at: Some(1_700_000_100_000),
            last_activity_at: None,
            order_count: 2,
            net_revenue: BTreeMap::from([("EUR".into(), 1200), ("IDR".into(), -5)]),
            refunds: 1,
            open_tickets: 0,
            csat_answers: 3,
            csat_satisfied: 2,
            last_nps: Some(10),
            referrals_sent: 1,
            referrals_converted: 0,
            impressions: 40,
            clicks: 3,
            cohort_week: Some(1_699_833_600_000),
            cohort_month: None,
            channels: BTreeMap::from([
                ("app".into(), 1),
                ("email".into(), 2),
                ("web".into(), 9),
                ("whatsapp".into(), 4),
            ]),
            events: 16,
        },
    }
}

#[test]
fn transition_avro_is_valid_and_deterministic() {
    let t = transition();
    let enc = TransitionEncoder::new(OutputFormat::Avro, 12).unwrap();
    let bytes = enc.encode(&t).unwrap();
    assert_eq!(bytes[..5], [0, 0, 0, 0, 12]);
    assert_eq!(enc.encode(&t.clone()).unwrap(), bytes);
    // apache-avro reads it with the schema and every field comes back.
    let schema = stage_transition_schema().unwrap();
    let mut datum = &bytes[5..];
    let value = apache_avro::from_avro_datum(schema, &mut datum, None).unwrap();
    assert!(datum.is_empty());
    assert!(value.validate(schema));
    let Value::Record(fields) = &value else {
        panic!("not a record: {value:?}")
    };
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "transition_id",
            "customer_id",
            "dimension",
            "from_stage",
            "to_stage",
            "occurred_at",
            "triggering_event_id",
            "rule",
            "seq",
            "profile"
        ]
    );
    assert_eq!(fields[2].1, Value::String("activity".into()));
    assert_eq!(fields[5].1, Value::TimestampMillis(t.occurred_at));
    assert_eq!(transition_from_value(value).unwrap(), t);
    assert_eq!(decode_transition(&bytes).unwrap(), t);
    // Empty maps and a first entry.
    let mut first = transition();
    first.dimension = Dimension::Milestone;
    first.from_stage = None;
    first.triggering_event_id = Some("evt-1".into());
    first.profile = ProfileSnapshot::default();
    let bytes = enc.encode(&first).unwrap();
    assert_eq!(decode_transition_avro(&bytes).unwrap(), first);
}

#[test]
fn transition_seq_out_of_range_is_an_error() {
    let mut t = transition();
    t.seq = u64::MAX;
    let enc = TransitionEncoder::new(OutputFormat::Avro, 1).unwrap();
    assert!(matches!(enc.encode(&t), Err(CodecError::OutOfRange(_))));
}

#[test]
fn transition_json_has_rfc3339_and_stable_order() {
    let t = transition();
    let enc = TransitionEncoder::new(OutputFormat::Json, 0).unwrap();
    let bytes = enc.encode(&t).unwrap();
    assert_eq!(bytes, transition_json(&t));
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.starts_with(r#"{"transition_id":"tr-abc","customer_id":"cust-42","dimension":"activity","from_stage":"active","to_stage":"at_risk","occurred_at":"2024-04-04T00:00:00.000Z","#), "{text}");
    assert!(
        text.contains(r#""first_seen_at":"2023-11-14T22:13:20.000Z""#),
        "{text}"
    );
    assert!(
        text.contains(r#""channels":{"app":1,"email":2,"web":9,"whatsapp":4}"#),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["occurred_at"], "2024-04-04T00:00:00.000Z");
    assert_eq!(decode_transition(&bytes).unwrap(), t);
}

#[test]
fn embedded_schemas_parse_with_expected_names() {
    let e = interaction_event_schema().unwrap();
    let t = stage_transition_schema().unwrap();
    let name = |s: &Schema| match s {
        Schema::Record(r) => r.name.fullname(None),
        other => panic!("not a record: {other:?}"),
    };
    assert_eq!(name(e), "siklus.InteractionEvent");
    assert_eq!(name(t), "siklus.StageTransition");
    let Schema::Record(r) = t else { unreachable!() };
    let profile = r.fields.iter().find(|f| f.name == "profile").unwrap();
    assert_eq!(name(&profile.schema), "siklus.ProfileSnapshot");
}

// ----- Properties -------------------------------------------------------------

fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(s)
}

prop_compose! {
    fn valid_event()(
        event_id in "[a-zA-Z0-9_-]{1,24}",
        customer_id in "\\PC{0,10}[a-z0-9]\\PC{0,10}",
        event_type in "[a-z._]{1,20}",
        occurred_at in 0i64..=253_402_300_799_999,
        channel in opt(proptest::sample::select(CHANNELS.to_vec())),
        campaign_id in opt("\\PC{0,12}"),
        order_id in opt("\\PC{0,12}"),
        amount_minor in opt(0i64..=i64::MAX),
        currency in opt("[A-Z]{3}"),
        survey in opt((proptest::sample::select(vec!["csat", "nps"]), 0i32..=10)),
        referee_id in opt("\\PC{0,12}"),
        properties in opt(proptest::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..5)),
    ) -> InteractionEvent {
        let (survey_type, score) = match survey {
            Some(("csat", s)) => (Some("csat".to_string()), Some(s.clamp(1, 5))),
            Some((kind, s)) => (Some(kind.to_string()), Some(s)),
            None => (None, None),
        };
        InteractionEvent {
            event_id, customer_id, event_type, occurred_at, channel: channel.map(str::to_string),
            campaign_id, order_id, amount_minor, currency, survey_type, score, referee_id, properties,
        }
    }
}

proptest! {
    #[test]
    fn valid_events_round_trip(e in valid_event(), id in 1u32..4) {
        prop_assert_eq!(validate(&e), Ok(()));
        let d = decoder();
        prop_assert_eq!(d.decode(&encode_event_json(&e)), Ok(e.clone()));
        prop_assert_eq!(decode_json_line(&encode_event_json(&e)), Ok(e.clone()));
        let wire_bytes = encode_event_avro_wire(&e, 1);
        prop_assert_eq!(d.decode(&wire_bytes), Ok(e.clone()));
        // The generic apache-avro path agrees with the hand-written one.
        let schema = interaction_event_schema().unwrap();
        let value = apache_avro::from_avro_datum(schema, &mut &wire_bytes[5..], None).unwrap();
        prop_assert_eq!(event_from_value(value), Ok(e.clone()));
        // apache-avro's encoding (map entries in hash order) decodes the same.
        let mut apache = vec![0, 0, 0, 0, 1];
        apache.extend(apache_avro::to_avro_datum(schema, event_to_value(&e)).unwrap());
        prop_assert_eq!(d.decode(&apache), Ok(e.clone()));
        if e.properties.as_ref().is_none_or(|m| m.len() < 2) {
            prop_assert_eq!(&apache[5..], &wire_bytes[5..]);
        }
        // Unknown ids are rejected whatever the payload.
        prop_assert_eq!(d.decode(&encode_event_avro_wire(&e, 100 + id)), Err(DecodeError::UnknownSchemaId(100 + id)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decoder().decode(&bytes);
        let mut avro = vec![0, 0, 0, 0, 1];
        avro.extend_from_slice(&bytes);
        let _ = decoder().decode(&avro);
    }
}

#[test]
fn codec_types_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Decoder>();
    assert_send_sync::<TransitionEncoder>();
    assert_send_sync::<DecodeError>();
    assert_send_sync::<CodecError>();
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._-]{0,12}",
        any::<String>(),
        Just("quote\" back\\slash\n\u{1f}\u{7f}é😀".to_string()),
    ]
}

fn arb_time() -> impl Strategy<Value = i64> {
    prop_oneof![-62_167_219_200_000i64..253_402_300_800_000i64, any::<i64>(),]
}

fn arb_transition() -> impl Strategy<Value = StageTransition> {
    let snapshot = (
        (
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text()),
            proptest::option::of(arb_time()),
            proptest::option::of(arb_time()),
            proptest::option::of(arb_time()),
            any::<u32>(),
            proptest::collection::btree_map(arb_text(), any::<i64>(), 0..3),
            any::<u32>(),
            any::<u32>(),
        ),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::option::of(any::<i32>()),
            any::<u32>(),
            any::<u32>(),
            any::<i64>(),
            any::<i64>(),
            proptest::option::of(arb_time()),
            proptest::option::of(arb_time()),
            proptest::collection::btree_map(arb_text(), any::<i64>(), 0..3),
            any::<i64>(),
        ),
    )
        .prop_map(
            |(
                (m, a, fs, fo, la, oc, nr, rf, ot),
                (ca, cs, nps, rs, rc, im, cl, cw, cm, ch, ev),
            )| {
                ProfileSnapshot {
                    milestone: m.map(Into::into),
                    activity: a.map(Into::into),
                    first_seen_at: fs,
                    first_order_at: fo,
                    last_activity_at: la,
                    order_count: oc,
                    net_revenue: nr,
                    refunds: rf,
                    open_tickets: ot,
                    csat_answers: ca,
                    csat_satisfied: cs,
                    last_nps: nps,
                    referrals_sent: rs,
                    referrals_converted: rc,
                    impressions: im,
                    clicks: cl,
                    cohort_week: cw,
                    cohort_month: cm,
                    channels: ch,
                    events: ev,
                }
            },
        );
    (
        arb_text(),
        arb_text(),
        any::<bool>(),
        proptest::option::of(arb_text()),
        arb_text(),
        arb_time(),
        proptest::option::of(arb_text()),
        arb_text(),
        any::<u64>(),
        snapshot,
    )
        .prop_map(
            |(id, c, milestone, from, to, at, trig, rule, seq, profile)| StageTransition {
                transition_id: id,
                customer_id: c,
                dimension: if milestone {
                    Dimension::Milestone
                } else {
                    Dimension::Activity
                },
                from_stage: from.map(Into::into),
                to_stage: to.into(),
                occurred_at: at,
                triggering_event_id: trig,
                rule: rule.into(),
                seq,
                profile,
            },
        )
}

proptest! {
    /// The hand-written transition JSON is byte for byte serde_json's.
    #[test]
    fn transition_json_equals_serde_json(t in arb_transition()) {
        prop_assert_eq!(
            String::from_utf8(transition_json(&t)).unwrap(),
            serde_json::to_string(&t).unwrap()
        );
    }
}

/// Without the snapshot, a JSON transition is the full one less `profile`.
#[test]
fn json_transitions_without_the_snapshot_drop_only_the_profile() {
    let t = crate::model::StageTransition {
        transition_id: crate::fold::transition_id("alice", 3),
        customer_id: "alice".into(),
        dimension: crate::model::Dimension::Milestone,
        from_stage: Some("acquired".into()),
        to_stage: "converted".into(),
        occurred_at: 1_704_272_400_000,
        triggering_event_id: Some("e-\"42\"".into()),
        rule: "first_order".into(),
        seq: 3,
        profile: crate::model::ProfileSnapshot {
            order_count: 1,
            ..Default::default()
        },
    };
    let full = TransitionEncoder::new(OutputFormat::Json, 0).unwrap();
    let bare = full.with_snapshot(false);
    let mut want: serde_json::Value = serde_json::from_slice(&full.encode(&t).unwrap()).unwrap();
    want.as_object_mut().unwrap().remove("profile");
    let got: serde_json::Value = serde_json::from_slice(&bare.encode(&t).unwrap()).unwrap();
    assert_eq!(got, want);
    // It still decodes as a transition, with an empty snapshot.
    let back: crate::model::StageTransition =
        serde_json::from_slice(&bare.encode(&t).unwrap()).unwrap();
    assert_eq!(back.profile, crate::model::ProfileSnapshot::default());
}
