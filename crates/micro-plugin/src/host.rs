//! Inside a plugin: TCP sockets that live on the host's runtime.
//!
//! A plugin's own runtime has its own reactor, so an I/O wait inside plugin
//! code ends with a wake from the plugin's reactor thread to the host's
//! executor. For a plugin whose hot path is I/O (a transport), that
//! hand-off costs more than the work. [`connect`] and [`bind`] instead ask
//! the host for sockets registered with *its* reactor; reading and writing
//! them polls the host socket with the caller's waker, so readiness wakes
//! the host task directly. [`HostStream`] implements tokio's `AsyncRead`
//! and `AsyncWrite`, so ordinary tokio I/O code works on it.
#![allow(unsafe_code)]

use crate::abi::{
    FfiListener, FfiListenerReply, FfiStr, FfiStream, FfiStreamReply, HostApi, IoPoll, ListenerFfiVTable, NetApi,
    StreamVTable,
};
use crate::ffi_future::{FfiContext, FfiFuture, WakerSlot};
use crate::runtime::Contained;
use std::future::IntoFuture as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::ReadBuf;

static HOST: OnceLock<&'static HostApi> = OnceLock::new();

/// Called by the plugin's init with the host's API.
pub(crate) fn set_host(api: &'static HostApi) {
    let _ = HOST.set(api);
}

fn net() -> io::Result<&'static NetApi> {
    HOST.get()
        .map(|h| h.net)
        .filter(|n| !n.is_null())
        // SAFETY: the host's NetApi is a static of the host, valid for the process.
        .map(|n| unsafe { &*n })
        .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no host network: not running inside a micro host"))
}

/// Spawns a task: inside a plugin, on the host's runtime (polled and, if
/// never finished, dropped with the plugin's runtime entered, so its timers
/// and `tokio::spawn` work, and a panic ends only the task); on the plugin's
/// own runtime when the host has none to offer; elsewhere with
/// `tokio::spawn`. A plugin's task that mostly wakes host tasks (a
/// connection's reader waking its callers) then does so on the host's
/// threads instead of handing every wake across from the plugin's.
pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(fut: F) {
    let Some(api) = HOST.get() else {
        tokio::spawn(fut);
        return;
    };
    let own = crate::runtime::plugin_runtime();
    let task = Contained::new(fut, own.as_ref(), |()| (), |e| tracing::error!("a plugin task ended with a {e}"));
    let mut ffi = std::mem::ManuallyDrop::new(FfiFuture::new(task));
    // SAFETY: `spawn` is the host's function for this ABI version (checked
    // at init); it either takes the future out of `ffi` (0) or leaves it.
    let taken = unsafe { (api.spawn)(&mut *ffi) } == 0;
    if !taken {
        // The host has no runtime now: run it on the plugin's own rather than lose it.
        let ffi = std::mem::ManuallyDrop::into_inner(ffi);
        match own {
            Some(rt) => {
                rt.spawn(ffi.into_future());
            }
            None => tracing::error!("a plugin task was spawned before the plugin's runtime started; dropped"),
        }
    }
}

/// Yields, as `tokio::task::yield_now` does, to the scheduler the calling
/// task runs on: inside a plugin whose task the host runs (see [`spawn`]),
/// the host's, which defers the task until the worker has run what else is
/// ready; elsewhere, tokio's own.
pub async fn yield_now() {
    match HOST.get() {
        // SAFETY: the host's function for this ABI version (checked at init).
        Some(api) => unsafe { (api.yield_now)() }.await,
        None => tokio::task::yield_now().await,
    }
}

/// Whether host sockets are available (inside a plugin loaded by a micro host).
pub fn available() -> bool {
    net().is_ok()
}

fn text(b: &crate::abi::FfiBuf) -> String {
    String::from_utf8_lossy(b.as_slice()).into_owned()
}

fn stream_of(r: FfiStreamReply) -> io::Result<HostStream> {
    if r.status != 0 || r.stream.vtable.is_null() {
        return Err(io::Error::other(text(&r.error)));
    }
    let inner = Arc::new(Owned(r.stream));
    Ok(HostStream {
        local: text(&r.local),
        peer: text(&r.peer),
        read: HostReadHalf { inner: inner.clone(), slot: WakerSlot::new() },
        write: HostWriteHalf { inner, slot: WakerSlot::new() },
    })
}

/// Connects to `addr` on the host's reactor (`TCP_NODELAY` set).
pub async fn connect(addr: &str) -> io::Result<HostStream> {
    let net = net()?;
    // SAFETY: a host entry point; the address is read before it returns.
    let fut = unsafe { (net.connect)(FfiStr::from_slice(addr.as_bytes())) };
    stream_of(fut.await)
}

/// Listens on `addr` on the host's reactor.
pub async fn bind(addr: &str) -> io::Result<HostListener> {
    let net = net()?;
    // SAFETY: as in `connect`.
    let r: FfiListenerReply = unsafe { (net.bind)(FfiStr::from_slice(addr.as_bytes())) }.await;
    if r.status != 0 || r.listener.vtable.is_null() {
        return Err(io::Error::other(text(&r.error)));
    }
    Ok(HostListener { addr: text(&r.addr), inner: r.listener })
}

/// A host stream, released when its last holder (the stream, or both of its
/// halves) is dropped.
struct Owned(FfiStream);

impl Owned {
    fn vtable(&self) -> &StreamVTable {
        // SAFETY: a stream handed out by the host has a vtable (checked in
        // `stream_of`) that is a static of the host, alive for the process.
        unsafe { &*self.0.vtable }
    }

    /// One poll in one direction, through that direction's waker bridge.
    fn poll(
        &self,
        slot: &mut WakerSlot,
        cx: &mut Context<'_>,
        f: impl FnOnce(&StreamVTable, *mut std::ffi::c_void, *const FfiContext) -> IoPoll,
    ) -> Poll<io::Result<usize>> {
        let r = slot.with(cx, |ctx| f(self.vtable(), self.0.data, ctx));
        match r.status {
            0 => Poll::Ready(Ok(r.n)),
            1 => Poll::Pending,
            _ => Poll::Ready(Err(io::Error::other(text(&r.error)))),
        }
    }

    fn poll_read(&self, slot: &mut WakerSlot, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let dst = buf.initialize_unfilled();
        let (ptr, len) = (dst.as_mut_ptr(), dst.len());
        // SAFETY: `ptr[..len]` is initialised memory we hold `&mut` to for this
        // call; the caller holds this direction alone (`&mut` of its half).
        match self.poll(slot, cx, |v, data, ctx| unsafe { (v.poll_read)(data, ctx, ptr, len) }) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n.min(len));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write(&self, slot: &mut WakerSlot, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let (ptr, len) = (buf.as_ptr(), buf.len());
        // SAFETY: `buf` is readable for this call; the caller holds this direction alone.
        self.poll(slot, cx, |v, data, ctx| unsafe { (v.poll_write)(data, ctx, ptr, len) })
    }

    fn poll_shutdown(&self, slot: &mut WakerSlot, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: a host entry point on our stream; the caller holds the sending direction alone.
        self.poll(slot, cx, |v, data, ctx| unsafe { (v.poll_shutdown)(data, ctx) }).map_ok(|_| ())
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: the stream is ours, no call on it is running (we are its
        // last holder), and it is dropped once.
        unsafe { (self.vtable().drop)(self.0.data) }
    }
}

/// A TCP stream owned by the host: its two halves, each with its own waker
/// bridge, so the host's socket sees the same waker on every poll of a
/// direction and registers it once.
pub struct HostStream {
    read: HostReadHalf,
    write: HostWriteHalf,
    local: String,
    peer: String,
}

impl HostStream {
    /// The local address.
    pub fn local_addr(&self) -> &str {
        &self.local
    }
    /// The peer's address.
    pub fn peer_addr(&self) -> &str {
        &self.peer
    }
    /// Splits the stream into halves that read and write at the same time,
    /// from two tasks, without a lock between them (the host serves each
    /// direction on its own); the connection closes when both are dropped.
    pub fn into_split(self) -> (HostReadHalf, HostWriteHalf) {
        (self.read, self.write)
    }
}

impl tokio::io::AsyncRead for HostStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for HostStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}

/// The reading half of a [`HostStream`].
pub struct HostReadHalf {
    inner: Arc<Owned>,
    slot: WakerSlot,
}

impl tokio::io::AsyncRead for HostReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.inner.poll_read(&mut this.slot, cx, buf)
    }
}

/// The writing half of a [`HostStream`]. Dropping it does not shut the
/// sending side (as with any stream, the connection closes once both halves
/// are dropped, or on `shutdown`).
pub struct HostWriteHalf {
    inner: Arc<Owned>,
    slot: WakerSlot,
}

impl tokio::io::AsyncWrite for HostWriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.inner.poll_write(&mut this.slot, cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP streams have nothing to flush.
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.inner.poll_shutdown(&mut this.slot, cx)
    }
}

/// A TCP listener owned by the host.
pub struct HostListener {
    inner: FfiListener,
    addr: String,
}

impl HostListener {
    fn vtable(&self) -> &ListenerFfiVTable {
        // SAFETY: checked non-null in `bind`; a static of the host, alive for the process.
        unsafe { &*self.inner.vtable }
    }

    /// The bound address.
    pub fn local_addr(&self) -> &str {
        &self.addr
    }
    /// The next connection.
    pub async fn accept(&self) -> io::Result<HostStream> {
        // SAFETY: a host entry point on our listener, whose state lives until our drop.
        let fut = unsafe { (self.vtable().accept)(self.inner.data) };
        stream_of(fut.await)
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        // SAFETY: the listener is ours and dropped once.
        unsafe { (self.vtable().drop)(self.inner.data) }
    }
}
