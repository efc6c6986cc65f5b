//! Compiles each Felix schema into its own module under `OUT_DIR`.
//!
//! Both schemas declare package `felix`, so each gets its own output
//! directory; otherwise the second would overwrite the first's `felix.rs`.
//! protox parses the `.proto` files in Rust, so no `protoc` is needed.

use std::error::Error;
use std::path::PathBuf;

/// Schema directories under `felix/`, each holding one `felixbackend.proto`.
const SCHEMAS: &[&str] = &["v3_31", "v3_32"];

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    for schema in SCHEMAS {
        let include = PathBuf::from("felix").join(schema);
        let file = include.join("felixbackend.proto");
        println!("cargo:rerun-if-changed={}", file.display());

        let fds = protox::compile([&file], [&include])?;
        let dest = out_dir.join(schema);
        std::fs::create_dir_all(&dest)?;
        prost_build::Config::new().out_dir(&dest).compile_fds(fds)?;
    }
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
