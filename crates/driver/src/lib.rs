//! The virtio-balloon driver of prezero, `no_std` + `alloc`: one driver for the Rust guest (a
//! host process whose RAM is a memfd, over vhost-user) and a kernel (identity-mapped physical
//! memory, over virtio-pci).
//!
//! | file | what it holds |
//! |---|---|
//! | `transport.rs` | [`VirtioTransport`] and [`Events`]: what a driver needs from a transport (features, memory, queues, kicks, calls, config space) |
//! | `clock.rs` | [`Clock`]: monotonic time for request timeouts |
//! | `identity.rs` | [`IdentityMemory`]: guest memory in a kernel that identity-maps its RAM (guest-physical = virtual) |
//! | `balloon.rs` | [`BalloonDriver`]: negotiation and the trust gate, free page reporting with bits 6/7, inflate/deflate with the zeroed bitmap, stats, deflate-on-OOM |
//! | `error.rs` | [`BalloonError`]: how the driver fails, over any transport's error |
//!
//! The driver is generic over the three things a guest provides: the transport `T`, guest
//! memory `M` ([`QueueMemory`], addressed by guest-physical address: the split rings, the
//! driver's own pages and the zeroing of frames all go through it) and a clock `C`. The page
//! allocator is a `prezero-mm` [`Zone`](prezero_mm::Zone) over any frame metadata storage,
//! passed to each call that takes or gives back pages. Nothing here uses `std` (CI checks the
//! dependency tree): a kernel depends on this crate as it is, and gives it a virtio-pci
//! [`VirtioTransport`] (with `type Memory = IdentityMemory`, which its `set_memory` ignores),
//! [`IdentityMemory`] over its RAM, and its TSC as the clock (`|| tsc.now()`).
//!
//! ```
//! # use core::time::Duration;
//! # use prezero_driver::{BalloonDriver, BalloonError, Clock, DriverOptions, QueueMemory, VirtioTransport};
//! # use prezero_mm::{FrameMeta, Zone};
//! /// A guest's balloon service loop: the device's target, stats, and free page reporting.
//! fn serve<T, M, C>(
//!     transport: T,
//!     memory: M,
//!     clock: C,
//!     zone: &mut Zone<Box<[FrameMeta]>>,
//! ) -> Result<(), BalloonError<T::Error>>
//! where
//!     T: VirtioTransport,
//!     M: QueueMemory + Clone + core::borrow::Borrow<T::Memory>,
//!     C: Clock + Copy,
//! {
//!     // Negotiates (a confidential guest refuses the device-init features), takes its rings
//!     // and buffers from the zone, starts the queues and hands the device a stats buffer.
//!     let mut driver = BalloonDriver::new(transport, memory, clock, zone, DriverOptions::default())?;
//!     while !driver.is_dead() {
//!         // A new target: inflate or deflate toward it. A stats request: fresh stats.
//!         driver.poll(zone, Duration::from_millis(100))?;
//!         // Free page reporting when due, one chain per block: a block the device zeroed
//!         // comes back known-zero, and a zeroed allocation from it skips the zeroing.
//!         zone.report_pass(clock.now().as_millis() as u64, &mut driver);
//!         # break;
//!     }
//!     Ok(())
//! }
//! ```
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub mod balloon;
mod clock;
mod error;
mod identity;
pub mod transport;

pub use balloon::{BalloonDriver, DriverOptions, DriverStats, ReportCapacity};
pub use clock::Clock;
pub use error::BalloonError;
pub use identity::IdentityMemory;
pub use prezero_virtq::{Buffer, QueueMemory, RingLayout, SplitQueue};
pub use transport::{Events, VirtioTransport, MAX_QUEUES};
