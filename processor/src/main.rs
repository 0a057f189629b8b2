//! The `siklus` binary: a thin shell over the library.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use siklus::config::{Config, Overrides};
use siklus::replay::{FileReplay, WatermarkPolicy};
use siklus::telemetry::{LogFormat, Telemetry};
use siklus::time::parse_rfc3339;

/// mimalloc: the fold, the codecs and the step bookkeeping allocate many small,
/// short-lived objects, where glibc's malloc spent a fifth of the CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// siklus: customer lifecycle stream processor.
#[derive(Parser, Debug)]
#[command(name = "siklus", version, about)]
struct Cli {
    /// Configuration file (TOML). `SIKLUS_*` environment variables override it.
    #[arg(long, short, global = true, env = "SIKLUS_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr (logs are filtered by `SIKLUS_LOG`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "pretty",
        env = "SIKLUS_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the live job: a consumer group over the input topic.
    Run {
        /// Kafka bootstrap servers (overrides kafka."bootstrap.servers").
        #[arg(long, visible_alias = "brokers")]
        bootstrap_servers: Option<String>,
        /// State directory (overrides processor.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Consumer group (overrides processor.group_id).
        #[arg(long, visible_alias = "group")]
        group_id: Option<String>,
        /// Input topic (overrides topics.input).
        #[arg(long)]
        input_topic: Option<String>,
        /// HTTP listen address (overrides processor.http_listen).
        #[arg(long)]
        http_listen: Option<String>,
        /// Advertised HTTP base URL (overrides processor.advertised_http).
        #[arg(long)]
        advertised_http: Option<String>,
        /// Stop when the input's end (as of start) is reached.
        #[arg(long)]
        stop_at_end: bool,
        /// With --stop-at-end: advance event time to this instant (RFC 3339)
        /// at the end, so timers due by then fire and windows close.
        #[arg(long, requires = "stop_at_end")]
        until: Option<String>,
    },
    /// Replay history with a fresh state: from a file (--input) or from the
    /// input topic (--from-topic); outputs to files or to topics.
    Replay {
        /// JSONL (one InteractionEvent per line) or Avro container file.
        #[arg(
            long,
            conflicts_with = "from_topic",
            required_unless_present = "from_topic"
        )]
        input: Option<PathBuf>,
        /// Replay the input topic (topics.input, or --topic) instead of a file.
        #[arg(long)]
        from_topic: bool,
        /// Input topic to replay (overrides topics.input).
        #[arg(long, requires = "from_topic")]
        topic: Option<String>,
        /// Kafka bootstrap servers (overrides kafka."bootstrap.servers").
        #[arg(long)]
        brokers: Option<String>,
        /// Start in every partition: earliest, latest-at-start, an RFC 3339 time, or P:OFFSET,…
        #[arg(long, default_value = "earliest", requires = "from_topic")]
        start: String,
        /// End (exclusive) in every partition, in the same forms.
        #[arg(long, default_value = "latest-at-start", requires = "from_topic")]
        end: String,
        /// Directory for transitions.jsonl, aggregates.jsonl, cohorts.jsonl, dlq.jsonl.
        #[arg(long, required_unless_present_any = ["output_suffix", "verify_against"])]
        output_dir: Option<PathBuf>,
        /// With --from-topic: write to the configured output topics with this
        /// suffix (e.g. `backfill-2026-11` gives `siklus.transitions.backfill-2026-11`).
        #[arg(long, requires = "from_topic", conflicts_with = "output_dir")]
        output_suffix: Option<String>,
        /// Advance event time to this instant (RFC 3339) at the end.
        #[arg(long)]
        until: Option<String>,
        /// Time policy: bounded (exact aggregates) or live (as the live job).
        #[arg(long, value_enum, default_value = "bounded")]
        watermark: WatermarkPolicy,
        /// Keep the replay's state here (default: a temporary directory); an
        /// existing one resumes an interrupted replay.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// With --from-topic: compare the replay's transitions with this topic
        /// (deduplicated by id) and report `identical` or the first difference,
        /// instead of writing outputs.
        #[arg(long, requires = "from_topic")]
        verify_against: Option<String>,
        /// Progress: a bar on a terminal (auto), bar, json lines on stderr, or none.
        #[arg(long, value_enum, default_value = "auto")]
        progress: siklus::topic_replay::Progress,
        /// Records per commit of a file replay.
        #[arg(long, default_value_t = 10_000, hide = true)]
        commit_every: usize,
    },
    /// The embedded demo: synthetic customers through the real Kafka path
    /// on an in-process broker.
    Demo {
        /// Customers to simulate.
        #[arg(long, default_value_t = 3000)]
        customers: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Print a customer's profile from a state directory.
    Inspect {
        /// State directory (default: processor.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The customer id.
        customer_id: String,
    },
    /// Write a synthetic event stream as JSONL.
    Generate {
        /// Customers.
        #[arg(long, default_value_t = 1000)]
        customers: u64,
        /// Mean events per customer.
        #[arg(long, default_value_t = 8.0)]
        events_per_customer: f64,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output file (JSONL).
        #[arg(long)]
        output: PathBuf,
    },
    /// Benchmark helpers (see scripts/bench.py).
    #[command(hide = true)]
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// State snapshots: seed a deployment with the state a replay rebuilt.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Write a generated workload as an Avro container file.
    WriteAvro {
        #[arg(long)]
        customers: u64,
        #[arg(long)]
        events_per_customer: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        output: PathBuf,
    },
    /// Produce a generated workload to the input topic.
    Load {
        #[arg(long)]
        customers: u64,
        #[arg(long)]
        events_per_customer: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Avro (Confluent wire format) instead of JSON.
        #[arg(long)]
        avro: bool,
    },
    /// Read the whole input topic with a consumer that only counts.
    Consume,
}

#[derive(Subcommand, Debug)]
enum StateCommand {
    /// Write every partition of a state dir to a snapshot file.
    Export {
        /// State directory (default: processor.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Snapshot file to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Bring a state dir up to date with the group's changelog, without
    /// joining the group: applies the committed steps it lacks.
    Restore {
        /// State directory (default: processor.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Partitions to restore (default: all).
        #[arg(long, value_delimiter = ',')]
        partitions: Option<Vec<u32>>,
    },
    /// Load a snapshot into a state dir, replacing the partitions it holds.
    /// `siklus run` then continues each partition from the snapshot's offsets.
    Import {
        /// State directory (default: processor.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Snapshot file to read.
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration (file, then environment) and print it.
    Check,
}

/// SIGINT and SIGTERM set the flag; the job then drains and commits.
fn shutdown_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
                tracing::info!("signal received, draining");
                f.store(true, Ordering::SeqCst);
            })
        })?;
    Ok(flag)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints a report; its logs would only clutter the terminal.
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info,rdkafka=warn",
    };
    let telemetry = Telemetry::init(cli.log_format, default_filter);
    let result = execute(cli, &telemetry);
    // Flush the OTLP exporters whatever the outcome.
    telemetry.shutdown();
    result
}

fn execute(cli: Cli, telemetry: &Telemetry) -> anyhow::Result<()> {
    let load =
        || Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"));
    match cli.command {
        Command::Run {
            bootstrap_servers,
            state_dir,
            group_id,
            input_topic,
            http_listen,
            advertised_http,
            stop_at_end,
            until,
        } => {
            let mut cfg = load()?;
            cfg.apply(&Overrides {
                bootstrap_servers,
                state_dir,
                group_id,
                input_topic,
                http_listen,
                advertised_http,
            });
            let metrics = Arc::new(siklus::metrics::Metrics::default());
            telemetry.observe(&metrics);
            let summary = siklus::kafka::run(
                &cfg,
                siklus::kafka::RunOptions {
                    stop_at_end,
                    end_time: parse_until(until.as_deref())?,
                    shutdown: shutdown_flag()?,
                },
                metrics,
            )?;
            tracing::info!(counters = ?summary.counters, "stopped");
            if stop_at_end {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
        }
        Command::Replay {
            input,
            from_topic,
            topic,
            brokers,
            start,
            end,
            output_dir,
            output_suffix,
            until,
            watermark,
            state_dir,
            verify_against,
            progress,
            commit_every,
        } => {
            let mut cfg = load()?;
            if let Some(b) = brokers {
                cfg.kafka.insert("bootstrap.servers".into(), b);
            }
            let _span = tracing::info_span!("replay", from_topic).entered();
            let until = parse_until(until.as_deref())?;
            let summary = if from_topic {
                if let Some(t) = topic {
                    cfg.topics.input = t;
                }
                if let Some(suffix) = &output_suffix {
                    for t in [
                        &mut cfg.topics.transitions,
                        &mut cfg.topics.aggregates,
                        &mut cfg.topics.cohorts,
                        &mut cfg.topics.dlq,
                        &mut cfg.topics.segment,
                    ] {
                        if !t.is_empty() {
                            *t = format!("{t}.{suffix}");
                        }
                    }
                    cfg.processor.group_id = format!("{}.{suffix}", cfg.processor.group_id);
                    siklus::kafka::ensure_topics(&cfg)?;
                }
                siklus::topic_replay::replay_topic(
                    &cfg,
                    &siklus::topic_replay::TopicReplay {
                        start: start.parse().map_err(anyhow::Error::msg)?,
                        end: end.parse().map_err(anyhow::Error::msg)?,
                        watermark,
                        until,
                        output_dir,
                        state_dir,
                        verify_against,
                        progress,
                    },
                )?
            } else {
                let (Some(input), Some(output_dir)) = (input, output_dir) else {
                    anyhow::bail!("a file replay needs --input and --output-dir");
                };
                siklus::replay::replay_file(
                    &cfg,
                    &FileReplay {
                        input,
                        output_dir,
                        until,
                        watermark,
                        state_dir,
                        commit_every,
                    },
                )?
            };
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Demo { customers, seed } => {
            let report = siklus::demo::run_demo(&siklus::demo::DemoOptions {
                customers,
                seed,
                ..Default::default()
            })?;
            print!("{}", siklus::demo::render(&report));
        }
        Command::Inspect {
            state_dir,
            customer_id,
        } => {
            let cfg = load()?;
            let dir = state_dir.unwrap_or_else(|| cfg.processor.state_dir.clone());
            let store = siklus_state::Store::open(&dir, &cfg.store_options())
                .with_context(|| format!("opening {}", dir.display()))?;
            match store.find_profile(&customer_id)? {
                Some((partition, bytes)) => {
                    let profile =
                        siklus::engine::decode_profile(&bytes).map_err(anyhow::Error::msg)?;
                    let view = serde_json::json!({
                        "customer_id": customer_id,
                        "partition": partition,
                        "profile": profile,
                        "next_deadline": siklus::fold::next_deadline(&profile, &cfg.rules)
                            .map(siklus::time::format_rfc3339),
                    });
                    println!("{}", serde_json::to_string_pretty(&view)?);
                }
                None => {
                    eprintln!(
                        "no profile for customer {customer_id:?} in {}",
                        dir.display()
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Generate {
            customers,
            events_per_customer,
            seed,
            output,
        } => {
            use std::io::Write as _;
            let f = std::fs::File::create(&output)
                .with_context(|| format!("creating {}", output.display()))?;
            let mut w = std::io::BufWriter::new(f);
            let mut n = 0u64;
            for e in siklus::generator::Generator::new(siklus::generator::GeneratorConfig {
                customers,
                events_per_customer,
                seed,
                ..Default::default()
            }) {
                w.write_all(&siklus::codec::encode_event_json(&e))?;
                w.write_all(b"\n")?;
                n += 1;
            }
            w.flush()?;
            eprintln!("wrote {n} events to {}", output.display());
        }
        Command::Bench { command } => {
            let cfg = load()?;
            let gen = |customers, events_per_customer, seed| siklus::generator::GeneratorConfig {
                customers,
                events_per_customer,
                seed,
                ..Default::default()
            };
            let report = match command {
                BenchCommand::WriteAvro {
                    customers,
                    events_per_customer,
                    seed,
                    output,
                } => serde_json::json!({
                    "events": siklus::bench::write_avro(gen(customers, events_per_customer, seed), &output)?
                }),
                BenchCommand::Load {
                    customers,
                    events_per_customer,
                    seed,
                    avro,
                } => serde_json::json!({
                    "records": siklus::bench::load(&cfg, gen(customers, events_per_customer, seed), avro)?
                }),
                BenchCommand::Consume => {
                    let (n, secs) = siklus::bench::consume(&cfg)?;
                    serde_json::json!({"records": n, "secs": secs})
                }
            };
            println!("{report}");
        }
        Command::State { command } => {
            let cfg = load()?;
            let open = |d: Option<PathBuf>| -> anyhow::Result<siklus_state::Store> {
                let dir = d.unwrap_or_else(|| cfg.processor.state_dir.clone());
                std::fs::create_dir_all(&dir)?;
                siklus_state::Store::open(&dir, &cfg.store_options())
                    .with_context(|| format!("opening {}", dir.display()))
            };
            let summary = match command {
                StateCommand::Restore {
                    state_dir,
                    partitions,
                } => serde_json::to_value(siklus::restore::restore_all(
                    &cfg,
                    std::sync::Arc::new(open(state_dir)?),
                    partitions,
                )?)?,
                StateCommand::Export { state_dir, output } => {
                    serde_json::to_value(siklus::snapshot::export(&open(state_dir)?, &output)?)?
                }
                StateCommand::Import { state_dir, input } => {
                    serde_json::to_value(siklus::snapshot::import(&open(state_dir)?, &input)?)?
                }
            };
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let cfg = load()?;
            println!("{}", toml_string(&cfg)?);
            eprintln!("configuration is valid");
        }
    }
    Ok(())
}

fn parse_until(until: Option<&str>) -> anyhow::Result<Option<i64>> {
    match until {
        Some(u) => {
            Ok(Some(parse_rfc3339(u).with_context(|| {
                format!("--until {u:?} is not RFC 3339")
            })?))
        }
        None => Ok(None),
    }
}

/// The configuration as printed by `config check`, with the registry
/// password masked.
fn toml_string(cfg: &Config) -> anyhow::Result<String> {
    let mut shown = cfg.clone();
    let info = &mut shown.schema_registry.basic_auth_user_info;
    if let Some((user, _)) = info.split_once(':') {
        *info = format!("{user}:***");
    }
    Ok(serde_json::to_string_pretty(&shown)?)
}
