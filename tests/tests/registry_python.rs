//! Cross-client tests: what siklus writes in the Confluent wire format is
//! read by the Python client's AvroDeserializer, and what its AvroSerializer
//! writes is read by siklus, both through the in-test registry with basic
//! auth. The bytes travel over stdin and stdout of `tests/python/sr_interop.py`.
//!
//! They need python3 with confluent-kafka and its Avro extras (installed by
//! `scripts/setup.sh`): without them they fail, never skip.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use siklus::codec::registry::RegistryClient;
use siklus::codec::{Decoder, InputFormat, OutputFormat, TransitionEncoder};
use siklus::config::{Config, SchemaRegistry};
use siklus::model::{Dimension, InteractionEvent, ProfileSnapshot, StageTransition};
use siklus_e2e::registry::MockRegistry;

const AUTH: &str = "interop:pa55";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/sr_interop.py")
}

/// Runs the script with `input` on stdin; its stdout lines. Panics with
/// the script's stderr when it fails or cannot start.
fn python(args: &[&str], input: &str) -> Vec<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .arg(script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} ({e}): install Python 3 and run scripts/setup.sh")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to the script");
    let out = child.wait_with_output().expect("script output");
    assert!(
        out.status.success(),
        "{} failed ({}); is confluent-kafka with its Avro extras installed (scripts/setup.sh)?\n{}",
        script().display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn transitions() -> Vec<StageTransition> {
    let profile = ProfileSnapshot {
        milestone: Some("converted".into()),
        activity: Some("active".into()),
        first_seen_at: Some(1_704_099_600_000),
        first_order_at: Some(1_704_272_400_000),
        last_activity_at: Some(1_704_272_400_000),
        order_count: 1,
        net_revenue: [("EUR".to_string(), 2500), ("IDR".to_string(), 150_000)]
            .into_iter()
            .collect(),
        channels: [("web".to_string(), 3)].into_iter().collect(),
        events: 4,
        ..Default::default()
    };
    vec![
        StageTransition {
            transition_id: "t-1".into(),
            customer_id: "alice".into(),
            dimension: Dimension::Milestone,
            from_stage: Some("acquired".into()),
            to_stage: "converted".into(),
            occurred_at: 1_704_272_400_000,
            triggering_event_id: Some("e-3".into()),
            rule: "first_order".into(),
            seq: 3,
            profile: profile.clone(),
        },
        StageTransition {
            transition_id: "t-2".into(),
            customer_id: "bob".into(),
            dimension: Dimension::Activity,
            from_stage: None,
            to_stage: "at_risk".into(),
            occurred_at: 1_706_864_400_000,
            triggering_event_id: None,
            rule: "inactivity_at_risk".into(),
            seq: 7,
            profile,
        },
    ]
}

#[test]
fn registry_python_deserializer_reads_what_siklus_writes() {
    let reg = MockRegistry::start();
    reg.require_auth(AUTH);
    let mut cfg = Config::default();
    cfg.topics.transitions = "interop.transitions".into();
    cfg.processor.output_format = OutputFormat::Avro;
    cfg.schema_registry = SchemaRegistry {
        url: reg.url.clone(),
        basic_auth_user_info: AUTH.into(),
        ..Default::default()
    };
    let id = siklus::kafka::transitions_schema_id(&cfg).expect("register");
    let enc = TransitionEncoder::new(OutputFormat::Avro, id).unwrap();
    let ts = transitions();
    let input: String = ts
        .iter()
        .map(|t| hex(&enc.encode(t).unwrap()) + "\n")
        .collect();
    let lines = python(
        &[
            "decode",
            "--registry",
            &reg.url,
            "--topic",
            "interop.transitions",
            "--auth",
            AUTH,
        ],
        &input,
    );
    assert_eq!(lines.len(), ts.len(), "{lines:?}");
    for (line, t) in lines.iter().zip(&ts) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        assert_eq!(v["transition_id"], t.transition_id.as_str());
        assert_eq!(v["customer_id"], t.customer_id.as_str());
        assert_eq!(v["dimension"], t.dimension.as_str());
        assert_eq!(v["from_stage"].as_str(), t.from_stage.as_deref());
        assert_eq!(v["to_stage"], t.to_stage.as_ref());
        assert_eq!(v["occurred_at"], t.occurred_at);
        assert_eq!(
            v["triggering_event_id"].as_str(),
            t.triggering_event_id.as_deref()
        );
        assert_eq!(v["rule"], t.rule.as_ref());
        assert_eq!(v["seq"], t.seq);
        assert_eq!(v["profile"]["order_count"], 1);
        assert_eq!(v["profile"]["net_revenue"]["IDR"], 150_000);
        assert_eq!(v["profile"]["first_order_at"], 1_704_272_400_000_i64);
        assert_eq!(v["profile"]["channels"]["web"], 3);
    }
    // The Python client fetched the schema by the id siklus wrote.
    assert!(reg
        .seen()
        .iter()
        .any(|s| s.path == format!("/schemas/ids/{id}")));
}

#[test]
fn registry_siklus_reads_what_the_python_serializer_writes() {
    let reg = MockRegistry::start();
    reg.require_auth(AUTH);
    let dir = tempfile::tempdir().unwrap();
    // The producer's schema is newer than siklus': one more optional field.
    let evolved = siklus::codec::INTERACTION_EVENT_AVSC.replacen(
        r#"{"name": "channel","#,
        r#"{"name": "device", "type": ["null", "string"], "default": null},
    {"name": "channel","#,
        1,
    );
    assert_ne!(evolved, siklus::codec::INTERACTION_EVENT_AVSC);
    let schema_file = dir.path().join("InteractionEvent-v2.avsc");
    std::fs::write(&schema_file, &evolved).unwrap();

    let events = vec![
        InteractionEvent {
            event_id: "p1".into(),
            customer_id: "carol".into(),
            event_type: "order.completed".into(),
            occurred_at: 1_704_272_400_000,
            channel: Some("app".into()),
            order_id: Some("o-1".into()),
            amount_minor: Some(4200),
            currency: Some("EUR".into()),
            properties: Some(
                [("coupon".to_string(), "NEWYEAR".to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        },
        InteractionEvent {
            event_id: "p2".into(),
            customer_id: "carol".into(),
            event_type: "survey.responded".into(),
            occurred_at: 1_704_358_800_000,
            survey_type: Some("nps".into()),
            score: Some(10),
            ..Default::default()
        },
    ];
    let input: String = events
        .iter()
        .map(|e| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&siklus::codec::encode_event_json(e)).unwrap();
            // Avro's timestamp-millis as a number, and the producer's new field.
            v["occurred_at"] = e.occurred_at.into();
            v["device"] = "pixel-8".into();
            for f in [
                "channel",
                "campaign_id",
                "order_id",
                "amount_minor",
                "currency",
                "survey_type",
                "score",
                "referee_id",
                "properties",
            ] {
                if v.get(f).is_none() {
                    v[f] = serde_json::Value::Null;
                }
            }
            v.to_string() + "\n"
        })
        .collect();
    let lines = python(
        &[
            "encode",
            "--registry",
            &reg.url,
            "--topic",
            "interop.events",
            "--schema",
            schema_file.to_str().unwrap(),
            "--auth",
            AUTH,
        ],
        &input,
    );
    assert_eq!(lines.len(), events.len(), "{lines:?}");
    let versions = reg.versions("interop.events-value");
    assert_eq!(versions.len(), 1, "the Python client registered its schema");

    let mut d = Decoder::new(InputFormat::Avro, &Default::default())
        .unwrap()
        .with_registry(
            RegistryClient::new(&SchemaRegistry {
                url: reg.url.clone(),
                basic_auth_user_info: AUTH.into(),
                ..Default::default()
            })
            .unwrap(),
        );
    for (line, e) in lines.iter().zip(&events) {
        let bytes = unhex(line);
        assert_eq!(
            siklus::codec::wire::split_header(&bytes).map(|(id, _)| id),
            Some(versions[0])
        );
        d.fetch_schema(&bytes, &|| false).expect("registry");
        assert_eq!(&d.decode(&bytes).expect("decodes"), e);
    }
}
