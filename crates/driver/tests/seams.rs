//! The driver over the seams a kernel provides, with no Rust-guest type in sight: guest memory
//! is a `vm-memory` map (any `QueueMemory`), time is a closure (any `Clock`), the zone keeps
//! its frame metadata in a boxed slice, and the device is a double that answers each chain
//! through `virtio-queue` with a used length of its choosing.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use prezero_balloon::config::{ACTUAL_OFFSET, NUM_PAGES_OFFSET};
use prezero_balloon::features::{
    Features, DEVICE_INIT_REPORTED, MUST_TELL_HOST, REPORTING, VERSION_1,
};
use prezero_driver::balloon::REQUEST_TIMEOUT;
use prezero_driver::{
    BalloonDriver, BalloonError, DriverOptions, Events, RingLayout, VirtioTransport,
};
use prezero_mm::{Config, FrameMeta, Pfn, Zone, FRAME_SIZE};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const RAM: u64 = 16 << 20;

/// How the double answers a chain.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// Used length = the chain's writable length ("I zeroed all of it" for a report).
    WholeBuffer,
    /// Used length 0 ("reported, not zeroed").
    Nothing,
    /// Never uses the chain.
    Silent,
}

/// A device double: features, config space and queues, serving a chain on its kick.
struct Double {
    offered: Features,
    answer: Answer,
    mem: GuestMemoryMmap,
    queues: RefCell<Vec<Option<Queue>>>,
    shared: bool,
    num_pages: u32,
    actual: Option<u32>,
    waits: Cell<u32>,
}

impl Double {
    fn new(offered: Features, answer: Answer, mem: &GuestMemoryMmap) -> Self {
        Double {
            offered,
            answer,
            mem: mem.clone(),
            queues: RefCell::new(vec![None, None, None, None]),
            shared: false,
            num_pages: 0,
            actual: None,
            waits: Cell::new(0),
        }
    }
}

impl VirtioTransport for Double {
    type Error = Infallible;
    type Memory = GuestMemoryMmap;

    fn device_features(&self) -> u64 {
        self.offered.bits()
    }

    fn negotiate(&mut self, driver_features: u64) -> Result<u64, Infallible> {
        Ok(driver_features & self.offered.bits())
    }

    fn set_memory(&mut self, memory: &GuestMemoryMmap) -> Result<(), Infallible> {
        // The device is handed the memory the driver was given, all of it.
        assert_eq!(memory.last_addr(), GuestAddress(RAM - 1));
        self.shared = true;
        Ok(())
    }

    fn setup_queue(&mut self, index: u16, ring: &RingLayout) -> Result<(), Infallible> {
        assert!(self.shared, "set_memory comes before the queues");
        self.queues.get_mut()[usize::from(index)] = Some(ring.device_queue());
        Ok(())
    }

    fn kick(&self, index: u16) -> Result<(), Infallible> {
        if self.answer == Answer::Silent {
            return Ok(());
        }
        let mut queues = self.queues.borrow_mut();
        let q = queues[usize::from(index)]
            .as_mut()
            .expect("kicked a set-up queue");
        let chains: Vec<(u16, u32)> = q
            .iter(&self.mem)
            .expect("a valid ring")
            .map(|chain| {
                let head = chain.head_index();
                let writable = chain.filter(|d| d.is_write_only()).map(|d| d.len()).sum();
                (head, writable)
            })
            .collect();
        for (head, writable) in chains {
            let len = match self.answer {
                Answer::WholeBuffer => writable,
                _ => 0,
            };
            q.add_used(&self.mem, head, len).expect("a valid used ring");
        }
        Ok(())
    }

    fn wait(&self, _timeout: Option<Duration>) -> Result<Events, Infallible> {
        // Every chain was answered on its kick: there is never anything new.
        self.waits.set(self.waits.get() + 1);
        Ok(Events::default())
    }

    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Infallible> {
        assert_eq!((offset, buf.len()), (NUM_PAGES_OFFSET as u32, 4));
        buf.copy_from_slice(&self.num_pages.to_le_bytes());
        Ok(())
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Infallible> {
        assert_eq!(offset, ACTUAL_OFFSET as u32);
        self.actual = Some(u32::from_le_bytes(
            data.try_into().expect("actual is 4 bytes"),
        ));
        Ok(())
    }
}

/// Guest memory and a zone over all of it, every frame free and dirty.
fn guest() -> (GuestMemoryMmap, Zone<Box<[FrameMeta]>>) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let frames = RAM / FRAME_SIZE;
    let meta = vec![FrameMeta::EMPTY; frames as usize].into_boxed_slice();
    let mut zone = Zone::new(meta, Pfn(0), Config::default());
    zone.add_memory(Pfn(0), frames, false).unwrap();
    (mem, zone)
}

fn features(bits: &[u32]) -> Features {
    bits.iter().fold(Features::EMPTY, |f, &b| f.with(b))
}

/// A clock that moves one second each time it is read, and what it reads now.
fn ticking_clock() -> (Rc<Cell<Duration>>, impl Fn() -> Duration) {
    let now = Rc::new(Cell::new(Duration::ZERO));
    let reads = now.clone();
    (now, move || {
        reads.set(reads.get() + Duration::from_secs(1));
        reads.get()
    })
}

#[test]
fn reports_over_any_memory_and_believes_only_whole_buffer_answers() {
    let offered = features(&[VERSION_1, REPORTING, DEVICE_INIT_REPORTED]);
    for (answer, zeroed) in [(Answer::WholeBuffer, true), (Answer::Nothing, false)] {
        let (mem, mut zone) = guest();
        let device = Double::new(offered, answer, &mem);
        let (_, clock) = ticking_clock();
        let opts = DriverOptions::default();
        let mut driver = BalloonDriver::new(device, mem.clone(), clock, &mut zone, opts).unwrap();
        assert_eq!(driver.features(), offered);
        assert!(driver.transport().shared);

        let pass = zone.report_flush(&mut driver);
        assert!(pass.pages_reported > 0, "{answer:?}: nothing reported");
        assert_eq!(pass.pages_failed, 0);
        let want = if zeroed { pass.pages_reported } else { 0 };
        assert_eq!(pass.pages_zeroed, want, "{answer:?}");
        assert_eq!(driver.stats().report_requests, pass.requests);
    }
}

#[test]
fn a_silent_device_times_out_on_the_drivers_clock() {
    let (mem, mut zone) = guest();
    let offered = features(&[VERSION_1, MUST_TELL_HOST, REPORTING]);
    let mut device = Double::new(offered, Answer::Silent, &mem);
    device.num_pages = 1;
    let (now, clock) = ticking_clock();
    let opts = DriverOptions::default();
    let mut driver = BalloonDriver::new(device, mem.clone(), clock, &mut zone, opts).unwrap();

    // The first poll reads the target (1 page) and inflates; the device never answers.
    let err = driver.poll(&mut zone, Duration::ZERO).unwrap_err();
    assert!(
        matches!(err, BalloonError::Timeout { queue: "inflate", after } if after == REQUEST_TIMEOUT),
        "{err:?}"
    );
    // The deadline was kept on the given clock (one second a read), not on some other time.
    let limit = REQUEST_TIMEOUT + Duration::from_secs(3);
    assert!(
        now.get() >= REQUEST_TIMEOUT && now.get() <= limit,
        "{:?}",
        now.get()
    );
    assert!(driver.transport().waits.get() <= limit.as_secs() as u32);
    assert!(driver.is_dead());
    assert_eq!(
        driver.transport().actual,
        None,
        "no actual after an unanswered inflate"
    );
    // A dead device: polls do nothing, reports fail and the blocks go back unreported.
    driver.poll(&mut zone, Duration::ZERO).unwrap();
    let pass = zone.report_flush(&mut driver);
    assert_eq!(pass.pages_reported, 0);
    assert!(pass.pages_failed > 0);
}
