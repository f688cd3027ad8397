//! Generates the echo service of `proto/bench.proto` for tonic (needs
//! `protoc`: Debian's protobuf-compiler) and for volo-grpc (its own parser).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `bytes` fields as `Bytes`, so echoing a payload copies nothing.
    tonic_prost_build::configure().bytes(".").compile_protos(&["proto/bench.proto"], &["proto"])?;
    volo_build::Builder::protobuf()
        .add_service("proto/bench.proto")
        .include_dirs(vec!["proto".into()])
        .filename("volo_gen.rs".into())
        .write()?;
    println!("cargo:rerun-if-changed=proto/bench.proto");
    Ok(())
}
