//! A minimal interrupt descriptor table: the 32 CPU exceptions print what faulted (vector,
//! error code, RIP, CR2 for a page fault) and end the run. The kernel polls its devices, so
//! no hardware interrupt is ever enabled.

use core::arch::global_asm;

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

static mut IDT: [Gate; 32] = [Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    attributes: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
}; 32];

// One stub per vector: those without a CPU-pushed error code push 0, then all push the vector
// and join the common path, which passes (vector, error code, frame) to `exception`.
// Vectors with an error code: 8, 10-14, 17, 21, 29, 30.
global_asm!(
    r#"
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exc_stub_\v:
    .if (\v == 8) || ((\v >= 10) && (\v <= 14)) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    .else
    push 0
    .endif
    push \v
    jmp exc_common
    .endr
exc_common:
    pop rdi
    pop rsi
    mov rdx, rsp
    and rsp, -16
    call {handler}
2:
    cli
    hlt
    jmp 2b

    .pushsection .rodata.exc_stubs, "a"
    .balign 8
    .global exc_stub_table
exc_stub_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\v
    .endr
    .popsection
"#,
    handler = sym exception,
);

extern "C" {
    static exc_stub_table: [u64; 32];
}

/// Installs the exception gates (interrupt gates, code selector 0x08 of the boot GDT).
pub fn init() {
    // SAFETY: single CPU, once at boot, before any exception can be taken through the table.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (gate, &stub) in idt.iter_mut().zip(exc_stub_table.iter()) {
            *gate = Gate {
                offset_low: stub as u16,
                selector: 0x08,
                ist: 0,
                attributes: 0x8e,
                offset_mid: (stub >> 16) as u16,
                offset_high: (stub >> 32) as u32,
                reserved: 0,
            };
        }
        let ptr = Pointer {
            limit: (core::mem::size_of::<[Gate; 32]>() - 1) as u16,
            base: idt.as_ptr() as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack));
    }
}

extern "C" fn exception(vector: u64, error: u64, frame: *const u64) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    // SAFETY: the CPU pushed RIP, CS, RFLAGS, RSP, SS at `frame`.
    let (rip, rsp) = unsafe { (*frame, *frame.add(3)) };
    crate::serial::force_print(format_args!(
        "prezero-kernel: FAIL exception {vector} error {error:#x} rip {rip:#x} rsp {rsp:#x} cr2 {cr2:#x}\n"
    ));
    crate::power::exit(5)
}
