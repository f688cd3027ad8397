//! The host's side of [`NetApi`]: tokio sockets on the host's runtime.
#![allow(unsafe_code)]

use crate::abi::{
    FfiBuf, FfiListener, FfiListenerReply, FfiStr, FfiStream, FfiStreamReply, IoPoll, ListenerFfiVTable, NetApi,
    StreamVTable,
};
use crate::object::panic_message;
use async_ffi::{FfiContext, FfiFuture, FutureExt as _};
use std::ffi::c_void;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

/// Spawns a plugin's task on the host's runtime (the caller's, else the one
/// remembered at load). Without either there is nowhere to run it: it is
/// dropped and logged; nothing unwinds across the boundary.
pub(crate) unsafe extern "C" fn spawn(fut: FfiFuture<()>) {
    let spawned = catch_unwind(AssertUnwindSafe(move || {
        match tokio::runtime::Handle::try_current().ok().or_else(|| RUNTIME.get().cloned()) {
            Some(rt) => {
                rt.spawn(fut);
            }
            None => tracing::error!("a plugin spawned a task outside any runtime; dropped"),
        }
    }));
    if spawned.is_err() {
        tracing::error!("spawning a plugin's task failed (the runtime is shutting down?)");
    }
}

static STREAM_VTABLE: StreamVTable = StreamVTable { poll_read, poll_write, poll_shutdown, drop: drop_stream };
static LISTENER_VTABLE: ListenerFfiVTable = ListenerFfiVTable { accept, drop: drop_listener };

fn buf(s: String) -> FfiBuf {
    FfiBuf::from_vec(s.into_bytes())
}

fn stream_err(e: String) -> FfiStreamReply {
    FfiStreamReply {
        status: 1,
        stream: FfiStream { data: std::ptr::null_mut(), vtable: std::ptr::null() },
        local: FfiBuf::empty(),
        peer: FfiBuf::empty(),
        error: buf(e),
    }
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

/// Runs a host future inside the host runtime (whoever polls it) with panics caught.
struct OnHost<F: Future> {
    fut: Pin<Box<F>>,
    on_panic: fn(String) -> F::Output,
}

impl<F: Future> Future for OnHost<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let _g = match RUNTIME.get() {
            Some(rt) if tokio::runtime::Handle::try_current().is_err() => Some(rt.enter()),
            _ => None,
        };
        let on_panic = self.on_panic;
        match catch_unwind(AssertUnwindSafe(|| self.fut.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(p) => Poll::Ready(on_panic(format!("panic: {}", panic_message(&*p)))),
        }
    }
}

unsafe extern "C" fn connect(addr: FfiStr) -> FfiFuture<FfiStreamReply> {
    // SAFETY: the plugin keeps the address alive during this call; we copy it.
    let addr = unsafe { addr.to_string_lossy() };
    OnHost {
        fut: Box::pin(async move {
            match TcpStream::connect(&addr).await {
                Ok(s) => stream_ok(s),
                Err(e) => stream_err(format!("connect {addr}: {e}")),
            }
        }),
        on_panic: stream_err,
    }
    .into_ffi()
}

fn listener_err(e: String) -> FfiListenerReply {
    FfiListenerReply {
        status: 1,
        listener: FfiListener { data: std::ptr::null(), vtable: std::ptr::null() },
        addr: FfiBuf::empty(),
        error: buf(e),
    }
}

unsafe extern "C" fn bind(addr: FfiStr) -> FfiFuture<FfiListenerReply> {
    // SAFETY: as in `connect`.
    let addr = unsafe { addr.to_string_lossy() };
    OnHost {
        fut: Box::pin(async move {
            match TcpListener::bind(&addr).await {
                Ok(l) => {
                    let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    FfiListenerReply {
                        status: 0,
                        listener: FfiListener {
                            data: Box::into_raw(Box::new(l)) as *const c_void,
                            vtable: &LISTENER_VTABLE,
                        },
                        addr: buf(bound),
                        error: FfiBuf::empty(),
                    }
                }
                Err(e) => listener_err(format!("listen on {addr}: {e}")),
            }
        }),
        on_panic: listener_err,
    }
    .into_ffi()
}

unsafe extern "C" fn accept(data: *const c_void) -> FfiFuture<FfiStreamReply> {
    // SAFETY: `data` is the Box<TcpListener> made by `bind`, alive until `drop_listener`;
    // the plugin's HostListener outlives this future (accept borrows it).
    let l: &'static TcpListener = unsafe { &*(data as *const TcpListener) };
    OnHost {
        fut: Box::pin(async move {
            match l.accept().await {
                Ok((s, _)) => stream_ok(s),
                Err(e) => stream_err(format!("accept: {e}")),
            }
        }),
        on_panic: stream_err,
    }
    .into_ffi()
}

unsafe extern "C" fn drop_listener(data: *const c_void) {
    // SAFETY: made by `bind`, dropped once by its owner.
    let _ = catch_unwind(|| drop(unsafe { Box::from_raw(data as *mut TcpListener) }));
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
/// # Safety
/// `data` is a live Box<TcpStream> from `stream_ok` used exclusively by this
/// call; `cx` is a valid FfiContext for this call.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
unsafe fn with_stream(
    data: *mut c_void,
    cx: *mut FfiContext<'_>,
    f: impl FnOnce(Pin<&mut TcpStream>, &mut std::task::Context<'_>) -> Poll<std::io::Result<usize>>,
) -> IoPoll {
    let res = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: guaranteed by the caller.
        let (s, cx) = unsafe { (&mut *(data as *mut TcpStream), &mut *cx) };
        cx.with_context(|cx| f(Pin::new(s), cx))
    }));
    io_poll(res.unwrap_or_else(|p| Poll::Ready(Err(std::io::Error::other(format!("panic: {}", panic_message(&*p)))))))
}

unsafe extern "C" fn poll_read(data: *mut c_void, cx: *mut FfiContext<'_>, dst: *mut u8, len: usize) -> IoPoll {
    // SAFETY: the plugin passes its exclusive stream, a valid context and `len` initialised bytes at `dst`.
    unsafe {
        with_stream(data, cx, |s, cx| {
            let slice = std::slice::from_raw_parts_mut(dst, len);
            let mut rb = ReadBuf::new(slice);
            s.poll_read(cx, &mut rb).map_ok(|()| rb.filled().len())
        })
    }
}

unsafe extern "C" fn poll_write(data: *mut c_void, cx: *mut FfiContext<'_>, src: *const u8, len: usize) -> IoPoll {
    // SAFETY: as in poll_read, with `len` readable bytes at `src`.
    unsafe { with_stream(data, cx, |s, cx| s.poll_write(cx, std::slice::from_raw_parts(src, len))) }
}

unsafe extern "C" fn poll_shutdown(data: *mut c_void, cx: *mut FfiContext<'_>) -> IoPoll {
    // SAFETY: as in poll_read.
    unsafe { with_stream(data, cx, |s, cx| s.poll_shutdown(cx).map_ok(|()| 0)) }
}

unsafe extern "C" fn drop_stream(data: *mut c_void) {
    // SAFETY: made by `stream_ok`, dropped once by its owner.
    let _ = catch_unwind(|| drop(unsafe { Box::from_raw(data as *mut TcpStream) }));
}
