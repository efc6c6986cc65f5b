//! Two manifest sets: load, stream, diff to the second equals a fresh load of it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = capo_agent::fuzzing::manifests_diff(data) {
        panic!("manifests diff: {e}");
    }
});
