//! Config accesses the vhost crate would refuse, answered by the relay instead.
//!
//! `GET_CONFIG` / `SET_CONFIG` carry `struct VhostUserConfig` (offset `u32`, size `u32`,
//! flags `u32`) and `size` bytes. vhost 0.18 checks `0 < size`, `offset + size <= 0x1000`
//! without overflow, known flags, a payload of exactly `12 + size` bytes and a message of at
//! most 4 KiB (`VhostUserConfig::is_valid`, `MAX_MSG_SIZE`), and ends the connection on any
//! failure. A guest reaches these values: User-Mode Linux's `virtio_uml` forwards a guest's
//! config access as offset and length, and a dropped connection is a dead balloon for it (no
//! reconnect). So the relay answers such a request itself, without forwarding it:
//!
//! - `GET_CONFIG`: the error reply vhost-user defines for config reads, a `VhostUserConfig`
//!   with the request's offset and flags and size 0 (vhost-user spec, `VHOST_USER_GET_CONFIG`:
//!   "on failure ... a zero-length payload"), the same answer the daemon gives a read that
//!   passes these checks but does not fit the balloon's config space;
//! - `SET_CONFIG`: nothing changes; when the frontend asked for an ack (`NEED_REPLY` with
//!   `REPLY_ACK` negotiated), the ack carries 1 (failure).
//!
//! Accesses that pass these checks go on to the daemon, which answers reads outside the
//! balloon's 8-16 bytes with the same size-0 reply and ignores writes outside its
//! driver-writable fields (see `backend.rs`).

use std::mem::size_of;

use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserConfigFlags, VhostUserHeaderFlag, VHOST_USER_CONFIG_SIZE,
};

use super::message::{header, Message};

/// vhost 0.18's `MAX_MSG_SIZE`: the largest message body it reads.
const MAX_MSG_SIZE: usize = 0x1000;
const VERSION_1: u32 = 0x1;

/// What the relay does with a frontend request.
#[derive(Debug)]
pub(crate) enum Screened {
    /// Forward it to the daemon.
    Forward,
    /// Answer the frontend with this reply instead.
    Answer(Message),
    /// Drop it: a refused write nobody waits for.
    Drop,
}

/// Screens a frontend request: config requests the vhost crate would refuse are answered
/// here; everything else is forwarded.
pub(crate) fn screen(msg: &Message, reply_ack: bool) -> Screened {
    if msg.is_reply() {
        return Screened::Forward;
    }
    let Ok(code) = FrontendReq::try_from(msg.request()) else {
        return Screened::Forward;
    };
    if code != FrontendReq::GET_CONFIG && code != FrontendReq::SET_CONFIG {
        return Screened::Forward;
    }
    let head = size_of::<VhostUserConfig>();
    let word = |i: usize| {
        msg.payload
            .get(i..i + 4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let (offset, size, flags) = (word(0), word(4), word(8));
    let accepted = msg.payload.len() >= head
        && msg.payload.len() <= MAX_MSG_SIZE
        && msg.payload.len() - head == size as usize
        && size != 0
        && offset
            .checked_add(size)
            .is_some_and(|end| end <= VHOST_USER_CONFIG_SIZE)
        && VhostUserConfigFlags::from_bits(flags).is_some();
    if accepted {
        return Screened::Forward;
    }
    tracing::debug!(
        request = ?code,
        offset,
        size,
        flags,
        bytes = msg.payload.len(),
        "config access outside the config space answered by the relay"
    );
    let reply_flags = VERSION_1 | VhostUserHeaderFlag::REPLY.bits();
    if code == FrontendReq::GET_CONFIG {
        let mut payload = Vec::with_capacity(head);
        for w in [offset, 0, flags] {
            payload.extend_from_slice(&w.to_le_bytes());
        }
        Screened::Answer(Message {
            header: header(msg.request(), reply_flags, head as u32),
            payload,
            fds: Vec::new(),
        })
    } else if reply_ack && msg.flags() & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
        Screened::Answer(Message {
            header: header(msg.request(), reply_flags, 8),
            payload: 1u64.to_le_bytes().to_vec(),
            fds: Vec::new(),
        })
    } else {
        Screened::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(code: FrontendReq, offset: u32, size: u32, data: usize, flags: u32) -> Message {
        let mut payload = Vec::new();
        for w in [offset, size, 0] {
            payload.extend_from_slice(&w.to_le_bytes());
        }
        payload.resize(12 + data, 0xab);
        Message {
            header: header(u32::from(code), flags, payload.len() as u32),
            payload,
            fds: Vec::new(),
        }
    }

    #[test]
    fn accesses_vhost_accepts_are_forwarded() {
        for (offset, size) in [(0, 4), (0, 16), (100, 4), (0xffc, 4)] {
            let m = config(FrontendReq::GET_CONFIG, offset, size, size as usize, 0x1);
            assert!(
                matches!(screen(&m, true), Screened::Forward),
                "{offset}+{size}"
            );
        }
        let m = config(FrontendReq::SET_CONFIG, 4, 4, 4, 0x9);
        assert!(matches!(screen(&m, true), Screened::Forward));
    }

    #[test]
    fn reads_vhost_refuses_get_a_size_0_reply() {
        for (offset, size, data) in [
            (0xffe, 4, 4),       // past the end
            (u32::MAX, 4, 4),    // overflowing
            (0, 0, 0),           // zero
            (0, 0x1000, 0x1000), // a message over 4 KiB
            (0, 8, 4),           // a size that lies
        ] {
            let m = config(FrontendReq::GET_CONFIG, offset, size, data, 0x1);
            let Screened::Answer(a) = screen(&m, false) else {
                panic!("{offset}+{size} not answered")
            };
            assert_eq!(a.request(), u32::from(FrontendReq::GET_CONFIG));
            assert!(a.is_reply());
            assert_eq!(a.payload.len(), 12);
            assert_eq!(&a.payload[0..4], &offset.to_le_bytes());
            assert_eq!(
                &a.payload[4..8],
                &0u32.to_le_bytes(),
                "size 0 means failure"
            );
        }
    }

    #[test]
    fn writes_vhost_refuses_are_acked_with_failure_only_when_asked() {
        let m = config(FrontendReq::SET_CONFIG, 0xffe, 4, 4, 0x9);
        let Screened::Answer(a) = screen(&m, true) else {
            panic!("not answered")
        };
        assert_eq!(
            (a.is_reply(), a.payload.as_slice()),
            (true, &1u64.to_le_bytes()[..])
        );
        assert!(
            matches!(screen(&m, false), Screened::Drop),
            "nothing to send"
        );
        let m = config(FrontendReq::SET_CONFIG, 0, 4, 4, 0x1);
        let short = Message {
            header: m.header,
            payload: m.payload[..6].to_vec(),
            fds: Vec::new(),
        };
        assert!(matches!(screen(&short, false), Screened::Drop));
    }
}
