//! The report benchmark, run small: it must go through the device, issue one discard per
//! element like the floor, and get every element answered "zeroed".

use prezero_device::bench::{run, Backing, ReportBenchOptions};

#[test]
fn small_report_bench_runs_through_the_device() {
    let opts = ReportBenchOptions::small();
    let result = run(&opts).unwrap();
    assert_eq!(result.backings.len(), 2);
    for b in &result.backings {
        // 1 MiB elements: 1024 per GiB, one syscall each, for the device and the floor.
        assert_eq!(b.syscalls_per_gib, 1024.0, "{:?}", b.backing);
        assert_eq!(b.floor_syscalls_per_gib, 1024.0);
        assert_eq!(b.zeroed_fraction, 1.0);
        assert!(b.device_gib_s > 0.0 && b.floor_gib_s > 0.0 && b.ratio > 0.0);
    }
    assert_eq!(result.backings[0].backing, Backing::Memfd);
    let json = serde_json::to_value(&result).unwrap();
    for key in ["device_gib_s", "floor_gib_s", "syscalls_per_gib", "ratio"] {
        assert!(json[key].is_number(), "{key} missing");
    }
    assert_eq!(json["backings"][1]["backing"], "anonymous");
    let table = result.table();
    assert!(table.contains("memfd") && table.contains("anonymous") && table.contains("all"));
}
