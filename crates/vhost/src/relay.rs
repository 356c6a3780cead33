//! A message-level relay between the frontend and `vhost-user-backend`'s daemon.
//!
//! # Why
//!
//! The balloon must tell the guest when the host sets a new target: a config-change
//! notification on the backend request channel (the socket the frontend hands over with
//! `SET_BACKEND_REQ_FD`). vhost 0.18's backend-side `Backend`, which `vhost-user-backend` 0.24
//! gives the device, cannot send that message and hides its socket. So the daemon accepts the
//! frontend itself, runs `VhostUserDaemon` on a private socket, and relays between the two:
//!
//! ```text
//!  frontend ──public socket──▶ relay ──private socketpair-like connection──▶ VhostUserDaemon
//!                                │ keeps a dup of the SET_BACKEND_REQ_FD socket
//!                                ▼
//!                      config-change messages (see backend_channel)
//! ```
//!
//! # What it does
//!
//! Two threads, one per direction, copy whole messages: the 12-byte header (request `u32`,
//! flags `u32`, size `u32`, little-endian), then `size` payload bytes; the file descriptors
//! the sender attached (`SCM_RIGHTS`) are forwarded with the same message, and the relay's
//! own copies are closed once forwarded. Nothing is reordered or answered by the relay; it
//! looks at two frontend requests on the way:
//! - `SET_PROTOCOL_FEATURES` (16): whether `REPLY_ACK` is in use (the config-change message
//!   then asks for an ack);
//! - `SET_BACKEND_REQ_FD` (21): a duplicate of its descriptor becomes the config-change
//!   channel;
//!
//! and changes one, for compatibility:
//! - `SET_MEM_TABLE` (5) with a payload longer than its regions: User-Mode Linux (6.1) sends
//!   room for two regions (72 bytes) when it uses one, which vhost 0.18 refuses as an invalid
//!   message, ending the connection. The unused trailing slots are trimmed (payload and
//!   header size); the regions and descriptors are forwarded as they are.
//!
//! When either side closes (or breaks the framing), both connections are shut down, so each
//! end sees the other go away exactly as without the relay.
//!
//! # Limits
//!
//! - A message may carry at most 32 descriptors and a payload of at most
//!   [`MAX_PAYLOAD`] bytes; beyond that the connection is closed (vhost-user messages are far
//!   smaller: `SET_MEM_TABLE` carries 8 regions in 264 bytes).
//! - Each message costs one extra copy and two extra syscalls per direction (microseconds; the
//!   vhost-user control path is not a data path: queue kicks and calls are eventfds that go
//!   straight to the daemon's worker threads, they never cross the relay).
//! - The relay does not check the protocol itself; `vhost-user-backend` does.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost::vhost_user::message::VhostUserProtocolFeatures;

use crate::backend_channel::{ChannelSlot, FLAG_REPLY, HEADER_SIZE};
use crate::sys;

/// Largest payload the relay forwards (vhost-user messages stay under 4 KiB).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Frontend request `VHOST_USER_SET_MEM_TABLE`.
pub const SET_MEM_TABLE: u32 = 5;
/// Frontend request `VHOST_USER_SET_PROTOCOL_FEATURES`.
pub const SET_PROTOCOL_FEATURES: u32 = 16;
/// Frontend request `VHOST_USER_SET_BACKEND_REQ_FD`.
pub const SET_BACKEND_REQ_FD: u32 = 21;

/// One vhost-user message as it travels: header, payload, attached descriptors.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) header: [u8; HEADER_SIZE],
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Message {
    pub(crate) fn request(&self) -> u32 {
        u32::from_le_bytes(self.header[0..4].try_into().expect("4 bytes"))
    }

    pub(crate) fn flags(&self) -> u32 {
        u32::from_le_bytes(self.header[4..8].try_into().expect("4 bytes"))
    }

    /// Replaces the payload, keeping the header's size field in step.
    fn truncate_payload(&mut self, len: usize) {
        self.payload.truncate(len);
        self.header[8..12].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
    }
}

/// `struct VhostUserMemory` header (regions count + padding) and one region.
const MEMORY_HEADER: usize = 8;
const MEMORY_REGION: usize = 32;
/// `VHOST_MEMORY_BASELINE_NREGIONS`: what a `SET_MEM_TABLE` may describe.
const MAX_REGIONS: usize = 8;

/// Reads one whole message; `None` at a clean end of stream (between messages).
pub(crate) fn read_message(fd: RawFd) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_SIZE];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HEADER_SIZE {
        let n = sys::recv_with_fds(fd, &mut header[got..], &mut fds)?;
        if n == 0 {
            if got == 0 && fds.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a message header",
            ));
        }
        got += n;
    }
    let size = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message payload of {size} bytes exceeds the relay's {MAX_PAYLOAD}"),
        ));
    }
    let mut payload = vec![0u8; size];
    let mut got = 0;
    while got < size {
        let n = sys::recv_with_fds(fd, &mut payload[got..], &mut fds)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a message payload",
            ));
        }
        got += n;
    }
    Ok(Some(Message {
        header,
        payload,
        fds,
    }))
}

/// Writes one whole message with its descriptors.
pub(crate) fn write_message(fd: RawFd, msg: &Message) -> io::Result<()> {
    let raw: Vec<RawFd> = msg.fds.iter().map(|f| f.as_raw_fd()).collect();
    sys::send_all_with_fds(fd, &[&msg.header, &msg.payload], &raw)
}

/// Which way a relay thread copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Frontend requests, going to the daemon.
    ToBackend,
    /// The daemon's replies, going to the frontend.
    ToFrontend,
}

/// Counters of one relayed connection.
#[derive(Debug, Default)]
pub(crate) struct RelayCounters {
    pub(crate) to_backend: AtomicU64,
    pub(crate) to_frontend: AtomicU64,
}

/// A running relay between a frontend connection and a daemon connection.
#[derive(Debug)]
pub(crate) struct Relay {
    front: UnixStream,
    back: UnixStream,
    threads: Vec<JoinHandle<()>>,
    pub(crate) counters: Arc<RelayCounters>,
}

impl Relay {
    /// Starts relaying between `front` (the frontend) and `back` (the daemon), recording the
    /// backend request channel in `slot`.
    pub(crate) fn start(
        front: UnixStream,
        back: UnixStream,
        slot: Arc<ChannelSlot>,
    ) -> io::Result<Relay> {
        let counters = Arc::new(RelayCounters::default());
        let keep = (front.try_clone()?, back.try_clone()?);
        let (front2, back2) = (front.try_clone()?, back.try_clone()?);
        let c1 = counters.clone();
        let inbound = std::thread::Builder::new()
            .name("vhost-relay-in".into())
            .spawn(move || {
                pump(&front, &back, Direction::ToBackend, Some(&slot), &c1);
            })?;
        let c2 = counters.clone();
        let outbound = std::thread::Builder::new()
            .name("vhost-relay-out".into())
            .spawn(move || pump(&back2, &front2, Direction::ToFrontend, None, &c2));
        let outbound = match outbound {
            Ok(t) => t,
            Err(e) => {
                sys::shutdown(&keep.0);
                sys::shutdown(&keep.1);
                let _ = inbound.join();
                return Err(e);
            }
        };
        Ok(Relay {
            front: keep.0,
            back: keep.1,
            threads: vec![inbound, outbound],
            counters,
        })
    }

    /// Cuts both connections (both threads then stop).
    pub(crate) fn cut(&self) {
        sys::shutdown(&self.front);
        sys::shutdown(&self.back);
    }

    /// A handle that can cut the connections from another thread.
    pub(crate) fn cutter(&self) -> io::Result<Cutter> {
        Ok(Cutter {
            front: self.front.try_clone()?,
            back: self.back.try_clone()?,
        })
    }

    /// Waits for both threads to stop (they do once either side closed or after [`cut`]).
    ///
    /// [`cut`]: Relay::cut
    pub(crate) fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.cut();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

/// Cuts a relay's connections from anywhere.
#[derive(Debug)]
pub(crate) struct Cutter {
    front: UnixStream,
    back: UnixStream,
}

impl Cutter {
    pub(crate) fn cut(&self) {
        sys::shutdown(&self.front);
        sys::shutdown(&self.back);
    }
}

/// Copies messages `from` -> `to` until either breaks; then shuts both down.
fn pump(
    from: &UnixStream,
    to: &UnixStream,
    direction: Direction,
    slot: Option<&ChannelSlot>,
    counters: &RelayCounters,
) {
    let result = (|| -> io::Result<()> {
        while let Some(msg) = read_message(from.as_raw_fd())? {
            tracing::trace!(
                ?direction,
                request = msg.request(),
                flags = format_args!("{:#x}", msg.flags()),
                size = msg.payload.len(),
                fds = msg.fds.len(),
                "vhost-user message"
            );
            let mut msg = msg;
            if let Some(slot) = slot {
                observe(&msg, slot);
                trim_padded_mem_table(&mut msg);
            }
            write_message(to.as_raw_fd(), &msg)?;
            let counter = match direction {
                Direction::ToBackend => &counters.to_backend,
                Direction::ToFrontend => &counters.to_frontend,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    })();
    match result {
        Ok(()) => tracing::debug!(?direction, "relay: end of stream"),
        Err(e) => tracing::debug!(?direction, error = %e, "relay: connection ended"),
    }
    sys::shutdown(from);
    sys::shutdown(to);
}

/// Looks at a frontend request on its way to the daemon.
fn observe(msg: &Message, slot: &ChannelSlot) {
    if msg.flags() & FLAG_REPLY != 0 {
        return;
    }
    match msg.request() {
        SET_PROTOCOL_FEATURES if msg.payload.len() == 8 => {
            let bits = u64::from_le_bytes(msg.payload[..8].try_into().expect("8 bytes"));
            let reply_ack = bits & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
            tracing::debug!(
                protocol_features = format_args!("{bits:#x}"),
                reply_ack,
                "frontend set protocol features"
            );
            slot.set_reply_ack(reply_ack);
        }
        SET_BACKEND_REQ_FD if msg.fds.len() == 1 => match msg.fds[0].try_clone() {
            Ok(dup) => {
                tracing::debug!("frontend set up the backend request channel");
                slot.install(dup);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the backend request channel: config changes will not be notified")
            }
        },
        _ => {}
    }
}

/// Trims unused region slots off a `SET_MEM_TABLE` (see the module docs). Anything that does
/// not look like padding is left for the daemon to judge.
fn trim_padded_mem_table(msg: &mut Message) {
    if msg.request() != SET_MEM_TABLE
        || msg.flags() & FLAG_REPLY != 0
        || msg.payload.len() < MEMORY_HEADER
    {
        return;
    }
    let regions = u32::from_le_bytes(msg.payload[0..4].try_into().expect("4 bytes")) as usize;
    let exact = MEMORY_HEADER + regions * MEMORY_REGION;
    let len = msg.payload.len();
    let padded = (1..=MAX_REGIONS).contains(&regions)
        && len > exact
        && len <= MEMORY_HEADER + MAX_REGIONS * MEMORY_REGION
        && (len - MEMORY_HEADER) % MEMORY_REGION == 0;
    if padded {
        tracing::debug!(
            regions,
            bytes = len,
            "trimming unused region slots off SET_MEM_TABLE"
        );
        msg.truncate_payload(exact);
    }
}

/// A connected pair through a listener nobody else can reach: the daemon's end is accepted
/// from the returned listener (`VhostUserDaemon::start`), ours is the stream.
///
/// The listener is bound in a fresh directory only the owner can enter, connected to at once,
/// and its path removed before returning, so the pending connection in its backlog is ours.
pub(crate) fn private_connection() -> io::Result<(UnixListener, UnixStream)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut base = std::env::temp_dir();
    if base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    let mut attempts = 0;
    let dir = loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "prezero-vhost-{}-{}-{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let path = dir.join("daemon.sock");
    let result = (|| {
        let listener = UnixListener::bind(&path)?;
        let stream = UnixStream::connect(&path)?;
        Ok((listener, stream))
    })();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend_channel::Notification;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn header(request: u32, flags: u32, size: u32) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(&request.to_le_bytes());
        h[4..8].copy_from_slice(&flags.to_le_bytes());
        h[8..12].copy_from_slice(&size.to_le_bytes());
        h
    }

    struct Rig {
        frontend: UnixStream,
        daemon: UnixStream,
        slot: Arc<ChannelSlot>,
        relay: Relay,
    }

    fn rig() -> Rig {
        let (frontend, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, daemon) = UnixStream::pair().unwrap();
        let slot = Arc::new(ChannelSlot::default());
        let relay = Relay::start(relay_front, relay_back, slot.clone()).unwrap();
        for s in [&frontend, &daemon] {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Rig {
            frontend,
            daemon,
            slot,
            relay,
        }
    }

    fn recv(s: &UnixStream) -> Message {
        read_message(s.as_raw_fd()).unwrap().expect("a message")
    }

    #[test]
    fn forwards_messages_and_their_fds_both_ways() {
        let r = rig();
        let (pipe_r, pipe_w) = sys::pipe().unwrap();
        let id = sys::file_id(pipe_r.as_raw_fd()).unwrap();
        // SET_MEM_TABLE-like: payload and two fds.
        sys::send_all_with_fds(
            r.frontend.as_raw_fd(),
            &[&header(5, 0x1, 4), b"abcd"],
            &[pipe_r.as_raw_fd(), pipe_w.as_raw_fd()],
        )
        .unwrap();
        let m = recv(&r.daemon);
        assert_eq!(
            (m.request(), m.flags(), m.payload.as_slice()),
            (5, 0x1, &b"abcd"[..])
        );
        assert_eq!(m.fds.len(), 2);
        assert_eq!(sys::file_id(m.fds[0].as_raw_fd()).unwrap(), id);
        // The forwarded write end still reaches our read end.
        let mut w = std::fs::File::from(m.fds[1].try_clone().unwrap());
        w.write_all(b"z").unwrap();
        let mut byte = [0u8; 1];
        std::fs::File::from(pipe_r).read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"z");

        // A reply with an fd goes the other way.
        let (other, _keep) = sys::pipe().unwrap();
        sys::send_all_with_fds(
            r.daemon.as_raw_fd(),
            &[&header(40, 0x5, 0)],
            &[other.as_raw_fd()],
        )
        .unwrap();
        let m = recv(&r.frontend);
        assert_eq!(
            (m.request(), m.flags(), m.payload.len(), m.fds.len()),
            (40, 0x5, 0, 1)
        );
        assert_eq!(
            sys::file_id(m.fds[0].as_raw_fd()).unwrap(),
            sys::file_id(other.as_raw_fd()).unwrap()
        );
        assert_eq!(r.relay.counters.to_backend.load(Ordering::Relaxed), 1);
        assert_eq!(r.relay.counters.to_frontend.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn payloads_larger_than_one_read_arrive_whole() {
        let r = rig();
        // Far larger than a socket buffer, written in uneven pieces (the header split too), so
        // the relay must assemble it from many reads.
        let size = 600 * 1024;
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let h = header(24, 0x1, size as u32);
        let mut writer = r.frontend.try_clone().unwrap();
        let sent = payload.clone();
        let t = std::thread::spawn(move || {
            writer.write_all(&h[..5]).unwrap();
            writer.write_all(&h[5..]).unwrap();
            for chunk in sent.chunks(70_001) {
                writer.write_all(chunk).unwrap();
            }
            // And a second message right behind it.
            writer.write_all(&header(1, 0x1, 0)).unwrap();
        });
        let m = recv(&r.daemon);
        assert_eq!(m.request(), 24);
        assert!(m.payload == payload, "payload corrupted");
        assert_eq!(recv(&r.daemon).request(), 1);
        t.join().unwrap();
    }

    #[test]
    fn captures_the_backend_request_channel_and_reply_ack() {
        let r = rig();
        assert!(!r.slot.is_installed());
        let features = VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIG;
        sys::send_all_with_fds(
            r.frontend.as_raw_fd(),
            &[
                &header(SET_PROTOCOL_FEATURES, 0x1, 8),
                &features.bits().to_le_bytes(),
            ],
            &[],
        )
        .unwrap();
        let (channel_ours, mut channel_frontend) = UnixStream::pair().unwrap();
        sys::send_all_with_fds(
            r.frontend.as_raw_fd(),
            &[&header(SET_BACKEND_REQ_FD, 0x9, 0)],
            &[channel_ours.as_raw_fd()],
        )
        .unwrap();
        drop(channel_ours);
        // The daemon gets both, unchanged.
        assert_eq!(recv(&r.daemon).request(), SET_PROTOCOL_FEATURES);
        let m = recv(&r.daemon);
        assert_eq!(
            (m.request(), m.flags(), m.fds.len()),
            (SET_BACKEND_REQ_FD, 0x9, 1)
        );
        drop(m); // the daemon's copy goes away: the relay's own must keep the channel open
        assert!(r.slot.is_installed() && r.slot.reply_ack());

        let front = std::thread::spawn(move || {
            let m = recv(&channel_frontend);
            assert_eq!((m.request(), m.flags(), m.payload.len()), (2, 0x9, 0));
            let mut ack = header(2, 0x5, 8).to_vec();
            ack.extend_from_slice(&0u64.to_le_bytes());
            channel_frontend.write_all(&ack).unwrap();
        });
        assert_eq!(
            r.slot.notify_config_change(Duration::from_secs(30)),
            Notification::Acked
        );
        front.join().unwrap();
    }

    #[test]
    fn a_padded_mem_table_is_trimmed_to_its_regions() {
        let r = rig();
        let (memfd, _w) = sys::pipe().unwrap();
        // As User-Mode Linux 6.1 sends it: one region, room for two.
        let mut payload = vec![0u8; 72];
        payload[0..4].copy_from_slice(&1u32.to_le_bytes());
        for (i, b) in payload[8..40].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        payload[40..].fill(0xee);
        sys::send_all_with_fds(
            r.frontend.as_raw_fd(),
            &[&header(SET_MEM_TABLE, 0x9, 72), &payload],
            &[memfd.as_raw_fd()],
        )
        .unwrap();
        let m = recv(&r.daemon);
        assert_eq!(m.payload.len(), 40);
        assert_eq!(u32::from_le_bytes(m.header[8..12].try_into().unwrap()), 40);
        assert_eq!(&m.payload[..40], &payload[..40]);
        assert_eq!((m.flags(), m.fds.len()), (0x9, 1));

        // Exact ones, and ones that are not padding, go through untouched.
        for (regions, len) in [(1u32, 40usize), (2, 72), (0, 40), (1, 50), (9, 8 + 10 * 32)] {
            let mut p = vec![0u8; len];
            p[0..4].copy_from_slice(&regions.to_le_bytes());
            sys::send_all_with_fds(
                r.frontend.as_raw_fd(),
                &[&header(SET_MEM_TABLE, 0x1, len as u32), &p],
                &[],
            )
            .unwrap();
            assert_eq!(
                recv(&r.daemon).payload.len(),
                len,
                "{regions} regions in {len}"
            );
        }
    }

    #[test]
    fn a_reply_is_never_mistaken_for_a_request() {
        let r = rig();
        let (a, _b) = UnixStream::pair().unwrap();
        // Same code as SET_BACKEND_REQ_FD, but flagged as a reply (from the daemon's side a
        // reply cannot carry it; a frontend that sends one must not install a channel).
        sys::send_all_with_fds(
            r.frontend.as_raw_fd(),
            &[&header(SET_BACKEND_REQ_FD, 0x5, 0)],
            &[a.as_raw_fd()],
        )
        .unwrap();
        assert_eq!(recv(&r.daemon).request(), SET_BACKEND_REQ_FD);
        assert!(!r.slot.is_installed());
    }

    #[test]
    fn either_side_closing_closes_both_and_stops_the_threads() {
        let r = rig();
        drop(r.frontend);
        assert!(read_message(r.daemon.as_raw_fd()).unwrap().is_none());
        r.relay.join();

        let r = rig();
        drop(r.daemon);
        assert!(read_message(r.frontend.as_raw_fd()).unwrap().is_none());
        r.relay.join();

        // A message cut off in the middle: the other side is closed, not fed half a message.
        let mut r = rig();
        r.frontend.write_all(&header(5, 0x1, 100)).unwrap();
        r.frontend.write_all(&[0u8; 10]).unwrap();
        r.frontend.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(read_message(r.daemon.as_raw_fd()).unwrap().is_none());
        r.relay.join();

        // An oversized payload is refused the same way.
        let mut r = rig();
        r.frontend
            .write_all(&header(5, 0x1, (MAX_PAYLOAD + 1) as u32))
            .unwrap();
        assert!(read_message(r.daemon.as_raw_fd()).unwrap().is_none());
        r.relay.join();
    }

    #[test]
    fn cut_stops_a_live_relay() {
        let r = rig();
        r.relay.cutter().unwrap().cut();
        assert!(read_message(r.frontend.as_raw_fd()).unwrap().is_none());
        assert!(read_message(r.daemon.as_raw_fd()).unwrap().is_none());
        r.relay.join();
    }

    #[test]
    fn private_connection_leaves_nothing_on_disk() {
        let (listener, _ours) = private_connection().unwrap();
        let (_theirs, _) = listener.accept().unwrap();
        let addr = listener.local_addr().unwrap();
        let path = addr.as_pathname().expect("a path socket").to_path_buf();
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
    }
}
