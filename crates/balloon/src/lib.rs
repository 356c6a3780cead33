//! The virtio-balloon wire format, shared by the host device (`prezero-device`) and guest
//! drivers (`prezero-guest`).
//!
//! `#![no_std]`, no allocation, no dependency: a Rust kernel or unikernel can use it as is.
//!
//! What it defines:
//! - [`features`]: feature bits 0-7, including the two proposed bits
//!   [`DEVICE_INIT_REPORTED`](features::DEVICE_INIT_REPORTED) (6) and
//!   [`DEVICE_INIT_ON_INFLATE`](features::DEVICE_INIT_ON_INFLATE) (7), and the transport bits a
//!   balloon device offers.
//! - [`config`]: the 16-byte little-endian configuration space.
//! - [`queues`]: queue roles, numbered densely over the *negotiated* features.
//! - [`stats`]: the 16 statistics tags and the 10-byte stats entry.
//! - [`pfn`]: 4 KiB balloon page frame numbers, PFN arrays, PFN runs and the inflate bitmap.
//!
//! # Endianness
//!
//! Everything on the wire is little-endian. A legacy (pre-`VERSION_1`) big-endian guest would
//! use its native endianness for PFNs and stats; such guests are not supported.
//!
//! # The two proposed features
//!
//! - `DEVICE_INIT_REPORTED`: for each reporting descriptor chain ("element"), the device sets
//!   the used length to the chain's full buffer length only if every byte of it now reads as zero
//!   (and poison rules allow), 0 otherwise. A driver that wants one answer per reported block puts
//!   each block in its own chain.
//! - `DEVICE_INIT_ON_INFLATE`: each inflate chain carries, after its PFN buffers, exactly one
//!   device-writable bitmap buffer of at least [`pfn::bitmap_len`]`(n)` bytes; bit `i` (byte
//!   `i / 8`, bit `i % 8`, LSB first) is set by the device only if the page of the `i`-th PFN of
//!   the request was initialized (zeroed) by the device. A driver trusts the bitmap only if the
//!   used length is at least `bitmap_len(n)`.
#![no_std]
#![deny(missing_docs)]

pub mod config;
pub mod features;
pub mod pfn;
pub mod queues;
pub mod stats;

pub use config::BalloonConfig;
pub use features::Features;
pub use queues::{QueueRole, QueueRoles};
pub use stats::StatTag;

/// Virtio device ID of the memory balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;
