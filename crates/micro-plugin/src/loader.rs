//! The host side: load, verify and initialise plugins.
#![allow(unsafe_code)]

use crate::abi::{self, HostApi, LogEvent, PluginDescriptor, PluginEntry, Produces};
use crate::{object, options, proxy};
use micro_core::catalog::{NewBroker, NewClient, NewRegistry, NewSelector, NewServer, NewTransport};
use micro_core::Catalog;
use sha2::Digest;
use std::collections::HashMap;
use std::fmt;
use std::os::fd::AsRawFd;
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
    /// The file is not a shared library, or is damaged or cut short.
    #[error("plugin {path}: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A plugin built with `panic = "abort"`, whose panics cannot be contained.
    #[error("plugin {path}: refusing to load: it was built with panic = \"abort\", so a panic in it would end this process instead of failing one call; rebuild it with panic = \"unwind\" (the default), or pass --plugin-allow-panic-abort to accept that")]
    PanicAbort {
        /// The file.
        path: PathBuf,
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
    produces: u32,
    /// The entry points: `None` for a file only inspected, never opened.
    entry: Option<&'static PluginEntry>,
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
    /// A Config for a plugin that is already in this process (made with
    /// `export_plugin!(@descriptor …)`), as if loaded from `file`: for tests
    /// of `init` and of the adapters without a shared library.
    ///
    /// # Safety
    /// `entry`'s functions must be the entry points that `export_plugin!`
    /// made next to `descriptor` (`init` and `construct` are called by [`init`]).
    #[doc(hidden)]
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub unsafe fn from_descriptor(
        descriptor: &'static PluginDescriptor,
        entry: &'static PluginEntry,
        file: PathBuf,
    ) -> Config {
        Config::of(descriptor, file, Some(entry))
    }

    fn of(d: &PluginDescriptor, file: PathBuf, entry: Option<&'static PluginEntry>) -> Config {
        Config {
            name: abi::fixed_str(&d.name),
            kind: abi::fixed_str(&d.kind),
            path: abi::fixed_str(&d.path),
            new_func: abi::fixed_str(&d.new_func),
            file,
            build: BuildInfo::of(d),
            produces: d.produces,
            entry,
        }
    }

    /// What the constructor makes, if the descriptor says something valid.
    pub fn produces(&self) -> Option<Produces> {
        Produces::from_u32(self.produces)
    }

    /// Whether the library was opened (by [`load`]); `false` after [`inspect`].
    pub fn is_loaded(&self) -> bool {
        self.entry.is_some()
    }
}

/// What a plugin was built with, from its descriptor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildInfo {
    /// Plugin ABI version.
    pub abi_version: u32,
    /// Future ABI version (how futures and wakers cross, `ffi_future`).
    pub future_abi_version: u32,
    /// Fingerprint of the layout of the boundary's C types (hex).
    pub layout: String,
    /// `unwind` or `abort`.
    pub panic: String,
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
        BuildInfo::of(&abi::HOST)
    }

    fn of(d: &PluginDescriptor) -> BuildInfo {
        BuildInfo {
            abi_version: d.abi_version,
            future_abi_version: d.future_abi_version,
            layout: format!("{:016x}", u64::from_le_bytes(d.layout)),
            panic: match d.panic_strategy {
                abi::PANIC_UNWIND => "unwind".into(),
                abi::PANIC_ABORT => "abort".into(),
                other => format!("unknown ({other})"),
            },
            rustc: abi::fixed_str(&d.rustc),
            target: abi::fixed_str(&d.target),
            framework: abi::fixed_str(&d.framework),
        }
    }
}

/// Options of [`load`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Load files that other users can write to.
    pub allow_insecure: bool,
    /// Load plugins built with `panic = "abort"` (a panic in one ends the process).
    pub allow_panic_abort: bool,
}

/// Splits `path#sha256=<hex>` into the path and the pinned digest.
pub fn parse_pin(spec: &str) -> (PathBuf, Option<String>) {
    match spec.rsplit_once("#sha256=") {
        Some((p, hex)) => (PathBuf::from(p), Some(hex.trim().to_ascii_lowercase())),
        None => (PathBuf::from(spec), None),
    }
}

/// Libraries stay loaded for the life of the process; the same file is loaded once.
fn loaded() -> &'static Mutex<HashMap<PathBuf, Loaded>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Loaded>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// A library opened by [`load`]: its outcome (a failure after `dlopen` is
/// kept too, so that a retry never maps and runs the file a second time)
/// and the sealed memory file it was loaded from, which stays open for the
/// life of the process: glibc also knows a loaded library by its path, and a
/// reused `/proc/self/fd/N` of a later plugin must never match this one.
struct Loaded {
    outcome: Result<Config, String>,
    memfd: std::fs::File,
}

impl Loaded {
    /// Whether `bytes` are the bytes this library was loaded from.
    fn same_bytes(&self, bytes: &[u8]) -> bool {
        use std::os::unix::fs::FileExt;
        let mut held = vec![0u8; bytes.len()];
        let len = self.memfd.metadata().map(|m| m.len()).unwrap_or(0);
        len == bytes.len() as u64 && self.memfd.read_exact_at(&mut held, 0).is_ok() && held == bytes
    }
}

/// The most a plugin file may weigh: it is read into memory whole.
const MAX_FILE: u64 = 1 << 30;

/// A plugin file read and checked: its bytes, exactly as they will be loaded.
struct Checked {
    file: PathBuf,
    bytes: Vec<u8>,
    descriptor: PluginDescriptor,
}

/// Reads and checks a plugin file without running any of it, in this order:
/// the path is resolved once; unless `allow_insecure`, every directory on it
/// must be owned by this user or root and not writable by others (sticky
/// directories excepted), which also rules out a symlink planted in a
/// writable directory; the file is opened once (`O_NOFOLLOW`, `O_NONBLOCK`,
/// so a FIFO cannot hang it) and `fstat`ed through that descriptor: a
/// regular file, owned by this user or root, not writable by others; its
/// bytes are read through the same descriptor and everything else is
/// checked on those bytes: the sha256 pin, the ELF structure (see `elf`),
/// the descriptor (magic, size, ABI version, future ABI version, layout
/// fingerprint, target, panic strategy).
fn check_file(spec: &str, opts: LoadOptions) -> Result<Checked, PluginError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let (path, pin) = parse_pin(spec);
    let file = std::fs::canonicalize(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PluginError::Missing { path: path.clone() },
        _ => PluginError::Open { path: path.clone(), reason: e.to_string() },
    })?;
    let open_err = |reason: String| PluginError::Open { path: file.clone(), reason };
    if !opts.allow_insecure {
        check_symlinks(&path, &file)?;
        check_directories(&file)?;
    }
    let f =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&file).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ELOOP) => {
                    open_err("refusing to load: the path became a symbolic link after it was resolved".into())
                }
                _ => open_err(e.to_string()),
            },
        )?;
    let meta = f.metadata().map_err(|e| open_err(e.to_string()))?;
    if !meta.is_file() {
        return Err(open_err(format!("not a regular file but {}", file_type(&meta))));
    }
    if !opts.allow_insecure {
        check_owner_and_mode(&file, &meta)?;
    }
    if meta.len() > MAX_FILE {
        return Err(open_err(format!("{} bytes is too large for a plugin (at most {MAX_FILE})", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| open_err(e.to_string()))?;
    if let Some(expected) = pin {
        let actual = hex(&sha2::Sha256::digest(&bytes));
        if actual != expected {
            return Err(PluginError::Digest { path: file, expected, actual });
        }
    }
    let descriptor = check_bytes(&file, &bytes, opts)?;
    Ok(Checked { file, bytes, descriptor })
}

/// The checks of a plugin file's bytes (`file` only names it in errors):
/// the ELF structure, then the descriptor. Public for the fuzz target.
#[doc(hidden)]
pub fn check_bytes(file: &Path, bytes: &[u8], opts: LoadOptions) -> Result<PluginDescriptor, PluginError> {
    let found = crate::elf::check(bytes, abi::SYMBOL, abi::ENTRY_SYMBOL).map_err(|e| match e {
        crate::elf::ElfError::Damaged(reason) => PluginError::Damaged { path: file.to_path_buf(), reason },
        crate::elf::ElfError::Foreign { plugin, host } => PluginError::Mismatch {
            path: file.to_path_buf(),
            field: "architecture",
            plugin,
            host,
            hint: ": build the plugin for the host's target".into(),
        },
        crate::elf::ElfError::NoDescriptor(reason) => {
            PluginError::NoSymbol { path: file.to_path_buf(), symbol: abi::SYMBOL, reason }
        }
    })?;
    let descriptor = read_descriptor(file, bytes, found.offset, found.size)?;
    check_descriptor(file, &descriptor, opts)?;
    if found.entry_size.is_none_or(|n| n < std::mem::size_of::<PluginEntry>()) {
        return Err(PluginError::NoSymbol {
            path: file.to_path_buf(),
            symbol: abi::ENTRY_SYMBOL,
            reason: format!("no exported `{}` symbol of the entry points' size", abi::ENTRY_SYMBOL),
        });
    }
    Ok(descriptor)
}

fn file_type(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Reads the descriptor at `offset` (the `MICRO_PLUGIN` symbol of `size`
/// bytes) field by field from the file's bytes: the fixed prefix first
/// (magic, size, ABI version), the rest only once those match this host.
fn read_descriptor(file: &Path, bytes: &[u8], offset: usize, size: usize) -> Result<PluginDescriptor, PluginError> {
    let damaged = |reason: String| PluginError::Damaged { path: file.to_path_buf(), reason };
    let at = |off: usize, n: usize| -> Result<&[u8], PluginError> {
        offset
            .checked_add(off)
            .and_then(|s| s.checked_add(n).map(|e| (s, e)))
            .filter(|&(_, e)| off + n <= size && e <= bytes.len())
            .map(|(s, e)| &bytes[s..e])
            .ok_or_else(|| damaged(format!("the `{}` symbol is too small to be a plugin descriptor", abi::SYMBOL)))
    };
    let u32_at = |off: usize| -> Result<u32, PluginError> {
        let b = at(off, 4)?;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut magic = [0u8; 8];
    magic.copy_from_slice(at(0, 8)?);
    check_magic(file, magic)?;
    let (declared, abi_version) = (u32_at(8)?, u32_at(12)?);
    let host = BuildInfo::host();
    if abi_version != host.abi_version {
        return Err(PluginError::Mismatch {
            path: file.to_path_buf(),
            field: "plugin ABI version",
            plugin: abi_version.to_string(),
            host: host.abi_version.to_string(),
            hint: format!(": rebuild the plugin against micro-plugin {}", host.framework),
        });
    }
    let want = std::mem::size_of::<PluginDescriptor>();
    if declared as usize != want || size < want {
        return Err(PluginError::Mismatch {
            path: file.to_path_buf(),
            field: "descriptor size",
            plugin: format!("{declared} (symbol of {size} bytes)"),
            host: want.to_string(),
            hint: format!(": rebuild the plugin against micro-plugin {}", host.framework),
        });
    }
    let raw = at(0, want)?;
    // SAFETY: PluginDescriptor is repr(C) of integers and byte arrays only,
    // so every bit pattern is a valid value; `raw` holds exactly its size,
    // and read_unaligned needs no alignment.
    Ok(unsafe { std::ptr::read_unaligned(raw.as_ptr() as *const PluginDescriptor) })
}

fn check_magic(path: &Path, magic: [u8; 8]) -> Result<(), PluginError> {
    if magic != abi::MAGIC {
        return Err(PluginError::Mismatch {
            path: path.to_path_buf(),
            field: "magic number",
            plugin: format!("{:#018x}", u64::from_le_bytes(magic)),
            host: format!("{:#018x}", u64::from_le_bytes(abi::MAGIC)),
            hint: ": the symbol is not a micro plugin descriptor".into(),
        });
    }
    Ok(())
}

/// The loader's checks of a descriptor whose prefix matched, in order: the
/// future ABI version, the layout fingerprint, the target, the panic
/// strategy. The rustc version is not compared.
fn check_descriptor(path: &Path, d: &PluginDescriptor, opts: LoadOptions) -> Result<(), PluginError> {
    let build = BuildInfo::of(d);
    let host = BuildInfo::host();
    let mismatch = |field: &'static str, plugin: String, host: String, hint: String| PluginError::Mismatch {
        path: path.to_path_buf(),
        field,
        plugin,
        host,
        hint,
    };
    let rebuild = format!(": rebuild the plugin against micro-plugin {}", host.framework);
    if build.future_abi_version != host.future_abi_version {
        return Err(mismatch(
            "future ABI version",
            build.future_abi_version.to_string(),
            host.future_abi_version.to_string(),
            rebuild,
        ));
    }
    if build.layout != host.layout {
        return Err(mismatch(
            "ABI layout fingerprint",
            build.layout,
            host.layout,
            format!(": the plugin's C types differ from the host's under the same ABI version{rebuild}"),
        ));
    }
    if build.target != host.target {
        return Err(mismatch("target", build.target, host.target, ": build the plugin for the host's target".into()));
    }
    match d.panic_strategy {
        abi::PANIC_UNWIND => Ok(()),
        abi::PANIC_ABORT if opts.allow_panic_abort => Ok(()),
        abi::PANIC_ABORT => Err(PluginError::PanicAbort { path: path.to_path_buf() }),
        // Neither: no opt-in covers what this micro cannot name.
        _ => Err(mismatch("panic strategy", build.panic, host.panic, rebuild)),
    }
}

/// Reads and checks a plugin file without opening it as a library: nothing
/// of the file runs (`micro plugin inspect`). The Config it returns cannot be
/// [`init`]ed; [`load`] does the same checks and then opens the library.
pub fn inspect(spec: &str, opts: LoadOptions) -> Result<Config, PluginError> {
    let c = check_file(spec, opts)?;
    Ok(Config::of(&c.descriptor, c.file, None))
}

/// Opens a plugin library and reads its descriptor: go-micro's `Load`.
/// `spec` is a path, optionally pinned: `path#sha256=<hex>`.
///
/// Every check of [`inspect`] passes before any of the file runs. The
/// checked bytes are then copied into a sealed memory file (no one can
/// change them any more) and that is what `dlopen` maps, with `RTLD_NOW`
/// (an unresolved symbol fails here, not at the first call) and
/// `RTLD_LOCAL`. A library whose code has run is never closed.
pub fn load(spec: &str, opts: LoadOptions) -> Result<Config, PluginError> {
    load_with_hook(spec, opts, |_| {})
}

/// [`load`], running `between` with the resolved path after every check and
/// before the checked bytes are copied and opened: for tests that replace
/// the file at that moment, which must change nothing (what loads is the
/// bytes that were checked). Only with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
pub fn load_between(spec: &str, opts: LoadOptions, between: impl FnOnce(&Path)) -> Result<Config, PluginError> {
    load_with_hook(spec, opts, between)
}

/// [`load`], with `between` run after the checks (see `load_between`).
fn load_with_hook(spec: &str, opts: LoadOptions, between: impl FnOnce(&Path)) -> Result<Config, PluginError> {
    let checked = check_file(spec, opts)?;
    between(&checked.file);
    let file = checked.file.clone();
    let open_err = |reason: String| PluginError::Open { path: file.clone(), reason };
    let mut loaded = loaded().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(l) = loaded.get(&file) {
        // Loaded before in this process: only if it is still the same bytes
        // (so a pin checked just now covers the code that runs).
        if !l.same_bytes(&checked.bytes) {
            return Err(open_err(
                "already loaded in this process from other bytes: the file changed since; restart to load the new version"
                    .into(),
            ));
        }
        return l.outcome.clone().map_err(open_err);
    }
    let memfd = sealed_copy(&file, &checked.bytes)
        .map_err(|e| open_err(format!("cannot copy into a sealed memory file: {e}")))?;
    let proc_path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
    // SAFETY: opening a library runs its initialisers; that is what loading a
    // plugin means. The bytes passed every check above (permissions, pin,
    // ELF structure, ABI, target, panic strategy) and cannot change any more.
    let lib = unsafe { libloading::os::unix::Library::open(Some(&proc_path), libc::RTLD_NOW | libc::RTLD_LOCAL) }
        .map_err(|e| {
            open_err(format!("not a loadable shared library: {}", e.to_string().replace(&proc_path, "the file")))
        })?;
    // SAFETY: only the symbol's address is taken; it is read below once checked.
    let sym: Result<libloading::os::unix::Symbol<*const PluginEntry>, _> = unsafe { lib.get(b"MICRO_PLUGIN_ENTRY\0") };
    let sym = sym.map(|s| *s);
    // Go keeps plugins loaded for the life of the process; so do we: the
    // library's code has run (its constructors, at least).
    std::mem::forget(lib);
    let outcome = entry_of(&file, sym.map_err(|e| e.to_string()))
        .map(|entry| Config::of(&checked.descriptor, file.clone(), Some(entry)));
    let prefix = format!("plugin {}: ", file.display());
    let kept = outcome.as_ref().cloned().map_err(|e| e.to_string().trim_start_matches(&prefix).to_string());
    loaded.insert(file.clone(), Loaded { outcome: kept, memfd });
    outcome
}

/// Checks the entry points found in an opened library.
fn entry_of(file: &Path, sym: Result<*const PluginEntry, String>) -> Result<&'static PluginEntry, PluginError> {
    let entry_ptr =
        sym.map_err(|reason| PluginError::NoSymbol { path: file.to_path_buf(), symbol: abi::ENTRY_SYMBOL, reason })?;
    if entry_ptr.is_null() || (entry_ptr as usize) % std::mem::align_of::<PluginEntry>() != 0 {
        return Err(PluginError::Open {
            path: file.to_path_buf(),
            reason: format!("the `{}` symbol is misaligned", abi::ENTRY_SYMBOL),
        });
    }
    // SAFETY: non-null and aligned, of at least the entry's size (checked in
    // the file), in a library that stays loaded; the descriptor, read from
    // these same bytes, declared this ABI's layout.
    let entry: &'static PluginEntry = unsafe { &*entry_ptr };
    if entry.layout != abi::LAYOUT {
        return Err(PluginError::Mismatch {
            path: file.to_path_buf(),
            field: "entry layout fingerprint",
            plugin: format!("{:016x}", entry.layout),
            host: format!("{:016x}", abi::LAYOUT),
            hint: ": the descriptor and the entry points disagree; rebuild the plugin".into(),
        });
    }
    Ok(entry)
}

/// A sealed memory file holding `bytes`: no one can write, grow or shrink it.
fn sealed_copy(file: &Path, bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = std::ffi::CString::new(format!("micro-plugin:{name}").replace('\0', "")).unwrap_or_default();
    // SAFETY: a valid NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Where the descriptor of a plugin file lies (offset and size): for tests
/// that damage one field of a real plugin.
#[doc(hidden)]
pub fn descriptor_offset(bytes: &[u8]) -> Option<usize> {
    crate::elf::check(bytes, abi::SYMBOL, abi::ENTRY_SYMBOL).ok().map(|f| f.offset)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This process's effective user.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses a path, as given, with a symbolic link on it that a user other
/// than this one (or root) owns: in a sticky directory such as /tmp anyone
/// may plant a link, which would choose which file loads (the kernel's
/// `protected_symlinks` rule, applied whatever the sysctl says).
fn check_symlinks(given: &Path, file: &Path) -> Result<(), PluginError> {
    let me = euid();
    let given = if given.is_absolute() {
        given.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(given)).unwrap_or_else(|_| given.to_path_buf())
    };
    let mut at = PathBuf::new();
    for part in given.components() {
        at.push(part);
        let Ok(m) = std::fs::symlink_metadata(&at) else { continue };
        if m.file_type().is_symlink() && m.uid() != 0 && m.uid() != me {
            return Err(PluginError::Insecure {
                path: file.to_path_buf(),
                reason: format!(
                    "symbolic link {} is owned by uid {}, not by this user (uid {me}) or root",
                    at.display(),
                    m.uid()
                ),
            });
        }
    }
    Ok(())
}

/// Refuses a path with a directory that a user other than this one (or
/// root) owns, or that others can write to, as ssh does with keys: either
/// could replace the file. Sticky directories such as /tmp are accepted when
/// owned by this user or root: others cannot replace entries in them.
fn check_directories(file: &Path) -> Result<(), PluginError> {
    let me = euid();
    let insecure = |reason: String| PluginError::Insecure { path: file.to_path_buf(), reason };
    let mut dir = file.parent();
    while let Some(d) = dir {
        let m = std::fs::metadata(d).map_err(|e| insecure(format!("{}: {e}", d.display())))?;
        if m.uid() != 0 && m.uid() != me {
            return Err(insecure(format!(
                "directory {} is owned by uid {}, not by this user (uid {me}) or root",
                d.display(),
                m.uid()
            )));
        }
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

/// Refuses a file (as opened: `meta` is from its descriptor) that users
/// other than its owner can write to, or that another user owns.
fn check_owner_and_mode(file: &Path, meta: &std::fs::Metadata) -> Result<(), PluginError> {
    let insecure = |reason: String| PluginError::Insecure { path: file.to_path_buf(), reason };
    if meta.mode() & 0o022 != 0 {
        return Err(insecure(format!(
            "the file is writable by group or others (mode {:o})",
            meta.permissions().mode() & 0o7777
        )));
    }
    let me = euid();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(insecure(format!("the file is owned by uid {}, not by this user (uid {me}) or root", meta.uid())));
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
        // SAFETY: as above; the event's strings live during the call.
        let text = |s: &abi::FfiStr| unsafe { s.to_string_lossy() };
        let (plugin, target, message, fields) =
            (text(&ev.plugin), text(&ev.target), text(&ev.message), text(&ev.fields));
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

/// The host's services to plugins. Its address also names the host's heap
/// (`heap::identity`): a plugin that allocates through it reports it.
pub(crate) static HOST_API: HostApi = HostApi {
    abi_version: abi::ABI_VERSION,
    max_level: host_max_level,
    log: host_log,
    net: &crate::host_net::NET,
    spawn: crate::host_net::spawn,
    yield_now: crate::host_net::yield_now,
    alloc: crate::heap::heap_alloc,
    alloc_zeroed: crate::heap::heap_alloc_zeroed,
    dealloc: crate::heap::heap_dealloc,
    realloc: crate::heap::heap_realloc,
};

fn host_api() -> &'static HostApi {
    crate::host_net::remember_runtime();
    &HOST_API
}

/// Which libraries have run their init, by file.
fn initialised() -> &'static Mutex<HashMap<PathBuf, Result<(), String>>> {
    static INIT: OnceLock<Mutex<HashMap<PathBuf, Result<(), String>>>> = OnceLock::new();
    INIT.get_or_init(Default::default)
}

/// go-micro's checks of Init: the Type is known and the constructor fits it.
pub fn check_kind(config: &Config) -> Result<(), PluginError> {
    const KINDS: [&str; 6] = ["broker", "client", "registry", "selector", "server", "transport"];
    let path = config.file.clone();
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
                .unwrap_or_else(|| format!("unknown component #{}", config.produces)),
            kind: config.kind.clone(),
        });
    }
    Ok(())
}

/// Checks the constructor against the Type and adds it to that Type's
/// table in `catalog`: go-micro's `Init`. Returns the name of a built-in
/// it replaced, if any (the caller should warn).
pub fn init(config: &Config, catalog: &mut Catalog) -> Result<Option<String>, PluginError> {
    let path = config.file.clone();
    check_kind(config)?;
    let produces = config.produces();
    let Some(entry) = config.entry else {
        return Err(PluginError::Open { path, reason: "only inspected, never loaded: load it first".into() });
    };
    {
        let mut done = initialised().lock().unwrap_or_else(|p| p.into_inner());
        let res = done.entry(path.clone()).or_insert_with(|| {
            // SAFETY: the entry of a library that passed every check (or of
            // `from_descriptor`'s caller); init catches its own panics.
            let reply = unsafe { (entry.init)(host_api()) };
            object::reply_result(reply).map(|_| ()).map_err(|e| e.detail)
        });
        if let Err(detail) = res {
            return Err(PluginError::Init { path, name: config.name.clone(), detail: detail.clone() });
        }
    }
    let name = config.name.clone();
    let construct = move |(bytes, objects): options::Encoded| -> micro_core::Result<crate::abi::FfiObject> {
        // SAFETY: `construct` is the descriptor's entry point; it catches its own panics.
        let r = unsafe { object::call_entry_point(entry.construct, &bytes, objects) }.map_err(|mut e| {
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
