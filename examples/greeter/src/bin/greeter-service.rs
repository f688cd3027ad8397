//! Runs the greeter service until SIGINT/SIGTERM.

use clap::Parser;

/// The micro greeter service.
#[derive(Parser)]
#[command(version, about = "The micro greeter service: serves Greeter.Hello until SIGINT/SIGTERM.")]
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
    let svc = greeter::service(cli.micro)?;
    svc.run().await?;
    Ok(())
}
