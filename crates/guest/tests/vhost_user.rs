//! The guest transport against a real vhost-user backend (rust-vmm `vhost-user-backend` +
//! `virtio-queue`) over a real Unix socket and a real memfd.

use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prezero_balloon::features::{DEVICE_INIT_ON_INFLATE, MUST_TELL_HOST, REPORTING};
use prezero_guest::ram::DEFAULT_RAM_SIZE;
use prezero_guest::vhost_user::VHOST_USER_F_PROTOCOL_FEATURES;
use prezero_guest::{Buffer, GuestRam, SplitQueue, TransportError, VhostUserTransport};
use prezero_testkit::backend::*;
use prezero_testkit::rig::{ram, Guest};
use prezero_testkit::wait::{join_with_guard, wait_for_path, HANG_GUARD};
use prezero_testkit::{bits, Scratch};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;

#[test]
fn negotiates_virtio_and_protocol_features() {
    let backend = TestBackend::start("negotiate", Options::default());
    let mut t = VhostUserTransport::connect(&backend.path, 2).unwrap();
    // Bit 30 is the transport's business, not the driver's.
    assert_eq!(
        t.device_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | DEVICE_BITS
    );
    let p = t.protocol_features();
    for f in [
        VhostUserProtocolFeatures::CONFIG,
        VhostUserProtocolFeatures::BACKEND_REQ,
        VhostUserProtocolFeatures::REPLY_ACK,
        VhostUserProtocolFeatures::MQ,
    ] {
        assert!(p.contains(f), "{f:?} not negotiated: {p:?}");
    }
    assert!(t.features().is_none());

    // The driver asks for bit 7, which the device does not offer.
    let acked = t
        .negotiate(VIRTIO_F_VERSION_1 | bits(&[MUST_TELL_HOST, REPORTING, DEVICE_INIT_ON_INFLATE]))
        .unwrap();
    assert_eq!(
        acked,
        VIRTIO_F_VERSION_1 | bits(&[MUST_TELL_HOST, REPORTING])
    );
    assert_eq!(t.features(), Some(acked));
    assert!(!t.event_idx());
    let device_saw = backend.shared.acked_features.lock().unwrap().unwrap();
    assert_eq!(device_saw, acked | VHOST_USER_F_PROTOCOL_FEATURES);
    drop(t);
    backend.join();
}

#[test]
fn reads_and_writes_config_space() {
    let backend = TestBackend::start("config", Options::default());
    let config: Vec<u8> = (1..=CONFIG_SIZE as u8).collect();
    backend.shared.set_config(0, &config);
    let mut t = VhostUserTransport::connect(&backend.path, 2).unwrap();

    let mut all = [0u8; CONFIG_SIZE];
    t.read_config(0, &mut all).unwrap();
    assert_eq!(all.as_slice(), config.as_slice());
    let mut word = [0u8; 4];
    t.read_config(4, &mut word).unwrap();
    assert_eq!(word, [5, 6, 7, 8]);

    t.write_config(8, &[0xaa; 4]).unwrap();
    assert_eq!(&backend.shared.config.lock().unwrap()[8..12], &[0xaa; 4]);
    t.read_config(8, &mut word).unwrap();
    assert_eq!(word, [0xaa; 4]);

    // Past the device's config space: the backend says no, the call says so.
    let mut too_far = [0u8; 8];
    assert!(matches!(
        t.read_config(12, &mut too_far),
        Err(TransportError::Request {
            request: "GET_CONFIG",
            ..
        })
    ));
    // REPLY_ACK turns a refused write into an error too.
    assert!(matches!(
        t.write_config(12, &[0; 8]),
        Err(TransportError::Request {
            request: "SET_CONFIG",
            ..
        })
    ));
    drop(t);
    backend.join();
}

fn round_trip(event_idx: bool) {
    let backend = TestBackend::start("roundtrip", Options::default());
    // The default 2 GiB guest: sparse, so cheap, and the rings sit near its top.
    let ram = ram(DEFAULT_RAM_SIZE);
    let mut features = VIRTIO_F_VERSION_1 | DEVICE_BITS;
    if event_idx {
        features |= VIRTIO_RING_F_EVENT_IDX;
    }
    let mut g = Guest::connect_sized(&backend.path, ram, features, 64, 2);
    assert_eq!(g.transport.event_idx(), event_idx);

    let (req, buf1, buf2) = (0x10_0000, 0x20_0000, 0x30_0000);
    g.ram.write(req, &[0x3c]).unwrap();
    let chain = [
        Buffer::readable(req, 1),
        Buffer::writable(buf1, 4096),
        Buffer::writable(buf2, 100),
    ];
    g.queues[0].add(&chain, 7).unwrap();
    assert!(g.queues[0].should_notify().unwrap());
    g.transport.kick(0).unwrap();
    assert!(g.transport.wait_call(0, Some(HANG_GUARD)).unwrap());
    let used = g.queues[0]
        .pop_used()
        .unwrap()
        .expect("a call with nothing used");
    assert_eq!(used.token, 7);
    assert_eq!(used.len, 4196);
    assert_eq!(used.writable_len, 4196);
    assert!(g.queues[0].pop_used().unwrap().is_none());

    // The bytes are really in the memfd: through our mapping and through another one.
    assert!(g.ram.is_zero(buf1 - 16, 16).unwrap());
    let mut got = vec![0u8; 4096];
    g.ram.read(buf1, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0x3c));
    let other = device_view(&g.ram);
    let mut tail = [0u8; 101];
    other.read_slice(&mut tail, GuestAddress(buf2)).unwrap();
    assert!(tail[..100].iter().all(|&b| b == 0x3c));
    assert_eq!(tail[100], 0, "the device wrote past the buffer");
    assert_eq!(backend.shared.chains.load(Ordering::SeqCst), 1);

    // Nothing else is pending: a short wait times out empty.
    assert!(g
        .transport
        .wait(Some(Duration::from_millis(1)))
        .unwrap()
        .is_empty());
    drop(g);
    backend.join();
}

#[test]
fn kick_call_and_used_lengths() {
    round_trip(false);
}

#[test]
fn kick_call_and_used_lengths_with_event_idx() {
    round_trip(true);
}

fn many_chains(event_idx: bool) {
    let backend = TestBackend::start("many", Options::default());
    let mut features = VIRTIO_F_VERSION_1;
    if event_idx {
        features |= VIRTIO_RING_F_EVENT_IDX;
    }
    let size = 16u16;
    let mut g = Guest::connect_sized(&backend.path, ram(64 * MIB), features, size, 1);
    let total = 10 * u64::from(size) + 3;
    let buf_at = |token: u64| 0x100_0000 + token * 0x2000;
    let fill_of = |token: u64| (token % 250) as u8 + 1;
    let mut next = 0u64;
    let mut done = Vec::new();
    let mut kicks = 0;
    while (done.len() as u64) < total {
        // Fill the queue with chains of 1 readable + 1..=3 writable buffers.
        while next < total {
            let writable = 1 + (next % 3) as usize;
            if usize::from(g.queues[0].num_free()) < 1 + writable {
                break;
            }
            let req = buf_at(next);
            g.ram.write(req, &[fill_of(next)]).unwrap();
            let mut chain = vec![Buffer::readable(req, 1)];
            for i in 0..writable {
                chain.push(Buffer::writable(req + 0x100 + i as u64 * 0x400, 0x300));
            }
            g.queues[0].add(&chain, next).unwrap();
            next += 1;
        }
        if g.queues[0].should_notify().unwrap() {
            g.transport.kick(0).unwrap();
            kicks += 1;
        }
        let want = (next - done.len() as u64) as usize;
        done.extend(g.collect(0, want));
    }
    assert_eq!(g.queues[0].num_free(), size);
    assert!(kicks > 0);
    assert_eq!(backend.shared.chains.load(Ordering::SeqCst), total);
    // Chains come back in order with this device; check each one's length and bytes.
    for (i, u) in done.iter().enumerate() {
        assert_eq!(u.token, i as u64);
        let writable = 1 + u.token % 3;
        assert_eq!(u64::from(u.len), writable * 0x300);
        assert_eq!(u64::from(u.len), u.writable_len);
        for w in 0..writable {
            let at = buf_at(u.token) + 0x100 + w * 0x400;
            let mut got = vec![0u8; 0x300];
            g.ram.read(at, &mut got).unwrap();
            assert!(got.iter().all(|&b| b == fill_of(u.token)), "chain {i}");
            // The gap after each buffer is untouched.
            assert!(g.ram.is_zero(at + 0x300, 0x100).unwrap());
        }
    }
    drop(g);
    backend.join();
}

#[test]
fn many_chains_wrap_the_ring() {
    many_chains(false);
}

#[test]
fn many_chains_wrap_the_ring_with_event_idx() {
    many_chains(true);
}

#[test]
fn wait_reports_which_queue_was_called() {
    let backend = TestBackend::start("twoq", Options::default());
    let mut g = Guest::connect_sized(&backend.path, ram(64 * MIB), VIRTIO_F_VERSION_1, 8, 2);
    g.queues[1]
        .add(&[Buffer::writable(0x10_0000, 8)], 1)
        .unwrap();
    g.transport.kick(1).unwrap();
    let start = Instant::now();
    let events = loop {
        let e = g.transport.wait(Some(HANG_GUARD)).unwrap();
        if !e.is_empty() {
            break e;
        }
        assert!(start.elapsed() < HANG_GUARD);
    };
    assert!(events.called(1));
    assert!(!events.called(0));
    assert!(!events.config_changed);
    assert_eq!(events.called_queues().collect::<Vec<_>>(), vec![1]);
    assert_eq!(g.queues[1].pop_used().unwrap().unwrap().len, 8);
    drop(g);
    backend.join();
}

#[test]
fn config_change_notification_reaches_the_driver() {
    let backend = TestBackend::start("cfgchange", Options::default());
    let mut g = Guest::connect_sized(&backend.path, ram(64 * MIB), VIRTIO_F_VERSION_1, 8, 1);
    let mut before = [0u8; 4];
    g.transport.read_config(0, &mut before).unwrap();
    assert_eq!(before, [0; 4]);
    assert_eq!(g.transport.config_changes(), 0);

    // The device changes its config and says so; with REPLY_ACK it waits for our ack, which
    // the channel thread gives even though the driver is not waiting yet.
    backend.shared.set_config(0, &[9, 8, 7, 6]);
    assert_eq!(backend.shared.send_config_change().unwrap(), 0);

    let events = g.transport.wait(Some(HANG_GUARD)).unwrap();
    assert!(events.config_changed);
    assert_eq!(events.calls, 0);
    assert_eq!(g.transport.config_changes(), 1);
    let mut after = [0u8; 4];
    g.transport.read_config(0, &mut after).unwrap();
    assert_eq!(after, [9, 8, 7, 6]);
    // Consumed: the next wait does not report it again.
    assert!(
        !g.transport
            .wait(Some(Duration::from_millis(1)))
            .unwrap()
            .config_changed
    );
    drop(g);
    backend.join();
}

#[test]
fn dropping_the_transport_survives_a_half_sent_backend_request() {
    let backend = TestBackend::start("halfmsg", Options::default());
    let t = VhostUserTransport::connect(&backend.path, 1).unwrap();
    // Half a message header: the channel thread blocks reading the rest, which never comes.
    backend
        .shared
        .send_raw_backend_request(&2u32.to_le_bytes())
        .unwrap();
    let dropper = std::thread::spawn(move || drop(t));
    join_with_guard(dropper, "transport drop");
    backend.join();
}

#[test]
fn backend_dying_mid_request_is_disconnected_not_a_hang() {
    let opts = Options {
        mode: Mode::Die,
        ..Options::default()
    };
    let backend = TestBackend::start("die", opts);
    let mut g = Guest::connect_sized(&backend.path, ram(64 * MIB), VIRTIO_F_VERSION_1, 8, 1);
    g.queues[0]
        .add(&[Buffer::writable(0x10_0000, 64)], 0)
        .unwrap();
    g.transport.kick(0).unwrap();
    let err = g.transport.wait_call(0, Some(HANG_GUARD)).unwrap_err();
    assert!(
        matches!(err, TransportError::Disconnected { .. }),
        "got {err}"
    );
    assert!(err
        .to_string()
        .contains(&backend.path.display().to_string()));
    // Everything after that says the same, immediately.
    assert!(matches!(
        g.transport.wait(None),
        Err(TransportError::Disconnected { .. })
    ));
    let mut word = [0u8; 4];
    assert!(matches!(
        g.transport.read_config(0, &mut word),
        Err(TransportError::Disconnected { .. })
    ));
    assert_eq!(backend.shared.chains.load(Ordering::SeqCst), 1);
    drop(g);
    backend.join();
}

#[test]
fn requests_to_a_dead_backend_are_disconnected() {
    let backend = TestBackend::start("deadreq", Options::default());
    let mut t = VhostUserTransport::connect(&backend.path, 1).unwrap();
    backend.shared.cut();
    let mut word = [0u8; 4];
    let err = t.read_config(0, &mut word).unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Disconnected {
                during: "GET_CONFIG",
                ..
            }
        ),
        "got {err}"
    );
    drop(t);
    backend.join();
}

const CHILD_DIR_ENV: &str = "PREZERO_GUEST_TEST_BACKEND_DIR";

/// Not a test: the backend process that `backend_process_killed_while_driver_waits` kills.
#[test]
#[ignore = "helper process, started by backend_process_killed_while_driver_waits"]
fn backend_child_process() {
    let dir = std::env::var(CHILD_DIR_ENV).expect("run only as a child of the kill test");
    // SAFETY: prctl with these arguments only sets this process's parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let opts = Options {
        mode: Mode::Stall,
        ..Options::default()
    };
    let _backend = TestBackend::start_in(std::path::Path::new(&dir), opts);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn backend_process_killed_while_driver_waits() {
    let scratch = Scratch::new("child");
    let dir = scratch.path().to_path_buf();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "backend_child_process",
            "--nocapture",
        ])
        .env(CHILD_DIR_ENV, &dir)
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let path = dir.join("frontend.sock");
    wait_for_path(&path);

    let ram = ram(64 * MIB);
    let mut t = VhostUserTransport::connect(&path, 1).unwrap();
    t.negotiate(VIRTIO_F_VERSION_1).unwrap();
    t.set_memory(&ram).unwrap();
    let mut q = SplitQueue::new(ram.clone(), 8, 0x1000, false).unwrap();
    t.setup_queue(0, &q).unwrap();
    let buf = 0x10_0000;
    q.add(&[Buffer::writable(buf, 64)], ()).unwrap();
    t.kick(0).unwrap();

    // The stalled device marks the buffer and never completes; once the request is in its
    // hands, kill the process while the driver waits for the call.
    let killer_ram = ram.clone();
    let pid = child.0.id() as libc::pid_t;
    let killer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut marker = [0u8; 1];
        loop {
            killer_ram.read(buf, &mut marker).unwrap();
            if marker[0] == 0xee {
                break;
            }
            assert!(
                start.elapsed() < HANG_GUARD,
                "the device never took the request"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let err = t.wait_call(0, Some(HANG_GUARD)).unwrap_err();
    assert!(
        matches!(err, TransportError::Disconnected { .. }),
        "got {err}"
    );
    killer.join().unwrap();
    assert!(q.pop_used().unwrap().is_none());
    let status = child.0.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn backend_without_protocol_features_still_runs_queues() {
    let opts = Options {
        features: VIRTIO_F_VERSION_1 | DEVICE_BITS,
        ..Options::default()
    };
    let backend = TestBackend::start("noproto", opts);
    let mut g = Guest::connect_sized(&backend.path, ram(64 * MIB), VIRTIO_F_VERSION_1, 8, 1);
    assert!(g.transport.protocol_features().is_empty());
    let mut word = [0u8; 4];
    assert!(matches!(
        g.transport.read_config(0, &mut word),
        Err(TransportError::Unsupported { .. })
    ));
    g.queues[0]
        .add(&[Buffer::writable(0x10_0000, 32)], 5)
        .unwrap();
    g.transport.kick(0).unwrap();
    let used = g.collect(0, 1);
    assert_eq!((used[0].token, used[0].len), (5, 32));
    // Without REPLY_ACK, SET_FEATURES is not acked; the round trip above proves it arrived.
    let acked = *backend.shared.acked_features.lock().unwrap();
    assert_eq!(acked, Some(VIRTIO_F_VERSION_1));
    drop(g);
    backend.join();
}

#[test]
fn too_few_backend_queues_is_an_error() {
    let opts = Options {
        num_queues: 1,
        ..Options::default()
    };
    let backend = TestBackend::start("fewq", opts);
    let err = VhostUserTransport::connect(&backend.path, 3).unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::TooFewQueues {
                available: 1,
                wanted: 3
            }
        ),
        "got {err}"
    );
    backend.join();
}

#[test]
fn calls_out_of_order_are_refused() {
    let backend = TestBackend::start("order", Options::default());
    let ram = ram(16 * MIB);
    let mut t = VhostUserTransport::connect(&backend.path, 1).unwrap();
    let q = SplitQueue::<()>::new(ram.clone(), 8, 0x1000, false).unwrap();
    assert!(matches!(
        t.set_memory(&ram),
        Err(TransportError::Sequence(_))
    ));
    t.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX)
        .unwrap();
    assert!(matches!(
        t.setup_queue(0, &q),
        Err(TransportError::Sequence(_))
    ));
    t.set_memory(&ram).unwrap();
    // Rings in some other RAM than the one the backend maps.
    let elsewhere = Arc::new(GuestRam::new(16 * MIB).unwrap());
    let stray = SplitQueue::<()>::new(elsewhere, 8, 0x1000, true).unwrap();
    assert!(matches!(
        t.setup_queue(0, &stray),
        Err(TransportError::Sequence(_))
    ));
    // The queue was built without event idx, the transport negotiated it.
    assert!(matches!(
        t.setup_queue(0, &q),
        Err(TransportError::Sequence(_))
    ));
    assert!(matches!(
        t.setup_queue(1, &q),
        Err(TransportError::NoSuchQueue { index: 1, .. })
    ));
    assert!(matches!(t.kick(0), Err(TransportError::QueueNotReady(0))));
    drop(t);
    backend.join();
}

#[test]
fn missing_socket_says_to_start_the_backend() {
    let dir = Scratch::new("missing");
    let path = dir.path().join("nobody.sock");
    let err = VhostUserTransport::connect(&path, 1).unwrap_err();
    assert!(
        matches!(err, TransportError::SocketMissing { .. }),
        "got {err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(
        msg.contains(&format!("prezero serve --socket {}", path.display())),
        "{msg}"
    );
}

#[test]
fn regular_file_is_not_a_socket() {
    let dir = Scratch::new("notsock");
    let path = dir.path().join("file");
    std::fs::write(&path, b"").unwrap();
    let err = VhostUserTransport::connect(&path, 1).unwrap_err();
    assert!(
        matches!(err, TransportError::NotASocket { .. }),
        "got {err}"
    );
    assert!(err.to_string().contains("is not a Unix socket"));
}

#[test]
fn stale_socket_says_nobody_listens() {
    let dir = Scratch::new("stale");
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let err = VhostUserTransport::connect(&path, 1).unwrap_err();
    assert!(
        matches!(err, TransportError::NotListening { .. }),
        "got {err}"
    );
    assert!(err.to_string().contains("nobody is listening"));
}
