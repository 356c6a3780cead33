//! Device metrics: lock-free counters readable from any thread while the queues run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::ErrorKind;

/// Live counters. Shared as `Arc<Metrics>` (see
/// [`BalloonDevice::metrics_handle`](crate::BalloonDevice::metrics_handle)).
#[derive(Debug)]
pub struct Metrics {
    pub(crate) inflate_requests: AtomicU64,
    pub(crate) deflate_requests: AtomicU64,
    pub(crate) stats_buffers: AtomicU64,
    pub(crate) stats_requests: AtomicU64,
    pub(crate) stats_unknown_tags: AtomicU64,
    pub(crate) reporting_requests: AtomicU64,
    pub(crate) reporting_buffers: AtomicU64,
    pub(crate) indirect_chains: AtomicU64,
    pub(crate) inflated_pages: AtomicU64,
    pub(crate) deflated_pages: AtomicU64,
    pub(crate) inflated_pages_zeroed: AtomicU64,
    pub(crate) reported_bytes: AtomicU64,
    pub(crate) reported_chains_zeroed: AtomicU64,
    pub(crate) discarded_bytes: AtomicU64,
    pub(crate) zeroed_bytes: AtomicU64,
    pub(crate) discard_calls: AtomicU64,
    pub(crate) poison_skipped: AtomicU64,
    pub(crate) errors: [AtomicU64; ErrorKind::COUNT],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inflate_requests: AtomicU64::new(0),
            deflate_requests: AtomicU64::new(0),
            stats_buffers: AtomicU64::new(0),
            stats_requests: AtomicU64::new(0),
            stats_unknown_tags: AtomicU64::new(0),
            reporting_requests: AtomicU64::new(0),
            reporting_buffers: AtomicU64::new(0),
            indirect_chains: AtomicU64::new(0),
            inflated_pages: AtomicU64::new(0),
            deflated_pages: AtomicU64::new(0),
            inflated_pages_zeroed: AtomicU64::new(0),
            reported_bytes: AtomicU64::new(0),
            reported_chains_zeroed: AtomicU64::new(0),
            discarded_bytes: AtomicU64::new(0),
            zeroed_bytes: AtomicU64::new(0),
            discard_calls: AtomicU64::new(0),
            poison_skipped: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Adds without wrapping: a counter that reached `u64::MAX` stays there.
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(by))
    });
}

impl Metrics {
    /// Count one error of `kind`.
    pub(crate) fn error(&self, kind: ErrorKind) {
        tracing::debug!(error = kind.name(), "balloon: guest input rejected");
        bump(&self.errors[kind.index()], 1);
    }

    /// Errors of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()].load(Ordering::Relaxed)
    }

    /// A consistent-enough copy of every counter (each read is atomic, the set is not).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            inflate_requests: get(&self.inflate_requests),
            deflate_requests: get(&self.deflate_requests),
            stats_buffers: get(&self.stats_buffers),
            stats_requests: get(&self.stats_requests),
            stats_unknown_tags: get(&self.stats_unknown_tags),
            reporting_requests: get(&self.reporting_requests),
            reporting_buffers: get(&self.reporting_buffers),
            indirect_chains: get(&self.indirect_chains),
            inflated_pages: get(&self.inflated_pages),
            deflated_pages: get(&self.deflated_pages),
            inflated_pages_zeroed: get(&self.inflated_pages_zeroed),
            reported_bytes: get(&self.reported_bytes),
            reported_chains_zeroed: get(&self.reported_chains_zeroed),
            discarded_bytes: get(&self.discarded_bytes),
            zeroed_bytes: get(&self.zeroed_bytes),
            discard_calls: get(&self.discard_calls),
            poison_skipped: get(&self.poison_skipped),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), self.errors(*k)))
                .collect(),
        }
    }
}

/// A copy of the counters, for display and JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Inflate chains processed.
    pub inflate_requests: u64,
    /// Deflate chains processed.
    pub deflate_requests: u64,
    /// Stats buffers received.
    pub stats_buffers: u64,
    /// Stats buffers handed back to ask for fresh stats.
    pub stats_requests: u64,
    /// Stats entries with a tag this device does not know (ignored).
    pub stats_unknown_tags: u64,
    /// Reporting chains processed.
    pub reporting_requests: u64,
    /// Buffers (reported blocks) in the well-formed reporting chains: with `reported_bytes`
    /// and `reporting_requests`, the shape of what the driver sends.
    pub reporting_buffers: u64,
    /// Chains (any queue) whose head descriptor refers to an indirect descriptor table.
    pub indirect_chains: u64,
    /// Valid PFNs inflated.
    pub inflated_pages: u64,
    /// Valid PFNs deflated.
    pub deflated_pages: u64,
    /// Inflated pages whose bitmap bit the device set.
    pub inflated_pages_zeroed: u64,
    /// Bytes in valid reporting descriptors.
    pub reported_bytes: u64,
    /// Reporting chains answered "zeroed" (full used length).
    pub reported_chains_zeroed: u64,
    /// Bytes handed back to the host by successful discards.
    pub discarded_bytes: u64,
    /// Bytes the device told the guest it zeroed (reporting used lengths + inflate bits).
    pub zeroed_bytes: u64,
    /// Discard calls (one syscall each for the host backend).
    pub discard_calls: u64,
    /// Reporting chains not discarded because the guest poisons free pages with a non-zero
    /// pattern.
    pub poison_skipped: u64,
    /// Errors by kind name (every kind present, zero included).
    pub errors: BTreeMap<String, u64>,
}

impl MetricsSnapshot {
    /// Total errors of every kind.
    pub fn total_errors(&self) -> u64 {
        self.errors.values().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Errors of `kind`.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors.get(kind.name()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_saturate_and_snapshot_has_every_kind() {
        let m = Metrics::default();
        bump(&m.discarded_bytes, u64::MAX - 1);
        bump(&m.discarded_bytes, 5);
        m.error(ErrorKind::OutOfRange);
        m.error(ErrorKind::OutOfRange);
        let s = m.snapshot();
        assert_eq!(s.discarded_bytes, u64::MAX);
        assert_eq!(s.errors.len(), ErrorKind::COUNT);
        assert_eq!(s.errors_of(ErrorKind::OutOfRange), 2);
        assert_eq!(s.total_errors(), 2);
    }
}
