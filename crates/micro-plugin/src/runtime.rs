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
/// Inside a plugin the runtime is always the plugin's one, whatever `rt`
/// says, and a host thread that polls plugin code enters it once and stays
/// in it: the plugin's copy of tokio keeps its context in its own
/// thread-locals, which the host's tokio never reads, so this changes
/// nothing for the host, and saves each later poll a handle clone and a
/// thread-local swap (a fifth of the runtime bookkeeping of a client
/// plugin's call, BENCHMARKS.md).
pub(crate) fn enter(rt: Option<&Handle>) -> Option<EnterGuard<'_>> {
    // A plugin's thread that entered its runtime for good: asked first, as
    // it is one thread-local read (in a library loaded at run time each
    // costs a call to `__tls_get_addr`) and, for a host thread polling a
    // plugin's futures, the usual answer.
    if PLUGIN_ENTERED.get() {
        return None;
    }
    // In a task of this side's tokio: its runtime is current (cheaper to
    // ask than `try_current`, which clones the handle).
    if tokio::task::try_id().is_some() {
        return None;
    }
    if let Some(plugin) = PLUGIN_RUNTIME.get() {
        if Handle::try_current().is_err() {
            // Never left: the guard is forgotten (nested guards of other
            // runtimes still restore this one when they drop).
            std::mem::forget(plugin.handle().enter());
            PLUGIN_ENTERED.set(true);
        }
        return None;
    }
    let rt = rt?;
    match Handle::try_current() {
        Err(_) => Some(rt.enter()),
        Ok(_) => None,
    }
}

/// The runtime a future of this side needs entered (see [`enter`]), kept
/// by the future. Inside a plugin nothing is kept: [`enter`] always takes
/// the plugin's own runtime, a static. So a crossing inside a plugin clones
/// no handle, whose reference count the host's threads would otherwise
/// bounce between their caches on every call.
pub(crate) fn keep(rt: Option<&Handle>) -> Option<Handle> {
    if PLUGIN_RUNTIME.get().is_some() {
        return None;
    }
    rt.cloned().or_else(|| Handle::try_current().ok())
}

pin_project_lite::pin_project! {
    /// A future of this side handed to the other: polled and dropped with
    /// this side's runtime entered, panics in either turned into
    /// `on_panic`'s value (poll) or a log line (drop). Its output is mapped
    /// by `map` (to the C reply type, say) so that one allocation, the FFI
    /// box, holds it all: the future itself is kept inline, pinned where the
    /// box pins it, not boxed a second time.
    pub(crate) struct Contained<F: Future, O> {
        #[pin]
        fut: Option<F>,
        rt: Option<Handle>,
        map: fn(F::Output) -> O,
        on_panic: fn(String) -> O,
    }

    impl<F: Future, O> PinnedDrop for Contained<F, O> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.fut.is_none() {
                return;
            }
            // A cancelled future's state (a pooled connection, a spawned
            // clean-up) may need its runtime to drop, and must never unwind here.
            let _g = enter(this.rt.as_ref());
            drop_in_slot(this.fut);
        }
    }
}

impl<F: Future, O> Contained<F, O> {
    /// Wraps `fut`, to run on `rt` (this side's current runtime when `None`
    /// is given; inside a plugin always the plugin's: see [`keep`]).
    pub(crate) fn new(fut: F, rt: Option<&Handle>, map: fn(F::Output) -> O, on_panic: fn(String) -> O) -> Self {
        Contained { fut: Some(fut), rt: keep(rt), map, on_panic }
    }

    /// As [`new`](Self::new), with a handle the caller owns already (kept
    /// as it is rather than cloned; dropped inside a plugin).
    pub(crate) fn with_handle(fut: F, rt: Option<Handle>, map: fn(F::Output) -> O, on_panic: fn(String) -> O) -> Self {
        let rt = match rt {
            Some(h) if PLUGIN_RUNTIME.get().is_none() => Some(h),
            _ => keep(None),
        };
        Contained { fut: Some(fut), rt, map, on_panic }
    }
}

/// Drops a pinned future in its slot, with panics caught; the caller has
/// entered its runtime. `Pin::set` drops the old value in place.
fn drop_in_slot<F>(mut slot: Pin<&mut Option<F>>) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| slot.set(None))) {
        tracing::error!("a future panicked while being dropped: {}", panic_message(&*p));
    }
}

impl<F: Future, O> Future for Contained<F, O> {
    type Output = O;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        let mut this = self.project();
        let _g = enter(this.rt.as_ref());
        let Some(fut) = this.fut.as_mut().as_pin_mut() else {
            return Poll::Ready((this.on_panic)("polled after it finished or panicked".into()));
        };
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => {
                // Done: release its state now, on this side, guarded too.
                drop_in_slot(this.fut);
                Poll::Ready((this.map)(v))
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => {
                // Its state is unknown after a panic: drop it now.
                drop_in_slot(this.fut);
                Poll::Ready((this.on_panic)(format!("panic: {}", panic_message(&*p))))
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi_future::FromPanic;

    /// Pending once, then ready.
    struct YieldOnce(bool);
    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[derive(Debug, PartialEq)]
    struct Out(u32);
    impl FromPanic for Out {
        fn from_panic() -> Self {
            Out(u32::MAX)
        }
    }

    /// Pending until dropped; its drop panics.
    struct PanicsOnDrop(std::marker::PhantomPinned);
    impl Future for PanicsOnDrop {
        type Output = Out;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Out> {
            Poll::Pending
        }
    }
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("dropped");
        }
    }

    fn noop_cx<R>(f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        f(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn a_pinned_future_whose_drop_panics_is_dropped_in_place_and_contained() {
        // Not Unpin: kept inline and pinned inside `Contained`, which must
        // drop it where it is and keep its panic from unwinding out.
        let mut c = Box::pin(Contained::new(PanicsOnDrop(std::marker::PhantomPinned), None, |a| a, |_| Out(7)));
        assert!(noop_cx(|cx| c.as_mut().poll(cx)).is_pending());
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(c)));
        assert!(dropped.is_ok(), "a panic in a cancelled future's drop unwound out of Contained");
    }

    #[test]
    fn a_future_is_released_when_done_and_never_polled_again() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // An async block (not Unpin) holding a sender: done, it must be
        // dropped at once, not when its box is.
        let fut = async move {
            let _tx = tx;
            YieldOnce(false).await;
            Out(1)
        };
        let mut c = Box::pin(Contained::new(fut, None, |a| a, |_| Out::from_panic()));
        assert!(noop_cx(|cx| c.as_mut().poll(cx)).is_pending());
        assert_eq!(noop_cx(|cx| c.as_mut().poll(cx)), Poll::Ready(Out(1)));
        assert!(
            rx.try_recv().is_err_and(|e| e == std::sync::mpsc::TryRecvError::Disconnected),
            "state kept after Ready"
        );
        assert_eq!(noop_cx(|cx| c.as_mut().poll(cx)), Poll::Ready(Out::from_panic()), "polled after it finished");
    }

    #[test]
    fn a_panicking_poll_is_a_value() {
        let fut = async {
            YieldOnce(true).await;
            panic!("boom");
        };
        let mut c = Box::pin(Contained::new(fut, None, |()| String::new(), |e| e));
        let out = noop_cx(|cx| c.as_mut().poll(cx));
        assert!(matches!(&out, Poll::Ready(e) if e.contains("boom")), "{out:?}");
    }
}
