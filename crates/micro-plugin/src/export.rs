//! The plugin side: what [`export_plugin!`](crate::export_plugin) expands
//! to calls, the plugin's own runtime, and the forwarding of its tracing
//! events to the host.
#![allow(unsafe_code)]

use crate::abi::{self, FfiArgs, FfiBuf, FfiObject, FfiReply, FfiStr, HostApi, LogEvent, Produces};
use crate::runtime::panic_message;
use crate::{options, proxy};
use micro_core::{
    Broker, BrokerOptions, Client, ClientOptions, Error, Registry, RegistryOptions, Result, Selector, SelectorOptions,
    Server, ServerOptions, Transport, TransportOptions,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Marker types that let one function accept each kind of constructor.
pub mod kinds {
    /// `fn(BrokerOptions) -> Result<Arc<dyn Broker>>`.
    pub struct Broker;
    /// `fn(ClientOptions) -> Result<Arc<dyn Client>>`.
    pub struct Client;
    /// `fn(RegistryOptions) -> Result<Arc<dyn Registry>>`.
    pub struct Registry;
    /// `fn(SelectorOptions) -> Result<Arc<dyn Selector>>`.
    pub struct Selector;
    /// `fn(ServerOptions) -> Result<Arc<dyn Server>>`.
    pub struct Server;
    /// `fn(TransportOptions) -> Result<Arc<dyn Transport>>`.
    pub struct Transport;
}

/// A component constructor of one of the six kinds.
pub trait Constructor<Kind> {
    /// What it makes.
    const PRODUCES: Produces;
    /// Decodes the options, constructs, and exports the component.
    fn construct(&self, bytes: &[u8], objects: Vec<FfiObject>) -> Result<FfiObject>;
}

macro_rules! constructor {
    ($kind:ident, $opts:ty, $tr:ident, $decode:path, $export:path) => {
        impl<F> Constructor<kinds::$kind> for F
        where
            F: Fn($opts) -> Result<Arc<dyn $tr>>,
        {
            const PRODUCES: Produces = Produces::$kind;
            fn construct(&self, bytes: &[u8], objects: Vec<FfiObject>) -> Result<FfiObject> {
                let opts = $decode(bytes, objects)?;
                Ok($export(self(opts)?))
            }
        }
    };
}

constructor!(Broker, BrokerOptions, Broker, options::decode_broker, proxy::export_broker);
constructor!(Client, ClientOptions, Client, options::decode_client, proxy::export_client);
constructor!(Registry, RegistryOptions, Registry, options::decode_registry, proxy::export_registry);
constructor!(Selector, SelectorOptions, Selector, options::decode_selector, proxy::export_selector);
constructor!(Server, ServerOptions, Server, options::decode_server, proxy::export_server);
constructor!(Transport, TransportOptions, Transport, options::decode_transport, proxy::export_transport);

/// What a constructor makes, in a `static` initialiser.
pub const fn produces<K, F: Constructor<K>>(_: &F) -> u32 {
    F::PRODUCES as u32
}

pub use crate::runtime::plugin_runtime;

fn error_reply(e: Error) -> FfiReply {
    FfiReply { status: 1, bytes: FfiBuf::from_vec(e.to_json().into_bytes()), object: FfiObject::null() }
}

fn ok_reply(object: FfiObject) -> FfiReply {
    FfiReply { status: 0, bytes: FfiBuf::empty(), object }
}

/// The plugin's `init` entry point: takes the host's heap (when
/// `host_heap`, see below), starts its runtime, forwards its logging to the
/// host, then runs the author's init hook.
///
/// # Safety
/// `host` must point at a valid [`HostApi`] that outlives the process.
/// `host_heap` must be true only if [`HostAllocator`](crate::heap::HostAllocator)
/// is this library's global allocator.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub unsafe fn init(host: *const HostApi, name: &'static str, host_heap: bool, hook: impl FnOnce()) -> FfiReply {
    // First of all, before anything allocates: a pointer of the plugin's
    // own allocator must never reach the host's (see `heap`). Reading the
    // version allocates nothing; an API of another version has other fields.
    // SAFETY: a valid HostApi or null, by this function's contract.
    if host_heap && !host.is_null() && unsafe { (*host).abi_version } == abi::ABI_VERSION {
        // SAFETY: as above; the host's API is a static of the host.
        crate::heap::adopt(unsafe { &*host });
    }
    let res = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
        if host.is_null() {
            return Err(Error::internal("go.micro.plugin", "init: no host API"));
        }
        // SAFETY: checked non-null; valid per this function's contract.
        let host = unsafe { &*host };
        if host.abi_version != abi::ABI_VERSION {
            return Err(Error::internal(
                "go.micro.plugin",
                format!("init: host ABI version {} but plugin ABI version {}", host.abi_version, abi::ABI_VERSION),
            ));
        }
        // Small, but two threads when there are two cores: the plugin's
        // reactor then keeps up while one thread runs plugin tasks.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads =
            std::env::var("MICRO_PLUGIN_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(cores.min(2)).max(1);
        crate::runtime::start_plugin_runtime(name, threads)
            .map_err(|e| Error::internal("go.micro.plugin", format!("init: cannot start the plugin runtime: {e}")))?;
        // SAFETY: the host's API is a static of the host, valid for the process.
        crate::host::set_host(unsafe { &*(host as *const HostApi) });
        let _ = tracing::subscriber::set_global_default(Forwarder { plugin: name, log: host.log, max: host.max_level });
        // Panics are caught at the boundary and returned as errors; report
        // them through the host's logging rather than the plugin's stderr.
        std::panic::set_hook(Box::new(|info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            tracing::error!(location = %at, "plugin code panicked: {}", panic_message(info.payload()));
        }));
        let rt = plugin_runtime();
        let _g = rt.as_ref().map(|h| h.enter());
        hook();
        Ok(())
    }));
    match res {
        Ok(Ok(())) => ok_reply(FfiObject::null()),
        Ok(Err(e)) => error_reply(e),
        Err(p) => error_reply(Error::internal("go.micro.plugin", format!("panic in init: {}", panic_message(&*p)))),
    }
}

/// The plugin's `construct` entry point.
///
/// # Safety
/// `args` must be valid as described by [`FfiArgs`].
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub unsafe fn construct<K, F: Constructor<K>>(f: &F, args: FfiArgs) -> FfiReply {
    let res = catch_unwind(AssertUnwindSafe(|| {
        let mut objects = Vec::with_capacity(args.n_objects);
        for i in 0..args.n_objects {
            // SAFETY: the host hands over `n_objects` objects: `i` stays inside the array.
            let at = unsafe { args.objects.add(i) };
            // SAFETY: an initialised object the host gave up; each is read once.
            objects.push(unsafe { std::ptr::read(at) });
        }
        // SAFETY: the host keeps the bytes alive during this call.
        let bytes = unsafe { args.bytes.as_bytes() };
        let rt = plugin_runtime();
        let _g = rt.as_ref().map(|h| h.enter());
        f.construct(bytes, objects)
    }));
    match res {
        Ok(Ok(obj)) => ok_reply(obj),
        Ok(Err(e)) => error_reply(e),
        Err(p) => {
            error_reply(Error::internal("go.micro.plugin", format!("panic in constructor: {}", panic_message(&*p))))
        }
    }
}

/// A tracing subscriber inside the plugin that hands every event to the host.
struct Forwarder {
    plugin: &'static str,
    log: unsafe extern "C" fn(*const LogEvent),
    max: unsafe extern "C" fn() -> u32,
}

fn level_number(l: &tracing::Level) -> u32 {
    match *l {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            if !self.rest.is_empty() {
                self.rest.push(' ');
            }
            self.rest.push_str(&format!("{}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.record_debug(field, &value);
        }
    }
}

impl tracing::Subscriber for Forwarder {
    fn register_callsite(&self, _: &'static tracing::Metadata<'static>) -> tracing_core::Interest {
        // The host's level can change after the plugin is loaded: decide per event.
        tracing_core::Interest::sometimes()
    }
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        // SAFETY: the host's function, valid for the life of the process.
        level_number(metadata.level()) <= unsafe { (self.max)() }
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        thread_local! {
            static FORWARDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        // If plugin and host ever share one copy of tracing (a plugin
        // compiled into the host, as in tests), the host's event would come
        // straight back here: drop it instead of recursing.
        if FORWARDING.with(|f| f.replace(true)) {
            return;
        }
        self.forward(event);
        FORWARDING.with(|f| f.set(false));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Forwarder {
    fn forward(&self, event: &tracing::Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        let ev = LogEvent {
            level: level_number(meta.level()),
            plugin: FfiStr::from_slice(self.plugin.as_bytes()),
            target: FfiStr::from_slice(meta.target().as_bytes()),
            message: FfiStr::from_slice(f.message.as_bytes()),
            fields: FfiStr::from_slice(f.rest.as_bytes()),
        };
        // SAFETY: the host's log function reads the event during the call only.
        unsafe { (self.log)(&ev) }
    }
}

/// Exports a component constructor as a micro plugin: the library's
/// `MICRO_PLUGIN` symbol, with go-micro's Config fields.
///
/// ```ignore
/// micro_plugin::export_plugin!(
///     name: "brpc",
///     kind: "client",
///     new: brpc::new_client,      // fn(ClientOptions) -> Result<Arc<dyn Client>>
///     path: "brpc",               // optional: where the implementation lives
///     init: || tracing::info!("brpc loaded"),   // optional hook, run at Init
/// );
/// ```
///
/// `kind` is the plugin's Type. The constructor's signature decides what it
/// makes; the loader refuses a plugin whose Type and constructor disagree
/// (`invalid plugin <name>`). The crate must be built as a `cdylib`.
///
/// It also makes [`HostAllocator`](crate::heap::HostAllocator) the
/// library's global allocator: the plugin then allocates from the host's
/// heap, and client calls change sides without copies (see
/// [`heap`](crate::heap)). So the library cannot set a global allocator
/// of its own; it has the host's.
#[macro_export]
macro_rules! export_plugin {
    (@export $heap:literal, $(#[$attr:meta])* $module:ident, name: $name:expr, kind: $kind:expr, new: $new:path $(, path: $path:expr)? $(, init: $init:expr)? $(,)?) => {
        #[doc(hidden)]
        #[allow(unused_imports)]
        pub mod $module {
            use super::*;
            unsafe extern "C" fn init(host: *const $crate::abi::HostApi) -> $crate::abi::FfiReply {
                // SAFETY: called by the micro loader with its host API.
                unsafe { $crate::export::init(host, $name, $heap, || { $( ($init)(); )? }) }
            }
            unsafe extern "C" fn construct(args: $crate::abi::FfiArgs) -> $crate::abi::FfiReply {
                // SAFETY: called by the micro loader with valid arguments.
                unsafe { $crate::export::construct(&$new, args) }
            }
            /// The micro plugin descriptor, read by the loader from the file.
            $(#[$attr])*
            pub static MICRO_PLUGIN: $crate::abi::PluginDescriptor = $crate::abi::descriptor(
                $name,
                $kind,
                $crate::__plugin_path!($($path)?),
                stringify!($new),
                $crate::export::produces(&$new),
                cfg!(panic = "abort"),
            );
            /// The plugin's entry points, looked up once the library is open.
            $(#[$attr])*
            pub static MICRO_PLUGIN_ENTRY: $crate::abi::PluginEntry =
                $crate::abi::PluginEntry { layout: $crate::abi::LAYOUT, init, construct };
        }
    };
    // A plugin's descriptor and entry points in a module of their own, for
    // tests that export several from one binary (which keeps its allocator).
    (@descriptor $($rest:tt)*) => {
        $crate::export_plugin!(@export false, $($rest)*);
    };
    ($($rest:tt)*) => {
        /// The plugin's global allocator: the host's heap (see `micro_plugin::heap`).
        #[global_allocator]
        static __MICRO_PLUGIN_HEAP: $crate::heap::HostAllocator = $crate::heap::HostAllocator;
        $crate::export_plugin!(@export true, #[unsafe(no_mangle)] __micro_plugin, $($rest)*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_path {
    () => {
        module_path!()
    };
    ($p:expr) => {
        $p
    };
}
