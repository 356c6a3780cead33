//! The prezero virtio-balloon device served as a vhost-user backend daemon.
//!
//! The device core ([`prezero_device`]) runs on rust-vmm's `vhost-user-backend`, the way the
//! `vhost-device-*` daemons serve their devices: a frontend (a VMM, User-Mode Linux's
//! `virtio_uml`, the Rust guest of `prezero-guest`) connects to a Unix socket, shares its guest
//! RAM (memfd / shmem: discarded by punching holes), and drives the balloon's queues; the
//! daemon serves one guest after another on the same socket.
//!
//! An operator steers it through a control socket ([`control`]: HTTP/1.1 + JSON, like
//! Firecracker's API socket) or, in-process, through a [`Controller`].
//!
//! ```no_run
//! use std::time::Duration;
//! use prezero_vhost::{control_request, spawn, ControlRequest, FeatureOffer, ServeOptions};
//!
//! # fn main() -> Result<(), prezero_vhost::Error> {
//! // In-process (e.g. `prezero demo`): the daemon runs on threads of this process.
//! let opts = ServeOptions::new("/tmp/balloon.sock")
//!     .with_control("/tmp/balloon.ctl")
//!     .with_offer(FeatureOffer { device_init_reported: false, ..FeatureOffer::default() });
//! let daemon = spawn(opts)?;
//! // ... a guest connects to /tmp/balloon.sock ...
//! let outcome = daemon.set_target_bytes(256 << 20)?; // notifies the guest
//! println!("{:?}", outcome.notification);
//! let fresh = daemon.request_stats(Some(Duration::from_secs(1)));
//! println!("{:?} {:?}", fresh.stats, daemon.metrics().device.zeroed_bytes);
//!
//! // From another process (`prezero balloon set 256M --control /tmp/balloon.ctl`):
//! let json = control_request("/tmp/balloon.ctl", &ControlRequest::Status)?;
//! println!("{json}");
//!
//! daemon.shutdown()?;
//! // As a service: `serve` blocks until SIGINT/SIGTERM.
//! prezero_vhost::serve(ServeOptions::new("/run/balloon.sock"))?;
//! # Ok(())
//! # }
//! ```
//!
//! # How the pieces fit
//!
//! | file | job |
//! |---|---|
//! | `daemon.rs` | [`spawn`] / [`serve`]: bind the sockets, the accept loop (one guest at a time), [`DaemonHandle`] |
//! | `session.rs` | one frontend connection: backend, `VhostUserDaemon`, relay, teardown |
//! | `controller.rs` | the host API: [`Controller`], the state shared with the daemon's threads, the link to the connected guest |
//! | `backend.rs` | the device as a `vhost-user-backend` backend (`SharedDevice`, `BalloonBackend`) |
//! | [`notifier`] | [`ConfigNotifier`]: "tell the frontend the config changed" -> [`Notification`] |
//! | [`relay`] (`relay/mod.rs`) | the vhost 0.18 / `vhost-user-backend` 0.24 workaround: the message relay between the frontend and `VhostUserDaemon`; deleted when `docs/upstream/` lands |
//! | `relay/message.rs` | one vhost-user message (header, payload, `SCM_RIGHTS` fds) read and written whole |
//! | `relay/channel.rs` | [`relay::BackendChannel`]: config changes sent on the backend request channel, held back while no ring runs |
//! | `relay/rings.rs` | the rings as the frontend set them up; a kick fd replaced on a started ring watched again |
//! | `relay/hooks.rs` | `RingHooks`: the ring messages the device must see (`SET_VRING_BASE`, `RESET_OWNER`) |
//! | `relay/config_access.rs` | `GET_CONFIG` / `SET_CONFIG` outside the config space answered instead of dropping the connection |
//! | `relay/mem_table.rs` | User-Mode Linux's padded `SET_MEM_TABLE` trimmed |
//! | `fuzzing.rs` | the relay's fuzz harness (feature `fuzzing`), replayed by `tests/relay_fuzz_corpus.rs` |
//! | [`control`] (+ `http.rs`) | the operator's control socket (HTTP/1.1 + JSON) and its client |
//! | [`status`], [`options`], [`error`] | reported values, options, errors |
//! | `socket.rs`, `signals.rs`, `wait.rs`, `exit_pipe.rs` | listening sockets, SIGINT/SIGTERM, waiting on fds (`vmm-sys-util`), `vhost-user-backend`'s leaked exit events |
//!
//! Imports run one way: `daemon` -> `session` -> `controller` -> `backend` / `notifier`;
//! `relay` knows only `notifier` (and `wait`).
//!
//! | vhost-user event | where | device call |
//! |---|---|---|
//! | `GET_FEATURES` | backend | offered features + `VHOST_USER_F_PROTOCOL_FEATURES` |
//! | `GET_PROTOCOL_FEATURES` | backend | `CONFIG`, `REPLY_ACK`, `BACKEND_REQ`, `MQ` |
//! | `SET_FEATURES` | backend | `ack_features` (queue roles become dense) |
//! | `SET_MEM_TABLE` | `vhost-user-backend` | regions mapped from the frontend's fds |
//! | `GET_CONFIG` / `SET_CONFIG` | backend | config mirror / `write_config` |
//! | `SET_BACKEND_REQ_FD` | [`relay`] keeps a dup | config changes sent by [`relay::BackendChannel`] |
//! | a queue kick | worker thread | `process_queue`, then signal the call fd if asked |
//! | host: new target | [`Controller`] | `set_target_pages`, then [`ConfigNotifier::notify_config_change`] |
//! | host: fresh stats | [`Controller`] -> worker | `request_stats`, then signal |
//!
//! Faults: a guest that disconnects or dies ends its connection only: the daemon drops its
//! `VhostUserDaemon`, stops the connection's worker thread, unmaps the guest's memory, resets
//! the device (the host's target and the metrics stay) and accepts the next guest. A guest
//! that dies may leave a socket as its call "fd" (User-Mode Linux does): [`spawn`] sets
//! SIGPIPE to ignored if it still has its default action, so signalling it fails with `EPIPE`
//! instead of killing the process.
//!
//! # Interoperability
//!
//! Checked against the stock Linux 6.1 `virtio_balloon` driver under User-Mode Linux
//! (`virtio_uml`) in `harness/linux/tests/linux_uml.rs` (a root-package test), with `prezero serve` as a
//! separate process: probe with `CONFIG`/`REPLY_ACK`/`BACKEND_REQ`, dense queue roles for
//! several feature offers, inflate and deflate following a target set on the control socket
//! (config change acked by the guest), fresh statistics, free page reporting (discarded by
//! hole punching in UML's shared memory file), deflate-on-OOM, the guest killed mid-inflate.
//! What the stock driver does is listed in the `prezero-linux-harness` crate docs. Two things here
//! exist for it: UML 6.1 pads `SET_MEM_TABLE`, which vhost 0.18 refuses (the [`relay`] trims
//! it), and its call "fd" is a socket (SIGPIPE, see above). It writes `SET_FEATURES` twice at
//! probe (with, then without `PAGE_POISON`); the device goes by the last one.
#![deny(missing_docs)]

mod backend;
pub mod control;
mod controller;
mod daemon;
pub mod error;
mod exit_pipe;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod http;
pub mod notifier;
pub mod options;
mod prometheus;
pub mod relay;
mod session;
mod signals;
mod socket;
pub mod status;
mod wait;

pub use control::{control_request, ControlRequest};
pub use controller::Controller;
pub use daemon::{serve, spawn, DaemonHandle};
pub use error::{Error, Result};
pub use notifier::{ConfigNotifier, Notification};
pub use options::{bytes_to_pages, parse_size, FeatureOffer, ServeOptions};
pub use status::{
    BalloonStatistics, BalloonStatus, DaemonMetrics, MetricsReport, Negotiation, StatsReport,
    StatsRequestOutcome, TargetOutcome,
};

pub use prezero_device as device;
