//! The daemon's threads: [`spawn`] binds the sockets and starts the accept loop (one guest
//! after another on the same socket, each served by [`session`](crate::session)) and the
//! control socket's thread; [`serve`] runs it until SIGINT/SIGTERM. The host reaches it through
//! the [`Controller`] ([`controller`](crate::controller)).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::SharedDevice;
use crate::control;
use crate::controller::{Controller, DaemonShared};
use crate::error::{Error, Result};
use crate::options::ServeOptions;
use crate::session;
use crate::signals;
use crate::socket::BoundSocket;
use crate::status::DaemonCounters;
use crate::wait::{readable, Waiter};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A daemon running in this process's threads (see [`spawn`]).
///
/// Dereferences to its [`Controller`]. Dropping it stops the daemon and waits for its threads.
#[derive(Debug)]
pub struct DaemonHandle {
    controller: Controller,
    threads: Vec<JoinHandle<()>>,
}

impl std::ops::Deref for DaemonHandle {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        &self.controller
    }
}

impl DaemonHandle {
    /// A clonable handle for other threads.
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }

    /// Stops the daemon: the guest (if any) is disconnected, the sockets are removed, the
    /// threads joined. Returns the error that stopped the daemon earlier, if one did.
    pub fn shutdown(mut self) -> Result<()> {
        self.controller.request_shutdown();
        self.join()
    }

    /// Waits until the daemon stops (a [`Controller::request_shutdown`] from elsewhere, or
    /// a fatal error).
    pub fn wait(mut self) -> Result<()> {
        readable([self.controller.shared().stop_event()], None)
            .map_err(Error::io("waiting for the daemon to stop"))?;
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.controller
                    .shared()
                    .fail("a daemon thread panicked".into());
            }
        }
        match self.controller.shared().failure() {
            Some(why) => Err(Error::Daemon(why)),
            None => Ok(()),
        }
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.controller.request_shutdown();
            let _ = self.join();
        }
    }
}

/// Starts the daemon in this process: binds the vhost-user socket (and the control socket),
/// then serves guests one after another on background threads until the handle shuts it
/// down. Socket problems are reported here, before anything runs.
///
/// If SIGPIPE has its default action, it is set to ignored (see the crate docs).
pub fn spawn(opts: ServeOptions) -> Result<DaemonHandle> {
    opts.validate()?;
    signals::ignore_sigpipe();
    let device = Arc::new(SharedDevice::new(opts.device, opts.discard)?);
    let vhost_socket = BoundSocket::bind(&opts.socket)?;
    let control_socket = opts.control.as_deref().map(BoundSocket::bind).transpose()?;
    let shared =
        Arc::new(DaemonShared::new(opts, device).map_err(Error::io("creating the stop event"))?);
    tracing::info!(
        socket = %shared.opts.socket.display(),
        control = ?shared.opts.control,
        features = format_args!("{:#x}", shared.device.offered),
        "virtio-balloon vhost-user daemon listening"
    );
    let controller = Controller::new(shared.clone());
    let mut threads = Vec::new();
    let s = shared.clone();
    threads.push(
        std::thread::Builder::new()
            .name("balloon-accept".into())
            .spawn(move || accept_loop(vhost_socket, &s))
            .map_err(Error::io("spawning the accept thread"))?,
    );
    let mut handle = DaemonHandle {
        controller,
        threads,
    };
    let c = handle.controller.clone();
    handle.spawn(
        "balloon-stats-poll",
        "spawning the statistics polling thread",
        move || poll_stats(&c),
    )?;
    if let Some(socket) = control_socket {
        let c = handle.controller.clone();
        handle.spawn(
            "balloon-control",
            "spawning the control thread",
            move || control::serve_control(socket, &c),
        )?;
    }
    Ok(handle)
}

impl DaemonHandle {
    /// Starts one more daemon thread; if that fails, stops the ones already running.
    fn spawn(
        &mut self,
        name: &str,
        what: &'static str,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<()> {
        match std::thread::Builder::new().name(name.into()).spawn(f) {
            Ok(t) => {
                self.threads.push(t);
                Ok(())
            }
            Err(source) => {
                self.controller.request_shutdown();
                let _ = self.join();
                Err(Error::Io { what, source })
            }
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM (or a fatal error), then stops it cleanly.
///
/// The handlers are installed before the sockets are bound: once the socket exists, SIGINT or
/// SIGTERM stops the daemon cleanly (and removes its sockets), however soon they come.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let signals =
        signals::Termination::install().map_err(Error::io("installing signal handlers"))?;
    let handle = spawn(opts)?;
    let [signalled, _stopped] = readable([signals.event(), handle.shared().stop_event()], None)
        .map_err(Error::io("waiting for a signal"))?;
    if signalled {
        tracing::info!("termination signal received");
    }
    drop(signals);
    handle.shutdown()
}

/// Asks the guest for fresh statistics every
/// [`stats_polling_interval_s`](Controller::stats_polling_interval_s) seconds while one is
/// connected (the interval is read again every second, so a change applies within one).
fn poll_stats(controller: &Controller) {
    let stop = match Waiter::readable([controller.shared().stop_event()]) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "statistics polling: poll failed; polling stops");
            return;
        }
    };
    let mut last = std::time::Instant::now();
    loop {
        match stop.wait(Some(Duration::from_secs(1))) {
            Ok([true]) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "statistics polling: poll failed; polling stops");
                return;
            }
        }
        let interval = controller.stats_polling_interval_s();
        if interval == 0 || last.elapsed() < Duration::from_secs(interval) {
            continue;
        }
        last = std::time::Instant::now();
        if controller.connected() {
            let outcome = controller.request_stats(None);
            tracing::trace!(requested = outcome.requested, "statistics polled");
        }
    }
}

/// Accepts one guest at a time. A guest that connects while another is served waits in the
/// listen backlog until the first one leaves (a second frontend on one device makes no sense;
/// waiting rather than refusing keeps a quick reconnect from racing the previous teardown); the
/// log says so once per served guest ([`tell_of_waiting_frontends`]).
fn accept_loop(socket: BoundSocket, shared: &Arc<DaemonShared>) {
    let waiters = Waiter::readable([&socket.listener, shared.stop_event()])
        .and_then(|both| Ok((both, Waiter::readable([shared.stop_event()])?)));
    let (guest_or_stop, stop) = match waiters {
        Ok(w) => w,
        Err(e) => return shared.fail(format!("poll on the vhost-user socket: {e}")),
    };
    // Written when a session ends (and read back before the next one).
    let session_done = match EventFd::new(EFD_NONBLOCK) {
        Ok(e) => e,
        Err(e) => return shared.fail(format!("creating the session-end event: {e}")),
    };
    loop {
        match guest_or_stop.wait(None) {
            Err(e) => return shared.fail(format!("poll on the vhost-user socket: {e}")),
            Ok([_, true]) => return,
            Ok(_) if shared.stopping() => return,
            Ok(_) => {}
        }
        let front = match socket.accept() {
            Ok(Some(front)) => front,
            Ok(None) => continue,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
                ) =>
            {
                // Out of resources: the pending guest stays in the backlog; try again soon.
                tracing::error!(error = %e, "cannot accept a guest");
                let _ = stop.wait(Some(Duration::from_millis(200)));
                continue;
            }
            Err(e) => return shared.fail(format!("accept on {}: {e}", socket.path.display())),
        };
        shared.device.forget_last_negotiated();
        DaemonCounters::bump(&shared.counters.connections);
        tracing::info!("guest connected");
        let outcome = std::thread::scope(|s| {
            let watcher = std::thread::Builder::new()
                .name("balloon-waiting".into())
                .spawn_scoped(s, || {
                    tell_of_waiting_frontends(&socket, shared, &session_done)
                });
            if let Err(e) = &watcher {
                tracing::debug!(error = %e, "no watcher for waiting frontends");
            }
            let outcome = session::run(front, shared);
            let _ = session_done.write(1);
            outcome
        });
        let _ = session_done.read();
        match outcome {
            Ok(()) => tracing::info!("guest disconnected"),
            Err(e) => {
                DaemonCounters::bump(&shared.counters.connection_errors);
                tracing::warn!(error = %e, "guest connection ended");
            }
        }
        DaemonCounters::bump(&shared.counters.disconnections);
    }
}

/// While a guest is served: logs once that another frontend connected and waits (it sits in
/// the listen backlog, unanswered, until the served guest disconnects), so the operator of the
/// second VM, whose boot stalls at the device's probe, finds the reason in the daemon's log.
fn tell_of_waiting_frontends(socket: &BoundSocket, shared: &DaemonShared, session_done: &EventFd) {
    let Ok(waiter) = Waiter::readable([&socket.listener, session_done, shared.stop_event()]) else {
        return;
    };
    if let Ok([true, false, false]) = waiter.wait(None) {
        DaemonCounters::bump(&shared.counters.frontends_waiting);
        tracing::warn!(
            socket = %socket.path.display(),
            "another frontend connected while a guest is served: it waits until that guest \
             disconnects (this daemon serves one frontend at a time; start another daemon on \
             another socket for a second VM)"
        );
    }
}
