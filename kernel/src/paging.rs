//! The kernel's own page tables, built from zone frames: physical memory identity mapped with
//! 2 MiB pages (RAM write-back, device registers uncached), replacing the boot stub's tables.

use prezero_mm::AllocFlags;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const PAGE_2M: u64 = 2 << 20;

/// The active page tables (their PML4's physical address), once [`init`] ran.
static TABLES: spin::Mutex<Option<u64>> = spin::Mutex::new(None);

/// A zeroed page-table frame from the zone.
fn table() -> Result<u64, &'static str> {
    crate::mem::alloc(0, AllocFlags::ZERO)
        .map(|a| a.pfn.addr())
        .ok_or("out of memory for a page table")
}

fn entry(table: u64, index: u64) -> *mut u64 {
    (table + index * 8) as *mut u64
}

/// Maps `[start, end)` (rounded out to 2 MiB) to itself with `flags` under `pml4`.
fn map(pml4: u64, start: u64, end: u64, flags: u64) -> Result<(), &'static str> {
    let mut va = start & !(PAGE_2M - 1);
    while va < end {
        let mut t = pml4;
        for shift in [39u32, 30] {
            let e = entry(t, (va >> shift) & 511);
            // SAFETY: `t` is a page-table frame this module owns, identity mapped.
            let v = unsafe { e.read_volatile() };
            t = if v & PRESENT != 0 {
                v & ADDR
            } else {
                let next = table()?;
                // SAFETY: as above.
                unsafe { e.write_volatile(next | PRESENT | WRITABLE) };
                next
            };
        }
        // SAFETY: as above; a 2 MiB leaf.
        unsafe {
            entry(t, (va >> 21) & 511).write_volatile(va | PRESENT | WRITABLE | HUGE | flags)
        };
        va += PAGE_2M;
    }
    Ok(())
}

/// Builds the kernel's tables (identity map of `[0, ram_end)`, write-back) and switches to them.
pub fn init(ram_end: u64) -> Result<(), &'static str> {
    let pml4 = table()?;
    map(pml4, 0, ram_end, 0)?;
    // SAFETY: the new tables map everything the kernel touches (its image, stack and RAM are
    // below `ram_end`); loading CR3 also flushes the TLB.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack)) };
    *TABLES.lock() = Some(pml4);
    Ok(())
}

/// Maps device registers `[start, start + len)` uncached (identity), e.g. a PCI BAR.
pub fn map_mmio(start: u64, len: u64) -> Result<(), &'static str> {
    let guard = TABLES.lock();
    let pml4 = guard.ok_or("page tables not built yet")?;
    map(pml4, start, start + len, CACHE_DISABLE | WRITE_THROUGH)?;
    // SAFETY: reloading CR3 with the same tables only flushes the TLB.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack)) };
    Ok(())
}
