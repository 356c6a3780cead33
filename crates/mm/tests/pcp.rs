//! The per-CPU caches' rules (`pcp.rs`): known-zero rides through them, zero-aware placement
//! applies to them, and free memory does not hide in them from reporting, with Linux's
//! behaviour as the negative control.

use prezero_mm::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Barrier;

/// Frame contents, one byte per frame (0 reads as zero), shared by threads.
struct Ram(Vec<AtomicU8>);

impl Ram {
    fn new(frames: usize, byte: u8) -> Self {
        Ram((0..frames).map(|_| AtomicU8::new(byte)).collect())
    }
    fn is_zero(&self, pfn: Pfn, frames: u64) -> bool {
        self.0[pfn.0 as usize..(pfn.0 + frames) as usize]
            .iter()
            .all(|b| b.load(Ordering::Relaxed) == 0)
    }
}

impl PhysMem for &Ram {
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        for b in &self.0[pfn.0 as usize..(pfn.0 + frames) as usize] {
            b.store(byte, Ordering::Relaxed);
        }
    }
}

/// A device that discards (zeroes) what it is given and says so.
struct ZeroingDevice<'a>(&'a Ram);

impl ReportSink for ZeroingDevice<'_> {
    fn report(&mut self, blocks: &[ReportBlock], outcomes: &mut [ReportOutcome]) {
        for b in blocks {
            let mut ram = self.0;
            ram.fill(b.pfn, b.frames(), 0);
        }
        outcomes.fill(ReportOutcome::ReportedZeroed);
    }
}

type Shared = LockedZone<Vec<FrameMeta>, Vec<CpuCache>>;

fn shared(frames: usize, cfg: Config, cache: CacheConfig, cpus: usize) -> Shared {
    let mut zone = Zone::new(vec![FrameMeta::EMPTY; frames], Pfn(0), cfg);
    zone.add_memory(Pfn(0), frames as u64, false).unwrap();
    zone.set_device_init(DeviceInit {
        reported: true,
        on_inflate: false,
    });
    LockedZone::new(zone, (0..cpus).map(|_| CpuCache::new()).collect(), cache)
}

const BLOCKS: usize = 64;
const MIB: usize = 256;

/// The hole: CPU 1 frees 64 x 2 MiB blocks while CPU 0 allocates and frees pages, then the
/// guest goes idle and reporting runs its paced passes (2 s apart). Returns how many of the 64
/// blocks ended up in reported, known-zero free blocks, and how many of 64 `ZERO` 2 MiB
/// allocations on CPU 1 afterwards were known-zero.
fn free_while_allocating_then_idle(cache: CacheConfig) -> (usize, usize) {
    let frames = MIB << 8;
    let ram = Ram::new(frames, 0xaa);
    let zone = shared(frames, Config::default(), cache, 2);
    let dirty = &ram;
    let blocks: Vec<Pfn> = (0..BLOCKS)
        .map(|_| {
            let a = zone.alloc(1, 9, AllocFlags::NONE, &mut { dirty }).unwrap();
            a.pfn
        })
        .collect();
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            barrier.wait();
            let mut held = Vec::new();
            for i in 0..20_000 {
                held.push(
                    zone.alloc(0, 0, AllocFlags::ZERO, &mut { dirty })
                        .unwrap()
                        .pfn,
                );
                if i % 3 != 0 {
                    let pfn = held.swap_remove(i % held.len());
                    zone.free(0, pfn, 0, FreeHint::None, &mut { dirty })
                        .unwrap();
                }
            }
            for pfn in held {
                zone.free(0, pfn, 0, FreeHint::None, &mut { dirty })
                    .unwrap();
            }
        });
        s.spawn(|| {
            barrier.wait();
            for &pfn in &blocks {
                zone.free(1, pfn, 9, FreeHint::None, &mut { dirty })
                    .unwrap();
            }
        });
    });
    // Idle: the paced passes run, 2 s of guest time apart, until none is due any more.
    let delay = zone.config().reporting_delay;
    let mut now = 0;
    let mut device = ZeroingDevice(&ram);
    for _ in 0..100 {
        zone.report_pass(now, &mut device);
        now += delay;
    }
    zone.verify().unwrap();
    let guard = zone.lock();
    let reported = blocks
        .iter()
        .filter(|&&pfn| {
            guard.blocks().any(|b| {
                b.state == BlockState::Free
                    && b.reported
                    && b.zeroed
                    && b.pfn <= pfn
                    && pfn.0 < b.pfn.0 + (1 << b.order)
            })
        })
        .count();
    drop(guard);
    let mut known_zero = 0;
    for _ in 0..BLOCKS {
        let a = zone.alloc(1, 9, AllocFlags::ZERO, &mut { dirty }).unwrap();
        assert!(ram.is_zero(a.pfn, 512), "a ZERO allocation reads zero");
        known_zero += usize::from(a.known_zero);
    }
    (reported, known_zero)
}

#[test]
fn freed_pageblocks_in_cpu_caches_are_reported_and_come_back_known_zero() {
    let (reported, known_zero) = free_while_allocating_then_idle(CacheConfig::default());
    assert_eq!(reported, BLOCKS, "every freed 2 MiB block is reported");
    assert_eq!(known_zero, BLOCKS, "and comes back known-zero");
}

#[test]
fn linux_like_caches_keep_freed_pageblocks_unreported() {
    // The negative control: Linux's pcp lists are invisible to page_reporting.
    let cache = CacheConfig::linux_like();
    let (reported, known_zero) = free_while_allocating_then_idle(cache);
    let stuck = BLOCKS - reported;
    // At least the blocks cached on CPU 1 stay unreported (more when CPU 0 split one of the
    // freed blocks into pages that its own cache keeps).
    assert!(
        stuck >= cache.pageblock_high as usize,
        "only {stuck} of {BLOCKS} stayed unreported"
    );
    // CPU 1's ZERO allocations take its cached dirty blocks first and must zero them.
    assert!(
        known_zero <= BLOCKS - cache.pageblock_high as usize,
        "{known_zero} known-zero"
    );
}

#[test]
fn known_zero_rides_through_a_cache_and_dirty_stays_dirty() {
    let ram = Ram::new(1 << 12, 0xaa);
    let cfg = Config {
        init_on_free: true,
        ..Config::default()
    };
    let zone = shared(1 << 12, cfg, CacheConfig::default(), 2);
    let a = zone.alloc(0, 0, AllocFlags::NONE, &mut &ram).unwrap();
    assert!(!a.known_zero, "fresh memory here is dirty");
    zone.free(0, a.pfn, 0, FreeHint::None, &mut &ram).unwrap();
    // The refill brought a batch of dirty pages; the freed one went in known-zero.
    assert_eq!(zone.counts().cached_zeroed, 1);
    let before = zone.stat();
    let b = zone.alloc(0, 0, AllocFlags::ZERO, &mut &ram).unwrap();
    assert_eq!(b.pfn, a.pfn, "the cache hands back its most recent block");
    assert!(
        b.known_zero,
        "init-on-free made it known-zero, and the cache kept that"
    );
    assert_eq!(
        zone.stat().pages_zeroed,
        before.pages_zeroed,
        "not zeroed again"
    );
    assert!(ram.is_zero(b.pfn, 1));

    // Without init-on-free a freed page is dirty in the cache: ZERO zeroes it.
    let zone = shared(1 << 12, Config::default(), CacheConfig::default(), 1);
    let a = zone.alloc(0, 0, AllocFlags::NONE, &mut &ram).unwrap();
    (&ram).fill(a.pfn, 1, 0x55);
    zone.free(0, a.pfn, 0, FreeHint::None, &mut &ram).unwrap();
    let b = zone.alloc(0, 0, AllocFlags::ZERO, &mut &ram).unwrap();
    assert_eq!(b.pfn, a.pfn);
    assert!(!b.known_zero);
    assert!(ram.is_zero(b.pfn, 1), "zeroed because it was dirty");
    assert_eq!(zone.stat().pages_zeroed, 1);
}

#[test]
fn zero_aware_placement_applies_to_the_caches() {
    let frames = 1 << 12;
    for placement in [Placement::ZeroAware, Placement::Linux] {
        let ram = Ram::new(frames, 0);
        let cfg = Config {
            placement,
            ..Config::default()
        };
        let mut zone = Zone::new(vec![FrameMeta::EMPTY; frames], Pfn(0), cfg);
        zone.add_memory(Pfn(0), frames as u64, true).unwrap(); // fresh memory: known-zero
        let zone: Shared = LockedZone::new(zone, vec![CpuCache::new()], CacheConfig::default());
        // A refill brings known-zero pages; one is dirtied and freed: it tops the cache.
        let d = zone.alloc(0, 0, AllocFlags::NONE, &mut &ram).unwrap();
        (&ram).fill(d.pfn, 1, 0x55);
        zone.free(0, d.pfn, 0, FreeHint::None, &mut &ram).unwrap();
        let c = zone.counts();
        assert_eq!(c.cached - c.cached_zeroed, 1, "{c:?}");
        let z = zone.alloc(0, 0, AllocFlags::ZERO, &mut &ram).unwrap();
        assert!(ram.is_zero(z.pfn, 1));
        // ZERO takes a known-zero page past the dirty one on top (under both placements: the
        // cache's two lists cost nothing to search)...
        assert!(z.known_zero && z.pfn != d.pfn, "{placement:?}: {z:?}");
        // ...and the others take dirty pages first.
        let n = zone.alloc(0, 0, AllocFlags::NONE, &mut &ram).unwrap();
        assert_eq!(n.pfn, d.pfn, "{placement:?}");
    }
}

#[test]
fn reported_frees_bypass_the_caches_and_keep_reported() {
    let ram = Ram::new(1 << 12, 0);
    let zone = shared(1 << 12, Config::default(), CacheConfig::default(), 1);
    let a = zone.alloc(0, 0, AllocFlags::NONE, &mut &ram).unwrap();
    zone.free(
        0,
        a.pfn,
        0,
        FreeHint::Deflated {
            device_zeroed: false,
        },
        &mut &ram,
    )
    .unwrap();
    let c = zone.counts();
    assert_eq!(
        c.free_reported, 1,
        "the deflated page is free and reported: {c:?}"
    );
    assert_eq!(zone.stat().pages_deflated, 1);
}

#[test]
fn an_allocation_drains_other_cpus_caches_before_it_fails() {
    let ram = Ram::new(1 << 10, 0);
    let zone = shared(1 << 10, Config::default(), CacheConfig::default(), 2);
    // CPU 1 allocates everything page by page and frees it: its cache keeps some.
    let pages: Vec<Pfn> = (0..1 << 10)
        .map(|_| zone.alloc(1, 0, AllocFlags::NONE, &mut &ram).unwrap().pfn)
        .collect();
    for pfn in pages {
        zone.free(1, pfn, 0, FreeHint::None, &mut &ram).unwrap();
    }
    assert!(zone.counts().cached > 0);
    // CPU 0 needs the whole zone in one block.
    let all = zone.alloc(0, 10, AllocFlags::NONE, &mut &ram).unwrap();
    assert_eq!(all.order, 10);
    assert_eq!(zone.counts().cached, 0);
    assert!(zone.alloc(0, 0, AllocFlags::NONE, &mut &ram).is_err());
    assert_eq!(
        zone.alloc(2, 0, AllocFlags::NONE, &mut &ram),
        Err(AllocError::NoSuchCpu(2))
    );
}

#[test]
fn a_double_free_through_a_cache_is_refused_when_it_drains() {
    let ram = Ram::new(1 << 10, 0);
    let zone = shared(1 << 10, Config::default(), CacheConfig::default(), 2);
    let a = zone.alloc(0, 0, AllocFlags::NONE, &mut &ram).unwrap();
    zone.free(0, a.pfn, 0, FreeHint::None, &mut &ram).unwrap();
    zone.free(1, a.pfn, 0, FreeHint::None, &mut &ram).unwrap();
    assert!(zone.verify().is_err(), "verify sees the block cached twice");
    zone.drain_all();
    assert_eq!(zone.cache_stat().refused, 1);
    zone.verify().unwrap();
    let c = zone.counts();
    assert_eq!(c.free, c.present);
}

/// The structural figure behind scaling, which no machine load changes: a CPU takes the zone
/// lock only to move `batch` blocks, and not at all once its working set sits in its cache.
/// Two CPUs on two threads: first a working set under `high` (only the first round refills),
/// then one of 4 x `high` (every block passes through the zone, `batch` per lock).
#[test]
fn cpus_take_the_zone_lock_once_per_batch_and_not_on_cache_hits() {
    let cache = CacheConfig::default();
    let (high, batch) = (cache.high as usize, cache.batch as usize);
    let ram = Ram::new(1 << 14, 0);
    let zone = shared(1 << 14, Config::default(), cache, 2);
    let rounds = |cpu: usize, set: usize, n: usize| {
        for _ in 0..n {
            let held: Vec<Pfn> = (0..set)
                .map(|_| zone.alloc(cpu, 0, AllocFlags::NONE, &mut &ram).unwrap().pfn)
                .collect();
            for pfn in held.into_iter().rev() {
                zone.free(cpu, pfn, 0, FreeHint::None, &mut &ram).unwrap();
            }
        }
    };
    let (zone, rounds) = (&zone, &rounds);
    std::thread::scope(|s| {
        for cpu in 0..2 {
            s.spawn(move || {
                let set = high / 2;
                rounds(cpu, set, 1000);
                let (_, first) = zone.cpu_stat(cpu);
                assert_eq!(first.allocs, 1000 * set as u64);
                assert_eq!(
                    first.zone_locks,
                    set.div_ceil(batch) as u64,
                    "CPU {cpu}: only the first round's refills take the zone lock"
                );
                let n: u64 = 100;
                rounds(cpu, 4 * high, n as usize);
                let (_, st) = zone.cpu_stat(cpu);
                let ops = st.allocs + st.frees - first.allocs - first.frees;
                let locks = st.zone_locks - first.zone_locks;
                // One lock per `batch` blocks each way, plus a partial batch per round.
                let bound = ops / batch as u64 + 2 * n;
                assert!(
                    locks <= bound,
                    "CPU {cpu}: {locks} zone locks for {ops} operations (bound {bound})"
                );
                assert!(
                    locks >= ops / (2 * high as u64),
                    "the zone served the blocks"
                );
            });
        }
    });
    zone.verify().unwrap();
    let c = zone.counts();
    assert_eq!(c.free + c.cached, c.present);
}
