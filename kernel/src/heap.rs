//! The `alloc` heap: a buddy heap (`buddy_system_allocator`) that grows from the zone. When it
//! cannot serve a request it takes a block of at least 4 MiB (order 10) from the zone and
//! retries, so the heap holds only what the kernel used.

use core::alloc::Layout;

use buddy_system_allocator::{Heap, LockedHeapWithRescue};
use prezero_mm::{AllocFlags, FRAME_SIZE, MAX_ORDER};

#[global_allocator]
static HEAP: LockedHeapWithRescue<33> = LockedHeapWithRescue::new(grow);

/// Gives the heap `bytes` (rounded up to 4 MiB blocks) from the zone.
pub fn init(bytes: u64) -> Result<(), &'static str> {
    let block = FRAME_SIZE << MAX_ORDER;
    for _ in 0..bytes.div_ceil(block) {
        let a =
            crate::mem::alloc(MAX_ORDER, AllocFlags::NONE).ok_or("out of memory for the heap")?;
        let start = a.pfn.addr() as usize;
        // SAFETY: as in `grow`.
        unsafe { HEAP.lock().add_to_heap(start, start + block as usize) };
    }
    Ok(())
}

/// The heap ran out: take a block from the zone, unless the zone is held up the stack (then
/// the allocation fails, which panics with the layout; `HEAP_AT_BOOT` keeps this away).
fn grow(heap: &mut Heap<33>, layout: &Layout) {
    let need = (layout.size().max(layout.align()) as u64)
        .div_ceil(FRAME_SIZE)
        .next_power_of_two();
    let order = (need.trailing_zeros() as u8).max(MAX_ORDER);
    if order > MAX_ORDER {
        return;
    }
    let Some(mut zone) = crate::mem::ZONE.try_lock() else {
        return;
    };
    let Some(zone) = zone.as_mut() else { return };
    if let Ok(a) = zone.alloc(order, AllocFlags::NONE, &mut crate::mem::Phys) {
        let start = a.pfn.addr() as usize;
        // SAFETY: a block the zone handed over for good: identity-mapped RAM nobody else uses.
        unsafe { heap.add_to_heap(start, start + ((FRAME_SIZE as usize) << order)) };
    }
}
