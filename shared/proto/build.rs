//! Compiles the protos under `proto/` with a vendored `protoc`, so a machine
//! with only Rust installed can build. `$PROTOC` wins when it is set.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let protos = ["wallet", "metering", "invoicing", "payments", "orchestrator"]
        .map(|service| root.join(format!("reservoir/{service}/v1/{service}.proto")));
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Maps are encoded in key order so that a request hashes the same way on
    // every retry; the idempotency check compares those hashes.
    config.btree_map(["."]);
    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::StrictCodec")
        .file_descriptor_set_path(out_dir.join("reservoir_descriptor.bin"))
        .compile_with_config(config, &protos, &[root, include])?;
    Ok(())
}
