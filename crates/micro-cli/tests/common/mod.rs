//! Shared by the plugin tests: building real plugin libraries (once per
//! test binary, serialised), finding the workspace's binaries, and child
//! processes that are killed when a test ends.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

pub(crate) const MICRO: &str = env!("CARGO_BIN_EXE_micro");

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A binary of another workspace package, built by `cargo test --workspace`.
pub(crate) fn bin(name: &str) -> PathBuf {
    let p = Path::new(MICRO).with_file_name(name);
    assert!(p.is_file(), "{} is missing: run the tests with `cargo test --workspace`", p.display());
    p
}

/// Plugins are built in a target directory of their own so that these
/// nested cargo runs never wait on the outer `cargo test`'s lock.
pub(crate) fn plugin_target() -> PathBuf {
    root().join("target").join("plugin-tests")
}

fn out_dir() -> PathBuf {
    let d = plugin_target().join("out");
    let _ = std::fs::create_dir_all(&d);
    d
}

fn built() -> &'static Mutex<HashMap<String, PathBuf>> {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    BUILT.get_or_init(Default::default)
}

/// Builds an example plugin with `micro plugin build`, once per test binary.
pub(crate) fn example_plugin(name: &str, kind: &str, new_func: &str) -> PathBuf {
    let mut cache = built().lock().unwrap_or_else(|p| p.into_inner());
    let key = format!("example:{name}");
    if let Some(p) = cache.get(&key) {
        return p.clone();
    }
    let out = out_dir().join(format!("{name}.so"));
    let o = Command::new(MICRO)
        .args(["plugin", "build", "--name", name, "--type", kind, "--new-func", new_func, "--debug", "--path"])
        .arg(root().join("examples/plugins").join(name))
        .arg("-o")
        .arg(&out)
        .arg("--target-dir")
        .arg(plugin_target())
        .output()
        .expect("run micro plugin build");
    assert!(o.status.success(), "micro plugin build {name} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("built plugin {name} ({kind})")));
    cache.insert(key, out.clone());
    out
}

/// Builds the probe plugin with an optional feature, once per test binary.
pub(crate) fn probe(feature: Option<&str>) -> PathBuf {
    let mut cache = built().lock().unwrap_or_else(|p| p.into_inner());
    let tag = feature.unwrap_or("default");
    let key = format!("probe:{tag}");
    if let Some(p) = cache.get(&key) {
        return p.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root())
        .args(["build", "--locked", "-p", "micro-plugin-probe", "--target-dir"])
        .arg(plugin_target());
    if let Some(f) = feature {
        cmd.args(["--features", f]);
    }
    let o = cmd.output().expect("run cargo build");
    assert!(o.status.success(), "building the probe ({tag}) failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let out = out_dir().join(format!("probe-{tag}.so"));
    std::fs::copy(plugin_target().join("debug/libmicro_plugin_probe.so"), &out).expect("copy probe");
    cache.insert(key, out.clone());
    out
}

/// Builds the probe with `panic = "abort"` (only the probe crate itself:
/// its `export_plugin!` records the strategy the final crate is built with).
pub(crate) fn probe_panic_abort() -> PathBuf {
    let mut cache = built().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = cache.get("probe:abort") {
        return p.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(root())
        .args(["rustc", "--locked", "-p", "micro-plugin-probe", "--lib", "--target-dir"])
        .arg(plugin_target())
        .args(["--", "-C", "panic=abort"])
        .output()
        .expect("run cargo rustc");
    assert!(o.status.success(), "building the panic=abort probe failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let out = out_dir().join("probe-abort.so");
    std::fs::copy(plugin_target().join("debug/libmicro_plugin_probe.so"), &out).expect("copy probe");
    cache.insert("probe:abort".into(), out.clone());
    out
}

/// Runs `cmd` to completion within `limit`, killing it after: a test of a
/// hostile file must never hang on it.
pub(crate) fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output, Box<dyn std::error::Error>> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // Drained as it comes, so that a chatty child never blocks on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} did not finish within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().map_err(|_| "stdout reader panicked")?;
    let stderr = err.join().map_err(|_| "stderr reader panicked")?;
    Ok(Output { status, stdout, stderr })
}

/// A child process killed when dropped (`micro_testkit::Proc`).
#[allow(unused_imports)] // each test binary uses its own share of these
pub(crate) use micro_testkit::{without_micro_env, Proc};

/// Waits until `micro services` (same registry settings) lists `service`.
pub(crate) fn wait_registered(
    env: &[(&str, String)],
    service: &str,
    limit: Duration,
) -> Result<String, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    loop {
        let mut cmd = Command::new(MICRO);
        cmd.args(["services", "--output", "json"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output()?;
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if o.status.success() && text.contains(&format!("\"name\": \"{service}\"")) {
            return Ok(text);
        }
        if t0.elapsed() > limit {
            return Err(
                format!("{service} not registered after {limit:?}: {}", String::from_utf8_lossy(&o.stderr)).into()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
