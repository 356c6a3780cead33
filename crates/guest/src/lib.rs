//! The Rust guest: a process whose "physical memory" is a memfd it owns, managed by the
//! `prezero-mm` allocator, with a virtio-balloon driver that reports its free memory to a host
//! device and remembers which reported blocks the device zeroed.
//!
//! | file | what it holds |
//! |---|---|
//! | `ram.rs` | [`GuestRam`]: the memfd mapped at guest-physical 0; [`RamFrames`](ram::RamFrames), the allocator's view of it; the split ring's view of it (`prezero_virtq::QueueMemory`), so a [`SplitQueue`] lives in guest RAM |
//! | `vhost_user.rs` | [`VhostUserTransport`]: the [`VirtioTransport`] as a vhost-user frontend; `backend_channel.rs` serves its config-change channel |
//! | `clock.rs` | [`InstantClock`]: the driver's clock over `std::time::Instant` |
//! | `guest.rs` | [`Guest`]: RAM, the zone shared by its vCPUs ([`Vcpu`]) and the driver over vhost-user, serviced from the caller's thread |
//! | `workload.rs` | the memory behaviour the demo, the benchmarks and the tests run |
//! | `error.rs` | every error of the crate, one enum per layer |
//!
//! The balloon driver and the transport trait are `prezero-driver`'s (`no_std`, shared with a
//! kernel), re-exported here: [`balloon`], [`transport`], [`VirtioTransport`], [`Events`],
//! [`BalloonError`], and [`BalloonDriver`], the driver over guest RAM and [`InstantClock`].
//!
//! The driver's life, over any [`VirtioTransport`] (here the vhost-user frontend of a
//! `prezero serve` daemon):
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use prezero_guest::ram::DEFAULT_RAM_SIZE;
//! use prezero_guest::{balloon, BalloonDriver, DriverOptions, GuestRam, InstantClock, VhostUserTransport};
//! use prezero_guest::Clock;
//! use prezero_mm::{AllocFlags, Config, FrameMeta, Pfn, Zone, FRAME_SIZE};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ram = Arc::new(GuestRam::new(DEFAULT_RAM_SIZE)?);
//! let frames = ram.size() / FRAME_SIZE;
//! let mut zone = Zone::new(vec![FrameMeta::EMPTY; frames as usize], Pfn(0), Config::default());
//! zone.add_memory(Pfn(0), frames, true).expect("the zone spans guest RAM");
//!
//! let transport = VhostUserTransport::connect("/run/prezero/balloon.sock", balloon::max_queues())?;
//! let clock = InstantClock::new();
//! // Negotiates (a confidential guest refuses the device-init features), takes its rings and
//! // buffers from the zone, starts the queues and hands the device a stats buffer.
//! let mut driver =
//!     BalloonDriver::new(transport, ram.clone(), clock, &mut zone, DriverOptions::default())?;
//! loop {
//!     // A new target: inflate or deflate toward it. A stats request: fresh stats.
//!     driver.poll(&mut zone, Duration::from_millis(100))?;
//!     // Free page reporting when due, one chain per block: a block the device zeroed comes
//!     // back known-zero, and a zeroed allocation from it skips the zeroing.
//!     let pass = zone.report_pass(clock.now().as_millis() as u64, &mut driver);
//!     let block = zone.alloc(9, AllocFlags::ZERO, &mut prezero_guest::ram::RamFrames(&ram))?;
//!     # let _ = (pass, block);
//!     # break;
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod backend_channel;
mod clock;
mod error;
pub mod guest;
pub mod ram;
pub mod vhost_user;
pub mod workload;

pub use clock::InstantClock;
pub use error::{BalloonError, GuestError, QueueError, RamError, TransportError};
pub use guest::{Guest, GuestOptions, GuestZone, Vcpu};
pub use prezero_driver::{balloon, transport};
pub use prezero_driver::{
    Clock, DriverOptions, DriverStats, Events, ReportCapacity, VirtioTransport,
};
pub use prezero_virtq::{Buffer, RingLayout, RingMemory, Used};
pub use ram::GuestRam;
pub use vhost_user::VhostUserTransport;

/// The balloon driver ([`prezero_driver::BalloonDriver`]) over transport `T`, with its rings
/// and buffers in [`GuestRam`] and request timeouts on an [`InstantClock`].
pub type BalloonDriver<T> =
    prezero_driver::BalloonDriver<T, std::sync::Arc<GuestRam>, InstantClock>;

/// A split virtqueue ([`prezero_virtq::SplitQueue`]) with its rings in [`GuestRam`].
pub type SplitQueue<T> = prezero_virtq::SplitQueue<T, std::sync::Arc<GuestRam>>;

#[cfg(test)]
mod tests {
    use super::*;

    // A driver shares RAM and queues with threads (workloads, a reporting thread), and may
    // kick or wait on the transport from another thread than the one that set it up.
    #[test]
    fn transport_types_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<GuestRam>();
        send_sync::<SplitQueue<u64>>();
        send_sync::<VhostUserTransport>();
        send_sync::<Events>();
    }
}
