//! The stock Linux `virtio_balloon` driver in a real VM: Debian's cloud kernel under a stock
//! QEMU (>= 10.2, `scripts/qemu-setup.sh`), with `prezero serve` behind QEMU's generic
//! vhost-user device (`vhost-user-test-device-pci,virtio-id=5,num_vqs=5`). The same checks the
//! UML suite makes, plus what only a VMM has (a reset that re-probes the driver on the same
//! connection). A root-package test for `CARGO_BIN_EXE_prezero`; skipped with the reason when
//! QEMU or the cloud kernel is not set up. TCG here: each boot is ~4-8 s.

use std::path::Path;
use std::time::{Duration, Instant};

use prezero_linux_harness::procs::{is_alive, MemoryProbe};
use prezero_linux_harness::qemu::Qemu;
use prezero_linux_harness::setup::{check, find_qemu};
use prezero_linux_harness::{Harness, Initramfs, Scenario, SetupOptions};

#[path = "support/daemon.rs"]
mod daemon;
use daemon::{guest_features, names, Daemon, GUARD};

const MIB: u64 = 1 << 20;

struct Env {
    h: Harness,
    initrd: Initramfs,
}

fn env() -> Option<&'static Env> {
    static ENV: std::sync::OnceLock<Option<Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let opts = SetupOptions {
            peer: true,
            install: false,
            ..Default::default()
        };
        if let Err(missing) = check(&opts) {
            let what: Vec<_> = missing.iter().map(|m| m.what.as_str()).collect();
            eprintln!(
                "skipping the QEMU suite: missing {} (fix: scripts/linux-setup.sh --peer && scripts/qemu-setup.sh)",
                what.join(", ")
            );
            return None;
        }
        assert!(find_qemu(&opts.cache_dir).is_some());
        let h = Harness::new(&opts).expect("setting up the harness");
        let initrd = h.qemu_initramfs().expect("building the QEMU initramfs");
        Some(Env { h, initrd })
    })
    .as_ref()
}

/// One VM at a time: TCG guests on a 2-core machine slow each other past the driver's
/// patience otherwise.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn cache(e: &Env) -> &Path {
    &e.h.tools.cache_dir
}

fn boot(
    e: &Env,
    mem_mib: u64,
    scenario: Scenario,
    d: &Daemon,
    tweak: impl FnOnce(&mut prezero_linux_harness::qemu::QemuConfig),
) -> Qemu {
    let mut cfg =
        e.h.qemu(&e.initrd)
            .unwrap()
            .mem_mib(mem_mib)
            .scenario(scenario)
            .balloon_socket(d.socket());
    tweak(&mut cfg);
    cfg.boot().expect("booting QEMU")
}

fn assert_gone(vm: &mut Qemu) {
    let pids = vm.pids();
    let left = vm.shutdown();
    assert!(left.is_empty(), "QEMU processes survived: {left:?}");
    assert!(pids.iter().all(|id| !is_alive(*id)));
}

/// Negotiation (the guest's sysfs features equal the daemon's), the five queue slots, and
/// reporting that punches QEMU's memfd; then the guest killed and the next VM served.
#[test]
fn qemu_negotiates_and_reporting_punches_the_memfd_then_the_next_vm_is_served() {
    let Some(e) = env() else { return };
    let _serial = one_at_a_time();
    let d = Daemon::start(cache(e), "qemu-report", &[]);
    let mib = 128;
    let scenario = Scenario::alloc_free(mib)
        .param("idle", 1)
        .hold(0.3)
        .wait(60.0)
        .interval(1.0)
        .until_inflated(256);
    let mut vm = boot(e, 1024, scenario, &d, |_| {});
    let mut probe = vm.memory_probe();
    vm.console().wait_event("scenario", GUARD).unwrap();
    let status = d.status();
    assert_eq!(
        names(&status["queues"]),
        ["inflate", "deflate", "stats", "reporting"]
    );
    vm.console().wait_event("alloc-done", GUARD).unwrap();
    let peak = probe.read_mib().unwrap();
    vm.console().wait_event("freed", GUARD).unwrap();
    let reported_before = d.counter("reported_bytes");
    let deadline = Instant::now() + GUARD;
    let low = loop {
        let now = probe.read_mib().unwrap();
        if now <= peak - 0.75 * mib as f64 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the memfd stayed at {now:.1} MiB (peak {peak:.1}); device {}",
            d.device()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(d.counter("reported_bytes") > reported_before);
    eprintln!("memfd: {peak:.1} MiB at the free, {low:.1} MiB after reporting");
    // The guest's own view of the negotiation, printed by the `idle`-style `virtio` event at
    // the end of the scenario: kill the workload's wait short by stopping QEMU afterwards.
    let negotiated = status["negotiated_features"].as_u64().unwrap();
    let status_errors = d.errors();
    assert_eq!(status_errors, 0, "device errors: {}", d.device());
    assert_gone(&mut vm);

    // The next VM on the same daemon: a clean probe, the guest's sysfs features equal the
    // daemon's negotiation (VERSION_1 included), and no error from the killed one.
    let mut vm = boot(e, 512, Scenario::boot(), &d, |_| {});
    let out = vm.run_to_exit(GUARD).unwrap();
    assert_eq!(out.guest_rc(), Some(0), "{}", vm.console().tail(30));
    assert_eq!(guest_features(&out), negotiated);
    assert_gone(&mut vm);
    assert_eq!(d.errors(), 0, "device errors: {}", d.device());
}

/// A target set through the control socket inflates the guest and `actual` reaches it (QEMU
/// writes the whole config space), deflate brings it back; a VM reset re-probes the driver on
/// the same vhost-user connection and the balloon works afterwards.
#[test]
fn qemu_balloon_follows_the_control_socket_across_a_reset() {
    let Some(e) = env() else { return };
    let _serial = one_at_a_time();
    let d = Daemon::start(cache(e), "qemu-balloon", &[]);
    let dir = prezero_linux_harness::scratch::ScratchDir::for_sockets(cache(e), "qm").unwrap();
    let monitor = dir.join("m.sock");
    let mut vm = boot(e, 512, Scenario::idle(60.0).interval(0.5), &d, |c| {
        c.no_reboot = false;
        c.monitor = Some(monitor.clone());
    });
    vm.console().wait_event("scenario", GUARD).unwrap();
    let total = vm
        .console()
        .wait_event("meminfo", GUARD)
        .unwrap()
        .meminfo()
        .unwrap();
    d.set("64M");
    d.wait_actual(64 * MIB);
    assert_eq!(d.counter("inflated_pages"), 16384);
    // Without DEFLATE_ON_OOM... the daemon offers it and the driver takes it: the balloon
    // stays in MemTotal, MemFree drops.
    let free_before = total.kib("MemFree").unwrap();
    let after = loop {
        let m = vm
            .console()
            .wait_event("meminfo", GUARD)
            .unwrap()
            .meminfo()
            .unwrap();
        if m.kib("MemFree").unwrap() + 60 * 1024 < free_before {
            break m;
        }
    };
    assert_eq!(after.kib("MemTotal"), total.kib("MemTotal"));
    d.set("0");
    d.wait_actual(0);
    assert_eq!(d.counter("deflated_pages"), 16384);

    // A reset with 32 MiB in the balloon: the driver probes again on the same connection,
    // inflates from nothing (actual 0, then the target), and deflates when told.
    d.set("32M");
    d.wait_actual(32 * MIB);
    let connections = d.balloon(&["metrics"])["daemon"]["connections"].as_u64();
    let answer = vm.monitor(&monitor, "system_reset").unwrap();
    assert!(!answer.contains("Error"), "{answer}");
    vm.console().wait_event("init", GUARD).unwrap();
    vm.console().wait_event("scenario", GUARD).unwrap();
    d.wait_until("the re-probed driver to inflate again", |d| {
        d.counter("inflated_pages") >= 16384 + 2 * 8192
    });
    d.wait_actual(32 * MIB);
    assert_eq!(
        d.balloon(&["metrics"])["daemon"]["connections"].as_u64(),
        connections,
        "the same vhost-user connection"
    );
    d.set("0");
    d.wait_actual(0);
    // The reset is a new incarnation of the device (issue 10 §2): the old driver's stats
    // buffer is dropped, the new driver's one is held, none counted as extra (before, about
    // 1,700 `stats_extra_buffer` here).
    let device = d.device();
    assert_eq!(d.errors(), 0, "device errors after the reset: {device}");
    assert_eq!(
        device["stats_buffers"], 2,
        "one stats buffer per driver: {device}"
    );
    assert_gone(&mut vm);
}
