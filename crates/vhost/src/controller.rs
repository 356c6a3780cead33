//! The host's API on a running daemon: the [`Controller`], the state it shares with the
//! daemon's threads ([`DaemonShared`]), and the link to the connected guest ([`SessionLink`]).
//!
//! | call | device | guest |
//! |---|---|---|
//! | [`Controller::set_target_pages`] | `set_target_pages` | a config change through the link's [`ConfigNotifier`] |
//! | [`Controller::request_stats`] | `holds_stats_buffer` | the worker gives the stats buffer back (the link's stats event) |
//! | [`Controller::status`], [`stats`](Controller::stats), [`metrics`](Controller::metrics) | reads | none |
//! | [`Controller::disconnect_guest`] | none | the connection is cut (the link's hang-up) |
//! | [`Controller::request_shutdown`] | none | cut, then the daemon's threads stop |
//!
//! The accept loop (`daemon.rs`) and each connection (`session.rs`) publish into the shared
//! state; this file knows neither.

use std::fmt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prezero_balloon::features::{DEFLATE_ON_OOM, STATS_VQ};
use prezero_balloon::queues::QueueRoles;
use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::{Memory, SharedDevice};
use crate::error::{Error, Result};
use crate::notifier::{ConfigNotifier, Notification};
use crate::options::{bytes_to_pages, ServeOptions};
use crate::status::{
    feature_names, pages_to_bytes, queue_names, BalloonStatus, DaemonCounters, MetricsReport,
    Negotiation, StatsReport, StatsRequestOutcome, TargetOutcome,
};

/// What the host API reaches of the live connection.
pub(crate) struct SessionLink {
    /// Tells the frontend the config space changed.
    pub(crate) notifier: Arc<dyn ConfigNotifier>,
    /// Writing it makes the worker give the stats buffer back.
    pub(crate) stats_kick: EventFd,
    /// Ends the connection (both sides see a hang-up).
    pub(crate) hang_up: Box<dyn Fn() + Send + Sync>,
    /// The guest's memory as the frontend shared it (empty before `SET_MEM_TABLE`).
    pub(crate) mem: Memory,
}

impl SessionLink {
    /// Ends the connection (both sides see a hang-up).
    pub(crate) fn cut(&self) {
        (self.hang_up)();
    }

    /// Bytes of guest RAM the frontend shared (`None` before it sent its memory table).
    pub(crate) fn guest_ram_bytes(&self) -> Option<u64> {
        let total: u64 = self.mem.memory().iter().map(|r| r.len()).sum();
        (total > 0).then_some(total)
    }
}

impl fmt::Debug for SessionLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLink")
            .field("notifier", &self.notifier)
            .field("stats_kick", &self.stats_kick)
            .finish_non_exhaustive()
    }
}

/// State shared by the daemon's threads and every [`Controller`].
#[derive(Debug)]
pub(crate) struct DaemonShared {
    pub(crate) opts: ServeOptions,
    pub(crate) device: Arc<SharedDevice>,
    pub(crate) counters: DaemonCounters,
    session: Mutex<Option<Arc<SessionLink>>>,
    /// Readable once a stop was requested (never read, so it stays readable).
    stop_event: EventFd,
    stopping: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Serialises target changes with their notifications, so notifications go out in the
    /// order the targets were set.
    target_lock: Mutex<()>,
    /// Seconds between the daemon's own requests for fresh guest statistics (0: off).
    pub(crate) stats_polling_interval_s: AtomicU64,
}

impl DaemonShared {
    /// Fresh state for a daemon about to start.
    pub(crate) fn new(opts: ServeOptions, device: Arc<SharedDevice>) -> std::io::Result<Self> {
        Ok(DaemonShared {
            stats_polling_interval_s: AtomicU64::new(opts.stats_polling_interval_s),
            opts,
            device,
            counters: DaemonCounters::default(),
            session: Mutex::new(None),
            stop_event: EventFd::new(EFD_NONBLOCK)?,
            stopping: AtomicBool::new(false),
            failure: Mutex::new(None),
            target_lock: Mutex::new(()),
        })
    }

    /// The connection the host API reaches (`None`: no guest).
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

    /// Readable once a stop was requested.
    pub(crate) fn stop_event(&self) -> &EventFd {
        &self.stop_event
    }

    pub(crate) fn request_stop(&self) {
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

    /// Records why the daemon cannot go on (the first reason wins) and stops it.
    pub(crate) fn fail(&self, why: String) {
        tracing::error!(%why, "daemon failed");
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
        self.request_stop();
    }

    /// Why the daemon failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The host's handle on a running daemon: set the balloon target, read guest statistics and
/// metrics, request fresh statistics, stop it. Cheap to clone, usable from any thread.
#[derive(Clone, Debug)]
pub struct Controller {
    shared: Arc<DaemonShared>,
}

impl Controller {
    pub(crate) fn new(shared: Arc<DaemonShared>) -> Self {
        Controller { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<DaemonShared> {
        &self.shared
    }

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
    ///
    /// The target is the balloon's size: what the guest gives up, not what it keeps (QEMU's
    /// monitor `balloon` takes the latter; Firecracker's `amount_mib` is the former, as here).
    ///
    /// # Errors
    ///
    /// [`Error::TargetAboveGuestRam`] when a connected guest has less RAM than the target (as
    /// Firecracker refuses an `amount_mib` above the guest's memory). Without a guest the
    /// target cannot be checked: it is set, and the outcome carries a warning.
    pub fn set_target_pages(&self, pages: u32) -> Result<TargetOutcome> {
        let _order = self
            .shared
            .target_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let link = self.shared.link();
        let ram = link.as_ref().and_then(|l| l.guest_ram_bytes());
        if let Some(ram) = ram {
            if pages_to_bytes(pages) > ram {
                return Err(Error::TargetAboveGuestRam {
                    target_mib: pages_to_bytes(pages) >> 20,
                    ram_mib: ram >> 20,
                });
            }
        }
        let warning = (ram.is_none() && pages > 0).then(|| {
            "no guest memory is known yet: the target is not checked against the guest's RAM"
                .to_string()
        });
        let changed = self
            .shared
            .device
            .with_device(|d| d.set_target_pages(pages));
        tracing::info!(pages, changed, "balloon target set");
        let notification = if !changed {
            Notification::Unchanged
        } else {
            match link {
                None => Notification::NoGuest,
                Some(link) => {
                    let n = link
                        .notifier
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
                        Notification::Acked
                        | Notification::Sent
                        | Notification::NoChannel
                        | Notification::Pending => {
                            tracing::debug!(?n, "config change notification")
                        }
                        _ => tracing::warn!(?n, "config change notification not acknowledged"),
                    }
                    n
                }
            }
        };
        Ok(TargetOutcome {
            target_pages: pages,
            target_bytes: pages_to_bytes(pages),
            changed,
            notification,
            warning,
        })
    }

    /// Sets the balloon target in bytes (rounded down to 4 KiB pages; see
    /// [`set_target_pages`](Self::set_target_pages) and [`bytes_to_pages`]).
    pub fn set_target_bytes(&self, bytes: u64) -> Result<TargetOutcome> {
        self.set_target_pages(bytes_to_pages(bytes)?)
    }

    /// Whether the device offers `DEFLATE_ON_OOM` (fixed when the daemon starts).
    pub fn deflate_on_oom(&self) -> bool {
        self.offers(DEFLATE_ON_OOM)
    }

    fn offers(&self, bit: u32) -> bool {
        self.shared.device.offered & (1 << bit) != 0
    }

    /// Seconds between the daemon's own requests for fresh statistics (0: off).
    pub fn stats_polling_interval_s(&self) -> u64 {
        self.shared
            .stats_polling_interval_s
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the statistics polling interval (0 turns polling off): the daemon asks the guest
    /// for fresh statistics every `seconds`, like QEMU's `guest-stats-polling-interval` and
    /// Firecracker's `stats_polling_interval_s`.
    ///
    /// # Errors
    ///
    /// [`Error::Options`] when the device does not offer the stats queue (`--no-stats`).
    pub fn set_stats_polling_interval_s(&self, seconds: u64) -> Result<()> {
        if seconds > 0 && !self.offers(STATS_VQ) {
            return Err(Error::Options(
                "statistics polling needs the stats queue, which this daemon does not offer \
                 (started with --no-stats)"
                    .into(),
            ));
        }
        self.shared
            .stats_polling_interval_s
            .store(seconds, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(seconds, "statistics polling interval set");
        Ok(())
    }

    /// Why there are no guest statistics (`None` when there are some).
    pub fn stats_unavailable_reason(&self) -> Option<&'static str> {
        if self.stats().is_some() {
            return None;
        }
        let negotiated = self
            .shared
            .device
            .with_device_queues(|d| d.negotiated_features());
        Some(if !self.offers(STATS_VQ) {
            "the daemon does not offer the stats queue (started with --no-stats)"
        } else if !self.connected() {
            "no guest is connected"
        } else if !negotiated.has(STATS_VQ) {
            "the guest's driver did not negotiate the stats queue (VIRTIO_BALLOON_F_STATS_VQ)"
        } else {
            "the guest has not sent statistics yet (its driver sends them once it has probed)"
        })
    }

    /// The balloon's state.
    pub fn status(&self) -> BalloonStatus {
        let link = self.shared.link();
        let (target, actual, negotiated, roles, holds) =
            self.shared.device.with_device_queues(|d| {
                (
                    d.target_pages(),
                    d.actual_pages(),
                    d.negotiated_features(),
                    d.queue_roles(),
                    d.holds_stats_buffer(),
                )
            });
        BalloonStatus {
            amount_mib: pages_to_bytes(target) >> 20,
            deflate_on_oom: self.deflate_on_oom(),
            stats_polling_interval_s: self.stats_polling_interval_s(),
            connected: link.is_some(),
            guest_ram_bytes: link.as_ref().and_then(|l| l.guest_ram_bytes()),
            target_pages: target,
            target_bytes: pages_to_bytes(target),
            actual_pages: actual,
            actual_bytes: pages_to_bytes(actual),
            offered_features: self.shared.device.offered,
            negotiated_features: negotiated.bits(),
            negotiated: feature_names(negotiated),
            queues: queue_names(roles),
            holds_stats_buffer: holds,
            config_change_channel: link.as_ref().is_some_and(|l| l.notifier.has_channel()),
            reply_ack: link.as_ref().is_some_and(|l| l.notifier.reply_ack()),
            last_negotiation: self.shared.device.last_negotiated().map(|f| Negotiation {
                guest: self.shared.counters.connections.load(Ordering::Relaxed),
                connected: link.is_some(),
                features: f.bits(),
                negotiated: feature_names(f),
                queues: queue_names(QueueRoles::from_features(f)),
            }),
        }
    }

    /// The latest guest statistics, if the guest ever sent any.
    pub fn stats(&self) -> Option<StatsReport> {
        self.shared
            .device
            .with_device_queues(|d| d.latest_stats().map(StatsReport::from_stats))
    }

    /// Asks the guest for fresh statistics (gives its stats buffer back) and waits up to
    /// `wait` (capped by the options' `max_stats_wait`) for them to arrive.
    pub fn request_stats(&self, wait: Option<Duration>) -> StatsRequestOutcome {
        DaemonCounters::bump(&self.shared.counters.stats_requests);
        let before = self.shared.device.stats_sequence();
        let holds = self
            .shared
            .device
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
                self.shared.device.wait_stats_after(before, w)
            });
        StatsRequestOutcome {
            requested,
            fresh,
            stats: self.stats(),
            reason: (!requested).then(|| {
                self.stats_unavailable_reason()
                    .unwrap_or(
                        "the guest holds its stats buffer: it has not answered the last request",
                    )
                    .to_string()
            }),
        }
    }

    /// The device's and the daemon's counters.
    pub fn metrics(&self) -> MetricsReport {
        MetricsReport {
            device: self.shared.device.with_device_queues(|d| d.metrics()),
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

    /// Asks the daemon to stop (returns at once; [`DaemonHandle::wait`](crate::DaemonHandle::wait) waits for it).
    pub fn request_shutdown(&self) {
        self.shared.request_stop();
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping()
    }
}
