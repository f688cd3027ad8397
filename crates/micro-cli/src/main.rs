//! `micro`: the command-line tool of the micro framework.
//!
//! Every global flag of a service (`--registry`, `--client`, …, with their
//! `MICRO_*` environment fallbacks) works on every command, so the tool
//! sees what the services see.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use micro::core::{headers, CallOptions, Message, Request};
use micro::{Flags, Service};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "micro",
    version,
    about = "Inspect and call micro services",
    after_help = "Examples:\n  micro services\n  micro describe greeter\n  micro call greeter Greeter.Hello '{\"name\": \"John\"}'\n  micro publish events '{\"id\": 1}'"
)]
struct Cli {
    /// Output format
    #[arg(long, short, value_enum, default_value_t = Output::Table, env = "MICRO_OUTPUT", global = true)]
    output: Output,
    #[command(flatten)]
    micro: Flags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Human-readable tables
    Table,
    /// JSON
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// List the services in the registry
    #[command(after_help = "Example:\n  micro services --registry local")]
    Services,
    /// Show a service's nodes and endpoints
    #[command(after_help = "Example:\n  micro describe greeter")]
    Describe {
        /// The service name
        service: String,
    },
    /// Call an endpoint of a service with a JSON request
    #[command(after_help = "Examples:\n  micro call greeter Greeter.Hello '{\"name\": \"John\"}'\n  micro call greeter Greeter.Hello '{\"name\": \"John\"}' --address 127.0.0.1:40000 --metadata trace=1")]
    Call {
        /// The service name
        service: String,
        /// The endpoint, Handler.Method
        endpoint: String,
        /// The request as JSON
        #[arg(default_value = "{}")]
        request: String,
        /// Call this node address directly instead of asking the registry
        #[arg(long)]
        address: Option<String>,
        /// Deadline of the call, e.g. 5s
        #[arg(long, value_parser = micro::flags::parse_duration)]
        timeout: Option<Duration>,
        /// Call metadata, key=value (repeatable)
        #[arg(long = "metadata", short = 'm')]
        metadata: Vec<String>,
    },
    /// Publish a JSON message to a topic
    #[command(after_help = "Example:\n  micro publish events '{\"id\": 1}'")]
    Publish {
        /// The topic
        topic: String,
        /// The message as JSON
        message: String,
    },
}

fn json_body(text: &str) -> anyhow::Result<bytes::Bytes> {
    let v: serde_json::Value = serde_json::from_str(text).with_context(|| format!("the request is not valid JSON: {text}"))?;
    Ok(serde_json::to_vec(&v)?.into())
}

fn main() -> std::process::ExitCode {
    micro::run_main(run())
}

async fn run() -> anyhow::Result<()> {
    micro::init_logging();
    let cli = Cli::parse();
    let svc = Service::builder("micro-cli").flags(cli.micro).build()?;
    match cli.command {
        Command::Services => {
            let mut services = svc.registry().list_services().await?;
            services.sort_by(|a, b| a.name.cmp(&b.name));
            if cli.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&services)?);
            } else {
                println!("{:<32} {:<12} {:>5}", "NAME", "VERSION", "NODES");
                for s in services {
                    println!("{:<32} {:<12} {:>5}", s.name, s.version, s.nodes.len());
                }
            }
        }
        Command::Describe { service } => {
            let services = svc.registry().get_service(&service).await?;
            if cli.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&services)?);
            } else {
                for s in services {
                    println!("service  {}  version {}", s.name, s.version);
                    println!("\n{:<48} {:<24} METADATA", "NODE", "ADDRESS");
                    for n in &s.nodes {
                        let mut md: Vec<String> = n.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        md.sort();
                        println!("{:<48} {:<24} {}", n.id, n.address, md.join(","));
                    }
                    println!("\n{:<32} {:<24} RESPONSE", "ENDPOINT", "REQUEST");
                    for e in &s.endpoints {
                        let shape = |v: &Option<micro::core::Value>| v.as_ref().map(|v| v.kind.clone()).unwrap_or_default();
                        println!("{:<32} {:<24} {}", e.name, shape(&e.request), shape(&e.response));
                    }
                    println!();
                }
            }
        }
        Command::Call { service, endpoint, request, address, timeout, metadata } => {
            let mut md = HashMap::new();
            for kv in metadata {
                let Some((k, v)) = kv.split_once('=') else { bail!("--metadata {kv:?} is not key=value") };
                md.insert(k.to_string(), v.to_string());
            }
            let req = Request {
                service,
                endpoint,
                content_type: micro::codec::JSON.into(),
                body: json_body(&request)?,
                metadata: md,
            };
            let resp = svc.client().inner().call(req, CallOptions { timeout, address, retries: None }).await?;
            let v: serde_json::Value = serde_json::from_slice(&resp.body).context("the response is not JSON")?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Publish { topic, message } => {
            let msg = Message::new(json_body(&message)?).with_header(headers::CONTENT_TYPE, micro::codec::JSON);
            svc.client().inner().publish(&topic, msg).await?;
            if cli.output == Output::Json {
                println!("{}", serde_json::json!({ "topic": topic, "published": true }));
            } else {
                println!("published to {topic}");
            }
        }
    }
    Ok(())
}
