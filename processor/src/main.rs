//! The `siklus` binary: a thin shell over the library.
//!
//! A failing command prints one line on stderr, `error: what failed: why
//! (what to try)`, and exits non-zero; `-v`/`--verbose` or `RUST_BACKTRACE=1`
//! print every cause on its own line (and the backtrace, with the variable).
//! Exit codes: see [`EXIT_CODES`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use siklus::config::{Config, Overrides};
use siklus::replay::{FileReplay, ProgressOptions, WatermarkPolicy};
use siklus::telemetry::{LogFormat, Telemetry};
use siklus::time::parse_rfc3339;

/// The exit codes, as `--help` lists them.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 an error (one line on stderr: what failed, \
the likely cause, what to try); 2 a usage error; 3 `replay --verify-against` found a difference.";

/// The exit code of `replay --verify-against` when the replay differs.
const EXIT_DIFFERENT: u8 = 3;

/// mimalloc: the fold, the codecs and the step bookkeeping allocate many small,
/// short-lived objects, where glibc's malloc spent a fifth of the CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// siklus: customer lifecycle stream processor.
#[derive(Parser, Debug)]
#[command(name = "siklus", version, about, after_help = EXIT_CODES)]
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
    /// On failure, print every cause of the error on its own line (and a
    /// backtrace with RUST_BACKTRACE=1); also log siklus at debug level.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

/// The Kafka brokers, on every subcommand that talks to Kafka.
#[derive(Args, Debug, Clone, Default)]
struct Brokers {
    /// Kafka bootstrap servers, `host:port[,host:port…]` (overrides
    /// kafka."bootstrap.servers").
    #[arg(
        long = "bootstrap-servers",
        visible_alias = "bootstrap-server",
        alias = "brokers",
        value_name = "HOST:PORT,..."
    )]
    bootstrap_servers: Option<String>,
}

impl Brokers {
    /// Applies the flag to `cfg`.
    fn apply(&self, cfg: &mut Config) {
        if let Some(b) = &self.bootstrap_servers {
            cfg.kafka.insert("bootstrap.servers".into(), b.clone());
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the live job: a consumer group over the input topic.
    Run {
        #[command(flatten)]
        brokers: Brokers,
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
        #[command(flatten)]
        brokers: Brokers,
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
        /// instead of writing outputs. A difference exits with code 3.
        #[arg(long, requires = "from_topic")]
        verify_against: Option<String>,
        /// Progress: a bar on a terminal (auto), bar, json lines on stderr, or none.
        #[arg(long, value_enum, default_value = "auto")]
        progress: siklus::topic_replay::Progress,
        /// Milliseconds between two `--progress json` lines of a file replay.
        #[arg(long, default_value_t = 2_000, hide = true)]
        progress_interval_ms: u64,
        /// Records per commit of a file replay (it also commits when the
        /// profiles in memory outgrow `processor.state_cache_bytes`).
        #[arg(long, default_value_t = 200_000, hide = true)]
        commit_every: usize,
        /// Load a file replay's state as a bulk load, without RocksDB's log
        /// (`false`: every commit is durable when written, as in a live run).
        #[arg(long, default_value_t = true, hide = true, action = clap::ArgAction::Set)]
        bulk_load: bool,
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
    /// Print a customer's profile from a state directory. The state is
    /// opened read-only: this works while `siklus run` holds it.
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
    /// Produce a JSONL or Avro container file of interaction events (from
    /// `siklus generate`, or exported) to a topic, keyed by customer_id, and
    /// print a summary. Records that are not valid events are skipped and
    /// counted.
    Produce {
        /// JSONL (one InteractionEvent per line) or Avro container file.
        #[arg(long)]
        input: PathBuf,
        /// Topic to write to (default: topics.input); created when missing.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        brokers: Brokers,
        /// Record encoding: json, or avro (Confluent wire format, with the
        /// Schema Registry's id when one is configured).
        #[arg(long, value_enum, default_value = "json")]
        format: siklus::bench::ProduceFormat,
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
    /// Produce a generated workload to the input topic (see also `siklus produce`).
    Load {
        #[command(flatten)]
        brokers: Brokers,
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
    Consume {
        #[command(flatten)]
        brokers: Brokers,
    },
}

#[derive(Subcommand, Debug)]
enum StateCommand {
    /// Write every partition of a state dir to a snapshot file (the state
    /// is opened read-only).
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
        #[command(flatten)]
        brokers: Brokers,
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
    /// Validate the configuration (file, then environment) and print it as
    /// TOML, every secret masked.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    // The demo prints a report; its logs would only clutter the terminal.
    let default_filter = match (&cli.command, verbose) {
        (_, true) => "info,siklus=debug,rdkafka=info",
        (Command::Demo { .. }, false) => "warn",
        _ => "info,rdkafka=warn",
    };
    let telemetry = Telemetry::init(cli.log_format, default_filter);
    let mut scene = Scene::default();
    let result = execute(cli, &telemetry, &mut scene);
    // Flush the OTLP exporters whatever the outcome.
    telemetry.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "{}",
                render_error(&e, &scene, verbose || backtrace_requested())
            );
            ExitCode::FAILURE
        }
    }
}

/// What a command was working with, for the hint of its error line.
#[derive(Debug, Default)]
struct Scene {
    /// `kafka."bootstrap.servers"` of a command that talks to Kafka.
    brokers: Option<String>,
    /// The state directory the command opens.
    state_dir: Option<PathBuf>,
}

impl Scene {
    fn kafka(&mut self, cfg: &Config) {
        self.brokers = cfg.kafka.get("bootstrap.servers").cloned();
    }
}

fn execute(cli: Cli, telemetry: &Telemetry, scene: &mut Scene) -> anyhow::Result<ExitCode> {
    let load =
        || Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"));
    match cli.command {
        Command::Run {
            brokers,
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
                bootstrap_servers: brokers.bootstrap_servers,
                state_dir,
                group_id,
                input_topic,
                http_listen,
                advertised_http,
            });
            scene.kafka(&cfg);
            scene.state_dir = Some(cfg.processor.state_dir.clone());
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
            progress_interval_ms,
            commit_every,
            bulk_load,
        } => {
            let mut cfg = load()?;
            brokers.apply(&mut cfg);
            scene.state_dir.clone_from(&state_dir);
            let _span = tracing::info_span!("replay", from_topic).entered();
            let until = parse_until(until.as_deref())?;
            let summary = if from_topic {
                scene.kafka(&cfg);
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
                        start: start
                            .parse()
                            .map_err(anyhow::Error::msg)
                            .context("--start")?,
                        end: end.parse().map_err(anyhow::Error::msg).context("--end")?,
                        watermark,
                        until,
                        output_dir,
                        state_dir,
                        verify_against: verify_against.clone(),
                        progress,
                    },
                )?
            } else {
                let (Some(input), Some(output_dir)) = (input, output_dir) else {
                    anyhow::bail!("a file replay needs --input and --output-dir");
                };
                // Before anything is created for the outputs.
                std::fs::metadata(&input)
                    .with_context(|| format!("opening {}", input.display()))?;
                siklus::replay::replay_file_with_progress(
                    &cfg,
                    &FileReplay {
                        input,
                        output_dir,
                        until,
                        watermark,
                        state_dir,
                        commit_every,
                        bulk_load,
                    },
                    ProgressOptions {
                        mode: progress,
                        interval: Duration::from_millis(progress_interval_ms),
                    },
                )?
            };
            tracing::info!(
                records = summary.records,
                transitions = summary.transitions,
                secs = summary.elapsed_secs,
                "replay finished"
            );
            println!("{}", serde_json::to_string_pretty(&summary)?);
            if let (Some(topic), Some(verdict)) = (&verify_against, &summary.verify) {
                if verdict != "identical" {
                    let first = verdict.lines().next().unwrap_or_default();
                    eprintln!(
                        "error: the replay differs from {topic}: {first} (the summary on stdout \
                         has both records)"
                    );
                    return Ok(ExitCode::from(EXIT_DIFFERENT));
                }
            }
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
            scene.state_dir = Some(dir.clone());
            let store = open_read_only(&dir, &cfg)?;
            let Some((partition, bytes)) = store.find_profile(&customer_id)? else {
                anyhow::bail!(
                    "no profile for customer {customer_id:?} in {}",
                    dir.display()
                );
            };
            let profile = siklus::engine::decode_profile(&bytes)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("the profile of {customer_id:?}"))?;
            let view = serde_json::json!({
                "customer_id": customer_id,
                "partition": partition,
                "profile": profile,
                "next_deadline": siklus::fold::next_deadline(&profile, &cfg.rules)
                    .map(siklus::time::format_rfc3339),
            });
            println!("{}", serde_json::to_string_pretty(&view)?);
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
            w.flush()
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!("wrote {n} events to {}", output.display());
        }
        Command::Produce {
            input,
            topic,
            brokers,
            format,
        } => {
            let mut cfg = load()?;
            brokers.apply(&mut cfg);
            scene.kafka(&cfg);
            let topic = topic.unwrap_or_else(|| cfg.topics.input.clone());
            let summary = siklus::bench::produce_file(&cfg, &input, &topic, format)?;
            tracing::info!(
                records = summary.records,
                topic = %summary.topic,
                secs = summary.secs,
                "produced"
            );
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Bench { command } => {
            let mut cfg = load()?;
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
                    brokers,
                    customers,
                    events_per_customer,
                    seed,
                    avro,
                } => {
                    brokers.apply(&mut cfg);
                    scene.kafka(&cfg);
                    serde_json::json!({
                        "records": siklus::bench::load(&cfg, gen(customers, events_per_customer, seed), avro)?
                    })
                }
                BenchCommand::Consume { brokers } => {
                    brokers.apply(&mut cfg);
                    scene.kafka(&cfg);
                    let (n, secs) = siklus::bench::consume(&cfg)?;
                    serde_json::json!({"records": n, "secs": secs})
                }
            };
            println!("{report}");
        }
        Command::State { command } => {
            let mut cfg = load()?;
            let mut dir_of = |d: Option<PathBuf>| {
                let dir = d.unwrap_or_else(|| cfg.processor.state_dir.clone());
                scene.state_dir = Some(dir.clone());
                dir
            };
            let summary = match command {
                StateCommand::Restore {
                    brokers,
                    state_dir,
                    partitions,
                } => {
                    let dir = dir_of(state_dir);
                    brokers.apply(&mut cfg);
                    scene.kafka(&cfg);
                    serde_json::to_value(siklus::restore::restore_all(
                        &cfg,
                        Arc::new(open_for_writing(&dir, &cfg)?),
                        partitions,
                    )?)?
                }
                StateCommand::Export { state_dir, output } => {
                    let dir = dir_of(state_dir);
                    serde_json::to_value(siklus::snapshot::export(
                        &open_read_only(&dir, &cfg)?,
                        &output,
                    )?)?
                }
                StateCommand::Import { state_dir, input } => {
                    let dir = dir_of(state_dir);
                    serde_json::to_value(siklus::snapshot::import(
                        &open_for_writing(&dir, &cfg)?,
                        &input,
                    )?)?
                }
            };
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let cfg = load()?;
            print!(
                "{}",
                cfg.to_redacted_toml()
                    .map_err(anyhow::Error::msg)
                    .context("printing the configuration")?
            );
            eprintln!("configuration is valid");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the state in `dir` read-only (never creating it; it may be in use
/// by a running instance).
fn open_read_only(dir: &Path, cfg: &Config) -> anyhow::Result<siklus_state::Store> {
    match siklus_state::Store::open_read_only(dir, &cfg.store_options()) {
        Ok(s) => Ok(s),
        // Says what and where already.
        Err(e @ siklus_state::StateError::Missing(_)) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("opening the state in {} read-only", dir.display()))),
    }
}

/// Opens (creating it if needed) the state in `dir` for writing.
fn open_for_writing(dir: &Path, cfg: &Config) -> anyhow::Result<siklus_state::Store> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    siklus_state::Store::open(dir, &cfg.store_options())
        .with_context(|| format!("opening the state in {}", dir.display()))
}

/// Whether the environment asks for backtraces (`RUST_BACKTRACE` or
/// `RUST_LIB_BACKTRACE` set to anything but `0`).
fn backtrace_requested() -> bool {
    ["RUST_LIB_BACKTRACE", "RUST_BACKTRACE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty() && v != "0"))
}

/// The error and its causes on one line, `a: b: c`; a cause whose text the
/// line already holds is left out, and multi-line messages are joined
/// with `; `.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// What a person can do about a common failure.
#[derive(Debug, PartialEq, Eq)]
struct Hint {
    /// What failed, in a person's words, put before the error itself.
    lead: Option<String>,
    /// The likely cause and what to try.
    advice: String,
}

/// Whether a cause of `e` says that no Kafka broker answered.
fn brokers_unreachable(e: &anyhow::Error, text: &str) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    let by_code = e.chain().any(|c| {
        c.downcast_ref::<rdkafka::error::KafkaError>()
            .and_then(rdkafka::error::KafkaError::rdkafka_error_code)
            .is_some_and(|code| {
                matches!(
                    code,
                    C::BrokerTransportFailure
                        | C::AllBrokersDown
                        | C::OperationTimedOut
                        | C::Resolve
                        | C::NetworkException
                        | C::BrokerNotAvailable
                )
            })
    });
    by_code
        || [
            "broker transport failure",
            "all broker connections are down",
            "failed to resolve",
        ]
        .iter()
        .any(|m| text.contains(m))
}

/// The hint for a common failure: brokers unreachable, a state directory
/// in use or missing, a misspelt configuration key, a missing file.
fn hint(e: &anyhow::Error, scene: &Scene) -> Option<Hint> {
    let text = one_line(e).to_ascii_lowercase();
    if scene.brokers.is_some() && brokers_unreachable(e, &text) {
        let at = scene.brokers.as_deref().unwrap_or_default();
        return Some(Hint {
            lead: Some(format!("cannot reach the Kafka brokers at {at}")),
            advice: "is a broker running and reachable? set --bootstrap-servers or \
                     kafka.\"bootstrap.servers\""
                .into(),
        });
    }
    if text.contains("lock")
        && [
            "resource temporarily unavailable",
            "no locks available",
            "lock hold by current process",
        ]
        .iter()
        .any(|m| text.contains(m))
    {
        let dir = scene.state_dir.as_ref().map_or_else(
            || "the state directory".to_string(),
            |d| d.display().to_string(),
        );
        return Some(Hint {
            lead: Some(format!("{dir} is in use")),
            advice: "a running siklus instance holds this state directory: stop it, or give \
                     this command a --state-dir of its own (`siklus inspect` reads a state in use)"
                .into(),
        });
    }
    if e.chain().any(|c| {
        matches!(
            c.downcast_ref::<siklus_state::StateError>(),
            Some(siklus_state::StateError::Missing(_))
        )
    }) {
        return Some(Hint {
            lead: None,
            advice: "give the directory of a state with --state-dir, or set processor.state_dir"
                .into(),
        });
    }
    if text.starts_with("configuration:") {
        if text.contains("config file") && text.contains("does not exist") {
            return Some(Hint {
                lead: None,
                advice: "check the path given to --config or SIKLUS_CONFIG".into(),
            });
        }
        if [
            "unknown field",
            "unknown variant",
            "unknown section",
            "two underscores",
        ]
        .iter()
        .any(|m| text.contains(m))
        {
            return Some(Hint {
                lead: None,
                advice: "check the spelling; `siklus config check` without a file prints \
                         every key with its default"
                    .into(),
            });
        }
    }
    if e.chain().any(|c| {
        matches!(
            c.downcast_ref::<siklus::codec::registry::RegistryError>(),
            Some(siklus::codec::registry::RegistryError::Unavailable { .. })
        )
    }) {
        return Some(Hint {
            lead: None,
            advice: "is the Schema Registry running? check schema_registry.url".into(),
        });
    }
    if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    }) {
        return Some(Hint {
            lead: None,
            advice: "check the path".into(),
        });
    }
    None
}

/// The error as printed on stderr: one line with a hint, or with `full`
/// the multi-line form (every cause, and the backtrace when captured).
/// Passwords in URLs are masked either way.
fn render_error(e: &anyhow::Error, scene: &Scene, full: bool) -> String {
    let hint = hint(e, scene);
    let text = if full {
        let mut s = format!("error: {e:?}");
        if let Some(h) = hint {
            s.push_str("\n\nhint: ");
            s.push_str(&h.advice);
        }
        s
    } else {
        let chain = one_line(e);
        match hint {
            Some(Hint {
                lead: Some(lead),
                advice,
            }) => format!("error: {lead}: {chain} ({advice})"),
            Some(Hint { lead: None, advice }) => format!("error: {chain} ({advice})"),
            None => format!("error: {chain}"),
        }
    };
    siklus::config::redact_url(&text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn an_error_is_one_line_with_its_causes_and_a_hint() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io).context("opening x.jsonl");
        assert_eq!(
            render_error(&e, &Scene::default(), false),
            "error: opening x.jsonl: No such file (check the path)"
        );
        let full = render_error(&e, &Scene::default(), true);
        assert!(full.contains("Caused by:"), "{full}");
        assert!(full.ends_with("hint: check the path"), "{full}");

        let e = anyhow::anyhow!("line one\n  line two").context("outer");
        assert_eq!(one_line(&e), "outer: line one; line two");
        // A cause already told by the context above it is not repeated.
        let e = anyhow::anyhow!("disk full").context("writing x: disk full");
        assert_eq!(one_line(&e), "writing x: disk full");

        let e = anyhow::anyhow!("GET https://u:pw@r:8081/x failed");
        for full in [false, true] {
            let shown = render_error(&e, &Scene::default(), full);
            assert!(!shown.contains("pw@"), "{shown}");
            assert!(shown.contains("https://u:***@r:8081/x"), "{shown}");
        }
    }

    #[test]
    fn unreachable_brokers_are_named() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        let scene = Scene {
            brokers: Some("b1:9092,b2:9092".into()),
            state_dir: None,
        };
        for code in [
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            let e = anyhow::Error::new(KafkaError::MetadataFetch(code))
                .context("fetching cluster metadata");
            let line = render_error(&e, &scene, false);
            assert!(
                line.starts_with(
                    "error: cannot reach the Kafka brokers at b1:9092,b2:9092: \
                     fetching cluster metadata: "
                ),
                "{line}"
            );
            assert!(line.ends_with("kafka.\"bootstrap.servers\")"), "{line}");
        }
        // Another Kafka error is shown as it is.
        let e = anyhow::Error::new(KafkaError::MetadataFetch(
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ));
        assert!(hint(&e, &scene).is_none());
    }

    #[test]
    fn a_state_in_use_or_missing_says_what_to_try() {
        let scene = Scene {
            brokers: None,
            state_dir: Some(PathBuf::from("/var/lib/siklus")),
        };
        let e = anyhow::anyhow!(
            "rocksdb: IO error: While lock file: /var/lib/siklus/LOCK: Resource temporarily unavailable"
        )
        .context("opening the state in /var/lib/siklus");
        let line = render_error(&e, &scene, false);
        assert!(
            line.starts_with("error: /var/lib/siklus is in use: opening the state"),
            "{line}"
        );
        assert!(line.contains("a running siklus instance holds"), "{line}");

        let e = anyhow::Error::new(siklus_state::StateError::Missing(
            "no state directory at /x".into(),
        ));
        assert_eq!(
            render_error(&e, &scene, false),
            "error: no state directory at /x (give the directory of a state with \
             --state-dir, or set processor.state_dir)"
        );
    }
}
