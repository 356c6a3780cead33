//! The rings as the frontend set them up, followed from its messages: which ring was started
//! (a kick fd given), which is enabled, what features were acked, each ring's call fd. Two
//! things need it:
//!
//! - **Rings the library keeps running when the frontend set up or gave up the device without
//!   stopping them.** `vhost-user-backend` 0.24 stops a ring (stops watching its kick fd,
//!   forgets its kick and call fds, so the next `SET_VRING_KICK` starts it again) only on
//!   `GET_VRING_BASE`. Four frontend sequences leave a ring running in it that must not run:
//!   1. a kick fd replaced on a started ring (User-Mode Linux reloading `virtio_balloon`: it
//!      never stops rings, and without `VHOST_USER_F_PROTOCOL_FEATURES` never enables them by
//!      message): the library stores the new fd and never watches it, while the old fd, which
//!      the frontend may keep open, stays watched (a kick on it makes the worker read the
//!      ring's new, empty fd and block);
//!   2. a ring set up again (`SET_VRING_BASE`) while it runs: a new driver whose frontend
//!      stopped no ring (User-Mode Linux's reload; `RingHooks::ring_base`), whose rings are set
//!      up again one by one; a ring it does not set up again (a driver with fewer queues) is
//!      the old driver's, in memory no longer its;
//!   3. `RESET_DEVICE`: the library disables the rings, but the next `SET_FEATURES` without
//!      bit 30 enables every ring again (vhost-user spec "Ring states"), with the old driver's
//!      addresses and indexes, and processes them at once;
//!   4. `RESET_OWNER`: the library stops nothing.
//!
//!   In each case the relay stops the ring itself, the way the spec's frontend would have:
//!   it sends the daemon `GET_VRING_BASE` for it (before forwarding the message in cases 1
//!   and 2, after it in 3 and 4) and keeps the reply from the frontend (the outbound thread
//!   drops as many `GET_VRING_BASE` replies as the relay asked for: the daemon answers in
//!   order, and the frontend waits for the reply to each of its own `GET_VRING_BASE` before
//!   it sends more). A ring stopped ahead of a message that sets it up again (1, 2) gets its
//!   current call fd back (`SET_VRING_CALL` with a duplicate the relay keeps), so nothing the
//!   frontend set is lost; the next `SET_VRING_KICK` then starts the ring through the
//!   library's own path, which watches only the new fd. Only rings below the daemon's ring
//!   count are stopped (`GET_VRING_BASE` on another index ends the connection). The upstream
//!   fix: `docs/upstream/0003-watch-a-replaced-kick-fd.patch`.
//! - **Whether the frontend runs the device** (some ring started and enabled): a config change
//!   is sent only then (`channel.rs`).

use std::os::fd::OwnedFd;

use vhost::vhost_user::message::{FrontendReq, VhostUserVirtioFeatures};

use super::message::{header, Message};

/// Rings the relay follows (vhost-user allows 8 bits of ring index in `SET_VRING_KICK`).
pub(crate) const MAX_RINGS: usize = 256;
/// `SET_VRING_KICK` / `SET_VRING_CALL` payload: ring index in bits 0-7, "no fd" in bit 8.
const INDEX_MASK: u64 = 0xff;
const NOFD: u64 = 0x100;
/// Header flags of a message the relay sends: protocol version 1, no reply wanted.
const VERSION_1: u32 = 0x1;

/// What the frontend told the daemon about its rings.
#[derive(Debug)]
pub(crate) struct Rings {
    /// Rings the daemon has (indexes at or above it are never stopped by the relay).
    limit: usize,
    started: [bool; MAX_RINGS],
    enabled: [bool; MAX_RINGS],
    /// A duplicate of each ring's current call fd (given back after the relay stops it).
    calls: Vec<Option<OwnedFd>>,
    /// The last `SET_FEATURES` value since the last reset (`None`: none since).
    features: Option<u64>,
}

/// A ring-level event the daemon's device must see before the message goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RingEvent {
    /// `SET_VRING_BASE`: ring `queue` starts at available index `base`; `running`: it was
    /// set up again without being stopped.
    Base {
        queue: u32,
        base: u32,
        running: bool,
    },
    /// `RESET_OWNER` (which `vhost-user-backend` does not pass to its backend).
    ResetOwner,
}

impl Rings {
    /// Rings of a daemon with `limit` rings (at most [`MAX_RINGS`] are followed).
    pub(crate) fn new(limit: usize) -> Rings {
        Rings {
            limit: limit.min(MAX_RINGS),
            started: [false; MAX_RINGS],
            enabled: [false; MAX_RINGS],
            calls: (0..MAX_RINGS).map(|_| None).collect(),
            features: None,
        }
    }

    /// Notes a frontend request before it is forwarded; returns the ring event, if any.
    pub(crate) fn before(&mut self, msg: &Message) -> Option<RingEvent> {
        if msg.is_reply() {
            return None;
        }
        let code = FrontendReq::try_from(msg.request()).ok()?;
        match code {
            FrontendReq::SET_VRING_BASE => {
                let (queue, base) = state(msg)?;
                let running = self.started.get(queue as usize).copied().unwrap_or(false);
                Some(RingEvent::Base {
                    queue,
                    base,
                    running,
                })
            }
            FrontendReq::GET_VRING_BASE => {
                // The ring stops (vhost-user spec: "stop ring upon receiving GET_VRING_BASE").
                let (queue, _) = state(msg)?;
                if let Some(s) = self.started.get_mut(queue as usize) {
                    *s = false;
                }
                None
            }
            FrontendReq::SET_VRING_CALL => {
                if let Some((queue, fd)) = ring_fd(msg) {
                    // Without a duplicate the ring just gets no call fd back after a stop.
                    self.calls[queue] = fd.and_then(|fd| fd.try_clone().ok());
                }
                None
            }
            FrontendReq::RESET_OWNER => Some(RingEvent::ResetOwner),
            _ => None,
        }
    }

    /// The messages the daemon must get right before `msg` is forwarded: a started ring whose
    /// kick fd `msg` replaces is stopped (case 1 of the module docs). Call it before
    /// [`Rings::after`] for the same message.
    pub(crate) fn ahead(&mut self, msg: &Message) -> Vec<Message> {
        match replaced_kick(msg) {
            Some(queue) if self.started[queue] => {
                tracing::debug!(
                    queue,
                    "kick fd of a started ring replaced: stopping it first"
                );
                self.stop(queue, true)
            }
            _ => Vec::new(),
        }
    }

    /// Stops every started ring (case 2: a new driver; `keep` is the ring being set up, which
    /// keeps its call fd).
    pub(crate) fn stop_all(&mut self, keep: Option<usize>) -> Vec<Message> {
        let started: Vec<usize> = (0..self.limit).filter(|&q| self.started[q]).collect();
        if !started.is_empty() {
            tracing::debug!(?started, "stopping the rings the frontend left running");
        }
        started
            .into_iter()
            .flat_map(|q| self.stop(q, Some(q) == keep))
            .collect()
    }

    /// Notes a frontend request that was forwarded; returns the messages the daemon must get
    /// right after it (cases 3 and 4 of the module docs).
    pub(crate) fn after(&mut self, msg: &Message) -> Vec<Message> {
        if msg.is_reply() {
            return Vec::new();
        }
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
                // Polling mode or a broken message: the library stores no fd to watch.
                if let Some(queue) = replaced_kick(msg).filter(|&q| q < self.limit) {
                    self.started[queue] = true;
                }
                Vec::new()
            }
            FrontendReq::RESET_OWNER | FrontendReq::RESET_DEVICE => {
                self.enabled = [false; MAX_RINGS];
                self.features = None;
                self.stop_all(None)
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

    /// `GET_VRING_BASE` for ring `queue`, and its call fd again if `keep_call`.
    fn stop(&mut self, queue: usize, keep_call: bool) -> Vec<Message> {
        self.started[queue] = false;
        let mut out = vec![get_vring_base(queue)];
        let call = self.calls[queue]
            .as_ref()
            .and_then(|fd| fd.try_clone().ok());
        match call {
            Some(fd) if keep_call => out.push(Message {
                header: header(u32::from(FrontendReq::SET_VRING_CALL), VERSION_1, 8),
                payload: (queue as u64).to_le_bytes().to_vec(),
                fds: vec![fd],
            }),
            _ => self.calls[queue] = None,
        }
        out
    }
}

/// Whether `msg` is one of the relay's own `GET_VRING_BASE` requests' replies' kind.
pub(crate) fn is_ring_base_reply(msg: &Message) -> bool {
    msg.is_reply() && msg.request() == u32::from(FrontendReq::GET_VRING_BASE)
}

/// How many of `msgs` are `GET_VRING_BASE` requests (each gets a reply the frontend must not
/// see).
pub(crate) fn ring_base_requests(msgs: &[Message]) -> u32 {
    msgs.iter()
        .filter(|m| !m.is_reply() && m.request() == u32::from(FrontendReq::GET_VRING_BASE))
        .count() as u32
}

/// The ring and descriptor of a `SET_VRING_CALL` / `SET_VRING_KICK` (`None`: "no fd").
fn ring_fd(msg: &Message) -> Option<(usize, Option<&OwnedFd>)> {
    if msg.payload.len() != 8 {
        return None;
    }
    let word = u64::from_le_bytes(msg.payload[..8].try_into().expect("8 bytes"));
    let queue = (word & INDEX_MASK) as usize;
    if word & NOFD != 0 {
        return Some((queue, None));
    }
    match msg.fds.as_slice() {
        [fd] => Some((queue, Some(fd))),
        _ => None,
    }
}

/// The ring whose kick fd `msg` sets, if it is a `SET_VRING_KICK` that carries one.
fn replaced_kick(msg: &Message) -> Option<usize> {
    if msg.is_reply() || msg.request() != u32::from(FrontendReq::SET_VRING_KICK) {
        return None;
    }
    match ring_fd(msg)? {
        (queue, Some(_)) => Some(queue),
        (_, None) => None,
    }
}

/// `GET_VRING_BASE` for ring `queue` (answered whatever the flags say).
fn get_vring_base(queue: usize) -> Message {
    let payload = [(queue as u32).to_le_bytes(), 0u32.to_le_bytes()].concat();
    Message {
        header: header(u32::from(FrontendReq::GET_VRING_BASE), VERSION_1, 8),
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

    fn features(r: &mut Rings, bits: u64) {
        r.after(&msg(
            FrontendReq::SET_FEATURES,
            bits.to_le_bytes().to_vec(),
            0,
        ));
    }

    /// The requests the relay sends around a forwarded `SET_VRING_KICK` for `queue`, as
    /// (request, payload, descriptors).
    fn kick(rings: &mut Rings, queue: u64) -> Vec<(u32, Vec<u8>, usize)> {
        let m = msg(FrontendReq::SET_VRING_KICK, queue.to_le_bytes().to_vec(), 1);
        rings.before(&m);
        let mut all = rings.ahead(&m);
        all.extend(rings.after(&m));
        all.into_iter()
            .map(|m| (m.request(), m.payload.clone(), m.fds.len()))
            .collect()
    }

    const GET_BASE: u32 = 11;
    const CALL: u32 = 13;

    #[test]
    fn a_second_kick_fd_stops_the_ring_first_and_gives_its_call_fd_back() {
        for bit30 in [0, VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()] {
            let mut r = Rings::new(4);
            features(&mut r, 1 << 32 | bit30);
            r.before(&msg(
                FrontendReq::SET_VRING_CALL,
                2u64.to_le_bytes().to_vec(),
                1,
            ));
            assert!(
                kick(&mut r, 2).is_empty(),
                "the first kick fd is the library's job"
            );
            assert_eq!(
                r.running(),
                bit30 == 0,
                "enabled by SET_FEATURES without bit 30"
            );
            assert_eq!(
                kick(&mut r, 2),
                [
                    (GET_BASE, pair(2, 0), 0),
                    (CALL, 2u64.to_le_bytes().to_vec(), 1)
                ]
            );
            // After the frontend's GET_VRING_BASE the ring is stopped: nothing to do.
            r.before(&msg(FrontendReq::GET_VRING_BASE, pair(2, 0), 0));
            assert!(!r.running());
            assert!(kick(&mut r, 2).is_empty());
        }
    }

    #[test]
    fn resets_stop_every_started_ring_and_a_new_driver_keeps_the_set_up_ring_call() {
        for reset in [FrontendReq::RESET_DEVICE, FrontendReq::RESET_OWNER] {
            let mut r = Rings::new(4);
            features(&mut r, 1 << 32);
            for q in [0u64, 3, 9] {
                r.before(&msg(
                    FrontendReq::SET_VRING_CALL,
                    q.to_le_bytes().to_vec(),
                    1,
                ));
                kick(&mut r, q);
            }
            assert!(r.running());
            let sent = r.after(&msg(reset, Vec::new(), 0));
            let asked: Vec<_> = sent
                .iter()
                .map(|m| (m.request(), m.payload.clone()))
                .collect();
            assert_eq!(
                asked,
                [(GET_BASE, pair(0, 0)), (GET_BASE, pair(3, 0))],
                "9 >= limit"
            );
            assert_eq!(ring_base_requests(&sent), 2);
            assert!(!r.running());
            assert!(
                r.after(&msg(reset, Vec::new(), 0)).is_empty(),
                "nothing left"
            );
        }
        let mut r = Rings::new(4);
        features(&mut r, 1 << 32);
        for q in [0u64, 1] {
            r.before(&msg(
                FrontendReq::SET_VRING_CALL,
                q.to_le_bytes().to_vec(),
                1,
            ));
            kick(&mut r, q);
        }
        let sent = r.stop_all(Some(0));
        let asked: Vec<_> = sent.iter().map(|m| (m.request(), m.fds.len())).collect();
        assert_eq!(asked, [(GET_BASE, 0), (CALL, 1), (GET_BASE, 0)]);
    }

    #[test]
    fn ring_events_come_from_set_vring_base_and_reset_owner() {
        let mut r = Rings::new(4);
        let base = |r: &mut Rings| r.before(&msg(FrontendReq::SET_VRING_BASE, pair(3, 0), 0));
        let event = |running| RingEvent::Base {
            queue: 3,
            base: 0,
            running,
        };
        assert_eq!(base(&mut r), Some(event(false)));
        kick(&mut r, 3);
        assert_eq!(
            base(&mut r),
            Some(event(true)),
            "set up again while it runs"
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
