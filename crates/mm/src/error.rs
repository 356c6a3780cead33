//! Errors. Bad input from the caller never panics and never corrupts the zone.

use crate::frame::Pfn;

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The order exceeds [`MAX_ORDER`](crate::MAX_ORDER).
    #[error("order {0} exceeds the maximum order {max}", max = crate::MAX_ORDER)]
    OrderTooLarge(u8),
    /// No free block of the requested order or larger.
    #[error("out of memory: no free block of order {0} or larger")]
    OutOfMemory(u8),
    /// The CPU index is not below the number of CPUs the zone was shared with.
    #[error("CPU {0} is not one of the zone's CPUs")]
    NoSuchCpu(usize),
}

/// Why a free was refused. The zone is unchanged when one of these is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FreeError {
    /// The order exceeds [`MAX_ORDER`](crate::MAX_ORDER).
    #[error("order {0} exceeds the maximum order {max}", max = crate::MAX_ORDER)]
    OrderTooLarge(u8),
    /// The block does not lie inside the zone.
    #[error("pfn {0:#x} is outside the zone")]
    OutOfZone(Pfn),
    /// The pfn is not aligned to the order.
    #[error("pfn {pfn:#x} is not aligned to order {order}")]
    Misaligned {
        /// The pfn given.
        pfn: Pfn,
        /// The order given.
        order: u8,
    },
    /// No allocated block starts at this pfn: a double free, a hole, or the middle of a block.
    #[error("pfn {0:#x} is not the start of an allocated block (double free?)")]
    NotAllocated(Pfn),
    /// The block was allocated with another order.
    #[error("pfn {pfn:#x} was allocated with order {allocated}, freed with order {given}")]
    OrderMismatch {
        /// The pfn given.
        pfn: Pfn,
        /// The order it was allocated with.
        allocated: u8,
        /// The order given.
        given: u8,
    },
    /// A huge page freed with the buddy free, or a buddy block freed as a huge page.
    #[error("pfn {0:#x}: huge pages and buddy blocks must be freed with their own call")]
    WrongPool(Pfn),
    /// The CPU index is not below the number of CPUs the zone was shared with.
    #[error("CPU {0} is not one of the zone's CPUs")]
    NoSuchCpu(usize),
}

/// Why memory could not be added to a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The range does not lie inside the zone's span.
    #[error("frames {start:#x}+{count:#x} lie outside the zone")]
    OutOfZone {
        /// First frame of the range.
        start: Pfn,
        /// Frames in the range.
        count: u64,
    },
    /// Part of the range was already added.
    #[error("frame {0:#x} was already added to the zone")]
    Overlap(Pfn),
}
