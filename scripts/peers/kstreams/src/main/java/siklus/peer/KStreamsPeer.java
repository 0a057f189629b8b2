package siklus.peer;

import java.lang.management.ManagementFactory;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams peer of the siklus benchmark.
 *
 * <pre>
 * java -jar siklus-kstreams-peer.jar --bootstrap-servers HOST:PORT --input-topic T --output-topic O
 *     [--application-id ID] [--state-dir DIR] [--threads N] [--expect N] [--idle-timeout-secs S]
 *     [--cache-max-bytes B] [--punctuate-interval-ms MS] [--allowed-lateness-ms MS]
 * </pre>
 *
 * Every option can also come from the environment as SIKLUS_KSTREAMS_&lt;NAME&gt;
 * (e.g. SIKLUS_KSTREAMS_BOOTSTRAP_SERVERS); a flag wins over the environment.
 *
 * <p>With --expect N it consumes the input topic from the beginning, stops by
 * itself once N records were processed (the last one requests a commit; then
 * a graceful close), and prints one JSON line: records, transitions,
 * processing_secs (from the first record to the end of the commit that covers
 * the last one, as siklus measures its own span; one stream thread only),
 * secs (to the end of the close) and the settings it ran with. Without
 * --expect it runs until SIGTERM or SIGINT.
 *
 * <p>Settings: Kafka Streams' defaults (processing.guarantee=at_least_once,
 * commit.interval.ms=30000 under at_least_once, its RocksDB configuration,
 * changelog topics on, one stream thread) except the record cache,
 * statestore.cache.max.bytes, raised from the 10 MiB default to 64 MiB: the
 * memory-management guide presents the cache as the knob that trades memory
 * for fewer writes to RocksDB and to the changelog (repeated updates of a key
 * between commits are written once), and 64 MiB holds the hot profiles of the
 * bench's workload. Both stores are cached.
 */
public final class KStreamsPeer {
    private KStreamsPeer() {}

    static final Map<String, String> DEFAULTS = new LinkedHashMap<>();

    static {
        DEFAULTS.put("bootstrap-servers", "127.0.0.1:9092");
        DEFAULTS.put("input-topic", "siklus.events");
        DEFAULTS.put("output-topic", "kstreams.transitions");
        DEFAULTS.put("application-id", "siklus-kstreams-peer");
        DEFAULTS.put("state-dir", System.getProperty("java.io.tmpdir") + "/siklus-kstreams-peer");
        DEFAULTS.put("threads", "1");
        DEFAULTS.put("expect", "0");
        DEFAULTS.put("idle-timeout-secs", "60");
        DEFAULTS.put("cache-max-bytes", String.valueOf(64L * 1024 * 1024));
        DEFAULTS.put("punctuate-interval-ms", String.valueOf(3_600_000L));
        DEFAULTS.put("allowed-lateness-ms", String.valueOf(3_600_000L));
    }

    static long processCpuNanos() {
        java.lang.management.OperatingSystemMXBean os = ManagementFactory.getOperatingSystemMXBean();
        if (os instanceof com.sun.management.OperatingSystemMXBean) {
            return ((com.sun.management.OperatingSystemMXBean) os).getProcessCpuTime();
        }
        return -1;
    }

    private static Map<String, String> options(String[] args) {
        Map<String, String> o = new LinkedHashMap<>();
        for (Map.Entry<String, String> d : DEFAULTS.entrySet()) {
            String env = System.getenv("SIKLUS_KSTREAMS_" + d.getKey().toUpperCase(Locale.ROOT).replace('-', '_'));
            o.put(d.getKey(), env != null ? env : d.getValue());
        }
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("-h") || a.equals("--help")) {
                System.out.println("options (or env SIKLUS_KSTREAMS_<NAME>): " + DEFAULTS);
                System.exit(0);
            }
            if (!a.startsWith("--")) {
                usage("unexpected argument " + a);
            }
            String name = a.substring(2);
            String value;
            int eq = name.indexOf('=');
            if (eq >= 0) {
                value = name.substring(eq + 1);
                name = name.substring(0, eq);
            } else {
                if (i + 1 >= args.length) {
                    usage("missing value for " + a);
                }
                value = args[++i];
            }
            if (!DEFAULTS.containsKey(name)) {
                usage("unknown option --" + name);
            }
            o.put(name, value);
        }
        return o;
    }

    private static void usage(String msg) {
        System.err.println("kstreams peer: " + msg + "; options: " + DEFAULTS.keySet());
        System.exit(2);
    }

    /** Event time from the decoded value (occurred_at); the partition time for an undecodable record. */
    public static final class OccurredAt implements TimestampExtractor {
        public OccurredAt() {}

        @Override
        public long extract(org.apache.kafka.clients.consumer.ConsumerRecord<Object, Object> record, long partitionTime) {
            Object v = record.value();
            if (v instanceof Event && ((Event) v).error == null && ((Event) v).occurredAt >= 0) {
                return ((Event) v).occurredAt;
            }
            return partitionTime >= 0 ? partitionTime : Math.max(0, record.timestamp());
        }
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> o = options(args);
        long expect = Long.parseLong(o.get("expect"));
        long idleNanos = (long) (Double.parseDouble(o.get("idle-timeout-secs")) * 1e9);
        FoldProcessor.Stats stats = new FoldProcessor.Stats();
        long interval = Long.parseLong(o.get("punctuate-interval-ms"));
        long lateness = Long.parseLong(o.get("allowed-lateness-ms"));

        Topology topology = new Topology();
        topology.addSource("events", new StringDeserializer(), new Event.Serde(), o.get("input-topic"));
        topology.addProcessor("fold", () -> new FoldProcessor(stats, expect, interval, lateness), "events");
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(FoldProcessor.PROFILES),
                        Serdes.String(), new Profile.ProfileSerde()).withCachingEnabled(),
                "fold");
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(FoldProcessor.TIMERS),
                        Serdes.Bytes(), Serdes.ByteArray()).withCachingEnabled(),
                "fold");
        topology.addSink("transitions", o.get("output-topic"), new StringSerializer(), new ByteArraySerializer(),
                "fold");

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, o.get("application-id"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, o.get("bootstrap-servers"));
        props.put(StreamsConfig.STATE_DIR_CONFIG, o.get("state-dir"));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(o.get("threads")));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, Long.parseLong(o.get("cache-max-bytes")));
        props.put(StreamsConfig.DEFAULT_TIMESTAMP_EXTRACTOR_CLASS_CONFIG, OccurredAt.class);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        KafkaStreams streams = new KafkaStreams(topology, props);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        streams.setUncaughtExceptionHandler(ex -> {
            failure.compareAndSet(null, ex);
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        CountDownLatch signalled = new CountDownLatch(1);
        Thread hook = new Thread(() -> {
            signalled.countDown();
            streams.close(Duration.ofSeconds(60));
        }, "siklus-kstreams-peer-shutdown");
        Runtime.getRuntime().addShutdownHook(hook);

        long start = System.nanoTime();
        streams.start();
        String error = null;
        while (true) {
            if (signalled.await(20, java.util.concurrent.TimeUnit.MILLISECONDS)) {
                return; // the hook closes the client
            }
            if (failure.get() != null) {
                error = "stream thread failed: " + failure.get();
                break;
            }
            KafkaStreams.State st = streams.state();
            if (st == KafkaStreams.State.ERROR || st == KafkaStreams.State.NOT_RUNNING) {
                error = "kafka streams is " + st;
                break;
            }
            long n = stats.records.get();
            if (expect > 0 && n >= expect) {
                break;
            }
            long last = Math.max(start, stats.lastNanos);
            if (expect > 0 && System.nanoTime() - last > idleNanos && stats.records.get() == n) {
                error = "saw " + n + " of " + expect + " records before going idle";
                break;
            }
        }
        // The commit that covers the last record (requested by the processor):
        // the end of the processing span.
        long committed = -1;
        long until = System.nanoTime() + 120_000_000_000L;
        while (error == null && stats.lastThread == null && System.nanoTime() < until && failure.get() == null) {
            Thread.sleep(1); // the last record is still being processed
        }
        if (error == null && stats.lastThread != null && stats.commitsBeforeLast >= 0) {
            while (System.nanoTime() < until) {
                double c = FoldProcessor.commitTotal(streams.metrics(), stats.lastThread);
                if (c > stats.commitsBeforeLast) {
                    committed = System.nanoTime();
                    break;
                }
                Thread.sleep(2);
            }
        }
        long processed = System.nanoTime();
        streams.close(Duration.ofSeconds(120));
        Runtime.getRuntime().removeShutdownHook(hook);
        long end = System.nanoTime();
        long cpuEnd = processCpuNanos();
        long n = stats.records.get();
        long first = n == 0 ? end : stats.firstNanos;
        StringBuilder s = new StringBuilder("{");
        s.append("\"records\":").append(n);
        s.append(",\"transitions\":").append(stats.transitions.get());
        s.append(",\"timer_transitions\":").append(stats.timerTransitions.get());
        s.append(",\"invalid\":").append(stats.invalid.get());
        s.append(",\"punctuations\":").append(stats.punctuations.get());
        s.append(",\"secs\":").append((end - first) / 1e9);
        if (committed >= 0 && Integer.parseInt(o.get("threads")) == 1) {
            s.append(",\"processing_secs\":").append((committed - first) / 1e9);
        }
        s.append(",\"close_secs\":").append((end - processed) / 1e9);
        s.append(",\"wall_secs\":").append((end - start) / 1e9);
        if (stats.firstCpuNanos >= 0 && cpuEnd >= 0) {
            s.append(",\"span_cpu_secs\":").append((cpuEnd - stats.firstCpuNanos) / 1e9);
        }
        s.append(",\"settings\":{");
        s.append("\"processing.guarantee\":\"at_least_once\"");
        s.append(",\"statestore.cache.max.bytes\":").append(o.get("cache-max-bytes"));
        s.append(",\"num.stream.threads\":").append(o.get("threads"));
        s.append(",\"commit.interval.ms\":")
                .append(new StreamsConfig(props).getLong(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG));
        s.append(",\"punctuate_interval_ms\":").append(interval);
        s.append(",\"allowed_lateness_ms\":").append(lateness);
        s.append(",\"kafka_streams\":\"").append(org.apache.kafka.common.utils.AppInfoParser.getVersion()).append('"');
        s.append("}}");
        System.out.println(s);
        System.out.flush();
        if (error != null) {
            System.err.println("kstreams peer: " + error);
            System.exit(1);
        }
        System.exit(0);
    }
}
