//! Futures and wakers across the plugin boundary, in C layout.
//!
//! micro used `async-ffi` for this until ABI 5. Its waker bridge allocates
//! a box each time the other side clones the waker, and gives the waker a
//! new identity on every poll, so the other side's `will_wake` never holds
//! and every `Pending` clones (and allocates) again: 2.8 allocations per
//! plugin call in the profile. Here the side that polls keeps one bridge per
//! place it polls from (a [`WakerSlot`]): made on the first clone, it keeps
//! its address for the slot's life, so from the second poll on the other
//! side sees the same waker and clones nothing; a clone is a reference count.
//!
//! The pieces, from the bottom:
//! - [`FfiWaker`]: the header of a waker object, a pointer to its C vtable;
//! - [`FfiContext`]: what a poll passes across, a borrowed waker;
//! - [`FfiFuture`]: a boxed future, its poll and its drop, in one allocation;
//! - [`WakerSlot`]: the polling side's bridge from its `Context` to an `FfiContext`;
//! - [`FfiContext::with_context`]: the polled side's `Context` from an `FfiContext`.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

/// The version of this module's layout and protocol (the descriptor's
/// `future_abi_version`). It continues the numbers of `async-ffi`'s
/// `ABI_VERSION` (2 in the `async-ffi` micro used before), so that no plugin
/// built with that crate's futures ever matches it.
pub const FUTURE_ABI_VERSION: u32 = 3;

/// The functions of a waker object. Each takes the object's address (which
/// starts with its [`FfiWaker`] header).
#[repr(C)]
pub struct FfiWakerVTable {
    /// Returns a new owned reference to a waker that wakes the same task.
    pub clone: unsafe extern "C" fn(w: *const FfiWaker) -> *const FfiWaker,
    /// Wakes the task and releases this reference.
    pub wake: unsafe extern "C" fn(w: *const FfiWaker),
    /// Wakes the task.
    pub wake_by_ref: unsafe extern "C" fn(w: *const FfiWaker),
    /// Releases this reference.
    pub drop: unsafe extern "C" fn(w: *const FfiWaker),
}

/// The first field of every waker object that crosses.
#[repr(C)]
pub struct FfiWaker {
    pub(crate) vtable: &'static FfiWakerVTable,
}

/// A borrowed waker for the length of one poll.
#[repr(C)]
pub struct FfiContext {
    pub(crate) waker: *const FfiWaker,
}

/// The outcome of polling an [`FfiFuture`].
#[repr(C, u8)]
pub enum FfiPoll<T> {
    /// Done, with its output.
    Ready(T),
    /// Not yet; the waker will be called.
    Pending,
    /// The poll panicked (the future is finished; micro's own futures catch
    /// their panics earlier and answer with an error value instead).
    Panicked,
}

/// An output that can stand for a future that panicked.
pub trait FromPanic {
    /// The value for a future whose poll panicked.
    fn from_panic() -> Self;
}

impl FromPanic for () {
    fn from_panic() -> Self {}
}

/// A future of one side, owned by the other: one box holding the future,
/// and the two functions of its side that poll and drop it.
#[repr(C)]
pub struct FfiFuture<T> {
    pub(crate) data: *mut c_void,
    pub(crate) poll: unsafe extern "C" fn(data: *mut c_void, cx: *const FfiContext) -> FfiPoll<T>,
    pub(crate) drop: unsafe extern "C" fn(data: *mut c_void),
    _out: PhantomData<T>,
}

// SAFETY: `new` only accepts `Send` futures, and the output must be `Send` to leave.
unsafe impl<T: Send> Send for FfiFuture<T> {}

impl<T> FfiFuture<T> {
    /// Boxes `fut` for the other side. Its poll and drop catch panics (a
    /// panicking poll reads as [`FfiPoll::Panicked`]); entering a runtime is
    /// the future's own business (see `runtime::Contained`).
    pub fn new<F: Future<Output = T> + Send + 'static>(fut: F) -> Self {
        // SAFETY: a 'static future borrows nothing.
        unsafe { Self::new_unchecked(fut) }
    }
}

impl<T> FfiFuture<T> {
    /// As [`new`](Self::new), for a future that may borrow.
    ///
    /// # Safety
    /// Whatever `fut` borrows must outlive the returned `FfiFuture` (it is
    /// dropped through its own `drop` function, which drops `fut`).
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub(crate) unsafe fn new_unchecked<F: Future<Output = T> + Send>(fut: F) -> Self {
        FfiFuture {
            data: Box::into_raw(Box::new(fut)) as *mut c_void,
            poll: poll_boxed::<F>,
            drop: drop_boxed::<F>,
            _out: PhantomData,
        }
    }
}

impl<T> FfiFuture<T> {
    /// As [`new_unchecked`](Self::new_unchecked), built in `place` (room the
    /// other side offered, see [`FfiArgs::place`](crate::abi::FfiArgs::place))
    /// instead of a box: its drop drops `fut` there and frees nothing.
    ///
    /// # Safety
    /// As for `new_unchecked`; and `place` must be valid for writes of an
    /// `F`, aligned for one, and stay where it is and alive, untouched by
    /// anything else, until the returned future is dropped.
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub(crate) unsafe fn new_in<F: Future<Output = T> + Send>(fut: F, place: *mut c_void) -> Self {
        // SAFETY: room for an aligned `F`, by this function's contract.
        unsafe { std::ptr::write(place as *mut F, fut) };
        FfiFuture { data: place, poll: poll_boxed::<F>, drop: drop_placed::<F>, _out: PhantomData }
    }
}

unsafe extern "C" fn drop_placed<F>(data: *mut c_void) {
    // SAFETY: `data` holds the F that `FfiFuture::new_in` wrote, dropped
    // once by its owner; the memory is the other side's, and stays so.
    let dropped = catch_unwind(AssertUnwindSafe(|| unsafe { std::ptr::drop_in_place(data as *mut F) }));
    if dropped.is_err() {
        tracing::error!("a future panicked while being dropped");
    }
}

unsafe extern "C" fn poll_boxed<F: Future>(data: *mut c_void, cx: *const FfiContext) -> FfiPoll<F::Output> {
    let polled = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `data` is the Box<F> of `FfiFuture::new`, not yet dropped,
        // polled by its one owner, so this is the only reference.
        let fut = unsafe { &mut *(data as *mut F) };
        // SAFETY: boxed (or built in room its owner keeps pinned, see
        // `new_in`), so it never moves until it is dropped.
        let fut = unsafe { Pin::new_unchecked(fut) };
        // SAFETY: the caller passes a context valid for this call.
        let cx = unsafe { &*cx };
        // SAFETY: the other side's context, valid during this poll.
        unsafe { cx.with_context(|cx| fut.poll(cx)) }
    }));
    match polled {
        Ok(Poll::Ready(v)) => FfiPoll::Ready(v),
        Ok(Poll::Pending) => FfiPoll::Pending,
        Err(_) => FfiPoll::Panicked,
    }
}

unsafe extern "C" fn drop_boxed<F>(data: *mut c_void) {
    // SAFETY: `data` is the Box<F> of `FfiFuture::new`, dropped once by its owner.
    let fut = unsafe { Box::from_raw(data as *mut F) };
    if catch_unwind(AssertUnwindSafe(move || drop(fut))).is_err() {
        tracing::error!("a future panicked while being dropped");
    }
}

impl<T> Drop for FfiFuture<T> {
    fn drop(&mut self) {
        // SAFETY: the future of the side that made it (boxed or placed), dropped once, here.
        unsafe { (self.drop)(self.data) }
    }
}

impl<T: FromPanic> IntoFuture for FfiFuture<T> {
    type Output = T;
    type IntoFuture = Polled<T>;
    fn into_future(self) -> Polled<T> {
        Polled { fut: Some(self), slot: WakerSlot::new() }
    }
}

/// An [`FfiFuture`] being awaited: the future and the waker bridge its polls use.
pub struct Polled<T> {
    fut: Option<FfiFuture<T>>,
    slot: WakerSlot,
}

// Nothing of a Polled is pinned: the other side's future lives in its box,
// or in room its owner keeps pinned (`FfiFuture::new_in`), never in the Polled.
impl<T> Unpin for Polled<T> {}

impl<T> Polled<T> {
    /// Where the other side's future lives, while it does (for tests).
    #[cfg(test)]
    pub(crate) fn data(&self) -> Option<*mut c_void> {
        self.fut.as_ref().map(|f| f.data)
    }
}

impl<T: FromPanic> Future for Polled<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let Some(fut) = this.fut.as_ref() else { return Poll::Ready(T::from_panic()) };
        // SAFETY: the future's own poll function on its own data, with a
        // context valid for this call; a finished future is never polled again.
        let r = this.slot.with(cx, |ffi| unsafe { (fut.poll)(fut.data, ffi) });
        match r {
            FfiPoll::Ready(v) => {
                // Release the other side's state now rather than when the awaiter drops.
                this.fut = None;
                Poll::Ready(v)
            }
            FfiPoll::Pending => Poll::Pending,
            FfiPoll::Panicked => {
                this.fut = None;
                Poll::Ready(T::from_panic())
            }
        }
    }
}

/// The polling side's bridge from its `Context` to an [`FfiContext`], kept
/// for as long as it polls the same thing (a future, a socket's read half).
/// Until the other side first clones the waker nothing is allocated; the
/// clone makes one reference-counted bridge whose address, and so the
/// waker's identity on the other side, stays the same for later polls.
///
/// The bridge keeps the task's waker until a poll brings another one (a
/// wake does not use it up), so a poll with the waker it holds, the usual
/// case, touches nothing shared: no lock, no clone of the task's waker.
#[derive(Default)]
pub struct WakerSlot {
    /// An `Arc<Bridge>` made into a raw pointer, or null until the first
    /// clone. Set by one compare-and-swap: the other side may clone a waker
    /// it was lent on any thread, as long as the poll lasts.
    bridge: AtomicPtr<Bridge>,
    /// The identity (data, vtable) of the waker the bridge holds: of the
    /// clone it stores, which is not always that of the waker it was given
    /// (a borrowed waker of the other side's first poll clones into that
    /// side's bridge). Only `with` (`&mut self`) registers a waker in the
    /// bridge, and the bridge keeps that clone alive, so no other waker can
    /// have its identity: an equal identity is the same waker.
    held: Option<(usize, usize)>,
}

/// A waker's identity, what `Waker::will_wake` compares.
fn identity(w: &Waker) -> (usize, usize) {
    (w.data() as usize, w.vtable() as *const RawWakerVTable as usize)
}

impl WakerSlot {
    /// An empty slot.
    pub const fn new() -> Self {
        WakerSlot { bridge: AtomicPtr::new(std::ptr::null_mut()), held: None }
    }

    /// Calls `f` with an [`FfiContext`] that wakes `cx`'s task.
    pub fn with<R>(&mut self, cx: &Context<'_>, f: impl FnOnce(*const FfiContext) -> R) -> R {
        let bridge = *self.bridge.get_mut();
        if !bridge.is_null() {
            let id = identity(cx.waker());
            if self.held != Some(id) {
                // The task moved (another waker): the bridge wakes the latest.
                // SAFETY: the slot owns a reference to its bridge until it drops.
                let bridge = unsafe { &*bridge };
                bridge.hold(cx.waker());
                self.held = bridge.held();
            }
            let ctx = FfiContext { waker: bridge as *const FfiWaker };
            return f(&ctx);
        }
        let r = {
            let first = FirstPoll { header: FfiWaker { vtable: &FIRST_POLL }, waker: cx.waker(), slot: &self.bridge };
            let ctx = FfiContext { waker: &first.header };
            f(&ctx)
        };
        let bridge = *self.bridge.get_mut();
        if !bridge.is_null() {
            // Made during this poll, holding a clone of this poll's waker (`new_bridge`).
            // SAFETY: the slot owns a reference to its bridge until it drops.
            self.held = unsafe { &*bridge }.held();
        }
        r
    }
}

impl Drop for WakerSlot {
    fn drop(&mut self) {
        let raw = *self.bridge.get_mut();
        if raw.is_null() {
            return;
        }
        // SAFETY: a non-null pointer is the slot's own reference, made by
        // `Arc::into_raw` in `first_clone` and released only here.
        let mut bridge = unsafe { Arc::from_raw(raw as *const Bridge) };
        // A bridge nobody else holds (the other side dropped its clones, as
        // it has by the time a call's reply is back) is kept for the next
        // slot of this thread: one allocation fewer per crossing future,
        // and under load, with many calls in flight, fewer frees that
        // overflow the allocator's per-thread cache.
        let Some(unique) = Arc::get_mut(&mut bridge) else { return };
        // Release the task's waker now; the next slot registers its own.
        *unique.waker.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        *unique.held_vtable.get_mut() = 0;
        let _ = SPARE_BRIDGES.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_BRIDGES_KEPT {
                spare.push(bridge);
            }
        });
    }
}

thread_local! {
    /// Bridges that no waker refers to any more, for this thread's next slots.
    static SPARE_BRIDGES: std::cell::RefCell<Vec<Arc<Bridge>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many spare bridges a thread keeps (each is 64 bytes): about as many
/// as the calls one thread has in flight under load.
const SPARE_BRIDGES_KEPT: usize = 64;

/// How many spare bridges this thread holds (for tests).
#[cfg(test)]
fn spare_bridges() -> usize {
    SPARE_BRIDGES.with(|spare| spare.borrow().len())
}

/// A bridge for a slot's first clone: a spare one of this thread, else a new one.
fn new_bridge(waker: &Waker) -> Arc<Bridge> {
    let spare = SPARE_BRIDGES.try_with(|spare| spare.borrow_mut().pop()).ok().flatten();
    let bridge = spare.unwrap_or_else(|| {
        Arc::new(Bridge {
            header: FfiWaker { vtable: &BRIDGE },
            waker: Mutex::new(None),
            held_data: AtomicUsize::new(0),
            held_vtable: AtomicUsize::new(0),
        })
    });
    bridge.hold(waker);
    bridge
}

/// The shared waker the other side holds clones of.
#[repr(C)]
struct Bridge {
    header: FfiWaker,
    /// The task's waker. Kept across wakes (futures' `AtomicWaker` gives it
    /// up on each one, so every poll after a wake had to clone it again);
    /// the lock is held only to replace it or to clone it for a wake.
    waker: Mutex<Option<Waker>>,
    /// The identity of `waker` (vtable 0: none), for the owning slot.
    held_data: AtomicUsize,
    held_vtable: AtomicUsize,
}

impl Bridge {
    /// Makes the bridge wake `waker`'s task from now on (see [`held`](Self::held)
    /// for the identity of its clone).
    fn hold(&self, waker: &Waker) {
        let mut held = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        if !held.as_ref().is_some_and(|w| w.will_wake(waker)) {
            let w = waker.clone();
            let (data, vtable) = identity(&w);
            self.held_data.store(data, Ordering::Release);
            self.held_vtable.store(vtable, Ordering::Release);
            *held = Some(w);
        }
    }

    /// The identity of the waker it holds, without taking the lock; only
    /// the owning slot changes it (through `hold`), and reads it after.
    fn held(&self) -> Option<(usize, usize)> {
        let id = (self.held_data.load(Ordering::Acquire), self.held_vtable.load(Ordering::Acquire));
        (id.1 != 0).then_some(id)
    }

    /// Wakes the task it holds, if any.
    fn wake(&self) {
        // Cloned under the lock and woken outside it: a waker that leads
        // back to this bridge (through another bridge) cannot deadlock.
        // For a tokio task, a clone and a wake by value cost what a wake by
        // reference does (it takes a reference of its own to schedule).
        let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// The borrowed waker of a slot's first poll: a clone makes the bridge.
#[repr(C)]
struct FirstPoll<'a> {
    header: FfiWaker,
    waker: &'a Waker,
    slot: &'a AtomicPtr<Bridge>,
}

static FIRST_POLL: FfiWakerVTable =
    FfiWakerVTable { clone: first_clone, wake: first_wake_by_ref, wake_by_ref: first_wake_by_ref, drop: first_drop };

static BRIDGE: FfiWakerVTable =
    FfiWakerVTable { clone: bridge_clone, wake: bridge_wake, wake_by_ref: bridge_wake_by_ref, drop: bridge_drop };

unsafe extern "C" fn first_clone(w: *const FfiWaker) -> *const FfiWaker {
    // SAFETY: FIRST_POLL is only ever the vtable of a FirstPoll header, which
    // lives (on the polling side's stack) for the poll this clone happens in.
    let first = unsafe { &*(w as *const FirstPoll<'_>) };
    let made = catch_unwind(AssertUnwindSafe(|| {
        let mut at = first.slot.load(Ordering::Acquire);
        if at.is_null() {
            let fresh = Arc::into_raw(new_bridge(first.waker)) as *mut Bridge;
            at = match first.slot.compare_exchange(std::ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => fresh,
                Err(other) => {
                    // Another thread's clone, during the same poll, came first.
                    // SAFETY: `fresh` is the reference `into_raw` just made; nobody else has it.
                    drop(unsafe { Arc::from_raw(fresh as *const Bridge) });
                    other
                }
            };
        }
        // SAFETY: the slot holds a reference to its bridge for as long as
        // it lives, which is past this poll; this one is the caller's.
        unsafe { Arc::increment_strong_count(at as *const Bridge) };
        at as *const FfiWaker
    }));
    // Only an allocation failure panics here, and that aborts anyway;
    // a waker that never wakes is the one safe answer left.
    made.unwrap_or(&NOOP_WAKER)
}

unsafe extern "C" fn first_wake_by_ref(w: *const FfiWaker) {
    // SAFETY: as in first_clone.
    let first = unsafe { &*(w as *const FirstPoll<'_>) };
    let _ = catch_unwind(AssertUnwindSafe(|| first.waker.wake_by_ref()));
}

unsafe extern "C" fn first_drop(_: *const FfiWaker) {
    // Borrowed: nothing to release.
}

unsafe extern "C" fn bridge_clone(w: *const FfiWaker) -> *const FfiWaker {
    // SAFETY: BRIDGE is only ever the vtable of a Bridge in an `Arc` (made
    // or reused by `new_bridge` for first_clone), and the caller holds a
    // reference to it.
    unsafe { Arc::increment_strong_count(w as *const Bridge) };
    w
}

unsafe extern "C" fn bridge_wake_by_ref(w: *const FfiWaker) {
    // SAFETY: as in bridge_clone.
    let b = unsafe { &*(w as *const Bridge) };
    let _ = catch_unwind(AssertUnwindSafe(|| b.wake()));
}

unsafe extern "C" fn bridge_wake(w: *const FfiWaker) {
    // SAFETY: as in bridge_clone.
    unsafe { bridge_wake_by_ref(w) };
    // SAFETY: `wake` consumes the caller's reference.
    unsafe { bridge_drop(w) };
}

unsafe extern "C" fn bridge_drop(w: *const FfiWaker) {
    // SAFETY: as in bridge_clone; the caller gives up its reference.
    let b = unsafe { Arc::from_raw(w as *const Bridge) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
}

static NOOP: FfiWakerVTable = FfiWakerVTable { clone: noop_clone, wake: noop, wake_by_ref: noop, drop: noop };
static NOOP_WAKER: FfiWaker = FfiWaker { vtable: &NOOP };

unsafe extern "C" fn noop_clone(w: *const FfiWaker) -> *const FfiWaker {
    w
}

unsafe extern "C" fn noop(_: *const FfiWaker) {}

impl FfiContext {
    /// Runs `f` with a `Context` whose waker calls back through this one. The
    /// waker's identity is the other side's waker object, so a bridge kept in
    /// a [`WakerSlot`] looks the same to `will_wake` on every poll.
    ///
    /// # Safety
    /// `self` must come from the other side's poll that is running now (its
    /// waker object is valid for the call).
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub unsafe fn with_context<R>(&self, f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        // SAFETY: the RawWaker's functions below implement the RawWaker
        // contract on an FfiWaker object; the waker is borrowed (ManuallyDrop:
        // never dropped here), as is the other side's.
        let waker = ManuallyDrop::new(unsafe { Waker::from_raw(RawWaker::new(self.waker as *const (), &FOREIGN)) });
        f(&mut Context::from_waker(&waker))
    }
}

/// A std waker over the other side's [`FfiWaker`]. One static, so that
/// `will_wake` compares equal for the same object.
static FOREIGN: RawWakerVTable = RawWakerVTable::new(foreign_clone, foreign_wake, foreign_wake_by_ref, foreign_drop);

fn vtable_of(p: *const ()) -> &'static FfiWakerVTable {
    // SAFETY: every FOREIGN RawWaker's data is a live FfiWaker object (see with_context and foreign_clone).
    unsafe { (*(p as *const FfiWaker)).vtable }
}

// SAFETY: unsafe by the RawWakerVTable contract: only called through FOREIGN,
// whose data is always a live FfiWaker object.
unsafe fn foreign_clone(p: *const ()) -> RawWaker {
    // SAFETY: the object is live (we hold a reference); its own clone.
    let c = unsafe { (vtable_of(p).clone)(p as *const FfiWaker) };
    RawWaker::new(c as *const (), &FOREIGN)
}

// SAFETY: unsafe by the RawWakerVTable contract: only called through FOREIGN,
// whose data is always a live FfiWaker object.
unsafe fn foreign_wake(p: *const ()) {
    // SAFETY: the object is live; `wake` consumes our reference.
    unsafe { (vtable_of(p).wake)(p as *const FfiWaker) }
}

// SAFETY: unsafe by the RawWakerVTable contract: only called through FOREIGN,
// whose data is always a live FfiWaker object.
unsafe fn foreign_wake_by_ref(p: *const ()) {
    // SAFETY: the object is live.
    unsafe { (vtable_of(p).wake_by_ref)(p as *const FfiWaker) }
}

// SAFETY: unsafe by the RawWakerVTable contract: only called through FOREIGN,
// whose data is always a live FfiWaker object.
unsafe fn foreign_drop(p: *const ()) {
    // SAFETY: the object is live; we give up our reference.
    unsafe { (vtable_of(p).drop)(p as *const FfiWaker) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A future that stores a clone of its waker on each pending poll
    /// unless `will_wake` says the stored one is the same, as tokio's
    /// resources do, and counts the clones.
    struct Registers {
        stored: Arc<Mutex<Option<Waker>>>,
        clones: Arc<AtomicUsize>,
        polls_left: usize,
    }
    impl Future for Registers {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            if self.polls_left == 0 {
                return Poll::Ready(7);
            }
            self.polls_left -= 1;
            let mut s = self.stored.lock().unwrap_or_else(|e| e.into_inner());
            if !s.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *s = Some(cx.waker().clone());
                self.clones.fetch_add(1, Ordering::SeqCst);
            }
            Poll::Pending
        }
    }

    impl FromPanic for u32 {
        fn from_panic() -> Self {
            u32::MAX
        }
    }

    #[test]
    fn every_waker_object_starts_with_its_header() {
        // The other side reads a waker object through its header alone: the
        // address of the object is the address of the header.
        assert_eq!(std::mem::offset_of!(Bridge, header), 0);
        assert_eq!(std::mem::offset_of!(FirstPoll<'_>, header), 0);
    }

    #[test]
    fn the_waker_keeps_its_identity_across_polls_and_wakes_the_task() {
        let stored = Arc::new(Mutex::new(None));
        let clones = Arc::new(AtomicUsize::new(0));
        let fut = FfiFuture::new(Registers { stored: stored.clone(), clones: clones.clone(), polls_left: 5 });
        let mut polled = Box::pin(fut.into_future());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..5 {
            assert!(polled.as_mut().poll(&mut cx).is_pending());
        }
        // First poll: a borrowed waker, whose clone is the bridge; every
        // later poll passes the bridge itself, so `will_wake` holds: one clone.
        assert_eq!(clones.load(Ordering::SeqCst), 1);
        let w = stored.lock().unwrap_or_else(|e| e.into_inner()).take();
        w.into_iter().for_each(Waker::wake);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the stored waker wakes the polling task");
        assert_eq!(polled.as_mut().poll(&mut cx), Poll::Ready(7));
    }

    /// A task waker that counts how often it is cloned and woken.
    struct Counted {
        clones: AtomicUsize,
        wakes: AtomicUsize,
    }
    fn counted_at(p: *const ()) -> &'static Counted {
        // SAFETY: every COUNTED waker's data is a leaked `Counted`, never freed.
        unsafe { &*(p as *const Counted) }
    }
    static COUNTED: RawWakerVTable = RawWakerVTable::new(
        |p| {
            counted_at(p).clones.fetch_add(1, Ordering::SeqCst);
            RawWaker::new(p, &COUNTED)
        },
        |p| _ = counted_at(p).wakes.fetch_add(1, Ordering::SeqCst),
        |p| _ = counted_at(p).wakes.fetch_add(1, Ordering::SeqCst),
        |_| {},
    );
    fn counted() -> (&'static Counted, Waker) {
        let c: &'static Counted =
            Box::leak(Box::new(Counted { clones: AtomicUsize::new(0), wakes: AtomicUsize::new(0) }));
        // SAFETY: COUNTED's functions implement the RawWaker contract on a `Counted` that is never freed.
        (c, unsafe { Waker::from_raw(RawWaker::new(c as *const Counted as *const (), &COUNTED)) })
    }

    #[test]
    fn the_bridge_keeps_the_tasks_waker_across_wakes_and_polls_with_it_clone_nothing() {
        let stored = Arc::new(Mutex::new(None));
        let fut = FfiFuture::new(Registers { stored: stored.clone(), clones: Arc::default(), polls_left: 4 });
        let mut polled = Box::pin(fut.into_future());
        let (c, w) = counted();
        let wake_stored = || {
            let s = stored.lock().unwrap_or_else(|e| e.into_inner());
            s.iter().for_each(Waker::wake_by_ref);
        };
        assert!(polled.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
        assert_eq!(c.clones.load(Ordering::SeqCst), 1, "the bridge holds one clone of the task's waker");
        for round in 1..=2 {
            wake_stored();
            assert_eq!(c.wakes.load(Ordering::SeqCst), round, "each wake reaches the task, the second too");
            let before = c.clones.load(Ordering::SeqCst);
            assert!(polled.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
            assert_eq!(
                c.clones.load(Ordering::SeqCst),
                before,
                "a poll with the waker the bridge holds clones nothing"
            );
        }
        // Another task: the bridge now holds that one's waker, and wakes it alone.
        let (d, v) = counted();
        assert!(polled.as_mut().poll(&mut Context::from_waker(&v)).is_pending());
        wake_stored();
        assert_eq!((c.wakes.load(Ordering::SeqCst), d.wakes.load(Ordering::SeqCst)), (2, 1));
    }

    /// A borrowed waker like the other side's first poll: its clone is
    /// another waker (a `Counted` one, `target`), with another identity.
    struct Borrowed {
        target: std::sync::atomic::AtomicPtr<Counted>,
    }
    fn borrowed_at(p: *const ()) -> &'static Borrowed {
        // SAFETY: every BORROWED waker's data is a leaked `Borrowed`, never freed.
        unsafe { &*(p as *const Borrowed) }
    }
    static BORROWED: RawWakerVTable = RawWakerVTable::new(
        |p| RawWaker::new(borrowed_at(p).target.load(Ordering::SeqCst) as *const (), &COUNTED),
        |_| {},
        |_| {},
        |_| {},
    );

    #[test]
    fn a_waker_at_the_address_of_an_earlier_one_whose_clone_differs_is_registered() {
        let stored = Arc::new(Mutex::new(None));
        let fut = FfiFuture::new(Registers { stored: stored.clone(), clones: Arc::default(), polls_left: 3 });
        let mut polled = Box::pin(fut.into_future());
        let ((first, _), (second, _)) = (counted(), counted());
        let target = |c: &'static Counted| c as *const Counted as *mut Counted;
        let b: &'static Borrowed =
            Box::leak(Box::new(Borrowed { target: std::sync::atomic::AtomicPtr::new(target(first)) }));
        // SAFETY: BORROWED's functions implement the RawWaker contract on a `Borrowed` that is never freed.
        let w = unsafe { Waker::from_raw(RawWaker::new(b as *const Borrowed as *const (), &BORROWED)) };
        assert!(polled.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
        // The same address now stands for another task's borrowed waker (a
        // stack slot reused by the next first poll): its identity equals the
        // first one's, but the bridge holds the first one's clone.
        b.target.store(target(second), Ordering::SeqCst);
        assert!(polled.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
        let s = stored.lock().unwrap_or_else(|e| e.into_inner());
        s.iter().for_each(Waker::wake_by_ref);
        assert_eq!(
            (first.wakes.load(Ordering::SeqCst), second.wakes.load(Ordering::SeqCst)),
            (0, 1),
            "the wake reaches the task that polled last"
        );
    }

    #[test]
    fn a_woken_bridge_reaches_the_latest_task() {
        let stored = Arc::new(Mutex::new(None));
        let fut = FfiFuture::new(Registers { stored: stored.clone(), clones: Arc::default(), polls_left: 3 });
        let mut polled = Box::pin(fut.into_future());
        let (a, b) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        assert!(polled.as_mut().poll(&mut Context::from_waker(&wa)).is_pending());
        assert!(polled.as_mut().poll(&mut Context::from_waker(&wa)).is_pending());
        // The future moved to another task: the old clone now wakes that one.
        assert!(polled.as_mut().poll(&mut Context::from_waker(&wb)).is_pending());
        let w = stored.lock().unwrap_or_else(|e| e.into_inner()).take();
        w.into_iter().for_each(Waker::wake);
        assert_eq!((a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)), (0, 1));
    }

    /// Polls a fresh `Registers` once with `waker`; returns the awaiter and
    /// the address of the waker the other side stored (its bridge).
    fn poll_once(waker: &Waker, stored: &Arc<Mutex<Option<Waker>>>) -> (Pin<Box<Polled<u32>>>, *const ()) {
        let fut = FfiFuture::new(Registers { stored: stored.clone(), clones: Arc::default(), polls_left: 1 });
        let mut polled = Box::pin(fut.into_future());
        assert!(polled.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
        let at = stored.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(std::ptr::null(), |w| w.data());
        (polled, at)
    }

    #[test]
    fn a_released_bridge_is_reused_and_one_still_held_is_not() {
        let (a, b) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let stored = Arc::new(Mutex::new(None));

        // The other side let go of its clone: the bridge becomes this
        // thread's spare, and the next slot takes it.
        let spares = spare_bridges();
        let (polled, first) = poll_once(&wa, &stored);
        drop(stored.lock().unwrap_or_else(|e| e.into_inner()).take());
        drop(polled);
        assert_eq!(spare_bridges(), spares + 1, "a bridge nobody holds is kept");
        let (polled, second) = poll_once(&wa, &stored);
        assert_eq!(spare_bridges(), spares, "the next slot took the spare");
        assert_eq!(first, second, "a bridge nobody holds is reused");

        // Still held: never handed to another slot, and it keeps waking its own task only.
        let held = stored.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(polled);
        assert_eq!(spare_bridges(), spares, "a bridge the other side holds is not kept");
        let (_polled, third) = poll_once(&wb, &stored);
        assert_ne!(second, third, "a bridge the other side still holds is not reused");
        held.into_iter().for_each(Waker::wake);
        assert_eq!((a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)), (1, 0));
    }

    #[test]
    fn a_panicking_poll_is_a_value_and_a_clone_outlives_its_future() {
        struct Boom;
        impl Future for Boom {
            type Output = u32;
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
                panic!("boom")
            }
        }
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let mut p = Box::pin(FfiFuture::new(Boom).into_future());
        assert_eq!(p.as_mut().poll(&mut cx), Poll::Ready(u32::MAX));

        let stored = Arc::new(Mutex::new(None));
        let fut = FfiFuture::new(Registers { stored: stored.clone(), clones: Arc::default(), polls_left: 2 });
        let mut polled = Box::pin(fut.into_future());
        assert!(polled.as_mut().poll(&mut cx).is_pending());
        drop(polled);
        // The bridge is reference-counted: waking after the awaiter is gone is harmless.
        let w = stored.lock().unwrap_or_else(|e| e.into_inner()).take();
        w.into_iter().for_each(Waker::wake);
    }
}
