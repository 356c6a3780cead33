//! The session model test (issue 10 §4): random valid sequences of vhost-user session events
//! drive the real daemon in this process over its socket (the frontend is written here:
//! `support/front.rs`, the vhost crate's `Frontend` over `prezero-guest` rings on a memfd),
//! and a small model says what the guest and the host must see after each event.
//!
//! Events: driver (re)initialisations the ways User-Mode Linux (no ring stopped, no
//! `SET_VRING_ENABLE`), a rebooting VMM (rings stopped with `GET_VRING_BASE`) and a resetting
//! frontend (`RESET_DEVICE` or `RESET_OWNER`, with or without bit 30) send them, each driver
//! with its own optional features (so with more or fewer queues than the one before), with
//! features negotiated again and the memory table set again or replaced by a new memfd; a VMM's pause and resume (saved bases, old or new kick
//! fds); kicks on the fds of rings that are gone; driver requests on every queue (inflate,
//! deflate, stats, free page reporting, `actual` written); host targets and stats requests.
//!
//! Checked after every event:
//! - every head made available is completed exactly once: the device's used index on every
//!   ring equals the model's count (no completion of a head that is not outstanding, which the
//!   driver's ring refuses as a bad used id, and none missing);
//! - a kick after any re-initialisation is served within the hang guard
//!   ([`HANG_GUARD`], 30 s);
//! - after a re-initialisation the guest-visible state is a fresh device's (`num_pages` the
//!   host's target, `actual` 0, no stats buffer held) while the counters are kept (they equal
//!   the model's totals over the whole connection);
//! - no false "zeroed" claim: a report answered with its full length is a hole in the memfd,
//!   and `zeroed_bytes` counts only those;
//! - no device error.
//!
//! `PREZERO_SESSION_CASES` (default 24 sessions) and `PREZERO_SESSION_OPS` (default 80, the
//! longest sequence) scale it, like the allocator's model test; the test prints the number of
//! events it ran. Long run: `PREZERO_SESSION_CASES=200 PREZERO_SESSION_OPS=400 cargo test
//! --release -p prezero-vhost --test session_model -- --nocapture`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use prezero_balloon::features::{
    DEVICE_INIT_REPORTED, MUST_TELL_HOST, REPORTING, STATS_VQ, VERSION_1,
};
use prezero_guest::{Buffer, SplitQueue};
use prezero_testkit::bits;
use prezero_testkit::rig::*;
use prezero_testkit::wait::*;
use prezero_vhost::{FeatureOffer, Notification};
use proptest::prelude::*;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use vmm_sys_util::eventfd::EventFd;

mod support;
use support::front::{Front, RAM};

/// How the previous driver's device ends before the next driver sets it up.
#[derive(Debug, Clone, Copy)]
enum End {
    /// User-Mode Linux's `rmmod; insmod`: nothing; features and fresh rings again.
    Reload,
    /// A VMM's reboot: every ring `SET_VRING_ENABLE 0` + `GET_VRING_BASE` (bit 30 only).
    StopRings,
    /// `RESET_DEVICE`.
    ResetDevice,
    /// `RESET_OWNER` (the older reset), then `SET_OWNER` again.
    ResetOwner,
}

#[derive(Debug, Clone)]
enum Op {
    /// A driver (re)initialisation: `end`, then `SET_FEATURES` (the session's driver's
    /// features; bit 30 as the session's frontend does it), the memory table again (`memory`: 0 no, 1 the same, 2 a new
    /// memfd; only while no ring runs), fresh rings from index 0 with new eventfds.
    /// `optional`: the new driver's optional features (a bit each: stats, reporting, zeroing,
    /// tell host), so a driver with fewer queues can follow one with more.
    Init { end: End, memory: u8, optional: u8 },
    /// A VMM's stop and `cont` (bit 30 only): rings stopped, features and memory table again,
    /// the saved bases, old or new kick fds, rings enabled.
    Pause { memory: bool, new_kicks: bool },
    /// An inflate chain of these page indexes (deduplicated against the balloon).
    Inflate(Vec<u16>),
    /// A deflate chain of up to this many of the balloon's pages.
    Deflate(u8),
    /// The driver writes `actual` (its balloon's size).
    WriteActual,
    /// A 4 MiB report of block `n` (dirtied first).
    Report(u8),
    /// The driver queues a stats buffer if it has none with the device.
    StatsBuffer,
    /// The host asks for fresh stats; the driver requeues the buffer it gets back.
    HostStats,
    /// The host sets a target (pages).
    HostTarget(u16),
    /// A kick on the fd of a ring that is gone.
    OldKick(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let end = prop_oneof![
        Just(End::Reload),
        Just(End::StopRings),
        Just(End::ResetDevice),
        Just(End::ResetOwner)
    ];
    prop_oneof![
        2 => (end, 0u8..3, any::<u8>()).prop_map(|(end, memory, optional)| Op::Init { end, memory, optional }),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(memory, new_kicks)| Op::Pause { memory, new_kicks }),
        4 => proptest::collection::vec(any::<u16>(), 1..64).prop_map(Op::Inflate),
        3 => any::<u8>().prop_map(Op::Deflate),
        2 => Just(Op::WriteActual),
        3 => (1u8..7).prop_map(Op::Report),
        2 => Just(Op::StatsBuffer),
        2 => Just(Op::HostStats),
        2 => (0u16..4096).prop_map(Op::HostTarget),
        1 => any::<u8>().prop_map(Op::OldKick),
    ]
}

/// Where the driver keeps its buffers (below the 4 MiB blocks it reports and inflates).
const INFLATE_PFNS: u64 = MIB;
const DEFLATE_PFNS: u64 = MIB + 64 * 1024;
const STATS: u64 = 2 * MIB;
/// Pages the balloon takes: 4..28 MiB, where the reported blocks are too.
const BALLOON_FIRST_PFN: u32 = (4 * MIB / PAGE) as u32;
const BALLOON_PAGES: u32 = (24 * MIB / PAGE) as u32;

/// The device's counters the model keeps (over the whole connection).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counters {
    inflate_requests: u64,
    deflate_requests: u64,
    inflated_pages: u64,
    deflated_pages: u64,
    reporting_requests: u64,
    reported_bytes: u64,
    zeroed_bytes: u64,
    stats_buffers: u64,
    stats_requests: u64,
}

/// The model: what the driver did and what the device must show.
struct Model {
    features: u64,
    /// Ring indexes of the optional queues (dense roles).
    stats: Option<usize>,
    reporting: Option<usize>,
    /// Per ring: heads made available (all taken by the device: the model waits for it).
    available: Vec<u16>,
    /// Per ring index: where the device left off, over drivers (`Incarnations` in
    /// `backend.rs`): cleared when a new driver is found or the device is reset.
    left: [u16; 8],
    /// Per ring: heads completed.
    used: Vec<u16>,
    /// The stats head the device holds.
    held: Option<u64>,
    /// This driver's balloon (PFNs).
    balloon: Vec<u32>,
    target: u32,
    actual: u32,
    counters: Counters,
    token: u64,
    old_kicks: Vec<EventFd>,
}

impl Model {
    fn new() -> Model {
        Model {
            features: 0,
            stats: None,
            reporting: None,
            available: Vec::new(),
            left: [0; 8],
            used: Vec::new(),
            held: None,
            balloon: Vec::new(),
            target: 0,
            actual: 0,
            counters: Counters::default(),
            token: 0,
            old_kicks: Vec::new(),
        }
    }

    fn token(&mut self) -> u64 {
        self.token += 1;
        self.token
    }

    fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// Whether the device took a buffer from one of the first `rings` rings since the last
    /// new driver or reset: only then does a stopped ring set up again from index 0 tell a
    /// new driver from a resumed one (`Incarnations` in `backend.rs`).
    fn took_buffers(&self, rings: usize) -> bool {
        self.left.iter().take(rings).any(|&n| n != 0)
    }
}

/// One session: a daemon, a frontend, the model.
struct Session {
    d: Daemon,
    front: Front,
    m: Model,
    config_changes: std::sync::Arc<AtomicU64>,
    ops: u64,
    /// Whether the frontend acks `VHOST_USER_F_PROTOCOL_FEATURES` (QEMU) or not (User-Mode
    /// Linux): one frontend does the same for every driver.
    bit30: bool,
}

/// Acks every config-change message on the backend request channel (as a VMM's main loop
/// does), counting them, until the daemon closes it.
fn acker(channel: UnixStream, count: std::sync::Arc<AtomicU64>) {
    let mut channel = channel;
    channel.set_read_timeout(None).unwrap();
    loop {
        let mut h = [0u8; 12];
        if channel.read_exact(&mut h).is_err() {
            return;
        }
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let mut body = vec![0u8; w(8) as usize];
        if channel.read_exact(&mut body).is_err() {
            return;
        }
        assert_eq!(w(0), 2, "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG");
        count.fetch_add(1, Ordering::Relaxed);
        if w(4) & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
            let mut ack = Vec::new();
            for v in [w(0), 0x5, 8] {
                ack.extend_from_slice(&v.to_le_bytes());
            }
            ack.extend_from_slice(&0u64.to_le_bytes());
            if channel.write_all(&ack).is_err() {
                return;
            }
        }
    }
}

impl Session {
    fn start(bit30: bool, optional: u8) -> Session {
        let d = Daemon::start("model", FeatureOffer::default());
        let front = Front::connect(&d);
        let config_changes = std::sync::Arc::new(AtomicU64::new(0));
        let channel = front.channel.try_clone().unwrap();
        let count = config_changes.clone();
        std::thread::spawn(move || acker(channel, count));
        let mut s = Session {
            d,
            front,
            m: Model::new(),
            config_changes,
            ops: 0,
            bit30,
        };
        // The first driver: a VMM's first boot.
        s.apply(&Op::Init {
            end: End::Reload,
            memory: 1,
            optional,
        });
        s
    }

    fn apply(&mut self, op: &Op) {
        self.ops += 1;
        if std::env::var_os("PREZERO_SESSION_TRACE").is_some() {
            eprintln!("event {}: {op:?}", self.ops);
        }
        match op {
            Op::Init {
                end,
                memory,
                optional,
            } => self.init(*end, *memory, *optional),
            Op::Pause { memory, new_kicks } => self.pause(*memory, *new_kicks),
            Op::Inflate(pages) => {
                let mut pfns: Vec<u32> = Vec::new();
                for p in pages {
                    let pfn = BALLOON_FIRST_PFN + u32::from(*p) % BALLOON_PAGES;
                    if !self.m.balloon.contains(&pfn) && !pfns.contains(&pfn) {
                        pfns.push(pfn);
                    }
                }
                if pfns.is_empty() {
                    return;
                }
                self.pfn_chain(0, INFLATE_PFNS, &pfns);
                self.m.balloon.extend(&pfns);
                self.m.counters.inflate_requests += 1;
                self.m.counters.inflated_pages += pfns.len() as u64;
            }
            Op::Deflate(n) => {
                let n = usize::from(*n).min(self.m.balloon.len());
                if n == 0 {
                    return;
                }
                let pfns: Vec<u32> = self.m.balloon.drain(..n).collect();
                self.pfn_chain(1, DEFLATE_PFNS, &pfns);
                self.m.counters.deflate_requests += 1;
                self.m.counters.deflated_pages += pfns.len() as u64;
            }
            Op::WriteActual => {
                let pages = self.m.balloon.len() as u32;
                self.front
                    .f
                    .set_config(4, VhostUserConfigFlags::WRITABLE, &pages.to_le_bytes())
                    .unwrap();
                self.m.actual = pages;
            }
            Op::Report(block) => self.report(u64::from(*block) * 4 * MIB),
            Op::StatsBuffer => {
                if self.m.held.is_none() {
                    self.stats_buffer();
                }
            }
            Op::HostStats => self.host_stats(),
            Op::HostTarget(pages) => {
                let out = self.d.handle.set_target_pages(u32::from(*pages)).unwrap();
                let want = if u32::from(*pages) == self.m.target {
                    Notification::Unchanged
                } else {
                    Notification::Acked
                };
                assert_eq!(
                    out.notification, want,
                    "the rings run: a change is sent and acked"
                );
                self.m.target = u32::from(*pages);
            }
            Op::OldKick(i) => {
                if !self.m.old_kicks.is_empty() {
                    let n = self.m.old_kicks.len();
                    self.m.old_kicks[usize::from(*i) % n].write(1).unwrap();
                }
            }
        }
        self.check(op);
    }

    fn init(&mut self, end: End, memory: u8, optional: u8) {
        let bit30 = self.bit30;
        // `stopped`: every ring stopped with GET_VRING_BASE (the library stops watching its
        // kick fd); `quiet`: no ring runs (stopped, or reset).
        let (mut stopped, mut quiet) = (false, false);
        match end {
            End::Reload => {}
            // Only a VMM (bit 30) stops rings; User-Mode Linux never does.
            End::StopRings if self.front.bit30 => {
                let bases = self.front.stop();
                self.check_bases(&bases);
                (stopped, quiet) = (true, true);
            }
            End::StopRings => {}
            End::ResetDevice => {
                self.front.f.reset_device().unwrap();
                quiet = true;
            }
            End::ResetOwner => {
                self.front.f.reset_owner().unwrap();
                quiet = true;
            }
        }
        let choose = |i: u8, bit: u32| {
            if optional & (1 << i) != 0 {
                1u64 << bit
            } else {
                0
            }
        };
        let mut features = bits(&[VERSION_1]) | choose(0, STATS_VQ) | choose(1, REPORTING);
        features |= choose(3, MUST_TELL_HOST);
        if features & (1 << REPORTING) != 0 {
            features |= choose(2, DEVICE_INIT_REPORTED);
        }
        self.front.features(features, bit30);
        // A new memory table only while no ring of the old driver runs: the old rings'
        // addresses would point into the new memory.
        let first = self.front.rings.is_empty();
        if memory == 2 && (quiet || first) {
            self.front.ram = ram(RAM);
            self.front.memory();
        } else if memory >= 1 || first {
            self.front.memory();
        }
        // The old rings' kick fds: the frontend may keep and kick them (QEMU keeps its host
        // notifiers; a frontend that replaces a running ring's kick fd need not close the old
        // one); none of those kicks may reach the new driver's rings.
        for r in self.front.rings.drain(..) {
            self.m.old_kicks.push(r.kick);
        }
        if self.m.old_kicks.len() > 16 {
            self.m.old_kicks.drain(..8);
        }
        let stats = features & (1 << STATS_VQ) != 0;
        let reporting = features & (1 << REPORTING) != 0;
        let n = 2 + usize::from(stats) + usize::from(reporting);
        self.front.rings(n);
        // A new driver: after a reset; after a ring set up again while it ran (no stop: a
        // reload); or a stopped ring set up again from index 0 after the device took buffers
        // from it (`Incarnations` in `backend.rs`).
        let fresh =
            matches!(end, End::ResetDevice | End::ResetOwner) || !stopped || self.m.took_buffers(n);

        let m = &mut self.m;
        m.features = features;
        m.stats = stats.then_some(2);
        m.reporting = reporting.then_some(2 + usize::from(stats));
        if fresh {
            m.actual = 0;
            m.held = None;
            m.left = [0; 8];
        }
        if !stats {
            // Features without a stats queue: the device holds no stats buffer.
            m.held = None;
        }
        m.available = vec![0; n];
        m.used = vec![0; n];
        m.balloon.clear();
    }

    fn pause(&mut self, memory: bool, new_kicks: bool) {
        if !self.front.bit30 {
            return;
        }
        let bases = self.front.stop();
        self.check_bases(&bases);
        let features = self.m.features;
        self.front.features(features, true);
        if memory {
            self.front.memory();
        }
        for (i, base) in bases.iter().enumerate() {
            self.front.f.set_vring_base(i, *base as u16).unwrap();
            if new_kicks {
                let kick = EventFd::new(0).unwrap();
                let old = std::mem::replace(&mut self.front.rings[i].kick, kick);
                self.m.old_kicks.push(old);
            }
            let r = &self.front.rings[i];
            self.front.f.set_vring_kick(i, &r.kick).unwrap();
            self.front.f.set_vring_call(i, &r.call).unwrap();
            self.front.f.set_vring_enable(i, true).unwrap();
        }
    }

    /// `GET_VRING_BASE` answers where the device is: it took every head made available.
    fn check_bases(&self, bases: &[u32]) {
        let want: Vec<u32> = self.m.available.iter().map(|&n| u32::from(n)).collect();
        assert_eq!(bases, want, "GET_VRING_BASE: the next available index");
    }

    /// Makes one chain available on ring `q`, kicks, and waits for it to be completed.
    fn one_chain(&mut self, q: usize, chain: &[Buffer]) -> u32 {
        let token = self.m.token();
        self.front.submit(q, chain, token);
        self.m.available[q] += 1;
        self.m.left[q] = self.m.available[q];
        let want = usize::from(self.m.used[q]) + 1;
        let got = self.front.collect(q, want);
        self.m.used[q] += 1;
        assert_eq!(
            got.len(),
            1,
            "ring {q}: one completion for one head: {got:?}"
        );
        assert_eq!(got[0].0, token, "ring {q}: the head made available");
        got[0].1
    }

    fn pfn_chain(&mut self, q: usize, gpa: u64, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.front.ram.write(gpa, &bytes).unwrap();
        let len = self.one_chain(q, &[Buffer::readable(gpa, bytes.len() as u32)]);
        assert_eq!(len, 0, "a PFN chain has nothing the device writes");
    }

    fn report(&mut self, gpa: u64) {
        let Some(q) = self.m.reporting else { return };
        dirty(&self.front.ram, gpa, 4 * MIB);
        let len = self.one_chain(q, &[Buffer::writable(gpa, 4 * MIB as u32)]);
        self.m.counters.reporting_requests += 1;
        self.m.counters.reported_bytes += 4 * MIB;
        if len != 0 {
            assert!(
                self.front.ram.is_hole(gpa, 4 * MIB).unwrap(),
                "a false \"zeroed\" claim: used length {len} for memory still there"
            );
            self.m.counters.zeroed_bytes += u64::from(len);
        }
        let zeroing = self.m.has(DEVICE_INIT_REPORTED);
        assert_eq!(
            len,
            if zeroing { 4 * MIB as u32 } else { 0 },
            "the used length of a report (DEVICE_INIT_REPORTED: {zeroing})"
        );
    }

    fn stats_buffer(&mut self) {
        let Some(q) = self.m.stats else { return };
        let stats = stats_bytes(&[(4, 100 * MIB), (5, 200 * MIB)]);
        self.front.ram.write(STATS, &stats).unwrap();
        let token = self.m.token();
        self.front
            .submit(q, &[Buffer::readable(STATS, stats.len() as u32)], token);
        self.m.available[q] += 1;
        self.m.left[q] = self.m.available[q];
        self.m.held = Some(token);
        self.m.counters.stats_buffers += 1;
        let d = &self.d;
        wait_until("the device to hold the stats buffer", || {
            d.handle.status().holds_stats_buffer
                && d.handle.metrics().device.stats_buffers == self.m.counters.stats_buffers
        });
    }

    fn host_stats(&mut self) {
        let out = self.d.handle.request_stats(None);
        let Some(token) = self.m.held.take() else {
            assert!(
                !out.requested,
                "no buffer held, yet a stats request: {out:?}"
            );
            return;
        };
        assert!(out.requested, "a buffer is held: {out:?}");
        self.m.counters.stats_requests += 1;
        let q = self.m.stats.unwrap();
        let want = usize::from(self.m.used[q]) + 1;
        let got = self.front.collect(q, want);
        self.m.used[q] += 1;
        assert_eq!(got, [(token, 0)], "the held stats buffer, once");
        // Linux requeues it at once.
        self.stats_buffer();
    }

    /// The device against the model after every event.
    fn check(&mut self, op: &Op) {
        // No head completed that the model does not expect.
        for q in 0..self.front.rings.len() {
            assert_eq!(
                self.front.used_idx(q),
                self.m.used[q],
                "ring {q}: used index after {op:?}"
            );
        }
        let (_, config) = self
            .front
            .f
            .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
            .unwrap();
        let word = |i: usize| u32::from_le_bytes(config[i..i + 4].try_into().unwrap());
        assert_eq!(
            (word(0), word(4)),
            (self.m.target, self.m.actual),
            "config (num_pages, actual) after {op:?}"
        );
        let status = self.d.handle.status();
        assert_eq!(
            status.holds_stats_buffer,
            self.m.held.is_some(),
            "a stats buffer held after {op:?}"
        );
        assert_eq!(
            status.negotiated_features & !(1 << 30),
            self.m.features,
            "negotiated features"
        );
        let m = self.d.handle.metrics().device;
        let got = Counters {
            inflate_requests: m.inflate_requests,
            deflate_requests: m.deflate_requests,
            inflated_pages: m.inflated_pages,
            deflated_pages: m.deflated_pages,
            reporting_requests: m.reporting_requests,
            reported_bytes: m.reported_bytes,
            zeroed_bytes: m.zeroed_bytes,
            stats_buffers: m.stats_buffers,
            stats_requests: m.stats_requests,
        };
        assert_eq!(got, self.m.counters, "counters after {op:?}");
        assert_eq!(
            m.total_errors(),
            0,
            "device errors after {op:?}: {:?}",
            m.errors
        );
    }

    /// The end of a session: a last kick on every ring is served and nothing came back late.
    fn finish(mut self) -> u64 {
        self.apply(&Op::Inflate(vec![1, 2, 3]));
        self.apply(&Op::Report(1));
        std::thread::sleep(std::time::Duration::from_millis(20));
        self.check(&Op::OldKick(0));
        assert!(self.d.handle.status().connected);
        eprintln!(
            "session: {} events, {} config changes acked",
            self.ops,
            self.config_changes.load(Ordering::Relaxed)
        );
        self.ops
    }
}

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

static EVENTS: AtomicU64 = AtomicU64::new(0);

proptest! {
    #![proptest_config(ProptestConfig {
        cases: env("PREZERO_SESSION_CASES", 24),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_device_follows_the_session_model(
        bit30 in any::<bool>(),
        optional in any::<u8>(),
        ops in proptest::collection::vec(op(), 1..=env("PREZERO_SESSION_OPS", 80) as usize)
    ) {
        let mut s = Session::start(bit30, optional);
        for op in &ops {
            s.apply(op);
        }
        let n = s.finish();
        let total = EVENTS.fetch_add(n, Ordering::Relaxed) + n;
        eprintln!("session model: {total} events so far");
    }
}

/// Found by the model: a kick fd replaced on a running ring (User-Mode Linux's driver reload,
/// relayed as `relay/rings.rs` describes) stays in `vhost-user-backend`'s epoll set while the
/// frontend keeps the old eventfd open (epoll forgets an fd only when every fd of its open file
/// description is closed, the frontend's included); a kick on it makes the worker read the
/// ring's *current* kick fd, and the device stopped serving the ring (the connection stopped
/// answering). Fixed: the relay stops the ring (`GET_VRING_BASE`) before forwarding its new
/// kick fd, which unregisters the old one, with or without bit 30 (`relay/rings.rs`); the
/// model now kicks every replaced fd (`Op::OldKick`).
#[test]
fn a_kick_on_a_replaced_kick_fd_still_open_is_harmless() {
    let mut s = Session::start(true, 0);
    let old: Vec<EventFd> = s
        .front
        .rings
        .iter()
        .map(|r| r.kick.try_clone().unwrap())
        .collect();
    s.apply(&Op::Init {
        end: End::Reload,
        memory: 0,
        optional: 0,
    });
    s.apply(&Op::Inflate(vec![1, 2, 3]));
    old[0].write(1).unwrap();
    s.apply(&Op::Inflate(vec![4, 5, 6]));
    s.apply(&Op::Deflate(6));
    s.finish();
}

/// The queue memory the model's rings take must stay above the reported blocks.
#[test]
fn the_rings_sit_above_the_driver_buffers() {
    let req = SplitQueue::<u64>::memory_requirement(support::front::RING_SIZE).unwrap();
    assert!(RAM - 4 * req.bytes.next_multiple_of(PAGE) >= 28 * MIB);
}
