package siklus.peer;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The fold over two persistent RocksDB stores of the task's partition: the
 * profiles by customer id, and the inactivity timers indexed by deadline
 * (key = 8-byte big-endian deadline, sign bit flipped, then the customer id),
 * so that a stream-time punctuator finds the due ones with one range scan.
 *
 * <p>Event time: before an event at t is applied, the customer's deadlines
 * earlier than t expire first (in the fold); the punctuator expires every
 * deadline earlier than the task's stream time minus the allowed lateness, as
 * siklus does when its partition watermark passes them.
 */
final class FoldProcessor implements Processor<String, Event, String, byte[]> {
    static final String PROFILES = "profiles";
    static final String TIMERS = "timers";
    private static final byte[] PRESENT = {1};

    /** Counters shared by every task of the instance, read by the main thread. */
    static final class Stats {
        final AtomicLong records = new AtomicLong();
        final AtomicLong transitions = new AtomicLong();
        final AtomicLong timerTransitions = new AtomicLong();
        final AtomicLong invalid = new AtomicLong();
        final AtomicLong punctuations = new AtomicLong();
        volatile long firstNanos;
        volatile long firstCpuNanos = -1;
        volatile long lastNanos;
        /** Set when the expected last record was processed and a commit requested. */
        volatile double commitsBeforeLast = -1;
        volatile String lastThread; // written last
    }

    /** The stream thread's commit-total metric (commits completed), or -1. */
    static double commitTotal(Map<MetricName, ? extends Metric> metrics, String thread) {
        for (Map.Entry<MetricName, ? extends Metric> m : metrics.entrySet()) {
            MetricName n = m.getKey();
            if (n.name().equals("commit-total") && n.group().equals("stream-thread-metrics")
                    && thread.equals(n.tags().get("thread-id"))) {
                Object v = m.getValue().metricValue();
                return v instanceof Number ? ((Number) v).doubleValue() : -1;
            }
        }
        return -1;
    }

    private final Stats stats;
    private final long expect;
    private final long punctuateIntervalMs;
    private final long allowedLatenessMs;
    private ProcessorContext<String, byte[]> ctx;
    private KeyValueStore<String, Profile> profiles;
    private KeyValueStore<Bytes, byte[]> timers;
    private final List<Fold.Transition> out = new ArrayList<>();
    /**
     * No timer earlier than this is in the store: the punctuator's scans start
     * here, not at the lowest key, so they do not walk again over the deletes
     * of timers already fired or moved (RocksDB tombstones). Unknown (the
     * lowest) after a restart.
     */
    private long floor = Long.MIN_VALUE;

    FoldProcessor(Stats stats, long expect, long punctuateIntervalMs, long allowedLatenessMs) {
        this.stats = stats;
        this.expect = expect;
        this.punctuateIntervalMs = punctuateIntervalMs;
        this.allowedLatenessMs = allowedLatenessMs;
    }

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
        ctx = context;
        profiles = context.getStateStore(PROFILES);
        timers = context.getStateStore(TIMERS);
        context.schedule(Duration.ofMillis(punctuateIntervalMs), PunctuationType.STREAM_TIME, this::punctuate);
    }

    static Bytes timerKey(long deadline, String cid) {
        byte[] c = cid.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + c.length);
        b.putLong(deadline ^ Long.MIN_VALUE).put(c);
        return Bytes.wrap(b.array());
    }

    private static Bytes bound(long deadline) {
        return Bytes.wrap(ByteBuffer.allocate(8).putLong(deadline ^ Long.MIN_VALUE).array());
    }

    @Override
    public void process(Record<String, Event> r) {
        stats.lastNanos = System.nanoTime();
        long index = stats.records.getAndIncrement();
        if (index == 0) {
            stats.firstNanos = System.nanoTime();
            stats.firstCpuNanos = KStreamsPeer.processCpuNanos();
        }
        try {
            fold(r);
        } finally {
            if (index + 1 == expect) {
                // The last expected record: ask for a commit now (flush of the
                // stores and of the producer, offsets), so that the processing
                // span can end where siklus's does, at the commit covering the
                // last record, rather than after the next 30 s commit interval.
                String thread = Thread.currentThread().getName();
                stats.commitsBeforeLast = commitTotal(ctx.metrics().metrics(), thread);
                ctx.commit();
                stats.lastThread = thread;
            }
        }
    }

    private void fold(Record<String, Event> r) {
        Event e = r.value();
        if (e == null || e.error != null) {
            // siklus sends these to its dead-letter topic; the peer counts them.
            stats.invalid.incrementAndGet();
            return;
        }
        String cid = e.customerId;
        Profile p = profiles.get(cid);
        boolean fresh = p == null;
        if (fresh) {
            p = new Profile();
        }
        long before = Fold.nextDeadline(p);
        out.clear();
        Fold.Outcome o = Fold.applyEvent(p, e, out);
        if (o == Fold.Outcome.ERASED) {
            if (!fresh) {
                profiles.delete(cid);
                if (before != Profile.NONE) {
                    timers.delete(timerKey(before, cid));
                }
            }
        } else if (o == Fold.Outcome.APPLIED) {
            profiles.put(cid, p);
            long after = Fold.nextDeadline(p);
            if (before != after) {
                if (before != Profile.NONE) {
                    timers.delete(timerKey(before, cid));
                }
                if (after != Profile.NONE) {
                    timers.put(timerKey(after, cid), PRESENT);
                    floor = Math.min(floor, after);
                }
            }
        }
        send(cid, r.timestamp());
    }

    private void send(String cid, long timestamp) {
        if (out.isEmpty()) {
            return;
        }
        for (Fold.Transition t : out) {
            ctx.forward(new Record<>(cid, t.json(), Math.max(0, timestamp)));
        }
        stats.transitions.addAndGet(out.size());
        out.clear();
    }

    /** Expires every deadline earlier than stream time minus the allowed lateness. */
    private void punctuate(long streamTime) {
        stats.punctuations.incrementAndGet();
        long wm = streamTime - allowedLatenessMs;
        if (wm <= floor) {
            return;
        }
        List<Bytes> due = new ArrayList<>();
        try (KeyValueIterator<Bytes, byte[]> it = timers.range(bound(floor), bound(wm))) {
            while (it.hasNext()) {
                KeyValue<Bytes, byte[]> kv = it.next();
                due.add(kv.key);
            }
        }
        for (Bytes key : due) {
            ByteBuffer b = ByteBuffer.wrap(key.get());
            long deadline = b.getLong() ^ Long.MIN_VALUE;
            String cid = new String(key.get(), 8, key.get().length - 8, StandardCharsets.UTF_8);
            timers.delete(key);
            Profile p = profiles.get(cid);
            if (p == null || Fold.nextDeadline(p) != deadline) {
                continue; // stale: the profile moved on or was erased
            }
            out.clear();
            Fold.advanceTo(p, cid, wm, out);
            profiles.put(cid, p);
            long after = Fold.nextDeadline(p);
            if (after != Profile.NONE) {
                timers.put(timerKey(after, cid), PRESENT);
            }
            stats.timerTransitions.addAndGet(out.size());
            for (Fold.Transition t : out) {
                ctx.forward(new Record<>(cid, t.json(), Math.max(0, t.at())));
            }
            stats.transitions.addAndGet(out.size());
            out.clear();
        }
        // Every timer before wm has fired; those just written are at or after it.
        floor = wm;
    }
}
