//! [`SplitQueue`]: the driver's rules over a [`RawRing`](crate::RawRing): a free list of
//! descriptors, chains checked before they are written, each chain's token and writable length
//! kept until the device returns it, and the notification handshakes (2.7.7, 2.7.10).

use alloc::boxed::Box;
use core::sync::atomic::{fence, Ordering};

use crate::error::QueueError;
use crate::layout::{
    Descriptor, RingLayout, RingMemory, AVAIL_F_NO_INTERRUPT, DESC_F_NEXT, DESC_F_WRITE,
    USED_F_NO_NOTIFY,
};
use crate::memory::QueueMemory;
use crate::raw::RawRing;

/// One buffer of a descriptor chain: a guest-physical range and who writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (`VIRTQ_DESC_F_WRITE`); otherwise the device only reads it.
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

/// The driver side of one split virtqueue, over rings at a caller-chosen gpa in `M`.
///
/// `T` is whatever the driver wants back with each used chain (a request id, the pages of a
/// reporting batch, ...).
#[derive(Debug)]
pub struct SplitQueue<T, M> {
    ring: RawRing<M>,
    event_idx: bool,
    // Free descriptors form a list linked through `next`, so taking n from the head yields a
    // chain that is already linked (the same trick as Linux's virtio_ring).
    next: Box<[u16]>,
    free_head: u16,
    num_free: u16,
    in_flight: Box<[Option<InFlight<T>>]>,
    chains_in_flight: u16,
    // u32 so that more than 65535 adds between notify checks cannot alias to "none".
    added_since_check: u32,
    last_used: u16,
    calls_enabled: bool,
}

impl<T, M: QueueMemory> SplitQueue<T, M> {
    /// Bytes and alignment the rings of a queue of `size` need in guest memory.
    pub fn memory_requirement(size: u16) -> Result<RingMemory, QueueError> {
        RingLayout::memory_requirement(size)
    }

    /// Sets up a queue of `size` with its rings at `ring_gpa` in `mem`, which the caller
    /// allocated with at least [`memory_requirement`](Self::memory_requirement) bytes and
    /// alignment.
    ///
    /// The ring memory is zeroed here, before the device is told where it is.
    /// `event_idx` must be whether `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub fn new(mem: M, size: u16, ring_gpa: u64, event_idx: bool) -> Result<Self, QueueError> {
        let layout = RingLayout::new(size, ring_gpa)?;
        mem.fill(layout.desc, layout.bytes(), 0)?;
        let next: Box<[u16]> = (0..size).map(|i| i.wrapping_add(1)).collect();
        let in_flight = (0..size).map(|_| None).collect();
        tracing::debug!(size, ring_gpa, event_idx, "split queue set up");
        Ok(SplitQueue {
            ring: RawRing::new(mem, layout),
            event_idx,
            next,
            free_head: 0,
            num_free: size,
            in_flight,
            chains_in_flight: 0,
            added_since_check: 0,
            last_used: 0,
            calls_enabled: true,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.ring.layout().size
    }

    /// Where the rings are.
    pub fn layout(&self) -> RingLayout {
        self.ring.layout()
    }

    /// Whether the queue runs with `VIRTIO_RING_F_EVENT_IDX`.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// The memory the rings live in.
    pub fn memory(&self) -> &M {
        self.ring.memory()
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
    pub fn next_avail(&self) -> u16 {
        self.ring.next_avail()
    }

    /// Makes `chain` available to the device and returns its head descriptor index.
    ///
    /// Device-readable buffers must come before device-writable ones. The buffers are not
    /// touched: only descriptors pointing at them are written. Call
    /// [`should_notify`](Self::should_notify) after one or more adds to know whether to kick.
    pub fn add(&mut self, chain: &[Buffer], token: T) -> Result<u16, QueueError> {
        let size = self.size();
        let n = chain.len();
        if n == 0 {
            return Err(QueueError::EmptyChain);
        }
        if n > usize::from(size) {
            return Err(QueueError::ChainTooLong { len: n, size });
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
            self.ring.memory().check(buf.gpa, u64::from(buf.len))?;
        }

        let head = self.free_head;
        let mut idx = head;
        for (i, buf) in chain.iter().enumerate() {
            let mut flags = 0u16;
            if i + 1 < n {
                flags |= DESC_F_NEXT;
            }
            if buf.device_writable {
                flags |= DESC_F_WRITE;
            }
            let next = self.next[usize::from(idx)];
            self.ring.write_desc(
                idx,
                Descriptor {
                    addr: buf.gpa,
                    len: buf.len,
                    flags,
                    next,
                },
            )?;
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

        self.ring.publish(head)?;
        self.added_since_check += 1;
        tracing::trace!(
            head,
            descriptors = n,
            avail_idx = self.ring.next_avail(),
            "chain added"
        );
        Ok(head)
    }

    /// Whether the device wants a kick for the chains added since the last call.
    ///
    /// With `EVENT_IDX`, the device's `avail_event` decides (`vring_need_event`); without it,
    /// the driver kicks unless the device set `VIRTQ_USED_F_NO_NOTIFY`. Nothing added since the
    /// last call means no kick.
    pub fn should_notify(&mut self) -> Result<bool, QueueError> {
        let added = core::mem::take(&mut self.added_since_check);
        if added == 0 {
            return Ok(false);
        }
        // The device must see the new avail.idx before we look at whether it wants a kick;
        // otherwise both sides can decide the other will act and the queue stalls.
        fence(Ordering::SeqCst);
        let layout = self.layout();
        let mem = self.ring.memory();
        if self.event_idx {
            if added > u32::from(u16::MAX) {
                return Ok(true);
            }
            let new = self.ring.next_avail();
            let old = new.wrapping_sub(added as u16);
            let event = mem.load_u16(layout.avail_event(), Ordering::Relaxed)?;
            Ok(need_event(event, new, old))
        } else {
            let flags = mem.load_u16(layout.used_flags(), Ordering::Relaxed)?;
            Ok(flags & USED_F_NO_NOTIFY == 0)
        }
    }

    /// Whether the device has returned chains not yet popped.
    pub fn has_used(&self) -> Result<bool, QueueError> {
        Ok(self.ring.used_idx()? != self.last_used)
    }

    /// Takes the next chain the device has finished with, if any, and frees its descriptors.
    ///
    /// An error means the device broke the protocol (a head it was never given, or more used
    /// entries than chains in flight); the queue is then unusable until the device is reset.
    pub fn pop_used(&mut self) -> Result<Option<Used<T>>, QueueError> {
        // Acquire (in used_idx): the used elements below were written before the device
        // published the index.
        let used_idx = self.ring.used_idx()?;
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
        let (id, len) = self.ring.used(self.last_used)?;
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
            self.ring.memory().store_u16(
                self.layout().used_event(),
                self.last_used,
                Ordering::SeqCst,
            )?;
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
            self.ring.memory().store_u16(
                self.layout().avail_flags(),
                AVAIL_F_NO_INTERRUPT,
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
        let layout = self.layout();
        if self.event_idx {
            self.ring
                .memory()
                .store_u16(layout.used_event(), self.last_used, Ordering::Relaxed)?;
        } else {
            self.ring
                .memory()
                .store_u16(layout.avail_flags(), 0, Ordering::Relaxed)?;
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
    use crate::error::MemoryError;
    use alloc::sync::Arc;
    use alloc::vec;
    use alloc::vec::Vec;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const RING_GPA: u64 = 0x1000;

    type Ram = Arc<GuestMemoryMmap>;

    fn ram() -> Ram {
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap())
    }

    fn write_u16(ram: &Ram, gpa: u64, v: u16) -> Result<(), MemoryError> {
        ram.write(gpa, &v.to_le_bytes())
    }

    fn write_u32(ram: &Ram, gpa: u64, v: u32) -> Result<(), MemoryError> {
        ram.write(gpa, &v.to_le_bytes())
    }

    /// A device-side queue from virtio-queue reading the driver's rings in the same memory.
    fn device(q: &SplitQueue<impl Sized, Ram>, event_idx: bool) -> Queue {
        let mut dev = q.layout().device_queue();
        dev.set_event_idx(event_idx);
        assert!(dev.is_valid(&**q.memory()));
        dev
    }

    /// What the device sees of one chain: its head and (gpa, len, writable) per descriptor.
    type DeviceChain = (u16, Vec<(u64, u32, bool)>);

    fn pop_chain(dev: &mut Queue, ram: &GuestMemoryMmap) -> Option<DeviceChain> {
        let chain = dev.pop_descriptor_chain(ram)?;
        let head = chain.head_index();
        let descs = chain
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect();
        Some((head, descs))
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

        dev.add_used(&*ram, head, 450).unwrap();
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
            Err(QueueError::Memory(_))
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
        assert_eq!(q.next_avail(), 1);
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
                dev.add_used(&*ram, head, token as u32).unwrap();
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
            dev.add_used(&*ram, head, 4).unwrap();
            assert_eq!(q.pop_used().unwrap().unwrap().token, i);
        }
        assert_eq!(q.next_avail(), (70_000u32 % 65536) as u16);
    }

    #[test]
    fn notify_without_event_idx_follows_no_notify() {
        let ram = ram();
        let mut q = SplitQueue::new(ram.clone(), 8, RING_GPA, false).unwrap();
        let mut dev = device(&q, false);
        assert!(!q.should_notify().unwrap(), "nothing added, nothing to say");
        q.add(&[Buffer::readable(0x10000, 4)], ()).unwrap();
        assert!(q.should_notify().unwrap());
        dev.disable_notification(&*ram).unwrap();
        q.add(&[Buffer::readable(0x10000, 4)], ()).unwrap();
        assert!(!q.should_notify().unwrap());
        dev.enable_notification(&*ram).unwrap();
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
        assert!(!dev.enable_notification(&*ram).unwrap());
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
            core::iter::from_fn(|| pop_chain(&mut dev, &ram).map(|c| c.0)).collect();
        // used_event starts at 0: the first used chain calls.
        dev.add_used(&*ram, heads[0], 4).unwrap();
        assert!(dev.needs_notification(&*ram).unwrap());
        // The driver has not popped: used_event still 0, so no call for the second.
        dev.add_used(&*ram, heads[1], 4).unwrap();
        assert!(!dev.needs_notification(&*ram).unwrap());
        // Popping both moves used_event to 2: the third chain calls again.
        q.pop_used().unwrap().unwrap();
        q.pop_used().unwrap().unwrap();
        dev.add_used(&*ram, heads[2], 4).unwrap();
        assert!(dev.needs_notification(&*ram).unwrap());

        // enable_calls reports chains that are already waiting.
        q.disable_calls().unwrap();
        assert!(q.enable_calls().unwrap());
        q.pop_used().unwrap().unwrap();
        assert!(!q.enable_calls().unwrap());
    }

    #[test]
    fn disable_calls_without_event_idx_sets_no_interrupt() {
        let ram = ram();
        let mut q = SplitQueue::<(), _>::new(ram.clone(), 8, RING_GPA, false).unwrap();
        let flags = q.layout().avail;
        q.disable_calls().unwrap();
        assert_eq!(
            ram.load_u16(flags, Ordering::Relaxed).unwrap(),
            AVAIL_F_NO_INTERRUPT
        );
        assert!(!q.enable_calls().unwrap());
        assert_eq!(ram.load_u16(flags, Ordering::Relaxed).unwrap(), 0);
    }

    #[test]
    fn hostile_used_ring_is_an_error_not_a_panic() {
        let ram = ram();
        let mut q = SplitQueue::new(ram.clone(), 4, RING_GPA, false).unwrap();
        let l = q.layout();
        q.add(&[Buffer::writable(0x10000, 4)], 'a').unwrap();
        // A head that was never handed out.
        write_u32(&ram, l.used + 4, 3).unwrap();
        write_u16(&ram, l.used + 2, 1).unwrap();
        assert!(matches!(q.pop_used(), Err(QueueError::BadUsedId { id: 3 })));
        // An id past the queue.
        write_u32(&ram, l.used + 4, 0xffff_ffff).unwrap();
        assert!(matches!(q.pop_used(), Err(QueueError::BadUsedId { .. })));
        // More used entries than chains in flight.
        write_u16(&ram, l.used + 2, 2).unwrap();
        assert!(matches!(
            q.pop_used(),
            Err(QueueError::UsedOverrun {
                claimed: 2,
                in_flight: 1
            })
        ));
        // The honest answer still works afterwards.
        write_u32(&ram, l.used + 4, 0).unwrap();
        write_u16(&ram, l.used + 2, 1).unwrap();
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
