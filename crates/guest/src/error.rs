//! Every way the guest can fail, one enum per layer: [`RamError`] (guest RAM), [`QueueError`]
//! (the split ring), [`TransportError`] (the vhost-user frontend), [`BalloonError`] (the balloon
//! driver of `prezero-driver`, over any transport's error) and [`GuestError`] (the guest as a
//! whole).
//!
//! Messages name the problem and, where there is one, the fix: these errors reach a person at a
//! terminal through `prezero demo` / `prezero bench`, and "Disconnected" alone tells them nothing.

use std::io;
use std::path::PathBuf;

use prezero_mm::{AllocError, FreeError};

/// Failures of [`GuestRam`](crate::GuestRam): creating the memfd "physical memory" or accessing it.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// The requested RAM size cannot back a guest.
    #[error("guest RAM size {size:#x} is not a positive multiple of {granule:#x} bytes")]
    BadSize {
        /// Requested size in bytes.
        size: u64,
        /// Granule the size must be a multiple of (4 KiB, or the huge page size).
        granule: u64,
    },
    /// Huge page sizes are powers of two the kernel encodes in `MFD_HUGE_*`.
    #[error("huge page size {0:#x} is not a power of two between 64 KiB and 16 GiB")]
    BadHugePageSize(u64),
    /// `memfd_create` refused.
    #[error("memfd_create failed: {0}")]
    MemfdCreate(#[source] io::Error),
    /// `ftruncate` of the memfd failed (tmpfs size limit, or huge page size mismatch).
    #[error("cannot size the guest RAM memfd to {size:#x} bytes: {source}")]
    Resize {
        /// Requested size.
        size: u64,
        /// Error from `ftruncate`.
        #[source]
        source: io::Error,
    },
    /// A hugetlb memfd could not reserve its pages.
    #[error(
        "cannot map {size:#x} bytes of {huge_page_kib} KiB huge pages: {source}; reserve enough \
         first, e.g. `echo N > /sys/kernel/mm/hugepages/hugepages-{huge_page_kib}kB/nr_hugepages`, \
         or run without huge pages"
    )]
    HugePagesUnavailable {
        /// Requested size.
        size: u64,
        /// Huge page size in KiB, as sysfs names it.
        huge_page_kib: u64,
        /// Error from `mmap`.
        #[source]
        source: io::Error,
    },
    /// `mmap` of the memfd failed.
    #[error("cannot map guest RAM ({size:#x} bytes): {reason}")]
    Map {
        /// Requested size.
        size: u64,
        /// What vm-memory reported.
        reason: String,
    },
    /// A guest-physical range falls (partly) outside RAM.
    #[error("guest range {gpa:#x}+{len:#x} is outside guest RAM (size {size:#x})")]
    OutOfRange {
        /// Start of the range.
        gpa: u64,
        /// Length of the range.
        len: u64,
        /// RAM size.
        size: u64,
    },
    /// Atomic accesses need natural alignment.
    #[error("guest address {gpa:#x} is not {align}-byte aligned, as an atomic access needs")]
    Misaligned {
        /// The address.
        gpa: u64,
        /// Required alignment.
        align: u64,
    },
    /// A system call on the memfd failed.
    #[error("{what} failed: {source}")]
    Io {
        /// Which operation.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

pub use prezero_driver::BalloonError;
pub use prezero_virtq::QueueError;

/// Failures of the vhost-user frontend transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Nothing exists at the socket path.
    #[error(
        "vhost-user socket {} does not exist: start the backend first, e.g. `prezero serve --socket {}`",
        path.display(), path.display()
    )]
    SocketMissing {
        /// The path.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the path.
    #[error(
        "{} is not a Unix socket: point --socket at the path the backend listens on",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket file exists but no process accepts on it (a stale socket of a dead backend).
    #[error(
        "nobody is listening on {}: the backend that created it has exited; restart it, e.g. \
         `prezero serve --socket {}`",
        path.display(), path.display()
    )]
    NotListening {
        /// The path.
        path: PathBuf,
    },
    /// Any other connect failure (permissions, ...).
    #[error("cannot connect to vhost-user socket {}: {source}", path.display())]
    Connect {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The backend closed the connection or died.
    #[error(
        "vhost-user backend on {} disconnected ({during}): it exited or dropped the connection; \
         restart it and reconnect",
        path.display()
    )]
    Disconnected {
        /// Socket path, to say which backend.
        path: PathBuf,
        /// What the frontend was doing when it noticed.
        during: &'static str,
    },
    /// The backend answered a request with an error or a malformed reply.
    #[error("vhost-user request {request} failed: {source}")]
    Request {
        /// The request, named as in the vhost-user spec.
        request: &'static str,
        /// What the vhost crate reported.
        #[source]
        source: vhost::Error,
    },
    /// The backend does not offer something the caller needs.
    #[error("the vhost-user backend does not offer {what}, which is needed to {needed_for}")]
    Unsupported {
        /// The missing feature.
        what: &'static str,
        /// What the caller was trying to do.
        needed_for: &'static str,
    },
    /// The backend serves fewer queues than the driver asked for.
    #[error("the backend serves {available} queues, the driver needs {wanted}")]
    TooFewQueues {
        /// Queues the backend reported with `GET_QUEUE_NUM`.
        available: u64,
        /// Queues requested in `connect`.
        wanted: u16,
    },
    /// A call was made out of order.
    #[error("{0}")]
    Sequence(&'static str),
    /// Queue index out of range.
    #[error("queue {index} does not exist: the transport was opened with {num_queues} queues")]
    NoSuchQueue {
        /// The index asked for.
        index: u16,
        /// How many queues the transport handles.
        num_queues: u16,
    },
    /// The queue exists but was not set up with `setup_queue`.
    #[error("queue {0} is not set up: call setup_queue first")]
    QueueNotReady(u16),
    /// The backend sent bytes on the main socket when nothing was asked.
    #[error("the vhost-user backend sent an unsolicited message on the main socket")]
    Unsolicited,
    /// The backend request channel (config change notifications) broke.
    #[error("the vhost-user backend request channel failed: {0}")]
    BackendChannel(String),
    /// A local system call failed.
    #[error("{what} failed: {source}")]
    Io {
        /// Which operation.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Guest RAM could not be described to the backend.
    #[error(transparent)]
    Ram(#[from] RamError),
}

/// Failures of the guest as a whole.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// Guest RAM could not be created.
    #[error(transparent)]
    Ram(#[from] RamError),
    /// The balloon driver failed.
    #[error(transparent)]
    Balloon(#[from] BalloonError<TransportError>),
    /// An allocation failed.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A free was refused.
    #[error(transparent)]
    Free(#[from] FreeError),
}
