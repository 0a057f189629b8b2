#!/usr/bin/env python3
"""Produce-to-transition latency of a live `siklus run`, at a steady rate.

A confluent-kafka producer sends the lines of a `siklus generate` JSONL file
(keyed by customer) to a fresh input topic at a fixed rate, with each record's
timestamp set explicitly to its produce time. A consumer of the transitions
topic takes, for every transition that names a triggering_event_id, the
time the transition was produced minus the produce time of the input record.
The time it was produced is the transition record's timestamp when that is
a wall-clock CreateTime; siklus stamps transitions with their event time
(the workload's is in the past), so it is then the time the consumer
received the transition, which is also reported as a second figure.

Used by bench.py (`run_latency`); runnable alone for experiments:

    latency.py --bin target/release/siklus --broker 127.0.0.1:9092 --rate 5000 --secs 10
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from confluent_kafka import Consumer, Producer, TIMESTAMP_CREATE_TIME, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


TRIGGER = re.compile(rb'"triggering_event_id"\s*:\s*"([^"]+)"')


def create_topics(broker, names, partitions):
    """Creates topics with retention.ms=-1 (siklus and the Kafka Streams peer
    stamp transitions with their event time, which is in the past for the
    generated workload: time-based retention would delete them); an existing
    topic is left as it is."""
    admin = AdminClient({"bootstrap.servers": broker})
    fs = admin.create_topics([NewTopic(n, partitions, 1, config={"retention.ms": "-1"}) for n in names],
                             operation_timeout=10)
    for name, f in fs.items():
        try:
            f.result()
        except Exception as e:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
                raise SystemExit(f"creating topic {name}: {e}")


def read_topic(broker, topic, on_value, timeout=300.0):
    """Calls on_value(value bytes) for every record of `topic`, from the
    beginning of each partition to the end it has now; returns the count."""
    c = Consumer({"bootstrap.servers": broker, "group.id": f"bench-read-{os.getpid()}",
                  "enable.auto.commit": "false", "auto.offset.reset": "earliest"})
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            raise SystemExit(f"reading {topic}: no such topic")
        ends, assign = {}, []
        for p in sorted(md.topics[topic].partitions):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                ends[p] = hi
                assign.append(TopicPartition(topic, p, lo))
        c.assign(assign)
        n = 0
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise SystemExit(f"reading {topic}: partitions {sorted(ends)} not read to their end "
                                 f"within {timeout:.0f} s")
            for m in c.consume(1000, 0.5):
                if m.error():
                    raise SystemExit(f"reading {topic}: {m.error()}")
                on_value(m.value())
                n += 1
                if m.offset() + 1 >= ends.get(m.partition(), 0):
                    ends.pop(m.partition(), None)
        return n
    finally:
        c.close()


def percentile(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


class TransitionReader(threading.Thread):
    """Reads the transitions topic and, to measure the broker alone, the
    input topic too."""

    def __init__(self, broker, topic, input_topic, group):
        super().__init__(daemon=True)
        self.c = Consumer({"bootstrap.servers": broker, "group.id": group,
                           "auto.offset.reset": "earliest", "enable.auto.commit": "false",
                           "fetch.wait.max.ms": "10", "topic.metadata.refresh.interval.ms": "1000"})
        self.topic, self.input_topic = topic, input_topic
        self.c.subscribe([topic, input_topic])
        self.samples = []  # (triggering_event_id, record ts ms, ts type, receive ms)
        self.hops = {}  # (partition, offset) of an input record -> (produce ts ms, receive ms)
        self.count = 0
        self.last = time.monotonic()
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            msgs = self.c.consume(1000, 0.1)
            now = time.time() * 1000.0
            for m in msgs:
                if m.error():
                    continue
                if m.topic() == self.input_topic:
                    self.hops[(m.partition(), m.offset())] = (m.timestamp()[1], now)
                    continue
                self.count += 1
                self.last = time.monotonic()
                # The id only: cheaper than decoding the whole record, so the
                # reader takes less CPU from the broker and siklus.
                found = TRIGGER.search(m.value())
                if found:
                    ttype, ts = m.timestamp()
                    self.samples.append((found.group(1).decode(), ts, ttype, now))
        self.c.close()


def run_latency(siklus, broker, work, jsonl, rate, max_events, env, partitions=4, log=print):
    """Runs siklus live against a fresh topic fed at `rate` events/s with up to
    max_events lines of `jsonl`; returns a dict of results."""
    topic, out, group = "lat.events", "lat.transitions", "lat"
    # Both created before the reader subscribes: a subscription to a topic
    # that does not exist yet waits for a metadata refresh.
    create_topics(broker, [topic, out], partitions)
    cfg = os.path.join(work, "latency.toml")
    with open(cfg, "w") as f:
        # Small producer linger and fetch wait: the defaults batch for throughput.
        f.write(f'[kafka]\n"bootstrap.servers" = "{broker}"\n"linger.ms" = "1"\n"fetch.wait.max.ms" = "10"\n'
                f'[topics]\ninput = "{topic}"\ntransitions = "{out}"\naggregates = "lat.aggregates"\n'
                f'cohorts = "lat.cohorts"\ndlq = "lat.dlq"\n'
                f'[processor]\ngroup_id = "{group}"\nstate_dir = "{work}/lat-state"\n'
                f'topic_partitions = {partitions}\ncommit_interval_ms = 1000\n')
    records = []
    with open(jsonl, "rb") as f:
        for line in f:
            if len(records) >= max_events:
                break
            line = line.rstrip(b"\n")
            e = json.loads(line)
            records.append((e["customer_id"].encode(), line, e["event_id"]))
    if not records:
        raise SystemExit("latency: no input records")

    errlog = open(os.path.join(work, "latency-siklus.log"), "wb")
    proc = subprocess.Popen([siklus, "--config", cfg, "run"], stdout=subprocess.DEVNULL, stderr=errlog, env=env)
    reader = TransitionReader(broker, out, topic, "lat-reader")
    reader.start()
    prod = Producer({"bootstrap.servers": broker, "linger.ms": "1", "acks": "all"})
    sent = {}
    try:
        # Warm-up: siklus joins its group and creates its output topics; the
        # measured phase starts once a warm-up event came back as a transition.
        deadline = time.monotonic() + 120
        i = 0
        while True:
            if proc.poll() is not None:
                raise SystemExit("latency: siklus run exited during warm-up; see " + errlog.name)
            if any(s[0].startswith("warmup-") for s in reader.samples):
                break
            if time.monotonic() > deadline:
                raise SystemExit("latency: no transition within 120 s of warm-up")
            ev = {"event_id": f"warmup-{i}", "customer_id": f"warmup-cust-{i}", "event_type": "page.viewed",
                  "occurred_at": "2024-01-01T00:00:00.000Z", "channel": "web"}
            prod.produce(topic, json.dumps(ev).encode(), key=ev["customer_id"].encode())
            prod.poll(0)
            i += 1
            time.sleep(0.25)
        time.sleep(1.0)
        log(f"latency: warm-up done; sending {len(records):,} events at {rate:,.0f}/s")

        # Steady phase: record i is due at t0 + i / rate.
        t0 = time.monotonic()
        n = len(records)
        i = 0
        while i < n:
            due = min(n, int((time.monotonic() - t0) * rate) + 1)
            while i < due:
                key, value, eid = records[i]
                ts = int(time.time() * 1000)
                while True:
                    try:
                        prod.produce(topic, value, key=key, timestamp=ts)
                        break
                    except BufferError:
                        prod.poll(0.001)
                sent[eid] = ts
                i += 1
            prod.poll(0)
            time.sleep(0.001)
        send_secs = time.monotonic() - t0
        prod.flush(30)
        # Drain: until no transition arrived for 3 s.
        deadline = time.monotonic() + 120
        while time.monotonic() - reader.last < 3.0 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        reader.stop.set()
        reader.join(10)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errlog.close()

    by_ts, by_recv, create_time, wild = [], [], 0, 0
    for tid, ts, ttype, recv in reader.samples:
        t_in = sent.get(tid)
        if t_in is None:
            continue
        if ttype == TIMESTAMP_CREATE_TIME:
            create_time += 1
        if abs(ts - recv) > 60_000:
            wild += 1  # not a wall-clock stamp (e.g. event time)
        by_ts.append(ts - t_in)
        by_recv.append(recv - t_in)
    if not by_ts:
        raise SystemExit("latency: no transition of a measured event came back")
    # The record timestamp is used when it is a wall-clock CreateTime;
    # otherwise the consumer's receive time.
    use_ts = create_time == len(by_ts) and wild == 0
    main = sorted(by_ts if use_ts else by_recv)
    recv_sorted = sorted(by_recv)
    first = min(sent.values())
    hops = sorted(recv - ts for ts, recv in reader.hops.values() if ts >= first)
    if not hops:
        raise SystemExit("latency: the reader saw none of the measured input records")
    return {
        "rate": rate, "events": len(sent), "send_secs": send_secs,
        "achieved_rate": len(sent) / send_secs if send_secs > 0 else float("nan"),
        "samples": len(main),
        "clock": "transition record timestamp (CreateTime)" if use_ts else "consumer receive time",
        "p50_ms": percentile(main, 0.50), "p99_ms": percentile(main, 0.99), "max_ms": main[-1],
        "recv_p50_ms": percentile(recv_sorted, 0.50), "recv_p99_ms": percentile(recv_sorted, 0.99),
        "hop_samples": len(hops),
        "hop_p50_ms": percentile(hops, 0.50), "hop_p99_ms": percentile(hops, 0.99),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--secs", type=float, default=10.0)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    import tempfile
    work = a.work or tempfile.mkdtemp(prefix="siklus-latency-")
    n = int(a.rate * a.secs)
    jsonl = os.path.join(work, "lat.jsonl")
    subprocess.run([a.bin, "generate", "--customers", str(max(1, n // 5)), "--events-per-customer", "5",
                    "--output", jsonl], check=True, stderr=subprocess.DEVNULL)
    r = run_latency(a.bin, a.broker, work, jsonl, a.rate, n, dict(os.environ, SIKLUS_LOG="warn"),
                    log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(r))


if __name__ == "__main__":
    main()
