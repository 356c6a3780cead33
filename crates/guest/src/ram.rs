//! Guest "physical memory": one memfd, mapped shared, guest-physical address = offset in the file.
//!
//! # Why vm-memory
//!
//! The mapping is a [`vm_memory::GuestMemoryMmap`] over a [`vm_memory::FileOffset`] of the memfd
//! rather than a hand-rolled `mmap`:
//! - its [`Bytes`] accessors are bounds-checked and volatile, which is what memory shared with a
//!   device in another process needs (the compiler must not cache or elide those accesses);
//! - its [`Bytes::load`]/[`store`](Bytes::store) give real atomics with
//!   an ordering on the mapping, which the ring indices need;
//! - the region converts directly to the `VhostUserMemoryRegionInfo` that `SET_MEM_TABLE` sends
//!   (fd, offset, size, our virtual address);
//! - the device side (`virtio-queue`, `vhost-user-backend`) speaks the same types, so tests can
//!   run a real device-side queue over the very same mapping.
//!
//! What vm-memory lacks is done with libc here: `memfd_create` (with `MFD_HUGETLB` when asked),
//! `fstat` for the allocated size, `lseek(SEEK_DATA)` to ask whether a range is a hole without
//! touching it, and `/proc/self/smaps` for the mapping's resident size.
//!
//! Reading a page of a memfd mapped shared allocates it (shmem has no shared zero page), so
//! [`GuestRam::is_zero`] faults reported memory back in; [`GuestRam::is_hole`] does not.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
};

use prezero_mm::{Pfn, PhysMem, FRAME_SIZE};
use prezero_virtq::MemoryError;

use crate::error::RamError;

/// Base page size of the guest (and the granule of the RAM size).
pub const PAGE_SIZE: u64 = 4096;

/// Default RAM size of the Rust guest (the seed's benchmark guest has 2 GiB).
pub const DEFAULT_RAM_SIZE: u64 = 2 << 30;

/// The guest's physical memory: a memfd mapped `MAP_SHARED` at guest-physical address 0.
///
/// Cheap to share behind an `Arc`: every accessor takes `&self`, since the memory itself is
/// shared with a device that writes it concurrently anyway.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    file: Arc<File>,
    size: u64,
    huge_page_size: Option<u64>,
    // As an integer so the type stays Send + Sync; the mapping lives as long as `mem`.
    host_base: usize,
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM backed by ordinary (tmpfs) memfd pages.
    ///
    /// The memfd is sparse: nothing is allocated until touched.
    pub fn new(size: u64) -> Result<Self, RamError> {
        Self::create(size, None)
    }

    /// Creates guest RAM backed by hugetlb pages of `huge_page_size` bytes (e.g. 2 MiB).
    ///
    /// The pages are reserved at map time, so a too-small pool fails here with a clear error
    /// instead of a SIGBUS on first touch.
    pub fn with_huge_pages(size: u64, huge_page_size: u64) -> Result<Self, RamError> {
        Self::create(size, Some(huge_page_size))
    }

    fn create(size: u64, huge_page_size: Option<u64>) -> Result<Self, RamError> {
        let granule = huge_page_size.unwrap_or(PAGE_SIZE);
        if let Some(hps) = huge_page_size {
            // MFD_HUGE_64KB .. MFD_HUGE_16GB are the encodings the kernel defines.
            if !hps.is_power_of_two() || !(16..=34).contains(&hps.trailing_zeros()) {
                return Err(RamError::BadHugePageSize(hps));
            }
        }
        if size == 0 || size % granule != 0 || usize::try_from(size).is_err() {
            return Err(RamError::BadSize { size, granule });
        }

        let mut flags = libc::MFD_CLOEXEC;
        if let Some(hps) = huge_page_size {
            flags |= libc::MFD_HUGETLB | (hps.trailing_zeros() << libc::MFD_HUGE_SHIFT);
        }
        let name = CString::new("prezero-guest-ram").expect("no NUL in a literal");
        // SAFETY: `name` is a valid NUL-terminated string; the returned fd is checked and then
        // owned by exactly one `File`.
        let file = unsafe {
            let fd = libc::memfd_create(name.as_ptr(), flags);
            if fd < 0 {
                return Err(RamError::MemfdCreate(io::Error::last_os_error()));
            }
            File::from_raw_fd(fd)
        };
        file.set_len(size)
            .map_err(|source| RamError::Resize { size, source })?;
        let file = Arc::new(file);

        let len = size as usize;
        let builder = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        let region = match huge_page_size {
            // Without MAP_NORESERVE the kernel reserves the huge pages now, so an empty pool is
            // an mmap error rather than a SIGBUS later.
            Some(hps) => builder
                .with_mmap_flags(libc::MAP_SHARED)
                .with_hugetlbfs(true)
                .build()
                .map_err(|e| match e {
                    vm_memory::mmap::MmapRegionError::Mmap(source) => {
                        RamError::HugePagesUnavailable {
                            size,
                            huge_page_kib: hps >> 10,
                            source,
                        }
                    }
                    other => RamError::Map {
                        size,
                        reason: other.to_string(),
                    },
                })?,
            None => builder
                .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| RamError::Map {
                    size,
                    reason: e.to_string(),
                })?,
        };
        let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or(RamError::Map {
            size,
            reason: "region end overflows the guest address space".into(),
        })?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|e| RamError::Map {
            size,
            reason: e.to_string(),
        })?;
        let host_base = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| RamError::Map {
                size,
                reason: e.to_string(),
            })? as usize;
        tracing::debug!(
            size,
            ?huge_page_size,
            fd = file.as_raw_fd(),
            "guest RAM created"
        );
        Ok(GuestRam {
            mem,
            file,
            size,
            huge_page_size,
            host_base,
        })
    }

    /// RAM size in bytes; valid guest-physical addresses are `0..size`.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The huge page size, when the RAM is hugetlb-backed.
    pub fn huge_page_size(&self) -> Option<u64> {
        self.huge_page_size
    }

    /// The memfd, to share with the device (`SET_MEM_TABLE`) or to inspect.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Raw fd of the memfd.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Our virtual address of guest-physical address 0.
    ///
    /// vhost-user describes ring addresses in the frontend's virtual address space, so the
    /// transport needs it; nothing else should.
    pub fn host_base(&self) -> *mut u8 {
        self.host_base as *mut u8
    }

    /// Our virtual address of `gpa`, checked to lie in RAM with `len` bytes after it.
    pub fn host_addr(&self, gpa: u64, len: u64) -> Result<u64, RamError> {
        self.check(gpa, len)?;
        Ok(self.host_base as u64 + gpa)
    }

    /// The vm-memory view of the RAM (one region at guest-physical 0).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The single vm-memory region (for `SET_MEM_TABLE`).
    pub fn region(&self) -> &GuestRegionMmap {
        self.mem
            .find_region(GuestAddress(0))
            .expect("GuestRam always has one region at 0")
    }

    /// Checks that `gpa..gpa+len` lies inside RAM.
    pub fn check(&self, gpa: u64, len: u64) -> Result<(), RamError> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(RamError::OutOfRange {
                gpa,
                len,
                size: self.size,
            }),
        }
    }

    /// Copies `buf.len()` bytes at `gpa` into `buf` (volatile reads).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RamError> {
        self.check(gpa, buf.len() as u64)?;
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| self.internal(gpa, buf.len() as u64, e))
    }

    /// Copies `data` to `gpa` (volatile writes).
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), RamError> {
        self.check(gpa, data.len() as u64)?;
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| self.internal(gpa, data.len() as u64, e))
    }

    /// Reads a little-endian `u16`.
    pub fn read_u16(&self, gpa: u64) -> Result<u16, RamError> {
        let mut b = [0; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian `u32`.
    pub fn read_u32(&self, gpa: u64) -> Result<u32, RamError> {
        let mut b = [0; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64`.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, RamError> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u16`.
    pub fn write_u16(&self, gpa: u64, v: u16) -> Result<(), RamError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Writes a little-endian `u32`.
    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<(), RamError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Writes a little-endian `u64`.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), RamError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Atomically loads a little-endian `u16` (ring indices the device writes concurrently).
    pub fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, RamError> {
        self.check_atomic(gpa, 2)?;
        let raw: u16 = self
            .mem
            .load(GuestAddress(gpa), order)
            .map_err(|e| self.internal(gpa, 2, e))?;
        Ok(u16::from_le(raw))
    }

    /// Atomically stores a little-endian `u16`.
    pub fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), RamError> {
        self.check_atomic(gpa, 2)?;
        self.mem
            .store(v.to_le(), GuestAddress(gpa), order)
            .map_err(|e| self.internal(gpa, 2, e))
    }

    /// Atomically loads a little-endian `u32`.
    pub fn load_u32(&self, gpa: u64, order: Ordering) -> Result<u32, RamError> {
        self.check_atomic(gpa, 4)?;
        let raw: u32 = self
            .mem
            .load(GuestAddress(gpa), order)
            .map_err(|e| self.internal(gpa, 4, e))?;
        Ok(u32::from_le(raw))
    }

    /// Atomically stores a little-endian `u32`.
    pub fn store_u32(&self, gpa: u64, v: u32, order: Ordering) -> Result<(), RamError> {
        self.check_atomic(gpa, 4)?;
        self.mem
            .store(v.to_le(), GuestAddress(gpa), order)
            .map_err(|e| self.internal(gpa, 4, e))
    }

    /// Sets `len` bytes at `gpa` to `byte` (a memset; for memory the device is not writing).
    pub fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), RamError> {
        self.check(gpa, len)?;
        // SAFETY: the range was checked to lie inside the live mapping, which is writable.
        unsafe { std::ptr::write_bytes(self.host_base().add(gpa as usize), byte, len as usize) };
        Ok(())
    }

    /// Whether every byte of `gpa..gpa+len` reads as zero.
    ///
    /// This reads the memory, so holes in the memfd get allocated (zero-filled) by the read;
    /// use [`is_hole`](Self::is_hole) to ask without touching.
    pub fn is_zero(&self, gpa: u64, len: u64) -> Result<bool, RamError> {
        self.check(gpa, len)?;
        let mut buf = [0u8; 4096];
        let mut at = gpa;
        let end = gpa + len;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            self.read(at, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// Whether `gpa..gpa+len` has no backing at all in the memfd (a hole: never written, or
    /// discarded by the device), asked with `lseek(SEEK_DATA)` so nothing is faulted in.
    pub fn is_hole(&self, gpa: u64, len: u64) -> Result<bool, RamError> {
        self.check(gpa, len)?;
        if len == 0 {
            return Ok(true);
        }
        // SAFETY: lseek on an fd we own has no memory-safety preconditions.
        let next_data = unsafe { libc::lseek(self.fd(), gpa as libc::off_t, libc::SEEK_DATA) };
        if next_data < 0 {
            let err = io::Error::last_os_error();
            // ENXIO: no data at or after `gpa` up to the end of the file.
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(true),
                _ => Err(RamError::Io {
                    what: "lseek(SEEK_DATA) on the guest RAM memfd",
                    source: err,
                }),
            };
        }
        Ok(next_data as u64 >= gpa + len)
    }

    /// Bytes the memfd really holds (`st_blocks * 512`): what the host pays for this RAM.
    pub fn allocated_bytes(&self) -> Result<u64, RamError> {
        // SAFETY: fstat writes into the zeroed struct we pass; the fd is ours.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(self.fd(), &mut st) } < 0 {
            return Err(RamError::Io {
                what: "fstat of the guest RAM memfd",
                source: io::Error::last_os_error(),
            });
        }
        Ok(st.st_blocks as u64 * 512)
    }

    /// Resident bytes of this process's mapping of the RAM (`Rss` in `/proc/self/smaps`).
    ///
    /// Unlike [`allocated_bytes`](Self::allocated_bytes) this counts only pages this process
    /// has mapped; a page the device discarded leaves both.
    pub fn resident_bytes(&self) -> Result<u64, RamError> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").map_err(|source| RamError::Io {
            what: "reading /proc/self/smaps",
            source,
        })?;
        let start = format!("{:x}-", self.host_base);
        let mut in_ours = false;
        for line in smaps.lines() {
            // Mapping headers start with "start-end perms ..."; field lines with "Name:".
            let is_header = line.split_whitespace().next().is_some_and(|w| {
                w.split_once('-').is_some_and(|(a, b)| {
                    u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
                })
            });
            if is_header {
                in_ours = line.starts_with(&start);
            } else if in_ours {
                if let Some(rest) = line.strip_prefix("Rss:") {
                    let kib: u64 =
                        rest.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse()
                            .map_err(|_| RamError::Io {
                                what: "parsing Rss in /proc/self/smaps",
                                source: io::Error::from(io::ErrorKind::InvalidData),
                            })?;
                    return Ok(kib * 1024);
                }
            }
        }
        Err(RamError::Io {
            what: "finding the guest RAM mapping in /proc/self/smaps",
            source: io::Error::from(io::ErrorKind::NotFound),
        })
    }

    fn check_atomic(&self, gpa: u64, align: u64) -> Result<(), RamError> {
        self.check(gpa, align)?;
        if gpa % align != 0 {
            return Err(RamError::Misaligned { gpa, align });
        }
        Ok(())
    }

    // vm-memory errors after our own bounds check would mean the region disagrees with `size`;
    // report them as out-of-range rather than panic.
    fn internal(&self, gpa: u64, len: u64, e: vm_memory::GuestMemoryError) -> RamError {
        tracing::warn!(gpa, len, error = %e, "guest memory access failed after bounds check");
        RamError::OutOfRange {
            gpa,
            len,
            size: self.size,
        }
    }
}

/// The allocator's view of guest RAM ([`PhysMem`]): how `prezero-mm` zeroes or poisons the
/// frames of a block it hands out or takes back.
pub struct RamFrames<'a>(pub &'a GuestRam);

impl PhysMem for RamFrames<'_> {
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        // The allocator only fills blocks it owns inside the zone, which spans guest RAM.
        self.0
            .fill(pfn.addr(), frames * FRAME_SIZE, byte)
            .expect("the allocator fills only frames inside guest RAM");
    }
}

/// The split virtqueue's view of guest RAM: every access bounds-checked, atomics aligned.
impl prezero_virtq::QueueMemory for GuestRam {
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        GuestRam::check(self, gpa, len).map_err(|_| MemoryError { gpa, len })
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        GuestRam::read(self, gpa, buf).map_err(|_| MemoryError { gpa, len })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let len = data.len() as u64;
        GuestRam::write(self, gpa, data).map_err(|_| MemoryError { gpa, len })
    }

    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemoryError> {
        GuestRam::load_u16(self, gpa, order).map_err(|_| MemoryError { gpa, len: 2 })
    }

    fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), MemoryError> {
        GuestRam::store_u16(self, gpa, v, order).map_err(|_| MemoryError { gpa, len: 2 })
    }

    fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        GuestRam::fill(self, gpa, len, byte).map_err(|_| MemoryError { gpa, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn punch(ram: &GuestRam, gpa: u64, len: u64) {
        // SAFETY: fallocate on our own memfd.
        let r = unsafe {
            libc::fallocate(
                ram.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                gpa as libc::off_t,
                len as libc::off_t,
            )
        };
        assert_eq!(r, 0, "punch hole: {}", io::Error::last_os_error());
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(GuestRam::new(0), Err(RamError::BadSize { .. })));
        assert!(matches!(GuestRam::new(4097), Err(RamError::BadSize { .. })));
        assert!(matches!(
            GuestRam::with_huge_pages(4 * MIB, 3 * MIB),
            Err(RamError::BadHugePageSize(_))
        ));
        assert!(matches!(
            GuestRam::with_huge_pages(3 * MIB, 2 * MIB),
            Err(RamError::BadSize { .. })
        ));
    }

    #[test]
    fn sparse_until_touched_and_bounds_checked() {
        let ram = GuestRam::new(16 * MIB).unwrap();
        assert_eq!(ram.size(), 16 * MIB);
        assert_eq!(ram.allocated_bytes().unwrap(), 0);
        assert!(ram.is_hole(0, 16 * MIB).unwrap());

        ram.write(MIB, b"hello").unwrap();
        let mut buf = [0u8; 5];
        ram.read(MIB, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(ram.allocated_bytes().unwrap(), PAGE_SIZE);
        assert!(!ram.is_hole(MIB, 1).unwrap());
        assert!(ram.is_hole(0, MIB).unwrap());
        assert!(ram.is_hole(MIB + PAGE_SIZE, MIB).unwrap());

        assert!(matches!(
            ram.write(16 * MIB - 2, b"abc"),
            Err(RamError::OutOfRange { .. })
        ));
        assert!(matches!(
            ram.read(u64::MAX - 1, &mut buf),
            Err(RamError::OutOfRange { .. })
        ));
        assert!(ram.fill(16 * MIB, 1, 0).is_err());
        assert!(ram.host_addr(16 * MIB - 8, 8).is_ok());
        assert!(ram.host_addr(16 * MIB - 8, 9).is_err());
    }

    #[test]
    fn integers_are_little_endian_and_atomics_checked() {
        let ram = GuestRam::new(MIB).unwrap();
        ram.write_u64(8, 0x0102_0304_0506_0708).unwrap();
        let mut raw = [0u8; 8];
        ram.read(8, &mut raw).unwrap();
        assert_eq!(raw, [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(ram.read_u32(8).unwrap(), 0x0506_0708);
        assert_eq!(ram.read_u16(12).unwrap(), 0x0304);
        assert_eq!(ram.load_u16(8, Ordering::Acquire).unwrap(), 0x0708);
        ram.store_u32(16, 0xdead_beef, Ordering::Release).unwrap();
        assert_eq!(ram.read_u32(16).unwrap(), 0xdead_beef);
        ram.write_u16(20, 0xabcd).unwrap();
        assert_eq!(ram.load_u32(20, Ordering::SeqCst).unwrap(), 0xabcd);
        assert!(matches!(
            ram.load_u16(9, Ordering::Acquire),
            Err(RamError::Misaligned { .. })
        ));
        assert!(matches!(
            ram.store_u32(MIB - 2, 0, Ordering::Release),
            Err(RamError::OutOfRange { .. })
        ));
    }

    #[test]
    fn fill_is_zero_and_discard_accounting() {
        let ram = GuestRam::new(8 * MIB).unwrap();
        ram.fill(2 * MIB, 2 * MIB, 0x5a).unwrap();
        assert_eq!(ram.allocated_bytes().unwrap(), 2 * MIB);
        assert!(ram.resident_bytes().unwrap() >= 2 * MIB);
        assert!(!ram.is_zero(2 * MIB, 2 * MIB).unwrap());
        assert!(!ram.is_zero(4 * MIB - 1, 1).unwrap());
        assert!(ram.is_hole(4 * MIB, PAGE_SIZE).unwrap());
        assert!(ram.is_zero(4 * MIB, PAGE_SIZE).unwrap());
        // Reading a hole of a shared memfd allocates it: the reason is_hole exists.
        assert!(!ram.is_hole(4 * MIB, PAGE_SIZE).unwrap());
        assert_eq!(ram.allocated_bytes().unwrap(), 2 * MIB + PAGE_SIZE);

        // A device discard of a shared memfd is a punched hole: reads zero, costs nothing.
        punch(&ram, 2 * MIB, 2 * MIB);
        assert_eq!(ram.allocated_bytes().unwrap(), PAGE_SIZE);
        assert!(ram.is_hole(2 * MIB, 2 * MIB).unwrap());
        assert!(ram.resident_bytes().unwrap() < 2 * MIB);
        assert!(ram.is_zero(2 * MIB, 2 * MIB).unwrap());
    }

    #[test]
    fn the_device_sees_writes_through_the_fd() {
        // A second, independent mapping of the same memfd stands in for the device process.
        let ram = GuestRam::new(MIB).unwrap();
        let file = ram.file().try_clone().unwrap();
        let device = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MIB as usize,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        ram.write_u32(0x100, 0x1234_5678).unwrap();
        let seen: u32 = device.read_obj(GuestAddress(0x100)).unwrap();
        assert_eq!(seen, 0x1234_5678);
        device.write_obj(0xa5a5u16, GuestAddress(0x200)).unwrap();
        assert_eq!(ram.read_u16(0x200).unwrap(), 0xa5a5);
    }

    #[test]
    fn huge_pages_map_or_say_how_to_reserve_them() {
        match GuestRam::with_huge_pages(4 * MIB, 2 * MIB) {
            Ok(ram) => {
                assert_eq!(ram.huge_page_size(), Some(2 * MIB));
                ram.write_u64(0, 7).unwrap();
                assert_eq!(ram.allocated_bytes().unwrap(), 2 * MIB);
            }
            Err(e @ RamError::HugePagesUnavailable { .. }) => {
                assert!(
                    e.to_string().contains("hugepages-2048kB/nr_hugepages"),
                    "{e}"
                );
            }
            // Kernels without hugetlb refuse at memfd_create or ftruncate.
            Err(RamError::MemfdCreate(_)) | Err(RamError::Resize { .. }) => {}
            Err(e) => panic!("unexpected error for hugetlb RAM: {e}"),
        }
    }
}
