//! Ending the run with an exit status QEMU passes on.
//!
//! - Success: ACPI soft-off (S5), QEMU exits 0: `SLP_EN` (bit 13) with `SLP_TYP` 0 (QEMU's
//!   `_S5` value) written to PM1a control, at offset 4 of the PM I/O base that the firmware
//!   programmed into the chipset: PIIX4 function 00:01.3 register 0x40 on `-M pc`, ICH9 LPC
//!   00:1f.0 register 0x40 on `q35` (SeaBIOS puts it at 0x600 on both here). QEMU acts on it
//!   asynchronously, so the CPU halts and waits.
//! - Failure: QEMU's `isa-debug-exit` device at port 0xf4 (`-device isa-debug-exit`): writing
//!   `code` makes QEMU exit with `(code << 1) | 1`, never 0. Without that device the write is
//!   ignored and the run powers off; the status line on the console still says what failed.

use crate::port::{inl, outl, outw};

/// The debug-exit port (`-device isa-debug-exit,iobase=0xf4,iosize=4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Ends the run: `code` 0 is success.
pub fn exit(code: u32) -> ! {
    crate::serial::force_print(format_args!("prezero-kernel: exit {code}\n"));
    if code != 0 {
        outl(DEBUG_EXIT_PORT, code);
    }
    // PCI 00:00.0 names the chipset: 8086:29c0 is q35's, anything else i440FX's.
    let config = |dev: u32, func: u32, reg: u32| {
        outl(0xcf8, 0x8000_0000 | dev << 11 | func << 8 | reg);
        inl(0xcfc)
    };
    let pm_base = if config(0, 0, 0) == 0x29c0_8086 {
        config(0x1f, 0, 0x40)
    } else {
        config(1, 3, 0x40)
    } & 0xffc0;
    outw(pm_base as u16 + 4, 1 << 13);
    loop {
        // SAFETY: halting with interrupts off only stops this CPU until QEMU ends the VM.
        unsafe { core::arch::asm!("cli", "hlt") };
    }
}
