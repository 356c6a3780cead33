//! Looking inside a zone: its blocks, and a full consistency check for tests and debugging.

use crate::frame::{FrameFlags, FrameMeta, Pfn, NIL};
use crate::free_area::{FreeArea, ListKind};
use crate::zone::{Zone, ZoneCounts};
use crate::{HUGE_PAGE_ORDER, MAX_ORDER};

/// The state of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    /// On a buddy free list.
    Free,
    /// A free huge page in the pool.
    PoolFree,
    /// Taken off the free lists while the device processes it.
    Isolated,
    /// An allocated buddy block.
    Allocated,
    /// An allocated huge page.
    HugeAllocated,
}

/// One block of a zone, as [`Zone::blocks`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// First frame.
    pub pfn: Pfn,
    /// The block holds `1 << order` frames.
    pub order: u8,
    /// Its state.
    pub state: BlockState,
    /// Free and reported.
    pub reported: bool,
    /// Known to be zero (free or isolated blocks only).
    pub zeroed: bool,
}

/// A broken invariant found by [`Zone::verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// Where.
    pub pfn: Pfn,
    /// What is wrong.
    pub what: &'static str,
}

impl<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>> Zone<S> {
    /// Every block of the zone in pfn order (holes skipped). O(frames): for tests and tools.
    pub fn blocks(&self) -> impl Iterator<Item = BlockInfo> + '_ {
        let meta = self.meta.as_ref();
        let mut i = 0usize;
        core::iter::from_fn(move || {
            while i < meta.len() {
                let m = meta[i];
                let state = if m.flags.contains(FrameFlags::ISOLATED) {
                    BlockState::Isolated
                } else if m.flags.contains(FrameFlags::BUDDY) {
                    BlockState::Free
                } else if m.flags.contains(FrameFlags::POOL_FREE) {
                    BlockState::PoolFree
                } else if m
                    .flags
                    .contains(FrameFlags::ALLOCATED.union(FrameFlags::HUGE))
                {
                    BlockState::HugeAllocated
                } else if m.flags.contains(FrameFlags::ALLOCATED) {
                    BlockState::Allocated
                } else {
                    i += 1;
                    continue;
                };
                let info = BlockInfo {
                    pfn: Pfn(self.base + i as u64),
                    order: m.order,
                    state,
                    reported: m.flags.contains(FrameFlags::REPORTED),
                    zeroed: m.flags.contains(FrameFlags::ZEROED),
                };
                i += 1usize << m.order.min(MAX_ORDER);
                return Some(info);
            }
            None
        })
    }

    /// Checks every invariant of the zone: blocks tile the present frames, free lists are well
    /// linked with reported blocks at their tails, no two free buddies were left unmerged, and
    /// the counters match. O(frames).
    pub fn verify(&self) -> Result<(), Corruption> {
        let meta = self.meta.as_ref();
        let at = |i: usize, what| Corruption {
            pfn: Pfn(self.base + i as u64),
            what,
        };
        let mut seen = ZoneCounts::default();
        let mut i = 0usize;
        while i < meta.len() {
            let m = meta[i];
            if !m.flags.contains(FrameFlags::PRESENT) {
                if m.flags != FrameFlags::empty() {
                    return Err(at(i, "flags on a hole"));
                }
                i += 1;
                continue;
            }
            seen.present += 1;
            let head = FrameFlags::BUDDY
                .union(FrameFlags::POOL_FREE)
                .union(FrameFlags::ISOLATED)
                .union(FrameFlags::ALLOCATED);
            if !m.flags.intersects(head) {
                return Err(at(i, "present frame outside any block"));
            }
            if m.order > MAX_ORDER || (self.base + i as u64) & ((1 << m.order) - 1) != 0 {
                return Err(at(i, "block misaligned or order too large"));
            }
            let frames = 1usize << m.order;
            if i + frames > meta.len() {
                return Err(at(i, "block runs past the zone"));
            }
            if let Some(j) = meta[i + 1..i + frames]
                .iter()
                .position(|t| t.flags != FrameFlags::PRESENT)
            {
                return Err(at(i + 1 + j, "tail frame of a block is a hole or a head"));
            }
            let huge = m.flags.contains(FrameFlags::HUGE);
            if huge && m.order != HUGE_PAGE_ORDER {
                return Err(at(i, "huge page of the wrong order"));
            }
            let n = frames as u64;
            seen.present += n - 1;
            if huge {
                seen.pool += n;
            }
            if m.flags.contains(FrameFlags::ISOLATED) {
                seen.isolated += n;
            } else if m.flags.contains(FrameFlags::ALLOCATED) {
                if m.flags.intersects(FrameFlags::CONTENT) {
                    return Err(at(i, "allocated block carries a content flag"));
                }
                if huge {
                    seen.huge_allocated += n;
                } else {
                    seen.allocated += n;
                }
            } else {
                if huge {
                    seen.pool_free += n;
                } else {
                    seen.free += n;
                    if self.buddy_is_free(i, m.order) {
                        return Err(at(i, "two free buddies left unmerged"));
                    }
                }
                if m.flags.contains(FrameFlags::REPORTED) {
                    seen.free_reported += n;
                }
                if m.flags.contains(FrameFlags::ZEROED) {
                    seen.free_zeroed += n;
                }
            }
            i += frames;
        }
        if seen != self.counts {
            return Err(at(0, "counters disagree with the blocks"));
        }
        for (order, area) in self.areas.iter().enumerate() {
            self.verify_area(area, order as u8, FrameFlags::BUDDY)?;
        }
        self.verify_area(&self.pool, HUGE_PAGE_ORDER, FrameFlags::POOL_FREE)
    }

    fn buddy_is_free(&self, idx: usize, order: u8) -> bool {
        if order >= MAX_ORDER {
            return false;
        }
        let buddy = (self.base + idx as u64) ^ (1 << order);
        match self.index(Pfn(buddy)) {
            Some(b) => {
                let m = self.meta.as_ref()[b as usize];
                m.flags.contains(FrameFlags::BUDDY) && m.order == order
            }
            None => false,
        }
    }

    fn verify_area(&self, area: &FreeArea, order: u8, home: FrameFlags) -> Result<(), Corruption> {
        let meta = self.meta.as_ref();
        let at = |i: u32, what| Corruption {
            pfn: Pfn(self.base + i as u64),
            what,
        };
        for kind in ListKind::ALL {
            let list = area.lists[kind as usize];
            let (mut prev, mut idx, mut len, mut reported_seen) = (NIL, list.head, 0u32, false);
            while idx != NIL {
                let m = meta
                    .get(idx as usize)
                    .ok_or(at(0, "free list link out of range"))?;
                if !m.flags.contains(home) || m.order != order || m.prev != prev {
                    return Err(at(idx, "free list holds a block that does not belong"));
                }
                let zeroed_list = kind == ListKind::Zeroed;
                if m.flags.contains(FrameFlags::ZEROED) != zeroed_list
                    && (zeroed_list || self.cfg.placement == crate::Placement::ZeroAware)
                {
                    return Err(at(idx, "block on the wrong list for its Zeroed flag"));
                }
                let reported = m.flags.contains(FrameFlags::REPORTED);
                if reported_seen && !reported {
                    return Err(at(idx, "unreported block after a reported one"));
                }
                reported_seen |= reported;
                len += 1;
                if len > list.len {
                    return Err(at(idx, "free list longer than its count (cycle?)"));
                }
                prev = idx;
                idx = m.next;
            }
            if len != list.len || list.tail != prev {
                return Err(at(list.head, "free list count or tail wrong"));
            }
        }
        Ok(())
    }
}
