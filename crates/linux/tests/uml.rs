//! Boots User-Mode Linux with the harness initramfs (no balloon daemon yet).
//!
//! Skipped, with the reason printed, only when `linux.uml` is not installed and we are not root
//! to install it; as root the harness installs what is missing.

use std::time::Duration;

use prezero_linux::procs::is_alive;
use prezero_linux::setup::{is_root, which};
use prezero_linux::{Harness, Scenario, SetupOptions};

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
    let allocated = prezero_linux::procs::allocated_bytes(&file).unwrap();
    assert!(
        allocated >= 16 << 20,
        "memory file has only {allocated} bytes allocated"
    );
    let mut probe = vm.memory_probe();
    use prezero_linux::procs::MemoryProbe as _;
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
