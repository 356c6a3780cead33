//! `poll(2)` on a handful of fds with an overall deadline, retried across signals.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Events that mean "the peer is gone or the fd is broken".
pub(crate) const HANGUP: libc::c_short = libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR;

pub(crate) fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Polls `fds` until one is ready or `timeout` passes (`None`: forever). Returns how many
/// have `revents` set; 0 means the timeout passed.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a short positive timeout does not become a busy 0 ms poll.
                let ms = left.as_nanos().div_ceil(1_000_000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
