//! Driver side of a split virtqueue (virtio 1.x, 2.7) laid out in [`GuestRam`].
//!
//! # Why not `virtio-drivers`
//!
//! rcore-os `virtio-drivers` (0.13) has a driver-side `VirtQueue`, but it does not fit this guest:
//! - its buffers are `&[u8]` / `&mut [u8]` slices that it translates with `Hal::share`; the
//!   balloon must point descriptors at guest-physical ranges it must not touch (4 MiB reported
//!   blocks the device is punching out of the memfd), and a `&mut [u8]` over memory another
//!   process rewrites is undefined behaviour in Rust;
//! - it allocates its own ring memory through the static `Hal::dma_alloc`, while here the ring
//!   memory comes from the guest's own page allocator at a gpa the caller chooses;
//! - the queue size is a const generic, `pop_used` wants the same slices handed back, and its
//!   `should_notify` compares event indices without the wrapping arithmetic of `vring_need_event`.
//!
//! So this is a small split ring of our own: descriptors take `(gpa, len, device_writable)`,
//! tokens are generic, and every used element comes back with its used length and the
//! writable length of its chain (the balloon's "device zeroed it" signal is a used length).
//!
//! # Memory ordering
//!
//! The device is another process on the same host, so the rules are those of SMP virtio:
//! descriptors and the avail ring entry are written before `avail.idx` is published with a
//! release store; a full fence separates publishing `avail.idx` from reading the device's
//! suppression state (`used.flags` / `avail_event`), and storing `used_event` from re-reading
//! `used.idx`; `used.idx` is read with acquire before the used elements it covers.
//!
//! The driver keeps its own copy of the free list and of each chain's shape, and never reads
//! descriptors back from shared memory: a device cannot corrupt the free list by scribbling on
//! the descriptor table.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};

use crate::error::QueueError;
use crate::ram::GuestRam;

const DESC_SIZE: u64 = 16;
const USED_ELEM_SIZE: u64 = 8;
// flags + idx
const RING_HEADER: u64 = 4;
/// Alignment of the ring memory as a whole: the descriptor table's (2.7, "Virtqueue Alignment").
pub const RING_ALIGN: u64 = 16;
/// The largest split queue virtio allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// How much guest memory a queue's rings take, and how it must be aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingMemory {
    /// Bytes from the first descriptor to the end of the used ring.
    pub bytes: u64,
    /// Alignment of the start.
    pub align: u64,
}

/// Where the three parts of a queue sit in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Queue size (descriptors).
    pub size: u16,
    /// gpa of the descriptor table (16-byte aligned).
    pub desc: u64,
    /// gpa of the avail (driver) ring (2-byte aligned).
    pub avail: u64,
    /// gpa of the used (device) ring (4-byte aligned).
    pub used: u64,
}

impl RingLayout {
    /// Lays a queue of `size` out contiguously at `base`: descriptors, avail ring, used ring.
    pub fn new(size: u16, base: u64) -> Result<Self, QueueError> {
        check_size(size)?;
        if base % RING_ALIGN != 0 {
            return Err(QueueError::Misaligned {
                gpa: base,
                align: RING_ALIGN,
            });
        }
        let n = u64::from(size);
        let avail = base + DESC_SIZE * n;
        // The avail ring ends with used_event; the used ring needs 4-byte alignment.
        let used = (avail + RING_HEADER + 2 * n + 2).next_multiple_of(4);
        Ok(RingLayout {
            size,
            desc: base,
            avail,
            used,
        })
    }

    /// Total bytes from `desc` to the end of the used ring (including `avail_event`).
    pub fn bytes(&self) -> u64 {
        self.used + RING_HEADER + USED_ELEM_SIZE * u64::from(self.size) + 2 - self.desc
    }

    fn avail_ring_entry(&self, slot: u16) -> u64 {
        self.avail + RING_HEADER + 2 * u64::from(slot)
    }

    fn used_event(&self) -> u64 {
        self.avail + RING_HEADER + 2 * u64::from(self.size)
    }

    fn used_elem(&self, slot: u16) -> u64 {
        self.used + RING_HEADER + USED_ELEM_SIZE * u64::from(slot)
    }

    fn avail_event(&self) -> u64 {
        self.used + RING_HEADER + USED_ELEM_SIZE * u64::from(self.size)
    }
}

fn check_size(size: u16) -> Result<(), QueueError> {
    if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
        return Err(QueueError::BadSize(size));
    }
    Ok(())
}

/// One buffer of a descriptor chain: a guest-physical range and who writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (`VRING_DESC_F_WRITE`); otherwise the device only reads it.
    pub device_writable: bool,
}

impl Buffer {
    /// A buffer the device reads (a request).
    pub fn readable(gpa: u64, len: u32) -> Self {
        Buffer {
            gpa,
            len,
            device_writable: false,
        }
    }

    /// A buffer the device writes (a response, or memory it may discard and zero).
    pub fn writable(gpa: u64, len: u32) -> Self {
        Buffer {
            gpa,
            len,
            device_writable: true,
        }
    }
}

impl From<(u64, u32, bool)> for Buffer {
    fn from((gpa, len, device_writable): (u64, u32, bool)) -> Self {
        Buffer {
            gpa,
            len,
            device_writable,
        }
    }
}

/// A chain the device has finished with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used<T> {
    /// What the driver passed to [`SplitQueue::add`].
    pub token: T,
    /// The length the device wrote to the used ring, unvalidated: a device may claim more than
    /// `writable_len`, and what the length means is the device type's business.
    pub len: u32,
    /// Sum of the chain's device-writable buffer lengths.
    pub writable_len: u64,
    /// Descriptor index of the chain's head (the used element's id).
    pub head: u16,
}

#[derive(Debug)]
struct InFlight<T> {
    token: T,
    descriptors: u16,
    last: u16,
    writable_len: u64,
}

/// The driver side of one split virtqueue, over rings at a caller-chosen gpa.
///
/// `T` is whatever the driver wants back with each used chain (a request id, the pages of a
/// reporting batch, ...).
#[derive(Debug)]
pub struct SplitQueue<T> {
    ram: Arc<GuestRam>,
    layout: RingLayout,
    event_idx: bool,
    // Free descriptors form a list linked through `next`, so taking n from the head yields a
    // chain that is already linked (the same trick as Linux's virtio_ring).
    next: Box<[u16]>,
    free_head: u16,
    num_free: u16,
    in_flight: Box<[Option<InFlight<T>>]>,
    chains_in_flight: u16,
    avail_idx: u16,
    // u32 so that more than 65535 adds between notify checks cannot alias to "none".
    added_since_check: u32,
    last_used: u16,
    calls_enabled: bool,
}

impl<T> SplitQueue<T> {
    /// Bytes and alignment the rings of a queue of `size` need in guest memory.
    pub fn memory_requirement(size: u16) -> Result<RingMemory, QueueError> {
        Ok(RingMemory {
            bytes: RingLayout::new(size, 0)?.bytes(),
            align: RING_ALIGN,
        })
    }

    /// Sets up a queue of `size` with its rings at `ring_gpa`, which the caller allocated with
    /// at least [`memory_requirement`](Self::memory_requirement) bytes and alignment.
    ///
    /// The ring memory is zeroed here, before the device is told where it is.
    /// `event_idx` must be whether `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub fn new(
        ram: Arc<GuestRam>,
        size: u16,
        ring_gpa: u64,
        event_idx: bool,
    ) -> Result<Self, QueueError> {
        let layout = RingLayout::new(size, ring_gpa)?;
        ram.fill(layout.desc, layout.bytes(), 0)?;
        let next: Box<[u16]> = (0..size).map(|i| i.wrapping_add(1)).collect();
        let in_flight = (0..size).map(|_| None).collect();
        tracing::debug!(size, ring_gpa, event_idx, "split queue set up");
        Ok(SplitQueue {
            ram,
            layout,
            event_idx,
            next,
            free_head: 0,
            num_free: size,
            in_flight,
            chains_in_flight: 0,
            avail_idx: 0,
            added_since_check: 0,
            last_used: 0,
            calls_enabled: true,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Where the rings are.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Whether the queue runs with `VIRTIO_RING_F_EVENT_IDX`.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// The guest RAM the rings live in.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains handed to the device and not yet popped.
    pub fn in_flight(&self) -> u16 {
        self.chains_in_flight
    }

    /// The next avail index the driver will publish (what `SET_VRING_BASE` would restore).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Makes `chain` available to the device and returns its head descriptor index.
    ///
    /// Device-readable buffers must come before device-writable ones. The buffers are not
    /// touched: only descriptors pointing at them are written. Call
    /// [`should_notify`](Self::should_notify) after one or more adds to know whether to kick.
    pub fn add(&mut self, chain: &[Buffer], token: T) -> Result<u16, QueueError> {
        let n = chain.len();
        if n == 0 {
            return Err(QueueError::EmptyChain);
        }
        if n > usize::from(self.layout.size) {
            return Err(QueueError::ChainTooLong {
                len: n,
                size: self.layout.size,
            });
        }
        if n > usize::from(self.num_free) {
            return Err(QueueError::Full {
                needed: n,
                free: self.num_free,
            });
        }
        let mut seen_writable = false;
        let mut writable_len = 0u64;
        for (index, buf) in chain.iter().enumerate() {
            if buf.len == 0 {
                return Err(QueueError::ZeroLength { index });
            }
            if buf.device_writable {
                seen_writable = true;
                writable_len += u64::from(buf.len);
            } else if seen_writable {
                return Err(QueueError::ReadableAfterWritable { index });
            }
            self.ram.check(buf.gpa, u64::from(buf.len))?;
        }

        let head = self.free_head;
        let mut idx = head;
        for (i, buf) in chain.iter().enumerate() {
            let mut flags = 0u16;
            if i + 1 < n {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            if buf.device_writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = self.next[usize::from(idx)];
            let mut desc = [0u8; DESC_SIZE as usize];
            desc[0..8].copy_from_slice(&buf.gpa.to_le_bytes());
            desc[8..12].copy_from_slice(&buf.len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..16].copy_from_slice(&next.to_le_bytes());
            self.ram
                .write(self.layout.desc + DESC_SIZE * u64::from(idx), &desc)?;
            if i + 1 < n {
                idx = next;
            }
        }
        let last = idx;
        self.free_head = self.next[usize::from(last)];
        self.num_free -= n as u16;
        self.in_flight[usize::from(head)] = Some(InFlight {
            token,
            descriptors: n as u16,
            last,
            writable_len,
        });
        self.chains_in_flight += 1;

        let slot = self.avail_idx & (self.layout.size - 1);
        self.ram
            .write_u16(self.layout.avail_ring_entry(slot), head)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the descriptors and the ring entry above are visible before the new index.
        self.ram
            .store_u16(self.layout.avail + 2, self.avail_idx, Ordering::Release)?;
        self.added_since_check += 1;
        tracing::trace!(
            head,
            descriptors = n,
            avail_idx = self.avail_idx,
            "chain added"
        );
        Ok(head)
    }

    /// Whether the device wants a kick for the chains added since the last call.
    ///
    /// With `EVENT_IDX`, the device's `avail_event` decides (`vring_need_event`); without it,
    /// the driver kicks unless the device set `VRING_USED_F_NO_NOTIFY`. Nothing added since the
    /// last call means no kick.
    pub fn should_notify(&mut self) -> Result<bool, QueueError> {
        let added = std::mem::take(&mut self.added_since_check);
        if added == 0 {
            return Ok(false);
        }
        // The device must see the new avail.idx before we look at whether it wants a kick;
        // otherwise both sides can decide the other will act and the queue stalls.
        fence(Ordering::SeqCst);
        if self.event_idx {
            if added > u32::from(u16::MAX) {
                return Ok(true);
            }
            let new = self.avail_idx;
            let old = new.wrapping_sub(added as u16);
            let event = self
                .ram
                .load_u16(self.layout.avail_event(), Ordering::Relaxed)?;
            Ok(need_event(event, new, old))
        } else {
            let flags = self.ram.load_u16(self.layout.used, Ordering::Relaxed)?;
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// Whether the device has returned chains not yet popped.
    pub fn has_used(&self) -> Result<bool, QueueError> {
        let used_idx = self.ram.load_u16(self.layout.used + 2, Ordering::Acquire)?;
        Ok(used_idx != self.last_used)
    }

    /// Takes the next chain the device has finished with, if any, and frees its descriptors.
    ///
    /// An error means the device broke the protocol (a head it was never given, or more used
    /// entries than chains in flight); the queue is then unusable until the device is reset.
    pub fn pop_used(&mut self) -> Result<Option<Used<T>>, QueueError> {
        // Acquire: the used elements below were written before the device published the index.
        let used_idx = self.ram.load_u16(self.layout.used + 2, Ordering::Acquire)?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending > self.chains_in_flight {
            return Err(QueueError::UsedOverrun {
                claimed: pending,
                in_flight: self.chains_in_flight,
            });
        }
        let slot = self.last_used & (self.layout.size - 1);
        let elem = self.layout.used_elem(slot);
        let id = self.ram.read_u32(elem)?;
        let len = self.ram.read_u32(elem + 4)?;
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.in_flight.get_mut(i))
            .and_then(Option::take)
            .ok_or(QueueError::BadUsedId { id })?;
        let head = id as u16;

        self.next[usize::from(chain.last)] = self.free_head;
        self.free_head = head;
        self.num_free += chain.descriptors;
        self.chains_in_flight -= 1;
        self.last_used = self.last_used.wrapping_add(1);

        if self.event_idx && self.calls_enabled {
            // Ask for a call at the next used entry; the full fence orders this store before
            // the caller's next read of used.idx (Linux: virtio_store_mb).
            self.ram
                .store_u16(self.layout.used_event(), self.last_used, Ordering::SeqCst)?;
        }
        tracing::trace!(head, len, "chain used");
        Ok(Some(Used {
            token: chain.token,
            len,
            writable_len: chain.writable_len,
            head,
        }))
    }

    /// Asks the device not to call (best effort: a call may still arrive).
    pub fn disable_calls(&mut self) -> Result<(), QueueError> {
        self.calls_enabled = false;
        if !self.event_idx {
            self.ram.store_u16(
                self.layout.avail,
                VRING_AVAIL_F_NO_INTERRUPT as u16,
                Ordering::Relaxed,
            )?;
        }
        // With EVENT_IDX, leaving used_event behind is enough: the device calls at most once more.
        Ok(())
    }

    /// Asks the device to call again when it uses a chain. Returns `true` if used chains are
    /// already waiting, in which case no call may come for them: pop them now.
    pub fn enable_calls(&mut self) -> Result<bool, QueueError> {
        self.calls_enabled = true;
        if self.event_idx {
            self.ram
                .store_u16(self.layout.used_event(), self.last_used, Ordering::Relaxed)?;
        } else {
            self.ram
                .store_u16(self.layout.avail, 0, Ordering::Relaxed)?;
        }
        // The device must see the request before we check used.idx, or a chain used in between
        // would be neither seen nor called for.
        fence(Ordering::SeqCst);
        self.has_used()
    }
}

/// `vring_need_event`: whether moving an index from `old` to `new` crossed `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;

    const RING_GPA: u64 = 0x1000;

    fn ram() -> Arc<GuestRam> {
        Arc::new(GuestRam::new(4 << 20).unwrap())
    }

    /// A device-side queue from virtio-queue reading the driver's rings in the same memory.
    fn device(q: &SplitQueue<impl Sized>, event_idx: bool) -> Queue {
        let l = q.layout();
        let mut dev = Queue::new(l.size).unwrap();
        dev.set_size(l.size);
        dev.try_set_desc_table_address(GuestAddress(l.desc))
            .unwrap();
        dev.try_set_avail_ring_address(GuestAddress(l.avail))
            .unwrap();
        dev.try_set_used_ring_address(GuestAddress(l.used)).unwrap();
        dev.set_event_idx(event_idx);
        dev.set_ready(true);
        assert!(dev.is_valid(q.ram().memory()));
        dev
    }

    /// What the device sees of one chain: its head and (gpa, len, writable) per descriptor.
    type DeviceChain = (u16, Vec<(u64, u32, bool)>);

    fn pop_chain(dev: &mut Queue, ram: &GuestRam) -> Option<DeviceChain> {
        let chain = dev.pop_descriptor_chain(ram.memory())?;
        let head = chain.head_index();
        let descs = chain
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect();
        Some((head, descs))
    }

    #[test]
    fn layout_sizes_and_alignment() {
        // 16 descriptors: 256 B table, avail 6+32 = 38 B -> used at 256+40, used 6+128 B.
        let l = RingLayout::new(16, 0x1000).unwrap();
        assert_eq!(l.desc, 0x1000);
        assert_eq!(l.avail, 0x1100);
        assert_eq!(l.used, 0x1100 + 40);
        assert_eq!(l.bytes(), 256 + 40 + 134);
        assert_eq!(l.used % 4, 0);
        for size in [1u16, 2, 4, 256, 1024, 32768] {
            let l = RingLayout::new(size, 0).unwrap();
            let n = u64::from(size);
            assert_eq!(l.avail, 16 * n);
            assert_eq!(l.used % 4, 0);
            assert!(l.used >= l.avail + 6 + 2 * n);
            assert!(l.used < l.avail + 6 + 2 * n + 4);
            assert_eq!(l.bytes(), l.used + 6 + 8 * n);
        }
        let req = SplitQueue::<()>::memory_requirement(256).unwrap();
        assert_eq!(req.align, 16);
        assert_eq!(req.bytes, 4096 + 518 + 2 + 2054);
        for bad in [0u16, 3, 100, 65535] {
            assert!(matches!(
                RingLayout::new(bad, 0),
                Err(QueueError::BadSize(_))
            ));
        }
        assert!(matches!(
            RingLayout::new(16, 8),
            Err(QueueError::Misaligned { .. })
        ));
    }

    #[test]
    fn device_sees_exactly_the_chain_and_driver_gets_used_len() {
        let ram = ram();
        let mut q = SplitQueue::new(ram.clone(), 16, RING_GPA, false).unwrap();
        let mut dev = device(&q, false);
        let chain = [
            Buffer::readable(0x10000, 100),
            Buffer::writable(0x20000, 200),
            (0x30000, 300, true).into(),
        ];
        let head = q.add(&chain, "req").unwrap();
        assert_eq!(q.num_free(), 13);
        assert!(q.should_notify().unwrap());

        let (dev_head, descs) = pop_chain(&mut dev, &ram).unwrap();
        assert_eq!(dev_head, head);
        assert_eq!(
            descs,
            vec![
                (0x10000, 100, false),
                (0x20000, 200, true),
                (0x30000, 300, true)
            ]
        );
        assert!(pop_chain(&mut dev, &ram).is_none());
        assert_eq!(q.pop_used().unwrap(), None);

        dev.add_used(ram.memory(), head, 450).unwrap();
        assert!(q.has_used().unwrap());
        let used = q.pop_used().unwrap().unwrap();
        assert_eq!(
            used,
            Used {
                token: "req",
                len: 450,
                writable_len: 500,
                head
            }
        );
        assert_eq!(q.num_free(), 16);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.pop_used().unwrap(), None);
    }

    #[test]
    fn rejects_malformed_chains() {
        let ram = ram();
        let mut q = SplitQueue::new(ram, 4, RING_GPA, false).unwrap();
        assert!(matches!(q.add(&[], 0), Err(QueueError::EmptyChain)));
        assert!(matches!(
            q.add(
                &[Buffer::writable(0x10000, 8), Buffer::readable(0x20000, 8)],
                0
            ),
            Err(QueueError::ReadableAfterWritable { index: 1 })
        ));
        assert!(matches!(
            q.add(&[Buffer::readable(0x10000, 0)], 0),
            Err(QueueError::ZeroLength { index: 0 })
        ));
        assert!(matches!(
            q.add(&[Buffer::writable((4 << 20) - 4, 8)], 0),
            Err(QueueError::Ram(_))
        ));
        assert!(matches!(
            q.add(&[Buffer::readable(0x10000, 8); 5], 0),
            Err(QueueError::ChainTooLong { len: 5, size: 4 })
        ));
        q.add(&[Buffer::readable(0x10000, 8); 3], 1).unwrap();
        assert!(matches!(
            q.add(&[Buffer::readable(0x10000, 8); 2], 2),
            Err(QueueError::Full { needed: 2, free: 1 })
        ));
        // Nothing half-added: the failed adds left the avail ring alone.
        assert_eq!(q.avail_idx(), 1);
        assert_eq!(q.num_free(), 1);
    }

    #[test]
    fn wraparound_with_out_of_order_completion() {
        let ram = ram();
        let size = 8u16;
        let mut q = SplitQueue::new(ram.clone(), size, RING_GPA, false).unwrap();
        let mut dev = device(&q, false);
        let mut next_token = 0u64;
        let mut completed = Vec::new();
        // Each round fills the queue with chains of 1..=3 descriptors, then the device completes
        // them in reverse order; 40 rounds push both indices far past the u16 ring size * 3.
        for round in 0..40u64 {
            let mut added = Vec::new();
            loop {
                let len = 1 + (next_token % 3) as usize;
                if usize::from(q.num_free()) < len {
                    break;
                }
                // Encode the token in the addresses so the device can check what it got.
                let chain: Vec<Buffer> = (0..len)
                    .map(|i| Buffer::writable(0x100000 + next_token * 0x100 + i as u64, 16))
                    .collect();
                q.add(&chain, next_token).unwrap();
                added.push((next_token, len));
                next_token += 1;
            }
            let mut seen = Vec::new();
            while let Some((head, descs)) = pop_chain(&mut dev, &ram) {
                let token = (descs[0].0 - 0x100000) / 0x100;
                assert_eq!(descs.len(), added[seen.len()].1, "round {round}");
                for (i, d) in descs.iter().enumerate() {
                    assert_eq!(d.0, 0x100000 + token * 0x100 + i as u64);
                }
                seen.push((head, token));
            }
            assert_eq!(seen.len(), added.len());
            for &(head, token) in seen.iter().rev() {
                dev.add_used(ram.memory(), head, token as u32).unwrap();
            }
            while let Some(used) = q.pop_used().unwrap() {
                assert_eq!(u64::from(used.len), used.token);
                completed.push(used.token);
            }
            assert_eq!(q.num_free(), size);
            assert_eq!(q.in_flight(), 0);
        }
        assert_eq!(completed.len() as u64, next_token);
        assert!(next_token > 3 * u64::from(size));
        completed.sort_unstable();
        assert!(completed.iter().copied().eq(0..next_token));
    }

    #[test]
    fn indices_wrap_past_u16() {
        // 70000 single-descriptor round trips cross the u16 index wrap of avail and used.
        let ram = ram();
        let mut q = SplitQueue::new(ram.clone(), 2, RING_GPA, false).unwrap();
        let mut dev = device(&q, false);
        for i in 0..70_000u32 {
            q.add(&[Buffer::writable(0x10000, 4)], i).unwrap();
            let (head, _) = pop_chain(&mut dev, &ram).unwrap();
            dev.add_used(ram.memory(), head, 4).unwrap();
            assert_eq!(q.pop_used().unwrap().unwrap().token, i);
        }
        assert_eq!(q.avail_idx(), (70_000u32 % 65536) as u16);
    }

    #[test]
    fn notify_without_event_idx_follows_no_notify() {
        let ram = ram();
        let mut q = SplitQueue::new(ram.clone(), 8, RING_GPA, false).unwrap();
        let mut dev = device(&q, false);
        assert!(!q.should_notify().unwrap(), "nothing added, nothing to say");
        q.add(&[Buffer::readable(0x10000, 4)], ()).unwrap();
        assert!(q.should_notify().unwrap());
        dev.disable_notification(ram.memory()).unwrap();
        q.add(&[Buffer::readable(0x10000, 4)], ()).unwrap();
        assert!(!q.should_notify().unwrap());
        dev.enable_notification(ram.memory()).unwrap();
        q.add(&[Buffer::readable(0x10000, 4)], ()).unwrap();
        assert!(q.should_notify().unwrap());
    }

    #[test]
    fn notify_with_event_idx_follows_avail_event() {
        let ram = ram();
        let mut q = SplitQueue::new(ram.clone(), 8, RING_GPA, true).unwrap();
        let mut dev = device(&q, true);
        // avail_event starts at 0: the first chain crosses it.
        q.add(&[Buffer::readable(0x10000, 4)], 0).unwrap();
        assert!(q.should_notify().unwrap());
        // The device has not moved avail_event: no kick for more chains.
        q.add(&[Buffer::readable(0x10000, 4)], 1).unwrap();
        q.add(&[Buffer::readable(0x10000, 4)], 2).unwrap();
        assert!(!q.should_notify().unwrap());
        // The device consumes everything and re-arms at its next_avail (3).
        while pop_chain(&mut dev, &ram).is_some() {}
        assert!(!dev.enable_notification(ram.memory()).unwrap());
        q.add(&[Buffer::readable(0x10000, 4)], 3).unwrap();
        assert!(q.should_notify().unwrap());
    }

    #[test]
    fn calls_with_event_idx_follow_used_event() {
        let ram = ram();
        let mut q = SplitQueue::new(ram.clone(), 8, RING_GPA, true).unwrap();
        let mut dev = device(&q, true);
        for t in 0..3 {
            q.add(&[Buffer::writable(0x10000, 4)], t).unwrap();
        }
        let heads: Vec<u16> =
            std::iter::from_fn(|| pop_chain(&mut dev, &ram).map(|c| c.0)).collect();
        // used_event starts at 0: the first used chain calls.
        dev.add_used(ram.memory(), heads[0], 4).unwrap();
        assert!(dev.needs_notification(ram.memory()).unwrap());
        // The driver has not popped: used_event still 0, so no call for the second.
        dev.add_used(ram.memory(), heads[1], 4).unwrap();
        assert!(!dev.needs_notification(ram.memory()).unwrap());
        // Popping both moves used_event to 2: the third chain calls again.
        q.pop_used().unwrap().unwrap();
        q.pop_used().unwrap().unwrap();
        dev.add_used(ram.memory(), heads[2], 4).unwrap();
        assert!(dev.needs_notification(ram.memory()).unwrap());

        // enable_calls reports chains that are already waiting.
        q.disable_calls().unwrap();
        assert!(q.enable_calls().unwrap());
        q.pop_used().unwrap().unwrap();
        assert!(!q.enable_calls().unwrap());
    }

    #[test]
    fn disable_calls_without_event_idx_sets_no_interrupt() {
        let ram = ram();
        let mut q = SplitQueue::<()>::new(ram.clone(), 8, RING_GPA, false).unwrap();
        let flags = q.layout().avail;
        q.disable_calls().unwrap();
        assert_eq!(
            ram.read_u16(flags).unwrap(),
            VRING_AVAIL_F_NO_INTERRUPT as u16
        );
        assert!(!q.enable_calls().unwrap());
        assert_eq!(ram.read_u16(flags).unwrap(), 0);
    }

    #[test]
    fn hostile_used_ring_is_an_error_not_a_panic() {
        let ram = ram();
        let mut q = SplitQueue::new(ram.clone(), 4, RING_GPA, false).unwrap();
        let l = q.layout();
        q.add(&[Buffer::writable(0x10000, 4)], 'a').unwrap();
        // A head that was never handed out.
        ram.write_u32(l.used + 4, 3).unwrap();
        ram.write_u16(l.used + 2, 1).unwrap();
        assert!(matches!(q.pop_used(), Err(QueueError::BadUsedId { id: 3 })));
        // An id past the queue.
        ram.write_u32(l.used + 4, 0xffff_ffff).unwrap();
        assert!(matches!(q.pop_used(), Err(QueueError::BadUsedId { .. })));
        // More used entries than chains in flight.
        ram.write_u16(l.used + 2, 2).unwrap();
        assert!(matches!(
            q.pop_used(),
            Err(QueueError::UsedOverrun {
                claimed: 2,
                in_flight: 1
            })
        ));
        // The honest answer still works afterwards.
        ram.write_u32(l.used + 4, 0).unwrap();
        ram.write_u16(l.used + 2, 1).unwrap();
        assert_eq!(q.pop_used().unwrap().unwrap().token, 'a');
    }

    #[test]
    fn need_event_wraps() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(0, 3, 1));
        assert!(need_event(65535, 0, 65534));
        assert!(need_event(65535, 2, 65530));
        assert!(!need_event(10, 2, 65530));
    }
}
