//! The vhost-user backend request channel (`BACKEND_REQ`): how the device tells the driver its
//! config space changed (`CONFIG_CHANGE_MSG`, the vhost-user form of a config interrupt).
//!
//! A thread serves the channel with the vhost crate's `FrontendReqHandler`, so a backend that
//! sends a notification and waits for the ack (`REPLY_ACK`) is answered at once, even while the
//! driver is blocked in a request on the main socket: if the backend sends from the thread that
//! would answer that request, serving the channel inline would deadlock both sides. The thread
//! turns each notification into a write to an eventfd the driver polls with its queue calls.
//!
//! The vhost crate's handler keeps its own copy of the socket end it gives the backend, so the
//! channel never sees the backend hang up; a dead backend is noticed on the main socket.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost::vhost_user::{
    Error as VhostUserError, FrontendReqHandler, HandlerResult, VhostUserFrontend,
    VhostUserFrontendReqHandler,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::poll::{EpollContext, EpollEvents};

use crate::error::TransportError;

/// What the channel thread shares with the transport.
#[derive(Debug)]
pub(crate) struct ChannelState {
    /// Written once per config change; the driver polls it.
    pub(crate) config_evt: EventFd,
    /// Config changes received so far.
    pub(crate) config_changes: AtomicU64,
    /// Why the thread stopped serving, if it failed.
    pub(crate) failure: Mutex<Option<String>>,
}

impl VhostUserFrontendReqHandler for ChannelState {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        let n = self.config_changes.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::debug!(n, "backend reported a config change");
        self.config_evt.write(1)?;
        Ok(0)
    }
}

/// A served backend request channel; dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct BackendChannel {
    pub(crate) state: Arc<ChannelState>,
    stop: EventFd,
    // Our own handle on the thread's socket: shutting it down unblocks a thread stuck in the
    // middle of a message a dying backend never finished (the socket cannot see EOF, see
    // above). A duplicate, so it cannot name a reused fd after the thread closed its own.
    socket: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl BackendChannel {
    /// Creates the socketpair, hands one end to the backend with `SET_BACKEND_REQ_FD`, and
    /// starts serving the other.
    pub(crate) fn start<F: VhostUserFrontend>(
        frontend: &mut F,
        reply_ack: bool,
    ) -> Result<Self, TransportError> {
        let io = |what| move |source| TransportError::Io { what, source };
        let state = Arc::new(ChannelState {
            config_evt: EventFd::new(EFD_NONBLOCK).map_err(io("eventfd for config changes"))?,
            config_changes: AtomicU64::new(0),
            failure: Mutex::new(None),
        });
        let mut handler = FrontendReqHandler::new(state.clone())
            .map_err(|e| TransportError::BackendChannel(format!("creating the socketpair: {e}")))?;
        handler.set_reply_ack_flag(reply_ack);
        // SAFETY: the handler owns this fd and outlives the borrow, which ends with the call.
        let backend_end = unsafe { BorrowedFd::borrow_raw(handler.get_tx_raw_fd()) };
        frontend
            .set_backend_request_fd(&backend_end)
            .map_err(|source| TransportError::Request {
                request: "SET_BACKEND_REQ_FD",
                source,
            })?;

        // SAFETY: the handler owns this fd for the duration of the borrow.
        let socket = unsafe { BorrowedFd::borrow_raw(handler.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(io("duplicating the backend request socket"))?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(io("eventfd to stop the channel"))?;
        let stop_fd = stop.as_raw_fd();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-user-backend-req".into())
            .spawn(move || serve(handler, stop_fd, &thread_state))
            .map_err(io("spawning the backend request thread"))?;
        Ok(BackendChannel {
            state,
            stop,
            socket,
            thread: Some(thread),
        })
    }

    /// Why serving stopped, if it failed.
    pub(crate) fn failure(&self) -> Option<String> {
        self.state.failure.lock().ok().and_then(|f| f.clone())
    }
}

impl Drop for BackendChannel {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            tracing::warn!(error = %e, "cannot stop the backend request thread; detaching it");
            return;
        }
        // SAFETY: shutdown on a socket fd we own; it only ends the connection.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut handler: FrontendReqHandler<ChannelState>, stop_fd: RawFd, state: &ChannelState) {
    let fail = |why: String| {
        tracing::warn!(%why, "backend request channel stopped");
        if let Ok(mut f) = state.failure.lock() {
            *f = Some(why);
        }
    };
    const REQUEST: u8 = 0;
    const STOP: u8 = 1;
    let fds = match EpollContext::new().and_then(|fds| {
        fds.add(&handler, REQUEST)?;
        fds.add(&stop_fd, STOP)?;
        Ok(fds)
    }) {
        Ok(fds) => fds,
        Err(e) => return fail(format!("epoll: {e}")),
    };
    let ready = EpollEvents::new();
    loop {
        let mut request = false;
        match fds.wait(&ready) {
            Ok(events) => {
                for event in events.iter() {
                    if event.token() == STOP {
                        return;
                    }
                    request = true;
                }
            }
            Err(e) => return fail(format!("epoll_wait: {e}")),
        }
        if !request {
            continue;
        }
        match handler.handle_request() {
            Ok(_) => {}
            // The request was read whole and answered (with an error if it wanted an ack):
            // a request we do not serve is not a reason to stop serving.
            Err(VhostUserError::ReqHandlerError(e)) => {
                tracing::debug!(error = %e, "backend request refused");
            }
            Err(VhostUserError::Disconnected) => {
                return fail("the backend closed the channel".into());
            }
            // Anything else may have left the stream mid-message: stop rather than misparse.
            Err(e) => return fail(e.to_string()),
        }
    }
}
