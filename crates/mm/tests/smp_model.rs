//! The allocator model test for N CPUs: per-CPU streams of random operations on real threads
//! (release build) interleaved with a reporting thread that isolates, discards and completes
//! batches and runs paced and flushed passes, all on one `LockedZone`. Checked continuously:
//! - no frame is handed out twice (an ownership word per frame, claimed by compare-exchange);
//! - an allocation said to be known-zero, and every `ZERO` allocation, reads zero, in a memory
//!   model that tracks each frame's content; the device zeroes only what it reports as zeroed,
//!   and a dishonest answer is refused by the trust gate in the configurations that close it;
//! - no isolated block is owned by anyone;
//! - counts are conserved at every snapshot (free + cached + allocated + isolated = present),
//!   and at the end `verify` passes and everything freed is free.
//!
//! `PREZERO_SMP_CASES` (default 6 configurations) and `PREZERO_SMP_OPS` (default 50,000
//! operations per CPU per case) scale it; `PREZERO_SMP_CPUS` sets the threads (default 2). A
//! long run: `PREZERO_SMP_CASES=24 PREZERO_SMP_OPS=250000 PREZERO_SMP_CPUS=2` (1.2 x 10^7
//! operations). The test prints how many operations it ran.

use prezero_mm::*;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};

const FRAMES: usize = 1 << 14; // 64 MiB

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct World {
    /// Frame contents: 0 reads as zero.
    ram: Vec<AtomicU8>,
    /// Frame owners: 0 nobody, CPU + 1 allocated.
    owner: Vec<AtomicU32>,
}

struct Mem<'a>(&'a World);

impl PhysMem for Mem<'_> {
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        for b in &self.0.ram[pfn.0 as usize..(pfn.0 + frames) as usize] {
            b.store(byte, Relaxed);
        }
    }
}

impl World {
    fn reads(&self, pfn: Pfn, frames: u64, byte: u8) -> bool {
        self.ram[pfn.0 as usize..(pfn.0 + frames) as usize]
            .iter()
            .all(|b| b.load(Relaxed) == byte)
    }
}

/// xorshift64*: the per-thread operation stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Shared = LockedZone<Vec<FrameMeta>, Vec<CpuCache>>;

fn cpu_stream(zone: &Shared, world: &World, cpu: usize, ops: u64, seed: u64) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut held: Vec<Allocation> = Vec::new();
    let mut done = 0;
    for _ in 0..ops {
        done += 1;
        if held.len() < 8 || (rng.below(100) < 55 && held.len() < 400) {
            // Mostly small orders (the cached ones), some pageblocks, a few others.
            let order = match rng.below(20) {
                0..=9 => 0,
                10..=12 => rng.below(4) as u8,
                13..=15 => PAGEBLOCK_ORDER,
                _ => rng.below(MAX_ORDER as u64 + 1) as u8,
            };
            let zero = rng.below(2) == 0;
            let flags = if zero {
                AllocFlags::ZERO
            } else {
                AllocFlags::NONE
            };
            let Ok(a) = zone.alloc(cpu, order, flags, &mut Mem(world)) else {
                continue;
            };
            let frames = 1u64 << order;
            for f in a.pfn.0..a.pfn.0 + frames {
                let prev = world.owner[f as usize].swap(cpu as u32 + 1, AcqRel);
                assert_eq!(
                    prev, 0,
                    "frame {f:#x} handed out twice ({a:?} on CPU {cpu})"
                );
            }
            if zero || a.known_zero {
                assert!(
                    world.reads(a.pfn, frames, 0),
                    "{a:?} (ZERO {zero}) on CPU {cpu} does not read zero"
                );
            }
            if rng.below(2) == 0 {
                Mem(world).fill(a.pfn, frames, 0x40 + cpu as u8);
            }
            held.push(a);
        } else {
            let a = held.swap_remove(rng.below(held.len() as u64) as usize);
            for f in a.pfn.0..a.pfn.0 + (1 << a.order) {
                world.owner[f as usize].store(0, Release);
            }
            zone.free(cpu, a.pfn, a.order, FreeHint::None, &mut Mem(world))
                .unwrap();
        }
    }
    for a in held {
        for f in a.pfn.0..a.pfn.0 + (1 << a.order) {
            world.owner[f as usize].store(0, Release);
        }
        zone.free(cpu, a.pfn, a.order, FreeHint::None, &mut Mem(world))
            .unwrap();
    }
    done
}

/// The device: answers at random (failed, reported, reported-zeroed) and, when honest, zeroes
/// exactly what it says it zeroed; a dishonest one claims zeroed without zeroing.
struct Device<'a> {
    world: &'a World,
    rng: Rng,
    honest: bool,
}

impl ReportSink for Device<'_> {
    fn report(&mut self, blocks: &[ReportBlock], outcomes: &mut [ReportOutcome]) {
        for (b, o) in blocks.iter().zip(outcomes.iter_mut()) {
            for f in b.pfn.0..b.pfn.0 + b.frames() {
                assert_eq!(
                    self.world.owner[f as usize].load(Acquire),
                    0,
                    "isolated {b:?} is allocated"
                );
            }
            *o = match self.rng.below(10) {
                0 => ReportOutcome::Failed,
                1 => ReportOutcome::Reported,
                _ => ReportOutcome::ReportedZeroed,
            };
            if *o == ReportOutcome::ReportedZeroed && self.honest {
                Mem(self.world).fill(b.pfn, b.frames(), 0);
            }
        }
    }
}

fn conserved(zone: &Shared) {
    let c = zone.counts();
    assert_eq!(
        c.free + c.cached + c.allocated + c.isolated + c.pool_free + c.huge_allocated,
        c.present,
        "counts not conserved: {c:?}"
    );
}

fn reporter(zone: &Shared, world: &World, stop: &AtomicBool, seed: u64, honest: bool) -> u64 {
    let mut device = Device {
        world,
        rng: Rng(seed | 1),
        honest,
    };
    let mut rounds = 0;
    let mut now = 0;
    while !stop.load(Acquire) {
        rounds += 1;
        match device.rng.below(4) {
            0 => {
                let batch = zone.report_take(1 + device.rng.below(32) as usize);
                let mut outcomes = [ReportOutcome::Failed; REPORTING_CAPACITY];
                device.report(batch.blocks(), &mut outcomes[..batch.len()]);
                let n = batch.len();
                zone.report_complete(batch, &outcomes[..n]);
            }
            1 => {
                zone.report_flush(&mut device);
            }
            _ => {
                now += zone.config().reporting_delay / 2;
                zone.report_pass(now, &mut device);
            }
        }
        conserved(zone);
        std::thread::yield_now();
    }
    rounds
}

fn case(i: u64, cpus: usize, ops: u64) -> u64 {
    let mut rng = Rng(0x9e37_79b9 ^ (i * 0x1000_0001));
    let cfg = Config {
        placement: if i % 2 == 0 {
            Placement::Linux
        } else {
            Placement::ZeroAware
        },
        init_on_free: i % 3 == 2,
        poison: [None, None, Some(0), Some(0xaa)][(i % 4) as usize],
        confidential: i % 5 == 4,
        reporting_order: [9, 9, 3, 0][(i / 2 % 4) as usize],
        ..Config::default()
    };
    // A dishonest device (claims zeroed, zeroes nothing) where the trust gate is closed: the
    // allocator must not believe it.
    let honest = cfg.trusts_device_zeroing(true);
    let world = World {
        ram: (0..FRAMES).map(|_| AtomicU8::new(0xaa)).collect(),
        owner: (0..FRAMES).map(|_| AtomicU32::new(0)).collect(),
    };
    let mut zone = Zone::new(vec![FrameMeta::EMPTY; FRAMES], Pfn(0), cfg);
    zone.add_memory(Pfn(0), FRAMES as u64, false).unwrap();
    zone.set_device_init(DeviceInit {
        reported: true,
        on_inflate: false,
    });
    let cache = CacheConfig {
        high: 1 + rng.below(40) as u16,
        batch: 1,
        pageblock_high: 1 + rng.below(8) as u16,
        pageblock_batch: 1,
        reporting_drains: true,
    };
    let cache = CacheConfig {
        batch: 1 + rng.below(cache.high as u64) as u16,
        pageblock_batch: 1 + rng.below(cache.pageblock_high as u64) as u16,
        ..cache
    };
    let zone: Shared = LockedZone::new(zone, (0..cpus).map(|_| CpuCache::new()).collect(), cache);
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        let seed = rng.next();
        let (zone_r, world_r, stop_r) = (&zone, &world, &stop);
        let rep = s.spawn(move || reporter(zone_r, world_r, stop_r, seed, honest));
        let streams: Vec<_> = (0..cpus)
            .map(|cpu| {
                let (zone, world, total) = (&zone, &world, &total);
                let seed = rng.next();
                s.spawn(move || total.fetch_add(cpu_stream(zone, world, cpu, ops, seed), Relaxed))
            })
            .collect();
        // Every stream joined before the reporter is stopped, whatever they did: a stream that
        // failed a check must fail the test, not leave the reporter running forever.
        let streams: Vec<_> = streams.into_iter().map(|t| t.join()).collect();
        stop.store(true, Release);
        let reported = rep.join();
        for r in streams {
            r.unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
        total.fetch_add(reported.unwrap(), Relaxed);
    });
    zone.verify().unwrap();
    conserved(&zone);
    let c = zone.counts();
    assert_eq!(c.allocated, 0, "{c:?}");
    assert_eq!(c.free + c.cached, c.present, "{c:?}");
    let s = zone.stat();
    assert!(s.alloc_blocks > 0 && s.free_blocks > 0);
    total.into_inner()
}

#[test]
fn per_cpu_streams_with_concurrent_reporting_keep_frames_counts_and_zero() {
    let cases = env("PREZERO_SMP_CASES", 6);
    let ops = env("PREZERO_SMP_OPS", 50_000);
    let cpus = env("PREZERO_SMP_CPUS", 2) as usize;
    let total: u64 = (0..cases).map(|i| case(i, cpus, ops)).sum();
    println!("smp model: {cases} cases x {cpus} CPUs: {total} operations (CPU streams and reporting rounds)");
}
