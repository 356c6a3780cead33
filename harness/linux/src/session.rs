//! Cleanup for a command that is interrupted (Ctrl-C, SIGTERM) while guests and backends run.
//!
//! `Drop` does not run when a process exits on a signal, and UML forks helpers that can
//! outlive its main process. [`install_interrupt_cleanup`] installs SIGINT/SIGTERM handlers
//! that only set a flag (the one async-signal-safe thing to do), and a thread that, once the
//! flag is set, kills every VM process this process started (found by their tag,
//! [`crate::procs::kill_vms_started_here`]), SIGTERMs every backend it started
//! ([`crate::backend::terminate_all`]), removes every live scratch directory
//! ([`crate::scratch::remove_all`]) and exits with status 130 (128 + SIGINT).
//!
//! Tests do not install it: their guests and backends are dropped by unwinding.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handlers and the cleanup thread (see the module docs). Call it
/// once, before starting guests or backends.
pub fn install_interrupt_cleanup() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let _ = std::thread::Builder::new()
        .name("interrupt-cleanup".into())
        .spawn(|| loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                eprintln!("interrupted: killing the guest and the daemon");
                let left = crate::procs::kill_vms_started_here(Duration::from_secs(5));
                if !left.is_empty() {
                    eprintln!("processes that survived SIGKILL: {left:?}");
                }
                crate::backend::terminate_all();
                crate::scratch::remove_all();
                std::process::exit(130);
            }
            std::thread::sleep(Duration::from_millis(50));
        });
}
