//! The in-process rig of the daemon's tests: a [`Daemon`] (`prezero-vhost` spawned in this
//! process, in its own [`Scratch`]) and a [`Guest`] driving it through `prezero-guest`'s
//! vhost-user frontend over a real memfd.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use prezero_guest::{Buffer, GuestRam, SplitQueue, Used, VhostUserTransport};
use prezero_vhost::{spawn, DaemonHandle, FeatureOffer, ServeOptions};

use crate::scratch::Scratch;
use crate::wait::{wait_until, HANG_GUARD};

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// The guest's page size.
pub const PAGE: u64 = 4096;

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

/// Guest RAM of `size` bytes, shared.
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
    /// Connects, negotiates `features`, shares `ram` and starts `n` queues of [`QUEUE_SIZE`]
    /// (rings at the top of RAM).
    pub fn connect(path: &std::path::Path, ram: Arc<GuestRam>, features: u64, n: u16) -> Guest {
        Self::connect_sized(path, ram, features, QUEUE_SIZE, n)
    }

    /// [`connect`](Self::connect) with queues of `size`.
    pub fn connect_sized(
        path: &std::path::Path,
        ram: Arc<GuestRam>,
        features: u64,
        size: u16,
        n: u16,
    ) -> Guest {
        let mut transport = VhostUserTransport::connect(path, n).unwrap();
        let features = transport.negotiate(features).unwrap();
        transport.set_memory(&ram).unwrap();
        let req = SplitQueue::<u64>::memory_requirement(size).unwrap();
        let mut queues = Vec::new();
        for i in 0..n {
            // Rings at the top of RAM, as far from gpa 0 as they can be.
            let gpa = ram.size() - u64::from(i + 1) * req.bytes.next_multiple_of(PAGE);
            assert_eq!(gpa % req.align, 0);
            let q = SplitQueue::new(ram.clone(), size, gpa, transport.event_idx()).unwrap();
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
