//! A User-Mode Linux guest attached to `prezero serve`: the set-up harness for one UML kernel,
//! booting, running to the end with every UML process checked gone, and the memory-file watch.
//! Shared by the UML interop suites (`linux_uml.rs`: the system's 6.1; `linux_uml7.rs`:
//! Debian's 7.x), which declare `mod daemon` (support/daemon.rs) next to this module.
#![allow(dead_code)] // each suite uses a part

use std::time::{Duration, Instant};

use prezero_linux_harness::console::Meminfo;
use prezero_linux_harness::procs::{is_alive, MemoryProbe};
use prezero_linux_harness::uml::Uml;
use prezero_linux_harness::vm::RunOutcome;
use prezero_linux_harness::{
    Harness, Initramfs, Scenario, SetupOptions, UmlKernel, UmlKernelChoice,
};

use crate::daemon::{prezero, Daemon, GUARD};
use serde_json::Value;

/// The harness (tools checked or installed, workload built), one UML kernel and its initramfs.
pub struct Env {
    pub h: Harness,
    pub kernel: UmlKernel,
    pub initrd: Initramfs,
}

impl Env {
    /// Sets up per `opts` and builds the initramfs for `choice` (panics where that fails: the
    /// suites decide before whether to skip).
    pub fn new(opts: &SetupOptions, choice: UmlKernelChoice) -> Env {
        let h = Harness::new(opts).expect("setting up the UML harness");
        let kernel = h.uml_kernel(choice).expect("the UML kernel").clone();
        let initrd = h
            .uml_initramfs_for(&kernel)
            .expect("building the UML initramfs");
        Env { h, kernel, initrd }
    }
}

/// Boots `e`'s kernel with `mem_mib` of memory running `scenario`, attached to `d` if any.
pub fn boot(e: &Env, mem_mib: u64, scenario: Scenario, d: Option<&Daemon>) -> Uml {
    let mut cfg =
        e.h.uml_on(&e.kernel, &e.initrd)
            .mem_mib(mem_mib)
            .scenario(scenario);
    if let Some(d) = d {
        cfg = cfg.balloon_socket(d.socket());
    }
    cfg.boot().expect("booting User-Mode Linux")
}

/// Runs the guest to its end, then checks that every UML process it ever had is gone.
pub fn finish(vm: &mut Uml) -> RunOutcome {
    let out = vm.run_to_exit(GUARD).unwrap();
    assert_gone(vm);
    out
}

/// Shuts the VM down (SIGKILL of everything left) and checks that no recorded process survives.
pub fn assert_gone(vm: &mut Uml) {
    let pids = vm.pids();
    assert!(!pids.is_empty());
    let left = vm.shutdown();
    assert!(left.is_empty(), "UML processes survived: {left:?}");
    for id in pids {
        assert!(!is_alive(id), "UML process {} still alive", id.pid);
    }
}

/// The first guest `meminfo` event after host time `t_s` (console clock).
pub fn meminfo_after(vm: &mut Uml, t_s: f64) -> (f64, Meminfo) {
    loop {
        let e = vm.console().wait_event("meminfo", GUARD).unwrap();
        if e.t_s > t_s {
            return (e.t_s, e.meminfo().unwrap());
        }
    }
}

pub fn now_s(vm: &Uml) -> f64 {
    vm.t0().elapsed().as_secs_f64()
}

pub fn mem_file_mib(vm: &Uml) -> f64 {
    vm.memory_probe().read_mib().unwrap()
}

/// The UML memory file's allocated MiB, sampled every 50 ms from boot on the console's clock,
/// so a value "at" a guest event does not depend on when the test thread gets to read it.
pub struct FileWatch(prezero_linux_harness::measure::Sampler);

impl FileWatch {
    pub fn start(vm: &Uml) -> FileWatch {
        FileWatch(prezero_linux_harness::measure::Sampler::start(
            vm.t0(),
            Duration::from_millis(50),
            Box::new(vm.memory_probe()),
            Box::new(prezero_linux_harness::procs::NoCpu),
        ))
    }

    /// The last sample taken at or before `t_s`.
    pub fn at(&self, t_s: f64) -> f64 {
        self.0
            .snapshot()
            .iter()
            .rev()
            .find(|s| s.t_s <= t_s)
            .map_or(0.0, |s| s.mib)
    }

    /// Waits (hang guard only) until the file is at least `mib` below its size at `t_s` (the
    /// guest's free): the freed memory was reported and punched out. Returns (at `t_s`, then).
    pub fn wait_drop(&self, d: &Daemon, t_s: f64, mib: f64) -> (f64, f64) {
        let before = self.at(t_s);
        let deadline = Instant::now() + GUARD;
        loop {
            let now = self.0.snapshot().last().map_or(before, |s| s.mib);
            if now <= before - mib {
                return (before, now);
            }
            assert!(
                Instant::now() < deadline,
                "the memory file stayed at {now:.1} MiB ({before:.1} at the free); device {}",
                d.device()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `prezero linux ARGS` with `e`'s cache: its status, stdout and stderr.
pub fn prezero_linux(
    e: &Env,
    args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
) -> (std::process::ExitStatus, String, String) {
    let out = prezero()
        .arg("linux")
        .args(args)
        .env("PREZERO_LINUX_CACHE", &e.h.tools.cache_dir)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Checks the device's counters after a UML guest reported: at least `min` bytes since
/// `reported_before`, in the chains the stock driver sends (one device-writable buffer per
/// reported block, each a whole pageblock: 4 MiB, order 10, in UML; at most 32 per chain; a
/// chain of several through an indirect table when INDIRECT_DESC is negotiated), everything
/// reported discarded (totals: the counters move while the test reads them), no errors.
/// Returns the counters and the bytes reported since `reported_before`.
pub fn assert_reported_in_pageblocks(d: &Daemon, reported_before: u64, min: u64) -> (Value, u64) {
    const MIB: u64 = 1 << 20;
    let m = d.device();
    let n = |k: &str| m[k].as_u64().unwrap();
    let reported = n("reported_bytes") - reported_before;
    assert!(reported >= min, "reported {reported}: {m}");
    assert_eq!(n("reported_bytes"), n("reporting_buffers") * 4 * MIB, "{m}");
    assert!(
        n("reporting_buffers") <= 32 * n("reporting_requests"),
        "{m}"
    );
    // VIRTIO_RING_F_INDIRECT_DESC (bit 28) as the guest last acked it: 6.1 takes it, 7.2 does
    // not (its chains of up to 32 buffers are direct).
    let acked = d.status()["last_negotiation"]["features"].as_u64().unwrap();
    if acked & 1 << 28 == 0 {
        assert_eq!(n("indirect_chains"), 0, "{m}");
    } else if n("reporting_buffers") > n("reporting_requests") {
        assert!(n("indirect_chains") >= 1, "{m}");
    }
    assert!(n("indirect_chains") <= n("reporting_requests"), "{m}");
    assert!(n("discarded_bytes") >= n("reported_bytes"), "{m}");
    assert_eq!(d.errors(), 0, "{m}");
    (m, reported)
}

/// The reporting scenario both UML suites run: idle 1 s, allocate and touch `mib`, hold 0.3 s,
/// free, then wait (up to 90 s, meminfo every second) for the host's signal (add an
/// `until_*`).
pub fn reporting_scenario(mib: u64) -> Scenario {
    Scenario::alloc_free(mib)
        .param("idle", 1)
        .hold(0.3)
        .wait(90.0)
        .interval(1.0)
}

/// Checks the guest's `/proc/meminfo` `[before, inflated, deflated]` around a balloon of
/// `balloon_kib`: MemFree drops by the balloon (within 4 MiB) and comes back; MemTotal stays
/// with deflate-on-OOM (`doo`) and drops by exactly the balloon without it, and comes back.
pub fn assert_meminfo_follows_the_balloon(
    label: &str,
    [before, inflated, deflated]: [&Meminfo; 3],
    balloon_kib: i64,
    doo: bool,
) {
    let kib = |m: &Meminfo, k: &str| m.kib(k).unwrap() as i64;
    let free_drop = kib(before, "MemFree") - kib(inflated, "MemFree");
    let total_drop = kib(before, "MemTotal") - kib(inflated, "MemTotal");
    assert!(
        (free_drop - balloon_kib).abs() <= 4096,
        "{label}: MemFree dropped {free_drop} kB for a {balloon_kib} kB balloon"
    );
    if doo {
        assert_eq!(total_drop, 0, "{label}: MemTotal moved with deflate-on-OOM");
    } else {
        assert_eq!(total_drop, balloon_kib, "{label}: MemTotal drop");
    }
    assert_eq!(
        kib(deflated, "MemTotal"),
        kib(before, "MemTotal"),
        "{label}"
    );
    assert!(
        (kib(deflated, "MemFree") - kib(before, "MemFree")).abs() <= 4096,
        "{label}: MemFree {} before, {} after deflating",
        kib(before, "MemFree"),
        kib(deflated, "MemFree")
    );
}
