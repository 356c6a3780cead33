//! [`TestBackend`]: a tiny vhost-user backend for testing the guest transport for real: a rust-vmm
//! `vhost-user-backend` daemon serving a test device over a Unix socket, mapping the guest's
//! memfd and processing its rings with `virtio-queue`.
//!
//! The test device, for each chain, fills every device-writable buffer with one byte (the first
//! byte of the chain's first readable buffer, or a default) and returns the written length.
//! It serves a small config space and offers `CONFIG`, `BACKEND_REQ` and `MQ`.
//!
//! vhost 0.18's backend-side `Backend` cannot send `CONFIG_CHANGE_MSG`, so, as in the daemon,
//! the daemon's own relay ([`prezero_vhost::relay::Relay`]) sits between the frontend and the
//! test daemon: it forwards every message with its fds, sends config-change notifications on
//! the backend request channel, and can cut the connection, which is what the frontend sees
//! when a backend dies.

use std::fs::File;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prezero_balloon::features;
use prezero_vhost::relay::{channel::BackendChannel, Relay};
use prezero_vhost::{ConfigNotifier, Notification};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueOwnedT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::bits;
use crate::scratch::Scratch;
use crate::wait::{join_with_guard, wait_for_path, HANG_GUARD};

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = bits(&[features::VERSION_1]);
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = bits(&[features::RING_EVENT_IDX]);
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// Device-specific bits the test device offers (the balloon's 0, 1, 5, 6).
pub const DEVICE_BITS: u64 = bits(&[
    features::MUST_TELL_HOST,
    features::STATS_VQ,
    features::REPORTING,
    features::DEVICE_INIT_REPORTED,
]);
pub const DEFAULT_FILL: u8 = 0xa5;
pub const CONFIG_SIZE: usize = 16;

/// What the device does with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fill the writable buffers, return the written length, call.
    Serve,
    /// Write a marker byte (0xee) at the start of the first writable buffer and never complete.
    Stall,
    /// Cut the connection as soon as a chain arrives, like a backend crashing mid-request.
    Die,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub num_queues: usize,
    pub max_queue_size: usize,
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
    pub mode: Mode,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            num_queues: 2,
            max_queue_size: 256,
            features: VIRTIO_F_VERSION_1
                | VIRTIO_RING_F_EVENT_IDX
                | PROTOCOL_FEATURES
                | DEVICE_BITS,
            protocol: VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::MQ,
            mode: Mode::Serve,
        }
    }
}

/// What the test can observe and steer while the daemon runs.
#[derive(Debug, Default)]
pub struct Shared {
    pub acked_features: Mutex<Option<u64>>,
    pub config: Mutex<[u8; CONFIG_SIZE]>,
    pub chains: AtomicU64,
    pub mode: Mutex<Option<Mode>>,
    /// The relay of the one connection, once the frontend connected.
    relay: Mutex<Option<Relay>>,
}

impl Shared {
    /// Drops the connection both ways, as a dying backend process would.
    pub fn cut(&self) {
        if let Some(relay) = self.relay.lock().unwrap().as_ref() {
            relay.cut();
        }
    }

    fn channel(&self) -> io::Result<Arc<BackendChannel>> {
        let relay = self.relay.lock().unwrap();
        let relay = relay
            .as_ref()
            .ok_or_else(|| io::Error::other("no frontend connected"))?;
        Ok(relay.notifier())
    }

    /// Sends `CONFIG_CHANGE_MSG` on the backend request channel; returns the frontend's ack
    /// value when `REPLY_ACK` is in use (0 = handled), else 0 once sent.
    pub fn send_config_change(&self) -> io::Result<u64> {
        match self.channel()?.notify_config_change(HANG_GUARD) {
            Notification::Acked | Notification::Sent => Ok(0),
            Notification::Refused(value) => Ok(value),
            other => Err(io::Error::other(format!("config change: {other:?}"))),
        }
    }

    /// Writes raw bytes on the backend request channel (to send a broken message).
    pub fn send_raw_backend_request(&self, bytes: &[u8]) -> io::Result<()> {
        self.channel()?.send_raw(bytes)
    }

    pub fn set_config(&self, offset: usize, data: &[u8]) {
        self.config.lock().unwrap()[offset..offset + data.len()].copy_from_slice(data);
    }
}

struct TestDevice {
    opts: Options,
    shared: Arc<Shared>,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    event_idx: bool,
}

impl TestDevice {
    fn process(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let mode = self.shared.mode.lock().unwrap().unwrap_or(self.opts.mode);
        let atomic = self
            .mem
            .as_ref()
            .ok_or_else(|| io::Error::other("no memory table"))?;
        let mem = atomic.memory();
        // Enabling a ring also runs this handler; calling then, with nothing used, would be a
        // spurious call (legal, but it would hide a driver that never gets a real one).
        let mut used_any = false;
        loop {
            if self.event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let chains: Vec<_> = {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                queue.iter(&*mem).map_err(io::Error::other)?.collect()
            };
            for chain in chains {
                let head = chain.head_index();
                let descs: Vec<_> = chain.collect();
                self.shared.chains.fetch_add(1, Ordering::SeqCst);
                match mode {
                    Mode::Die => {
                        self.shared.cut();
                        return Ok(());
                    }
                    Mode::Stall => {
                        if let Some(d) = descs.iter().find(|d| d.is_write_only()) {
                            mem.write_obj(0xeeu8, d.addr()).map_err(io::Error::other)?;
                        }
                        continue;
                    }
                    Mode::Serve => {}
                }
                let fill = descs
                    .iter()
                    .find(|d| !d.is_write_only())
                    .map(|d| mem.read_obj::<u8>(d.addr()).map_err(io::Error::other))
                    .transpose()?
                    .unwrap_or(DEFAULT_FILL);
                let mut written = 0u32;
                for d in descs.iter().filter(|d| d.is_write_only()) {
                    mem.write_slice(&vec![fill; d.len() as usize], d.addr())
                        .map_err(io::Error::other)?;
                    written += d.len();
                }
                vring.add_used(head, written).map_err(io::Error::other)?;
                used_any = true;
            }
            if !self.event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        if used_any && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackendMut for TestDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.opts.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.opts.max_queue_size
    }

    fn features(&self) -> u64 {
        self.opts.features
    }

    fn acked_features(&mut self, features: u64) {
        *self.shared.acked_features.lock().unwrap() = Some(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.opts.protocol
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.shared.config.lock().unwrap();
        let (offset, size) = (offset as usize, size as usize);
        // A wrong-sized answer is how a vhost-user backend says "no".
        match offset.checked_add(size) {
            Some(end) if end <= CONFIG_SIZE => config[offset..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let offset = offset as usize;
        match offset.checked_add(buf.len()) {
            Some(end) if end <= CONFIG_SIZE => {
                self.shared.set_config(offset, buf);
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("unexpected event {device_event}")))?;
        self.process(vring)
    }
}

/// A running test backend: daemon thread + relay thread.
pub struct TestBackend {
    pub path: PathBuf,
    pub shared: Arc<Shared>,
    daemon: Option<JoinHandle<()>>,
    relay: Option<JoinHandle<()>>,
    // Removed last, once the daemon and relay are gone.
    _dir: Option<Scratch>,
}

impl TestBackend {
    /// Starts a backend whose frontend socket is `frontend.sock` in a fresh [`Scratch`].
    pub fn start(tag: &str, opts: Options) -> TestBackend {
        let dir = Scratch::new(tag);
        let mut backend = Self::start_in(dir.path(), opts);
        backend._dir = Some(dir);
        backend
    }

    /// Starts a backend whose frontend socket is `dir/frontend.sock`; `dir` is the caller's.
    pub fn start_in(dir: &Path, opts: Options) -> TestBackend {
        let path = dir.join("frontend.sock");
        let inner = dir.join("daemon.sock");
        let shared = Arc::new(Shared::default());

        let device = Arc::new(Mutex::new(TestDevice {
            opts,
            shared: shared.clone(),
            mem: None,
            event_idx: false,
        }));
        let mut daemon = VhostUserDaemon::new(
            "prezero-guest-test-device".into(),
            device,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .unwrap();
        let inner_for_daemon = inner.clone();
        let daemon = std::thread::spawn(move || {
            if let Err(e) = daemon.serve(&inner_for_daemon) {
                eprintln!("test daemon: {e}");
            }
        });
        wait_for_path(&inner);

        let listener = UnixListener::bind(&path).unwrap();
        let relay_shared = shared.clone();
        let relay = std::thread::spawn(move || {
            let (front, _) = listener.accept().unwrap();
            let back = UnixStream::connect(&inner).unwrap();
            *relay_shared.relay.lock().unwrap() = Some(Relay::start(front, back).unwrap());
        });
        TestBackend {
            path,
            shared,
            daemon: Some(daemon),
            relay: Some(relay),
            _dir: None,
        }
    }

    /// Waits (with the hang guard) until the daemon and relay have exited, which they do once
    /// the frontend is gone.
    pub fn join(mut self) {
        join_with_guard(self.relay.take().unwrap(), "relay start");
        if let Some(relay) = self.shared.relay.lock().unwrap().take() {
            join_with_guard(
                std::thread::spawn(move || {
                    relay.join();
                }),
                "relay",
            );
        }
        join_with_guard(self.daemon.take().unwrap(), "daemon");
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.shared.cut();
    }
}

/// Opens the memfd of `ram` as a second, independent mapping, the way the device maps it.
pub fn device_view(ram: &prezero_guest::GuestRam) -> GuestMemoryMmap {
    let file: File = ram.file().try_clone().unwrap();
    GuestMemoryMmap::from_ranges_with_files([(
        vm_memory::GuestAddress(0),
        ram.size() as usize,
        Some(vm_memory::FileOffset::new(file, 0)),
    )])
    .unwrap()
}
