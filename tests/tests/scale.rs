//! Scale-out, failures and erasure over a consumer group, with the state
//! changelog: partitions move between instances, instances are SIGKILLed
//! and restarted, a new instance restores from the changelog, and an erased
//! customer leaves no data anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use siklus::generator::{Generator, GeneratorConfig};
use siklus_e2e::*;

/// No idle shortcuts (they depend on wall-clock timing), moderate steps.
const EXTRA: &str = "max_batch = 2000\nidle_timeout_ms = 600000";

/// One uninterrupted instance: its state and transitions, and its group.
fn reference_group(
    broker: &Broker,
    input: &str,
) -> (
    PartitionState,
    BTreeMap<String, String>,
    tempfile::TempDir,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let group = unique("ref");
    let cfg = write_config(dir.path(), broker, input, &group, EXTRA);
    let mut r = spawn_run(&cfg, &["--stop-at-end"], &[]);
    assert!(
        wait_exit(&mut r, Duration::from_secs(600), &cfg).success(),
        "{}",
        log_of(&cfg)
    );
    let state = partitions_of(dir.path());
    let out = transitions_by_id(broker, &format!("{group}.transitions"));
    (state, out, dir, group)
}

/// One uninterrupted instance: its state and transitions.
fn reference(
    broker: &Broker,
    input: &str,
) -> (PartitionState, BTreeMap<String, String>, tempfile::TempDir) {
    let (state, out, dir, _) = reference_group(broker, input);
    (state, out, dir)
}

/// Waits until the transitions topic holds at least `want` ids and stops growing.
fn wait_settled(broker: &Broker, topic: &str, want: usize, timeout: Duration) {
    let mut last = 0;
    let mut stable = 0;
    wait_until("the output to settle", timeout, || {
        let n = std::panic::catch_unwind(|| transitions_by_id(broker, topic).len()).unwrap_or(0);
        stable = if n == last { stable + 1 } else { 0 };
        last = n;
        n >= want && stable >= 3
    });
}

/// A fresh instance with an empty state directory that joins `group`
/// after everyone else left: it restores every partition from the
/// changelog and finds nothing left to process.
fn restore_fresh(
    broker: &Broker,
    input: &str,
    group: &str,
) -> (PartitionState, String, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), broker, input, group, EXTRA);
    let mut c = spawn_run(&cfg, &["--stop-at-end"], &[]);
    assert!(
        wait_exit(&mut c, Duration::from_secs(300), &cfg).success(),
        "{}",
        log_of(&cfg)
    );
    (partitions_of(dir.path()), log_of(&cfg), dir, cfg)
}

fn assert_state_eq(got: &PartitionState, want: &PartitionState, what: &str) {
    for (p, (off, profiles)) in want {
        let (goff, gprof) = got
            .get(p)
            .unwrap_or_else(|| panic!("{what}: partition {p} missing"));
        assert_eq!(goff, off, "{what}: partition {p} offset");
        let diff = profiles
            .iter()
            .filter(|(c, v)| gprof.get(*c) != Some(*v))
            .count()
            + gprof.keys().filter(|c| !profiles.contains_key(*c)).count();
        assert_eq!(diff, 0, "{what}: partition {p}: {diff} profiles differ");
    }
}

fn spawn(cfg: &Path) -> KillOnDrop {
    spawn_run(cfg, &[], &[])
}

/// Tiny deterministic PRNG for the kill schedule (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn three_instances_killed_at_random_match_one_uninterrupted_instance() {
    let broker = Broker::shared();
    let input = unique("chaos-in");
    broker.create_topic(&input, 8);
    let mut events: Vec<(Vec<u8>, Vec<u8>)> = generated(GeneratorConfig {
        customers: 26_000,
        seed: 11,
        ..Default::default()
    })
    .collect();
    let n = events.len();
    assert!(n >= 200_000, "only {n} events");
    // Poison records in the middle of the stream: the dead letters must
    // come out the same.
    let second = events.split_off(n / 2);
    broker.produce(&input, events);
    broker.produce(
        &input,
        (0..40).map(|i| {
            (
                format!("poison-{i}").into_bytes(),
                format!("not json {i}").into_bytes(),
            )
        }),
    );
    broker.produce(&input, second);
    let (want_state, want, _ref_dir, ref_group) = reference_group(broker, &input);

    let group = unique("chaos");
    let out = format!("{group}.transitions");
    // Kept when the test fails, for the logs and stores.
    let mut dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for d in &mut dirs {
        d.disable_cleanup(true);
        eprintln!("instance dir {}", d.path().display());
    }
    let cfgs: Vec<PathBuf> = dirs
        .iter()
        .map(|d| write_config(d.path(), broker, &input, &group, EXTRA))
        .collect();
    let mut children: Vec<KillOnDrop> = cfgs.iter().map(|c| spawn(c)).collect();
    let seed = std::env::var("SIKLUS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("chaos seed {seed} (SIKLUS_CHAOS_SEED to repeat)");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut kills = 0;
    while kills < 5 {
        std::thread::sleep(Duration::from_millis(2_000 + rng.next(6_000)));
        let i = rng.next(3) as usize;
        let _ = children[i].kill(); // SIGKILL
        let _ = children[i].wait();
        kills += 1;
        eprintln!(
            "kill {kills}: instance {i} at {:.1}s",
            started.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(rng.next(3_000)));
        children[i] = spawn(&cfgs[i]);
    }
    wait_settled(broker, &out, want.len(), Duration::from_secs(600));
    for c in &children {
        terminate(c);
    }
    for (c, cfg) in children.iter_mut().zip(&cfgs) {
        assert!(
            wait_exit(c, Duration::from_secs(120), cfg).success(),
            "{}",
            log_of(cfg)
        );
    }

    // No transition is missing, none differs, none is extra.
    let got = transitions_by_id(broker, &out);
    let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
    assert_eq!(missing, 0, "{missing} transitions missing");
    let differ = got.iter().filter(|(k, v)| want.get(*k) != Some(*v)).count();
    assert_eq!(differ, 0, "{differ} transitions extra or different");
    // The aggregates and cohort cells, as a reader keeping the last value
    // per key sees them, and the dead letters, equal the reference's.
    for topic in ["aggregates", "cohorts"] {
        let want_latest = latest_by_key(broker, &format!("{ref_group}.{topic}"));
        let got_latest = latest_by_key(broker, &format!("{group}.{topic}"));
        assert!(!want_latest.is_empty(), "no {topic} in the reference");
        let differ = want_latest
            .iter()
            .filter(|(k, v)| got_latest.get(*k) != Some(*v))
            .count();
        let extra = got_latest
            .keys()
            .filter(|k| !want_latest.contains_key(*k))
            .count();
        assert_eq!(
            (differ, extra),
            (0, 0),
            "{topic}: keys missing or different, and extra, of {}",
            want_latest.len()
        );
    }
    let want_dlq = dead_letters(broker, &format!("{ref_group}.dlq"));
    assert_eq!(want_dlq.len(), 40);
    assert!(
        dead_letters(broker, &format!("{group}.dlq")) == want_dlq,
        "the dead letters differ from the reference's"
    );
    // Each partition's state at its furthest store equals the reference.
    let states: Vec<PartitionState> = dirs.iter().map(|d| partitions_of(d.path())).collect();
    for (p, (off, profiles)) in &want_state {
        let best = states
            .iter()
            .filter_map(|s| s.get(p))
            .max_by_key(|(o, _)| *o)
            .expect("some instance owned the partition");
        assert_eq!(best.0, *off, "partition {p} did not reach the end");
        assert!(best.1 == *profiles, "partition {p}: profiles differ");
    }
    // And a state rebuilt from the changelog alone has it too: `siklus state
    // restore` reads every partition's changelog without joining the group.
    // (A new member that joins and restores is the erasure test's
    // `restore_fresh`.)
    let fresh = tempfile::tempdir().unwrap();
    let fcfg = write_config(fresh.path(), broker, &input, &group, EXTRA);
    let o = std::process::Command::new(siklus_bin())
        .arg("--config")
        .arg(&fcfg)
        .args(["state", "restore"])
        .output()
        .expect("state restore");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("restore: {summary}");
    assert!(summary["records"].as_u64().unwrap() > 0);
    let restored = partitions_of(fresh.path());
    assert_state_eq(&restored, &want_state, "fresh restore");
    for d in &mut dirs {
        d.disable_cleanup(false);
    }
}

#[test]
fn scale_out_and_in_restores_from_the_changelog() {
    let broker = Broker::shared();
    let input = unique("scale-in");
    load_generated(broker, &input, 4, 5_000, 5);
    let (want_state, want, _ref_dir) = reference(broker, &input);

    let group = unique("scale");
    let out = format!("{group}.transitions");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let small = "max_batch = 200\nidle_timeout_ms = 600000";
    let ca = write_config(da.path(), broker, &input, &group, small);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let cb = write_config(
        db.path(),
        broker,
        &input,
        &group,
        &format!("{small}\nhttp_listen = \"{metrics_addr}\""),
    );
    // Cooperative-sticky (the default) here: members join and leave cleanly.
    let mut a = spawn_run(&ca, &[], &[]);
    // B joins once A has committed steps on every partition, so that
    // whichever partitions B takes, it restores them from the changelog.
    wait_until(
        "A to commit on every partition",
        Duration::from_secs(120),
        || broker.committed(&group, &input).values().all(|o| *o > 0),
    );
    let mut b = spawn_run(&cb, &[], &[]);
    wait_until("B to take partitions", Duration::from_secs(120), || {
        log_of(&cb).contains("partition restored from the changelog")
    });
    // Cooperative-sticky: A let go of the partitions B took, and only those;
    // the ones it kept were never stopped. (A revokes before B is given the
    // partitions, so the count is complete once B restored them.)
    let revoked = log_of(&ca).matches("partition revoked").count();
    assert!(
        (1..4).contains(&revoked),
        "A revoked {revoked} of its 4 partitions when B joined"
    );
    // A leaves: B takes everything, restoring A's partitions.
    terminate(&a);
    assert!(
        wait_exit(&mut a, Duration::from_secs(120), &ca).success(),
        "{}",
        log_of(&ca)
    );
    wait_settled(broker, &out, want.len(), Duration::from_secs(300));
    wait_until("B to own all 4 partitions", Duration::from_secs(60), || {
        http_get(&metrics_addr, "/metrics")
            .map(|(_, _, body)| metric_sum(&body, "siklus_assigned_partitions") == 4.0)
            .unwrap_or(false)
    });
    let (_, _, body) = http_get(&metrics_addr, "/metrics").unwrap();
    let restores = metric_sum(&body, "siklus_changelog_restores_total");
    let restored = metric_sum(&body, "siklus_restored_records_total");
    assert!(restores >= 1.0, "no restore counted:\n{body}");
    assert!(restored > 0.0, "no restored records counted:\n{body}");
    terminate(&b);
    assert!(
        wait_exit(&mut b, Duration::from_secs(120), &cb).success(),
        "{}",
        log_of(&cb)
    );
    assert_eq!(transitions_by_id(broker, &out), want);
    assert_state_eq(&partitions_of(db.path()), &want_state, "B after scale-in");
}

#[test]
fn an_erased_customer_is_gone_from_inspect_the_changelog_and_a_restore() {
    let broker = Broker::shared();
    let input = unique("erase-in");
    broker.create_topic(&input, 2);
    let mut events: Vec<siklus::model::InteractionEvent> = Generator::new(GeneratorConfig {
        customers: 200,
        seed: 9,
        ..Default::default()
    })
    .collect();
    let victim = events
        .iter()
        .map(|e| e.customer_id.clone())
        .max_by_key(|c| events.iter().filter(|e| &e.customer_id == c).count())
        .unwrap();
    let n_victim = events.iter().filter(|e| e.customer_id == victim).count();
    assert!(
        n_victim > 20,
        "the victim has {n_victim} events (want >16: spilled ids)"
    );
    let last = events.iter().map(|e| e.occurred_at).max().unwrap();
    let mut erase = events[0].clone();
    erase.customer_id = victim.clone();
    erase.event_id = "erase-1".into();
    erase.event_type = "customer.erased".into();
    erase.occurred_at = last + 1000;
    erase.order_id = None;
    erase.amount_minor = None;
    erase.currency = None;
    events.push(erase);
    broker.produce(
        &input,
        events.iter().map(|e| {
            (
                e.customer_id.clone().into_bytes(),
                siklus::codec::encode_event_json(e),
            )
        }),
    );
    let group = unique("erase");
    let da = tempfile::tempdir().unwrap();
    // Small steps: the victim's profile and ids reach the changelog before
    // the erasure does.
    let ca = write_config(
        da.path(),
        broker,
        &input,
        &group,
        "max_batch = 100\nidle_timeout_ms = 600000",
    );
    let mut a = spawn_run(&ca, &["--stop-at-end"], &[]);
    assert!(
        wait_exit(&mut a, Duration::from_secs(300), &ca).success(),
        "{}",
        log_of(&ca)
    );

    let inspect = |cfg: &Path| {
        std::process::Command::new(siklus_bin())
            .arg("--config")
            .arg(cfg)
            .arg("inspect")
            .arg(&victim)
            .output()
            .expect("inspect")
    };
    // Another customer is there (the check can fail), the victim is not.
    let other = events.iter().find(|e| e.customer_id != victim).unwrap();
    let ok = std::process::Command::new(siklus_bin())
        .arg("--config")
        .arg(&ca)
        .arg("inspect")
        .arg(&other.customer_id)
        .output()
        .unwrap();
    assert!(ok.status.success());
    let out = inspect(&ca);
    assert!(
        !out.status.success(),
        "inspect found the erased customer: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let no_trace = |dir: &Path| {
        let store = siklus_state::Store::open(&dir.join("state"), &Default::default()).unwrap();
        for p in store.partitions().unwrap() {
            assert!(store.profile(p, &victim).unwrap().is_none());
            assert!(
                store.seen_hashes(p, &victim).unwrap().is_empty(),
                "dedup ids left"
            );
        }
    };
    no_trace(da.path());

    // The changelog, read to its end: every key of the victim ends in a tombstone.
    let changelog = format!("siklus.{group}.profiles-changelog");
    let mut latest: BTreeMap<(i32, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
    let records = broker.read_all(&changelog);
    assert!(!records.is_empty());
    for r in records {
        latest.insert((r.partition, r.key.clone().unwrap()), r.value.clone());
    }
    let mut victim_keys = 0;
    let live_seen = latest
        .iter()
        .filter(|((_, k), v)| {
            matches!(
                siklus::changelog::decode_key(k),
                Some(siklus::changelog::ChangeKey::Seen(..))
            ) && v.is_some()
        })
        .count();
    assert!(
        live_seen > 0,
        "no live dedup id of any customer in the changelog"
    );
    for ((_, key), value) in &latest {
        let about_victim = match siklus::changelog::decode_key(key) {
            Some(siklus::changelog::ChangeKey::Profile(c)) => c == victim,
            Some(siklus::changelog::ChangeKey::Seen(c, _)) => c == victim,
            _ => false,
        };
        if about_victim {
            victim_keys += 1;
            assert!(
                value.is_none(),
                "a live value of the erased customer: {key:?}"
            );
        }
    }
    // The profile, and ids that spilled out of it (more than 16 events).
    assert!(
        victim_keys >= 2,
        "only {victim_keys} tombstones for {n_victim} events"
    );

    // A new instance restoring from the changelog has nothing of the victim.
    let (restored, log, dir, cfg) = restore_fresh(broker, &input, &group);
    assert!(
        log.contains("partition restored from the changelog"),
        "{log}"
    );
    assert!(restored
        .values()
        .any(|(_, ps)| ps.contains_key(&other.customer_id)));
    no_trace(dir.path());
    let out = inspect(&cfg);
    assert!(
        !out.status.success(),
        "inspect found the erased customer after a restore"
    );
}

/// The `key=value` fields of a log line (ANSI colours stripped).
fn fields(line: &str) -> BTreeMap<String, String> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

#[test]
fn a_standby_takes_over_without_a_full_restore() {
    let broker = Broker::shared();
    let input = unique("standby-in");
    load_generated(broker, &input, 4, 5_000, 8);
    let (want_state, want, _ref_dir) = reference(broker, &input);

    let group = unique("standby");
    let out = format!("{group}.transitions");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let small = "max_batch = 200\nidle_timeout_ms = 600000";
    let ca = write_config(da.path(), broker, &input, &group, small);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let cb = write_config(
        db.path(),
        broker,
        &input,
        &group,
        &format!("{small}\nstandby_replicas = true\nhttp_listen = \"{metrics_addr}\""),
    );
    let mut a = spawn_run(&ca, &[], &[]);
    // As in the scale-out test: B's own partitions have committed steps to
    // restore when it joins.
    wait_until(
        "A to commit on every partition",
        Duration::from_secs(120),
        || broker.committed(&group, &input).values().all(|o| *o > 0),
    );
    let mut b = spawn_run(&cb, &[], &[]);
    wait_until(
        "B to follow A's partitions",
        Duration::from_secs(120),
        || {
            log_of(&cb).contains("following partition as a standby")
                && log_of(&cb).contains("restored_records")
        },
    );
    wait_settled(broker, &out, want.len(), Duration::from_secs(300));
    // Let the standby catch up with the last steps A committed.
    std::thread::sleep(Duration::from_secs(5));
    let before = log_of(&cb).len();
    terminate(&a);
    assert!(
        wait_exit(&mut a, Duration::from_secs(120), &ca).success(),
        "{}",
        log_of(&ca)
    );
    wait_until("B to own all 4 partitions", Duration::from_secs(90), || {
        http_get(&metrics_addr, "/metrics")
            .map(|(_, _, body)| metric_sum(&body, "siklus_assigned_partitions") == 4.0)
            .unwrap_or(false)
    });
    let log = log_of(&cb);
    let takeover = &log[before..];
    let restored = |text: &str| -> Vec<u64> {
        text.lines()
            .filter(|l| l.contains("partition restored from the changelog"))
            .filter_map(|l| fields(l).get("records")?.parse().ok())
            .collect()
    };
    // What a full restore of a partition reads: its changelog records.
    // (B's own partitions are no baseline: a standby may warm them up
    // before B's assignment arrives.)
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    for r in broker.read_all(&format!("siklus.{group}.profiles-changelog")) {
        *per_partition.entry(r.partition).or_default() += 1;
    }
    let largest_first = per_partition.values().copied().min().unwrap_or(0);
    assert!(
        largest_first > 100,
        "the changelog partitions hold only {per_partition:?}"
    );
    assert!(
        takeover.contains("standby partition assigned"),
        "no standby was taken over:\n{takeover}"
    );
    // A full restore of A's partitions would read about as much as B's own;
    // from a standby, only what it had not applied yet.
    for n in restored(takeover) {
        assert!(
            n * 10 < largest_first,
            "a takeover restored {n} records (a full restore: at least {largest_first})"
        );
    }
    terminate(&b);
    assert!(
        wait_exit(&mut b, Duration::from_secs(120), &cb).success(),
        "{}",
        log_of(&cb)
    );
    assert_eq!(transitions_by_id(broker, &out), want);
    assert_state_eq(
        &partitions_of(db.path()),
        &want_state,
        "B after the takeover",
    );
}
