//! Waiting in tests without hanging them: everything a test waits on gives up after
//! [`HANG_GUARD`] with a message naming what never happened.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Hang guard for anything a test waits on (never a measurement).
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Polls `done` until it holds.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Joins a thread that should be exiting.
pub fn join_with_guard(handle: JoinHandle<()>, what: &str) {
    let start = Instant::now();
    while !handle.is_finished() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "test {what} thread did not exit"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.join().unwrap();
}

/// Waits until `path` exists (a socket being bound).
pub fn wait_for_path(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
