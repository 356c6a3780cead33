//! The daemon across re-initialisations on one connection, driven by a frontend written here
//! (the vhost crate's `Frontend` plus raw messages), the way User-Mode Linux and QEMU send
//! them: a driver reload without `SET_VRING_ENABLE`, a reboot with rings stopped and started
//! again, `RESET_DEVICE`, config accesses outside the config space, and a config change while
//! the frontend does not run the device.

use std::time::Duration;

use prezero_balloon::features::{
    DEVICE_INIT_REPORTED, MUST_TELL_HOST, REPORTING, STATS_VQ, VERSION_1,
};
use prezero_guest::Buffer;
use prezero_testkit::bits;
use prezero_testkit::rig::*;
use prezero_testkit::wait::*;
use prezero_vhost::{FeatureOffer, Notification};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use vmm_sys_util::eventfd::EventFd;

mod support;
use support::front::Front;

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

/// A daemon and a frontend that negotiated `features` (bit 30 as told) over `rings` fresh
/// rings in one memory region.
fn set_up(name: &str, features: u64, bit30: bool, rings: usize) -> (Daemon, Front) {
    let d = Daemon::start(name, FeatureOffer::default());
    let mut front = Front::connect(&d);
    front.features(features, bit30);
    front.memory();
    front.rings(rings);
    (d, front)
}

/// The device served `reports` reports in all and counted no error.
fn assert_clean(d: &Daemon, reports: u64) {
    let m = d.handle.metrics().device;
    assert_eq!(m.reporting_requests, reports);
    assert_eq!(m.total_errors(), 0, "{:?}", m.errors);
}

/// The memory of the rings `front` had: freed by the driver and reused (zeroed here), as it is
/// after a reset or a driver reload.
fn free_old_rings(front: &mut Front) {
    for r in front.rings.drain(..) {
        let l = r.queue.layout();
        front.ram.fill(l.avail, 4, 0).unwrap();
        front.ram.fill(l.used, 4, 0).unwrap();
    }
}

/// `RESET_DEVICE` from a frontend that did not ack bit 30 (no `SET_VRING_ENABLE` ever): the
/// next `SET_FEATURES` enables every ring (vhost-user "Ring states"), which must not bring
/// back the reset rings: their memory is no longer theirs.
#[test]
fn reset_device_without_bit_30_leaves_the_old_rings_alone() {
    let features = bits(&[VERSION_1, STATS_VQ, REPORTING, DEVICE_INIT_REPORTED]);
    let (d, mut front) = set_up("reset-nobit30", features, false, 4);
    report_4m(&mut front, 3, 4 * MIB, 1);
    front.f.reset_device().unwrap();
    free_old_rings(&mut front);
    front.features(features, false);
    front.rings(4);
    report_4m(&mut front, 3, 12 * MIB, 2);
    assert_clean(&d, 2);
}

/// `RESET_OWNER` (the older reset, which `vhost-user-backend` passes to no backend and which
/// stops no ring in it): the old rings are left alone, a kick on an old kick fd the frontend
/// keeps reaches nothing, and the next driver is served.
#[test]
fn reset_owner_stops_the_old_rings() {
    let features = bits(&[VERSION_1, STATS_VQ, REPORTING, DEVICE_INIT_REPORTED]);
    let (d, mut front) = set_up("reset-owner", features, true, 4);
    report_4m(&mut front, 3, 4 * MIB, 1);
    front
        .f
        .set_config(4, VhostUserConfigFlags::WRITABLE, &64u32.to_le_bytes())
        .unwrap();
    let old: Vec<EventFd> = front
        .rings
        .iter()
        .map(|r| r.kick.try_clone().unwrap())
        .collect();
    front.f.reset_owner().unwrap();
    assert_eq!(front.config_u32(4), 0, "a fresh device");
    free_old_rings(&mut front);
    for k in &old {
        k.write(1).unwrap();
    }
    front.features(features, true);
    front.rings(4);
    for k in &old {
        k.write(1).unwrap();
    }
    report_4m(&mut front, 3, 12 * MIB, 2);
    assert_clean(&d, 2);
}

/// A reloaded driver with fewer queues than the one before (no stats, no reporting after a
/// driver that had both), under User-Mode Linux (no bit 30, no ring stopped): the rings it
/// does not set up again are the old driver's, and left alone even when their memory is
/// reused and their old kick fds kicked.
#[test]
fn a_driver_with_fewer_queues_leaves_the_old_rings_alone() {
    let features = bits(&[VERSION_1, STATS_VQ, REPORTING, DEVICE_INIT_REPORTED]);
    let (d, mut front) = set_up("fewer-queues", features, false, 4);
    report_4m(&mut front, 3, 4 * MIB, 1);
    let old: Vec<EventFd> = front
        .rings
        .iter()
        .map(|r| r.kick.try_clone().unwrap())
        .collect();
    // The reload: features again, two fresh rings; the old rings' memory is reused.
    front.features(bits(&[VERSION_1]), false);
    free_old_rings(&mut front);
    front.rings(2);
    for k in &old {
        k.write(1).unwrap();
    }
    front.ram.write(2 * MIB, &[0u8; 8]).unwrap();
    front.submit(0, &[Buffer::readable(2 * MIB, 4)], 7);
    assert_eq!(front.collect(0, 1), [(7, 0)]);
    std::thread::sleep(Duration::from_millis(50));
    assert_clean(&d, 1);
}

/// Without bit 30, a kick fd replaced on a running ring that the frontend keeps open: a kick
/// on it must not reach the ring (the library would read the ring's new, empty kick fd and
/// block its worker), and the ring is served through the new fd.
#[test]
fn without_bit_30_a_replaced_kick_fd_still_open_is_not_watched() {
    let features = bits(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]);
    let (d, mut front) = set_up("old-kick-nobit30", features, false, 3);
    report_4m(&mut front, 2, 4 * MIB, 1);
    let old = front.rings[2].kick.try_clone().unwrap();
    let kick = EventFd::new(0).unwrap();
    front.f.set_vring_kick(2, &kick).unwrap();
    front.rings[2].kick = kick;
    old.write(1).unwrap();
    dirty(&front.ram, 12 * MIB, 4 * MIB);
    front.submit(2, &[Buffer::writable(12 * MIB, 4 * MIB as u32)], 2);
    assert_eq!(front.collect(2, 2), [(2, 4 * MIB as u32)]);
    old.write(1).unwrap();
    dirty(&front.ram, 20 * MIB, 4 * MIB);
    front.submit(2, &[Buffer::writable(20 * MIB, 4 * MIB as u32)], 3);
    assert_eq!(front.collect(2, 3), [(3, 4 * MIB as u32)]);
    assert_clean(&d, 3);
}
