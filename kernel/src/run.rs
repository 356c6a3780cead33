//! The balloon run: the shared driver (`prezero-driver`) over virtio-pci, driven by the kernel's
//! zone, each step printed as a `PREZERO event=NAME key=value ...` line, the format the harness
//! parses for its Linux guests too.
//!
//! 1. `negotiated`: the driver's features, and what the zone believes (bits 6/7 through the
//!    trust gate).
//! 2. `freed`: `prezero.mib` MiB taken in 2 MiB blocks, written (so the host backs them), freed.
//! 3. `reported`: the zone's reporting engine flushed through the driver (one chain per block;
//!    the device's used lengths say which it zeroed).
//! 4. With `prezero.wait=SECONDS`: `ready`, then the driver follows the device's target
//!    (`prezero balloon set`, or QEMU's `balloon` command) and answers stats requests, printing
//!    `balloon actual=PAGES` on each change, until `prezero.cycles` inflate/deflate cycles came
//!    back to 0 (default 1). The kernel touches no memory meanwhile, so the host can measure
//!    what reporting gave back. Deflated pages are taken back with ZERO at once. With
//!    `prezero.oom_mib=N`, right after the first inflation the kernel allocates N MiB in 4 KiB
//!    pages, deflating on OOM whenever memory runs out (`oom mib= deflated= balloon=`).
//! 5. `zero-alloc`: the workload's amount allocated with ZERO: blocks the device zeroed skip
//!    zeroing (with `prezero.check=1` each is read back and must be zero); against a device
//!    without bits 6/7 nothing may skip.
//! 6. `stats`: the driver's and the zone's counters.

use core::time::Duration;

use prezero_driver::DriverOptions;
use prezero_mm::{
    AllocFlags, DeviceInit, FreeHint, Pfn, ReportBlock, ReportOutcome, ReportSink, FRAME_SIZE,
    PAGEBLOCK_ORDER,
};

use crate::balloon::{self, now, Driver};
use crate::cmdline;
use crate::mem::{self, with_zone, Phys};
use crate::{clock, println};
use prezero_driver::IdentityMemory;

const BLOCK: u64 = FRAME_SIZE << PAGEBLOCK_ORDER;

/// Runs the scenario the command line names; `Err` is the failure line.
pub fn run(cmdline: &str, memory: IdentityMemory) -> Result<(), &'static str> {
    let mib = cmdline::number(cmdline, "mib", 64).map_err(|_| "prezero.mib is not a number")?;
    let wait = cmdline::number(cmdline, "wait", 0).map_err(|_| "prezero.wait is not a number")?;
    let cycles =
        cmdline::number(cmdline, "cycles", 1).map_err(|_| "prezero.cycles is not a number")?;
    let oom_mib =
        cmdline::number(cmdline, "oom_mib", 0).map_err(|_| "prezero.oom_mib is not a number")?;
    let opts = DriverOptions {
        confidential: cmdline::flag(cmdline, "confidential"),
        ..DriverOptions::default()
    };
    let mut driver = balloon::start(memory, opts)?;

    let blocks = (mib << 20) / BLOCK;
    let taken = take(blocks, PAGEBLOCK_ORDER, AllocFlags::NONE)?;
    for &pfn in &taken {
        // SAFETY: a 2 MiB block just allocated, identity mapped.
        unsafe { core::ptr::write_bytes(pfn.addr() as *mut u8, 0x5a, BLOCK as usize) };
    }
    give_back(&taken, PAGEBLOCK_ORDER);
    println!("PREZERO event=freed mib={mib}");

    let t = clock::now_ns();
    let pass = with_zone(|z| z.report_flush(&mut driver));
    println!(
        "PREZERO event=reported requests={} pages={} zeroed={} failed={} us={}",
        pass.requests,
        pass.pages_reported,
        pass.pages_zeroed,
        pass.pages_failed,
        (clock::now_ns() - t) / 1000
    );

    if wait > 0 {
        follow_target(&mut driver, Duration::from_secs(wait), cycles, oom_mib)?;
        // What the balloon cycle freed (deflated pages, the OOM workload) is dirty or reported
        // piecemeal: report it all, as the zone's pacing would a little later.
        with_zone(|z| z.report_flush(&mut driver));
    }
    let before = with_zone(|z| *z.stat());
    let taken = take(blocks, PAGEBLOCK_ORDER, AllocFlags::ZERO)?;
    let after = with_zone(|z| *z.stat());
    give_back(&taken, PAGEBLOCK_ORDER);
    println!(
        "PREZERO event=zero-alloc blocks={} hits={} skipped_pages={} zeroed_pages={} checked={}",
        taken.len(),
        after.zero_alloc_hits - before.zero_alloc_hits,
        after.pages_zero_skipped - before.pages_zero_skipped,
        after.pages_zeroed - before.pages_zeroed,
        mem::CHECK_KNOWN_ZERO.load(core::sync::atomic::Ordering::Relaxed)
    );
    with_zone(|z| z.report_flush(&mut driver));
    let s = driver.stats();
    let v = with_zone(|z| *z.stat());
    println!(
        "PREZERO event=stats report_requests={} inflate_requests={} deflate_requests={} pages_inflated={} pages_inflated_zeroed={} pages_deflated={} stats_updates={} config_changes={} config_reads={} pages_reported={} pages_reported_zeroed={} pages_zero_skipped={} pages_deflated_zeroed={}",
        s.report_requests,
        s.inflate_requests,
        s.deflate_requests,
        s.pages_inflated,
        s.pages_inflated_zeroed,
        s.pages_deflated,
        s.stats_updates,
        s.config_changes,
        driver.transport().config_reads(),
        v.pages_reported,
        v.pages_reported_zeroed,
        v.pages_zero_skipped,
        v.pages_deflated_zeroed
    );
    Ok(())
}

/// Follows the device's target until `cycles` inflations came back to 0, within `limit`;
/// free page reporting runs on the zone's own pacing meanwhile. With `oom_mib`, the first
/// inflation is followed by an allocation of that much memory that deflate-on-OOM must make
/// room for.
fn follow_target(
    driver: &mut Driver,
    limit: Duration,
    cycles: u64,
    mut oom_mib: u64,
) -> Result<(), &'static str> {
    println!("PREZERO event=ready");
    let deadline = now() + limit;
    let (mut last, mut done, mut inflated) = (0usize, 0u64, false);
    while done < cycles {
        if now() >= deadline {
            return Err("timed out following the balloon target");
        }
        with_zone(|z| driver.poll(z, Duration::from_millis(100))).map_err(|e| {
            println!("prezero-kernel: driver: {e}");
            "the balloon driver failed"
        })?;
        let pages = driver.balloon_pages();
        if pages != last {
            println!("PREZERO event=balloon actual={pages}");
            // Deflated pages come back known-zero when the device zeroed them on inflate:
            // take them with ZERO so the known-zero check sees them.
            if pages < last {
                let got = take((last - pages) as u64, 0, AllocFlags::ZERO)?;
                give_back(&got, 0);
            }
            inflated |= pages > 0;
            if pages > last && oom_mib > 0 {
                // `poll` inflated all the way to the target (or as far as memory allowed).
                last = pages;
                out_of_memory(driver, oom_mib)?;
                oom_mib = 0;
                continue;
            }
            if inflated && pages == 0 {
                done += 1;
                inflated = false;
            }
            last = pages;
        }
        let ms = clock::now_ns() / 1_000_000;
        with_zone(|z| z.report_pass(ms, driver));
    }
    Ok(())
}

/// Takes `mib` MiB of 4 KiB pages while the balloon holds most of memory: each allocation
/// that fails asks the driver to deflate on OOM (256 pages, Linux's
/// `OOM_VBALLOON_DEFAULT_PAGES`) and retries, as Linux's OOM notifier does. Prints
/// `oom mib= deflated=`, then frees the pages.
fn out_of_memory(driver: &mut Driver, mib: u64) -> Result<(), &'static str> {
    let pages = (mib << 20) / FRAME_SIZE;
    let mut held = alloc::vec::Vec::with_capacity(pages as usize);
    let mut deflated = 0;
    while (held.len() as u64) < pages {
        if let Some(a) = mem::alloc(0, AllocFlags::NONE) {
            held.push(a.pfn);
            continue;
        }
        let n = with_zone(|z| driver.deflate_on_oom(z)).map_err(|e| {
            println!("prezero-kernel: driver: {e}");
            "deflate on OOM failed"
        })?;
        if n == 0 {
            return Err("out of memory, and the balloon gave nothing back");
        }
        deflated += n;
    }
    give_back(&held, 0);
    println!(
        "PREZERO event=oom mib={mib} deflated={deflated} balloon={}",
        driver.balloon_pages()
    );
    Ok(())
}

/// The known-zero check's own test (`prezero.scenario=lying-device`): a reporting "device"
/// that says it zeroed blocks it never touched, after the kernel wrote them. With
/// `prezero.check=1` the first ZERO allocation that trusts it must fail the run (exit code 4);
/// returning is the failure.
pub fn lying_device() -> Result<(), &'static str> {
    struct Liar;
    impl ReportSink for Liar {
        fn report(&mut self, _: &[ReportBlock], outcomes: &mut [ReportOutcome]) {
            outcomes.fill(ReportOutcome::ReportedZeroed);
        }
    }
    with_zone(|z| {
        z.set_device_init(DeviceInit {
            reported: true,
            on_inflate: false,
        })
    });
    let taken = take(8, PAGEBLOCK_ORDER, AllocFlags::NONE)?;
    for &pfn in &taken {
        // SAFETY: a 2 MiB block just allocated, identity mapped.
        unsafe { core::ptr::write_bytes(pfn.addr() as *mut u8, 0x5a, BLOCK as usize) };
    }
    give_back(&taken, PAGEBLOCK_ORDER);
    with_zone(|z| z.report_flush(&mut Liar));
    take(8, PAGEBLOCK_ORDER, AllocFlags::ZERO)?;
    Err("a lying device's blocks were served known-zero and the check did not notice")
}

/// Takes `n` blocks of `order`.
fn take(n: u64, order: u8, flags: AllocFlags) -> Result<alloc::vec::Vec<Pfn>, &'static str> {
    (0..n)
        .map(|_| {
            mem::alloc(order, flags)
                .map(|a| a.pfn)
                .ok_or("out of memory for the workload")
        })
        .collect()
}

/// Frees blocks of `order` this run took, dirty.
fn give_back(blocks: &[Pfn], order: u8) {
    with_zone(|z| {
        for &pfn in blocks {
            z.free(pfn, order, FreeHint::None, &mut Phys)
                .expect("a block this run allocated");
        }
    });
}
