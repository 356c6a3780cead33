//! Guest reboots on one vhost-user connection (issue 10 §7): the stock Linux 6.1
//! `virtio_balloon` driver under a stock QEMU (>= 10.2, `scripts/qemu-setup.sh`, without
//! `-no-reboot`), `prezero serve` behind QEMU's generic vhost-user device. The guest's `/init`
//! runs its scenario and then `reboot -f` (`prezero.after=reboot`); QEMU resets the machine,
//! stops the device's rings and boots the same kernel again, and the new driver sets the rings
//! up from index 0 on the same connection: a new incarnation of the device.
//!
//! A root-package test for `CARGO_BIN_EXE_prezero`; skipped with the reason when QEMU or the
//! cloud kernel is not set up. Three boots under TCG take about a minute here.

use prezero_linux_harness::procs::{is_alive, MemoryProbe};
use prezero_linux_harness::{Harness, Scenario};

#[path = "support/daemon.rs"]
mod daemon;
use daemon::{wait_punched, Daemon, GUARD};

const MIB: u64 = 1 << 20;
/// The first boot and two reboots.
const BOOTS: u64 = 3;
/// The balloon target the daemon keeps across the reboots, in 4 KiB pages (32 MiB).
const TARGET_PAGES: u64 = 8192;

/// What the daemon logs when the device starts over for a new driver on the same connection
/// (a ring set up again from index 0, or `RESET_DEVICE` / `RESET_OWNER`).
fn reinitialisations(d: &Daemon) -> usize {
    let log = std::fs::read_to_string(d.proc.log_path()).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("the device is re-initialised") || l.contains("the device is reset"))
        .count()
}

/// Each boot: the driver probes on the same connection, inflates to the target from nothing
/// (`actual` starts from 0: the device forgot the last boot's), free page reporting punches
/// QEMU's memfd, and the old boot's stats buffer is not taken for an extra one.
#[test]
fn qemu_guest_reboots_twice_and_each_boot_reports_and_meets_the_target() {
    let Some(h) = Harness::for_qemu_tests("the QEMU reboot test") else {
        return;
    };
    let initrd = h.qemu_initramfs().expect("building the QEMU initramfs");
    let d = Daemon::start(&h.tools.cache_dir, "qemu-reboot", &[]);

    let mib = 128;
    // The scenario ends once this boot's driver inflated the whole target (the guest's
    // `balloon_inflate` counts from its own boot), then `/init` reboots. The target is set
    // once reporting was seen, and taken back to 0 as the guest reboots: each new driver finds
    // no target, so `actual` must read 0 until the test sets one (the old boot's 32 MiB if the
    // device kept it).
    let scenario = Scenario::alloc_free(mib)
        .hold(0.3)
        .wait(90.0)
        .interval(1.0)
        .until_inflated(TARGET_PAGES);
    let mut cfg = h.qemu(&initrd).unwrap().mem_mib(512).scenario(scenario);
    cfg = cfg.balloon_socket(d.socket());
    cfg.no_reboot = false;
    cfg.extra_append.push("prezero.after=reboot".into());
    let mut vm = cfg.boot().expect("booting QEMU");
    let mut probe = vm.memory_probe();

    for boot in 1..=BOOTS {
        vm.console().wait_event("init", GUARD).unwrap();
        vm.console().wait_event("scenario", GUARD).unwrap();
        // The new driver set its rings up: from the second boot on, the device started over.
        d.wait_until("the device to start over for the new driver", |d| {
            reinitialisations(d) as u64 >= boot - 1
        });

        let actual = d.status()["actual_bytes"].as_u64();
        assert_eq!(
            actual,
            Some(0),
            "boot {boot}: actual starts from 0 (the last boot ended at 32 MiB)"
        );

        // Free page reporting punches the memfd after the workload frees its memory.
        vm.console().wait_event("alloc-done", GUARD).unwrap();
        let peak = probe.read_mib().unwrap();
        vm.console().wait_event("freed", GUARD).unwrap();
        let low = wait_punched(&mut probe, &d, peak, mib, &format!("boot {boot}: "));

        // The target is met, by this boot's driver inflating from nothing.
        d.set("32M");
        d.wait_actual(32 * MIB);
        let exit = vm.console().wait_event("exit", GUARD).unwrap();
        assert_eq!(
            exit.num::<i32>("rc"),
            Some(0),
            "boot {boot}: {}",
            vm.console().tail(30)
        );
        let device = d.device();
        // The guest is rebooting: the next driver finds no target.
        d.set("0");
        assert_eq!(
            device["inflated_pages"].as_u64(),
            Some(boot * TARGET_PAGES),
            "boot {boot}: each driver inflates the whole target once: {device}"
        );
        assert_eq!(
            device["stats_buffers"].as_u64(),
            Some(boot),
            "boot {boot}: one stats buffer per driver: {device}"
        );
        assert_eq!(d.errors(), 0, "boot {boot}: device errors: {device}");
        let daemon = &d.balloon(&["metrics"])["daemon"];
        assert_eq!(
            daemon["connections"].as_u64(),
            Some(1),
            "boot {boot}: the same vhost-user connection: {daemon}"
        );
        eprintln!(
            "boot {boot}: memfd {peak:.1} MiB at the free, {low:.1} MiB after reporting; \
             {} re-initialisations so far",
            reinitialisations(&d)
        );
    }
    assert_eq!(
        reinitialisations(&d) as u64,
        BOOTS - 1,
        "one start-over per reboot; daemon log:\n{}",
        d.proc.log_tail(40)
    );

    let pids = vm.pids();
    let left = vm.shutdown();
    assert!(left.is_empty(), "QEMU processes survived: {left:?}");
    assert!(pids.iter().all(|id| !is_alive(*id)));
}
