//! Interoperability with the client nobody here wrote: the stock Linux 6.1 `virtio_balloon`
//! driver, running in User-Mode Linux (`virtio_uml`), against the real `prezero serve` binary
//! started as a separate process and steered with `prezero balloon ... --control`.
//!
//! Every test boots small UML guests (128-256 MiB; UML touches fresh memory at ~22 MiB/s) with
//! a scenario of the guest workload (`harness/linux/src/bin/prezero-workload.rs`). The host
//! signals the guest by moving the balloon: a wait with `until_inflated` / `until_deflated`
//! ends when the guest's `balloon_inflate` / `balloon_deflate` vmstat counters get there.
//! Timeouts are hang guards only; nothing asserts on wall-clock time. Every UML process is
//! recorded and checked gone after each guest.
//!
//! Skipped, with the reason printed, only when `linux.uml` is not installed and we are not
//! root to install it (`scripts/linux-setup.sh`, which CI runs).
//!
//! This file is a test target of the root package (`[[test]] linux_uml` in the root
//! `Cargo.toml`), not of the harness: cargo builds the `prezero` binary it runs
//! (`CARGO_BIN_EXE_prezero`) only for that package's tests, so it is always the binary of
//! this tree. `cargo test --release --test linux_uml` runs it alone.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prezero_balloon::features;
use prezero_linux_harness::console::{Event, Meminfo};
use prezero_linux_harness::setup::{is_root, which};
use prezero_linux_harness::uml::Uml;
use prezero_linux_harness::{Scenario, SetupOptions, UmlKernelChoice};
use prezero_vhost::{control_request, ControlRequest};
use serde_json::Value;

const MIB: u64 = 1 << 20;

#[path = "support/checksum.rs"]
mod checksum;
use checksum::wait_verified;
#[path = "support/daemon.rs"]
mod daemon;
use daemon::{assert_stats_match_meminfo, guest_features, names, prezero, Daemon, GUARD};
#[path = "support/uml.rs"]
mod uml;
use uml::{
    assert_gone, assert_meminfo_follows_the_balloon, assert_reported_in_pageblocks, boot, finish,
    mem_file_mib, meminfo_after, now_s, prezero_linux, reporting_scenario, Env, FileWatch,
};

/// The harness (tools checked or installed, workload and initramfs built), once per process.
fn env() -> Option<&'static Env> {
    static ENV: OnceLock<Option<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        if which("linux.uml").is_none() && !is_root() {
            eprintln!(
                "skipping: linux.uml is not installed and we are not root to install it \
                 (fix: sudo scripts/linux-setup.sh)"
            );
            return None;
        }
        Some(Env::new(&SetupOptions::default(), UmlKernelChoice::System))
    })
    .as_ref()
}

/// Feature bits, as masks.
const MUST_TELL_HOST: u64 = 1 << features::MUST_TELL_HOST;
const STATS_VQ: u64 = 1 << features::STATS_VQ;
const DEFLATE_ON_OOM: u64 = 1 << features::DEFLATE_ON_OOM;
const REPORTING: u64 = 1 << features::REPORTING;

/// Probe and negotiation for several feature offers; each queue role carries what Linux puts
/// on it (dense numbering: without stats, reporting is queue 2).
#[test]
fn stock_driver_negotiates_and_queue_roles_match_each_feature_offer() {
    let Some(e) = env() else { return };
    let combos: [(&str, &[&str], u64, &[&str]); 4] = [
        (
            "all",
            &[],
            MUST_TELL_HOST | STATS_VQ | DEFLATE_ON_OOM | REPORTING,
            &["inflate", "deflate", "stats", "reporting"],
        ),
        (
            "reporting-without-stats",
            &["--no-stats"],
            MUST_TELL_HOST | DEFLATE_ON_OOM | REPORTING,
            &["inflate", "deflate", "reporting"],
        ),
        (
            "stats-without-reporting",
            &["--no-reporting"],
            MUST_TELL_HOST | STATS_VQ | DEFLATE_ON_OOM,
            &["inflate", "deflate", "stats"],
        ),
        (
            "minimal",
            &["--no-stats", "--no-reporting", "--no-deflate-on-oom"],
            MUST_TELL_HOST,
            &["inflate", "deflate"],
        ),
    ];
    for (name, flags, want, queues) in combos {
        let d = Daemon::start(&e.h.tools.cache_dir, name, flags);
        let offered = d.status()["offered_features"].as_u64().unwrap();
        let scenario = Scenario::idle(90.0)
            .churn(32)
            .interval(0.5)
            .until_deflated(2048);
        let mut vm = boot(e, 256, scenario, Some(&d));
        let file = FileWatch::start(&vm);
        vm.console().wait_event("scenario", GUARD).unwrap();

        let st = d.status();
        let negotiated = st["negotiated_features"].as_u64().unwrap();
        assert_eq!(negotiated & 0xff, want, "{name}: {st}");
        assert_eq!(names(&st["queues"]), queues, "{name}: {st}");
        assert_eq!(st["config_change_channel"], true, "{name}: {st}");
        assert_eq!(st["reply_ack"], true, "{name}: {st}");
        // The driver never takes what Linux 6.1 does not know (DEVICE_INIT_* 6, 7) or what the
        // guest does not use (PAGE_POISON 4: no poisoning); all were offered (but bit 6 only
        // with reporting, as QEMU's `x-device-init-reported=auto`).
        let init_reported = if want & REPORTING != 0 { 0x40 } else { 0 };
        assert_eq!(
            offered & 0xd0,
            0x90 | init_reported,
            "{name}: offered {offered:#x}"
        );
        assert_eq!(negotiated & 0xd8, 0, "{name}");

        let churned = vm.console().wait_event("churn-freed", GUARD).unwrap();
        let after_churn = file.at(churned.t_s);
        if want & REPORTING != 0 {
            file.wait_drop(&d, churned.t_s, 16.0);
        } else {
            // Give a reporting driver its chance: Linux reports ~2 s after frees.
            std::thread::sleep(Duration::from_secs(4));
        }
        let reported_file = mem_file_mib(&vm);

        d.set("8M");
        d.wait_actual(8 * MIB);
        let fresh = d.balloon(&["stats", "--wait-ms", "10000"]);
        if want & STATS_VQ != 0 {
            assert_eq!(fresh["requested"], true, "{name}: {fresh}");
            assert_eq!(fresh["fresh"], true, "{name}: {fresh}");
            assert!(
                fresh["stats"]["values"]["free_memory"].as_u64().unwrap() > 0,
                "{fresh}"
            );
        } else {
            assert_eq!(fresh["requested"], false, "{name}: {fresh}");
            assert!(fresh["stats"].is_null(), "{name}: {fresh}");
        }
        d.set("0");
        d.wait_actual(0);
        let out = finish(&mut vm);
        assert_eq!(out.exit_code, Some(0), "{name}: {}", vm.console().tail(40));
        assert_eq!(out.guest_rc(), Some(0), "{name}: {}", vm.console().tail(40));
        assert_eq!(
            out.event("done").and_then(|e| e.get("reason")),
            Some("until")
        );
        // What the guest says it negotiated is what the daemon says.
        let gf = guest_features(&out);
        assert_eq!(gf & 0xff, want, "{name}: guest features {gf:#x}");
        assert_eq!(
            gf, negotiated,
            "{name}: guest {gf:#x}, daemon {negotiated:#x}"
        );

        let m = d.device();
        let n = |k: &str| m[k].as_u64().unwrap();
        assert_eq!(n("inflated_pages"), 2048, "{name}: {m}");
        assert_eq!(n("deflated_pages"), 2048, "{name}: {m}");
        assert_eq!(d.errors(), 0, "{name}: {m}");
        if want & STATS_VQ != 0 {
            assert!(n("stats_buffers") >= 2, "{name}: {m}");
        } else {
            assert_eq!(n("stats_buffers"), 0, "{name}: {m}");
        }
        if want & REPORTING != 0 {
            assert!(n("reporting_requests") > 0, "{name}: {m}");
            assert!(
                reported_file < after_churn - 16.0,
                "{name}: memory file {after_churn:.1} -> {reported_file:.1} MiB"
            );
        } else {
            assert_eq!(n("reporting_requests"), 0, "{name}: {m}");
            assert!(
                reported_file > after_churn - 4.0,
                "{name}: memory file {after_churn:.1} -> {reported_file:.1} MiB without reporting"
            );
        }
        eprintln!(
            "{name}: negotiated {negotiated:#x} queues {:?}; memory file {after_churn:.1} -> \
             {reported_file:.1} MiB after the churn at {:.2} s; {} stats buffers, {} reporting \
             requests, {} inflate / {} deflate requests",
            queues,
            churned.t_s,
            n("stats_buffers"),
            n("reporting_requests"),
            n("inflate_requests"),
            n("deflate_requests")
        );
    }
}

/// Memory the guest frees comes back to the host: the UML memory file's allocated blocks drop
/// once the driver reports it and the daemon punches holes.
#[test]
fn freed_guest_memory_is_reported_and_punched_out_of_the_uml_memory_file() {
    use prezero_linux_harness::measure::Sampler;
    use prezero_linux_harness::procs::NoCpu;
    let Some(e) = env() else { return };
    let d = Daemon::start(&e.h.tools.cache_dir, "report", &[]);
    let mib = 64;
    let scenario = reporting_scenario(mib).until_inflated(256);
    let mut vm = boot(e, 256, scenario, Some(&d));
    let sampler = Sampler::start(
        vm.t0(),
        Duration::from_millis(50),
        Box::new(vm.memory_probe()),
        Box::new(NoCpu),
    );
    vm.console().wait_event("alloc-done", GUARD).unwrap();
    let freed = vm.console().wait_event("freed", GUARD).unwrap();
    let before = d.device();
    let reported_before = before["reported_bytes"].as_u64().unwrap();
    let discarded_before = before["discarded_bytes"].as_u64().unwrap();
    let at_free = sampler
        .snapshot()
        .iter()
        .rev()
        .find(|s| s.t_s <= freed.t_s)
        .map(|s| s.mib)
        .unwrap();
    // Wait (hang guard only) until most of what was freed is gone from the file.
    let target = at_free - 0.75 * mib as f64;
    let deadline = Instant::now() + GUARD;
    let returned = loop {
        if let Some(s) = sampler
            .snapshot()
            .into_iter()
            .find(|s| s.t_s > freed.t_s && s.mib <= target)
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the memory file stayed at {:.1} MiB after the free (at {at_free:.1}); metrics {}",
            mem_file_mib(&vm),
            d.device()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    let series = sampler.stop();
    let after = series.last().unwrap().mib;
    let peak = series.iter().map(|s| s.mib).fold(0.0, f64::max);
    // The host's signal to end the wait.
    d.set("1M");
    let out = finish(&mut vm);
    assert_eq!(out.guest_rc(), Some(0), "{}", vm.console().tail(40));

    let (m, reported) = assert_reported_in_pageblocks(&d, reported_before, 48 * MIB);
    let n = |k: &str| m[k].as_u64().unwrap();
    let discarded = n("discarded_bytes") - discarded_before;
    assert!(at_free - after >= 0.75 * mib as f64, "{at_free} -> {after}");
    assert_eq!(d.errors(), 0, "{m}");
    eprintln!(
        "memory file: peak {peak:.1} MiB, {at_free:.1} MiB at the free, {:.1} MiB {:.2} s later \
         (first sample below {target:.1}), {after:.1} MiB at the end; reported {:.1} MiB, \
         discarded {:.1} MiB; in all {} reporting chains of {} buffers ({} indirect)",
        returned.mib,
        returned.t_s - freed.t_s,
        reported as f64 / MIB as f64,
        discarded as f64 / MIB as f64,
        n("reporting_requests"),
        n("reporting_buffers"),
        n("indirect_chains"),
    );
}

/// Inflate to a target and deflate back through the control socket: `actual` and the guest's
/// own `/proc/meminfo` follow. With deflate-on-OOM the balloon's pages stay in MemTotal
/// (only MemFree drops); without it, Linux takes them out of MemTotal.
#[test]
fn inflate_and_deflate_through_the_control_socket_move_the_guest_view() {
    let Some(e) = env() else { return };
    for (name, flags) in [("doo", &[][..]), ("no-doo", &["--no-deflate-on-oom"][..])] {
        let d = Daemon::start(&e.h.tools.cache_dir, &format!("inflate-{name}"), flags);
        let scenario = Scenario::idle(90.0).interval(0.25).until_deflated(12288);
        let mut vm = boot(e, 128, scenario, Some(&d));
        vm.console().wait_event("scenario", GUARD).unwrap();
        let (_, before) = meminfo_after(&mut vm, 0.0);

        let set = d.set("48M");
        assert_eq!(set["notification"]["result"], "acked", "{set}");
        d.wait_actual(48 * MIB);
        let st = d.status();
        assert_eq!(st["target_bytes"], 48 * MIB);
        let t = now_s(&vm);
        let (_, inflated) = meminfo_after(&mut vm, t);

        d.set("0");
        d.wait_actual(0);
        let t = now_s(&vm);
        let (_, deflated) = meminfo_after(&mut vm, t);
        let out = finish(&mut vm);
        assert_eq!(out.guest_rc(), Some(0), "{}", vm.console().tail(40));

        assert_meminfo_follows_the_balloon(
            name,
            [&before, &inflated, &deflated],
            48 * 1024,
            name == "doo",
        );
        let kib = |m: &Meminfo, k: &str| m.kib(k).unwrap() as i64;
        let m = d.device();
        assert_eq!(m["inflated_pages"], 12288, "{m}");
        assert_eq!(m["deflated_pages"], 12288, "{m}");
        // The stock driver sends at most 256 PFNs (one page of u32) per request.
        assert!(
            m["inflate_requests"].as_u64().unwrap() >= 12288 / 256,
            "{m}"
        );
        assert_eq!(d.errors(), 0, "{m}");
        eprintln!(
            "{name}: MemTotal {} -> {} -> {} kB, MemFree {} -> {} -> {} kB; {} inflate and {} \
             deflate requests",
            kib(&before, "MemTotal"),
            kib(&inflated, "MemTotal"),
            kib(&deflated, "MemTotal"),
            kib(&before, "MemFree"),
            kib(&inflated, "MemFree"),
            kib(&deflated, "MemFree"),
            m["inflate_requests"],
            m["deflate_requests"]
        );
    }
}

/// Statistics arrive on request and match the guest's own `/proc/meminfo`.
#[test]
fn guest_statistics_match_its_own_meminfo() {
    let Some(e) = env() else { return };
    let d = Daemon::start(&e.h.tools.cache_dir, "stats", &[]);
    let scenario = Scenario::idle(90.0).interval(0.2).until_deflated(8192);
    let mut vm = boot(e, 128, scenario, Some(&d));
    vm.console().wait_event("scenario", GUARD).unwrap();

    let compare = |vm: &mut Uml, label: &str| -> u64 {
        let t = now_s(vm);
        let fresh = d.balloon(&["stats", "--wait-ms", "10000"]);
        let (_, mi) = meminfo_after(vm, t);
        assert_stats_match_meminfo(&fresh, &mi, label)
    };
    let idle_free = compare(&mut vm, "idle");
    d.set("32M");
    d.wait_actual(32 * MIB);
    let inflated_free = compare(&mut vm, "32 MiB balloon");
    assert!(
        idle_free - inflated_free >= 28 * MIB,
        "free_memory {idle_free} -> {inflated_free}"
    );
    d.set("0");
    let out = finish(&mut vm);
    assert_eq!(out.guest_rc(), Some(0), "{}", vm.console().tail(40));
    assert_eq!(d.errors(), 0);
}

/// Deflate-on-OOM: with a 64 MiB balloon in a 128 MiB guest, a workload that eats 80 MiB
/// completes (the driver's OOM notifier gives balloon pages back); without the feature the
/// kernel's OOM killer ends it.
#[test]
fn deflate_on_oom_lets_a_memory_hungry_guest_finish() {
    let Some(e) = env() else { return };
    let scenario = Scenario::oom(80).param("step", 8).until_inflated(16384);

    let d = Daemon::start(&e.h.tools.cache_dir, "oom", &["--target", "64M"]);
    let mut vm = boot(e, 128, scenario.clone(), Some(&d));
    let out = finish(&mut vm);
    let tail = vm.console().tail(40);
    assert_eq!(out.exit_code, Some(0), "{tail}");
    assert_eq!(out.guest_rc(), Some(0), "{tail}");
    assert_eq!(
        out.event("oom-done").and_then(|e| e.num::<u64>("mib")),
        Some(80)
    );
    assert!(!out.console_contains("Out of memory: Killed"), "{tail}");
    // The guest's own counters, before it powered off: pages came out of the balloon.
    let vm_alloc = out
        .events_named("vmstat")
        .find(|e| e.get("phase") == Some("allocated"))
        .expect("vmstat after allocating");
    let deflated: u64 = vm_alloc.num("balloon_deflate").unwrap();
    assert!(deflated >= 4096, "{vm_alloc:?}");
    let ready = out
        .events_named("vmstat")
        .find(|e| e.get("phase") == Some("ready"))
        .unwrap();
    assert_eq!(ready.num::<u64>("balloon_inflate"), Some(16384));
    assert!(d.counter("deflated_pages") >= deflated);
    assert_eq!(d.errors(), 0);
    eprintln!("deflate-on-OOM: 80 MiB allocated; the OOM notifier deflated {deflated} pages");
    drop(d);

    let d = Daemon::start(
        &e.h.tools.cache_dir,
        "oom-no-doo",
        &["--target", "64M", "--no-deflate-on-oom"],
    );
    let mut vm = boot(e, 128, scenario, Some(&d));
    let out = finish(&mut vm);
    let tail = vm.console().tail(40);
    assert_eq!(out.guest_rc(), Some(137), "{tail}");
    assert!(
        out.console_contains("Out of memory: Killed process"),
        "{tail}"
    );
    assert!(out.event("oom-done").is_none());
    let progress = out.events_named("oom-progress").count();
    eprintln!("without deflate-on-OOM: OOM-killed after {progress} of 10 steps");
}

/// A pattern in guest memory stays intact while the host inflates and deflates the balloon
/// twice and the guest reports free memory around it.
#[test]
fn checksum_survives_inflate_deflate_and_reporting_cycles() {
    let Some(e) = env() else { return };
    let d = Daemon::start(&e.h.tools.cache_dir, "checksum", &[]);
    let cycles = 2u64;
    let balloon_pages = 96 * 256;
    let scenario = checksum::cycles_scenario(48, cycles, balloon_pages);
    let mut vm = boot(e, 256, scenario, Some(&d));
    let file = FileWatch::start(&vm);
    vm.console().wait_event("checksum-filled", GUARD).unwrap();
    let churned = vm.console().wait_event("churn-freed", GUARD).unwrap();
    file.wait_drop(&d, churned.t_s, 16.0);
    // Each state is verified by the guest before the host moves on: the guest's verify lines
    // carry its balloon counters.
    wait_verified(&mut vm, "after reporting", 0, 0, GUARD);
    checksum::balloon_cycles_verified(&mut vm, &d, cycles, balloon_pages, GUARD, |_, _| {});
    let out = finish(&mut vm);
    let tail = vm.console().tail(40);
    let m = checksum::assert_cycles_intact(&out, &tail, &d, cycles, balloon_pages);
    let rounds: Vec<&Event> = out.events_named("checksum-verify").collect();
    assert!(rounds.len() as u64 > 2 * cycles - 1, "{tail}");
    for r in &rounds {
        assert_eq!(r.get("status"), Some("ok"), "{r:?}");
    }
    let n = |k: &str| m[k].as_u64().unwrap();
    assert!(n("discarded_bytes") >= cycles * 96 * MIB, "{m}");
    eprintln!(
        "checksum of 48 MiB intact over {} verifications, {cycles} inflate/deflate cycles of 96 \
         MiB and {} reporting requests ({:.1} MiB reported)",
        rounds.len(),
        n("reporting_requests"),
        n("reported_bytes") as f64 / MIB as f64
    );
}

/// The daemon is SIGKILLed while the guest runs. What the guest does (documented here and in
/// the crate docs): `virtio_uml` prints a `read returned 0` warning per queue interrupt, then
/// treats the connection as broken and unregisters the device. With an empty balloon that
/// completes: the workload runs on and the guest powers off normally. With pages in the balloon
/// the driver's removal tries to deflate them over the dead queue and waits forever: the
/// workload still runs to its end, but the ballooned memory never comes back and poweroff
/// hangs, so the harness has to kill UML.
#[test]
fn daemon_killed_while_the_guest_runs() {
    let Some(e) = env() else { return };

    // Empty balloon.
    let mut d = Daemon::start(&e.h.tools.cache_dir, "killed-empty", &[]);
    let mut vm = boot(e, 128, Scenario::idle(6.0).interval(0.5), Some(&d));
    vm.console().wait_event("scenario", GUARD).unwrap();
    vm.console().wait_event("meminfo", GUARD).unwrap();
    d.proc.kill();
    let out = finish(&mut vm);
    let tail = vm.console().tail(60);
    assert_eq!(out.exit_code, Some(0), "{tail}");
    assert_eq!(out.guest_rc(), Some(0), "{tail}");
    assert!(out.console_contains("read returned 0"), "{tail}");
    assert_eq!(
        out.event("virtio-count")
            .and_then(|e| e.num::<u32>("count")),
        Some(0),
        "the balloon device should be gone: {tail}"
    );
    let warnings = out
        .lines
        .iter()
        .filter(|l| l.text.contains("read returned 0"))
        .count();
    eprintln!(
        "daemon killed, empty balloon: {warnings} warnings, device unregistered, clean poweroff"
    );
    drop(d);

    // 32 MiB in the balloon.
    let mut d = Daemon::start(&e.h.tools.cache_dir, "killed-inflated", &[]);
    let mut vm = boot(e, 128, Scenario::idle(6.0).interval(0.5), Some(&d));
    vm.console().wait_event("scenario", GUARD).unwrap();
    let (_, before) = meminfo_after(&mut vm, 0.0);
    d.set("32M");
    d.wait_actual(32 * MIB);
    d.proc.kill();
    let killed_at = now_s(&vm);
    let done = vm.console().wait_event("done", GUARD).unwrap();
    let last_meminfo = vm
        .console()
        .events()
        .into_iter()
        .rfind(|e| e.name == "meminfo" && e.t_s > killed_at)
        .and_then(|e| e.meminfo())
        .expect("meminfo after the kill");
    let free_drop =
        before.kib("MemFree").unwrap() as i64 - last_meminfo.kib("MemFree").unwrap() as i64;
    assert!(
        free_drop >= 28 * 1024,
        "the balloon's 32 MiB should stay taken: MemFree dropped {free_drop} kB"
    );
    // Does it power off? (Observed: it does not; nothing below depends on it.)
    let exited = vm.wait_exit(Duration::from_secs(10)).is_ok();
    eprintln!(
        "daemon killed, 32 MiB balloon: workload done at {:.2} s, MemFree still {free_drop} kB \
         lower, UML {}",
        done.t_s,
        if exited {
            "powered off on its own"
        } else {
            "hung at poweroff (killed by the harness)"
        }
    );
    assert_gone(&mut vm);
}

/// The guest is SIGKILLed in the middle of a large inflate. The daemon must carry on: no crash,
/// the connection's descriptors, threads and guest-memory mappings released, and the next
/// guest served normally on the same socket.
#[test]
fn guest_killed_mid_request_leaves_the_daemon_serving() {
    let Some(e) = env() else { return };
    let mut d = Daemon::start(&e.h.tools.cache_dir, "guest-killed", &[]);
    // The baseline: once a control request was answered every thread runs (`prezero serve`
    // installs its signal pipe before binding its sockets); then wait for the count to hold
    // still (the answered control connection closes a moment after the answer).
    d.status();
    let mut last = (0, 0);
    let mut same = 0;
    while same < 5 {
        let now = (d.proc.fd_count().unwrap(), d.proc.thread_count().unwrap());
        same = if now == last { same + 1 } else { 0 };
        last = now;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (fds0, threads0) = last;
    assert_eq!(d.proc.shared_memory_mappings().unwrap(), 0);

    // The stock driver inflates 256 pages per request, quickly (~0.15 ms per request here):
    // ask for 768 MiB of a 1 GiB guest, watch the counters in-process over the control socket
    // and SIGKILL UML's process group as soon as the inflate is under way. If it still
    // finished first, try again with a new guest.
    let metrics = |d: &Daemon| -> Value {
        control_request(&d.control, &ControlRequest::Metrics).unwrap()["device"].clone()
    };
    let target_pages = 768 * 256;
    let mut attempt = 0;
    let (inflated, mid) = loop {
        attempt += 1;
        d.set("0");
        let mut vm = boot(e, 1024, Scenario::idle(90.0), Some(&d));
        vm.console().wait_event("scenario", GUARD).unwrap();
        assert!(d.proc.shared_memory_mappings().unwrap() > 0);
        let before = metrics(&d)["inflated_pages"].as_u64().unwrap();
        let set = control_request(&d.control, &ControlRequest::SetTargetBytes(768 * MIB)).unwrap();
        let deadline = Instant::now() + GUARD;
        while metrics(&d)["inflated_pages"].as_u64().unwrap() < before + 4096 {
            assert!(
                Instant::now() < deadline,
                "the inflate did not start: {set}; {}",
                vm.console().tail(20)
            );
        }
        // SAFETY: kill(2) on the process group the harness created for this UML (its main
        // process is still our unreaped child, so the group id cannot have been reused).
        unsafe {
            libc::kill(-vm.pid(), libc::SIGKILL);
        }
        assert_gone(&mut vm);
        let inflated = metrics(&d)["inflated_pages"].as_u64().unwrap() - before;

        d.wait_until("the daemon to notice the guest left", |d| {
            d.status()["connected"] == false
        });
        d.wait_until_released(fds0, threads0);
        assert!(d.proc.is_running(), "{}", d.proc.log_tail(30));
        let daemon_metrics = d.balloon(&["metrics"])["daemon"].clone();
        assert_eq!(daemon_metrics["connections"], attempt, "{daemon_metrics}");
        assert_eq!(
            daemon_metrics["disconnections"], attempt,
            "{daemon_metrics}"
        );
        if inflated < target_pages {
            break (inflated, attempt);
        }
        assert!(
            attempt < 3,
            "three guests finished inflating before they were killed"
        );
    };
    let connections = mid;

    // The next guest on the same daemon: probe, reporting, inflate and deflate work.
    d.set("0");
    let scenario = Scenario::idle(90.0).churn(32).until_deflated(2048);
    let mut vm = boot(e, 256, scenario, Some(&d));
    let file = FileWatch::start(&vm);
    let churned = vm.console().wait_event("churn-freed", GUARD).unwrap();
    file.wait_drop(&d, churned.t_s, 16.0);
    d.set("8M");
    d.wait_actual(8 * MIB);
    d.set("0");
    d.wait_actual(0);
    let out = finish(&mut vm);
    assert_eq!(out.guest_rc(), Some(0), "{}", vm.console().tail(40));
    d.wait_until_released(fds0, threads0);
    assert_eq!(
        d.balloon(&["metrics"])["daemon"]["connections"],
        connections + 1
    );
    assert_eq!(d.errors(), 0);
    eprintln!(
        "guest killed (attempt {mid}) with {:.1} of 768 MiB inflated; daemon back to {fds0} \
         fds, {threads0} threads, no guest mapping; the next guest was served",
        inflated as f64 / 256.0
    );
}

/// `prezero linux`: starts its own daemon, boots UML, prints the console and a summary of the
/// negotiation and the device's work; bad input is a clear error.
#[test]
fn prezero_linux_command_runs_a_scenario_against_its_own_daemon() {
    let Some(e) = env() else { return };
    let (status, stdout, stderr) = prezero_linux(
        e,
        [
            "--scenario",
            "idle",
            "--mem",
            "256",
            "--events-only",
            "--serve-arg=--no-stats",
            "churn=32",
            "wait=4",
        ],
    );
    assert!(status.success(), "{stderr}\n{stdout}");
    assert!(
        stdout.lines().all(|l| l.contains("PREZERO event=")),
        "{stdout}"
    );
    let virtio = stdout
        .lines()
        .find_map(|l| Event::parse(l).filter(|e| e.name == "virtio"))
        .expect("a virtio event");
    assert_eq!(virtio.get("driver"), Some("virtio_balloon"), "{stdout}");
    assert!(
        stdout.contains("PREZERO event=exit scenario=idle rc=0"),
        "{stdout}"
    );
    assert!(
        stderr.contains("negotiated: must_tell_host deflate_on_oom reporting"),
        "{stderr}"
    );
    assert!(
        stderr.contains("queues: inflate deflate reporting"),
        "{stderr}"
    );
    assert!(
        stderr.contains("prezero balloon set 64M --control"),
        "{stderr}"
    );
    let device = stderr.lines().find(|l| l.starts_with("device:")).unwrap();
    assert!(
        device.contains("reporting ") && device.contains(" 0 stats buffers"),
        "{device}"
    );
    assert!(device.ends_with(" 0 errors"), "{device}");

    let fail = |args: &[&str]| {
        let out = prezero().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fail(&["linux", "--scenario", "dance"]);
    assert!(
        err.contains("unknown scenario") && err.contains("alloc-free"),
        "{err}"
    );
    let err = fail(&["linux", "--scenario", "idle", "wait"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = fail(&["linux", "--socket", "/nonexistent/b.sock"]);
    assert!(
        err.contains("/nonexistent/b.sock") && err.contains("prezero serve --socket"),
        "{err}"
    );
}

/// `prezero linux` on a daemon that already serves a guest is told so, waits, and on its
/// `--timeout` says once what it did and fails; a guest whose balloon never appeared (nothing
/// listens on the socket) fails too, although its workload exits 0.
#[test]
fn prezero_linux_on_a_busy_or_dead_daemon_says_so_and_fails() {
    let Some(e) = env() else { return };
    let d = Daemon::start(&e.h.tools.cache_dir, "busy", &[]);
    let mut first = boot(e, 256, Scenario::idle(60.0), Some(&d));
    d.wait_until("the first guest to negotiate", |d| {
        d.status()["negotiated_features"].as_u64().unwrap_or(0) != 0
    });
    let (status, _, stderr) = prezero_linux(
        e,
        [
            "--scenario".as_ref(),
            "boot".as_ref(),
            "--timeout".as_ref(),
            "12".as_ref(),
            "--socket".as_ref(),
            d.socket().as_os_str(),
            "--control".as_ref(),
            d.control.as_os_str(),
        ],
    );
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("already serves a guest") && stderr.contains("one frontend at a time"),
        "{stderr}"
    );
    assert!(
        stderr.contains("waiting: the daemon has not taken this guest"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("was killed").count(), 1, "{stderr}");
    assert!(stderr.contains("--timeout 12"), "{stderr}");
    assert!(!stderr.contains("UML exit 0"), "{stderr}");
    // The first guest was served all along, undisturbed.
    let daemon = d.balloon(&["metrics"])["daemon"].clone();
    assert_eq!(daemon["connections"], 1);
    // The daemon's log says it too, once.
    assert_eq!(daemon["frontends_waiting"], 1);
    let log = d.proc.log_tail(200);
    assert_eq!(
        log.matches("another frontend connected while a guest is served")
            .count(),
        1,
        "{log}"
    );
    first.shutdown();
    assert_gone(&mut first);

    // A socket file nobody listens on: UML boots without the balloon, the workload exits 0.
    let dir =
        prezero_linux_harness::scratch::ScratchDir::for_sockets(&e.h.tools.cache_dir, "s").unwrap();
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (status, stdout, stderr) = prezero_linux(
        e,
        [
            "--scenario".as_ref(),
            "boot".as_ref(),
            "--events-only".as_ref(),
            "--socket".as_ref(),
            stale.as_os_str(),
        ],
    );
    assert!(
        stdout.contains("event=virtio-count") && stdout.contains("count=0"),
        "{stdout}"
    );
    assert!(stdout.contains("event=exit scenario=boot rc=0"), "{stdout}");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("balloon device never appeared"), "{stderr}");
}

/// Ctrl-C on `prezero linux` (SIGINT to its whole process group, as a terminal sends it):
/// the guest is stopped before the daemon it started, so the guest prints nothing about a
/// vanished device; exit 130, the daemon and the scratch directory gone.
#[test]
fn prezero_linux_interrupted_stops_the_guest_before_its_daemon() {
    use std::os::unix::process::CommandExt;
    let Some(e) = env() else { return };
    let dir =
        prezero_linux_harness::scratch::ScratchDir::for_sockets(&e.h.tools.cache_dir, "i").unwrap();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = prezero()
        .args(["linux", "--scenario", "idle", "wait=60"])
        .env("PREZERO_LINUX_CACHE", &e.h.tools.cache_dir)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let t0 = Instant::now();
    while !read(&out_path).contains("event=meminfo") {
        assert!(
            t0.elapsed() < GUARD,
            "the guest never started:\n{}",
            read(&err_path)
        );
        assert!(child.try_wait().unwrap().is_none(), "{}", read(&err_path));
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = read(&err_path);
    let daemon_line = stderr.lines().find(|l| l.starts_with("daemon: ")).unwrap();
    let pid: i32 = daemon_line
        .split("(pid ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let log = daemon_line
        .split(", log ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    let run_dir = std::path::Path::new(log).parent().unwrap().to_path_buf();
    let printed = read(&out_path).len();
    // SAFETY: kill(2) on the process group of our child (created with process_group(0)).
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < GUARD, "prezero linux did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{}", read(&err_path));
    let after = read(&out_path)[printed..].to_string();
    assert!(
        !after.contains("virtio_uml") && !after.contains("virtio-uml") && !after.contains("vhost"),
        "the guest saw its device vanish:\n{after}"
    );
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/status")).exists()
        && !read(std::path::Path::new(&format!("/proc/{pid}/status"))).contains("zombie")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the daemon (pid {pid}) outlived the run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

/// `prezero bench linux` at a small size: both peers in one invocation (QEMU where the peer is
/// set up, as in CI), the figures the JSON promises, and the chart.
#[test]
fn bench_linux_compares_the_peers_in_one_invocation() {
    use prezero_linux_harness::setup::check;
    let Some(e) = env() else { return };
    let peer = check(&SetupOptions {
        peer: true,
        uml7: false,
        install: false,
        cache_dir: e.h.tools.cache_dir.clone(),
    })
    .is_ok();
    if !peer {
        eprintln!("the QEMU peer is not set up (scripts/linux-setup.sh --peer): UML side only");
    }
    let svg =
        e.h.tools
            .cache_dir
            .join("run")
            .join(format!("bench-{}.svg", std::process::id()));
    let mut cmd = prezero();
    cmd.args([
        "bench",
        "linux",
        "--json",
        "--mib",
        "96",
        "--mem",
        "512",
        "--idle",
        "2",
        "--wait",
        "8",
        "--balloon-mib",
        "128",
        "--runs",
        "1",
        "--no-install",
        "--svg",
    ])
    .arg(&svg)
    .env("PREZERO_LINUX_CACHE", &e.h.tools.cache_dir);
    if !peer {
        cmd.arg("--skip-qemu");
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut peers = vec!["uml_prezero"];
    if peer {
        peers.extend(["qemu_own", "qemu_prezero"]);
    } else {
        assert!(v["qemu_own"].is_null() && v["qemu_prezero"].is_null());
    }
    for p in peers {
        let f = &v[p];
        for k in [
            "idle_mib",
            "peak_mib",
            "after_mib",
            "seconds_to_return",
            "device_cpu_s_per_gib",
            "returned_mib",
            "seconds_to_settle",
            "host_cpu_s_per_gib",
            "inflate_gib_s",
            "deflate_gib_s",
            "host_mib_after_inflate",
        ] {
            assert!(f.get(k).is_some(), "{p}: no {k}: {f}");
        }
        let num = |k: &str| f[k].as_f64().unwrap();
        // Part of the allocation may reuse memory the guest had touched before (QEMU).
        assert!(num("peak_mib") >= num("idle_mib") + 48.0, "{p}: {f}");
        assert!(num("after_mib") <= num("peak_mib") - 48.0, "{p}: {f}");
        assert!(f["device_cpu_s_per_gib"].as_f64().is_some(), "{p}: {f}");
        assert!(num("host_cpu_s_per_gib") > 0.0, "{p}: {f}");
        assert!(num("seconds_to_settle") >= 0.0, "{p}: {f}");
        // The balloon cycle: 128 MiB given up and taken back, at a finite speed.
        assert_eq!(f["balloon_mib"], 128, "{p}: {f}");
        assert!(
            num("inflate_gib_s") > 0.0 && num("deflate_gib_s") > 0.0,
            "{p}: {f}"
        );
        eprintln!(
            "{p}: idle {:.1} peak {:.1} after {:.1} MiB, return {} s, {} CPU s/GiB, host {} CPU s/GiB, inflate {} GiB/s",
            num("idle_mib"),
            num("peak_mib"),
            num("after_mib"),
            f["seconds_to_return"],
            f["device_cpu_s_per_gib"],
            f["host_cpu_s_per_gib"],
            f["inflate_gib_s"]
        );
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("uml+prezero"), "{chart}");
    if peer {
        assert!(
            chart.contains(r#"data-name="qemu+prezero""#) && chart.contains(r#"data-name="qemu""#),
            "{chart}"
        );
        let c = &v["prezero_vs_own"];
        for k in ["returned_ratio", "host_cpu_ratio", "inflate_speedup"] {
            assert!(c[k].as_f64().is_some(), "{k}: {c}");
        }
    } else {
        assert!(v["prezero_vs_own"].is_null());
    }
    let _ = std::fs::remove_file(&svg);
}
