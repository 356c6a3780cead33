//! The Rust guest's virtio transport.
//!
//! The guest is a process whose "physical memory" is a memfd it owns ([`GuestRam`]). It drives
//! virtio devices served by a vhost-user backend daemon: it shares the memfd with the daemon,
//! lays split virtqueues ([`SplitQueue`]) out in that memory, and talks to the daemon as a
//! vhost-user frontend ([`VhostUserTransport`]) for feature negotiation, queue setup, kicks,
//! calls and config space. Nothing here knows which device it drives: the virtio-balloon
//! driver is built on top.
//!
//! A driver's life:
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use prezero_guest::ram::DEFAULT_RAM_SIZE;
//! use prezero_guest::{Buffer, GuestRam, SplitQueue, VhostUserTransport};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! const VIRTIO_F_VERSION_1: u64 = 1 << 32;
//! let ram = Arc::new(GuestRam::new(DEFAULT_RAM_SIZE)?);
//! let mut device = VhostUserTransport::connect("/run/prezero/balloon.sock", 1)?;
//! let features = device.negotiate(VIRTIO_F_VERSION_1 | (device.device_features() & 0x7f))?;
//! device.set_memory(&ram)?;
//!
//! // Ring memory comes from the guest's page allocator; any gpa with this size and alignment.
//! let need = SplitQueue::<u64>::memory_requirement(128)?;
//! let ring_gpa = 0x10_0000;
//! assert_eq!(ring_gpa % need.align, 0);
//! let mut queue = SplitQueue::new(ram.clone(), 128, ring_gpa, device.event_idx())?;
//! device.setup_queue(0, &queue)?;
//!
//! // Hand the device a 4 MiB block to write (or discard); the driver never touches it.
//! queue.add(&[Buffer::writable(0x40_0000, 4 << 20)], 42)?;
//! if queue.should_notify()? {
//!     device.kick(0)?;
//! }
//! loop {
//!     let events = device.wait(Some(Duration::from_secs(1)))?;
//!     if events.config_changed {
//!         let mut num_pages = [0u8; 4];
//!         device.read_config(0, &mut num_pages)?;
//!     }
//!     if events.called(0) {
//!         while let Some(used) = queue.pop_used()? {
//!             println!("chain {} used {} of {} bytes", used.token, used.len, used.writable_len);
//!         }
//!     }
//! #   let _ = features;
//! #   break;
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod backend_channel;
pub mod balloon;
mod error;
pub mod guest;
mod poll;
pub mod ram;
pub mod vhost_user;
pub mod workload;

pub use balloon::{BalloonDriver, BalloonError, DriverOptions};
pub use error::{QueueError, RamError, TransportError};
pub use guest::{Guest, GuestError, GuestOptions};
pub use prezero_virtq::{Buffer, RingLayout, RingMemory, Used};
pub use ram::GuestRam;
pub use vhost_user::{Events, VhostUserTransport};

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
