//! The ring over rust-vmm `vm-memory` (feature `vm-memory`): [`QueueMemory`] for a guest
//! memory map, and the device-side `virtio_queue::Queue` that reads a [`RingLayout`], so a
//! benchmark, a fuzzer or a test can drive a device through the same rings a guest would.

use core::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionCollection,
};

use crate::error::MemoryError;
use crate::layout::RingLayout;
use crate::memory::QueueMemory;

impl<R: GuestMemoryRegion> QueueMemory for GuestRegionCollection<R> {
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        let err = MemoryError { gpa, len };
        let count = usize::try_from(len).map_err(|_| err)?;
        gpa.checked_add(len).ok_or(err)?;
        if count == 0 || GuestMemoryBackend::check_range(self, GuestAddress(gpa), count) {
            Ok(())
        } else {
            Err(err)
        }
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemoryError {
                gpa,
                len: buf.len() as u64,
            })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.write_slice(data, GuestAddress(gpa))
            .map_err(|_| MemoryError {
                gpa,
                len: data.len() as u64,
            })
    }

    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemoryError> {
        self.load::<u16>(GuestAddress(gpa), order)
            .map(u16::from_le)
            .map_err(|_| MemoryError { gpa, len: 2 })
    }

    fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<(), MemoryError> {
        self.store(v.to_le(), GuestAddress(gpa), order)
            .map_err(|_| MemoryError { gpa, len: 2 })
    }
}

impl RingLayout {
    /// The device side of this ring: a ready `virtio_queue::Queue` of `size` entries (also its
    /// maximum) at these addresses, without `EVENT_IDX` (call `set_event_idx` to change that).
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("ring sizes are powers of two <= 32768");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }
}
