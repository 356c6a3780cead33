//! Test rig: guest memory with a hole and a driver per queue (from `prezero-testkit`), and a
//! device with a recording discard backend.
#![allow(dead_code, unused_imports)]

pub use prezero_testkit::driver::{r, w, Buf, Driver};
pub use prezero_testkit::memory::*;
pub use prezero_virtq::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

use prezero_device::protocol::features::{self, Features};
use prezero_device::{BalloonDevice, DeviceOptions, ErrorKind, RecordingDiscard};

/// Every balloon feature this device supports.
pub fn all_features() -> Features {
    Features::EMPTY
        .with(features::MUST_TELL_HOST)
        .with(features::STATS_VQ)
        .with(features::DEFLATE_ON_OOM)
        .with(features::PAGE_POISON)
        .with(features::REPORTING)
        .with(features::DEVICE_INIT_REPORTED)
        .with(features::DEVICE_INIT_ON_INFLATE)
        .with(features::VERSION_1)
}

pub fn device_with(discard: RecordingDiscard, acked: Features) -> BalloonDevice<RecordingDiscard> {
    let mut dev = BalloonDevice::new(DeviceOptions::default(), discard).unwrap();
    dev.ack_features(acked.bits());
    dev
}

pub fn device(acked: Features) -> BalloonDevice<RecordingDiscard> {
    device_with(RecordingDiscard::new(), acked)
}

pub fn errors(dev: &BalloonDevice<RecordingDiscard>, kind: ErrorKind) -> u64 {
    dev.metrics().errors_of(kind)
}
