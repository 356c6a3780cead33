//! What a queue handler works with, and what it gives back.
//!
//! A handler ([`reporting`](crate::reporting), [`inflate`](crate::inflate),
//! [`deflate`](crate::deflate), [`stats`](crate::stats)) gets one descriptor chain and a
//! [`ChainCtx`]: the parts of the device it may use for that chain, each named. It never sees
//! the device itself, so it can be read, and tested, on its own; the device lends the parts for
//! the length of one queue event ([`BalloonDevice::process_queue`](crate::BalloonDevice::process_queue))
//! and the queue loop ([`queues`](crate::queues)) hands the context to every chain in turn.

use prezero_balloon::features::Features;

use crate::chain::Buffer;
use crate::memory::GuestRange;
use crate::metrics::Metrics;
use crate::options::Limits;

/// Everything a handler may use for one chain.
pub(crate) struct ChainCtx<'a, M, D> {
    /// Guest memory, where the chain's buffers are read and written.
    pub mem: &'a M,
    /// Hands guest memory back to the host.
    pub discard: &'a mut D,
    /// Where requests, bytes and guest mistakes are counted.
    pub metrics: &'a Metrics,
    /// The negotiated features: they decide what may be claimed zeroed at all.
    pub features: Features,
    /// The guest's free page poison value, when `PAGE_POISON` is negotiated.
    pub poison_val: Option<u32>,
    /// Caps on guest-controlled sizes.
    pub limits: Limits,
    /// Advise `MADV_WILLNEED` on deflated pages.
    pub deflate_willneed: bool,
    /// The queue's used ring: the device writes it after the handler returns, so memory
    /// overlapping it cannot be claimed zeroed.
    pub used_ring: Option<GuestRange>,
    /// Reused per-request buffers.
    pub bufs: &'a mut RequestBuffers,
}

impl<M, D> ChainCtx<'_, M, D> {
    /// Whether guest poisoning forbids turning free pages into zeros (and claiming it): the
    /// guest checks its poison pattern on pages it takes back.
    pub fn poison_forbids_zero(&self) -> bool {
        self.poison_val.is_some_and(|v| v != 0)
    }
}

/// The buffers a handler fills while it works on a request, owned by the device and lent to
/// each handler, so steady-state request handling does not allocate.
#[derive(Debug, Default)]
pub(crate) struct RequestBuffers {
    /// The chain's descriptors.
    pub buffers: Vec<Buffer>,
    /// Bytes read from or written to the guest (PFN arrays, stats entries, the inflate bitmap).
    pub bytes: Vec<u8>,
    /// The request's PFNs, in request order.
    pub pfns: Vec<u32>,
    /// The distinct PFNs of the request whose page is guest RAM, sorted.
    pub distinct: Vec<u32>,
    /// The PFNs that appear more than once in the request, sorted.
    pub duplicates: Vec<u32>,
    /// Guest ranges to discard (or to hint will-need), in address order.
    pub ranges: Vec<GuestRange>,
    /// The valid reported ranges of a reporting chain, in chain order.
    pub reported: Vec<GuestRange>,
    /// Guest ranges that read zero after the discards, normalized.
    pub zeroed: Vec<GuestRange>,
}

/// What to do with a chain after its handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// Put it in the used ring with this length (bytes written by the device).
    Used(u32),
    /// Keep it (the stats buffer).
    Hold,
    /// Keep it and give back the previously held chain with length 0.
    HoldAndRelease(u16),
}
