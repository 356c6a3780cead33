//! One frontend connection, from accept to the last unmapped byte of its memory.
//!
//! 1. A fresh [`BalloonBackend`] and guest memory map over the daemon's device (reset).
//! 2. A `VhostUserDaemon` for it, started on a private connection
//!    ([`relay::private_connection`]).
//! 3. The [`Relay`] between the frontend and that connection; the session's
//!    [`SessionLink`] (the relay's notifier, the stats event, a hang-up) is published so the
//!    host API can notify, request stats and disconnect.
//! 4. `VhostUserDaemon::wait` returns when either side closed (the relay closes both).
//! 5. Teardown: the exit event to every worker thread (`send_exit_event` on each epoll
//!    handler), the daemon dropped, then a wait until the last reference to the backend is
//!    gone (the worker thread holds one until it exits): only then are the guest's memory
//!    mappings, kick/call fds and the backend request channel all closed.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backend::{stats_event_id, BalloonBackend, Memory};
use crate::controller::{DaemonShared, SessionLink};
use crate::error::{Error, Result};
use crate::relay::{self, Relay};
use crate::status::DaemonCounters;

/// Serves `front` until it disconnects or the daemon stops. Errors are this connection's
/// only: the caller logs them and accepts the next guest.
pub(crate) fn run(front: UnixStream, shared: &Arc<DaemonShared>) -> Result<()> {
    let device = shared.device.clone();
    device.with_device(|d| d.reset());
    let (gone_tx, gone_rx) = mpsc::channel::<()>();
    let mem: Memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Arc::new(
        BalloonBackend::new(device.clone(), mem.clone(), gone_tx)
            .map_err(Error::io("creating the stats event"))?,
    );
    let outcome = serve_connection(front, shared, &backend, mem);
    // Teardown step 5: our own reference goes last.
    drop(backend);
    match gone_rx.recv_timeout(shared.opts.teardown_timeout) {
        Err(RecvTimeoutError::Disconnected) => {}
        _ => {
            DaemonCounters::bump(&shared.counters.slow_teardowns);
            tracing::warn!(
                timeout = ?shared.opts.teardown_timeout,
                "a worker thread of the closed connection is still busy; serving the next guest anyway"
            );
        }
    }
    device.with_device(|d| d.reset());
    outcome
}

fn serve_connection(
    front: UnixStream,
    shared: &Arc<DaemonShared>,
    backend: &Arc<BalloonBackend>,
    mem: Memory,
) -> Result<()> {
    let mut daemon = VhostUserDaemon::new("prezero-balloon".into(), backend.clone(), mem.clone())
        .map_err(|e| Error::Daemon(e.to_string()))?;
    let result = (|| {
        let handlers = daemon.get_epoll_handlers();
        let worker = handlers
            .first()
            .ok_or_else(|| Error::Daemon("no worker thread".into()))?;
        worker
            .register_listener(
                backend.stats_event().as_raw_fd(),
                EventSet::IN,
                stats_event_id(shared.device.num_queues),
            )
            .map_err(Error::io("registering the stats event"))?;
        let stats_kick = backend
            .stats_event()
            .try_clone()
            .map_err(Error::io("duplicating the stats event"))?;
        drop(handlers);

        let (listener, back) = relay::private_connection()
            .map_err(Error::io("creating the daemon's private socket"))?;
        daemon
            .start(&mut Listener::from(listener))
            .map_err(|e| Error::Daemon(e.to_string()))?;

        let hooks: Arc<dyn relay::RingHooks> = backend.incarnations();
        let config: Arc<dyn relay::ConfigSpace> = shared.device.clone();
        let relay = Relay::start_with(front, back, Some(hooks), Some(config))
            .map_err(Error::io("starting the relay threads"))?;
        let cutter = relay
            .cutter()
            .map_err(Error::io("duplicating the relay sockets"))?;
        let link = Arc::new(SessionLink {
            notifier: relay.notifier(),
            stats_kick,
            hang_up: Box::new(move || cutter.cut()),
            mem,
        });
        shared.publish(Some(link.clone()));
        if shared.stopping() {
            link.cut();
        }

        let waited = daemon.wait();
        relay.cut();
        let relayed = relay.join();
        shared.publish(None);
        let counters = &shared.counters;
        counters
            .messages_to_backend
            .fetch_add(relayed.to_backend, Ordering::Relaxed);
        counters
            .messages_to_frontend
            .fetch_add(relayed.to_frontend, Ordering::Relaxed);
        classify(waited)
    })();
    // Worker threads exit on this; the daemon's threads are gone after wait().
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    drop(daemon);
    result
}

/// A connection that ended because a side closed is a normal end.
fn classify(waited: std::result::Result<(), DaemonError>) -> Result<()> {
    match waited {
        Ok(()) => Ok(()),
        Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected
            | VhostUserError::PartialMessage
            | VhostUserError::SocketBroken(_)
            | VhostUserError::SocketError(_),
        )) => Ok(()),
        Err(e) => Err(Error::Daemon(format!(
            "the connection ended on a protocol error: {e}"
        ))),
    }
}
