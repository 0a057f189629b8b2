//! Event-time calendar arithmetic in UTC: days, ISO weeks (Monday) and calendar
//! months, all as epoch milliseconds. Pure: no wall clock anywhere.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// The window sizes of the aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// A UTC calendar day.
    Day,
    /// An ISO week, starting Monday 00:00 UTC.
    Week,
    /// A UTC calendar month.
    Month,
}

impl Granularity {
    /// Every granularity, in a fixed order.
    pub const ALL: [Granularity; 3] = [Granularity::Day, Granularity::Week, Granularity::Month];

    /// The lowercase name used in keys and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Granularity::Day),
            "week" => Some(Granularity::Week),
            "month" => Some(Granularity::Month),
            _ => None,
        }
    }

    /// Start (epoch ms) of the window that contains `t`.
    pub fn start(self, t: i64) -> i64 {
        match self {
            Granularity::Day => t.div_euclid(DAY_MS) * DAY_MS,
            Granularity::Week => {
                // 1970-01-01 was a Thursday; Monday-based weeks start 3 days earlier.
                let days = t.div_euclid(DAY_MS);
                ((days + 3).div_euclid(7) * 7 - 3) * DAY_MS
            }
            Granularity::Month => {
                let (y, m) = year_month(t);
                month_start_ms(y, m)
            }
        }
    }

    /// Start of the window after the one that starts at `start`.
    pub fn next(self, start: i64) -> i64 {
        match self {
            Granularity::Day => start + DAY_MS,
            Granularity::Week => start + 7 * DAY_MS,
            Granularity::Month => {
                let (y, m) = year_month(start);
                if m == 12 {
                    month_start_ms(y + 1, 1)
                } else {
                    month_start_ms(y, m + 1)
                }
            }
        }
    }

    /// Start of the window before the one that starts at `start`.
    pub fn prev(self, start: i64) -> i64 {
        self.start(start - 1)
    }

    /// End (exclusive, epoch ms) of the window that starts at `start`.
    pub fn end(self, start: i64) -> i64 {
        self.next(start)
    }

    /// Number of whole windows from the window starting at `from` to the one
    /// starting at `to` (both window starts; `to >= from`).
    pub fn offset(self, from: i64, to: i64) -> i64 {
        match self {
            Granularity::Day => (to - from).div_euclid(DAY_MS),
            Granularity::Week => (to - from).div_euclid(7 * DAY_MS),
            Granularity::Month => {
                let (y1, m1) = year_month(from);
                let (y2, m2) = year_month(to);
                (y2 as i64 - y1 as i64) * 12 + (m2 as i64 - m1 as i64)
            }
        }
    }
}

fn year_month(t: i64) -> (i32, u32) {
    let days = t.div_euclid(DAY_MS);
    let date =
        NaiveDate::from_num_days_from_ce_opt((days + 719_163) as i32).unwrap_or(NaiveDate::MIN);
    (date.year(), date.month())
}

fn month_start_ms(y: i32, m: u32) -> i64 {
    NaiveDate::from_ymd_opt(y, m, 1)
        .map(|d| (d.num_days_from_ce() as i64 - 719_163) * DAY_MS)
        .unwrap_or(i64::MIN / 2)
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339(ms: i64) -> String {
    let mut buf = [0u8; 24];
    match write_rfc3339(ms, &mut buf) {
        Some(s) => s.to_string(),
        None => match Utc.timestamp_millis_opt(ms).single() {
            Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
            None => ms.to_string(),
        },
    }
}

/// The common shape of event times, `YYYY-MM-DDTHH:MM:SSZ` or
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, parsed without chrono (it showed in
/// profiles of JSON decoding); `None` for anything else, which chrono then
/// reads (other offsets, other fractions, leap seconds, bad dates).
fn parse_rfc3339_utc_fast(b: &[u8]) -> Option<i64> {
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        b.get(r)?.iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let millis = match b.len() {
        20 if b[19] == b'Z' => 0,
        24 if b[19] == b'.' && b[23] == b'Z' => digits(20..23)?,
        _ => return None,
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hh, mm, ss) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > month_days || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // Howard Hinnant's days-from-civil.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * DAY_MS + hh * 3_600_000 + mm * 60_000 + ss * 1000 + millis)
}

/// Formats `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` into `buf` without allocating;
/// `None` outside years 0000..=9999 (use [`format_rfc3339`] there).
pub fn write_rfc3339(ms: i64, buf: &mut [u8; 24]) -> Option<&str> {
    std::str::from_utf8(write_rfc3339_bytes(ms, buf)?).ok()
}

/// [`write_rfc3339`] as bytes (ASCII digits and separators), for writers
/// that need no `str`.
pub fn write_rfc3339_bytes(ms: i64, buf: &mut [u8; 24]) -> Option<&[u8; 24]> {
    // Howard Hinnant's civil-from-days.
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let put = |buf: &mut [u8; 24], at: usize, width: usize, mut v: i64| {
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(buf, 0, 4, year);
    buf[4] = b'-';
    put(buf, 5, 2, month);
    buf[7] = b'-';
    put(buf, 8, 2, day);
    buf[10] = b'T';
    put(buf, 11, 2, in_day / 3_600_000);
    buf[13] = b':';
    put(buf, 14, 2, in_day / 60_000 % 60);
    buf[16] = b':';
    put(buf, 17, 2, in_day / 1000 % 60);
    buf[19] = b'.';
    put(buf, 20, 3, in_day % 1000);
    buf[23] = b'Z';
    Some(buf)
}

/// Parses RFC 3339 (any offset) into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    if let Some(ms) = parse_rfc3339_utc_fast(s.as_bytes()) {
        return Some(ms);
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The allocation-free formatter agrees with chrono over years 0..=9999.
        #[test]
        fn rfc3339_writer_matches_chrono(ms in -62_167_219_200_000i64..253_402_300_800_000i64) {
            let mut buf = [0u8; 24];
            let want = Utc
                .timestamp_millis_opt(ms)
                .single()
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            proptest::prop_assert_eq!(write_rfc3339(ms, &mut buf), Some(want.as_str()));
        }
    }

    fn chrono_ms(s: &str) -> Option<i64> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp_millis())
    }

    proptest::proptest! {
        /// The fast parser reads what chrono reads, for every instant of
        /// four-digit years written in both of its shapes.
        #[test]
        fn the_fast_rfc3339_parser_agrees_with_chrono(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let mut buf = [0u8; 24];
            let text = write_rfc3339(ms, &mut buf).unwrap().to_string();
            proptest::prop_assert_eq!(parse_rfc3339_utc_fast(text.as_bytes()), Some(ms));
            let whole = format!("{}Z", &text[..19]);
            proptest::prop_assert_eq!(parse_rfc3339_utc_fast(whole.as_bytes()), chrono_ms(&whole));
        }

        /// On any other text it either declines or agrees with chrono.
        #[test]
        fn the_fast_rfc3339_parser_never_disagrees(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,4})?(Z|z|[+-][0-9]{2}:[0-9]{2})") {
            if let Some(fast) = parse_rfc3339_utc_fast(s.as_bytes()) {
                proptest::prop_assert_eq!(Some(fast), chrono_ms(&s));
            }
            proptest::prop_assert_eq!(parse_rfc3339(&s), chrono_ms(&s));
        }
    }

    #[test]
    fn the_fast_rfc3339_parser_declines_what_it_does_not_check() {
        for s in [
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2016-12-31T23:59:60Z",
            "2024-01-01T00:00:00+01:00",
            "2024-01-01t00:00:00Z",
            "2024-01-01T00:00:00.1Z",
        ] {
            assert_eq!(parse_rfc3339_utc_fast(s.as_bytes()), None, "{s}");
        }
        assert_eq!(
            ms("2024-02-29T12:00:00.250Z"),
            chrono_ms("2024-02-29T12:00:00.250Z").unwrap()
        );
    }

    #[test]
    fn rfc3339_outside_four_digit_years_falls_back() {
        let mut buf = [0u8; 24];
        assert_eq!(write_rfc3339(-62_167_219_200_001, &mut buf), None);
        assert_eq!(write_rfc3339(253_402_300_800_000, &mut buf), None);
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    fn ms(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn week_starts_on_monday() {
        // 2024-01-03 is a Wednesday; its ISO week starts Monday 2024-01-01.
        assert_eq!(
            Granularity::Week.start(ms("2024-01-03T12:00:00Z")),
            ms("2024-01-01T00:00:00Z")
        );
        // A Sunday belongs to the week that started six days before.
        assert_eq!(
            Granularity::Week.start(ms("2024-01-07T23:59:59Z")),
            ms("2024-01-01T00:00:00Z")
        );
        assert_eq!(
            Granularity::Week.start(ms("1970-01-01T00:00:00Z")),
            ms("1969-12-29T00:00:00Z")
        );
    }

    #[test]
    fn months_roll_over_years() {
        let dec = Granularity::Month.start(ms("2023-12-31T23:00:00Z"));
        assert_eq!(dec, ms("2023-12-01T00:00:00Z"));
        assert_eq!(Granularity::Month.next(dec), ms("2024-01-01T00:00:00Z"));
        assert_eq!(
            Granularity::Month.prev(ms("2024-03-01T00:00:00Z")),
            ms("2024-02-01T00:00:00Z")
        );
        assert_eq!(
            Granularity::Month.offset(dec, ms("2024-03-01T00:00:00Z")),
            3
        );
    }

    #[test]
    fn days_before_epoch() {
        assert_eq!(Granularity::Day.start(-1), -DAY_MS);
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}

/// Serde for an epoch-millis `i64` as an RFC 3339 string; also reads epoch
/// millis (a JSON number), for input written either way.
pub mod rfc3339 {
    use serde::{de, Deserializer, Serializer};

    /// Writes RFC 3339 UTC.
    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        match super::write_rfc3339(*ms, &mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.serialize_str(&super::format_rfc3339(*ms)),
        }
    }

    /// Reads RFC 3339 or epoch millis.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        d.deserialize_any(Visitor)
    }

    pub(super) struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp or epoch milliseconds")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom("epoch milliseconds out of range"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                Ok(v as i64)
            } else {
                Err(E::custom("epoch milliseconds must be an integer"))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            if let Some(ms) = super::parse_rfc3339(v) {
                return Ok(ms);
            }
            v.parse::<i64>()
                .map_err(|_| E::custom(format!("cannot parse timestamp {v:?}")))
        }
    }
}

/// Like [`rfc3339`], for `Option<i64>` (null stays null).
pub mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes RFC 3339 UTC or null.
    pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => super::rfc3339::serialize(ms, s),
            None => s.serialize_none(),
        }
    }

    /// Reads RFC 3339, epoch millis or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::rfc3339")] i64);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}
