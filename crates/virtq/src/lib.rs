//! Driver side of a split virtqueue (virtio 1.x, 2.7) in memory the driver shares with a device.
//!
//! The same ring serves the Rust guest (over its memfd RAM), the report benchmark, the device's
//! fuzz harness and tests (over a `vm-memory` map), and later a `no_std` kernel (over
//! identity-mapped physical memory): what differs is only the [`QueueMemory`] it lives in.
//!
//! | file | job |
//! |---|---|
//! | `layout.rs` | [`RingLayout`]: where descriptors, avail and used rings sit; sizes, alignment, flag bits |
//! | `memory.rs` | [`QueueMemory`]: the accesses the driver needs (checks, copies, atomic `u16`) |
//! | `raw.rs` | [`RawRing`]: descriptors, avail and used entries written and read as given |
//! | `queue.rs` | [`SplitQueue`]: the driver's rules: free list, chain checks, used lengths, notifications |
//! | `guest_memory.rs` | feature `vm-memory`: [`QueueMemory`] for `vm-memory` maps, [`RingLayout::device_queue`] |
//!
//! The core is `no_std` with `alloc` (one boxed slice per queue for the free list and the
//! in-flight chains); the `vm-memory` feature (default) pulls in `std` through rust-vmm.
//!
//! ```
//! use prezero_virtq::{Buffer, RingLayout, SplitQueue};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut queue = SplitQueue::new(&mem, 16, 0x1000, false)?;
//! let mut device = queue.layout().device_queue();
//! queue.add(&[Buffer::readable(0x8000, 64), Buffer::writable(0x9000, 64)], "request")?;
//! assert!(queue.should_notify()?);
//! // The device (rust-vmm virtio-queue) takes the chain and answers with 64 bytes written.
//! let chain = device.pop_descriptor_chain(&mem).unwrap();
//! device.add_used(&mem, chain.head_index(), 64).unwrap();
//! let used = queue.pop_used()?.unwrap();
//! assert_eq!((used.token, used.len, used.writable_len), ("request", 64, 64));
//! # use virtio_queue::QueueT;
//! # Ok::<(), prezero_virtq::QueueError>(())
//! ```
//!
//! # Why not `virtio-drivers`
//!
//! rcore-os `virtio-drivers` (0.13) has a driver-side `VirtQueue`, but it does not fit this guest:
//! - its buffers are `&[u8]` / `&mut [u8]` slices that it translates with `Hal::share`; the
//!   balloon must point descriptors at guest-physical ranges it must not touch (4 MiB reported
//!   blocks the device is punching out of the memfd), and a `&mut [u8]` over memory another
//!   process rewrites is undefined behaviour in Rust;
//! - it allocates its own ring memory through the static `Hal::dma_alloc`, while here the ring
//!   memory comes from the guest's own page allocator at a gpa the caller chooses;
//! - the queue size is a const generic, `pop_used` wants the same slices handed back, and its
//!   `should_notify` compares event indices without the wrapping arithmetic of `vring_need_event`.
//!
//! So this is a small split ring of our own: descriptors take `(gpa, len, device_writable)`,
//! tokens are generic, and every used element comes back with its used length and the
//! writable length of its chain (the balloon's "device zeroed it" signal is a used length).
//!
//! # Memory ordering
//!
//! The device is another process (or the host) on the same machine, so the rules are those of
//! SMP virtio: descriptors and the avail ring entry are written before `avail.idx` is published
//! with a release store; a full fence separates publishing `avail.idx` from reading the device's
//! suppression state (`used.flags` / `avail_event`), and storing `used_event` from re-reading
//! `used.idx`; `used.idx` is read with acquire before the used elements it covers.
//!
//! The driver keeps its own copy of the free list and of each chain's shape, and never reads
//! descriptors back from shared memory: a device cannot corrupt the free list by scribbling on
//! the descriptor table.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

mod error;
#[cfg(feature = "vm-memory")]
mod guest_memory;
mod layout;
mod memory;
mod queue;
mod raw;

pub use error::{MemoryError, QueueError};
pub use layout::{
    Descriptor, RingLayout, RingMemory, AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT,
    DESC_F_WRITE, DESC_SIZE, MAX_QUEUE_SIZE, RING_ALIGN, USED_ELEM_SIZE, USED_F_NO_NOTIFY,
};
pub use memory::QueueMemory;
pub use queue::{Buffer, SplitQueue, Used};
pub use raw::RawRing;
