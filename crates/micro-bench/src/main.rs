//! `micro-bench`: measures what the README's targets promise, in release
//! mode, and prints a Markdown table for BENCHMARKS.md.
//!
//! * `plugin-load`: time to load, verify and init one plugin, each sample
//!   in a fresh process (loading is cached within a process).
//! * `boundary`: calls per second and latency of unary calls through a
//!   built-in component and through a plugin one (the same transport, or a
//!   client wrapping the built-in one), in one run, alternating, at several
//!   caller counts.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use micro::core::{CallOptions, Error};
use micro::{Flags, Service};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(version, about = "micro benchmarks: plugin load time and the plugin boundary's cost per call")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time to load, verify and init a plugin (fresh process per sample)
    #[command(after_help = "Example:\n  micro-bench plugin-load --plugin target/bench/tcpx.so --runs 50")]
    PluginLoad {
        /// The plugin library
        #[arg(long)]
        plugin: PathBuf,
        /// Samples
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// One sample of plugin-load (used by plugin-load)
    #[command(hide = true)]
    PluginLoadOnce {
        #[arg(long)]
        plugin: PathBuf,
    },
    /// Calls/s through a built-in component and a plugin one (a transport or a client)
    #[command(
        after_help = "Examples:\n  micro-bench boundary --kind transport --plugin target/bench/tcpx.so --name tcpx\n  micro-bench boundary --kind client --plugin target/bench/brpc.so --name brpc"
    )]
    Boundary {
        /// Which component the plugin replaces
        #[arg(long, value_parser = ["transport", "client"], default_value = "transport")]
        kind: String,
        /// The plugin library
        #[arg(long)]
        plugin: PathBuf,
        /// The plugin component's name
        #[arg(long, default_value = "tcpx")]
        name: String,
        /// Concurrent callers, comma-separated
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        callers: Vec<usize>,
        /// Measuring window per contender and caller count
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Rounds (contenders alternate within a round); the median is reported
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Payload bytes
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Measure only one contender (for profiling)
        #[arg(long, value_parser = ["builtin", "plugin"])]
        only: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    micro::run_main(run())
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::PluginLoadOnce { plugin } => {
            let t0 = Instant::now();
            let cfg = micro::plugin::load(&plugin.display().to_string(), Default::default())?;
            let mut catalog = micro::catalog::builtin();
            micro::plugin::init(&cfg, &mut catalog)?;
            println!("{}", t0.elapsed().as_nanos());
        }
        Cmd::PluginLoad { plugin, runs } => {
            let me = std::env::current_exe()?;
            let mut samples = Vec::with_capacity(runs);
            for _ in 0..runs {
                let o = Command::new(&me).arg("plugin-load-once").arg("--plugin").arg(&plugin).output()?;
                if !o.status.success() {
                    bail!("plugin-load-once failed: {}", String::from_utf8_lossy(&o.stderr));
                }
                let ns: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().context("bad sample")?;
                samples.push(Duration::from_nanos(ns));
            }
            samples.sort();
            let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
            println!("| plugin | runs | min | median | p90 | max |");
            println!("|---|---:|---:|---:|---:|---:|");
            println!(
                "| {} | {runs} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
                plugin.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                ms(samples[0]),
                ms(q(0.5)),
                ms(q(0.9)),
                ms(samples[samples.len() - 1])
            );
        }
        Cmd::Boundary { kind, plugin, name, callers, seconds, rounds, payload, only } => {
            let window = Duration::from_secs_f64(seconds);
            let builtin = if kind == "transport" { "tcp" } else { "mucp" };
            let contenders = [("built in", builtin.to_string()), ("plugin", name.clone())];
            let mut results: Vec<(String, usize, Vec<Sample>)> = Vec::new();
            for &n in &callers {
                for (label, t) in &contenders {
                    results.push((format!("{label}: {t}"), n, Vec::new()));
                }
            }
            for round in 0..rounds {
                for &n in &callers {
                    // Alternate which contender goes first, so drift hits both.
                    let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
                    for i in order {
                        if only.as_deref().is_some_and(|o| (o == "builtin") != (i == 0)) {
                            continue;
                        }
                        let (_, t) = &contenders[i];
                        let s = measure(&plugin, &kind, t, n, window, payload).await?;
                        let slot = results
                            .iter_mut()
                            .find(|r| r.0.ends_with(&format!(": {t}")) && r.1 == n)
                            .context("slot")?;
                        slot.2.push(s);
                    }
                }
            }
            println!("| {kind} | callers | calls/s (median of {rounds}) | spread | p50 | p99 |");
            println!("|---|---:|---:|---:|---:|---:|");
            for (label, n, mut s) in results {
                if s.is_empty() {
                    continue;
                }
                s.sort_by(|a, b| a.rate.total_cmp(&b.rate));
                let med = &s[s.len() / 2];
                let spread = (s[s.len() - 1].rate - s[0].rate) / med.rate * 100.0;
                println!(
                    "| {label} | {n} | {:.0} | ±{:.1}% | {:.0} µs | {:.0} µs |",
                    med.rate,
                    spread / 2.0,
                    us(med.p50),
                    us(med.p99)
                );
            }
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Sample {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// One closed-loop run: a server and `callers` callers, with component
/// `kind` (transport or client) named `name`.
async fn measure(
    plugin: &std::path::Path,
    kind: &str,
    name: &str,
    callers: usize,
    window: Duration,
    payload: usize,
) -> anyhow::Result<Sample> {
    let world = format!("bench-{name}-{callers}-{}", std::process::id());
    let (transport, client) =
        if kind == "transport" { (Some(name.to_string()), None) } else { (None, Some(name.to_string())) };
    let flags = Flags {
        plugin: vec![plugin.display().to_string()],
        transport,
        client,
        registry: Some("memory".into()),
        registry_address: Some(world.clone()),
        client_pool_size: Some(callers.max(1)),
        ..Flags::default()
    };
    let server = Service::builder("bench").flags(flags.clone()).build()?;
    server.handle("Bench.Echo", |s: String| async move { Ok::<_, Error>(s) })?;
    server.start().await?;
    let addr = server.server().service().nodes.first().map(|n| n.address.clone()).context("no address")?;
    let caller = Service::builder("bench-client").flags(flags).build()?;
    let body = "x".repeat(payload);
    // Warm up connections on every caller.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let client = caller.client().clone();
        let (stop, body, addr) = (stop.clone(), body.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let opts = CallOptions { address: Some(addr), ..Default::default() };
            let mut lat = Vec::with_capacity(1 << 16);
            let t_end = Instant::now() + Duration::from_millis(300);
            while Instant::now() < t_end {
                client.call_with::<_, String>("bench", "Bench.Echo", &body, Default::default(), opts.clone()).await?;
            }
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                client.call_with::<_, String>("bench", "Bench.Echo", &body, Default::default(), opts.clone()).await?;
                lat.push(t0.elapsed());
            }
            Ok::<_, Error>(lat)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300) + window).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    server.stop().await?;
    all.sort();
    if all.is_empty() {
        bail!("no calls completed");
    }
    let q = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
    Ok(Sample { rate: all.len() as f64 / window.as_secs_f64(), p50: q(0.5), p99: q(0.99) })
}
