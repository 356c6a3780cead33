//! A minimal driver-side split virtqueue, so the benchmark and the fuzz harness can feed the
//! device through the real queue path (descriptor table, available ring, used ring in guest
//! memory).

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Descriptor flag: another descriptor follows.
pub(crate) const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub(crate) const DESC_F_WRITE: u16 = 2;

/// Driver view of a split ring laid out contiguously at `base`.
#[derive(Debug)]
pub(crate) struct DriverRing {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverRing {
    pub(crate) fn new(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        DriverRing {
            desc,
            avail,
            used,
            size,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The device-side queue for this ring.
    pub(crate) fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("ring sizes are powers of two <= 32768");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    pub(crate) fn write_desc<M: GuestMemory>(
        &self,
        mem: &M,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let at = self.desc + 16 * u64::from(index % self.size);
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }

    /// Make the chain starting at `head` available.
    pub(crate) fn publish<M: GuestMemory>(&mut self, mem: &M, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        let _ = mem.write_obj(head.to_le(), GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.avail + 2),
            Ordering::Release,
        );
    }

    /// Take the next used element, if any: `(id, len)`.
    pub(crate) fn pop_used<M: GuestMemory>(&mut self, mem: &M) -> Option<(u32, u32)> {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .ok()
            .map(u16::from_le)?;
        if idx == self.used_seen {
            return None;
        }
        let slot = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = mem.read_obj(GuestAddress(slot)).ok().map(u32::from_le)?;
        let len: u32 = mem
            .read_obj(GuestAddress(slot + 4))
            .ok()
            .map(u32::from_le)?;
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id, len))
    }
}
