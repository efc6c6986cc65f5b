//! Compiles capo's protobuf schemas into modules under `OUT_DIR`.
//!
//! - Each Felix schema (`felix/v3_31`, `felix/v3_32`) gets its own output directory:
//!   both declare package `felix`, so otherwise the second would overwrite the first.
//! - capo's own packages (`capo/…`) import Felix's v3.32 messages, which are reused
//!   from `crate::felix::v3_32` rather than generated twice. gRPC services are
//!   generated only with the `grpc` feature.
//!
//! protox parses the `.proto` files in Rust, so no `protoc` is needed.

use std::error::Error;
use std::path::PathBuf;

/// Felix schema directories under `felix/`, each holding one `felixbackend.proto`.
const FELIX_SCHEMAS: &[&str] = &["v3_31", "v3_32"];

/// capo's own schemas.
const CAPO_PROTOS: &[&str] = &[
    "capo/dataplane/v1/dataplane.proto",
    "capo/agent/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    for schema in FELIX_SCHEMAS {
        let include = PathBuf::from("felix").join(schema);
        let file = include.join("felixbackend.proto");
        println!("cargo:rerun-if-changed={}", file.display());

        let fds = protox::compile([&file], [&include])?;
        let dest = out_dir.join(schema);
        std::fs::create_dir_all(&dest)?;
        prost_build::Config::new().out_dir(&dest).compile_fds(fds)?;
    }

    for p in CAPO_PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(CAPO_PROTOS, [".", "felix/v3_32"])?;
    // Served by gRPC reflection.
    std::fs::write(
        out_dir.join("capo_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .out_dir(&out_dir)
        .extern_path(".felix", "crate::felix::v3_32")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
