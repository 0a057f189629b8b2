//! Harness of the end-to-end tests: a real Apache Kafka broker (KRaft, one
//! combined broker and controller, run by `scripts/kafka-broker.sh`), unique
//! topic and group names, topic helpers, and the `siklus` binary as a child
//! process. [`MockBroker`] is librdkafka's mock cluster in a process of its
//! own, pinning what the demo (which runs on that mock) relies on.
//!
//! Tests share one broker per test binary ([`Broker::shared`]) and keep apart
//! by their own topics and groups ([`unique`]); the fault tests that stop or
//! restart a broker start their own ([`Broker::start`]). A broker that cannot
//! start (its jars missing: run `scripts/setup-test.sh`) fails the test, never
//! skips it.

pub mod registry;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// A running Apache Kafka broker, reached at [`Broker::addr`].
///
/// Its directory holds the config (with its ports), the data, the log
/// (`broker.log`) and the pid; `scripts/kafka-broker.sh` manages it.
pub struct Broker {
    /// `127.0.0.1:PORT`. The same after [`Broker::restart`].
    pub addr: String,
    /// The broker's directory.
    dir: PathBuf,
    /// A broker of one test ([`Broker::start`]): its directory, removed
    /// (after the broker is killed) on drop. `None` for the shared broker,
    /// whose watchdog removes its directory when the test run ends.
    own: Option<tempfile::TempDir>,
}

/// `scripts/kafka-broker.sh` of this checkout.
fn broker_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-broker.sh")
}

/// Runs `kafka-broker.sh ARGS` and returns what it printed on stdout.
/// Panics with its stderr when it fails.
fn broker_script_run(args: &[&str], envs: &[(&str, String)]) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(broker_script()).args(args).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", broker_script().display()));
    assert!(
        out.status.success(),
        "scripts/kafka-broker.sh {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl Broker {
    /// The broker shared by the tests of this test binary, started by the
    /// first of them that asks.
    ///
    /// Under `cargo test`, one process runs every test of a binary: the
    /// broker lives in a static and dies with the process (statics are
    /// never dropped, so the start script's watchdog watches this
    /// process). nextest runs each test in a process of its own: there the
    /// tests of one binary find each other's broker through a directory
    /// named after the run (`NEXTEST_RUN_ID`) and the binary, under the
    /// script's lock. Each test process registers as a user; the watchdog
    /// stops the broker when no user has been alive for 20 s (a later test
    /// brings it back, with its data, on its port) and removes it when the
    /// test runner (this process's parent) exits.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(|| {
            let me = std::process::id();
            let per_test =
                std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test");
            let run_id = std::env::var("NEXTEST_RUN_ID").ok();
            let (key, watch, idle) = match (per_test, run_id) {
                (true, Some(run)) => {
                    let exe = std::env::current_exe().expect("current exe");
                    let bin = exe
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (
                        format!("{run}-{bin}"),
                        std::os::unix::process::parent_id(),
                        Some("20"),
                    )
                }
                _ => (format!("pid-{me}"), me, None),
            };
            let dir = std::env::temp_dir().join(format!("siklus-kafka-{key}"));
            let mut envs = vec![
                ("KAFKA_BROKER_WATCH_PID", watch.to_string()),
                ("KAFKA_BROKER_REMOVE_DIR", "1".to_string()),
                ("KAFKA_BROKER_USER_PID", me.to_string()),
            ];
            if let Some(idle) = idle {
                envs.push(("KAFKA_BROKER_IDLE_STOP", idle.to_string()));
            }
            let dir_arg = dir.to_string_lossy().into_owned();
            let addr = broker_script_run(&["start", &dir_arg], &envs);
            Broker {
                addr,
                dir,
                own: None,
            }
        })
    }

    /// Starts a broker of this test's own on free ports, for tests that
    /// stop or restart it ([`Broker::stop`], [`Broker::restart`]); the
    /// others use [`Broker::shared`]. Killed on drop, and by the start
    /// script's watchdog should this process die first.
    pub fn start() -> Broker {
        let tmp = tempfile::Builder::new()
            .prefix("siklus-kafka-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let addr = broker_script_run(
            &["start", &dir.to_string_lossy()],
            &[("KAFKA_BROKER_WATCH_PID", std::process::id().to_string())],
        );
        Broker {
            addr,
            dir,
            own: Some(tmp),
        }
    }

    /// Stops the broker cleanly (SIGTERM; SIGKILL after 30 s). Its data and
    /// port stay for [`Broker::restart`]. Only for brokers of [`Broker::start`].
    pub fn stop(&self) {
        assert!(
            self.own.is_some(),
            "the shared broker is not stopped by tests"
        );
        broker_script_run(&["stop", &self.dir.to_string_lossy()], &[]);
    }

    /// Starts the broker again, stopping it first if it runs: the same port
    /// and the same data. Returns once it serves clients.
    pub fn restart(&self) {
        self.stop();
        let watch = std::process::id().to_string();
        let addr = broker_script_run(
            &["start", &self.dir.to_string_lossy()],
            &[("KAFKA_BROKER_WATCH_PID", watch)],
        );
        assert_eq!(addr, self.addr, "the broker came back on another port");
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    /// A client config pointing at this broker.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr);
        c
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.create_topic_with(name, partitions, &[]);
    }

    /// Creates a topic with topic configs (`cleanup.policy`, `segment.ms`, …).
    pub fn create_topic_with(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().expect("admin");
        let rt = tokio_rt();
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let res = rt
            .block_on(admin.create_topics([&topic], &AdminOptions::new()))
            .expect("create topics");
        for r in res {
            r.unwrap_or_else(|(n, e)| panic!("create topic {n}: {e}"));
        }
        wait_for_topic(self.client(), name, partitions);
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
    /// (`isolation.level=read_uncommitted`: also the records of open and
    /// aborted transactions).
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        read_until_end(self.client(), topic, "read_uncommitted")
    }

    /// The offsets `group` has committed on each partition of `topic`
    /// (-1 where it has committed none).
    pub fn committed(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        let c: BaseConsumer = self
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let md = retrying("metadata", || {
            c.fetch_metadata(Some(topic), Duration::from_secs(10))
        });
        let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition(topic, p);
        }
        let got = retrying("committed offsets", || {
            c.committed_offsets(tpl.clone(), Duration::from_secs(10))
        });
        (0..parts)
            .map(|p| {
                let o = match got.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                };
                (p, o)
            })
            .collect()
    }

    /// Reads every committed record of a topic up to its last stable offset
    /// (`isolation.level=read_committed`), as a downstream exactly-once
    /// reader sees it.
    pub fn read_all_committed(&self, topic: &str) -> Vec<Record> {
        read_until_end(self.client(), topic, "read_committed")
    }

    /// Like [`Broker::read_all_committed`], once no transaction is open on
    /// the topic (its last stable offset is its high watermark in every
    /// partition): every transaction so far committed or aborted, as a
    /// reader sees the topic after the transaction timeout of a producer
    /// that died in one.
    pub fn read_all_decided(&self, topic: &str) -> Vec<Record> {
        let open = |isolation: &str| -> BaseConsumer {
            self.client()
                .set("group.id", unique("lso"))
                .set("isolation.level", isolation)
                .create()
                .expect("consumer")
        };
        let (committed, all) = (open("read_committed"), open("read_uncommitted"));
        let md = retrying("metadata", || {
            all.fetch_metadata(Some(topic), Duration::from_secs(10))
        });
        let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        wait_until(
            &format!("no open transaction on {topic}"),
            Duration::from_secs(90),
            || {
                (0..parts).all(|p| {
                    let w = |c: &BaseConsumer| {
                        retrying("watermarks", || {
                            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                        })
                        .1
                    };
                    w(&committed) >= w(&all)
                })
            },
        );
        self.read_all_committed(topic)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Only a test's own broker; the shared one lives in a static. A
        // throwaway broker needs no clean shutdown: SIGKILL, and the
        // directory goes with `own`.
        if self.own.is_some() {
            if let Some(pid) = std::fs::read_to_string(self.dir.join("broker.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Waits until a topic's metadata shows all its partitions.
fn wait_for_topic(client: ClientConfig, name: &str, partitions: i32) {
    let c: BaseConsumer = client.create().expect("client");
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

/// Calls `f` until it succeeds, for up to 30 s: a topic that siklus has
/// just created may have no leader yet (NotLeaderForPartition,
/// LeaderNotAvailable) for a moment.
fn retrying<T>(what: &str, mut f: impl FnMut() -> rdkafka::error::KafkaResult<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Reads every record of a topic from the beginning up to the end each
/// partition has when the read starts: the high watermark, or under
/// `read_committed` the last stable offset. A topic that does not exist
/// reads as empty.
fn read_until_end(mut client: ClientConfig, topic: &str, isolation: &str) -> Vec<Record> {
    let c: BaseConsumer = client
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let md = retrying("metadata", || {
        c.fetch_metadata(Some(topic), Duration::from_secs(10))
    });
    let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..parts {
        // Under read_committed this is the last stable offset.
        let (_, end) = retrying("watermarks", || {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
        });
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
/// own), killed on drop: the broker of `siklus demo`, whose behaviour
/// `tests/tests/mock_broker.rs` pins. Never a stand-in for [`Broker`] in
/// exactly-once tests: it keeps no transaction markers and does not fence.
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
        wait_for_topic(self.client(), name, partitions);
    }

    /// Produces records (key, value) and waits for their acknowledgement.
    pub fn produce(&self, topic: &str, records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
        produce_records(
            self.client(),
            topic,
            None,
            records.into_iter().map(|(k, v)| (k, v, None)),
        )
    }

    /// Reads every record of a topic up to its current end.
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        read_until_end(self.client(), topic, "read_uncommitted")
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
        "[kafka]\n\"bootstrap.servers\" = \"{}\"\n\n[topics]\ninput = \"{input}\"\ntransitions = \"{group}.transitions\"\naggregates = \"{group}.aggregates\"\ncohorts = \"{group}.cohorts\"\ndlq = \"{group}.dlq\"\n\n[processor]\ngroup_id = \"{group}\"\nstate_dir = \"{}\"\ncommit_interval_ms = 200\n{idle}{extra}\n",
        broker.addr,
        dir.join("state").display(),
        idle = if extra.contains("idle_timeout_ms") { "" } else { "idle_timeout_ms = 2000\n" },
    );
    std::fs::write(&p, text).expect("write config");
    p
}

/// Starts `siklus run` as a child process.
///
/// The child is SIGKILLed on drop if it still runs, so that a failing test
/// (its panic unwinds through the drop) leaves no `siklus` behind to load
/// the machine and the broker during the tests after it.
pub fn spawn_run(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> KillOnDrop {
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
    KillOnDrop(cmd.spawn().expect("spawn siklus"))
}

/// A child process, SIGKILLed and reaped on drop unless it was reaped
/// before. Derefs to [`Child`].
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // A reaped child is not signalled again (its pid may be reused):
        // `Child::kill` knows it exited.
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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

/// The latest value of each key of a topic (the view of a reader that
/// keeps the last value per key, as of keyed upserts).
pub fn latest_by_key(broker: &Broker, topic: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    broker
        .read_all(topic)
        .into_iter()
        .map(|r| (r.key.unwrap_or_default(), r.value.unwrap_or_default()))
        .collect()
}

/// The dead letters of a topic: (source partition, source offset, kind,
/// value), without repeats.
pub fn dead_letters(broker: &Broker, topic: &str) -> std::collections::BTreeSet<[String; 4]> {
    broker
        .read_all(topic)
        .iter()
        .map(|r| {
            let h = |k: &str| r.header(k).unwrap_or_default().to_string();
            [
                h("siklus.source.partition"),
                h("siklus.source.offset"),
                h("siklus.error.kind"),
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
            ]
        })
        .collect()
}

/// The generated events of `config` as records keyed by customer id, with
/// JSON values, as `siklus produce` writes them.
pub fn generated(
    config: siklus::generator::GeneratorConfig,
) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    siklus::generator::Generator::new(config).map(|e| {
        (
            e.customer_id.clone().into_bytes(),
            siklus::codec::encode_event_json(&e),
        )
    })
}

/// Creates `topic` with `partitions` and produces the generated events of
/// `customers` customers (seed `seed`) to it. Returns how many.
pub fn load_generated(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    customers: u64,
    seed: u64,
) -> usize {
    broker.create_topic(topic, partitions);
    let events: Vec<(Vec<u8>, Vec<u8>)> = generated(siklus::generator::GeneratorConfig {
        customers,
        seed,
        ..Default::default()
    })
    .collect();
    let n = events.len();
    broker.produce(topic, events);
    n
}

/// `siklus run --stop-at-end --until <until>` with `extra` in
/// `[processor]` and `envs`, to its exit (at most 240 s). Returns its exit
/// status and its log.
pub fn run_until_end(
    dir: &Path,
    broker: &Broker,
    input: &str,
    group: &str,
    extra: &str,
    until: &str,
    envs: &[(&str, &str)],
) -> (std::process::ExitStatus, String) {
    let cfg = write_config(dir, broker, input, group, extra);
    let mut child = spawn_run(&cfg, &["--stop-at-end", "--until", until], envs);
    let status = wait_exit(
        &mut child,
        Duration::from_secs(240),
        &cfg.with_extension("log"),
    );
    (status, log_of(&cfg))
}

/// Every profile of the store under `dir/state`, by (partition, customer).
pub fn all_profiles(dir: &Path) -> BTreeMap<(u32, String), Vec<u8>> {
    let store = siklus_state::Store::open(&dir.join("state"), &Default::default()).expect("state");
    let mut all = BTreeMap::new();
    for p in store.partitions().expect("partitions") {
        for (c, v) in store.profiles(p).expect("profiles") {
            all.insert((p, c), v);
        }
    }
    all
}
