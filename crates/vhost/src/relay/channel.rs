//! The backend request channel, from the backend's side: how the daemon tells the frontend
//! that the config space changed (`VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`, the vhost-user form
//! of a config interrupt).
//!
//! vhost 0.18's `Backend` (what `vhost-user-backend` hands to the device for
//! `SET_BACKEND_REQ_FD`) cannot send this message and hides its socket, so the relay keeps its
//! own duplicate of the channel's socket and sends on it here. Nothing else in the daemon
//! writes to the channel.
//!
//! Message: header only, `request = 2`, `flags = 0x1` (version 1), `| 0x8` (`NEED_REPLY`) when
//! `REPLY_ACK` was negotiated, `size = 0`. The ack is a reply header (`flags & 0x4`) with an
//! 8-byte payload, 0 meaning success. An ack that comes after the timeout is discarded before
//! the next message, so acks never get out of step with messages.
//!
//! While the frontend is not running the device (no ring started and enabled, followed by the
//! relay), nothing is sent: the notification is [`Notification::Pending`] and goes out, on a
//! thread of its own, when a ring starts again (`BackendChannel::set_running`). QEMU 11
//! closes the channel and crashes when a config change arrives while the VM is in prelaunch,
//! paused, or the device was unplugged (`docs/upstream/qemu-config-change-while-stopped.md`).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{BackendReq, VhostUserHeaderFlag};
use vmm_sys_util::poll::WatchingEvents;

use super::message::{header, HEADER_SIZE};
use crate::notifier::{ConfigNotifier, Notification};
use crate::wait::Waiter;

/// Header flags: protocol version 1 (`VhostUserHeaderFlag::VERSION` is the field's mask).
const VERSION_1: u32 = 0x1;

/// The relay's copy of one connection's backend request channel; a [`ConfigNotifier`].
#[derive(Debug, Default)]
pub struct BackendChannel {
    /// Non-blocking: every wait is bounded by a deadline.
    socket: Mutex<Option<UnixStream>>,
    reply_ack: AtomicBool,
    run: Mutex<RunState>,
}

/// Whether the frontend runs the device, and a notification held back until it does.
#[derive(Debug, Default)]
struct RunState {
    running: bool,
    /// The timeout of the held-back notification.
    pending: Option<Duration>,
}

impl BackendChannel {
    /// The frontend sent `SET_BACKEND_REQ_FD`: keep (a duplicate of) its socket.
    pub(crate) fn install(&self, socket: UnixStream) -> io::Result<()> {
        socket.set_nonblocking(true)?;
        *self.socket.lock().unwrap_or_else(|p| p.into_inner()) = Some(socket);
        Ok(())
    }

    /// The frontend set its protocol features: whether it acks backend requests.
    pub(crate) fn set_reply_ack(&self, on: bool) {
        self.reply_ack.store(on, Ordering::SeqCst);
    }

    /// The relay saw the frontend start (`true`) or stop running the device. Returns the
    /// timeout of a notification held back while it was not, which the caller must now send
    /// ([`send_pending`](Self::send_pending), off the relay's threads).
    pub(crate) fn set_running(&self, running: bool) -> Option<Duration> {
        let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
        let was = std::mem::replace(&mut run.running, running);
        if running && !was {
            run.pending.take()
        } else {
            None
        }
    }

    /// Sends a notification that was held back; a new change arriving meanwhile is sent once.
    pub(crate) fn send_pending(&self, timeout: Duration) -> Notification {
        let n = self.notify_config_change(timeout);
        tracing::info!(
            ?n,
            "held-back config change sent: the frontend runs the device again"
        );
        n
    }

    /// Writes `bytes` as they are on the channel, for tests of a frontend's handling of a
    /// broken backend request (a truncated header, a bad size). The daemon never calls it.
    ///
    /// Errors: no channel yet (`NotConnected`), or the write failed or would block.
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let mut socket = guard.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the frontend never sent SET_BACKEND_REQ_FD",
            )
        })?;
        socket.write_all(bytes)
    }
}

impl ConfigNotifier for BackendChannel {
    fn notify_config_change(&self, timeout: Duration) -> Notification {
        let guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let Some(socket) = guard.as_ref() else {
            return Notification::NoChannel;
        };
        {
            let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
            if !run.running {
                run.pending = Some(timeout);
                return Notification::Pending;
            }
        }
        match send_config_change(socket, self.reply_ack(), timeout) {
            Ok(n) => n,
            Err(e) => Notification::Failed(e.to_string()),
        }
    }

    fn has_channel(&self) -> bool {
        self.socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn reply_ack(&self) -> bool {
        self.reply_ack.load(Ordering::SeqCst)
    }
}

fn send_config_change(
    mut socket: &UnixStream,
    need_reply: bool,
    timeout: Duration,
) -> io::Result<Notification> {
    let deadline = Instant::now() + timeout;
    discard_stale_acks(socket)?;
    let mut flags = VERSION_1;
    if need_reply {
        flags |= VhostUserHeaderFlag::NEED_REPLY.bits();
    }
    let request = u32::from(BackendReq::CONFIG_CHANGE_MSG);
    let msg = header(request, flags, 0);
    let mut sent = 0;
    while sent < msg.len() {
        match socket.write(&msg[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_for(socket, WatchingEvents::empty().set_write(), deadline)? {
                    return Ok(Notification::TimedOut);
                }
            }
            Err(e) => return Err(e),
        }
    }
    tracing::debug!(need_reply, "config-change notification sent");
    if !need_reply {
        return Ok(Notification::Sent);
    }
    let mut reply = [0u8; HEADER_SIZE + 8];
    let mut got = 0;
    while got < reply.len() {
        if !wait_for(socket, WatchingEvents::empty().set_read(), deadline)? {
            return Ok(Notification::TimedOut);
        }
        match socket.read(&mut reply[got..]) {
            Ok(0) => return Err(closed()),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return Err(e),
        }
    }
    let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().expect("4 bytes"));
    let (rrequest, rflags, size) = (word(0), word(4), word(8));
    if rrequest != request || rflags & VhostUserHeaderFlag::REPLY.bits() == 0 || size != 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected ack: request {rrequest}, flags {rflags:#x}, size {size}"),
        ));
    }
    let value = u64::from_le_bytes(reply[12..20].try_into().expect("8 bytes"));
    Ok(if value == 0 {
        Notification::Acked
    } else {
        Notification::Refused(value)
    })
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the frontend closed the backend request channel",
    )
}

/// Waits until `socket` is ready for `events`; false when the deadline passed. A hang-up
/// counts as ready (the following write or read reports it).
fn wait_for(socket: &UnixStream, events: WatchingEvents, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    let [ready] = Waiter::new([(socket, events)])?.wait(Some(left))?;
    Ok(ready)
}

/// Drops whatever the frontend sent that nobody read: acks of notifications that timed out.
fn discard_stale_acks(mut socket: &UnixStream) -> io::Result<()> {
    let mut sink = [0u8; 256];
    loop {
        match socket.read(&mut sink) {
            Ok(0) => return Err(closed()),
            Ok(n) => tracing::debug!(bytes = n, "discarding a late ack on the backend channel"),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> (BackendChannel, UnixStream) {
        let (ours, frontend) = UnixStream::pair().unwrap();
        let slot = BackendChannel::default();
        slot.install(ours).unwrap();
        assert_eq!(slot.set_running(true), None);
        (slot, frontend)
    }

    fn read_header(s: &mut UnixStream) -> (u32, u32, u32) {
        let mut h = [0u8; HEADER_SIZE];
        s.read_exact(&mut h).unwrap();
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        (w(0), w(4), w(8))
    }

    fn ack(s: &mut UnixStream, value: u64) {
        let mut m = Vec::new();
        m.extend_from_slice(&header(2, VERSION_1 | VhostUserHeaderFlag::REPLY.bits(), 8));
        m.extend_from_slice(&value.to_le_bytes());
        s.write_all(&m).unwrap();
    }

    #[test]
    fn without_channel_nothing_is_sent() {
        let slot = BackendChannel::default();
        assert_eq!(
            slot.notify_config_change(Duration::from_secs(1)),
            Notification::NoChannel
        );
    }

    #[test]
    fn without_reply_ack_the_message_has_version_flag_only() {
        let (slot, mut frontend) = slot();
        assert_eq!(
            slot.notify_config_change(Duration::from_secs(5)),
            Notification::Sent
        );
        assert_eq!(read_header(&mut frontend), (2, 0x1, 0));
    }

    #[test]
    fn with_reply_ack_waits_for_the_ack_and_reads_its_value() {
        let (slot, mut frontend) = slot();
        slot.set_reply_ack(true);
        let front = std::thread::spawn(move || {
            assert_eq!(read_header(&mut frontend), (2, 0x9, 0));
            ack(&mut frontend, 0);
            assert_eq!(read_header(&mut frontend), (2, 0x9, 0));
            ack(&mut frontend, 22);
            frontend
        });
        assert_eq!(
            slot.notify_config_change(Duration::from_secs(30)),
            Notification::Acked
        );
        assert_eq!(
            slot.notify_config_change(Duration::from_secs(30)),
            Notification::Refused(22)
        );
        drop(front.join().unwrap());
        assert!(matches!(
            slot.notify_config_change(Duration::from_secs(30)),
            Notification::Failed(_)
        ));
    }

    #[test]
    fn while_the_device_is_not_running_the_change_is_held_back() {
        let (slot, mut frontend) = slot();
        slot.set_running(false);
        frontend.set_nonblocking(true).unwrap();
        assert_eq!(
            slot.notify_config_change(Duration::from_secs(7)),
            Notification::Pending
        );
        assert_eq!(
            slot.notify_config_change(Duration::from_secs(9)),
            Notification::Pending
        );
        let mut byte = [0u8; 1];
        assert_eq!(
            frontend.read(&mut byte).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing sent while stopped"
        );
        // Running again: one notification, with the latest timeout, then nothing held.
        assert_eq!(slot.set_running(true), Some(Duration::from_secs(9)));
        assert_eq!(slot.set_running(true), None);
        assert_eq!(
            slot.send_pending(Duration::from_secs(1)),
            Notification::Sent
        );
        frontend.set_nonblocking(false).unwrap();
        assert_eq!(read_header(&mut frontend), (2, 0x1, 0));
    }

    #[test]
    fn a_late_ack_does_not_answer_the_next_message() {
        let (slot, mut frontend) = slot();
        slot.set_reply_ack(true);
        // Nobody acks: the wait ends at the (short) timeout.
        assert_eq!(
            slot.notify_config_change(Duration::from_millis(50)),
            Notification::TimedOut
        );
        assert_eq!(read_header(&mut frontend), (2, 0x9, 0));
        // The late ack arrives, then the next notification: it must wait for its own ack.
        ack(&mut frontend, 0);
        let front = std::thread::spawn(move || {
            assert_eq!(read_header(&mut frontend), (2, 0x9, 0));
            ack(&mut frontend, 7);
            frontend
        });
        assert_eq!(
            slot.notify_config_change(Duration::from_secs(30)),
            Notification::Refused(7)
        );
        drop(front.join().unwrap());
    }
}
