//! The RPC benchmark: unary echo calls, closed loop, each contender's server
//! and client in separate processes (this binary, re-run as `rpc-server` and
//! `rpc-client`), at several caller counts and payload sizes, in rounds that
//! rotate the contenders' order so that drift hits all of them alike.

mod chart;
pub(crate) mod contenders;
mod mux;

use anyhow::{bail, Context as _};
use contenders::Contender;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one client process measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Sample {
    calls: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    client_peak_kib: u64,
    #[serde(default)]
    server_peak_kib: u64,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
}

/// The settings of a run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) contenders: Vec<Contender>,
    pub(crate) callers: Vec<usize>,
    pub(crate) payloads: Vec<usize>,
    pub(crate) warmup: Duration,
    pub(crate) window: Duration,
    pub(crate) rounds: usize,
    /// Quick mode: a fixed number of calls per measurement instead of a window.
    pub(crate) calls: Option<u64>,
    pub(crate) plugins: PathBuf,
    pub(crate) out: PathBuf,
}

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `rpc-server`: serves until stdin closes; the first stdout line is `ADDR <address>`.
pub(crate) async fn server(c: Contender, plugins: &Path) -> anyhow::Result<()> {
    let (addr, guard) = contenders::serve(c, plugins).await?;
    println!("ADDR {addr}");
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    })
    .await?;
    drop(guard);
    Ok(())
}

/// `rpc-client`: one measurement, printed as one JSON line.
#[allow(clippy::too_many_arguments)] // the command line's arguments, one to one
pub(crate) async fn client(
    c: Contender,
    addr: &str,
    callers: usize,
    payload: usize,
    warmup: Duration,
    window: Duration,
    calls: Option<u64>,
    plugins: &Path,
) -> anyhow::Result<()> {
    let (list, guard) = contenders::connect(c, addr, callers, payload, plugins).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let per_task = calls.map(|n| n.div_ceil(callers as u64).max(1));
    let start = Arc::new(tokio::sync::Barrier::new(callers + 1));
    let mut tasks = Vec::with_capacity(callers);
    for mut caller in list {
        let (stop, start) = (stop.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            // Warm-up: connections made, pools and caches filled.
            let warm_end = Instant::now() + warmup;
            let mut warm = 0;
            while Instant::now() < warm_end || warm < 2 {
                caller.call().await?;
                warm += 1;
            }
            start.wait().await;
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 14);
            loop {
                if per_task.map_or(stop.load(Ordering::Relaxed), |n| lat.len() as u64 >= n) {
                    break;
                }
                let t0 = Instant::now();
                caller.call().await?;
                lat.push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
            }
            anyhow::Ok(lat)
        }));
    }
    start.wait().await;
    let t0 = Instant::now();
    if calls.is_none() {
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut all = Vec::new();
    let mut done = Duration::ZERO;
    for t in tasks {
        all.extend(t.await??);
        done = done.max(t0.elapsed());
    }
    // Windowed runs stop at the window; calls still in flight then finish but count.
    let seconds = if calls.is_some() { done.as_secs_f64() } else { t0.elapsed().as_secs_f64() };
    drop(guard);
    anyhow::ensure!(!all.is_empty(), "no calls completed");
    all.sort_unstable();
    let q = |p: f64| f64::from(all[((all.len() - 1) as f64 * p).round() as usize]) / 1e3;
    let s = Sample {
        calls: all.len() as u64,
        seconds,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        client_peak_kib: peak_kib("self"),
        server_peak_kib: 0,
    };
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

/// A running `rpc-server` process.
pub(crate) struct ServerProc {
    child: std::process::Child,
    pub(crate) addr: String,
}

impl ServerProc {
    /// Starts `c`'s server; micro ones register in the `local` registry at
    /// `registry` (a directory of this server's alone, so that no node of
    /// an earlier server is ever selected).
    pub(crate) fn start(me: &Path, c: Contender, plugins: &Path, registry: &Path) -> anyhow::Result<ServerProc> {
        Self::start_with(me, c, plugins, registry, &[])
    }

    /// As `start`, with extra environment variables.
    pub(crate) fn start_with(
        me: &Path,
        c: Contender,
        plugins: &Path,
        registry: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ServerProc> {
        let mut child = Command::new(me)
            .args(["rpc-server", "--contender", c.name(), "--plugins"])
            .arg(plugins)
            .env("MICRO_LOG_LEVEL", "error")
            .env(contenders::REGISTRY_ENV, registry)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("server stdout")?;
        // Bounded: a server that never says where it listens is killed.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                bail!("{} server did not start within 30 s", c.name());
            }
        };
        let Some(addr) = line.trim().strip_prefix("ADDR ") else {
            let _ = child.kill();
            bail!("{} server failed to start: {line:?}", c.name());
        };
        Ok(ServerProc { addr: addr.to_string(), child })
    }

    fn peak_kib(&self) -> u64 {
        peak_kib(&self.child.id().to_string())
    }

    pub(crate) fn stop(mut self) {
        drop(self.child.stdin.take());
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Key = (Contender, usize, usize); // contender, payload, callers

/// Runs the whole plan and prints the report; writes charts and raw results under `plan.out`.
pub(crate) fn run(plan: &Plan) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let contenders: Vec<Contender> = plan
        .contenders
        .iter()
        .copied()
        .filter(|c| match c.plugin() {
            Some(p) if !plan.plugins.join(p).is_file() => {
                eprintln!("skipping {}: no {}", c.name(), plan.plugins.join(p).display());
                false
            }
            _ => true,
        })
        .collect();
    let mut results: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let key_name = |k: &Key| format!("{}/{}/{}", k.0.name(), k.1, k.2);
    let total = plan.rounds * contenders.len() * plan.payloads.len() * plan.callers.len();
    let mut done = 0;
    let t_start = Instant::now();
    for round in 0..plan.rounds {
        let mut order = contenders.clone();
        let n = order.len().max(1);
        order.rotate_left(round % n);
        for c in order {
            let registry = fresh_registry(&plan.out, &format!("{}-{round}", c.name()))?;
            let server = ServerProc::start(&me, c, &plan.plugins, &registry)?;
            for &payload in &plan.payloads {
                for &callers in &plan.callers {
                    let mut cmd = Command::new(&me);
                    cmd.args(["rpc-client", "--contender", c.name(), "--addr", &server.addr])
                        .args(["--callers", &callers.to_string(), "--payload", &payload.to_string()])
                        .args(["--warmup", &plan.warmup.as_secs_f64().to_string()])
                        .args(["--seconds", &plan.window.as_secs_f64().to_string()])
                        .arg("--plugins")
                        .arg(&plan.plugins)
                        .env("MICRO_LOG_LEVEL", "error")
                        .env(contenders::REGISTRY_ENV, &registry);
                    if let Some(n) = plan.calls {
                        cmd.args(["--calls", &n.to_string()]);
                    }
                    let o = cmd.output()?;
                    if !o.status.success() {
                        server.stop();
                        bail!(
                            "{} client ({callers} callers, {payload} B) failed: {}",
                            c.name(),
                            String::from_utf8_lossy(&o.stderr)
                        );
                    }
                    let text = String::from_utf8_lossy(&o.stdout);
                    let mut s: Sample = serde_json::from_str(text.trim()).context("client output")?;
                    s.server_peak_kib = server.peak_kib();
                    done += 1;
                    eprintln!(
                        "[{done}/{total} {:>4.0}s] round {} {:<12} {payload:>5} B {callers:>4} callers: {:>9.0} calls/s  p99 {:>8.0} µs",
                        t_start.elapsed().as_secs_f64(),
                        round + 1,
                        c.name(),
                        s.rate(),
                        s.p99_us
                    );
                    results.entry(key_name(&(c, payload, callers))).or_default().push(s);
                }
            }
            server.stop();
        }
    }
    std::fs::create_dir_all(&plan.out)?;
    std::fs::write(plan.out.join("rpc.json"), serde_json::to_string_pretty(&results)?)?;
    let summary = summarize(&contenders, plan, &results);
    print_report(&contenders, plan, &summary);
    for &payload in &plan.payloads {
        let path = plan.out.join(format!("rpc-{payload}.svg"));
        chart::draw(&path, payload, &contenders, &plan.callers, &summary)?;
        println!("\nchart: {}", path.display());
    }
    Ok(())
}

/// An empty `local` registry directory under `out`, private to this user
/// (the registry refuses a directory others can write).
pub(crate) fn fresh_registry(out: &Path, name: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let root = out.join("registry");
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
    let dir = root.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// The median sample of each measurement, and its spread.
pub(crate) struct Summary {
    pub(crate) rate: f64,
    spread: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    server_kib: u64,
    client_kib: u64,
}

fn summarize(contenders: &[Contender], plan: &Plan, results: &BTreeMap<String, Vec<Sample>>) -> BTreeMap<Key, Summary> {
    let mut out = BTreeMap::new();
    for &c in contenders {
        for &payload in &plan.payloads {
            for &callers in &plan.callers {
                let Some(samples) = results.get(&format!("{}/{payload}/{callers}", c.name())) else { continue };
                let mut s = samples.clone();
                s.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
                let med = &s[s.len() / 2];
                let spread = (s[s.len() - 1].rate() - s[0].rate()) / med.rate() / 2.0 * 100.0;
                out.insert(
                    (c, payload, callers),
                    Summary {
                        rate: med.rate(),
                        spread,
                        p50: med.p50_us,
                        p99: med.p99_us,
                        p999: med.p999_us,
                        server_kib: s.iter().map(|x| x.server_peak_kib).max().unwrap_or(0),
                        client_kib: s.iter().map(|x| x.client_peak_kib).max().unwrap_or(0),
                    },
                );
            }
        }
    }
    out
}

fn print_report(contenders: &[Contender], plan: &Plan, summary: &BTreeMap<Key, Summary>) {
    let how = match plan.calls {
        Some(n) => format!("{n} calls per measurement (quick mode)"),
        None => format!(
            "{:.1} s warm-up, {:.1} s window, median of {} rounds",
            plan.warmup.as_secs_f64(),
            plan.window.as_secs_f64(),
            plan.rounds
        ),
    };
    for &payload in &plan.payloads {
        println!("\n### {payload}-byte payload ({how})\n");
        println!("| contender | callers | calls/s | spread | p50 | p99 | p99.9 | server peak RSS | client peak RSS | / ceiling |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &c in contenders {
            for &callers in &plan.callers {
                let Some(s) = summary.get(&(c, payload, callers)) else { continue };
                let ceiling = summary.get(&(Contender::Ceiling, payload, callers)).map(|x| x.rate);
                println!(
                    "| {} | {callers} | {} | ±{:.1}% | {:.0} µs | {:.0} µs | {:.0} µs | {:.1} MiB | {:.1} MiB | {} |",
                    c.name(),
                    thousands(s.rate),
                    s.spread,
                    s.p50,
                    s.p99,
                    s.p999,
                    s.server_kib as f64 / 1024.0,
                    s.client_kib as f64 / 1024.0,
                    ceiling.map(|r| format!("{:.2}", s.rate / r)).unwrap_or_default()
                );
            }
        }
        println!("\nRatios of calls/s (and of p99 latency, lower is better for micro) at {payload} B:\n");
        let pairs = [
            (Contender::Micro, Contender::Ceiling),
            (Contender::Micro, Contender::CeilingMux),
            (Contender::Micro, Contender::Tarpc),
            (Contender::MicroDirect, Contender::Tarpc),
            (Contender::MicroProto, Contender::Tarpc),
            (Contender::MicroGrpc, Contender::Tonic),
            (Contender::MicroGrpc, Contender::Volo),
            (Contender::MicroTcpx, Contender::Micro),
            (Contender::MicroBrpc, Contender::Micro),
            (Contender::MicroBrpc, Contender::MicroBrpcIn),
        ];
        print!("| ratio |");
        for &callers in &plan.callers {
            print!(" {callers} callers |");
        }
        println!();
        println!("|---|{}", "---:|".repeat(plan.callers.len()));
        for (a, b) in pairs {
            let mut row = format!("| {} / {} |", a.name(), b.name());
            let mut any = false;
            for &callers in &plan.callers {
                match (summary.get(&(a, payload, callers)), summary.get(&(b, payload, callers))) {
                    (Some(x), Some(y)) => {
                        any = true;
                        let p99 = if matches!(b, Contender::Ceiling | Contender::CeilingMux) {
                            String::new()
                        } else {
                            format!(" (p99 {:.2})", x.p99 / y.p99)
                        };
                        row.push_str(&format!(" {:.2}{p99} |", x.rate / y.rate));
                    }
                    _ => row.push_str(" |"),
                }
            }
            if any {
                println!("{row}");
            }
        }
    }
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
