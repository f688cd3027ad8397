//! The generated greeter as a service process: `generated-greeter [micro flags]`.

use clap::Parser;

/// Serves the greeter generated from greeter.proto until interrupted.
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(flatten)]
    micro: micro::Flags,
}

fn main() -> std::process::ExitCode {
    micro::run_main(async {
        micro::init_logging();
        let cli = Cli::parse();
        let svc = proto_greeter::service(cli.micro)?;
        svc.run().await?;
        anyhow::Ok(())
    })
}
