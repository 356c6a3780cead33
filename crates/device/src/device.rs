//! The device: its state (negotiation, configuration space, stats buffer, counters, discard
//! backend) and the API transports and the host call. Queue events are lent to the queue loop
//! ([`queues`](crate::queues)) with the parts of the state a handler may use.

use std::sync::Arc;

use prezero_balloon::config::config_size;
use prezero_balloon::features::{Features, PAGE_POISON, STATS_VQ};
use prezero_balloon::queues::{QueueRole, QueueRoles, MAX_QUEUES};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryBackend;

use crate::config_space::{ConfigSpace, ConfigWriteOutcome};
use crate::context::{ChainCtx, RequestBuffers};
use crate::discard::DiscardBackend;
use crate::error::{DeviceError, ErrorKind};
use crate::metrics::{bump, Metrics, MetricsSnapshot};
use crate::options::DeviceOptions;
use crate::queues;
use crate::stats::{GuestStats, StatsState};

/// The virtio-balloon device core, transport-agnostic.
///
/// `D` is the discard backend ([`HostDiscard`](crate::HostDiscard) for real memory,
/// `RecordingDiscard` (feature `test-utils`) in tests).
#[derive(Debug)]
pub struct BalloonDevice<D> {
    options: DeviceOptions,
    negotiated: Features,
    roles: QueueRoles,
    config: ConfigSpace,
    stats: StatsState,
    metrics: Arc<Metrics>,
    discard: D,
    buffers: RequestBuffers,
}

impl<D> BalloonDevice<D> {
    /// A device with `options`, discarding through `discard`.
    pub fn new(options: DeviceOptions, discard: D) -> Result<Self, DeviceError> {
        options.validate()?;
        let mut config = ConfigSpace::default();
        config.values.num_pages = options.initial_target_pages;
        Ok(BalloonDevice {
            options,
            negotiated: Features::EMPTY,
            roles: QueueRoles::from_features(Features::EMPTY),
            config,
            stats: StatsState::default(),
            metrics: Arc::new(Metrics::default()),
            discard,
            buffers: RequestBuffers::default(),
        })
    }

    /// The options the device was built with.
    pub fn options(&self) -> &DeviceOptions {
        &self.options
    }

    // ---- features and activation -------------------------------------------------------

    /// Feature bits offered to the driver (balloon bits 0-7 plus transport bits).
    pub fn offered_features(&self) -> u64 {
        self.options.offered_features().bits()
    }

    /// Number of queue slots a transport must provide: all five of the spec (inflate,
    /// deflate, stats, free page hint, reporting), whatever is offered or negotiated.
    ///
    /// The Linux driver names five slots whatever it negotiates, and its transports check the
    /// device against that: Linux 7.x `virtio_uml` asks the backend for its queue count
    /// (vhost-user `GET_QUEUE_NUM`) and refuses to probe (-22) below five; QEMU's generic
    /// vhost-user device with `num_vqs=5` sets up every slot and fails to start when one is
    /// refused. A slot without a role under the negotiated features is set up but never
    /// processed (a kick on it counts `unknown_queue`).
    pub fn max_queues(&self) -> usize {
        MAX_QUEUES
    }

    /// Maximum size of each queue.
    pub fn queue_max_size(&self) -> u16 {
        self.options.queue_size
    }

    /// The driver acknowledged `features` (vhost-user `SET_FEATURES`, virtio `FEATURES_OK`).
    /// Bits never offered are dropped and counted. Queue roles are recomputed densely from the
    /// result. Returns the negotiated set.
    pub fn ack_features(&mut self, features: u64) -> Features {
        let offered = self.options.offered_features();
        let acked = Features(features);
        if !acked.is_subset_of(offered) {
            self.metrics.error(ErrorKind::UnofferedFeature);
        }
        self.negotiated = acked.and(offered);
        self.roles = QueueRoles::from_features(self.negotiated);
        if !self.negotiated.has(STATS_VQ) {
            self.stats.held = None;
        }
        self.negotiated
    }

    /// The negotiated features.
    pub fn negotiated_features(&self) -> Features {
        self.negotiated
    }

    /// Queue index -> role under the negotiated features.
    pub fn queue_roles(&self) -> QueueRoles {
        self.roles
    }

    /// Role of queue `index` under the negotiated features.
    pub fn queue_role(&self, index: usize) -> Option<QueueRole> {
        self.roles.role(index)
    }

    /// Device reset: forget the negotiation, the held stats buffer and the driver-written
    /// configuration. The host's target and the metrics stay.
    pub fn reset(&mut self) {
        self.negotiated = Features::EMPTY;
        self.roles = QueueRoles::from_features(Features::EMPTY);
        self.stats.held = None;
        self.config.values.actual = 0;
        self.config.values.poison_val = 0;
    }

    // ---- configuration space ----------------------------------------------------------

    /// Size of the configuration space for the offered features (8, 12 or 16 bytes).
    pub fn config_size(&self) -> usize {
        config_size(self.options.offered_features())
    }

    /// Read configuration bytes at `offset` (vhost-user `GET_CONFIG`, a PCI/MMIO read).
    /// Bytes past the 16-byte space read as zero (counted as `config_range`).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        if !self.config.read(offset, data) {
            self.metrics.error(ErrorKind::ConfigRange);
        }
    }

    /// A driver configuration write (vhost-user `SET_CONFIG`, a PCI/MMIO write). The bytes of
    /// driver-writable fields are applied (`actual`, and `poison_val` once `PAGE_POISON` is
    /// negotiated); the rest are ignored. A byte that would change a read-only field counts
    /// one `config_write` error per write, bytes past the space one `config_range`: a whole
    /// config write that repeats `num_pages` (QEMU's generic vhost-user device) is no error.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) -> ConfigWriteOutcome {
        let outcome = self.config.write(offset, data, self.negotiated);
        if outcome.read_only_bytes != 0 {
            self.metrics.error(ErrorKind::ConfigWrite);
        }
        if outcome.out_of_range_bytes != 0 {
            self.metrics.error(ErrorKind::ConfigRange);
        }
        outcome
    }

    // ---- host API ---------------------------------------------------------------------

    /// Set the target balloon size in 4 KiB pages. Returns whether it changed, in which case
    /// the transport must send a configuration-change notification.
    pub fn set_target_pages(&mut self, pages: u32) -> bool {
        let changed = self.config.values.num_pages != pages;
        self.config.values.num_pages = pages;
        changed
    }

    /// The target balloon size (`num_pages`).
    pub fn target_pages(&self) -> u32 {
        self.config.values.num_pages
    }

    /// The balloon size the driver reports (`actual`).
    pub fn actual_pages(&self) -> u32 {
        self.config.values.actual
    }

    /// The guest's poison pattern, when `PAGE_POISON` is negotiated.
    pub fn poison_val(&self) -> Option<u32> {
        self.negotiated
            .has(PAGE_POISON)
            .then_some(self.config.values.poison_val)
    }

    /// A copy of the metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The live metrics, readable from another thread without locking the device.
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The latest guest statistics, with their arrival time.
    pub fn latest_stats(&self) -> Option<&GuestStats> {
        self.stats.latest.as_ref()
    }

    /// Whether the device holds the driver's stats buffer (so a fresh-stats request can be
    /// sent).
    pub fn holds_stats_buffer(&self) -> bool {
        self.stats.held.is_some()
    }

    /// The discard backend.
    pub fn discard_backend(&self) -> &D {
        &self.discard
    }

    /// The discard backend, mutably (tests inspect and reset recordings).
    pub fn discard_backend_mut(&mut self) -> &mut D {
        &mut self.discard
    }

    // ---- queues -----------------------------------------------------------------------

    /// Process the available chains of queue `index` (a kick / vhost-user vring event).
    /// Returns whether the driver must be notified (signal the used queue).
    ///
    /// Guest mistakes are counted and answered conservatively; `Err` only means the queue's
    /// rings cannot be accessed or the index has no role.
    pub fn process_queue<Q, M>(
        &mut self,
        index: usize,
        queue: &mut Q,
        mem: &M,
    ) -> Result<bool, DeviceError>
    where
        Q: QueueT,
        M: GuestMemoryBackend,
        D: DiscardBackend<M::R>,
    {
        let poison_val = self.poison_val();
        let mut ctx = ChainCtx {
            mem,
            discard: &mut self.discard,
            metrics: &self.metrics,
            features: self.negotiated,
            poison_val,
            limits: self.options.limits,
            deflate_willneed: self.options.deflate_willneed,
            used_ring: queues::used_ring_range(queue),
            bufs: &mut self.buffers,
        };
        let role = self.roles.role(index);
        queues::process(role, index, queue, &mut ctx, &mut self.stats)
    }

    /// Give the held stats buffer back so the driver refills it with fresh values. Returns
    /// whether the driver must be notified (false when no buffer is held: the next one the
    /// driver sends is fresh anyway).
    pub fn request_stats<Q, M>(&mut self, queue: &mut Q, mem: &M) -> Result<bool, DeviceError>
    where
        Q: QueueT,
        M: GuestMemoryBackend,
    {
        let index = self.roles.index(QueueRole::Stats).unwrap_or(usize::MAX);
        let Some(head) = self.stats.held.take() else {
            return Ok(false);
        };
        bump(&self.metrics.stats_requests, 1);
        queues::release_held(&self.metrics, index, queue, mem, head)
    }
}
