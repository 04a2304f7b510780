//! Generates the gRPC code from `proto/` with the vendored `protoc`: no system install is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
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
