//! What prezero's tests share, kept apart from the product: no product crate depends on this
//! crate except as a dev-dependency (it is `publish = false`).
//!
//! | module | for | what |
//! |---|---|---|
//! | [`scratch`] | every test | [`Scratch`]: the one scratch directory helper, short enough for socket paths |
//! | [`wait`] | every test | waiting with a hang guard |
//! | [`memory`] | device tests | guest memory with an adjacent region and a hole |
//! | [`driver`] | device tests | [`Driver`]: well-formed or hostile chains on a `prezero-virtq` raw ring |
//! | [`backend`] | guest transport tests | [`TestBackend`]: a small vhost-user device over `vhost-user-backend` |
//! | [`rig`] | daemon tests | the daemon spawned in-process and a guest driving it |
//!
//! Feature bits come from `prezero_balloon::features`; [`bits`] turns a list of them into a
//! mask.

pub mod backend;
pub mod driver;
pub mod memory;
pub mod rig;
pub mod scratch;
pub mod wait;

pub use backend::TestBackend;
pub use driver::Driver;
pub use scratch::Scratch;

use prezero_balloon::features::Features;

/// The feature mask of `bits` (bit numbers from `prezero_balloon::features`).
pub const fn bits(bits: &[u32]) -> u64 {
    let mut f = Features::EMPTY;
    let mut i = 0;
    while i < bits.len() {
        f = f.with(bits[i]);
        i += 1;
    }
    f.bits()
}
