//! # prezero-kernel
//!
//! A small x86-64 kernel that QEMU boots (PVH, `-kernel`): every physical frame of the VM
//! comes from a `prezero-mm` zone, and the virtio-balloon driver of the Rust guest
//! (`prezero-driver`, the same code) runs over virtio-pci against QEMU's own balloon or
//! `prezero serve` behind `vhost-user-test-device-pci`. Built by `scripts/kernel-build.sh` with
//! the installed stable toolchain and the host target's precompiled `core`/`alloc` (no
//! `rustup target add`, no nightly); booted by `harness/linux/src/kernel_vm.rs`, tested by
//! `harness/linux/tests/kernel_qemu.rs`, measured by `prezero bench seed-table --vm`.
//!
//! | file | job |
//! |---|---|
//! | `boot.rs` | PVH note, 32-bit stub: identity map of 4 GiB (2 MiB pages), PAE, SSE, long mode |
//! | `pvh.rs` | the start info: memory map (e820 types) and command line, copied out |
//! | `mem.rs` | the zone over the RAM of the map (holes, first MiB, image, metadata kept out) |
//! | `paging.rs` | the kernel's page tables from zone frames; device registers mapped uncached |
//! | `heap.rs` | the `alloc` heap: a buddy heap fed with 4 MiB zone blocks |
//! | `clock.rs` | TSC calibrated against the PIT |
//! | `idt.rs` | the 32 CPU exceptions: print what faulted, fail the run |
//! | `serial.rs`, `port.rs` | COM1 console, port I/O |
//! | `power.rs` | ACPI power-off (success) or `isa-debug-exit` (failure code) |
//! | `pci.rs` | configuration space (0xCF8/0xCFC), bus-0 scan, capabilities, BARs |
//! | `virtio_pci.rs` | the virtio-pci modern transport: `prezero-driver`'s `VirtioTransport` |
//! | `balloon.rs` | the shared driver started over the transport |
//! | `run.rs`, `seed.rs` | the scenarios: the balloon run, the seed measurement |
//! | `cmdline.rs` | `prezero.KEY=VALUE` words of the command line |
//! | `libc.rs` | `memcpy` & co., which the precompiled `core` calls |
//!
//! Memory layout: the image at 1 MiB, then the zone's metadata (12 bytes per frame), all the
//! rest of RAM in the zone. One CPU, interrupts off, devices polled. Each result is a
//! `PREZERO event=NAME key=value` line on COM1 (the harness's format for its Linux guests).
//!
//! Command line: `prezero.scenario=` `balloon` (default, `run.rs`), `seed` (`seed.rs`), `boot`
//! (to `kmain` and off), `fault` (a page fault, to show the exception path), `lying-device`
//! (the known-zero check's own test: a fake reporting sink claims dirty blocks zeroed);
//! `prezero.check=1` reads back every block the zone serves as known-zero and fails the run
//! (exit code 4) on a non-zero byte.
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
    // SAFETY: RAM up to `ram_end` is identity mapped (paging.rs) for the kernel's life; the
    // driver touches only what the zone gives it and its rings.
    let memory = unsafe { prezero_driver::IdentityMemory::new(0, layout.ram_end) };
    let result = match cmdline::get(cmdline, "scenario").unwrap_or("balloon") {
        "boot" => Ok(()),
        "balloon" => run::run(cmdline, memory),
        "seed" => seed::run(cmdline, memory),
        "lying-device" => run::lying_device(),
        "fault" => {
            // SAFETY: deliberately reads unmapped memory to show the exception path.
            unsafe { core::ptr::read_volatile(0x7f00_dead_0000 as *const u64) };
            Ok(())
        }
        _ => Err("unknown prezero.scenario (boot, balloon, seed, lying-device, fault)"),
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
