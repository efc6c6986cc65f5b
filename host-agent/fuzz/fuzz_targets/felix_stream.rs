//! Arbitrary bytes as a Felix frame stream: decoder, state machine, views, trace.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    capo_agent::fuzzing::felix_stream(data);
});
