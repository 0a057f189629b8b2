//! Process metrics: lock-free counters shared by the runtime and the HTTP
//! endpoint, rendered in the Prometheus text format. Labels never carry
//! customer ids.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::engine::Counters;

/// Counters and gauges of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records read from the input topic.
    pub events_in: AtomicU64,
    /// Events applied to profiles.
    pub events_applied: AtomicU64,
    /// Transitions delivered.
    pub transitions_out: AtomicU64,
    /// Aggregates delivered.
    pub aggregates_out: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// Duplicate event ids ignored.
    pub duplicates: AtomicU64,
    /// Events older than their partition's watermark.
    pub late_events: AtomicU64,
    /// Events of unknown types.
    pub unknown_types: AtomicU64,
    /// Records skipped as already applied (after a restart).
    pub skipped_offsets: AtomicU64,
    /// Timers fired by the watermark.
    pub timers_fired: AtomicU64,
    /// Steps whose outputs could not be delivered and were redone.
    pub failed_steps: AtomicU64,
    /// Consumer errors.
    pub consumer_errors: AtomicU64,
    /// Customers erased.
    pub erasures: AtomicU64,
    /// Input offsets skipped by the broker between two records of a partition.
    pub offset_gaps: AtomicU64,
    /// Schema Registry calls that failed (unreachable, 5xx) and were retried.
    pub registry_retries: AtomicU64,
    /// Input partitions assigned to this instance.
    pub assigned: AtomicU64,
    /// Whether the processor is consuming (for `/readyz`).
    pub ready: AtomicBool,
}

impl Metrics {
    /// Copies the engine's counters into the gauges.
    pub fn set_counters(&self, c: &Counters) {
        self.events_applied.store(c.events, Ordering::Relaxed);
        self.dead_letters.store(c.dead_letters, Ordering::Relaxed);
        self.duplicates.store(c.duplicates, Ordering::Relaxed);
        self.late_events.store(c.late_events, Ordering::Relaxed);
        self.unknown_types.store(c.unknown_types, Ordering::Relaxed);
        self.skipped_offsets
            .store(c.skipped_offsets, Ordering::Relaxed);
        self.timers_fired.store(c.timers_fired, Ordering::Relaxed);
        self.erasures.store(c.erasures, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let rows: [(&str, &str, &AtomicU64, &str); 16] = [
            ("siklus_input_offset_gaps_total", "Input offsets never delivered between two records (transaction markers or a broker fault)", &self.offset_gaps, "counter"),
            ("siklus_records_in_total", "Records read from the input topic", &self.events_in, "counter"),
            ("siklus_events_applied_total", "Events applied to profiles", &self.events_applied, "counter"),
            ("siklus_transitions_out_total", "Stage transitions delivered", &self.transitions_out, "counter"),
            ("siklus_aggregates_out_total", "Aggregates delivered", &self.aggregates_out, "counter"),
            ("siklus_dead_letters_total", "Records sent to the dead-letter topic", &self.dead_letters, "counter"),
            ("siklus_duplicates_total", "Duplicate event ids ignored", &self.duplicates, "counter"),
            ("siklus_late_events_total", "Events older than the partition watermark", &self.late_events, "counter"),
            ("siklus_unknown_event_types_total", "Events of unknown types", &self.unknown_types, "counter"),
            ("siklus_skipped_offsets_total", "Records skipped as already applied", &self.skipped_offsets, "counter"),
            ("siklus_timers_fired_total", "Inactivity timers fired by the watermark", &self.timers_fired, "counter"),
            ("siklus_failed_steps_total", "Steps redone after an undelivered output", &self.failed_steps, "counter"),
            ("siklus_consumer_errors_total", "Consumer errors", &self.consumer_errors, "counter"),
            ("siklus_erasures_total", "Customers erased", &self.erasures, "counter"),
            ("siklus_schema_registry_retries_total", "Schema Registry calls that failed and were retried", &self.registry_retries, "counter"),
            ("siklus_assigned_partitions", "Input partitions assigned", &self.assigned, "gauge"),
        ];
        for (name, help, v, kind) in rows {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.dead_letters.store(3, Ordering::Relaxed);
        let text = m.render();
        assert!(text
            .contains("# TYPE siklus_dead_letters_total counter\nsiklus_dead_letters_total 3\n"));
    }
}
