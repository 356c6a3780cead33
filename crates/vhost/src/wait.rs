//! Waiting for file descriptors to become ready, with an optional timeout: `vmm-sys-util`'s
//! [`PollContext`] (epoll, retried across signals) in the one shape the daemon needs.
//!
//! A loop that waits again and again builds its [`Waiter`] once: out of descriptors (`EMFILE`)
//! it must still be able to wait, and an epoll instance is a descriptor.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use vmm_sys_util::poll::{PollContext, WatchingEvents};

/// A set of `N` descriptors to wait on, each for its own events.
pub(crate) struct Waiter<const N: usize> {
    ctx: PollContext<usize>,
}

impl<const N: usize> Waiter<N> {
    /// Watches each descriptor for its events.
    pub(crate) fn new(fds: [(&dyn AsRawFd, WatchingEvents); N]) -> io::Result<Self> {
        let ctx = PollContext::new()?;
        for (token, (fd, events)) in fds.into_iter().enumerate() {
            ctx.add_fd_with_events(fd, events, token)?;
        }
        Ok(Waiter { ctx })
    }

    /// Watches each descriptor for reading.
    pub(crate) fn readable(fds: [&dyn AsRawFd; N]) -> io::Result<Self> {
        Self::new(fds.map(|fd| (fd, WatchingEvents::empty().set_read())))
    }

    /// Waits until one is ready (a hang-up or an error counts as ready), at most `timeout`
    /// (`None`: no limit). Returns which ones are ready; none when the timeout passed.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> io::Result<[bool; N]> {
        let events = match timeout {
            None => self.ctx.wait()?,
            Some(t) => self.ctx.wait_timeout(t)?,
        };
        let mut ready = [false; N];
        for event in events.iter() {
            ready[event.token()] = true;
        }
        Ok(ready)
    }
}

/// One wait on `fds` for reading (see [`Waiter::wait`]).
pub(crate) fn readable<const N: usize>(
    fds: [&dyn AsRawFd; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    Waiter::readable(fds)?.wait(timeout)
}
