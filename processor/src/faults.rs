//! Fault injection for the tests: failures that real disks and brokers
//! produce rarely, made to happen on purpose at a chosen moment.
//!
//! Built only with the `fault-injection` cargo feature (the end-to-end test
//! crate turns it on); without it every hook is a constant `false` and the
//! release binary carries none of them. Each hook reads its environment
//! variable once.

/// `SIKLUS_FAULT_STATE_WRITE_FAILS_AT=N`: the N-th state write of the
/// process (a step's RocksDB WriteBatch, counted from 1) fails as a disk
/// error would.
pub const STATE_WRITE_FAILS_AT: &str = "SIKLUS_FAULT_STATE_WRITE_FAILS_AT";

/// `SIKLUS_FAULT_REVOKE_DELIVERY_FAILS=N`: the delivery of the step in
/// flight during the first N revokes that find one (with records) fails,
/// as a broker that times out would make it.
pub const REVOKE_DELIVERY_FAILS: &str = "SIKLUS_FAULT_REVOKE_DELIVERY_FAILS";

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    fn setting(var: &'static str, cell: &'static OnceLock<Option<u64>>) -> Option<u64> {
        *cell.get_or_init(|| std::env::var(var).ok().and_then(|v| v.parse().ok()))
    }

    pub fn state_write_fails() -> bool {
        static AT: OnceLock<Option<u64>> = OnceLock::new();
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let Some(at) = setting(super::STATE_WRITE_FAILS_AT, &AT) else {
            return false;
        };
        WRITES.fetch_add(1, Ordering::SeqCst) + 1 == at
    }

    pub fn revoke_delivery_fails() -> bool {
        static N: OnceLock<Option<u64>> = OnceLock::new();
        static REVOKES: AtomicU64 = AtomicU64::new(0);
        let Some(n) = setting(super::REVOKE_DELIVERY_FAILS, &N) else {
            return false;
        };
        REVOKES.fetch_add(1, Ordering::SeqCst) < n
    }
}

/// Whether the delivery of the step in flight during this revoke is to fail
/// (see [`REVOKE_DELIVERY_FAILS`]).
#[cfg(feature = "fault-injection")]
pub fn revoke_delivery_fails() -> bool {
    imp::revoke_delivery_fails()
}

/// Never, in a build without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn revoke_delivery_fails() -> bool {
    false
}

/// Whether this state write is to fail (see [`STATE_WRITE_FAILS_AT`]).
#[cfg(feature = "fault-injection")]
pub fn state_write_fails() -> bool {
    imp::state_write_fails()
}

/// Whether this state write is to fail: never, in a build without the
/// `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn state_write_fails() -> bool {
    false
}
