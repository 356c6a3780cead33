//! The `alloc` heap: a buddy heap (`buddy_system_allocator`) that grows from the zone. When it
//! cannot serve a request it takes a block of at least 4 MiB (order 10) from the zone and
//! retries, so the heap holds only what the kernel used.

use core::alloc::Layout;

use buddy_system_allocator::{Heap, LockedHeapWithRescue};
use prezero_mm::{AllocFlags, FRAME_SIZE, MAX_ORDER};

#[global_allocator]
static HEAP: LockedHeapWithRescue<33> = LockedHeapWithRescue::new(grow);

fn grow(heap: &mut Heap<33>, layout: &Layout) {
    let need = (layout.size().max(layout.align()) as u64).div_ceil(FRAME_SIZE).next_power_of_two();
    let order = (need.trailing_zeros() as u8).max(MAX_ORDER);
    if order > MAX_ORDER {
        return;
    }
    if let Some(a) = crate::mem::alloc(order, AllocFlags::NONE) {
        let start = a.pfn.addr() as usize;
        // SAFETY: a block the zone handed over for good: identity-mapped RAM nobody else uses.
        unsafe { heap.add_to_heap(start, start + ((FRAME_SIZE as usize) << order)) };
    }
}
