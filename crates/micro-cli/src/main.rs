//! `micro`: the command-line tool of the micro framework.
//!
//! Every global flag of a service (`--registry`, `--client`, …, with their
//! `MICRO_*` environment fallbacks) works on every command, so the tool
//! sees what the services see.

mod api;
mod scaffold;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use micro::core::{headers, CallOptions, Message, Request};
use micro::{Flags, Service};
use std::collections::HashMap;
use std::time::Duration;

/// Writes a line to stdout: a reader that went away (`micro … | head -1`)
/// ends the program quietly, as cargo and grep do, instead of a panic.
macro_rules! outln {
    () => {
        $crate::write_stdout(b"\n")
    };
    ($($t:tt)*) => {
        $crate::write_stdout(format!("{}\n", format_args!($($t)*)).as_bytes())
    };
}

/// Writes to stdout and flushes; exits with status 0 when the reader is gone.
fn write_stdout(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Prints a table whose columns are as wide as their widest cell (by
/// characters), two spaces apart; the last column is not padded.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    write_stdout(table(header, rows).as_bytes());
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate().take(cols) {
            l.push_str(cell);
            if i + 1 < cols {
                l.extend(std::iter::repeat_n(' ', width[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// Writes a line to stderr, ignoring a stderr that went away.
fn errln(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

#[derive(Parser)]
#[command(
    name = "micro",
    version,
    about = "Inspect and call micro services",
    after_help = "Examples:\n  micro services\n  micro describe greeter\n  micro call greeter Greeter.Hello '{\"name\": \"John\"}'\n  micro publish events '{\"id\": 1}' --broker http\n  micro subscribe events --broker http\n  micro health greeter\n  micro api --address 127.0.0.1:8080\n  micro new hello"
)]
struct Cli {
    /// Output format: tables for people, JSON for programs
    #[arg(long, value_enum, default_value_t = Output::Table, env = "MICRO_OUTPUT", global = true)]
    output: Output,
    #[command(flatten)]
    micro: Flags,
    #[command(subcommand)]
    command: Command,
}

// The variants carry no doc comments: clap would turn them into a
// "Possible values" list and every help into its long, spread-out form.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
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
    #[command(
        after_help = "Examples:\n  micro call greeter Greeter.Hello '{\"name\": \"John\"}'\n  micro call greeter Greeter.Hello '{\"name\": \"John\"}' --address 127.0.0.1:40000 --metadata trace=1\n  micro call counter Counter.Count '{\"n\": 5}' --stream           # prints each streamed response\n  seq 3 | jq -c '{n: .}' | micro call counter Counter.Sum - --stream  # one message per stdin line"
    )]
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
        /// Open a stream: send the request (or, for `-`, each line of stdin) and print every response
        #[arg(long)]
        stream: bool,
    },
    /// Build, generate and inspect plugins
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Publish a JSON message to a topic
    #[command(after_help = "Example:\n  micro publish events '{\"id\": 1}' --broker http")]
    Publish {
        /// The topic
        topic: String,
        /// The message as JSON
        message: String,
    },
    /// Print the messages published to a topic until interrupted
    #[command(
        after_help = "Example:\n  micro subscribe events --broker http\n  micro subscribe events --queue workers --count 10 --output json"
    )]
    Subscribe {
        /// The topic
        topic: String,
        /// Join a queue group: each message goes to one member
        #[arg(long)]
        queue: Option<String>,
        /// Stop after this many messages
        #[arg(long)]
        count: Option<u64>,
    },
    /// Check the health of each node of a service (its Debug.Health endpoint)
    #[command(after_help = "Example:\n  micro health greeter")]
    Health {
        /// The service name
        service: String,
        /// Deadline per node, e.g. 2s
        #[arg(long, value_parser = micro::flags::parse_duration, default_value = "2s")]
        timeout: Duration,
    },
    /// Serve an HTTP API gateway: POST /<service>/<method> calls Handler.Method of a service
    #[command(
        after_help = "Examples:\n  micro api --address 127.0.0.1:8080                  # exposes services named go.micro.api.*\n  curl -H 'Content-Type: application/json' -d '{\"name\": \"John\"}' http://127.0.0.1:8080/greeter/hello   # go.micro.api.greeter Greeter.Hello\n  micro api --namespace ''                           # exposes every service: /greeter/hello is greeter Greeter.Hello\n  micro api --cors-origin https://app.example.com    # lets that web origin call it from a browser"
    )]
    Api {
        /// Address to listen on
        #[arg(long, env = "MICRO_API_ADDRESS", default_value = "127.0.0.1:8080")]
        address: String,
        /// Prefix of service names, as go-micro's: only services named `<namespace>.*` are
        /// exposed; '' exposes every service
        #[arg(long, env = "MICRO_API_NAMESPACE", default_value = "go.micro.api")]
        namespace: String,
        /// Largest request body in bytes
        #[arg(long, env = "MICRO_API_MAX_BODY", default_value_t = 1024 * 1024)]
        max_body: usize,
        /// Deadline of each call, e.g. 10s
        #[arg(long, env = "MICRO_API_TIMEOUT", value_parser = micro::flags::parse_duration, default_value = "10s")]
        timeout: Duration,
        /// Answer CORS preflights and allow any origin (off by default; prefer --cors-origin)
        #[arg(long, env = "MICRO_API_CORS")]
        cors: bool,
        /// Web origins allowed to call the gateway from a browser (comma-separated or
        /// repeated, e.g. https://app.example.com); requests from other origins are refused
        #[arg(long, env = "MICRO_API_CORS_ORIGIN", value_delimiter = ',')]
        cors_origin: Vec<String>,
        /// Request headers forwarded as call metadata (comma-separated, case-insensitive);
        /// Micro-* and hop-by-hop headers never are
        #[arg(
            long,
            env = "MICRO_API_FORWARD_HEADERS",
            value_delimiter = ',',
            default_value = "authorization,user-agent,x-request-id,x-forwarded-for,traceparent,tracestate,accept-language"
        )]
        forward_headers: Vec<String>,
        /// Open connections the gateway accepts; more are closed on accept
        #[arg(long, env = "MICRO_API_MAX_CONNECTIONS", default_value_t = 1024)]
        max_connections: usize,
    },
    /// Create a new service crate that builds and runs
    #[command(
        after_help = "The new crate depends on micro by version, as a published project would. For unpublished work,\nbuild against a checkout or a git repository.\n\nExamples:\n  micro new hello && cd hello && cargo run\n  micro new hello --proto                          # from proto/hello.proto, with micro-build\n  micro new hello --micro-path ~/src/micro          # a checkout (its root or crates/micro)\n  micro new hello --micro-git https://github.com/you/micro --micro-rev main"
    )]
    New {
        /// The directory to create; its name is the service name
        dir: std::path::PathBuf,
        /// Depend on this micro checkout (its root or its crates/micro) instead of a version
        #[arg(long, value_name = "DIR", conflicts_with = "micro_git")]
        micro_path: Option<std::path::PathBuf>,
        /// Depend on micro from this git repository instead of a version
        #[arg(long, value_name = "URL")]
        micro_git: Option<String>,
        /// The git revision (branch, tag or commit) of --micro-git
        #[arg(long, value_name = "REV", requires = "micro_git")]
        micro_rev: Option<String>,
        /// Start from a .proto: typed client and handler generated by micro-build (needs protoc)
        #[arg(long)]
        proto: bool,
    },
    /// Print a shell completion script
    #[command(after_help = "Example:\n  micro completion bash > /etc/bash_completion.d/micro")]
    Completion {
        /// The shell
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
struct PluginSpec {
    /// The plugin's name, e.g. brpc
    #[arg(long)]
    name: String,
    /// The plugin's type
    #[arg(long = "type", value_name = "TYPE", value_parser = ["broker", "client", "registry", "selector", "server", "transport"])]
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
    #[command(
        after_help = "Example:\n  micro plugin build --name brpc --type client --path examples/plugins/brpc --new-func new_client -o ./brpc.so\n  MICRO_PLUGIN=./brpc.so greeter-client --client brpc"
    )]
    Build {
        #[command(flatten)]
        spec: PluginSpec,
        /// The shared library to write (-o/--out; not --output, which picks how micro prints)
        #[arg(short = 'o', long = "out", value_name = "FILE.so")]
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
    #[command(
        after_help = "Example:\n  micro plugin generate --name brpc --type client --path examples/plugins/brpc --new-func new_client -o ./brpc-plugin"
    )]
    Generate {
        #[command(flatten)]
        spec: PluginSpec,
        /// The directory to write the crate into
        #[arg(short = 'o', long = "out", value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// Show a plugin's Name, Type, Path, NewFunc, build information, and whether this host can load it
    #[command(after_help = "Example:\n  micro plugin inspect ./brpc.so")]
    Inspect {
        /// The plugin library (optionally path#sha256=<hex>)
        file: String,
    },
}

async fn plugin_command(cmd: PluginCommand, output: Output, opts: micro::plugin::LoadOptions) -> anyhow::Result<()> {
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
                micro::plugin::build(&out, &cfg, &FrameworkSource::for_crate(&cfg.path)?, &opts, |p| match p {
                    Progress::Compiled { name, count } => {
                        bar.set_message(format!("compiled {count} crates, last: {name}"))
                    }
                    Progress::Line(l) => bar.println(l),
                })
                .map(|p| (p, bar))
            })
            .await?;
            let (path, bar) = res?;
            bar.finish_and_clear();
            if output == Output::Json {
                outln!("{}", serde_json::json!({ "name": spec.name, "type": spec.kind, "file": path }));
            } else {
                outln!("built plugin {} ({}) -> {}", spec.name, spec.kind, path.display());
            }
        }
        PluginCommand::Generate { spec, out } => {
            let config = spec.config();
            let manifest = micro::plugin::generate(&out, &config, &FrameworkSource::for_crate(&config.path)?)?;
            if output == Output::Json {
                outln!("{}", serde_json::json!({ "name": spec.name, "type": spec.kind, "manifest": manifest }));
            } else {
                outln!("generated plugin crate {}", manifest.display());
            }
        }
        PluginCommand::Inspect { file } => {
            let host = micro::plugin::BuildInfo::host();
            // Inspect reads and checks the file; it never opens the library,
            // so nothing of the file runs (not even its constructors).
            let res = micro::plugin::inspect(&file, opts);
            let json = match &res {
                Ok(c) => {
                    let init = micro::plugin::check_kind(c);
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
                outln!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                let s = |k: &str| json[k].as_str().unwrap_or("").to_string();
                let b = |k: &str| json["build"][k].to_string().trim_matches('"').to_string();
                if res.is_ok() {
                    outln!("Name:         {}", s("name"));
                    outln!("Type:         {}", s("type"));
                    outln!("Path:         {}", s("path"));
                    outln!("NewFunc:      {}", s("new_func"));
                    outln!("File:         {}", json["file"].as_str().unwrap_or(""));
                    outln!("ABI version:  {} (host {})", b("abi_version"), host.abi_version);
                    outln!("Future ABI:   {} (host {})", b("future_abi_version"), host.future_abi_version);
                    outln!("Built with:   {} (host {})", b("rustc"), host.rustc);
                    outln!("Target:       {} (host {})", b("target"), host.target);
                    outln!("Panics:       {} (host {})", b("panic"), host.panic);
                    outln!("Layout:       {} (host {})", b("layout"), host.layout);
                    outln!("Framework:    micro-plugin {} (host {})", b("framework"), host.framework);
                }
                match json["reason"].as_str() {
                    None => outln!("Loadable:     yes"),
                    Some(r) => outln!("Loadable:     no: {r}"),
                }
            }
            if json["loadable"] != true {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// Streams `request` (or each stdin line, for `-`) to a stream endpoint and
/// prints each response as it comes.
async fn call_stream(
    svc: &Service,
    req: Request,
    opts: CallOptions,
    request: &str,
    output: Output,
) -> anyhow::Result<()> {
    let mut stream = svc.client().inner().stream(req, opts).await?;
    if request == "-" {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let (mut tx, mut rx) = stream.split();
        let send = async move {
            while let Some(line) = lines.next_line().await? {
                if !line.trim().is_empty() {
                    tx.send(json_body(&line)?).await?;
                }
            }
            tx.close();
            anyhow::Ok(())
        };
        let print = async move {
            while let Some(body) = rx.recv().await? {
                print_json(&body, output)?;
            }
            anyhow::Ok(())
        };
        // The responses decide when this ends: once they are over (the
        // stream ended, or broke), lines still to come on stdin have nowhere
        // to go, and waiting for them would hang a broken stream forever.
        tokio::pin!(send, print);
        let mut sending = true;
        loop {
            tokio::select! {
                printed = &mut print => return printed,
                sent = &mut send, if sending => {
                    sent?;
                    sending = false;
                }
            }
        }
    }
    stream.send(json_body(request)?).await?;
    stream.close_send();
    while let Some(body) = stream.recv().await? {
        print_json(&body, output)?;
    }
    Ok(())
}

/// An endpoint's request and response fields, laid out as go-micro's
/// `micro get service` lays them out (a tab per level, nested messages in
/// braces).
fn endpoint_shape(e: &micro::core::Endpoint) -> String {
    fn field(v: &micro::core::Value, depth: usize, out: &mut String) {
        let tabs = "\t".repeat(depth + 1);
        if v.values.is_empty() {
            out.push_str(&format!("{tabs}{} {}\n", v.name.to_lowercase(), v.kind));
            return;
        }
        out.push_str(&format!("{tabs}{} {} {{\n", v.name.to_lowercase(), v.kind));
        for f in &v.values {
            field(f, depth + 1, out);
        }
        out.push_str(&format!("{tabs}}}\n"));
    }
    let block = |v: &Option<micro::core::Value>| match v {
        Some(v) if !v.values.is_empty() => {
            let mut out = String::from("{\n");
            for f in &v.values {
                field(f, 0, &mut out);
            }
            out.push('}');
            out
        }
        _ => "{}".to_string(),
    };
    let mut out = format!("Endpoint: {}\n", e.name);
    if !e.metadata.is_empty() {
        let mut md: Vec<String> = e.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        md.sort();
        out.push_str(&format!("Metadata: {}\n", md.join(",")));
    }
    out.push_str(&format!("\nRequest: {}\n\nResponse: {}\n", block(&e.request), block(&e.response)));
    out
}

/// Prints one JSON response: pretty for people, one line for `--output json`.
fn print_json(body: &[u8], output: Output) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_slice(body).context("the response is not JSON")?;
    if output == Output::Json {
        outln!("{v}");
    } else {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    Ok(())
}

fn json_body(text: &str) -> anyhow::Result<bytes::Bytes> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("the request is not valid JSON: {text}"))?;
    Ok(serde_json::to_vec(&v)?.into())
}

/// The micro flags each command's help shows: those it uses. Every flag is
/// accepted by every command (a script may set `MICRO_*` for all of them);
/// the others are only left out of that command's `--help`.
fn flags_shown(command: &str) -> &'static [&'static str] {
    const REGISTRY: &[&str] = &["registry", "registry_address", "plugin"];
    const CALLS: &[&str] = &[
        "registry",
        "registry_address",
        "plugin",
        "client",
        "selector",
        "transport",
        "client_request_timeout",
        "client_retries",
        "transport_tls_ca",
        "transport_tls_cert",
        "transport_tls_key",
        "max_message_size",
    ];
    const BROKER: &[&str] = &["broker", "broker_address", "plugin"];
    const SUBSCRIBE: &[&str] = &["broker", "broker_address", "broker_advertise", "plugin"];
    const LOADING: &[&str] = &["plugin_allow_insecure", "plugin_allow_panic_abort"];
    match command {
        "services" | "describe" => REGISTRY,
        "call" | "health" | "api" => CALLS,
        "publish" => BROKER,
        "subscribe" => SUBSCRIBE,
        "plugin inspect" => LOADING,
        _ => &[],
    }
}

/// Flags of services that the tool never uses (it serves nothing and
/// registers nothing): accepted, left out of every help.
const SERVER_ONLY: &[&str] = &[
    "register_ttl",
    "register_interval",
    "server",
    "server_name",
    "server_version",
    "server_id",
    "server_address",
    "server_advertise",
    "server_metadata",
    "transport_address",
    "server_max_connections",
    "server_max_in_flight",
    "server_idle_timeout",
    "server_max_in_flight_per_connection",
    "server_first_message_timeout",
    "client_pool_size",
    "client_pool_ttl",
];

/// The command line, with each command's help trimmed to what it uses:
/// `micro --help` lists the component flags under their heading, and
/// `micro <command> --help` the few of them that command uses.
///
/// clap copies a global flag into each subcommand that has no flag of
/// that id when it builds the command, so a subcommand is given its own
/// hidden copy of each global flag it does not use, before building:
/// parsing is unchanged, only the help differs.
fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let globals: Vec<clap::Arg> = cmd.get_arguments().filter(|a| a.is_global_set()).cloned().collect();
    for id in SERVER_ONLY {
        cmd = cmd.mut_arg(*id, |a| a.hide(true));
    }
    fn trim(mut sc: clap::Command, path: &str, globals: &[clap::Arg]) -> clap::Command {
        let shown = flags_shown(path);
        for g in globals {
            let id = g.get_id().as_str();
            let keep = (id == "output" && path != "completion") || shown.contains(&id);
            if sc.get_arguments().any(|a| a.get_id() == id) {
                continue;
            }
            sc = sc.arg(g.clone().hide(!keep));
        }
        let subs: Vec<String> = sc.get_subcommands().map(|c| c.get_name().to_string()).collect();
        for s in subs {
            let inner = format!("{path} {s}");
            let globals = globals.to_vec();
            sc = sc.mut_subcommand(&s, move |c| trim(c, &inner, &globals));
        }
        const NOTE: &str = "Every micro flag (--registry, --broker, --client, …; see `micro --help`) works here too.";
        let help = match sc.get_after_help() {
            Some(h) => format!("{h}\n\n{NOTE}"),
            None => NOTE.to_string(),
        };
        sc.after_help(help)
    }
    let subs: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
    for s in subs {
        let globals = globals.clone();
        let path = s.clone();
        cmd = cmd.mut_subcommand(&s, move |c| trim(c, &path, &globals));
    }
    cmd
}

fn main() -> std::process::ExitCode {
    micro::run_main(run())
}

async fn run() -> anyhow::Result<()> {
    micro::init_logging();
    let matches = command().get_matches();
    let output_given = matches.value_source("output") == Some(clap::parser::ValueSource::CommandLine);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Commands that need no components.
    match cli.command {
        Command::Plugin(cmd) => {
            return plugin_command(
                cmd,
                cli.output,
                micro::plugin::LoadOptions {
                    allow_insecure: cli.micro.plugin_allow_insecure,
                    allow_panic_abort: cli.micro.plugin_allow_panic_abort,
                },
            )
            .await;
        }
        Command::New { dir, micro_path, micro_git, micro_rev, proto } => {
            let source =
                scaffold::MicroSource::from_flags(micro_path.as_deref(), micro_git.as_deref(), micro_rev.as_deref())?;
            let files = scaffold::generate(&dir, &source, proto)?;
            if cli.output == Output::Json {
                let created: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                outln!("{}", serde_json::json!({ "created": created, "micro": source.dependency() }));
                return Ok(());
            }
            for f in files {
                outln!("created {}", f.display());
            }
            outln!("\nbuild and run it:\n  cd {} && cargo run", dir.display());
            if source == scaffold::MicroSource::Version {
                outln!(
                    "\nit depends on micro {} from the package registry; to build against a checkout instead:\n  micro new {} --micro-path /path/to/micro",
                    env!("CARGO_PKG_VERSION"),
                    dir.display()
                );
            }
            return Ok(());
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            if output_given {
                bail!("--output does not apply to `micro completion`: it prints a shell script");
            }
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "micro", &mut script);
            write_stdout(&script);
            return Ok(());
        }
        _ => {}
    }
    let flags = cli.micro.clone();
    let svc = Service::builder("micro-cli").flags(cli.micro).build()?;
    match cli.command {
        Command::Services => {
            // One row per service name: its versions and node count.
            let mut rows: std::collections::BTreeMap<String, (Vec<String>, usize)> = Default::default();
            for s in svc.registry().list_services().await? {
                let row = rows.entry(s.name).or_default();
                if !row.0.contains(&s.version) {
                    row.0.push(s.version);
                }
                row.1 += s.nodes.len();
            }
            if cli.output == Output::Json {
                let v: Vec<_> = rows
                    .into_iter()
                    .map(|(name, (versions, nodes))| serde_json::json!({ "name": name, "versions": versions, "nodes": nodes }))
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows: Vec<Vec<String>> = rows
                    .into_iter()
                    .map(|(name, (versions, nodes))| vec![name, versions.join(","), nodes.to_string()])
                    .collect();
                print_table(&["NAME", "VERSIONS", "NODES"], &rows);
            }
        }
        Command::Describe { service } => {
            let services = svc.registry().get_service(&service).await?;
            if cli.output == Output::Json {
                outln!("{}", serde_json::to_string_pretty(&services)?);
            } else {
                for s in services {
                    outln!("service  {}  version {}", s.name, s.version);
                    outln!();
                    let nodes: Vec<Vec<String>> = s
                        .nodes
                        .iter()
                        .map(|n| {
                            let mut md: Vec<String> = n.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                            md.sort();
                            vec![n.id.clone(), n.address.clone(), md.join(",")]
                        })
                        .collect();
                    print_table(&["NODE", "ADDRESS", "METADATA"], &nodes);
                    outln!();
                    let shape = |v: &Option<micro::core::Value>| v.as_ref().map(|v| v.kind.clone()).unwrap_or_default();
                    let endpoints: Vec<Vec<String>> = s
                        .endpoints
                        .iter()
                        .map(|e| vec![e.name.clone(), shape(&e.request), shape(&e.response)])
                        .collect();
                    print_table(&["ENDPOINT", "REQUEST", "RESPONSE"], &endpoints);
                    outln!();
                    // Endpoints whose records carry fields (services generated
                    // from a .proto): each one's shape, as go-micro prints it.
                    for e in &s.endpoints {
                        let has_fields =
                            |v: &Option<micro::core::Value>| v.as_ref().is_some_and(|v| !v.values.is_empty());
                        if has_fields(&e.request) || has_fields(&e.response) {
                            outln!("{}", endpoint_shape(e));
                        }
                    }
                }
            }
        }
        Command::Call { service, endpoint, request, address, timeout, metadata, stream } => {
            let mut md = HashMap::new();
            for kv in metadata {
                let Some((k, v)) = kv.split_once('=') else { bail!("--metadata {kv:?} is not key=value") };
                md.insert(k.to_string(), v.to_string());
            }
            if stream {
                let req = Request {
                    service,
                    endpoint,
                    content_type: micro::codec::JSON.into(),
                    body: Default::default(),
                    metadata: md,
                };
                let opts = CallOptions { timeout, address, retries: None };
                return call_stream(&svc, req, opts, &request, cli.output).await;
            }
            let req = Request {
                service,
                endpoint,
                content_type: micro::codec::JSON.into(),
                body: json_body(&request)?,
                metadata: md,
            };
            let resp = match svc.client().inner().call(req, CallOptions { timeout, address, retries: None }).await {
                Ok(r) => r,
                // A stream endpoint called as a plain call: say how to call it.
                Err(e) if e.detail.contains("is a stream endpoint") => {
                    bail!("{e}: add --stream to open a stream to it")
                }
                Err(e) => return Err(e.into()),
            };
            print_json(&resp.body, cli.output)?;
        }
        Command::Plugin(_) | Command::New { .. } | Command::Completion { .. } => {}
        Command::Subscribe { topic, queue, count } => {
            use micro::core::{BrokerHandler, Handled, SubscribeOptions};
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Message)>(1024);
            let handler: BrokerHandler = std::sync::Arc::new(move |t: &str, m| {
                let (tx, t) = (tx.clone(), t.to_string());
                Handled::later(async move {
                    let _ = tx.send((t, m)).await;
                    Ok(())
                })
            });
            svc.broker().connect().await?;
            let sub = svc.broker().subscribe(&topic, handler, SubscribeOptions { queue }).await?;
            errln(format_args!("subscribed to {topic} on the {} broker; Ctrl-C to stop", svc.broker().name()));
            let mut seen = 0u64;
            let stop = micro::shutdown_signal();
            tokio::pin!(stop);
            while count.is_none_or(|c| seen < c) {
                let (t, m) = tokio::select! {
                    r = &mut stop => { r?; break }
                    m = rx.recv() => match m { Some(m) => m, None => break },
                };
                seen += 1;
                let body: serde_json::Value = serde_json::from_slice(&m.body)
                    .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&m.body).into_owned()));
                if cli.output == Output::Json {
                    outln!("{}", serde_json::json!({ "topic": t, "header": m.header, "body": body }));
                } else {
                    outln!("{t}: {body}");
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
            // A broker that went down must not keep the tool from exiting.
            let limit = micro::STOP_STEP_LIMIT;
            match tokio::time::timeout(limit, async {
                sub.unsubscribe().await?;
                svc.broker().disconnect().await
            })
            .await
            {
                Ok(r) => r?,
                Err(_) => errln(format_args!(
                    "warning: the {} broker did not answer within {limit:?}; exiting anyway",
                    svc.broker().name()
                )),
            }
        }
        Command::Health { service, timeout } => {
            let services = svc.registry().get_service(&service).await?;
            // Each node is asked in the protocol it speaks (its `protocol`
            // metadata): a grpc node through a grpc client, whatever --client says.
            let mut by_protocol: HashMap<String, std::sync::Arc<dyn micro::core::Client>> = HashMap::new();
            let mut rows = Vec::new();
            for s in &services {
                for n in &s.nodes {
                    let req = Request {
                        service: service.clone(),
                        endpoint: "Debug.Health".into(),
                        content_type: micro::codec::JSON.into(),
                        body: bytes::Bytes::from_static(b"{}"),
                        metadata: HashMap::new(),
                    };
                    let opts =
                        CallOptions { timeout: Some(timeout), address: Some(n.address.clone()), retries: Some(0) };
                    let protocol =
                        n.metadata.get("protocol").cloned().unwrap_or_else(|| svc.client().inner().name().to_string());
                    let client = match by_protocol.get(&protocol) {
                        Some(c) => Ok(c.clone()),
                        None if protocol == svc.client().inner().name() => Ok(svc.client().inner().clone()),
                        None => Service::builder("micro-cli")
                            .flags(micro::Flags { client: Some(protocol.clone()), ..flags.clone() })
                            .build()
                            .map(|s| s.client().inner().clone()),
                    };
                    let result = match client {
                        Ok(c) => {
                            by_protocol.insert(protocol.clone(), c.clone());
                            c.call(req, opts).await
                        }
                        Err(e) => {
                            Err(micro::core::Error::internal("micro.health", format!("no {protocol} client: {e}")))
                        }
                    };
                    let (healthy, detail) = match result {
                        Ok(r) => {
                            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                            (v["status"] == "ok", v.to_string())
                        }
                        Err(e) => (false, e.detail),
                    };
                    rows.push(serde_json::json!({ "id": n.id, "address": n.address, "version": s.version, "healthy": healthy, "detail": detail }));
                }
            }
            let all = rows.iter().all(|r| r["healthy"] == true);
            if cli.output == Output::Json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
                        let status = if r["healthy"] == true { "healthy" } else { "unhealthy" };
                        vec![text("id"), text("address"), status.to_string(), text("detail")]
                    })
                    .collect();
                print_table(&["NODE", "ADDRESS", "STATUS", "DETAIL"], &cells);
            }
            if !all {
                bail!(
                    "{} of {} nodes of {service} are unhealthy",
                    rows.iter().filter(|r| r["healthy"] != true).count(),
                    rows.len()
                );
            }
        }
        Command::Api { address, namespace, max_body, timeout, cors, cors_origin, forward_headers, max_connections } => {
            if !address.contains(':') {
                bail!("--address {address:?} needs a port: HOST:PORT, e.g. 127.0.0.1:8080 or localhost:8080");
            }
            let listener = tokio::net::TcpListener::bind(&address).await.with_context(|| {
                format!("listening on {address} (HOST:PORT, e.g. 127.0.0.1:8080 or localhost:8080)")
            })?;
            let bound = listener.local_addr()?;
            // Bound to all interfaces: print where other hosts reach it
            // (go-micro's address rules, as a server registers).
            let reach = micro::addr::advertised(&bound.to_string());
            if cli.output == Output::Json {
                outln!("{}", serde_json::json!({ "listening": format!("http://{reach}"), "bound": bound.to_string() }));
            } else if reach != bound.to_string() {
                outln!("micro api listening on http://{reach} (bound to {bound})");
            } else {
                outln!("micro api listening on http://{bound}");
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let mut origins: Vec<String> =
                cors_origin.into_iter().map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect();
            if cors {
                origins.push("*".into());
            }
            let forward =
                forward_headers.into_iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
            let opts = api::ApiOptions { namespace, max_body, timeout, origins, forward, max_connections };
            api::serve(listener, svc.client().clone(), opts, async {
                if let Err(e) = micro::shutdown_signal().await {
                    tracing::warn!(error = %e, "cannot watch signals");
                    std::future::pending::<()>().await;
                }
            })
            .await?;
        }
        Command::Publish { topic, message } => {
            if svc.broker().name() == "memory" {
                // The in-process broker reaches nobody outside this process.
                bail!(
                    "the memory broker only reaches subscribers inside this process, so nothing would receive \
                     this: publish through a broker that other processes use (--broker http, or --broker nats \
                     --broker-address HOST:PORT)"
                );
            }
            let msg = Message::new(json_body(&message)?).with_header(headers::CONTENT_TYPE, micro::codec::JSON);
            svc.client().inner().publish(&topic, msg).await?;
            // Brokers may buffer (NATS does): flush before the process exits.
            svc.broker().disconnect().await?;
            if cli.output == Output::Json {
                outln!("{}", serde_json::json!({ "topic": topic, "published": true }));
            } else {
                outln!("published to {topic}");
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
        super::command().debug_assert();
    }

    #[test]
    fn table_columns_align_whatever_the_width_of_their_cells() {
        let rows = vec![
            vec!["greeter".to_string(), "1.0.0".to_string(), "1".to_string()],
            vec!["micro.http.broker".to_string(), "ff.http.broadcast".to_string(), "12".to_string()],
            vec!["é".to_string(), "".to_string(), "3".to_string()],
        ];
        let t = super::table(&["NAME", "VERSIONS", "NODES"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        // Every column starts at the same character offset on every line.
        let start =
            |line: &str, col: &str| line.chars().collect::<String>().find(col).map(|b| line[..b].chars().count());
        let versions = start(lines[0], "VERSIONS");
        let nodes = start(lines[0], "NODES");
        assert_eq!(start(lines[1], "1.0.0"), versions, "{t}");
        assert_eq!(start(lines[2], "ff.http.broadcast"), versions, "{t}");
        assert_eq!(start(lines[2], "12"), nodes, "{t}");
        assert_eq!(start(lines[3], "3"), nodes, "{t}");
        assert_eq!(lines[1], "greeter            1.0.0              1");
        assert!(t.lines().all(|l| !l.ends_with(' ')), "no trailing spaces: {t:?}");
    }
}
