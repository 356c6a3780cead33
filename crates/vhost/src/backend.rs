//! The balloon device as a `vhost-user-backend` backend.
//!
//! One [`SharedDevice`] lives as long as the daemon: the device (negotiation, config space,
//! metrics, latest stats, the host's target) behind a mutex. Each frontend connection gets a
//! fresh [`BalloonBackend`] over it, with that connection's guest memory map; when the
//! connection ends, the backend and with it every mapping of the guest's memory are dropped.
//!
//! Locking: the device mutex is held only inside one device call. Queue events run on the
//! daemon's worker thread; the main vhost-user thread never waits on the device for anything
//! but `SET_FEATURES`, `SET_CONFIG` and a reset: features, queue counts and the config space
//! it reads are immutable or mirrored outside the lock, so `GET_CONFIG` is answered even while
//! a large discard is in progress (User-Mode Linux waits for replies with interrupts off).
//! The relay answers most `GET_CONFIG`/`SET_CONFIG` itself through [`ConfigSpace`] (the same
//! two calls), which spares the frontend two thread hops per access.
//! Lock order where both are taken: device, then vring.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prezero_balloon::config::CONFIG_SIZE;
use prezero_balloon::features::Features;
use prezero_balloon::queues::{QueueRole, MAX_QUEUES};
use prezero_device::{BalloonDevice, DeviceOptions, HostDiscard};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::exit_pipe::{self, LeakedConsumer};
use crate::relay::{ConfigSpace, RingHooks};

/// The device type the daemon serves.
pub(crate) type Device = BalloonDevice<HostDiscard<()>>;
/// Guest memory as `vhost-user-backend` maps it.
pub(crate) type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Protocol features offered: what `virtio_uml` and QEMU use for a balloon, and
/// `RESET_DEVICE` (QEMU resets a vhost-user device with it instead of the older `RESET_OWNER`).
/// Not `INBAND_NOTIFICATIONS` (UML's time-travel mode only), not `STATUS`
/// (`vhost-user-backend` 0.24 does not handle `SET_STATUS`).
pub(crate) fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// The device and what is shared about it across connections and with the host API.
#[derive(Debug)]
pub(crate) struct SharedDevice {
    device: Mutex<Device>,
    /// The config space image, refreshed after every device call that may change it.
    config: Mutex<[u8; CONFIG_SIZE]>,
    config_size: usize,
    /// Sequence number of the latest stats buffer, signalled when it changes.
    stats_seq: Mutex<u64>,
    stats_changed: Condvar,
    /// The features the current (or, once it left, the last) guest acked, kept after it
    /// disconnects so a short-lived guest's negotiation can still be read; cleared when the
    /// next guest is accepted.
    last_negotiated: Mutex<Option<Features>>,
    pub(crate) offered: u64,
    pub(crate) num_queues: usize,
    pub(crate) queue_size: usize,
}

impl SharedDevice {
    pub(crate) fn new(
        options: DeviceOptions,
        discard: bool,
    ) -> Result<Self, prezero_device::DeviceError> {
        let backend = if discard {
            HostDiscard::new()
        } else {
            HostDiscard::disabled()
        };
        let device = BalloonDevice::new(options, backend)?;
        let mut config = [0u8; CONFIG_SIZE];
        device.read_config(0, &mut config);
        Ok(SharedDevice {
            offered: device.offered_features(),
            num_queues: device.max_queues(),
            queue_size: usize::from(device.queue_max_size()),
            config_size: device.config_size(),
            config: Mutex::new(config),
            device: Mutex::new(device),
            stats_seq: Mutex::new(0),
            stats_changed: Condvar::new(),
            last_negotiated: Mutex::new(None),
        })
    }

    /// See the `last_negotiated` field.
    pub(crate) fn last_negotiated(&self) -> Option<Features> {
        *self
            .last_negotiated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A new guest was accepted: what the previous one negotiated is no longer "the last".
    pub(crate) fn forget_last_negotiated(&self) {
        *self
            .last_negotiated
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn lock(&self) -> MutexGuard<'_, Device> {
        // A panic inside the device must not take the daemon down with a poisoned lock; the
        // device's state is consistent between calls.
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the device; the config mirror is refreshed afterwards.
    pub(crate) fn with_device<R>(&self, f: impl FnOnce(&mut Device) -> R) -> R {
        let mut dev = self.lock();
        let r = f(&mut dev);
        let mut image = [0u8; CONFIG_SIZE];
        dev.read_config(0, &mut image);
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = image;
        r
    }

    /// Runs `f` on the device without refreshing the config mirror: for calls that cannot
    /// change the config space (queue processing, reads).
    pub(crate) fn with_device_queues<R>(&self, f: impl FnOnce(&mut Device) -> R) -> R {
        f(&mut self.lock())
    }

    /// A `GET_CONFIG` answer: exactly `size` bytes, or empty (a refusal) when the read goes
    /// past the config space of the offered features.
    pub(crate) fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let (offset, size) = (offset as usize, size as usize);
        match offset.checked_add(size) {
            Some(end) if end <= self.config_size => {
                self.config.lock().unwrap_or_else(|p| p.into_inner())[offset..end].to_vec()
            }
            _ => {
                tracing::debug!(offset, size, "GET_CONFIG outside the config space refused");
                Vec::new()
            }
        }
    }

    /// A `SET_CONFIG`: the driver-writable bytes are applied, the rest ignored (as a
    /// virtio-pci device ignores writes to read-only config fields) and counted by the device.
    /// QEMU's generic device sends the whole space on every write, `num_pages` included.
    pub(crate) fn write_config(&self, offset: u32, buf: &[u8]) {
        let (outcome, actual) = self.with_device(|d| {
            let outcome = d.write_config(u64::from(offset), buf);
            (outcome, d.actual_pages())
        });
        if outcome.actual_changed {
            tracing::debug!(actual, "guest updated the balloon size");
        }
        if outcome.ignored_anything() {
            tracing::debug!(
                offset,
                len = buf.len(),
                ?outcome,
                "part of a guest config write ignored"
            );
        }
    }

    /// A driver re-initialised the device without a reset message (see [`Incarnations`]):
    /// its guest-visible state (config fields the driver writes, the held stats buffer) is a
    /// fresh device's, the features it acked for this incarnation stay, counters stay.
    fn reinitialise(&self) {
        self.with_device(|d| {
            let features = d.negotiated_features();
            d.reset();
            d.ack_features(features.bits());
        });
    }

    /// Records that the stats queue was processed; wakes waiters if new stats arrived.
    fn stats_processed(&self, dev: &Device) {
        let seq = dev.latest_stats().map_or(0, |s| s.sequence);
        let mut cur = self.stats_seq.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != seq {
            *cur = seq;
            self.stats_changed.notify_all();
        }
    }

    /// The current stats sequence number (0: none yet).
    pub(crate) fn stats_sequence(&self) -> u64 {
        *self.stats_seq.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the stats sequence passes `after`, at most `timeout`. Returns whether it did.
    pub(crate) fn wait_stats_after(&self, after: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut cur = self.stats_seq.lock().unwrap_or_else(|p| p.into_inner());
        while *cur <= after {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            cur = self
                .stats_changed
                .wait_timeout(cur, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Where each ring of one connection left off, to tell a ring set up again for a new driver
/// from one resumed: the relay's [`RingHooks`].
///
/// A ring set up again while it ran (no `GET_VRING_BASE` or reset since it started), or set
/// up from available index 0 after the device took buffers from it (its next available index
/// was not 0), is a new incarnation: the driver was reloaded or the guest rebooted without the
/// connection ending, and nothing it made available before will be looked at again. QEMU sends `SET_FEATURES` and the rings' saved bases on every `cont`
/// after a `stop`, so neither a repeated `SET_FEATURES` nor a ring restart alone can be taken
/// for a re-initialisation; a base going back to 0 can. (A ring paused exactly when its index
/// wrapped to 0 after 65,536 buffers resumes at 0 too, and is taken for resumed: nothing is
/// reset then; a reboot at that instant keeps the previous boot's state, which the next
/// `RESET_DEVICE` or reconnect clears.)
#[derive(Debug)]
pub(crate) struct Incarnations {
    shared: Arc<SharedDevice>,
    next_avail: [AtomicU16; MAX_QUEUES],
}

impl Incarnations {
    pub(crate) fn new(shared: Arc<SharedDevice>) -> Self {
        Incarnations {
            shared,
            next_avail: Default::default(),
        }
    }

    fn processed(&self, index: usize, next_avail: u16) {
        if let Some(a) = self.next_avail.get(index) {
            a.store(next_avail, Ordering::Relaxed);
        }
    }

    fn forget(&self) {
        for a in &self.next_avail {
            a.store(0, Ordering::Relaxed);
        }
    }
}

impl RingHooks for Incarnations {
    fn rings(&self) -> usize {
        self.shared.num_queues
    }

    fn ring_base(&self, queue: u32, base: u32, running: bool) -> bool {
        let Some(left) = self.next_avail.get(queue as usize) else {
            return running;
        };
        // A ring set up again while it ran was not paused (a pause stops the rings first):
        // a new driver (User-Mode Linux's reload, whatever the bases).
        if running || (base == 0 && left.load(Ordering::Relaxed) != 0) {
            tracing::info!(
                queue,
                running,
                "a ring set up again for a new driver: the device is re-initialised"
            );
            self.shared.reinitialise();
            self.forget();
            return true;
        }
        false
    }

    fn reset_owner(&self) {
        tracing::info!("RESET_OWNER: the device is reset");
        self.shared.with_device(|d| d.reset());
        self.forget();
    }
}

/// The relay answers config accesses from here (`GET_CONFIG` and `SET_CONFIG` exactly as the
/// backend's own handlers below).
impl ConfigSpace for SharedDevice {
    fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        self.read_config(offset, size)
    }

    fn write(&self, offset: u32, data: &[u8]) {
        self.write_config(offset, data);
    }
}

/// The `vhost-user-backend` backend of one frontend connection.
#[derive(Debug)]
pub(crate) struct BalloonBackend {
    shared: Arc<SharedDevice>,
    incarnations: Arc<Incarnations>,
    mem: Memory,
    /// Written by the host API to make the worker hand the stats buffer back.
    stats_event: EventFd,
    /// Closed when the backend goes ([`exit_pipe`]).
    exit_consumers: Mutex<Vec<LeakedConsumer>>,
    warned: [AtomicBool; MAX_QUEUES],
    /// Dropped with the backend: tells the session every clone is gone (worker included).
    _gone: Sender<()>,
}

/// Epoll data of the stats-request event (0..num_queues are queues, num_queues is the
/// library's exit/enable event).
pub(crate) fn stats_event_id(num_queues: usize) -> u64 {
    num_queues as u64 + 1
}

impl BalloonBackend {
    pub(crate) fn new(
        shared: Arc<SharedDevice>,
        mem: Memory,
        gone: Sender<()>,
    ) -> io::Result<Self> {
        Ok(BalloonBackend {
            incarnations: Arc::new(Incarnations::new(shared.clone())),
            shared,
            mem,
            stats_event: EventFd::new(EFD_NONBLOCK)?,
            exit_consumers: Mutex::new(Vec::new()),
            warned: Default::default(),
            _gone: gone,
        })
    }

    /// What the relay tells about ring restarts ([`Incarnations`]).
    pub(crate) fn incarnations(&self) -> Arc<Incarnations> {
        self.incarnations.clone()
    }

    /// The event the host API writes to request fresh stats.
    pub(crate) fn stats_event(&self) -> &EventFd {
        &self.stats_event
    }

    fn process(&self, index: usize, vring: &VringRwLock) {
        let mem = self.mem.memory();
        let result = self.shared.with_device_queues(|dev| {
            let result = {
                let mut state = vring.get_mut();
                let result = dev.process_queue(index, state.get_queue_mut(), &*mem);
                self.incarnations
                    .processed(index, state.get_queue().next_avail());
                result
            };
            if dev.queue_role(index) == Some(QueueRole::Stats) {
                self.shared.stats_processed(dev);
            }
            result
        });
        match result {
            Ok(true) => signal(vring, index),
            Ok(false) => {}
            Err(e) => {
                // Counted by the device; say it once per queue and connection.
                let first = self
                    .warned
                    .get(index)
                    .is_some_and(|w| !w.swap(true, Ordering::Relaxed));
                if first {
                    tracing::warn!(queue = index, error = %e, "balloon queue cannot make progress");
                } else {
                    tracing::debug!(queue = index, error = %e, "balloon queue error");
                }
            }
        }
    }

    fn give_back_stats(&self, vrings: &[VringRwLock]) {
        let _ = self.stats_event.read();
        let mem = self.mem.memory();
        let done = self.shared.with_device_queues(|dev| {
            let index = dev.queue_roles().index(QueueRole::Stats)?;
            let vring = vrings.get(index)?;
            let mut state = vring.get_mut();
            Some((index, dev.request_stats(state.get_queue_mut(), &*mem)))
        });
        match done {
            Some((index, Ok(true))) => {
                tracing::debug!("stats buffer given back for fresh values");
                signal(&vrings[index], index);
            }
            Some((_, Ok(false))) | None => {
                tracing::debug!("fresh stats requested but no stats buffer is held")
            }
            Some((index, Err(e))) => {
                tracing::warn!(queue = index, error = %e, "cannot give the stats buffer back")
            }
        }
    }
}

/// Signals the driver. The call "fd" may be an eventfd or (User-Mode Linux) a socketpair
/// end: `signal_used_queue` writes 8 bytes, which both take.
fn signal(vring: &VringRwLock, index: usize) {
    if let Err(e) = vring.signal_used_queue() {
        // EPIPE: the frontend is gone; the connection is about to end anyway.
        tracing::debug!(queue = index, error = %e, "cannot signal the used queue");
    }
}

impl Drop for BalloonBackend {
    fn drop(&mut self) {
        // This is the last reference to the backend, so the worker's handler was dropped.
        let leaked = self
            .exit_consumers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        for consumer in leaked.drain(..) {
            consumer.close();
        }
    }
}

impl VhostUserBackend for BalloonBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.shared.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.shared.queue_size
    }

    fn features(&self) -> u64 {
        self.shared.offered | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        // Bit 30 is vhost-user's, not the device's.
        let features = features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let negotiated = self.shared.with_device(|d| d.ack_features(features));
        *self
            .shared
            .last_negotiated
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(negotiated);
        tracing::info!(
            features = format_args!("{:#x}", negotiated.bits()),
            "guest negotiated features"
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn reset_device(&self) {
        // RESET_DEVICE (the library has disabled every ring).
        tracing::info!("RESET_DEVICE: the device is reset");
        self.shared.with_device(|d| d.reset());
        self.incarnations.forget();
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The vrings carry it (vhost-user-backend sets it on each queue).
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.shared.read_config(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Never an error: vhost-user-backend 0.24 ends the whole connection when SET_CONFIG
        // fails, which would take the balloon away from a guest over one stray write.
        self.shared.write_config(offset, buf);
        Ok(())
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        let regions = mem.memory().num_regions();
        tracing::debug!(regions, "guest memory mapped");
        Ok(())
    }

    fn set_backend_req_fd(&self, _backend: Backend) {
        // The relay keeps its own copy of this channel and sends config changes on it; vhost
        // 0.18's Backend cannot, so it is dropped here (see the relay's module docs).
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier, leaked) = match exit_pipe::exit_event() {
            Ok(ends) => ends,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a worker exit pipe");
                return None;
            }
        };
        self.exit_consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(leaked);
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let event = usize::from(device_event);
        if u64::from(device_event) == stats_event_id(self.shared.num_queues) {
            self.give_back_stats(vrings);
        } else if let Some(vring) = vrings.get(event) {
            self.process(event, vring);
        } else {
            tracing::debug!(event, "unexpected worker event ignored");
        }
        // Never an error: it would end the worker thread and with it every queue.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;
    use vm_memory::GuestAddress;

    fn shared() -> Arc<SharedDevice> {
        Arc::new(SharedDevice::new(DeviceOptions::default(), true).unwrap())
    }

    #[test]
    fn signalling_works_on_a_socketpair_call_fd() {
        // User-Mode Linux passes one end of a socketpair as the call "fd".
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        );
        let vring = VringRwLock::new(mem, 256).unwrap();
        let (ours, mut uml) = UnixStream::pair().unwrap();
        vring.set_call(Some(std::fs::File::from(std::os::fd::OwnedFd::from(ours))));
        signal(&vring, 0);
        signal(&vring, 0);
        let mut got = [0u8; 16];
        uml.read_exact(&mut got).unwrap();
        assert_eq!(&got[..8], &1u64.to_ne_bytes());
        assert_eq!(&got[8..], &1u64.to_ne_bytes());
        // The peer gone: no SIGPIPE, no panic, just an error that is logged.
        drop(uml);
        signal(&vring, 0);
    }

    #[test]
    fn config_reads_come_from_the_mirror_and_past_the_space_are_refused() {
        let c = shared();
        assert_eq!(c.read_config(0, 8), vec![0; 8]);
        c.with_device(|d| d.set_target_pages(0x1234));
        assert_eq!(c.read_config(0, 4), 0x1234u32.to_le_bytes().to_vec());
        // The full offer includes PAGE_POISON: 16 bytes.
        assert_eq!(c.read_config(0, 16).len(), 16);
        assert!(c.read_config(0, 17).is_empty());
        assert!(c.read_config(u32::MAX, 4).is_empty());
    }

    #[test]
    fn exit_pipes_are_closed_when_the_backend_goes() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let backend = BalloonBackend::new(shared(), mem, tx).unwrap();
        let (consumer, notifier) = backend.exit_event(0).unwrap();
        // As vhost-user-backend does with it.
        let fd = consumer.into_raw_fd();
        notifier.notify().unwrap();
        let id = exit_pipe::file_id(fd).unwrap();
        drop(backend);
        assert!(rx.recv().is_err(), "the session learns the backend is gone");
        // (Another test may have reused the number since: compare identities.)
        assert_ne!(
            exit_pipe::file_id(fd).ok(),
            Some(id),
            "the leaked consumer end was closed"
        );
    }
}
