//! Runs the fuzz target over its saved corpus and over mutations of the fixtures,
//! on the stable toolchain: a panic anywhere in decoding, state, views or trace
//! fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use capo_agent::fuzzing::{felix_classifier, felix_stream, manifests_diff};
use proptest::prelude::*;

fn corpus_dir() -> PathBuf {
    corpus("felix_stream")
}

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every saved input of `target`, by file name.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus(target))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn classifier_corpus_agrees_with_the_reference() {
    let mut agreed = 0;
    for (name, data) in inputs("felix_classifier") {
        let n = felix_classifier(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        agreed += n;
    }
    // The intact seed streams compile and classify their probe packets.
    assert!(agreed >= 128, "only {agreed} classifications compared");
}

#[test]
fn manifests_corpus_diffs_reach_fresh_loads() {
    let mut checked = 0;
    for (name, data) in inputs("manifests_diff") {
        if manifests_diff(&data).unwrap_or_else(|e| panic!("{name}: {e}")) {
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} inputs loaded both sets");
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
    fn mutated_fixture_classifies_as_the_reference(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        spec in proptest::collection::vec(any::<u8>(), 64),
    ) {
        let mut data = seed();
        for (i, b) in flips {
            let at = i.index(data.len());
            data[at] = b;
        }
        data.extend(spec);
        if let Err(e) = felix_classifier(&data) {
            return Err(TestCaseError::fail(e.to_string()));
        }
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        felix_stream(&data);
    }
}
