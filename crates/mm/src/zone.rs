//! A zone: a span of page frames (with holes) managed by a buddy allocator that remembers, per
//! free block, whether it was reported to the host and whether it is known to be zero.
//!
//! The rules of the flags, all applied here and nowhere else:
//! - **split**: every piece inherits `Reported` and `Zeroed` ([`Zone::split`]);
//! - **merge**: the merged block keeps a flag only if both halves have it ([`Zone::merge_and_link`]);
//! - **free**: a freed block carries neither, unless the freer proves it is zero
//!   ([`Zone::free_content`]);
//! - **allocate**: `Zeroed` is consumed: the caller learns it, the allocated block keeps no flag.

use crate::config::{Config, DeviceInit, Placement};
use crate::error::{AllocError, FreeError, MemoryError};
use crate::frame::{FrameFlags, FrameMeta, Pfn, PhysMem};
use crate::free_area::{first_free, FreeArea, ListKind};
use crate::reporting::Pacing;
use crate::vmstat::VmStat;
use crate::{MAX_ORDER, NR_ORDERS};

/// Allocation flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllocFlags(u8);

impl AllocFlags {
    /// No flags: the contents of the block are unspecified.
    pub const NONE: AllocFlags = AllocFlags(0);
    /// The block must read as zero (`__GFP_ZERO`): zeroed unless already known-zero.
    pub const ZERO: AllocFlags = AllocFlags(1);

    /// Whether all flags of `other` are set.
    pub const fn contains(self, other: AllocFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// An allocated block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// First frame of the block.
    pub pfn: Pfn,
    /// The block holds `1 << order` frames.
    pub order: u8,
    /// The block was known to be zero when it was taken off the free list. With
    /// [`AllocFlags::ZERO`] this is what let the allocator skip zeroing it.
    pub known_zero: bool,
}

/// What the freer knows about the contents of a block it frees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FreeHint {
    /// Nothing: the block is dirty.
    #[default]
    None,
    /// The block comes back from a balloon deflate: its backing was discarded on the host, so
    /// it is `Reported`; `device_zeroed` is the device's `DEVICE_INIT_ON_INFLATE` answer
    /// (upstream Linux `FPI_ZEROED`), believed only through the trust gate.
    Deflated {
        /// The device said it zeroed every page of the block.
        device_zeroed: bool,
    },
}

/// Page counts of a zone, in 4 KiB frames. `present == free + pool_free + allocated +
/// huge_allocated + isolated + cached` always holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneCounts {
    /// Frames the zone owns (its span minus holes).
    pub present: u64,
    /// Frames in free buddy blocks.
    pub free: u64,
    /// Free frames (buddy and pool) whose backing was reported to the host.
    pub free_reported: u64,
    /// Free frames (buddy and pool) known to be zero.
    pub free_zeroed: u64,
    /// Frames taken off the free lists while the device processes them.
    pub isolated: u64,
    /// Frames in allocated buddy blocks.
    pub allocated: u64,
    /// Frames owned by the huge page pool (free, allocated or isolated).
    pub pool: u64,
    /// Frames in free huge pages.
    pub pool_free: u64,
    /// Frames in allocated huge pages.
    pub huge_allocated: u64,
    /// Frames in per-CPU caches ([`LockedZone::counts`](crate::LockedZone::counts); a `Zone`
    /// has none, and counts them in `allocated` when a `LockedZone` shares it).
    pub cached: u64,
    /// Cached frames known to be zero.
    pub cached_zeroed: u64,
}

/// Where a free block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Home {
    /// The buddy free lists.
    Buddy,
    /// The huge page pool's free list.
    Pool,
}

/// A zone of page frames. `S` is the metadata array's storage: `&'static mut [FrameMeta]` in a
/// kernel, a `Vec<FrameMeta>` on a host.
pub struct Zone<S> {
    pub(crate) meta: S,
    pub(crate) base: u64,
    pub(crate) cfg: Config,
    pub(crate) device: DeviceInit,
    pub(crate) areas: [FreeArea; NR_ORDERS],
    pub(crate) pool: FreeArea,
    pub(crate) counts: ZoneCounts,
    pub(crate) stat: VmStat,
    pub(crate) reporting: Pacing,
}

impl<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>> Zone<S> {
    /// A zone spanning `meta.len()` frames from `base`, with no memory yet: add it with
    /// [`Zone::add_memory`]. The metadata array is reset.
    ///
    /// # Panics
    /// If the span does not fit in 2^32 - 1 frames (16 TiB), or the reporting order exceeds
    /// [`MAX_ORDER`]: both are configuration mistakes, not runtime input.
    pub fn new(mut meta: S, base: Pfn, cfg: Config) -> Self {
        assert!(
            meta.as_ref().len() < u32::MAX as usize,
            "zone spans too many frames"
        );
        assert!(
            cfg.reporting_order <= MAX_ORDER,
            "reporting order too large"
        );
        meta.as_mut().fill(FrameMeta::EMPTY);
        Zone {
            meta,
            base: base.0,
            cfg,
            device: DeviceInit::default(),
            areas: [FreeArea::EMPTY; NR_ORDERS],
            pool: FreeArea::EMPTY,
            counts: ZoneCounts::default(),
            stat: VmStat::default(),
            reporting: Pacing::Idle,
        }
    }

    /// Hands `count` frames from `start` to the allocator, as free memory. `known_zero` says the
    /// embedder knows they read as zero (e.g. a fresh memfd).
    pub fn add_memory(
        &mut self,
        start: Pfn,
        count: u64,
        known_zero: bool,
    ) -> Result<(), MemoryError> {
        let out = MemoryError::OutOfZone { start, count };
        let first = self.index(start).ok_or(out)?;
        let end = (first as u64).checked_add(count).ok_or(out)?;
        if end > self.meta.as_ref().len() as u64 {
            return Err(out);
        }
        let meta = self.meta.as_mut();
        if let Some(i) =
            (first as u64..end).find(|&i| meta[i as usize].flags.contains(FrameFlags::PRESENT))
        {
            return Err(MemoryError::Overlap(Pfn(self.base + i)));
        }
        for m in &mut meta[first as usize..end as usize] {
            m.flags = FrameFlags::PRESENT;
        }
        self.counts.present += count;
        let content = if known_zero {
            FrameFlags::ZEROED
        } else {
            FrameFlags::empty()
        };
        // Free in the largest naturally aligned blocks that fit, merging with what is there.
        let mut pfn = start.0;
        let end_pfn = start.0 + count;
        while pfn < end_pfn {
            let align = if pfn == 0 {
                MAX_ORDER as u32
            } else {
                pfn.trailing_zeros()
            };
            let fit = 63 - (end_pfn - pfn).leading_zeros();
            let order = align.min(fit).min(MAX_ORDER as u32) as u8;
            let idx = (pfn - self.base) as u32;
            self.merge_and_link(idx, order, content);
            pfn += 1 << order;
        }
        self.reporting.request();
        Ok(())
    }

    /// The zone's configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Records what the balloon driver negotiated about device-initialized pages.
    pub fn set_device_init(&mut self, device: DeviceInit) {
        self.device = device;
    }

    /// What the balloon driver negotiated about device-initialized pages.
    pub fn device_init(&self) -> DeviceInit {
        self.device
    }

    /// First frame and number of frames of the zone's span.
    pub fn span(&self) -> (Pfn, u64) {
        (Pfn(self.base), self.meta.as_ref().len() as u64)
    }

    /// Page counts.
    pub fn counts(&self) -> ZoneCounts {
        self.counts
    }

    /// Event counters.
    pub fn stat(&self) -> &VmStat {
        &self.stat
    }

    /// Free buddy blocks of each order.
    pub fn nr_free(&self) -> [u32; NR_ORDERS] {
        core::array::from_fn(|o| self.areas[o].nr_free())
    }

    /// Allocates a block of `1 << order` frames. With [`AllocFlags::ZERO`] the block reads as
    /// zero on return, and was zeroed through `mem` only if it was not known to be zero.
    pub fn alloc(
        &mut self,
        order: u8,
        flags: AllocFlags,
        mem: &mut impl PhysMem,
    ) -> Result<Allocation, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::OrderTooLarge(order));
        }
        let zero = flags.contains(AllocFlags::ZERO);
        let (idx, content) = self
            .take(order, zero)
            .ok_or(AllocError::OutOfMemory(order))?;
        Ok(self.finish_alloc(idx, order, zero, content, mem))
    }

    /// Takes a free block of `order` off the free lists (splitting a larger one if needed) and
    /// marks it allocated, without zeroing or counting it as an allocation: the allocation
    /// itself, or a per-CPU cache refill (`pcp.rs`). Returns its frame index and the content
    /// flags it had.
    pub(crate) fn take(&mut self, order: u8, zero: bool) -> Option<(u32, FrameFlags)> {
        let (idx, from) = self.pick(order, zero)?;
        let content = self.unlink(idx);
        self.split(idx, from, order, content);
        let m = &mut self.meta.as_mut()[idx as usize];
        m.flags = FrameFlags::PRESENT.union(FrameFlags::ALLOCATED);
        m.order = order;
        self.counts.allocated += 1 << order;
        Some((idx, content))
    }

    /// Takes up to `out.len()` free blocks of `order` as [`Zone::take`] does, for a per-CPU
    /// cache refill, splitting each larger block once instead of once per block: a block of
    /// order `o` that the refill can use whole is carved into its `1 << (o - order)` blocks
    /// directly, and only the part the refill cannot use goes back to the free lists (Linux's
    /// `rmqueue_bulk` takes one block per `__rmqueue` call, each split linking the upper
    /// halves, which the next calls unlink again). Every block keeps the content of the block
    /// it came from. Returns how many blocks `out` received.
    pub(crate) fn take_bulk(
        &mut self,
        order: u8,
        zero: bool,
        out: &mut [(u32, FrameFlags)],
    ) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some((idx, from)) = self.pick(order, zero) else {
                break;
            };
            let content = self.unlink(idx);
            // The largest order at or below `from` whose blocks of `order` the refill uses up.
            let want = (out.len() - n).ilog2() as u8;
            let keep = from.min(order + want);
            self.split(idx, from, keep, content);
            let meta = self.meta.as_mut();
            for piece in 0..1u32 << (keep - order) {
                let head = idx + (piece << order);
                let m = &mut meta[head as usize];
                m.flags = FrameFlags::PRESENT.union(FrameFlags::ALLOCATED);
                m.order = order;
                out[n] = (head, content);
                n += 1;
            }
            self.counts.allocated += 1 << keep;
        }
        n
    }

    /// Gives a block marked allocated (by [`Zone::take`]) back to the free lists with
    /// `content`, merging it with its free buddies: a free, or a per-CPU cache drain. Refused,
    /// changing nothing, if no allocated block of `order` starts at `pfn`.
    pub(crate) fn give_back(
        &mut self,
        pfn: Pfn,
        order: u8,
        content: FrameFlags,
    ) -> Result<(), FreeError> {
        let idx = self.allocated_head(pfn, order, false)?;
        self.counts.allocated -= 1 << order;
        let merged = self.merge_and_link(idx, order, content);
        if merged >= self.cfg.reporting_order {
            self.reporting.request();
        }
        Ok(())
    }

    /// Frees a block allocated with [`Zone::alloc`]. Bad input (double free, a pfn that is not
    /// the start of an allocated block, a wrong order) is refused and changes nothing.
    pub fn free(
        &mut self,
        pfn: Pfn,
        order: u8,
        hint: FreeHint,
        mem: &mut impl PhysMem,
    ) -> Result<(), FreeError> {
        self.allocated_head(pfn, order, false)?;
        let content = self.free_content(pfn, order, hint, mem);
        self.give_back(pfn, order, content)
    }

    /// The free block an allocation of `order` takes: `(frame index, its order)`. Zero-aware
    /// placement serves a ZERO allocation from known-zero blocks first, of any order, before it
    /// splits a dirty one (and the reverse for the others).
    fn pick(&self, order: u8, zero: bool) -> Option<(u32, u8)> {
        let areas = &self.areas[order as usize..];
        let (i, idx) = first_free(areas, self.preference(zero))?;
        Some((idx, order + i as u8))
    }

    /// The list search order of an allocation that does (`zero`) or does not want zeroed
    /// memory, under the zone's placement.
    pub(crate) fn preference(&self, zero: bool) -> [ListKind; 2] {
        ListKind::preference(zero && self.cfg.placement == Placement::ZeroAware)
    }

    /// Splits the free block at `idx` from order `high` down to `low`, giving the upper halves
    /// back to the free lists. Each piece inherits the block's `Reported` and `Zeroed`.
    pub(crate) fn split(&mut self, idx: u32, high: u8, low: u8, content: FrameFlags) {
        for o in (low..high).rev() {
            self.link(idx + (1 << o), o, content, Home::Buddy);
        }
    }

    /// Accounts for an allocation taken off a free list with `content` flags, zeroing the block
    /// if `zero` was asked and it was not known to be zero.
    pub(crate) fn finish_alloc(
        &mut self,
        idx: u32,
        order: u8,
        zero: bool,
        content: FrameFlags,
        mem: &mut impl PhysMem,
    ) -> Allocation {
        let pfn = Pfn(self.base + idx as u64);
        finish_alloc(&mut self.stat, pfn, order, zero, content, mem)
    }

    /// The content flags of a block being freed (see [`free_content`]).
    pub(crate) fn free_content(
        &mut self,
        pfn: Pfn,
        order: u8,
        hint: FreeHint,
        mem: &mut impl PhysMem,
    ) -> FrameFlags {
        free_content(
            &mut self.stat,
            &self.cfg,
            self.device,
            pfn,
            order,
            hint,
            mem,
        )
    }

    /// Puts the free block at `idx` on the buddy free lists, first merging it with its free
    /// buddies: the merged block keeps `Reported` and `Zeroed` only if both halves have them.
    /// Returns the order of the block finally linked.
    pub(crate) fn merge_and_link(
        &mut self,
        mut idx: u32,
        mut order: u8,
        mut content: FrameFlags,
    ) -> u8 {
        // The block's head loses whatever state it had (allocated, isolated, pool page).
        self.meta.as_mut()[idx as usize].flags = FrameFlags::PRESENT;
        let len = self.meta.as_ref().len() as u64;
        while order < MAX_ORDER {
            let pfn = self.base + idx as u64;
            let Some(buddy) = (pfn ^ (1 << order))
                .checked_sub(self.base)
                .filter(|&b| b < len)
            else {
                break;
            };
            let b = self.meta.as_ref()[buddy as usize];
            if !b.flags.contains(FrameFlags::BUDDY) || b.order != order {
                break;
            }
            content = content.and(self.unlink(buddy as u32));
            idx = idx.min(buddy as u32);
            order += 1;
        }
        self.link(idx, order, content, Home::Buddy);
        order
    }

    /// The list a block with `content` flags belongs on.
    fn list_kind(&self, content: FrameFlags) -> ListKind {
        if self.cfg.placement == Placement::ZeroAware && content.contains(FrameFlags::ZEROED) {
            ListKind::Zeroed
        } else {
            ListKind::Unsorted
        }
    }

    /// Marks the block at `idx` free with `content` flags and links it into `home`.
    pub(crate) fn link(&mut self, idx: u32, order: u8, content: FrameFlags, home: Home) {
        let kind = self.list_kind(content);
        let frames = 1u64 << order;
        let meta = self.meta.as_mut();
        let m = &mut meta[idx as usize];
        m.order = order;
        m.flags = FrameFlags::PRESENT.union(content).union(match home {
            Home::Buddy => FrameFlags::BUDDY,
            Home::Pool => FrameFlags::HUGE.union(FrameFlags::POOL_FREE),
        });
        let area = match home {
            Home::Buddy => &mut self.areas[order as usize],
            Home::Pool => &mut self.pool,
        };
        area.add(meta, kind, idx);
        match home {
            Home::Buddy => self.counts.free += frames,
            Home::Pool => self.counts.pool_free += frames,
        }
        if content.contains(FrameFlags::REPORTED) {
            self.counts.free_reported += frames;
        }
        if content.contains(FrameFlags::ZEROED) {
            self.counts.free_zeroed += frames;
        }
    }

    /// Takes the free block at `idx` off its free list and returns its content flags. The head
    /// frame keeps `PRESENT` (and `HUGE` for a pool page); the caller gives it its new state.
    pub(crate) fn unlink(&mut self, idx: u32) -> FrameFlags {
        let m = self.meta.as_ref()[idx as usize];
        let content = m.flags.and(FrameFlags::CONTENT);
        let kind = self.list_kind(content);
        let frames = 1u64 << m.order;
        let meta = self.meta.as_mut();
        if m.flags.contains(FrameFlags::POOL_FREE) {
            self.pool.del(meta, kind, idx);
            self.counts.pool_free -= frames;
        } else {
            self.areas[m.order as usize].del(meta, kind, idx);
            self.counts.free -= frames;
        }
        meta[idx as usize].flags = m.flags.and(FrameFlags::PRESENT.union(FrameFlags::HUGE));
        if content.contains(FrameFlags::REPORTED) {
            self.counts.free_reported -= frames;
        }
        if content.contains(FrameFlags::ZEROED) {
            self.counts.free_zeroed -= frames;
        }
        content
    }

    /// The frame index of `pfn`, if the zone spans it.
    pub(crate) fn index(&self, pfn: Pfn) -> Option<u32> {
        let idx = pfn.0.checked_sub(self.base)?;
        (idx < self.meta.as_ref().len() as u64).then_some(idx as u32)
    }

    /// Checks that an allocated block of `order` starts at `pfn` (a huge page if `huge`), and
    /// returns its frame index.
    pub(crate) fn allocated_head(&self, pfn: Pfn, order: u8, huge: bool) -> Result<u32, FreeError> {
        if order > MAX_ORDER {
            return Err(FreeError::OrderTooLarge(order));
        }
        let idx = self.index(pfn).ok_or(FreeError::OutOfZone(pfn))?;
        if pfn.0 & ((1 << order) - 1) != 0 {
            return Err(FreeError::Misaligned { pfn, order });
        }
        let m = self.meta.as_ref()[idx as usize];
        if !m.flags.contains(FrameFlags::ALLOCATED) {
            return Err(FreeError::NotAllocated(pfn));
        }
        if m.flags.contains(FrameFlags::HUGE) != huge {
            return Err(FreeError::WrongPool(pfn));
        }
        if m.order != order {
            return Err(FreeError::OrderMismatch {
                pfn,
                allocated: m.order,
                given: order,
            });
        }
        Ok(idx)
    }
}

/// Accounts in `stat` for an allocation of the block at `pfn` taken off a free list (or a
/// per-CPU cache) with `content` flags, zeroing it through `mem` if `zero` was asked and it was
/// not known to be zero. `Zeroed` is consumed here: the caller learns it, the block keeps none.
pub(crate) fn finish_alloc(
    stat: &mut VmStat,
    pfn: Pfn,
    order: u8,
    zero: bool,
    content: FrameFlags,
    mem: &mut impl PhysMem,
) -> Allocation {
    let frames = 1u64 << order;
    let known_zero = content.contains(FrameFlags::ZEROED);
    stat.alloc_blocks += 1;
    if zero {
        stat.zero_allocs += 1;
        if order == 0 {
            stat.zero_allocs_order0 += 1;
        }
        if known_zero {
            stat.zero_alloc_hits += 1;
            if order == 0 {
                stat.zero_alloc_hits_order0 += 1;
            }
            stat.pages_zero_skipped += frames;
        } else {
            mem.fill(pfn, frames, 0);
            stat.pages_zeroed += frames;
        }
    }
    Allocation {
        pfn,
        order,
        known_zero,
    }
}

/// The content flags of a block being freed, counted in `stat`: only a freer that proves the
/// block is zero sets `Zeroed`, and only a block whose backing is still discarded keeps
/// `Reported`.
pub(crate) fn free_content(
    stat: &mut VmStat,
    cfg: &Config,
    device: DeviceInit,
    pfn: Pfn,
    order: u8,
    hint: FreeHint,
    mem: &mut impl PhysMem,
) -> FrameFlags {
    let frames = 1u64 << order;
    stat.free_blocks += 1;
    let mut content = FrameFlags::empty();
    if let FreeHint::Deflated { device_zeroed } = hint {
        stat.pages_deflated += frames;
        content = FrameFlags::REPORTED;
        if device_zeroed && cfg.trusts_device_zeroing(device.on_inflate) {
            stat.pages_deflated_zeroed += frames;
            return content.union(FrameFlags::ZEROED);
        }
    }
    // Writing the block faults its backing in again: it is no longer reported.
    if cfg.init_on_free {
        mem.fill(pfn, frames, 0);
        stat.pages_init_on_free += frames;
        FrameFlags::ZEROED
    } else if let Some(poison) = cfg.poison {
        mem.fill(pfn, frames, poison);
        stat.pages_poisoned += frames;
        if poison == 0 {
            FrameFlags::ZEROED
        } else {
            FrameFlags::empty()
        }
    } else {
        content
    }
}
