//! `hol`: head-of-line blocking and CPU-bound scaling, micro against tarpc.
//!
//! * **Pings beside a spinning handler.** One client process calls
//!   `Work.Spin` (a handler that computes for 100 ms without awaiting) back
//!   to back, and `Work.Ping` (answers at once) every 2 ms, through the same
//!   client (so the same connections). Reported: the Pings' median, p99 and
//!   the share over 5 ms. A server that runs a connection's calls on one
//!   task holds every Ping behind the spin.
//! * **CPU-bound throughput from one client process.** 8 callers call
//!   `Work.Spin` for 10 ms each, back to back, against a server limited to
//!   1 and then 2 worker threads (`TOKIO_WORKER_THREADS`), over one client
//!   connection (`MICRO_CLIENT_CONNECTIONS=1`; tarpc has one anyway):
//!   spins per second should scale with the server's threads, not with the
//!   number of connections the client has.
//!
//! Servers are the `rpc` benchmark's (`rpc-server`), clients run as
//! `hol-client`; micro calls by service name through the `local` registry.

use crate::rpc::contenders::{self, Contender, EchoClient};
use crate::rpc::{fresh_registry, ServerProc};
use anyhow::Context as _;
use micro::core::CallOptions;
use micro::{Service, TypedClient};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long `Work.Spin` computes in the Ping probe, and in the scaling one.
const PROBE_SPIN_MS: u64 = 100;
const SCALE_SPIN_MS: u64 = 10;
/// Callers of the scaling measurement.
const SCALE_CALLERS: usize = 8;
/// Pause between Pings.
const PING_EVERY: Duration = Duration::from_millis(2);
/// A Ping slower than this was held up.
const HELD_UP: Duration = Duration::from_millis(5);

/// What one `hol-client` measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Sample {
    pings: u64,
    p50_us: f64,
    p99_us: f64,
    held_up_pct: f64,
    spins: u64,
    spins_per_s: f64,
}

/// The two measurements a client can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Pings beside a spinning handler.
    Ping,
    /// CPU-bound spins from several callers.
    Scale,
}

/// Calls of the probe.
#[async_trait::async_trait]
trait Worker: Send + Sync {
    async fn spin(&self, ms: u64) -> anyhow::Result<()>;
    async fn ping(&self, n: u64) -> anyhow::Result<()>;
}

struct MicroWorker {
    client: TypedClient,
    opts: CallOptions,
}

#[async_trait::async_trait]
impl Worker for MicroWorker {
    async fn spin(&self, ms: u64) -> anyhow::Result<()> {
        let got: u64 = self.client.call_with("bench", "Work.Spin", &ms, HashMap::new(), self.opts.clone()).await?;
        anyhow::ensure!(got == ms, "spin answered {got}");
        Ok(())
    }
    async fn ping(&self, n: u64) -> anyhow::Result<()> {
        let got: u64 = self.client.call_with("bench", "Work.Ping", &n, HashMap::new(), self.opts.clone()).await?;
        anyhow::ensure!(got == n, "ping answered {got}");
        Ok(())
    }
}

struct TarpcWorker(EchoClient);

#[async_trait::async_trait]
impl Worker for TarpcWorker {
    async fn spin(&self, ms: u64) -> anyhow::Result<()> {
        let got = self.0.spin(tarpc::context::current(), ms).await?;
        anyhow::ensure!(got == ms, "spin answered {got}");
        Ok(())
    }
    async fn ping(&self, n: u64) -> anyhow::Result<()> {
        let got = self.0.ping(tarpc::context::current(), n).await?;
        anyhow::ensure!(got == n, "ping answered {got}");
        Ok(())
    }
}

async fn worker(c: Contender, addr: &str, plugins: &Path) -> anyhow::Result<(Arc<dyn Worker>, Option<Service>)> {
    match c {
        Contender::Tarpc => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let client = EchoClient::new(tarpc::client::Config::default(), contenders::tarpc_transport(s)).spawn();
            Ok((Arc::new(TarpcWorker(client)), None))
        }
        Contender::Micro | Contender::MicroDirect => {
            let svc = Service::builder("bench-client").flags(contenders::micro_flags(c, plugins, 0, false)?).build()?;
            let by_name = c == Contender::Micro;
            let opts = CallOptions {
                address: (!by_name).then(|| addr.to_string()),
                timeout: Some(Duration::from_secs(30)),
                ..Default::default()
            };
            Ok((Arc::new(MicroWorker { client: svc.client().clone(), opts }), Some(svc)))
        }
        other => anyhow::bail!("hol measures micro, micro-direct and tarpc, not {}", other.name()),
    }
}

/// `hol-client`: one measurement, printed as one JSON line.
pub(crate) async fn client(c: Contender, addr: &str, mode: Mode, seconds: f64, plugins: &Path) -> anyhow::Result<()> {
    let (w, _svc) = worker(c, addr, plugins).await?;
    let window = Duration::from_secs_f64(seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let mut s = Sample::default();
    match mode {
        Mode::Ping => {
            let spinner = {
                let (w, stop) = (w.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        w.spin(PROBE_SPIN_MS).await?;
                        n += 1;
                    }
                    anyhow::Ok(n)
                })
            };
            // Warm-up: connections made, and a few spins seen by the server.
            let warm = Instant::now();
            let mut n = 0;
            while warm.elapsed() < Duration::from_millis(500) {
                w.ping(n).await?;
                n += 1;
                tokio::time::sleep(PING_EVERY).await;
            }
            let mut lat = Vec::new();
            let start = Instant::now();
            while start.elapsed() < window {
                let t = Instant::now();
                w.ping(n).await?;
                lat.push(t.elapsed());
                n += 1;
                tokio::time::sleep(PING_EVERY).await;
            }
            stop.store(true, Ordering::Relaxed);
            s.spins = spinner.await??;
            anyhow::ensure!(!lat.is_empty(), "no ping completed");
            lat.sort_unstable();
            let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6;
            s.pings = lat.len() as u64;
            s.p50_us = q(0.5);
            s.p99_us = q(0.99);
            s.held_up_pct = lat.iter().filter(|&&d| d > HELD_UP).count() as f64 * 100.0 / lat.len() as f64;
        }
        Mode::Scale => {
            let done = Arc::new(AtomicU64::new(0));
            let counting = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for _ in 0..SCALE_CALLERS {
                let (w, stop, done, counting) = (w.clone(), stop.clone(), done.clone(), counting.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        w.spin(SCALE_SPIN_MS).await?;
                        if counting.load(Ordering::Relaxed) {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    anyhow::Ok(())
                }));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            counting.store(true, Ordering::Relaxed);
            let start = Instant::now();
            tokio::time::sleep(window).await;
            s.spins = done.load(Ordering::Relaxed);
            s.spins_per_s = s.spins as f64 / start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.await??;
            }
        }
    }
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

/// Runs both measurements for each contender, `rounds` times (the order
/// rotating), and prints the report.
pub(crate) fn run(
    contenders: &[Contender],
    seconds: f64,
    rounds: usize,
    plugins: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let mut pings: HashMap<Contender, Vec<Sample>> = HashMap::new();
    let mut scale: HashMap<(Contender, usize), Vec<Sample>> = HashMap::new();
    let measure = |c: Contender, threads: Option<usize>, mode: Mode, round: usize| -> anyhow::Result<Sample> {
        let tag = format!("hol-{}-{round}-{}", c.name(), threads.unwrap_or(0));
        let registry = fresh_registry(out, &tag)?;
        let t = threads.map(|t| t.to_string());
        let env: Vec<(&str, &str)> = t.as_deref().map(|t| ("TOKIO_WORKER_THREADS", t)).into_iter().collect();
        let server = ServerProc::start_with(&me, c, plugins, &registry, &env)?;
        let mode_name = match mode {
            Mode::Ping => "ping",
            Mode::Scale => "scale",
        };
        let o = Command::new(&me)
            .args(["hol-client", "--contender", c.name(), "--addr", &server.addr, "--mode", mode_name])
            .args(["--seconds", &seconds.to_string()])
            .arg("--plugins")
            .arg(plugins)
            .env("MICRO_LOG_LEVEL", "error")
            .env("MICRO_CLIENT_CONNECTIONS", "1")
            .env(contenders::REGISTRY_ENV, &registry)
            .output();
        server.stop();
        let o = o?;
        anyhow::ensure!(o.status.success(), "{} hol-client failed: {}", c.name(), String::from_utf8_lossy(&o.stderr));
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).context("hol-client output")
    };
    for round in 0..rounds {
        let mut order = contenders.to_vec();
        let n = order.len().max(1);
        order.rotate_left(round % n);
        for &c in &order {
            let s = measure(c, None, Mode::Ping, round)?;
            eprintln!(
                "round {} {:<12} pings beside a spin: p50 {:>7.0} µs  p99 {:>7.0} µs  over 5 ms {:>5.1}%",
                round + 1,
                c.name(),
                s.p50_us,
                s.p99_us,
                s.held_up_pct
            );
            pings.entry(c).or_default().push(s);
            for threads in [1, 2] {
                let s = measure(c, Some(threads), Mode::Scale, round)?;
                eprintln!(
                    "round {} {:<12} {threads} server thread(s): {:>6.1} spins/s of {SCALE_SPIN_MS} ms",
                    round + 1,
                    c.name(),
                    s.spins_per_s
                );
                scale.entry((c, threads)).or_default().push(s);
            }
        }
    }
    let median = |v: &[Sample], key: fn(&Sample) -> f64| {
        let mut x: Vec<f64> = v.iter().map(key).collect();
        x.sort_by(f64::total_cmp);
        (x[x.len() / 2], x[0], x[x.len() - 1])
    };
    println!("\n### Pings beside a handler that computes for {PROBE_SPIN_MS} ms (one client process, median of {rounds}, range in brackets)\n");
    println!("| contender | pings | p50 | p99 | over 5 ms |");
    println!("|---|---:|---:|---:|---:|");
    for c in contenders {
        let v = &pings[c];
        let (p50, ..) = median(v, |s| s.p50_us);
        let (p99, ..) = median(v, |s| s.p99_us);
        let (held, lo, hi) = median(v, |s| s.held_up_pct);
        let n = v.iter().map(|s| s.pings).sum::<u64>() / v.len() as u64;
        println!("| {} | {n} | {p50:.0} µs | {p99:.0} µs | {held:.1}% [{lo:.1}–{hi:.1}] |", c.name());
    }
    println!("\n### {SCALE_SPIN_MS} ms CPU-bound calls from one client process ({SCALE_CALLERS} callers), spins/s by server worker threads\n");
    println!("| contender | 1 thread | 2 threads | 2 / 1 |");
    println!("|---|---:|---:|---:|");
    for c in contenders {
        let (one, ..) = median(&scale[&(*c, 1)], |s| s.spins_per_s);
        let (two, ..) = median(&scale[&(*c, 2)], |s| s.spins_per_s);
        println!("| {} | {one:.1} | {two:.1} | {:.2} |", c.name(), two / one);
    }
    Ok(())
}
