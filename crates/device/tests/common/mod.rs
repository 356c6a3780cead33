//! Test rig: guest memory with a hole, a mock split queue driven from the driver side, and a
//! device with a recording discard backend.
#![allow(dead_code)]

use prezero_device::protocol::features::{self, Features};
use prezero_device::{BalloonDevice, DeviceOptions, ErrorKind, RecordingDiscard};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MIB: u64 = 1 << 20;
/// Region A: [0, 1 MiB) (rings and buffers live here), region B: [1 MiB, 2 MiB) adjacent,
/// hole [2 MiB, 4 MiB), region C: [4 MiB, 8 MiB).
pub const REGION_B: u64 = MIB;
pub const HOLE: u64 = 2 * MIB;
pub const REGION_C: u64 = 4 * MIB;
pub const RAM_END: u64 = 8 * MIB;
/// Scratch area for driver buffers (PFN arrays, bitmaps, stats) in region A.
pub const BUFS: u64 = 0x10000;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

pub fn mem() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MIB as usize),
        (GuestAddress(REGION_B), MIB as usize),
        (GuestAddress(REGION_C), 4 * MIB as usize),
    ])
    .unwrap()
}

/// Every balloon feature this device supports.
pub fn all_features() -> Features {
    Features::EMPTY
        .with(features::MUST_TELL_HOST)
        .with(features::STATS_VQ)
        .with(features::DEFLATE_ON_OOM)
        .with(features::PAGE_POISON)
        .with(features::REPORTING)
        .with(features::DEVICE_INIT_REPORTED)
        .with(features::DEVICE_INIT_ON_INFLATE)
        .with(features::VERSION_1)
}

pub fn device_with(discard: RecordingDiscard, acked: Features) -> BalloonDevice<RecordingDiscard> {
    let mut dev = BalloonDevice::new(DeviceOptions::default(), discard).unwrap();
    dev.ack_features(acked.bits());
    dev
}

pub fn device(acked: Features) -> BalloonDevice<RecordingDiscard> {
    device_with(RecordingDiscard::new(), acked)
}

pub fn errors(dev: &BalloonDevice<RecordingDiscard>, kind: ErrorKind) -> u64 {
    dev.metrics().errors_of(kind)
}

/// A buffer of a chain: address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct Buf(pub u64, pub u32, pub bool);

pub fn r(addr: u64, len: u32) -> Buf {
    Buf(addr, len, false)
}

pub fn w(addr: u64, len: u32) -> Buf {
    Buf(addr, len, true)
}

/// The driver side of one queue, built from `virtio_queue::mock` parts.
///
/// `MockSplitQueue` itself is not used: in virtio-queue 0.18 it places the used ring from the
/// avail ring's end computed in *elements* rather than bytes, so the used ring overlaps avail
/// entries 2 and up and multi-chain tests corrupt their own rings. The parts are laid out here
/// as the spec says.
pub struct Driver<'a> {
    pub mem: &'a GuestMemoryMmap<()>,
    table: DescriptorTable<'a, GuestMemoryMmap<()>>,
    avail: AvailRing<'a, GuestMemoryMmap<()>>,
    used: UsedRing<'a, GuestMemoryMmap<()>>,
    pub used_addr: u64,
    pub queue: Queue,
    next_desc: u16,
    avail_idx: u16,
}

impl<'a> Driver<'a> {
    /// A queue of `size` entries at guest address `at`.
    pub fn new(mem: &'a GuestMemoryMmap<()>, at: u64, size: u16) -> Self {
        let n = u64::from(size);
        let avail_addr = at + 16 * n;
        let used_addr = (avail_addr + 6 + 2 * n).next_multiple_of(4);
        let table = DescriptorTable::new(mem, GuestAddress(at), size);
        let avail = AvailRing::new(mem, GuestAddress(avail_addr), size);
        let used = UsedRing::new(mem, GuestAddress(used_addr), size);
        let mut queue = Queue::new(size).unwrap();
        queue.set_size(size);
        queue.set_desc_table_address(Some(at as u32), Some((at >> 32) as u32));
        queue.set_avail_ring_address(Some(avail_addr as u32), Some((avail_addr >> 32) as u32));
        queue.set_used_ring_address(Some(used_addr as u32), Some((used_addr >> 32) as u32));
        queue.set_ready(true);
        Driver {
            mem,
            table,
            avail,
            used,
            used_addr,
            queue,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    /// Write one raw descriptor.
    pub fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.table
            .store(
                index,
                RawDescriptor::from(Descriptor::new(addr, len, flags, next)),
            )
            .unwrap();
    }

    /// Write a well-formed chain in free descriptor slots and return its head (not published).
    pub fn write_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = self.next_desc;
            let last = i + 1 == bufs.len();
            let mut flags = if b.2 { F_WRITE } else { 0 };
            let next = (index + 1) % self.size();
            if !last {
                flags |= F_NEXT;
            }
            self.desc(index, b.0, b.1, flags, next);
            self.next_desc = next;
        }
        head
    }

    /// Make `head` available.
    pub fn publish(&mut self, head: u16) {
        self.avail
            .ring()
            .ref_at(usize::from(self.avail_idx % self.size()))
            .unwrap()
            .store(head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.avail.idx().store(self.avail_idx);
    }

    /// Write and publish a chain.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.write_chain(bufs);
        self.publish(head);
        head
    }

    /// Number of used entries.
    pub fn used_idx(&self) -> u16 {
        self.used.idx().load()
    }

    /// Used entry `i`: (id, len).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .used
            .ring()
            .ref_at(usize::from(i % self.size()))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    /// The last used entry.
    pub fn last_used(&self) -> (u32, u32) {
        self.used(self.used_idx().wrapping_sub(1))
    }

    /// Advance the free descriptor cursor (to keep chains apart).
    pub fn skip_to(&mut self, index: u16) {
        self.next_desc = index;
    }
}

/// Write a PFN array at `at`; returns its byte length.
pub fn write_pfns(mem: &GuestMemoryMmap<()>, at: u64, pfns: &[u32]) -> u32 {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    bytes.len() as u32
}

pub fn read_bytes(mem: &GuestMemoryMmap<()>, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(at)).unwrap();
    v
}

pub fn fill(mem: &GuestMemoryMmap<()>, at: u64, len: usize, byte: u8) {
    mem.write_slice(&vec![byte; len], GuestAddress(at)).unwrap();
}
