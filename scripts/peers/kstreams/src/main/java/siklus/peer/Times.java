package siklus.peer;

import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;

/** Event time: RFC 3339 text to epoch milliseconds and back, in UTC. */
final class Times {
    static final long DAY_MS = 86_400_000L;

    private Times() {}

    /**
     * Epoch milliseconds of an RFC 3339 timestamp, or of epoch milliseconds
     * written as a string. Throws IllegalArgumentException when it is neither.
     */
    static long parse(String s) {
        long fast = parseFast(s);
        if (fast != Long.MIN_VALUE) {
            return fast;
        }
        try {
            return OffsetDateTime.parse(s, DateTimeFormatter.ISO_OFFSET_DATE_TIME).toInstant().toEpochMilli();
        } catch (RuntimeException e) {
            try {
                return Long.parseLong(s.trim());
            } catch (NumberFormatException n) {
                throw new IllegalArgumentException("cannot parse occurred_at " + s);
            }
        }
    }

    /** YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM), or Long.MIN_VALUE. */
    private static long parseFast(String s) {
        int n = s.length();
        if (n < 20 || s.charAt(4) != '-' || s.charAt(7) != '-' || (s.charAt(10) != 'T' && s.charAt(10) != 't')
                || s.charAt(13) != ':' || s.charAt(16) != ':') {
            return Long.MIN_VALUE;
        }
        int y = digits(s, 0, 4), mo = digits(s, 5, 2), d = digits(s, 8, 2);
        int h = digits(s, 11, 2), mi = digits(s, 14, 2), se = digits(s, 17, 2);
        if (y < 0 || mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 || se < 0
                || se > 59) {
            return Long.MIN_VALUE;
        }
        int i = 19;
        long ms = 0;
        if (s.charAt(i) == '.') {
            i++;
            int start = i;
            while (i < n && Character.isDigit(s.charAt(i))) {
                if (i - start < 3) {
                    ms = ms * 10 + (s.charAt(i) - '0');
                }
                i++;
            }
            if (i == start) {
                return Long.MIN_VALUE;
            }
            for (int k = i - start; k < 3; k++) {
                ms *= 10;
            }
        }
        if (i >= n) {
            return Long.MIN_VALUE;
        }
        long offsetMin;
        char z = s.charAt(i);
        if ((z == 'Z' || z == 'z') && i + 1 == n) {
            offsetMin = 0;
        } else if ((z == '+' || z == '-') && i + 6 == n && s.charAt(i + 3) == ':') {
            int oh = digits(s, i + 1, 2), om = digits(s, i + 4, 2);
            if (oh < 0 || om < 0 || oh > 23 || om > 59) {
                return Long.MIN_VALUE;
            }
            offsetMin = (z == '+' ? 1 : -1) * (oh * 60L + om);
        } else {
            return Long.MIN_VALUE;
        }
        if (d > daysInMonth(y, mo)) {
            return Long.MIN_VALUE;
        }
        long days = daysFromCivil(y, mo, d);
        return days * DAY_MS + ((h * 60L + mi) * 60L + se) * 1000L + ms - offsetMin * 60_000L;
    }

    private static int digits(String s, int at, int len) {
        int v = 0;
        for (int i = at; i < at + len; i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') {
                return -1;
            }
            v = v * 10 + (c - '0');
        }
        return v;
    }

    private static int daysInMonth(int y, int m) {
        switch (m) {
            case 2:
                return (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ? 29 : 28;
            case 4: case 6: case 9: case 11:
                return 30;
            default:
                return 31;
        }
    }

    /** Howard Hinnant's days_from_civil. */
    static long daysFromCivil(long y, int m, int d) {
        y -= m <= 2 ? 1 : 0;
        long era = Math.floorDiv(y, 400);
        long yoe = y - era * 400;
        long doy = (153L * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146_097 + doe - 719_468;
    }

    /** {year, month, day} of a day number (days since 1970-01-01). */
    static long[] civilFromDays(long days) {
        long z = days + 719_468;
        long era = Math.floorDiv(z, 146_097);
        long doe = Math.floorMod(z, 146_097);
        long yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        long mp = (5 * doy + 2) / 153;
        long day = doy - (153 * mp + 2) / 5 + 1;
        long month = mp < 10 ? mp + 3 : mp - 9;
        long year = yoe + era * 400 + (month <= 2 ? 1 : 0);
        return new long[] {year, month, day};
    }

    /** YYYY-MM-DDTHH:MM:SS.mmmZ, as siklus writes timestamps. */
    static String format(long ms) {
        long days = Math.floorDiv(ms, DAY_MS);
        long inDay = Math.floorMod(ms, DAY_MS);
        long[] c = civilFromDays(days);
        if (c[0] < 0 || c[0] > 9999) {
            return java.time.Instant.ofEpochMilli(ms).toString();
        }
        char[] b = new char[24];
        put(b, 0, 4, c[0]);
        b[4] = '-';
        put(b, 5, 2, c[1]);
        b[7] = '-';
        put(b, 8, 2, c[2]);
        b[10] = 'T';
        put(b, 11, 2, inDay / 3_600_000);
        b[13] = ':';
        put(b, 14, 2, inDay / 60_000 % 60);
        b[16] = ':';
        put(b, 17, 2, inDay / 1000 % 60);
        b[19] = '.';
        put(b, 20, 3, inDay % 1000);
        b[23] = 'Z';
        return new String(b);
    }

    private static void put(char[] b, int at, int width, long v) {
        for (int i = width - 1; i >= 0; i--) {
            b[at + i] = (char) ('0' + v % 10);
            v /= 10;
        }
    }

    /** Start of the ISO week (Monday, UTC) holding t. */
    static long weekStart(long t) {
        long days = Math.floorDiv(t, DAY_MS);
        return (Math.floorDiv(days + 3, 7) * 7 - 3) * DAY_MS;
    }

    /** Start of the calendar month (UTC) holding t. */
    static long monthStart(long t) {
        long[] c = civilFromDays(Math.floorDiv(t, DAY_MS));
        return daysFromCivil(c[0], (int) c[1], 1) * DAY_MS;
    }
}
