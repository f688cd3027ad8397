//! Calls the greeter service and prints the reply.

use anyhow::Context;
use clap::Parser;
use greeter::{HelloRequest, HelloResponse};
use micro::core::CallOptions;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Calls Greeter.Hello of the greeter service and prints the greeting.
#[derive(Parser)]
#[command(version, about = "Calls Greeter.Hello of the greeter service and prints the greeting.")]
struct Cli {
    /// Who to greet
    #[arg(long, default_value = "John")]
    name: String,
    /// How many calls to make (one line each)
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Keep trying for this long while the service is not registered yet, e.g. 10s
    #[arg(long, value_parser = micro::flags::parse_duration, default_value = "0s")]
    wait: Duration,
    /// Call Greeter.Whoami instead and print the node id that answered
    #[arg(long)]
    whoami: bool,
    /// Pause between calls, e.g. 5ms
    #[arg(long, value_parser = micro::flags::parse_duration, default_value = "0s")]
    every: Duration,
    #[command(flatten)]
    micro: micro::Flags,
}

fn main() -> std::process::ExitCode {
    micro::run_main(run())
}

async fn run() -> anyhow::Result<()> {
    micro::init_logging();
    let cli = Cli::parse();
    let svc = micro::Service::builder("greeter-client").flags(cli.micro).build()?;
    let client = svc.client();
    let deadline = Instant::now() + cli.wait;
    for i in 0..cli.count {
        if i > 0 && !cli.every.is_zero() {
            tokio::time::sleep(cli.every).await;
        }
        loop {
            let req = HelloRequest { name: cli.name.clone() };
            let res = if cli.whoami {
                client
                    .call::<_, greeter::WhoamiResponse>("greeter", "Greeter.Whoami", &serde_json::json!({}))
                    .await
                    .map(|w| w.id)
            } else {
                client
                    .call_with::<_, HelloResponse>(
                        "greeter",
                        "Greeter.Hello",
                        &req,
                        HashMap::new(),
                        CallOptions::default(),
                    )
                    .await
                    .map(|r| r.greeting)
            };
            match res {
                Ok(line) => {
                    println!("{line}");
                    break;
                }
                // Not registered yet: wait for it, if asked to.
                Err(e) if e.code == 404 && Instant::now() < deadline => {
                    svc.selector().reset("greeter");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("calling greeter"),
            }
        }
    }
    Ok(())
}
