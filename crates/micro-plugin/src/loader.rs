//! The host side: load, verify and initialise plugins.
#![allow(unsafe_code)]

use crate::abi::{self, HostApi, LogEvent, PluginDescriptor, PluginHeader, Produces};
use crate::{object, options, proxy};
use micro_core::catalog::{NewBroker, NewClient, NewRegistry, NewSelector, NewServer, NewTransport};
use micro_core::Catalog;
use sha2::Digest;
use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Why a plugin could not be loaded or initialised. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file does not exist.
    #[error("plugin {path}: no such file")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file or directory that others can write to.
    #[error("plugin {path}: refusing to load: {reason} (use --plugin-allow-insecure to override)")]
    Insecure {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The sha256 pin does not match.
    #[error("plugin {path}: sha256 mismatch: pinned {expected}, file has {actual}")]
    Digest {
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The file cannot be read or opened as a shared library.
    #[error("plugin {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The library has no `MICRO_PLUGIN` symbol.
    #[error("plugin {path}: not a micro plugin: no `{symbol}` symbol ({reason})")]
    NoSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol looked for.
        symbol: &'static str,
        /// The loader's message.
        reason: String,
    },
    /// A header field disagrees with the host.
    #[error("plugin {path}: {field} mismatch: plugin has {plugin}, host has {host}{hint}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// The plugin's value.
        plugin: String,
        /// The host's value.
        host: String,
        /// What to do about it.
        hint: String,
    },
    /// go-micro's `unknown plugin type: <type> for <name>`.
    #[error("plugin {path}: unknown plugin type: {kind} for {name}")]
    UnknownType {
        /// The file.
        path: PathBuf,
        /// The Type given.
        kind: String,
        /// The plugin's name.
        name: String,
    },
    /// go-micro's `invalid plugin <name>`: the constructor does not fit the Type.
    #[error("plugin {path}: invalid plugin {name}: its NewFunc {new_func} makes a {makes}, but its Type is {kind}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The constructor.
        new_func: String,
        /// What the constructor makes.
        makes: String,
        /// The Type given.
        kind: String,
    },
    /// The plugin's init failed or panicked.
    #[error("plugin {path}: init of {name} failed: {detail}")]
    Init {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// Why.
        detail: String,
    },
}

/// A loaded plugin: go-micro's Config plus what it was built with.
#[derive(Clone)]
pub struct Config {
    /// The plugin's name, e.g. `brpc`.
    pub name: String,
    /// Its Type: `client`, `transport`, ….
    pub kind: String,
    /// Where the implementation lives.
    pub path: String,
    /// The constructor's name.
    pub new_func: String,
    /// The file it was loaded from (canonical).
    pub file: PathBuf,
    /// What it was built with.
    pub build: BuildInfo,
    descriptor: &'static PluginDescriptor,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("new_func", &self.new_func)
            .field("file", &self.file)
            .field("build", &self.build)
            .finish()
    }
}

impl Config {
    /// A Config for a descriptor that is already in this process (made with
    /// `export_plugin!(@descriptor …)`), as if loaded from `file`: for tests
    /// of `init` and of the adapters without a shared library.
    #[doc(hidden)]
    pub fn from_descriptor(descriptor: &'static PluginDescriptor, file: PathBuf) -> Config {
        // SAFETY: a descriptor in this process holds static strings.
        let (build, name, kind, path, new_func) = unsafe {
            (
                read_build(&descriptor.header),
                descriptor.name.to_string_lossy(),
                descriptor.kind.to_string_lossy(),
                descriptor.path.to_string_lossy(),
                descriptor.new_func.to_string_lossy(),
            )
        };
        Config { name, kind, path, new_func, file, build, descriptor }
    }

    /// What the constructor makes, if the descriptor says something valid.
    pub fn produces(&self) -> Option<Produces> {
        Produces::from_u32(self.descriptor.produces)
    }
}

/// The build information of a plugin's header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildInfo {
    /// Plugin ABI version.
    pub abi_version: u32,
    /// `async_ffi` ABI version.
    pub future_abi_version: u32,
    /// `rustc --version`.
    pub rustc: String,
    /// Target triple.
    pub target: String,
    /// micro-plugin version.
    pub framework: String,
}

impl BuildInfo {
    /// What this host is built with.
    pub fn host() -> BuildInfo {
        let h = crate::export::header();
        // SAFETY: the host's own header holds static strings.
        unsafe { read_build(&h) }
    }
}

/// # Safety
/// The header's strings must be valid for reads.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
unsafe fn read_build(h: &PluginHeader) -> BuildInfo {
    // SAFETY: guaranteed by the caller.
    unsafe {
        BuildInfo {
            abi_version: h.abi_version,
            future_abi_version: h.future_abi_version,
            rustc: h.rustc.to_string_lossy(),
            target: h.target.to_string_lossy(),
            framework: h.framework.to_string_lossy(),
        }
    }
}

/// Options of [`load`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Load files that other users can write to.
    pub allow_insecure: bool,
}

/// Splits `path#sha256=<hex>` into the path and the pinned digest.
pub fn parse_pin(spec: &str) -> (PathBuf, Option<String>) {
    match spec.rsplit_once("#sha256=") {
        Some((p, hex)) => (PathBuf::from(p), Some(hex.trim().to_ascii_lowercase())),
        None => (PathBuf::from(spec), None),
    }
}

/// Libraries stay loaded for the life of the process; the same file is loaded once.
fn loaded() -> &'static Mutex<HashMap<PathBuf, Config>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Config>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// Opens a plugin library and reads its descriptor: go-micro's `Load`.
/// `spec` is a path, optionally pinned: `path#sha256=<hex>`.
pub fn load(spec: &str, opts: LoadOptions) -> Result<Config, PluginError> {
    let (path, pin) = parse_pin(spec);
    let file = std::fs::canonicalize(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PluginError::Missing { path: path.clone() },
        _ => PluginError::Open { path: path.clone(), reason: e.to_string() },
    })?;
    if !opts.allow_insecure {
        check_permissions(&file)?;
    }
    if let Some(expected) = pin {
        let data = std::fs::read(&file).map_err(|e| PluginError::Open { path: file.clone(), reason: e.to_string() })?;
        let actual = hex(&sha2::Sha256::digest(&data));
        if actual != expected {
            return Err(PluginError::Digest { path: file, expected, actual });
        }
    }
    let mut loaded = loaded().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = loaded.get(&file) {
        return Ok(c.clone());
    }
    let meta = std::fs::metadata(&file).map_err(|e| PluginError::Open { path: file.clone(), reason: e.to_string() })?;
    if !meta.is_file() {
        return Err(PluginError::Open { path: file, reason: "not a regular file".into() });
    }
    // SAFETY: opening a library runs its initialisers; that is what loading a
    // plugin means, and the file passed the ownership/permission/digest checks.
    let lib = unsafe { libloading::Library::new(&file) }
        .map_err(|e| PluginError::Open { path: file.clone(), reason: format!("not a loadable shared library: {e}") })?;
    // SAFETY: we only take the symbol's address here; nothing is read yet.
    let sym: Result<libloading::Symbol<'_, *const PluginHeader>, _> = unsafe { lib.get(b"MICRO_PLUGIN\0") };
    let header_ptr: *const PluginHeader = match sym {
        Ok(s) => *s,
        Err(e) => {
            return Err(PluginError::NoSymbol { path: file, symbol: abi::SYMBOL, reason: e.to_string() });
        }
    };
    // Read the header field by field, magic first, before trusting the rest.
    // SAFETY: the symbol is at least 8 bytes if it is ours; an unaligned read
    // of the first 8 bytes of any data symbol cannot fault.
    let magic = unsafe { std::ptr::read_unaligned(header_ptr as *const u64) };
    check_header(&file, magic, None)?;
    // SAFETY: the magic number says this is a PluginHeader, whose layout never changes.
    let header = unsafe { &*header_ptr };
    // SAFETY: a valid header's strings are static.
    let build = unsafe { read_build(header) };
    check_header(&file, magic, Some(&build))?;
    // SAFETY: ABI version and target match, so the symbol is this ABI's descriptor.
    let descriptor: &'static PluginDescriptor = unsafe { &*(header_ptr as *const PluginDescriptor) };
    // SAFETY: the descriptor's strings are static data of the library, which is never unloaded.
    let (name, kind, path_s, new_func) = unsafe {
        (
            descriptor.name.to_string_lossy(),
            descriptor.kind.to_string_lossy(),
            descriptor.path.to_string_lossy(),
            descriptor.new_func.to_string_lossy(),
        )
    };
    // Go keeps plugins loaded for the life of the process; so do we.
    std::mem::forget(lib);
    let config = Config { name, kind, path: path_s, new_func, file: file.clone(), build, descriptor };
    loaded.insert(file, config.clone());
    Ok(config)
}

/// The loader's checks of a plugin header, in order: the magic number,
/// then (once the rest may be read) the plugin ABI version, the async-ffi
/// ABI version and the target. The rustc version is not compared.
pub fn check_header(path: &Path, magic: u64, build: Option<&BuildInfo>) -> Result<(), PluginError> {
    let file = path.to_path_buf();
    if magic != abi::MAGIC {
        return Err(PluginError::Mismatch {
            path: file,
            field: "magic number",
            plugin: format!("{magic:#018x}"),
            host: format!("{:#018x}", abi::MAGIC),
            hint: ": the symbol is not a micro plugin descriptor".into(),
        });
    }
    let Some(build) = build else { return Ok(()) };
    let host = BuildInfo::host();
    let rebuild = format!(": rebuild the plugin against micro-plugin {}", host.framework);
    if build.abi_version != host.abi_version {
        return Err(PluginError::Mismatch {
            path: file,
            field: "plugin ABI version",
            plugin: build.abi_version.to_string(),
            host: host.abi_version.to_string(),
            hint: rebuild,
        });
    }
    if build.future_abi_version != host.future_abi_version {
        return Err(PluginError::Mismatch {
            path: file,
            field: "async-ffi ABI version",
            plugin: build.future_abi_version.to_string(),
            host: host.future_abi_version.to_string(),
            hint: rebuild,
        });
    }
    if build.target != host.target {
        return Err(PluginError::Mismatch {
            path: file,
            field: "target",
            plugin: build.target.clone(),
            host: host.target,
            hint: ": build the plugin for the host's target".into(),
        });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a file, or a directory on its path, that users other than its
/// owner (or root) can write to, as ssh does with keys. Sticky directories
/// such as /tmp are accepted: others cannot replace entries in them.
fn check_permissions(file: &Path) -> Result<(), PluginError> {
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let insecure = |reason: String| PluginError::Insecure { path: file.to_path_buf(), reason };
    let meta = std::fs::metadata(file).map_err(|e| insecure(e.to_string()))?;
    if meta.mode() & 0o022 != 0 {
        return Err(insecure(format!(
            "the file is writable by group or others (mode {:o})",
            meta.permissions().mode() & 0o7777
        )));
    }
    if meta.uid() != 0 && Some(meta.uid()) != me {
        return Err(insecure(format!("the file is owned by uid {}, not by this user or root", meta.uid())));
    }
    let mut dir = file.parent();
    while let Some(d) = dir {
        let m = std::fs::metadata(d).map_err(|e| insecure(format!("{}: {e}", d.display())))?;
        let sticky = m.mode() & 0o1000 != 0;
        if m.mode() & 0o022 != 0 && !sticky {
            return Err(insecure(format!(
                "directory {} is writable by group or others (mode {:o})",
                d.display(),
                m.mode() & 0o7777
            )));
        }
        dir = d.parent();
    }
    Ok(())
}

unsafe extern "C" fn host_log(ev: *const LogEvent) {
    let _ = std::panic::catch_unwind(|| {
        if ev.is_null() {
            return;
        }
        // SAFETY: the plugin passes a valid event for the duration of this call.
        let ev = unsafe { &*ev };
        // SAFETY: as above; the strings live during the call.
        let (plugin, target, message, fields) = unsafe {
            (
                ev.plugin.to_string_lossy(),
                ev.target.to_string_lossy(),
                ev.message.to_string_lossy(),
                ev.fields.to_string_lossy(),
            )
        };
        match ev.level {
            1 => {
                tracing::error!(target: "micro::plugin", plugin = %plugin, module = %target, fields = %fields, "{message}")
            }
            2 => {
                tracing::warn!(target: "micro::plugin", plugin = %plugin, module = %target, fields = %fields, "{message}")
            }
            3 => {
                tracing::info!(target: "micro::plugin", plugin = %plugin, module = %target, fields = %fields, "{message}")
            }
            4 => {
                tracing::debug!(target: "micro::plugin", plugin = %plugin, module = %target, fields = %fields, "{message}")
            }
            _ => {
                tracing::trace!(target: "micro::plugin", plugin = %plugin, module = %target, fields = %fields, "{message}")
            }
        }
    });
}

unsafe extern "C" fn host_max_level() -> u32 {
    match tracing::level_filters::LevelFilter::current().into_level() {
        None => 0,
        Some(tracing::Level::ERROR) => 1,
        Some(tracing::Level::WARN) => 2,
        Some(tracing::Level::INFO) => 3,
        Some(tracing::Level::DEBUG) => 4,
        Some(tracing::Level::TRACE) => 5,
    }
}

fn host_api() -> &'static HostApi {
    static API: HostApi = HostApi {
        abi_version: abi::ABI_VERSION,
        max_level: host_max_level,
        log: host_log,
        net: &crate::host_net::NET,
        spawn: crate::host_net::spawn,
    };
    crate::host_net::remember_runtime();
    &API
}

/// Which libraries have run their init, by file.
fn initialised() -> &'static Mutex<HashMap<PathBuf, Result<(), String>>> {
    static INIT: OnceLock<Mutex<HashMap<PathBuf, Result<(), String>>>> = OnceLock::new();
    INIT.get_or_init(Default::default)
}

/// Checks the constructor against the Type and adds it to that Type's
/// table in `catalog`: go-micro's `Init`. Returns the name of a built-in
/// it replaced, if any (the caller should warn).
pub fn init(config: &Config, catalog: &mut Catalog) -> Result<Option<String>, PluginError> {
    let path = config.file.clone();
    const KINDS: [&str; 6] = ["broker", "client", "registry", "selector", "server", "transport"];
    if !KINDS.contains(&config.kind.as_str()) {
        return Err(PluginError::UnknownType { path, kind: config.kind.clone(), name: config.name.clone() });
    }
    let produces = config.produces();
    if produces.map(|p| p.kind()) != Some(config.kind.as_str()) {
        return Err(PluginError::Invalid {
            path,
            name: config.name.clone(),
            new_func: config.new_func.clone(),
            makes: produces
                .map(|p| p.kind().to_string())
                .unwrap_or_else(|| format!("unknown component #{}", config.descriptor.produces)),
            kind: config.kind.clone(),
        });
    }
    {
        let mut done = initialised().lock().unwrap_or_else(|p| p.into_inner());
        let res = done.entry(path.clone()).or_insert_with(|| {
            // SAFETY: the descriptor passed the header checks; init catches its own panics.
            let reply = unsafe { (config.descriptor.init)(host_api()) };
            object::reply_result(reply).map(|_| ()).map_err(|e| e.detail)
        });
        if let Err(detail) = res {
            return Err(PluginError::Init { path, name: config.name.clone(), detail: detail.clone() });
        }
    }
    let d = config.descriptor;
    let name = config.name.clone();
    let construct = move |(bytes, objects): options::Encoded| -> micro_core::Result<crate::abi::FfiObject> {
        // SAFETY: `construct` is the descriptor's entry point; it catches its own panics.
        let r = unsafe { object::call_entry_point(d.construct, &bytes, objects) }.map_err(|mut e| {
            e.detail = format!("plugin {name}: {}", e.detail);
            e
        })?;
        r.object.ok_or_else(|| {
            micro_core::Error::internal("go.micro.plugin", format!("plugin {name}: constructor returned nothing"))
        })
    };
    let n = config.name.clone();
    let replaced = match produces {
        Some(Produces::Broker) => catalog
            .brokers
            .insert(n, Arc::new(move |o| proxy::import_broker(construct(options::encode_broker(&o))?)) as NewBroker)
            .is_some(),
        Some(Produces::Client) => catalog
            .clients
            .insert(n, Arc::new(move |o| proxy::import_client(construct(options::encode_client(&o))?)) as NewClient)
            .is_some(),
        Some(Produces::Registry) => catalog
            .registries
            .insert(
                n,
                Arc::new(move |o| proxy::import_registry(construct(options::encode_registry(&o))?)) as NewRegistry,
            )
            .is_some(),
        Some(Produces::Selector) => catalog
            .selectors
            .insert(
                n,
                Arc::new(move |o| proxy::import_selector(construct(options::encode_selector(&o))?)) as NewSelector,
            )
            .is_some(),
        Some(Produces::Server) => catalog
            .servers
            .insert(n, Arc::new(move |o| proxy::import_server(construct(options::encode_server(&o))?)) as NewServer)
            .is_some(),
        Some(Produces::Transport) => catalog
            .transports
            .insert(
                n,
                Arc::new(move |o| proxy::import_transport(construct(options::encode_transport(&o))?)) as NewTransport,
            )
            .is_some(),
        None => false,
    };
    Ok(replaced.then(|| config.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_split_off() {
        assert_eq!(parse_pin("./a.so#sha256=ABCD"), (PathBuf::from("./a.so"), Some("abcd".into())));
        assert_eq!(parse_pin("./a.so"), (PathBuf::from("./a.so"), None));
    }

    #[test]
    fn missing_file() {
        let e = load("/nonexistent/x.so", LoadOptions::default()).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("plugin /nonexistent/x.so: no such file"));
    }
}
