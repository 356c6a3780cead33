//! The PVH start info QEMU hands the kernel (`struct hvm_start_info`, version 1, Xen's
//! `xen/include/public/arch-x86/hvm/start_info.h`): the command line and the memory map
//! (e820 types). Both live in memory the kernel will later allocate, so they are copied out
//! first.

/// `XEN_HVM_START_MAGIC_VALUE`.
const MAGIC: u32 = 0x336e_c578;
/// Memory map entries kept (QEMU's e820 table has a handful).
pub const MAX_REGIONS: usize = 32;
/// Command line bytes kept.
pub const MAX_CMDLINE: usize = 512;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// One memory map entry: `[start, start + len)` bytes of e820 type `kind`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// e820 type (1: RAM).
    pub kind: u32,
}

/// What the kernel keeps of the start info.
pub struct BootInfo {
    /// The memory map.
    pub regions: [Region; MAX_REGIONS],
    /// Entries of `regions` in use.
    pub nr_regions: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
}

impl BootInfo {
    /// Copies the start info at physical `paddr` (identity mapped by the boot stub).
    ///
    /// # Safety
    /// `paddr` is the address QEMU passed in `ebx`.
    pub unsafe fn read(paddr: u64) -> Result<BootInfo, &'static str> {
        // SAFETY: the caller's contract: a start info QEMU wrote, identity mapped.
        let si = unsafe { &*(paddr as *const StartInfo) };
        if si.magic != MAGIC {
            return Err("bad hvm_start_info magic");
        }
        if si.version < 1 || si.memmap_paddr == 0 {
            return Err("hvm_start_info without a memory map (version < 1)");
        }
        let mut info = BootInfo {
            regions: [Region::default(); MAX_REGIONS],
            nr_regions: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
        };
        let n = (si.memmap_entries as usize).min(MAX_REGIONS);
        for i in 0..n {
            // SAFETY: QEMU's table has `memmap_entries` entries.
            let e = unsafe { *(si.memmap_paddr as *const MemmapEntry).add(i) };
            info.regions[i] = Region {
                start: e.addr,
                len: e.size,
                kind: e.kind,
            };
        }
        info.nr_regions = n;
        if si.cmdline_paddr != 0 {
            let p = si.cmdline_paddr as *const u8;
            // SAFETY: a NUL-terminated string; at most MAX_CMDLINE bytes are read.
            while info.cmdline_len < MAX_CMDLINE && unsafe { *p.add(info.cmdline_len) } != 0 {
                info.cmdline[info.cmdline_len] = unsafe { *p.add(info.cmdline_len) };
                info.cmdline_len += 1;
            }
        }
        Ok(info)
    }

    /// The memory map entries.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.nr_regions]
    }

    /// The kernel command line (`-append`), lossy if it is not UTF-8.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }
}
