//! What a queue handler works with, and what it gives back.
//!
//! A handler (`reporting.rs`, `inflate.rs`, `deflate.rs`, `stats.rs`: they import this file,
//! never the reverse) gets one descriptor chain and a
//! [`ChainCtx`]: the parts of the device it may use for that chain, each named. It never sees
//! the device itself, so it can be read, and tested, on its own. It answers with the chain's
//! used length, or with the [`ErrorKind`](crate::ErrorKind) that rejects the chain (the loop
//! counts it and answers 0); the stats handler, which keeps its buffer, answers with a
//! [`Completion`].
//!
//! The device lends the parts for one queue event
//! ([`BalloonDevice::process_queue`](crate::BalloonDevice::process_queue)); the queue loop
//! (`queues.rs`) hands the context to every chain in turn.

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
    /// The valid reported ranges of the pending reporting chains, in pop order.
    pub reported: Vec<GuestRange>,
    /// The reporting chains of the current queue drain, waiting for its discards.
    pub pending_reports: Vec<PendingReport>,
    /// Guest ranges that read zero after the discards, normalized.
    pub zeroed: Vec<GuestRange>,
}

/// A reporting chain popped in the current queue drain, answered when the drain's discards are
/// done (see `reporting.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingReport {
    /// The chain's head descriptor: what the used ring names.
    pub head: u16,
    /// What the chain is answered.
    pub answer: PendingAnswer,
}

/// How a pending reporting chain will be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PendingAnswer {
    /// Already decided (rejected, poisoned, or nothing may be claimed): this used length.
    Fixed(u32),
    /// Its total length `len` if every range `reported[first..end]` reads zero after the
    /// drain's discards, else 0.
    IfZeroed { first: usize, end: usize, len: u32 },
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
    /// Answer it at the end of the queue drain (a reporting chain, see
    /// [`PendingReport`]).
    EndOfDrain,
}

/// A context over test memory with a recording discard backend, for the handlers' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{DescriptorChain, Queue, QueueT};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::{ChainCtx, RequestBuffers};
    use crate::metrics::Metrics;
    use crate::options::Limits;
    use crate::recording::RecordingDiscard;
    use prezero_balloon::features::Features;

    /// `VIRTQ_DESC_F_NEXT`.
    const NEXT: u16 = 1;
    /// `VIRTQ_DESC_F_WRITE`.
    pub const WRITE: u16 = 2;

    /// 4 MiB of RAM at 0; the mock queue's rings sit at the start, buffers go from 1 MiB.
    pub fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    /// One chain of `(addr, len, flags)` buffers, as a driver would make it available.
    pub fn chain<'m>(
        mem: &'m GuestMemoryMmap<()>,
        descs: &[(u64, u32, u16)],
    ) -> DescriptorChain<&'m GuestMemoryMmap<()>> {
        let raw: Vec<RawDescriptor> = (0..descs.len())
            .map(|i| {
                let (addr, len, flags) = descs[i];
                let next = i + 1 < descs.len();
                let flags = if next { flags | NEXT } else { flags };
                Descriptor::new(addr, len, flags, if next { i as u16 + 1 } else { 0 }).into()
            })
            .collect();
        let rings = MockSplitQueue::new(mem, 16);
        rings.add_desc_chains(&raw, 0).unwrap();
        let mut queue: Queue = rings.create_queue().unwrap();
        queue.pop_descriptor_chain(mem).unwrap()
    }

    /// What the device would lend a handler.
    #[derive(Default)]
    pub struct Parts {
        pub discard: RecordingDiscard,
        pub metrics: Metrics,
        pub bufs: RequestBuffers,
    }

    impl Parts {
        pub fn ctx<'a>(
            &'a mut self,
            mem: &'a GuestMemoryMmap<()>,
            features: Features,
        ) -> ChainCtx<'a, GuestMemoryMmap<()>, RecordingDiscard> {
            ChainCtx {
                mem,
                discard: &mut self.discard,
                metrics: &self.metrics,
                features,
                poison_val: None,
                limits: Limits::default(),
                deflate_willneed: false,
                used_ring: None,
                bufs: &mut self.bufs,
            }
        }
    }
}
