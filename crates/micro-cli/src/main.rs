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
    #[arg(long, value_enum, default_value_t = Output::Table, env = "MICRO_OUTPUT", global = true)]
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
    /// Build, generate and inspect plugins
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Publish a JSON message to a topic
    #[command(after_help = "Example:\n  micro publish events '{\"id\": 1}'")]
    Publish {
        /// The topic
        topic: String,
        /// The message as JSON
        message: String,
    },
}

#[derive(clap::Args)]
struct PluginSpec {
    /// The plugin's name, e.g. brpc
    #[arg(long)]
    name: String,
    /// The plugin's type
    #[arg(long = "type", value_parser = ["broker", "client", "registry", "selector", "server", "transport"])]
    kind: String,
    /// The crate that holds the implementation
    #[arg(long)]
    path: std::path::PathBuf,
    /// The constructor in that crate, e.g. new_client
    #[arg(long)]
    new_func: String,
}

impl PluginSpec {
    fn config(&self) -> micro::plugin::BuildConfig {
        micro::plugin::BuildConfig {
            name: self.name.clone(),
            kind: self.kind.clone(),
            path: self.path.clone(),
            new_func: self.new_func.clone(),
        }
    }
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Generate a plugin crate from the template and compile it into a shared library
    #[command(after_help = "Example:\n  micro plugin build --name brpc --type client --path examples/plugins/brpc --new-func new_client -o ./brpc.so\n  MICRO_PLUGIN=./brpc.so greeter-client --client brpc")]
    Build {
        #[command(flatten)]
        spec: PluginSpec,
        /// The shared library to write
        #[arg(short = 'o', long = "out")]
        out: std::path::PathBuf,
        /// Build with the dev profile (faster to build, slower to run)
        #[arg(long)]
        debug: bool,
        /// cargo target directory to build in (shared between builds to save time)
        #[arg(long, env = "MICRO_PLUGIN_TARGET_DIR")]
        target_dir: Option<std::path::PathBuf>,
        /// Do not let cargo use the network
        #[arg(long)]
        offline: bool,
    },
    /// Write the plugin crate's source only
    #[command(after_help = "Example:\n  micro plugin generate --name brpc --type client --path examples/plugins/brpc --new-func new_client -o ./brpc-plugin")]
    Generate {
        #[command(flatten)]
        spec: PluginSpec,
        /// The directory to write the crate into
        #[arg(short = 'o', long = "out")]
        out: std::path::PathBuf,
    },
    /// Show a plugin's Name, Type, Path, NewFunc, build information, and whether this host can load it
    #[command(after_help = "Example:\n  micro plugin inspect ./brpc.so")]
    Inspect {
        /// The plugin library (optionally path#sha256=<hex>)
        file: String,
    },
}

async fn plugin_command(cmd: PluginCommand, output: Output, allow_insecure: bool) -> anyhow::Result<()> {
    use micro::plugin::{BuildOptions, FrameworkSource, Progress};
    match cmd {
        PluginCommand::Build { spec, out, debug, target_dir, offline } => {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message(format!("building plugin {} with cargo", spec.name));
            let opts = BuildOptions { debug, target_dir, offline };
            let cfg = spec.config();
            let res = tokio::task::spawn_blocking(move || {
                micro::plugin::build(&out, &cfg, &FrameworkSource::current(), &opts, |p| match p {
                    Progress::Compiled { name, count } => bar.set_message(format!("compiled {count} crates, last: {name}")),
                    Progress::Line(l) => bar.println(l),
                })
                .map(|p| (p, bar))
            })
            .await?;
            let (path, bar) = res?;
            bar.finish_and_clear();
            println!("built plugin {} ({}) -> {}", spec.name, spec.kind, path.display());
        }
        PluginCommand::Generate { spec, out } => {
            let manifest = micro::plugin::generate(&out, &spec.config(), &FrameworkSource::current())?;
            println!("generated plugin crate {}", manifest.display());
        }
        PluginCommand::Inspect { file } => {
            let host = micro::plugin::BuildInfo::host();
            let res = micro::plugin::load(&file, micro::plugin::LoadOptions { allow_insecure });
            let json = match &res {
                Ok(c) => {
                    let mut catalog = micro::catalog::builtin();
                    let init = micro::plugin::init(c, &mut catalog);
                    serde_json::json!({
                        "file": c.file, "name": c.name, "type": c.kind, "path": c.path, "new_func": c.new_func,
                        "build": c.build, "host": host,
                        "loadable": init.is_ok(),
                        "reason": init.err().map(|e| e.to_string()),
                    })
                }
                Err(e) => serde_json::json!({ "file": file, "host": host, "loadable": false, "reason": e.to_string() }),
            };
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                let s = |k: &str| json[k].as_str().unwrap_or("").to_string();
                let b = |k: &str| json["build"][k].to_string().trim_matches('"').to_string();
                if res.is_ok() {
                    println!("Name:         {}", s("name"));
                    println!("Type:         {}", s("type"));
                    println!("Path:         {}", s("path"));
                    println!("NewFunc:      {}", s("new_func"));
                    println!("File:         {}", json["file"].as_str().unwrap_or(""));
                    println!("ABI version:  {} (host {})", b("abi_version"), host.abi_version);
                    println!("Future ABI:   {} (host {})", b("future_abi_version"), host.future_abi_version);
                    println!("Built with:   {} (host {})", b("rustc"), host.rustc);
                    println!("Target:       {} (host {})", b("target"), host.target);
                    println!("Framework:    micro-plugin {} (host {})", b("framework"), host.framework);
                }
                match json["reason"].as_str() {
                    None => println!("Loadable:     yes"),
                    Some(r) => println!("Loadable:     no: {r}"),
                }
            }
            if json["loadable"] != true {
                std::process::exit(1);
            }
        }
    }
    Ok(())
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
    if let Command::Plugin(cmd) = cli.command {
        return plugin_command(cmd, cli.output, cli.micro.plugin_allow_insecure).await;
    }
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
        Command::Plugin(_) => unreachable!("handled above"),
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
