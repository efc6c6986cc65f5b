//! With the `vpp` feature: compiles `csrc/capo_vnet.c` (interface listing, feature
//! state, the interface add/del callback) against VPP's headers, found as the
//! `vpp-plugin` crate finds them (CFLAGS / the compiler's include path). Without VPP's
//! headers the plugin still compiles (for linting) but does not load, as with the
//! `vpp-plugin` crate's own wrapper.

fn main() {
    println!("cargo:rerun-if-changed=csrc/capo_vnet.c");
    println!("cargo:rerun-if-env-changed=CFLAGS");
    if std::env::var_os("CARGO_FEATURE_VPP").is_none() {
        return;
    }
    let mut build = cc::Build::new();
    build.file("csrc/capo_vnet.c").warnings_into_errors(true);
    if let Err(e) = build.try_compile("capo_vnet") {
        println!(
            "cargo:warning=VPP headers not found ({e}); the plugin will not load: set CFLAGS=-I<VPP prefix>/include"
        );
    }
}
