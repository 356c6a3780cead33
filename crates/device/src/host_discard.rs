//! The real discard backend for `vm-memory` mmap regions.
//!
//! The discard is chosen from the region itself:
//!
//! | region | discard | reads back | host page |
//! |---|---|---|---|
//! | private anonymous | `madvise(MADV_DONTNEED)` | zeros | system page, or the `MAP_HUGETLB` size |
//! | shared anonymous | `madvise(MADV_REMOVE)` | zeros | same |
//! | shared file (memfd, tmpfs, ext4, ...) | `fallocate(PUNCH_HOLE\|KEEP_SIZE)` at the region's file offset | zeros | system page |
//! | shared hugetlbfs file | same punch | zeros | the filesystem's huge page (`fstatfs`) |
//! | private file mapping | `madvise(MADV_DONTNEED)` | the file's contents | as above |
//!
//! `MADV_DONTNEED` on a *shared* mapping only drops this process's page table entries, the data
//! stays in the file: that is why shared memory is punched instead. A region whose start is not
//! aligned to its host page size, or a file whose hole punching is not supported, is treated as
//! discard-disabled and never claimed.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock, Weak};

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestRegionMmap, MmapRegion};

use crate::discard::{DiscardBackend, DiscardError, DiscardMode, RegionPolicy};

const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
const MAP_HUGE_SHIFT: i32 = 26;
const MAP_HUGE_MASK: i32 = 0x3f;

/// How a region is discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscardMethod {
    /// `madvise` with this advice.
    Madvise(libc::c_int),
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` on the region's file.
    PunchHole,
    /// Nothing.
    None,
}

/// The classification of one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionBacking {
    /// What the device may claim.
    pub policy: RegionPolicy,
    /// How discards are done.
    pub method: DiscardMethod,
}

struct CacheEntry<B> {
    region: Weak<MmapRegion<B>>,
    backing: RegionBacking,
}

/// Discards guest memory of `GuestRegionMmap<B>` regions with the syscall their backing needs.
pub struct HostDiscard<B = ()> {
    enabled: bool,
    // Weak references pin the allocation, so a pointer match is the same mapping, never a
    // new one that happens to reuse an address after a memory table change.
    cache: Vec<CacheEntry<B>>,
}

impl<B> std::fmt::Debug for HostDiscard<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDiscard")
            .field("enabled", &self.enabled)
            .field("cached_regions", &self.cache.len())
            .finish()
    }
}

impl<B> Default for HostDiscard<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> HostDiscard<B> {
    /// Discards enabled.
    pub fn new() -> Self {
        HostDiscard {
            enabled: true,
            cache: Vec::new(),
        }
    }

    /// Discards disabled (pinned memory, device assignment): nothing is discarded or claimed.
    pub fn disabled() -> Self {
        HostDiscard {
            enabled: false,
            cache: Vec::new(),
        }
    }

    /// Whether discards are enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

/// The system page size.
pub fn system_page_size() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
    })
}

/// The default huge page size from /proc/meminfo (for `MAP_HUGETLB` without a size).
fn default_huge_page_size() -> Option<u64> {
    static SIZE: OnceLock<Option<u64>> = OnceLock::new();
    *SIZE.get_or_init(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("Hugepagesize:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// Filesystem magic and block size of `fd`.
fn fs_of(fd: libc::c_int) -> io::Result<(i64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a valid out-pointer of the right type; `fd` is borrowed from a live File.
    let rc = unsafe { libc::fstatfs(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded, so it initialized the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    let (magic, bsize) = (st.f_type as i64, st.f_bsize as i64);
    Ok((magic, u64::try_from(bsize).unwrap_or(0)))
}

/// Classify a mapping.
pub fn classify<B: Bitmap>(mmap: &MmapRegion<B>, enabled: bool) -> RegionBacking {
    let flags = mmap.flags();
    let shared = flags & libc::MAP_SHARED != 0;
    let mut host_page_size = system_page_size();
    let (mode, method) = match mmap.file_offset() {
        None => {
            if flags & libc::MAP_HUGETLB != 0 {
                let shift = (flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK;
                let size = if shift != 0 {
                    1u64.checked_shl(shift as u32)
                } else {
                    default_huge_page_size()
                };
                match size {
                    Some(size) => host_page_size = size,
                    None => return disabled(host_page_size),
                }
            }
            let advice = if shared {
                libc::MADV_REMOVE
            } else {
                libc::MADV_DONTNEED
            };
            (DiscardMode::Zeroing, DiscardMethod::Madvise(advice))
        }
        Some(file_offset) => {
            match fs_of(file_offset.file().as_raw_fd()) {
                Ok((magic, bsize)) if magic == HUGETLBFS_MAGIC => host_page_size = bsize,
                Ok(_) => {}
                Err(_) => return disabled(host_page_size),
            }
            if file_offset.start() % host_page_size.max(1) != 0 {
                return disabled(host_page_size);
            }
            if shared {
                (DiscardMode::Zeroing, DiscardMethod::PunchHole)
            } else {
                (
                    DiscardMode::NonZeroing,
                    DiscardMethod::Madvise(libc::MADV_DONTNEED),
                )
            }
        }
    };
    let aligned =
        host_page_size.is_power_of_two() && (mmap.as_ptr() as usize as u64) % host_page_size == 0;
    if !enabled || !aligned {
        return disabled(host_page_size);
    }
    RegionBacking {
        policy: RegionPolicy {
            mode,
            host_page_size,
        },
        method,
    }
}

fn disabled(host_page_size: u64) -> RegionBacking {
    RegionBacking {
        policy: RegionPolicy {
            mode: DiscardMode::Disabled,
            host_page_size,
        },
        method: DiscardMethod::None,
    }
}

impl<B: Bitmap> HostDiscard<B> {
    fn entry(&mut self, region: &GuestRegionMmap<B>) -> &mut CacheEntry<B> {
        let mmap: Arc<MmapRegion<B>> = region.get_mmap();
        let found = self
            .cache
            .iter()
            .position(|e| std::ptr::eq(e.region.as_ptr(), Arc::as_ptr(&mmap)));
        let index = match found {
            Some(index) => index,
            None => {
                self.cache.retain(|e| e.region.strong_count() > 0);
                self.cache.push(CacheEntry {
                    region: Arc::downgrade(&mmap),
                    backing: classify(&mmap, self.enabled),
                });
                self.cache.len() - 1
            }
        };
        &mut self.cache[index]
    }

    /// The classification of `region` (cached).
    pub fn backing(&mut self, region: &GuestRegionMmap<B>) -> RegionBacking {
        self.entry(region).backing
    }
}

impl<B: Bitmap> DiscardBackend<GuestRegionMmap<B>> for HostDiscard<B> {
    fn policy(&mut self, region: &GuestRegionMmap<B>) -> RegionPolicy {
        self.entry(region).backing.policy
    }

    fn discard(
        &mut self,
        region: &GuestRegionMmap<B>,
        offset: u64,
        len: u64,
    ) -> Result<(), DiscardError> {
        let backing = self.entry(region).backing;
        let end = offset.checked_add(len).ok_or(DiscardError::Range)?;
        let hps = backing.policy.host_page_size;
        if len == 0 || end > region.size() as u64 || offset % hps != 0 || len % hps != 0 {
            return Err(DiscardError::Range);
        }
        let result = match backing.method {
            DiscardMethod::None => return Err(DiscardError::Range),
            DiscardMethod::Madvise(advice) => madvise(region, offset, len, advice),
            DiscardMethod::PunchHole => punch_hole(region, offset, len),
        };
        if let Err(e) = &result {
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EPERM)) {
                // The filesystem cannot punch holes, or the file is sealed against writes:
                // stop trying (and claiming) there.
                let entry = self.entry(region);
                entry.backing = disabled(hps);
            }
        }
        result.map_err(DiscardError::Os)
    }

    fn will_need(&mut self, region: &GuestRegionMmap<B>, offset: u64, len: u64) {
        let in_bounds = offset
            .checked_add(len)
            .is_some_and(|end| end <= region.size() as u64);
        if in_bounds && len > 0 {
            let _ = madvise(region, offset, len, libc::MADV_WILLNEED);
        }
    }
}

fn madvise<B: Bitmap>(
    mmap: &MmapRegion<B>,
    offset: u64,
    len: u64,
    advice: libc::c_int,
) -> io::Result<()> {
    let offset = usize::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the caller checked offset + len <= mmap.size(), so the range lies in this live
    // mapping; madvise changes page contents (to zero or file data), never the mapping's
    // validity, and guest memory is only ever accessed volatilely.
    let rc = unsafe { libc::madvise(mmap.as_ptr().add(offset).cast(), len, advice) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn punch_hole<B: Bitmap>(mmap: &MmapRegion<B>, offset: u64, len: u64) -> io::Result<()> {
    let file_offset = mmap
        .file_offset()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let at = file_offset
        .start()
        .checked_add(offset)
        .and_then(|at| libc::off_t::try_from(at).ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    loop {
        // SAFETY: plain syscall on a file descriptor owned by the live mapping.
        let rc = unsafe {
            libc::fallocate(
                file_offset.file().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at,
                len,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
