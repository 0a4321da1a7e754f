//! Generates the gRPC code (server and client) from proto/prepaid.proto, the
//! public contract. Needs `protoc` (Debian's protobuf-compiler; `.ci/setup`
//! installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/prepaid.proto");
    tonic_prost_build::configure().compile_protos(&["proto/prepaid.proto"], &["proto"])?;
    Ok(())
}
