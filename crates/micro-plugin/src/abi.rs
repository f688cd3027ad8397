//! The C-layout types that cross the plugin boundary.
//!
//! Only these types cross: plain integers, pointers, byte buffers that carry
//! the function that frees them, opaque objects with a C vtable, and
//! futures and wakers with C vtables ([`ffi_future`](crate::ffi_future)). Everything richer (messages, services, options) is
//! encoded into bytes (see [`wire`](crate::wire)), so the layout of Rust's
//! own types never has to agree between host and plugin.
#![allow(unsafe_code)]

use crate::ffi_future::{FfiContext, FfiFuture, FfiPoll, FfiWaker, FfiWakerVTable, FromPanic};
use std::ffi::c_void;

/// The first eight bytes of every plugin descriptor: `MICROPLG`.
pub const MAGIC: [u8; 8] = *b"MICROPLG";

/// The version of this ABI. Bumped on any change to the types in this
/// module, the method numbering, or the wire encoding. (A forgotten bump of
/// a layout change is still caught: see [`LAYOUT`].)
///
/// 6: a host stream's read and write may run at the same time (`StreamVTable`).
/// 7: the host yields for a plugin's task (`HostApi::yield_now`).
/// 8: a successful reply may carry a hint bit (status 2); a selection uses it
///    to say that success marks are not needed.
/// 9: a caller keeps an object alive until it has dropped the futures of its
///    calls (`ObjectVTable::call`), so a call's future may borrow the object.
/// 10: the layout fingerprint covers the tags of `FfiPoll` and the futures
///    and polls of stream and listener replies too.
/// 11: a plugin allocates with the host's allocator (`HostApi::alloc` …),
///    and a client call between sides of one heap moves its strings and
///    buffers instead of copying them (see `heap`); an async call may build
///    its future in room its caller offers (`FfiArgs::place`).
/// 12: a client call between sides of one heap has a crossing of its own
///    (`ObjectVTable::client_call`): its parts cross as C structs
///    (`FfiClientCall`, `FfiClientReply`), no longer as encoded words.
pub const ABI_VERSION: u32 = 12;

/// The name of the symbol every plugin exports: its [`PluginDescriptor`],
/// read from the file before the library is opened.
pub const SYMBOL: &str = "MICRO_PLUGIN";

/// The name of the symbol with a plugin's entry points ([`PluginEntry`]),
/// looked up only after the library passed every check and was opened.
pub const ENTRY_SYMBOL: &str = "MICRO_PLUGIN_ENTRY";

/// [`PluginDescriptor::panic_strategy`] of a plugin built with `panic = "unwind"`.
pub const PANIC_UNWIND: u32 = 0;
/// [`PluginDescriptor::panic_strategy`] of a plugin built with `panic = "abort"`.
pub const PANIC_ABORT: u32 = 1;

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

unsafe extern "C" fn free_shared(ptr: *mut u8, len: usize, _: usize) {
    // SAFETY: ptr/len came from Arc::into_raw of an Arc<[u8]> of this library
    // in FfiBuf::from_shared; this gives that one reference back.
    drop(unsafe { std::sync::Arc::from_raw(std::ptr::slice_from_raw_parts(ptr as *const u8, len)) });
}

impl FfiBuf {
    /// Takes ownership of a vector.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let mut v = std::mem::ManuallyDrop::new(v);
        FfiBuf { ptr: v.as_mut_ptr(), len: v.len(), cap: v.capacity(), free: Some(free_vec) }
    }

    /// Shares a reference-counted buffer: no copy and no allocation; the
    /// receiver's drop releases this reference (with this library's own
    /// function, as for any buffer).
    pub fn from_shared(b: std::sync::Arc<[u8]>) -> Self {
        let len = b.len();
        let ptr = std::sync::Arc::into_raw(b) as *const u8 as *mut u8;
        FfiBuf { ptr, len, cap: 0, free: Some(free_shared) }
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

/// So that a [`bytes::Bytes`] can keep the buffer (`Bytes::from_owner`)
/// instead of copying it; the owning side frees it when the last slice goes.
impl AsRef<[u8]> for FfiBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
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
    /// The caller keeps the object alive until it has dropped the returned
    /// future (the future may use the object without a reference of its own).
    pub call: unsafe extern "C" fn(data: *const c_void, method: u32, args: FfiArgs) -> FfiFuture<FfiReply>,
    /// Calls a synchronous method.
    pub call_sync: unsafe extern "C" fn(data: *const c_void, method: u32, args: FfiArgs) -> FfiReply,
    /// Releases the object.
    pub drop: unsafe extern "C" fn(data: *const c_void),
    /// A client's call, for a client object (null for any other): the
    /// crossing of the hot path, with no method number and no encoding.
    /// Only between sides of one heap (a caller asks the object's heap
    /// first; see `heap`): the call's strings and buffers are handed over
    /// to the callee (which takes them before it returns, and owns them
    /// from then on), and the reply's to the caller. `place` and
    /// `place_len` offer room for the returned future, as
    /// [`FfiArgs::place`] does; the object outlives the future, as for `call`.
    pub client_call: Option<
        unsafe extern "C" fn(
            data: *const c_void,
            call: *mut FfiClientCall,
            place: *mut c_void,
            place_len: usize,
        ) -> FfiFuture<FfiClientReply>,
    >,
}

/// A vector's raw parts, handed from one side to the other of one heap:
/// the receiver owns the allocation from then on. A null `ptr` is none (a
/// vector's own pointer is never null).
#[repr(C)]
pub struct FfiVec {
    /// The allocation, or null for none.
    pub ptr: *mut u8,
    /// Its length in bytes (or, for an array of pairs, in pairs).
    pub len: usize,
    /// Its capacity, in the same unit.
    pub cap: usize,
}

/// A header, key and value handed over.
#[repr(C)]
pub struct FfiPair {
    /// The key's bytes.
    pub key: FfiVec,
    /// The value's bytes.
    pub value: FfiVec,
}

/// A client call's request and options, handed over
/// ([`ObjectVTable::client_call`]).
#[repr(C)]
pub struct FfiClientCall {
    /// The service's name.
    pub service: FfiVec,
    /// The endpoint.
    pub endpoint: FfiVec,
    /// The body's content type.
    pub content_type: FfiVec,
    /// The body.
    pub body: FfiVec,
    /// The headers: an array the caller keeps for the length of the
    /// `client_call` call (null when there are none), whose keys and values
    /// are handed over.
    pub headers: *const FfiPair,
    /// How many headers.
    pub n_headers: usize,
    /// The call's timeout in nanoseconds plus one, 0 for none.
    pub timeout: u64,
    /// Its retries plus one, 0 for none.
    pub retries: u64,
    /// The address to call, null for none.
    pub address: FfiVec,
}

/// A client call's outcome ([`ObjectVTable::client_call`]), its parts
/// handed over to the caller.
#[repr(C)]
pub struct FfiClientReply {
    /// 0: a response, in the three fields that follow; 1: an error, whose
    /// go-micro JSON is `body` (the other fields none).
    pub status: u32,
    /// The response's content type.
    pub content_type: FfiVec,
    /// Its body, or the error's JSON.
    pub body: FfiVec,
    /// Its headers: an array of [`FfiPair`] handed over with them (null when
    /// there are none; `len` and `cap` count pairs).
    pub headers: FfiVec,
}

// SAFETY: the parts are uniquely owned, like a `Vec<u8>`'s, by whichever side holds them.
unsafe impl Send for FfiVec {}

impl FfiVec {
    /// None.
    pub const NONE: FfiVec = FfiVec { ptr: std::ptr::null_mut(), len: 0, cap: 0 };
}

impl FfiClientReply {
    /// The reply of a call that failed with `e`. Only between sides of one
    /// heap, as every `FfiClientReply`: the JSON's buffer is handed over.
    pub(crate) fn error(e: &micro_core::Error) -> Self {
        FfiClientReply {
            status: 1,
            content_type: FfiVec::NONE,
            body: crate::heap::give(e.to_json().into_bytes()),
            headers: FfiVec::NONE,
        }
    }
}

impl FromPanic for FfiClientReply {
    fn from_panic() -> Self {
        Self::error(&micro_core::Error::internal("micro.plugin", "a future across the plugin boundary panicked"))
    }
}

/// An object owned by the other side of the boundary: a component, a
/// socket, a handler… Dropping it releases it on its own side.
#[repr(C)]
pub struct FfiObject {
    // Private: dropping an object calls through its vtable, so only code that
    // vouches for the pair (the unsafe `from_raw`) may make one.
    data: *const c_void,
    vtable: *const ObjectVTable,
}

// SAFETY: every object wraps a `Send + Sync` value: `export` takes one
// (`Dispatch: Send + Sync`), and `from_raw`'s caller vouches for it.
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

    /// An object from its state and vtable; dropping it calls `vtable.drop(data)`.
    ///
    /// # Safety
    /// `vtable` is null, or points at a vtable that lives as long as the
    /// object and whose functions accept `data` (owned by the new value:
    /// `drop` is called once, when it is dropped). An object is `Send` and
    /// `Sync`: its functions may be called, and it may be dropped, from any
    /// thread, also at the same time, so what `data` stands for must be
    /// safe to share and to send across threads (a `Send + Sync` value).
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub const unsafe fn from_raw(data: *const c_void, vtable: *const ObjectVTable) -> Self {
        FfiObject { data, vtable }
    }

    /// The object's state, for its vtable's functions.
    pub fn data(&self) -> *const c_void {
        self.data
    }

    /// The object's vtable; null for no object.
    pub fn vtable(&self) -> *const ObjectVTable {
        self.vtable
    }

    /// The object's vtable functions.
    ///
    /// # Panics
    /// On no object (`is_null`): callers check first.
    pub(crate) fn vtable_ref(&self) -> &ObjectVTable {
        assert!(!self.vtable.is_null(), "a call through no object");
        // SAFETY: non-null, and from_raw's contract keeps the vtable alive as long as the object.
        unsafe { &*self.vtable }
    }
}

impl Drop for FfiObject {
    fn drop(&mut self) {
        if !self.vtable.is_null() {
            // SAFETY: a non-null vtable belongs to a live object that we own
            // (from_raw's contract), and it is released once, here.
            unsafe { (self.vtable_ref().drop)(self.data) }
        }
    }
}

/// The arguments of a call: encoded bytes plus objects whose ownership
/// passes to the callee.
#[repr(C)]
pub struct FfiArgs {
    /// Encoded arguments, borrowed for the duration of the call (and, for a
    /// method whose contract says its object owns them, for as long as the
    /// callee keeps that object: see `Remote::call_lending`).
    pub bytes: FfiStr,
    /// Objects; the callee takes ownership of each.
    pub objects: *mut FfiObject,
    /// How many objects.
    pub n_objects: usize,
    /// Room the caller of an async method offers for the future it returns,
    /// or null: the callee may build that future here (its data pointer is
    /// then this address, and its drop frees nothing) instead of in a box of
    /// its own. The caller keeps the room where it is and alive until it
    /// has dropped the future. Aligned to [`PLACE_ALIGN`]; ignored by
    /// synchronous calls.
    pub place: *mut c_void,
    /// The size of `place` in bytes (0 when it is null).
    pub place_len: usize,
}

/// The alignment of [`FfiArgs::place`]: a future that needs more is boxed.
pub const PLACE_ALIGN: usize = 16;

/// The outcome of a call.
#[repr(C)]
pub struct FfiReply {
    /// 0: ok, `bytes` holds the encoded result. 1: error, `bytes` holds
    /// go-micro's error JSON. 2: ok, as 0, with the method's hint bit set
    /// (for a selection: the selector needs no success marks now).
    pub status: u32,
    /// The result or the error.
    pub bytes: FfiBuf,
    /// An object the call returned, or null.
    pub object: FfiObject,
}

impl FromPanic for FfiReply {
    fn from_panic() -> Self {
        let e = micro_core::Error::internal("micro.plugin", "a future across the plugin boundary panicked");
        FfiReply { status: 1, bytes: FfiBuf::from_vec(e.to_json().into_bytes()), object: FfiObject::null() }
    }
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
    /// Returns 0 when it took the future (read it out of `*fut`), and 1 when
    /// the host has no runtime to run it on: `*fut` is left untouched for the
    /// plugin to run on its own runtime.
    pub spawn: unsafe extern "C" fn(fut: *mut FfiFuture<()>) -> u32,
    /// A yield on the host's scheduler, for a plugin's task that runs on
    /// it: awaited, it lets the worker run what else is ready (tokio's
    /// `yield_now`, which a plugin's own copy of tokio cannot do there).
    pub yield_now: unsafe extern "C" fn() -> FfiFuture<()>,
    /// The host's global allocator: allocates `size` bytes aligned to
    /// `align` (a plugin's global allocator, see `micro_plugin::heap`).
    pub alloc: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    /// As `alloc`, zeroed.
    pub alloc_zeroed: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    /// Frees what `alloc` returned, with the same size and alignment.
    pub dealloc: unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize),
    /// Resizes what `alloc` returned to `new_size` bytes.
    pub realloc: unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8,
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

/// The functions of a host stream. Calls in one direction never overlap
/// (at most one `poll_read` at a time, and one `poll_write` or
/// `poll_shutdown`), but since ABI 6 a read may run on one thread while a
/// write runs on another: a connection's reader and writer are two tasks,
/// and the host serves each direction without a lock. `drop` comes after
/// every other call has returned.
#[repr(C)]
pub struct StreamVTable {
    /// Reads into `buf[..len]` (initialised memory).
    pub poll_read: unsafe extern "C" fn(data: *mut c_void, cx: *const FfiContext, buf: *mut u8, len: usize) -> IoPoll,
    /// Writes `buf[..len]`.
    pub poll_write:
        unsafe extern "C" fn(data: *mut c_void, cx: *const FfiContext, buf: *const u8, len: usize) -> IoPoll,
    /// Shuts the write side down.
    pub poll_shutdown: unsafe extern "C" fn(data: *mut c_void, cx: *const FfiContext) -> IoPoll,
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

// SAFETY: the host stream is a tokio TcpStream, which is Send.
unsafe impl Send for FfiStream {}
// SAFETY: the host keeps the two directions in separate cells (tokio's
// owned halves) and each function touches its own direction's only; the
// plugin side calls each direction from one half at a time (see StreamVTable).
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

impl FfiStreamReply {
    /// A failed connect or accept, with its message.
    pub fn error(message: String) -> Self {
        FfiStreamReply {
            status: 1,
            stream: FfiStream { data: std::ptr::null_mut(), vtable: std::ptr::null() },
            local: FfiBuf::empty(),
            peer: FfiBuf::empty(),
            error: FfiBuf::from_vec(message.into_bytes()),
        }
    }
}

impl FromPanic for FfiStreamReply {
    fn from_panic() -> Self {
        FfiStreamReply::error("a host socket future panicked".into())
    }
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

impl FfiListenerReply {
    /// A failed bind, with its message.
    pub fn error(message: String) -> Self {
        FfiListenerReply {
            status: 1,
            listener: FfiListener { data: std::ptr::null(), vtable: std::ptr::null() },
            addr: FfiBuf::empty(),
            error: FfiBuf::from_vec(message.into_bytes()),
        }
    }
}

impl FromPanic for FfiListenerReply {
    fn from_panic() -> Self {
        FfiListenerReply::error("a host listener future panicked".into())
    }
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

/// The exported `MICRO_PLUGIN` symbol: go-micro's Config fields and what
/// the plugin was built with.
///
/// It holds no pointers, so it needs no relocation: its bytes in the file
/// are its value, and the loader reads it from the file (found through the
/// ELF dynamic symbol table) before the library is opened, so that a foreign
/// ABI, target or panic strategy is refused before any of the file's code
/// runs (its constructors included). Its first three fields (`magic`,
/// `size`, `abi_version`) keep their places in every ABI version; the rest
/// is read only once those match. Strings are UTF-8, padded with NULs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PluginDescriptor {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// `size_of::<PluginDescriptor>()` of the plugin.
    pub size: u32,
    /// The plugin's [`ABI_VERSION`].
    pub abi_version: u32,
    /// The plugin's [`FUTURE_ABI_VERSION`](crate::ffi_future::FUTURE_ABI_VERSION):
    /// how futures and wakers cross.
    pub future_abi_version: u32,
    /// [`PANIC_UNWIND`] or [`PANIC_ABORT`]: whether the plugin's panics can be caught.
    pub panic_strategy: u32,
    /// What the constructor makes ([`Produces`] as a number).
    pub produces: u32,
    /// The plugin's [`LAYOUT`] fingerprint, little-endian.
    pub layout: [u8; 8],
    /// The plugin's name, e.g. `brpc`.
    pub name: [u8; 64],
    /// Its Type: `broker`, `client`, `registry`, `selector`, `server` or `transport`.
    pub kind: [u8; 16],
    /// Where the implementation lives (a crate path or module).
    pub path: [u8; 256],
    /// The constructor's name.
    pub new_func: [u8; 256],
    /// `rustc --version` of the compiler that built the plugin.
    pub rustc: [u8; 128],
    /// The target triple.
    pub target: [u8; 64],
    /// The version of micro-plugin the plugin was built against.
    pub framework: [u8; 32],
}

/// A string field of a [`PluginDescriptor`]: `s` padded with NULs. Too long
/// a string fails the build of the plugin (this runs at compile time).
pub const fn fixed<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    assert!(
        b.len() < N,
        "a micro plugin descriptor string is too long (name 63, kind 15, path and new_func 255 bytes)"
    );
    let mut out = [0u8; N];
    let mut i = 0;
    while i < b.len() {
        out[i] = b[i];
        i += 1;
    }
    out
}

/// The text of a string field of a [`PluginDescriptor`] (up to the first
/// NUL; invalid UTF-8 replaced).
pub fn fixed_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The ABI version a plugin built with this crate declares.
const fn abi_version() -> u32 {
    #[cfg(not(feature = "test-bad-abi"))]
    let v = ABI_VERSION;
    #[cfg(feature = "test-bad-abi")]
    let v = ABI_VERSION + 998;
    v
}

/// The descriptor of a plugin built with this crate (what
/// [`export_plugin!`](crate::export_plugin) puts in `MICRO_PLUGIN`).
/// `panic_abort` is the plugin crate's own `cfg!(panic = "abort")`: the
/// final crate decides the strategy, so the macro evaluates it there.
pub const fn descriptor(
    name: &str,
    kind: &str,
    path: &str,
    new_func: &str,
    produces: u32,
    panic_abort: bool,
) -> PluginDescriptor {
    #[cfg(not(feature = "test-bad-magic"))]
    let magic = MAGIC;
    #[cfg(feature = "test-bad-magic")]
    let magic = *b"NOTMICRO";
    #[cfg(not(feature = "test-other-rustc"))]
    let rustc = env!("MICRO_PLUGIN_RUSTC");
    #[cfg(feature = "test-other-rustc")]
    let rustc = "rustc 1.0.0-test (another compiler)";
    PluginDescriptor {
        magic,
        size: std::mem::size_of::<PluginDescriptor>() as u32,
        abi_version: abi_version(),
        future_abi_version: crate::ffi_future::FUTURE_ABI_VERSION,
        panic_strategy: if panic_abort { PANIC_ABORT } else { PANIC_UNWIND },
        produces,
        layout: LAYOUT.to_le_bytes(),
        name: fixed(name),
        kind: fixed(kind),
        path: fixed(path),
        new_func: fixed(new_func),
        rustc: fixed(rustc),
        target: fixed(env!("MICRO_PLUGIN_TARGET")),
        framework: fixed(env!("CARGO_PKG_VERSION")),
    }
}

/// What this copy of the crate is built with, as a descriptor (the host's own).
pub const HOST: PluginDescriptor = descriptor("", "", "", "", 0, cfg!(panic = "abort"));

/// The exported `MICRO_PLUGIN_ENTRY` symbol: the plugin's entry points.
/// Looked up only after the library passed every check and was opened.
#[repr(C)]
pub struct PluginEntry {
    /// The plugin's [`LAYOUT`], compared again once the library is open.
    pub layout: u64,
    /// Starts the plugin's runtime and logging; called once, before `construct`.
    pub init: unsafe extern "C" fn(host: *const HostApi) -> FfiReply,
    /// Calls the constructor with encoded options; the reply's object is the component.
    pub construct: unsafe extern "C" fn(args: FfiArgs) -> FfiReply,
}

// SAFETY: an entry is an immutable static of function pointers.
unsafe impl Sync for PluginEntry {}

/// [`fingerprint`] over two lists of words, one after the other.
const fn fingerprint2<const A: usize, const B: usize>(a: &[u64; A], b: &[u64; B]) -> u64 {
    let mut all = [0u64; 256];
    assert!(A + B <= 256, "the layout list outgrew its buffer");
    let mut i = 0;
    while i < A {
        all[i] = a[i];
        i += 1;
    }
    while i < A + B {
        all[i] = b[i - A];
        i += 1;
    }
    fingerprint(all.split_at(A + B).0)
}

/// FNV-1a over the words, at compile time.
const fn fingerprint(words: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < words.len() {
        let mut b = 0;
        while b < 8 {
            h ^= (words[i] >> (b * 8)) & 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            b += 1;
        }
        i += 1;
    }
    h
}

/// Size, alignment and field offsets of each type, in order.
macro_rules! layouts {
    ($($t:ty { $($f:ident),* })*) => {
        [$(
            std::mem::size_of::<$t>() as u64,
            std::mem::align_of::<$t>() as u64,
            $(std::mem::offset_of!($t, $f) as u64,)*
        )*]
    };
}

/// A fingerprint of the layout of every type that crosses the boundary
/// (size, alignment and the offset of each field, futures and wakers
/// included). Both ends compute it from their own copy of this crate and the
/// loader compares them, so a layout change without an [`ABI_VERSION`]
/// bump is a load error, never a misread.
pub const LAYOUT: u64 = fingerprint2(
    &layouts! {
        FfiStr { ptr, len }
        FfiBuf { ptr, len, cap, free }
        ObjectVTable { call, call_sync, drop, client_call }
        FfiVec { ptr, len, cap }
        FfiPair { key, value }
        FfiClientCall { service, endpoint, content_type, body, headers, n_headers, timeout, retries, address }
        FfiClientReply { status, content_type, body, headers }
        FfiObject { data, vtable }
        FfiArgs { bytes, objects, n_objects, place, place_len }
        FfiReply { status, bytes, object }
        HostApi { abi_version, max_level, log, net, spawn, yield_now, alloc, alloc_zeroed, dealloc, realloc }
        NetApi { connect, bind }
        IoPoll { status, n, error }
        StreamVTable { poll_read, poll_write, poll_shutdown, drop }
        FfiStream { data, vtable }
        FfiStreamReply { status, stream, local, peer, error }
        ListenerFfiVTable { accept, drop }
        FfiListener { data, vtable }
        FfiListenerReply { status, listener, addr, error }
        LogEvent { level, plugin, target, message, fields }
        PluginDescriptor { magic, size, abi_version, future_abi_version, panic_strategy, produces, layout, name, kind, path, new_func, rustc, target, framework }
        PluginEntry { layout, init, construct }
        FfiWakerVTable { clone, wake, wake_by_ref, drop }
        FfiWaker { vtable }
        FfiContext { waker }
        FfiFuture<FfiReply> { data, poll, drop }
        FfiFuture<()> { data, poll, drop }
        FfiFuture<FfiStreamReply> { data, poll, drop }
        FfiFuture<FfiListenerReply> { data, poll, drop }
        FfiFuture<FfiClientReply> { data, poll, drop }
        FfiPoll<FfiReply> {}
        FfiPoll<FfiClientReply> {}
        FfiPoll<FfiStreamReply> {}
        FfiPoll<FfiListenerReply> {}
        FfiPoll<()> {}
    },
    &poll_tags(),
);

/// The tags of `FfiPoll`'s variants, in declaration order: a reordered
/// enum reads `Ready` as `Pending` on the other side with the same sizes.
const fn poll_tags() -> [u64; 3] {
    use crate::ffi_future::FfiPoll;
    const fn tag(p: FfiPoll<()>) -> u64 {
        // SAFETY: `FfiPoll<()>` is `repr(C, u8)` with a payload of no bytes:
        // it is one byte, its tag, and every variant is a valid value to read.
        (unsafe { std::mem::transmute::<FfiPoll<()>, u8>(p) }) as u64
    }
    [tag(FfiPoll::Ready(())), tag(FfiPoll::Pending), tag(FfiPoll::Panicked)]
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// The layout of every type that crosses, pinned: a change here must
    /// come with an ABI_VERSION bump (and a new LAYOUT, checked at load).
    #[test]
    fn layouts_are_pinned() {
        macro_rules! layout {
            ($t:ty, $size:expr, $align:expr $(, $f:ident = $off:expr)*) => {
                assert_eq!((size_of::<$t>(), align_of::<$t>()), ($size, $align), "size/align of {}", stringify!($t));
                $(assert_eq!(offset_of!($t, $f), $off, "{}.{}", stringify!($t), stringify!($f));)*
            };
        }
        layout!(FfiStr, 16, 8, ptr = 0, len = 8);
        layout!(FfiBuf, 32, 8, ptr = 0, len = 8, cap = 16, free = 24);
        layout!(ObjectVTable, 32, 8, call = 0, call_sync = 8, drop = 16, client_call = 24);
        layout!(FfiVec, 24, 8, ptr = 0, len = 8, cap = 16);
        layout!(FfiPair, 48, 8, key = 0, value = 24);
        layout!(
            FfiClientCall,
            152,
            8,
            service = 0,
            endpoint = 24,
            content_type = 48,
            body = 72,
            headers = 96,
            n_headers = 104,
            timeout = 112,
            retries = 120,
            address = 128
        );
        layout!(FfiClientReply, 80, 8, status = 0, content_type = 8, body = 32, headers = 56);
        layout!(FfiObject, 16, 8, data = 0, vtable = 8);
        layout!(FfiArgs, 48, 8, bytes = 0, objects = 16, n_objects = 24, place = 32, place_len = 40);
        layout!(FfiReply, 56, 8, status = 0, bytes = 8, object = 40);
        layout!(
            HostApi,
            80,
            8,
            abi_version = 0,
            max_level = 8,
            log = 16,
            net = 24,
            spawn = 32,
            yield_now = 40,
            alloc = 48,
            alloc_zeroed = 56,
            dealloc = 64,
            realloc = 72
        );
        layout!(NetApi, 16, 8, connect = 0, bind = 8);
        layout!(IoPoll, 48, 8, status = 0, n = 8, error = 16);
        layout!(StreamVTable, 32, 8, poll_read = 0, poll_write = 8, poll_shutdown = 16, drop = 24);
        layout!(FfiStream, 16, 8, data = 0, vtable = 8);
        layout!(FfiStreamReply, 120, 8, status = 0, stream = 8, local = 24, peer = 56, error = 88);
        layout!(ListenerFfiVTable, 16, 8, accept = 0, drop = 8);
        layout!(FfiListener, 16, 8, data = 0, vtable = 8);
        layout!(FfiListenerReply, 88, 8, status = 0, listener = 8, addr = 24, error = 56);
        layout!(LogEvent, 72, 8, level = 0, plugin = 8, target = 24, message = 40, fields = 56);
        layout!(
            PluginDescriptor,
            852,
            4,
            magic = 0,
            size = 8,
            abi_version = 12,
            future_abi_version = 16,
            panic_strategy = 20,
            produces = 24,
            layout = 28,
            name = 36,
            kind = 100,
            path = 116,
            new_func = 372,
            rustc = 628,
            target = 756,
            framework = 820
        );
        layout!(PluginEntry, 24, 8, layout = 0, init = 8, construct = 16);
        layout!(FfiWakerVTable, 32, 8, clone = 0, wake = 8, wake_by_ref = 16, drop = 24);
        layout!(FfiWaker, 8, 8, vtable = 0);
        layout!(FfiContext, 8, 8, waker = 0);
        layout!(FfiFuture<FfiReply>, 24, 8, data = 0, poll = 8, drop = 16);
        layout!(FfiFuture<()>, 24, 8, data = 0, poll = 8, drop = 16);
        layout!(FfiFuture<FfiStreamReply>, 24, 8, data = 0, poll = 8, drop = 16);
        layout!(FfiFuture<FfiListenerReply>, 24, 8, data = 0, poll = 8, drop = 16);
        layout!(FfiFuture<FfiClientReply>, 24, 8, data = 0, poll = 8, drop = 16);
        layout!(FfiPoll<FfiReply>, 64, 8);
        layout!(FfiPoll<FfiStreamReply>, 128, 8);
        layout!(FfiPoll<FfiListenerReply>, 96, 8);
        layout!(FfiPoll<FfiClientReply>, 88, 8);
        layout!(FfiPoll<()>, 1, 1);
        assert_eq!(poll_tags(), [0, 1, 2], "FfiPoll's tags: Ready, Pending, Panicked");
    }

    #[test]
    fn a_poll_crosses_with_its_tag_first_and_its_value_after_it() {
        use crate::ffi_future::FfiPoll;
        // The tag is the first byte, the value at its own alignment after it,
        // for every output that crosses (`repr(C, u8)`).
        fn tag_and_value<T>(p: &FfiPoll<T>) -> (u8, usize) {
            let at = p as *const FfiPoll<T> as *const u8;
            // SAFETY: a `repr(C, u8)` enum starts with its one-byte tag.
            (unsafe { at.read() }, std::mem::align_of::<T>().max(1))
        }
        let ready = FfiPoll::Ready(FfiReply { status: 7, bytes: FfiBuf::empty(), object: FfiObject::null() });
        assert_eq!(tag_and_value(&ready), (0, 8));
        if let FfiPoll::Ready(r) = &ready {
            let offset = (r as *const FfiReply as usize) - (&ready as *const FfiPoll<FfiReply> as usize);
            assert_eq!((offset, r.status), (8, 7), "the value follows the tag at its alignment");
        }
        assert_eq!(tag_and_value(&FfiPoll::<FfiReply>::Pending).0, 1);
        assert_eq!(tag_and_value(&FfiPoll::<FfiReply>::Panicked).0, 2);
    }

    #[test]
    fn the_descriptor_prefix_never_moves() {
        // The loader reads these before it knows the plugin's ABI version.
        assert_eq!(offset_of!(PluginDescriptor, magic), 0);
        assert_eq!(offset_of!(PluginDescriptor, size), 8);
        assert_eq!(offset_of!(PluginDescriptor, abi_version), 12);
    }

    #[test]
    fn the_fingerprint_follows_the_layout() {
        // Any change of a size, alignment or offset changes the fingerprint.
        let base = fingerprint(&[1, 2, 3]);
        assert_ne!(base, fingerprint(&[1, 2, 4]));
        assert_ne!(base, fingerprint(&[1, 2, 3, 0]));
        assert_ne!(LAYOUT, 0);
    }

    #[test]
    fn fixed_strings_round_trip() {
        let f: [u8; 16] = fixed("client");
        assert_eq!(fixed_str(&f), "client");
        let full: [u8; 4] = [b'a', b'b', b'c', b'd'];
        assert_eq!(fixed_str(&full), "abcd", "a full field has no NUL");
    }
}
