//! Many guests in a row leave nothing behind in the daemon: no file descriptor, no thread, no
//! mapping of a guest's memory. Alone in its binary: it counts this process's fds and threads.

use prezero_balloon::features::{
    DEVICE_INIT_REPORTED, REPORTING, RING_EVENT_IDX, STATS_VQ, VERSION_1,
};
use prezero_guest::Buffer;
use prezero_testkit::bits;
use prezero_testkit::rig::*;
use prezero_testkit::wait::*;
use prezero_vhost::FeatureOffer;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Mappings of guest RAM memfds in this process.
fn guest_ram_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:prezero-guest-ram"))
        .count()
}

fn cycle(d: &Daemon, i: u64, drop_mid_request: bool) {
    let features = bits(&[
        VERSION_1,
        RING_EVENT_IDX,
        STATS_VQ,
        REPORTING,
        DEVICE_INIT_REPORTED,
    ]);
    let mut g = Guest::connect(&d.socket(), ram(16 * MIB), features, 4);
    dirty(&g.ram, 4 * MIB, 2 * MIB);
    g.submit(3, &[Buffer::writable(4 * MIB, 2 * MIB as u32)], i);
    // A config change too, so the backend request channel is exercised.
    d.handle.set_target_pages(i as u32 + 1).unwrap();
    if !drop_mid_request {
        let used = g.collect(3, 1);
        assert_eq!(used[0].len, 2 * MIB as u32);
    }
    // While connected, the daemon maps the guest's RAM besides the guest itself.
    assert!(guest_ram_mappings() >= 1);
    drop(g);
    d.wait_disconnections(i + 1);
}

#[test]
fn reconnects_leak_no_fd_thread_or_mapping() {
    let d = Daemon::start("leaks", FeatureOffer::default());
    // Warm-up: lazily created process-wide things (the signal pipe is not used here; std's
    // and the allocator's own) settle in the first cycle.
    cycle(&d, 0, false);
    let (fds0, threads0) = (fds(), threads());
    assert_eq!(
        guest_ram_mappings(),
        0,
        "the daemon dropped the first guest's mapping"
    );
    for i in 1..=12 {
        cycle(&d, i, i % 3 == 0);
        // Worker threads end just after their last reference is dropped: give them a moment.
        wait_until("the connection's threads to end", || threads() <= threads0);
        assert_eq!(fds(), fds0, "fd count changed after {i} reconnects");
        assert_eq!(
            guest_ram_mappings(),
            0,
            "a guest mapping outlived its connection"
        );
    }
    let m = d.handle.metrics().daemon;
    assert_eq!(m.connections, 13);
    assert_eq!(m.connection_errors, 0);
    assert_eq!(m.slow_teardowns, 0);
    assert!(m.config_changes_acked >= 9, "{m:?}");
}
