//! The `prezero` binary: the demo, the daemon as a separate process (control socket, socket
//! errors, a daemon killed in the middle of a report).

use prezero_guest::workload::{alloc_and_touch, dirty_and_free, Source};
use prezero_guest::{Guest, GuestOptions};
use prezero_mm::{AllocFlags, BlockState};
use prezero_testkit::Scratch;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn prezero() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prezero"))
}

/// A `prezero serve` child, killed on drop.
struct Daemon(Child);

impl Daemon {
    fn start(socket: &Path, extra: &[&str]) -> Daemon {
        let child = prezero()
            .args(["serve", "--socket"])
            .arg(socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "prezero serve did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon(child)
    }
    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_shows_reporting_balloon_and_skipped_zeroing() {
    let out = prezero()
        .args([
            "demo",
            "--json",
            "--mem-mib",
            "256",
            "--alloc-mib",
            "64",
            "--balloon-mib",
            "32",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["zeroing_skipped_mib"], 64);
    assert!(
        v["memfd_mib_after_report"].as_u64().unwrap() + 100
            < v["memfd_mib_before_report"].as_u64().unwrap()
    );
    assert_eq!(v["balloon_inflated_zeroed_mib"], 32);
    assert_eq!(v["deflated_known_zero_mib"], 32);
}

fn stderr_of(args: &[&str]) -> String {
    let out = prezero().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn socket_problems_are_clear_errors() {
    let d = Scratch::new("sockerr");
    let missing = d.join("no/such/dir/b.sock");
    let e = stderr_of(&["serve", "--socket", missing.to_str().unwrap()]);
    assert!(e.contains("no/such/dir"), "{e}");

    let file = d.join("file");
    std::fs::write(&file, "x").unwrap();
    let e = stderr_of(&["serve", "--socket", file.to_str().unwrap()]);
    assert!(e.contains("not a socket"), "{e}");

    let sock = d.join("b.sock");
    let _first = Daemon::start(&sock, &[]);
    let e = stderr_of(&["serve", "--socket", sock.to_str().unwrap()]);
    assert!(e.contains("in use") || e.contains("already"), "{e}");
    // The vhost-user socket where the control socket belongs: it accepts and then closes.
    let e = stderr_of(&["balloon", "status", "--control", sock.to_str().unwrap()]);
    assert!(
        e.contains("vhost-user socket") && e.contains("prezero serve --control PATH"),
        "{e}"
    );

    let e = stderr_of(&[
        "balloon",
        "status",
        "--control",
        d.join("nothing.ctl").to_str().unwrap(),
    ]);
    assert!(e.contains("nothing.ctl"), "{e}");
}

fn control(args: &[&str]) -> Value {
    let out = prezero().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_operator_steers_the_balloon_and_reads_stats() {
    let d = Scratch::new("control");
    let (sock, ctl) = (d.join("b.sock"), d.join("b.ctl"));
    let _daemon = Daemon::start(&sock, &["--control", ctl.to_str().unwrap()]);
    let mut g = Guest::new(GuestOptions {
        ram_size: 256 * MIB,
        ..Default::default()
    })
    .unwrap();
    g.attach_balloon(&sock).unwrap();
    let ctl = ctl.to_str().unwrap().to_owned();

    // The CLI blocks until the guest acks the config change: run it on a thread and poll.
    let c = ctl.clone();
    let set = std::thread::spawn(move || control(&["balloon", "set", "64M", "--control", &c]));
    assert!(g
        .poll_until(Duration::from_secs(20), |g| g
            .balloon()
            .unwrap()
            .balloon_pages()
            == 16384)
        .unwrap());
    assert_eq!(set.join().unwrap()["target_bytes"], 64 * MIB);
    g.poll(Duration::from_millis(100)).unwrap();
    let status = control(&["balloon", "status", "--control", &ctl]);
    assert_eq!(status["actual_bytes"], 64 * MIB);

    let c = ctl.clone();
    let stats = std::thread::spawn(move || {
        control(&["balloon", "stats", "--control", &c, "--wait-ms", "5000"])
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stats.is_finished() && Instant::now() < deadline {
        g.poll(Duration::from_millis(20)).unwrap();
    }
    let v = stats.join().unwrap();
    let free = v["stats"]["values"]["free_memory"]
        .as_u64()
        .expect("free_memory in stats");
    let guest_free = g.zone().counts().free * 4096;
    assert!(
        free.abs_diff(guest_free) <= 4 * MIB,
        "device says {free}, guest has {guest_free}"
    );
    let total = v["stats"]["values"]["total_memory"].as_u64().unwrap();
    assert_eq!(total, 256 * MIB - 64 * MIB, "total excludes the balloon");
}

#[test]
fn a_daemon_killed_in_the_middle_of_a_report_costs_the_guest_nothing() {
    let d = Scratch::new("kill");
    let sock = d.join("b.sock");
    let daemon = Daemon::start(&sock, &[]);
    let mut g = Guest::new(GuestOptions {
        ram_size: 256 * MIB,
        ..Default::default()
    })
    .unwrap();
    g.attach_balloon(&sock).unwrap();
    dirty_and_free(&mut g, u64::MAX).unwrap();

    // Freeze the daemon so the report is certainly in flight, then kill it.
    daemon.signal(libc::SIGSTOP);
    let pid = daemon.0.id() as i32;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let pass = g.report_now();
    killer.join().unwrap();
    assert!(pass.pages_failed > 0, "{pass:?}");
    assert_eq!(pass.pages_zeroed, 0);
    assert!(g.balloon().unwrap().is_dead());

    // Nothing stays isolated, nothing claims zero, and the guest keeps allocating correctly.
    let c = g.zone().counts();
    assert_eq!((c.isolated, c.free_zeroed), (0, 0), "{c:?}");
    assert!(g
        .zone()
        .lock()
        .blocks()
        .filter(|b| b.state == BlockState::Free)
        .all(|b| !b.zeroed));
    g.zone().verify().unwrap();
    let run = alloc_and_touch(&mut g, 64 * MIB, Source::Buddy(9), AllocFlags::ZERO).unwrap();
    assert_eq!(run.known_zero, 0);
    for pfn in &run.blocks {
        assert!(g.ram().is_zero(pfn.addr() + 1, 4095).unwrap());
    }
    // Later reporting passes do nothing and do not fail.
    g.poll(Duration::from_millis(10)).unwrap();
}

/// SIGTERM the moment the socket exists stops `prezero serve` cleanly (its handlers are in place
/// before the sockets are bound) and removes both sockets, every time.
#[test]
fn serve_stops_cleanly_on_sigterm_as_soon_as_its_socket_exists() {
    let d = Scratch::new("early-term");
    for i in 0..20 {
        let (sock, ctl) = (d.join(format!("b{i}.sock")), d.join(format!("c{i}.sock")));
        let mut child = prezero()
            .args(["serve", "--socket"])
            .arg(&sock)
            .arg("--control")
            .arg(&ctl)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "no socket");
            std::hint::spin_loop();
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "run {i}: {status}");
        assert!(!sock.exists() && !ctl.exists(), "run {i}: sockets left");
    }
}

fn failure(args: &[&str]) -> String {
    let out = prezero().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sizes without surprises: a bare number is MiB, a size below one page, negative or without
/// a known unit is refused before anything is sent, and the help says what SIZE is.
#[test]
fn balloon_sizes_are_mib_by_default_and_checked() {
    let d = Scratch::new("sizes");
    let (sock, ctl) = (d.join("b.sock"), d.join("b.ctl"));
    let _daemon = Daemon::start(&sock, &["--control", ctl.to_str().unwrap()]);
    let ctl = ctl.to_str().unwrap();
    // No guest: nothing to notify, and a warning that RAM could not be checked.
    let out = prezero()
        .args(["balloon", "set", "256", "--control", ctl])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["target_bytes"], 256 * MIB, "a bare number is MiB");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: no guest memory"));
    assert_eq!(
        control(&["balloon", "set", "4096B", "--control", ctl])["target_pages"],
        1
    );
    assert_eq!(
        control(&["balloon", "set", "0", "--control", ctl])["target_pages"],
        0
    );
    for (size, why) in [
        ("3K", "below one 4 KiB"),
        ("100B", "below one 4 KiB"),
        ("-5", "negative"),
        ("12Q", "unknown unit"),
        ("20000000T", "too large"),
    ] {
        let e = failure(&["balloon", "set", size, "--control", ctl]);
        assert!(
            e.contains(why) && e.contains("without a unit is MiB"),
            "{size}: {e}"
        );
    }
    let e = failure(&[
        "serve",
        "--socket",
        "/nonexistent.sock",
        "--target",
        "1000B",
    ]);
    assert!(e.contains("below one 4 KiB"), "{e}");
    let help = prezero()
        .args(["balloon", "set", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("the guest gives back"), "{help}");
    assert!(help.contains("without a unit is MiB"), "{help}");
}

/// One HTTP exchange on the control socket, as `curl --unix-socket` does it.
fn http(ctl: &Path, method: &str, path: &str, accept: &str, body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(ctl).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    (status, content_type, body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

/// Firecracker's balloon API shape on the control socket, Prometheus metrics and periodic
/// statistics, against the real daemon and a connected guest.
#[test]
fn firecracker_shaped_api_prometheus_metrics_and_stats_polling() {
    let d = Scratch::new("fcapi");
    let (sock, ctl) = (d.join("b.sock"), d.join("b.ctl"));
    let _daemon = Daemon::start(&sock, &["--control", ctl.to_str().unwrap()]);
    // Before any guest: no statistics, and the reason says why.
    let (status, _, body) = http(&ctl, "GET", "/balloon/statistics", "*/*", "");
    assert_eq!(status, 400);
    assert!(body.contains("no guest is connected"), "{body}");

    let mut g = Guest::new(GuestOptions {
        ram_size: 256 * MIB,
        ..Default::default()
    })
    .unwrap();
    g.attach_balloon(&sock).unwrap();
    let poll = |g: &mut Guest, ms| g.poll(Duration::from_millis(ms)).unwrap();
    poll(&mut g, 100);

    let (status, _, body) = http(&ctl, "GET", "/balloon", "*/*", "");
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(
        (v["amount_mib"].clone(), v["deflate_on_oom"].clone()),
        (json("0"), json("true"))
    );
    assert_eq!(v["stats_polling_interval_s"], 0);
    assert_eq!(v["guest_ram_bytes"], 256 * MIB);

    // Above the guest's RAM: refused with the limit. A deflate_on_oom the daemon cannot
    // change: refused, not ignored. Unknown fields: refused.
    let (status, _, body) = http(&ctl, "PATCH", "/balloon", "*/*", r#"{"amount_mib": 300}"#);
    assert_eq!(status, 400);
    assert!(body.contains("at most 256 MiB"), "{body}");
    let (status, _, body) = http(
        &ctl,
        "PUT",
        "/balloon",
        "*/*",
        r#"{"amount_mib": 32, "deflate_on_oom": false, "stats_polling_interval_s": 1}"#,
    );
    assert_eq!(status, 400);
    assert!(body.contains("--no-deflate-on-oom"), "{body}");
    let (status, _, _) = http(&ctl, "PATCH", "/balloon", "*/*", r#"{"amount": 32}"#);
    assert_eq!(status, 400);

    // Firecracker's PUT: amount, deflate_on_oom as offered, a polling interval. The config
    // change waits for the guest's ack: send it from a thread while the guest runs.
    let c = ctl.clone();
    let put = std::thread::spawn(move || {
        http(
            &c,
            "PUT",
            "/balloon",
            "*/*",
            r#"{"amount_mib": 32, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
        )
    });
    while !put.is_finished() {
        poll(&mut g, 20);
    }
    let (status, _, body) = put.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["target_bytes"], 32 * MIB);
    let v = json(&http(&ctl, "GET", "/balloon", "*/*", "").2);
    assert_eq!(v["amount_mib"], 32);
    assert_eq!(v["stats_polling_interval_s"], 1);

    // Polling every second: the guest is asked again and again without anyone requesting.
    let first = g.zone().stat().pages_reported; // any guest activity works; just run it
    let _ = first;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        poll(&mut g, 50);
    }
    let (status, _, body) = http(&ctl, "GET", "/balloon/statistics", "*/*", "");
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["target_mib"], 32);
    assert_eq!(v["target_pages"], 8192);
    assert!(v["free_memory"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(v["free_memory"], v["stats"]["values"]["free_memory"]);
    let seq = v["stats"]["sequence"].as_u64().unwrap();
    assert!(seq >= 3, "polled statistics: sequence {seq}");

    // Firecracker's PATCH /balloon/statistics turns polling off.
    let (status, _, body) = http(
        &ctl,
        "PATCH",
        "/balloon/statistics",
        "*/*",
        r#"{"stats_polling_interval_s": 0}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["stats_polling_interval_s"], 0);

    // Prometheus text by default (what a scraper and curl get), JSON by Accept or path.
    let (status, ctype, text) = http(
        &ctl,
        "GET",
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "",
    );
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    for family in [
        "# TYPE prezero_device_discarded_bytes_total counter",
        "# TYPE prezero_device_zeroed_bytes_total counter",
        "# TYPE prezero_device_errors_total counter",
        "# TYPE prezero_daemon_connections_total counter",
        "# TYPE prezero_balloon_target_bytes gauge",
        "# TYPE prezero_guest_free_memory_bytes gauge",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    assert!(
        text.contains("prezero_balloon_target_bytes 33554432"),
        "{text}"
    );
    let (_, ctype, body) = http(&ctl, "GET", "/metrics", "application/json", "");
    assert_eq!(ctype, "application/json");
    assert_eq!(json(&body)["daemon"]["connections"], 1);
    let (_, ctype, _) = http(&ctl, "GET", "/metrics.json", "*/*", "");
    assert_eq!(ctype, "application/json");
    assert_eq!(
        control(&["balloon", "metrics", "--control", ctl.to_str().unwrap()])["daemon"]
            ["connections"],
        1
    );
}

/// With the stats queue not offered, a stats request says why there are none.
#[test]
fn stats_without_the_stats_queue_say_why() {
    let d = Scratch::new("nostats");
    let (sock, ctl) = (d.join("b.sock"), d.join("b.ctl"));
    let _daemon = Daemon::start(&sock, &["--control", ctl.to_str().unwrap(), "--no-stats"]);
    let v = control(&["balloon", "stats", "--control", ctl.to_str().unwrap()]);
    assert_eq!(v["stats"], Value::Null);
    assert!(v["reason"].as_str().unwrap().contains("--no-stats"), "{v}");
    let e = failure(&[
        "balloon",
        "stats-interval",
        "5",
        "--control",
        ctl.to_str().unwrap(),
    ]);
    assert!(e.contains("--no-stats"), "{e}");
}

/// The children and temp entries of this test's own runs: the temp dir is private to it.
fn interrupted(
    args: &[&str],
    sig: i32,
    after: impl Fn(&Path) -> bool,
) -> (Option<i32>, Vec<String>) {
    let d = Scratch::new("interrupt");
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = prezero()
        .args(args)
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !after(&tmp) {
        assert!(Instant::now() < deadline, "{args:?} never got going");
        assert!(child.try_wait().unwrap().is_none(), "{args:?} ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, sig) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{args:?} did not stop on signal {sig}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // No process of it is left (its threads die with it; it starts no children).
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let left = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    (status.code(), left)
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_some()
}

/// Ctrl-C and SIGTERM stop the demo and the seed table promptly with 130 / 143, and their
/// temporary socket directories go with them.
#[test]
fn ctrl_c_and_sigterm_stop_demo_and_seed_table_and_leave_nothing() {
    let (code, left) = interrupted(
        &[
            "demo",
            "--mem-mib",
            "512",
            "--alloc-mib",
            "64",
            "--balloon-mib",
            "64",
        ],
        libc::SIGINT,
        has_entries,
    );
    assert_eq!(code, Some(130));
    assert!(left.is_empty(), "left behind: {left:?}");
    let (code, left) = interrupted(
        &[
            "bench",
            "seed-table",
            "--mem-mib",
            "512",
            "--alloc-mib",
            "64",
            "--repeats",
            "50",
            "--svg",
            "/dev/null",
        ],
        libc::SIGTERM,
        has_entries,
    );
    assert_eq!(code, Some(143));
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `prezero ... | head` closes stdout early: the command ends quietly, no panic (101).
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let mut child = prezero()
        .args(["bench", "alloc", "--quick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// `prezero linux` checks scenario parameters before anything is set up or booted.
#[test]
fn linux_scenario_parameters_are_checked_before_the_boot() {
    for (args, want) in [
        (
            &["--scenario", "alloc-free", "mb=64"][..],
            "did you mean mib?",
        ),
        (&["--scenario", "idle", "wiat=1"][..], "did you mean wait?"),
        (&["--scenario", "idle", "wait=5s"][..], "expected seconds"),
        (&["--scenario", "idel"][..], "did you mean idle?"),
    ] {
        let e = failure(&[&["linux", "--no-install"][..], args].concat());
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(
            !e.contains("User-Mode Linux"),
            "{args:?} got to the setup: {e}"
        );
    }
    let help = prezero().args(["linux", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("until_inflated=0"));
}

/// `bench report --json`: progress lines on stderr, one per pass of each pattern and backing,
/// and nothing but the JSON on stdout.
#[test]
fn bench_report_shows_progress_on_stderr_only() {
    let out = prezero()
        .args(["bench", "report", "--mib", "512", "--passes", "1", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON");
    assert!(json["patterns"].as_array().is_some_and(|p| !p.is_empty()));
    let steps: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("bench report: ["))
        .collect();
    assert_eq!(steps.len(), 4, "{stderr}");
    assert!(
        steps[0].contains("[1/4] stock on memfd: pass 1/1"),
        "{stderr}"
    );
}

/// Each error names its cause (the values given, the limit) and the fix.
#[test]
fn error_messages_name_the_cause_and_the_fix() {
    let dir = std::env::temp_dir();
    let e = failure(&["balloon", "status", "--control", dir.to_str().unwrap()]);
    assert!(
        e.contains("not a socket") && e.contains("prezero serve --control"),
        "{e}"
    );
    let e = failure(&["bench", "seed-table", "--repeats", "0"]);
    assert!(
        e.contains("--repeats 0") && !e.contains("--alloc-mib"),
        "{e}"
    );
    let e = failure(&[
        "bench",
        "seed-table",
        "--alloc-mib",
        "400",
        "--mem-mib",
        "512",
    ]);
    assert!(
        e.contains("--alloc-mib 400") && e.contains("--mem-mib 800 or more"),
        "{e}"
    );
    let e = failure(&["linux", "--no-install", "--vmm", "qemu", "--kernel", "7"]);
    assert!(
        e.contains("QEMU boots Debian's cloud kernel (leave out --kernel"),
        "{e}"
    );
    let e = failure(&[
        "bench",
        "seed-table",
        "--vm",
        "--kernel",
        "/nonexistent/vmlinux",
    ]);
    assert!(
        e.contains("--kernel /nonexistent/vmlinux: no such file") && !e.contains("QEMU exit"),
        "{e}"
    );
    let e = failure(&["demo", "--alloc-mib", "4096"]);
    assert!(
        e.contains("--alloc-mib 4096") && e.contains("more than 4608"),
        "{e}"
    );
}
