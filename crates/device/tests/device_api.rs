//! Features, configuration space, stats queue and the host API.

mod common;

use common::*;
use prezero_device::protocol::features::{self, Features};
use prezero_device::protocol::queues::QueueRole;
use prezero_device::protocol::stats::encode_entry;
use prezero_device::protocol::StatTag;
use prezero_device::{BalloonDevice, DeviceError, DeviceOptions, ErrorKind, RecordingDiscard};
use vm_memory::{Bytes, GuestAddress};

const STATS: u64 = BUFS + 0x9000;

#[test]
fn offer_is_configurable() {
    let options = DeviceOptions {
        balloon_features: Features::bit(features::REPORTING),
        ..DeviceOptions::default()
    };
    let dev = BalloonDevice::new(options, RecordingDiscard::new()).unwrap();
    let offered = Features(dev.offered_features());
    assert!(offered.has(features::REPORTING) && offered.has(features::VERSION_1));
    assert!(!offered.has(features::STATS_VQ));
    // Five slots whatever is offered (Linux names five; 7.x virtio_uml checks).
    assert_eq!(dev.max_queues(), 5);
    assert_eq!(dev.queue_max_size(), 256);
    assert_eq!(dev.config_size(), 8);
    let options = DeviceOptions {
        balloon_features: Features::bit(features::FREE_PAGE_HINT),
        ..DeviceOptions::default()
    };
    assert!(BalloonDevice::new(options, RecordingDiscard::new()).is_err());
}

#[test]
fn default_offer_has_every_supported_queue() {
    let dev = BalloonDevice::new(DeviceOptions::default(), RecordingDiscard::new()).unwrap();
    // inflate, deflate, stats, free page hint (never offered), reporting
    assert_eq!(dev.max_queues(), 5);
    assert_eq!(dev.config_size(), 16);
}

#[test]
fn unoffered_bits_are_dropped_and_counted() {
    let options = DeviceOptions {
        balloon_features: Features::bit(features::REPORTING),
        ..DeviceOptions::default()
    };
    let mut dev = BalloonDevice::new(options, RecordingDiscard::new()).unwrap();
    let negotiated = dev.ack_features(
        Features::bit(features::REPORTING)
            .with(features::STATS_VQ)
            .bits(),
    );
    assert_eq!(negotiated, Features::bit(features::REPORTING));
    assert_eq!(dev.queue_role(2), Some(QueueRole::Reporting));
    assert_eq!(dev.metrics().errors_of(ErrorKind::UnofferedFeature), 1);
}

#[test]
fn queue_without_role_is_refused() {
    let m = mem();
    let mut dev = device(Features::EMPTY);
    let mut drv = Driver::new(&m, 0, 16);
    // A slot without a role that the transport merely set up (QEMU and Linux 7.x set up all
    // five): processing it finds nothing and is no error.
    assert!(!dev.process_queue(4, &mut drv.queue, &m).unwrap());
    assert_eq!(dev.metrics().errors_of(ErrorKind::UnknownQueue), 0);
    drv.add(&[w(REGION_C, 0x1000)]);
    let err = dev.process_queue(2, &mut drv.queue, &m).unwrap_err();
    assert!(matches!(err, DeviceError::NoSuchQueue(2)));
    assert_eq!(dev.metrics().errors_of(ErrorKind::UnknownQueue), 1);
    assert_eq!(drv.used_idx(), 0);
    assert!(dev.discard_backend().ops.is_empty());
}

#[test]
fn config_reads_and_driver_writes() {
    let mut dev = device(all_features());
    assert!(dev.set_target_pages(0x1234));
    assert!(!dev.set_target_pages(0x1234));
    let mut image = [0u8; 16];
    dev.read_config(0, &mut image);
    assert_eq!(&image[..4], &0x1234u32.to_le_bytes());
    // The driver moves actual; num_pages is the host's.
    let out = dev.write_config(4, &0x1000u32.to_le_bytes());
    assert!(out.actual_changed);
    assert_eq!(dev.actual_pages(), 0x1000);
    assert_eq!(dev.write_config(0, &1u32.to_le_bytes()).read_only_bytes, 2);
    assert_eq!(dev.target_pages(), 0x1234);
    assert_eq!(dev.metrics().errors_of(ErrorKind::ConfigWrite), 1);
    // A whole-config write (QEMU's generic vhost-user device) moves actual, not num_pages;
    // repeating num_pages is no error, changing it is one, and actual moves either way.
    let mut image = [0u8; 8];
    image[..4].copy_from_slice(&0x1234u32.to_le_bytes());
    image[4..].copy_from_slice(&0x800u32.to_le_bytes());
    assert!(!dev.write_config(0, &image).ignored_anything());
    assert_eq!(dev.actual_pages(), 0x800);
    image[..4].copy_from_slice(&7u32.to_le_bytes());
    image[4..].copy_from_slice(&0x900u32.to_le_bytes());
    assert!(dev.write_config(0, &image).actual_changed);
    assert_eq!((dev.target_pages(), dev.actual_pages()), (0x1234, 0x900));
    assert_eq!(dev.metrics().errors_of(ErrorKind::ConfigWrite), 2);
    // poison_val is driver-written with PAGE_POISON.
    dev.write_config(12, &0xaau32.to_le_bytes());
    assert_eq!(dev.poison_val(), Some(0xaa));
    // A read past the end is zero-filled and counted.
    let mut tail = [0xffu8; 4];
    dev.read_config(14, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0]);
    assert_eq!(dev.metrics().errors_of(ErrorKind::ConfigRange), 1);
}

#[test]
fn reset_forgets_driver_state_but_keeps_the_target() {
    let m = mem();
    let mut dev = device(all_features());
    dev.set_target_pages(77);
    dev.write_config(4, &5u32.to_le_bytes());
    dev.write_config(12, &9u32.to_le_bytes());
    let mut drv = Driver::new(&m, 0x3000, 16);
    write_stats(&m, &[(4, 1)]);
    drv.add(&[r(STATS, 10)]);
    let stats = dev.queue_roles().index(QueueRole::Stats).unwrap();
    dev.process_queue(stats, &mut drv.queue, &m).unwrap();
    assert!(dev.holds_stats_buffer());
    dev.reset();
    assert!(!dev.holds_stats_buffer());
    assert_eq!(dev.negotiated_features(), Features::EMPTY);
    assert_eq!(dev.actual_pages(), 0);
    assert_eq!(dev.poison_val(), None);
    assert_eq!(dev.target_pages(), 77);
}

fn write_stats(m: &vm_memory::GuestMemoryMmap<()>, entries: &[(u16, u64)]) -> u32 {
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|(t, v)| encode_entry(*t, *v))
        .collect();
    m.write_slice(&bytes, GuestAddress(STATS)).unwrap();
    bytes.len() as u32
}

#[test]
fn stats_are_parsed_held_and_refreshed_on_request() {
    let m = mem();
    let mut dev = device(all_features());
    let index = dev.queue_roles().index(QueueRole::Stats).unwrap();
    let mut drv = Driver::new(&m, 0x3000, 16);
    let mut entries: Vec<(u16, u64)> = (0..16u16).map(|t| (t, 1000 + u64::from(t))).collect();
    // Unknown tags in the middle do not stop parsing.
    entries.insert(3, (16, 5));
    entries.insert(9, (0xffff, 6));
    let len = write_stats(&m, &entries);
    let head = drv.add(&[r(STATS, len)]);
    assert!(
        !dev.process_queue(index, &mut drv.queue, &m).unwrap(),
        "held, no notification"
    );
    assert_eq!(drv.used_idx(), 0);
    assert!(dev.holds_stats_buffer());
    let s = dev.latest_stats().unwrap().clone();
    for tag in StatTag::ALL {
        assert_eq!(s.get(tag), Some(1000 + u64::from(tag.raw())), "{tag:?}");
    }
    assert_eq!(s.sequence, 1);
    assert!(s.updated_unix_ms > 0);
    assert_eq!(dev.metrics().stats_unknown_tags, 2);
    assert_eq!(dev.metrics().total_errors(), 0);

    // The host asks for fresh stats: the buffer goes back with length 0.
    assert!(dev.request_stats(&mut drv.queue, &m).unwrap());
    assert_eq!(drv.last_used(), (u32::from(head), 0));
    assert!(!dev.holds_stats_buffer());
    assert!(
        !dev.request_stats(&mut drv.queue, &m).unwrap(),
        "nothing held"
    );

    // The driver refills with fewer tags: old values do not linger.
    let len = write_stats(&m, &[(StatTag::FreeMemory.raw(), 42)]);
    drv.add(&[r(STATS, len)]);
    dev.process_queue(index, &mut drv.queue, &m).unwrap();
    let s = dev.latest_stats().unwrap();
    assert_eq!(s.get(StatTag::FreeMemory), Some(42));
    assert_eq!(s.get(StatTag::SwapIn), None);
    assert_eq!(s.sequence, 2);
}

#[test]
fn a_second_stats_buffer_releases_the_first() {
    let m = mem();
    let mut dev = device(all_features());
    let index = dev.queue_roles().index(QueueRole::Stats).unwrap();
    let mut drv = Driver::new(&m, 0x3000, 16);
    let len = write_stats(&m, &[(4, 1)]);
    let first = drv.add(&[r(STATS, len)]);
    let second = drv.add(&[r(STATS, len)]);
    assert!(dev.process_queue(index, &mut drv.queue, &m).unwrap());
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.last_used(), (u32::from(first), 0));
    assert_eq!(dev.metrics().errors_of(ErrorKind::StatsExtraBuffer), 1);
    dev.request_stats(&mut drv.queue, &m).unwrap();
    assert_eq!(drv.last_used(), (u32::from(second), 0));
}

#[test]
fn metrics_handle_sees_live_counters() {
    let m = mem();
    let mut dev = device(all_features());
    let handle = dev.metrics_handle();
    let index = dev.queue_roles().index(QueueRole::Reporting).unwrap();
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C, 0x3000)]);
    dev.process_queue(index, &mut drv.queue, &m).unwrap();
    let snap = handle.snapshot();
    assert_eq!(snap.reporting_requests, 1);
    assert_eq!(snap.discarded_bytes, 0x3000);
    assert_eq!(snap.zeroed_bytes, 0x3000);
    assert_eq!(snap.discard_calls, 1);
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["errors"]["out_of_range"], 0);
}

#[test]
fn event_idx_suppresses_notifications_until_used_event() {
    use virtio_queue::QueueT;
    let m = mem();
    let mut dev = device(all_features());
    let index = dev.queue_roles().index(QueueRole::Reporting).unwrap();
    let mut drv = Driver::new(&m, 0, 16);
    drv.queue.set_event_idx(true);
    // used_event (after the avail ring) = 1: notify only once the used index passes 1.
    let used_event_addr = 16 * 16 + 4 + 2 * 16;
    m.write_obj(1u16, GuestAddress(used_event_addr)).unwrap();
    drv.add(&[w(REGION_C, 0x1000)]);
    assert!(!dev.process_queue(index, &mut drv.queue, &m).unwrap());
    drv.add(&[w(REGION_C + 0x1000, 0x1000)]);
    assert!(dev.process_queue(index, &mut drv.queue, &m).unwrap());
}

#[test]
fn device_can_live_behind_a_mutex_in_a_backend_thread() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<BalloonDevice<prezero_device::HostDiscard<()>>>();
    assert_send::<BalloonDevice<RecordingDiscard>>();
    fn assert_sync<T: Sync>() {}
    assert_sync::<prezero_device::Metrics>();
}
