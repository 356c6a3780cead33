//! Concurrency model check of the lock and cache protocol of `LockedZone` (`locked.rs`,
//! `pcp.rs`) with `shuttle`'s randomized schedulers: the locks are `lock_api` raw locks over
//! shuttle's atomics, so every lock step is a point where shuttle may switch threads.
//!
//! Small configurations (a 256-frame zone, caches of 2 blocks, reporting from order 2, so
//! that cached blocks are reporting candidates): two CPU threads allocate, write and free while
//! a reporting thread isolates, "discards" (zeroes) and completes batches and flushes. Checked
//! in every schedule:
//! - no frame is handed out twice (an ownership map claimed on every allocation);
//! - counts are conserved at every snapshot: free + cached + allocated + isolated = present;
//! - an allocation said to be known-zero reads zero, and a `ZERO` allocation reads zero;
//! - at the end, the zone and caches pass `LockedZone::verify`.
//!
//! `PREZERO_SHUTTLE_ITERATIONS` (default 2000 per scheduler) scales it.

use prezero_mm::*;
use shuttle::sync::atomic::{AtomicBool, Ordering};
use shuttle::sync::{Arc, Mutex};
use shuttle::thread;

/// A test-and-set lock whose every step shuttle schedules.
struct ShuttleLock(AtomicBool);

unsafe impl lock_api::RawMutex for ShuttleLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = ShuttleLock(AtomicBool::new(false));
    type GuardMarker = lock_api::GuardSend;

    fn lock(&self) {
        while !self.try_lock() {
            thread::yield_now();
        }
    }

    fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

const FRAMES: usize = 256;

type Zone2 = LockedZone<Vec<FrameMeta>, Vec<CpuCache<ShuttleLock>>, ShuttleLock>;

/// Frame contents (one byte per frame; 0 reads as zero) and frame owners (0 = nobody).
struct World {
    ram: Mutex<Vec<u8>>,
    owner: Mutex<Vec<u8>>,
}

struct Mem<'a>(&'a World);

impl PhysMem for Mem<'_> {
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        let start = pfn.0 as usize;
        self.0.ram.lock().unwrap()[start..start + frames as usize].fill(byte);
    }
}

fn setup(cfg: Config) -> (Arc<Zone2>, Arc<World>) {
    let mut zone = Zone::new(vec![FrameMeta::EMPTY; FRAMES], Pfn(0), cfg);
    zone.add_memory(Pfn(0), FRAMES as u64, false).unwrap();
    zone.set_device_init(DeviceInit {
        reported: true,
        on_inflate: false,
    });
    let caches = (0..2).map(|_| CpuCache::new()).collect();
    let cache = CacheConfig {
        high: 2,
        batch: 1,
        pageblock_high: 1,
        pageblock_batch: 1,
        reporting_drains: true,
    };
    let world = World {
        ram: Mutex::new(vec![0xaa; FRAMES]),
        owner: Mutex::new(vec![0; FRAMES]),
    };
    (
        Arc::new(LockedZone::new(zone, caches, cache)),
        Arc::new(world),
    )
}

fn conserved(zone: &Zone2) {
    let c = zone.counts();
    assert_eq!(
        c.free + c.cached + c.allocated + c.isolated + c.pool_free + c.huge_allocated,
        c.present,
        "counts not conserved: {c:?}"
    );
}

/// One CPU's script: `(order, zero)` allocations, each block written and freed two steps later.
fn cpu(zone: &Zone2, world: &World, cpu: usize, script: &[(u8, bool)]) {
    let mut held: Vec<Allocation> = Vec::new();
    for (step, &(order, zero)) in script.iter().enumerate() {
        let flags = if zero {
            AllocFlags::ZERO
        } else {
            AllocFlags::NONE
        };
        let Ok(a) = zone.alloc(cpu, order, flags, &mut Mem(world)) else {
            continue;
        };
        let range = a.pfn.0 as usize..a.pfn.0 as usize + (1 << order);
        {
            let mut owner = world.owner.lock().unwrap();
            for f in range.clone() {
                assert_eq!(owner[f], 0, "frame {f} handed out twice");
                owner[f] = cpu as u8 + 1;
            }
        }
        {
            let mut ram = world.ram.lock().unwrap();
            if zero || a.known_zero {
                assert!(
                    ram[range.clone()].iter().all(|&b| b == 0),
                    "known-zero or ZERO allocation {a:?} does not read zero"
                );
            }
            ram[range].fill(cpu as u8 + 1);
        }
        held.push(a);
        if step % 2 == 1 {
            let old = held.remove(0);
            release(zone, world, cpu, old);
        }
    }
    for a in held {
        release(zone, world, cpu, a);
    }
}

fn release(zone: &Zone2, world: &World, cpu: usize, a: Allocation) {
    let start = a.pfn.0 as usize;
    world.owner.lock().unwrap()[start..start + (1 << a.order)].fill(0);
    zone.free(cpu, a.pfn, a.order, FreeHint::None, &mut Mem(world))
        .unwrap();
}

/// A device that zeroes (discards) every block it is given and says so.
struct Device<'a>(&'a World);

impl ReportSink for Device<'_> {
    fn report(&mut self, blocks: &[ReportBlock], outcomes: &mut [ReportOutcome]) {
        for b in blocks {
            Mem(self.0).fill(b.pfn, b.frames(), 0);
        }
        outcomes.fill(ReportOutcome::ReportedZeroed);
    }
}

fn reporter(zone: &Zone2, world: &World) {
    for _ in 0..2 {
        let batch = zone.report_take(4);
        for b in batch.blocks() {
            let owner = world.owner.lock().unwrap();
            let start = b.pfn.0 as usize;
            assert!(
                owner[start..start + b.frames() as usize]
                    .iter()
                    .all(|&o| o == 0),
                "isolated block {b:?} is allocated"
            );
        }
        let mut outcomes = [ReportOutcome::Failed; REPORTING_CAPACITY];
        Device(world).report(batch.blocks(), &mut outcomes[..batch.len()]);
        let n = batch.len();
        zone.report_complete(batch, &outcomes[..n]);
        conserved(zone);
    }
    zone.report_flush(&mut Device(world));
    conserved(zone);
}

fn scenario(cfg: Config) {
    let (zone, world) = setup(cfg);
    let scripts: [&[(u8, bool)]; 2] = [
        &[
            (0, true),
            (2, false),
            (0, false),
            (3, true),
            (0, true),
            (1, true),
        ],
        &[
            (2, true),
            (0, false),
            (2, true),
            (0, true),
            (3, false),
            (2, true),
        ],
    ];
    let threads: Vec<_> = (0..2)
        .map(|c| {
            let (zone, world) = (zone.clone(), world.clone());
            let script = scripts[c];
            thread::spawn(move || cpu(&zone, &world, c, script))
        })
        .collect();
    let (z, w) = (zone.clone(), world.clone());
    let rep = thread::spawn(move || reporter(&z, &w));
    for t in threads {
        t.join().unwrap();
    }
    rep.join().unwrap();
    conserved(&zone);
    zone.verify().unwrap();
    let c = zone.counts();
    assert_eq!(c.allocated, 0, "everything was freed: {c:?}");
    // Nothing hides in the caches from a flush.
    zone.report_flush(&mut Device(&world));
    assert_eq!(zone.unreported_free_pages(), 0);
}

fn iterations() -> usize {
    std::env::var("PREZERO_SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn reporting_at_order_2() -> Config {
    Config {
        reporting_order: 2,
        ..Config::default()
    }
}

#[test]
fn random_schedules_keep_frames_counts_and_zero() {
    shuttle::check_random(|| scenario(reporting_at_order_2()), iterations());
}

#[test]
fn pct_schedules_keep_frames_counts_and_zero() {
    shuttle::check_pct(|| scenario(reporting_at_order_2()), iterations(), 3);
}

#[test]
fn zero_aware_init_on_free_schedules_keep_frames_counts_and_zero() {
    let cfg = Config {
        placement: Placement::ZeroAware,
        init_on_free: true,
        ..reporting_at_order_2()
    };
    shuttle::check_pct(move || scenario(cfg), iterations(), 3);
}
