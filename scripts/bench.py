#!/usr/bin/env python3
"""siklus benchmarks: one command, one table, every figure with its ratio,
all measured in the same run.

    scripts/bench.py                  # full sizes (release build; about half an hour)
    scripts/bench.py --smoke          # tiny sizes, the debug build (CI runs this)
    scripts/bench.py --json out.json  # also write the figures as JSON

Rows, each with the reference its ratio is taken against:
  * pure processing: a file replay of the generated workload, pinned to one
    core (taskset -c 0), for Avro and JSON input: events/s, CPU-seconds per
    million events, peak RSS. Ratio: Avro against the target of 1M events/s
    on one core; JSON against Avro.
  * end to end on tansu, over one pre-loaded topic of JSON records
    (`siklus bench load`):
      - a raw consumer that only reads the topic: the reference;
      - `siklus run --stop-at-end`: throughput and CPU per event against the
        raw consumer's;
      - the Quix Streams peer (scripts/quix_peer.py): the equivalent
        per-customer fold in Quix's RocksDB state, with its own consumer
        group and state dir: its CPU per event against siklus's.
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
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import socket
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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tansu_bin():
    for c in [os.environ.get("TANSU_BIN"), os.path.expanduser("~/.cargo/bin/tansu"), shutil.which("tansu")]:
        if c and os.path.exists(c):
            return c
    return None


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


def start_tansu(tansu):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen([tansu, "broker"], env=dict(os.environ, LISTENER_URL=url,
                              ADVERTISED_LISTENER_URL=url, RUST_LOG="warn"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return broker, port
        except OSError:
            time.sleep(0.1)
    broker.kill()
    raise SystemExit("tansu did not start listening")


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
    ap.add_argument("--skip-e2e", action="store_true", help="no broker rows (no Quix peer, no latency)")
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
                raise SystemExit(f"python package {pkg} is not installed: run scripts/setup.sh")
        tansu = tansu_bin()
        if not tansu:
            raise SystemExit("tansu is not installed: run scripts/setup.sh (or pass --skip-e2e)")
        sys.path.insert(0, SCRIPTS)
        import latency  # noqa: E402  (needs confluent_kafka, checked above)

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

        # --- end to end, Quix peer, latency ----------------------------------
        if a.skip_e2e:
            t.add("e2e", "end to end on tansu", "skipped (--skip-e2e)")
        else:
            broker, port = start_tansu(tansu)
            bootstrap = f"127.0.0.1:{port}"
            try:
                cfg = os.path.join(work, "siklus.toml")
                with open(cfg, "w") as f:
                    f.write(f'[kafka]\n"bootstrap.servers" = "{bootstrap}"\n'
                            f'[topics]\ninput = "bench.events"\n'
                            f'[processor]\ngroup_id = "bench"\nstate_dir = "{work}/live-state"\n'
                            f'topic_partitions = 4\nidle_timeout_ms = 600000\n')
                # Created here (same partitions as siklus would use) with an
                # explicit retention.ms: Quix Streams reads it from
                # DescribeConfigs, which tansu 0.6 answers only for topics
                # created with it.
                latency.create_topics(bootstrap, ["bench.events", "quix.transitions"], 4)
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
                raw_cpu_m, s_cpu_m, q_cpu_m = (x / (n / 1e6) for x in (rc, sc, qc))
                t.add("raw_consumer", "raw consumer (tansu)", fmt_rate(n / raw_span, "records/s"),
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
                      f"CPU per event {qc / max(sc, 1e-9):.2f}x siklus's; its throughput {sw / qw:.2f}x siklus's",
                      f"same topic; {q['transitions']:,} transitions; wall and CPU include Python start-up",
                      records=n, secs=qw, cpu=qc, rss=qrss, rate=n / qw, cpu_per_m=q_cpu_m,
                      cpu_vs_siklus=qc / max(sc, 1e-9), throughput_vs_siklus=sw / qw,
                      transitions=q["transitions"])

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
                broker.kill()
                broker.wait()

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
