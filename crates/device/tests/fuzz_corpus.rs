//! Replays the committed fuzz corpus (and proptest-generated inputs) through the same harness
//! the cargo-fuzz target uses, on stable.

use std::path::PathBuf;

use proptest::prelude::*;

#[test]
fn committed_corpus_replays_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/queues");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus too small: {}", files.len());
    let mut total = prezero_device::MetricsSnapshot::default();
    for file in files {
        let data = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| prezero_device::fuzzing::run(&data));
        let m = outcome.unwrap_or_else(|_| panic!("corpus input {} failed", file.display()));
        total.reported_chains_zeroed += m.reported_chains_zeroed;
        total.inflated_pages_zeroed += m.inflated_pages_zeroed;
        total.stats_buffers += m.stats_buffers;
        total.deflated_pages += m.deflated_pages;
        total.discard_calls += m.discard_calls;
        for (kind, n) in m.errors {
            *total.errors.entry(kind).or_default() += n;
        }
    }
    // The corpus reaches the interesting paths, not just early rejections.
    assert!(total.reported_chains_zeroed > 0);
    assert!(total.inflated_pages_zeroed > 0);
    assert!(total.stats_buffers > 0);
    assert!(total.deflated_pages > 0);
    let kinds = total.errors.values().filter(|n| **n > 0).count();
    assert!(
        kinds >= 10,
        "only {kinds} error kinds reached: {:?}",
        total.errors
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_inputs_keep_the_invariants(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = prezero_device::fuzzing::run(&data);
    }
}
