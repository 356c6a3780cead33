//! How the balloon driver fails, over a transport whose errors are `E`.

use core::time::Duration;

use prezero_virtq::QueueError;

/// Failures of the balloon driver over a transport whose errors are `E`
/// ([`VirtioTransport::Error`](crate::VirtioTransport::Error)).
#[derive(Debug, thiserror::Error)]
pub enum BalloonError<E> {
    /// The transport failed (the daemon died, the socket is gone, the device was removed, ...).
    #[error(transparent)]
    Transport(E),
    /// A virtqueue operation failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The guest has no memory left for the driver's rings and buffers.
    #[error("not enough guest memory for the balloon driver's rings and buffers")]
    NoMemory,
    /// An earlier failure made the driver stop using the device.
    #[error("the balloon device is gone")]
    DeviceGone,
    /// The device did not answer a request in time; the driver stops using it.
    #[error("the balloon device did not answer a {queue} request within {after:?}")]
    Timeout {
        /// The queue, named as [`QueueRole::name`](prezero_balloon::QueueRole::name) names it.
        queue: &'static str,
        /// How long the driver waited.
        after: Duration,
    },
    /// The device returned a chain the driver never gave it.
    #[error("the balloon device returned an unexpected chain on the {0} queue")]
    Protocol(&'static str),
}
