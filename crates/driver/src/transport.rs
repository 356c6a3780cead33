//! The seam between a virtio driver and whatever carries its requests to the device.
//!
//! A driver negotiates features, lays split virtqueues out in guest memory, tells the device
//! where they are, kicks, waits for calls and reads or writes the device's config space
//! (virtio 1.x, 3.1 "Device Initialization"). How each of those reaches the device is the
//! transport's business: the Rust guest's vhost-user frontend (`prezero_guest::VhostUserTransport`)
//! sends vhost-user messages over a Unix socket and turns kicks and calls into eventfds; a
//! virtio-pci transport in a `no_std` kernel writes capability registers and polls its ISR or
//! takes MSI-X interrupts. The balloon driver ([`BalloonDriver`](crate::BalloonDriver)) is
//! written against [`VirtioTransport`] only, so it runs unchanged over either, and over an
//! in-process test double.
//!
//! So this file names no host type: addresses are guest-physical `u64`s, a ring is its
//! [`RingLayout`], time is [`core::time::Duration`], errors are [`core::error::Error`].
//!
//! # What an implementation must guarantee
//!
//! - **Order.** A driver calls [`device_features`](VirtioTransport::device_features),
//!   [`negotiate`](VirtioTransport::negotiate), [`set_memory`](VirtioTransport::set_memory),
//!   [`setup_queue`](VirtioTransport::setup_queue) per queue and
//!   [`driver_ok`](VirtioTransport::driver_ok), then kicks, waits and uses config space. A call
//!   out of this order is an error, never undefined behaviour.
//! - **Features.** [`device_features`](VirtioTransport::device_features) holds virtio feature
//!   bits only: bits the transport itself uses (vhost-user's bit 30) are hidden and handled by
//!   the transport. [`negotiate`](VirtioTransport::negotiate) returns once the device runs with
//!   the returned set, which is the driver's choice limited to what the device offered; a
//!   device that refuses it (virtio's `FEATURES_OK` not sticking) is an error.
//! - **Queues.** After [`setup_queue`](VirtioTransport::setup_queue) the device uses that
//!   ring, at those guest-physical addresses, from index 0, with `VIRTIO_RING_F_EVENT_IDX`
//!   exactly when it was negotiated. The ring memory must stay valid for the transport's life.
//! - **Notifications.** [`kick`](VirtioTransport::kick) makes the device look at the avail ring
//!   of a set-up queue. [`wait`](VirtioTransport::wait) returns every call and config change
//!   that arrived since the last wait (a call may be spurious: the driver pops the used ring to
//!   see), or [`Events::default`] once the timeout passed; it never loses a call that came
//!   between two waits. A transport without interrupts polls: it may report every queue as
//!   called, and reports a config change when virtio-pci's `config_generation` (or the ISR's
//!   config bit) moved, not by rereading config space (over vhost-user every config read is a
//!   `GET_CONFIG` round trip to the daemon).
//! - **A dead device never hangs the driver.** A device that is gone makes every later call
//!   fail promptly, waits included; the driver then stops using it.
//!
//! # A driver over any transport
//!
//! Generic over the memory the rings live in ([`QueueMemory`](prezero_virtq::QueueMemory):
//! the process guest's memfd RAM, a kernel's identity-mapped physical memory):
//!
//! ```
//! use core::time::Duration;
//! use prezero_driver::{Buffer, QueueMemory, SplitQueue, VirtioTransport};
//!
//! const VIRTIO_F_VERSION_1: u64 = 1 << prezero_balloon::features::VERSION_1;
//!
//! /// Hands the device one 4 MiB block to write (or discard) and waits for it back; returns
//! /// how many bytes the device wrote.
//! fn one_request<T: VirtioTransport, M: QueueMemory>(
//!     device: &mut T,
//!     shared: &T::Memory,
//!     ring_memory: M,
//! ) -> Result<u32, Box<dyn core::error::Error>> {
//!     device.negotiate(VIRTIO_F_VERSION_1 | (device.device_features() & 0x7f))?;
//!     device.set_memory(shared)?;
//!     // Ring memory comes from the guest's page allocator: any gpa with this size and alignment.
//!     let need = SplitQueue::<u64, M>::memory_requirement(128)?;
//!     let ring_gpa = 0x10_0000;
//!     assert_eq!(ring_gpa % need.align, 0);
//!     let mut queue = SplitQueue::new(ring_memory, 128, ring_gpa, false)?;
//!     device.setup_queue(0, &queue.layout())?;
//!     device.driver_ok()?;
//!
//!     queue.add(&[Buffer::writable(0x40_0000, 4 << 20)], 42)?;
//!     if queue.should_notify()? {
//!         device.kick(0)?;
//!     }
//!     loop {
//!         let events = device.wait(Some(Duration::from_secs(1)))?;
//!         if events.config_changed {
//!             let mut num_pages = [0u8; 4];
//!             device.read_config(0, &mut num_pages)?;
//!         }
//!         if events.called(0) {
//!             if let Some(used) = queue.pop_used()? {
//!                 assert_eq!((used.token, used.writable_len), (42, 4 << 20));
//!                 return Ok(used.len);
//!             }
//!         }
//!     }
//! }
//! ```

use core::time::Duration;

use prezero_virtq::RingLayout;

/// Queues a transport can drive (one bit each in [`Events::calls`]).
pub const MAX_QUEUES: u16 = 64;

/// What [`VirtioTransport::wait`] saw. Empty means the timeout passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Bit `i` set: queue `i` was called (the device used chains, or may have).
    pub calls: u64,
    /// The device reported a config space change since the last wait.
    pub config_changed: bool,
}

impl Events {
    /// Nothing happened (the wait timed out).
    pub fn is_empty(&self) -> bool {
        self.calls == 0 && !self.config_changed
    }

    /// Whether queue `index` was called.
    pub fn called(&self, index: u16) -> bool {
        index < MAX_QUEUES && self.calls & (1 << index) != 0
    }

    /// The queues that were called, in index order.
    pub fn called_queues(&self) -> impl Iterator<Item = u16> + '_ {
        (0..MAX_QUEUES).filter(|&i| self.called(i))
    }
}

/// A virtio device as a driver sees it through its transport. See the module doc for the
/// guarantees an implementation gives.
pub trait VirtioTransport {
    /// How the transport fails.
    type Error: core::error::Error + 'static;

    /// What [`set_memory`](Self::set_memory) shares with the device: the guest RAM for a
    /// transport whose device maps it (vhost-user); for one whose device already sees
    /// guest-physical memory (virtio-pci in a VM) anything, ignored: the balloon driver hands
    /// it its own memory, so make it that type ([`IdentityMemory`](crate::IdentityMemory)).
    type Memory: ?Sized;

    /// Virtio feature bits the device offers (transport-reserved bits removed).
    fn device_features(&self) -> u64;

    /// Accepts `driver_features` limited to what the device offers; returns the negotiated set.
    fn negotiate(&mut self, driver_features: u64) -> Result<u64, Self::Error>;

    /// Gives the device access to guest memory; after [`negotiate`](Self::negotiate), before
    /// any queue.
    fn set_memory(&mut self, memory: &Self::Memory) -> Result<(), Self::Error>;

    /// The largest ring queue `index` takes, when the device says (virtio-pci's `queue_size`
    /// before the driver writes it, 4.1.4.3; QEMU's own balloon: 128 for inflate, deflate
    /// and stats, 32 for reporting). `None`: no limit the transport knows of (vhost-user,
    /// where the VMM sized the rings). After [`negotiate`](Self::negotiate).
    fn max_queue_size(&mut self, index: u16) -> Result<Option<u16>, Self::Error> {
        let _ = index;
        Ok(None)
    }

    /// Tells the device where queue `index`'s rings are and starts it.
    fn setup_queue(&mut self, index: u16, ring: &RingLayout) -> Result<(), Self::Error>;

    /// Tells the device the driver is set up (virtio's `DRIVER_OK`): after the last
    /// [`setup_queue`](Self::setup_queue), before the first [`kick`](Self::kick). A transport
    /// whose queues start one by one has nothing to do.
    fn driver_ok(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Notifies the device that queue `index` has new chains.
    fn kick(&self, index: u16) -> Result<(), Self::Error>;

    /// Waits for calls or a config change, at most `timeout` (`None`: until one comes).
    fn wait(&self, timeout: Option<Duration>) -> Result<Events, Self::Error>;

    /// Reads `buf.len()` bytes of device config space at byte `offset`.
    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Writes `data` to device config space at byte `offset`.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error>;
}
