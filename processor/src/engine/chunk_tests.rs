//! A jump of event time with many timers due fires them a chunk of
//! customers per call, with a commit between chunks, and the outputs are
//! those of firing them all at once.

use super::*;
use crate::time::{parse_rfc3339, DAY_MS};

const CUSTOMERS: usize = 250;

fn events() -> Vec<InteractionEvent> {
    let t0 = parse_rfc3339("2024-01-01T00:00:00Z").expect("time");
    let ev = |id: String, customer: String, ty: &str, t: i64| InteractionEvent {
        event_id: id,
        customer_id: customer,
        event_type: ty.into(),
        occurred_at: t,
        ..Default::default()
    };
    let mut v = Vec::new();
    for c in 0..CUSTOMERS {
        let t = t0 + c as i64 * 60_000;
        v.push(ev(format!("s{c}"), format!("c{c}"), "account.signed_up", t));
        v.push(ev(
            format!("v{c}"),
            format!("c{c}"),
            "page.viewed",
            t + 1_000,
        ));
    }
    // The first customers are seen again, by events that are not activity:
    // the profiles used last (the ones a small hot table keeps) are then
    // those with the earliest deadlines, due before the ones in the store.
    let seen_again = t0 + CUSTOMERS as i64 * 60_000;
    for c in 0..5 {
        v.push(ev(
            format!("i{c}"),
            format!("c{c}"),
            "ad.impression",
            seen_again + c as i64,
        ));
    }
    // 200 days later, confirmed an hour on: every customer's at_risk and
    // churned deadlines fall due at once.
    let later = t0 + 200 * DAY_MS;
    v.push(ev("j1".into(), "late-1".into(), "page.viewed", later));
    v.push(ev(
        "j2".into(),
        "late-2".into(),
        "page.viewed",
        later + 3_600_000,
    ));
    v.push(ev(
        "j3".into(),
        "c0".into(),
        "page.viewed",
        later + 7_200_000,
    ));
    v
}

/// A live-policy engine over a new store in `dir` (partition 0 not yet
/// assigned).
fn live_engine(dir: &std::path::Path) -> Engine {
    live_engine_with_cache(dir, DEFAULT_CACHE_BYTES)
}

/// [`live_engine`] with a hot table of `cache` bytes.
fn live_engine_with_cache(dir: &std::path::Path, cache: usize) -> Engine {
    let store = Arc::new(Store::open(dir, &Default::default()).expect("store"));
    Engine::new(
        store,
        EngineConfig {
            live_watermark: true,
            cache_bytes: cache,
            ..Default::default()
        },
    )
}

/// Runs the events as the live driver does: a commit after each record,
/// and while timers are due, a chunk and a commit. Returns the outputs, and
/// the most transitions one call produced.
fn run(chunk: usize) -> (Vec<String>, Vec<String>, usize) {
    let (mut t, mut p, most) = run_with(chunk, DEFAULT_CACHE_BYTES, None);
    t.sort();
    p.sort();
    (t, p, most)
}

/// [`run`] with a hot table of `cache` bytes, and the engine opened again
/// (from its store alone) before the record at `restart_at`; the outputs in
/// the order they came.
fn run_with(
    chunk: usize,
    cache: usize,
    restart_at: Option<usize>,
) -> (Vec<String>, Vec<String>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let open = |dir: &std::path::Path| {
        let mut engine = live_engine_with_cache(dir, cache);
        engine.set_timer_chunk(chunk);
        engine.assign(0).expect("assign");
        engine
    };
    let mut engine = open(dir.path());
    let mut transitions = Vec::new();
    let mut partials = Vec::new();
    let mut most = 0;
    let mut keep = |out: &mut Outputs, most: &mut usize| {
        *most = (*most).max(out.transitions.len());
        transitions.extend(
            out.transitions
                .drain(..)
                .map(|t| String::from_utf8(crate::codec::transition_json(&t)).expect("utf-8")),
        );
        partials.extend(out.partials.drain(..).map(|p| format!("{p:?}")));
    };
    for (i, e) in events().into_iter().enumerate() {
        if restart_at == Some(i) {
            drop(engine);
            engine = open(dir.path());
        }
        let mut out = Outputs::default();
        engine
            .process(0, i as i64, Ok(e), &mut out)
            .expect("process");
        keep(&mut out, &mut most);
        engine.commit().expect("commit");
        while engine.timers_due() {
            let mut out = Outputs::default();
            engine.fire_due_timers(&mut out).expect("fire");
            keep(&mut out, &mut most);
            engine.commit().expect("commit");
        }
    }
    (transitions, partials, most)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// However small the chunks and the hot table, and whether the profiles
    /// due are in memory or only in the store (an engine opened again just
    /// before the jump), the timers fire the same transitions in the same
    /// order as all at once with every profile in memory.
    #[test]
    fn chunks_and_cache_bounds_fire_the_same_transitions_in_order(
        chunk in 1usize..40,
        cache in 0usize..20_000,
        restart in proptest::prelude::any::<bool>(),
    ) {
        let (want, _, _) = run_with(usize::MAX, usize::MAX, None);
        let restart_at = restart.then(|| events().len() - 2);
        let (got, _, _) = run_with(chunk, cache, restart_at);
        proptest::prop_assert_eq!(got.len(), want.len());
        proptest::prop_assert!(got == want, "the transitions differ");
    }
}

#[test]
fn a_jump_of_time_fires_its_timers_in_chunks_with_the_same_outputs() {
    let (all_t, all_p, most_all) = run(usize::MAX);
    let (chunk_t, chunk_p, most_chunked) = run(10);
    // Every customer's at_risk and churned, at least.
    assert!(
        most_all >= 2 * CUSTOMERS,
        "{most_all} transitions at the jump"
    );
    // Ten customers per call, each with a few transitions.
    assert!(
        most_chunked <= 10 * 4,
        "{most_chunked} transitions in one call"
    );
    assert_eq!(chunk_t.len(), all_t.len());
    assert!(chunk_t == all_t, "the transitions differ");
    assert!(chunk_p == all_p, "the partials differ");
}

#[test]
fn an_advance_in_progress_is_finished_before_the_partition_takes_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = live_engine(dir.path());
    engine.set_timer_chunk(10);
    engine.assign(0).expect("assign");
    let evs = events();
    let jump = evs.len() - 2; // late-2's record confirms the jump
    let mut out = Outputs::default();
    for (i, e) in evs.iter().enumerate().take(jump + 1) {
        engine
            .process(0, i as i64, Ok(e.clone()), &mut out)
            .expect("process");
    }
    assert!(engine.timers_due(), "the jump fired everything at once");
    let before = engine.clock(0).and_then(|c| c.watermark);
    // A driver that does not fire the chunks itself: the next record of
    // the partition finishes the advance first.
    engine
        .process(0, jump as i64 + 1, Ok(evs[jump + 1].clone()), &mut out)
        .expect("process");
    assert!(!engine.timers_due());
    assert!(engine.clock(0).and_then(|c| c.watermark) > before);
}
