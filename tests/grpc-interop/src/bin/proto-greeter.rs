//! Runs the protobuf greeter of `proto/greeter.proto` as a micro service
//! until SIGINT/SIGTERM; with `--server grpc` any gRPC client can call it.

use clap::Parser;

/// The protobuf greeter.
#[derive(Parser)]
#[command(
    version,
    about = "The protobuf greeter (proto/greeter.proto) as a micro service.",
    after_help = "Example:\n  proto-greeter --server grpc --server-address 127.0.0.1:50051"
)]
struct Cli {
    #[command(flatten)]
    micro: micro::Flags,
}

fn main() -> std::process::ExitCode {
    micro::run_main(run())
}

async fn run() -> anyhow::Result<()> {
    micro::init_logging();
    let cli = Cli::parse();
    let svc = micro::Service::builder("greeter").flags(cli.micro).build()?;
    grpc_interop::serve_micro(&svc)?;
    svc.run().await?;
    Ok(())
}
