//! Physical memory: every frame of the VM's RAM belongs to one `prezero-mm` zone.
//!
//! The memory map (PVH/e820) gives the RAM ranges; the zone spans frame 0 to the last RAM
//! frame, and gets every RAM frame except the first MiB (firmware, the start info), the kernel
//! image and the zone's own metadata array (12 bytes per frame, `FrameMeta`, placed in the
//! first RAM above the image big enough for it). Holes in the map are never added. RAM is
//! identity mapped (`paging.rs`), so a frame's physical address is its address.

use prezero_mm::{AllocFlags, Allocation, Config, FrameMeta, Pfn, PhysMem, Zone, FRAME_SIZE};

use crate::pvh::{BootInfo, E820_RAM};

/// The kernel's zone: its metadata lives in RAM carved out at boot, for the kernel's life.
pub type KernelZone = Zone<&'static mut [FrameMeta]>;

/// The zone, once [`init`] has built it.
pub static ZONE: spin::Mutex<Option<KernelZone>> = spin::Mutex::new(None);

const MIB: u64 = 1 << 20;

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Physical memory, written through the identity map.
pub struct Phys;

impl PhysMem for Phys {
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        // SAFETY: the zone only fills blocks it owns, which are identity-mapped RAM.
        unsafe {
            core::ptr::write_bytes(pfn.addr() as *mut u8, byte, (frames * FRAME_SIZE) as usize)
        };
    }
}

/// What [`init`] laid out.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// One past the last byte of RAM.
    pub ram_end: u64,
    /// Bytes of RAM handed to the zone.
    pub managed: u64,
    /// The kernel image, `[start, end)`.
    pub image: (u64, u64),
    /// The metadata array, `[start, end)`.
    pub meta: (u64, u64),
}

/// The kernel image's physical extent.
pub fn image() -> (u64, u64) {
    // SAFETY: linker-script symbols; only their addresses are taken.
    unsafe {
        (
            &__kernel_start as *const u8 as u64,
            &__kernel_end as *const u8 as u64,
        )
    }
}

/// Builds the zone over the RAM of `info`'s memory map.
pub fn init(info: &BootInfo, cfg: Config) -> Result<Layout, &'static str> {
    let ram = || {
        info.regions()
            .iter()
            .filter(|r| r.kind == E820_RAM && r.len > 0)
    };
    let ram_end = ram()
        .map(|r| r.start + r.len)
        .max()
        .ok_or("no RAM in the memory map")?;
    let frames = ram_end / FRAME_SIZE;
    let meta_len = align_up(
        frames * core::mem::size_of::<FrameMeta>() as u64,
        FRAME_SIZE,
    );
    let image = image();
    let meta_start = ram()
        .map(|r| (align_up(r.start.max(image.1), FRAME_SIZE), r.start + r.len))
        .find(|&(s, e)| s + meta_len <= e && s + meta_len <= 4 << 30)
        .map(|(s, _)| s)
        .ok_or("no RAM range below 4 GiB holds the frame metadata")?;
    // SAFETY: `meta_len` bytes of RAM at `meta_start`, identity mapped and used by nothing
    // else: they are kept out of the zone below. `Zone::new` initializes every entry.
    let meta: &'static mut [FrameMeta] =
        unsafe { core::slice::from_raw_parts_mut(meta_start as *mut FrameMeta, frames as usize) };
    let mut zone = Zone::new(meta, Pfn(0), cfg);
    let reserved = [(0, MIB), image, (meta_start, meta_start + meta_len)];
    let mut managed = 0;
    for r in ram() {
        let mut pieces = [(
            align_up(r.start, FRAME_SIZE),
            (r.start + r.len) & !(FRAME_SIZE - 1),
        ); 4];
        let mut n = 1;
        for &(rs, re) in &reserved {
            let mut next = [(0, 0); 4];
            let mut m = 0;
            for &(s, e) in &pieces[..n] {
                for (a, b) in [(s, e.min(rs)), (s.max(re), e)] {
                    if a < b && m < next.len() {
                        next[m] = (a, b);
                        m += 1;
                    }
                }
            }
            pieces = next;
            n = m;
        }
        for &(s, e) in &pieces[..n] {
            zone.add_memory(Pfn(s / FRAME_SIZE), (e - s) / FRAME_SIZE, false)
                .map_err(|_| "a RAM range overlaps another in the memory map")?;
            managed += e - s;
        }
    }
    *ZONE.lock() = Some(zone);
    Ok(Layout {
        ram_end,
        managed,
        image,
        meta: (meta_start, meta_start + meta_len),
    })
}

/// Runs `f` on the zone.
///
/// # Panics
/// Before [`init`].
pub fn with_zone<R>(f: impl FnOnce(&mut KernelZone) -> R) -> R {
    f(ZONE
        .lock()
        .as_mut()
        .expect("the zone is built first thing in kmain"))
}

/// Allocates `1 << order` frames; with `flags` ZERO they read as zero, and when
/// [`check_known_zero`] is on, a block the zone served as known-zero is verified to read zero.
pub fn alloc(order: u8, flags: AllocFlags) -> Option<Allocation> {
    let a = with_zone(|z| z.alloc(order, flags, &mut Phys)).ok()?;
    if a.known_zero && CHECK_KNOWN_ZERO.load(core::sync::atomic::Ordering::Relaxed) {
        verify_zero(a.pfn, 1 << order);
    }
    Some(a)
}

/// Whether every allocation served as known-zero is read back to check it (the debug mode
/// that fails the run on a wrong "zeroed").
pub static CHECK_KNOWN_ZERO: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Fails the run unless `frames` frames from `pfn` read as zero.
pub fn verify_zero(pfn: Pfn, frames: u64) {
    let words = (frames * FRAME_SIZE / 8) as usize;
    let p = pfn.addr() as *const u64;
    for i in 0..words {
        // SAFETY: an allocated block of identity-mapped RAM.
        let v = unsafe { p.add(i).read_volatile() };
        if v != 0 {
            crate::println!(
                "prezero-kernel: FAIL known-zero block pfn {:#x} ({frames} frames) has {v:#x} at byte {}",
                pfn.0,
                i * 8
            );
            crate::power::exit(4);
        }
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}
