//! Generates the greeter's messages, client and handler from
//! proto/greeter.proto: with go-micro's gRPC paths (the default), with the
//! .proto's own (`package/`), and tonic's server from the same file for the
//! interop test (`tonic/`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    micro_build::compile_protos(&["proto/greeter.proto"], &["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    for (dir, f) in [("package", true), ("tonic", false)] {
        std::fs::create_dir_all(out.join(dir))?;
        if f {
            micro_build::configure()
                .grpc_paths(micro_build::GrpcPaths::Package)
                .out_dir(out.join(dir))
                .compile(&["proto/greeter.proto"], &["proto"])?;
        } else {
            tonic_prost_build::configure()
                .build_client(false)
                .out_dir(out.join(dir))
                .compile_protos(&["proto/greeter.proto"], &["proto"])?;
        }
    }
    Ok(())
}
