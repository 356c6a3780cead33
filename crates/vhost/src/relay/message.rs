//! One vhost-user message as it travels through the relay: the 12-byte header (request `u32`,
//! flags `u32`, payload size `u32`, little-endian; vhost-user spec, "Message Specification"),
//! `size` payload bytes, and the file descriptors the sender attached (`SCM_RIGHTS`).
//!
//! A message arrives in as many reads as the socket hands out; the descriptors come with
//! whichever read carried the bytes they were attached to, and all of them travel on with the
//! first byte of the forwarded message. Sending and receiving with descriptors is
//! `vmm-sys-util`'s [`ScmSocket`].

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{VhostUserHeaderFlag, MAX_ATTACHED_FD_ENTRIES};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Size of a vhost-user message header.
pub const HEADER_SIZE: usize = 12;

/// Largest payload the relay forwards (vhost-user messages stay under 4 KiB).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// One vhost-user message: header, payload, attached descriptors.
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

    /// A reply (from either side) rather than a request.
    pub(crate) fn is_reply(&self) -> bool {
        self.flags() & VhostUserHeaderFlag::REPLY.bits() != 0
    }

    /// Cuts the payload to `len` bytes, keeping the header's size field in step.
    pub(crate) fn truncate_payload(&mut self, len: usize) {
        self.payload.truncate(len);
        self.header[8..12].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
    }
}

/// A header of `request` with `flags` and a payload of `size` bytes.
pub(crate) fn header(request: u32, flags: u32, size: u32) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..4].copy_from_slice(&request.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

/// Reads one whole message; `None` at a clean end of stream (between messages).
pub(crate) fn read_message(from: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_SIZE];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HEADER_SIZE {
        let n = recv(from, &mut header[got..], &mut fds)?;
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
        let n = recv(from, &mut payload[got..], &mut fds)?;
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

/// Writes one whole message, its descriptors attached to the first byte.
pub(crate) fn write_message(to: &UnixStream, msg: &Message) -> io::Result<()> {
    let raw: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let bufs: [&[u8]; 2] = [&msg.header, &msg.payload];
    let total = HEADER_SIZE + msg.payload.len();
    let sent = loop {
        match to.send_with_fds(&bufs, &raw) {
            Ok(n) => break n,
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(e.into()),
        }
    };
    if sent < total {
        // Rare (a full socket buffer): the descriptors went with the first byte.
        let flat = [&msg.header[..], &msg.payload[..]].concat();
        let mut to = to;
        to.write_all(&flat[sent..])?;
    }
    Ok(())
}

/// One `recvmsg`: bytes into `buf`, descriptors appended to `fds` (owned from here on).
/// More descriptors than one message may carry is an error (`ENOBUFS`; `ScmSocket` closes
/// them): a message must never be forwarded without its descriptors.
fn recv(from: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let n = recv_some(from, buf, fds)?;
    // A sender can attach descriptors to every part of a message it writes in pieces; one
    // message must not carry more than the daemon reads with it, or the daemon would get it
    // with its descriptors cut off (found by the relay's fuzz target).
    if fds.len() > MAX_ATTACHED_FD_ENTRIES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} descriptors on one message (at most {MAX_ATTACHED_FD_ENTRIES})",
                fds.len()
            ),
        ));
    }
    Ok(n)
}

fn recv_some(from: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut raw = [-1 as RawFd; MAX_ATTACHED_FD_ENTRIES];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    loop {
        // SAFETY: the iovec points at `buf`, live and exclusively borrowed for the call.
        match unsafe { from.recv_with_fds(&mut iov, &mut raw) } {
            Ok((n, count)) => {
                // SAFETY: recvmsg just created these descriptors for us.
                fds.extend(
                    raw[..count]
                        .iter()
                        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
                return Ok(n);
            }
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The (device, inode) of a descriptor: its identity while it stays open.
#[cfg(test)]
pub(super) fn identity(fd: &OwnedFd) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::File::from(fd.try_clone().unwrap())
        .metadata()
        .unwrap();
    (m.dev(), m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(request: u32, payload: &[u8], fds: Vec<OwnedFd>) -> Message {
        Message {
            header: header(request, 0x1, payload.len() as u32),
            payload: payload.to_vec(),
            fds,
        }
    }

    #[test]
    fn descriptors_travel_with_the_bytes_and_too_many_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let x = OwnedFd::from(x);
        write_message(&a, &message(7, b"hello", vec![x.try_clone().unwrap()])).unwrap();
        let m = read_message(&b).unwrap().unwrap();
        assert_eq!((m.request(), m.payload.as_slice()), (7, &b"hello"[..]));
        assert_eq!(m.fds.len(), 1);
        assert_eq!(identity(&m.fds[0]), identity(&x));

        // The most a message may carry arrives whole.
        let many = (0..MAX_ATTACHED_FD_ENTRIES)
            .map(|_| x.try_clone().unwrap())
            .collect();
        write_message(&a, &message(8, b"", many)).unwrap();
        let m = read_message(&b).unwrap().unwrap();
        assert_eq!(m.fds.len(), MAX_ATTACHED_FD_ENTRIES);

        // More than that: the connection is not fed a message without its descriptors.
        let raw = vec![x.as_raw_fd(); MAX_ATTACHED_FD_ENTRIES + 1];
        let h = header(9, 0x1, 0);
        a.send_with_fds(&[&h[..]], &raw).unwrap();
        assert!(read_message(&b).is_err());
    }
}
