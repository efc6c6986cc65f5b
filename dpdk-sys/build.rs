//! Build script of `dpdk-sys`.
//!
//! With the `dpdk` feature: finds the system DPDK with pkg-config (`libdpdk`), runs
//! bindgen over `csrc/capo_dpdk.h` with allowlists, and compiles the shim
//! `csrc/capo_dpdk.c` with the same flags. Without it: nothing to do, `src/lib.rs`
//! includes the pre-generated bindings.
//!
//! Environment: `PKG_CONFIG_PATH` (a DPDK installed in a non-standard prefix);
//! `CAPO_DPDK_SYS_REGENERATE=<file>` also writes the generated bindings to `<file>`
//! (how `src/bindings_pregenerated.rs` is refreshed).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/capo_dpdk.h");
    println!("cargo:rerun-if-changed=csrc/capo_dpdk.c");
    println!("cargo:rerun-if-env-changed=CAPO_DPDK_SYS_REGENERATE");
    #[cfg(feature = "dpdk")]
    with_dpdk::run();
}

#[cfg(feature = "dpdk")]
mod with_dpdk {
    use std::path::PathBuf;
    use std::process::Command;

    /// Functions the safe layer calls. Patterns cover whole subsystems only where the
    /// project uses most of them (rte_flow, rte_acl).
    const FUNCTIONS: &[&str] = &[
        "rte_eal_init",
        "rte_eal_cleanup",
        "rte_strerror",
        "rte_socket_id",
        "rte_lcore_id",
        "rte_eth_dev_count_avail",
        "rte_eth_dev_is_valid_port",
        "rte_eth_dev_get_port_by_name",
        "rte_eth_dev_get_name_by_port",
        "rte_eth_dev_info_get",
        "rte_eth_dev_configure",
        "rte_eth_rx_queue_setup",
        "rte_eth_tx_queue_setup",
        "rte_eth_dev_start",
        "rte_eth_dev_stop",
        "rte_eth_dev_close",
        "rte_eth_rx_metadata_negotiate",
        "rte_eth_promiscuous_enable",
        "rte_eth_stats_get",
        "rte_pktmbuf_pool_create",
        "rte_mempool_free",
        "rte_vdev_init",
        "rte_vdev_uninit",
        "rte_dev_probe",
        "rte_flow_.*",
        "rte_acl_.*",
        "capo_.*",
    ];

    /// Types needed by value beyond what the functions pull in.
    const TYPES: &[&str] = &[
        "rte_flow_item_.*",
        "rte_flow_action_.*",
        "rte_flow_query_count",
        "rte_acl_field_types",
        "rte_acl_rule_data",
        "rte_acl_field",
        "rte_acl_field_def",
        "rte_acl_config",
        "rte_acl_param",
        "rte_eth_conf",
        "rte_eth_dev_info",
        "rte_eth_stats",
    ];

    /// Constants (`#define`s bindgen can evaluate).
    const VARS: &[&str] = &[
        "RTE_ACL_.*",
        "RTE_MAX_ETHPORTS",
        "RTE_MBUF_DEFAULT_BUF_SIZE",
        "RTE_ETH_RSS_.*",
        "RTE_ETHER_TYPE_.*",
        "SOCKET_ID_ANY",
    ];

    /// Types only ever handled by pointer; opaque keeps their (version-dependent,
    /// bitfield-heavy) layouts out of the bindings.
    const OPAQUE: &[&str] = &[
        "rte_mbuf",
        "rte_mempool",
        "rte_flow",
        "rte_acl_ctx",
        // Packed headers holding aligned unions (E0588 in Rust); never used by capo.
        "rte_l2tpv2_.*",
    ];

    pub(super) fn run() {
        let lib = match pkg_config::Config::new()
            .atleast_version("22.11")
            .probe("libdpdk")
        {
            Ok(lib) => lib,
            Err(e) => {
                println!(
                    "cargo:warning=dpdk-sys: the `dpdk` feature needs the system DPDK \
                     (pkg-config libdpdk >= 22.11; Debian: apt-get install libdpdk-dev): {e}"
                );
                std::process::exit(1);
            }
        };
        // `rte_vdev_init` lives in the vdev bus driver, which libdpdk.pc leaves out of
        // its `Libs` (drivers are loaded as plugins): the one library named by hand.
        println!("cargo:rustc-link-lib=dylib=rte_bus_vdev");
        // pkg-config's raw cflags carry `-include rte_config.h` and `-march=…`, which
        // the parsed `Library` drops; the shim and bindgen need both.
        let cflags = raw_cflags();

        let mut cc = cc::Build::new();
        cc.file("csrc/capo_dpdk.c").include("csrc").warnings(false);
        for p in &lib.include_paths {
            cc.include(p);
        }
        // `capo_dpdk.h` includes rte_config.h itself; pass the machine and define flags.
        for f in cflags
            .iter()
            .filter(|f| f.starts_with("-m") || f.starts_with("-D"))
        {
            cc.flag_if_supported(f);
        }
        cc.compile("capo_dpdk_shim");

        let mut b = bindgen::Builder::default()
            .header("csrc/capo_dpdk.h")
            .clang_arg("-Icsrc")
            .clang_args(cflags.iter().filter(|f| !f.starts_with("-march")))
            .clang_args(
                lib.include_paths
                    .iter()
                    .map(|p| format!("-I{}", p.display())),
            )
            .default_enum_style(bindgen::EnumVariation::ModuleConsts)
            .layout_tests(false)
            .derive_default(true)
            .derive_debug(false)
            .generate_comments(false)
            .prepend_enum_name(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
        for f in FUNCTIONS {
            b = b.allowlist_function(f);
        }
        for t in TYPES {
            b = b.allowlist_type(t);
        }
        for v in VARS {
            b = b.allowlist_var(v);
        }
        for o in OPAQUE {
            b = b.opaque_type(o);
        }
        let bindings = match b.generate() {
            Ok(b) => b,
            Err(e) => {
                println!("cargo:warning=dpdk-sys: bindgen failed over the DPDK headers: {e}");
                std::process::exit(1);
            }
        };
        let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("bindings.rs");
        if let Err(e) = bindings.write_to_file(&out) {
            println!(
                "cargo:warning=dpdk-sys: cannot write {}: {e}",
                out.display()
            );
            std::process::exit(1);
        }
        if let Ok(copy) = std::env::var("CAPO_DPDK_SYS_REGENERATE") {
            if let Err(e) = std::fs::copy(&out, &copy) {
                println!("cargo:warning=dpdk-sys: cannot copy bindings to {copy}: {e}");
            }
        }
        println!("cargo:rustc-cfg=dpdk_linked");
    }

    fn raw_cflags() -> Vec<String> {
        let pkg_config = std::env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
        match Command::new(pkg_config)
            .args(["--cflags", "libdpdk"])
            .output()
        {
            Ok(o) if o.status.success() => {
                let s = String::from_utf8_lossy(&o.stdout).into_owned();
                let mut out = Vec::new();
                let mut it = s.split_whitespace();
                while let Some(f) = it.next() {
                    if f == "-include" {
                        if let Some(h) = it.next() {
                            out.push("-include".to_string());
                            out.push(h.to_string());
                        }
                    } else if !f.starts_with("-I") {
                        out.push(f.to_string());
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    }
}
