//! What can go wrong on the driver side: caller mistakes (sizes, alignment, chain shape, a full
//! queue), memory outside the guest's, and a device that breaks the used-ring protocol.

/// A ring or buffer range the memory does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest memory {gpa:#x}+{len:#x} is not accessible")]
pub struct MemoryError {
    /// Guest-physical start of the access.
    pub gpa: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// Failures of the driver side of a split virtqueue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Split queue sizes are powers of two up to 32768 (virtio 1.x, 2.6).
    #[error("queue size {0} is not a power of two between 1 and 32768")]
    BadSize(u16),
    /// The ring memory the caller provided is misaligned.
    #[error("ring memory at {gpa:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Where the caller put the rings.
        gpa: u64,
        /// Required alignment, see [`RingLayout::memory_requirement`](crate::RingLayout::memory_requirement).
        align: u64,
    },
    /// A chain needs at least one buffer.
    #[error("a descriptor chain needs at least one buffer")]
    EmptyChain,
    /// A chain longer than the queue can never fit.
    #[error("a chain of {len} descriptors can never fit a queue of {size}")]
    ChainTooLong {
        /// Buffers in the chain.
        len: usize,
        /// Queue size.
        size: u16,
    },
    /// Not enough free descriptors right now: reap used chains first.
    #[error("queue full: {needed} descriptors needed, {free} free; pop used chains and retry")]
    Full {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: u16,
    },
    /// Virtio requires device-readable buffers before device-writable ones (2.7.4.2).
    #[error("buffer {index} is device-readable but follows a device-writable buffer")]
    ReadableAfterWritable {
        /// Position in the chain.
        index: usize,
    },
    /// Zero-length descriptors are a driver bug that devices may reject.
    #[error("buffer {index} has length 0")]
    ZeroLength {
        /// Position in the chain.
        index: usize,
    },
    /// The device returned a head it was never given: it is broken or hostile.
    #[error("device returned used id {id}, which is not the head of an in-flight chain")]
    BadUsedId {
        /// The id the device wrote.
        id: u32,
    },
    /// The device moved `used.idx` by more than the chains in flight.
    #[error("device claims {claimed} used chains but only {in_flight} are in flight")]
    UsedOverrun {
        /// How far `used.idx` moved past the driver's position.
        claimed: u16,
        /// Chains the device holds.
        in_flight: u16,
    },
    /// Ring or buffer memory is not in guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}
