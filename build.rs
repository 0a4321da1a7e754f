//! Generates the gRPC code (server and client) from proto/prepaid.proto, the
//! public contract. Needs `protoc` (Debian's protobuf-compiler; `.ci/setup`
//! installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/prepaid.proto");
    println!("cargo:rerun-if-changed=proto/link.proto");
    // The descriptor set is what gRPC reflection serves.
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("prepaid_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_protos(&["proto/prepaid.proto"], &["proto"])?;
    // The node link between the nodes of a cluster (src/cluster/link.rs).
    tonic_prost_build::configure().compile_protos(&["proto/link.proto"], &["proto"])?;
    Ok(())
}
