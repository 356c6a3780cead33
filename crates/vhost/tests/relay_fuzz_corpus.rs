//! Replays the relay's committed fuzz corpus (and proptest-generated inputs) through the
//! harness the cargo-fuzz target uses, on stable. One test per binary on purpose: the harness
//! counts the process's open descriptors, which another test running in parallel would change.

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[test]
fn committed_corpus_and_random_inputs_keep_the_relay_rules() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/relay");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus too small: {}", files.len());
    let mut delivered = 0;
    for file in &files {
        let data = std::fs::read(file).unwrap();
        match prezero_vhost::fuzzing::run(&data) {
            Ok(o) => delivered += o.delivered,
            Err(broken) => panic!("corpus input {}: {broken}", file.display()),
        }
    }
    // The corpus reaches the daemon side, not just early rejections.
    assert!(delivered >= 20, "only {delivered} messages delivered");

    let mut runner = TestRunner::new(Config::with_cases(64));
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |data| {
            prop_assert_eq!(prezero_vhost::fuzzing::run(&data).err(), None);
            Ok(())
        })
        .unwrap();
}
