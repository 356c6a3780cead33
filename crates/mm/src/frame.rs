//! Page frames: their numbers and the per-frame metadata kept outside them.
//!
//! Like Linux's `struct page`, every frame of a zone has one [`FrameMeta`] in an array the
//! embedder provides. The allocator never writes into a free page: doing so would fault a
//! reported page back in on the host and destroy the knowledge that it reads as zero.

/// log2 of the frame size: frames are 4 KiB, as are virtio-balloon pages.
pub const FRAME_SHIFT: u32 = 12;
/// Size of one frame in bytes.
pub const FRAME_SIZE: u64 = 1 << FRAME_SHIFT;

/// A page frame number: a physical address shifted right by [`FRAME_SHIFT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

impl core::fmt::LowerHex for Pfn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&self.0, f)
    }
}

impl core::fmt::Display for Pfn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Pfn {
    /// The frame holding physical address `addr`.
    pub const fn from_addr(addr: u64) -> Self {
        Pfn(addr >> FRAME_SHIFT)
    }

    /// The physical address of the frame's first byte.
    pub const fn addr(self) -> u64 {
        self.0 << FRAME_SHIFT
    }
}

/// Flag bits of a frame. Only the head frame of a block carries the block's flags; the other
/// frames of a block keep only [`FrameFlags::PRESENT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct FrameFlags(u16);

impl FrameFlags {
    /// The frame is memory the zone owns (not a hole).
    pub const PRESENT: Self = Self(1 << 0);
    /// Head of a free block on a buddy free list.
    pub const BUDDY: Self = Self(1 << 1);
    /// The block's backing was handed to the host and not touched since.
    pub const REPORTED: Self = Self(1 << 2);
    /// The block's contents are known to be zero.
    pub const ZEROED: Self = Self(1 << 3);
    /// Head of a free block taken off the free lists while the device processes it.
    pub const ISOLATED: Self = Self(1 << 4);
    /// Head of an allocated block.
    pub const ALLOCATED: Self = Self(1 << 5);
    /// Head of a huge page owned by the huge page pool (free, allocated or isolated).
    pub const HUGE: Self = Self(1 << 6);
    /// Head of a free huge page on the pool's free list.
    pub const POOL_FREE: Self = Self(1 << 7);

    /// The flags a free block carries into and out of the allocator's rules.
    pub const CONTENT: Self = Self(Self::REPORTED.0 | Self::ZEROED.0);

    pub const fn empty() -> Self {
        Self(0)
    }
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub const fn and(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

/// Index of "no frame" in the free-list links.
pub(crate) const NIL: u32 = u32::MAX;

/// Per-frame metadata: 12 bytes per 4 KiB frame (Linux's `struct page` is 64).
///
/// The links of the free lists are frame indices within the zone, so the lists cost nothing
/// inside the free pages themselves.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct FrameMeta {
    pub(crate) next: u32,
    pub(crate) prev: u32,
    pub(crate) flags: FrameFlags,
    pub(crate) order: u8,
}

impl FrameMeta {
    /// Metadata of a frame the zone does not own yet: the initial value of the array an embedder
    /// hands to [`Zone::new`](crate::Zone::new).
    pub const EMPTY: FrameMeta = FrameMeta {
        next: NIL,
        prev: NIL,
        flags: FrameFlags::empty(),
        order: 0,
    };
}

impl Default for FrameMeta {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// Physical memory access the embedder provides: a kernel writes physical memory, a test a
/// buffer, the Rust guest its memfd. The allocator only ever writes whole blocks it owns.
pub trait PhysMem {
    /// Sets every byte of `frames` frames starting at `pfn` to `byte`.
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8);
}

impl<T: PhysMem + ?Sized> PhysMem for &mut T {
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        (**self).fill(pfn, frames, byte)
    }
}
