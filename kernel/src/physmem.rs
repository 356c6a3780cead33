//! Guest-physical memory as the virtqueues and the balloon driver see it: identity-mapped RAM,
//! `[0, ram_end)`. The device (QEMU or the vhost-user daemon) reads and writes the same
//! memory, so every access is volatile or atomic, never a Rust reference to the bytes.

use core::sync::atomic::{AtomicU16, Ordering};

use prezero_virtq::{MemoryError, QueueMemory};

/// Identity-mapped RAM below `end`.
#[derive(Debug, Clone, Copy)]
pub struct PhysMemory {
    /// One past the last byte of RAM.
    pub end: u64,
}

impl PhysMemory {
    fn ptr(&self, gpa: u64, len: u64) -> Result<*mut u8, MemoryError> {
        self.check(gpa, len)?;
        Ok(gpa as *mut u8)
    }
}

impl QueueMemory for PhysMemory {
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.end => Ok(()),
            _ => Err(MemoryError { gpa, len }),
        }
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, buf.len() as u64)?;
        // SAFETY: checked to be RAM; a copy, not a reference into shared memory.
        unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, data.len() as u64)?;
        // SAFETY: as `read`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemoryError> {
        let p = self.ptr(gpa, 2)?;
        if gpa % 2 != 0 {
            return Err(MemoryError { gpa, len: 2 });
        }
        // SAFETY: aligned RAM; x86 is little-endian like the ring.
        Ok(unsafe { AtomicU16::from_ptr(p.cast()) }.load(order))
    }

    fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, 2)?;
        if gpa % 2 != 0 {
            return Err(MemoryError { gpa, len: 2 });
        }
        // SAFETY: as `load_u16`.
        unsafe { AtomicU16::from_ptr(p.cast()) }.store(v, order);
        Ok(())
    }

    fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        let p = self.ptr(gpa, len)?;
        // SAFETY: as `read`.
        unsafe { core::ptr::write_bytes(p, byte, len as usize) };
        Ok(())
    }
}
