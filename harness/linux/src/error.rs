//! The crate's error type. Every variant that a user can fix names the fix.

use std::io;

/// Errors of the Linux-guest harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool, package or file the harness needs is not there.
    #[error("{what} is missing; fix: {fix}")]
    Missing {
        /// What is missing (a package, binary or file).
        what: String,
        /// The command or action that fixes it.
        fix: String,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external command ran but failed.
    #[error("`{command}` failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// The guest did not get somewhere in time.
    #[error("timed out after {secs:.1} s waiting for {what}; last console lines:\n{tail}")]
    Timeout {
        /// What the harness waited for.
        what: String,
        /// How long it waited.
        secs: f64,
        /// The last console lines.
        tail: String,
    },
    /// The guest's console closed (the VM exited) before something happened.
    #[error("the guest exited before {what}; last console lines:\n{tail}")]
    GuestExited {
        /// What the harness waited for.
        what: String,
        /// The last console lines.
        tail: String,
    },
    /// Malformed input: a kernel module, an archive entry, a measurement series, ...
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was malformed.
        what: String,
        /// Why.
        detail: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Wraps an `io::Error` with context: `.map_err(io_err("reading x"))`.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
