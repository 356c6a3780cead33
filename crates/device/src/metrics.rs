//! Device metrics: lock-free counters readable from any thread while the queues run.
//!
//! Every counter is declared once, in the [`counters!`](crate::counters) invocation below: the
//! macro writes the live atomic struct ([`Metrics`]), its plain copy ([`MetricsSnapshot`], the
//! daemon's JSON) and the function that copies one into the other, so a new counter cannot be
//! forgotten in one of them. The macro is exported for other crates' counters (the vhost
//! daemon's, for one).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::ErrorKind;

/// A live counter (or a family of them) that [`counters!`](crate::counters) can copy into a
/// snapshot. `Default` is the zero state.
pub trait Counter: Default {
    /// What a snapshot holds for it.
    type Value;

    /// The current value (each atomic read on its own: a set of them is not one instant).
    fn read(&self) -> Self::Value;
}

impl Counter for AtomicU64 {
    type Value = u64;

    fn read(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// Declare counters once; get the live struct, its snapshot struct and the copy between them.
///
/// Write the live struct as usual, each field a [`Counter`] (usually `AtomicU64`); it derives
/// `Debug` and `Default` (all zero). Then name the snapshot struct with its own attributes
/// (`Serialize` for JSON: the keys are the field names). The snapshot gets the same fields, in
/// the same order, with the same docs, each public and of the counter's [`Counter::Value`]
/// (`u64` for `AtomicU64`). `$live::snapshot(&self)` makes the copy.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// prezero_device::counters! {
///     /// Live counters.
///     pub struct Counters {
///         /// Connections accepted.
///         pub connections: AtomicU64,
///         /// Connections that ended.
///         pub disconnections: AtomicU64,
///     }
///     /// A copy of them.
///     #[derive(Clone, Debug, Default, PartialEq, Eq)]
///     pub struct CountersSnapshot;
/// }
///
/// let c = Counters::default();
/// c.connections.fetch_add(2, Ordering::Relaxed);
/// assert_eq!(c.snapshot(), CountersSnapshot { connections: 2, disconnections: 0 });
/// ```
#[macro_export]
macro_rules! counters {
    (
        $(#[$live_attr:meta])*
        $live_vis:vis struct $live:ident {
            $( $(#[$field_attr:meta])* $field_vis:vis $field:ident: $ty:ty, )*
        }
        $(#[$snap_attr:meta])*
        $snap_vis:vis struct $snap:ident;
    ) => {
        $(#[$live_attr])*
        #[derive(Debug, Default)]
        $live_vis struct $live {
            $( $(#[$field_attr])* $field_vis $field: $ty, )*
        }

        $(#[$snap_attr])*
        $snap_vis struct $snap {
            $( $(#[$field_attr])* pub $field: <$ty as $crate::metrics::Counter>::Value, )*
        }

        impl $live {
            /// A consistent-enough copy of every counter (each read is atomic, the set is not).
            pub fn snapshot(&self) -> $snap {
                $snap {
                    $( $field: $crate::metrics::Counter::read(&self.$field), )*
                }
            }
        }
    };
}

counters! {
    /// Live counters. Shared as `Arc<Metrics>` (see
    /// [`BalloonDevice::metrics_handle`](crate::BalloonDevice::metrics_handle)).
    pub struct Metrics {
        /// Inflate chains processed.
        pub(crate) inflate_requests: AtomicU64,
        /// Deflate chains processed.
        pub(crate) deflate_requests: AtomicU64,
        /// Stats buffers received.
        pub(crate) stats_buffers: AtomicU64,
        /// Stats buffers handed back to ask for fresh stats.
        pub(crate) stats_requests: AtomicU64,
        /// Stats entries with a tag this device does not know (ignored).
        pub(crate) stats_unknown_tags: AtomicU64,
        /// Reporting chains processed.
        pub(crate) reporting_requests: AtomicU64,
        /// Queue drains that answered reporting chains: the ranges of all the chains of one
        /// drain are discarded together (one call per contiguous range).
        pub(crate) reporting_drains: AtomicU64,
        /// Buffers (reported blocks) in the well-formed reporting chains: with `reported_bytes`
        /// and `reporting_requests`, the shape of what the driver sends.
        pub(crate) reporting_buffers: AtomicU64,
        /// Chains (any queue) whose head descriptor refers to an indirect descriptor table.
        pub(crate) indirect_chains: AtomicU64,
        /// Valid PFNs inflated.
        pub(crate) inflated_pages: AtomicU64,
        /// Valid PFNs deflated.
        pub(crate) deflated_pages: AtomicU64,
        /// Inflated pages whose bitmap bit the device set.
        pub(crate) inflated_pages_zeroed: AtomicU64,
        /// Bytes in valid reporting descriptors.
        pub(crate) reported_bytes: AtomicU64,
        /// Reporting chains answered "zeroed" (full used length).
        pub(crate) reported_chains_zeroed: AtomicU64,
        /// Bytes handed back to the host by successful discards.
        pub(crate) discarded_bytes: AtomicU64,
        /// Bytes the device told the guest it zeroed (reporting used lengths + inflate bits).
        pub(crate) zeroed_bytes: AtomicU64,
        /// Discard calls (one syscall each for the host backend).
        pub(crate) discard_calls: AtomicU64,
        /// Reporting chains not discarded because the guest poisons free pages with a non-zero
        /// pattern.
        pub(crate) poison_skipped: AtomicU64,
        /// Errors by kind name (every kind present, zero included).
        pub(crate) errors: ErrorCounters,
    }
    /// A copy of the counters, for display and JSON.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
    pub struct MetricsSnapshot;
}

/// One counter per [`ErrorKind`]; its snapshot is keyed by [`ErrorKind::name`].
#[derive(Debug)]
pub struct ErrorCounters([AtomicU64; ErrorKind::COUNT]);

impl Default for ErrorCounters {
    fn default() -> Self {
        ErrorCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Counter for ErrorCounters {
    type Value = BTreeMap<String, u64>;

    fn read(&self) -> Self::Value {
        ErrorKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), self.0[k.index()].read()))
            .collect()
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
        bump(&self.errors.0[kind.index()], 1);
    }

    /// Errors of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors.0[kind.index()].read()
    }
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
