//! Harness of the end-to-end tests: a real tansu broker per test on a free
//! loopback port, unique topic and group names, topic helpers, and the
//! `siklus` binary as a child process. [`MockBroker`] is librdkafka's mock
//! cluster in a process of its own, for tests that need transactions.
//!
//! A missing broker binary is a failure, never a skip.

pub mod registry;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// A running tansu broker, killed on drop.
pub struct Broker {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cargo/bin/tansu");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("tansu")
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl Broker {
    /// Starts tansu on a free port and waits until it answers metadata requests.
    /// Panics (fails the test) when tansu is not installed: run `scripts/setup.sh`.
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..3 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let url = format!("tcp://{addr}");
            let log = std::fs::File::create(dir.path().join(format!("tansu-{port}.log")))
                .expect("log file");
            let child = Command::new(tansu_bin())
                .arg("broker")
                .env("LISTENER_URL", &url)
                .env("ADVERTISED_LISTENER_URL", &url)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start the tansu broker ({}): {e}. Install it with scripts/setup.sh",
                        tansu_bin().display()
                    )
                });
            let mut b = Broker {
                child,
                addr,
                _dir: tempfile::tempdir().expect("tempdir"),
            };
            if b.wait_ready(Duration::from_secs(20)) {
                b._dir = dir;
                return b;
            }
            let _ = b.child.kill();
        }
        panic!("tansu did not become ready");
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tansu exited at start: {status}");
            }
            if TcpStream::connect(&self.addr).is_ok() {
                let c: BaseConsumer = self.client().create().expect("client");
                if c.fetch_metadata(None, Duration::from_secs(2)).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// A client config pointing at this broker.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr);
        c
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().expect("admin");
        let rt = tokio_rt();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let res = rt
            .block_on(admin.create_topics([&topic], &AdminOptions::new()))
            .expect("create topics");
        for r in res {
            r.unwrap_or_else(|(n, e)| panic!("create topic {n}: {e}"));
        }
        let c: BaseConsumer = self.client().create().expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let md = c
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .expect("metadata");
            if md
                .topics()
                .first()
                .is_some_and(|t| t.partitions().len() == partitions as usize)
            {
                return;
            }
            assert!(Instant::now() < deadline, "topic {name} did not appear");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Produces records (key, value) and waits for their acknowledgement.
    pub fn produce(&self, topic: &str, records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
        self.produce_to(topic, None, records)
    }

    /// Produces records to one partition (or by key when `None`).
    pub fn produce_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) {
        self.produce_timed(
            topic,
            partition,
            records.into_iter().map(|(k, v)| (k, v, None)),
        )
    }

    /// Produces records with explicit timestamps (epoch ms) where given.
    pub fn produce_timed(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>, Option<i64>)>,
    ) {
        produce_records(self.client(), topic, partition, records)
    }

    /// Reads every record of a topic up to its current end.
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let c: BaseConsumer = self
            .client()
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in 0..parts {
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
        c.assign(&tpl).expect("assign");
        let mut pos: BTreeMap<i32, i64> = BTreeMap::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // tansu 0.6 reports a high watermark below the true end of the log
        // (the last batch's base offset + 1), so also wait for a quiet period.
        let mut last = Instant::now();
        loop {
            let behind = ends
                .iter()
                .any(|(p, h)| pos.get(p).copied().unwrap_or(0) < *h);
            if !behind && last.elapsed() > Duration::from_millis(1500) {
                break;
            }
            assert!(Instant::now() < deadline, "timed out reading {topic}");
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.expect("message");
                last = Instant::now();
                pos.insert(m.partition(), m.offset() + 1);
                out.push(Record::of(&m));
            }
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers (values as lossy UTF-8).
    pub headers: Vec<(String, Option<String>)>,
}

impl Record {
    fn of(m: &BorrowedMessage<'_>) -> Record {
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// A header's value.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Produces records with an idempotent producer and waits for their
/// acknowledgement; `partition: None` partitions by key.
fn produce_records(
    mut client: ClientConfig,
    topic: &str,
    partition: Option<i32>,
    records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>, Option<i64>)>,
) {
    let p: ThreadedProducer<DefaultProducerContext> = client
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (k, v, ts) in records {
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic).key(&k).payload(&v);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(ts) = ts {
            rec = rec.timestamp(ts);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// A running `mock-broker` (librdkafka's mock cluster in a process of its
/// own), killed on drop. It has transactions, which tansu lacks, but see
/// `tests/tests/mock_broker.rs` for what its transactions do not do.
pub struct MockBroker {
    child: Child,
    /// The bootstrap servers, `127.0.0.1:PORT,127.0.0.1:PORT,...`.
    pub addr: String,
    /// The command channel: stdin and stdout of the child. Closing stdin
    /// also stops the broker, should the test process die without `Drop`.
    control: std::sync::Mutex<(ChildStdin, BufReader<ChildStdout>)>,
}

/// The `mock-broker` binary built with this workspace.
pub fn mock_broker_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MOCK_BROKER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/mock-broker
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("mock-broker");
    assert!(
        bin.exists(),
        "{} is missing: build the siklus-e2e binaries (cargo test -p siklus-e2e builds it)",
        bin.display()
    );
    bin
}

impl MockBroker {
    /// Starts a 3-broker mock cluster and waits for its bootstrap servers.
    pub fn start() -> MockBroker {
        let mut child = Command::new(mock_broker_bin())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", mock_broker_bin().display()));
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        // Read the first line on a thread, so a hung child fails the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = stdout.read_line(&mut line);
            let _ = tx.send((r, line, stdout));
        });
        let (line, stdout) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((Ok(n), line, stdout)) if n > 0 => (line, stdout),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mock-broker did not print its bootstrap servers: {other:?}");
            }
        };
        let addr = line
            .trim_end()
            .strip_prefix("BOOTSTRAP=")
            .unwrap_or_else(|| panic!("unexpected first line of mock-broker: {line:?}"))
            .to_string();
        MockBroker {
            child,
            addr,
            control: std::sync::Mutex::new((stdin, stdout)),
        }
    }

    /// A client config pointing at this broker.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr);
        c
    }

    /// Creates a topic. The mock has no CreateTopics request, so this goes
    /// through the broker process's command channel; it has no topic
    /// configs either (no `cleanup.policy=compact`).
    pub fn create_topic(&self, name: &str, partitions: i32) {
        {
            let mut control = self.control.lock().expect("control");
            let (stdin, stdout) = &mut *control;
            writeln!(stdin, "create {name} {partitions}")
                .and_then(|()| stdin.flush())
                .expect("write to mock-broker");
            let mut reply = String::new();
            stdout.read_line(&mut reply).expect("read from mock-broker");
            assert_eq!(reply.trim_end(), "OK", "create topic {name}");
        }
        let c: BaseConsumer = self.client().create().expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let md = c
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .expect("metadata");
            if md
                .topics()
                .first()
                .is_some_and(|t| t.partitions().len() == partitions as usize)
            {
                return;
            }
            assert!(Instant::now() < deadline, "topic {name} did not appear");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Produces records (key, value) and waits for their acknowledgement.
    pub fn produce(&self, topic: &str, records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
        self.produce_to(topic, None, records)
    }

    /// Produces records to one partition (or by key when `None`).
    pub fn produce_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) {
        self.produce_timed(
            topic,
            partition,
            records.into_iter().map(|(k, v)| (k, v, None)),
        )
    }

    /// Produces records with explicit timestamps (epoch ms) where given.
    pub fn produce_timed(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>, Option<i64>)>,
    ) {
        produce_records(self.client(), topic, partition, records)
    }

    /// Reads every record of a topic up to its current end
    /// (`isolation.level=read_uncommitted`).
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        self.read_with(topic, "read_uncommitted")
    }

    /// Reads every committed record of a topic up to its last stable offset
    /// (`isolation.level=read_committed`). On the mock this is the same as
    /// [`MockBroker::read_all`]: it reports the high watermark as the last
    /// stable offset and no aborted transactions.
    pub fn read_all_committed(&self, topic: &str) -> Vec<Record> {
        self.read_with(topic, "read_committed")
    }

    fn read_with(&self, topic: &str, isolation: &str) -> Vec<Record> {
        let c: BaseConsumer = self
            .client()
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .expect("consumer");
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in 0..parts {
            // Under read_committed this is the last stable offset.
            let (_, end) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            ends.insert(p, end);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The position, not the last record: it also moves past
            // transaction markers and aborted records.
            let pos = c.position().expect("position");
            let behind = ends.iter().any(|(p, end)| {
                let at = match pos.find_partition(topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                at < *end
            });
            if !behind {
                break;
            }
            assert!(Instant::now() < deadline, "timed out reading {topic}");
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                out.push(Record::of(&m.expect("message")));
            }
        }
        out
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A name unique to this process and moment.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!(
        "{prefix}-{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `siklus` binary built with this workspace.
pub fn siklus_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SIKLUS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/siklus
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("siklus");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo nextest run --workspace builds it)",
        bin.display()
    );
    bin
}

/// Writes a TOML config for a run against this broker and returns its path.
pub fn write_config(dir: &Path, broker: &Broker, input: &str, group: &str, extra: &str) -> PathBuf {
    let p = dir.join("siklus.toml");
    let text = format!(
        "[kafka]\n\"bootstrap.servers\" = \"{}\"\n# The rebalance timeout (librdkafka default 300 s): how long a rebalance\n# waits for members that do not rejoin, such as killed ones.\n\"max.poll.interval.ms\" = \"20000\"\n\"session.timeout.ms\" = \"10000\"\n\n[topics]\ninput = \"{input}\"\ntransitions = \"{group}.transitions\"\naggregates = \"{group}.aggregates\"\ncohorts = \"{group}.cohorts\"\ndlq = \"{group}.dlq\"\n\n[processor]\ngroup_id = \"{group}\"\nstate_dir = \"{}\"\ncommit_interval_ms = 200\n{idle}# tansu 0.6 cannot fetch from the middle of a batch\nresume_rewind = 1000000\n{extra}\n",
        broker.addr,
        dir.join("state").display(),
        idle = if extra.contains("idle_timeout_ms") { "" } else { "idle_timeout_ms = 2000\n" },
    );
    std::fs::write(&p, text).expect("write config");
    p
}

/// Starts `siklus run` as a child process.
pub fn spawn_run(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Child {
    // Appends, so the logs of every run against one state dir are kept.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))
        .expect("log");
    let mut cmd = Command::new(siklus_bin());
    cmd.arg("--config")
        .arg(config)
        .arg("run")
        .args(args)
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn siklus")
}

/// Waits until `f` returns true, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sends SIGTERM to a child.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for a child to exit, failing the test after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "siklus did not exit in time; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Status, headers (lower-case names) and body of an HTTP response.
pub type HttpResponse = (u16, Vec<(String, String)>, String);

/// A plain HTTP/1.1 GET against `addr` (`127.0.0.1:PORT`).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<HttpResponse> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// Sums the samples of a metric family in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// The log of a `siklus run` started with `config` (see [`spawn_run`]).
pub fn log_of(config: &Path) -> String {
    std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
}

/// Per partition of a state directory: (stored next offset, profiles).
pub type PartitionState = BTreeMap<u32, (i64, BTreeMap<String, Vec<u8>>)>;

/// Every partition of the store under `dir/state`.
pub fn partitions_of(dir: &Path) -> PartitionState {
    let store = siklus_state::Store::open(&dir.join("state"), &Default::default()).expect("state");
    let mut m = BTreeMap::new();
    for p in store.partitions().expect("partitions") {
        let off = store.offset(p).expect("offset").unwrap_or(-1);
        m.insert(
            p,
            (
                off,
                store.profiles(p).expect("profiles").into_iter().collect(),
            ),
        );
    }
    m
}

/// The transitions of a topic by id (their JSON). Fails the test if one id
/// comes with two different contents.
pub fn transitions_by_id(broker: &Broker, topic: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for r in broker.read_all(topic) {
        let t: siklus::model::StageTransition =
            serde_json::from_slice(r.value.as_deref().expect("value")).expect("json");
        let text = serde_json::to_string(&t).expect("json");
        if let Some(prev) = m.insert(t.transition_id.clone(), text.clone()) {
            assert_eq!(prev, text, "one transition id with two contents");
        }
    }
    m
}
