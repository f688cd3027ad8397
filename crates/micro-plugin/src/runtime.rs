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

/// The runtime of this side: the current one, else the plugin's own.
pub(crate) fn this_side() -> Option<Handle> {
    Handle::try_current().ok().or_else(plugin_runtime)
}

/// Enters `rt` unless the calling thread is already in a runtime of this
/// side's tokio (a thread of the other side never is: its tokio is another copy).
pub(crate) fn enter(rt: &Option<Handle>) -> Option<EnterGuard<'_>> {
    match rt {
        Some(rt) if Handle::try_current().is_err() => Some(rt.enter()),
        _ => None,
    }
}

/// A future of this side handed to the other: polled and dropped with this
/// side's runtime entered, panics in either turned into `on_panic`'s value
/// (poll) or a log line (drop).
pub(crate) struct Contained<F: Future> {
    fut: Option<Pin<Box<F>>>,
    rt: Option<Handle>,
    on_panic: fn(String) -> F::Output,
}

impl<F: Future> Contained<F> {
    /// Wraps `fut`, to run on `rt` (this side's runtime when `None` is given: see [`this_side`]).
    pub(crate) fn new(fut: F, rt: Option<Handle>, on_panic: fn(String) -> F::Output) -> Self {
        Contained { fut: Some(Box::pin(fut)), rt: rt.or_else(this_side), on_panic }
    }
}

impl<F: Future> Future for Contained<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready((this.on_panic)("polled after it panicked".into()));
        };
        let _g = enter(&this.rt);
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(p) => {
                // Its state is unknown after a panic: drop it now, guarded too.
                let dead = this.fut.take();
                if catch_unwind(AssertUnwindSafe(move || drop(dead))).is_err() {
                    tracing::error!("a future panicked, and panicked again while being dropped");
                }
                Poll::Ready((this.on_panic)(format!("panic: {}", panic_message(&*p))))
            }
        }
    }
}

impl<F: Future> Drop for Contained<F> {
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else { return };
        // A cancelled future's state (a pooled connection, a spawned
        // clean-up) may need its runtime to drop, and must never unwind here.
        let _g = enter(&self.rt);
        if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(fut))) {
            tracing::error!("a future panicked while being dropped (cancelled): {}", panic_message(&*p));
        }
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
