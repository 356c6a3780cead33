//! [`Driver`]: a test driver for one queue of a device under test, able to write well-formed
//! chains and hostile ones alike, with the device-side `virtio_queue::Queue` beside it.
//!
//! It is [`prezero_virtq::RawRing`] (descriptors written as given, heads published as given)
//! plus a cursor that hands out descriptor slots in order, so a test reads as the chains it
//! sends.

use prezero_virtq::{Descriptor, RawRing, RingLayout, DESC_F_NEXT, DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// A buffer of a chain: address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct Buf(pub u64, pub u32, pub bool);

/// A device-readable buffer.
pub fn r(addr: u64, len: u32) -> Buf {
    Buf(addr, len, false)
}

/// A device-writable buffer.
pub fn w(addr: u64, len: u32) -> Buf {
    Buf(addr, len, true)
}

/// The driver side of one queue, and the device's `queue` for it.
pub struct Driver<'a> {
    /// The guest memory the rings live in.
    pub mem: &'a GuestMemoryMmap<()>,
    ring: RawRing<&'a GuestMemoryMmap<()>>,
    /// The device side, to hand to the device under test.
    pub queue: Queue,
    next_desc: u16,
}

impl<'a> Driver<'a> {
    /// A queue of `size` entries laid out at guest address `at` (16-byte aligned).
    pub fn new(mem: &'a GuestMemoryMmap<()>, at: u64, size: u16) -> Self {
        let layout = RingLayout::new(size, at).expect("test ring layout");
        Driver {
            mem,
            ring: RawRing::new(mem, layout),
            queue: layout.device_queue(),
            next_desc: 0,
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    /// Where the rings are.
    pub fn layout(&self) -> RingLayout {
        self.ring.layout()
    }

    /// Writes one raw descriptor, whatever its flags and `next`.
    pub fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.ring
            .write_desc(
                index,
                Descriptor {
                    addr,
                    len,
                    flags,
                    next,
                },
            )
            .unwrap();
    }

    /// Writes a well-formed chain in the next descriptor slots and returns its head (not
    /// published).
    pub fn write_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = self.next_desc;
            let next = (index + 1) % self.size();
            let mut flags = if b.2 { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            self.desc(index, b.0, b.1, flags, next);
            self.next_desc = next;
        }
        head
    }

    /// Makes `head` available.
    pub fn publish(&mut self, head: u16) {
        self.ring.publish(head).unwrap();
    }

    /// Writes and publishes a chain.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.write_chain(bufs);
        self.publish(head);
        head
    }

    /// Number of used entries.
    pub fn used_idx(&self) -> u16 {
        self.ring.used_idx().unwrap()
    }

    /// Used entry `i`: (id, len).
    pub fn used(&self, i: u16) -> (u32, u32) {
        self.ring.used(i).unwrap()
    }

    /// The last used entry.
    pub fn last_used(&self) -> (u32, u32) {
        self.used(self.used_idx().wrapping_sub(1))
    }

    /// Moves the descriptor cursor (to keep chains apart).
    pub fn skip_to(&mut self, index: u16) {
        self.next_desc = index;
    }
}
