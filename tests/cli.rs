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
