//! Loading plugins at start-up: go-micro's `MICRO_PLUGIN` / `--plugin`.
//!
//! The mechanism (ABI, loader, export macro, build) is the `micro-plugin`
//! crate, re-exported here; this module applies it to a [`Catalog`].

use crate::catalog::Catalog;
pub use micro_plugin::build::{build, generate, BuildConfig, BuildOptions, FrameworkSource, Progress};
pub use micro_plugin::loader::{parse_pin, BuildInfo, LoadOptions};
pub use micro_plugin::{init, load, Config, PluginError};

/// Loads and initialises each plugin of `specs` into `catalog`, in order.
/// Empty entries are skipped and a file named twice is loaded once; the
/// first failure stops start-up. A plugin that replaces a component of the
/// same name is reported with a warning.
pub fn load_all(specs: &[String], allow_insecure: bool, catalog: &mut Catalog) -> Result<Vec<Config>, PluginError> {
    let mut done: Vec<Config> = Vec::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let config = load(spec, LoadOptions { allow_insecure })?;
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
