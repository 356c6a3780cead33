//! Errors of the daemon, its sockets and the control client. Each message says what to do.

use std::io;
use std::path::PathBuf;

/// What can go wrong starting, running or talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory that should hold a socket does not exist.
    #[error(
        "cannot create socket {path}: directory {dir} does not exist (create it first, or pick \
         a path in an existing directory)"
    )]
    SocketDirMissing {
        /// The socket path.
        path: PathBuf,
        /// Its missing directory.
        dir: PathBuf,
    },
    /// Another process is serving the socket path.
    #[error(
        "socket {path} is in use: another daemon is listening on it (stop that daemon, or pick \
         another path)"
    )]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error(
        "{path} exists and is not a socket: refusing to replace it (remove it yourself, or pick \
         another path)"
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A Unix socket path must fit in `sun_path` (107 bytes).
    #[error(
        "socket path {path} is {len} bytes long, Unix sockets allow at most 107 (use a shorter \
         path, e.g. under /run or /tmp)"
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Binding a socket failed for another reason (permissions, read-only filesystem, ...).
    #[error("cannot listen on {path}: {source} (check the directory's permissions)")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A system call the daemon needs failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device refused its options.
    #[error("invalid balloon device options: {0}")]
    Device(#[from] prezero_device::DeviceError),
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    Options(String),
    /// `vhost-user-backend` failed to set up or run a connection.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// A size given by the operator could not be parsed or is out of range.
    #[error(
        "invalid size {input:?}: {why} (examples: 0, 512 = 512M, 1.5G, 64MiB, 4096B; a number \
         without a unit is MiB)"
    )]
    InvalidSize {
        /// What was given.
        input: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The control socket could not be reached.
    #[error("cannot reach the control socket {path}: {source} ({hint})")]
    ControlConnect {
        /// The control socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The daemon refused a control request.
    #[error("the daemon refused the request (HTTP {status}): {message}")]
    ControlRefused {
        /// HTTP status code.
        status: u16,
        /// The daemon's explanation.
        message: String,
    },
    /// The control peer sent something that is not a valid reply or request.
    #[error("control protocol error: {0}")]
    ControlProtocol(String),
    /// A balloon target larger than the connected guest's RAM: the guest could never give it.
    #[error(
        "a balloon of {target_mib} MiB is larger than the guest's {ram_mib} MiB of RAM (the \
         balloon is what the guest gives up: ask for at most {ram_mib} MiB)"
    )]
    TargetAboveGuestRam {
        /// The requested target in MiB.
        target_mib: u64,
        /// The connected guest's RAM in MiB.
        ram_mib: u64,
    },
    /// The daemon has stopped.
    #[error("the daemon has stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
