//! The host side of virtio-balloon: a transport-agnostic device core that processes the
//! inflate, deflate, stats and free page reporting queues over guest memory, discards the
//! memory the guest gives back with the syscall its backing needs, and tells the guest which
//! pages now read zero (`DEVICE_INIT_REPORTED`, `DEVICE_INIT_ON_INFLATE`).
//!
//! A vhost-user daemon, a VMM or a test drives it through `virtio_queue` queues and a
//! `vm-memory` guest memory map; it owns neither.
//!
//! # Driving it (e.g. from a `vhost-user-backend` `VhostUserBackendMut`)
//!
//! | transport event | call |
//! |---|---|
//! | `num_queues()` | [`BalloonDevice::max_queues`] (queues of every offered feature) |
//! | `max_queue_size()` | [`BalloonDevice::queue_max_size`] |
//! | `features()` | [`BalloonDevice::offered_features`] (+ `VHOST_USER_F_PROTOCOL_FEATURES`) |
//! | `acked_features(f)` | [`BalloonDevice::ack_features`]: roles become dense over `f` |
//! | `get_config(offset, size)` | [`BalloonDevice::read_config`] into a `size`-byte buffer |
//! | `set_config(offset, buf)` | [`BalloonDevice::write_config`] |
//! | `handle_event(i, ..)` | [`BalloonDevice::process_queue`]`(i, vring.get_queue_mut(), &mem.memory())`; signal the used queue if it returns `true` |
//! | `reset_device()` | [`BalloonDevice::reset`] |
//! | host: new target | [`BalloonDevice::set_target_pages`]; if `true`, send a config-change notification |
//! | host: fresh stats | [`BalloonDevice::request_stats`] on the stats queue; signal it if `true` |
//! | host: read stats / metrics | [`BalloonDevice::latest_stats`], [`BalloonDevice::metrics`] or the lock-free [`BalloonDevice::metrics_handle`] |
//!
//! With `GuestMemoryAtomic<GuestMemoryMmap<B>>`, use [`HostDiscard<B>`](HostDiscard) as the
//! discard backend.
//!
//! ```
//! use prezero_device::protocol::features::{Features, REPORTING, DEVICE_INIT_REPORTED};
//! use prezero_device::protocol::queues::QueueRole;
//! use prezero_device::{BalloonDevice, DeviceOptions, HostDiscard};
//! use virtio_queue::{Queue, QueueT};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut dev = BalloonDevice::new(DeviceOptions::default(), HostDiscard::<()>::new()).unwrap();
//! // SET_FEATURES: stats not negotiated, so reporting is queue 2.
//! dev.ack_features(Features::bit(REPORTING).with(DEVICE_INIT_REPORTED).bits());
//! assert_eq!(dev.queue_role(2), Some(QueueRole::Reporting));
//! // GET_CONFIG / SET_CONFIG
//! let mut config = [0u8; 8];
//! dev.read_config(0, &mut config);
//! dev.write_config(4, &16u32.to_le_bytes());
//! // A kick on queue 2 (a queue the driver has not set up yet does nothing).
//! let mut queue = Queue::new(256).unwrap();
//! let notify = dev.process_queue(2, &mut queue, &mem).unwrap();
//! assert!(!notify);
//! // The host changes its target: send a config-change notification.
//! assert!(dev.set_target_pages(1024));
//! ```
//!
//! # Layout
//!
//! `device` owns the state and the API above. A queue event lends the queue loop (`queues`:
//! pop, dispatch by role, `add_used`, notify) a `ChainCtx` (`context`: guest memory, discard
//! backend, counters, negotiated features, poison value, limits, the used ring's range, the
//! request buffers), and the loop hands it with each chain to the handler of the queue's role:
//! [`reporting`], [`inflate`], [`deflate`] (both over [`pfns`]) or [`stats`]. Handlers never
//! see the device. Below them: `chain` (a chain's shape), [`memory`] (guest ranges through the
//! memory map), [`discard`] (the discard seam and what may be claimed zeroed) with
//! [`host_discard`] as the real backend, [`metrics`] and [`error`] (what is counted and
//! returned). `config_space` and [`options`] are the configuration space and the host's
//! settings. With the `test-utils` feature, `recording` provides a recording discard backend
//! for tests.
//!
//! # Decisions
//!
//! - **Element = descriptor chain** (QEMU's `VirtQueueElement`). The reporting used length is per
//!   chain: the sum of its buffer lengths only if `DEVICE_INIT_REPORTED` was negotiated and every
//!   buffer was wholly discarded by a zeroing discard (and poison allows), else 0: never a
//!   partial sum (QEMU sums the buffers whose discard succeeded). Reporting buffers must all be
//!   device-writable. The chains of one queue drain are discarded together and answered at
//!   its end, so one chain per block (the upstream driver) costs no more syscalls than one
//!   chain of many blocks (the stock driver). See [`reporting`].
//! - **Inflate/deflate**: device-readable arrays of little-endian `u32` PFNs (4 KiB pages).
//!   With `DEVICE_INIT_ON_INFLATE`, exactly one device-writable bitmap of at least
//!   `ceil(n / 8)` bytes follows, LSB-first; the device writes all `ceil(n / 8)` bytes. A short
//!   bitmap is zero-filled (used length < `ceil(n / 8)`); a missing or duplicated one gets
//!   nothing. No bit is ever set outside the buffer or for a page not really zeroed. See
//!   [`inflate`].
//! - **Hostile input**: a chain whose shape is broken (empty, truncated by a loop or a bad
//!   `next`, too long, wrong direction) is rejected whole: nothing discarded, nothing written,
//!   used length 0, error counted, queue goes on. Individual bad ranges are skipped and counted.
//!   Every range is resolved through the guest memory map with checked arithmetic; a range
//!   crossing a hole or the end of RAM is rejected, never clamped or extended. See [`memory`]
//!   and [`ErrorKind`].
//! - **Discard per region** ([`HostDiscard`]): private anonymous -> `MADV_DONTNEED`; shared
//!   anonymous -> `MADV_REMOVE`; shared file / memfd -> `fallocate(PUNCH_HOLE|KEEP_SIZE)`;
//!   hugetlbfs -> the same punch with the huge page as the host page; private file mapping ->
//!   `MADV_DONTNEED` but never claimed. Only whole host pages are discarded and claimed; a
//!   failed discard claims nothing. Adjacent ranges are merged: one syscall per contiguous
//!   range of a request (inflate) or of a queue drain (reporting). Discarded ranges are marked in the region's dirty bitmap (migration must resend the
//!   zeros).
//! - **Partial host pages**: only assembled within one inflate request (as QEMU does); pages of
//!   a huge host page inflated across requests are not tracked, because a deflate in between
//!   could otherwise let the device discard a page the guest uses again.
//! - **`PAGE_POISON`**: `poison_val` is driver-written (the spec says so and Linux writes it at
//!   probe), so the driver may write `actual` and, once `PAGE_POISON` is negotiated,
//!   `poison_val`; `num_pages` is set only through the host API. With a non-zero `poison_val`,
//!   reported pages are not discarded and nothing is ever claimed zeroed (inflated pages are
//!   still discarded: their contents are the host's until deflate).
//! - **`FREE_PAGE_HINT`** (a migration aid) and `ACCESS_PLATFORM` are not supported and cannot
//!   be offered. `DEFLATE_ON_OOM` and `MUST_TELL_HOST` are offered; neither needs device work
//!   beyond acknowledging deflates promptly.
//! - **Stats**: exactly one buffer held; a second one makes the device give back the first.
//!   Each buffer replaces all values; unknown tags are skipped; values carry their arrival time.
//!   See [`stats`].
//! - **Endianness**: the device assumes little-endian guests (modern devices are LE; a legacy
//!   big-endian guest's PFNs and stats would be misread).
#![deny(missing_docs)]

mod chain;
mod config_space;
mod context;
pub mod deflate;
mod device;
pub mod discard;
pub mod error;
pub mod host_discard;
pub mod inflate;
pub mod memory;
pub mod metrics;
pub mod options;
pub mod pfns;
mod queues;
#[cfg(any(test, feature = "test-utils"))]
pub mod recording;
pub mod reporting;
pub mod stats;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use config_space::ConfigWriteOutcome;
pub use device::BalloonDevice;
pub use discard::{DiscardBackend, DiscardError, DiscardMode, RegionPolicy};
pub use error::{DeviceError, ErrorKind};
pub use host_discard::HostDiscard;
pub use metrics::{Metrics, MetricsSnapshot};
pub use options::{DeviceOptions, Limits};
#[cfg(any(test, feature = "test-utils"))]
pub use recording::{DiscardOp, RecordingDiscard};
pub use stats::GuestStats;

pub use prezero_balloon as protocol;
