//! Runs the fuzz target over its saved corpus and over mutations of the fixtures,
//! on the stable toolchain: a panic anywhere in decoding, state, views or trace
//! fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use capo_agent::fuzzing::felix_stream;
use proptest::prelude::*;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/felix_stream")
}

fn seed() -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/felix/seed.master.frames"),
    )
    .unwrap()
}

#[test]
fn saved_corpus_runs_without_panics() {
    let mut files = 0;
    let mut accepted = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        accepted += felix_stream(&data);
        files += 1;
    }
    assert!(files >= 10, "corpus has only {files} files");
    // The intact fixtures in the corpus must be accepted frame by frame.
    assert!(
        accepted >= 8,
        "only {accepted} frames accepted over the corpus"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mutated_fixture_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = seed();
        for (i, b) in flips {
            let at = i.index(data.len());
            data[at] = b;
        }
        let end = cut.index(data.len() + 1);
        felix_stream(&data[..end]);
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        felix_stream(&data);
    }
}
