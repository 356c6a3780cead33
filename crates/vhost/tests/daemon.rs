//! The daemon against a real frontend: `prezero-guest`'s vhost-user transport over a real Unix
//! socket, sharing a real memfd whose holes tell what the device discarded.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use prezero_balloon::features::{
    DEFLATE_ON_OOM, DEVICE_INIT_ON_INFLATE, DEVICE_INIT_REPORTED, MUST_TELL_HOST, PAGE_POISON,
    REPORTING, RING_EVENT_IDX, RING_INDIRECT_DESC, STATS_VQ, VERSION_1,
};
use prezero_guest::vhost_user::VHOST_USER_F_PROTOCOL_FEATURES;
use prezero_guest::{Buffer, SplitQueue, VhostUserTransport};
use prezero_testkit::bits;
use prezero_testkit::rig::*;
use prezero_testkit::wait::*;
use prezero_testkit::Scratch;
use prezero_vhost::{control_request, ControlRequest, FeatureOffer, Notification};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// Everything the daemon offers by default (no FREE_PAGE_HINT).
const ALL: u64 = bits(&[
    VERSION_1,
    RING_EVENT_IDX,
    RING_INDIRECT_DESC,
    MUST_TELL_HOST,
    STATS_VQ,
    DEFLATE_ON_OOM,
    PAGE_POISON,
    REPORTING,
    DEVICE_INIT_REPORTED,
    DEVICE_INIT_ON_INFLATE,
]);

#[test]
fn negotiates_every_feature_with_dense_roles() {
    let d = Daemon::start("negotiate", FeatureOffer::default());
    let ram = ram(16 * MIB);
    let mut t = VhostUserTransport::connect(d.socket(), 4).unwrap();
    assert_eq!(t.device_features(), ALL);
    let p = t.protocol_features();
    for f in [
        VhostUserProtocolFeatures::CONFIG,
        VhostUserProtocolFeatures::REPLY_ACK,
        VhostUserProtocolFeatures::BACKEND_REQ,
    ] {
        assert!(p.contains(f), "{f:?} missing from {p:?}");
    }
    assert_eq!(t.negotiate(u64::MAX).unwrap(), ALL);
    t.set_memory(&ram).unwrap();
    let s = d.handle.status();
    assert!(s.connected);
    assert_eq!(s.negotiated_features, ALL);
    assert_eq!(s.queues, ["inflate", "deflate", "stats", "reporting"]);
    assert!(s.negotiated.iter().any(|n| n == "device_init_reported"));
    assert!(s.config_change_channel && s.reply_ack);
}

#[test]
fn reporting_without_stats_is_queue_2_and_holes_are_confirmed_zeroed() {
    let d = Daemon::start("report", FeatureOffer::default());
    let mut g = Guest::connect(
        &d.socket(),
        ram(32 * MIB),
        bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]),
        3,
    );
    assert_eq!(
        d.handle.status().queues,
        ["inflate", "deflate", "reporting"]
    );
    let blocks: Vec<u64> = (0..4).map(|i| (4 + 2 * i) * MIB).collect();
    for &b in &blocks {
        dirty(&g.ram, b, MIB);
    }
    // A dirty neighbour that is not reported.
    dirty(&g.ram, 3 * MIB, MIB);
    let before = g.ram.allocated_bytes().unwrap();
    // One chain per block: one answer per block.
    for (i, &b) in blocks.iter().enumerate() {
        g.submit(2, &[Buffer::writable(b, MIB as u32)], i as u64);
    }
    let used = g.collect(2, blocks.len());
    for u in &used {
        assert_eq!(u.len, MIB as u32, "block {} not confirmed zeroed", u.token);
    }
    for &b in &blocks {
        assert!(
            g.ram.is_hole(b, MIB).unwrap(),
            "block at {b:#x} still backed"
        );
    }
    assert!(!g.ram.is_hole(3 * MIB, MIB).unwrap());
    let after = g.ram.allocated_bytes().unwrap();
    assert!(
        before - after >= 4 * MIB,
        "allocation only dropped {before} -> {after}"
    );
    let m = d.handle.metrics().device;
    assert_eq!(m.reporting_requests, 4);
    assert_eq!(m.reported_chains_zeroed, 4);
    assert_eq!(m.zeroed_bytes, 4 * MIB);
    assert!(m.discarded_bytes >= 4 * MIB);
    assert_eq!(m.total_errors(), 0, "{:?}", m.errors);
}

#[test]
fn without_device_init_reported_the_used_length_is_zero_but_memory_is_discarded() {
    let offer = FeatureOffer {
        device_init_reported: false,
        ..FeatureOffer::default()
    };
    let d = Daemon::start("noinit", offer);
    let mut g = Guest::connect(
        &d.socket(),
        ram(16 * MIB),
        bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]),
        3,
    );
    assert_eq!(
        g.features & bits(&[DEVICE_INIT_REPORTED]),
        0,
        "not offered, not negotiated"
    );
    dirty(&g.ram, 4 * MIB, 2 * MIB);
    g.submit(2, &[Buffer::writable(4 * MIB, 2 * MIB as u32)], 0);
    let used = g.collect(2, 1);
    assert_eq!(used[0].len, 0);
    assert!(g.ram.is_hole(4 * MIB, 2 * MIB).unwrap());
    assert_eq!(d.handle.metrics().device.zeroed_bytes, 0);
}

#[test]
fn config_space_and_config_change_notification_through_the_control_socket() {
    let d = Daemon::start("config", FeatureOffer::default());
    // Before any guest: nobody to notify, the next guest reads it at probe.
    let early = d.handle.set_target_pages(100).unwrap();
    assert!(early.changed);
    assert_eq!(early.notification, Notification::NoGuest);

    let mut g = Guest::connect(
        &d.socket(),
        ram(16 * MIB),
        bits(&[VERSION_1, MUST_TELL_HOST]),
        2,
    );
    // UML asks from offset 0 with size offset + len and wants exactly that many bytes back.
    let mut config = [0u8; 8];
    g.transport.read_config(0, &mut config).unwrap();
    assert_eq!(config, [100, 0, 0, 0, 0, 0, 0, 0]);

    // The operator sets a target: the guest is told through the backend request channel.
    let reply = control_request(d.control(), &ControlRequest::SetTargetBytes(8 * MIB)).unwrap();
    assert_eq!(reply["target_pages"], 2048);
    assert_eq!(reply["changed"], true);
    assert_eq!(reply["notification"]["result"], "acked");
    // Acked means the frontend handled it already.
    assert_eq!(g.transport.config_changes(), 1);
    let events = g.transport.wait(Some(HANG_GUARD)).unwrap();
    assert!(events.config_changed);
    let mut num_pages = [0u8; 4];
    g.transport.read_config(0, &mut num_pages).unwrap();
    assert_eq!(u32::from_le_bytes(num_pages), 2048);

    // The same target again: nothing to tell. A new one: told again (and only that one).
    let same = control_request(d.control(), &ControlRequest::SetTargetPages(2048)).unwrap();
    assert_eq!(same["changed"], false);
    assert_eq!(same["notification"]["result"], "unchanged");
    // More than the guest's 16 MiB of RAM: refused with the limit, nothing sent.
    let e = d.handle.set_target_pages(20000).unwrap_err().to_string();
    assert!(e.contains("16 MiB of RAM"), "{e}");
    let e = control_request(d.control(), &ControlRequest::SetTargetBytes(17 * MIB)).unwrap_err();
    assert!(e.to_string().contains("at most 16 MiB"), "{e}");
    assert_eq!(d.handle.status().target_pages, 2048);
    let next = d.handle.set_target_pages(2000).unwrap();
    assert_eq!(next.notification, Notification::Acked);
    assert_eq!(g.transport.config_changes(), 2);

    // The driver writes `actual`; a write to `num_pages` (the host's) is ignored, as a
    // virtio-pci device ignores writes to read-only fields, and the connection goes on.
    g.transport
        .write_config(4, &20000u32.to_le_bytes())
        .unwrap();
    g.transport.write_config(0, &[0; 4]).unwrap();
    let status = control_request(d.control(), &ControlRequest::Status).unwrap();
    assert_eq!(status["actual_pages"], 20000);
    assert_eq!(status["target_pages"], 2000);
    assert_eq!(status["actual_bytes"], 20000u64 * 4096);
    g.transport.read_config(0, &mut config).unwrap();
    assert_eq!(&config[4..], &20000u32.to_le_bytes());
    // Past the config space of the offer (16 bytes with PAGE_POISON): refused.
    let mut far = [0u8; 8];
    assert!(g.transport.read_config(12, &mut far).is_err());

    let metrics = control_request(d.control(), &ControlRequest::Metrics).unwrap();
    assert_eq!(metrics["daemon"]["config_changes_acked"], 2);
    assert!(
        metrics["device"]["errors"]["config_write"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[test]
fn inflate_sets_the_device_init_on_inflate_bitmap_and_deflate_completes() {
    let d = Daemon::start("inflate", FeatureOffer::default());
    let mut g = Guest::connect(
        &d.socket(),
        ram(32 * MIB),
        bits(&[VERSION_1, DEVICE_INIT_ON_INFLATE]),
        2,
    );
    let n = 20u32;
    let first_pfn = (8 * MIB / PAGE) as u32;
    dirty(&g.ram, 8 * MIB, u64::from(n) * PAGE);
    let pfns: Vec<u8> = (first_pfn..first_pfn + n)
        .flat_map(|p| p.to_le_bytes())
        .collect();
    let (pfn_gpa, bitmap_gpa) = (MIB, MIB + PAGE);
    g.ram.write(pfn_gpa, &pfns).unwrap();
    g.ram.write(bitmap_gpa, &[0u8; 3]).unwrap();
    g.submit(
        0,
        &[
            Buffer::readable(pfn_gpa, pfns.len() as u32),
            Buffer::writable(bitmap_gpa, 3),
        ],
        1,
    );
    let used = g.collect(0, 1);
    assert_eq!(
        used[0].len, 3,
        "the whole ceil(n / 8)-byte bitmap was written"
    );
    let mut bitmap = [0u8; 3];
    g.ram.read(bitmap_gpa, &mut bitmap).unwrap();
    assert_eq!(bitmap, [0xff, 0xff, 0x0f]);
    assert!(g.ram.is_hole(8 * MIB, u64::from(n) * PAGE).unwrap());

    g.submit(1, &[Buffer::readable(pfn_gpa, pfns.len() as u32)], 2);
    g.collect(1, 1);
    let m = d.handle.metrics().device;
    assert_eq!((m.inflated_pages, m.inflated_pages_zeroed), (20, 20));
    assert_eq!(m.deflated_pages, 20);
}

#[test]
fn stats_buffer_is_held_and_given_back_for_fresh_values() {
    let d = Daemon::start("stats", FeatureOffer::default());
    let mut g = Guest::connect(&d.socket(), ram(16 * MIB), bits(&[VERSION_1, STATS_VQ]), 3);
    assert_eq!(d.handle.status().queues, ["inflate", "deflate", "stats"]);
    let buf = 2 * MIB;
    let first = stats_bytes(&[(4, 100 * MIB), (5, 512 * MIB), (99, 7)]);
    g.ram.write(buf, &first).unwrap();
    g.submit(2, &[Buffer::readable(buf, first.len() as u32)], 0);
    wait_until("the first stats", || d.handle.stats().is_some());
    let s = control_request(d.control(), &ControlRequest::Stats).unwrap();
    assert_eq!(s["stats"]["values"]["free_memory"], 100 * MIB);
    assert_eq!(s["stats"]["values"]["total_memory"], 512 * MIB);
    assert_eq!(s["stats"]["sequence"], 1);
    // Held, not used: the driver has nothing back yet.
    assert!(g.queues[2].pop_used().unwrap().is_none());
    assert!(d.handle.status().holds_stats_buffer);

    // The operator asks for fresh values and waits for them; the guest refills the buffer.
    let control = d.control();
    let asker = std::thread::spawn(move || {
        control_request(&control, &ControlRequest::RequestStats(Some(HANG_GUARD))).unwrap()
    });
    let back = g.collect(2, 1);
    assert_eq!(back[0].len, 0);
    let second = stats_bytes(&[(4, 200 * MIB), (5, 512 * MIB)]);
    g.ram.write(buf, &second).unwrap();
    g.submit(2, &[Buffer::readable(buf, second.len() as u32)], 1);
    let answer = asker.join().unwrap();
    assert_eq!(answer["requested"], true);
    assert_eq!(answer["fresh"], true);
    assert_eq!(answer["stats"]["values"]["free_memory"], 200 * MIB);
    assert_eq!(answer["stats"]["sequence"], 2);
    let m = d.handle.metrics().device;
    assert_eq!(
        (m.stats_buffers, m.stats_requests, m.stats_unknown_tags),
        (2, 1, 1)
    );
}

#[test]
fn a_fresh_stats_request_without_a_held_buffer_says_so() {
    let d = Daemon::start("nostats", FeatureOffer::default());
    let out = d.handle.request_stats(Some(Duration::from_millis(1)));
    assert!(!out.requested && !out.fresh && out.stats.is_none());
}

/// Reports one dirty block and checks it became a hole.
fn report_once(g: &mut Guest, q: u16, gpa: u64) {
    dirty(&g.ram, gpa, MIB);
    g.submit(q, &[Buffer::writable(gpa, MIB as u32)], 0);
    let used = g.collect(q, 1);
    assert_eq!(used[0].len, MIB as u32);
    assert!(g.ram.is_hole(gpa, MIB).unwrap());
}

#[test]
fn a_new_guest_is_served_after_the_previous_one_left_or_dropped_mid_request() {
    let d = Daemon::start("reconnect", FeatureOffer::default());
    d.handle.set_target_pages(4242).unwrap();
    let features = bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]);

    let mut a = Guest::connect(&d.socket(), ram(16 * MIB), features, 3);
    report_once(&mut a, 2, 4 * MIB);
    drop(a);
    d.wait_disconnections(1);
    assert!(!d.handle.status().connected);

    // The next guest negotiates something else: the device was reset in between.
    let mut b = Guest::connect(&d.socket(), ram(16 * MIB), features | bits(&[STATS_VQ]), 4);
    assert_eq!(
        d.handle.status().queues,
        ["inflate", "deflate", "stats", "reporting"]
    );
    report_once(&mut b, 3, 4 * MIB);
    drop(b);

    // A guest that vanishes with a request in flight.
    let mut c = Guest::connect(&d.socket(), ram(16 * MIB), features, 3);
    dirty(&c.ram, 4 * MIB, 8 * MIB);
    c.submit(2, &[Buffer::writable(4 * MIB, 8 * MIB as u32)], 0);
    drop(c);
    d.wait_disconnections(3);

    let mut e = Guest::connect(&d.socket(), ram(16 * MIB), features, 3);
    let mut num_pages = [0u8; 4];
    e.transport.read_config(0, &mut num_pages).unwrap();
    assert_eq!(
        u32::from_le_bytes(num_pages),
        4242,
        "the host's target survives guests"
    );
    report_once(&mut e, 2, 4 * MIB);
    let m = d.handle.metrics().daemon;
    assert_eq!(m.connections, 4);
    assert_eq!(m.connection_errors, 0);
}

const CHILD_SOCKET_ENV: &str = "PREZERO_VHOST_TEST_CHILD_SOCKET";

/// Not a test: the guest process that `a_killed_guest_process_is_replaced` kills.
#[test]
#[ignore = "helper process, started by a_killed_guest_process_is_replaced"]
fn guest_child_process() {
    let socket = std::env::var(CHILD_SOCKET_ENV).expect("run only as a child of the kill test");
    // SAFETY: prctl with these arguments only sets this process's parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut g = Guest::connect(
        socket.as_ref(),
        ram(32 * MIB),
        bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]),
        3,
    );
    dirty(&g.ram, 4 * MIB, 16 * MIB);
    for i in 0..8 {
        g.submit(2, &[Buffer::writable((4 + 2 * i) * MIB, 2 * MIB as u32)], i);
    }
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_killed_guest_process_is_replaced() {
    let d = Daemon::start("killed", FeatureOffer::default());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "guest_child_process", "--nocapture"])
        .env(CHILD_SOCKET_ENV, d.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.any(|l| l.map(|l| l.trim() == "ready").unwrap_or(false));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert!(ready, "the child guest never got ready");
    assert!(!status.success());
    d.wait_disconnections(1);

    let mut g = Guest::connect(
        &d.socket(),
        ram(16 * MIB),
        bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]),
        3,
    );
    report_once(&mut g, 2, 4 * MIB);
    assert_eq!(d.handle.metrics().daemon.connections, 2);
}

#[test]
fn socket_path_problems_are_reported_with_what_to_do() {
    let s = Scratch::new("paths");
    let err = prezero_vhost::spawn(prezero_vhost::ServeOptions::new(
        s.path().join("missing").join("b.sock"),
    ))
    .unwrap_err();
    assert!(
        matches!(err, prezero_vhost::Error::SocketDirMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("create it first"), "{err}");

    let file = s.path().join("file");
    std::fs::write(&file, "precious").unwrap();
    let err = prezero_vhost::spawn(prezero_vhost::ServeOptions::new(&file)).unwrap_err();
    assert!(
        matches!(err, prezero_vhost::Error::NotASocket { .. }),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    // A live daemon's socket is not taken over, and the live daemon keeps serving.
    let d = Daemon::start("live", FeatureOffer::default());
    let err = prezero_vhost::spawn(prezero_vhost::ServeOptions::new(d.socket())).unwrap_err();
    assert!(
        matches!(err, prezero_vhost::Error::SocketInUse { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("another daemon"), "{err}");
    // The same for its control socket; the vhost socket the failed attempt bound is removed.
    let other = s.path().join("other.sock");
    let err =
        prezero_vhost::spawn(prezero_vhost::ServeOptions::new(&other).with_control(d.control()))
            .unwrap_err();
    assert!(
        matches!(err, prezero_vhost::Error::SocketInUse { .. }),
        "{err}"
    );
    assert!(!other.exists());
    let mut g = Guest::connect(&d.socket(), ram(16 * MIB), bits(&[VERSION_1, REPORTING]), 3);
    report_once_unconfirmed(&mut g);

    // A stale socket file (its daemon died) is replaced.
    let stale = s.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let h = prezero_vhost::spawn(prezero_vhost::ServeOptions::new(&stale)).unwrap();
    VhostUserTransport::connect(&stale, 2).unwrap();
    h.shutdown().unwrap();
    assert!(
        !stale.exists(),
        "the daemon removes its socket when it stops"
    );
}

fn report_once_unconfirmed(g: &mut Guest) {
    dirty(&g.ram, 4 * MIB, MIB);
    g.submit(2, &[Buffer::writable(4 * MIB, MIB as u32)], 0);
    g.collect(2, 1);
    assert!(g.ram.is_hole(4 * MIB, MIB).unwrap());
}

const SERVE_DIR_ENV: &str = "PREZERO_VHOST_TEST_SERVE_DIR";

/// Not a test: a process running `serve`, for `serve_stops_cleanly_on_sigterm`.
#[test]
#[ignore = "helper process, started by serve_stops_cleanly_on_sigterm"]
fn serve_child_process() {
    let dir = std::path::PathBuf::from(std::env::var(SERVE_DIR_ENV).expect("run as a child"));
    // SAFETY: prctl with these arguments only sets this process's parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let opts = prezero_vhost::ServeOptions::new(dir.join("balloon.sock"))
        .with_control(dir.join("balloon.ctl"));
    prezero_vhost::serve(opts).unwrap();
    println!("served");
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let s = Scratch::new("serve");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "serve_child_process", "--nocapture"])
        .env(SERVE_DIR_ENV, s.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let guard = KillOnPanic(pid);
    wait_until("the daemon's sockets", || {
        s.socket().exists() && s.control().exists()
    });
    let g = Guest::connect(&s.socket(), ram(16 * MIB), bits(&[VERSION_1]), 2);
    let status = control_request(s.control(), &ControlRequest::Status).unwrap();
    assert_eq!(status["connected"], true);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let err = g.transport.wait(Some(HANG_GUARD)).unwrap_err();
    assert!(
        matches!(err, prezero_guest::TransportError::Disconnected { .. }),
        "{err}"
    );
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let exit = child.wait().unwrap();
    drop(guard);
    assert!(exit.success(), "serve did not return Ok: {exit:?}");
    assert!(out.contains("served"), "{out}");
    assert!(!s.socket().exists() && !s.control().exists());
}

/// Kills the child if the test panics before reaping it.
struct KillOnPanic(libc::pid_t);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: signalling the child this test started and has not reaped yet.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

#[test]
fn wait_returns_when_another_thread_stops_the_daemon() {
    let d = Daemon::start("wait", FeatureOffer::default());
    let controller = d.handle.controller();
    let stopper = std::thread::spawn(move || controller.request_shutdown());
    d.handle.wait().unwrap();
    stopper.join().unwrap();
}

#[test]
fn a_guest_can_be_disconnected_and_the_next_one_served() {
    let d = Daemon::start("kick-out", FeatureOffer::default());
    let g = Guest::connect(&d.socket(), ram(16 * MIB), bits(&[VERSION_1]), 2);
    d.handle.disconnect_guest();
    assert!(g.transport.wait(Some(HANG_GUARD)).is_err());
    drop(g);
    d.wait_disconnections(1);
    let mut g = Guest::connect(
        &d.socket(),
        ram(16 * MIB),
        bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]),
        3,
    );
    report_once(&mut g, 2, 4 * MIB);
}

#[test]
fn shutdown_disconnects_the_guest() {
    let d = Daemon::start("shutdown", FeatureOffer::default());
    let g = Guest::connect(&d.socket(), ram(16 * MIB), bits(&[VERSION_1]), 2);
    let socket = d.socket();
    let control = d.control();
    d.handle.shutdown().unwrap();
    let err = g.transport.wait(Some(HANG_GUARD)).unwrap_err();
    assert!(
        matches!(err, prezero_guest::TransportError::Disconnected { .. }),
        "{err}"
    );
    assert!(!socket.exists() && !control.exists());
}

/// Sends `bytes` with `fd` attached (`SCM_RIGHTS`).
fn send_with_fd(socket: &UnixStream, bytes: &[u8], fd: std::os::fd::RawFd) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the sendmsg call, and
    // the CMSG macros stay within the 32-byte control buffer (one fd needs 20).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        let sent = libc::sendmsg(socket.as_raw_fd(), &msg, 0);
        assert_eq!(sent, bytes.len() as isize);
    }
}

/// The frontend as User-Mode Linux's `virtio_uml` drives it, by hand: protocol features
/// REPLY_ACK | BACKEND_REQ | CONFIG, GET_CONFIG from offset 0, and a socketpair end as the
/// call "fd".
#[test]
fn a_uml_like_frontend_with_a_socketpair_call_fd_gets_its_calls() {
    let d = Daemon::start("uml", FeatureOffer::default());
    let ram = ram(16 * MIB);
    let stream = UnixStream::connect(d.socket()).unwrap();
    let raw = stream.try_clone().unwrap();
    raw.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut f = Frontend::from_stream(stream, 3);
    f.set_owner().unwrap();
    let offered = f.get_features().unwrap();
    assert_ne!(
        offered & VHOST_USER_F_PROTOCOL_FEATURES,
        0,
        "VHOST_USER_F_PROTOCOL_FEATURES offered"
    );
    let protocol = f.get_protocol_features().unwrap();
    let want = VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::CONFIG;
    assert!(protocol.contains(want));
    assert!(!protocol.contains(VhostUserProtocolFeatures::INBAND_NOTIFICATIONS));
    f.set_protocol_features(want).unwrap();
    // virtio_uml asks for an ack on every request once REPLY_ACK is in use.
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    f.set_features(
        bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]) | VHOST_USER_F_PROTOCOL_FEATURES,
    )
    .unwrap();
    let (_config, bytes) = f
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    assert_eq!(bytes.len(), 8);

    // SET_MEM_TABLE exactly as virtio_uml (Linux 6.1) sends it: one region and its fd, in a
    // payload with room for two (72 bytes), which vhost 0.18 alone refuses.
    let mut payload = Vec::new();
    payload.extend_from_slice(&1u32.to_le_bytes());
    payload.extend_from_slice(&0u32.to_le_bytes());
    for v in [0, ram.size(), ram.host_base() as u64, 0] {
        payload.extend_from_slice(&v.to_le_bytes());
    }
    payload.resize(72, 0);
    let mut msg = Vec::new();
    for v in [5u32, 0x9, 72] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    msg.extend_from_slice(&payload);
    send_with_fd(&raw, &msg, ram.fd());
    let mut ack = [0u8; 20];
    (&raw).read_exact(&mut ack).unwrap();
    assert_eq!(&ack[0..4], &5u32.to_le_bytes());
    assert_eq!(
        u64::from_le_bytes(ack[12..20].try_into().unwrap()),
        0,
        "SET_MEM_TABLE refused"
    );
    let gpa = 15 * MIB;
    let mut q = SplitQueue::<u64>::new(ram.clone(), 64, gpa, false).unwrap();
    let (l, config) = vring_config(&ram, &q);
    let (mut call_ours, call_theirs) = UnixStream::pair().unwrap();
    // SAFETY: the EventFd wrapper only carries the fd to SET_VRING_CALL (it is never read or
    // written as an eventfd); it owns the socketpair end from here.
    let call = unsafe { EventFd::from_raw_fd(call_theirs.into_raw_fd()) };
    let kick = EventFd::new(0).unwrap();
    f.set_vring_num(2, l.size).unwrap();
    f.set_vring_base(2, 0).unwrap();
    f.set_vring_addr(2, &config).unwrap();
    f.set_vring_call(2, &call).unwrap();
    f.set_vring_kick(2, &kick).unwrap();
    f.set_vring_enable(2, true).unwrap();

    dirty(&ram, 4 * MIB, 4 * MIB);
    q.add(&[Buffer::writable(4 * MIB, 4 * MIB as u32)], 9)
        .unwrap();
    kick.write(1).unwrap();
    call_ours.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut word = [0u8; 8];
    call_ours.read_exact(&mut word).unwrap();
    assert_eq!(u64::from_ne_bytes(word), 1);
    let used = q.pop_used().unwrap().expect("a used chain after the call");
    assert_eq!((used.token, used.len), (9, 4 * MIB as u32));
    assert!(ram.is_hole(4 * MIB, 4 * MIB).unwrap());
}

/// `SET_VRING_ADDR`'s data for a ring of `q` in `ram` (frontend addresses are host ones).
fn vring_config(
    ram: &prezero_guest::GuestRam,
    q: &SplitQueue<u64>,
) -> (prezero_guest::RingLayout, VringConfigData) {
    let l = q.layout();
    let n = u64::from(l.size);
    let config = VringConfigData {
        queue_max_size: l.size,
        queue_size: l.size,
        flags: 0,
        desc_table_addr: ram.host_addr(l.desc, 16 * n).unwrap(),
        used_ring_addr: ram.host_addr(l.used, 6 + 8 * n).unwrap(),
        avail_ring_addr: ram.host_addr(l.avail, 6 + 2 * n).unwrap(),
        log_addr: None,
    };
    (l, config)
}

/// What QEMU's generic vhost-user device (`vhost-user-test-device-pci,num_vqs=5,vq_size=N`)
/// and Linux 7.x `virtio_uml` do: ask `GET_QUEUE_NUM`, set up all five slots with one ring
/// size (the free-page-hint slot and any unnegotiated one included), and write the whole
/// config space when the guest writes `actual`.
#[test]
fn a_qemu_like_frontend_sets_up_five_queues_and_writes_the_whole_config() {
    let d = Daemon::start("qemu", FeatureOffer::default());
    let ram = ram(16 * MIB);
    let stream = UnixStream::connect(d.socket()).unwrap();
    let mut f = Frontend::from_stream(stream, 5);
    f.set_owner().unwrap();
    f.get_features().unwrap();
    let protocol = f.get_protocol_features().unwrap();
    assert!(protocol.contains(VhostUserProtocolFeatures::MQ));
    f.set_protocol_features(
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK,
    )
    .unwrap();
    assert_eq!(f.get_queue_num().unwrap(), 5, "Linux names five slots");
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    // The 6.1 driver's choice under QEMU: no PAGE_POISON, no free page hint.
    let negotiated = bits(&[
        VERSION_1,
        MUST_TELL_HOST,
        STATS_VQ,
        DEFLATE_ON_OOM,
        REPORTING,
    ]);
    f.set_features(negotiated | VHOST_USER_F_PROTOCOL_FEATURES)
        .unwrap();
    let region = vhost::VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: ram.size(),
        userspace_addr: ram.host_base() as u64,
        mmap_offset: 0,
        mmap_handle: ram.fd(),
    };
    f.set_mem_table(&[region]).unwrap();
    // QEMU's vq_size applies to every queue; the device's maximum (256) and any smaller power
    // of two are accepted.
    for size in [256u16, 64] {
        let mut rings = Vec::new();
        for index in 0..5usize {
            let gpa = 8 * MIB + index as u64 * 64 * 1024;
            let q = SplitQueue::<u64>::new(ram.clone(), size, gpa, false).unwrap();
            let (l, config) = vring_config(&ram, &q);
            let (call, kick) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
            f.set_vring_num(index, l.size).unwrap();
            f.set_vring_base(index, 0).unwrap();
            f.set_vring_addr(index, &config).unwrap();
            f.set_vring_call(index, &call).unwrap();
            f.set_vring_kick(index, &kick).unwrap();
            f.set_vring_enable(index, true).unwrap();
            rings.push((q, call, kick));
        }
        for index in 0..5usize {
            f.get_vring_base(index).unwrap();
        }
    }

    // The guest writes `actual`; QEMU sends all 8 bytes, num_pages as the guest read it.
    d.handle.set_target_pages(300).unwrap();
    let mut image = [0u8; 8];
    image[..4].copy_from_slice(&300u32.to_le_bytes());
    image[4..].copy_from_slice(&256u32.to_le_bytes());
    f.set_config(0, VhostUserConfigFlags::WRITABLE, &image)
        .unwrap();
    let status = control_request(d.control(), &ControlRequest::Status).unwrap();
    assert_eq!(status["actual_pages"], 256);
    assert_eq!(status["target_pages"], 300);
    let metrics = control_request(d.control(), &ControlRequest::Metrics).unwrap();
    assert_eq!(metrics["device"]["errors"]["config_write"], 0, "{metrics}");
    // Setting up the unused slots is no error either.
    assert_eq!(metrics["device"]["errors"]["unknown_queue"], 0, "{metrics}");
    // A real attempt to change num_pages: ignored and counted, actual still applied.
    image[..4].copy_from_slice(&1u32.to_le_bytes());
    image[4..].copy_from_slice(&200u32.to_le_bytes());
    f.set_config(0, VhostUserConfigFlags::WRITABLE, &image)
        .unwrap();
    let status = control_request(d.control(), &ControlRequest::Status).unwrap();
    assert_eq!(status["actual_pages"], 200);
    assert_eq!(status["target_pages"], 300);
    let metrics = control_request(d.control(), &ControlRequest::Metrics).unwrap();
    assert_eq!(metrics["device"]["errors"]["config_write"], 1, "{metrics}");
    // A ring above the maximum is the VMM's misconfiguration (QEMU then fails to start).
    assert!(f.set_vring_num(0, 512).is_err(), "above the maximum");
}
