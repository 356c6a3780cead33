//! Boots Debian's cloud kernel under QEMU (TCG) with QEMU's own virtio-balloon: the peer.
//!
//! A few seconds under TCG, so it is in the default run, but only where the peer is set up
//! (`scripts/linux-setup.sh --peer`: `qemu-system-x86` and the cloud kernel). Otherwise it is
//! skipped with the reason printed. The benchmark itself (`bench_qemu`, 256 MiB) is not run here.

use std::time::Duration;

use prezero_linux_harness::{Harness, Scenario};

#[test]
fn qemu_peer_boots_binds_the_balloon_and_runs_the_workload() {
    let Some(h) = Harness::for_qemu_tests("the QEMU peer test") else {
        return;
    };
    let initrd = h.qemu_initramfs().unwrap();
    assert_eq!(
        initrd.modules.last().map(String::as_str),
        Some("virtio_balloon")
    );
    assert!(
        initrd.modules.iter().any(|m| m == "virtio_pci"),
        "{:?}",
        initrd.modules
    );
    let cfg = h
        .qemu(&initrd)
        .unwrap()
        .mem_mib(512)
        .scenario(Scenario::checksum(16));
    let mut vm = cfg.boot().unwrap();
    let out = vm.run_to_exit(Duration::from_secs(180)).unwrap();
    assert_eq!(
        out.exit_code,
        Some(0),
        "console:\n{}",
        vm.console().tail(40)
    );
    for e in out.events_named("insmod") {
        assert_eq!(e.get("rc"), Some("0"), "{e:?}");
    }
    let sum = out.event("checksum").expect("checksum event");
    assert_eq!(sum.get("status"), Some("ok"), "{sum:?}");
    assert_eq!(out.guest_rc(), Some(0));
    let pids = vm.pids();
    drop(vm);
    assert!(pids
        .iter()
        .all(|id| !prezero_linux_harness::procs::is_alive(*id)));
}

#[test]
fn qemu_balloon_negotiates_reporting() {
    let Some(h) = Harness::for_qemu_tests("the QEMU peer test") else {
        return;
    };
    let initrd = h.qemu_initramfs().unwrap();
    let cfg = h
        .qemu(&initrd)
        .unwrap()
        .mem_mib(512)
        .scenario(Scenario::boot());
    let mut vm = cfg.boot().unwrap();
    let out = vm.run_to_exit(Duration::from_secs(180)).unwrap();
    let dev = out
        .events_named("virtio")
        .find(|e| e.get("device") == Some("0x0005"))
        .expect("a virtio balloon device");
    assert_eq!(dev.get("driver"), Some("virtio_balloon"));
    let features = dev.get("features").unwrap();
    // The sysfs string is one character per feature bit: bit 5 is REPORTING, bit 32 VERSION_1.
    assert_eq!(features.as_bytes()[5], b'1', "{features}");
    assert_eq!(features.as_bytes()[32], b'1', "{features}");
}

/// The QEMU peer's measurement, small: 128 MiB allocated and freed come (mostly) back to the
/// host through QEMU's free page reporting within the guest's 8 s wait (Linux reports ~2 s
/// after frees). Some freed THPs stay on the guest's per-cpu lists, unreported.
#[test]
fn qemu_peer_returns_freed_memory() {
    use prezero_linux_harness::bench::{bench_qemu, AllocFree, BenchOptions};
    let Some(h) = Harness::for_qemu_tests("the QEMU peer test") else {
        return;
    };
    let initrd = h.qemu_initramfs().unwrap();
    let opts = BenchOptions {
        workload: AllocFree {
            mib: 128,
            idle_s: 2.0,
            hold_s: 0.2,
            wait_s: 8.0,
            interval_s: 1.0,
        },
        sample_interval: Duration::from_millis(100),
        analysis: prezero_linux_harness::measure::AnalysisOptions {
            idle_window_s: 1.0,
            ..Default::default()
        },
        timeout: Duration::from_secs(300),
    };
    let run = bench_qemu(&h.qemu(&initrd).unwrap(), &opts).unwrap();
    let r = &run.result;
    assert!(
        r.peak_mib >= r.idle_mib + 100.0,
        "idle {} peak {}",
        r.idle_mib,
        r.peak_mib
    );
    assert!(
        r.after_mib <= r.peak_mib - 32.0,
        "peak {} after {}: nothing reported?",
        r.peak_mib,
        r.after_mib
    );
    assert!(run.details.seconds_to_settle.is_some(), "{:?}", run.details);
    assert!(r.device_cpu_s_per_gib.is_some());
    assert!(
        run.threads_after_free
            .iter()
            .any(|t| t.name.contains("TCG")),
        "{:?}",
        run.threads_after_free
    );
}
