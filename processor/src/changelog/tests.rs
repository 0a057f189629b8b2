use super::*;
use crate::engine::{Engine, EngineConfig, Outputs};
use crate::model::InteractionEvent;
use siklus_state::StoreOptions;
use std::sync::Arc;

fn event(customer: &str, id: &str, ty: &str, at: i64) -> InteractionEvent {
    let mut e = crate::generator::Generator::new(Default::default())
        .next()
        .expect("an event");
    e.customer_id = customer.into();
    e.event_id = id.into();
    e.event_type = ty.into();
    e.occurred_at = at;
    e
}

#[test]
fn keys_round_trip() {
    assert_eq!(
        decode_key(&profile_key("c-1")),
        Some(ChangeKey::Profile("c-1".into()))
    );
    assert_eq!(
        decode_key(&seen_key("c-1", 42)),
        Some(ChangeKey::Seen("c-1".into(), 42))
    );
    assert_eq!(
        decode_key(&meta_key("clock")),
        Some(ChangeKey::Meta("clock".into()))
    );
    assert_eq!(decode_key(&offset_key()), Some(ChangeKey::Offset));
    assert_eq!(decode_key(b"Zx"), None);
    assert_eq!(decode_key(b"Ox"), None);
    assert_eq!(decode_key(b"E1234567"), None);
}

/// Runs `events` through an engine on a fresh store, committing after each
/// `step` records, and returns the store and the changelog written.
fn run(
    dir: &std::path::Path,
    config: &EngineConfig,
    events: &[InteractionEvent],
    step: usize,
) -> (Arc<Store>, Vec<ChangeRecord>) {
    let store = Arc::new(Store::open(dir, &StoreOptions::default()).unwrap());
    let mut engine = Engine::new(store.clone(), config.clone());
    engine.assign(0).unwrap();
    let mut log = Vec::new();
    let mut out = Outputs::default();
    for (i, e) in events.iter().enumerate() {
        engine
            .process(0, i as i64, Ok(e.clone()), &mut out)
            .unwrap();
        if (i + 1) % step == 0 {
            let b = engine
                .prepare_commit(siklus_state::Batch::new(), Some(&mut log))
                .unwrap();
            engine.write_commit(b).unwrap();
        }
    }
    let b = engine
        .prepare_commit(siklus_state::Batch::new(), Some(&mut log))
        .unwrap();
    engine.write_commit(b).unwrap();
    (store, log)
}

/// Every partition-0 key and value of a store except the changelog position.
fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    store
        .export_partition(0, |k: &[u8], v: &[u8]| {
            all.push((k.to_vec(), v.to_vec()));
        })
        .unwrap();
    let position = siklus_state::keys::meta(0, META_CHANGELOG_NEXT);
    all.retain(|(k, _)| *k != position);
    all
}

/// Fails with the first key that differs (the dumps are too long to print).
fn assert_same(got: &Store, want: &Store) {
    let (g, w) = (dump(got), dump(want));
    let gm: std::collections::BTreeMap<_, _> = g.iter().cloned().collect();
    let wm: std::collections::BTreeMap<_, _> = w.iter().cloned().collect();
    for (k, v) in &wm {
        match gm.get(k) {
            None => panic!("missing key {:?}", siklus_state::keys::decode(k)),
            Some(x) if x != v => panic!("different value at {:?}", siklus_state::keys::decode(k)),
            _ => {}
        }
    }
    for k in gm.keys() {
        assert!(
            wm.contains_key(k),
            "extra key {:?}",
            siklus_state::keys::decode(k)
        );
    }
}

fn restore(
    dir: &std::path::Path,
    config: &EngineConfig,
    log: &[ChangeRecord],
    committed: i64,
) -> Arc<Store> {
    let store = Arc::new(Store::open(dir, &StoreOptions::default()).unwrap());
    let mut r = Restorer::new(store.clone(), config.clone(), 0, true);
    for (i, rec) in log.iter().enumerate() {
        r.apply(
            i as i64,
            &rec.key,
            rec.value.as_deref(),
            rec.input_next,
            committed,
        )
        .unwrap();
        if r.at_boundary() && r.buffered() > 3 {
            r.flush().unwrap();
        }
    }
    r.flush().unwrap();
    assert_eq!(stored_position(&store, 0).unwrap(), log.len() as i64);
    store
}

fn workload() -> Vec<InteractionEvent> {
    let day = crate::time::DAY_MS;
    let mut v = Vec::new();
    for c in 0..20 {
        let cust = format!("c{c}");
        for k in 0..25 {
            let ty = match k % 5 {
                0 => "account.signed_up",
                1 => "page.viewed",
                2 => "order.completed",
                3 => "page.viewed",
                _ => "page.viewed",
            };
            v.push(event(
                &cust,
                &format!("{cust}-{k}"),
                ty,
                (k as i64 * 9 + c) * day,
            ));
        }
    }
    v.sort_by_key(|e| e.occurred_at);
    v.push(event("c3", "erase-c3", "customer.erased", 300 * day));
    v.push(event("c3", "c3-new", "page.viewed", 301 * day));
    v.push(event("c4", "erase-c4", "customer.erased", 302 * day));
    v
}

#[test]
fn a_restore_from_the_changelog_equals_the_store_that_wrote_it() {
    let config = EngineConfig {
        cache_bytes: 3000,
        ..Default::default()
    };
    let events = workload();
    let a = tempfile::tempdir().unwrap();
    let (store, log) = run(a.path(), &config, &events, 7);
    assert!(
        log.iter().any(|r| r.value.is_none()),
        "an erasure writes tombstones"
    );
    let b = tempfile::tempdir().unwrap();
    let restored = restore(b.path(), &config, &log, i64::MAX);
    assert_same(&restored, &store);
    // Nothing of the erased customer c4 survives (c3 came back after its erasure).
    assert!(store.profile(0, "c4").unwrap().is_none());
    assert!(store.seen_hashes(0, "c4").unwrap().is_empty());
    assert!(restored.profile(0, "c4").unwrap().is_none());
    assert!(restored.seen_hashes(0, "c4").unwrap().is_empty());
}

#[test]
fn a_restore_stops_at_the_committed_input_offset() {
    let config = EngineConfig::default();
    let events = workload();
    let cut = 200;
    // The reference: only the first `cut` records, in the same steps.
    let a = tempfile::tempdir().unwrap();
    let (reference, _) = run(a.path(), &config, &events[..cut], 10);
    // The full run wrote more to the changelog than the group committed.
    let b = tempfile::tempdir().unwrap();
    let (_, log) = run(b.path(), &config, &events, 10);
    let c = tempfile::tempdir().unwrap();
    let restored = restore(c.path(), &config, &log, cut as i64);
    assert_same(&restored, &reference);
    assert_eq!(restored.offset(0).unwrap(), Some(cut as i64));
}

#[test]
fn an_incremental_restore_over_older_state_fixes_its_timers() {
    let config = EngineConfig::default();
    let events = workload();
    let a = tempfile::tempdir().unwrap();
    let (store, log) = run(a.path(), &config, &events, 9);
    // A store that restored the first part, then catches up on the rest.
    let b = tempfile::tempdir().unwrap();
    let half = log.len() / 2;
    let half = (half..log.len())
        .find(|i| decode_key(&log[*i - 1].key) == Some(ChangeKey::Offset))
        .unwrap();
    let restored = restore(b.path(), &config, &log[..half], i64::MAX);
    drop(restored);
    let s = Arc::new(Store::open(b.path(), &StoreOptions::default()).unwrap());
    let mut r = Restorer::new(s.clone(), config.clone(), 0, false);
    for (i, rec) in log.iter().enumerate().skip(half) {
        r.apply(
            i as i64,
            &rec.key,
            rec.value.as_deref(),
            rec.input_next,
            i64::MAX,
        )
        .unwrap();
    }
    r.flush().unwrap();
    assert_same(&s, &store);
}

#[test]
fn expiry_deletes_long_churned_profiles_through_the_changelog() {
    let day = crate::time::DAY_MS;
    let config = EngineConfig {
        expire_churned_after_ms: Some(30 * day),
        ..Default::default()
    };
    let mut events = vec![
        event("gone", "g1", "account.signed_up", 0),
        event("gone", "g2", "page.viewed", day),
        event("stays", "s1", "account.signed_up", 0),
    ];
    // "stays" keeps being active; "gone" churns (default rules) and expires.
    for k in 1..400 {
        events.push(event("stays", &format!("s-{k}"), "page.viewed", k * day));
    }
    let a = tempfile::tempdir().unwrap();
    let (store, log) = run(a.path(), &config, &events, 50);
    assert!(store.profile(0, "gone").unwrap().is_none(), "expired");
    assert!(store.profile(0, "stays").unwrap().is_some());
    assert!(log
        .iter()
        .any(|r| r.key == profile_key("gone") && r.value.is_none()));
    // Without expiry the churned profile stays.
    let b = tempfile::tempdir().unwrap();
    let (kept, _) = run(b.path(), &EngineConfig::default(), &events, 50);
    assert!(kept.profile(0, "gone").unwrap().is_some());
    let c = tempfile::tempdir().unwrap();
    let restored = restore(c.path(), &config, &log, i64::MAX);
    assert_same(&restored, &store);
}
