//! The vhost-user backend request channel, from the backend's side: how the daemon tells the
//! frontend that the config space changed (`VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`, the
//! vhost-user form of a config interrupt).
//!
//! vhost 0.18's `Backend` (what `vhost-user-backend` hands to the device for
//! `SET_BACKEND_REQ_FD`) cannot send this message and hides its socket, so the
//! [relay](crate::relay) keeps its own duplicate of the channel's socket and sends on it here.
//! Nothing else in the daemon writes to the channel.
//!
//! Message: header only, `request = 2`, `flags = 0x1` (version 1), `| 0x8` (`NEED_REPLY`) when
//! `REPLY_ACK` was negotiated, `size = 0`. The ack is a reply header (`flags & 0x4`) with an
//! 8-byte payload, 0 meaning success. An ack that comes after the timeout is discarded before
//! the next message, so acks never get out of step with messages.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sys::{poll, pollfd};

/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`.
pub const CONFIG_CHANGE_MSG: u32 = 2;
/// Header flags: protocol version 1.
pub const FLAG_VERSION: u32 = 0x1;
/// Header flags: this is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flags: the sender wants an ack.
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// Size of a vhost-user message header.
pub const HEADER_SIZE: usize = 12;

/// What became of a config-change notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Notification {
    /// Sent, and the frontend acknowledged it (`REPLY_ACK` negotiated).
    Acked,
    /// Sent; the frontend did not negotiate `REPLY_ACK`, so there is no ack to wait for.
    Sent,
    /// The target did not change: nothing to tell.
    Unchanged,
    /// No guest is connected; the next one reads the target at probe.
    NoGuest,
    /// The guest did not set up the backend request channel (`BACKEND_REQ`); it sees the new
    /// target the next time it reads its config space.
    NoChannel,
    /// The frontend acknowledged with a failure code.
    Refused(u64),
    /// No ack within the timeout (the frontend may still act on it).
    TimedOut,
    /// The channel is broken (the frontend closed it, or sent garbage).
    Failed(String),
}

/// The daemon's copy of the channel of one connection.
#[derive(Debug, Default)]
pub(crate) struct ChannelSlot {
    socket: Mutex<Option<OwnedFd>>,
    reply_ack: AtomicBool,
}

impl ChannelSlot {
    /// The frontend sent `SET_BACKEND_REQ_FD`: keep (a duplicate of) its socket.
    pub(crate) fn install(&self, socket: OwnedFd) {
        let mut slot = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(socket);
    }

    /// The frontend set its protocol features: whether it acks backend requests.
    pub(crate) fn set_reply_ack(&self, on: bool) {
        self.reply_ack.store(on, Ordering::SeqCst);
    }

    /// Whether the frontend gave us a channel.
    pub(crate) fn is_installed(&self) -> bool {
        self.socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Whether backend requests are acked.
    pub(crate) fn reply_ack(&self) -> bool {
        self.reply_ack.load(Ordering::SeqCst)
    }

    /// Sends a config-change notification, waiting up to `timeout` for the ack.
    pub(crate) fn notify_config_change(&self, timeout: Duration) -> Notification {
        let guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let Some(socket) = guard.as_ref() else {
            return Notification::NoChannel;
        };
        let need_reply = self.reply_ack();
        match send_config_change(socket, need_reply, timeout) {
            Ok(n) => n,
            Err(e) => Notification::Failed(e.to_string()),
        }
    }
}

fn send_config_change(
    socket: &OwnedFd,
    need_reply: bool,
    timeout: Duration,
) -> io::Result<Notification> {
    let fd = socket.as_raw_fd();
    let deadline = Instant::now() + timeout;
    discard_stale_acks(fd)?;
    let flags = FLAG_VERSION | if need_reply { FLAG_NEED_REPLY } else { 0 };
    let mut msg = [0u8; HEADER_SIZE];
    msg[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
    msg[4..8].copy_from_slice(&flags.to_le_bytes());
    let mut sent = 0;
    while sent < msg.len() {
        // SAFETY: sending from a live buffer on an fd we hold open.
        let n = unsafe {
            libc::send(
                fd,
                msg[sent..].as_ptr().cast(),
                msg.len() - sent,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                if !wait_for(fd, libc::POLLOUT, deadline)? {
                    return Ok(Notification::TimedOut);
                }
            }
            _ => return Err(err),
        }
    }
    tracing::debug!(need_reply, "config-change notification sent");
    if !need_reply {
        return Ok(Notification::Sent);
    }
    let mut reply = [0u8; HEADER_SIZE + 8];
    let mut got = 0;
    while got < reply.len() {
        if !wait_for(fd, libc::POLLIN, deadline)? {
            return Ok(Notification::TimedOut);
        }
        // SAFETY: receiving into a live buffer on an fd we hold open.
        let n = unsafe {
            libc::recv(
                fd,
                reply[got..].as_mut_ptr().cast(),
                reply.len() - got,
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the frontend closed the backend request channel",
                ))
            }
            n if n > 0 => got += n as usize,
            _ => {
                let err = io::Error::last_os_error();
                if !matches!(
                    err.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    return Err(err);
                }
            }
        }
    }
    let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().expect("4 bytes"));
    let (request, rflags, size) = (word(0), word(4), word(8));
    if request != CONFIG_CHANGE_MSG || rflags & FLAG_REPLY == 0 || size != 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected ack: request {request}, flags {rflags:#x}, size {size}"),
        ));
    }
    let value = u64::from_le_bytes(reply[12..20].try_into().expect("8 bytes"));
    Ok(if value == 0 {
        Notification::Acked
    } else {
        Notification::Refused(value)
    })
}

/// Waits until `fd` is ready for `events`; false when the deadline passed. A hang-up counts
/// as ready (the following send or recv reports it).
fn wait_for(fd: i32, events: libc::c_short, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut fds = [pollfd(fd, events)];
    Ok(poll(&mut fds, Some(left))? > 0)
}

/// Drops whatever the frontend sent that nobody read: acks of notifications that timed out.
fn discard_stale_acks(fd: i32) -> io::Result<()> {
    let mut sink = [0u8; 256];
    loop {
        // SAFETY: receiving into a live buffer on an fd we hold open.
        let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) };
        match n {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the frontend closed the backend request channel",
                ))
            }
            n if n > 0 => {
                tracing::debug!(bytes = n, "discarding a late ack on the backend channel");
            }
            _ => {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => return Ok(()),
                    _ => return Err(err),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn slot() -> (ChannelSlot, UnixStream) {
        let (ours, frontend) = UnixStream::pair().unwrap();
        let slot = ChannelSlot::default();
        slot.install(OwnedFd::from(ours));
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
        m.extend_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        m.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
        m.extend_from_slice(&8u32.to_le_bytes());
        m.extend_from_slice(&value.to_le_bytes());
        s.write_all(&m).unwrap();
    }

    #[test]
    fn without_channel_nothing_is_sent() {
        let slot = ChannelSlot::default();
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
