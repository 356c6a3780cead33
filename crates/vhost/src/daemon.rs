//! The daemon: the accept loop that serves one guest after another on the same socket, the
//! host API ([`Controller`]), and its entry points [`spawn`] and [`serve`].

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::DeviceCell;
use crate::backend_channel::Notification;
use crate::control;
use crate::error::{Error, Result};
use crate::options::{bytes_to_pages, ServeOptions};
use crate::session::{self, SessionLink};
use crate::signals;
use crate::socket::BoundSocket;
use crate::status::{
    feature_names, pages_to_bytes, queue_names, BalloonStatus, DaemonCounters, MetricsReport,
    StatsReport, StatsRequestOutcome, TargetOutcome,
};
use crate::sys::{poll, pollfd};

/// State shared by the daemon's threads and every [`Controller`].
#[derive(Debug)]
pub(crate) struct DaemonShared {
    pub(crate) opts: ServeOptions,
    pub(crate) cell: Arc<DeviceCell>,
    pub(crate) counters: DaemonCounters,
    session: Mutex<Option<Arc<SessionLink>>>,
    /// Readable once a stop was requested (never read, so it stays readable).
    stop_event: EventFd,
    stopping: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Serialises target changes with their notifications, so notifications go out in the
    /// order the targets were set.
    target_lock: Mutex<()>,
}

impl DaemonShared {
    pub(crate) fn publish(&self, link: Option<Arc<SessionLink>>) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = link;
    }

    fn link(&self) -> Option<Arc<SessionLink>> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn stop_fd(&self) -> i32 {
        self.stop_event.as_raw_fd()
    }

    fn request_stop(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            tracing::info!("daemon stopping");
            if let Err(e) = self.stop_event.write(1) {
                tracing::error!(error = %e, "cannot wake the daemon's threads");
            }
        }
        if let Some(link) = self.link() {
            link.cut();
        }
    }

    fn fail(&self, why: String) {
        tracing::error!(%why, "daemon failed");
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
        self.request_stop();
    }
}

/// The host's handle on a running daemon: set the balloon target, read guest statistics and
/// metrics, request fresh statistics, stop it. Cheap to clone, usable from any thread.
#[derive(Clone, Debug)]
pub struct Controller {
    shared: Arc<DaemonShared>,
}

impl Controller {
    /// The vhost-user socket path.
    pub fn socket_path(&self) -> &Path {
        &self.shared.opts.socket
    }

    /// The control socket path, if any.
    pub fn control_path(&self) -> Option<&Path> {
        self.shared.opts.control.as_deref()
    }

    /// Whether a guest is connected.
    pub fn connected(&self) -> bool {
        self.shared.link().is_some()
    }

    /// Sets the balloon target in 4 KiB pages and, if it changed and a guest is connected,
    /// notifies it (a config-change message, waiting up to the configured timeout for its
    /// ack).
    pub fn set_target_pages(&self, pages: u32) -> TargetOutcome {
        let _order = self
            .shared
            .target_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let changed = self.shared.cell.with_device(|d| d.set_target_pages(pages));
        tracing::info!(pages, changed, "balloon target set");
        let notification = if !changed {
            Notification::Unchanged
        } else {
            match self.shared.link() {
                None => Notification::NoGuest,
                Some(link) => {
                    let n = link
                        .channel
                        .notify_config_change(self.shared.opts.notify_timeout);
                    let c = &self.shared.counters;
                    match &n {
                        Notification::Acked => {
                            DaemonCounters::bump(&c.config_changes_sent);
                            DaemonCounters::bump(&c.config_changes_acked);
                        }
                        Notification::Sent => DaemonCounters::bump(&c.config_changes_sent),
                        Notification::Refused(_) | Notification::TimedOut => {
                            DaemonCounters::bump(&c.config_changes_sent);
                            DaemonCounters::bump(&c.config_changes_failed);
                        }
                        Notification::Failed(_) => DaemonCounters::bump(&c.config_changes_failed),
                        _ => {}
                    }
                    match &n {
                        Notification::Acked | Notification::Sent | Notification::NoChannel => {
                            tracing::debug!(?n, "config change notification")
                        }
                        _ => tracing::warn!(?n, "config change notification not acknowledged"),
                    }
                    n
                }
            }
        };
        TargetOutcome {
            target_pages: pages,
            target_bytes: pages_to_bytes(pages),
            changed,
            notification,
        }
    }

    /// Sets the balloon target in bytes (rounded down to 4 KiB pages).
    pub fn set_target_bytes(&self, bytes: u64) -> Result<TargetOutcome> {
        Ok(self.set_target_pages(bytes_to_pages(bytes)?))
    }

    /// The balloon's state.
    pub fn status(&self) -> BalloonStatus {
        let link = self.shared.link();
        let (target, actual, negotiated, roles, holds) = self.shared.cell.with_device_queues(|d| {
            (
                d.target_pages(),
                d.actual_pages(),
                d.negotiated_features(),
                d.queue_roles(),
                d.holds_stats_buffer(),
            )
        });
        BalloonStatus {
            connected: link.is_some(),
            target_pages: target,
            target_bytes: pages_to_bytes(target),
            actual_pages: actual,
            actual_bytes: pages_to_bytes(actual),
            offered_features: self.shared.cell.offered,
            negotiated_features: negotiated.bits(),
            negotiated: feature_names(negotiated),
            queues: queue_names(roles),
            holds_stats_buffer: holds,
            config_change_channel: link.as_ref().is_some_and(|l| l.channel.is_installed()),
            reply_ack: link.as_ref().is_some_and(|l| l.channel.reply_ack()),
        }
    }

    /// The latest guest statistics, if the guest ever sent any.
    pub fn stats(&self) -> Option<StatsReport> {
        self.shared
            .cell
            .with_device_queues(|d| d.latest_stats().map(StatsReport::from_stats))
    }

    /// Asks the guest for fresh statistics (gives its stats buffer back) and waits up to
    /// `wait` (capped by the options' `max_stats_wait`) for them to arrive.
    pub fn request_stats(&self, wait: Option<Duration>) -> StatsRequestOutcome {
        DaemonCounters::bump(&self.shared.counters.stats_requests);
        let before = self.shared.cell.stats_sequence();
        let holds = self
            .shared
            .cell
            .with_device_queues(|d| d.holds_stats_buffer());
        let requested = match (holds, self.shared.link()) {
            (true, Some(link)) => match link.stats_kick.write(1) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask the worker for fresh stats");
                    false
                }
            },
            _ => false,
        };
        let fresh = requested
            && wait.is_some_and(|w| {
                let w = w.min(self.shared.opts.max_stats_wait);
                self.shared.cell.wait_stats_after(before, w)
            });
        StatsRequestOutcome {
            requested,
            fresh,
            stats: self.stats(),
        }
    }

    /// The device's and the daemon's counters.
    pub fn metrics(&self) -> MetricsReport {
        MetricsReport {
            device: self.shared.cell.with_device_queues(|d| d.metrics()),
            daemon: self.shared.counters.snapshot(),
        }
    }

    /// Disconnects the current guest, if any (it sees the backend hang up); the daemon goes
    /// on and accepts the next one.
    pub fn disconnect_guest(&self) {
        if let Some(link) = self.shared.link() {
            tracing::info!("disconnecting the guest on request");
            link.cut();
        }
    }

    /// Asks the daemon to stop (returns at once; [`DaemonHandle::wait`] waits for it).
    pub fn request_shutdown(&self) {
        self.shared.request_stop();
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping()
    }

    /// Readable once a stop was requested.
    pub(crate) fn stop_fd(&self) -> i32 {
        self.shared.stop_fd()
    }
}

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
        let mut fds = [pollfd(self.controller.shared.stop_fd(), libc::POLLIN)];
        poll(&mut fds, None).map_err(Error::io("waiting for the daemon to stop"))?;
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.controller
                    .shared
                    .fail("a daemon thread panicked".into());
            }
        }
        match self
            .controller
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
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
    let cell = Arc::new(DeviceCell::new(opts.device, opts.discard)?);
    let vhost_socket = BoundSocket::bind(&opts.socket)?;
    let control_socket = opts.control.as_deref().map(BoundSocket::bind).transpose()?;
    let shared = Arc::new(DaemonShared {
        opts,
        cell,
        counters: DaemonCounters::default(),
        session: Mutex::new(None),
        stop_event: EventFd::new(EFD_NONBLOCK).map_err(Error::io("creating the stop event"))?,
        stopping: AtomicBool::new(false),
        failure: Mutex::new(None),
        target_lock: Mutex::new(()),
    });
    tracing::info!(
        socket = %shared.opts.socket.display(),
        control = ?shared.opts.control,
        features = format_args!("{:#x}", shared.cell.offered),
        "virtio-balloon vhost-user daemon listening"
    );
    let controller = Controller {
        shared: shared.clone(),
    };
    let mut threads = Vec::new();
    let s = shared.clone();
    threads.push(
        std::thread::Builder::new()
            .name("balloon-accept".into())
            .spawn(move || accept_loop(vhost_socket, &s))
            .map_err(Error::io("spawning the accept thread"))?,
    );
    if let Some(socket) = control_socket {
        let c = controller.clone();
        let spawned = std::thread::Builder::new()
            .name("balloon-control".into())
            .spawn(move || control::serve_control(socket, &c));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                let mut handle = DaemonHandle {
                    controller,
                    threads,
                };
                handle.controller.request_shutdown();
                let _ = handle.join();
                return Err(Error::Io {
                    what: "spawning the control thread",
                    source: e,
                });
            }
        }
    }
    Ok(DaemonHandle {
        controller,
        threads,
    })
}

/// Runs the daemon until SIGINT or SIGTERM (or a fatal error), then stops it cleanly.
///
/// The handlers are installed before the sockets are bound: once the socket exists, SIGINT or
/// SIGTERM stops the daemon cleanly (and removes its sockets), however soon they come.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let signals =
        signals::Termination::install().map_err(Error::io("installing signal handlers"))?;
    let handle = spawn(opts)?;
    let mut fds = [
        pollfd(signals.fd(), libc::POLLIN),
        pollfd(handle.controller.shared.stop_fd(), libc::POLLIN),
    ];
    poll(&mut fds, None).map_err(Error::io("waiting for a signal"))?;
    if fds[0].revents != 0 {
        tracing::info!("termination signal received");
    }
    drop(signals);
    handle.shutdown()
}

/// Accepts one guest at a time. A guest that connects while another is served waits in the
/// listen backlog until the first one leaves (a second frontend on one device makes no sense;
/// waiting rather than refusing keeps a quick reconnect from racing the previous teardown).
fn accept_loop(socket: BoundSocket, shared: &Arc<DaemonShared>) {
    loop {
        let mut fds = [
            pollfd(socket.raw_fd(), libc::POLLIN),
            pollfd(shared.stop_fd(), libc::POLLIN),
        ];
        if let Err(e) = poll(&mut fds, None) {
            return shared.fail(format!("poll on the vhost-user socket: {e}"));
        }
        if fds[1].revents != 0 || shared.stopping() {
            return;
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
                let mut stop = [pollfd(shared.stop_fd(), libc::POLLIN)];
                let _ = poll(&mut stop, Some(Duration::from_millis(200)));
                continue;
            }
            Err(e) => return shared.fail(format!("accept on {}: {e}", socket.path.display())),
        };
        DaemonCounters::bump(&shared.counters.connections);
        tracing::info!("guest connected");
        match session::run(front, shared) {
            Ok(()) => tracing::info!("guest disconnected"),
            Err(e) => {
                DaemonCounters::bump(&shared.counters.connection_errors);
                tracing::warn!(error = %e, "guest connection ended");
            }
        }
        DaemonCounters::bump(&shared.counters.disconnections);
    }
}
