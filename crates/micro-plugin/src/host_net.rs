//! The host's side of [`NetApi`]: tokio sockets on the host's runtime.
#![allow(unsafe_code)]

use crate::abi::{
    FfiBuf, FfiListener, FfiListenerReply, FfiStr, FfiStream, FfiStreamReply, IoPoll, ListenerFfiVTable, NetApi,
    StreamVTable,
};
use crate::ffi_future::{FfiContext, FfiFuture};
use crate::runtime::{panic_message, Contained};
use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::future::Future;
use std::future::IntoFuture as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// The host runtime that host sockets are created on.
static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Remembers the host's runtime (the first one that loads a plugin).
pub(crate) fn remember_runtime() {
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        let _ = RUNTIME.set(h);
    }
}

pub(crate) static NET: NetApi = NetApi { connect, bind };

fn host_runtime() -> Option<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().ok().or_else(|| RUNTIME.get().cloned())
}

/// Spawns a plugin's task on the host's runtime (the caller's, else the one
/// remembered at load). Without either it leaves the future to the plugin
/// (returns 1), which runs it on its own runtime; nothing unwinds across
/// the boundary.
///
/// # Safety
/// `fut` points at a valid future that the plugin gives up if this returns 0.
pub(crate) unsafe extern "C" fn spawn(fut: *mut FfiFuture<()>) -> u32 {
    if fut.is_null() {
        return 1;
    }
    let Some(rt) = host_runtime() else { return 1 };
    // SAFETY: valid per the contract; from here on the future is ours (returns 0 below).
    let fut = unsafe { std::ptr::read(fut) };
    if catch_unwind(AssertUnwindSafe(move || drop(rt.spawn(fut.into_future())))).is_err() {
        tracing::error!("spawning a plugin's task failed (the runtime is shutting down?)");
    }
    0
}

/// A yield on the host's scheduler for a plugin's task. Polled by that task
/// on a host worker, tokio's `yield_now` defers the wake-up until the worker
/// has run what else is ready (and looked for I/O), which is what lets a
/// connection's writer gather the requests of every caller that is ready
/// into one write; the plugin's own tokio, with no scheduler on the host's
/// threads, could only wake the task again at once.
pub(crate) unsafe extern "C" fn yield_now() -> FfiFuture<()> {
    FfiFuture::new(tokio::task::yield_now())
}

static STREAM_VTABLE: StreamVTable = StreamVTable { poll_read, poll_write, poll_shutdown, drop: drop_stream };
static LISTENER_VTABLE: ListenerFfiVTable = ListenerFfiVTable { accept, drop: drop_listener };

fn buf(s: String) -> FfiBuf {
    FfiBuf::from_vec(s.into_bytes())
}

fn stream_err(e: String) -> FfiStreamReply {
    FfiStreamReply::error(e)
}

/// A host stream as the plugin holds it: tokio's owned halves, one cell
/// each, so that a read and a write (or shutdown) may run at the same time
/// on two threads, each with `&mut` of its own half only (`StreamVTable`'s
/// contract: one call at a time per direction). tokio's halves keep its
/// exact semantics: readiness cleared after a short read or write, a
/// shutdown of a connection the peer already reset is not an error.
struct HostConn {
    read: UnsafeCell<OwnedReadHalf>,
    write: UnsafeCell<OwnedWriteHalf>,
}

fn stream_ok(s: TcpStream) -> FfiStreamReply {
    let _ = s.set_nodelay(true);
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let (read, write) = s.into_split();
    let conn = Box::new(HostConn { read: UnsafeCell::new(read), write: UnsafeCell::new(write) });
    FfiStreamReply {
        status: 0,
        stream: FfiStream { data: Box::into_raw(conn) as *mut c_void, vtable: &STREAM_VTABLE },
        local: buf(local),
        peer: buf(peer),
        error: FfiBuf::empty(),
    }
}

/// Runs a host future inside the host runtime (whoever polls or drops it) with panics caught.
fn on_host<F: Future + Send + 'static>(fut: F, on_panic: fn(String) -> F::Output) -> FfiFuture<F::Output>
where
    F::Output: Send + 'static,
{
    FfiFuture::new(Contained::with_handle(fut, host_runtime(), |v| v, on_panic))
}

unsafe extern "C" fn connect(addr: FfiStr) -> FfiFuture<FfiStreamReply> {
    // SAFETY: the plugin keeps the address alive during this call; we copy it.
    let addr = unsafe { addr.to_string_lossy() };
    on_host(
        async move {
            match TcpStream::connect(&addr).await {
                Ok(s) => stream_ok(s),
                Err(e) => stream_err(format!("connect {addr}: {e}")),
            }
        },
        stream_err,
    )
}

fn listener_err(e: String) -> FfiListenerReply {
    FfiListenerReply::error(e)
}

unsafe extern "C" fn bind(addr: FfiStr) -> FfiFuture<FfiListenerReply> {
    // SAFETY: as in `connect`.
    let addr = unsafe { addr.to_string_lossy() };
    on_host(
        async move {
            match TcpListener::bind(&addr).await {
                Ok(l) => {
                    let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    // Behind an Arc so that each accept future owns a handle:
                    // the plugin may drop the listener before an accept ends.
                    let l: Box<Arc<TcpListener>> = Box::new(Arc::new(l));
                    FfiListenerReply {
                        status: 0,
                        listener: FfiListener { data: Box::into_raw(l) as *const c_void, vtable: &LISTENER_VTABLE },
                        addr: buf(bound),
                        error: FfiBuf::empty(),
                    }
                }
                Err(e) => listener_err(format!("listen on {addr}: {e}")),
            }
        },
        listener_err,
    )
}

unsafe extern "C" fn accept(data: *const c_void) -> FfiFuture<FfiStreamReply> {
    // SAFETY: `data` is the Box<Arc<TcpListener>> made by `bind`, alive until
    // `drop_listener`, which cannot run during this call (the caller holds it).
    let l: Arc<TcpListener> = unsafe { &*(data as *const Arc<TcpListener>) }.clone();
    on_host(
        async move {
            match l.accept().await {
                Ok((s, _)) => stream_ok(s),
                Err(e) => stream_err(format!("accept: {e}")),
            }
        },
        stream_err,
    )
}

unsafe extern "C" fn drop_listener(data: *const c_void) {
    // SAFETY: made by `bind`, dropped once by its owner.
    let _ = catch_unwind(|| drop(unsafe { Box::from_raw(data as *mut Arc<TcpListener>) }));
}

fn io_poll(p: Poll<std::io::Result<usize>>) -> IoPoll {
    match p {
        Poll::Ready(Ok(n)) => IoPoll { status: 0, n, error: FfiBuf::empty() },
        Poll::Pending => IoPoll { status: 1, n: 0, error: FfiBuf::empty() },
        Poll::Ready(Err(e)) => IoPoll { status: 2, n: 0, error: buf(e.to_string()) },
    }
}

/// Polls one direction of a host stream with the plugin's context, panics caught.
///
/// # Safety
/// `data` is a live HostConn from `stream_ok`, not yet dropped; `half` is
/// one of its cells, which no other call uses during this one (one call at
/// a time per direction); `cx` is a valid FfiContext for this call.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
unsafe fn with_half<H: Unpin>(
    half: *mut H,
    cx: *const FfiContext,
    f: impl FnOnce(Pin<&mut H>, &mut std::task::Context<'_>) -> Poll<std::io::Result<usize>>,
) -> IoPoll {
    let res = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: guaranteed by the caller: this direction's half, ours alone for this call.
        let h = unsafe { &mut *half };
        // SAFETY: guaranteed by the caller: a valid context for this call.
        let cx = unsafe { &*cx };
        // SAFETY: the plugin's context, valid during this poll.
        unsafe { cx.with_context(|cx| f(Pin::new(h), cx)) }
    }));
    io_poll(res.unwrap_or_else(|p| Poll::Ready(Err(std::io::Error::other(format!("panic: {}", panic_message(&*p)))))))
}

/// The reading half's cell of the HostConn at `data`. Only the field's
/// address is computed: no reference to the HostConn is made, so a call in
/// the other direction may hold its own half meanwhile.
///
/// # Safety
/// `data` is a live HostConn from `stream_ok`.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
unsafe fn read_half(data: *mut c_void) -> *mut OwnedReadHalf {
    // SAFETY: guaranteed by the caller: `data` points at a live HostConn.
    unsafe { UnsafeCell::raw_get(std::ptr::addr_of!((*(data as *const HostConn)).read)) }
}

/// The writing half's cell of the HostConn at `data` (see [`read_half`]).
///
/// # Safety
/// `data` is a live HostConn from `stream_ok`.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
unsafe fn write_half(data: *mut c_void) -> *mut OwnedWriteHalf {
    // SAFETY: guaranteed by the caller: `data` points at a live HostConn.
    unsafe { UnsafeCell::raw_get(std::ptr::addr_of!((*(data as *const HostConn)).write)) }
}

unsafe extern "C" fn poll_read(data: *mut c_void, cx: *const FfiContext, dst: *mut u8, len: usize) -> IoPoll {
    let read = |r: Pin<&mut OwnedReadHalf>, cx: &mut std::task::Context<'_>| {
        // SAFETY: the plugin passes `len` initialised bytes at `dst`, ours for this call.
        let slice = unsafe { std::slice::from_raw_parts_mut(dst, len) };
        let mut rb = ReadBuf::new(slice);
        r.poll_read(cx, &mut rb).map_ok(|()| rb.filled().len())
    };
    // SAFETY: the plugin passes its live stream (a HostConn).
    let half = unsafe { read_half(data) };
    // SAFETY: the plugin reads one call at a time and passes a valid context.
    unsafe { with_half(half, cx, read) }
}

unsafe extern "C" fn poll_write(data: *mut c_void, cx: *const FfiContext, src: *const u8, len: usize) -> IoPoll {
    let write = |w: Pin<&mut OwnedWriteHalf>, cx: &mut std::task::Context<'_>| {
        // SAFETY: the plugin passes `len` readable bytes at `src` for this call.
        let src = unsafe { std::slice::from_raw_parts(src, len) };
        w.poll_write(cx, src)
    };
    // SAFETY: the plugin passes its live stream (a HostConn).
    let half = unsafe { write_half(data) };
    // SAFETY: the plugin writes (or shuts down) one call at a time and passes a valid context.
    unsafe { with_half(half, cx, write) }
}

unsafe extern "C" fn poll_shutdown(data: *mut c_void, cx: *const FfiContext) -> IoPoll {
    // SAFETY: as in poll_write.
    let half = unsafe { write_half(data) };
    // SAFETY: as in poll_write.
    unsafe { with_half(half, cx, |w, cx| w.poll_shutdown(cx).map_ok(|()| 0)) }
}

unsafe extern "C" fn drop_stream(data: *mut c_void) {
    let _ = catch_unwind(|| {
        // SAFETY: made by `stream_ok`, dropped once by its owner after every other call returned.
        let conn = unsafe { Box::from_raw(data as *mut HostConn) };
        let HostConn { read, write } = *conn;
        // Closed as a whole stream is (dropping tokio's write half alone would
        // first shut the sending side, which a plain drop does not).
        write.into_inner().forget();
        drop(read);
    });
}
