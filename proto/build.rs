//! Generates the gRPC code from `proto/` with the vendored `protoc`: no system install is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // A DERP node's result is 344 bytes, three times any other result: inline, it made every
    // `Observation` 456 bytes, and decoding a batch moves its observations through a growing
    // vector. Boxed, an `Observation` is 232 bytes (BENCHMARKS.md, ingestion).
    config.boxed(".vantage.v1.Observation.result.derp_node");
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .file_descriptor_set_path(out_dir.join("vantage_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("proto/vantage/v1/vantage.proto")],
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
