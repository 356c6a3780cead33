//! The exit events `vhost-user-backend` asks the backend for, closed once its worker is gone.
//!
//! `vhost-user-backend` 0.24 registers the consumer end of each worker's exit event with
//! `into_raw_fd` and never closes it: one descriptor leaked per connection. The backend keeps
//! the number and the file's identity, and closes it when the backend (and with it the
//! worker) is gone, only if the number still names the same file (a later
//! `vhost-user-backend` may close it itself, and the number could then name someone else's
//! file). A pipe, not an eventfd, because every pipe has its own inode while all eventfds
//! share one, so only a pipe's identity tells "still ours" apart.
//!
//! `vmm-sys-util` has no pipe, and std's (`std::io::pipe`) is newer than our MSRV: both
//! syscalls (`pipe2`, `fstat`) are here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use vmm_sys_util::event::{EventConsumer, EventNotifier};

/// The consumer end of an exit event handed to `vhost-user-backend`.
#[derive(Debug)]
pub(crate) struct LeakedConsumer {
    fd: RawFd,
    id: (u64, u64),
}

impl LeakedConsumer {
    /// Closes the descriptor if it still is our pipe. Call only once the worker that was given
    /// it is gone.
    pub(crate) fn close(self) {
        if file_id(self.fd).ok() == Some(self.id) {
            // SAFETY: the fd is the read end of our pipe, leaked by vhost-user-backend into an
            // epoll instance that is gone with the worker (the caller's promise).
            drop(unsafe { OwnedFd::from_raw_fd(self.fd) });
        }
    }
}

/// A new exit event: the ends for `VhostUserBackend::exit_event`, and the record to close the
/// consumer end with later.
pub(crate) fn exit_event() -> io::Result<(EventConsumer, EventNotifier, LeakedConsumer)> {
    let (read, write) = pipe()?;
    let id = file_id(read.as_raw_fd())?;
    let fd = read.into_raw_fd();
    // SAFETY: both fds are fresh and owned; ownership moves into the wrappers.
    let (consumer, notifier) = unsafe {
        (
            EventConsumer::from_raw_fd(fd),
            EventNotifier::from_raw_fd(write.into_raw_fd()),
        )
    };
    Ok((consumer, notifier, LeakedConsumer { fd, id }))
}

/// A pipe whose ends are non-blocking and close-on-exec: (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, the fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The (device, inode) of an open file: its identity while it stays open. A closed number is
/// an error (`EBADF`), not undefined behaviour, which is why this is not `File::metadata`.
pub(crate) fn file_id(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: fstat writes into the zeroed struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above; an invalid fd is reported as EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((st.st_dev as u64, st.st_ino as u64))
}
