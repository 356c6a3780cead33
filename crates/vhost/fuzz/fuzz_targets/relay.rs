//! Fuzz the vhost-user message relay: frontend message sequences with sizes, flags and fd
//! counts that lie. The rules are checked in `prezero_vhost::fuzzing::run`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = prezero_vhost::fuzzing::run(data) {
        panic!("{broken}");
    }
});
