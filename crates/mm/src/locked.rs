//! A zone for N CPUs: the buddy zone behind one lock (Linux's `zone->lock`) and a per-CPU page
//! cache per CPU (`pcp.rs`, whose rules it applies), the caller naming its CPU as a kernel's
//! `smp_processor_id()` would (the Rust guest passes its vCPU index).
//!
//! The lock protocol:
//! - **two kinds of lock**: the zone lock guards the free lists, the huge page pool, the frame
//!   metadata, pacing and the zone's counters; each CPU cache has its own lock, which only its
//!   CPU takes on the fast path (uncontended: one atomic swap each way), and which reporting,
//!   drains and snapshots take from other threads.
//! - **one order**: a CPU cache lock, then the zone lock; never the reverse, and never two CPU
//!   locks at once except in a snapshot, which takes them all in CPU order before the zone
//!   lock. So there is no deadlock.
//! - **zeroing outside the zone lock**: a `ZERO` allocation zeroes its block under its own CPU
//!   lock at most, so one CPU zeroing 2 MiB does not stall the others.
//! - **reporting concurrent with allocation**: the engine of `reporting.rs` runs over
//!   [`FreeBlocks`] calls that each take the zone lock for one block; the device is called
//!   with no lock held. Isolated blocks are off the free lists, so no CPU can allocate them
//!   while they are in flight.
//!
//! A free into a cache is checked for range and alignment, not against the metadata (as
//! Linux's pcp fast path): a double free is caught, and refused, when the cache drains
//! ([`CacheStat::refused`]); until then the caller broke the contract. Frees of uncached orders
//! and balloon deflates go to the zone, which checks them fully.

use crate::config::{Config, DeviceInit};
use crate::error::{AllocError, FreeError};
use crate::frame::{FrameFlags, FrameMeta, Pfn, PhysMem};
use crate::free_area::ListKind;
use crate::inspect::Corruption;
use crate::pcp::{
    self, CacheConfig, CacheStat, CpuCache, PerCpuPages, SpinLock, PCP_CAPACITY, PCP_ORDERS,
};
use crate::reporting::{
    self, FreeBlocks, ReportBatch, ReportBlock, ReportOutcome, ReportPass, ReportSink,
};
use crate::vmstat::VmStat;
use crate::zone::{finish_alloc, free_content, AllocFlags, Allocation, FreeHint, Zone, ZoneCounts};
use crate::{Placement, MAX_ORDER};
use lock_api::{Mutex, MutexGuard, RawMutex};

/// Which cached blocks a drain gives back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Blocks of the reporting order and above.
    Reportable,
    /// Those, and the small blocks of caches idle since the previous pass.
    Pass,
    /// Everything.
    All,
}

/// A zone shared by `cpus.len()` CPUs. `S` is the metadata storage as for [`Zone`], `C` the
/// caches (`Vec<CpuCache>` on a host, `&'static [CpuCache]` in a kernel), `R` the raw lock.
///
/// ```
/// use prezero_mm::*;
/// struct NoMem;
/// impl PhysMem for NoMem { fn fill(&mut self, _: Pfn, _: u64, _: u8) {} }
///
/// let mut zone = Zone::new(vec![FrameMeta::EMPTY; 4096], Pfn(0), Config::default());
/// zone.add_memory(Pfn(0), 4096, true).unwrap();
/// let caches: Vec<CpuCache> = (0..2).map(|_| CpuCache::new()).collect();
/// let zone = LockedZone::new(zone, caches, CacheConfig::default());
/// std::thread::scope(|s| {
///     for cpu in 0..2 {
///         let zone = &zone;
///         s.spawn(move || {
///             let a = zone.alloc(cpu, 0, AllocFlags::ZERO, &mut NoMem).unwrap();
///             assert!(a.known_zero); // fresh memory, known zero: not zeroed again
///             zone.free(cpu, a.pfn, 0, FreeHint::None, &mut NoMem).unwrap();
///         });
///     }
/// });
/// let c = zone.counts();
/// assert_eq!(c.free + c.cached, c.present);
/// ```
pub struct LockedZone<S, C, R: RawMutex = SpinLock> {
    /// On cache lines of its own: every CPU's fast path reads the fields below, and a lock
    /// word sharing their line would make each zone-lock acquisition anywhere a cache miss
    /// on every CPU's next allocation (false sharing).
    zone: LockLines<Mutex<R, Zone<S>>>,
    cpus: C,
    cache: CacheConfig,
    cfg: Config,
    base: u64,
    frames: u64,
}

impl<S, C, R> LockedZone<S, C, R>
where
    S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>,
    C: AsRef<[CpuCache<R>]>,
    R: RawMutex,
{
    /// Shares `zone` between `cpus.as_ref().len()` CPUs.
    ///
    /// # Panics
    /// If there is no CPU or `cache` is not [valid](CacheConfig::is_valid): configuration
    /// mistakes, not runtime input.
    pub fn new(zone: Zone<S>, cpus: C, cache: CacheConfig) -> Self {
        assert!(!cpus.as_ref().is_empty(), "a zone needs at least one CPU");
        assert!(
            cache.is_valid(),
            "cache marks must satisfy 1 <= batch <= high < {PCP_CAPACITY}"
        );
        let (base, frames) = zone.span();
        LockedZone {
            cfg: *zone.config(),
            zone: LockLines(Mutex::new(zone)),
            cpus,
            cache,
            base: base.0,
            frames,
        }
    }

    /// Number of CPUs.
    pub fn cpus(&self) -> usize {
        self.cpus.as_ref().len()
    }

    /// The caches' sizes and policy.
    pub fn cache_config(&self) -> CacheConfig {
        self.cache
    }

    /// The zone's configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Takes the zone lock: the zone itself, for what has no per-CPU path (huge pages, the
    /// balloon driver, pool resizing). Its counts and counters miss the caches' share: use
    /// [`LockedZone::counts`] and [`LockedZone::stat`] for the whole picture.
    pub fn lock(&self) -> MutexGuard<'_, R, Zone<S>> {
        self.zone.lock()
    }

    /// Gives the zone back, with every cache drained into it.
    pub fn into_inner(self) -> Zone<S> {
        self.drain_all();
        self.zone.0.into_inner()
    }

    fn cpu(&self, cpu: usize) -> Option<&Mutex<R, PerCpuPages>> {
        self.cpus.as_ref().get(cpu).map(|c| &c.0)
    }

    fn pfn(&self, idx: u32) -> Pfn {
        Pfn(self.base + u64::from(idx))
    }

    /// Allocates a block of `1 << order` frames on `cpu`, as [`Zone::alloc`] does. Cached
    /// orders ([`PCP_ORDERS`](crate::PCP_ORDERS)) come from the CPU's cache, refilled from the
    /// zone when empty; if the zone is out of memory, every cache is drained and the zone
    /// tried once more.
    pub fn alloc(
        &self,
        cpu: usize,
        order: u8,
        flags: AllocFlags,
        mem: &mut impl PhysMem,
    ) -> Result<Allocation, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::OrderTooLarge(order));
        }
        let cache = self.cpu(cpu).ok_or(AllocError::NoSuchCpu(cpu))?;
        let zero = flags.contains(AllocFlags::ZERO);
        if let Some(slot) = pcp::slot(order) {
            let mut pcp = cache.lock();
            pcp.busy = true;
            pcp.events.allocs += 1;
            // Both placements sort a cache by content (see `pcp.rs`).
            let preference = ListKind::preference(zero);
            // Zero-aware: an empty preferred list refills (the zone serves the preferred kind
            // first) before the other list is used; Linux placement refills only when both
            // lists are empty.
            let zero_aware = self.cfg.placement == Placement::ZeroAware;
            let first: &[ListKind] = if zero_aware {
                &preference[..1]
            } else {
                &preference
            };
            let mut got = pcp.pop(slot, first);
            if got.is_some() {
                pcp.events.alloc_hits += 1;
            } else {
                pcp.events.refills += 1;
                pcp.events.zone_locks += 1;
                let (high, batch) = self.cache.limits(slot);
                let mut zone = self.zone.lock();
                for _ in 0..batch {
                    let Some((idx, content)) = zone.take(order, zero) else {
                        break;
                    };
                    // The zone may serve the other kind, whose list may be full.
                    if pcp.len(slot, content) >= high {
                        let back = zone.give_back(self.pfn(idx), order, content);
                        debug_assert!(back.is_ok(), "the block was just taken");
                        break;
                    }
                    pcp.push(slot, idx, content);
                }
                drop(zone);
                got = pcp.pop(slot, &preference);
            }
            if let Some((idx, content)) = got {
                return Ok(finish_alloc(
                    &mut pcp.stat,
                    self.pfn(idx),
                    order,
                    zero,
                    content,
                    mem,
                ));
            }
            // The zone had nothing for the refill: the fallback below takes its lock again.
            pcp.events.zone_locks += 1;
        }
        // (The guard must be gone before the drain below, which takes cache locks first.)
        let taken = self.zone.lock().take(order, zero);
        let (idx, content) = match taken {
            Some(block) => block,
            None => {
                // Memory may sit in other CPUs' caches: give it all back and try again.
                self.drain_all();
                self.zone
                    .lock()
                    .take(order, zero)
                    .ok_or(AllocError::OutOfMemory(order))?
            }
        };
        let mut pcp = cache.lock();
        pcp.busy = true;
        Ok(finish_alloc(
            &mut pcp.stat,
            self.pfn(idx),
            order,
            zero,
            content,
            mem,
        ))
    }

    /// Frees a block allocated with [`LockedZone::alloc`] (on any CPU) on `cpu`. Cached orders
    /// go to the CPU's cache with the content the free rules give them; other orders and
    /// balloon deflates ([`FreeHint::Deflated`]) go to the zone, which refuses bad input as
    /// [`Zone::free`] does. See the module doc for what a cached free checks.
    pub fn free(
        &self,
        cpu: usize,
        pfn: Pfn,
        order: u8,
        hint: FreeHint,
        mem: &mut impl PhysMem,
    ) -> Result<(), FreeError> {
        if order > MAX_ORDER {
            return Err(FreeError::OrderTooLarge(order));
        }
        let cache = self.cpu(cpu).ok_or(FreeError::NoSuchCpu(cpu))?;
        let idx = pfn
            .0
            .checked_sub(self.base)
            .filter(|&i| i + (1 << order) <= self.frames)
            .ok_or(FreeError::OutOfZone(pfn))? as u32;
        if pfn.0 & ((1 << order) - 1) != 0 {
            return Err(FreeError::Misaligned { pfn, order });
        }
        let mut pcp = cache.lock();
        let slot = match (pcp::slot(order), hint) {
            (Some(slot), FreeHint::None) => slot,
            _ => {
                // To the zone, checked fully, and counted on this CPU like its allocations.
                let mut zone = self.zone.lock();
                zone.allocated_head(pfn, order, false)?;
                let device = zone.device_init();
                let content = free_content(&mut pcp.stat, &self.cfg, device, pfn, order, hint, mem);
                pcp.busy = true;
                return zone.give_back(pfn, order, content);
            }
        };
        pcp.busy = true;
        pcp.events.frees += 1;
        pcp.report_requested |= self.cache.reporting_drains;
        let device = DeviceInit::default(); // a hint of None never consults the device
        let content = free_content(&mut pcp.stat, &self.cfg, device, pfn, order, hint, mem);
        let (kind, len) = pcp.push(slot, idx, content);
        let (high, batch) = self.cache.limits(slot);
        if len > high {
            let mut buf = [0u32; PCP_CAPACITY];
            let oldest = pcp.take_oldest(slot, kind, batch, &mut buf);
            pcp.events.zone_locks += 1;
            let mut zone = self.zone.lock();
            for &i in oldest {
                let ok = zone
                    .give_back(self.pfn(i), order, content_flags(kind))
                    .is_ok();
                pcp.events.drained_high += 1;
                pcp.events.refused += u64::from(!ok);
            }
        }
        Ok(())
    }

    /// Gives every block cached on `cpu` back to the zone (Linux `drain_local_pages`).
    pub fn drain(&self, cpu: usize) {
        if let Some(cache) = self.cpu(cpu) {
            self.drain_one(cache, Drain::All);
        }
    }

    /// Gives every cached block of every CPU back to the zone (Linux `drain_all_pages`).
    pub fn drain_all(&self) {
        self.drain_caches(Drain::All);
    }

    /// Drains `what` from every cache; returns whether a cache still holds blocks.
    fn drain_caches(&self, what: Drain) -> bool {
        let mut left = false;
        for cache in self.cpus.as_ref() {
            left |= self.drain_one(&cache.0, what);
        }
        left
    }

    fn drain_one(&self, cache: &Mutex<R, PerCpuPages>, what: Drain) -> bool {
        let mut pcp = cache.lock();
        let small_too = match what {
            Drain::All => true,
            Drain::Pass => !core::mem::replace(&mut pcp.busy, false),
            Drain::Reportable => false,
        };
        let reporting_order = self.cfg.reporting_order;
        let mut zone = self.zone.lock();
        let mut refused = 0;
        let pcp = &mut *pcp;
        let n = pcp.drain_where(
            |slot| small_too || PCP_ORDERS[slot] >= reporting_order,
            |slot, idx, content| {
                refused += u64::from(
                    zone.give_back(self.pfn(idx), PCP_ORDERS[slot], content)
                        .is_err(),
                );
            },
        );
        drop(zone);
        match what {
            Drain::All => pcp.events.drained_other += n,
            Drain::Pass | Drain::Reportable => pcp.events.drained_report += n,
        }
        pcp.events.refused += refused;
        pcp.frames().0 > 0
    }

    /// Hands the requests caches recorded since the last call to the zone's pacing.
    fn collect_requests(&self) {
        let mut requested = false;
        for cache in self.cpus.as_ref() {
            requested |= core::mem::take(&mut cache.0.lock().report_requested);
        }
        if requested {
            self.zone.lock().reporting.request();
        }
    }

    /// Whether a reporting pass is due at `now` ([`Zone::report_due`]), counting the frees
    /// into the caches as free activity.
    pub fn report_due(&self, now: u64) -> bool {
        self.collect_requests();
        self.zone.lock().report_due(now)
    }

    /// Frames in reporting candidates: the zone's unreported free blocks of the reporting order
    /// and above, and the cached blocks of those orders (the next pass gives them back first),
    /// unless the caches are [invisible to reporting](CacheConfig::reporting_drains).
    pub fn unreported_free_pages(&self) -> u64 {
        let mut cached = 0;
        if self.cache.reporting_drains {
            for cache in self.cpus.as_ref() {
                let pcp = cache.0.lock();
                cached += pcp
                    .blocks()
                    .filter(|&(slot, _, _)| PCP_ORDERS[slot] >= self.cfg.reporting_order)
                    .map(|(slot, _, _)| 1u64 << PCP_ORDERS[slot])
                    .sum::<u64>();
            }
        }
        cached + self.zone.lock().unreported_free_pages()
    }

    /// Isolates up to `max` candidates for a driver that completes asynchronously, after giving
    /// the cached blocks of reporting order back to the zone ([`Zone::report_take`]).
    pub fn report_take(&self, max: usize) -> ReportBatch {
        if self.cache.reporting_drains {
            self.drain_caches(Drain::Reportable);
        }
        self.zone.lock().report_take(max)
    }

    /// Puts an isolated batch back with the device's answers ([`Zone::report_complete`]).
    pub fn report_complete(&self, batch: ReportBatch, outcomes: &[ReportOutcome]) -> ReportPass {
        self.zone.lock().report_complete(batch, outcomes)
    }

    /// Runs a reporting pass if one is due at `now`, within Linux's budget, as
    /// [`Zone::report_pass`] does, after draining the caches by the rules of `pcp.rs`. The
    /// device is called with no lock held: the CPUs keep allocating meanwhile.
    pub fn report_pass(&self, now: u64, sink: &mut impl ReportSink) -> ReportPass {
        if !self.report_due(now) {
            return ReportPass::default();
        }
        let left = self.cache.reporting_drains && self.drain_caches(Drain::Pass);
        let budget = reporting::budget(&Shared(&self.zone.0), reporting::capacity(sink));
        let pass = self.report_cycle(budget, sink);
        self.zone.lock().reporting = if pass.more || left {
            reporting::Pacing::Requested { since: Some(now) }
        } else {
            reporting::Pacing::Idle
        };
        pass
    }

    /// Reports every candidate now, every cache drained first, ignoring delay and budget
    /// ([`Zone::report_flush`]).
    pub fn report_flush(&self, sink: &mut impl ReportSink) -> ReportPass {
        if self.cache.reporting_drains {
            self.drain_caches(Drain::All);
        }
        let pass = self.report_cycle(u64::MAX, sink);
        if !pass.more {
            self.zone.lock().reporting = reporting::Pacing::Idle;
        }
        pass
    }

    fn report_cycle(&self, budget: u64, sink: &mut impl ReportSink) -> ReportPass {
        let trusted = {
            let zone = self.zone.lock();
            zone.config()
                .trusts_device_zeroing(zone.device_init().reported)
        };
        let drained = reporting::cycle(&mut Shared(&self.zone.0), budget, sink, trusted);
        self.zone.lock().account(drained);
        drained.pass
    }

    /// Runs `f` with every cache lock (in CPU order) and then the zone lock held: a consistent
    /// picture of the whole allocator.
    fn snapshot<T>(&self, f: impl FnOnce(&Zone<S>, &Held<'_, R>) -> T) -> T {
        let cpus = self.cpus.as_ref();
        for cache in cpus {
            core::mem::forget(cache.0.lock());
        }
        let zone = self.zone.lock();
        let out = f(&zone, &Held(cpus));
        drop(zone);
        for cache in cpus {
            // SAFETY: this thread took the lock above and forgot its guard.
            unsafe { cache.0.force_unlock() };
        }
        out
    }

    /// Page counts of the whole allocator at one instant: `cached` holds the frames in CPU
    /// caches, and `allocated` only what callers hold, so `present == free + pool_free +
    /// allocated + huge_allocated + isolated + cached`.
    pub fn counts(&self) -> ZoneCounts {
        self.snapshot(|zone, caches| {
            let mut c = zone.counts();
            for pcp in caches.iter() {
                let (all, zeroed) = pcp.frames();
                c.cached += all;
                c.cached_zeroed += zeroed;
            }
            c.allocated -= c.cached;
            c
        })
    }

    /// Event counters: the zone's plus every CPU's share.
    pub fn stat(&self) -> VmStat {
        self.snapshot(|zone, caches| {
            let mut s = *zone.stat();
            caches.iter().for_each(|pcp| s.add(&pcp.stat));
            s
        })
    }

    /// What the caches did, summed over CPUs.
    pub fn cache_stat(&self) -> CacheStat {
        let mut total = CacheStat::default();
        for cache in self.cpus.as_ref() {
            total.add(&cache.0.lock().events);
        }
        total
    }

    /// What the cache of `cpu` did (zeros for a CPU that does not exist).
    pub fn cpu_stat(&self, cpu: usize) -> (VmStat, CacheStat) {
        self.cpu(cpu)
            .map(|c| {
                let pcp = c.lock();
                (pcp.stat, pcp.events)
            })
            .unwrap_or_default()
    }

    /// Checks the zone ([`Zone::verify`]) and the caches: every cached block is an allocated
    /// buddy block of its list's order, cached once. O(cached blocks squared): for tests and
    /// debugging.
    pub fn verify(&self) -> Result<(), Corruption> {
        self.snapshot(|zone, caches| {
            zone.verify()?;
            let meta = zone.meta.as_ref();
            let all = || caches.iter().flat_map(|pcp| pcp.blocks());
            for (n, (slot, idx, _)) in all().enumerate() {
                let bad = |what| {
                    Err(Corruption {
                        pfn: self.pfn(idx),
                        what,
                    })
                };
                let Some(m) = meta.get(idx as usize) else {
                    return bad("cached block outside the zone");
                };
                if !m.flags.contains(FrameFlags::ALLOCATED) || m.flags.contains(FrameFlags::HUGE) {
                    return bad("cached block is not an allocated buddy block");
                }
                if m.order != PCP_ORDERS[slot] {
                    return bad("cached block's order differs from its list's");
                }
                if all().take(n).any(|(_, other, _)| other == idx) {
                    return bad("block cached twice");
                }
            }
            Ok(())
        })
    }
}

/// A value alone on its cache lines: 128 bytes, because x86's adjacent-line prefetcher pulls
/// lines in pairs (the same choice as `crossbeam-utils`' `CachePadded`), and `repr(align)`
/// also rounds the size up, so nothing follows it on its last line.
#[repr(align(128))]
struct LockLines<T>(T);

impl<T> core::ops::Deref for LockLines<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The caches while a snapshot holds their locks.
struct Held<'a, R: RawMutex>(&'a [CpuCache<R>]);

impl<R: RawMutex> Held<'_, R> {
    fn iter(&self) -> impl Iterator<Item = &PerCpuPages> + '_ {
        // SAFETY: a `Held` exists only inside `LockedZone::snapshot`, which holds every lock,
        // and the references cannot outlive it.
        self.0.iter().map(|c| unsafe { &*c.0.data_ptr() })
    }
}

fn content_flags(kind: ListKind) -> FrameFlags {
    match kind {
        ListKind::Zeroed => FrameFlags::ZEROED,
        ListKind::Unsorted => FrameFlags::empty(),
    }
}

/// The zone seen by the reporting engine from outside its lock: every call takes the lock for
/// one step, so the device is called with no lock held.
struct Shared<'a, S, R: RawMutex>(&'a Mutex<R, Zone<S>>);

impl<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>, R: RawMutex> FreeBlocks for Shared<'_, S, R> {
    fn sources(&self) -> usize {
        self.0.lock().sources()
    }

    fn source_free(&self, source: usize) -> u32 {
        self.0.lock().source_free(source)
    }

    fn isolate_unreported(&mut self, source: usize) -> Option<ReportBlock> {
        self.0.lock().isolate_unreported(source)
    }

    fn putback(&mut self, block: ReportBlock, content: FrameFlags) -> bool {
        self.0.lock().putback(block, content)
    }

    fn unreported_pages(&self) -> u64 {
        self.0.lock().unreported_pages()
    }
}
