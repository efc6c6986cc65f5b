//! Messages to the VPP plugin's control core: what is not applied changes nothing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = capo_vpp_plugin::fuzzing::control_core(data) {
        panic!("plugin control core: {e}");
    }
});
