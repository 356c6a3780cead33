//! The vhost 0.18 workaround: a message-level relay between the frontend and
//! `vhost-user-backend`'s daemon, so the daemon can send config changes and serve User-Mode
//! Linux.
//!
//! # When to delete this module
//!
//! It exists for two gaps in rust-vmm `vhost` 0.18 / `vhost-user-backend` 0.24:
//!
//! 1. The backend-side `Backend` (what `vhost-user-backend` hands the device with
//!    `set_backend_req_fd`) cannot send `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` and hides its
//!    socket, so the balloon could not tell the guest about a new target. Upstream change:
//!    `docs/upstream/0001-backend-config-change.patch` (`Backend` implements
//!    `VhostUserFrontendReqHandler::handle_config_change`).
//! 2. `SET_MEM_TABLE` with a payload longer than its regions (User-Mode Linux 6.1 pads it) is
//!    refused as an invalid message. Upstream change:
//!    `docs/upstream/0002-accept-padded-set-mem-table.patch`.
//!
//! When a `vhost` release carries both (and `vhost-user-backend` one built on it), delete
//! this directory; [`BackendChannel`]'s place as the [`ConfigNotifier`] is then taken by the
//! `Backend` the device receives in `set_backend_req_fd` (a few lines in `backend.rs`), and
//! `session.rs` starts the `VhostUserDaemon` on the accepted frontend stream directly. With
//! only (1) upstream, keep `mem_table.rs` for UML and the relay around it; with only (2), keep
//! [`channel`]. Nothing else in the daemon knows the relay: `session.rs` constructs it and
//! the host API holds its notifier as an `Arc<dyn ConfigNotifier>`.
//!
//! # What it does
//!
//! ```text
//!  frontend ──public socket──▶ relay ──private connection──▶ VhostUserDaemon
//!                                │ keeps a dup of the SET_BACKEND_REQ_FD socket
//!                                ▼
//!                      config-change messages (BackendChannel)
//! ```
//!
//! Two threads, one per direction, copy whole messages (`message.rs`); the descriptors the
//! sender attached are forwarded with the same message, and the relay's own copies closed
//! once forwarded. Nothing is reordered; the relay answers config accesses itself (those vhost
//! would refuse, `config_access.rs`, and once the daemon is settled all of them, below), and
//! adds only `GET_VRING_BASE` / `SET_VRING_CALL` requests
//! that stop rings the library would keep running (`rings.rs`; the replies to those are not
//! forwarded). It looks at two frontend requests on the way:
//! - `SET_PROTOCOL_FEATURES` (16): whether `REPLY_ACK` is in use (the config-change message
//!   then asks for an ack);
//! - `SET_BACKEND_REQ_FD` (21): a duplicate of its descriptor becomes the [`BackendChannel`];
//!
//! and changes one, for compatibility: a padded `SET_MEM_TABLE` (5) is trimmed
//! (`mem_table.rs`).
//!
//! Given the device's [`ConfigSpace`] ([`Relay::start_with`]), it answers `GET_CONFIG` and
//! `SET_CONFIG` itself whenever the daemon has replied to everything forwarded before them
//! (`settled.rs`, `local_config.rs`): the answer is the daemon's, and the frontend, which
//! waits for it with the guest's vCPU stopped (QEMU's generic device: one read and one write
//! per balloon request), is spared two thread hops.
//!
//! When either side closes (or breaks the framing), both connections are shut down, so each
//! end sees the other go away exactly as without the relay.
//!
//! # Use outside the daemon
//!
//! Test backends built on `vhost-user-backend` can reuse it: serve the daemon on one end of
//! [`private_connection`] (or any socket), accept the frontend, then
//! [`Relay::start`]`(frontend, daemon_side)`; [`Relay::notifier`] sends config changes,
//! [`Relay::cutter`] cuts the connection as a dying backend would.
//!
//! # Limits
//!
//! - A message may carry at most 32 descriptors and a payload of at most [`MAX_PAYLOAD`]
//!   bytes; beyond that the connection is closed (vhost-user messages are far smaller:
//!   `SET_MEM_TABLE` carries 8 regions in 264 bytes).
//! - Each message costs one extra copy and two extra syscalls per direction (microseconds; the
//!   vhost-user control path is not a data path: queue kicks and calls are eventfds that go
//!   straight to the daemon's worker threads, they never cross the relay).
//! - The relay does not check the protocol itself; `vhost-user-backend` does.

pub mod channel;
mod config_access;
pub mod hooks;
mod local_config;
mod mem_table;
mod message;
mod rings;
mod settled;

use std::io;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};

use crate::notifier::ConfigNotifier;
use vmm_sys_util::tempdir::TempDir;

pub use channel::BackendChannel;
pub use hooks::{ConfigSpace, RingHooks};
pub use message::MAX_PAYLOAD;

use config_access::{screen, Screened};
use mem_table::trim_padded_mem_table;
pub(crate) use message::read_message;
use message::{write_message, Message};
use rings::{is_ring_base_reply, ring_base_requests, RingEvent, Rings, MAX_RINGS};
use settled::Settled;

/// Which way a relay thread copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Frontend requests, going to the daemon.
    ToBackend,
    /// The daemon's replies, going to the frontend.
    ToFrontend,
}

/// Messages relayed over one connection, by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// Frontend -> daemon.
    pub to_backend: u64,
    /// Daemon -> frontend.
    pub to_frontend: u64,
    /// A relay thread panicked (a bug: the fuzz harness checks it).
    pub panicked: bool,
}

#[derive(Debug, Default)]
struct Counters {
    to_backend: AtomicU64,
    to_frontend: AtomicU64,
}

/// A running relay between one frontend connection and one daemon connection.
///
/// Dropping it cuts both connections and waits for its threads.
#[derive(Debug)]
pub struct Relay {
    front: UnixStream,
    back: UnixStream,
    threads: Vec<JoinHandle<()>>,
    channel: Arc<BackendChannel>,
    counters: Arc<Counters>,
    /// Threads sending a held-back config change (`channel.rs`).
    senders: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// What the inbound thread needs besides its two sockets.
struct Inbound {
    channel: Arc<BackendChannel>,
    hooks: Option<Arc<dyn RingHooks>>,
    /// Config accesses are answered from here once the daemon is settled.
    config: Option<Arc<dyn ConfigSpace>>,
    /// The frontend negotiated the `CONFIG` protocol feature (without it the daemon refuses
    /// config requests, and so must see them).
    config_negotiated: bool,
    settled: Arc<Settled>,
    rings: Rings,
    /// Serialises writes to the frontend with the outbound thread (the relay answers some
    /// config requests itself).
    front_lock: Arc<Mutex<()>>,
    senders: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Replies to the relay's own `GET_VRING_BASE` requests still to come (the outbound thread
    /// drops them).
    own_replies: Arc<AtomicU32>,
}

impl Relay {
    /// Starts relaying between `front` (the frontend's connection) and `back` (a connection
    /// to the `VhostUserDaemon`), on two threads.
    ///
    /// Errors: duplicating the sockets or spawning a thread failed (nothing keeps running).
    pub fn start(front: UnixStream, back: UnixStream) -> io::Result<Relay> {
        Self::start_with(front, back, None, None)
    }

    /// [`start`](Self::start), telling `hooks` about the ring messages the device behind the
    /// daemon must see ([`RingHooks`]), and answering config accesses from `config` itself
    /// whenever the daemon has handled everything before them ([`ConfigSpace`]).
    pub fn start_with(
        front: UnixStream,
        back: UnixStream,
        hooks: Option<Arc<dyn RingHooks>>,
        config: Option<Arc<dyn ConfigSpace>>,
    ) -> io::Result<Relay> {
        let channel = Arc::new(BackendChannel::default());
        let counters = Arc::new(Counters::default());
        let senders = Arc::new(Mutex::new(Vec::new()));
        let front_lock = Arc::new(Mutex::new(()));
        let settled = Arc::new(Settled::default());
        let keep = (front.try_clone()?, back.try_clone()?);
        let (front2, back2) = (front.try_clone()?, back.try_clone()?);
        let own_replies = Arc::new(AtomicU32::new(0));
        let dropped = own_replies.clone();
        let limit = hooks.as_ref().map_or(MAX_RINGS, |h| h.rings());
        let mut inbound_state = Inbound {
            channel: channel.clone(),
            hooks,
            config,
            config_negotiated: false,
            settled: settled.clone(),
            rings: Rings::new(limit),
            front_lock: front_lock.clone(),
            senders: senders.clone(),
            own_replies,
        };
        let c1 = counters.clone();
        let inbound = std::thread::Builder::new()
            .name("vhost-relay-in".into())
            .spawn(move || {
                pump(&front, &back, Direction::ToBackend, &c1, |msg, from, to| {
                    inbound_state.relay(msg, from, to)
                })
            })?;
        let c2 = counters.clone();
        let outbound = std::thread::Builder::new()
            .name("vhost-relay-out".into())
            .spawn(move || {
                pump(&back2, &front2, Direction::ToFrontend, &c2, |msg, _, to| {
                    // Every reply settles what the daemon handled, the relay's own included.
                    settled.replied(msg.request());
                    let ours = is_ring_base_reply(&msg)
                        && dropped
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                            .is_ok();
                    if ours {
                        return Ok(0);
                    }
                    let _serial = front_lock.lock().unwrap_or_else(|p| p.into_inner());
                    write_message(to, &msg).map(|()| 1)
                })
            });
        let outbound = match outbound {
            Ok(t) => t,
            Err(e) => {
                shut(&keep.0);
                shut(&keep.1);
                let _ = inbound.join();
                return Err(e);
            }
        };
        Ok(Relay {
            front: keep.0,
            back: keep.1,
            threads: vec![inbound, outbound],
            channel,
            counters,
            senders,
        })
    }

    /// The connection's backend request channel: sends config changes once the frontend set
    /// it up.
    pub fn notifier(&self) -> Arc<BackendChannel> {
        self.channel.clone()
    }

    /// Cuts both connections (both threads then stop).
    pub fn cut(&self) {
        shut(&self.front);
        shut(&self.back);
    }

    /// A handle that cuts the connections from another thread.
    pub fn cutter(&self) -> io::Result<Cutter> {
        Ok(Cutter {
            front: self.front.try_clone()?,
            back: self.back.try_clone()?,
        })
    }

    /// Waits for both threads to stop (they do once either side closed, or after
    /// [`cut`](Relay::cut)); returns how many messages went each way.
    pub fn join(mut self) -> RelayCounts {
        let mut panicked = false;
        for t in self.threads.drain(..) {
            panicked |= t.join().is_err();
        }
        self.join_senders();
        RelayCounts {
            panicked,
            ..self.counts()
        }
    }

    /// Held-back config changes end within their timeout (or at once: the sockets are shut).
    fn join_senders(&self) {
        let senders = std::mem::take(&mut *self.senders.lock().unwrap_or_else(|p| p.into_inner()));
        for t in senders {
            let _ = t.join();
        }
    }

    fn counts(&self) -> RelayCounts {
        RelayCounts {
            to_backend: self.counters.to_backend.load(Ordering::Relaxed),
            to_frontend: self.counters.to_frontend.load(Ordering::Relaxed),
            panicked: false,
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
        self.join_senders();
    }
}

/// Cuts a relay's connections from anywhere: both ends see a hang-up.
#[derive(Debug)]
pub struct Cutter {
    front: UnixStream,
    back: UnixStream,
}

impl Cutter {
    /// Shuts both connections down.
    pub fn cut(&self) {
        shut(&self.front);
        shut(&self.back);
    }
}

/// Shuts a socket down both ways (wakes every thread blocked on it); errors are irrelevant.
fn shut(socket: &UnixStream) {
    let _ = socket.shutdown(Shutdown::Both);
}

/// Copies messages `from` -> `to` until either breaks; then shuts both down. `relay`
/// handles one message and says how many it sent on.
fn pump(
    from: &UnixStream,
    to: &UnixStream,
    direction: Direction,
    counters: &Counters,
    mut relay: impl FnMut(Message, &UnixStream, &UnixStream) -> io::Result<u64>,
) {
    let result = (|| -> io::Result<()> {
        while let Some(msg) = read_message(from)? {
            tracing::trace!(
                ?direction,
                request = msg.request(),
                flags = format_args!("{:#x}", msg.flags()),
                size = msg.payload.len(),
                fds = msg.fds.len(),
                "vhost-user message"
            );
            let sent = relay(msg, from, to)?;
            let counter = match direction {
                Direction::ToBackend => &counters.to_backend,
                Direction::ToFrontend => &counters.to_frontend,
            };
            counter.fetch_add(sent, Ordering::Relaxed);
        }
        Ok(())
    })();
    match result {
        Ok(()) => tracing::debug!(?direction, "relay: end of stream"),
        Err(e) => tracing::debug!(?direction, error = %e, "relay: connection ended"),
    }
    shut(from);
    shut(to);
}

impl Inbound {
    /// One frontend request: answered here (a config access vhost would refuse), or told to
    /// the hooks, forwarded (trimmed if padded) and followed by what the daemon needs to
    /// watch a replaced kick fd. Returns the messages sent to the daemon.
    fn relay(
        &mut self,
        mut msg: Message,
        front: &UnixStream,
        back: &UnixStream,
    ) -> io::Result<u64> {
        match screen(&msg, self.channel.reply_ack()) {
            Screened::Forward => {}
            Screened::Answer(reply) => {
                let _serial = self.front_lock.lock().unwrap_or_else(|p| p.into_inner());
                write_message(front, &reply)?;
                return Ok(0);
            }
            Screened::Drop => return Ok(0),
        }
        if let Some(handled) = self.answer_config(&msg) {
            if let Some(reply) = handled {
                let _serial = self.front_lock.lock().unwrap_or_else(|p| p.into_inner());
                write_message(front, &reply)?;
            }
            return Ok(0);
        }
        if let Some(bits) = observe(&msg, &self.channel) {
            self.config_negotiated = bits & VhostUserProtocolFeatures::CONFIG.bits() != 0;
        }
        let mut ahead = Vec::new();
        match self.rings.before(&msg) {
            Some(RingEvent::Base {
                queue,
                base,
                running,
            }) => {
                let new_driver = self
                    .hooks
                    .as_ref()
                    .map_or(running, |h| h.ring_base(queue, base, running));
                // Set up again while it ran: the first ring of a new driver whose frontend
                // stopped nothing (User-Mode Linux), so every ring still runs. (A new driver
                // found on a stopped ring, after a VMM stopped them all, may have started its
                // lower rings already: nothing to stop then.)
                if new_driver && running {
                    ahead = self.rings.stop_all(Some(queue as usize));
                }
            }
            Some(RingEvent::ResetOwner) => {
                if let Some(h) = &self.hooks {
                    h.reset_owner();
                }
            }
            None => {}
        }
        ahead.extend(self.rings.ahead(&msg));
        // Stopped before the daemon sees the stop: a change set meanwhile is held back.
        self.running_changed();
        trim_padded_mem_table(&mut msg);
        let mut sent = self.send_own(back, ahead)?;
        self.settled.forwarded(msg.request());
        write_message(back, &msg)?;
        sent += 1;
        let after = self.rings.after(&msg);
        sent += self.send_own(back, after)?;
        self.running_changed();
        Ok(sent)
    }

    /// Sends the relay's own requests to the daemon; the replies to its `GET_VRING_BASE`s
    /// are counted for the outbound thread to drop.
    fn send_own(&self, back: &UnixStream, msgs: Vec<Message>) -> io::Result<u64> {
        self.own_replies
            .fetch_add(ring_base_requests(&msgs), Ordering::AcqRel);
        for m in &msgs {
            self.settled.forwarded(m.request());
            write_message(back, m)?;
        }
        Ok(msgs.len() as u64)
    }

    /// A config access answered from the device's config space (see `local_config.rs`):
    /// `Some(reply to send, if any)`, or `None` to forward it.
    fn answer_config(&self, msg: &Message) -> Option<Option<Message>> {
        let space = self.config.as_deref()?;
        if msg.is_reply() || !self.config_negotiated || !self.settled.all_handled() {
            return None;
        }
        local_config::answer(msg, space, self.channel.reply_ack())
    }

    /// Tells the channel whether the frontend runs the device; sends a held-back config
    /// change on a thread of its own when it starts to (its ack may take the frontend a
    /// while, and the relay must keep forwarding meanwhile).
    fn running_changed(&self) {
        let Some(timeout) = self.channel.set_running(self.rings.running()) else {
            return;
        };
        let channel = self.channel.clone();
        let spawned = std::thread::Builder::new()
            .name("vhost-relay-notify".into())
            .spawn(move || {
                channel.send_pending(timeout);
            });
        match spawned {
            Ok(t) => {
                let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
                senders.retain(|t| !t.is_finished());
                senders.push(t);
            }
            Err(e) => tracing::warn!(error = %e, "cannot send the held-back config change"),
        }
    }
}

/// Looks at a frontend request on its way to the daemon.
/// Returns the protocol features of a `SET_PROTOCOL_FEATURES`.
fn observe(msg: &Message, channel: &BackendChannel) -> Option<u64> {
    if msg.is_reply() {
        return None;
    }
    match FrontendReq::try_from(msg.request()) {
        Ok(FrontendReq::SET_PROTOCOL_FEATURES) if msg.payload.len() == 8 => {
            let bits = u64::from_le_bytes(msg.payload[..8].try_into().expect("8 bytes"));
            let reply_ack = bits & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
            tracing::debug!(
                protocol_features = format_args!("{bits:#x}"),
                reply_ack,
                "frontend set protocol features"
            );
            channel.set_reply_ack(reply_ack);
            return Some(bits);
        }
        Ok(FrontendReq::SET_BACKEND_REQ_FD) if msg.fds.len() == 1 => {
            let kept = msg.fds[0]
                .try_clone()
                .map(UnixStream::from)
                .and_then(|s| channel.install(s));
            match kept {
                Ok(()) => tracing::debug!("frontend set up the backend request channel"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot keep the backend request channel: config changes will not be notified"
                ),
            }
        }
        _ => {}
    }
    None
}

/// A connected pair through a listener nobody else can reach: the daemon's end is accepted
/// from the returned listener (`VhostUserDaemon::start`), ours is the stream.
///
/// The listener is bound in a fresh directory only the owner can enter (`mkdtemp`), connected
/// to at once, and the directory removed before returning, so the pending connection in its
/// backlog is ours.
pub fn private_connection() -> io::Result<(UnixListener, UnixStream)> {
    let mut base = std::env::temp_dir();
    // A Unix socket path holds 107 bytes.
    if base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    let dir =
        TempDir::new_with_prefix(base.join(format!("prezero-vhost-{}-", std::process::id())))?;
    let path = dir.as_path().join("daemon.sock");
    let listener = UnixListener::bind(&path)?;
    let stream = UnixStream::connect(&path)?;
    Ok((listener, stream))
}

#[cfg(test)]
mod tests {
    use super::message::{header, identity, MAX_PAYLOAD};
    use super::*;
    use crate::notifier::{ConfigNotifier, Notification};
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    const SET_MEM_TABLE: u32 = 5;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const SET_BACKEND_REQ_FD: u32 = 21;
    const SET_FEATURES: u32 = 2;
    const SET_VRING_KICK: u32 = 12;

    struct Rig {
        frontend: UnixStream,
        daemon: UnixStream,
        relay: Relay,
    }

    fn rig() -> Rig {
        let (frontend, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, daemon) = UnixStream::pair().unwrap();
        let relay = Relay::start(relay_front, relay_back).unwrap();
        for s in [&frontend, &daemon] {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Rig {
            frontend,
            daemon,
            relay,
        }
    }

    fn send(to: &UnixStream, header: [u8; 12], payload: &[u8], fds: &[&OwnedFd]) {
        let msg = Message {
            header,
            payload: payload.to_vec(),
            fds: fds.iter().map(|f| f.try_clone().unwrap()).collect(),
        };
        write_message(to, &msg).unwrap();
    }

    fn recv(s: &UnixStream) -> Message {
        read_message(s).unwrap().expect("a message")
    }

    fn socket_pair() -> (OwnedFd, OwnedFd) {
        let (a, b) = UnixStream::pair().unwrap();
        (a.into(), b.into())
    }

    #[test]
    fn forwards_messages_and_their_fds_both_ways() {
        let r = rig();
        let (here, there) = socket_pair();
        // SET_MEM_TABLE-like: payload and two fds.
        send(&r.frontend, header(5, 0x1, 4), b"abcd", &[&here, &there]);
        let m = recv(&r.daemon);
        assert_eq!(
            (m.request(), m.flags(), m.payload.as_slice()),
            (5, 0x1, &b"abcd"[..])
        );
        assert_eq!(m.fds.len(), 2);
        assert_eq!(identity(&m.fds[0]), identity(&here));
        // The forwarded end still reaches its peer.
        let mut w = UnixStream::from(m.fds[1].try_clone().unwrap());
        w.write_all(b"z").unwrap();
        let mut byte = [0u8; 1];
        UnixStream::from(here).read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"z");

        // A reply with an fd goes the other way.
        let (other, _keep) = socket_pair();
        send(&r.daemon, header(40, 0x5, 0), b"", &[&other]);
        let m = recv(&r.frontend);
        assert_eq!(
            (m.request(), m.flags(), m.payload.len(), m.fds.len()),
            (40, 0x5, 0, 1)
        );
        assert_eq!(identity(&m.fds[0]), identity(&other));
        r.relay.cut();
        assert_eq!(
            r.relay.join(),
            RelayCounts {
                to_backend: 1,
                to_frontend: 1,
                panicked: false,
            }
        );
    }

    #[test]
    fn payloads_larger_than_one_read_arrive_whole() {
        let r = rig();
        // Far larger than a socket buffer, written in uneven pieces (the header split too), so
        // the relay must assemble it from many reads.
        let size = 600 * 1024;
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        // (Not a config request: those the relay screens, see config_access.rs.)
        let h = header(99, 0x1, size as u32);
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
        assert_eq!(m.request(), 99);
        assert!(m.payload == payload, "payload corrupted");
        assert_eq!(recv(&r.daemon).request(), 1);
        t.join().unwrap();
    }

    #[test]
    fn captures_the_backend_request_channel_and_reply_ack() {
        let r = rig();
        let notifier = r.relay.notifier();
        assert!(!notifier.has_channel());
        let features = VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIG;
        send(
            &r.frontend,
            header(SET_PROTOCOL_FEATURES, 0x1, 8),
            &features.bits().to_le_bytes(),
            &[],
        );
        let (channel_ours, channel_frontend) = UnixStream::pair().unwrap();
        let channel_ours = OwnedFd::from(channel_ours);
        send(
            &r.frontend,
            header(SET_BACKEND_REQ_FD, 0x9, 0),
            b"",
            &[&channel_ours],
        );
        drop(channel_ours);
        // The daemon gets both, unchanged.
        assert_eq!(recv(&r.daemon).request(), SET_PROTOCOL_FEATURES);
        let m = recv(&r.daemon);
        assert_eq!(
            (m.request(), m.flags(), m.fds.len()),
            (SET_BACKEND_REQ_FD, 0x9, 1)
        );
        drop(m); // the daemon's copy goes away: the relay's own must keep the channel open
        assert!(notifier.has_channel() && notifier.reply_ack());
        // Nothing is sent before the frontend runs the device (channel.rs).
        assert_eq!(
            notifier.notify_config_change(Duration::from_secs(30)),
            Notification::Pending
        );
        let (kick, _kick_peer) = socket_pair();
        send(
            &r.frontend,
            header(SET_FEATURES, 0x1, 8),
            &(1u64 << 32).to_le_bytes(),
            &[],
        );
        send(
            &r.frontend,
            header(SET_VRING_KICK, 0x1, 8),
            &0u64.to_le_bytes(),
            &[&kick],
        );
        assert_eq!(recv(&r.daemon).request(), SET_FEATURES);
        assert_eq!(recv(&r.daemon).request(), SET_VRING_KICK);
        // The held-back change goes out first, unasked for by anyone waiting.
        let m = recv(&channel_frontend);
        assert_eq!((m.request(), m.flags(), m.payload.len()), (2, 0x9, 0));
        let mut ack = header(2, 0x5, 8).to_vec();
        ack.extend_from_slice(&0u64.to_le_bytes());
        (&channel_frontend).write_all(&ack).unwrap();

        let front = std::thread::spawn(move || {
            let m = recv(&channel_frontend);
            assert_eq!((m.request(), m.flags(), m.payload.len()), (2, 0x9, 0));
            let mut ack = header(2, 0x5, 8).to_vec();
            ack.extend_from_slice(&0u64.to_le_bytes());
            (&channel_frontend).write_all(&ack).unwrap();
        });
        assert_eq!(
            notifier.notify_config_change(Duration::from_secs(30)),
            Notification::Acked
        );
        front.join().unwrap();
    }

    #[test]
    fn a_padded_mem_table_is_trimmed_to_its_regions() {
        let r = rig();
        let (memfd, _peer) = socket_pair();
        // As User-Mode Linux 6.1 sends it: one region, room for two.
        let mut payload = vec![0u8; 72];
        payload[0..4].copy_from_slice(&1u32.to_le_bytes());
        for (i, b) in payload[8..40].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        payload[40..].fill(0xee);
        send(
            &r.frontend,
            header(SET_MEM_TABLE, 0x9, 72),
            &payload,
            &[&memfd],
        );
        let m = recv(&r.daemon);
        assert_eq!(m.payload.len(), 40);
        assert_eq!(u32::from_le_bytes(m.header[8..12].try_into().unwrap()), 40);
        assert_eq!(&m.payload[..40], &payload[..40]);
        assert_eq!((m.flags(), m.fds.len()), (0x9, 1));

        // Exact ones, and ones that are not padding, go through untouched.
        for (regions, len) in [(1u32, 40usize), (2, 72), (0, 40), (1, 50), (9, 8 + 10 * 32)] {
            let mut p = vec![0u8; len];
            p[0..4].copy_from_slice(&regions.to_le_bytes());
            send(&r.frontend, header(SET_MEM_TABLE, 0x1, len as u32), &p, &[]);
            assert_eq!(
                recv(&r.daemon).payload.len(),
                len,
                "{regions} regions in {len}"
            );
        }
    }

    #[test]
    fn config_reads_are_answered_here_only_once_the_daemon_handled_everything_before() {
        use super::local_config::tests::Space;
        const GET_CONFIG: u32 = 24;
        let (frontend, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, daemon) = UnixStream::pair().unwrap();
        let space = Arc::new(Space(Mutex::new([1, 0, 0, 0, 2, 0, 0, 0])));
        let relay = Relay::start_with(relay_front, relay_back, None, Some(space.clone())).unwrap();
        for s in [&frontend, &daemon] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let get = {
            let mut p = Vec::new();
            for w in [0u32, 8, 0] {
                p.extend_from_slice(&w.to_le_bytes());
            }
            p.resize(20, 0);
            p
        };
        let config = VhostUserProtocolFeatures::CONFIG.bits();
        send(
            &frontend,
            header(SET_PROTOCOL_FEATURES, 0x1, 8),
            &config.to_le_bytes(),
            &[],
        );
        assert_eq!(recv(&daemon).request(), SET_PROTOCOL_FEATURES);
        // SET_PROTOCOL_FEATURES gets no reply: the daemon may not have handled it yet, so the
        // read goes to the daemon, whose reply then settles both.
        send(&frontend, header(GET_CONFIG, 0x1, 20), &get, &[]);
        assert_eq!(recv(&daemon).request(), GET_CONFIG);
        send(&daemon, header(GET_CONFIG, 0x5, 12), &get[..12], &[]);
        assert_eq!(recv(&frontend).payload.len(), 12);
        // Now the relay answers from the config space; the daemon sees nothing.
        send(&frontend, header(GET_CONFIG, 0x1, 20), &get, &[]);
        let reply = recv(&frontend);
        assert!(reply.is_reply());
        assert_eq!(&reply.payload[12..], &[1, 0, 0, 0, 2, 0, 0, 0]);
        // A request without a reply unsettles it again.
        send(
            &frontend,
            header(SET_VRING_KICK, 0x1, 8),
            &0u64.to_le_bytes(),
            &[],
        );
        assert_eq!(recv(&daemon).request(), SET_VRING_KICK);
        send(&frontend, header(GET_CONFIG, 0x1, 20), &get, &[]);
        assert_eq!(recv(&daemon).request(), GET_CONFIG);
        relay.cut();
        let counts = relay.join();
        assert_eq!((counts.to_backend, counts.to_frontend), (4, 1));
    }

    #[test]
    fn a_reply_is_never_mistaken_for_a_request() {
        let r = rig();
        let (a, _b) = socket_pair();
        // Same code as SET_BACKEND_REQ_FD, but flagged as a reply (from the daemon's side a
        // reply cannot carry it; a frontend that sends one must not install a channel).
        send(&r.frontend, header(SET_BACKEND_REQ_FD, 0x5, 0), b"", &[&a]);
        assert_eq!(recv(&r.daemon).request(), SET_BACKEND_REQ_FD);
        assert!(!r.relay.notifier().has_channel());
    }

    #[test]
    fn either_side_closing_closes_both_and_stops_the_threads() {
        let r = rig();
        drop(r.frontend);
        assert!(read_message(&r.daemon).unwrap().is_none());
        r.relay.join();

        let r = rig();
        drop(r.daemon);
        assert!(read_message(&r.frontend).unwrap().is_none());
        r.relay.join();

        // A message cut off in the middle: the other side is closed, not fed half a message.
        let mut r = rig();
        r.frontend.write_all(&header(5, 0x1, 100)).unwrap();
        r.frontend.write_all(&[0u8; 10]).unwrap();
        r.frontend.shutdown(Shutdown::Write).unwrap();
        assert!(read_message(&r.daemon).unwrap().is_none());
        r.relay.join();

        // An oversized payload is refused the same way.
        let mut r = rig();
        r.frontend
            .write_all(&header(5, 0x1, (MAX_PAYLOAD + 1) as u32))
            .unwrap();
        assert!(read_message(&r.daemon).unwrap().is_none());
        r.relay.join();
    }

    #[test]
    fn cut_stops_a_live_relay() {
        let r = rig();
        r.relay.cutter().unwrap().cut();
        assert!(read_message(&r.frontend).unwrap().is_none());
        assert!(read_message(&r.daemon).unwrap().is_none());
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
