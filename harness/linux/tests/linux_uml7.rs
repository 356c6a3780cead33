//! Interoperability with the newest stock client: Linux 7.x `virtio_uml` and `virtio_balloon`
//! (Debian's prebuilt `user-mode-linux` 7.2 from forky, run from the cache:
//! `scripts/linux-setup.sh --uml7`) against the real `prezero serve` binary.
//!
//! What 7.x does differently from the 6.1 client of `linux_uml.rs`: its `virtio_uml` takes the
//! MQ protocol feature and asks the backend for its queue count (`GET_QUEUE_NUM`), then refuses
//! to probe (error -22) when that count is below the balloon driver's five queue slots
//! (inflate, deflate, stats, free page hint, reporting) whatever is negotiated. So these checks
//! fail against a daemon that exposes fewer queues. The rest of the 6.1 suite's checks (feature
//! offers, OOM, checksums, daemon and guest deaths, the CLI) exercise the daemon, not the
//! client, and stay there; this file checks what a 7.x guest must see: negotiation, reporting
//! punching the memory file, a balloon target met and released, statistics, a clean poweroff.
//!
//! Seen with 7.2.7 and not with 6.1: a guest that powers off
//! with pages in the balloon never exits. It prints `reboot: Power down`, then sends the daemon
//! nothing (no deflate request, no message: 0 deflate requests, still connected) and UML
//! idles in `poll` on its signalfd until killed; 6.1 deflates the whole balloon at that point
//! and exits. With an empty balloon 7.2.7 powers off cleanly (exit 0). The daemon cannot
//! answer a request it never gets, so the tests here release the balloon before the guest
//! ends. (Probably the virtio core breaking devices at shutdown before the balloon's removal
//! deflates: not verified against the 7.2 source.)
//!
//! Skipped, with the fix printed, only when UML 7.x is not set up and we are not root to fetch
//! it (CI runs the setup). A test target of the root package (`[[test]] linux_uml7`) for the
//! `prezero` binary of this tree; `cargo test --release --test linux_uml7` runs it alone.

use std::sync::OnceLock;

use prezero_balloon::features;
use prezero_linux_harness::console::{Event, Meminfo};
use prezero_linux_harness::setup::{check, is_root};
use prezero_linux_harness::uml::Uml;
use prezero_linux_harness::{Scenario, SetupOptions, UmlKernelChoice};

const MIB: u64 = 1 << 20;

#[path = "support/daemon.rs"]
mod daemon;
use daemon::{assert_stats_match_meminfo, guest_features, names, Daemon, GUARD};
#[path = "support/uml.rs"]
mod uml;
use uml::{
    assert_meminfo_follows_the_balloon, assert_reported_in_pageblocks, boot, finish, meminfo_after,
    now_s, prezero_linux, reporting_scenario, Env, FileWatch,
};

/// The harness with UML 7.x (fetched into the cache as root if missing), once per process.
fn env() -> Option<&'static Env> {
    static ENV: OnceLock<Option<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let opts = SetupOptions {
            uml7: true,
            ..Default::default()
        };
        if let Err(missing) = check(&opts) {
            if !is_root() {
                let what: Vec<_> = missing.iter().map(|m| m.what.as_str()).collect();
                eprintln!(
                    "skipping: missing {} and we are not root to set it up (fix: sudo \
                     scripts/linux-setup.sh --uml7)",
                    what.join(", ")
                );
                return None;
            }
        }
        let e = Env::new(&opts, UmlKernelChoice::Linux7);
        assert_eq!(e.kernel.version().0, 7, "{:?}", e.kernel);
        Some(e)
    })
    .as_ref()
}

/// vhost-user protocol feature bits (vhost-user specification, "Protocol features").
const PROTOCOL_MQ: u64 = 1 << 0;
const PROTOCOL_REPLY_ACK: u64 = 1 << 3;
const PROTOCOL_BACKEND_REQ: u64 = 1 << 5;
const PROTOCOL_CONFIG: u64 = 1 << 9;

/// The protocol features the frontend set, from the daemon's relay log (`prezero_vhost` at
/// debug level: "frontend set protocol features protocol_features=0x...").
fn protocol_features_set(d: &Daemon) -> u64 {
    let log = std::fs::read_to_string(d.proc.log_path()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("frontend set protocol features"))
        .unwrap_or_else(|| panic!("no SET_PROTOCOL_FEATURES in the daemon log:\n{log}"));
    let hex = line
        .split("protocol_features=0x")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    u64::from_str_radix(hex, 16).unwrap()
}

/// Checks that the driver bound: no probe failed, and the driver handed the daemon its
/// statistics buffer (the probe's last step). Negotiated features alone prove nothing: the
/// driver acks them before `find_vqs`, which is where 7.x fails (-22) on too few queues.
fn assert_bound(d: &Daemon, vm: &mut Uml) {
    let console = vm.console();
    let failed = console
        .log()
        .iter()
        .find(|l| l.text.contains("failed with error"))
        .map(|l| l.text.clone());
    assert!(failed.is_none(), "{failed:?}\n{}", console.tail(30));
    d.wait_until("the driver's statistics buffer", |d| {
        d.status()["holds_stats_buffer"] == true
    });
}

/// Probe and negotiation, a balloon target met and released, statistics, clean poweroff: one
/// 128 MiB guest.
#[test]
fn linux7_negotiates_mq_and_its_balloon_follows_the_target_then_powers_off() {
    let Some(e) = env() else { return };
    let d = Daemon::start(
        &e.h.tools.cache_dir,
        "uml7",
        &["--log", "info,prezero_vhost::relay=debug"],
    );
    let scenario = Scenario::idle(90.0).interval(0.25).until_deflated(12288);
    let mut vm = boot(e, 128, scenario, Some(&d));
    vm.console().wait_event("scenario", GUARD).unwrap();
    assert_bound(&d, &mut vm);
    let (_, before) = meminfo_after(&mut vm, 0.0);
    let st = d.status();
    let negotiated = st["negotiated_features"].as_u64().unwrap();
    let all = [
        features::MUST_TELL_HOST,
        features::STATS_VQ,
        features::DEFLATE_ON_OOM,
        features::REPORTING,
    ]
    .iter()
    .fold(0u64, |acc, b| acc | 1 << b);
    assert_eq!(negotiated & 0xff, all, "{st}");
    assert_eq!(
        names(&st["queues"]),
        ["inflate", "deflate", "stats", "reporting"],
        "{st}"
    );
    assert_eq!(st["config_change_channel"], true, "{st}");
    assert_eq!(st["reply_ack"], true, "{st}");
    let protocol = protocol_features_set(&d);
    let want = PROTOCOL_MQ | PROTOCOL_REPLY_ACK | PROTOCOL_BACKEND_REQ | PROTOCOL_CONFIG;
    assert_eq!(protocol & want, want, "protocol features {protocol:#x}");

    // Statistics at rest match the guest's own view.
    let compare = |vm: &mut Uml, label: &str| -> u64 {
        let t = now_s(vm);
        let fresh = d.balloon(&["stats", "--wait-ms", "10000"]);
        let (_, mi) = meminfo_after(vm, t);
        assert_stats_match_meminfo(&fresh, &mi, label)
    };
    let idle_free = compare(&mut vm, "idle");

    // A target met ...
    let set = d.set("48M");
    assert_eq!(set["notification"]["result"], "acked", "{set}");
    d.wait_actual(48 * MIB);
    let t = now_s(&vm);
    let (_, inflated) = meminfo_after(&mut vm, t);
    let inflated_free = compare(&mut vm, "48 MiB balloon");
    // ... and released.
    d.set("0");
    d.wait_actual(0);
    let t = now_s(&vm);
    let (_, deflated) = meminfo_after(&mut vm, t);

    let out = finish(&mut vm);
    let tail = vm.console().tail(40);
    assert_eq!(out.exit_code, Some(0), "{tail}");
    assert_eq!(out.guest_rc(), Some(0), "{tail}");
    assert!(out.console_contains("reboot: Power down"), "{tail}");
    assert_eq!(
        out.event("done").and_then(|e| e.get("reason")),
        Some("until")
    );
    let release = out.event("init").and_then(|e| e.get("kernel")).unwrap();
    assert_eq!(release, e.kernel.release, "{tail}");
    assert!(!out.console_contains("probe of virtio-uml"), "{tail}");
    let gf = guest_features(&out);
    assert_eq!(gf, negotiated, "guest {gf:#x}, daemon {negotiated:#x}");

    // Deflate-on-OOM (offered and negotiated): the balloon stays in MemTotal.
    assert_meminfo_follows_the_balloon("Linux 7", [&before, &inflated, &deflated], 48 * 1024, true);
    let kib = |m: &Meminfo, k: &str| m.kib(k).unwrap();
    assert!(
        idle_free - inflated_free >= 44 * MIB,
        "{idle_free} -> {inflated_free}"
    );
    let m = d.device();
    let n = |k: &str| m[k].as_u64().unwrap();
    assert_eq!(n("inflated_pages"), 12288, "{m}");
    assert_eq!(n("deflated_pages"), 12288, "{m}");
    assert!(n("stats_buffers") >= 3, "{m}");
    assert_eq!(d.errors(), 0, "{m}");
    eprintln!(
        "Linux {release}: protocol features {protocol:#x}, negotiated {negotiated:#x} (guest \
         {gf:#x}), queues {:?}; MemFree {} -> {} -> {} kB; {} inflate / {} deflate requests, {} \
         stats buffers",
        names(&st["queues"]),
        kib(&before, "MemFree"),
        kib(&inflated, "MemFree"),
        kib(&deflated, "MemFree"),
        n("inflate_requests"),
        n("deflate_requests"),
        n("stats_buffers"),
    );
}

/// Memory a 7.x guest frees comes back to the host: the UML memory file's allocated blocks
/// drop once the driver reports it and the daemon punches holes.
#[test]
fn linux7_reporting_punches_freed_memory_out_of_the_memory_file() {
    let Some(e) = env() else { return };
    let d = Daemon::start(&e.h.tools.cache_dir, "uml7-report", &[]);
    let mib = 64;
    let scenario = reporting_scenario(mib).until_deflated(256);
    let mut vm = boot(e, 256, scenario, Some(&d));
    let file = FileWatch::start(&vm);
    vm.console().wait_event("scenario", GUARD).unwrap();
    assert_bound(&d, &mut vm);
    vm.console().wait_event("alloc-done", GUARD).unwrap();
    let freed = vm.console().wait_event("freed", GUARD).unwrap();
    let reported_before = d.counter("reported_bytes");
    let (at_free, after) = file.wait_drop(&d, freed.t_s, 0.75 * mib as f64);
    let after_s = now_s(&vm) - freed.t_s;
    // The host's signal to end the wait: 1 MiB in and out again. 7.x hangs at poweroff with
    // pages in the balloon (see the module docs), so the guest ends with an empty one.
    d.set("1M");
    d.wait_actual(MIB);
    d.set("0");
    let out = finish(&mut vm);
    assert_eq!(out.guest_rc(), Some(0), "{}", vm.console().tail(40));

    let (m, reported) = assert_reported_in_pageblocks(&d, reported_before, 48 * MIB);
    let n = |k: &str| m[k].as_u64().unwrap();
    eprintln!(
        "Linux {}: memory file {at_free:.1} MiB at the free of {mib} MiB, {after:.1} MiB {after_s:.2} \
         s later; reported {:.1} MiB since the free, in all {} chains of {} buffers",
        e.kernel.release,
        reported as f64 / MIB as f64,
        n("reporting_requests"),
        n("reporting_buffers"),
    );
}

/// `prezero linux --kernel 7`: the CLI boots the 7.x kernel against its own daemon; a
/// `checksum` run (a seeded pattern written and verified page by page, with the balloon
/// driver bound and reporting on) passes without the 6.x xstate workaround. `--kernel` with
/// `--vmm qemu` is an error that names the fix.
#[test]
fn prezero_linux_kernel_7_runs_a_checksum_scenario() {
    let Some(e) = env() else { return };
    let (status, stdout, stderr) = prezero_linux(
        e,
        [
            "--kernel",
            "7",
            "--scenario",
            "checksum",
            "--events-only",
            "mib=16",
        ],
    );
    assert!(status.success(), "{stderr}\n{stdout}");
    assert!(
        stderr.contains(&format!("User-Mode Linux {}", e.kernel.release)),
        "{stderr}"
    );
    let event = |name: &str| {
        stdout
            .lines()
            .find_map(|l| Event::parse(l).filter(|e| e.name == name))
            .unwrap_or_else(|| panic!("no {name} event:\n{stdout}"))
    };
    assert_eq!(event("init").get("kernel"), Some(e.kernel.release.as_str()));
    assert_eq!(event("checksum").get("status"), Some("ok"), "{stdout}");
    // The command fails a run whose guest never got its balloon device; its summary names
    // what was negotiated.
    assert!(
        stderr.contains("negotiated: must_tell_host stats_vq deflate_on_oom reporting"),
        "{stderr}"
    );

    let (status, _, stderr) = prezero_linux(e, ["--vmm", "qemu", "--kernel", "7", "--no-install"]);
    assert!(!status.success());
    assert!(stderr.contains("leave out --kernel"), "{stderr}");
}
