//! A stand-alone Kafka broker for tests, built on librdkafka's in-process mock
//! cluster (`rdkafka::mocking`), so that several OS processes (the test, a
//! `siklus run`, a producer killed on purpose) can talk to one cluster.
//!
//! ```text
//! mock-broker [--brokers N] [--rebalance-delay-ms MS] [--topic NAME:PARTITIONS]...
//! ```
//!
//! Prints one line `BOOTSTRAP=<bootstrap servers>` to stdout once the
//! cluster listens, then serves until it is killed or its stdin closes.
//! While it runs it reads commands from stdin, one a line, and answers each
//! with one line, `OK` or `ERR <reason>`:
//!
//! ```text
//! create <topic> <partitions>
//! ```
//!
//! The mock broker does not implement the CreateTopics request (AdminClient
//! `create_topics` fails), hence `--topic` and the `create` command. Topics
//! are also created on first use (metadata auto-creation, 4 partitions).
//!
//! What the mock does and does not do for transactions is written down in
//! `tests/tests/mock_broker.rs`.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

struct Args {
    brokers: i32,
    rebalance_delay_ms: i32,
    topics: Vec<(String, i32)>,
}

fn parse_topic(s: &str) -> Result<(String, i32), String> {
    let (name, parts) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("--topic {s}: expected NAME:PARTITIONS"))?;
    let parts: i32 = parts
        .parse()
        .map_err(|e| format!("--topic {s}: partitions: {e}"))?;
    if name.is_empty() || parts < 1 {
        return Err(format!("--topic {s}: expected NAME:PARTITIONS"));
    }
    Ok((name.to_string(), parts))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        brokers: 3,
        rebalance_delay_ms: 0,
        topics: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--brokers" => {
                args.brokers = value("--brokers")?
                    .parse()
                    .map_err(|e| format!("--brokers: {e}"))?;
                if args.brokers < 1 {
                    return Err("--brokers must be at least 1".into());
                }
            }
            "--rebalance-delay-ms" => {
                args.rebalance_delay_ms = value("--rebalance-delay-ms")?
                    .parse()
                    .map_err(|e| format!("--rebalance-delay-ms: {e}"))?;
            }
            "--topic" => args.topics.push(parse_topic(&value("--topic")?)?),
            "-h" | "--help" => {
                return Err(
                    "usage: mock-broker [--brokers N] [--rebalance-delay-ms MS] \
                     [--topic NAME:PARTITIONS]..."
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mock-broker: {e}");
            return ExitCode::from(2);
        }
    };

    // `test.mock.num.brokers` makes this client create (and own) a mock
    // cluster; the cluster lives exactly as long as this handle, which is
    // held until main returns. It is used instead of `MockCluster::new` for
    // its native handle, which `MockCluster` keeps private but the group
    // rebalance delay below needs.
    let holder: BaseProducer = match ClientConfig::new()
        .set("test.mock.num.brokers", args.brokers.to_string())
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mock-broker: cannot create the mock cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(cluster) = holder.client().mock_cluster() else {
        eprintln!("mock-broker: the client has no mock cluster");
        return ExitCode::FAILURE;
    };

    // The mock delays the first rebalance of an empty group by 3 s, like
    // Kafka's group.initial.rebalance.delay.ms; tests set 0 on real brokers.
    // SAFETY: the handle is a live client that owns a mock cluster (checked
    // just above), and both outlive this call.
    unsafe {
        let mc = rdkafka::bindings::rd_kafka_handle_mock_cluster(holder.client().native_ptr());
        rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(
            mc,
            args.rebalance_delay_ms,
        );
    }

    let replication = args.brokers.min(3);
    for (name, parts) in &args.topics {
        if let Err(e) = cluster.create_topic(name, *parts, replication) {
            eprintln!("mock-broker: create topic {name}: {e}");
            return ExitCode::FAILURE;
        }
    }

    let mut out = std::io::stdout().lock();
    if writeln!(out, "BOOTSTRAP={}", cluster.bootstrap_servers())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }

    // Serve until stdin closes (the parent is gone or dropped its handle).
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            [] => continue,
            ["create", name, parts] => match parts.parse::<i32>() {
                Ok(p) if p >= 1 => match cluster.create_topic(name, p, replication) {
                    Ok(()) => "OK".to_string(),
                    Err(e) => format!("ERR create topic {name}: {e}"),
                },
                _ => format!("ERR bad partition count {parts}"),
            },
            _ => format!("ERR unknown command: {line}"),
        };
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}
