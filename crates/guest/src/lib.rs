//! The Rust guest's virtio transport.
//!
//! The guest is a process whose "physical memory" is a memfd it owns ([`GuestRam`]). It drives
//! virtio devices served by a vhost-user backend daemon: it shares the memfd with the daemon,
//! lays split virtqueues ([`SplitQueue`]) out in that memory, and talks to the daemon as a
//! vhost-user frontend ([`VhostUserTransport`]) for feature negotiation, queue setup, kicks,
//! calls and config space. Nothing here knows which device it drives: the virtio-balloon
//! driver is built on top.
#![deny(missing_docs)]

mod backend_channel;
mod error;
mod poll;
pub mod ram;
pub mod vhost_user;
pub mod virtqueue;

pub use error::{QueueError, RamError, TransportError};
pub use ram::GuestRam;
pub use vhost_user::{Events, VhostUserTransport};
pub use virtqueue::{Buffer, RingLayout, RingMemory, SplitQueue, Used};
