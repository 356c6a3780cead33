//! prezero's own kernel (`kernel/`) in a real VM: QEMU boots it (PVH), every frame comes from a
//! `prezero-mm` zone, and the shared balloon driver (`prezero-driver`) runs over virtio-pci
//! against `prezero serve` (behind `vhost-user-test-device-pci`) and against QEMU's own
//! `virtio-balloon-pci`. A root-package test for `CARGO_BIN_EXE_prezero`; skipped with the
//! reason when QEMU >= 10.2 is not set up (`scripts/qemu-setup.sh`). The kernel is built by
//! `scripts/kernel-build.sh`. TCG here: each run is about a second.

use std::path::PathBuf;

use prezero_linux_harness::console::Event;
use prezero_linux_harness::kernel_vm::{build_kernel, detect_accel, KernelExit, KernelVmConfig};
use prezero_linux_harness::procs::MemoryProbe;
use prezero_linux_harness::qemu::{monitor_command, MemfdProbe, QemuBalloon};
use prezero_linux_harness::scratch::ScratchDir;
use prezero_linux_harness::setup::{default_cache_dir, find_qemu};
use prezero_linux_harness::vm::GuestProcess;

#[path = "support/daemon.rs"]
mod daemon;
use daemon::{Daemon, GUARD};

const MIB: u64 = 1 << 20;
/// Guest RAM of every run.
const MEM_MIB: u64 = 512;
/// What the kernel writes, frees and reports (`prezero.mib`).
const WORKLOAD_MIB: u64 = 64;
/// The balloon QEMU's monitor asks for: 16384 pages of 4 KiB.
const BALLOON_MIB: u64 = 64;
/// The balloon asked of the kernel through `prezero serve`: most of its free memory, so that
/// `prezero.oom_mib` more must come from deflate-on-OOM.
const BIG_BALLOON_MIB: u64 = 448;
/// What the kernel allocates right after that inflation.
const OOM_MIB: u64 = 64;
const PAGE: u64 = 4096;

struct Env {
    qemu: PathBuf,
    kernel: PathBuf,
    cache: PathBuf,
    accel: prezero_linux_harness::qemu::Accel,
}

fn env() -> Option<&'static Env> {
    static ENV: std::sync::OnceLock<Option<Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let cache = default_cache_dir();
        let Some(qemu) = find_qemu(&cache) else {
            eprintln!("skipping the kernel suite: no QEMU >= 10.2 (fix: scripts/qemu-setup.sh)");
            return None;
        };
        let kernel = build_kernel().expect("building the kernel (scripts/kernel-build.sh)");
        let accel = detect_accel(&qemu, &kernel);
        eprintln!("kernel suite: {} under {}", kernel.display(), accel.name());
        Some(Env {
            qemu,
            kernel,
            cache,
            accel,
        })
    })
    .as_ref()
}

/// One VM at a time: TCG guests on a 2-core machine slow each other down.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn config(e: &Env, balloon: QemuBalloon, append: &[&str]) -> KernelVmConfig {
    KernelVmConfig {
        qemu: e.qemu.clone(),
        kernel: e.kernel.clone(),
        accel: e.accel,
        mem_mib: MEM_MIB,
        balloon,
        append: append.iter().map(|s| s.to_string()).collect(),
        monitor: None,
    }
}

/// The balloon run's command line: the workload, the known-zero check, a target to follow.
fn balloon_run() -> Vec<String> {
    vec![
        "prezero.scenario=balloon".into(),
        "prezero.check=1".into(),
        format!("prezero.mib={WORKLOAD_MIB}"),
        "prezero.wait=60".into(),
    ]
}

fn event(vm: &mut GuestProcess, name: &str) -> Event {
    vm.console()
        .wait_event(name, GUARD)
        .unwrap_or_else(|err| panic!("waiting for the kernel's `{name}` event: {err}"))
}

fn num(e: &Event, key: &str) -> u64 {
    e.num(key)
        .unwrap_or_else(|| panic!("event {} has no number {key}: {e:?}", e.name))
}

/// The memfd once the kernel has reported its free memory and idles: the workload's pages were
/// written (so backed), freed and reported; the device punched them out.
fn assert_reporting_punched(probe: &mut MemfdProbe) -> f64 {
    let now = probe.read_mib().unwrap();
    assert!(
        now < WORKLOAD_MIB as f64 / 2.0,
        "the memfd holds {now:.1} MiB after the kernel reported the {WORKLOAD_MIB} MiB it wrote"
    );
    now
}

/// Waits for `balloon actual=PAGES` on the console.
fn wait_balloon(vm: &mut GuestProcess, pages: u64) {
    let want = pages.to_string();
    vm.console()
        .wait_for(&format!("balloon actual={pages}"), GUARD, |l| {
            Event::parse(&l.text)
                .is_some_and(|e| e.name == "balloon" && e.get("actual") == Some(&want))
        })
        .unwrap();
}

/// Runs to the end; the kernel must power off cleanly (every known-zero block read zero).
fn finish(vm: &mut GuestProcess) -> prezero_linux_harness::vm::RunOutcome {
    let out = vm.run_to_exit(GUARD).unwrap();
    let tail = vm.console().tail(20);
    assert_eq!(
        KernelExit::from_code(out.exit_code),
        KernelExit::Success,
        "the kernel failed:\n{tail}"
    );
    vm.shutdown();
    out
}

fn print_timing(out: &prezero_linux_harness::vm::RunOutcome, label: &str) {
    let boot = out.event("boot").expect("boot event");
    let done = out.event("done").expect("done event");
    eprintln!(
        "{label}: kmain at {:.2} s after QEMU started, result at {:.2} s",
        boot.t_s, done.t_s
    );
}

/// Against `prezero serve`: bits 6 and 7 negotiated and believed, reporting punches QEMU's
/// memfd and every block comes back zeroed, a target set through the control socket is met and
/// `actual` reaches the daemon, an allocation past the remaining memory deflates on OOM (and
/// `actual` follows), stats are answered, the deflated pages and the reported blocks are served
/// known-zero and read zero (the kernel checks each one).
#[test]
fn kernel_balloon_against_prezero_serve() {
    let Some(e) = env() else { return };
    let _serial = one_at_a_time();
    let d = Daemon::start(&e.cache, "kernel", &[]);
    let mut append = balloon_run();
    append.push(format!("prezero.oom_mib={OOM_MIB}"));
    let append: Vec<&str> = append.iter().map(String::as_str).collect();
    let mut vm = config(e, QemuBalloon::vhost_user(d.socket()), &append)
        .boot()
        .expect("booting QEMU");
    let mut probe = MemfdProbe::new(vm.pid());

    let negotiated = event(&mut vm, "negotiated");
    let status = d.status();
    let features = u64::from_str_radix(
        negotiated.get("features").unwrap().trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_eq!(Some(features), status["negotiated_features"].as_u64());
    for key in ["init_reported", "init_on_inflate", "trusted"] {
        assert_eq!(negotiated.get(key), Some("true"), "{negotiated:?}");
    }
    let reported = event(&mut vm, "reported");
    assert!(
        num(&reported, "pages") * PAGE > WORKLOAD_MIB * MIB,
        "{reported:?}"
    );
    assert_eq!(num(&reported, "zeroed"), num(&reported, "pages"));
    assert_eq!(num(&reported, "failed"), 0);
    event(&mut vm, "ready");
    let low = assert_reporting_punched(&mut probe);
    assert!(d.counter("reported_bytes") >= num(&reported, "pages") * PAGE);

    let inflated = BIG_BALLOON_MIB * MIB / PAGE;
    d.set(&format!("{BIG_BALLOON_MIB}M"));
    wait_balloon(&mut vm, inflated);
    let oom = event(&mut vm, "oom");
    let deflated = num(&oom, "deflated");
    assert!(deflated > 0, "{oom:?}");
    assert_eq!(num(&oom, "balloon"), inflated - deflated);
    d.wait_actual((inflated - deflated) * PAGE);
    eprintln!("deflate-on-OOM: {deflated} of {inflated} pages for {OOM_MIB} MiB");
    let stats = d.balloon(&["stats"]);
    let values = &stats["stats"]["values"];
    let (free, total) = (
        values["free_memory"].as_u64(),
        values["total_memory"].as_u64(),
    );
    assert!(
        free.is_some_and(|f| f > 0)
            && total.is_some_and(|t| t <= MEM_MIB * MIB - (inflated - deflated) * PAGE),
        "stats from the kernel (total without the balloon): {stats}"
    );
    d.set("0");
    wait_balloon(&mut vm, 0);
    d.wait_actual(0);

    let out = finish(&mut vm);
    let zero = out.event("zero-alloc").unwrap();
    let blocks = num(zero, "blocks");
    assert_eq!(blocks, WORKLOAD_MIB / 2);
    assert_eq!(zero.get("checked"), Some("true"));
    assert!(
        num(zero, "skipped_pages") > 0,
        "nothing was served known-zero: {zero:?}"
    );
    let s = out.event("stats").unwrap();
    assert_eq!(num(s, "pages_inflated"), inflated);
    assert_eq!(num(s, "pages_inflated_zeroed"), inflated);
    assert_eq!(num(s, "pages_deflated"), inflated);
    assert_eq!(num(s, "pages_deflated_zeroed"), inflated);
    assert!(num(s, "stats_updates") >= 2, "{s:?}");
    // Config is read only when the transport saw it change (each read is a GET_CONFIG round
    // trip to the daemon): one `num_pages` read per change, not one per poll.
    assert!(
        num(s, "config_reads") <= 2 * num(s, "config_changes") + 2,
        "{s:?}"
    );
    eprintln!(
        "config reads {} for {} config changes",
        num(s, "config_reads"),
        num(s, "config_changes")
    );
    assert_eq!(d.errors(), 0, "device errors: {}", d.device());
    eprintln!("memfd after reporting: {low:.1} MiB");
    print_timing(&out, "prezero serve");
}

/// Against QEMU's own `virtio-balloon-pci` (no bits 6/7): the trust gate leaves nothing
/// known-zero, so every ZERO allocation is zeroed; reporting still punches the memfd, and
/// QEMU's `balloon` monitor command inflates and deflates.
#[test]
fn kernel_balloon_against_qemus_own_device() {
    let Some(e) = env() else { return };
    let _serial = one_at_a_time();
    let dir = ScratchDir::for_sockets(&e.cache, "k").unwrap();
    let monitor = dir.join("monitor.sock");
    let append = balloon_run();
    let append: Vec<&str> = append.iter().map(String::as_str).collect();
    let own = QemuBalloon::Own {
        free_page_reporting: true,
        deflate_on_oom: false,
    };
    let mut cfg = config(e, own, &append);
    cfg.monitor = Some(monitor.clone());
    let mut vm = cfg.boot().expect("booting QEMU");
    let mut probe = MemfdProbe::new(vm.pid());

    let negotiated = event(&mut vm, "negotiated");
    for key in ["init_reported", "init_on_inflate", "trusted"] {
        assert_eq!(negotiated.get(key), Some("false"), "{negotiated:?}");
    }
    let reported = event(&mut vm, "reported");
    assert!(
        num(&reported, "pages") * PAGE > WORKLOAD_MIB * MIB,
        "{reported:?}"
    );
    assert_eq!(
        num(&reported, "zeroed"),
        0,
        "QEMU's device never says it zeroed"
    );
    event(&mut vm, "ready");
    let low = assert_reporting_punched(&mut probe);

    // QEMU's `balloon` takes the guest size it should be left with.
    monitor_command(&monitor, &format!("balloon {}", MEM_MIB - BALLOON_MIB)).unwrap();
    wait_balloon(&mut vm, BALLOON_MIB * MIB / PAGE);
    monitor_command(&monitor, &format!("balloon {MEM_MIB}")).unwrap();
    wait_balloon(&mut vm, 0);

    let out = finish(&mut vm);
    let zero = out.event("zero-alloc").unwrap();
    assert_eq!(num(zero, "hits"), 0, "{zero:?}");
    assert_eq!(num(zero, "skipped_pages"), 0, "{zero:?}");
    assert_eq!(num(zero, "zeroed_pages"), num(zero, "blocks") * 512);
    let s = out.event("stats").unwrap();
    assert_eq!(num(s, "pages_zero_skipped"), 0, "{s:?}");
    assert_eq!(num(s, "pages_inflated_zeroed"), 0, "{s:?}");
    eprintln!("memfd after reporting: {low:.1} MiB");
    print_timing(&out, "QEMU's balloon");
}

/// A CPU exception prints what faulted and fails the run through `isa-debug-exit`.
#[test]
fn kernel_exception_fails_the_run() {
    let Some(e) = env() else { return };
    let _serial = one_at_a_time();
    let own = QemuBalloon::Own {
        free_page_reporting: false,
        deflate_on_oom: false,
    };
    let mut vm = config(e, own, &["prezero.scenario=fault"]).boot().unwrap();
    let out = vm.run_to_exit(GUARD).unwrap();
    vm.shutdown();
    assert_eq!(KernelExit::from_code(out.exit_code), KernelExit::Failed(5));
    assert!(
        out.console_contains("exception 14") && out.console_contains("cr2 0x7f00dead0000"),
        "{}",
        vm.console().tail(10)
    );
}

/// The known-zero check catches a device that lies: blocks the kernel wrote, "zeroed" by a
/// fake reporting sink, fail the run at their first ZERO allocation (exit code 4); without
/// the check they would be handed out dirty.
#[test]
fn kernel_known_zero_check_catches_a_lying_device() {
    let Some(e) = env() else { return };
    let _serial = one_at_a_time();
    let own = QemuBalloon::Own {
        free_page_reporting: false,
        deflate_on_oom: false,
    };
    let mut vm = config(
        e,
        own,
        &["prezero.scenario=lying-device", "prezero.check=1"],
    )
    .boot()
    .unwrap();
    let out = vm.run_to_exit(GUARD).unwrap();
    vm.shutdown();
    assert_eq!(
        KernelExit::from_code(out.exit_code),
        KernelExit::Failed(4),
        "{}",
        vm.console().tail(10)
    );
    assert!(out.console_contains("FAIL known-zero block"));
}
