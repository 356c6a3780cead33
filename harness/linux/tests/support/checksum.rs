//! The `checksum` scenario's verification lines, shared by the UML and QEMU suites.

use std::time::{Duration, Instant};

use prezero_linux_harness::vm::GuestProcess;

/// Waits (up to `guard`) for the guest's next `checksum-verify` lines until one was taken with
/// the balloon counters `inflated` / `deflated` (4 KiB pages, the guest's vmstat), asserting
/// that every verification on the way found the pattern intact.
pub fn wait_verified(
    vm: &mut GuestProcess,
    what: &str,
    inflated: u64,
    deflated: u64,
    guard: Duration,
) {
    let deadline = Instant::now() + guard;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = vm
            .console()
            .wait_event("checksum-verify", left)
            .unwrap_or_else(|err| panic!("no verification {what}: {err}"));
        assert_eq!(v.get("status"), Some("ok"), "{what}: {v:?}");
        if v.num::<u64>("balloon_inflate") == Some(inflated)
            && v.num::<u64>("balloon_deflate") == Some(deflated)
        {
            return;
        }
    }
}
