//! Fuzz the balloon queue handlers: arbitrary features, discard policy, guest memory contents
//! (descriptor tables, rings, buffers) and operation sequences. The invariants are checked in
//! `prezero_device::fuzzing::run`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = prezero_device::fuzzing::run(data);
});
