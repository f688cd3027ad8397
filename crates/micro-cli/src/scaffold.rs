//! `micro new`: a service crate that builds and runs out of the box.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Where the new crate takes micro from: as a user's project would, a
/// version from the package registry, unless told to use a checkout or a
/// git repository (for unpublished work). Never silently the checkout the
/// tool was built from: a scaffold must build on any machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MicroSource {
    /// `micro = "X.Y.Z"` (this tool's version).
    Version,
    /// A micro checkout: the `crates/micro` directory.
    Path(PathBuf),
    /// A git repository, optionally at a revision.
    Git { url: String, rev: Option<String> },
}

impl MicroSource {
    /// From `--micro-path` (a checkout's root or its `crates/micro`) and
    /// `--micro-git`/`--micro-rev`.
    pub(crate) fn from_flags(path: Option<&Path>, git: Option<&str>, rev: Option<&str>) -> anyhow::Result<Self> {
        match (path, git) {
            (Some(p), _) => {
                let p = std::fs::canonicalize(p).with_context(|| format!("--micro-path {}", p.display()))?;
                let krate = if p.join("crates/micro/Cargo.toml").is_file() { p.join("crates/micro") } else { p };
                let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap_or_default();
                if !manifest.lines().any(|l| l.trim() == "name = \"micro\"") {
                    bail!(
                        "--micro-path {}: not a micro checkout (expected its root or its crates/micro directory)",
                        krate.display()
                    );
                }
                Ok(MicroSource::Path(krate))
            }
            (None, Some(url)) => Ok(MicroSource::Git { url: url.to_string(), rev: rev.map(str::to_string) }),
            (None, None) => Ok(MicroSource::Version),
        }
    }

    /// The dependency's value in Cargo.toml.
    pub(crate) fn dependency(&self) -> String {
        match self {
            MicroSource::Version => format!("\"{}\"", env!("CARGO_PKG_VERSION")),
            MicroSource::Path(p) => format!("{{ path = {:?} }}", p.display().to_string()),
            MicroSource::Git { url, rev: None } => format!("{{ git = {url:?} }}"),
            MicroSource::Git { url, rev: Some(r) } => format!("{{ git = {url:?}, rev = {r:?} }}"),
        }
    }

    /// The micro-build dependency's value: from the same place as micro.
    pub(crate) fn build_dependency(&self) -> String {
        match self {
            MicroSource::Version => format!("\"{}\"", env!("CARGO_PKG_VERSION")),
            MicroSource::Path(p) => {
                format!("{{ path = {:?} }}", p.with_file_name("micro-build").display().to_string())
            }
            MicroSource::Git { .. } => self.dependency(),
        }
    }

    /// The checkout's lock file, so that the new crate builds with the
    /// dependency versions the checkout is tested with (and offline).
    fn lock_file(&self) -> Option<PathBuf> {
        match self {
            MicroSource::Path(p) => p.ancestors().map(|a| a.join("Cargo.lock")).find(|f| f.is_file()),
            _ => None,
        }
    }
}

fn camel(name: &str) -> String {
    name.split(['-', '_', '.'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Writes the crate `dir` (its last component is the service name); with
/// `proto`, a service generated from a `.proto` by micro-build.
pub(crate) fn generate(dir: &Path, source: &MicroSource, proto: bool) -> anyhow::Result<Vec<PathBuf>> {
    let micro = source.dependency();
    let name = dir.file_name().and_then(|n| n.to_str()).context("the service needs a name")?.to_string();
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!("{name:?} is not a valid crate name: use letters, digits, '-' and '_', not starting with a digit");
    }
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let handler = camel(&name);
    let files = if proto { proto_files(&name, &handler, source) } else { plain_files(&name, &handler, &micro) };
    let mut written = Vec::new();
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    if let Some(lock) = source.lock_file() {
        let to = dir.join("Cargo.lock");
        std::fs::copy(&lock, &to).with_context(|| format!("writing {}", to.display()))?;
        written.push(to);
    }
    Ok(written)
}

/// The files of a service with a hand-written (serde) request and response.
fn plain_files(name: &str, handler: &str, micro: &str) -> Vec<(String, String)> {
    let files = [
        (
            "Cargo.toml",
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[dependencies]
micro = {micro}
clap = {{ version = "4", features = ["derive", "env"] }}
serde = {{ version = "1", features = ["derive"] }}
tokio = {{ version = "1", features = ["rt-multi-thread", "macros", "signal"] }}
tracing = "0.1"

[workspace]
"#
            ),
        ),
        (
            "src/main.rs",
            format!(
                r#"//! The {name} service, generated by `micro new`.

use clap::Parser;
use micro::core::Error;
use serde::{{Deserialize, Serialize}};

/// The {name} service.
#[derive(Parser)]
#[command(version, about = "The {name} service")]
struct Cli {{
    #[command(flatten)]
    micro: micro::Flags,
}}

#[derive(Debug, Deserialize)]
struct Request {{
    name: String,
}}

#[derive(Debug, Serialize)]
struct Response {{
    msg: String,
}}

#[derive(Debug, Deserialize)]
struct Message {{
    say: String,
}}

fn main() -> std::process::ExitCode {{
    micro::run_main(async {{
        micro::init_logging();
        let cli = Cli::parse();
        let service = micro::Service::builder("{name}").version("latest").flags(cli.micro).build()?;
        service.handle("{handler}.Call", |req: Request| async move {{
            if req.name.is_empty() {{
                return Err(Error::bad_request("{name}", "name is required"));
            }}
            Ok(Response {{ msg: format!("Hello {{}}", req.name) }})
        }})?;
        service.subscribe("{name}", |m: Message| async move {{
            tracing::info!(say = %m.say, "received message");
            Ok(())
        }})?;
        service.run().await
    }})
}}
"#
            ),
        ),
        (
            "README.md",
            format!(
                r#"# {name}

A micro service generated by `micro new`.

```sh
cargo run -- --broker http   # serves {handler}.Call (and its subscriber) until Ctrl-C
micro call {name} {handler}.Call '{{"name": "John"}}'
micro publish {name} '{{"say": "hi"}}' --broker http
```

Pub/sub needs a broker that reaches across processes: `http` (go-micro's default) or
`nats`; the default `memory` broker only reaches subscribers in the same process.

The usual micro flags and `MICRO_*` variables choose the components: see `cargo run -- --help`.
"#
            ),
        ),
        (".gitignore", "/target\n".to_string()),
    ];
    files.into_iter().map(|(p, t)| (p.to_string(), t)).collect()
}

/// The files of a service generated from `proto/NAME.proto` by micro-build
/// (go-micro's template service: `Call` and a server stream, `Stream`).
fn proto_files(name: &str, handler: &str, source: &MicroSource) -> Vec<(String, String)> {
    let (micro, build) = (source.dependency(), source.build_dependency());
    let package = name.replace('-', "_");
    vec![
        (
            "Cargo.toml".into(),
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[dependencies]
micro = {micro}
prost = "0.14"
clap = {{ version = "4", features = ["derive", "env"] }}
serde = {{ version = "1", features = ["derive"] }}
tokio = {{ version = "1", features = ["rt-multi-thread", "macros", "signal"] }}

[build-dependencies]
micro-build = {build}

[workspace]
"#
            ),
        ),
        (
            "build.rs".into(),
            format!(
                r#"//! Generates the {name} service's messages, client and handler trait from its .proto.

fn main() -> std::io::Result<()> {{
    micro_build::compile_protos(&["proto/{name}.proto"], &["proto"])
}}
"#
            ),
        ),
        (
            format!("proto/{name}.proto"),
            format!(
                r#"syntax = "proto3";

package {package};

service {handler} {{
  // Answers one request.
  rpc Call(CallRequest) returns (CallResponse);
  // Streams `count` responses.
  rpc Stream(StreamRequest) returns (stream StreamResponse);
}}

message CallRequest {{
  string name = 1;
}}

message CallResponse {{
  string msg = 1;
}}

message StreamRequest {{
  int64 count = 1;
}}

message StreamResponse {{
  int64 count = 1;
}}
"#
            ),
        ),
        (
            "src/main.rs".into(),
            format!(
                r#"//! The {name} service, generated by `micro new --proto` from proto/{name}.proto.

use clap::Parser;
use micro::core::{{async_trait, Error, Result}};
use micro::{{Context, MessageStream}};

/// The code micro-build generated from proto/{name}.proto (its client is for
/// the callers of this service: unused here).
#[allow(dead_code)]
mod pb {{
    include!(concat!(env!("OUT_DIR"), "/{package}.rs"));
}}

use pb::{{CallRequest, CallResponse, StreamRequest, StreamResponse}};

/// The {name} service.
#[derive(Parser)]
#[command(version, about = "The {name} service")]
struct Cli {{
    #[command(flatten)]
    micro: micro::Flags,
}}

struct Handler;

#[async_trait]
impl pb::{handler}Handler for Handler {{
    async fn call(&self, _ctx: Context, req: CallRequest) -> Result<CallResponse> {{
        if req.name.is_empty() {{
            return Err(Error::bad_request("{name}", "name is required"));
        }}
        Ok(CallResponse {{ msg: format!("Hello {{}}", req.name) }})
    }}

    async fn stream(
        &self,
        _ctx: Context,
        req: StreamRequest,
        stream: MessageStream<StreamResponse, StreamRequest>,
    ) -> Result<()> {{
        for count in 0..req.count.clamp(0, 1000) {{
            stream.send(StreamResponse {{ count }}).await?;
        }}
        Ok(())
    }}
}}

fn main() -> std::process::ExitCode {{
    micro::run_main(async {{
        micro::init_logging();
        let cli = Cli::parse();
        let service = micro::Service::builder("{name}").version("latest").flags(cli.micro).build()?;
        pb::{handler}Handler::register(Handler, &service)?;
        service.run().await
    }})
}}
"#,
            ),
        ),
        (
            "README.md".into(),
            format!(
                r#"# {name}

A micro service generated by `micro new --proto` from `proto/{name}.proto`: `build.rs`
runs micro-build (protoc needed: `PROTOC` or `protoc` on the `PATH`), which writes the
messages, a typed `{handler}Client` and the `{handler}Handler` trait that `src/main.rs`
implements.

```sh
cargo run                    # serves {handler}.Call and {handler}.Stream until Ctrl-C
micro call {name} {handler}.Call '{{"name": "John"}}'
micro call {name} {handler}.Stream '{{"count": 3}}' --stream
micro describe {name}        # each endpoint's fields, from the .proto
```

From another Rust service: `pb::{handler}Client::new("{name}", service.client().clone()).call(req).await`.
The usual micro flags and `MICRO_*` variables choose the components: see `cargo run -- --help`.
"#
            ),
        ),
        (".gitignore".into(), "/target\n".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn handler_names_are_camel_case() {
        assert_eq!(super::camel("hello-world"), "HelloWorld");
        assert_eq!(super::camel("greeter"), "Greeter");
    }

    use super::MicroSource;

    #[test]
    fn bad_names_and_existing_dirs_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let e = super::generate(&d.path().join("9lives"), &MicroSource::Version, false).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("not a valid crate name")));
        std::fs::create_dir(d.path().join("exists"))?;
        let e = super::generate(&d.path().join("exists"), &MicroSource::Version, false).err().map(|e| e.to_string());
        assert!(e.as_deref().unwrap_or_default().ends_with("already exists"), "{e:?}");
        Ok(())
    }

    #[test]
    fn by_default_micro_is_a_version_not_a_path_of_this_machine() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let files = super::generate(&d.path().join("svc"), &MicroSource::Version, false)?;
        let manifest = std::fs::read_to_string(d.path().join("svc/Cargo.toml"))?;
        assert!(manifest.contains(&format!("micro = \"{}\"", env!("CARGO_PKG_VERSION"))), "{manifest}");
        assert!(!manifest.contains("path ="), "{manifest}");
        assert!(!files.iter().any(|f| f.ends_with("Cargo.lock")), "no lock file of this checkout");
        let git = MicroSource::Git { url: "https://example.org/micro.git".into(), rev: Some("abc123".into()) };
        assert_eq!(git.dependency(), r#"{ git = "https://example.org/micro.git", rev = "abc123" }"#);
        Ok(())
    }

    #[test]
    fn micro_path_takes_a_checkout_root_or_its_crate_and_refuses_anything_else(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let krate = std::fs::canonicalize(root.join("crates/micro"))?;
        assert_eq!(MicroSource::from_flags(Some(&root), None, None)?, MicroSource::Path(krate.clone()));
        assert_eq!(MicroSource::from_flags(Some(&krate), None, None)?, MicroSource::Path(krate));
        let e = MicroSource::from_flags(Some(&root.join("crates/micro-core")), None, None).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("not a micro checkout")));
        Ok(())
    }
}
