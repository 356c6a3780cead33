//! The driver's [`Clock`] in a process: `std::time::Instant`, counted from when the clock was
//! made.

use core::time::Duration;
use std::time::Instant;

use prezero_driver::Clock;

/// A [`Clock`] over [`Instant`] (monotonic), with its origin at [`InstantClock::new`].
#[derive(Clone, Copy, Debug)]
pub struct InstantClock {
    origin: Instant,
}

impl InstantClock {
    /// A clock reading zero now.
    pub fn new() -> Self {
        InstantClock {
            origin: Instant::now(),
        }
    }
}

impl Default for InstantClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for InstantClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}
