//! The guest as a vhost-user frontend: the transport between a virtio driver and a device
//! served by a vhost-user backend daemon over a Unix socket.
//!
//! It plays the part a VMM plays for a kernel guest: it shares guest RAM (the memfd) with the
//! backend, tells it where each queue's rings are, and turns kicks and calls into eventfds.
//! It is generic over the device: feature bits and config space are opaque here. It is one
//! [`VirtioTransport`]; the balloon driver sees it only through that trait.
//!
//! Sequence (the order QEMU uses, which backends expect):
//! 1. [`connect`](VhostUserTransport::connect): `SET_OWNER`, `GET_FEATURES`, and when the
//!    backend offers `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30): `GET/SET_PROTOCOL_FEATURES`
//!    (taking `CONFIG`, `REPLY_ACK`, `BACKEND_REQ` and `MQ` when offered), `GET_QUEUE_NUM`,
//!    `SET_BACKEND_REQ_FD`.
//! 2. [`negotiate`](VhostUserTransport::negotiate): `SET_FEATURES` with the driver's choice.
//! 3. [`set_memory`](VhostUserTransport::set_memory): `SET_MEM_TABLE` with the memfd.
//! 4. [`setup_queue`](VhostUserTransport::setup_queue) per queue: `SET_VRING_NUM`, `_BASE`,
//!    `_ADDR`, `_CALL`, `_KICK`, `_ENABLE`.
//! 5. Run: [`kick`](VhostUserTransport::kick), [`wait`](VhostUserTransport::wait) /
//!    [`wait_call`](VhostUserTransport::wait_call), config reads and writes.
//!
//! Bit 30 is vhost-user's, not the device's: it is hidden from
//! [`device_features`](VhostUserTransport::device_features) and set by the transport itself.
//!
//! A dead backend never hangs the driver: every wait also polls the main socket, and a hang-up
//! there, or a broken socket in a request, is [`TransportError::Disconnected`].

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Error as VhostUserError, Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::poll::{EpollContext, EpollEvents, PollEvents, WatchingEvents};

use crate::backend_channel::BackendChannel;
use crate::error::{RamError, TransportError};
use crate::ram::GuestRam;
use crate::{RingLayout, SplitQueue};
use prezero_driver::{Events, VirtioTransport, MAX_QUEUES};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user transport bit in the virtio feature word.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The protocol features this frontend uses when the backend offers them.
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::MQ
}

// Tokens of the fds `wait` watches, besides the queue indices below MAX_QUEUES.
const CONFIG_TOKEN: u64 = MAX_QUEUES as u64;
const SOCKET_TOKEN: u64 = MAX_QUEUES as u64 + 1;

/// Events that mean "the peer is gone or the fd is broken".
const HANGUP: u32 = (libc::EPOLLHUP | libc::EPOLLRDHUP | libc::EPOLLERR) as u32;

#[derive(Debug)]
struct QueueEvents {
    kick: EventFd,
    call: EventFd,
}

/// A connection to a vhost-user backend, driving one virtio device.
pub struct VhostUserTransport {
    frontend: Frontend,
    // The same connection, for GET_CONFIG (see `read_config`) and for hang-up checks.
    socket: UnixStream,
    path: PathBuf,
    num_queues: u16,
    offered: u64,
    acked: Option<u64>,
    protocol: VhostUserProtocolFeatures,
    // Base address and size of the RAM shared with SET_MEM_TABLE.
    memory: Option<(usize, u64)>,
    queues: Vec<Option<QueueEvents>>,
    // Present when BACKEND_REQ was negotiated: config-change notifications.
    channel: Option<BackendChannel>,
    // What `wait` watches: the main socket, the config-change eventfd and each queue's call fd.
    events: EpollContext<u64>,
    disconnected: AtomicBool,
}

impl std::fmt::Debug for VhostUserTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserTransport")
            .field("path", &self.path)
            .field("num_queues", &self.num_queues)
            .field("offered", &format_args!("{:#x}", self.offered))
            .field("acked", &self.acked)
            .field("protocol", &self.protocol)
            .field("memory", &self.memory)
            .field("queues", &self.queues)
            .field("channel", &self.channel)
            .field("disconnected", &self.disconnected)
            .finish_non_exhaustive()
    }
}

impl VhostUserTransport {
    /// Connects to the backend listening on `path`, claims it (`SET_OWNER`), reads its features
    /// and negotiates the vhost-user protocol features. `num_queues` is how many queues the
    /// driver will set up (indices `0..num_queues`).
    pub fn connect(path: impl AsRef<Path>, num_queues: u16) -> Result<Self, TransportError> {
        let path = path.as_ref().to_path_buf();
        if num_queues == 0 || num_queues > MAX_QUEUES {
            return Err(TransportError::Sequence(
                "a transport drives between 1 and 64 queues",
            ));
        }
        let stream = connect_socket(&path)?;
        let socket = stream.try_clone().map_err(|source| TransportError::Io {
            what: "duplicating the vhost-user socket",
            source,
        })?;
        let frontend = Frontend::from_stream(stream, u64::from(num_queues));
        let events = epoll()?;
        watch(&events, &socket, SOCKET_TOKEN)?;
        let mut t = VhostUserTransport {
            frontend,
            socket,
            path,
            num_queues,
            offered: 0,
            acked: None,
            protocol: VhostUserProtocolFeatures::empty(),
            memory: None,
            queues: (0..num_queues).map(|_| None).collect(),
            channel: None,
            events,
            disconnected: AtomicBool::new(false),
        };
        t.request("SET_OWNER", |f| f.set_owner())?;
        t.offered = t.request("GET_FEATURES", |f| f.get_features())?;
        tracing::debug!(path = %t.path.display(), features = format_args!("{:#x}", t.offered), "backend offers");

        if t.offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = t.request("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            let protocol = offered & wanted_protocol_features();
            t.request("SET_PROTOCOL_FEATURES", |f| {
                f.set_protocol_features(protocol)
            })?;
            t.protocol = protocol;
            tracing::debug!(?offered, acked = ?protocol, "protocol features");
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request that has no reply of its own now gets an ack, so a backend
                // that refuses (bad memory table, bad ring address) fails the call that caused it.
                t.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let available = t.request("GET_QUEUE_NUM", |f| f.get_queue_num())?;
                if available < u64::from(num_queues) {
                    return Err(TransportError::TooFewQueues {
                        available,
                        wanted: num_queues,
                    });
                }
            }
            if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
                let reply_ack = protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
                let channel = BackendChannel::start(&mut t.frontend, reply_ack)
                    .map_err(|e| t.classify_channel_error(e))?;
                watch(&t.events, &channel.state.config_evt, CONFIG_TOKEN)?;
                t.channel = Some(channel);
            }
        }
        Ok(t)
    }

    /// The socket path this transport is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Virtio feature bits the device offers (vhost-user's bit 30 removed).
    pub fn device_features(&self) -> u64 {
        self.offered & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    /// The vhost-user protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Acknowledges the driver's features: `SET_FEATURES` with `driver_features` limited to
    /// what the device offers. Returns the negotiated set (what both sides now run with).
    pub fn negotiate(&mut self, driver_features: u64) -> Result<u64, TransportError> {
        let acked = driver_features & self.device_features();
        let wire = acked | (self.offered & VHOST_USER_F_PROTOCOL_FEATURES);
        self.request("SET_FEATURES", |f| f.set_features(wire))?;
        tracing::debug!(
            driver = format_args!("{driver_features:#x}"),
            acked = format_args!("{acked:#x}"),
            "features negotiated"
        );
        self.acked = Some(acked);
        Ok(acked)
    }

    /// The negotiated virtio features, once [`negotiate`](Self::negotiate) ran.
    pub fn features(&self) -> Option<u64> {
        self.acked
    }

    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated (queues must be built to match).
    pub fn event_idx(&self) -> bool {
        self.acked
            .is_some_and(|f| f & (1 << VIRTIO_RING_F_EVENT_IDX) != 0)
    }

    /// Shares guest RAM with the backend (`SET_MEM_TABLE` with the memfd).
    pub fn set_memory(&mut self, ram: &GuestRam) -> Result<(), TransportError> {
        if self.acked.is_none() {
            return Err(TransportError::Sequence(
                "negotiate features before set_memory: backends map memory per feature set",
            ));
        }
        let region = VhostUserMemoryRegionInfo::from_guest_region(ram.region()).map_err(|e| {
            TransportError::Request {
                request: "SET_MEM_TABLE",
                source: e,
            }
        })?;
        self.request("SET_MEM_TABLE", |f| f.set_mem_table(&[region]))?;
        self.memory = Some((ram.host_base() as usize, ram.size()));
        tracing::debug!(size = ram.size(), fd = ram.fd(), "guest RAM shared");
        Ok(())
    }

    /// Tells the backend about queue `index` and starts it.
    ///
    /// The queue's rings must be in the RAM given to [`set_memory`](Self::set_memory), and the
    /// queue built with `event_idx` equal to [`event_idx`](Self::event_idx).
    pub fn setup_queue<T>(
        &mut self,
        index: u16,
        queue: &SplitQueue<T>,
    ) -> Result<(), TransportError> {
        self.check_index(index)?;
        if self.shared_memory()? != (queue.memory().host_base() as usize, queue.memory().size()) {
            return Err(TransportError::Sequence(
                "the queue's rings are not in the guest RAM given to set_memory",
            ));
        }
        if queue.event_idx() != self.event_idx() {
            return Err(TransportError::Sequence(
                "the queue's event_idx does not match the negotiated VIRTIO_RING_F_EVENT_IDX",
            ));
        }
        self.start_queue(index, &queue.layout(), queue.next_avail())
    }

    /// `SET_VRING_*` for a ring at `layout` whose next avail index is `base`.
    fn start_queue(
        &mut self,
        index: u16,
        layout: &RingLayout,
        base: u16,
    ) -> Result<(), TransportError> {
        self.check_index(index)?;
        let (host_base, ram_size) = self.shared_memory()?;
        // vhost-user ring addresses are the frontend's virtual addresses, not gpas.
        let host_addr = |gpa: u64, len: u64| match gpa.checked_add(len) {
            Some(end) if end <= ram_size => Ok(host_base as u64 + gpa),
            _ => Err(RamError::OutOfRange {
                gpa,
                len,
                size: ram_size,
            }),
        };
        let size = layout.size;
        let n = u64::from(size);
        let config = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: host_addr(layout.desc, 16 * n)?,
            used_ring_addr: host_addr(layout.used, 6 + 8 * n)?,
            avail_ring_addr: host_addr(layout.avail, 6 + 2 * n)?,
            log_addr: None,
        };
        let io = |what| move |source| TransportError::Io { what, source };
        let events = QueueEvents {
            kick: EventFd::new(EFD_NONBLOCK).map_err(io("eventfd for a queue kick"))?,
            call: EventFd::new(EFD_NONBLOCK).map_err(io("eventfd for a queue call"))?,
        };
        let i = usize::from(index);
        self.request("SET_VRING_NUM", |f| f.set_vring_num(i, size))?;
        self.request("SET_VRING_BASE", |f| f.set_vring_base(i, base))?;
        self.request("SET_VRING_ADDR", |f| f.set_vring_addr(i, &config))?;
        // The call fd goes first: a backend may start the ring at the kick fd, and a call
        // signalled before it has a call fd is lost.
        self.request("SET_VRING_CALL", |f| f.set_vring_call(i, &events.call))?;
        self.request("SET_VRING_KICK", |f| f.set_vring_kick(i, &events.kick))?;
        if self.offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            // With protocol features, rings start disabled until enabled explicitly.
            self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(i, true))?;
        }
        if let Some(old) = self.queues[i].take() {
            // The backend holds a copy of the old call fd, so closing ours would not take it
            // out of the epoll set.
            let _ = self.events.delete(&old.call);
        }
        watch(&self.events, &events.call, u64::from(index))?;
        self.queues[i] = Some(events);
        tracing::debug!(index, size, ?layout, "queue started");
        Ok(())
    }

    /// Notifies the device that queue `index` has new chains.
    pub fn kick(&self, index: u16) -> Result<(), TransportError> {
        let q = self.queue(index)?;
        q.kick.write(1).map_err(|source| TransportError::Io {
            what: "writing a queue's kick eventfd",
            source,
        })
    }

    /// Waits until queue `index` is called, or `timeout` passes (`None`: forever).
    ///
    /// Returns whether the call came. Config changes are left pending for [`wait`](Self::wait).
    pub fn wait_call(&self, index: u16, timeout: Option<Duration>) -> Result<bool, TransportError> {
        let q = self.queue(index)?;
        let fds = epoll()?;
        watch(&fds, &q.call, u64::from(index))?;
        watch(&fds, &self.socket, SOCKET_TOKEN)?;
        let ready = EpollEvents::new();
        let mut socket = 0;
        let mut called = false;
        for event in self.poll(&fds, &ready, timeout)?.iter() {
            match event.token() {
                SOCKET_TOKEN => socket = event.raw_events(),
                _ => called = true,
            }
        }
        if called && drain(&q.call)? {
            return Ok(true);
        }
        self.check_socket(socket, "waiting for a queue call")?;
        Ok(false)
    }

    /// Waits for any event: a call on a set-up queue or a config change, or until `timeout`
    /// passes (`None`: forever). Returns everything that is pending, empty on timeout.
    ///
    /// A driver loop: add chains and kick; `wait`; for each called queue pop used chains until
    /// none are left; on `config_changed` re-read the config; repeat.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Events, TransportError> {
        let ready = EpollEvents::new();
        let mut events = Events::default();
        let mut socket = 0;
        // Level-triggered: a ready fd that did not fit this round is reported by the next wait.
        for event in self.poll(&self.events, &ready, timeout)?.iter() {
            match event.token() {
                SOCKET_TOKEN => socket = event.raw_events(),
                CONFIG_TOKEN => {
                    let channel = self.channel.as_ref().expect("watched with the channel");
                    events.config_changed |= drain(&channel.state.config_evt)?;
                }
                i => {
                    let q = self.queues[i as usize]
                        .as_ref()
                        .expect("watched once set up");
                    if drain(&q.call)? {
                        events.calls |= 1 << i;
                    }
                }
            }
        }
        // Report what the device finished before it died; the next wait reports the death.
        if !events.is_empty() {
            return Ok(events);
        }
        self.check_socket(socket, "waiting for device events")?;
        if let Some(why) = self.channel.as_ref().and_then(BackendChannel::failure) {
            return Err(TransportError::BackendChannel(why));
        }
        Ok(events)
    }

    /// Reads `buf.len()` bytes of device config space at `offset` (`GET_CONFIG`).
    ///
    /// Done here rather than with the vhost crate's `get_config`, which (0.18) waits forever
    /// for a payload when the backend refuses the read: a refusal is a reply whose config
    /// size is 0 and that carries no payload.
    pub fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), TransportError> {
        self.need_config("read the device config space")?;
        if buf.is_empty() {
            return Ok(());
        }
        if self.disconnected.load(Ordering::SeqCst) {
            return Err(self.disconnected("GET_CONFIG"));
        }
        let len = u32::try_from(buf.len())
            .ok()
            .filter(|&l| {
                offset
                    .checked_add(l)
                    .is_some_and(|end| end <= CONFIG_SPACE_MAX)
            })
            .ok_or(TransportError::Sequence(
                "config reads must stay within the 4 KiB vhost-user config space",
            ))?;
        let protocol_error = |source| TransportError::Request {
            request: "GET_CONFIG",
            source: vhost::Error::VhostUserProtocol(source),
        };
        let io_error = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset => self.disconnected("GET_CONFIG"),
            _ => TransportError::Io {
                what: "GET_CONFIG on the vhost-user socket",
                source: e,
            },
        };

        let mut msg = Vec::with_capacity(MSG_HEADER + CONFIG_HEADER + buf.len());
        msg.extend_from_slice(&GET_CONFIG.to_le_bytes());
        msg.extend_from_slice(&MSG_VERSION.to_le_bytes());
        msg.extend_from_slice(&(CONFIG_HEADER as u32 + len).to_le_bytes());
        msg.extend_from_slice(&offset.to_le_bytes());
        msg.extend_from_slice(&len.to_le_bytes());
        msg.extend_from_slice(&0u32.to_le_bytes());
        msg.resize(msg.capacity(), 0);
        send_all(&self.socket, &msg).map_err(io_error)?;

        let mut header = [0u8; MSG_HEADER + CONFIG_HEADER];
        (&self.socket).read_exact(&mut header).map_err(io_error)?;
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
        let (request, flags, size) = (word(0), word(4), word(8) as usize);
        let (reply_offset, reply_len) = (word(12), word(16));
        if request != GET_CONFIG || flags & MSG_REPLY == 0 || size < CONFIG_HEADER {
            // Out of step with the backend: nothing after this can be trusted.
            self.disconnected.store(true, Ordering::SeqCst);
            return Err(protocol_error(VhostUserError::InvalidMessage));
        }
        let payload = size - CONFIG_HEADER;
        if reply_len == 0 && payload == 0 {
            return Err(protocol_error(VhostUserError::BackendInternalError));
        }
        if reply_offset != offset || reply_len != len || payload != buf.len() {
            self.disconnected.store(true, Ordering::SeqCst);
            return Err(protocol_error(VhostUserError::InvalidMessage));
        }
        (&self.socket).read_exact(buf).map_err(io_error)?;
        Ok(())
    }

    /// Writes `data` to device config space at `offset` (`SET_CONFIG`).
    pub fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), TransportError> {
        self.need_config("write the device config space")?;
        self.request("SET_CONFIG", |f| {
            f.set_config(offset, VhostUserConfigFlags::empty(), data)
        })
    }

    /// Config changes the backend has reported since connecting.
    pub fn config_changes(&self) -> u64 {
        self.channel
            .as_ref()
            .map_or(0, |c| c.state.config_changes.load(Ordering::SeqCst))
    }

    fn need_config(&self, needed_for: &'static str) -> Result<(), TransportError> {
        if self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            Ok(())
        } else {
            Err(TransportError::Unsupported {
                what: "the CONFIG protocol feature",
                needed_for,
            })
        }
    }

    /// Base address and size of the RAM given to `set_memory`.
    fn shared_memory(&self) -> Result<(usize, u64), TransportError> {
        self.memory.ok_or(TransportError::Sequence(
            "set_memory before setup_queue: ring addresses are resolved through the memory table",
        ))
    }

    fn check_index(&self, index: u16) -> Result<(), TransportError> {
        if index >= self.num_queues {
            return Err(TransportError::NoSuchQueue {
                index,
                num_queues: self.num_queues,
            });
        }
        Ok(())
    }

    fn queue(&self, index: u16) -> Result<&QueueEvents, TransportError> {
        self.check_index(index)?;
        self.queues[usize::from(index)]
            .as_ref()
            .ok_or(TransportError::QueueNotReady(index))
    }

    fn disconnected(&self, during: &'static str) -> TransportError {
        if !self.disconnected.swap(true, Ordering::SeqCst) {
            tracing::warn!(path = %self.path.display(), during, "vhost-user backend disconnected");
        }
        TransportError::Disconnected {
            path: self.path.clone(),
            during,
        }
    }

    /// Waits until an fd of `fds` is ready or `timeout` passes (`None`: forever); no events
    /// means the timeout passed.
    fn poll<'a>(
        &self,
        fds: &EpollContext<u64>,
        ready: &'a EpollEvents,
        timeout: Option<Duration>,
    ) -> Result<PollEvents<'a, u64>, TransportError> {
        if self.disconnected.load(Ordering::SeqCst) {
            return Err(self.disconnected("waiting on a closed connection"));
        }
        let events = match timeout {
            None => fds.wait(ready),
            // Whole milliseconds, rounded up so a short positive timeout is not a busy 0 ms wait.
            Some(t) => fds.wait_timeout(ready, Duration::from_millis(ceil_millis(t))),
        };
        events.map_err(|e| TransportError::Io {
            what: "epoll_wait",
            source: e.into(),
        })
    }

    // Between requests the backend has nothing to say on the main socket: readable means
    // either EOF (it is gone) or a protocol violation.
    fn check_socket(&self, revents: u32, during: &'static str) -> Result<(), TransportError> {
        if revents & HANGUP != 0 {
            return Err(self.disconnected(during));
        }
        if revents & libc::EPOLLIN as u32 != 0 {
            let mut byte = 0u8;
            // SAFETY: a one-byte peek into a local; the fd is the live main socket.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            return match n {
                0 => Err(self.disconnected(during)),
                n if n > 0 => Err(TransportError::Unsolicited),
                _ => Ok(()),
            };
        }
        Ok(())
    }

    /// Runs one vhost-user request, turning a broken connection into `Disconnected`.
    fn request<R>(
        &mut self,
        request: &'static str,
        op: impl FnOnce(&mut Frontend) -> vhost::Result<R>,
    ) -> Result<R, TransportError> {
        if self.disconnected.load(Ordering::SeqCst) {
            return Err(self.disconnected(request));
        }
        tracing::trace!(request, "vhost-user request");
        op(&mut self.frontend).map_err(|source| {
            if is_disconnect(&source) {
                self.disconnected(request)
            } else {
                TransportError::Request { request, source }
            }
        })
    }

    fn classify_channel_error(&self, e: TransportError) -> TransportError {
        match e {
            TransportError::Request { request, source } if is_disconnect(&source) => {
                self.disconnected(request)
            }
            other => other,
        }
    }
}

/// The balloon driver's view. The inherent methods of the same names stay, so code holding a
/// `VhostUserTransport` calls them without importing the trait; queue setup there takes the
/// [`SplitQueue`] itself and checks it against the memory and features.
impl VirtioTransport for VhostUserTransport {
    type Error = TransportError;
    type Memory = GuestRam;

    fn device_features(&self) -> u64 {
        VhostUserTransport::device_features(self)
    }

    fn negotiate(&mut self, driver_features: u64) -> Result<u64, TransportError> {
        VhostUserTransport::negotiate(self, driver_features)
    }

    fn set_memory(&mut self, ram: &GuestRam) -> Result<(), TransportError> {
        VhostUserTransport::set_memory(self, ram)
    }

    fn setup_queue(&mut self, index: u16, ring: &RingLayout) -> Result<(), TransportError> {
        self.start_queue(index, ring, 0)
    }

    fn kick(&self, index: u16) -> Result<(), TransportError> {
        VhostUserTransport::kick(self, index)
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Events, TransportError> {
        VhostUserTransport::wait(self, timeout)
    }

    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), TransportError> {
        VhostUserTransport::read_config(self, offset, buf)
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), TransportError> {
        VhostUserTransport::write_config(self, offset, data)
    }
}

// vhost-user message framing, for the one request done by hand.
const GET_CONFIG: u32 = 24;
const MSG_VERSION: u32 = 0x1;
const MSG_REPLY: u32 = 0x4;
const MSG_HEADER: usize = 12;
// struct VhostUserConfig { offset, size, flags }
const CONFIG_HEADER: usize = 12;
const CONFIG_SPACE_MAX: u32 = 0x1000 - CONFIG_HEADER as u32;

/// Writes all of `data`, without SIGPIPE if the backend is gone.
fn send_all(socket: &UnixStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is a live slice; the fd is an open socket.
        let n = unsafe {
            libc::send(
                socket.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

fn is_disconnect(e: &vhost::Error) -> bool {
    matches!(
        e,
        vhost::Error::VhostUserProtocol(
            VhostUserError::Disconnected
                | VhostUserError::PartialMessage
                | VhostUserError::SocketBroken(_)
        )
    )
}

fn epoll() -> Result<EpollContext<u64>, TransportError> {
    EpollContext::new().map_err(|e| TransportError::Io {
        what: "epoll_create1",
        source: e.into(),
    })
}

/// Adds `fd` to `fds` for reading (and, for a socket, the peer's hang-up) under `token`.
fn watch(fds: &EpollContext<u64>, fd: &impl AsRawFd, token: u64) -> Result<(), TransportError> {
    let events = WatchingEvents::new((libc::EPOLLIN | libc::EPOLLRDHUP) as u32);
    fds.add_fd_with_events(fd, events, token)
        .map_err(|e| TransportError::Io {
            what: "epoll_ctl",
            source: e.into(),
        })
}

fn ceil_millis(t: Duration) -> u64 {
    t.as_nanos()
        .div_ceil(1_000_000)
        .min(u128::from(i32::MAX as u32)) as u64
}

/// Reads an eventfd's counter; `false` if it was already zero.
fn drain(evt: &EventFd) -> Result<bool, TransportError> {
    match evt.read() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(source) => Err(TransportError::Io {
            what: "reading an eventfd",
            source,
        }),
    }
}

/// Connects to `path`, telling apart the ways that fails that a person can fix.
fn connect_socket(path: &Path) -> Result<UnixStream, TransportError> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => {
            return Err(TransportError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TransportError::SocketMissing {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(TransportError::Connect {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    UnixStream::connect(path).map_err(|source| match source.raw_os_error() {
        Some(libc::ECONNREFUSED) => TransportError::NotListening {
            path: path.to_path_buf(),
        },
        Some(libc::ENOENT) => TransportError::SocketMissing {
            path: path.to_path_buf(),
        },
        _ => TransportError::Connect {
            path: path.to_path_buf(),
            source,
        },
    })
}
