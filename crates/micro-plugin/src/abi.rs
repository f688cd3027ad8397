//! The C-layout types that cross the plugin boundary.
//!
//! Only these types cross: plain integers, pointers, byte buffers that carry
//! the function that frees them, opaque objects with a C vtable, and
//! `async_ffi` futures. Everything richer (messages, services, options) is
//! encoded into bytes (see [`wire`](crate::wire)), so the layout of Rust's
//! own types never has to agree between host and plugin.
#![allow(unsafe_code)]

use async_ffi::FfiFuture;
use std::ffi::c_void;

/// The first eight bytes of every plugin descriptor: `MICROPLG`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MICROPLG");

/// The version of this ABI. Bumped on any change to the types in this
/// module, the method numbering, or the wire encoding.
pub const ABI_VERSION: u32 = 3;

/// The name of the symbol every plugin exports.
pub const SYMBOL: &str = "MICRO_PLUGIN";

/// A borrowed UTF-8 string or byte slice.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FfiStr {
    /// Start of the bytes.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

// SAFETY: an FfiStr in a descriptor points at 'static, immutable bytes;
// elsewhere it is only used for the duration of a call.
unsafe impl Sync for FfiStr {}
// SAFETY: as above; the bytes are never mutated through it.
unsafe impl Send for FfiStr {}

impl FfiStr {
    /// Borrows a static string.
    pub const fn from_static(s: &'static str) -> Self {
        FfiStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// Borrows bytes for the duration of a call.
    pub fn from_slice(s: &[u8]) -> Self {
        FfiStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// The bytes.
    ///
    /// # Safety
    /// `ptr` must point at `len` readable bytes that live for `'a`.
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            return &[];
        }
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The text, with invalid UTF-8 replaced.
    ///
    /// # Safety
    /// As for [`as_bytes`](Self::as_bytes).
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub unsafe fn to_string_lossy(&self) -> String {
        // SAFETY: guaranteed by the caller.
        String::from_utf8_lossy(unsafe { self.as_bytes() }).into_owned()
    }
}

/// An owned byte buffer with the function that frees it, so that it is
/// always freed by the allocator that made it.
#[repr(C)]
pub struct FfiBuf {
    ptr: *mut u8,
    len: usize,
    cap: usize,
    free: Option<unsafe extern "C" fn(*mut u8, usize, usize)>,
}

// SAFETY: the buffer is uniquely owned, like a Vec<u8>.
unsafe impl Send for FfiBuf {}

unsafe extern "C" fn free_vec(ptr: *mut u8, len: usize, cap: usize) {
    // SAFETY: ptr/len/cap came from a Vec<u8> of this library in FfiBuf::from_vec.
    drop(unsafe { Vec::from_raw_parts(ptr, len, cap) });
}

impl FfiBuf {
    /// Takes ownership of a vector.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let mut v = std::mem::ManuallyDrop::new(v);
        FfiBuf { ptr: v.as_mut_ptr(), len: v.len(), cap: v.capacity(), free: Some(free_vec) }
    }

    /// An empty buffer.
    pub fn empty() -> Self {
        FfiBuf { ptr: std::ptr::null_mut(), len: 0, cap: 0, free: None }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: ptr/len describe the live buffer this value owns.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for FfiBuf {
    fn drop(&mut self) {
        if let Some(free) = self.free.take() {
            // SAFETY: the owning side's own free function, called once.
            unsafe { free(self.ptr, self.len, self.cap) }
        }
    }
}

/// The functions of an [`FfiObject`].
#[repr(C)]
pub struct ObjectVTable {
    /// Calls an async method; the arguments are read before it returns.
    pub call: unsafe extern "C" fn(data: *const c_void, method: u32, args: FfiArgs) -> FfiFuture<FfiReply>,
    /// Calls a synchronous method.
    pub call_sync: unsafe extern "C" fn(data: *const c_void, method: u32, args: FfiArgs) -> FfiReply,
    /// Releases the object.
    pub drop: unsafe extern "C" fn(data: *const c_void),
}

/// An object owned by the other side of the boundary: a component, a
/// socket, a handler… Dropping it releases it on its own side.
#[repr(C)]
pub struct FfiObject {
    /// Opaque state, only meaningful to `vtable`.
    pub data: *const c_void,
    /// Its functions; null for "no object".
    pub vtable: *const ObjectVTable,
}

// SAFETY: every exported object wraps a `Send + Sync` value (see object.rs).
unsafe impl Send for FfiObject {}
// SAFETY: as above.
unsafe impl Sync for FfiObject {}

impl FfiObject {
    /// No object.
    pub fn null() -> Self {
        FfiObject { data: std::ptr::null(), vtable: std::ptr::null() }
    }

    /// Whether this is no object.
    pub fn is_null(&self) -> bool {
        self.vtable.is_null()
    }
}

impl Drop for FfiObject {
    fn drop(&mut self) {
        if !self.vtable.is_null() {
            // SAFETY: a non-null vtable belongs to a live object that we own.
            unsafe { ((*self.vtable).drop)(self.data) }
        }
    }
}

/// The arguments of a call: encoded bytes plus objects whose ownership
/// passes to the callee.
#[repr(C)]
pub struct FfiArgs {
    /// Encoded arguments, borrowed for the duration of the call.
    pub bytes: FfiStr,
    /// Objects; the callee takes ownership of each.
    pub objects: *mut FfiObject,
    /// How many objects.
    pub n_objects: usize,
}

/// The outcome of a call.
#[repr(C)]
pub struct FfiReply {
    /// 0: ok, `bytes` holds the encoded result. 1: error, `bytes` holds
    /// go-micro's error JSON.
    pub status: u32,
    /// The result or the error.
    pub bytes: FfiBuf,
    /// An object the call returned, or null.
    pub object: FfiObject,
}

/// The host's services to a plugin, given at initialisation.
#[repr(C)]
pub struct HostApi {
    /// The host's [`ABI_VERSION`].
    pub abi_version: u32,
    /// The most verbose level the host logs now: 0 off, 1 error … 5 trace.
    /// Asked at each event, so a plugin loaded before logging is set up still logs.
    pub max_level: unsafe extern "C" fn() -> u32,
    /// Logs one event of the plugin through the host's subscriber.
    pub log: unsafe extern "C" fn(event: *const LogEvent),
    /// TCP on the host's reactor (see [`NetApi`]).
    pub net: *const NetApi,
    /// Spawns a task on the host's runtime: a plugin's background tasks
    /// (a multiplexed connection's reader and writer) then wake the host's
    /// tasks without crossing threads (see `micro_plugin::host::spawn`).
    pub spawn: unsafe extern "C" fn(fut: FfiFuture<()>),
}

// SAFETY: a HostApi is an immutable static of the host: plain data and function pointers.
unsafe impl Sync for HostApi {}

/// TCP sockets owned by the host's runtime, for plugins whose hot path is
/// I/O: readiness then wakes host tasks directly instead of crossing from
/// the plugin's reactor thread (see `micro_plugin::host`).
#[repr(C)]
pub struct NetApi {
    /// Connects to `addr` (`host:port`), `TCP_NODELAY` set.
    pub connect: unsafe extern "C" fn(addr: FfiStr) -> FfiFuture<FfiStreamReply>,
    /// Listens on `addr`.
    pub bind: unsafe extern "C" fn(addr: FfiStr) -> FfiFuture<FfiListenerReply>,
}

/// The outcome of a poll of a host stream.
#[repr(C)]
pub struct IoPoll {
    /// 0 ready (`n` bytes), 1 pending, 2 error (`error` holds the message).
    pub status: u32,
    /// Bytes read or written.
    pub n: usize,
    /// The error message when `status` is 2.
    pub error: FfiBuf,
}

/// The functions of a host stream. Calls on one stream never overlap (the
/// plugin-side wrapper needs `&mut` for each).
#[repr(C)]
pub struct StreamVTable {
    /// Reads into `buf[..len]` (initialised memory).
    pub poll_read:
        unsafe extern "C" fn(data: *mut c_void, cx: *mut async_ffi::FfiContext<'_>, buf: *mut u8, len: usize) -> IoPoll,
    /// Writes `buf[..len]`.
    pub poll_write: unsafe extern "C" fn(
        data: *mut c_void,
        cx: *mut async_ffi::FfiContext<'_>,
        buf: *const u8,
        len: usize,
    ) -> IoPoll,
    /// Shuts the write side down.
    pub poll_shutdown: unsafe extern "C" fn(data: *mut c_void, cx: *mut async_ffi::FfiContext<'_>) -> IoPoll,
    /// Closes and frees the stream.
    pub drop: unsafe extern "C" fn(data: *mut c_void),
}

/// A host stream.
#[repr(C)]
pub struct FfiStream {
    /// Opaque state.
    pub data: *mut c_void,
    /// Its functions; null for none.
    pub vtable: *const StreamVTable,
}

// SAFETY: the host stream is a tokio TcpStream, which is Send; it is used by one owner at a time.
unsafe impl Send for FfiStream {}
// SAFETY: shared references to FfiStream allow no access; all access needs `&mut` (see StreamVTable).
unsafe impl Sync for FfiStream {}

/// The outcome of a connect or accept.
#[repr(C)]
pub struct FfiStreamReply {
    /// 0 ok, 1 error.
    pub status: u32,
    /// The stream when ok.
    pub stream: FfiStream,
    /// The local address.
    pub local: FfiBuf,
    /// The peer's address.
    pub peer: FfiBuf,
    /// The error message.
    pub error: FfiBuf,
}

/// The functions of a host listener.
#[repr(C)]
pub struct ListenerFfiVTable {
    /// Accepts the next connection.
    pub accept: unsafe extern "C" fn(data: *const c_void) -> FfiFuture<FfiStreamReply>,
    /// Closes and frees the listener.
    pub drop: unsafe extern "C" fn(data: *const c_void),
}

/// A host listener.
#[repr(C)]
pub struct FfiListener {
    /// Opaque state.
    pub data: *const c_void,
    /// Its functions; null for none.
    pub vtable: *const ListenerFfiVTable,
}

// SAFETY: the host listener is a tokio TcpListener, which is Send + Sync.
unsafe impl Send for FfiListener {}
// SAFETY: as above; accept takes `&self` on the host side.
unsafe impl Sync for FfiListener {}

/// The outcome of a bind.
#[repr(C)]
pub struct FfiListenerReply {
    /// 0 ok, 1 error.
    pub status: u32,
    /// The listener when ok.
    pub listener: FfiListener,
    /// The bound address.
    pub addr: FfiBuf,
    /// The error message.
    pub error: FfiBuf,
}

/// A tracing event of a plugin, forwarded to the host.
#[repr(C)]
pub struct LogEvent {
    /// 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub level: u32,
    /// The plugin's name.
    pub plugin: FfiStr,
    /// The event's target (module path).
    pub target: FfiStr,
    /// The message.
    pub message: FfiStr,
    /// The other fields, `key=value` separated by spaces.
    pub fields: FfiStr,
}

/// What a plugin was built with. Its layout never changes, so the loader
/// can read it from any plugin before trusting anything else.
#[repr(C)]
pub struct PluginHeader {
    /// [`MAGIC`].
    pub magic: u64,
    /// The plugin's [`ABI_VERSION`].
    pub abi_version: u32,
    /// `async_ffi::ABI_VERSION` of the plugin: futures cross in its layout.
    pub future_abi_version: u32,
    /// `rustc --version` of the compiler that built the plugin.
    pub rustc: FfiStr,
    /// The target triple.
    pub target: FfiStr,
    /// The version of micro-plugin the plugin was built against.
    pub framework: FfiStr,
}

/// The component a constructor makes, by number.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produces {
    /// A broker.
    Broker = 1,
    /// A client.
    Client = 2,
    /// A registry.
    Registry = 3,
    /// A selector.
    Selector = 4,
    /// A server.
    Server = 5,
    /// A transport.
    Transport = 6,
}

impl Produces {
    /// From the number in a descriptor.
    pub fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            1 => Produces::Broker,
            2 => Produces::Client,
            3 => Produces::Registry,
            4 => Produces::Selector,
            5 => Produces::Server,
            6 => Produces::Transport,
            _ => return None,
        })
    }

    /// The plugin Type this constructor fits: `broker`, `client`, ….
    pub fn kind(self) -> &'static str {
        match self {
            Produces::Broker => "broker",
            Produces::Client => "client",
            Produces::Registry => "registry",
            Produces::Selector => "selector",
            Produces::Server => "server",
            Produces::Transport => "transport",
        }
    }
}

/// The exported symbol: the header, then go-micro's Config fields, then
/// the entry points.
#[repr(C)]
pub struct PluginDescriptor {
    /// Read and checked first.
    pub header: PluginHeader,
    /// The plugin's name, e.g. `brpc`.
    pub name: FfiStr,
    /// Its Type: `broker`, `client`, `registry`, `selector`, `server` or `transport`.
    pub kind: FfiStr,
    /// Where the implementation lives (a crate path or module).
    pub path: FfiStr,
    /// The constructor's name.
    pub new_func: FfiStr,
    /// What the constructor makes ([`Produces`] as a number).
    pub produces: u32,
    /// Starts the plugin's runtime and logging; called once, before `construct`.
    pub init: unsafe extern "C" fn(host: *const HostApi) -> FfiReply,
    /// Calls the constructor with encoded options; the reply's object is the component.
    pub construct: unsafe extern "C" fn(args: FfiArgs) -> FfiReply,
}

// SAFETY: a descriptor is an immutable static of plain data and function pointers.
unsafe impl Sync for PluginDescriptor {}
