//! The daemon across re-initialisations on one connection, driven by a frontend written here
//! (the vhost crate's `Frontend` plus raw messages), the way User-Mode Linux and QEMU send
//! them: a driver reload without `SET_VRING_ENABLE`, a reboot with rings stopped and started
//! again, `RESET_DEVICE`, config accesses outside the config space, and a config change while
//! the frontend does not run the device.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use prezero_balloon::features::{
    DEVICE_INIT_REPORTED, MUST_TELL_HOST, REPORTING, STATS_VQ, VERSION_1,
};
use prezero_guest::vhost_user::VHOST_USER_F_PROTOCOL_FEATURES;
use prezero_guest::{Buffer, GuestRam, SplitQueue};
use prezero_testkit::bits;
use prezero_testkit::rig::*;
use prezero_testkit::wait::*;
use prezero_vhost::{FeatureOffer, Notification};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One ring as the driver set it up: its queue, kick and call eventfds.
struct Ring {
    queue: SplitQueue<u64>,
    kick: EventFd,
    call: EventFd,
}

/// The frontend of these tests: a vhost-user connection, guest RAM, and the rings of the
/// current driver incarnation.
struct Front {
    f: Frontend,
    raw: UnixStream,
    ram: Arc<GuestRam>,
    rings: Vec<Ring>,
    /// Our end of the backend request channel.
    channel: UnixStream,
    bit30: bool,
}

const RAM: u64 = 32 * MIB;
const RING_SIZE: u16 = 256;

impl Front {
    /// SET_OWNER, protocol features REPLY_ACK | BACKEND_REQ | CONFIG (+ RESET_DEVICE), the
    /// backend request channel, and acks on every request as `virtio_uml` asks for them.
    fn connect(d: &Daemon) -> Front {
        let stream = UnixStream::connect(d.socket()).unwrap();
        let raw = stream.try_clone().unwrap();
        raw.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let mut f = Frontend::from_stream(stream, 4);
        f.set_owner().unwrap();
        assert_ne!(
            f.get_features().unwrap() & VHOST_USER_F_PROTOCOL_FEATURES,
            0
        );
        let offered = f.get_protocol_features().unwrap();
        let want = VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::RESET_DEVICE;
        assert!(offered.contains(want), "{offered:?}");
        f.set_protocol_features(want).unwrap();
        f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let (ours, theirs) = UnixStream::pair().unwrap();
        f.set_backend_request_fd(&theirs).unwrap();
        ours.set_read_timeout(Some(HANG_GUARD)).unwrap();
        Front {
            f,
            raw,
            ram: ram(RAM),
            rings: Vec::new(),
            channel: ours,
            bit30: false,
        }
    }

    fn features(&mut self, features: u64, bit30: bool) {
        self.bit30 = bit30;
        let extra = if bit30 {
            VHOST_USER_F_PROTOCOL_FEATURES
        } else {
            0
        };
        self.f.set_features(features | extra).unwrap();
    }

    fn memory(&self) {
        let region = VhostUserMemoryRegionInfo::from_guest_region(self.ram.region()).unwrap();
        self.f.set_mem_table(&[region]).unwrap();
    }

    /// Fresh, zeroed rings for `n` queues with new eventfds, set up in User-Mode Linux's order
    /// (CALL, NUM, BASE 0, ADDR, KICK), plus ENABLE 1 when bit 30 was acked.
    fn rings(&mut self, n: usize) {
        let req = SplitQueue::<u64>::memory_requirement(RING_SIZE).unwrap();
        self.rings.clear();
        for i in 0..n {
            let gpa = RAM - (i as u64 + 1) * req.bytes.next_multiple_of(PAGE);
            self.ram.fill(gpa, req.bytes, 0).unwrap();
            let queue = SplitQueue::new(self.ram.clone(), RING_SIZE, gpa, false).unwrap();
            let l = queue.layout();
            let n16 = u64::from(l.size);
            let config = VringConfigData {
                queue_max_size: l.size,
                queue_size: l.size,
                flags: 0,
                desc_table_addr: self.ram.host_addr(l.desc, 16 * n16).unwrap(),
                used_ring_addr: self.ram.host_addr(l.used, 6 + 8 * n16).unwrap(),
                avail_ring_addr: self.ram.host_addr(l.avail, 6 + 2 * n16).unwrap(),
                log_addr: None,
            };
            let ring = Ring {
                queue,
                kick: EventFd::new(0).unwrap(),
                call: EventFd::new(EFD_NONBLOCK).unwrap(),
            };
            self.f.set_vring_call(i, &ring.call).unwrap();
            self.f.set_vring_num(i, l.size).unwrap();
            self.f.set_vring_base(i, 0).unwrap();
            self.f.set_vring_addr(i, &config).unwrap();
            self.f.set_vring_kick(i, &ring.kick).unwrap();
            if self.bit30 {
                self.f.set_vring_enable(i, true).unwrap();
            }
            self.rings.push(ring);
        }
    }

    /// For every ring: ENABLE 0 and GET_VRING_BASE (a VMM stopping the device).
    fn stop(&mut self) -> Vec<u32> {
        (0..self.rings.len())
            .map(|i| {
                self.f.set_vring_enable(i, false).unwrap();
                self.f.get_vring_base(i).unwrap()
            })
            .collect()
    }

    fn submit(&mut self, q: usize, chain: &[Buffer], token: u64) {
        self.rings[q].queue.add(chain, token).unwrap();
        self.rings[q].kick.write(1).unwrap();
    }

    /// The used index the device published on ring `q`.
    fn used_idx(&self, q: usize) -> u16 {
        let l = self.rings[q].queue.layout();
        self.ram.read_u16(l.used + 2).unwrap()
    }

    /// Waits until ring `q` has `want` used elements, then pops them.
    fn collect(&mut self, q: usize, want: usize) -> Vec<(u64, u32)> {
        wait_until("the device to complete the chains", || {
            self.used_idx(q) as usize >= want
        });
        let mut out = Vec::new();
        while let Some(u) = self.rings[q].queue.pop_used().unwrap() {
            out.push((u.token, u.len));
        }
        out
    }

    fn config_u32(&mut self, offset: u32) -> u32 {
        let (_, bytes) = self
            .f
            .get_config(offset, 4, VhostUserConfigFlags::WRITABLE, &[0u8; 4])
            .unwrap();
        u32::from_le_bytes(bytes.try_into().unwrap())
    }

    /// A raw request (for what the vhost crate's own frontend refuses to send); returns the
    /// reply's header and payload when one is expected.
    fn raw_request(
        &self,
        request: u32,
        flags: u32,
        payload: &[u8],
        reply: bool,
    ) -> Option<(u32, u32, Vec<u8>)> {
        let mut msg = Vec::new();
        for w in [request, flags, payload.len() as u32] {
            msg.extend_from_slice(&w.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        (&self.raw).write_all(&msg).unwrap();
        if !reply {
            return None;
        }
        let mut h = [0u8; 12];
        (&self.raw).read_exact(&mut h).unwrap();
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let mut body = vec![0u8; w(8) as usize];
        (&self.raw).read_exact(&mut body).unwrap();
        Some((w(0), w(4), body))
    }

    /// Reads a config-change message from the backend request channel and acks it.
    fn expect_config_change(&mut self) {
        let mut h = [0u8; 12];
        self.channel.read_exact(&mut h).unwrap();
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        assert_eq!((w(0), w(8)), (2, 0), "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG");
        if w(4) & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
            let mut ack = Vec::new();
            for v in [2u32, 0x5, 8] {
                ack.extend_from_slice(&v.to_le_bytes());
            }
            ack.extend_from_slice(&0u64.to_le_bytes());
            self.channel.write_all(&ack).unwrap();
        }
    }

    fn no_config_change(&self) {
        self.channel.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let got = (&self.channel).read(&mut byte);
        self.channel.set_nonblocking(false).unwrap();
        assert!(
            matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a config change was sent: {got:?}"
        );
    }
}

/// Reports one dirty 4 MiB block on queue `q` and checks the answer and the hole.
fn report_4m(front: &mut Front, q: usize, gpa: u64, token: u64) {
    dirty(&front.ram, gpa, 4 * MIB);
    front.submit(q, &[Buffer::writable(gpa, 4 * MIB as u32)], token);
    let used = front.collect(q, 1);
    assert_eq!(
        used,
        [(token, 4 * MIB as u32)],
        "DEVICE_INIT_REPORTED used length"
    );
    assert_eq!(front.used_idx(q), 1);
    assert!(front.ram.is_hole(gpa, 4 * MIB).unwrap());
}

/// §1 of issue 10: `rmmod virtio_balloon; insmod virtio_balloon.ko` under User-Mode Linux.
#[test]
fn a_driver_reload_without_ring_enable_messages_is_served_through_the_new_kick_fd() {
    let d = Daemon::start("reload", FeatureOffer::default());
    let mut front = Front::connect(&d);
    let features = bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]);
    front.features(features, false);
    front.memory();
    front.rings(3);
    report_4m(&mut front, 2, 4 * MIB, 1);

    // The driver reloads: features again, fresh zeroed rings, new eventfds, no ring stopped.
    front.features(features, false);
    front.rings(3);
    report_4m(&mut front, 2, 12 * MIB, 2);
    // And again, the other queues too: every new kick fd is watched.
    front.features(features, false);
    front.rings(3);
    report_4m(&mut front, 2, 20 * MIB, 3);
    let m = d.handle.metrics().device;
    assert_eq!(m.reporting_requests, 3);
    assert_eq!(m.total_errors(), 0, "{:?}", m.errors);
}

/// With bit 30 acked: a kick fd replaced on an enabled ring (no GET_VRING_BASE, no
/// SET_VRING_ENABLE after it) is watched too.
#[test]
fn a_new_kick_fd_on_an_enabled_ring_is_watched() {
    let d = Daemon::start("rekick", FeatureOffer::default());
    let mut front = Front::connect(&d);
    let features = bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]);
    front.features(features, true);
    front.memory();
    front.rings(3);
    report_4m(&mut front, 2, 4 * MIB, 1);
    let kick = EventFd::new(0).unwrap();
    front.f.set_vring_kick(2, &kick).unwrap();
    front.rings[2].kick = kick;
    dirty(&front.ram, 12 * MIB, 4 * MIB);
    front.submit(2, &[Buffer::writable(12 * MIB, 4 * MIB as u32)], 2);
    assert_eq!(front.collect(2, 2), [(2, 4 * MIB as u32)]);
}

/// §2: a reboot without a disconnect, rings stopped and set up again from base 0.
#[test]
fn a_reboot_without_disconnect_starts_the_device_fresh() {
    let d = Daemon::start("reboot", FeatureOffer::default());
    let mut front = Front::connect(&d);
    let features = bits(&[VERSION_1, MUST_TELL_HOST, STATS_VQ]);
    front.features(features, true);
    front.memory();
    front.rings(3);
    let stats = stats_bytes(&[(4, 100 * MIB)]);
    front.ram.write(2 * MIB, &stats).unwrap();
    front.submit(2, &[Buffer::readable(2 * MIB, stats.len() as u32)], 100);
    wait_until("the stats buffer held", || {
        d.handle.status().holds_stats_buffer
    });
    front
        .f
        .set_config(4, VhostUserConfigFlags::WRITABLE, &16384u32.to_le_bytes())
        .unwrap();
    assert_eq!(front.config_u32(4), 16384);
    let before = d.handle.metrics().device;

    // Reboot: every ring stopped, features again, fresh rings from base 0.
    assert_eq!(front.stop(), [0, 0, 1]);
    front.features(features, true);
    assert_eq!(
        front.config_u32(4),
        16384,
        "a VMM's stop/start keeps the device"
    );
    front.rings(3);
    assert_eq!(
        front.config_u32(4),
        0,
        "actual starts from 0 for the new driver"
    );
    assert!(
        !d.handle.status().holds_stats_buffer,
        "the old boot's buffer is gone"
    );
    let after = d.handle.metrics().device;
    assert_eq!(
        after.stats_buffers, before.stats_buffers,
        "counters are kept"
    );

    // The new driver queues its stats buffer on head 0 of the new ring and requeues it
    // whenever it comes back. It must not come back until the host asks.
    front.submit(2, &[Buffer::readable(2 * MIB, stats.len() as u32)], 200);
    wait_until("the new stats buffer held", || {
        d.handle.status().holds_stats_buffer
    });
    let seq = d.handle.stats().map(|s| s.sequence);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(front.used_idx(2), 0, "a stats buffer came back unasked");
    let out = d.handle.request_stats(None);
    assert!(out.requested);
    let back = front.collect(2, 1);
    assert_eq!(back, [(200, 0)], "exactly the new buffer, once");
    front.submit(2, &[Buffer::readable(2 * MIB, stats.len() as u32)], 201);
    wait_until("fresh stats", || d.handle.stats().map(|s| s.sequence) > seq);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        front.used_idx(2),
        1,
        "one used element per made-available head"
    );
    assert_eq!(d.handle.metrics().device.total_errors(), 0);
}

/// A VMM's pause and resume (GET_VRING_BASE, then the saved bases) keeps the device's state.
#[test]
fn a_pause_and_resume_keeps_the_held_buffer_and_actual() {
    let d = Daemon::start("pause", FeatureOffer::default());
    let mut front = Front::connect(&d);
    let features = bits(&[VERSION_1, STATS_VQ]);
    front.features(features, true);
    front.memory();
    front.rings(3);
    let stats = stats_bytes(&[(4, 100 * MIB)]);
    front.ram.write(2 * MIB, &stats).unwrap();
    front.submit(2, &[Buffer::readable(2 * MIB, stats.len() as u32)], 7);
    wait_until("the stats buffer held", || {
        d.handle.status().holds_stats_buffer
    });
    front
        .f
        .set_config(4, VhostUserConfigFlags::WRITABLE, &256u32.to_le_bytes())
        .unwrap();
    let bases = front.stop();
    front.features(features, true);
    for (i, base) in bases.iter().enumerate() {
        front.f.set_vring_base(i, *base as u16).unwrap();
        front.f.set_vring_kick(i, &front.rings[i].kick).unwrap();
        front.f.set_vring_call(i, &front.rings[i].call).unwrap();
        front.f.set_vring_enable(i, true).unwrap();
    }
    assert_eq!(front.config_u32(4), 256);
    assert!(d.handle.status().holds_stats_buffer);
    assert!(d.handle.request_stats(None).requested);
    assert_eq!(front.collect(2, 1), [(7, 0)]);
}

/// RESET_DEVICE: a fresh device's guest-visible state, counters kept, and the device serves
/// the next driver.
#[test]
fn reset_device_gives_a_fresh_device_and_keeps_the_counters() {
    let d = Daemon::start("reset", FeatureOffer::default());
    let mut front = Front::connect(&d);
    let features = bits(&[VERSION_1, STATS_VQ, REPORTING, DEVICE_INIT_REPORTED]);
    front.features(features, true);
    front.memory();
    front.rings(4);
    let stats = stats_bytes(&[(4, 100 * MIB)]);
    front.ram.write(2 * MIB, &stats).unwrap();
    front.submit(2, &[Buffer::readable(2 * MIB, stats.len() as u32)], 1);
    report_4m(&mut front, 3, 4 * MIB, 2);
    wait_until("the stats buffer held", || {
        d.handle.status().holds_stats_buffer
    });
    front
        .f
        .set_config(4, VhostUserConfigFlags::WRITABLE, &64u32.to_le_bytes())
        .unwrap();
    front.f.reset_device().unwrap();
    let s = d.handle.status();
    assert!(!s.holds_stats_buffer);
    assert_eq!(s.negotiated_features, 0);
    assert_eq!(front.config_u32(4), 0);
    assert_eq!(
        d.handle.metrics().device.reporting_requests,
        1,
        "counters kept"
    );
    front.features(features, true);
    front.rings(4);
    report_4m(&mut front, 3, 12 * MIB, 3);
}

/// §3: config accesses outside the config space get an answer; the connection and the device
/// keep working and nothing in the config changes.
#[test]
fn config_accesses_outside_the_space_are_answered_and_the_connection_stays() {
    const GET_CONFIG: u32 = 24;
    const SET_CONFIG: u32 = 25;
    let d = Daemon::start("config", FeatureOffer::default());
    let mut front = Front::connect(&d);
    let features = bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]);
    front.features(features, false);
    front.memory();
    front.rings(3);
    d.handle.set_target_bytes(8 * MIB).unwrap();
    front.expect_config_change();
    let image = |front: &mut Front| {
        let (_, bytes) = front
            .f
            .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
            .unwrap();
        bytes
    };
    let before = image(&mut front);
    let config = |offset: u32, size: u32, data: usize| {
        let mut p = Vec::new();
        for w in [offset, size, 0] {
            p.extend_from_slice(&w.to_le_bytes());
        }
        p.resize(12 + data, 0xee);
        p
    };
    // Past the end of vhost's 4 KiB, overflowing, zero, oversized, a size that lies, and past
    // the balloon's own 16 bytes.
    let cases = [
        (0xffe, 4, 4),
        (u32::MAX - 1, 4, 4),
        (0, 0, 0),
        (0, 0x1000, 0x1000),
        (0, 8, 2),
        (16, 4, 4),
        (14, 4, 4),
    ];
    for (offset, size, data) in cases {
        let (code, flags, body) = front
            .raw_request(GET_CONFIG, 0x1, &config(offset, size, data), true)
            .unwrap();
        assert_eq!(code, GET_CONFIG, "{offset}+{size}");
        assert_ne!(flags & 0x4, 0, "a reply");
        assert_eq!(
            body.len(),
            12,
            "{offset}+{size}: an error reply has no data"
        );
        assert_eq!(&body[4..8], &0u32.to_le_bytes(), "size 0: the read failed");
        // Writes: with an ack asked for, an answer; nothing changes.
        let (code, _, ack) = front
            .raw_request(SET_CONFIG, 0x9, &config(offset, size, data), true)
            .unwrap();
        assert_eq!(code, SET_CONFIG);
        assert_eq!(ack.len(), 8);
        front.raw_request(SET_CONFIG, 0x1, &config(offset, size, data), false);
    }
    // A read inside the space still works, the config is as it was, and the device serves.
    assert_eq!(image(&mut front), before);
    assert_eq!(front.config_u32(0), 2048, "num_pages of the 8 MiB target");
    report_4m(&mut front, 2, 4 * MIB, 1);
    assert!(d.handle.status().connected);
}

/// §6: a target set while the frontend does not run the device (before its first ring, while
/// its rings are stopped) is acknowledged as pending and notified when a ring starts.
#[test]
fn a_config_change_while_the_device_is_not_running_is_held_until_it_runs() {
    let d = Daemon::start("pending", FeatureOffer::default());
    let mut front = Front::connect(&d);
    let features = bits(&[VERSION_1, MUST_TELL_HOST]);
    front.features(features, true);
    front.memory();
    // Prelaunch: connected, no ring started.
    let out = d.handle.set_target_bytes(16 * MIB).unwrap();
    assert_eq!(out.notification, Notification::Pending);
    front.no_config_change();
    front.rings(2);
    front.expect_config_change();
    assert_eq!(front.config_u32(0), 4096);

    // Paused: rings stopped.
    let bases = front.stop();
    let out = d.handle.set_target_bytes(32 * MIB).unwrap();
    assert_eq!(out.notification, Notification::Pending);
    std::thread::sleep(Duration::from_millis(100));
    front.no_config_change();
    // Resumed: the change goes out once.
    for (i, base) in bases.iter().enumerate() {
        front.f.set_vring_base(i, *base as u16).unwrap();
        front.f.set_vring_kick(i, &front.rings[i].kick).unwrap();
        front.f.set_vring_enable(i, true).unwrap();
    }
    front.expect_config_change();
    assert_eq!(front.config_u32(0), 8192);
    std::thread::sleep(Duration::from_millis(100));
    front.no_config_change();
    // Running: notified at once again (the frontend acks on its own thread, as QEMU's main
    // loop does while the operator's request waits for the ack).
    let acker = std::thread::spawn(move || {
        front.expect_config_change();
        front
    });
    let out = d.handle.set_target_bytes(0).unwrap();
    assert_eq!(out.notification, Notification::Acked);
    drop(acker.join().unwrap());
}
