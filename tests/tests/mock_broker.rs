//! The `mock-broker` binary (librdkafka 2.12's mock cluster in a process of
//! its own, see `MockBroker`): what `siklus demo`, which runs on the same
//! mock cluster in process, relies on, and, pinned by an assertion, what it
//! does not do.
//!
//! Works, across OS processes:
//! - topics made by `MockBroker::create_topic` (the `create` command of the
//!   broker process, or its `--topic NAME:PARTITIONS` argument), or on first
//!   use (4 partitions);
//! - produce, fetch, watermarks, consumer groups (subscribe, assignment,
//!   commit, `committed_offsets` from another consumer).
//!
//! Does not work: CreateTopics. The mock does not offer the request, so
//! AdminClient `create_topics` waits out its request timeout; no topic
//! configs at all, so no `cleanup.policy=compact` and no compaction (the demo
//! creates its topics through the mock's own API).
//!
//! Its transactions keep no markers and do not fence (see
//! `rdkafka_mock_handlers.c`), so the exactly-once tests run on the real
//! broker (tests/exactly_once.rs), never on the mock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use siklus_e2e::*;

const T: Duration = Duration::from_secs(10);

/// If a `mock gap` assertion fails, the mock learnt something: update the
/// notes at the top of this file.
const GAP: &str = "mock gap";

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
