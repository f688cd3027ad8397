//! The RPC benchmark: unary echo calls, closed loop, each contender's server
//! and client in separate processes (this binary, re-run as `rpc-server` and
//! `rpc-client`), at several caller counts and payload sizes, in rounds that
//! rotate the contenders' order so that drift hits all of them alike. A
//! plugin contender and the same component built in run side by side (both
//! servers up, the two clients back to back at each caller count), and
//! their ratio is the median of the rounds' ratios: on a shared machine the
//! throughput drifts more between minutes than between seconds.

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
    let units = units(&contenders);
    let total = plan.rounds * contenders.len() * plan.payloads.len() * plan.callers.len();
    let mut done = 0;
    let t_start = Instant::now();
    for round in 0..plan.rounds {
        let mut order = units.clone();
        let n = order.len().max(1);
        order.rotate_left(round % n);
        for mut unit in order {
            // The two sides of a pair run back to back, the first of them
            // alternating by round, so that both see the machine alike.
            if round % 2 == 1 {
                unit.reverse();
            }
            // Registries first, so that a failure to make one leaves no server running.
            let registries = unit
                .iter()
                .map(|c| fresh_registry(&plan.out, &format!("{}-{round}", c.name())))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut servers = Vec::with_capacity(unit.len());
            for (&c, registry) in unit.iter().zip(registries) {
                match ServerProc::start(&me, c, &plan.plugins, &registry) {
                    Ok(s) => servers.push((c, s, registry)),
                    Err(e) => {
                        stop_all(servers);
                        return Err(e);
                    }
                }
            }
            for &payload in &plan.payloads {
                for &callers in &plan.callers {
                    for (c, server, registry) in &servers {
                        let measured = measure(&me, plan, *c, server, registry, callers, payload);
                        let s = match measured {
                            Ok(s) => s,
                            Err(e) => {
                                stop_all(servers);
                                return Err(e);
                            }
                        };
                        done += 1;
                        eprintln!(
                            "[{done}/{total} {:>4.0}s] round {} {:<12} {payload:>5} B {callers:>4} callers: {:>9.0} calls/s  p99 {:>8.0} µs",
                            t_start.elapsed().as_secs_f64(),
                            round + 1,
                            c.name(),
                            s.rate(),
                            s.p99_us
                        );
                        results.entry(result_key(*c, payload, callers)).or_default().push(s);
                    }
                }
            }
            stop_all(servers);
        }
    }
    std::fs::create_dir_all(&plan.out)?;
    std::fs::write(plan.out.join("rpc.json"), serde_json::to_string_pretty(&results)?)?;
    let summary = summarize(&contenders, plan, &results);
    print_report(&contenders, plan, &summary, &results);
    for &payload in &plan.payloads {
        let path = plan.out.join(format!("rpc-{payload}.svg"));
        chart::draw(&path, payload, &contenders, &plan.callers, &summary)?;
        println!("\nchart: {}", path.display());
    }
    Ok(())
}

/// Each plugin contender and the same component built in: the pairs that
/// issue 16's targets compare. When both run, they run side by side.
const PAIRS: [(Contender, Contender); 2] =
    [(Contender::MicroTcpx, Contender::Micro), (Contender::MicroBrpc, Contender::MicroBrpcIn)];

/// The contenders in units that run together: a pair of [`PAIRS`] whose
/// sides both run, or one contender alone.
fn units(contenders: &[Contender]) -> Vec<Vec<Contender>> {
    let mut units: Vec<Vec<Contender>> = Vec::new();
    for &c in contenders {
        if units.iter().any(|u| u.contains(&c)) {
            continue;
        }
        let partner = PAIRS
            .iter()
            .find_map(|&(a, b)| {
                if c == a {
                    Some(b)
                } else if c == b {
                    Some(a)
                } else {
                    None
                }
            })
            .filter(|p| contenders.contains(p));
        units.push(std::iter::once(c).chain(partner).collect());
    }
    units
}

/// The key of a measurement's samples in the results (and in `rpc.json`).
fn result_key(c: Contender, payload: usize, callers: usize) -> String {
    format!("{}/{payload}/{callers}", c.name())
}

/// Stops a unit's servers.
fn stop_all(servers: Vec<(Contender, ServerProc, PathBuf)>) {
    for (_, server, _) in servers {
        server.stop();
    }
}

/// One measurement: a client process of `c` against its running server.
fn measure(
    me: &Path,
    plan: &Plan,
    c: Contender,
    server: &ServerProc,
    registry: &Path,
    callers: usize,
    payload: usize,
) -> anyhow::Result<Sample> {
    let mut cmd = Command::new(me);
    cmd.args(["rpc-client", "--contender", c.name(), "--addr", &server.addr])
        .args(["--callers", &callers.to_string(), "--payload", &payload.to_string()])
        .args(["--warmup", &plan.warmup.as_secs_f64().to_string()])
        .args(["--seconds", &plan.window.as_secs_f64().to_string()])
        .arg("--plugins")
        .arg(&plan.plugins)
        .env("MICRO_LOG_LEVEL", "error")
        .env(contenders::REGISTRY_ENV, registry);
    if let Some(n) = plan.calls {
        cmd.args(["--calls", &n.to_string()]);
    }
    let o = cmd.output()?;
    if !o.status.success() {
        bail!("{} client ({callers} callers, {payload} B) failed: {}", c.name(), String::from_utf8_lossy(&o.stderr));
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let mut s: Sample = serde_json::from_str(text.trim()).context("client output")?;
    s.server_peak_kib = server.peak_kib();
    Ok(s)
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
                let Some(samples) = results.get(&result_key(c, payload, callers)) else { continue };
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

/// A pair's ratio round by round: `a`'s calls/s and p99 over `b`'s, from
/// the two measurements each round made back to back; `None` unless both
/// ran side by side (in one unit of [`units`]), so that sample `i` of each
/// side is round `i`'s.
fn paired(
    contenders: &[Contender],
    results: &BTreeMap<String, Vec<Sample>>,
    a: Contender,
    b: Contender,
    payload: usize,
    callers: usize,
) -> Option<Paired> {
    let side_by_side = units(contenders).iter().any(|u| u.contains(&a) && u.contains(&b));
    let (x, y) = (results.get(&result_key(a, payload, callers))?, results.get(&result_key(b, payload, callers))?);
    if !side_by_side || x.is_empty() || x.len() != y.len() {
        return None;
    }
    let rates: Vec<f64> = x.iter().zip(y).map(|(x, y)| x.rate() / y.rate()).collect();
    let p99s: Vec<f64> = x.iter().zip(y).map(|(x, y)| x.p99_us / y.p99_us).collect();
    Some(Paired { rate: median(&rates), p99: median(&p99s), rates })
}

/// A pair measured side by side: its ratios round by round and their
/// medians (see [`paired`]).
struct Paired {
    /// The median of the rounds' ratios of calls/s.
    rate: f64,
    /// The median of the rounds' ratios of p99 latency.
    p99: f64,
    /// Each round's ratio of calls/s, in round order.
    rates: Vec<f64>,
}

/// The median (the mean of the middle two of an even count); `v` is not empty.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// The report: a table of every measurement (medians of the rounds), then
/// the ratios between contenders, for each payload size.
fn print_report(
    contenders: &[Contender],
    plan: &Plan,
    summary: &BTreeMap<Key, Summary>,
    results: &BTreeMap<String, Vec<Sample>>,
) {
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
                if let Some(p) = paired(contenders, results, a, b, payload, callers) {
                    any = true;
                    row.push_str(&format!(" {:.2} (p99 {:.2}) |", p.rate, p.p99));
                    continue;
                }
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
        print_pairs(contenders, plan, payload, summary, results);
    }
}

/// The side-by-side pairs round by round, under the ratio table.
fn print_pairs(
    contenders: &[Contender],
    plan: &Plan,
    payload: usize,
    summary: &BTreeMap<Key, Summary>,
    results: &BTreeMap<String, Vec<Sample>>,
) {
    let mut header = false;
    for (a, b) in PAIRS {
        for &callers in &plan.callers {
            let Some(p) = paired(contenders, results, a, b, payload, callers) else { continue };
            if !header {
                header = true;
                println!(
                    "\nSide by side: each round measured a plugin contender and its built-in twin back to back \
                     (the first of them alternating), and the ratios above for these pairs are the medians \
                     of the rounds' ratios, which drift between measurements moves far less than a ratio of medians:\n"
                );
                println!("| pair | callers | each round's ratio | median | ratio of the medians |");
                println!("|---|---:|---|---:|---:|");
            }
            let rounds: Vec<String> = p.rates.iter().map(|r| format!("{r:.2}")).collect();
            let of_medians = match (summary.get(&(a, payload, callers)), summary.get(&(b, payload, callers))) {
                (Some(x), Some(y)) => format!("{:.2}", x.rate / y.rate),
                _ => String::new(),
            };
            println!(
                "| {} / {} | {callers} | {} | {:.2} | {of_medians} |",
                a.name(),
                b.name(),
                rounds.join(", "),
                p.rate
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(calls: u64, p99_us: f64) -> Sample {
        Sample { calls, seconds: 1.0, p50_us: 1.0, p99_us, p999_us: 1.0, client_peak_kib: 0, server_peak_kib: 0 }
    }

    #[test]
    fn a_pair_runs_together_only_when_both_sides_run() {
        use Contender::*;
        assert_eq!(
            units(&[Micro, Tarpc, MicroTcpx, MicroBrpc]),
            vec![vec![Micro, MicroTcpx], vec![Tarpc], vec![MicroBrpc]],
        );
        assert_eq!(units(&[MicroBrpcIn, MicroBrpc]), vec![vec![MicroBrpcIn, MicroBrpc]]);
    }

    #[test]
    fn a_pairs_ratio_is_the_median_of_its_rounds_ratios() -> Result<(), &'static str> {
        // Drift: the machine was fast in round 2 and slow in round 3. The
        // rounds' ratios are 0.8, 0.9 and 1.0 (median 0.9), while the ratio
        // of the two medians would be 80/100 = 0.8.
        let a = vec![sample(80, 110.0), sample(180, 100.0), sample(50, 120.0)];
        let b = vec![sample(100, 100.0), sample(200, 100.0), sample(50, 100.0)];
        let results = BTreeMap::from([
            ("micro-brpc/64/16".to_string(), a),
            ("micro-brpc-in/64/16".to_string(), b),
            ("micro/64/16".to_string(), vec![sample(1, 1.0)]),
        ]);
        let all = [Contender::Micro, Contender::MicroBrpc, Contender::MicroBrpcIn];
        let p = paired(&all, &results, Contender::MicroBrpc, Contender::MicroBrpcIn, 64, 16)
            .ok_or("no paired ratio for a pair that ran side by side")?;
        assert_eq!(p.rates, vec![0.8, 0.9, 1.0]);
        assert_eq!((p.rate, p.p99), (0.9, 1.1));
        // Not run together, or one side missing: no paired ratio.
        assert!(paired(&all, &results, Contender::MicroBrpc, Contender::Micro, 64, 16).is_none());
        assert!(paired(&all, &results, Contender::MicroBrpc, Contender::MicroBrpcIn, 64, 64).is_none());
        assert!(paired(&all[..2], &results, Contender::MicroBrpc, Contender::MicroBrpcIn, 64, 16).is_none());
        Ok(())
    }

    #[test]
    fn no_contender_is_in_two_pairs_and_an_even_median_is_a_mean() {
        // `units` gives each contender one partner at most.
        for (i, &(a, b)) in PAIRS.iter().enumerate() {
            for &(c, d) in &PAIRS[i + 1..] {
                assert!(![c, d].contains(&a) && ![c, d].contains(&b), "{} or {} in two pairs", a.name(), b.name());
            }
        }
        assert_eq!(median(&[0.5, 1.0, 0.75, 0.25]), 0.625);
        assert_eq!(median(&[0.8]), 0.8);
    }
}
