//! # prezero-kernel
//!
//! A small x86-64 kernel that QEMU boots (PVH): every physical frame comes from a
//! `prezero-mm` zone, and the virtio-balloon driver runs over virtio-pci.
#![no_std]
#![no_main]

extern crate alloc;

mod balloon;
mod boot;
mod clock;
mod cmdline;
mod heap;
mod idt;
mod libc;
mod mem;
mod paging;
mod pci;
mod physmem;
mod port;
mod power;
mod pvh;
mod run;
mod seed;
mod serial;
mod virtio_pci;

use prezero_mm::Config;

#[no_mangle]
extern "C" fn kmain(start_info: u32) -> ! {
    let t0 = clock::rdtsc();
    let boot_tsc = boot::entry_tsc();
    serial::init();
    idt::init();
    println!("prezero-kernel: kmain");
    // SAFETY: the address QEMU passed in ebx, still identity mapped by the boot tables.
    let info = match unsafe { pvh::BootInfo::read(start_info as u64) } {
        Ok(i) => i,
        Err(e) => fail(e),
    };
    let khz = clock::calibrate();
    println!(
        "prezero-kernel: tsc {} kHz, cmdline \"{}\"",
        khz,
        info.cmdline()
    );
    for r in info.regions() {
        println!(
            "prezero-kernel: e820 {:#014x}-{:#014x} type {}",
            r.start,
            r.start + r.len,
            r.kind
        );
    }
    let layout = mem::init(&info, Config::default()).unwrap_or_else(|e| fail(e));
    paging::init(layout.ram_end).unwrap_or_else(|e| fail(e));
    println!(
        "prezero-kernel: zone {} MiB of {} MiB, image {:#x}-{:#x}, meta {:#x}-{:#x}",
        layout.managed >> 20,
        layout.ram_end >> 20,
        layout.image.0,
        layout.image.1,
        layout.meta.0,
        layout.meta.1
    );
    heap::init(HEAP_AT_BOOT).unwrap_or_else(|e| fail(e));
    let cmdline = info.cmdline();
    mem::CHECK_KNOWN_ZERO.store(
        cmdline::flag(cmdline, "check"),
        core::sync::atomic::Ordering::Relaxed,
    );
    println!(
        "PREZERO event=boot kmain_us={}",
        clock::tsc_to_us(t0 - boot_tsc)
    );
    let memory = physmem::PhysMemory {
        end: layout.ram_end,
    };
    let result = match cmdline::get(cmdline, "scenario").unwrap_or("balloon") {
        "boot" => Ok(()),
        "balloon" => run::run(cmdline, memory),
        "seed" => seed::run(cmdline, memory),
        "fault" => {
            // SAFETY: deliberately reads unmapped memory to show the exception path.
            unsafe { core::ptr::read_volatile(0x7f00_dead_0000 as *const u64) };
            Ok(())
        }
        _ => Err("unknown prezero.scenario (boot, balloon, seed, fault)"),
    };
    if let Err(e) = result {
        fail(e);
    }
    println!(
        "PREZERO event=done us={}",
        clock::tsc_to_us(clock::rdtsc() - boot_tsc)
    );
    power::exit(0)
}

/// Ends the run with a failure line.
fn fail(what: &str) -> ! {
    println!("prezero-kernel: FAIL {what}");
    power::exit(2)
}

/// The heap's first grant from the zone: enough that the driver never grows it while it holds
/// the zone (a 512 MiB balloon's page list is 1 MiB).
const HEAP_AT_BOOT: u64 = 16 << 20;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    serial::force_print(format_args!("prezero-kernel: FAIL panic: {info}\n"));
    power::exit(3)
}
