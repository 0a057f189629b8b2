use super::*;
use tempfile::TempDir;

fn small() -> StoreOptions {
    StoreOptions {
        block_cache_bytes: 1 << 20,
        write_buffer_bytes: 1 << 20,
        ..StoreOptions::default()
    }
}

fn fresh() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &small()).unwrap();
    (dir, store)
}

fn write(store: &Store, f: impl FnOnce(&mut Batch)) {
    let mut b = Batch::new();
    f(&mut b);
    store.write(b).unwrap();
}

fn export(store: &Store, partition: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .export_partition(partition, |k, v| out.push((k.to_vec(), v.to_vec())))
        .unwrap();
    out
}

#[test]
fn defaults() {
    let o = StoreOptions::default();
    assert_eq!(o.block_cache_bytes, 64 << 20);
    assert_eq!(o.write_buffer_bytes, 32 << 20);
    assert_eq!(o.max_write_buffers, 2);
    assert!(!o.sync_writes);
}

#[test]
fn profiles_put_get_delete() {
    let (_d, s) = fresh();
    assert_eq!(s.profile(0, "alice").unwrap(), None);
    write(&s, |b| {
        b.put_profile(0, "alice", b"a1");
        b.put_profile(0, "bob", b"b1");
        b.put_profile(1, "alice", b"other");
    });
    assert_eq!(s.profile(0, "alice").unwrap().as_deref(), Some(&b"a1"[..]));
    assert_eq!(
        s.profile(1, "alice").unwrap().as_deref(),
        Some(&b"other"[..])
    );
    write(&s, |b| {
        b.put_profile(0, "alice", b"a2");
        b.delete_profile(0, "bob");
    });
    assert_eq!(s.profile(0, "alice").unwrap().as_deref(), Some(&b"a2"[..]));
    assert_eq!(s.profile(0, "bob").unwrap(), None);
    assert_eq!(
        s.profiles(0).unwrap(),
        vec![("alice".to_string(), b"a2".to_vec())]
    );
}

#[test]
fn profiles_are_ordered_by_customer_and_scoped_to_partition() {
    let (_d, s) = fresh();
    write(&s, |b| {
        for c in ["c", "a", "ab", "b", ""] {
            b.put_profile(7, c, c.as_bytes());
        }
        b.put_profile(6, "zz", b"");
        b.put_profile(8, "0", b"");
    });
    let got: Vec<String> = s.profiles(7).unwrap().into_iter().map(|(c, _)| c).collect();
    assert_eq!(got, ["", "a", "ab", "b", "c"]);
    let mut first_two = Vec::new();
    s.for_each_profile(7, |c, _| {
        first_two.push(c.to_string());
        first_two.len() < 2
    })
    .unwrap();
    assert_eq!(first_two, ["", "a"]);
}

#[test]
fn batch_is_atomic_and_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), &small()).unwrap();
        let mut b = Batch::new();
        assert!(b.is_empty());
        b.put_profile(3, "carol", b"state");
        b.set_offset(3, 42);
        b.put_meta(3, "watermark", b"wm");
        b.put_global("fingerprint", b"fp");
        assert_eq!(b.len(), 4);
        s.write(b).unwrap();
        // no flush: recovery must come from the write-ahead log
    }
    let s = Store::open(dir.path(), &small()).unwrap();
    assert_eq!(s.offset(3).unwrap(), Some(42));
    assert_eq!(
        s.profile(3, "carol").unwrap().as_deref(),
        Some(&b"state"[..])
    );
    assert_eq!(s.meta(3, "watermark").unwrap().as_deref(), Some(&b"wm"[..]));
    assert_eq!(
        s.global("fingerprint").unwrap().as_deref(),
        Some(&b"fp"[..])
    );
    assert_eq!(s.offset(4).unwrap(), None);
}

#[test]
fn invalid_batch_writes_nothing() {
    let (_d, s) = fresh();
    let mut b = Batch::new();
    b.put_profile(0, "x", b"v");
    b.set_offset(0, 1);
    b.put_raw(&[1, b'Q', 0, 0, 0, 0], b"");
    assert!(b.error().is_some());
    assert!(matches!(s.write(b), Err(StateError::Corrupt(_))));
    assert_eq!(s.profile(0, "x").unwrap(), None);
    assert_eq!(s.offset(0).unwrap(), None);

    let mut b = Batch::new();
    b.put_global(LAYOUT_MARKER, &[0, 0, 0, 9]);
    assert!(matches!(s.write(b), Err(StateError::Layout(_))));
    let mut b = Batch::new();
    b.put_raw(&keys::global(LAYOUT_MARKER), &[0, 0, 0, 9]);
    assert!(matches!(s.write(b), Err(StateError::Layout(_))));
    let mut b = Batch::new();
    b.put_raw(&keys::offset(0), b"short");
    assert!(matches!(s.write(b), Err(StateError::Corrupt(_))));

    let long = "x".repeat(keys::MAX_SEEN_CUSTOMER_LEN + 1);
    let mut b = Batch::new();
    b.mark_seen(0, &long, 1);
    assert!(matches!(s.write(b), Err(StateError::Layout(_))));
    assert!(s.seen(0, &long, 1).is_err());
}

#[test]
fn due_timers_order_and_strict_bound() {
    let (_d, s) = fresh();
    write(&s, |b| {
        b.put_timer(0, 100, "b");
        b.put_timer(0, 100, "a");
        b.put_timer(0, -5, "neg");
        b.put_timer(0, i64::MIN, "min");
        b.put_timer(0, 0, "zero");
        b.put_timer(0, 200, "late");
        b.put_timer(1, 50, "other-partition");
    });
    let due = s.due_timers(0, 100, 100).unwrap();
    assert_eq!(
        due,
        vec![
            (i64::MIN, "min".to_string()),
            (-5, "neg".to_string()),
            (0, "zero".to_string()),
        ],
        "deadline == before must not be due"
    );
    let due = s.due_timers(0, 101, 100).unwrap();
    assert_eq!(due.len(), 5);
    assert_eq!(due[3], (100, "a".to_string()));
    assert_eq!(due[4], (100, "b".to_string()));
    assert_eq!(s.due_timers(0, 101, 2).unwrap().len(), 2);
    assert!(s.due_timers(0, 101, 0).unwrap().is_empty());
    assert!(s.due_timers(0, i64::MIN, 10).unwrap().is_empty());
    assert_eq!(s.due_timers(0, i64::MAX, 10).unwrap().len(), 6);
    assert_eq!(
        s.due_timers(1, i64::MAX, 10).unwrap(),
        vec![(50, "other-partition".to_string())]
    );
    assert_eq!(s.due_timers(0, -4, 10).unwrap().len(), 2);

    write(&s, |b| b.delete_timer(0, -5, "neg"));
    assert_eq!(
        s.due_timers(0, 1, 10).unwrap(),
        vec![(i64::MIN, "min".to_string()), (0, "zero".to_string())]
    );
}

#[test]
fn forget_seen_only_touches_that_customer() {
    let (_d, s) = fresh();
    write(&s, |b| {
        for h in [0, 1, u64::MAX] {
            b.mark_seen(0, "ab", h);
            b.mark_seen(0, "abc", h);
            b.mark_seen(0, "a", h);
            b.mark_seen(1, "ab", h);
        }
    });
    assert!(s.seen(0, "ab", u64::MAX).unwrap());
    assert!(!s.seen(0, "ab", 2).unwrap());
    write(&s, |b| b.forget_seen(0, "ab"));
    for h in [0, 1, u64::MAX] {
        assert!(!s.seen(0, "ab", h).unwrap());
        assert!(s.seen(0, "abc", h).unwrap());
        assert!(s.seen(0, "a", h).unwrap());
        assert!(s.seen(1, "ab", h).unwrap());
    }
}

#[test]
fn drop_partition_leaves_others_intact() {
    let (_d, s) = fresh();
    let fill = |b: &mut Batch, p: u32| {
        b.put_profile(p, "c", b"v");
        b.put_timer(p, 5, "c");
        b.mark_seen(p, "c", 9);
        b.set_offset(p, 10);
        b.put_meta(p, "m", b"x");
    };
    write(&s, |b| {
        for p in [0, 1, 2, u32::MAX] {
            fill(b, p);
        }
        b.put_global("g", b"keep");
    });
    write(&s, |b| {
        b.drop_partition(1);
        b.drop_partition(u32::MAX);
    });
    assert!(export(&s, 1).is_empty());
    assert!(export(&s, u32::MAX).is_empty());
    assert_eq!(s.partitions().unwrap(), vec![0, 2]);
    for p in [0, 2] {
        assert_eq!(export(&s, p).len(), 5);
        assert_eq!(s.offset(p).unwrap(), Some(10));
        assert!(s.seen(p, "c", 9).unwrap());
        assert_eq!(s.due_timers(p, 6, 10).unwrap().len(), 1);
    }
    assert_eq!(s.global("g").unwrap().as_deref(), Some(&b"keep"[..]));
}

#[test]
fn partitions_and_find_profile() {
    let (_d, s) = fresh();
    assert_eq!(s.partitions().unwrap(), Vec::<u32>::new());
    write(&s, |b| {
        b.set_offset(9, 0);
        b.put_profile(3, "alice", b"A");
        b.put_profile(3, "bob", b"B");
        b.put_profile(300, "carol", b"C");
        b.put_profile(u32::MAX, "dave", b"D");
        b.put_timer(50, 1, "timer-only");
        b.put_meta(51, "meta-only", b"");
    });
    assert_eq!(s.partitions().unwrap(), vec![3, 9, 300, u32::MAX]);
    assert_eq!(s.find_profile("carol").unwrap(), Some((300, b"C".to_vec())));
    assert_eq!(
        s.find_profile("dave").unwrap(),
        Some((u32::MAX, b"D".to_vec()))
    );
    assert_eq!(s.find_profile("bob").unwrap(), Some((3, b"B".to_vec())));
    assert_eq!(s.find_profile("carl").unwrap(), None);
}

#[test]
fn export_import_round_trip() {
    let (_d, s) = fresh();
    write(&s, |b| {
        b.put_profile(4, "alice", b"A");
        b.put_profile(4, "bob", &[0, 1, 2]);
        b.put_timer(4, -7, "alice");
        b.put_timer(4, 9, "bob");
        b.mark_seen(4, "alice", 11);
        b.set_offset(4, 1234);
        b.put_meta(4, "watermark", b"w");
        b.put_profile(5, "not-exported", b"");
        b.put_global("not-exported", b"");
    });
    let exported = export(&s, 4);
    assert_eq!(exported.len(), 7);
    assert!(exported.windows(2).all(|w| w[0].0 < w[1].0), "key order");

    let (_d2, t) = fresh();
    write(&t, |b| {
        // stale content that the restore must replace
        b.put_profile(4, "stale", b"");
        b.set_offset(4, 1);
    });
    let mut b = Batch::new();
    b.drop_partition(4);
    for (k, v) in &exported {
        b.put_raw(k, v);
    }
    assert!(b.error().is_none());
    t.write(b).unwrap();
    assert_eq!(export(&t, 4), exported);
    assert_eq!(t.offset(4).unwrap(), Some(1234));
    assert_eq!(t.profile(5, "not-exported").unwrap(), None);
    assert_eq!(t.global("not-exported").unwrap(), None);
}

#[test]
fn unknown_layout_version_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), &small()).unwrap());
    {
        let db = DB::open_default(dir.path()).unwrap();
        db.put(keys::global(LAYOUT_MARKER), 2u32.to_be_bytes())
            .unwrap();
    }
    match Store::open(dir.path(), &small()) {
        Err(StateError::Layout(msg)) => assert!(msg.contains("version 2"), "{msg}"),
        other => panic!("expected a layout error, got {other:?}"),
    }
}

#[test]
fn data_without_layout_marker_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = DB::open_default(dir.path()).unwrap();
        db.put(b"foreign", b"data").unwrap();
    }
    assert!(matches!(
        Store::open(dir.path(), &small()),
        Err(StateError::Layout(_))
    ));
}

#[test]
fn reopen_keeps_layout_and_flush_works() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), &small()).unwrap();
        write(&s, |b| b.put_profile(0, "a", &[7; 4096]));
        s.flush().unwrap();
        assert!(s.approximate_size_bytes() > 0);
    }
    let s = Store::open(dir.path(), &small()).unwrap();
    assert_eq!(s.profile(0, "a").unwrap(), Some(vec![7; 4096]));
    assert_eq!(
        s.global(LAYOUT_MARKER).unwrap(),
        Some(u32::from(keys::LAYOUT_VERSION).to_be_bytes().to_vec())
    );
}

#[test]
fn corrupt_offset_value_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), &small()).unwrap());
    {
        let db = DB::open_default(dir.path()).unwrap();
        db.put(keys::offset(0), b"bad").unwrap();
    }
    let s = Store::open(dir.path(), &small()).unwrap();
    assert!(matches!(s.offset(0), Err(StateError::Corrupt(_))));
}

#[test]
fn retriable_classification() {
    assert!(!StateError::Corrupt("x".into()).is_retriable());
    assert!(!StateError::Layout("x".into()).is_retriable());
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
    fn send<T: Send>() {}
    send::<Batch>();
}

#[test]
fn timers_between_and_first_timer_from() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let mut b = Batch::new();
    for (d, c) in [(-5, "a"), (10, "b"), (20, "c"), (20, "d"), (30, "e")] {
        b.put_timer(1, d, c);
    }
    b.put_timer(2, 15, "other-partition");
    store.write(b).unwrap();
    let got: Vec<(i64, String)> = store.timers_between(1, 10, 30, 10).unwrap();
    assert_eq!(
        got,
        vec![
            (10, "b".to_string()),
            (20, "c".to_string()),
            (20, "d".to_string())
        ]
    );
    assert_eq!(store.timers_between(1, 10, 30, 2).unwrap().len(), 2);
    assert!(store.timers_between(1, 30, 30, 10).unwrap().is_empty());
    assert_eq!(store.first_timer_from(1, 11).unwrap(), Some(20));
    assert_eq!(store.first_timer_from(1, -10).unwrap(), Some(-5));
    assert_eq!(store.first_timer_from(1, 31).unwrap(), None);
}
