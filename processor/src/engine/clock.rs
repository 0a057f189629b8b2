//! The event-time clock of one partition, and the rule that keeps a single
//! record from dragging it.
//!
//! A record whose event time lies more than `max_time_jump_ms` ahead of the
//! partition's confirmed time (or the first record of a partition) is
//! *held*: it is applied to its own customer, but the partition's clock,
//! and so the watermark, timers and windows of every other customer, do not
//! move to its time until a later record confirms it:
//!
//! - with a confirmed time, a later record no more than `max_time_jump_ms`
//!   before the held time confirms it (time really moved on);
//! - for the first records of a partition, a later record within
//!   `max_time_jump_ms` of the held time, on either side.
//!
//! A record that does not confirm the held time takes its place. So a
//! poison record far in the future (a typo of the year) or far in the past
//! (a first record dated 1970) is never confirmed by the real records that
//! follow it, and changes no other customer's transitions; a partition
//! whose real time jumps (after a quiet month) follows one record later.

use serde::{Deserialize, Serialize};

/// Event-time clock of one partition, persisted with its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Clock {
    /// Largest confirmed event time.
    pub max_event_time: Option<i64>,
    /// Current watermark (never goes backwards).
    pub watermark: Option<i64>,
    /// An event time held until a later record confirms it.
    pub pending: Option<i64>,
}

/// The first byte of a version-2 clock value. Version 1 (no `pending`) was
/// the bare postcard encoding, which starts with an `Option` tag (0 or 1).
const CLOCK_V2: u8 = 0xC2;

/// The clock as version 1 stored it.
#[derive(Deserialize)]
struct ClockV1 {
    max_event_time: Option<i64>,
    watermark: Option<i64>,
}

impl Clock {
    /// Takes in a record's event time; returns whether the clock changed.
    pub fn observe(&mut self, t: i64, max_jump: i64) -> bool {
        if let Some(m) = self.max_event_time {
            if t <= m {
                return false;
            }
            if t.saturating_sub(m) <= max_jump {
                self.max_event_time = Some(t);
                if self.pending.is_some_and(|p| p <= t) {
                    self.pending = None;
                }
                return true;
            }
        }
        // A jump ahead, or the first event time of the partition.
        let confirms = |p: i64| match self.max_event_time {
            Some(_) => t >= p.saturating_sub(max_jump),
            None => t.abs_diff(p) <= max_jump.unsigned_abs(),
        };
        match self.pending {
            Some(p) if confirms(p) => {
                self.pending = None;
                let m = self.max_event_time.map_or(p, |m| m.max(p));
                self.max_event_time = Some(m);
                if t > m {
                    if t.saturating_sub(m) <= max_jump {
                        self.max_event_time = Some(t);
                    } else {
                        self.pending = Some(t);
                    }
                }
            }
            _ => self.pending = Some(t),
        }
        true
    }

    /// The stored form (version 2).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = vec![CLOCK_V2];
        out.extend(postcard::to_stdvec(self).map_err(|e| e.to_string())?);
        Ok(out)
    }

    /// Reads a stored clock of version 2, or of version 1 (before held
    /// times existed).
    pub fn decode(bytes: &[u8]) -> Result<Clock, String> {
        match bytes.split_first() {
            Some((&CLOCK_V2, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
            _ => {
                let v1: ClockV1 = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
                Ok(Clock {
                    max_event_time: v1.max_event_time,
                    watermark: v1.watermark,
                    pending: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;
    const J: i64 = 7 * DAY;

    fn run(times: &[i64]) -> Clock {
        let mut c = Clock::default();
        for t in times {
            c.observe(*t, J);
        }
        c
    }

    #[test]
    fn dense_time_moves_at_once() {
        let c = run(&[0, DAY, 2 * DAY, 2 * DAY - 5, 3 * DAY]);
        assert_eq!(c.max_event_time, Some(3 * DAY));
        assert_eq!(c.pending, None);
    }

    #[test]
    fn a_far_future_record_in_the_middle_is_never_confirmed() {
        let poison = 10 * DAY + 273 * DAY;
        let c = run(&[0, DAY, 2 * DAY, poison, 3 * DAY, 4 * DAY, 5 * DAY]);
        assert_eq!(c.max_event_time, Some(5 * DAY));
        // Real records after it do not confirm it; it stays held (or is
        // replaced by a real jump), never the clock.
        assert!(c.max_event_time < Some(poison));
    }

    #[test]
    fn a_first_record_from_1970_is_replaced_by_the_real_time() {
        let now = 19_723 * DAY; // 2024
        let c = run(&[0, now, now + 1000, now + 2000]);
        assert_eq!(c.max_event_time, Some(now + 2000));
        assert_eq!(c.pending, None);
    }

    #[test]
    fn a_real_jump_is_confirmed_by_the_next_record() {
        let c = run(&[0, 1, 40 * DAY]);
        assert_eq!(c.max_event_time, Some(1));
        assert_eq!(c.pending, Some(40 * DAY));
        let c = run(&[0, 1, 40 * DAY, 40 * DAY + 5]);
        assert_eq!(c.max_event_time, Some(40 * DAY + 5));
        assert_eq!(c.pending, None);
    }

    #[test]
    fn version_1_values_are_read() {
        #[derive(Serialize)]
        struct V1 {
            max_event_time: Option<i64>,
            watermark: Option<i64>,
        }
        let old = postcard::to_stdvec(&V1 {
            max_event_time: Some(42),
            watermark: Some(7),
        })
        .unwrap();
        let c = Clock::decode(&old).unwrap();
        assert_eq!(
            c,
            Clock {
                max_event_time: Some(42),
                watermark: Some(7),
                pending: None
            }
        );
        let none = postcard::to_stdvec(&V1 {
            max_event_time: None,
            watermark: None,
        })
        .unwrap();
        assert_eq!(Clock::decode(&none).unwrap(), Clock::default());
    }

    proptest! {
        #[test]
        fn encoding_round_trips(m in proptest::option::of(any::<i64>()), w in proptest::option::of(any::<i64>()), p in proptest::option::of(any::<i64>())) {
            let c = Clock { max_event_time: m, watermark: w, pending: p };
            prop_assert_eq!(Clock::decode(&c.encode().unwrap()).unwrap(), c);
        }

        /// The confirmed time never goes back, and one extra record far
        /// from the rest never becomes it.
        #[test]
        fn one_poison_record_never_becomes_the_time(
            steps in proptest::collection::vec(0i64..DAY, 2..60),
            at in 0usize..60,
            poison in prop_oneof![Just(-50 * 365 * DAY), Just(300 * DAY), Just(80 * 365 * DAY)],
        ) {
            let mut times = Vec::new();
            let mut t = 1_000 * DAY;
            for s in &steps {
                t += s;
                times.push(t);
            }
            let clean = run(&times);
            let at = at.min(times.len());
            let mut with = times.clone();
            // Far in the past (before 1970), or far ahead of the last record.
            let wild = if poison < 0 { poison } else { t + poison };
            with.insert(at, wild);
            let dirty = run(&with);
            prop_assert!(dirty.max_event_time <= clean.max_event_time.map(|m| m.max(0)));
            let mut last = None;
            let mut c = Clock::default();
            for x in &with {
                c.observe(*x, J);
                prop_assert!(c.max_event_time >= last);
                last = c.max_event_time;
            }
        }
    }
}
