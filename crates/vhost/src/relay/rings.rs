//! The rings as the frontend set them up, followed from its messages: which ring was started
//! (a kick fd given), which is enabled, what features were acked. Two things need it:
//!
//! - **A kick fd replaced on a started ring.** `vhost-user-backend` 0.24 adds a ring's kick fd
//!   to its worker's epoll set only when the ring becomes ready (its first `SET_VRING_KICK`, or
//!   after `GET_VRING_BASE` stopped it) or is enabled; a `SET_VRING_KICK` on a ring that is
//!   still ready stores the new fd and never watches it. User-Mode Linux reloading
//!   `virtio_balloon` does exactly that (it never stops rings, and without
//!   `VHOST_USER_F_PROTOCOL_FEATURES` never enables them by message): the reloaded driver's
//!   kicks went unseen. After forwarding such a `SET_VRING_KICK` the relay sends the daemon
//!   the message that makes the library register the ring's current kick fd again:
//!   `SET_FEATURES` with the features last acked (no bit 30: it enables every ring, vhost-user
//!   spec "Ring states"), or, with bit 30 acked and the ring enabled, `SET_VRING_ENABLE` 0
//!   *before* forwarding the new fd and 1 after it: disabling unregisters the ring's current
//!   (old) fd, so a kick on the old fd, which the frontend may keep open, no longer reaches a
//!   worker that would then block reading the new, empty one. None asks for a reply. The
//!   upstream fix: `docs/upstream/0003-watch-a-replaced-kick-fd.patch`.
//! - **Whether the frontend runs the device** (some ring started and enabled): a config change
//!   is sent only then (`channel.rs`).

use vhost::vhost_user::message::{FrontendReq, VhostUserVirtioFeatures};

use super::message::{header, Message};

/// Rings the relay follows (vhost-user allows 8 bits of ring index in `SET_VRING_KICK`).
const MAX_RINGS: usize = 256;
/// `SET_VRING_KICK` / `SET_VRING_CALL` payload: ring index in bits 0-7, "no fd" in bit 8.
const INDEX_MASK: u64 = 0xff;
const NOFD: u64 = 0x100;
/// Header flags of a message the relay sends: protocol version 1, no reply wanted.
const VERSION_1: u32 = 0x1;

/// What the frontend told the daemon about its rings.
#[derive(Debug)]
pub(crate) struct Rings {
    started: [bool; MAX_RINGS],
    enabled: [bool; MAX_RINGS],
    /// The last `SET_FEATURES` value since the last reset (`None`: none since).
    features: Option<u64>,
}

impl Default for Rings {
    fn default() -> Self {
        Rings {
            started: [false; MAX_RINGS],
            enabled: [false; MAX_RINGS],
            features: None,
        }
    }
}

/// A ring-level event the daemon's device must see before the message goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RingEvent {
    /// `SET_VRING_BASE`: ring `queue` starts at available index `base`.
    Base { queue: u32, base: u32 },
    /// `RESET_OWNER` (which `vhost-user-backend` does not pass to its backend).
    ResetOwner,
}

impl Rings {
    /// Notes a frontend request before it is forwarded; returns the ring event, if any.
    pub(crate) fn before(&mut self, msg: &Message) -> Option<RingEvent> {
        let code = FrontendReq::try_from(msg.request()).ok()?;
        match code {
            FrontendReq::SET_VRING_BASE => {
                let (queue, base) = state(msg)?;
                Some(RingEvent::Base { queue, base })
            }
            FrontendReq::GET_VRING_BASE => {
                // The ring stops (vhost-user spec: "stop ring upon receiving GET_VRING_BASE").
                let (queue, _) = state(msg)?;
                if let Some(s) = self.started.get_mut(queue as usize) {
                    *s = false;
                }
                None
            }
            FrontendReq::RESET_OWNER => {
                self.reset();
                Some(RingEvent::ResetOwner)
            }
            FrontendReq::RESET_DEVICE => {
                self.reset();
                None
            }
            _ => None,
        }
    }

    /// The messages the daemon must get right before `msg` is forwarded: `SET_VRING_ENABLE` 0
    /// for a started, enabled ring whose kick fd `msg` replaces (bit 30 acked; see the module
    /// docs). Call it before [`Rings::after`] for the same message.
    pub(crate) fn ahead(&self, msg: &Message) -> Vec<Message> {
        match replaced_kick(msg) {
            Some(queue) if self.started[queue] && self.protocol_enabled(queue) => {
                tracing::debug!(
                    queue,
                    "kick fd of an enabled ring replaced: disabling it first"
                );
                vec![enable(queue, false)]
            }
            _ => Vec::new(),
        }
    }

    /// Whether bit 30 was acked and ring `queue` enabled by message.
    fn protocol_enabled(&self, queue: usize) -> bool {
        self.features
            .is_some_and(|f| f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0)
            && self.enabled[queue]
    }

    /// Notes a frontend request that was forwarded; returns the messages the daemon must get
    /// right after it (see the module docs).
    pub(crate) fn after(&mut self, msg: &Message) -> Vec<Message> {
        let Ok(code) = FrontendReq::try_from(msg.request()) else {
            return Vec::new();
        };
        match code {
            FrontendReq::SET_FEATURES if msg.payload.len() == 8 => {
                let bits = u64::from_le_bytes(msg.payload[..8].try_into().expect("8 bytes"));
                self.features = Some(bits);
                if bits & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
                    self.enabled = [true; MAX_RINGS];
                }
                Vec::new()
            }
            FrontendReq::SET_VRING_ENABLE => {
                if let (Some((queue, on)), Some(bits)) = (state(msg), self.features) {
                    if bits & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                        if let Some(e) = self.enabled.get_mut(queue as usize) {
                            *e = on == 1;
                        }
                    }
                }
                Vec::new()
            }
            FrontendReq::SET_VRING_KICK => {
                let Some(queue) = replaced_kick(msg) else {
                    // Polling mode or a broken message: the library stores no fd to watch.
                    return Vec::new();
                };
                let was_started = std::mem::replace(&mut self.started[queue], true);
                if !was_started {
                    return Vec::new();
                }
                self.rewatch(queue)
            }
            _ => Vec::new(),
        }
    }

    /// Whether the frontend runs the device: a ring started and enabled.
    pub(crate) fn running(&self) -> bool {
        self.features.is_some()
            && self
                .started
                .iter()
                .zip(&self.enabled)
                .any(|(&s, &e)| s && e)
    }

    fn reset(&mut self) {
        self.enabled = [false; MAX_RINGS];
        self.features = None;
    }

    /// The messages that make `vhost-user-backend` watch ring `queue`'s current kick fd.
    fn rewatch(&self, queue: usize) -> Vec<Message> {
        let Some(features) = self.features else {
            // No features since the last reset: the frontend's own SET_FEATURES will do it.
            return Vec::new();
        };
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            tracing::debug!(
                queue,
                "kick fd of a started ring replaced: SET_FEATURES again"
            );
            vec![Message {
                header: header(u32::from(FrontendReq::SET_FEATURES), VERSION_1, 8),
                payload: features.to_le_bytes().to_vec(),
                fds: Vec::new(),
            }]
        } else if self.enabled[queue] {
            tracing::debug!(
                queue,
                "kick fd of an enabled ring replaced: enabling it again"
            );
            vec![enable(queue, true)]
        } else {
            // A disabled ring: its SET_VRING_ENABLE 1 will register the new fd.
            Vec::new()
        }
    }
}

/// The ring whose kick fd `msg` sets, if it is a `SET_VRING_KICK` that carries one.
fn replaced_kick(msg: &Message) -> Option<usize> {
    if msg.is_reply()
        || msg.request() != u32::from(FrontendReq::SET_VRING_KICK)
        || msg.payload.len() != 8
        || msg.fds.len() != 1
    {
        return None;
    }
    let word = u64::from_le_bytes(msg.payload[..8].try_into().expect("8 bytes"));
    (word & NOFD == 0).then_some((word & INDEX_MASK) as usize)
}

/// `SET_VRING_ENABLE` for ring `queue`, no reply wanted.
fn enable(queue: usize, on: bool) -> Message {
    let mut payload = (queue as u32).to_le_bytes().to_vec();
    payload.extend_from_slice(&u32::from(on).to_le_bytes());
    Message {
        header: header(u32::from(FrontendReq::SET_VRING_ENABLE), VERSION_1, 8),
        payload,
        fds: Vec::new(),
    }
}

/// A `struct vhost_vring_state` payload (index `u32`, num `u32`).
fn state(msg: &Message) -> Option<(u32, u32)> {
    if msg.payload.len() != 8 || msg.is_reply() {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes(msg.payload[i..i + 4].try_into().expect("4 bytes"));
    Some((word(0), word(4)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    fn msg(code: FrontendReq, payload: Vec<u8>, fds: usize) -> Message {
        Message {
            header: header(u32::from(code), VERSION_1, payload.len() as u32),
            payload,
            fds: (0..fds)
                .map(|_| OwnedFd::from(UnixStream::pair().unwrap().0))
                .collect(),
        }
    }

    fn pair(a: u32, b: u32) -> Vec<u8> {
        [a.to_le_bytes(), b.to_le_bytes()].concat()
    }

    /// The messages around a forwarded `SET_VRING_KICK` for `queue`: those sent ahead of it,
    /// then those after it.
    fn kick(rings: &mut Rings, queue: u64) -> Vec<Message> {
        let m = msg(FrontendReq::SET_VRING_KICK, queue.to_le_bytes().to_vec(), 1);
        rings.before(&m);
        let mut all = rings.ahead(&m);
        all.extend(rings.after(&m));
        all
    }

    #[test]
    fn a_second_kick_fd_without_bit_30_resends_the_features() {
        let mut r = Rings::default();
        let features = 1u64 << 32;
        r.after(&msg(
            FrontendReq::SET_FEATURES,
            features.to_le_bytes().to_vec(),
            0,
        ));
        assert!(
            kick(&mut r, 2).is_empty(),
            "the first kick fd is the library's job"
        );
        assert!(r.running());
        let injected = kick(&mut r, 2);
        assert_eq!(injected.len(), 1);
        assert_eq!(injected[0].request(), u32::from(FrontendReq::SET_FEATURES));
        assert_eq!(injected[0].payload, features.to_le_bytes());
        // After GET_VRING_BASE the ring is stopped: the library registers the next fd itself.
        r.before(&msg(FrontendReq::GET_VRING_BASE, pair(2, 0), 0));
        assert!(!r.running());
        assert!(kick(&mut r, 2).is_empty());
    }

    #[test]
    fn with_bit_30_an_enabled_ring_is_re_enabled_and_a_disabled_one_left() {
        let mut r = Rings::default();
        let features = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        r.after(&msg(
            FrontendReq::SET_FEATURES,
            features.to_le_bytes().to_vec(),
            0,
        ));
        kick(&mut r, 0);
        assert!(!r.running(), "started but not enabled");
        assert!(
            kick(&mut r, 0).is_empty(),
            "a disabled ring waits for its ENABLE"
        );
        r.after(&msg(FrontendReq::SET_VRING_ENABLE, pair(0, 1), 0));
        assert!(r.running());
        let injected = kick(&mut r, 0);
        let enables: Vec<_> = injected.iter().map(|m| m.payload.clone()).collect();
        assert_eq!(enables, [pair(0, 0), pair(0, 1)]);
        // A reset: nothing runs, nothing is injected until features come again.
        r.before(&msg(FrontendReq::RESET_DEVICE, Vec::new(), 0));
        assert!(!r.running());
        assert!(kick(&mut r, 0).is_empty());
    }

    #[test]
    fn ring_events_come_from_set_vring_base_and_reset_owner() {
        let mut r = Rings::default();
        assert_eq!(
            r.before(&msg(FrontendReq::SET_VRING_BASE, pair(3, 0), 0)),
            Some(RingEvent::Base { queue: 3, base: 0 })
        );
        assert_eq!(
            r.before(&msg(FrontendReq::RESET_OWNER, Vec::new(), 0)),
            Some(RingEvent::ResetOwner)
        );
        // Malformed: no event, no panic.
        assert_eq!(
            r.before(&msg(FrontendReq::SET_VRING_BASE, vec![1], 0)),
            None
        );
        assert!(kick(&mut r, 0x1ff).is_empty(), "NOFD");
    }
}
