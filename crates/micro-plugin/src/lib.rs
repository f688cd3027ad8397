//! micro's plugin system: component implementations in shared libraries,
//! loaded at start-up.
//!
//! # The model (go-micro's)
//! A plugin is a `cdylib` exporting one well-known symbol, `MICRO_PLUGIN`,
//! that describes it: **Name**, **Type** (`broker`, `client`, `registry`,
//! `selector`, `server`, `transport`), **Path** and **NewFunc**. The host
//! loads the library and reads that symbol (`loader::load`, feature
//! `host`), then inits it (`loader::init`): checks that the constructor fits the Type
//! and adds it to that Type's table of named constructors, where flags
//! such as `--client brpc` find it. Plugin authors write an ordinary
//! constructor against `micro-core`'s traits and export it with
//! [`export_plugin!`].
//!
//! # Why the boundary looks like this
//! Rust has no stable ABI, and a `cdylib` carries its own copies of std,
//! tokio and tracing. Handing a plugin `Box<dyn Trait>` or the host's tokio
//! handle breaks (another copy of tokio sees no reactor; a panic unwinding
//! out of the plugin aborts the host). So:
//!
//! * The `MICRO_PLUGIN` symbol is a [`PluginDescriptor`](abi::PluginDescriptor)
//!   without pointers: the loader reads it from the file, after checking the
//!   file as ELF, and refuses an ABI-version, layout, target or panic-strategy
//!   mismatch before the library is opened, naming the file, the field and
//!   both values; the checked bytes are then loaded from a sealed memory
//!   file. The rustc version is only reported: a plugin built by another
//!   compiler with the same ABI version loads.
//! * Objects cross as opaque pointers with a C vtable of three functions —
//!   `call` (async, returns an [`FfiFuture`](ffi_future::FfiFuture)), `call_sync` and
//!   `drop` — and every argument and result is encoded into bytes
//!   ([`wire`]). One generic vtable instead of one per trait keeps the ABI
//!   tiny and identical for all six component types, and since host and
//!   plugin link the same adapters ([`proxy`]), the two ends cannot drift
//!   apart without the ABI version changing. The cost per call is one
//!   small encode/decode and an indirect call, negligible beside a socket
//!   operation (see BENCHMARKS.md).
//! * Each side enters its own tokio runtime around every call and every
//!   poll of its futures. A plugin gets a small runtime of its own at init
//!   (`MICRO_PLUGIN_THREADS` workers, default 2, or 1 on one core), so `tokio::spawn`, timers
//!   and sockets inside plugin code work whatever tokio version it uses,
//!   while the host's executor polls plugin futures through [`ffi_future`], whose wakers keep
//!   their identity across polls (a clone is a reference count, not a box).
//!   Host objects handed to a plugin (a registry, a handler…) run in the
//!   host's runtime the same way. A plugin whose hot path is I/O can use
//!   sockets on the host's reactor instead ([`host`]), so that readiness
//!   wakes host tasks directly rather than crossing from the plugin's
//!   reactor thread.
//! * Every entry point catches panics: a panic in a plugin's method, in a
//!   poll of its future, in its constructor or its init hook becomes a
//!   go-micro error at the boundary and the host goes on. The same holds
//!   for host objects called by a plugin, and for futures of either side
//!   dropped by the other (a cancelled call): they are dropped with their
//!   own runtime entered.
//! * A plugin allocates from the host's heap ([`heap`]): the export macro
//!   makes the host's allocator the plugin's global allocator, so a client
//!   call's strings and buffers change sides by their allocations instead
//!   of being encoded and copied, between sides that say they share a heap.
//! * A plugin's `tracing` events are forwarded to the host's subscriber
//!   with their level, target, message and fields.
//! * Libraries stay loaded for the life of the process, as in Go.
//! * Objects of the other side are called only by this crate's proxies,
//!   each with its own methods: a method may trust what comes with its
//!   call (a socket's batch is kept past the call, owned by the object it
//!   was lent with), so there is no public raw call:
//!
//! ```compile_fail
//! fn raw(obj: micro_plugin::abi::FfiObject) {
//!     let _ = micro_plugin::Remote::new(obj);
//! }
//! ```

// One unsafe operation per block, so that each SAFETY note covers exactly one.
#![warn(clippy::multiple_unsafe_ops_per_block)]

// The shared contract, bottom up: the C types and the byte encoding, each
// side's runtime, the object/vtable machinery, one proxy per component.
pub mod abi;
pub mod ffi_future;
pub mod heap;
mod object;
pub mod options;
pub mod proxy;
mod runtime;
pub mod wire;

// The plugin side: the export macro's functions, host sockets and spawn.
pub mod export;
pub mod host;

// The host side: checking and loading files, the host's services, building.
#[cfg(feature = "host")]
pub mod build;
#[cfg(feature = "host")]
mod elf;
#[cfg(feature = "host")]
mod host_net;
#[cfg(feature = "host")]
pub mod loader;

pub use micro_core;
pub use micro_core::async_trait;
pub use object::{export, Dispatch, Inline, Reply, Started};
pub use runtime::{panic_message, plugin_runtime};

#[cfg(feature = "host")]
pub use loader::{init, inspect, load, Config, PluginError};
