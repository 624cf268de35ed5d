//! Compiles `proto/` with protox (pure Rust: no system `protoc` needed) and
//! generates tonic clients and servers plus the descriptor set for reflection.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "conveyor/v1/task.proto",
    "conveyor/v1/workflow.proto",
    "conveyor/v1/submission_service.proto",
    "conveyor/v1/dispatch_service.proto",
    "conveyor/v1/results_service.proto",
    "conveyor/v1/scheduling_service.proto",
    "conveyor/store/v1/records.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile(PROTOS, [&root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("conveyor_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // No transport constructors: `DispatchService.Connect` would collide with
    // the generated `connect(endpoint)`. Callers build a `Channel` and use `new`.
    // Decode errors are the caller's: INVALID_ARGUMENT (see src/codec.rs).
    tonic_prost_build::configure()
        .build_transport(false)
        .codec_path("crate::codec::ConveyorCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
