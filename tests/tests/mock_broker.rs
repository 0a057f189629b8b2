//! The `mock-broker` binary (librdkafka 2.12's mock cluster in a process of
//! its own, see `MockBroker`) as a broker for exactly-once tests: what it
//! does, and, pinned by assertions, what it does not.
//!
//! Works, across OS processes:
//! - topics made by `MockBroker::create_topic` (the `create` command of the
//!   broker process, or its `--topic NAME:PARTITIONS` argument), or on first
//!   use (4 partitions);
//! - produce, fetch, watermarks, consumer groups (subscribe, assignment,
//!   commit, `committed_offsets` from another consumer);
//! - the transactional producer API end to end: `init_transactions`,
//!   `begin_transaction`, produce, `send_offsets_to_transaction`,
//!   `commit_transaction`, `abort_transaction`, and a new producer with the
//!   transactional.id of a SIGKILLed one initialises and commits.
//!
//! Does not work (the mock's handlers for these requests answer success and
//! keep no transaction state; see `rdkafka_mock_handlers.c`):
//! - CreateTopics: the mock does not offer the request, so AdminClient
//!   `create_topics` waits out its request timeout; no topic configs at all,
//!   so no `cleanup.policy=compact` and no compaction;
//! - no transaction markers and no aborted-transaction list: Fetch reports
//!   the last stable offset equal to the high watermark, so a
//!   `read_committed` consumer sees aborted records and the records of open
//!   transactions (also those of a killed producer), exactly like
//!   `read_uncommitted`; offsets have no gaps for markers;
//! - TxnOffsetCommit is acknowledged but not stored: offsets sent with
//!   `send_offsets_to_transaction` are not the group's committed offsets;
//! - no fencing: InitProducerId gives a new producer id to every producer
//!   of a transactional.id, so the older one keeps committing;
//! - no transaction timeout: a transaction older than
//!   `transaction.timeout.ms` still commits.
//!
//! So the mock exercises a transactional code path (the client's calls and
//! their order), but cannot show exactly-once results.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use siklus_e2e::*;

const T: Duration = Duration::from_secs(10);

/// Set for the helper process of `transactions_across_processes`.
const CHILD_ENV: &str = "SIKLUS_MOCK_TXN_CHILD";
const CHILD_READY: &str = "OPEN-TXN-PRODUCED";

/// If a `mock gap` assertion fails, the mock learnt something: update the
/// notes at the top of this file.
const GAP: &str = "mock gap";

fn txn_producer(mut cfg: ClientConfig, id: &str) -> ThreadedProducer<DefaultProducerContext> {
    cfg.set("transactional.id", id)
        .set("linger.ms", "5")
        .create()
        .expect("transactional producer")
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, value: &str) {
    p.send(BaseRecord::to(topic).key(key).payload(value))
        .map_err(|(e, _)| e)
        .expect("send");
}

fn values(rs: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = rs
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    v.sort();
    v
}

fn strings(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The committed offsets of a group, read by a fresh consumer.
fn committed(b: &MockBroker, group: &str, topic: &str, parts: i32) -> Vec<Offset> {
    let c: BaseConsumer = b
        .client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, T).expect("committed offsets");
    (0..parts)
        .map(|p| got.find_partition(topic, p).expect("partition").offset())
        .collect()
}

/// A group member subscribed to `topic` that has consumed `n` records, and
/// the next offset of each partition it read.
fn consume_in_group(
    b: &MockBroker,
    group: &str,
    topic: &str,
    n: usize,
) -> (BaseConsumer, TopicPartitionList) {
    let c: BaseConsumer = b
        .client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut next = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while seen < n {
        assert!(Instant::now() < deadline, "consumed {seen} of {n} records");
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            next.insert(m.partition(), m.offset() + 1);
            seen += 1;
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in next {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .expect("tpl");
    }
    (c, tpl)
}

fn offsets(tpl: &TopicPartitionList, topic: &str, parts: i32) -> Vec<Offset> {
    (0..parts)
        .map(|p| {
            tpl.find_partition(topic, p)
                .map_or(Offset::Invalid, |e| e.offset())
        })
        .collect()
}

#[test]
fn topics_and_consumer_groups() {
    let b = MockBroker::start();

    // CreateTopics is not offered by the mock: the admin request waits for a
    // broker that supports it until its timeout.
    let admin: AdminClient<DefaultClientContext> = b.client().create().expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let name = unique("compacted");
    let topic =
        NewTopic::new(&name, 2, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(2)));
    let res = rt.block_on(admin.create_topics([&topic], &opts));
    assert!(
        res.is_err(),
        "{GAP}: CreateTopics answered: {res:?} (does it keep cleanup.policy?)"
    );

    let input = unique("in");
    b.create_topic(&input, 2);
    b.produce(
        &input,
        (0..10).map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes())),
    );
    assert_eq!(b.read_all(&input).len(), 10);

    let group = unique("group");
    let (c, next) = consume_in_group(&b, &group, &input, 10);
    assert_eq!(c.assignment().expect("assignment").count(), 2);
    c.commit(&next, CommitMode::Sync).expect("commit");
    assert_eq!(
        committed(&b, &group, &input, 2),
        offsets(&next, &input, 2),
        "a new consumer of the group sees the committed offsets"
    );
}

#[test]
fn transactions_across_processes() {
    let b = MockBroker::start();
    let input = unique("in");
    let output = unique("out");
    b.create_topic(&input, 2);
    b.create_topic(&output, 2);
    b.produce(
        &input,
        (0..10).map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes())),
    );

    // Consume-transform-produce: output records and input offsets in one
    // transaction, then a second transaction that is aborted.
    let group = unique("group");
    let (consumer, next) = consume_in_group(&b, &group, &input, 10);
    let p = txn_producer(b.client(), &unique("txn"));
    p.init_transactions(T).expect("init_transactions");
    p.begin_transaction().expect("begin_transaction");
    for i in 0..5 {
        send(&p, &output, &format!("k{i}"), &format!("committed{i}"));
    }
    let cgm = consumer.group_metadata().expect("group metadata");
    p.send_offsets_to_transaction(&next, &cgm, T)
        .expect("send_offsets_to_transaction");
    p.commit_transaction(T).expect("commit_transaction");

    p.begin_transaction().expect("begin_transaction");
    for i in 0..3 {
        send(&p, &output, &format!("k{i}"), &format!("aborted{i}"));
    }
    p.flush(T).expect("flush");
    p.abort_transaction(T).expect("abort_transaction");

    let committed_values = ["committed0", "committed1", "committed2", "committed3"];
    let all = strings(
        &[
            &committed_values[..],
            &["committed4", "aborted0", "aborted1", "aborted2"],
        ]
        .concat(),
    );
    assert_eq!(values(&b.read_all(&output)), all);
    assert_eq!(
        values(&b.read_all_committed(&output)),
        all,
        "{GAP}: read_committed sees aborted records"
    );
    assert_eq!(
        committed(&b, &group, &input, 2),
        vec![Offset::Invalid; 2],
        "{GAP}: offsets sent to a committed transaction are stored (they were {:?})",
        offsets(&next, &input, 2)
    );

    // A producer in another process, SIGKILLed with a transaction open.
    let killed_id = unique("killed");
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "txn_child_process", "--ignored", "--nocapture"])
        .env(CHILD_ENV, format!("{}|{output}|{killed_id}", b.addr))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the producer process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = lines
            .next()
            .expect("the producer process ended before producing")
            .expect("read");
        // libtest prints "test NAME ... " before the test's own output.
        if line.ends_with(CHILD_READY) {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    // Its successor initialises and commits a transaction of its own.
    let successor = txn_producer(b.client(), &killed_id);
    successor
        .init_transactions(T)
        .expect("init_transactions after the kill");
    successor.begin_transaction().expect("begin_transaction");
    send(&successor, &output, "s", "successor");
    successor.commit_transaction(T).expect("commit_transaction");
    let seen = values(&b.read_all_committed(&output));
    assert!(seen.contains(&"successor".to_string()));
    assert!(
        seen.contains(&"open0".to_string()),
        "{GAP}: the killed producer's open transaction is aborted: {seen:?}"
    );

    // Fencing: a second producer with the same transactional.id.
    let fenced_id = unique("fenced");
    let zombie = txn_producer(b.client(), &fenced_id);
    zombie.init_transactions(T).expect("init_transactions");
    let newer = txn_producer(b.client(), &fenced_id);
    newer.init_transactions(T).expect("init_transactions");
    zombie.begin_transaction().expect("begin_transaction");
    send(&zombie, &output, "z", "zombie");
    assert!(
        zombie.commit_transaction(T).is_ok(),
        "{GAP}: the older producer of a transactional.id is fenced"
    );

    // Transaction timeout.
    let slow = txn_producer(
        b.client().set("transaction.timeout.ms", "1000").clone(),
        &unique("slow"),
    );
    slow.init_transactions(T).expect("init_transactions");
    slow.begin_transaction().expect("begin_transaction");
    send(&slow, &output, "t", "late");
    slow.flush(T).expect("flush");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        slow.commit_transaction(T).is_ok(),
        "{GAP}: a transaction past transaction.timeout.ms is aborted"
    );
}

/// The producer process of `transactions_across_processes`: opens a
/// transaction, produces, says so on stdout, and waits to be killed.
#[test]
#[ignore = "a helper process of transactions_across_processes"]
fn txn_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.split('|');
    let (Some(addr), Some(topic), Some(id)) = (it.next(), it.next(), it.next()) else {
        panic!("{CHILD_ENV}={spec}: expected ADDR|TOPIC|TRANSACTIONAL_ID");
    };
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", addr);
    let p = txn_producer(cfg, id);
    p.init_transactions(T).expect("init_transactions");
    p.begin_transaction().expect("begin_transaction");
    for i in 0..4 {
        send(&p, topic, &format!("o{i}"), &format!("open{i}"));
    }
    p.flush(T).expect("flush");
    println!("{CHILD_READY}");
    std::thread::sleep(Duration::from_secs(30));
}
