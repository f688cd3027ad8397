//! Loading plugins at start-up: go-micro's `MICRO_PLUGIN` / `--plugin`.
//!
//! The mechanism (ABI, loader, export macro, build) is the `micro-plugin`
//! crate, re-exported here; this module applies it to a [`Catalog`].

use crate::catalog::Catalog;
pub use micro_plugin::build::{build, generate, BuildConfig, BuildOptions, FrameworkSource, Progress};
pub use micro_plugin::loader::{check_kind, parse_pin, BuildInfo, LoadOptions};
pub use micro_plugin::{init, inspect, load, Config, PluginError};

/// Whether this code runs inside a plugin loaded by a micro host, so that
/// [`HostNet`] sockets are available.
pub fn host_sockets_available() -> bool {
    micro_plugin::host::available()
}

/// Loads and initialises each plugin of `specs` into `catalog`, in order.
/// Empty entries are skipped and a file named twice is loaded once; the
/// first failure stops start-up. A plugin that replaces a component of the
/// same name is reported with a warning.
pub fn load_all(specs: &[String], opts: LoadOptions, catalog: &mut Catalog) -> Result<Vec<Config>, PluginError> {
    let mut done: Vec<Config> = Vec::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let config = load(spec, opts)?;
        if done.iter().any(|c| c.file == config.file) {
            continue;
        }
        if let Some(name) = init(&config, catalog)? {
            tracing::warn!(
                plugin = %config.file.display(),
                "plugin {} replaces the {} named {name:?} that was already registered",
                config.name,
                config.kind
            );
        }
        tracing::info!(name = %config.name, kind = %config.kind, file = %config.file.display(), "plugin loaded");
        done.push(config);
    }
    Ok(done)
}

/// The TCP transport's sockets taken from the host's runtime, for a
/// transport compiled into a plugin: `TcpTransport::with_net(opts, HostNet, "name")`.
/// See [`micro_plugin::host`] for why.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostNet;

/// A host stream splits without a lock, as a TCP stream does: behind
/// `tokio::io::split`'s mutex, a connection's reader and writer (two tasks,
/// often on two threads) would wait for each other's crossing and syscall.
impl crate::transport::Halves for micro_plugin::host::HostStream {
    type Read = micro_plugin::host::HostReadHalf;
    type Write = micro_plugin::host::HostWriteHalf;
    fn halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl crate::transport::Net for HostNet {
    type Stream = micro_plugin::host::HostStream;
    type Listener = micro_plugin::host::HostListener;

    fn connect<'a>(
        &'a self,
        addr: &'a str,
    ) -> micro_core::BoxFuture<'a, std::io::Result<crate::transport::Conn<Self::Stream>>> {
        Box::pin(async move {
            let s = micro_plugin::host::connect(addr).await?;
            Ok(crate::transport::Conn { local: s.local_addr().to_string(), peer: s.peer_addr().to_string(), stream: s })
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> micro_core::BoxFuture<'a, std::io::Result<(Self::Listener, String)>> {
        Box::pin(async move {
            let l = micro_plugin::host::bind(addr).await?;
            let a = l.local_addr().to_string();
            Ok((l, a))
        })
    }

    fn accept<'a>(
        &'a self,
        l: &'a Self::Listener,
    ) -> micro_core::BoxFuture<'a, std::io::Result<crate::transport::Conn<Self::Stream>>> {
        Box::pin(async move {
            let s = l.accept().await?;
            Ok(crate::transport::Conn { local: s.local_addr().to_string(), peer: s.peer_addr().to_string(), stream: s })
        })
    }
}
