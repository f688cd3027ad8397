//! Each side's tokio runtime, and futures that stay on their side.
//!
//! A plugin carries its own copy of tokio, whose thread-local context is
//! empty on the host's threads (and the other way round). So code of one
//! side, polled or dropped by a thread of the other, must have its own
//! runtime entered, and must not unwind into the caller: a panic across
//! `extern "C"` aborts the process. [`Contained`] does both for every
//! future that crosses, when it is polled *and* when it is dropped (a
//! cancelled call drops the other side's future on the canceller's thread).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tokio::runtime::{EnterGuard, Handle, Runtime};

static PLUGIN_RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The plugin's own runtime, inside a plugin after initialisation.
pub fn plugin_runtime() -> Option<Handle> {
    PLUGIN_RUNTIME.get().map(|rt| rt.handle().clone())
}

/// Starts the plugin's runtime once (later calls keep the first).
pub(crate) fn start_plugin_runtime(name: &str, threads: usize) -> std::io::Result<()> {
    if PLUGIN_RUNTIME.get().is_none() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(format!("plugin-{name}"))
            .enable_all()
            .build()?;
        // A lost race leaves the other runtime in place; this one is dropped.
        let _ = PLUGIN_RUNTIME.set(rt);
    }
    Ok(())
}

/// The runtime of this side: inside a plugin, the plugin's own; in the
/// host, the current one.
pub(crate) fn this_side() -> Option<Handle> {
    plugin_runtime().or_else(|| Handle::try_current().ok())
}

thread_local! {
    /// Set once this thread (a host thread, seen from the plugin's copy of
    /// this crate) has the plugin's runtime entered for good.
    static PLUGIN_ENTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Enters `rt` unless the calling thread is already in a runtime of this
/// side's tokio (a thread of the other side never is: its tokio is another copy).
///
/// Inside a plugin the runtime is always the plugin's one, and a host thread
/// that polls plugin code enters it once and stays in it: the plugin's copy
/// of tokio keeps its context in its own thread-locals, which the host's
/// tokio never reads, so this changes nothing for the host, and saves each
/// later poll a handle clone and a thread-local swap (a fifth of the runtime
/// bookkeeping of a client plugin's call, BENCHMARKS.md).
pub(crate) fn enter(rt: &Option<Handle>) -> Option<EnterGuard<'_>> {
    let rt = rt.as_ref()?;
    // In a task of this side's tokio: its runtime is current (cheaper to
    // ask than `try_current`, which clones the handle).
    if tokio::task::try_id().is_some() {
        return None;
    }
    if let Some(plugin) = PLUGIN_RUNTIME.get() {
        if PLUGIN_ENTERED.get() {
            return None;
        }
        if Handle::try_current().is_err() {
            // Never left: the guard is forgotten (nested guards of other
            // runtimes still restore this one when they drop).
            std::mem::forget(plugin.handle().enter());
            PLUGIN_ENTERED.set(true);
        }
        return None;
    }
    match Handle::try_current() {
        Err(_) => Some(rt.enter()),
        Ok(_) => None,
    }
}

/// A future of this side handed to the other: polled and dropped with this
/// side's runtime entered, panics in either turned into `on_panic`'s value
/// (poll) or a log line (drop). Its output is mapped by `map` (to the C
/// reply type, say) so that one allocation, the FFI box, holds it all.
pub(crate) struct Contained<F: Future + Unpin, O> {
    fut: Option<F>,
    rt: Option<Handle>,
    map: fn(F::Output) -> O,
    on_panic: fn(String) -> O,
}

impl<F: Future + Unpin, O> Contained<F, O> {
    /// Wraps `fut`, to run on `rt` (this side's runtime when `None` is given: see [`this_side`]).
    pub(crate) fn new(fut: F, rt: Option<Handle>, map: fn(F::Output) -> O, on_panic: fn(String) -> O) -> Self {
        Contained { fut: Some(fut), rt: rt.or_else(this_side), map, on_panic }
    }
}

impl<F: Future + Unpin, O> Future for Contained<F, O> {
    type Output = O;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        let this = &mut *self;
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready((this.on_panic)("polled after it panicked".into()));
        };
        let _g = enter(&this.rt);
        match catch_unwind(AssertUnwindSafe(|| Pin::new(fut).poll(cx))) {
            Ok(Poll::Ready(v)) => {
                // Done: release its state now, on this side, guarded too.
                drop_contained(this.fut.take());
                Poll::Ready((this.map)(v))
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => {
                // Its state is unknown after a panic: drop it now.
                drop_contained(this.fut.take());
                Poll::Ready((this.on_panic)(format!("panic: {}", panic_message(&*p))))
            }
        }
    }
}

/// Drops a future with panics caught (the caller has entered its runtime).
fn drop_contained<F>(fut: Option<F>) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(fut))) {
        tracing::error!("a future panicked while being dropped: {}", panic_message(&*p));
    }
}

impl<F: Future + Unpin, O> Drop for Contained<F, O> {
    fn drop(&mut self) {
        if self.fut.is_none() {
            return;
        }
        // A cancelled future's state (a pooled connection, a spawned
        // clean-up) may need its runtime to drop, and must never unwind here.
        let _g = enter(&self.rt);
        drop_contained(self.fut.take());
    }
}

/// Turns a panic payload into text.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
