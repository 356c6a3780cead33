//! The balloon driver as this kernel runs it: `prezero-driver`'s `BalloonDriver` (the same
//! code as the Rust guest's) over virtio-pci, identity-mapped physical memory and the TSC.

use core::time::Duration;

use prezero_driver::{BalloonDriver, DriverOptions};

use crate::mem::with_zone;
use crate::virtio_pci::VirtioPci;
use crate::{clock, println};
use prezero_driver::IdentityMemory;

/// The driver as this kernel instantiates it.
pub type Driver = BalloonDriver<VirtioPci, IdentityMemory, fn() -> Duration>;

/// The driver's clock: the calibrated TSC.
pub fn now() -> Duration {
    Duration::from_nanos(clock::now_ns())
}

/// Finds the balloon on PCI (QEMU's own, transitional 1af4:1002, or a modern 1af4:1045),
/// starts the driver on it with `opts`, and prints the `negotiated` event: the features and
/// what the zone believes of the device's "zeroed" answers.
pub fn start(memory: IdentityMemory, opts: DriverOptions) -> Result<Driver, &'static str> {
    let dev = VirtioPci::find(5, 0x1002)
        .map_err(|e| {
            println!("prezero-kernel: virtio-pci: {e}");
            "the balloon device could not be set up"
        })?
        .ok_or("no virtio-balloon on PCI bus 0 (add -device virtio-balloon-pci or vhost-user-test-device-pci,virtio-id=5)")?;
    let address = dev.address();
    let driver: Driver =
        with_zone(|z| BalloonDriver::new(dev, memory, now as fn() -> Duration, z, opts)).map_err(
            |e| {
                println!("prezero-kernel: driver: {e}");
                "the balloon driver did not start"
            },
        )?;
    let (init, trusted) = with_zone(|z| {
        let d = z.device_init();
        (d, z.config().trusts_device_zeroing(d.reported))
    });
    println!(
        "PREZERO event=negotiated pci={:02x}.{} features={:#x} init_reported={} init_on_inflate={} trusted={}",
        address.device,
        address.function,
        driver.features().bits(),
        init.reported,
        init.on_inflate,
        trusted
    );
    Ok(driver)
}
