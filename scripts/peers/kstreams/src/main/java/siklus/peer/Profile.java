package siklus.peer;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Map;
import java.util.TreeMap;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serializer;

/**
 * The per-customer state of the fold (the fields of scripts/quix_peer.py's
 * profile), stored in RocksDB in a compact binary form.
 */
final class Profile {
    static final long NONE = Long.MIN_VALUE;

    /** Rank in Fold.MILESTONES, -1 before the first event. */
    int milestone = -1;
    /** Index in Fold.ACTIVITY, -1 before the first activity. */
    int activity = -1;
    long events;
    long transitions;
    long firstSeen = NONE;
    long lastEvent = NONE;
    long lastActivity = NONE;
    long firstOrder = NONE;
    long acquiredAt = NONE;
    int orderCount;
    final ArrayList<Order> orders = new ArrayList<>();
    final TreeMap<String, Long> revenue = new TreeMap<>();
    int refunds;
    int openTickets;
    int csat;
    int csatOk;
    int nps = -1;
    int referralsSent;
    int referralsConverted;
    long impressions;
    long clicks;
    final TreeMap<String, Long> channels = new TreeMap<>();
    long unknown;
    /** The most recent event ids, oldest first, for deduplication. */
    final ArrayList<String> recentIds = new ArrayList<>();

    static final class Order {
        String orderId;
        long at;
        long amount;
        String currency;
        long refunded;
        boolean isVoid;
    }

    // --- binary form --------------------------------------------------------

    private static final byte VERSION = 1;

    byte[] toBytes() {
        Out o = new Out(256);
        o.b(VERSION);
        o.i(milestone);
        o.i(activity);
        o.l(events);
        o.l(transitions);
        o.l(firstSeen);
        o.l(lastEvent);
        o.l(lastActivity);
        o.l(firstOrder);
        o.l(acquiredAt);
        o.i(orderCount);
        o.i(orders.size());
        for (Order x : orders) {
            o.s(x.orderId);
            o.l(x.at);
            o.l(x.amount);
            o.s(x.currency);
            o.l(x.refunded);
            o.b((byte) (x.isVoid ? 1 : 0));
        }
        o.map(revenue);
        o.i(refunds);
        o.i(openTickets);
        o.i(csat);
        o.i(csatOk);
        o.i(nps);
        o.i(referralsSent);
        o.i(referralsConverted);
        o.l(impressions);
        o.l(clicks);
        o.map(channels);
        o.l(unknown);
        o.i(recentIds.size());
        for (String id : recentIds) {
            o.s(id);
        }
        return o.bytes();
    }

    static Profile fromBytes(byte[] data) {
        ByteBuffer in = ByteBuffer.wrap(data);
        if (in.get() != VERSION) {
            throw new IllegalStateException("unknown profile version");
        }
        Profile p = new Profile();
        p.milestone = in.getInt();
        p.activity = in.getInt();
        p.events = in.getLong();
        p.transitions = in.getLong();
        p.firstSeen = in.getLong();
        p.lastEvent = in.getLong();
        p.lastActivity = in.getLong();
        p.firstOrder = in.getLong();
        p.acquiredAt = in.getLong();
        p.orderCount = in.getInt();
        int n = in.getInt();
        for (int i = 0; i < n; i++) {
            Order x = new Order();
            x.orderId = str(in);
            x.at = in.getLong();
            x.amount = in.getLong();
            x.currency = str(in);
            x.refunded = in.getLong();
            x.isVoid = in.get() != 0;
            p.orders.add(x);
        }
        map(in, p.revenue);
        p.refunds = in.getInt();
        p.openTickets = in.getInt();
        p.csat = in.getInt();
        p.csatOk = in.getInt();
        p.nps = in.getInt();
        p.referralsSent = in.getInt();
        p.referralsConverted = in.getInt();
        p.impressions = in.getLong();
        p.clicks = in.getLong();
        map(in, p.channels);
        p.unknown = in.getLong();
        n = in.getInt();
        for (int i = 0; i < n; i++) {
            p.recentIds.add(str(in));
        }
        return p;
    }

    private static String str(ByteBuffer in) {
        int len = in.getInt();
        if (len < 0) {
            return null;
        }
        String s = new String(in.array(), in.arrayOffset() + in.position(), len, StandardCharsets.UTF_8);
        in.position(in.position() + len);
        return s;
    }

    private static void map(ByteBuffer in, TreeMap<String, Long> m) {
        int n = in.getInt();
        for (int i = 0; i < n; i++) {
            String k = str(in);
            m.put(k, in.getLong());
        }
    }

    /** A growable big-endian byte buffer. */
    private static final class Out {
        private byte[] buf;
        private int len;

        Out(int cap) {
            buf = new byte[cap];
        }

        private void ensure(int more) {
            if (len + more > buf.length) {
                buf = Arrays.copyOf(buf, Math.max(buf.length * 2, len + more));
            }
        }

        void b(byte v) {
            ensure(1);
            buf[len++] = v;
        }

        void i(int v) {
            ensure(4);
            for (int k = 3; k >= 0; k--) {
                buf[len++] = (byte) (v >>> (8 * k));
            }
        }

        void l(long v) {
            ensure(8);
            for (int k = 7; k >= 0; k--) {
                buf[len++] = (byte) (v >>> (8 * k));
            }
        }

        void s(String v) {
            if (v == null) {
                i(-1);
                return;
            }
            byte[] b = v.getBytes(StandardCharsets.UTF_8);
            i(b.length);
            ensure(b.length);
            System.arraycopy(b, 0, buf, len, b.length);
            len += b.length;
        }

        void map(TreeMap<String, Long> m) {
            i(m.size());
            for (Map.Entry<String, Long> e : m.entrySet()) {
                s(e.getKey());
                l(e.getValue());
            }
        }

        byte[] bytes() {
            return Arrays.copyOf(buf, len);
        }
    }

    /** The serde of the profile store's values. */
    static final class ProfileSerde implements Serde<Profile> {
        @Override
        public Serializer<Profile> serializer() {
            return (topic, p) -> p == null ? null : p.toBytes();
        }

        @Override
        public Deserializer<Profile> deserializer() {
            return (topic, data) -> data == null ? null : fromBytes(data);
        }
    }
}
