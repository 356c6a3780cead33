//! SIGINT / SIGTERM as a readable fd (the self-pipe trick, with an eventfd for the pipe), for
//! [`serve`](crate::serve).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// The eventfd the handler writes to (-1: no handler installed).
static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// The eventfd, created once and never closed, so a handler running late can never write to
/// a reused fd number.
static EVENT: OnceLock<EventFd> = OnceLock::new();
/// One installation at a time.
static INSTALLED: Mutex<()> = Mutex::new(());

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

extern "C" fn on_signal(_sig: libc::c_int) {
    let fd = EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) is async-signal-safe; the eventfd is non-blocking (a full counter
        // already says "terminate"). errno is saved and restored around it.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, (&one as *const u64).cast(), 8);
            *libc::__errno_location() = errno;
        }
    }
}

/// SIGINT and SIGTERM handlers that make [`event`](Termination::event) readable; the
/// previous handlers come back when it is dropped.
pub(crate) struct Termination {
    event: &'static EventFd,
    previous: Vec<(libc::c_int, libc::sigaction)>,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl Termination {
    pub(crate) fn install() -> io::Result<Termination> {
        let guard = INSTALLED.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "another serve() already handles SIGINT/SIGTERM in this process",
            )
        })?;
        let event = match EVENT.get() {
            Some(e) => e,
            None => {
                let e = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?;
                EVENT.get_or_init(|| e)
            }
        };
        // Forget signals of an earlier installation (one read empties the counter).
        let _ = event.read();
        EVENT_FD.store(event.as_raw_fd(), Ordering::SeqCst);
        let mut t = Termination {
            event,
            previous: Vec::new(),
            _guard: guard,
        };
        for sig in SIGNALS {
            // SAFETY: a zeroed sigaction is valid; we set the handler and an empty mask.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: sigemptyset on our struct; sigaction with valid pointers.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            let rc = unsafe {
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, &mut old)
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            t.previous.push((sig, old));
        }
        Ok(t)
    }

    /// Readable once SIGINT or SIGTERM arrived.
    pub(crate) fn event(&self) -> &EventFd {
        self.event
    }
}

impl Drop for Termination {
    fn drop(&mut self) {
        for (sig, old) in self.previous.drain(..) {
            // SAFETY: restoring the action sigaction gave us.
            unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        }
        EVENT_FD.store(-1, Ordering::SeqCst);
    }
}

/// Makes sure a write to a socket whose peer died is an `EPIPE` error, not a SIGPIPE that
/// kills the process: User-Mode Linux's call "fd" is a socketpair end, and a dying guest
/// closes it while the worker may be signalling. Rust programs ignore SIGPIPE already; this
/// covers hosts that restored the default. A handler someone installed is left alone.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: reading the current action into a zeroed struct, then (only if it is the
    // default) setting SIG_IGN; both are plain sigaction calls with valid pointers.
    unsafe {
        let mut now: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut now) == 0
            && now.sa_sigaction == libc::SIG_DFL
        {
            let mut ignore: libc::sigaction = std::mem::zeroed();
            ignore.sa_sigaction = libc::SIG_IGN;
            libc::sigemptyset(&mut ignore.sa_mask);
            libc::sigaction(libc::SIGPIPE, &ignore, std::ptr::null_mut());
            tracing::debug!("SIGPIPE ignored: a dead guest's socket must not kill the daemon");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::Waiter;
    use std::time::Duration;

    #[test]
    fn a_termination_signal_makes_the_fd_readable_and_handlers_are_restored() {
        let t = Termination::install().unwrap();
        assert!(Termination::install().is_err(), "one at a time");
        let signalled = Waiter::readable([t.event()]).unwrap();
        assert_eq!(signalled.wait(Some(Duration::ZERO)).unwrap(), [false]);
        // SAFETY: raising a signal whose handler we installed.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(
            signalled.wait(Some(Duration::from_secs(30))).unwrap(),
            [true]
        );
        drop(t);
        // SAFETY: reading the current action into a zeroed struct.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        unsafe { libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut now) };
        assert_ne!(
            now.sa_sigaction,
            on_signal as extern "C" fn(libc::c_int) as usize
        );
    }
}
