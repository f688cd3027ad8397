//! The host's side of [`NetApi`]: tokio sockets on the host's runtime.
#![allow(unsafe_code)]

use crate::abi::{
    FfiBuf, FfiListener, FfiListenerReply, FfiStr, FfiStream, FfiStreamReply, IoPoll, ListenerFfiVTable, NetApi,
    StreamVTable,
};
use crate::ffi_future::{FfiContext, FfiFuture};
use crate::runtime::{panic_message, Contained};
use std::ffi::c_void;
use std::future::Future;
use std::future::IntoFuture as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::Poll;
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

static STREAM_VTABLE: StreamVTable = StreamVTable { poll_read, poll_write, poll_shutdown, drop: drop_stream };
static LISTENER_VTABLE: ListenerFfiVTable = ListenerFfiVTable { accept, drop: drop_listener };

fn buf(s: String) -> FfiBuf {
    FfiBuf::from_vec(s.into_bytes())
}

fn stream_err(e: String) -> FfiStreamReply {
    FfiStreamReply::error(e)
}

fn stream_ok(s: TcpStream) -> FfiStreamReply {
    let _ = s.set_nodelay(true);
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    FfiStreamReply {
        status: 0,
        stream: FfiStream { data: Box::into_raw(Box::new(s)) as *mut c_void, vtable: &STREAM_VTABLE },
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
    FfiFuture::new(Contained::new(Box::pin(fut), host_runtime(), |v| v, on_panic))
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

/// Polls a host stream with the plugin's context, panics caught.
///
/// The stream is borrowed shared: a plugin's connection reads on one thread
/// while it writes on another (see [`StreamVTable`]), each direction through
/// tokio's `&TcpStream` readiness API, as `TcpStream::into_split`'s halves
/// do, so neither waits for the other.
///
/// # Safety
/// `data` is a live Box<TcpStream> from `stream_ok`; `cx` is a valid
/// FfiContext for this call.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
unsafe fn with_stream(
    data: *mut c_void,
    cx: *const FfiContext,
    f: impl FnOnce(&TcpStream, &mut std::task::Context<'_>) -> Poll<std::io::Result<usize>>,
) -> IoPoll {
    let res = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: guaranteed by the caller: the stream is live until `drop_stream`,
        // and only shared references to it are ever made.
        let s = unsafe { &*(data as *const TcpStream) };
        // SAFETY: guaranteed by the caller: a valid context for this call.
        let cx = unsafe { &*cx };
        // SAFETY: the plugin's context, valid during this poll.
        unsafe { cx.with_context(|cx| f(s, cx)) }
    }));
    io_poll(res.unwrap_or_else(|p| Poll::Ready(Err(std::io::Error::other(format!("panic: {}", panic_message(&*p)))))))
}

/// Polls one direction of `s`: waits for readiness, then tries `io`; a
/// spurious readiness (`WouldBlock`, which clears it) waits again.
fn poll_io(
    cx: &mut std::task::Context<'_>,
    mut ready: impl FnMut(&mut std::task::Context<'_>) -> Poll<std::io::Result<()>>,
    mut io: impl FnMut() -> std::io::Result<usize>,
) -> Poll<std::io::Result<usize>> {
    loop {
        if let Err(e) = std::task::ready!(ready(cx)) {
            return Poll::Ready(Err(e));
        }
        match io() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

unsafe extern "C" fn poll_read(data: *mut c_void, cx: *const FfiContext, dst: *mut u8, len: usize) -> IoPoll {
    let read = |s: &TcpStream, cx: &mut std::task::Context<'_>| {
        // SAFETY: the plugin passes `len` initialised bytes at `dst`, ours for this call.
        let slice = unsafe { std::slice::from_raw_parts_mut(dst, len) };
        poll_io(cx, |cx| s.poll_read_ready(cx), || s.try_read(slice))
    };
    // SAFETY: the plugin passes its live stream and a valid context.
    unsafe { with_stream(data, cx, read) }
}

unsafe extern "C" fn poll_write(data: *mut c_void, cx: *const FfiContext, src: *const u8, len: usize) -> IoPoll {
    let write = |s: &TcpStream, cx: &mut std::task::Context<'_>| {
        // SAFETY: the plugin passes `len` readable bytes at `src` for this call.
        let src = unsafe { std::slice::from_raw_parts(src, len) };
        poll_io(cx, |cx| s.poll_write_ready(cx), || s.try_write(src))
    };
    // SAFETY: as in poll_read.
    unsafe { with_stream(data, cx, write) }
}

unsafe extern "C" fn poll_shutdown(data: *mut c_void, cx: *const FfiContext) -> IoPoll {
    // TCP's shutdown does not wait: shut the sending side through the socket
    // (a shared borrow, so a read in progress on another thread is unaffected).
    let shutdown = |s: &TcpStream, _: &mut std::task::Context<'_>| {
        Poll::Ready(socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write).map(|()| 0))
    };
    // SAFETY: as in poll_read.
    unsafe { with_stream(data, cx, shutdown) }
}

unsafe extern "C" fn drop_stream(data: *mut c_void) {
    // SAFETY: made by `stream_ok`, dropped once by its owner.
    let _ = catch_unwind(|| drop(unsafe { Box::from_raw(data as *mut TcpStream) }));
}
