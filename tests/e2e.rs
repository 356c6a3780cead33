//! End to end: the Rust guest and the vhost-user balloon daemon over a real Unix socket, with
//! a real memfd as guest RAM.

use prezero_guest::workload::{
    alloc_and_touch, dirty_and_free, dirty_and_free_on_vcpus, fill_pattern, vcpu_counts,
    verify_pattern, Source,
};
use prezero_guest::{Guest, GuestOptions};
use prezero_mm::{AllocFlags, Config};
use prezero_testkit::Scratch;
use prezero_vhost::{spawn, FeatureOffer, ServeOptions};
use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn socket(name: &str) -> (Scratch, PathBuf) {
    let dir = Scratch::new(name);
    let path = dir.socket();
    (dir, path)
}

fn guest(ram: u64, mm: Config) -> Guest {
    guest_on(ram, mm, 1)
}

fn guest_on(ram: u64, mm: Config, vcpus: usize) -> Guest {
    Guest::new(GuestOptions {
        ram_size: ram,
        mm,
        vcpus,
        ..GuestOptions::default()
    })
    .unwrap()
}

#[test]
fn reported_memory_is_discarded_and_known_zero_allocations_read_zero() {
    discarded_and_known_zero(1);
}

#[test]
fn reported_memory_is_discarded_and_known_zero_allocations_read_zero_on_2_vcpus() {
    discarded_and_known_zero(2);
}

/// The guest dirties and frees 200 MiB (on every vCPU at once, reporting running meanwhile,
/// when there are several), reports it, and allocates known-zero memory back.
fn discarded_and_known_zero(vcpus: usize) {
    let (_dir, sock) = socket("basic");
    let daemon = spawn(ServeOptions::new(&sock)).unwrap();
    let mut g = guest_on(256 * MIB, Config::default(), vcpus);
    g.attach_balloon(&sock).unwrap();
    if vcpus > 1 {
        dirty_and_free_on_vcpus(&mut g, 200 * MIB).unwrap();
    } else {
        dirty_and_free(&mut g, 200 * MIB).unwrap();
    }
    let before = g.ram().allocated_bytes().unwrap();
    if vcpus == 1 {
        assert!(
            before >= 200 * MIB,
            "dirtying allocated the memfd: {before}"
        );
    } // (with several vCPUs, passes ran during the dirtying and punched some already)
    let pass = g.report_now();
    let stat = g.zone().stat();
    // Passes may have run during the dirtying (several vCPUs): count them all.
    assert!(stat.pages_reported * 4096 >= 200 * MIB, "{pass:?} {stat:?}");
    assert_eq!(
        stat.pages_reported_zeroed, stat.pages_reported,
        "the daemon confirms every block it punched"
    );
    assert_eq!(
        g.zone().counts().cached,
        0,
        "a flush leaves nothing in the caches"
    );
    assert_eq!(g.zone().unreported_free_pages(), 0);
    let after = g.ram().allocated_bytes().unwrap();
    let dropped_by = if vcpus == 1 { 190 * MIB } else { 1 };
    assert!(
        after + dropped_by <= before,
        "memfd blocks did not drop: {before} -> {after}"
    );

    // Known-zero allocations really read zero, and their zeroing was skipped.
    let run = alloc_and_touch(&mut g, 64 * MIB, Source::Buddy(9), AllocFlags::ZERO).unwrap();
    assert_eq!(run.known_zero, run.blocks.len() as u64);
    assert!(g.zone().stat().pages_zero_skipped >= 64 * MIB / 4096);
    for pfn in &run.blocks {
        // The touch wrote 1 to the first byte of each page: the rest must be zero.
        let mut page = vec![0u8; 4096];
        g.ram().read(pfn.addr() + 4096, &mut page).unwrap();
        assert_eq!(page[0], 1);
        assert!(page[1..].iter().all(|&b| b == 0));
    }
    let m = daemon.metrics();
    assert!(m.device.zeroed_bytes >= 200 * MIB, "{m:?}");
    // Every vCPU did its share through its own cache.
    for v in vcpu_counts(&g) {
        assert!(v.stat.alloc_blocks > 0 && v.stat.free_blocks > 0, "{v:?}");
    }
    g.zone().verify().unwrap();
}

#[test]
fn skipping_happens_on_2_vcpus_with_the_full_offer() {
    let (_dir, sock) = socket("skip2");
    let _daemon = spawn(ServeOptions::new(&sock)).unwrap();
    let mut g = guest_on(128 * MIB, Config::default(), 2);
    g.attach_balloon(&sock).unwrap();
    dirty_and_free_on_vcpus(&mut g, u64::MAX).unwrap();
    g.report_now();
    // vCPU 1 allocates ZERO 2 MiB blocks on its own thread: all known-zero, all read zero.
    let mut v = g.vcpu(1).unwrap();
    let run = std::thread::spawn(move || {
        alloc_and_touch(&mut v, 32 * MIB, Source::Buddy(9), AllocFlags::ZERO).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(run.known_zero, run.blocks.len() as u64);
    for pfn in &run.blocks {
        assert!(g.ram().is_zero(pfn.addr() + 4097, 4095).unwrap());
    }
    let (stat, _) = g.zone().cpu_stat(1);
    assert_eq!(stat.pages_zero_skipped, 32 * MIB / 4096);
}

fn skipped_after_report(offer: FeatureOffer, mm: Config) -> (u64, u64) {
    let (_dir, sock) = socket("skip");
    let _daemon = spawn(ServeOptions::new(&sock).with_offer(offer)).unwrap();
    let mut g = guest(128 * MIB, mm);
    g.attach_balloon(&sock).unwrap();
    // Dirty everything: the guest's knowledge of its fresh memfd must not count.
    dirty_and_free(&mut g, u64::MAX).unwrap();
    let pass = g.report_now();
    // The guest's own knowledge (its fresh memfd) counts too: measure the workload alone.
    let skipped_before = g.zone().stat().pages_zero_skipped;
    let run = alloc_and_touch(&mut g, 32 * MIB, Source::Buddy(9), AllocFlags::ZERO).unwrap();
    // Whatever was believed, ZERO memory reads zero.
    for pfn in &run.blocks {
        assert!(g.ram().is_zero(pfn.addr() + 4097, 4095).unwrap());
    }
    (
        pass.pages_reported,
        g.zone().stat().pages_zero_skipped - skipped_before,
    )
}

#[test]
fn nothing_is_skipped_without_device_init_reported() {
    let offer = FeatureOffer {
        device_init_reported: false,
        ..FeatureOffer::default()
    };
    let (reported, skipped) = skipped_after_report(offer, Config::default());
    assert!(reported > 0, "reporting still works");
    assert_eq!(skipped, 0);
}

#[test]
fn nothing_is_skipped_with_a_nonzero_poison_value() {
    let mm = Config {
        poison: Some(0xaa),
        ..Config::default()
    };
    let (reported, skipped) = skipped_after_report(FeatureOffer::default(), mm);
    assert!(reported > 0);
    assert_eq!(skipped, 0);
}

#[test]
fn nothing_is_skipped_in_a_confidential_guest() {
    let mm = Config {
        confidential: true,
        ..Config::default()
    };
    let (reported, skipped) = skipped_after_report(FeatureOffer::default(), mm);
    assert!(reported > 0);
    assert_eq!(skipped, 0);
}

#[test]
fn skipping_happens_with_the_full_offer() {
    let (_, skipped) = skipped_after_report(FeatureOffer::default(), Config::default());
    assert_eq!(skipped, 32 * MIB / 4096);
}

#[test]
fn balloon_target_is_met_and_released_and_contents_survive() {
    let (_dir, sock) = socket("balloon");
    let daemon = spawn(ServeOptions::new(&sock)).unwrap();
    let mut g = guest(256 * MIB, Config::default());
    g.attach_balloon(&sock).unwrap();
    let seed = 77;
    let kept = fill_pattern(&mut g, 32 * MIB, seed).unwrap();
    dirty_and_free(&mut g, 150 * MIB).unwrap();
    let free_before = g.zone().counts().free;

    daemon.set_target_bytes(64 * MIB).unwrap();
    let met = g
        .poll_until(Duration::from_secs(20), |g| {
            g.balloon().unwrap().balloon_pages() as u64 == 64 * MIB / 4096
        })
        .unwrap();
    assert!(met, "balloon did not reach its target");
    assert!(g
        .poll_until(Duration::from_secs(5), |_| daemon.status().actual_pages
            == 16384)
        .unwrap());
    assert_eq!(g.zone().counts().free, free_before - 64 * MIB / 4096);
    let inflated_zeroed = g.balloon().unwrap().stats().pages_inflated_zeroed;
    assert!(
        inflated_zeroed > 0,
        "DEVICE_INIT_ON_INFLATE bitmap said nothing"
    );

    daemon.set_target_bytes(0).unwrap();
    assert!(g
        .poll_until(Duration::from_secs(20), |g| g
            .balloon()
            .unwrap()
            .balloon_pages()
            == 0)
        .unwrap());
    assert_eq!(g.zone().counts().free, free_before);
    // Deflated pages came back known-zero (the device zeroed them on inflate).
    assert!(g.zone().stat().pages_deflated_zeroed > 0);
    assert!(
        verify_pattern(&g, &kept, seed),
        "guest data changed across inflate/deflate"
    );
}
