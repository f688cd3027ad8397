//! micro: a microservice framework in the spirit of go-micro.
//!
//! A [`Service`] is made of seven swappable components — broker, client,
//! codec, registry, selector, server and transport — each picked by name at
//! start-up from a [`Catalog`] of constructors, through [`Flags`] with
//! go-micro's names and `MICRO_*` environment fallbacks. The traits live in
//! [`micro_core`] (re-exported as [`core`]); this crate holds the built-in
//! components and the service.
//!
//! The request path reads in one direction: [`client`] → [`selector`] →
//! [`transport`] → [`server`] → handler.
//!
//! ```no_run
//! use micro::{Flags, Service};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Hello { name: String }
//! #[derive(Serialize)]
//! struct Greeting { greeting: String }
//!
//! # async fn run() -> Result<(), micro::Error> {
//! let service = Service::builder("greeter").version("1.0.0").flags(Flags::default()).build()?;
//! service.handle("Greeter.Hello", |req: Hello| async move {
//!     Ok(Greeting { greeting: format!("Hello {}", req.name) })
//! })?;
//! service.run().await
//! # }
//! ```

pub mod addr;
pub mod broker;
pub mod catalog;
pub mod client;
pub mod codec;
pub mod flags;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod plugin;
pub mod registry;
pub mod selector;
pub mod server;
mod service;
pub mod stream;
pub mod transport;

pub use catalog::Catalog;

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every lock in this crate guards plain maps and options), so a panic in
/// one task never poisons the component for the others.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub use client::TypedClient;
pub use flags::Flags;
pub use micro_core as core;
pub use micro_core::Error as RpcError;
pub use server::Context;
pub use service::{shutdown_signal, Service, ServiceBuilder, STOP_STEP_LIMIT};
pub use stream::{MessageStream, TypedStream};

/// Errors of building and running a service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A component name that no constructor table knows.
    #[error(transparent)]
    UnknownComponent(#[from] micro_core::UnknownComponent),
    /// A constructor failed.
    #[error("cannot create {kind} {name:?}: {}", cause.detail)]
    Component {
        /// The component type.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Why (its detail is already in the message, so it is not a `source`).
        cause: micro_core::Error,
    },
    /// A plugin could not be loaded or initialised.
    #[error(transparent)]
    Plugin(Box<micro_plugin::PluginError>),
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// A component failed at run time.
    #[error(transparent)]
    Rpc(#[from] micro_core::Error),
}

impl From<micro_plugin::PluginError> for Error {
    fn from(e: micro_plugin::PluginError) -> Self {
        // Boxed: plugin errors carry paths and would make every Result large.
        Error::Plugin(Box::new(e))
    }
}

/// Libraries whose info-level events are routine, kept at warn unless `RUST_LOG` says otherwise.
const QUIET_LIBRARIES: &str = "async_nats=warn,h2=warn,hyper=warn,hyper_util=warn,tower=warn,rustls=warn,mdns_sd=warn,etcd_client=warn,tonic=warn";

/// Log writes that failed (stderr closed: `service 2>&1 | head -1`), dropped.
static DROPPED_LOG_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many log writes failed and were dropped since start (a closed or
/// broken stderr): a service never dies because its log sink went away.
pub fn dropped_log_writes() -> u64 {
    DROPPED_LOG_WRITES.load(std::sync::atomic::Ordering::Relaxed)
}

/// stderr for logs: a write that fails is dropped and counted, never an
/// error (tracing-subscriber reports a failed write with `eprintln!`, which
/// panics when stderr itself is the broken pipe).
struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::io::stderr().write(buf) {
            Ok(n) => Ok(n),
            Err(_) => {
                DROPPED_LOG_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Sets up logging to stderr, filtered by `MICRO_LOG_LEVEL` or `RUST_LOG`
/// (default `info`). Does nothing if a subscriber is already set. A log line
/// that cannot be written is dropped (see [`dropped_log_writes`]).
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // `MICRO_LOG_LEVEL` sets micro's level and keeps libraries' routine
    // chatter (connects, closes) at warn; `RUST_LOG` is taken as it is.
    let filter = match (std::env::var("MICRO_LOG_LEVEL").ok(), std::env::var("RUST_LOG").ok()) {
        (Some(level), _) => format!("{level},{QUIET_LIBRARIES}"),
        (None, Some(rust_log)) => rust_log,
        (None, None) => format!("info,{QUIET_LIBRARIES}"),
    };
    // Colour only for a terminal, and never with NO_COLOR (no-color.org).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_ansi(colour)
        .with_writer(|| LogSink)
        .log_internal_errors(false)
        .try_init();
}

/// Writes an error line to stderr, ignoring a stderr that went away.
fn report(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// The worker threads of the runtime the caller runs on (0 outside one),
/// for the servers' start-up line: on a machine that client and server
/// share, the number of workers decides the latency tail (README, "Sharing
/// a machine").
pub(crate) fn runtime_workers() -> usize {
    tokio::runtime::Handle::try_current().map(|h| h.metrics().num_workers()).unwrap_or(0)
}

/// Runs a program's async `main` on a new multi-threaded runtime and turns
/// its result into an exit code, printing an error as one line
/// (`error: …`, with its causes) instead of a debug dump. The runtime has
/// one worker thread per core unless `TOKIO_WORKER_THREADS` says otherwise.
pub fn run_main<F, E>(main: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    // tokio panics on a value it cannot use; say what is wrong instead.
    if let Some(v) = std::env::var_os("TOKIO_WORKER_THREADS") {
        let v = v.to_string_lossy();
        if !v.trim().parse::<usize>().is_ok_and(|n| n > 0) {
            report(format_args!("error: TOKIO_WORKER_THREADS must be a whole number above 0, not {v:?}"));
            return std::process::ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            report(format_args!("error: cannot start the async runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(main) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            report(format_args!("error: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    };
    // Not a plain drop: that waits for every blocking task, and a read of
    // stdin (tokio reads it on a blocking thread) never ends while the
    // other end stays open. Whatever main awaited is done by now.
    rt.shutdown_background();
    code
}
