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
//!   the request was initialized (zeroed) by the device. Valid bits are `used_len * 8`.
//!
//! # The chain of "zeroed"
//!
//! A guest skips zeroing a page only if every link holds. There is no spec text for bits 6
//! and 7 yet (virtio-spec issues #242, #244); the reference is the series author's Linux
//! driver (`drivers/virtio/virtio_balloon.c`, `vhost` tree, `balloon` branch) and QEMU device
//! (`hw/virtio/virtio-balloon.c`), summarised in the project's `UPSTREAM-FACTS.md`.
//!
//! 1. **Device rule** (`prezero_device::discard::discard_ranges`): a range is "zeroed" only if
//!    every byte lies in a successful discard of whole host pages in a region whose discard
//!    zeroes, that the device does not write again (its used ring, the bitmap), and no
//!    non-zero `poison_val` is set. Matches QEMU (discard inhibited or `poison_val != 0`:
//!    nothing claimed; host-page aligned ranges only). Differs on purpose: a 2 MiB host page
//!    is discarded and marked only if the request names all its sub-pages as distinct PFNs in
//!    RAM (QEMU marks the whole run of entries before the last sub-page, skipped or repeated
//!    ones included), and a repeated PFN never gets a bit.
//! 2. **Used length, reporting** (`prezero_device::reporting`: `queue_report`,
//!    `finish_drain`): the chain's total length if every buffer is zeroed by rule 1, else 0.
//!    QEMU answers the sum of the buffers whose discard succeeded: the same for the upstream
//!    driver's one-buffer chains, a partial sum no driver can map to blocks for a chain of
//!    several; this device never answers a partial sum. The chains of one queue drain are
//!    discarded together (one call per contiguous range), each answered with its own length
//!    at the end of that drain.
//! 3. **Used length, inflate** (`prezero_device::inflate`, `write_bitmap`): the bitmap bytes
//!    written, at most the buffer; a short bitmap is all zeros. QEMU answers `ceil(n / 8)`
//!    whatever the buffer holds, which can exceed what it wrote.
//! 4. **Driver rule** (`prezero_driver::balloon`: its `ReportSink` impl and `zeroed_pages`): a
//!    reported block is zeroed only if its own chain's used length equals its buffer length;
//!    an inflated guest page only if the bits of all its 4 KiB sub-pages are set and below
//!    `used_len * 8`. Matches the upstream driver, as do the batch (one chain per block, up to
//!    the reporting ring's size) and freeing deflated pages as known-zero (`FPI_ZEROED`,
//!    `prezero_mm::FreeHint::Deflated`).
//! 5. **Trust gate**, twice: at negotiation (`prezero_driver::balloon::driver_features`, the
//!    upstream `validate()`: bits 6 and 7 dropped in a confidential guest and with a non-zero
//!    poison value, bit 6 without `REPORTING`, never `VIRTIO_RING_F_INDIRECT_DESC`) and in the
//!    allocator (`prezero_mm::Config::trusts_device_zeroing`: "zeroed" is believed only with
//!    the feature negotiated, poison off or 0, and not confidential). Upstream has the first
//!    only; the second keeps a kernel embedding `prezero-mm` behind another driver safe.
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
