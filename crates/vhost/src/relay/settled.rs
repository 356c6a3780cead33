//! Whether the daemon has handled every request the relay forwarded to it.
//!
//! The relay may answer a request itself only when that gives the answer the daemon would
//! give in its place, i.e. when the daemon has handled everything the frontend sent before it
//! (`vhost-user-backend` handles one connection's requests one at a time, in order, and
//! replies in that order). The relay cannot see the daemon handle a request, only its reply,
//! and not every request gets one; so it keeps the requests it forwarded, in order, and takes
//! a reply with request code `c` as the answer to the **earliest** waiting request with code
//! `c`: that request and every one before it have been handled. Matching the earliest can
//! only make the relay believe less has been handled than really was (a request of code `c`
//! that gets no reply is passed over late), never more. A frontend that sends more than
//! [`MAX_WAITING`] requests without any reply in between overflows the list; the relay then
//! never again believes everything handled on that connection (it forwards every request,
//! as without this module).

use std::collections::VecDeque;
use std::sync::Mutex;

/// Requests remembered while no reply comes (a vhost-user frontend waits for a reply at
/// least every few requests: QEMU's device start is about 30).
const MAX_WAITING: usize = 256;

#[derive(Debug, Default)]
struct State {
    /// Sequence number of the last request forwarded (0: none yet).
    forwarded: u64,
    /// Every request up to this one has been handled by the daemon.
    settled: u64,
    /// Forwarded requests not known handled: (sequence number, request code).
    waiting: VecDeque<(u64, u32)>,
    /// The list overflowed: a reply can no longer be matched to its request.
    lost: bool,
}

/// The forwarded requests of one connection and which of them the daemon has handled.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    state: Mutex<State>,
}

impl Settled {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request with `code` was forwarded to the daemon.
    pub(crate) fn forwarded(&self, code: u32) {
        let mut s = self.lock();
        s.forwarded += 1;
        let seq = s.forwarded;
        if s.lost {
            return;
        }
        if s.waiting.len() == MAX_WAITING {
            s.lost = true;
            s.waiting = VecDeque::new();
            return;
        }
        s.waiting.push_back((seq, code));
    }

    /// The daemon replied to a request with `code`.
    pub(crate) fn replied(&self, code: u32) {
        let mut s = self.lock();
        let Some(at) = s.waiting.iter().position(|&(_, c)| c == code) else {
            return;
        };
        let (seq, _) = s.waiting[at];
        s.waiting.drain(..=at);
        s.settled = s.settled.max(seq);
    }

    /// The daemon has handled every request forwarded so far.
    pub(crate) fn all_handled(&self) -> bool {
        let s = self.lock();
        !s.lost && s.settled == s.forwarded
    }
}

#[cfg(test)]
mod tests {
    use super::Settled;

    #[test]
    fn a_reply_settles_its_request_and_everything_before_it() {
        let s = Settled::default();
        assert!(s.all_handled(), "nothing forwarded yet");
        s.forwarded(9); // SET_VRING_ADDR: no reply
        s.forwarded(24); // GET_CONFIG
        assert!(!s.all_handled());
        s.replied(24);
        assert!(s.all_handled());
        s.forwarded(12); // SET_VRING_KICK: no reply, so not known handled
        assert!(!s.all_handled());
    }

    #[test]
    fn a_reply_is_matched_to_the_earliest_waiting_request_of_its_code() {
        let s = Settled::default();
        s.forwarded(25); // SET_CONFIG without NEED_REPLY: no reply comes
        s.forwarded(8);
        s.forwarded(25); // SET_CONFIG with NEED_REPLY
        s.replied(25);
        // Taken as the first SET_CONFIG's: never more than really was handled.
        assert!(!s.all_handled());
        s.forwarded(1);
        s.replied(1);
        assert!(s.all_handled());
    }

    #[test]
    fn a_reply_nothing_waits_for_settles_nothing() {
        let s = Settled::default();
        s.forwarded(9);
        s.replied(24);
        assert!(!s.all_handled());
    }

    #[test]
    fn after_an_overflow_nothing_is_believed_handled() {
        let s = Settled::default();
        s.forwarded(24);
        for _ in 0..super::MAX_WAITING {
            s.forwarded(9);
        }
        s.forwarded(24);
        // The first GET_CONFIG's reply: matching it to the second would be wrong.
        s.replied(24);
        s.replied(24);
        assert!(!s.all_handled());
    }
}
