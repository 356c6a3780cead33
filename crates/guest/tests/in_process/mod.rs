//! A [`VirtioTransport`] that serves the queues in this process with the real device core
//! (`prezero_device::BalloonDevice`): no socket, no daemon, no threads.
//!
//! The device maps the guest's memfd a second time, as the vhost-user daemon does, and its
//! discards (hole punches in the memfd) are real. A kick processes the queue at once; its call,
//! and a config change the host makes through [`Host`], are what the next `wait` returns.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prezero_balloon::features::RING_EVENT_IDX;
use prezero_device::{BalloonDevice, DeviceOptions, HostDiscard};
use prezero_guest::RingLayout;
use prezero_guest::{Events, GuestRam, VirtioTransport};
use virtio_queue::{Queue, QueueT};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// How the in-process transport fails.
#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    /// The host removed the device ([`Host::unplug`]).
    #[error("the device was unplugged")]
    Unplugged,
    /// The driver called out of order.
    #[error("{0}")]
    Sequence(&'static str),
    /// The device refused (a bad ring, a bad config write).
    #[error("device: {0}")]
    Device(String),
}

struct State {
    device: BalloonDevice<HostDiscard>,
    mem: Option<GuestMemoryMmap>,
    queues: Vec<Option<Queue>>,
    calls: u64,
    config_changed: bool,
    unplugged: bool,
    /// Per queue, the largest ring it takes, as a virtio-pci device says (empty: no limit).
    max_sizes: Vec<u16>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// The driver's end.
pub struct InProcess(Shared);

/// The host's end: steers the device and looks at it while the driver owns the transport.
#[derive(Clone)]
pub struct Host(Shared);

/// A device with `options` and the two ends of its transport.
///
/// Queue `i` takes rings of at most `max_sizes[i]` entries (as QEMU's own balloon over
/// virtio-pci: 32 for reporting), told through `max_queue_size` and enforced at `setup_queue`;
/// queues past the slice have no limit.
pub fn device_with_max_sizes(options: DeviceOptions, max_sizes: &[u16]) -> (InProcess, Host) {
    let device = BalloonDevice::new(options, HostDiscard::new()).expect("valid device options");
    let queues = (0..device.max_queues()).map(|_| None).collect();
    let shared = Arc::new((
        Mutex::new(State {
            device,
            mem: None,
            queues,
            calls: 0,
            config_changed: false,
            unplugged: false,
            max_sizes: max_sizes.to_vec(),
        }),
        Condvar::new(),
    ));
    (InProcess(shared.clone()), Host(shared))
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared
        .0
        .lock()
        .expect("no test thread panicked holding the device")
}

impl Host {
    /// Sets the balloon target, notifying the driver as a config change if it moved.
    pub fn set_target_pages(&self, pages: u32) {
        let mut s = lock(&self.0);
        if s.device.set_target_pages(pages) {
            s.config_changed = true;
            self.0 .1.notify_all();
        }
    }

    /// Runs `f` on the device (to read its features, config or metrics).
    pub fn with_device<R>(&self, f: impl FnOnce(&BalloonDevice<HostDiscard>) -> R) -> R {
        f(&lock(&self.0).device)
    }

    /// Removes the device: every later transport call fails.
    pub fn unplug(&self) {
        lock(&self.0).unplugged = true;
        self.0 .1.notify_all();
    }
}

impl InProcess {
    fn state(&self) -> Result<MutexGuard<'_, State>, InProcessError> {
        let s = lock(&self.0);
        if s.unplugged {
            return Err(InProcessError::Unplugged);
        }
        Ok(s)
    }
}

impl VirtioTransport for InProcess {
    type Error = InProcessError;
    type Memory = GuestRam;

    fn device_features(&self) -> u64 {
        lock(&self.0).device.offered_features()
    }

    fn negotiate(&mut self, driver_features: u64) -> Result<u64, InProcessError> {
        let mut s = self.state()?;
        let acked = driver_features & s.device.offered_features();
        s.device.ack_features(acked);
        Ok(acked)
    }

    fn set_memory(&mut self, ram: &GuestRam) -> Result<(), InProcessError> {
        let file = ram
            .file()
            .try_clone()
            .map_err(|e| InProcessError::Device(e.to_string()))?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            ram.size() as usize,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| InProcessError::Device(e.to_string()))?;
        self.state()?.mem = Some(mem);
        Ok(())
    }

    fn max_queue_size(&mut self, index: u16) -> Result<Option<u16>, InProcessError> {
        Ok(self.state()?.max_sizes.get(usize::from(index)).copied())
    }

    fn setup_queue(&mut self, index: u16, ring: &RingLayout) -> Result<(), InProcessError> {
        let mut s = self.state()?;
        if s.max_sizes
            .get(usize::from(index))
            .is_some_and(|&m| ring.size > m)
        {
            return Err(InProcessError::Sequence(
                "a ring larger than the queue's maximum",
            ));
        }
        if s.mem.is_none() {
            return Err(InProcessError::Sequence("set_memory before setup_queue"));
        }
        let event_idx = s.device.negotiated_features().has(RING_EVENT_IDX);
        let device = |e: virtio_queue::Error| InProcessError::Device(e.to_string());
        let mut queue = Queue::new(s.device.queue_max_size()).map_err(device)?;
        queue.try_set_size(ring.size).map_err(device)?;
        queue
            .try_set_desc_table_address(GuestAddress(ring.desc))
            .map_err(device)?;
        queue
            .try_set_avail_ring_address(GuestAddress(ring.avail))
            .map_err(device)?;
        queue
            .try_set_used_ring_address(GuestAddress(ring.used))
            .map_err(device)?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        let slot = s
            .queues
            .get_mut(usize::from(index))
            .ok_or(InProcessError::Sequence("no such queue"))?;
        *slot = Some(queue);
        Ok(())
    }

    fn kick(&self, index: u16) -> Result<(), InProcessError> {
        let mut guard = self.state()?;
        let s = &mut *guard;
        let (Some(mem), Some(Some(queue))) = (&s.mem, s.queues.get_mut(usize::from(index))) else {
            return Err(InProcessError::Sequence(
                "kick of a queue that is not set up",
            ));
        };
        let notify = s
            .device
            .process_queue(usize::from(index), queue, mem)
            .map_err(|e| InProcessError::Device(e.to_string()))?;
        if notify {
            s.calls |= 1 << index;
            self.0 .1.notify_all();
        }
        Ok(())
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Events, InProcessError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.state()?;
        loop {
            if s.unplugged {
                return Err(InProcessError::Unplugged);
            }
            if s.calls != 0 || s.config_changed {
                let events = Events {
                    calls: s.calls,
                    config_changed: s.config_changed,
                };
                s.calls = 0;
                s.config_changed = false;
                return Ok(events);
            }
            s = match deadline {
                None => self.0 .1.wait(s).expect("lock"),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Events::default());
                    }
                    self.0 .1.wait_timeout(s, left).expect("lock").0
                }
            };
        }
    }

    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), InProcessError> {
        self.state()?.device.read_config(u64::from(offset), buf);
        Ok(())
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), InProcessError> {
        let outcome = self.state()?.device.write_config(u64::from(offset), data);
        if outcome.ignored_anything() {
            return Err(InProcessError::Device(format!(
                "configuration write at offset {offset} partly ignored: {outcome:?}"
            )));
        }
        Ok(())
    }
}
