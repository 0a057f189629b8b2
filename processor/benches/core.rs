//! Micro-benchmarks of the hot path: the fold, the codecs, the profile
//! encoding and the store's key layout. `cargo bench -p siklus`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use siklus::codec::{self, Decoder, InputFormat};
use siklus::engine::{decode_profile, encode_profile};
use siklus::fold::{apply_event, FoldOutput};
use siklus::generator::{Generator, GeneratorConfig};
use siklus::model::{InteractionEvent, Profile};
use siklus::rules::Rules;

fn workload(n: usize) -> Vec<InteractionEvent> {
    Generator::new(GeneratorConfig {
        customers: (n / 5) as u64,
        events_per_customer: 5.0,
        ..Default::default()
    })
    .take(n)
    .collect()
}

fn benches(c: &mut Criterion) {
    let events = workload(10_000);
    let rules = Rules::default();

    let mut g = c.benchmark_group("fold");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("apply_event, one profile per customer", |b| {
        b.iter(|| {
            let mut profiles: std::collections::HashMap<&str, Profile> =
                std::collections::HashMap::new();
            let mut out = FoldOutput::default();
            for e in &events {
                let p = profiles
                    .entry(e.customer_id.as_str())
                    .or_insert_with(|| Profile::new(&e.customer_id));
                out.clear();
                apply_event(p, e, &rules, &mut out);
            }
            black_box(profiles.len())
        })
    });
    g.finish();

    let json: Vec<Vec<u8>> = events.iter().map(codec::encode_event_json).collect();
    let avro: Vec<Vec<u8>> = events
        .iter()
        .map(|e| codec::encode_event_avro_wire(e, codec::DEFAULT_EVENT_SCHEMA_ID))
        .collect();
    let decoder = Decoder::new(InputFormat::Auto, &Default::default()).expect("decoder");
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("json", |b| {
        b.iter(|| {
            for r in &json {
                black_box(decoder.decode(r).ok());
            }
        })
    });
    g.bench_function("avro wire format", |b| {
        b.iter(|| {
            for r in &avro {
                black_box(decoder.decode(r).ok());
            }
        })
    });
    g.finish();

    // A profile after a realistic history.
    let mut profile = Profile::new("cust-000001");
    let mut out = FoldOutput::default();
    for e in events
        .iter()
        .filter(|e| e.customer_id == events[0].customer_id)
    {
        apply_event(&mut profile, e, &rules, &mut out);
    }
    let bytes = encode_profile(&profile);
    let mut g = c.benchmark_group("profile");
    g.bench_function("encode", |b| {
        b.iter(|| black_box(encode_profile(black_box(&profile))))
    });
    g.bench_function("decode", |b| {
        b.iter(|| black_box(decode_profile(black_box(&bytes))))
    });
    g.finish();

    let mut g = c.benchmark_group("keys");
    g.bench_function("timer key", |b| {
        b.iter(|| {
            black_box(siklus_state::keys::timer(
                black_box(7),
                black_box(1_704_067_200_000),
                "cust-000001",
            ))
        })
    });
    g.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
