//! A Felix stream compiled by the fast classifier, against the reference evaluator.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = capo_agent::fuzzing::felix_classifier(data) {
        panic!("classifier diverges from the reference: {e}");
    }
});
