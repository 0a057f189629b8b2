//! Which input partition holds a customer: the partitioner of the clients
//! that produce the input, so the read API can name the instance that owns
//! a customer without asking every instance.

use serde::{Deserialize, Serialize};

/// The key partitioner of the producers of the input topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPartitioner {
    /// murmur2 of the key, positive, modulo the partition count: the default
    /// of the Java clients and Kafka Streams (librdkafka: `murmur2_random`).
    #[default]
    Murmur2,
    /// CRC-32 of the key modulo the partition count: librdkafka's default
    /// (`consistent_random`, `consistent`).
    Crc32,
}

impl KeyPartitioner {
    /// The partition of `key` among `partitions` (at least 1).
    pub fn partition(self, key: &[u8], partitions: u32) -> u32 {
        let n = partitions.max(1);
        match self {
            KeyPartitioner::Murmur2 => (murmur2(key) & 0x7fff_ffff) % n,
            KeyPartitioner::Crc32 => crc32(key) % n,
        }
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as u32.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// CRC-32 (IEEE 802.3, as zlib and librdkafka compute it).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // The vectors of Kafka's own UtilsTest.
        for (key, want) in [
            ("21", -973932308i32),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn partitions_are_in_range() {
        for p in [KeyPartitioner::Murmur2, KeyPartitioner::Crc32] {
            for n in 1..20u32 {
                for key in ["", "a", "cust-000001", "ünïcode"] {
                    assert!(p.partition(key.as_bytes(), n) < n);
                }
            }
            assert_eq!(p.partition(b"x", 0), 0);
        }
    }
}
