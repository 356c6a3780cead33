//! Boots User-Mode Linux with the harness initramfs (no balloon daemon yet).
//!
//! Skipped, with the reason printed, only when `linux.uml` is not installed and we are not root
//! to install it; as root the harness installs what is missing.

use std::time::Duration;

use prezero_linux_harness::procs::is_alive;
use prezero_linux_harness::scratch::ScratchDir;
use prezero_linux_harness::setup::{is_root, which};
use prezero_linux_harness::{Harness, Scenario, SetupOptions};

fn harness() -> Option<Harness> {
    if which("linux.uml").is_none() && !is_root() {
        eprintln!("skipping: linux.uml is not installed and we are not root to install it (fix: sudo scripts/linux-setup.sh)");
        return None;
    }
    Some(Harness::new(&SetupOptions::default()).expect("setting up the Linux-guest harness"))
}

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn uml_runs_the_checksum_workload_and_leaves_no_process() {
    let Some(h) = harness() else { return };
    let initrd = h.uml_initramfs().unwrap();
    assert_eq!(initrd.modules, ["virtio_balloon"]);
    let mut vm = h
        .uml(&initrd)
        .mem_mib(128)
        .scenario(Scenario::checksum(16).hold(0.5))
        .boot()
        .unwrap();

    // While the pattern is held: the guest memory file is found and holds at least the 16 MiB.
    let filled = vm.console().wait_event("checksum-filled", TIMEOUT).unwrap();
    assert_eq!(filled.num::<u64>("mib"), Some(16));
    let file = vm
        .memory_file()
        .unwrap()
        .expect("UML's guest-memory file in /proc/<pid>/fd");
    let allocated = prezero_linux_harness::procs::allocated_bytes(&file).unwrap();
    assert!(
        allocated >= 16 << 20,
        "memory file has only {allocated} bytes allocated"
    );
    let mut probe = vm.memory_probe();
    use prezero_linux_harness::procs::MemoryProbe as _;
    assert!(probe.read_mib().unwrap() >= 16.0);

    let out = vm.run_to_exit(TIMEOUT).unwrap();
    let pids = vm.pids();
    assert_eq!(
        out.exit_code,
        Some(0),
        "UML exit; console:\n{}",
        vm.console().tail(40)
    );
    let insmod = out.event("insmod").expect("insmod event");
    assert_eq!(
        (insmod.get("module"), insmod.get("rc")),
        (Some("virtio_balloon"), Some("0"))
    );
    let sum = out.event("checksum").expect("checksum event");
    assert_eq!(sum.get("status"), Some("ok"), "{sum:?}");
    assert_eq!(sum.get("expected"), sum.get("got"));
    assert_eq!(sum.get("bad_pages"), Some("0"));
    assert_eq!(out.guest_rc(), Some(0));
    assert!(
        out.events_named("meminfo").count() >= 1,
        "meminfo while holding"
    );

    // Every UML process recorded is gone after shutdown.
    assert!(!pids.is_empty());
    let left = vm.shutdown();
    assert!(left.is_empty(), "survivors: {left:?}");
    drop(vm);
    for id in pids {
        assert!(!is_alive(id), "UML process {} still alive", id.pid);
    }
}

#[test]
fn uml_boots_on_when_the_balloon_socket_is_absent() {
    let Some(h) = harness() else { return };
    let initrd = h.uml_initramfs().unwrap();
    let sock = h
        .tools
        .cache_dir
        .join("run")
        .join(format!("no-such-{}.sock", std::process::id()));
    let mut vm = h
        .uml(&initrd)
        .balloon_socket(&sock)
        .scenario(Scenario::boot())
        .boot()
        .unwrap();
    let out = vm.run_to_exit(TIMEOUT).unwrap();
    assert_eq!(
        out.exit_code,
        Some(0),
        "console:\n{}",
        vm.console().tail(40)
    );
    assert!(
        out.console_contains("probe of virtio-uml.0 failed with error -2"),
        "console:\n{}",
        vm.console().tail(60)
    );
    // No virtio device, but the module loads and the workload runs.
    assert_eq!(
        out.event("virtio-count")
            .and_then(|e| e.num::<u32>("count")),
        Some(0)
    );
    assert_eq!(out.event("insmod").and_then(|e| e.get("rc")), Some("0"));
    let mi = out
        .event("meminfo")
        .and_then(|e| e.meminfo())
        .expect("meminfo event");
    assert!(mi.kib("MemTotal").unwrap() > 100 * 1024);
    assert_eq!(out.guest_rc(), Some(0));
    let pids = vm.pids();
    drop(vm);
    assert!(pids.iter().all(|id| !is_alive(*id)));
}

/// A socket file with nobody listening: the probe fails with -ECONNREFUSED, boot goes on.
/// A backend that accepts and closes at once: -ECONNRESET, boot goes on.
#[test]
fn uml_boots_on_when_the_backend_refuses_or_hangs_up() {
    use std::os::unix::net::UnixListener;
    let Some(h) = harness() else { return };
    let initrd = h.uml_initramfs().unwrap();
    let dir = ScratchDir::for_sockets(&h.tools.cache_dir, "refused-").unwrap();

    // Bound, then closed: the file stays, connect() is refused.
    let refused = dir.join("refused.sock");
    drop(UnixListener::bind(&refused).unwrap());
    let mut vm = h.uml(&initrd).balloon_socket(&refused).boot().unwrap();
    let out = vm.run_to_exit(TIMEOUT).unwrap();
    assert!(
        out.console_contains("probe of virtio-uml.0 failed with error -111"),
        "console:\n{}",
        vm.console().tail(60)
    );
    assert_eq!(out.guest_rc(), Some(0));
    drop(vm);

    // Accepts, then hangs up.
    let hangup = dir.join("hangup.sock");
    let listener = UnixListener::bind(&hangup).unwrap();
    let acceptor = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        drop(conn);
    });
    let mut vm = h.uml(&initrd).balloon_socket(&hangup).boot().unwrap();
    let out = vm.run_to_exit(TIMEOUT).unwrap();
    acceptor.join().unwrap();
    assert!(
        out.console_contains("probe of virtio-uml.0 failed with error -104")
            || out.console_contains("probe of virtio-uml.0 failed with error -32"),
        "console:\n{}",
        vm.console().tail(60)
    );
    assert_eq!(out.guest_rc(), Some(0));
    drop(vm);
}

/// A backend that accepts and never answers hangs UML in early boot (it ignores SIGTERM);
/// shutting the VM down must still leave no UML process behind.
#[test]
fn uml_hung_on_a_silent_backend_is_killed_completely() {
    use std::os::unix::net::UnixListener;
    let Some(h) = harness() else { return };
    let initrd = h.uml_initramfs().unwrap();
    let dir = ScratchDir::for_sockets(&h.tools.cache_dir, "silent-").unwrap();
    let silent = dir.join("silent.sock");
    let listener = UnixListener::bind(&silent).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        tx.send(()).unwrap();
        // Hold the connection without answering until the VM is gone (read returns 0 or errs).
        let mut buf = [0u8; 4096];
        use std::io::Read;
        let mut conn = conn;
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut vm = h.uml(&initrd).balloon_socket(&silent).boot().unwrap();
    rx.recv_timeout(TIMEOUT)
        .expect("UML connected to the socket");
    // It must not get to /init.
    assert!(vm
        .console()
        .wait_event("init", Duration::from_millis(1500))
        .is_err());
    let pids = vm.pids();
    let left = vm.shutdown();
    assert!(left.is_empty(), "survivors: {left:?}");
    drop(vm);
    for id in &pids {
        assert!(!is_alive(*id), "UML process {} still alive", id.pid);
    }
    holder.join().unwrap();
}

/// The measurement path end to end on UML without a balloon: the memory file grows by what the
/// guest touches and, with nobody punching holes, does not shrink after the free.
#[test]
fn uml_alloc_free_is_measured_and_nothing_returns_without_a_balloon() {
    use prezero_linux_harness::bench::{bench_uml, AllocFree, BenchOptions};
    use prezero_linux_harness::procs::NoCpu;
    let Some(h) = harness() else { return };
    let initrd = h.uml_initramfs().unwrap();
    let opts = BenchOptions {
        workload: AllocFree {
            mib: 32,
            idle_s: 1.0,
            hold_s: 0.2,
            wait_s: 1.0,
            interval_s: 0.5,
        },
        sample_interval: Duration::from_millis(50),
        analysis: prezero_linux_harness::measure::AnalysisOptions {
            idle_window_s: 0.8,
            settle_s: 0.5,
            ..Default::default()
        },
        timeout: TIMEOUT,
    };
    let run = bench_uml(&h.uml(&initrd).mem_mib(256), Box::new(NoCpu), None, &opts).unwrap();
    let r = &run.result;
    assert_eq!(run.peer, "uml (no balloon)");
    assert!(r.idle_mib > 0.0, "{r:?}");
    // Pages the guest had used and freed while booting are still allocated and may be reused.
    assert!(
        r.peak_mib >= r.idle_mib + 24.0,
        "idle {} peak {}",
        r.idle_mib,
        r.peak_mib
    );
    assert!(
        r.after_mib >= r.peak_mib - 1.0,
        "peak {} after {}",
        r.peak_mib,
        r.after_mib
    );
    assert_eq!(r.seconds_to_return, None);
    assert!(
        run.marks.idle_start_s < run.marks.alloc_start_s && run.marks.freed_s < run.marks.end_s
    );
    assert!(!run.guest_meminfo.is_empty());
}
