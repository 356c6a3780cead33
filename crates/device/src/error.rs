//! Error kinds and the errors the device returns to its caller.
//!
//! Guest mistakes (hostile or buggy input) never surface as `Err`: they are counted by
//! [`ErrorKind`] in [`Metrics`](crate::Metrics), the offending chain or descriptor is answered
//! conservatively and the queue goes on. `Err` is for the caller's mistakes and for a queue whose
//! rings themselves cannot be accessed.

use std::fmt;

/// What went wrong, for the per-kind error counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// A chain yielded no descriptor (head index out of range, unreadable descriptor, bad
    /// indirect table).
    ChainEmpty,
    /// A chain ended on a descriptor that still announced a next one: a loop, a `next` out of
    /// range, a nested indirect table, or more than 4 GiB in total.
    ChainTruncated,
    /// A chain had more descriptors than the device accepts.
    ChainTooLong,
    /// A descriptor had the wrong direction for its queue, or a readable one followed a
    /// writable one.
    WrongDirection,
    /// A descriptor of length zero.
    ZeroLength,
    /// A buffer length that is not a multiple of its unit (4-byte PFNs, 10-byte stats entries).
    BadLength,
    /// A reported range not aligned to 4 KiB.
    Unaligned,
    /// Address arithmetic overflowed 64 bits.
    AddressOverflow,
    /// A range outside guest RAM, or crossing a hole.
    OutOfRange,
    /// An inflate/deflate PFN whose page is not guest RAM.
    PfnOutOfRange,
    /// A PFN repeated within one request.
    DuplicatePfn,
    /// An inflate/deflate request with more PFNs than the device accepts.
    TooManyPfns,
    /// `DEVICE_INIT_ON_INFLATE` negotiated but the inflate chain has no bitmap buffer.
    BitmapMissing,
    /// The inflate bitmap buffer is shorter than `ceil(n / 8)` bytes.
    BitmapTooShort,
    /// More than one writable buffer on an inflate chain, or a bitmap outside guest RAM.
    BitmapMalformed,
    /// A stats buffer whose size is not a whole number of entries, or too large.
    StatsBufferSize,
    /// The driver queued a second stats buffer while the device held one.
    StatsExtraBuffer,
    /// A reported range covering only part of a host page (e.g. of a 2 MiB huge page).
    PartialHostPage,
    /// A discard syscall failed.
    DiscardFailed,
    /// A backing declared a host page size that is not a power of two >= 4 KiB.
    BadHostPageSize,
    /// Reading or writing a buffer in guest memory failed.
    GuestMemory,
    /// The available ring index was impossible (more entries than the queue size).
    AvailRing,
    /// Putting an entry in the used ring failed.
    UsedRing,
    /// The driver wrote a configuration byte it may not write.
    ConfigWrite,
    /// A configuration access outside the configuration space.
    ConfigRange,
    /// The driver acknowledged features the device did not offer.
    UnofferedFeature,
    /// A queue event for an index that has no role under the negotiated features, or for a
    /// queue the device does not serve.
    UnknownQueue,
}

impl ErrorKind {
    /// Every kind, in counter order.
    pub const ALL: [ErrorKind; 27] = [
        ErrorKind::ChainEmpty,
        ErrorKind::ChainTruncated,
        ErrorKind::ChainTooLong,
        ErrorKind::WrongDirection,
        ErrorKind::ZeroLength,
        ErrorKind::BadLength,
        ErrorKind::Unaligned,
        ErrorKind::AddressOverflow,
        ErrorKind::OutOfRange,
        ErrorKind::PfnOutOfRange,
        ErrorKind::DuplicatePfn,
        ErrorKind::TooManyPfns,
        ErrorKind::BitmapMissing,
        ErrorKind::BitmapTooShort,
        ErrorKind::BitmapMalformed,
        ErrorKind::StatsBufferSize,
        ErrorKind::StatsExtraBuffer,
        ErrorKind::PartialHostPage,
        ErrorKind::DiscardFailed,
        ErrorKind::BadHostPageSize,
        ErrorKind::GuestMemory,
        ErrorKind::AvailRing,
        ErrorKind::UsedRing,
        ErrorKind::ConfigWrite,
        ErrorKind::ConfigRange,
        ErrorKind::UnofferedFeature,
        ErrorKind::UnknownQueue,
    ];

    /// Number of kinds.
    pub const COUNT: usize = ErrorKind::ALL.len();

    /// Index of the kind's counter.
    pub fn index(self) -> usize {
        // ALL lists the variants in declaration order.
        self as usize
    }

    /// A stable snake_case name (metrics keys).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::ChainEmpty => "chain_empty",
            ErrorKind::ChainTruncated => "chain_truncated",
            ErrorKind::ChainTooLong => "chain_too_long",
            ErrorKind::WrongDirection => "wrong_direction",
            ErrorKind::ZeroLength => "zero_length",
            ErrorKind::BadLength => "bad_length",
            ErrorKind::Unaligned => "unaligned",
            ErrorKind::AddressOverflow => "address_overflow",
            ErrorKind::OutOfRange => "out_of_range",
            ErrorKind::PfnOutOfRange => "pfn_out_of_range",
            ErrorKind::DuplicatePfn => "duplicate_pfn",
            ErrorKind::TooManyPfns => "too_many_pfns",
            ErrorKind::BitmapMissing => "bitmap_missing",
            ErrorKind::BitmapTooShort => "bitmap_too_short",
            ErrorKind::BitmapMalformed => "bitmap_malformed",
            ErrorKind::StatsBufferSize => "stats_buffer_size",
            ErrorKind::StatsExtraBuffer => "stats_extra_buffer",
            ErrorKind::PartialHostPage => "partial_host_page",
            ErrorKind::DiscardFailed => "discard_failed",
            ErrorKind::BadHostPageSize => "bad_host_page_size",
            ErrorKind::GuestMemory => "guest_memory",
            ErrorKind::AvailRing => "avail_ring",
            ErrorKind::UsedRing => "used_ring",
            ErrorKind::ConfigWrite => "config_write",
            ErrorKind::ConfigRange => "config_range",
            ErrorKind::UnofferedFeature => "unoffered_feature",
            ErrorKind::UnknownQueue => "unknown_queue",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors returned to the device's caller.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The options ask for something the device cannot do.
    #[error("invalid device options: {0}")]
    Options(&'static str),
    /// A queue's rings could not be accessed; the queue cannot make progress until the driver
    /// fixes it (the error is also counted).
    #[error("queue {index}: {kind}")]
    Queue {
        /// Queue index.
        index: usize,
        /// What failed.
        kind: ErrorKind,
    },
    /// A queue event for an index without a role under the negotiated features.
    #[error("queue {0} does not exist under the negotiated features")]
    NoSuchQueue(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_all_order_and_names_are_unique() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::COUNT);
    }
}
