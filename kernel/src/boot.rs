//! From QEMU's PVH entry to `kmain`: the entry note, a 32-bit stub that identity-maps the first
//! 4 GiB with 2 MiB pages, enables PAE, SSE and long mode, and calls Rust on a boot stack.
//!
//! PVH boot (Xen's `arch/x86/include/asm/xen/interface.h` ABI, which QEMU implements for
//! `-kernel` ELF images carrying a `XEN_ELFNOTE_PHYS32_ENTRY` note): the CPU starts in 32-bit
//! protected mode, paging off, flat segments, `ebx` = physical address of `hvm_start_info`.
//! SSE goes on before any Rust runs: the host target's precompiled `core` uses SSE2 freely.
//! These boot tables are replaced by the kernel's own, built from zone frames (`paging.rs`).

use core::arch::global_asm;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note type naming the 32-bit PVH entry point.
const _: () = assert!(XEN_ELFNOTE_PHYS32_ENTRY == 18);
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long {note_type}
    .asciz "Xen"
    .balign 4
    .long pvh_start
    .balign 4
    .popsection

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4 * 4096
    .balign 8
    .global boot_tsc
boot_tsc: .skip 8
    .balign 16
boot_stack: .skip 65536
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00209a0000000000
    .quad 0x0000920000000000
boot_gdt_end:
    .balign 4
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .long 0

    .section .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    rdtsc
    mov dword ptr [boot_tsc], eax
    mov dword ptr [boot_tsc + 4], edx
    mov esi, ebx
    mov esp, offset boot_stack_top

    mov eax, offset boot_pdpt
    or eax, 3
    mov dword ptr [boot_pml4], eax
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 3
    mov dword ptr [boot_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jb 2b
    xor ecx, ecx
3:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [boot_pd + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jb 3b

    mov eax, cr4
    or eax, (1 << 5) | (1 << 9) | (1 << 10)
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    and eax, ~(1 << 2)
    or eax, (1 << 31) | (1 << 1) | 1
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    push 0x08
    mov eax, offset long_mode
    push eax
    retf

    .code64
long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + boot_stack_top]
    mov edi, esi
    call kmain
4:
    cli
    hlt
    jmp 4b
    .text
"#,
    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
);

extern "C" {
    static boot_tsc: u64;
}

/// The TSC when the CPU entered `pvh_start`.
pub fn entry_tsc() -> u64 {
    // SAFETY: written once by the boot stub before any Rust code ran.
    unsafe { core::ptr::addr_of!(boot_tsc).read_volatile() }
}
