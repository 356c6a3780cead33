//! Shared by the daemon's integration tests: scratch directories, a daemon in this process,
//! and a guest driving it through `prezero-guest`'s vhost-user frontend over a real memfd.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prezero_guest::{Buffer, GuestRam, SplitQueue, Used, VhostUserTransport};
use prezero_vhost::{spawn, DaemonHandle, FeatureOffer, ServeOptions};

/// Hang guard for anything a test waits on (never a measurement).
pub const HANG_GUARD: Duration = Duration::from_secs(30);
pub const MIB: u64 = 1 << 20;
pub const PAGE: u64 = 4096;

pub const VERSION_1: u64 = 1 << 32;
pub const EVENT_IDX: u64 = 1 << 29;
pub const INDIRECT_DESC: u64 = 1 << 28;
pub const MUST_TELL_HOST: u64 = 1 << 0;
pub const STATS_VQ: u64 = 1 << 1;
pub const DEFLATE_ON_OOM: u64 = 1 << 2;
pub const PAGE_POISON: u64 = 1 << 4;
pub const REPORTING: u64 = 1 << 5;
pub const DEVICE_INIT_REPORTED: u64 = 1 << 6;
pub const DEVICE_INIT_ON_INFLATE: u64 = 1 << 7;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "pzv-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn socket(&self) -> PathBuf {
        self.0.join("balloon.sock")
    }

    pub fn control(&self) -> PathBuf {
        self.0.join("balloon.ctl")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon with a control socket, offering `offer`.
pub struct Daemon {
    pub handle: DaemonHandle,
    pub scratch: Scratch,
}

impl Daemon {
    pub fn start(tag: &str, offer: FeatureOffer) -> Daemon {
        let scratch = Scratch::new(tag);
        let opts = ServeOptions::new(scratch.socket())
            .with_control(scratch.control())
            .with_offer(offer);
        let handle = spawn(opts).unwrap();
        Daemon { handle, scratch }
    }

    pub fn socket(&self) -> PathBuf {
        self.scratch.socket()
    }

    pub fn control(&self) -> PathBuf {
        self.scratch.control()
    }

    /// Waits until the daemon has finished `n` connections (teardown included).
    pub fn wait_disconnections(&self, n: u64) {
        wait_until("the daemon to finish the connection", || {
            self.handle.metrics().daemon.disconnections >= n
        });
    }
}

pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn ram(size: u64) -> Arc<GuestRam> {
    Arc::new(GuestRam::new(size).unwrap())
}

/// A driver's bring-up through the vhost-user frontend.
pub struct Guest {
    pub transport: VhostUserTransport,
    pub ram: Arc<GuestRam>,
    pub queues: Vec<SplitQueue<u64>>,
    pub features: u64,
}

pub const QUEUE_SIZE: u16 = 64;

impl Guest {
    /// Connects, negotiates `features`, shares `ram` and starts `n` queues (rings at the top
    /// of RAM).
    pub fn connect(path: &std::path::Path, ram: Arc<GuestRam>, features: u64, n: u16) -> Guest {
        let mut transport = VhostUserTransport::connect(path, n).unwrap();
        let features = transport.negotiate(features).unwrap();
        transport.set_memory(&ram).unwrap();
        let req = SplitQueue::<u64>::memory_requirement(QUEUE_SIZE).unwrap();
        let mut queues = Vec::new();
        for i in 0..n {
            let gpa = ram.size() - u64::from(i + 1) * req.bytes.next_multiple_of(PAGE);
            let q = SplitQueue::new(ram.clone(), QUEUE_SIZE, gpa, transport.event_idx()).unwrap();
            transport.setup_queue(i, &q).unwrap();
            queues.push(q);
        }
        Guest {
            transport,
            ram,
            queues,
            features,
        }
    }

    /// Adds a chain on queue `q` and kicks if the device asks for it.
    pub fn submit(&mut self, q: u16, chain: &[Buffer], token: u64) {
        let queue = &mut self.queues[usize::from(q)];
        queue.add(chain, token).unwrap();
        if queue.should_notify().unwrap() {
            self.transport.kick(q).unwrap();
        }
    }

    /// Pops used chains of queue `q` until `want` came back, waiting for calls.
    pub fn collect(&mut self, q: u16, want: usize) -> Vec<Used<u64>> {
        let mut out = Vec::new();
        let start = Instant::now();
        loop {
            while let Some(u) = self.queues[usize::from(q)].pop_used().unwrap() {
                out.push(u);
            }
            if out.len() >= want {
                return out;
            }
            assert!(
                start.elapsed() < HANG_GUARD,
                "the device never completed the chains"
            );
            self.transport.wait_call(q, Some(HANG_GUARD)).unwrap();
        }
    }
}

/// Dirties `len` bytes at `gpa` so the memfd really holds them.
pub fn dirty(ram: &GuestRam, gpa: u64, len: u64) {
    ram.fill(gpa, len, 0x5a).unwrap();
    assert!(!ram.is_hole(gpa, len).unwrap());
}

/// A stats buffer's bytes: 10-byte entries (le16 tag, le64 value).
pub fn stats_bytes(entries: &[(u16, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}
