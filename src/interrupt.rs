//! Ctrl-C and SIGTERM for every command but `serve` (the daemon has its own, clean stop):
//! the signal runs the cleanups registered with [`on_exit`] (remove temporary socket
//! directories, give reserved huge pages back, kill the guests and daemons a command started)
//! and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell does.
//!
//! `Drop` does not run when a process ends on a signal, and a command can be deep inside a
//! guest's workload when it comes: rather than thread a cancel flag through every loop, the
//! process stops where it is, after the cleanups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

type Action = Box<dyn FnOnce() + Send>;

static CLEANUPS: Mutex<Vec<(u64, Action)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A registered cleanup; dropping it unregisters it without running it (the normal path
/// cleans up by itself).
#[must_use = "dropping the guard unregisters the cleanup"]
pub struct Cleanup(u64);

impl Drop for Cleanup {
    fn drop(&mut self) {
        CLEANUPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// Runs `action` if the process is interrupted (or [`exit`]s) while the guard lives.
pub fn on_exit(action: impl FnOnce() + Send + 'static) -> Cleanup {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    CLEANUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((id, Box::new(action)));
    Cleanup(id)
}

/// Runs every registered cleanup (newest first) and exits with `code`.
pub fn exit(code: i32) -> ! {
    let actions = std::mem::take(&mut *CLEANUPS.lock().unwrap_or_else(|p| p.into_inner()));
    for (_, action) in actions.into_iter().rev() {
        action();
    }
    std::process::exit(code)
}

/// Installs the SIGINT/SIGTERM handling (signal-hook's self-pipe and a thread that waits on
/// it). Call once, before the command starts anything.
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                eprintln!("\ninterrupted ({name}): cleaning up");
                exit(128 + sig);
            }
        })?;
    Ok(())
}
