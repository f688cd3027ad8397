//! Generates the prost messages and the tonic client and server of
//! `proto/greeter.proto` (needs `protoc`: Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["proto/greeter.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/greeter.proto");
    Ok(())
}
