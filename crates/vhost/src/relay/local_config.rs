//! Config accesses the relay answers from the device's config space ([`ConfigSpace`]) instead
//! of forwarding them.
//!
//! Only a request that passed `config_access.rs` (vhost would accept it) and only once the
//! daemon has handled everything the frontend sent before it (`settled.rs`): the answer is
//! then the one the daemon would give, from the same config space. The replies are the
//! daemon's, byte for byte: `GET_CONFIG` returns `VhostUserConfig` (offset, size, flags) and
//! the bytes, or size 0 when the read is refused; `SET_CONFIG` is acked with 0 when the
//! frontend asked for an ack (`NEED_REPLY` with `REPLY_ACK`), as `vhost` 0.18's handler does.

use std::mem::size_of;

use vhost::vhost_user::message::{FrontendReq, VhostUserConfig, VhostUserHeaderFlag};

use super::hooks::ConfigSpace;
use super::message::{header, Message};

const VERSION_1: u32 = 0x1;

/// The answer to a config request `msg` (already screened), or `None` when `msg` is not one.
/// `Some(None)`: handled, nothing to send (a write nobody waits for).
pub(crate) fn answer(
    msg: &Message,
    space: &dyn ConfigSpace,
    reply_ack: bool,
) -> Option<Option<Message>> {
    let code = FrontendReq::try_from(msg.request()).ok()?;
    let head = size_of::<VhostUserConfig>();
    let word = |i: usize| {
        msg.payload
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let (offset, size, flags) = (word(0)?, word(4)?, word(8)?);
    let reply_flags = VERSION_1 | VhostUserHeaderFlag::REPLY.bits();
    match code {
        FrontendReq::GET_CONFIG => {
            let data = space.read(offset, size);
            let size = if data.len() == size as usize { size } else { 0 };
            let mut payload = Vec::with_capacity(head + size as usize);
            for w in [offset, size, flags] {
                payload.extend_from_slice(&w.to_le_bytes());
            }
            payload.extend_from_slice(&data[..size as usize]);
            Some(Some(Message {
                header: header(msg.request(), reply_flags, payload.len() as u32),
                payload,
                fds: Vec::new(),
            }))
        }
        FrontendReq::SET_CONFIG => {
            space.write(offset, msg.payload.get(head..)?);
            let wants_ack = reply_ack && msg.flags() & VhostUserHeaderFlag::NEED_REPLY.bits() != 0;
            Some(wants_ack.then(|| Message {
                header: header(msg.request(), reply_flags, 8),
                payload: 0u64.to_le_bytes().to_vec(),
                fds: Vec::new(),
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An 8-byte config space (also the relay's tests').
    #[derive(Debug, Default)]
    pub(in crate::relay) struct Space(pub(in crate::relay) Mutex<[u8; 8]>);

    impl ConfigSpace for Space {
        fn read(&self, offset: u32, size: u32) -> Vec<u8> {
            let c = self.0.lock().unwrap();
            let (o, s) = (offset as usize, size as usize);
            c.get(o..o + s).map(<[u8]>::to_vec).unwrap_or_default()
        }
        fn write(&self, offset: u32, data: &[u8]) {
            let mut c = self.0.lock().unwrap();
            let o = offset as usize;
            c[o..o + data.len()].copy_from_slice(data);
        }
    }

    fn config(code: FrontendReq, offset: u32, data: &[u8], flags: u32) -> Message {
        let mut payload = Vec::new();
        for w in [offset, data.len() as u32, 0] {
            payload.extend_from_slice(&w.to_le_bytes());
        }
        payload.extend_from_slice(data);
        Message {
            header: header(u32::from(code), flags, payload.len() as u32),
            payload,
            fds: Vec::new(),
        }
    }

    #[test]
    fn a_write_then_a_read_see_the_space_and_reply_as_the_daemon_does() {
        let space = Space::default();
        let w = config(FrontendReq::SET_CONFIG, 4, &7u32.to_le_bytes(), 0x9);
        let ack = answer(&w, &space, true)
            .unwrap()
            .expect("an ack was asked for");
        assert!(ack.is_reply());
        assert_eq!(ack.payload, 0u64.to_le_bytes());
        let quiet = config(FrontendReq::SET_CONFIG, 0, &[1], 0x1);
        assert!(answer(&quiet, &space, true).unwrap().is_none());

        let r = config(FrontendReq::GET_CONFIG, 0, &[0; 8], 0x1);
        let reply = answer(&r, &space, true).unwrap().unwrap();
        assert_eq!(reply.request(), u32::from(FrontendReq::GET_CONFIG));
        assert!(reply.is_reply());
        assert_eq!(&reply.payload[4..8], &8u32.to_le_bytes());
        assert_eq!(&reply.payload[12..], &[1, 0, 0, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn a_refused_read_gets_size_0_and_other_requests_are_not_answered() {
        let space = Space::default();
        let r = config(FrontendReq::GET_CONFIG, 4, &[0; 8], 0x1);
        let reply = answer(&r, &space, false).unwrap().unwrap();
        assert_eq!(reply.payload.len(), 12);
        assert_eq!(&reply.payload[4..8], &0u32.to_le_bytes());
        let other = config(FrontendReq::SET_VRING_NUM, 0, &[0; 8], 0x1);
        assert!(answer(&other, &space, false).is_none());
    }
}
