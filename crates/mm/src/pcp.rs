//! Per-CPU page caches (Linux's `per_cpu_pages`, "pcp"): small stacks of free blocks each CPU
//! allocates from and frees to without taking the zone lock. [`LockedZone`](crate::LockedZone)
//! (`locked.rs`) owns the locks and moves blocks between the caches and the zone.
//!
//! The rules of the caches, all applied in `locked.rs`:
//! - **what is cached**: blocks of orders 0 to 3 (Linux's `PAGE_ALLOC_COSTLY_ORDER`) and of the
//!   pageblock order ([`PCP_ORDERS`]). A cached block is allocated as far as the zone's
//!   metadata knows (its head frame is `ALLOCATED` with its order), so it never merges and no
//!   per-frame state changes when it moves between CPU and cache.
//! - **known zero rides through**: every order has two lists, known-zero blocks and the others.
//!   A block enters a list by the content the free rules give it (init-on-free and a poison
//!   value of 0 make it known-zero) and leaves it with that content: a `ZERO` allocation skips
//!   zeroing only a block from the known-zero list. Zero-aware placement applies to the caches
//!   under both placements: `ZERO` allocations take the known-zero list first and the others
//!   take it last, as on the zone's zero-aware free lists. (Two short stacks cost nothing to
//!   search, and there is no reported tail in a cache for Linux's placement to keep.) Blocks whose backing is reported (balloon deflate) bypass the caches: the
//!   zone keeps `Reported` for them, a cache would lose it.
//! - **bounded size**: a list that grows past its `high` mark gives its `batch` oldest blocks
//!   back to the zone; an empty list refills `batch` blocks from the zone in one lock round
//!   trip ([`CacheConfig`]). An allocation the zone cannot serve drains every cache and retries
//!   before it fails (Linux's `drain_all_pages` before OOM).
//! - **never hidden from reporting**: a free into a cache asks for a reporting pass, because the
//!   cache hides from the zone whether the block would merge into a candidate. A pass first
//!   gives back every cached block of the reporting order or above (so it is reported like
//!   any free block) and the small blocks of every cache that saw no allocation or free since
//!   the previous pass; while a busy cache still holds blocks, another pass is requested. A
//!   cached block therefore stays unreported at most until the second pass after its CPU goes
//!   idle. [`CacheConfig::linux_like`] turns this off: Linux's pcp lists are invisible to
//!   `page_reporting`, which is how freed THP-order blocks stay unreported there.

use crate::frame::FrameFlags;
use crate::free_area::ListKind;
use crate::vmstat::VmStat;
use crate::PAGEBLOCK_ORDER;

/// Entries each list of a cache can hold; `high` marks stay below it.
pub const PCP_CAPACITY: usize = 64;
/// The cached orders: 0 to 3 (Linux `PAGE_ALLOC_COSTLY_ORDER`) and the pageblock order.
pub const PCP_ORDERS: [u8; 5] = [0, 1, 2, 3, PAGEBLOCK_ORDER];
const NR_LISTS: usize = PCP_ORDERS.len();

/// The cache slot of `order`, if it is cached.
pub(crate) fn slot(order: u8) -> Option<usize> {
    PCP_ORDERS.iter().position(|&o| o == order)
}

/// The default lock of a [`LockedZone`](crate::LockedZone) and its caches: `spin`'s
/// test-and-set spin lock, behind `lock_api`'s raw-lock trait (a kernel can plug in its own).
pub type SpinLock = spin::mutex::SpinMutex<()>;

/// Sizes and policy of the per-CPU caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Blocks each list of orders 0-3 holds before a free gives `batch` back to the zone
    /// (below [`PCP_CAPACITY`]).
    pub high: u16,
    /// Blocks moved per refill or overflow at orders 0-3 (1 to `high`).
    pub batch: u16,
    /// `high` of the pageblock-order lists.
    pub pageblock_high: u16,
    /// `batch` of the pageblock-order lists.
    pub pageblock_batch: u16,
    /// Reporting drains the caches (this crate's rule). Off reproduces Linux, whose
    /// `page_reporting` never looks at the pcp lists: a negative control, not a setting to use.
    pub reporting_drains: bool,
}

impl Default for CacheConfig {
    /// 48 / 16 at small orders, 8 / 2 at the pageblock order: at most 2 x (48 x 15 + 8 x 512)
    /// frames (19 MiB) cached per CPU, and none of it hidden from reporting for long.
    fn default() -> Self {
        CacheConfig {
            high: 48,
            batch: 16,
            pageblock_high: 8,
            pageblock_batch: 2,
            reporting_drains: true,
        }
    }
}

impl CacheConfig {
    /// Linux's pcp behaviour for the negative control: the caches are invisible to reporting,
    /// and the pageblock lists hold 18 blocks (36 MiB), what QEMU's guest kept on its pcp lists
    /// after a 256 MiB free (`pcp_pages` 2,900 -> 12,100).
    pub fn linux_like() -> Self {
        CacheConfig {
            pageblock_high: 18,
            reporting_drains: false,
            ..CacheConfig::default()
        }
    }

    /// `(high, batch)` of a slot.
    pub(crate) fn limits(&self, slot: usize) -> (usize, usize) {
        if PCP_ORDERS[slot] == PAGEBLOCK_ORDER {
            (self.pageblock_high as usize, self.pageblock_batch as usize)
        } else {
            (self.high as usize, self.batch as usize)
        }
    }

    /// Whether the marks fit the lists: `1 <= batch <= high < PCP_CAPACITY`.
    pub fn is_valid(&self) -> bool {
        let ok =
            |high: u16, batch: u16| batch >= 1 && batch <= high && (high as usize) < PCP_CAPACITY;
        ok(self.high, self.batch) && ok(self.pageblock_high, self.pageblock_batch)
    }
}

/// What the caches did, summed over CPUs by [`LockedZone::cache_stat`](crate::LockedZone::cache_stat).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStat {
    /// Allocations of a cached order.
    pub allocs: u64,
    /// Of those, served from the CPU's cache without the zone lock.
    pub alloc_hits: u64,
    /// Refills from the zone (one zone-lock round trip each).
    pub refills: u64,
    /// Zone-lock acquisitions by the allocations and frees counted in `allocs` and `frees`:
    /// refills, overflow drains, and the zone fallback of an allocation the cache could not
    /// serve. The cached path's share of the one shared lock: the figure that decides how the
    /// allocator scales, and that does not depend on the machine's load. (Uncached orders,
    /// deflates and reporting's drains take the zone lock too, and are not counted here.)
    pub zone_locks: u64,
    /// Frees into a cache.
    pub frees: u64,
    /// Blocks given back to the zone because a list passed its `high` mark.
    pub drained_high: u64,
    /// Blocks given back to the zone by a reporting pass.
    pub drained_report: u64,
    /// Blocks given back by an explicit drain or before an out-of-memory failure.
    pub drained_other: u64,
    /// Cached blocks the zone refused when they drained: bad frees (a double free, a wrong
    /// order) that the cache's fast path does not check.
    pub refused: u64,
}

impl CacheStat {
    /// Share of cached-order allocations served from the cache (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        if self.allocs == 0 {
            0.0
        } else {
            self.alloc_hits as f64 / self.allocs as f64
        }
    }

    /// Zone-lock acquisitions per allocation or free of a cached order (0 when there were
    /// none).
    pub fn zone_locks_per_op(&self) -> f64 {
        let ops = self.allocs + self.frees;
        if ops == 0 {
            0.0
        } else {
            self.zone_locks as f64 / ops as f64
        }
    }

    pub(crate) fn add(&mut self, o: &CacheStat) {
        self.allocs += o.allocs;
        self.alloc_hits += o.alloc_hits;
        self.refills += o.refills;
        self.zone_locks += o.zone_locks;
        self.frees += o.frees;
        self.drained_high += o.drained_high;
        self.drained_report += o.drained_report;
        self.drained_other += o.drained_other;
        self.refused += o.refused;
    }
}

/// A LIFO of frame indices: the most recently freed block (cache-hot) is allocated first.
#[derive(Clone, Copy)]
struct Stack {
    len: u16,
    idx: [u32; PCP_CAPACITY],
}

impl Stack {
    const EMPTY: Stack = Stack {
        len: 0,
        idx: [0; PCP_CAPACITY],
    };

    fn entries(&self) -> &[u32] {
        &self.idx[..self.len as usize]
    }
}

/// One CPU's cache: per cached order, a list of known-zero blocks and one of the others, plus
/// the CPU's share of the zone's counters (kept here so a cache hit touches nothing shared).
pub struct PerCpuPages {
    lists: [[Stack; 2]; NR_LISTS],
    pub(crate) stat: VmStat,
    pub(crate) events: CacheStat,
    /// An allocation or free happened since the last reporting pass looked.
    pub(crate) busy: bool,
    /// A free happened since the last time reporting collected requests.
    pub(crate) report_requested: bool,
}

impl PerCpuPages {
    const EMPTY: PerCpuPages = PerCpuPages {
        lists: [[Stack::EMPTY; 2]; NR_LISTS],
        stat: VmStat::ZERO,
        events: CacheStat {
            allocs: 0,
            alloc_hits: 0,
            refills: 0,
            zone_locks: 0,
            frees: 0,
            drained_high: 0,
            drained_report: 0,
            drained_other: 0,
            refused: 0,
        },
        busy: false,
        report_requested: false,
    };

    /// Takes the most recent block of `slot` from the lists in `preference` order; returns its
    /// frame index and content (`Zeroed` or nothing).
    pub(crate) fn pop(
        &mut self,
        slot: usize,
        preference: &[ListKind],
    ) -> Option<(u32, FrameFlags)> {
        preference.iter().find_map(|&kind| {
            let s = &mut self.lists[slot][kind as usize];
            s.len = s.len.checked_sub(1)?;
            Some((s.idx[s.len as usize], content_of(kind)))
        })
    }

    /// Blocks in the list of `slot` that a block with `content` goes on.
    pub(crate) fn len(&self, slot: usize, content: FrameFlags) -> usize {
        self.lists[slot][kind_of(content) as usize].len as usize
    }

    /// Caches block `idx` of `slot` with `content`; returns its list and that list's length.
    pub(crate) fn push(&mut self, slot: usize, idx: u32, content: FrameFlags) -> (ListKind, usize) {
        let kind = kind_of(content);
        let s = &mut self.lists[slot][kind as usize];
        s.idx[s.len as usize] = idx;
        s.len += 1;
        (kind, s.len as usize)
    }

    /// Removes the `n` oldest blocks of one list into `out` (at least `n` long); returns them.
    pub(crate) fn take_oldest<'o>(
        &mut self,
        slot: usize,
        kind: ListKind,
        n: usize,
        out: &'o mut [u32],
    ) -> &'o [u32] {
        let s = &mut self.lists[slot][kind as usize];
        let n = n.min(s.len as usize);
        out[..n].copy_from_slice(&s.idx[..n]);
        s.idx.copy_within(n..s.len as usize, 0);
        s.len -= n as u16;
        &out[..n]
    }

    /// Empties the lists of every slot `want` selects, calling `give(slot, idx, content)` for
    /// each block. Returns the blocks given.
    pub(crate) fn drain_where(
        &mut self,
        mut want: impl FnMut(usize) -> bool,
        mut give: impl FnMut(usize, u32, FrameFlags),
    ) -> u64 {
        let mut n = 0;
        for slot in 0..NR_LISTS {
            if !want(slot) {
                continue;
            }
            for kind in ListKind::ALL {
                let s = &mut self.lists[slot][kind as usize];
                for &idx in s.entries() {
                    give(slot, idx, content_of(kind));
                }
                n += u64::from(s.len);
                s.len = 0;
            }
        }
        n
    }

    /// Every cached block: `(slot, frame index, content)`.
    pub(crate) fn blocks(&self) -> impl Iterator<Item = (usize, u32, FrameFlags)> + '_ {
        (0..NR_LISTS).flat_map(move |slot| {
            ListKind::ALL.into_iter().flat_map(move |kind| {
                self.lists[slot][kind as usize]
                    .entries()
                    .iter()
                    .map(move |&idx| (slot, idx, content_of(kind)))
            })
        })
    }

    /// Frames cached, and of those known to be zero.
    pub(crate) fn frames(&self) -> (u64, u64) {
        let mut all = 0;
        let mut zeroed = 0;
        for (slot, lists) in self.lists.iter().enumerate() {
            let frames = 1u64 << PCP_ORDERS[slot];
            all += frames * u64::from(lists[0].len + lists[1].len);
            zeroed += frames * u64::from(lists[ListKind::Zeroed as usize].len);
        }
        (all, zeroed)
    }
}

fn kind_of(content: FrameFlags) -> ListKind {
    if content.contains(FrameFlags::ZEROED) {
        ListKind::Zeroed
    } else {
        ListKind::Unsorted
    }
}

fn content_of(kind: ListKind) -> FrameFlags {
    match kind {
        ListKind::Zeroed => FrameFlags::ZEROED,
        ListKind::Unsorted => FrameFlags::empty(),
    }
}

/// One CPU's cache behind its own lock, on cache lines of its own: aligned and padded to 128
/// bytes (x86's adjacent-line prefetcher pulls lines in pairs; `crossbeam-utils`'
/// `CachePadded` makes the same choice), so neighbouring CPUs' caches in an array never share
/// a line. Only its CPU takes the lock on the fast path; reporting, drains and snapshots take
/// it from elsewhere. Memory per CPU: `size_of::<CpuCache>()` (2,944 bytes on x86-64: 10
/// lists of [`PCP_CAPACITY`] 4-byte frame indices and the CPU's counters), outside the frames
/// and outside the 12-byte per-frame metadata.
#[repr(align(128))]
pub struct CpuCache<R: lock_api::RawMutex = SpinLock>(pub(crate) lock_api::Mutex<R, PerCpuPages>);

impl<R: lock_api::RawMutex> CpuCache<R> {
    /// An empty cache.
    pub const fn new() -> Self {
        CpuCache(lock_api::Mutex::const_new(R::INIT, PerCpuPages::EMPTY))
    }
}

impl<R: lock_api::RawMutex> Default for CpuCache<R> {
    fn default() -> Self {
        Self::new()
    }
}
