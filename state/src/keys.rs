//! Key codec of the store.
//!
//! Every key starts with the layout version byte ([`LAYOUT_VERSION`]) and a
//! table byte, followed by table-specific fields. All integers are big-endian
//! so that RocksDB's bytewise ordering matches their numeric ordering:
//!
//! | table | key | value |
//! |-------|-----|-------|
//! | profile | `[1]['P'][partition u32][customer]` | profile bytes |
//! | timer | `[1]['T'][partition u32][deadline as ordered u64][customer]` | empty |
//! | seen | `[1]['E'][partition u32][customer len u16][customer][event hash u64]` | empty |
//! | offset | `[1]['O'][partition u32]` | next offset, `i64` BE |
//! | meta | `[1]['M'][partition u32][name]` | bytes |
//! | recent | `[1]['R'][partition u32][customer]` | the customer's last transitions |
//! | global | `[1]['G'][name]` | bytes |
//!
//! Timer deadlines are `i64` encoded with the sign bit flipped so that
//! negative deadlines sort before positive ones.

use crate::StateError;

/// Version of the key layout written by this crate (first byte of every key).
pub const LAYOUT_VERSION: u8 = 1;

/// Table byte of profiles.
pub const TABLE_PROFILE: u8 = b'P';
/// Table byte of the timer index.
pub const TABLE_TIMER: u8 = b'T';
/// Table byte of seen event ids (deduplication).
pub const TABLE_SEEN: u8 = b'E';
/// Table byte of consumed input offsets.
pub const TABLE_OFFSET: u8 = b'O';
/// Table byte of per-partition metadata blobs.
pub const TABLE_META: u8 = b'M';
/// Table byte of each customer's recent transitions (for the read API).
pub const TABLE_RECENT: u8 = b'R';
/// Table byte of global (store-wide) metadata.
pub const TABLE_GLOBAL: u8 = b'G';

/// Partition-scoped tables, in ascending key order.
pub const PARTITION_TABLES: [u8; 6] = [
    TABLE_SEEN,
    TABLE_META,
    TABLE_OFFSET,
    TABLE_PROFILE,
    TABLE_RECENT,
    TABLE_TIMER,
];

/// Longest customer id that fits the `u16` length prefix of seen keys.
pub const MAX_SEEN_CUSTOMER_LEN: usize = u16::MAX as usize;

/// A decoded key of the store layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A customer profile.
    Profile {
        /// Input partition.
        partition: u32,
        /// Customer id.
        customer: String,
    },
    /// A timer index entry.
    Timer {
        /// Input partition.
        partition: u32,
        /// Deadline (milliseconds, processor-defined clock).
        deadline: i64,
        /// Customer id.
        customer: String,
    },
    /// A seen event id of one customer.
    Seen {
        /// Input partition.
        partition: u32,
        /// Customer id.
        customer: String,
        /// Hash of the event id.
        event_hash: u64,
    },
    /// The next input offset to consume of a partition.
    Offset {
        /// Input partition.
        partition: u32,
    },
    /// A named metadata blob of a partition.
    Meta {
        /// Input partition.
        partition: u32,
        /// Blob name.
        name: String,
    },
    /// The recent transitions of a customer.
    Recent {
        /// Input partition.
        partition: u32,
        /// Customer id.
        customer: String,
    },
    /// A named store-wide metadata blob.
    Global {
        /// Blob name.
        name: String,
    },
}

impl Key {
    /// Encodes the key. Fails only for a seen key whose customer id is longer
    /// than [`MAX_SEEN_CUSTOMER_LEN`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        Ok(match self {
            Key::Profile {
                partition,
                customer,
            } => profile(*partition, customer),
            Key::Timer {
                partition,
                deadline,
                customer,
            } => timer(*partition, *deadline, customer),
            Key::Seen {
                partition,
                customer,
                event_hash,
            } => seen(*partition, customer, *event_hash)?,
            Key::Offset { partition } => offset(*partition),
            Key::Meta { partition, name } => meta(*partition, name),
            Key::Recent {
                partition,
                customer,
            } => recent(*partition, customer),
            Key::Global { name } => global(name),
        })
    }

    /// The partition of a partition-scoped key, `None` for global keys.
    pub fn partition(&self) -> Option<u32> {
        match self {
            Key::Profile { partition, .. }
            | Key::Timer { partition, .. }
            | Key::Seen { partition, .. }
            | Key::Offset { partition }
            | Key::Meta { partition, .. }
            | Key::Recent { partition, .. } => Some(*partition),
            Key::Global { .. } => None,
        }
    }
}

/// Maps an `i64` to a `u64` whose big-endian bytes sort like the `i64`.
pub fn order_i64(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// Inverse of [`order_i64`].
pub fn unorder_i64(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

/// `[version][table]`: prefix of every key of one table.
pub fn table_prefix(table: u8) -> Vec<u8> {
    vec![LAYOUT_VERSION, table]
}

/// `[version][table][partition]`: prefix of every key of one partition in a
/// partition-scoped table.
pub fn partition_prefix(table: u8, partition: u32) -> Vec<u8> {
    with_suffix(table, partition, 0)
}

fn with_suffix(table: u8, partition: u32, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + extra);
    k.push(LAYOUT_VERSION);
    k.push(table);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Key of a customer profile.
pub fn profile(partition: u32, customer: &str) -> Vec<u8> {
    let mut k = with_suffix(TABLE_PROFILE, partition, customer.len());
    k.extend_from_slice(customer.as_bytes());
    k
}

/// Prefix of every timer of a partition whose deadline is `deadline`; also
/// the exclusive upper bound of timers with a smaller deadline.
pub fn timer_deadline_prefix(partition: u32, deadline: i64) -> Vec<u8> {
    let mut k = with_suffix(TABLE_TIMER, partition, 8);
    k.extend_from_slice(&order_i64(deadline).to_be_bytes());
    k
}

/// Key of a timer index entry.
pub fn timer(partition: u32, deadline: i64, customer: &str) -> Vec<u8> {
    let mut k = timer_deadline_prefix(partition, deadline);
    k.extend_from_slice(customer.as_bytes());
    k
}

/// Prefix of every seen entry of one customer. Fails if the customer id is
/// longer than [`MAX_SEEN_CUSTOMER_LEN`] bytes.
pub fn seen_customer_prefix(partition: u32, customer: &str) -> Result<Vec<u8>, StateError> {
    let len = u16::try_from(customer.len()).map_err(|_| {
        StateError::Layout(format!(
            "customer id of {} bytes exceeds the {MAX_SEEN_CUSTOMER_LEN}-byte limit of seen keys",
            customer.len()
        ))
    })?;
    let mut k = with_suffix(TABLE_SEEN, partition, 2 + customer.len() + 8);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(customer.as_bytes());
    Ok(k)
}

/// Key of a seen event id. Fails if the customer id is longer than
/// [`MAX_SEEN_CUSTOMER_LEN`] bytes.
pub fn seen(partition: u32, customer: &str, event_hash: u64) -> Result<Vec<u8>, StateError> {
    let mut k = seen_customer_prefix(partition, customer)?;
    k.extend_from_slice(&event_hash.to_be_bytes());
    Ok(k)
}

/// Key of the input offset of a partition.
pub fn offset(partition: u32) -> Vec<u8> {
    partition_prefix(TABLE_OFFSET, partition)
}

/// Key of a named metadata blob of a partition.
pub fn meta(partition: u32, name: &str) -> Vec<u8> {
    let mut k = with_suffix(TABLE_META, partition, name.len());
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key of the recent transitions of a customer.
pub fn recent(partition: u32, customer: &str) -> Vec<u8> {
    let mut k = with_suffix(TABLE_RECENT, partition, customer.len());
    k.extend_from_slice(customer.as_bytes());
    k
}

/// Key of a named global metadata blob.
pub fn global(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + name.len());
    k.push(LAYOUT_VERSION);
    k.push(TABLE_GLOBAL);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Smallest byte string greater than every string starting with `prefix`
/// (the prefix with trailing `0xFF` bytes removed and its last byte
/// incremented), or `None` if `prefix` is empty or all `0xFF`.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Exclusive upper bound of the keys starting with `prefix`. Every key prefix
/// of this layout starts with [`LAYOUT_VERSION`] (< `0xFF`), so a successor
/// always exists; the fallback only keeps this total.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    prefix_successor(prefix).unwrap_or_else(|| vec![u8::MAX; prefix.len() + 1])
}

fn corrupt(key: &[u8], what: &str) -> StateError {
    StateError::Corrupt(format!("key {}: {what}", hex(key)))
}

/// Lower-case hex rendering of bytes (for error messages).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn utf8(key: &[u8], bytes: &[u8], what: &str) -> Result<String, StateError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(key, &format!("{what} is not UTF-8")))
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// Decodes a key of the layout; anything else is [`StateError::Corrupt`]
/// (or [`StateError::Layout`] for a different layout version).
pub fn decode(key: &[u8]) -> Result<Key, StateError> {
    let (&version, rest) = key.split_first().ok_or_else(|| corrupt(key, "empty key"))?;
    if version != LAYOUT_VERSION {
        return Err(StateError::Layout(format!(
            "key {} has layout version {version}, expected {LAYOUT_VERSION}",
            hex(key)
        )));
    }
    let (&table, rest) = rest
        .split_first()
        .ok_or_else(|| corrupt(key, "missing table byte"))?;
    if table == TABLE_GLOBAL {
        return Ok(Key::Global {
            name: utf8(key, rest, "global name")?,
        });
    }
    let partition = be_u32(rest).ok_or_else(|| corrupt(key, "truncated partition"))?;
    let rest = &rest[4..];
    match table {
        TABLE_PROFILE => Ok(Key::Profile {
            partition,
            customer: utf8(key, rest, "customer id")?,
        }),
        TABLE_TIMER => {
            let deadline = be_u64(rest).ok_or_else(|| corrupt(key, "truncated deadline"))?;
            Ok(Key::Timer {
                partition,
                deadline: unorder_i64(deadline),
                customer: utf8(key, &rest[8..], "customer id")?,
            })
        }
        TABLE_SEEN => {
            let len = rest
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .ok_or_else(|| corrupt(key, "truncated customer length"))?;
            let rest = &rest[2..];
            if rest.len() != len + 8 {
                return Err(corrupt(key, "seen key has the wrong length"));
            }
            let customer = utf8(key, &rest[..len], "customer id")?;
            let event_hash =
                be_u64(&rest[len..]).ok_or_else(|| corrupt(key, "truncated event hash"))?;
            Ok(Key::Seen {
                partition,
                customer,
                event_hash,
            })
        }
        TABLE_OFFSET => {
            if !rest.is_empty() {
                return Err(corrupt(key, "offset key has trailing bytes"));
            }
            Ok(Key::Offset { partition })
        }
        TABLE_META => Ok(Key::Meta {
            partition,
            name: utf8(key, rest, "meta name")?,
        }),
        TABLE_RECENT => Ok(Key::Recent {
            partition,
            customer: utf8(key, rest, "customer id")?,
        }),
        other => Err(corrupt(key, &format!("unknown table byte 0x{other:02x}"))),
    }
}

/// Decodes the customer id of a profile key of the given partition prefix.
pub(crate) fn customer_suffix(key: &[u8], skip: usize) -> Result<String, StateError> {
    let rest = key
        .get(skip..)
        .ok_or_else(|| corrupt(key, "key shorter than its prefix"))?;
    utf8(key, rest, "customer id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_key_in(
        partitions: impl Strategy<Value = u32> + Clone + 'static,
        text: &'static str,
        num: impl Strategy<Value = i64> + Clone + 'static,
    ) -> impl Strategy<Value = Key> {
        let p = partitions;
        prop_oneof![
            (p.clone(), text).prop_map(|(partition, customer)| Key::Profile {
                partition,
                customer
            }),
            (p.clone(), num.clone(), text).prop_map(|(partition, deadline, customer)| {
                Key::Timer {
                    partition,
                    deadline,
                    customer,
                }
            }),
            (p.clone(), text, num.prop_map(|n| n as u64)).prop_map(
                |(partition, customer, event_hash)| {
                    Key::Seen {
                        partition,
                        customer,
                        event_hash,
                    }
                }
            ),
            p.clone().prop_map(|partition| Key::Offset { partition }),
            (p.clone(), text).prop_map(|(partition, name)| Key::Meta { partition, name }),
            (p, text).prop_map(|(partition, customer)| Key::Recent {
                partition,
                customer
            }),
            text.prop_map(|name| Key::Global { name }),
        ]
    }

    fn arb_key() -> impl Strategy<Value = Key> {
        arb_key_in(any::<u32>(), "\\PC{0,12}", any::<i64>())
    }

    /// Tiny domain so that equal partitions, equal customers and customers
    /// that are prefixes of one another (e.g. "ab" / "abc") are frequent.
    fn arb_small_key() -> impl Strategy<Value = Key> {
        arb_key_in(
            prop_oneof![Just(0u32), Just(1), Just(u32::MAX)],
            "[ab\\x00\\u{ff}]{0,3}",
            prop_oneof![Just(0i64), Just(1), Just(-1), Just(i64::MIN)],
        )
    }

    proptest! {
        #[test]
        fn round_trip(key in arb_key()) {
            let bytes = key.encode().unwrap();
            prop_assert_eq!(bytes[0], LAYOUT_VERSION);
            prop_assert_eq!(decode(&bytes).unwrap(), key);
        }

        #[test]
        fn distinct_keys_never_collide(a in arb_key(), b in arb_key()) {
            let (ea, eb) = (a.encode().unwrap(), b.encode().unwrap());
            prop_assert_eq!(a == b, ea == eb);
        }

        #[test]
        fn near_keys_never_collide(a in arb_small_key(), b in arb_small_key()) {
            let (ea, eb) = (a.encode().unwrap(), b.encode().unwrap());
            prop_assert_eq!(a == b, ea == eb);
            prop_assert_eq!(decode(&ea).unwrap(), a);
        }

        #[test]
        fn order_i64_preserves_order(a in any::<i64>(), b in any::<i64>()) {
            prop_assert_eq!(a.cmp(&b), order_i64(a).to_be_bytes().cmp(&order_i64(b).to_be_bytes()));
            prop_assert_eq!(unorder_i64(order_i64(a)), a);
        }

        #[test]
        fn timers_sort_by_deadline_then_customer(
            p in any::<u32>(),
            da in any::<i64>(), db in any::<i64>(),
            ca in "[a-z]{0,6}", cb in "[a-z]{0,6}",
        ) {
            let ka = timer(p, da, &ca);
            let kb = timer(p, db, &cb);
            prop_assert_eq!(ka.cmp(&kb), (da, ca.as_bytes()).cmp(&(db, cb.as_bytes())));
        }

        #[test]
        fn timers_of_a_partition_stay_inside_its_prefix(p in any::<u32>(), d in any::<i64>(), c in "\\PC{0,8}") {
            let k = timer(p, d, &c);
            let lo = partition_prefix(TABLE_TIMER, p);
            let hi = prefix_end(&lo);
            prop_assert!(k >= lo && k < hi);
            // strict `before` bound: a timer is below the bound iff deadline < before
            prop_assert!(k < timer_deadline_prefix(p, d.saturating_add(1)) || d == i64::MAX);
            prop_assert!(k >= timer_deadline_prefix(p, d));
        }

        #[test]
        fn seen_prefix_is_customer_exact(
            p in any::<u32>(),
            a in "[a-c]{0,4}", b in "[a-c]{0,4}",
            h in any::<u64>(),
        ) {
            let prefix = seen_customer_prefix(p, &a).unwrap();
            let end = prefix_end(&prefix);
            let k = seen(p, &b, h).unwrap();
            prop_assert_eq!(k >= prefix && k < end, a == b);
        }

        #[test]
        fn successor_bounds_every_extension(prefix in proptest::collection::vec(any::<u8>(), 1..6), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut ext = prefix.clone();
            ext.extend_from_slice(&tail);
            match prefix_successor(&prefix) {
                Some(s) => {
                    prop_assert!(ext < s);
                    prop_assert!(prefix < s);
                    prop_assert!(!s.starts_with(&prefix));
                }
                None => prop_assert!(prefix.iter().all(|&b| b == u8::MAX)),
            }
        }
    }

    #[test]
    fn negative_deadlines_sort_first() {
        let keys = [
            timer(3, i64::MIN, "z"),
            timer(3, -1, "a"),
            timer(3, 0, "a"),
            timer(3, 1, "a"),
            timer(3, i64::MAX, "a"),
        ];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn prefix_customers_do_not_collide() {
        let ab = seen(0, "ab", 7).unwrap();
        let abc_prefix = seen_customer_prefix(0, "abc").unwrap();
        assert!(!ab.starts_with(&abc_prefix));
        let ab_prefix = seen_customer_prefix(0, "ab").unwrap();
        let abc = seen(0, "abc", 7).unwrap();
        assert!(!(abc >= ab_prefix && abc < prefix_end(&ab_prefix)));
        assert_ne!(profile(0, "ab"), profile(0, "abc"));
    }

    #[test]
    fn successor_carries() {
        assert_eq!(prefix_successor(&[1, 2, 0xFF]), Some(vec![1, 3]));
        assert_eq!(prefix_successor(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF]), None);
        assert_eq!(prefix_successor(&[]), None);
        assert_eq!(
            prefix_end(&partition_prefix(TABLE_PROFILE, u32::MAX)),
            vec![LAYOUT_VERSION, TABLE_PROFILE + 1]
        );
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(matches!(decode(&[]), Err(StateError::Corrupt(_))));
        assert!(matches!(decode(&[2, b'P']), Err(StateError::Layout(_))));
        assert!(matches!(
            decode(&[1, b'Z', 0, 0, 0, 0]),
            Err(StateError::Corrupt(_))
        ));
        assert!(matches!(
            decode(&[1, b'P', 0, 0]),
            Err(StateError::Corrupt(_))
        ));
        assert!(matches!(
            decode(&[1, b'O', 0, 0, 0, 0, 9]),
            Err(StateError::Corrupt(_))
        ));
        let mut bad = seen(0, "ab", 1).unwrap();
        bad.pop();
        assert!(matches!(decode(&bad), Err(StateError::Corrupt(_))));
        assert!(matches!(
            decode(&[1, b'P', 0, 0, 0, 0, 0xFF]),
            Err(StateError::Corrupt(_))
        ));
        assert!(seen(0, &"x".repeat(MAX_SEEN_CUSTOMER_LEN + 1), 0).is_err());
    }
}
