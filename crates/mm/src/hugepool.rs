//! A persistent pool of huge pages (2 MiB with 4 KiB frames), the hugetlbfs analogue.
//!
//! The pool takes order-[`HUGE_PAGE_ORDER`] blocks from the buddy allocator and keeps them on
//! its own free list, where they are reported and zero-tracked like buddy blocks: a huge page
//! allocated with `ZERO` skips zeroing when it is known to be zero.

use crate::error::{AllocError, FreeError};
use crate::frame::{FrameFlags, Pfn, PhysMem};
use crate::free_area::{first_free, ListKind};
use crate::zone::{AllocFlags, Allocation, FreeHint, Home, Zone};
use crate::{FrameMeta, HUGE_PAGE_ORDER};

impl<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>> Zone<S> {
    /// Huge pages owned by the pool (free, allocated or being reported).
    pub fn pool_pages(&self) -> u64 {
        self.counts.pool >> HUGE_PAGE_ORDER
    }

    /// Free huge pages in the pool.
    pub fn pool_free_pages(&self) -> u64 {
        self.counts.pool_free >> HUGE_PAGE_ORDER
    }

    /// Grows or shrinks the pool toward `target` huge pages (like writing `nr_hugepages`) and
    /// returns the new size. Growing stops when the buddy allocator has no free block of huge
    /// page order; shrinking releases only free huge pages. Pages keep their `Reported` and
    /// `Zeroed` flags when they move between the buddy allocator and the pool.
    pub fn pool_resize(&mut self, target: u64) -> u64 {
        while self.pool_pages() < target {
            // A huge page is zeroed when faulted in, so prefer known-zero blocks for the pool.
            let Some((idx, from)) = self.pick_buddy_for_pool() else {
                break;
            };
            let content = self.unlink(idx);
            self.split(idx, from, HUGE_PAGE_ORDER, content);
            self.link(idx, HUGE_PAGE_ORDER, content, Home::Pool);
            self.counts.pool += 1 << HUGE_PAGE_ORDER;
        }
        while self.pool_pages() > target {
            let Some((_, idx)) =
                first_free(core::slice::from_ref(&self.pool), self.preference(false))
            else {
                break;
            };
            let content = self.unlink(idx);
            self.counts.pool -= 1 << HUGE_PAGE_ORDER;
            self.merge_and_link(idx, HUGE_PAGE_ORDER, content);
        }
        self.pool_pages()
    }

    fn pick_buddy_for_pool(&self) -> Option<(u32, u8)> {
        let areas = &self.areas[HUGE_PAGE_ORDER as usize..];
        let (i, idx) = first_free(areas, ListKind::preference(true))?;
        Some((idx, HUGE_PAGE_ORDER + i as u8))
    }

    /// Allocates a huge page from the pool. With [`AllocFlags::ZERO`] it reads as zero on
    /// return and was zeroed only if not known to be zero.
    pub fn alloc_huge(
        &mut self,
        flags: AllocFlags,
        mem: &mut impl PhysMem,
    ) -> Result<Allocation, AllocError> {
        let zero = flags.contains(AllocFlags::ZERO);
        let (_, idx) = first_free(core::slice::from_ref(&self.pool), self.preference(zero))
            .ok_or(AllocError::OutOfMemory(HUGE_PAGE_ORDER))?;
        let content = self.unlink(idx);
        let m = &mut self.meta.as_mut()[idx as usize];
        m.flags = FrameFlags::PRESENT
            .union(FrameFlags::HUGE)
            .union(FrameFlags::ALLOCATED);
        self.counts.huge_allocated += 1 << HUGE_PAGE_ORDER;
        Ok(self.finish_alloc(idx, HUGE_PAGE_ORDER, zero, content, mem))
    }

    /// Returns a huge page to the pool. Bad input is refused and changes nothing.
    pub fn free_huge(
        &mut self,
        pfn: Pfn,
        hint: FreeHint,
        mem: &mut impl PhysMem,
    ) -> Result<(), FreeError> {
        let idx = self.allocated_head(pfn, HUGE_PAGE_ORDER, true)?;
        self.counts.huge_allocated -= 1 << HUGE_PAGE_ORDER;
        self.meta.as_mut()[idx as usize].flags = FrameFlags::PRESENT.union(FrameFlags::HUGE);
        let content = self.free_content(pfn, HUGE_PAGE_ORDER, hint, mem);
        self.link(idx, HUGE_PAGE_ORDER, content, Home::Pool);
        if HUGE_PAGE_ORDER >= self.cfg.reporting_order {
            self.reporting.request();
        }
        Ok(())
    }
}
