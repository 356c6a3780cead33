//! The upstream measurement inside the VM (`prezero bench seed-table --vm` gathers it): after
//! free page reporting, allocate `prezero.alloc_mib` MiB (256) with ZERO and touch every 4 KiB
//! page, timed by the TSC, `prezero.repeats` times (9), in one of three modes
//! (`prezero.mode=`):
//!
//! - `baseline`: the driver refuses bits 6 and 7, so the device's "zeroed" answers do not
//!   exist and every ZERO allocation zeroes (the device claims off);
//! - `optimized`: bits 6 and 7 negotiated, known-zero blocks skip zeroing;
//! - `floor`: no zeroing at all (allocation without ZERO, then the touch): the host still
//!   faults in and zeroes each punched page on first touch, so nothing can be faster.
//!
//! At start the kernel dirties all its free memory once (a guest that ran something) and
//! reports it; after each timed run it frees the blocks dirty and reports them again, so every
//! run starts from the same state. Three granularities: 2 MiB blocks (`block_2m`, the THP
//! analogue), 4 KiB pages (`page_4k`), 2 MiB pages of the huge page pool (`huge_pool`, the
//! hugetlbfs analogue). Each run prints
//! `PREZERO event=seed-run gran=G mode=M repeat=I total_ns= alloc_ns= hits= blocks=`.

use alloc::vec::Vec;

use prezero_balloon::features::{DEVICE_INIT_ON_INFLATE, DEVICE_INIT_REPORTED};
use prezero_driver::DriverOptions;
use prezero_mm::{AllocFlags, FreeHint, Pfn, FRAME_SIZE, HUGE_PAGE_ORDER, MAX_ORDER};

use crate::balloon::{self, Driver};
use crate::mem::{self, with_zone, Phys};
use crate::{clock, cmdline, println};
use prezero_driver::IdentityMemory;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Buddy(u8),
    HugePool,
}

impl Source {
    fn order(self) -> u8 {
        match self {
            Source::Buddy(o) => o,
            Source::HugePool => HUGE_PAGE_ORDER,
        }
    }
}

/// Runs the measurement the command line names.
pub fn run(cmdline: &str, memory: IdentityMemory) -> Result<(), &'static str> {
    let alloc_mib = cmdline::number(cmdline, "alloc_mib", 256)
        .map_err(|_| "prezero.alloc_mib is not a number")?;
    let repeats =
        cmdline::number(cmdline, "repeats", 9).map_err(|_| "prezero.repeats is not a number")?;
    let mode = cmdline::get(cmdline, "mode").unwrap_or("optimized");
    let (refuse, flags) = match mode {
        "baseline" => (
            (1 << DEVICE_INIT_REPORTED) | (1 << DEVICE_INIT_ON_INFLATE),
            AllocFlags::ZERO,
        ),
        "optimized" => (0, AllocFlags::ZERO),
        "floor" => (0, AllocFlags::NONE),
        _ => return Err("prezero.mode must be baseline, optimized or floor"),
    };
    let mut driver = balloon::start(
        memory,
        DriverOptions {
            refuse,
            ..DriverOptions::default()
        },
    )?;
    let dirtied = dirty_and_free()?;
    report(&mut driver)?;
    println!("PREZERO event=seed-start mode={mode} dirtied_mib={} alloc_mib={alloc_mib} repeats={repeats}", dirtied >> 20);
    let bytes = alloc_mib << 20;
    for (name, source) in [
        ("block_2m", Source::Buddy(9)),
        ("page_4k", Source::Buddy(0)),
        ("huge_pool", Source::HugePool),
    ] {
        if source == Source::HugePool {
            let pages = bytes / (FRAME_SIZE << HUGE_PAGE_ORDER);
            if with_zone(|z| z.pool_resize(pages)) < pages {
                return Err("the zone could not fill the huge page pool");
            }
            report(&mut driver)?;
        }
        for repeat in 0..repeats {
            let (total_ns, alloc_ns, hits, blocks) = alloc_and_touch(bytes, source, flags)?;
            println!(
                "PREZERO event=seed-run gran={name} mode={mode} repeat={repeat} total_ns={total_ns} alloc_ns={alloc_ns} hits={hits} blocks={}",
                blocks.len()
            );
            free_run(&blocks, source);
            report(&mut driver)?;
        }
    }
    Ok(())
}

/// Allocates every free block once (largest first), writes it and frees it: all free memory
/// is then dirty, as in a guest that ran something. Returns the bytes dirtied.
fn dirty_and_free() -> Result<u64, &'static str> {
    let mut held: Vec<(Pfn, u8)> = Vec::with_capacity(16384);
    let mut dirtied = 0;
    for order in (0..=MAX_ORDER).rev() {
        while held.len() < held.capacity() {
            let Some(a) = mem::alloc(order, AllocFlags::NONE) else {
                break;
            };
            let len = FRAME_SIZE << order;
            // SAFETY: a block just allocated, identity-mapped RAM.
            unsafe { core::ptr::write_bytes(a.pfn.addr() as *mut u8, 0xa5, len as usize) };
            held.push((a.pfn, order));
            dirtied += len;
        }
    }
    with_zone(|z| {
        for &(pfn, order) in &held {
            z.free(pfn, order, FreeHint::None, &mut Phys)
                .expect("a block dirty_and_free allocated");
        }
    });
    Ok(dirtied)
}

/// One timed run: `(total ns, allocation ns, known-zero blocks, the blocks)`.
fn alloc_and_touch(
    bytes: u64,
    source: Source,
    flags: AllocFlags,
) -> Result<(u64, u64, u64, Vec<Pfn>), &'static str> {
    let block = FRAME_SIZE << source.order();
    let n = bytes.div_ceil(block) as usize;
    let mut blocks = Vec::with_capacity(n);
    let mut hits = 0;
    let check = mem::CHECK_KNOWN_ZERO.load(core::sync::atomic::Ordering::Relaxed);
    let start = clock::rdtsc();
    with_zone(|z| -> Result<(), &'static str> {
        for _ in 0..n {
            let a = match source {
                Source::Buddy(order) => z.alloc(order, flags, &mut Phys),
                Source::HugePool => z.alloc_huge(flags, &mut Phys),
            }
            .map_err(|_| "out of memory in a timed run")?;
            hits += u64::from(a.known_zero);
            blocks.push(a.pfn);
        }
        Ok(())
    })?;
    let allocated = clock::rdtsc();
    for pfn in &blocks {
        let mut gpa = pfn.addr();
        let end = gpa + block;
        while gpa < end {
            // SAFETY: an allocated block, identity-mapped RAM.
            unsafe { core::ptr::write_volatile(gpa as *mut u8, 1) };
            gpa += FRAME_SIZE;
        }
    }
    let end = clock::rdtsc();
    if check && flags.contains(AllocFlags::ZERO) {
        // After the timing: every page must read zero but the byte the touch wrote.
        for pfn in &blocks {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(pfn.addr() as *mut u8, 0) };
            for f in 1..1u64 << source.order() {
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile((pfn.addr() + f * FRAME_SIZE) as *mut u8, 0) };
            }
            mem::verify_zero(*pfn, 1 << source.order());
        }
    }
    Ok((
        clock::tsc_to_ns(end - start),
        clock::tsc_to_ns(allocated - start),
        hits,
        blocks,
    ))
}

fn free_run(blocks: &[Pfn], source: Source) {
    with_zone(|z| {
        for &pfn in blocks {
            match source {
                Source::Buddy(order) => z.free(pfn, order, FreeHint::None, &mut Phys),
                Source::HugePool => z.free_huge(pfn, FreeHint::None, &mut Phys),
            }
            .expect("a block this run allocated");
        }
    });
}

/// Reports all free memory (the device punches it out of the memfd).
fn report(driver: &mut Driver) -> Result<(), &'static str> {
    let pass = with_zone(|z| z.report_flush(driver));
    if pass.pages_failed > 0 {
        return Err("the device failed reported pages");
    }
    Ok(())
}
