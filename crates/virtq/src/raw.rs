//! The rings without the driver's rules: write any descriptor, publish any head, read any used
//! element.
//!
//! [`SplitQueue`](crate::SplitQueue) is built on this and keeps the rules (free list, chain
//! shape, in-flight bookkeeping). Used alone, it lets a test or a fuzzer play a broken or
//! hostile driver (loops, bad `next`, indirect tables, heads published twice) against a device.

use core::sync::atomic::Ordering;

use crate::error::MemoryError;
use crate::layout::{Descriptor, RingLayout};
use crate::memory::QueueMemory;

/// Unchecked driver access to one split ring in `M`.
#[derive(Debug)]
pub struct RawRing<M> {
    mem: M,
    layout: RingLayout,
    avail_idx: u16,
}

impl<M: QueueMemory> RawRing<M> {
    /// The rings at `layout` in `mem`, with the driver's avail index at 0. Memory is not touched.
    pub fn new(mem: M, layout: RingLayout) -> Self {
        RawRing {
            mem,
            layout,
            avail_idx: 0,
        }
    }

    /// Where the rings are.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// The memory the rings live in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The next avail index the driver will publish (what `SET_VRING_BASE` would restore).
    pub fn next_avail(&self) -> u16 {
        self.avail_idx
    }

    /// Writes descriptor `index` (modulo the queue size) as given.
    pub fn write_desc(&self, index: u16, desc: Descriptor) -> Result<(), MemoryError> {
        self.mem
            .write(self.layout.desc_entry(index), &desc.to_bytes())
    }

    /// Puts `head` in the next avail slot and publishes it by moving `avail.idx` on.
    pub fn publish(&mut self, head: u16) -> Result<(), MemoryError> {
        self.mem.write(
            self.layout.avail_ring_entry(self.avail_idx),
            &head.to_le_bytes(),
        )?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the descriptors and the ring entry above are visible before the new index.
        self.mem.store_u16(
            self.layout.avail_idx_addr(),
            self.avail_idx,
            Ordering::Release,
        )
    }

    /// The device's `used.idx`, read with acquire so the used elements it covers can be read.
    pub fn used_idx(&self) -> Result<u16, MemoryError> {
        self.mem
            .load_u16(self.layout.used_idx_addr(), Ordering::Acquire)
    }

    /// Used element `i` (modulo the queue size): `(id, len)` as the device wrote them.
    pub fn used(&self, i: u16) -> Result<(u32, u32), MemoryError> {
        let elem = self.layout.used_elem(i);
        Ok((self.mem.read_u32(elem)?, self.mem.read_u32(elem + 4)?))
    }
}
