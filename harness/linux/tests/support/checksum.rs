//! The `checksum` scenario's verification lines, shared by the UML and QEMU suites.

use std::time::{Duration, Instant};

use prezero_linux_harness::vm::{GuestProcess, RunOutcome};
use prezero_linux_harness::Scenario;

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

/// The balloon half of the checksum tests: `cycles` times, the host sets a 96 MiB target and
/// releases it, and each state is verified by the guest (its verify lines carry its balloon
/// counters, `balloon_pages` per cycle) before the host moves on. `while_inflated` runs in each
/// cycle once the inflated state is verified (cycle number from 0).
pub fn balloon_cycles_verified<V: std::ops::DerefMut<Target = GuestProcess>>(
    vm: &mut V,
    d: &crate::daemon::Daemon,
    cycles: u64,
    balloon_pages: u64,
    guard: Duration,
    mut while_inflated: impl FnMut(&mut V, u64),
) {
    const MIB: u64 = 1 << 20;
    for c in 0..cycles {
        d.set("96M");
        d.wait_actual(96 * MIB);
        wait_verified(
            vm,
            "with the balloon inflated",
            (c + 1) * balloon_pages,
            c * balloon_pages,
            guard,
        );
        while_inflated(vm, c);
        d.set("0");
        d.wait_actual(0);
        if c + 1 < cycles {
            wait_verified(
                vm,
                "after deflating",
                (c + 1) * balloon_pages,
                (c + 1) * balloon_pages,
                guard,
            );
        }
    }
}

/// The guest side of the balloon-cycle checksum tests: a 48 MiB pattern verified every round,
/// `churn_mib` MiB churned and freed for reporting, held until the host deflated `cycles` x
/// `balloon_pages` pages (4 KiB).
pub fn cycles_scenario(churn_mib: u64, cycles: u64, balloon_pages: u64) -> Scenario {
    Scenario::checksum(48)
        .churn(churn_mib)
        .param("verify_every", 1)
        .interval(0.5)
        .hold(180.0)
        .until_deflated(cycles * balloon_pages)
}

/// The end of a [`cycles_scenario`] run: the guest ended its hold on the `until` condition,
/// the pattern was intact, and the device inflated and deflated every cycle with no error.
/// Returns the device's metrics for the caller's own checks.
pub fn assert_cycles_intact(
    out: &RunOutcome,
    tail: &str,
    d: &crate::daemon::Daemon,
    cycles: u64,
    balloon_pages: u64,
) -> serde_json::Value {
    assert_eq!(out.guest_rc(), Some(0), "{tail}");
    assert_eq!(
        out.event("hold-end").and_then(|e| e.get("reason")),
        Some("until"),
        "{tail}"
    );
    let sum = out.event("checksum").unwrap();
    assert_eq!(sum.get("status"), Some("ok"), "{sum:?}");
    assert_eq!(sum.get("bad_pages"), Some("0"));
    let m = d.device();
    let n = |k: &str| m[k].as_u64().unwrap();
    assert_eq!(n("inflated_pages"), cycles * balloon_pages, "{m}");
    assert_eq!(n("deflated_pages"), cycles * balloon_pages, "{m}");
    assert_eq!(d.errors(), 0, "{m}");
    m
}
