#!/usr/bin/env python3
"""siklus benchmarks: one command, one table, every figure with its ratio,
all measured in the same run.

    scripts/setup-test.sh             # once: the Kafka broker's jars, Quix Streams, ...
    scripts/bench.py                  # full sizes (release build; about an hour)
    scripts/bench.py --smoke          # tiny sizes, the debug build (CI runs this)
    scripts/bench.py --json out.json  # also write the figures as JSON

Rows, each with the reference its ratio is taken against:
  * pure processing: a file replay of the generated workload, pinned to one
    core (taskset -c 0), for Avro and JSON input: events/s, CPU-seconds per
    million events, peak RSS. Ratio: Avro against the target of 1M events/s
    on one core; JSON against Avro.
  * end to end on a local Apache Kafka broker (KRaft, one node, started with
    scripts/kafka-broker.sh), over one pre-loaded topic of JSON records
    (`siklus bench load`):
      - a raw consumer that only reads the topic: the reference;
      - `siklus run --stop-at-end`: throughput and CPU per event against the
        raw consumer's; again with its changelog off;
      - the Quix Streams peer (scripts/quix_peer.py): the equivalent
        per-customer fold in Quix's RocksDB state, with its own consumer
        group and state dir, no changelog: its CPU per event against
        siklus's run with the changelog off;
      - the Kafka Streams peer (scripts/peers/kstreams, built here with
        Maven and cached under ~/.cache/siklus-kstreams-peer): the same fold
        with the Processor API over persistent RocksDB stores (changelogs on,
        its default) and stream-time punctuators for at_risk and churned:
        its CPU per event and throughput against siklus's run with the
        changelog on (target: siklus at least 5x less CPU per event). Its
        event-triggered transitions must equal those siklus wrote to its
        transitions topic from the same input topic, or the bench fails.
  * latency: `siklus run` live while a producer sends generated events at a
    steady half of siklus's end-to-end throughput above (scripts/latency.py):
    p50 and p99 from an input record's produce time to its transition's
    produce time, against the broker's own produce-to-consume time of the
    same input records.
  * memory: peak RSS of a file replay that folds --rss-customers customers
    (10M by default, about one event each), against the RSS of the Avro
    pure-processing replay.
  * equivalence of the Quix fold: both folds over one small file; the share
    of siklus's event-triggered transitions that the Quix fold reproduces.
"""

import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
# The performance target for pure processing: Avro events/s on one core.
AVRO_TARGET = 1_000_000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def measure(cmd, env=None, pin=None):
    """Runs cmd; returns (wall s, CPU s of the child, peak RSS MiB, stdout)."""
    if pin is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(pin)] + cmd
    start = time.monotonic()
    with tempfile.TemporaryFile() as errf:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, env=env)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        if p.returncode != 0:
            errf.seek(0)
            sys.stderr.write(errf.read().decode(errors="replace")[-4000:])
            raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0, out


def kafka_version():
    """The broker version scripts/kafka-broker.sh runs (pinned in scripts/kafka/pom.xml)."""
    try:
        with open(os.path.join(SCRIPTS, "kafka", "pom.xml")) as f:
            text = f.read()
        return text.split("<kafka.version>", 1)[1].split("<", 1)[0].strip()
    except (OSError, IndexError):
        return "unknown"


def machine():
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "mem_gib": round(mem, 1) if mem else None,
            "os": f"{platform.system()} {platform.release()}"}


def fmt_rate(x, unit="events/s"):
    return f"{x:,.0f} {unit}"


class Table:
    """Rows of: run, figure, CPU per M events, peak RSS, ratio, notes; plus
    the raw numbers for --json."""

    def __init__(self):
        self.rows = []
        self.figures = {}

    def add(self, key, run, figure, cpu_col="", rss_col="", ratio="", notes="", **numbers):
        self.rows.append((run, figure, cpu_col, rss_col, ratio, notes))
        self.figures[key] = {"table": {"run": run, "figure": figure, "cpu_s_per_m_events": cpu_col,
                                       "peak_rss": rss_col, "ratio": ratio, "notes": notes},
                             "numbers": numbers}

    def print(self):
        head = ("run", "figure", "CPU-s per M events", "peak RSS", "ratio", "notes")
        rows = [head] + self.rows
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
        for r in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def start_kafka(work):
    """Starts a one-node Kafka broker (scripts/kafka-broker.sh) with its data
    in work/kafka; returns (its directory, bootstrap address). A watchdog of
    the script stops it if this process dies before `stop_kafka`."""
    d = os.path.join(work, "kafka")
    env = dict(os.environ, KAFKA_BROKER_WATCH_PID=str(os.getpid()))
    p = subprocess.run([os.path.join(SCRIPTS, "kafka-broker.sh"), "start", d], stdout=subprocess.PIPE,
                       env=env, text=True)
    if p.returncode != 0:
        raise SystemExit("the Kafka broker did not start (scripts/kafka-broker.sh; run scripts/setup-test.sh "
                         "first, or pass --skip-e2e)")
    return d, p.stdout.strip().splitlines()[-1]


def stop_kafka(d):
    subprocess.run([os.path.join(SCRIPTS, "kafka-broker.sh"), "stop", d], check=False)


PEER_DIR = os.path.join(SCRIPTS, "peers", "kstreams")
PEER_JAR = "siklus-kstreams-peer.jar"


def kstreams_peer_jar():
    """Builds the Kafka Streams peer with Maven into
    ~/.cache/siklus-kstreams-peer/<hash of its sources>, unless that build
    is already there; returns the jar."""
    h = hashlib.sha256()
    files = [os.path.join(PEER_DIR, "pom.xml")]
    for top, dirs, names in os.walk(os.path.join(PEER_DIR, "src")):
        dirs.sort()
        files += [os.path.join(top, n) for n in sorted(names)]
    for path in files:
        h.update(os.path.relpath(path, PEER_DIR).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    cache = os.path.join(os.path.expanduser("~"), ".cache", "siklus-kstreams-peer")
    out = os.path.join(cache, h.hexdigest()[:16])
    jar = os.path.join(out, PEER_JAR)
    if os.path.exists(os.path.join(out, "complete")):
        return jar
    for tool in ("java", "mvn"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH: the Kafka Streams peer needs Java 17 and Maven "
                             "(scripts/setup-test.sh installs them; or pass --skip-e2e)")
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    log(f"building the Kafka Streams peer (mvn package) into {out}")
    started = time.monotonic()
    p = subprocess.run(["mvn", "-q", "-B", "-f", os.path.join(PEER_DIR, "pom.xml"), "package",
                        f"-Dpeer.build.dir={partial}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0 or not os.path.exists(os.path.join(partial, PEER_JAR)):
        sys.stderr.write(p.stdout.decode(errors="replace")[-4000:])
        raise SystemExit("building the Kafka Streams peer failed")
    shutil.rmtree(out, ignore_errors=True)
    os.rename(partial, out)
    with open(os.path.join(out, "complete"), "w") as f:
        f.write("built by scripts/bench.py\n")
    log(f"built the Kafka Streams peer in {time.monotonic() - started:.0f} s")
    return jar


def topic_transitions(broker, topic):
    """The transitions in a topic, as quix_peer.Transitions."""
    import quix_peer  # noqa: E402  (scripts/ is on sys.path by then)
    import latency  # noqa: E402

    ts = quix_peer.Transitions()
    latency.read_topic(broker, topic, lambda v: ts.add(json.loads(v)))
    return ts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, debug build")
    ap.add_argument("--bin", help="siklus binary (default: build it)")
    ap.add_argument("--customers", type=int, default=1_000_000, help="customers of the pure-processing rows")
    ap.add_argument("--events-per-customer", type=float, default=5.0)
    ap.add_argument("--e2e-customers", type=int, default=400_000, help="customers of the topic of the broker rows")
    ap.add_argument("--rss-customers", type=int, default=10_000_000, help="customers of the memory row")
    ap.add_argument("--rss-events-per-customer", type=float, default=1.0)
    ap.add_argument("--latency-secs", type=float, default=20.0, help="length of the steady phase of the latency row")
    ap.add_argument("--check-customers", type=int, default=20_000, help="customers of the Quix equivalence check")
    ap.add_argument("--skip-e2e", action="store_true",
                    help="no broker rows (no Quix or Kafka Streams peer, no latency)")
    ap.add_argument("--kstreams-threads", type=int, default=1,
                    help="num.stream.threads of the Kafka Streams peer (its default: 1)")
    ap.add_argument("--kstreams-punctuate-ms", type=int, default=3_600_000,
                    help="event-time interval of the Kafka Streams peer's timer punctuator (default 1 h, "
                         "siklus's allowed lateness: it fires a timer at most that much later than siklus)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args()
    if a.smoke:
        a.customers, a.events_per_customer, a.e2e_customers = 2_000, 5.0, 2_000
        a.rss_customers, a.latency_secs, a.check_customers = 2_000, 3.0, 2_000
    command = "scripts/bench.py" + "".join(" " + shlex.quote(x) for x in sys.argv[1:])
    mach = machine()

    if not a.skip_e2e:
        # The peer is part of the benchmark: never skip it quietly.
        for mod, pkg in [("quixstreams", "quixstreams"), ("confluent_kafka", "confluent-kafka")]:
            if importlib.util.find_spec(mod) is None:
                raise SystemExit(f"python package {pkg} is not installed: run scripts/setup-test.sh")
        sys.path.insert(0, SCRIPTS)
        import latency  # noqa: E402  (needs confluent_kafka, checked above)
        import quix_peer  # noqa: E402
        # Built (or found in the cache) before the long rows, so a build
        # failure costs nothing.
        kstreams_jar = kstreams_peer_jar()

    if a.bin:
        siklus = a.bin
    else:
        profile = [] if a.smoke else ["--release"]
        subprocess.run(["cargo", "build", "-q", "-p", "siklus"] + profile, cwd=ROOT, check=True)
        siklus = os.path.join(TARGET, "debug" if a.smoke else "release", "siklus")

    t = Table()
    work = tempfile.mkdtemp(prefix="siklus-bench-")
    env = dict(os.environ, SIKLUS_LOG="warn")
    started = time.monotonic()
    try:
        # --- pure processing -------------------------------------------------
        jsonl = os.path.join(work, "events.jsonl")
        avro = os.path.join(work, "events.avro")
        epc = str(a.events_per_customer)
        subprocess.run([siklus, "generate", "--customers", str(a.customers), "--events-per-customer", epc,
                        "--output", jsonl], check=True, stderr=subprocess.DEVNULL)
        subprocess.run([siklus, "bench", "write-avro", "--customers", str(a.customers),
                        "--events-per-customer", epc, "--output", avro], check=True, stdout=subprocess.DEVNULL)
        pure = {}
        for fmt, path in [("avro", avro), ("json", jsonl)]:
            out_dir = os.path.join(work, "out-" + fmt)
            state = os.path.join(work, "state-" + fmt)
            wall, cpu, rss, out = measure([siklus, "replay", "--input", path, "--output-dir", out_dir,
                                           "--state-dir", state, "--progress", "none"], env=env, pin=0)
            s = json.loads(out)
            n = s["records"]
            if n <= 0 or s["transitions"] <= 0:
                raise SystemExit(f"replay of {fmt} produced nothing: {s}")
            pure[fmt] = dict(events=n, secs=wall, cpu=cpu, rss=rss, rate=n / wall, cpu_per_m=cpu / (n / 1e6))
            log(f"measured: pure processing, {fmt}: {n / wall:,.0f} events/s")
            shutil.rmtree(state, ignore_errors=True)
            shutil.rmtree(out_dir, ignore_errors=True)
        for fmt in ("avro", "json"):
            p = pure[fmt]
            if fmt == "avro":
                ratio = f"{p['rate'] / AVRO_TARGET:.3f} of the 1M events/s target"
            else:
                ratio = f"{p['rate'] / pure['avro']['rate']:.2f}x Avro's rate"
            t.add(f"pure_{fmt}", f"pure processing, {fmt} file (1 core)", fmt_rate(p["rate"]),
                  f"{p['cpu_per_m']:.2f}", f"{p['rss']:,.0f} MiB", ratio,
                  f"{p['events']:,} events, {a.customers:,} customers", **p)

        # --- equivalence of the Quix fold ----------------------------------
        if not a.skip_e2e:
            chk_in = os.path.join(work, "check.jsonl")
            chk_out = os.path.join(work, "check-out")
            subprocess.run([siklus, "generate", "--customers", str(min(a.check_customers, a.customers)),
                            "--events-per-customer", epc, "--seed", "7", "--output", chk_in],
                           check=True, stderr=subprocess.DEVNULL)
            subprocess.run([siklus, "replay", "--input", chk_in, "--output-dir", chk_out,
                            "--state-dir", os.path.join(work, "check-state"), "--progress", "none"],
                           check=True, stdout=subprocess.DEVNULL, env=env)
            _, _, _, cout = measure([sys.executable, os.path.join(SCRIPTS, "quix_peer.py"), "check",
                                     "--input", chk_in, "--against", os.path.join(chk_out, "transitions.jsonl")])
            c = json.loads(cout)
            share = c["event_transitions_same"] / max(1, c["event_transitions"])
            t.add("quix_equivalence", "Quix fold vs siklus fold (same file)",
                  f"{c['event_transitions_same']:,} of {c['event_transitions']:,} event-triggered transitions",
                  "", "", f"{share:.3f} identical",
                  f"snapshots identical {c['event_snapshots_same']:,}; extra in Quix "
                  f"{c['event_transitions_quix'] - c['event_transitions_same']:,}; timer transitions "
                  f"{c['timer_transitions_quix']:,} of {c['timer_transitions']:,} (Quix fires them on the "
                  f"customer's next event only)", **c)
            if share < 0.99 or c["event_transitions_quix"] != c["event_transitions_same"]:
                raise SystemExit(f"the Quix fold no longer matches siklus's ({c}): update scripts/quix_peer.py "
                                 "to the current rules, or the comparison is not of equivalent work")

        # --- end to end, the peers, latency ----------------------------------
        if a.skip_e2e:
            t.add("e2e", "end to end on Kafka", "skipped (--skip-e2e)")
        else:
            kafka_dir, bootstrap = start_kafka(work)
            log(f"Kafka {kafka_version()} broker at {bootstrap}")
            try:
                cfg = os.path.join(work, "siklus.toml")
                with open(cfg, "w") as f:
                    f.write(f'[kafka]\n"bootstrap.servers" = "{bootstrap}"\n'
                            f'[topics]\ninput = "bench.events"\n'
                            f'[processor]\ngroup_id = "bench"\nstate_dir = "{work}/live-state"\n'
                            f'topic_partitions = 4\nidle_timeout_ms = 600000\n')
                # Created here, with the partitions siklus would give them and
                # no time-based retention: siklus and Kafka Streams stamp
                # transitions with their event time, and the workload's is
                # in the past, so the broker's default retention (7 days)
                # would delete them at its next check, before they are compared.
                latency.create_topics(bootstrap, ["bench.events", "siklus.transitions", "quix.transitions",
                                                  "kstreams.transitions"], 4)
                log("loading the topic")
                _, _, _, lout = measure([siklus, "--config", cfg, "bench", "load", "--customers",
                                         str(a.e2e_customers), "--events-per-customer", epc], env=env)
                loaded = json.loads(lout)["records"]
                log("raw consumer")
                rw, rc, _, rout = measure([siklus, "--config", cfg, "bench", "consume"], env=env)
                raw = json.loads(rout)
                n = raw["records"]
                if n != loaded:
                    raise SystemExit(f"the raw consumer read {n} of {loaded} loaded records")
                log(f"raw consumer: {rw:.1f}s; siklus run")
                sw, sc, srss, sout = measure([siklus, "--config", cfg, "run", "--stop-at-end"], env=env)
                # Processing spans: the raw consumer's from its assignment to its
                # last record, siklus's from its first record to the commit of
                # the step that applied the last one (both without group join
                # or end detection).
                raw_span = float(raw["secs"])
                s_span = json.loads(sout).get("processing_secs") or sw
                log(f"siklus run: {sw:.1f}s ({s_span:.1f}s processing); restore from the changelog")
                # A new state directory brought up to date from the changelog
                # that the run above wrote (what a new instance does for the
                # partitions it is given, here without the group join).
                rcfg = os.path.join(work, "siklus-restore.toml")
                with open(cfg) as f:
                    text = f.read()
                with open(rcfg, "w") as f:
                    f.write(text.replace(f"{work}/live-state", f"{work}/restore-state"))
                _, rcpu, rrss, rout = measure([siklus, "--config", rcfg, "state", "restore"], env=env)
                rs = json.loads(rout)
                rrec, rsecs = rs["records"], rs["secs"]
                if rrec <= 0 or rsecs <= 0:
                    raise SystemExit(f"the restore restored nothing: {rs}")
                t.add("restore", "restore from the changelog", fmt_rate(rrec / rsecs, "records/s"), "",
                      f"{rrss:,.0f} MiB",
                      f"the state of {n:,} events back in {rsecs:.1f}s: {s_span / rsecs:.1f}x faster than "
                      f"processing them again",
                      f"{rrec:,} changelog records, 4 partitions, `siklus state restore` into an empty directory",
                      records=rrec, secs=rsecs, cpu=rcpu, rss=rrss, rate=rrec / rsecs,
                      vs_processing=s_span / rsecs)
                log("siklus run without the changelog")
                nenv = dict(env, SIKLUS_PROCESSOR__CHANGELOG="false", SIKLUS_PROCESSOR__GROUP_ID="bench-nolog",
                            SIKLUS_PROCESSOR__STATE_DIR=os.path.join(work, "nolog-state"))
                nw, nc, nrss, nout = measure([siklus, "--config", cfg, "run", "--stop-at-end"], env=nenv)
                n_span = json.loads(nout).get("processing_secs") or nw
                t.add("siklus_no_changelog", "siklus run, changelog off", fmt_rate(n / n_span),
                      f"{nc / (n / 1e6):.2f}", f"{nrss:,.0f} MiB",
                      f"the changelog costs {s_span / n_span:.2f}x the processing span, "
                      f"{sc / max(nc, 1e-9):.2f}x the CPU",
                      "same topic, same run, processor.changelog = false",
                      records=n, secs=n_span, cpu=nc, rss=nrss, rate=n / n_span,
                      changelog_span_cost=s_span / n_span, changelog_cpu_cost=sc / max(nc, 1e-9))
                log("Quix Streams peer")
                qw, qc, qrss, qout = measure([sys.executable, os.path.join(SCRIPTS, "quix_peer.py"), "run",
                                              "--broker", bootstrap, "--topic", "bench.events",
                                              "--output-topic", "quix.transitions", "--group", "bench-quix",
                                              "--state-dir", os.path.join(work, "quix-state"),
                                              "--expect", str(n), "--idle-timeout", "60"], env=env)
                q = json.loads(qout)
                if q["records"] != n:
                    raise SystemExit(f"the Quix peer processed {q['records']} of {n} records")
                log("Kafka Streams peer")
                kw, kc, krss, kout = measure(["java", "-jar", kstreams_jar, "--bootstrap-servers", bootstrap,
                                              "--input-topic", "bench.events", "--output-topic", "kstreams.transitions",
                                              "--application-id", "bench-kstreams",
                                              "--state-dir", os.path.join(work, "kstreams-state"),
                                              "--threads", str(a.kstreams_threads), "--expect", str(n),
                                              "--punctuate-interval-ms", str(a.kstreams_punctuate_ms),
                                              "--idle-timeout-secs", "60"], env=env)
                k = json.loads(kout)
                if k["records"] != n:
                    raise SystemExit(f"the Kafka Streams peer processed {k['records']} of {n} records")
                log("comparing the transitions of siklus and Kafka Streams")
                kcmp = quix_peer.compare(topic_transitions(bootstrap, "siklus.transitions"),
                                           topic_transitions(bootstrap, "kstreams.transitions"))
                raw_cpu_m, s_cpu_m, q_cpu_m, k_cpu_m = (x / (n / 1e6) for x in (rc, sc, qc, kc))
                t.add("raw_consumer", "raw consumer (Kafka)", fmt_rate(n / raw_span, "records/s"),
                      f"{raw_cpu_m:.2f}", "", "1.00 (reference)",
                      f"{n:,} JSON records, 4 partitions; rate over its read span ({raw_span:.1f}s)",
                      records=n, secs=raw_span, wall=rw, cpu=rc, rate=n / raw_span, cpu_per_m=raw_cpu_m)
                t.add("siklus_e2e", "siklus run, end to end", fmt_rate(n / s_span), f"{s_cpu_m:.2f}",
                      f"{srss:,.0f} MiB",
                      f"throughput {raw_span / s_span:.2f}x, CPU per event {sc / max(rc, 1e-9):.1f}x the raw consumer's",
                      f"same topic, same run; rate over its processing span ({s_span:.1f}s; {sw:.1f}s with group "
                      f"join and end detection)",
                      records=n, secs=s_span, wall=sw, cpu=sc, rss=srss, rate=n / s_span, cpu_per_m=s_cpu_m,
                      throughput_vs_raw=raw_span / s_span, cpu_vs_raw=sc / max(rc, 1e-9))
                t.add("quix", "Quix Streams peer, end to end", fmt_rate(n / qw), f"{q_cpu_m:.2f}", f"{qrss:,.0f} MiB",
                      f"CPU per event {qc / max(nc, 1e-9):.2f}x siklus's (changelog off, as here); its throughput "
                      f"{nw / qw:.2f}x siklus's",
                      f"same topic; no changelog; {q['transitions']:,} transitions; wall and CPU include Python "
                      f"start-up",
                      records=n, secs=qw, cpu=qc, rss=qrss, rate=n / qw, cpu_per_m=q_cpu_m,
                      cpu_vs_siklus=qc / max(nc, 1e-9), throughput_vs_siklus=nw / qw,
                      transitions=q["transitions"])
                # Its processing span as siklus's: first record to the commit
                # that covers the last one (the peer asks for that commit).
                k_span = k.get("processing_secs") or k["secs"]
                ks = k["settings"]
                k_cpu_ratio = kc / max(sc, 1e-9)
                t.add("kstreams", "Kafka Streams peer, end to end", fmt_rate(n / k_span), f"{k_cpu_m:.2f}",
                      f"{krss:,.0f} MiB",
                      f"CPU per event {k_cpu_ratio:.2f}x siklus's (target >= 5x; changelogs on in both); "
                      f"its throughput {s_span / k_span:.2f}x siklus's",
                      f"same topic; Kafka Streams {ks['kafka_streams']}, Processor API, persistent RocksDB stores "
                      f"(profiles, timers by deadline) with caching, stream-time punctuator every "
                      f"{ks['punctuate_interval_ms'] / 3.6e6:g} h of event time; its defaults "
                      f"(processing.guarantee={ks['processing.guarantee']}, commit.interval.ms="
                      f"{ks['commit.interval.ms']}, changelogs on, num.stream.threads={ks['num.stream.threads']}) "
                      f"but statestore.cache.max.bytes={ks['statestore.cache.max.bytes'] / 2**20:g} MiB "
                      f"(default 10 MiB); {k['transitions']:,} transitions ({k['timer_transitions']:,} by timer); "
                      f"rate over its processing span ({k_span:.1f}s: first record to the commit covering the last; "
                      f"{kw:.1f}s with JVM start, group join and close); CPU is the whole JVM's "
                      f"({k.get('span_cpu_secs', 0):.1f}s of it from the first record on)",
                      records=n, secs=k_span, wall=kw, cpu=kc, rss=krss, rate=n / k_span, cpu_per_m=k_cpu_m,
                      cpu_vs_siklus=k_cpu_ratio, throughput_vs_siklus=s_span / k_span,
                      transitions=k["transitions"], timer_transitions=k["timer_transitions"],
                      span_cpu=k.get("span_cpu_secs"), settings=ks)
                timer_note = ("" if kcmp["timer_transitions_peer"] == kcmp["timer_transitions_same"]
                              == kcmp["timer_transitions"] else
                              " (its last punctuation and siklus's last watermark need not reach the same "
                              "event time)")
                t.add("kstreams_equivalence", "Kafka Streams vs siklus transitions (same topic)",
                      f"{kcmp['event_transitions_same']:,} of {kcmp['event_transitions']:,} event-triggered transitions",
                      "", "", f"{kcmp['event_transitions_same'] / max(1, kcmp['event_transitions']):.3f} identical",
                      f"snapshots identical {kcmp['event_snapshots_same']:,}; extra in Kafka Streams "
                      f"{kcmp['event_transitions_peer'] - kcmp['event_transitions_same']:,}; timer transitions "
                      f"{kcmp['timer_transitions_same']:,} of siklus's {kcmp['timer_transitions']:,} identical, "
                      f"{kcmp['timer_transitions_peer']:,} fired by Kafka Streams{timer_note}", **kcmp)
                if (kcmp["event_transitions"] == 0 or kcmp["event_transitions_same"] != kcmp["event_transitions"]
                        or kcmp["event_transitions_peer"] != kcmp["event_transitions"]):
                    raise SystemExit(f"the Kafka Streams peer's event-triggered transitions differ from siklus's "
                                     f"({kcmp}): update scripts/peers/kstreams to the current rules, or the "
                                     "comparison is not of equivalent work")

                rate = 0.5 * n / s_span
                lat_events = max(200, int(rate * a.latency_secs))
                lat_jsonl = os.path.join(work, "latency.jsonl")
                subprocess.run([siklus, "generate", "--customers", str(max(1, math.ceil(lat_events / 5))),
                                "--events-per-customer", "5", "--seed", "11", "--output", lat_jsonl],
                               check=True, stderr=subprocess.DEVNULL)
                log(f"latency at {rate:,.0f} events/s")
                L = latency.run_latency(siklus, bootstrap, work, lat_jsonl, rate, lat_events, env, log=log)
                if L["achieved_rate"] < 0.5 * rate:
                    raise SystemExit(f"the latency producer reached only {L['achieved_rate']:,.0f} of "
                                     f"{rate:,.0f} events/s")
                # A Python producer tops out near 17k records/s here: above that
                # the row says it ran below half of siklus's rate.
                rate_note = ("half of siklus's end-to-end rate" if L["achieved_rate"] >= 0.9 * rate else
                             f"the producer's ceiling, below half of siklus's end-to-end rate ({rate:,.0f}/s)")
                t.add("latency", "produce-to-transition latency",
                      f"p50 {L['p50_ms']:,.0f} ms, p99 {L['p99_ms']:,.0f} ms", "", "",
                      f"p50 {L['p50_ms'] / max(L['hop_p50_ms'], 1e-9):.1f}x, "
                      f"p99 {L['p99_ms'] / max(L['hop_p99_ms'], 1e-9):.1f}x the broker's "
                      f"(p50 {L['hop_p50_ms']:,.0f} ms, p99 {L['hop_p99_ms']:,.0f} ms)",
                      f"{L['events']:,} events at {L['achieved_rate']:,.0f}/s ({rate_note}), "
                      f"{L['samples']:,} transitions; siklus with linger.ms=1, fetch.wait.max.ms=10; "
                      f"clock: {L['clock']}; received by a consumer: "
                      f"p50 {L['recv_p50_ms']:,.0f} ms, p99 {L['recv_p99_ms']:,.0f} ms", **L)
            finally:
                stop_kafka(kafka_dir)

        # --- memory with many customers --------------------------------------
        for path in (avro, jsonl):
            os.remove(path)  # room on disk for the next file and its state
        rss_avro = os.path.join(work, "rss.avro")
        repc = str(a.rss_events_per_customer)
        log(f"memory: writing {a.rss_customers:,} customers")
        subprocess.run([siklus, "bench", "write-avro", "--customers", str(a.rss_customers),
                        "--events-per-customer", repc, "--output", rss_avro], check=True, stdout=subprocess.DEVNULL)
        rss_out = os.path.join(work, "out-rss")
        os.makedirs(rss_out)
        # Millions of transitions (a few GB of JSON) would only measure the
        # disk: they go to /dev/null; the aggregates are written as usual.
        os.symlink(os.devnull, os.path.join(rss_out, "transitions.jsonl"))
        log("memory: replay")
        mw, mc, mrss, mout = measure([siklus, "replay", "--input", rss_avro, "--output-dir", rss_out,
                                      "--state-dir", os.path.join(work, "state-rss"), "--progress", "none"], env=env)
        m = json.loads(mout)
        if m["records"] < a.rss_customers:
            raise SystemExit(f"the memory replay read {m['records']} events for {a.rss_customers} customers")
        t.add("rss_customers", f"peak RSS, {a.rss_customers:,} customers", f"{mrss:,.0f} MiB",
              f"{mc / (m['records'] / 1e6):.2f}", "",
              f"{mrss / pure['avro']['rss']:.2f}x the RSS at {a.customers:,} customers",
              f"Avro file replay, {m['records']:,} events ({a.rss_events_per_customer:g} per customer on "
              f"average, each customer at least one), {m['transitions']:,} transitions (to /dev/null), "
              f"{mw:,.0f} s",
              customers=a.rss_customers, events=m["records"], secs=mw, cpu=mc, rss=mrss,
              vs_pure_avro=mrss / pure["avro"]["rss"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {mach['cores']} cores, {mach['cpu']}, {mach['mem_gib']} GiB RAM, {mach['os']}")
    print(f"binary: {siklus}")
    if not a.skip_e2e:
        print(f"broker: Apache Kafka {kafka_version()}, one KRaft node on loopback (scripts/kafka-broker.sh)")
    print(f"command: {command}")
    print(f"took {time.monotonic() - started:,.0f} s")
    t.print()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": mach, "binary": siklus, "command": command, "smoke": a.smoke,
                       "rows": t.figures}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
