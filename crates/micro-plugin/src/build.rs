//! `generate` writes a plugin crate from a template; `build` also compiles
//! it with cargo into a shared library (go-micro's `Generate` and `Build`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What to build: go-micro's plugin Config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildConfig {
    /// The plugin's name, e.g. `brpc`.
    pub name: String,
    /// Its Type: `client`, `transport`, ….
    pub kind: String,
    /// The crate that holds the implementation (a directory with a Cargo.toml).
    pub path: PathBuf,
    /// The constructor, a function of that crate (`new_client` or `module::new_client`).
    pub new_func: String,
}

/// Where the generated crate takes micro-plugin from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameworkSource {
    /// A checkout: the directory of the `micro-plugin` crate.
    Path(PathBuf),
    /// A crates.io version, pinned exactly.
    Version(String),
}

impl FrameworkSource {
    /// The framework this program was built from: its own checkout if it is
    /// still there (or `MICRO_SOURCE`, a workspace root), else the same
    /// version from crates.io.
    pub fn current() -> Self {
        if let Some(root) = std::env::var_os("MICRO_SOURCE") {
            return FrameworkSource::Path(PathBuf::from(root).join("crates").join("micro-plugin"));
        }
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        if here.join("Cargo.toml").is_file() {
            FrameworkSource::Path(here)
        } else {
            FrameworkSource::Version(env!("CARGO_PKG_VERSION").to_string())
        }
    }

    /// The framework the implementation crate in `dir` is built against,
    /// so that the generated crate uses the very same `micro-plugin` (two
    /// copies of it would not link, and two checkouts of one version make
    /// cargo fail with "package collision in the lockfile"):
    ///
    /// * `MICRO_SOURCE` (a workspace root), when set, wins;
    /// * else the crate's own `micro-plugin` dependency, or the
    ///   `micro-plugin` beside its `micro` path dependency (a checkout);
    /// * a crate taking micro from crates.io gets this program's version,
    ///   pinned exactly; a crate cargo cannot describe gets
    ///   [`current`](Self::current).
    ///
    /// A checkout whose plugin ABI is not this program's is refused here,
    /// before anything is compiled, saying which ABI each side has.
    pub fn for_crate(dir: &Path) -> Result<Self, BuildError> {
        if std::env::var_os("MICRO_SOURCE").is_some() {
            return Ok(Self::current());
        }
        let Some(source) = crate_framework(dir) else { return Ok(Self::current()) };
        if let FrameworkSource::Path(p) = &source {
            if let Some(abi) = abi_of_checkout(p) {
                if abi != crate::abi::ABI_VERSION {
                    return Err(BuildError::Config(format!(
                        "{} is built against micro-plugin at {} (plugin ABI {abi}), but this micro loads plugin ABI {}: \
                         build it with the micro tool of that checkout, or point the crate's micro dependency at a \
                         checkout with ABI {}",
                        dir.display(),
                        p.display(),
                        crate::abi::ABI_VERSION,
                        crate::abi::ABI_VERSION
                    )));
                }
            }
        }
        Ok(source)
    }

    fn dependency(&self) -> String {
        match self {
            FrameworkSource::Path(p) => format!("{{ path = {:?} }}", p.display().to_string()),
            FrameworkSource::Version(v) => format!("\"={v}\""),
        }
    }

    /// The workspace lock file next to a checkout, to build with the same dependency versions.
    fn lock_file(&self) -> Option<PathBuf> {
        match self {
            FrameworkSource::Path(p) => p.ancestors().map(|a| a.join("Cargo.lock")).find(|f| f.is_file()),
            FrameworkSource::Version(_) => None,
        }
    }
}

/// Where the crate in `dir` takes `micro-plugin` from, by `cargo metadata`
/// (`--no-deps`: nothing is resolved or downloaded); `None` when cargo
/// cannot say or the crate depends on neither `micro-plugin` nor `micro`.
fn crate_framework(dir: &Path) -> Option<FrameworkSource> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::fs::canonicalize(dir.join("Cargo.toml")).ok()?;
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let package = v["packages"]
        .as_array()?
        .iter()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))?;
    let deps = package["dependencies"].as_array()?;
    let normal = |name: &str| deps.iter().find(|d| d["name"] == name && d["kind"].is_null());
    let (dep, beside) = match (normal("micro-plugin"), normal("micro")) {
        (Some(d), _) => (d, None),
        (None, Some(d)) => (d, Some("micro-plugin")),
        (None, None) => return None,
    };
    match dep["path"].as_str() {
        Some(path) => {
            let path = match beside {
                Some(sibling) => Path::new(path).parent()?.join(sibling),
                None => PathBuf::from(path),
            };
            path.join("Cargo.toml").is_file().then_some(FrameworkSource::Path(path))
        }
        None => Some(FrameworkSource::Version(env!("CARGO_PKG_VERSION").to_string())),
    }
}

/// The plugin ABI version a `micro-plugin` checkout declares, read from its
/// source (`pub const ABI_VERSION: u32 = N;`).
fn abi_of_checkout(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("src").join("abi.rs")).ok()?;
    text.lines().find_map(|l| {
        l.trim().strip_prefix("pub const ABI_VERSION: u32 =")?.trim().trim_end_matches(';').trim().parse().ok()
    })
}

/// What to tell a user about a cargo failure that comes from where the
/// framework was taken, rather than from their code.
fn hint_for(output: &str) -> Option<String> {
    if output.contains("package collision in the lockfile") {
        return Some(
            "hint: the plugin crate and the generated crate take micro-plugin from two different checkouts; \
             set MICRO_SOURCE to the checkout the plugin crate depends on"
                .into(),
        );
    }
    if output.contains("no matching package named `micro-plugin`")
        || output.contains("no matching package named `micro`")
        || output.contains("failed to select a version for the requirement `micro-plugin")
    {
        return Some(format!(
            "hint: micro-plugin {} is not available from the package registry here; build against a checkout: \
             set MICRO_SOURCE=/path/to/micro, or make the plugin crate depend on micro by path",
            env!("CARGO_PKG_VERSION")
        ));
    }
    None
}

/// Why generating or building failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Bad input.
    #[error("{0}")]
    Config(String),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// cargo failed; `output` holds its error messages.
    #[error("cargo build of plugin {name} failed (crate in {dir}):\n{output}")]
    Cargo {
        /// The plugin's name.
        name: String,
        /// The generated crate.
        dir: PathBuf,
        /// cargo's errors.
        output: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.to_path_buf(), source }
}

/// Reads `[package] name` of a crate.
fn package_name(dir: &Path) -> Result<String, BuildError> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(io(&manifest))?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(rest) = line.strip_prefix("name") {
                if let Some(v) = rest.trim_start().strip_prefix('=') {
                    return Ok(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    Err(BuildError::Config(format!("{}: no [package] name", manifest.display())))
}

fn check(cfg: &BuildConfig) -> Result<(), BuildError> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.split("::").all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    };
    if cfg.name.is_empty() || !cfg.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(BuildError::Config(format!("plugin name {:?}: use letters, digits, '-' and '_'", cfg.name)));
    }
    if !ident(&cfg.new_func) {
        return Err(BuildError::Config(format!("new func {:?} is not a Rust path", cfg.new_func)));
    }
    if !cfg.path.join("Cargo.toml").is_file() {
        return Err(BuildError::Config(format!("--path {}: not a crate (no Cargo.toml)", cfg.path.display())));
    }
    Ok(())
}

/// Writes the plugin crate into `dir` (created as needed) and returns its manifest path.
pub fn generate(dir: &Path, cfg: &BuildConfig, source: &FrameworkSource) -> Result<PathBuf, BuildError> {
    check(cfg)?;
    let implementation = std::fs::canonicalize(&cfg.path).map_err(io(&cfg.path))?;
    let package = package_name(&implementation)?;
    let krate = package.replace('-', "_");
    let new_func = format!("{krate}::{}", cfg.new_func);
    std::fs::create_dir_all(dir.join("src")).map_err(io(dir))?;
    // cargo identifies a root package by name and relative path, so two
    // generated crates of one name sharing a target directory would be
    // mistaken for each other: make the name unique per directory.
    let unique = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).hash(&mut h);
        format!("{:08x}", h.finish() as u32)
    };
    let manifest = format!(
        r#"# Generated by `micro plugin generate`: the {name} plugin ({kind}).
[package]
name = "micro-plugin-{name}-{unique}"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
micro-plugin = {framework}
{package} = {{ path = {implementation:?} }}

[workspace]

# A plugin is a final artifact: optimised across its crates (the framework,
# tokio, the implementation) as one unit, it is about half the size and its
# calls take less CPU (BENCHMARKS.md). Unwinding stays on: the host contains
# a plugin's panics.
[profile.release]
lto = "fat"
codegen-units = 1
panic = "unwind"
"#,
        name = cfg.name,
        kind = cfg.kind,
        framework = source.dependency(),
        implementation = implementation.display().to_string(),
    );
    let lib = format!(
        r#"//! The {name} plugin ({kind}), generated by `micro plugin generate`.
micro_plugin::export_plugin!(
    name: {name:?},
    kind: {kind:?},
    new: {new_func},
    path: {path:?},
);
"#,
        name = cfg.name,
        kind = cfg.kind,
        path = implementation.display().to_string(),
    );
    let manifest_path = dir.join("Cargo.toml");
    std::fs::write(&manifest_path, manifest).map_err(io(&manifest_path))?;
    let lib_path = dir.join("src").join("lib.rs");
    std::fs::write(&lib_path, lib).map_err(io(&lib_path))?;
    if let Some(lock) = source.lock_file() {
        let to = dir.join("Cargo.lock");
        std::fs::copy(&lock, &to).map_err(io(&to))?;
    }
    Ok(manifest_path)
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Build with the dev profile instead of release.
    pub debug: bool,
    /// cargo's target directory (default: `target` inside the generated crate).
    pub target_dir: Option<PathBuf>,
    /// Pass `--offline` to cargo.
    pub offline: bool,
}

/// Progress while cargo runs.
#[derive(Debug, Clone)]
pub enum Progress {
    /// cargo finished compiling a crate.
    Compiled {
        /// Its name.
        name: String,
        /// How many so far.
        count: usize,
    },
    /// A line cargo printed about its work (`Compiling …`, `warning: …`).
    Line(String),
}

/// Generates the plugin crate next to `out` and compiles it into the shared
/// library `out` (e.g. `./brpc.so`), creating directories as needed.
pub fn build(
    out: &Path,
    cfg: &BuildConfig,
    source: &FrameworkSource,
    opts: &BuildOptions,
    mut progress: impl FnMut(Progress),
) -> Result<PathBuf, BuildError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let dir = parent.join(".micro-plugin-build").join(&cfg.name);
    let manifest = generate(&dir, cfg, source)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--lib").arg("--manifest-path").arg(&manifest);
    cmd.arg("--message-format").arg("json-render-diagnostics");
    if !opts.debug {
        cmd.arg("--release");
    }
    if opts.offline {
        cmd.arg("--offline");
    }
    cmd.env("CARGO_TARGET_DIR", opts.target_dir.clone().unwrap_or_else(|| dir.join("target")));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| BuildError::Config(format!("cannot run cargo: {e}")))?;
    let stderr = child.stderr.take();
    // cargo's human output (errors included) goes to stderr: keep it for the error message.
    let err_reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        if let Some(s) = stderr {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                lines.push(line);
            }
        }
        lines
    });
    let mut artifact = None;
    let mut count = 0;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if v["reason"] != "compiler-artifact" {
                continue;
            }
            count += 1;
            let name = v["target"]["name"].as_str().unwrap_or("").to_string();
            let is_cdylib = v["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib"));
            if is_cdylib {
                artifact = v["filenames"]
                    .as_array()
                    .and_then(|f| {
                        f.iter().filter_map(|f| f.as_str()).find(|f| f.ends_with(".so") || f.ends_with(".dylib"))
                    })
                    .map(PathBuf::from);
            }
            progress(Progress::Compiled { name, count });
        }
    }
    let status = child.wait().map_err(|e| BuildError::Config(format!("cargo: {e}")))?;
    let errors = err_reader.join().unwrap_or_default();
    if !status.success() {
        let relevant: Vec<&String> = errors
            .iter()
            .filter(|l| !l.trim_start().starts_with("Compiling") && !l.trim_start().starts_with("Downloaded"))
            .collect();
        let mut output = relevant.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n");
        if let Some(hint) = hint_for(&output) {
            output.push('\n');
            output.push_str(&hint);
        }
        return Err(BuildError::Cargo { name: cfg.name.clone(), dir, output });
    }
    for l in errors.iter().filter(|l| l.contains("warning")) {
        progress(Progress::Line(l.clone()));
    }
    let artifact = artifact.ok_or_else(|| BuildError::Cargo {
        name: cfg.name.clone(),
        dir: dir.clone(),
        output: "cargo reported no cdylib artifact".into(),
    })?;
    // Copy then rename, so a running process never sees a half-written library.
    let tmp = out.with_extension("so.tmp");
    std::fs::copy(&artifact, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_writes_a_crate_naming_the_constructor() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let imp = d.path().join("brpc");
        std::fs::create_dir_all(imp.join("src"))?;
        std::fs::write(imp.join("Cargo.toml"), "[package]\nname = \"my-brpc\"\nversion = \"0.1.0\"\n")?;
        let cfg = BuildConfig { name: "brpc".into(), kind: "client".into(), path: imp, new_func: "new_client".into() };
        let out = d.path().join("gen");
        generate(&out, &cfg, &FrameworkSource::Version("0.1.0".into()))?;
        let lib = std::fs::read_to_string(out.join("src/lib.rs"))?;
        assert!(lib.contains("new: my_brpc::new_client"), "{lib}");
        assert!(lib.contains("kind: \"client\""), "{lib}");
        let manifest = std::fs::read_to_string(out.join("Cargo.toml"))?;
        assert!(manifest.contains("crate-type = [\"cdylib\"]"));
        assert!(manifest.contains("micro-plugin = \"=0.1.0\""));
        // Release builds are optimised as one unit, and keep unwinding (a
        // plugin built with `panic = "abort"` is refused at load).
        let release = manifest.split("[profile.release]").nth(1).ok_or("no release profile")?;
        for setting in ["lto = \"fat\"", "codegen-units = 1", "panic = \"unwind\""] {
            assert!(release.contains(setting), "{setting} missing: {manifest}");
        }
        Ok(())
    }

    #[test]
    fn bad_input_is_refused() {
        let cfg = BuildConfig {
            name: "a b".into(),
            kind: "client".into(),
            path: "/nonexistent".into(),
            new_func: "f".into(),
        };
        let e = generate(Path::new("/tmp/never"), &cfg, &FrameworkSource::Version("0".into())).err();
        assert!(e.is_some_and(|e| e.to_string().contains("plugin name \"a b\": use letters, digits")));
        let cfg =
            BuildConfig { name: "ok".into(), kind: "client".into(), path: "/nonexistent".into(), new_func: "f".into() };
        let e =
            generate(Path::new("/tmp/never"), &cfg, &FrameworkSource::Version("0".into())).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("--path /nonexistent: not a crate (no Cargo.toml)"));
    }
}
