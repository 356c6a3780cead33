//! The memory a ring lives in, as the driver needs it: bounds checks, plain copies, and atomic
//! little-endian `u16` loads and stores for the indices and flags the device reads or writes
//! concurrently.
//!
//! Implemented here for references and `Arc`s of any implementation, and (feature `vm-memory`)
//! for rust-vmm guest memory maps; the Rust guest implements it for its memfd RAM, and a kernel
//! would implement it over identity-mapped physical memory.

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use crate::error::MemoryError;

/// Ring and buffer memory as seen by the driver, addressed by guest-physical address.
///
/// The device is another agent writing the same memory, so implementations must use volatile
/// or atomic accesses, never references to the bytes.
pub trait QueueMemory {
    /// Checks that `gpa..gpa + len` lies in memory, without touching it (a buffer the driver
    /// points a descriptor at).
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError>;

    /// Copies `buf.len()` bytes at `gpa` into `buf`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// Copies `data` to `gpa`.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError>;

    /// Atomically loads the little-endian `u16` at `gpa` (2-byte aligned).
    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemoryError>;

    /// Atomically stores `v` as a little-endian `u16` at `gpa` (2-byte aligned).
    fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), MemoryError>;

    /// Sets `len` bytes at `gpa` to `byte` (ring memory before the device knows of it).
    fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        self.check(gpa, len)?;
        let chunk = [byte; 256];
        let mut at = gpa;
        let end = gpa + len;
        while at < end {
            let n = (end - at).min(chunk.len() as u64);
            self.write(at, &chunk[..n as usize])?;
            at += n;
        }
        Ok(())
    }

    /// Reads the little-endian `u32` at `gpa`.
    fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// Forwards every method to the memory behind a pointer type.
macro_rules! forward_queue_memory {
    ($($ptr:ty),*) => {$(
        impl<M: QueueMemory + ?Sized> QueueMemory for $ptr {
            fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
                (**self).check(gpa, len)
            }
            fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
                (**self).read(gpa, buf)
            }
            fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
                (**self).write(gpa, data)
            }
            fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemoryError> {
                (**self).load_u16(gpa, order)
            }
            fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), MemoryError> {
                (**self).store_u16(gpa, v, order)
            }
            fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
                (**self).fill(gpa, len, byte)
            }
        }
    )*};
}

forward_queue_memory!(&M, Arc<M>);
