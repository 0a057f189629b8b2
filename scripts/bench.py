#!/usr/bin/env python3
"""siklus benchmarks: one command, one table, ratios measured in one run.

    scripts/bench.py                 # full sizes (release build; several minutes)
    scripts/bench.py --smoke         # tiny sizes, the debug build (CI runs this)

Rows:
  * pure processing: a file replay of the generated workload, pinned to one core
    (taskset -c 0), for Avro and JSON input: events/s, CPU-seconds per million
    events, peak RSS;
  * end to end on tansu: `siklus run` over a pre-loaded topic against a raw
    consumer that only reads the same topic, in the same run: the ratio of
    their throughputs and of their CPU per event.

Not measured yet (printed as such): the Quix Streams peer, p50/p99 latency,
peak RSS with 10M customers.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def measure(cmd, env=None, pin=None):
    """Runs cmd; returns (wall s, CPU s of the child, peak RSS MiB, stdout)."""
    if pin is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(pin)] + cmd
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(err.decode(errors="replace")[-4000:])
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, debug build")
    ap.add_argument("--bin", help="siklus binary (default: build it)")
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--events-per-customer", type=float, default=5.0)
    ap.add_argument("--e2e-customers", type=int, default=400_000)
    ap.add_argument("--skip-e2e", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.customers, a.events_per_customer, a.e2e_customers = 2_000, 5.0, 2_000

    if a.bin:
        siklus = a.bin
    else:
        profile = [] if a.smoke else ["--release"]
        subprocess.run(["cargo", "build", "-q", "-p", "siklus"] + profile, cwd=ROOT, check=True)
        siklus = os.path.join(TARGET, "debug" if a.smoke else "release", "siklus")

    rows = []
    work = tempfile.mkdtemp(prefix="siklus-bench-")
    try:
        jsonl = os.path.join(work, "events.jsonl")
        avro = os.path.join(work, "events.avro")
        epc = str(a.events_per_customer)
        subprocess.run([siklus, "generate", "--customers", str(a.customers), "--events-per-customer", epc,
                        "--output", jsonl], check=True, stderr=subprocess.DEVNULL)
        subprocess.run([siklus, "bench", "write-avro", "--customers", str(a.customers),
                        "--events-per-customer", epc, "--output", avro], check=True, stdout=subprocess.DEVNULL)
        env = dict(os.environ, SIKLUS_LOG="warn")
        for fmt, path in [("avro", avro), ("json", jsonl)]:
            out_dir = os.path.join(work, "out-" + fmt)
            state = os.path.join(work, "state-" + fmt)
            wall, cpu, rss, out = measure([siklus, "replay", "--input", path, "--output-dir", out_dir,
                                           "--state-dir", state, "--progress", "none"], env=env, pin=0)
            s = json.loads(out)
            n = s["records"]
            if n <= 0 or s["transitions"] <= 0:
                raise SystemExit(f"replay of {fmt} produced nothing: {s}")
            print(f"measured: pure processing, {fmt}: {n / wall:,.0f} events/s", file=sys.stderr, flush=True)
            rows.append((f"pure processing, {fmt} (1 core)", f"{n / wall:,.0f} events/s",
                         f"{cpu / (n / 1e6):.2f} CPU-s per M events", f"peak RSS {rss:,.0f} MiB",
                         f"{n:,} events, {a.customers:,} customers"))
            shutil.rmtree(state, ignore_errors=True)

        tansu = tansu_bin()
        if a.skip_e2e:
            rows.append(("end to end on tansu", "skipped (--skip-e2e)", "", "", ""))
        elif not tansu:
            raise SystemExit("tansu is not installed: run scripts/setup.sh (or pass --skip-e2e)")
        else:
            port = free_port()
            url = f"tcp://127.0.0.1:{port}"
            broker = subprocess.Popen([tansu, "broker"], env=dict(os.environ, LISTENER_URL=url,
                                      ADVERTISED_LISTENER_URL=url, RUST_LOG="warn"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                        break
                    except OSError:
                        time.sleep(0.1)
                cfg = os.path.join(work, "siklus.toml")
                with open(cfg, "w") as f:
                    f.write(f'[kafka]\n"bootstrap.servers" = "127.0.0.1:{port}"\n'
                            f'[topics]\ninput = "bench.events"\n'
                            f'[processor]\ngroup_id = "bench"\nstate_dir = "{work}/live-state"\n'
                            f'topic_partitions = 4\nidle_timeout_ms = 600000\n')
                epc2 = str(a.events_per_customer)
                print("loading the topic", file=sys.stderr, flush=True)
                subprocess.run([siklus, "--config", cfg, "bench", "load", "--customers", str(a.e2e_customers),
                                "--events-per-customer", epc2], check=True, stdout=subprocess.DEVNULL, env=env)
                print("raw consumer", file=sys.stderr, flush=True)
                rw, rc, _, rout = measure([siklus, "--config", cfg, "bench", "consume"], env=env)
                print(f"raw consumer: {rw:.1f}s; siklus run", file=sys.stderr, flush=True)
                raw = json.loads(rout)
                sw, sc, srss, _ = measure([siklus, "--config", cfg, "run", "--stop-at-end"], env=env)
                n = raw["records"]
                # siklus's wall time includes the group join and the quiet period
                # that ends a bounded run; both are in its denominator.
                rows.append(("raw consumer (same topic, same run)", f"{n / rw:,.0f} records/s",
                             f"{rc / (n / 1e6):.2f} CPU-s per M", "", f"{n:,} records"))
                rows.append(("siklus run, end to end", f"{n / sw:,.0f} events/s",
                             f"{sc / (n / 1e6):.2f} CPU-s per M", f"peak RSS {srss:,.0f} MiB",
                             f"throughput {rw / sw:.2f} of the raw consumer's, CPU per event {sc / max(rc, 1e-9):.1f}x"))
            finally:
                broker.kill()
                broker.wait()
        rows.append(("Quix Streams peer", "not measured yet", "", "", ""))
        rows.append(("p50/p99 produce-to-transition latency", "not measured yet", "", "", ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {os.cpu_count()} cores; binary: {siklus}")
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()
