//! Guest memory where a guest-physical address is also the address the driver's code uses: a
//! kernel that identity-maps its RAM (as the PVH boot's first page tables do), so the rings, the
//! driver's pages and the zone's frames are reached at `gpa` itself.
//!
//! Accesses follow what [`QueueMemory`] asks of an implementation: the device (QEMU, or a
//! vhost-user daemon mapping the same RAM) writes this memory concurrently, so bytes are copied
//! with volatile accesses and the ring indices with atomics, never through references.

use core::sync::atomic::{AtomicU16, Ordering};

use prezero_virtq::{MemoryError, QueueMemory};

/// Identity-mapped guest memory: `start..end` (guest-physical, and the same virtual addresses).
///
/// `Copy`, so each queue holds its own handle. Every access is checked against the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityMemory {
    start: u64,
    end: u64,
}

impl IdentityMemory {
    /// Memory `start..end`.
    ///
    /// # Safety
    ///
    /// For as long as this value or a copy of it is used, every address in `start..end` must be
    /// mapped readable and writable at the virtual address equal to it, and be memory the caller
    /// hands to the driver and its zone (no Rust reference to it may exist elsewhere). `end` is
    /// exclusive and at least `start`.
    pub unsafe fn new(start: u64, end: u64) -> Self {
        assert!(
            start <= end,
            "memory {start:#x}..{end:#x} ends before it starts"
        );
        IdentityMemory { start, end }
    }

    /// The first address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The pointer for `gpa..gpa + len`, if the range is inside.
    fn ptr(&self, gpa: u64, len: u64) -> Result<*mut u8, MemoryError> {
        let inside = gpa >= self.start && gpa.checked_add(len).is_some_and(|e| e <= self.end);
        if inside {
            Ok(gpa as usize as *mut u8)
        } else {
            Err(MemoryError { gpa, len })
        }
    }

    /// The atomic `u16` at `gpa`, if it is inside and 2-byte aligned.
    fn atomic_u16(&self, gpa: u64) -> Result<&AtomicU16, MemoryError> {
        let p = self.ptr(gpa, 2)?;
        if gpa % 2 != 0 {
            return Err(MemoryError { gpa, len: 2 });
        }
        // SAFETY: inside the range `new`'s caller vouched for, aligned, and only ever accessed
        // atomically or with volatile copies (never through a non-atomic reference).
        Ok(unsafe { AtomicU16::from_ptr(p.cast()) })
    }
}

impl QueueMemory for IdentityMemory {
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        self.ptr(gpa, len).map(|_| ())
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, buf.len() as u64)?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `p..p + buf.len()` is inside the vouched-for range.
            *b = unsafe { p.add(i).read_volatile() };
        }
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, data.len() as u64)?;
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: `p..p + data.len()` is inside the vouched-for range.
            unsafe { p.add(i).write_volatile(b) };
        }
        Ok(())
    }

    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemoryError> {
        Ok(u16::from_le(self.atomic_u16(gpa)?.load(order)))
    }

    fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), MemoryError> {
        self.atomic_u16(gpa)?.store(v.to_le(), order);
        Ok(())
    }

    fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, len)?;
        // Frames the zone zeroes or poisons, and ring memory before the device knows of it: no
        // other agent writes them now, so a plain (fast) fill is enough.
        // SAFETY: `p..p + len` is inside the vouched-for range.
        unsafe { p.write_bytes(byte, len as usize) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use prezero_virtq::{Buffer, SplitQueue};
    use std::boxed::Box;
    use std::vec;

    /// 64 KiB of 4 KiB-aligned memory, and the identity view of it (in a test process the
    /// "physical" address is the buffer's own address).
    fn memory() -> (Box<[u64]>, IdentityMemory) {
        let buf = vec![0u64; 8192 + 512].into_boxed_slice();
        let base = (buf.as_ptr() as u64).next_multiple_of(4096);
        // SAFETY: base..base + 64 KiB lies in `buf`, which the test keeps alive and only
        // touches through this memory.
        let mem = unsafe { IdentityMemory::new(base, base + (64 << 10)) };
        (buf, mem)
    }

    #[test]
    fn accesses_are_bounded_by_the_range() {
        let (_buf, mem) = memory();
        let (start, end) = (mem.start(), mem.end());
        assert!(mem.check(start, end - start).is_ok());
        assert_eq!(
            mem.check(start - 1, 1),
            Err(MemoryError {
                gpa: start - 1,
                len: 1
            })
        );
        assert_eq!(
            mem.check(end - 1, 2),
            Err(MemoryError {
                gpa: end - 1,
                len: 2
            })
        );
        assert!(mem.check(u64::MAX, 2).is_err(), "no wrap-around");
        assert!(mem.write(end - 2, &[1, 2, 3]).is_err());
        assert!(mem.fill(end - 8, 16, 0).is_err());
        assert!(
            mem.load_u16(start + 1, Ordering::Acquire).is_err(),
            "misaligned"
        );
    }

    #[test]
    fn reads_see_writes_little_endian() {
        let (_buf, mem) = memory();
        let at = mem.start() + 0x100;
        mem.write(at, &[0x34, 0x12, 0xff]).unwrap();
        assert_eq!(mem.load_u16(at, Ordering::Acquire).unwrap(), 0x1234);
        mem.store_u16(at + 2, 0xabcd, Ordering::Release).unwrap();
        let mut b = [0u8; 4];
        mem.read(at, &mut b).unwrap();
        assert_eq!(b, [0x34, 0x12, 0xcd, 0xab]);
        mem.fill(at, 4, 0xaa).unwrap();
        assert_eq!(mem.read_u32(at).unwrap(), 0xaaaa_aaaa);
    }

    #[test]
    fn a_split_queue_lives_in_it() {
        let (_buf, mem) = memory();
        let ring = mem.start();
        let mut q = SplitQueue::new(mem, 16, ring, false).unwrap();
        let data = mem.start() + 0x8000;
        q.add(&[Buffer::writable(data, 4096)], 7u32).unwrap();
        assert!(q.should_notify().unwrap());
        // The device's side, by hand: used element {id: head 0, len 4096}, then used.idx = 1.
        let layout = q.layout();
        mem.write(layout.used + 4, &0u32.to_le_bytes()).unwrap();
        mem.write(layout.used + 8, &4096u32.to_le_bytes()).unwrap();
        mem.store_u16(layout.used + 2, 1, Ordering::Release)
            .unwrap();
        let used = q.pop_used().unwrap().unwrap();
        assert_eq!((used.token, used.len, used.writable_len), (7, 4096, 4096));
    }
}
