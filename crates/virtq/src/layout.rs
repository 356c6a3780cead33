//! Where the three parts of a split queue sit in memory, and the bits the driver writes into
//! them (virtio 1.x, 2.7).
//!
//! Offsets follow the spec's `struct virtq_desc` (16 bytes: le64 addr, le32 len, le16 flags,
//! le16 next), `struct virtq_avail` (le16 flags, le16 idx, le16 ring[size], le16 used_event) and
//! `struct virtq_used` (le16 flags, le16 idx, {le32 id, le32 len}[size], le16 avail_event).

use crate::error::QueueError;

/// Bytes of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Bytes of one used element (`id`, `len`).
pub const USED_ELEM_SIZE: u64 = 8;
/// `flags` + `idx` at the start of the avail and used rings.
const RING_HEADER: u64 = 4;
/// Alignment of the ring memory as a whole: the descriptor table's (2.7, "Virtqueue Alignment").
pub const RING_ALIGN: u64 = 16;
/// The largest split queue virtio allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// `VIRTQ_DESC_F_NEXT` (2.7.5): the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE` (2.7.5): the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT` (2.7.5.3): the buffer is a table of descriptors. This driver never
/// sets it; tests use it to play a hostile driver.
pub const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` (2.7.6): the driver asks not to be called.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VIRTQ_USED_F_NO_NOTIFY` (2.7.8): the device asks not to be kicked.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// How much memory a queue's rings take, and how it must be aligned.
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

    /// Bytes and alignment the rings of a queue of `size` need.
    pub fn memory_requirement(size: u16) -> Result<RingMemory, QueueError> {
        Ok(RingMemory {
            bytes: RingLayout::new(size, 0)?.bytes(),
            align: RING_ALIGN,
        })
    }

    /// Total bytes from `desc` to the end of the used ring (including `avail_event`).
    pub fn bytes(&self) -> u64 {
        self.used + RING_HEADER + USED_ELEM_SIZE * u64::from(self.size) + 2 - self.desc
    }

    /// gpa of descriptor `index` (taken modulo the queue size).
    pub fn desc_entry(&self, index: u16) -> u64 {
        self.desc + DESC_SIZE * u64::from(index % self.size)
    }

    /// gpa of `avail.flags`.
    pub fn avail_flags(&self) -> u64 {
        self.avail
    }

    /// gpa of `avail.idx`.
    pub fn avail_idx_addr(&self) -> u64 {
        self.avail + 2
    }

    /// gpa of `avail.ring[slot]` (taken modulo the queue size).
    pub fn avail_ring_entry(&self, slot: u16) -> u64 {
        self.avail + RING_HEADER + 2 * u64::from(slot % self.size)
    }

    /// gpa of `used_event`, at the end of the avail ring.
    pub fn used_event(&self) -> u64 {
        self.avail + RING_HEADER + 2 * u64::from(self.size)
    }

    /// gpa of `used.flags`.
    pub fn used_flags(&self) -> u64 {
        self.used
    }

    /// gpa of `used.idx`.
    pub fn used_idx_addr(&self) -> u64 {
        self.used + 2
    }

    /// gpa of `used.ring[slot]` (taken modulo the queue size).
    pub fn used_elem(&self, slot: u16) -> u64 {
        self.used + RING_HEADER + USED_ELEM_SIZE * u64::from(slot % self.size)
    }

    /// gpa of `avail_event`, at the end of the used ring.
    pub fn avail_event(&self) -> u64 {
        self.used + RING_HEADER + USED_ELEM_SIZE * u64::from(self.size)
    }
}

fn check_size(size: u16) -> Result<(), QueueError> {
    if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
        return Err(QueueError::BadSize(size));
    }
    Ok(())
}

/// One descriptor as it sits in the table: a buffer's gpa and length, its flags, and the index
/// of the next descriptor of the chain (meaningful only with [`DESC_F_NEXT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// `DESC_F_*` bits.
    pub flags: u16,
    /// Next descriptor of the chain.
    pub next: u16,
}

impl Descriptor {
    /// The 16 little-endian bytes of `struct virtq_desc`.
    pub fn to_bytes(self) -> [u8; DESC_SIZE as usize] {
        let mut raw = [0u8; DESC_SIZE as usize];
        raw[0..8].copy_from_slice(&self.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&self.len.to_le_bytes());
        raw[12..14].copy_from_slice(&self.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&self.next.to_le_bytes());
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let req = RingLayout::memory_requirement(256).unwrap();
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
    fn descriptor_bytes_are_little_endian() {
        let d = Descriptor {
            addr: 0x0102_0304_0506_0708,
            len: 0x1122_3344,
            flags: DESC_F_NEXT | DESC_F_WRITE,
            next: 0x0506,
        };
        assert_eq!(
            d.to_bytes(),
            [8, 7, 6, 5, 4, 3, 2, 1, 0x44, 0x33, 0x22, 0x11, 3, 0, 6, 5]
        );
    }
}
