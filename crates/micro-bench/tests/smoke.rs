//! The benchmark tool in a tiny configuration, so that it cannot rot: every
//! subcommand runs and prints a table with non-zero figures. No timing is
//! asserted (speed lives in BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BENCH: &str = env!("CARGO_BIN_EXE_micro-bench");

fn sibling(name: &str) -> PathBuf {
    let p = Path::new(BENCH).with_file_name(name);
    assert!(p.is_file(), "{} is missing: run the tests with `cargo test --workspace`", p.display());
    p
}

fn run(args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let o = Command::new(BENCH).args(args).env("MICRO_LOG_LEVEL", "error").output()?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!("micro-bench {args:?} failed:\n{out}{}", String::from_utf8_lossy(&o.stderr)).into());
    }
    Ok(out)
}

/// The numbers in the table rows whose first cell starts with `label`.
fn row(out: &str, label: &str) -> Vec<f64> {
    out.lines()
        .find(|l| l.starts_with(&format!("| {label}")))
        .map(|l| {
            l.split('|')
                .filter_map(|c| {
                    c.split_whitespace().next().and_then(|n| n.trim_start_matches('±').replace(',', "").parse().ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_benchmark_runs_in_quick_mode() -> TestResult {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("target").join("plugin-tests");
    let plugin = target.join("out").join("bench-tcpx.so");
    let o = Command::new(sibling("micro"))
        .args([
            "plugin",
            "build",
            "--name",
            "tcpx",
            "--type",
            "transport",
            "--new-func",
            "new_transport",
            "--debug",
            "--path",
        ])
        .arg(root.join("examples/plugins/tcpx"))
        .arg("-o")
        .arg(&plugin)
        .arg("--target-dir")
        .arg(&target)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = plugin.display().to_string();

    let out = run(&[
        "boundary",
        "--kind",
        "transport",
        "--plugin",
        &p,
        "--name",
        "tcpx",
        "--callers",
        "1,2",
        "--seconds",
        "0.2",
        "--rounds",
        "1",
    ])?;
    for label in ["built in: tcp", "plugin: tcpx"] {
        let r = row(&out, label);
        assert!(r.len() >= 2 && r[1] > 0.0, "{label}: {out}");
    }
    let out = run(&["plugin-load", "--plugin", &p, "--runs", "3"])?;
    assert!(row(&out, "bench-tcpx.so").first().is_some_and(|&runs| runs == 3.0), "{out}");

    let out =
        run(&["footprint", "--service", &sibling("greeter-service").display().to_string(), "--connections", "20"])?;
    assert!(row(&out, "idle service RSS").first().is_some_and(|&mib| mib > 0.0), "{out}");

    let out = run(&["broker", "--messages", "300"])?;
    for label in ["memory", "http", "nats", "raw async-nats"] {
        assert!(row(&out, label).get(1).is_some_and(|&rate| rate > 0.0), "{label}: {out}");
    }

    // The RPC benchmark's quick mode: every contender's server and client in
    // their own processes, 300 calls each (the transport plugin included;
    // the client plugin is skipped when not built, as it is here).
    let dir = tempfile::tempdir()?;
    std::fs::copy(&plugin, dir.path().join("tcpx.so"))?;
    let d = dir.path().display().to_string();
    let out = run(&["rpc", "--quick", "--plugins", &d, "--out", &d])?;
    for c in [
        "ceiling",
        "ceiling-mux",
        "tarpc",
        "tonic",
        "volo",
        "micro",
        "micro-direct",
        "micro-proto",
        "micro-grpc",
        "micro-tcpx",
    ] {
        for callers in [1.0, 16.0] {
            let hit = out.lines().any(|l| {
                let r = row(l, &format!("{c} "));
                l.starts_with(&format!("| {c} |")) && r.first() == Some(&callers) && r.get(1).is_some_and(|&x| x > 0.0)
            });
            assert!(hit, "{c} at {callers} callers: {out}");
        }
    }
    assert!(out.contains("| micro / tarpc |") && out.contains("| micro / ceiling-mux |"), "{out}");
    // The transport plugin and the transport built in ran side by side: their
    // ratio is the median of the rounds' ratios, listed round by round.
    for callers in ["1", "16"] {
        let pair = out.lines().find(|l| l.starts_with(&format!("| micro-tcpx / micro | {callers} |")));
        // | pair | callers | each round's ratio | median | ratio of the medians |
        let ratio = pair.and_then(|l| l.split('|').nth(4)).and_then(|r| r.trim().parse::<f64>().ok());
        assert!(ratio.is_some_and(|r| r > 0.0), "side-by-side row at {callers} callers: {out}");
    }
    let chart = std::fs::read_to_string(dir.path().join("rpc-64.svg"))?;
    assert!(chart.contains("<svg") && chart.contains("micro-grpc"), "the chart names every contender");

    // The head-of-line probe: Pings beside a spinning handler, and spins by
    // server threads, for micro (by name, through the local registry) and tarpc.
    let out = run(&["hol", "--seconds", "0.5", "--rounds", "1", "--out", &d])?;
    for c in ["micro", "tarpc"] {
        let pings = out.lines().filter(|l| l.starts_with(&format!("| {c} |"))).collect::<Vec<_>>();
        assert_eq!(pings.len(), 2, "{c}: a Ping row and a scaling row: {out}");
        assert!(row(pings[0], c).first().is_some_and(|&n| n > 0.0), "{c} answered Pings: {out}");
        assert!(row(pings[1], c).first().is_some_and(|&n| n > 0.0), "{c} answered spins: {out}");
    }

    // The boundary's own cost: the same client directly and exported and
    // imported in-process; crossing is never free.
    let out = run(&["crossing", "--calls", "2000", "--rounds", "1"])?;
    let ns = |name: &str| row(&out, name).first().copied();
    let (direct, crossed) = (ns("called directly |"), ns("exported and imported in-process |"));
    assert!(direct.is_some_and(|d| d > 0.0) && crossed > direct, "{out}");
    Ok(())
}
