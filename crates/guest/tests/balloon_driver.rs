//! The balloon driver over [`VirtioTransport`] against the real device core, in process
//! (`in_process`): negotiation and the trust gate, free page reporting with and without
//! `DEVICE_INIT_REPORTED`, inflate and deflate with `DEVICE_INIT_ON_INFLATE`, and a device
//! that goes away. The zone keeps its frame metadata in a boxed slice, not the `Vec` the
//! process guest uses: the driver takes any storage.

mod in_process;

use std::sync::Arc;
use std::time::Duration;

use in_process::{device_with_max_sizes, Host, InProcess};
use prezero_balloon::features::RING_INDIRECT_DESC;
use prezero_balloon::features::{
    Features, DEFLATE_ON_OOM, DEVICE_INIT_ON_INFLATE, DEVICE_INIT_REPORTED, MUST_TELL_HOST,
    PAGE_POISON, REPORTING, STATS_VQ, VERSION_1,
};
use prezero_device::DeviceOptions;
use prezero_guest::balloon::DRIVER_FEATURES;
use prezero_guest::ram::RamFrames;
use prezero_guest::{
    BalloonDriver, BalloonError, DriverOptions, GuestRam, InstantClock, ReportCapacity,
};
use prezero_mm::{AllocFlags, Config, FrameMeta, Pfn, Zone, FRAME_SIZE, PAGEBLOCK_ORDER};

const RAM: u64 = 64 << 20;
const POLL: Duration = Duration::from_millis(200);

struct Rig {
    ram: Arc<GuestRam>,
    zone: Zone<Box<[FrameMeta]>>,
    driver: BalloonDriver<InProcess>,
    host: Host,
}

/// A guest whose free memory is all dirty (so only the device can make it known-zero),
/// attached to a device offering `balloon_features`.
fn rig(balloon_features: Features, confidential: bool) -> Rig {
    rig_with(
        balloon_features,
        DriverOptions {
            confidential,
            ..DriverOptions::default()
        },
    )
}

/// [`rig`] with any driver options.
fn rig_with(balloon_features: Features, opts: DriverOptions) -> Rig {
    rig_sized(balloon_features, opts, &[])
}

/// [`rig_with`] on a device whose queues take rings of at most `max_sizes` entries.
fn rig_sized(balloon_features: Features, opts: DriverOptions, max_sizes: &[u16]) -> Rig {
    let confidential = opts.confidential;
    let ram = Arc::new(GuestRam::new(RAM).unwrap());
    let frames = RAM / FRAME_SIZE;
    let cfg = Config {
        confidential,
        ..Config::default()
    };
    let meta = vec![FrameMeta::EMPTY; frames as usize].into_boxed_slice();
    let mut zone = Zone::new(meta, Pfn(0), cfg);
    zone.add_memory(Pfn(0), frames, false).unwrap();
    let (transport, host) = device_with_max_sizes(
        DeviceOptions {
            balloon_features,
            ..DeviceOptions::default()
        },
        max_sizes,
    );
    let driver =
        BalloonDriver::new(transport, ram.clone(), InstantClock::new(), &mut zone, opts).unwrap();
    Rig {
        ram,
        zone,
        driver,
        host,
    }
}

fn offered() -> Features {
    DeviceOptions::default().balloon_features
}

#[test]
fn negotiates_what_both_sides_support() {
    let r = rig(offered(), false);
    // Everything the driver knows, but PAGE_POISON: this guest does not poison.
    let want = Features(DRIVER_FEATURES).without(PAGE_POISON);
    assert_eq!(r.driver.features(), want);
    assert_eq!(r.host.with_device(|d| d.negotiated_features()), want);
    for bit in [
        VERSION_1,
        MUST_TELL_HOST,
        STATS_VQ,
        DEFLATE_ON_OOM,
        REPORTING,
    ] {
        assert!(r.driver.features().has(bit), "bit {bit} not negotiated");
    }
    // The stats buffer the spec wants at init is with the device.
    assert_eq!(r.driver.stats().stats_updates, 1);
    assert!(r.host.with_device(|d| d.holds_stats_buffer()));
    assert!(!r.driver.is_dead());
}

#[test]
fn report_with_device_init_reported_leaves_known_zero_holes() {
    let mut r = rig(offered(), false);
    assert!(r.driver.features().init_reported());
    let pass = r.zone.report_flush(&mut r.driver);
    assert!(pass.pages_reported > 0);
    assert_eq!(pass.pages_zeroed, pass.pages_reported);
    assert_eq!(r.driver.stats().report_requests, pass.requests);

    // The device really discarded: a 2 MiB block handed out as known-zero is a hole.
    let a = r
        .zone
        .alloc(PAGEBLOCK_ORDER, AllocFlags::ZERO, &mut RamFrames(&r.ram))
        .unwrap();
    assert!(a.known_zero);
    let len = FRAME_SIZE << PAGEBLOCK_ORDER;
    assert!(r.ram.is_hole(a.pfn.addr(), len).unwrap());
}

#[test]
fn report_without_device_init_reported_is_reported_not_zeroed() {
    let mut r = rig(offered().without(DEVICE_INIT_REPORTED), false);
    assert!(!r.driver.features().init_reported());
    let pass = r.zone.report_flush(&mut r.driver);
    assert!(pass.pages_reported > 0);
    assert_eq!(pass.pages_zeroed, 0);
    assert_eq!(r.zone.stat().pages_reported_zeroed, 0);
}

#[test]
fn inflate_and_deflate_with_device_init_on_inflate() {
    let mut r = rig(offered(), false);
    assert!(r.driver.features().init_on_inflate());
    let pages = 3 * 256 + 17; // several requests, one partial
    r.host.set_target_pages(pages);
    r.driver.poll(&mut r.zone, POLL).unwrap();
    assert_eq!(r.driver.balloon_pages(), pages as usize);
    let s = r.driver.stats();
    assert_eq!(s.pages_inflated, u64::from(pages));
    assert_eq!(s.pages_inflated_zeroed, u64::from(pages));
    assert_eq!(s.inflate_requests, 4);
    assert_eq!(r.host.with_device(|d| d.actual_pages()), pages);

    r.host.set_target_pages(0);
    r.driver.poll(&mut r.zone, POLL).unwrap();
    assert_eq!(r.driver.balloon_pages(), 0);
    assert_eq!(r.driver.stats().pages_deflated, u64::from(pages));
    assert_eq!(r.host.with_device(|d| d.actual_pages()), 0);
    // Deflated pages come back known-zero: the device said so on inflate.
    let stat = r.zone.stat();
    assert_eq!(stat.pages_deflated, u64::from(pages));
    assert_eq!(stat.pages_deflated_zeroed, u64::from(pages));
}

#[test]
fn deflate_on_oom_gives_pages_back() {
    let mut r = rig(offered(), false);
    r.host.set_target_pages(1024);
    r.driver.poll(&mut r.zone, POLL).unwrap();
    assert_eq!(r.driver.deflate_on_oom(&mut r.zone).unwrap(), 256);
    assert_eq!(r.driver.balloon_pages(), 768);
    assert_eq!(r.driver.stats().oom_deflated_pages, 256);
    assert_eq!(r.host.with_device(|d| d.actual_pages()), 768);
}

#[test]
fn confidential_guest_refuses_the_device_init_features() {
    let mut r = rig(offered(), true);
    let f = r.driver.features();
    assert!(!f.has(DEVICE_INIT_REPORTED) && !f.has(DEVICE_INIT_ON_INFLATE));
    assert!(f.has(REPORTING));
    let device_acked = r.host.with_device(|d| d.negotiated_features());
    assert!(!device_acked.init_reported() && !device_acked.init_on_inflate());

    let pass = r.zone.report_flush(&mut r.driver);
    assert!(pass.pages_reported > 0);
    assert_eq!(pass.pages_zeroed, 0);
    r.host.set_target_pages(256);
    r.driver.poll(&mut r.zone, POLL).unwrap();
    assert_eq!(r.driver.balloon_pages(), 256);
    assert_eq!(r.driver.stats().pages_inflated_zeroed, 0);
}

#[test]
fn a_device_that_goes_away_leaves_the_driver_idle() {
    let mut r = rig(offered(), false);
    r.host.unplug();
    let err = r.driver.poll(&mut r.zone, POLL).unwrap_err();
    assert!(matches!(err, BalloonError::Transport(_)), "{err}");
    assert!(r.driver.is_dead());
    // Reports fail and the blocks go back unreported; nothing is given back on OOM.
    let pass = r.zone.report_flush(&mut r.driver);
    assert_eq!(pass.pages_reported, 0);
    assert!(pass.pages_failed > 0);
    assert_eq!(r.driver.deflate_on_oom(&mut r.zone).unwrap(), 0);
    r.driver.poll(&mut r.zone, POLL).unwrap();
}

#[test]
fn reports_one_chain_per_block_up_to_the_ring_size() {
    // 64 MiB: its free 2 and 4 MiB blocks fit one request of the ring's 128.
    let mut r = rig(offered(), false);
    let pass = r.zone.report_flush(&mut r.driver);
    assert_eq!(pass.requests, 1);
    let m = r.host.with_device(|d| d.metrics());
    let blocks = m.reporting_requests;
    assert!(blocks > 8, "{blocks} blocks");
    assert_eq!(m.reported_bytes, pass.pages_reported * FRAME_SIZE);
    // Each block its own direct chain, all of one request answered in one queue drain.
    assert_eq!(m.reporting_buffers, blocks);
    assert_eq!(m.indirect_chains, 0);
    assert_eq!(m.reporting_drains, 1);
    assert_eq!(pass.pages_zeroed, pass.pages_reported);

    // The stock batch stays available: 8 blocks per request.
    let mut r = rig_with(
        offered(),
        DriverOptions {
            report_capacity: ReportCapacity::Fixed(8),
            ..DriverOptions::default()
        },
    );
    let pass = r.zone.report_flush(&mut r.driver);
    assert_eq!(pass.requests, blocks.div_ceil(8));
    assert_eq!(
        r.host.with_device(|d| d.metrics()).reporting_drains,
        pass.requests
    );
}

/// A device whose queues take smaller rings than the driver's 128 (QEMU's own balloon over
/// virtio-pci: 32 for reporting): the driver sizes each ring to the device's maximum (the
/// largest power of two in it), and a reporting request carries at most that many blocks.
#[test]
fn rings_and_report_batches_fit_the_devices_queue_sizes() {
    for (max, per_request) in [(8, 8), (12, 8), (4, 4)] {
        let mut r = rig_sized(offered(), DriverOptions::default(), &[64, 100, 128, max]);
        let pass = r.zone.report_flush(&mut r.driver);
        let m = r.host.with_device(|d| d.metrics());
        assert!(
            m.reporting_buffers > per_request,
            "{} blocks",
            m.reporting_buffers
        );
        assert_eq!(pass.requests, m.reporting_buffers.div_ceil(per_request));
        assert_eq!(pass.pages_zeroed, pass.pages_reported);
        // Inflate and deflate still work on the smaller rings.
        r.host.set_target_pages(300);
        r.driver.poll(&mut r.zone, POLL).unwrap();
        assert_eq!(r.driver.balloon_pages(), 300);
    }
}

#[test]
fn never_negotiates_indirect_descriptors() {
    let r = rig(offered(), false);
    let device_offer = r.host.with_device(|d| Features(d.offered_features()));
    assert!(device_offer.has(RING_INDIRECT_DESC), "the device offers it");
    assert!(!r.driver.features().has(RING_INDIRECT_DESC));
    assert!(!r
        .host
        .with_device(|d| d.negotiated_features())
        .has(RING_INDIRECT_DESC));
}

#[test]
fn nonzero_poison_drops_both_device_init_features() {
    let r = rig_with(
        offered(),
        DriverOptions {
            poison: Some(0xaa),
            ..DriverOptions::default()
        },
    );
    let f = r.driver.features();
    assert!(f.has(PAGE_POISON) && f.has(REPORTING));
    assert!(!f.has(DEVICE_INIT_REPORTED) && !f.has(DEVICE_INIT_ON_INFLATE));
    // The device heard the poison value.
    assert_eq!(r.host.with_device(|d| d.poison_val()), Some(0xaaaa_aaaa));
}
