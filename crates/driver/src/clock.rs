//! The driver's sense of time: a monotonic clock, so a request the device never answers ends
//! in [`BalloonError::Timeout`](crate::BalloonError::Timeout) instead of a hang.
//!
//! The driver only measures intervals (a request's deadline is now + the balloon driver's
//! `REQUEST_TIMEOUT`), so the origin is the implementation's choice: a process guest counts from an
//! `std::time::Instant` it took at start, a kernel from boot with its TSC (ticks divided by the
//! calibrated frequency).

use core::time::Duration;

/// A monotonic clock.
///
/// `now` never goes backwards; its resolution only has to be fine enough for timeouts of
/// seconds. Any `Fn() -> Duration` is a clock, e.g. `|| tsc_now()`.
pub trait Clock {
    /// Time since the clock's fixed, arbitrary origin.
    fn now(&self) -> Duration;
}

impl<F: Fn() -> Duration> Clock for F {
    fn now(&self) -> Duration {
        self()
    }
}
