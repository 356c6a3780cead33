//! # prezero-kernel
//!
//! A small x86-64 kernel that QEMU boots (PVH): every physical frame comes from a
//! `prezero-mm` zone, and the virtio-balloon driver runs over virtio-pci.
#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod clock;
mod heap;
mod idt;
mod libc;
mod mem;
mod paging;
mod pci;
mod port;
mod power;
mod pvh;
mod serial;
mod virtio_pci;

use prezero_mm::Config;

#[no_mangle]
extern "C" fn kmain(start_info: u32) -> ! {
    let t0 = clock::rdtsc();
    serial::init();
    idt::init();
    println!("prezero-kernel: kmain");
    // SAFETY: the address QEMU passed in ebx, still identity mapped by the boot tables.
    let info = match unsafe { pvh::BootInfo::read(start_info as u64) } {
        Ok(i) => i,
        Err(e) => fail(e),
    };
    let khz = clock::calibrate();
    println!("prezero-kernel: tsc {} kHz, cmdline \"{}\"", khz, info.cmdline());
    for r in info.regions() {
        println!("prezero-kernel: e820 {:#014x}-{:#014x} type {}", r.start, r.start + r.len, r.kind);
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
    let v = alloc::vec![7u8; 100_000];
    println!("prezero-kernel: heap ok {} boot->here {} us", v.len(), (clock::rdtsc() - t0) / (khz / 1000).max(1));
    for a in pci::scan() {
        let (v, d) = a.ids();
        println!("prezero-kernel: pci {:02x}.{} {v:04x}:{d:04x}", a.device, a.function);
    }
    match virtio_pci::VirtioPci::find(5, 0x1002) {
        Ok(Some(mut dev)) => {
            println!("prezero-kernel: balloon at {:?} features {:#x}", dev.address(), dev.device_features());
            let f = dev.negotiate(dev.device_features()).unwrap_or_else(|e| { println!("{e}"); fail("neg") });
            let mut b = [0u8; 8];
            dev.read_config(0, &mut b).unwrap();
            println!("prezero-kernel: negotiated {f:#x} config {b:?}");
        }
        Ok(None) => println!("prezero-kernel: no balloon"),
        Err(e) => println!("prezero-kernel: {e}"),
    }
    power::exit(0)
}

/// Ends the run with a failure line.
fn fail(what: &str) -> ! {
    println!("prezero-kernel: FAIL {what}");
    power::exit(2)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    serial::force_print(format_args!("prezero-kernel: FAIL panic: {info}\n"));
    power::exit(3)
}
