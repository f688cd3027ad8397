//! Objects across the boundary: exporting a Rust value behind a C vtable,
//! and calling one that the other side exported.
//!
//! Every entry point on the exporting side catches panics (a panic becomes
//! an error reply, never an unwind across `extern "C"`), and enters the
//! exporting side's tokio runtime around each call and each poll, so that
//! code on either side can use its own tokio (spawn, timers, sockets)
//! whichever thread polls it.
#![allow(unsafe_code)]

use crate::abi::{FfiArgs, FfiBuf, FfiClientCall, FfiClientReply, FfiObject, FfiReply, FfiStr, ObjectVTable};
use crate::ffi_future::FfiFuture;
use crate::runtime;
pub(crate) use crate::runtime::panic_message;
use micro_core::{BoxFuture, Error};
use std::ffi::c_void;
use std::future::IntoFuture as _;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;

const ID: &str = "go.micro.plugin";

/// What a call returns on the exporting side.
#[derive(Default)]
pub struct Reply {
    /// Encoded result.
    pub bytes: Vec<u8>,
    /// An encoded result shared with a cache of the exporter, sent instead
    /// of `bytes` when set (a reference crosses, not a copy).
    pub shared: Option<Arc<[u8]>>,
    /// An object to hand over, if any.
    pub object: Option<FfiObject>,
    /// A bit whose meaning the method defines (crossing as status 2 of the
    /// `FfiReply`); for a selection: the selector needs no success marks now.
    pub hint: bool,
}

/// An [`FfiReply`]'s status for a successful call whose method-defined
/// hint bit is set ([`Reply::hint`]): 0 is success without it, 1 an error.
pub(crate) const STATUS_OK_HINT: u32 = 2;

impl Reply {
    /// A reply of bytes only.
    pub fn bytes(bytes: Vec<u8>) -> Self {
        Reply { bytes, ..Reply::default() }
    }
    /// A reply of bytes shared with the exporter (see [`Reply::shared`](field@Reply::shared)).
    pub fn shared(bytes: Arc<[u8]>) -> Self {
        Reply { shared: Some(bytes), ..Reply::default() }
    }
    /// A reply of an object only.
    pub fn object(object: FfiObject) -> Self {
        Reply { object: Some(object), ..Reply::default() }
    }
}

/// A value served across the boundary: methods by number, arguments and
/// results encoded with [`wire`](crate::wire).
pub trait Dispatch: Send + Sync + 'static {
    /// An async method. Decode `args` before returning the future.
    fn call(
        self: Arc<Self>,
        method: u32,
        args: &[u8],
        objects: Vec<FfiObject>,
    ) -> BoxFuture<'static, Result<Reply, Error>>;
    /// A synchronous method.
    fn call_sync(&self, method: u32, args: &[u8], objects: Vec<FfiObject>) -> Result<Reply, Error>;
    /// An async method of a hot path, started in one allocation: the
    /// future goes into [`Inline::start`], which boxes it together with
    /// what the crossing keeps, instead of [`call`](Self::call)'s box plus
    /// that one. The future may borrow the value (`&'a self`) rather than
    /// hold a reference count of its own: the caller keeps the object alive
    /// until it has dropped the call's future (the ABI's rule for `call`),
    /// and a count's increment and decrement were two atomic writes per call
    /// to one cache line that every thread's calls pulled to their core.
    /// `None` (the default, and the answer for every method it does not
    /// handle) sends the call to [`call`](Self::call). It is only asked for
    /// calls that hand over no objects.
    fn call_inline<'a>(&'a self, method: u32, args: &[u8], start: Inline<'a>) -> Option<Started<'a>> {
        let _ = (method, args, start);
        None
    }
}

/// Starts a future for [`Dispatch::call_inline`], which may borrow the
/// exported value for `'a`.
pub struct Inline<'a> {
    rt: Option<&'a tokio::runtime::Handle>,
    /// The room the caller offered for the future, and its size (see
    /// [`FfiArgs::place`](crate::abi::FfiArgs::place)).
    place: (*mut c_void, usize),
}

impl<'a> Inline<'a> {
    /// For an entry point of its own: this side's runtime (see
    /// [`served`]), and the room the caller offered.
    pub(crate) fn new(rt: Option<&'a tokio::runtime::Handle>, place: *mut c_void, place_len: usize) -> Self {
        Inline { rt, place: (place, place_len) }
    }

    /// The crossing's future for `fut`, in one allocation: polled and
    /// dropped as every exported future is (this side's runtime entered,
    /// panics caught), its result encoded as a reply.
    pub fn start<F>(self, fut: F) -> Started<'a>
    where
        F: std::future::Future<Output = Result<Reply, Error>> + Send + 'a,
    {
        self.start_mapped(fut, reply_of)
    }

    fn start_mapped<F>(self, fut: F, map: fn(F::Output) -> FfiReply) -> Started<'a>
    where
        F: std::future::Future + Send + 'a,
    {
        let on_panic = |e| reply_of(Err(Error::internal(ID, e)));
        // SAFETY: the future may borrow for 'a, and the `Started` it goes
        // into keeps 'a: it loses that only where `call_entry` hands it
        // across, under the ABI's rule that the object outlives it.
        Started(unsafe { self.start_as(fut, map, on_panic) }, std::marker::PhantomData)
    }

    /// The crossing's future for `fut`, its output mapped by `map` (or, if
    /// it panics, by `on_panic`): in the caller's room when it fits, else in
    /// a box of its own.
    ///
    /// # Safety
    /// Whatever `fut` borrows must outlive the returned future (which drops `fut`).
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub(crate) unsafe fn start_as<F, O>(
        self,
        fut: F,
        map: fn(F::Output) -> O,
        on_panic: fn(String) -> O,
    ) -> FfiFuture<O>
    where
        F: std::future::Future + Send + 'a,
        O: Send,
    {
        let contained = runtime::Contained::new(fut, self.rt, map, on_panic);
        if fits(&contained, self.place) {
            // SAFETY: as below; and the caller's room holds an aligned value
            // of this size (checked), which the caller keeps in place and
            // alive until it has dropped the future (`FfiArgs::place`).
            return unsafe { FfiFuture::new_in(contained, self.place.0) };
        }
        // SAFETY: what the future borrows outlives it (this function's contract).
        unsafe { FfiFuture::new_unchecked(contained) }
    }
}

/// Whether a value like `v` fits the room a caller offered.
fn fits<T>(_: &T, (place, len): (*mut c_void, usize)) -> bool {
    !place.is_null()
        && std::mem::size_of::<T>() <= len
        && std::mem::align_of::<T>() <= crate::abi::PLACE_ALIGN
        && (place as usize) % crate::abi::PLACE_ALIGN == 0
}

/// Room for the future of a call made with [`Remote::call_encoded_in`]: the
/// other side builds its future here when it fits, saving a box per call.
/// A client's call (the hot path) needs 224 bytes on x86-64.
#[repr(C, align(16))]
pub(crate) struct Place(std::mem::MaybeUninit<[u8; PLACE_LEN]>);

const PLACE_LEN: usize = 256;

// The alignment above is the ABI's.
const _: () = assert!(std::mem::align_of::<Place>() == crate::abi::PLACE_ALIGN);

impl Place {
    /// Empty room.
    pub(crate) const fn new() -> Self {
        Place(std::mem::MaybeUninit::uninit())
    }
}

/// A call started by [`Inline::start`] (the only way to make one, so that
/// every such future runs guarded), ready to cross. It may borrow the
/// exported value for `'a`.
pub struct Started<'a>(FfiFuture<FfiReply>, std::marker::PhantomData<&'a ()>);

/// An unknown method number: the two sides disagree about the ABI.
pub(crate) fn unknown_method(kind: &str, method: u32) -> Error {
    Error::internal(ID, format!("{kind}: {UNKNOWN_METHOD} {method} (plugin ABI mismatch)"))
}

const UNKNOWN_METHOD: &str = "unknown method";

/// Whether the other side answered [`unknown_method`]: a peer built before
/// the method was added, whose caller then falls back to what it has.
pub(crate) fn is_unknown_method(e: &Error) -> bool {
    e.id == ID && e.detail.contains(UNKNOWN_METHOD)
}

struct Exported {
    inner: Arc<dyn DispatchDyn>,
    rt: Option<tokio::runtime::Handle>,
    /// Whether this object answers [`HEAP`]: only for the crate's own exports
    /// whose methods may move allocations (a client's `client_call`).
    answers_heap: bool,
}

/// A synchronous method every exported object has, answered by this module
/// rather than by its [`Dispatch`]: this side's heap (`heap::identity`, 8
/// bytes little-endian) for an object that may receive moved allocations
/// ([`export_answering_heap`]), "unknown method" for any other. So code
/// outside the crate, which exports with [`export`], cannot claim to share
/// a heap: its answer would make the caller hand over (and take back) raw
/// allocations.
pub(crate) const HEAP: u32 = u32::MAX;

/// Object-safe form of [`Dispatch`].
trait DispatchDyn: Send + Sync {
    fn call_dyn(
        self: Arc<Self>,
        method: u32,
        args: &[u8],
        objects: Vec<FfiObject>,
    ) -> BoxFuture<'static, Result<Reply, Error>>;
    fn call_sync_dyn(&self, method: u32, args: &[u8], objects: Vec<FfiObject>) -> Result<Reply, Error>;
    fn call_inline_dyn<'a>(&'a self, method: u32, args: &[u8], start: Inline<'a>) -> Option<Started<'a>>;
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<T: Dispatch> DispatchDyn for T {
    fn call_dyn(
        self: Arc<Self>,
        method: u32,
        args: &[u8],
        objects: Vec<FfiObject>,
    ) -> BoxFuture<'static, Result<Reply, Error>> {
        self.call(method, args, objects)
    }
    fn call_sync_dyn(&self, method: u32, args: &[u8], objects: Vec<FfiObject>) -> Result<Reply, Error> {
        self.call_sync(method, args, objects)
    }
    fn call_inline_dyn<'a>(&'a self, method: u32, args: &[u8], start: Inline<'a>) -> Option<Started<'a>> {
        self.call_inline(method, args, start)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Exported {
    /// Enters this side's runtime unless the calling thread is already in it.
    fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        runtime::enter(self.rt.as_ref())
    }
}

static VTABLE: ObjectVTable = vtable_with(None);

/// The vtable of an exported object, with a crossing of its own for a
/// client's call (`client_call`) or without.
pub(crate) const fn vtable_with(client_call: ClientCallEntry) -> ObjectVTable {
    ObjectVTable { call: call_entry, call_sync: call_sync_entry, drop: drop_entry, client_call }
}

/// [`ObjectVTable::client_call`]'s type.
pub(crate) type ClientCallEntry = Option<
    unsafe extern "C" fn(
        *const c_void,
        *mut FfiClientCall,
        *mut c_void,
        usize,
    ) -> crate::ffi_future::FfiFuture<FfiClientReply>,
>;

/// Exports a value as an [`FfiObject`] owned by the receiver.
pub fn export<T: Dispatch>(value: Arc<T>) -> FfiObject {
    export_with(value, false, &VTABLE)
}

/// As [`export`], for a value whose methods may take and give moved
/// allocations between sides of one heap: the object answers [`HEAP`], and
/// its vtable is `vtable` (one of [`vtable_with`], whose `client_call`, if
/// any, is the crossing of this type of value: see [`served`]).
pub(crate) fn export_answering_heap<T: Dispatch>(value: Arc<T>, vtable: &'static ObjectVTable) -> FfiObject {
    export_with(value, true, vtable)
}

fn export_with<T: Dispatch>(value: Arc<T>, answers_heap: bool, vtable: &'static ObjectVTable) -> FfiObject {
    let ex = Box::new(Exported { inner: value, rt: runtime::this_side(), answers_heap });
    // SAFETY: the functions of every vtable of `vtable_with` take exactly
    // this Box<Exported>; the object owns it.
    unsafe { FfiObject::from_raw(Box::into_raw(ex) as *const c_void, vtable) }
}

/// The value an object of [`export_answering_heap`] serves, and its side's
/// runtime, for a crossing of its own vtable (a client's `client_call`).
///
/// # Safety
/// `data` must be such an object's, alive for `'a`.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub(crate) unsafe fn served<'a>(data: *const c_void) -> (&'a dyn std::any::Any, Option<&'a tokio::runtime::Handle>) {
    // SAFETY: the Box<Exported> that `export_with` made, alive for 'a (the caller's contract).
    let ex = unsafe { &*(data as *const Exported) };
    (ex.inner.as_any(), ex.rt.as_ref())
}

fn reply_of(res: Result<Reply, Error>) -> FfiReply {
    match res {
        Ok(r) => {
            let bytes = match r.shared {
                Some(b) => FfiBuf::from_shared(b),
                None => FfiBuf::from_vec(r.bytes),
            };
            let status = if r.hint { STATUS_OK_HINT } else { 0 };
            FfiReply { status, bytes, object: r.object.unwrap_or_else(FfiObject::null) }
        }
        Err(e) => FfiReply { status: 1, bytes: FfiBuf::from_vec(e.to_json().into_bytes()), object: FfiObject::null() },
    }
}

/// Takes ownership of the argument objects.
///
/// # Safety
/// `args.objects` must point at `args.n_objects` initialised objects that the caller gave up.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
unsafe fn take_objects(args: &FfiArgs) -> Vec<FfiObject> {
    // Most calls hand over none (every client call): no loop, no checks.
    if args.n_objects == 0 {
        return Vec::new();
    }
    let mut v = Vec::with_capacity(args.n_objects);
    for i in 0..args.n_objects {
        // SAFETY: guaranteed by the caller: `i < n_objects` stays inside the array.
        let at = unsafe { args.objects.add(i) };
        // SAFETY: an initialised object the caller gave up; each is read exactly once.
        v.push(unsafe { std::ptr::read(at) });
    }
    v
}

unsafe extern "C" fn call_entry(data: *const c_void, method: u32, args: FfiArgs) -> FfiFuture<FfiReply> {
    // SAFETY: `data` is the Box<Exported> made by `export`, alive until `drop_entry`.
    let ex = unsafe { &*(data as *const Exported) };
    // SAFETY: the caller passes ownership of the objects.
    let objects = unsafe { take_objects(&args) };
    // SAFETY: the caller keeps the bytes alive during this call.
    let bytes = unsafe { args.bytes.as_bytes() };
    let start = || Inline { rt: ex.rt.as_ref(), place: (args.place, args.place_len) };
    let started = catch_unwind(AssertUnwindSafe(|| {
        let _g = ex.enter();
        if objects.is_empty() {
            if let Some(fut) = ex.inner.call_inline_dyn(method, bytes, start()) {
                return fut;
            }
        }
        // Any other method: its boxed future, guarded the same way.
        start().start(ex.inner.clone().call_dyn(method, bytes, objects))
    }));
    match started {
        // The future may borrow `ex` (and the value in it), which lives until
        // `drop_entry`: the ABI's rule for `call` puts that after the drop of
        // the future returned here.
        Ok(Started(fut, _)) => fut,
        Err(p) => {
            let e = Error::internal(ID, format!("panic: {}", panic_message(&*p)));
            FfiFuture::new(std::future::ready(reply_of(Err(e))))
        }
    }
}

unsafe extern "C" fn call_sync_entry(data: *const c_void, method: u32, args: FfiArgs) -> FfiReply {
    // SAFETY: as in call_entry.
    let ex = unsafe { &*(data as *const Exported) };
    // SAFETY: as in call_entry.
    let objects = unsafe { take_objects(&args) };
    // SAFETY: as in call_entry.
    let bytes = unsafe { args.bytes.as_bytes() };
    if method == HEAP {
        drop(objects);
        if !ex.answers_heap {
            return reply_of(Err(unknown_method("object", method)));
        }
        return reply_of(Ok(Reply::bytes((crate::heap::identity() as u64).to_le_bytes().to_vec())));
    }
    let res = catch_unwind(AssertUnwindSafe(|| {
        let _g = ex.enter();
        ex.inner.call_sync_dyn(method, bytes, objects)
    }));
    reply_of(res.unwrap_or_else(|p| Err(Error::internal(ID, format!("panic: {}", panic_message(&*p))))))
}

unsafe extern "C" fn drop_entry(data: *const c_void) {
    // SAFETY: `data` is the Box<Exported> made by `export`; the owner drops it once.
    let ex = unsafe { Box::from_raw(data as *mut Exported) };
    // A value's Drop may use its runtime (e.g. to cancel tasks); a panic in it must not unwind out.
    let rt = ex.rt.clone();
    let _g = runtime::enter(rt.as_ref());
    if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(ex))) {
        tracing::error!("an object panicked while being released: {}", panic_message(&*p));
    }
}

/// A call's future and the remote it was made on, in the order they drop.
struct KeptCall {
    fut: crate::ffi_future::Polled<FfiReply>,
    _remote: Arc<Remote>,
}

impl std::future::Future for KeptCall {
    type Output = Result<RemoteReply, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.fut).poll(cx).map(into_result)
    }
}

/// An object exported by the other side, called through its vtable.
///
/// Crate-private, with every way of calling it: a method's contract may
/// give the objects that come with a call a meaning the callee trusts. A
/// socket's `SEND_FRAMES` keeps its arguments past the call, owned by its
/// one object, which only [`Remote::call_lending`] makes; a public call
/// with any method and any objects let safe code hand it an object that
/// owns nothing, and a freed buffer would have been read. Only the proxies
/// of this crate call objects, each with its own methods.
pub(crate) struct Remote {
    obj: FfiObject,
}

/// A decoded reply from the other side.
pub(crate) struct RemoteReply {
    /// Encoded result.
    pub bytes: FfiBuf,
    /// The returned object, if any.
    pub object: Option<FfiObject>,
    /// The method-defined bit of the reply (see [`Reply::hint`]).
    pub hint: bool,
}

fn into_result(r: FfiReply) -> Result<RemoteReply, Error> {
    if r.status == 0 || r.status == STATUS_OK_HINT {
        let object = if r.object.is_null() { None } else { Some(r.object) };
        Ok(RemoteReply { bytes: r.bytes, object, hint: r.status == STATUS_OK_HINT })
    } else {
        Err(Error::parse(&String::from_utf8_lossy(r.bytes.as_slice())))
    }
}

thread_local! {
    /// Each thread's buffer for the arguments of [`Remote::call_encoded`].
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest scratch buffer kept for the next call (a large message's
/// buffer is freed rather than held by the thread).
const SCRATCH_KEEP: usize = 64 * 1024;

/// Calls `f` with the bytes `encode` writes into this thread's scratch
/// buffer. Taken out of its cell rather than borrowed: a call made from
/// inside `f` (a nested crossing) finds the cell empty and allocates.
fn with_scratch<R>(encode: impl FnOnce(&mut crate::wire::Writer), f: impl FnOnce(&[u8]) -> R) -> R {
    let mut w = crate::wire::Writer::from_vec(SCRATCH.take());
    encode(&mut w);
    let mut buf = w.finish();
    let r = f(&buf);
    if buf.capacity() <= SCRATCH_KEEP {
        buf.clear();
        SCRATCH.set(buf);
    }
    r
}

/// Lays out objects for a call; they are handed over to the callee.
struct OutObjects(Vec<FfiObject>);

impl OutObjects {
    fn args(&mut self, bytes: &[u8]) -> FfiArgs {
        self.args_in(bytes, std::ptr::null_mut(), 0)
    }
    fn args_in(&mut self, bytes: &[u8], place: *mut c_void, place_len: usize) -> FfiArgs {
        FfiArgs {
            bytes: FfiStr::from_slice(bytes),
            objects: self.0.as_mut_ptr(),
            n_objects: self.0.len(),
            place,
            place_len,
        }
    }
}

impl Drop for OutObjects {
    fn drop(&mut self) {
        // The callee took ownership of every object: free the vector's buffer only.
        // SAFETY: FfiObject has no invariants that need the elements dropped here.
        unsafe { self.0.set_len(0) }
    }
}

impl Remote {
    /// Wraps an object received from the other side. Safe because an
    /// [`FfiObject`] is valid by construction: it is made by [`export`] or by
    /// the unsafe [`FfiObject::from_raw`], whose caller vouches for it.
    pub(crate) fn new(obj: FfiObject) -> Result<Self, Error> {
        if obj.is_null() {
            return Err(Error::internal(ID, "the other side returned no object"));
        }
        Ok(Remote { obj })
    }

    /// Calls an async method.
    pub(crate) async fn call(&self, method: u32, bytes: &[u8], objects: Vec<FfiObject>) -> Result<RemoteReply, Error> {
        let mut out = OutObjects(objects);
        // SAFETY: `obj` is a live object of the other side; args live during the call.
        let fut = unsafe { (self.obj.vtable_ref().call)(self.obj.data(), method, out.args(bytes)) };
        drop(out);
        into_result(fut.await)
    }

    /// Calls an async method with arguments that `encode` writes into this
    /// thread's scratch buffer. The other side reads (copies or decodes) the
    /// arguments before its `call` returns, so the buffer is free again
    /// before the first await: no allocation per call for the arguments
    /// (on a hot path, one `malloc`/`free` pair per crossing, and under load
    /// a `free` on another thread's arena, was a tenth of a plugin client's
    /// CPU time).
    pub(crate) fn call_encoded(
        &self,
        method: u32,
        objects: Vec<FfiObject>,
        encode: impl FnOnce(&mut crate::wire::Writer),
    ) -> RemoteCall<'_> {
        // The call starts now; its future borrows `self` (`'_`): the object
        // outlives its call (the ABI's rule, see `Dispatch::call_inline`).
        RemoteCall { fut: self.start_encoded(method, objects, encode).into_future(), _remote: PhantomData }
    }

    /// Starts a call with arguments written by `encode` into this thread's
    /// scratch buffer: the other side's future, which the caller must drop
    /// before this remote.
    fn start_encoded(
        &self,
        method: u32,
        objects: Vec<FfiObject>,
        encode: impl FnOnce(&mut crate::wire::Writer),
    ) -> FfiFuture<FfiReply> {
        with_scratch(encode, |args| {
            let mut out = OutObjects(objects);
            // SAFETY: `obj` is a live object of the other side; args live during the call.
            unsafe { (self.obj.vtable_ref().call)(self.obj.data(), method, out.args(args)) }
        })
    }

    /// As [`call_encoded`](Self::call_encoded), offering `place` for the
    /// other side's future (see [`FfiArgs::place`]).
    ///
    /// # Safety
    /// `place` must stay where it is and alive, untouched, until the
    /// returned call is dropped (the other side's future may live in it).
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub(crate) unsafe fn call_encoded_in(
        &self,
        method: u32,
        place: &mut Place,
        encode: impl FnOnce(&mut crate::wire::Writer),
    ) -> RemoteCall<'_> {
        let place = (place as *mut Place as *mut c_void, std::mem::size_of::<Place>());
        let fut = with_scratch(encode, |args| {
            let mut out = OutObjects(Vec::new());
            // SAFETY: `obj` is a live object of the other side; args live
            // during the call; the room outlives the future (this function's
            // contract), which is what `FfiArgs::place` asks.
            unsafe { (self.obj.vtable_ref().call)(self.obj.data(), method, out.args_in(args, place.0, place.1)) }
        });
        RemoteCall { fut: fut.into_future(), _remote: PhantomData }
    }

    /// Whether the object has a crossing of its own for a client's call
    /// ([`client_call_in`](Self::client_call_in)).
    pub(crate) fn has_client_call(&self) -> bool {
        self.obj.vtable_ref().client_call.is_some()
    }

    /// Makes a client's call through the object's own crossing
    /// (`ObjectVTable::client_call`), offering `place` for the other side's
    /// future; `None` if it has none (see [`has_client_call`](Self::has_client_call)),
    /// and then nothing of `call` was taken.
    ///
    /// # Safety
    /// `call` must hand over allocations of the object's heap (the caller
    /// asked it, see `heap`), which the callee takes; and `place` must stay
    /// where it is and alive, untouched, until the returned future is dropped.
    // SAFETY: unsafe to call; the contract is the `# Safety` section above.
    pub(crate) unsafe fn client_call_in(
        &self,
        call: &mut FfiClientCall,
        place: &mut Place,
    ) -> Option<crate::ffi_future::FfiFuture<FfiClientReply>> {
        let entry = self.obj.vtable_ref().client_call?;
        let (at, len) = (place as *mut Place as *mut c_void, std::mem::size_of::<Place>());
        // The object outlives the future (the ABI's rule, kept by the caller
        // as for `call`); the call and the room are this function's contract.
        // SAFETY: a live object of the other side, and arguments as above.
        Some(unsafe { entry(self.obj.data(), call, at, len) })
    }

    /// As [`call_encoded`](Self::call_encoded), for a future that outlives
    /// the caller's borrow: it holds a reference count of the remote.
    pub(crate) fn call_encoded_kept(
        self: &Arc<Self>,
        method: u32,
        objects: Vec<FfiObject>,
        encode: impl FnOnce(&mut crate::wire::Writer),
    ) -> impl std::future::Future<Output = Result<RemoteReply, Error>> + Send + 'static {
        let fut = self.start_encoded(method, objects, encode);
        // One value, whose fields drop in the order they are declared (the
        // future, then the remote): polled or not, a cancelled call drops
        // the other side's future before it may drop the object.
        KeptCall { fut: fut.into_future(), _remote: self.clone() }
    }

    /// Calls an async method whose argument is `bytes`, lent rather than
    /// borrowed: they cross with one object, which owns them, so that the
    /// callee can keep them after the call returns ([`kept_args`]) instead
    /// of copying them. For a batch of frames, the copy was the largest
    /// allocation of a call through a socket of the other side, and the
    /// one that made the allocator consolidate its caches (BENCHMARKS.md).
    /// The callee keeps the whole allocation behind `bytes` alive for as
    /// long as it holds any part of them (for a batch split off a
    /// connection's buffer, that buffer).
    pub(crate) fn call_lending(&self, method: u32, bytes: bytes::Bytes) -> RemoteCall<'_> {
        // Held across the call as well: the arguments stay valid for the
        // whole call whatever the callee does with the object (it may drop
        // it before it reads them). A reference count, not a copy.
        let during = bytes.clone();
        let owner = Box::new(bytes);
        // The bytes live on the heap (or are static): moving the `Bytes` into
        // its box moved none of them, so this view stays valid while it lives.
        let view = FfiStr::from_slice(&owner[..]);
        // SAFETY: LENT's functions take exactly this Box<Bytes>; the object owns it.
        let lent = unsafe { FfiObject::from_raw(Box::into_raw(owner) as *const c_void, &LENT) };
        let mut out = std::mem::ManuallyDrop::new(lent);
        let args = FfiArgs { bytes: view, objects: &mut *out, n_objects: 1, place: std::ptr::null_mut(), place_len: 0 };
        // SAFETY: `obj` is a live object of the other side; the callee takes
        // the one object (so it is not dropped here) and reads or keeps `view`
        // through it.
        let fut = unsafe { (self.obj.vtable_ref().call)(self.obj.data(), method, args) };
        drop(during);
        // The future borrows `self` (`'_`): the object outlives its call
        // (the ABI's rule, see `Dispatch::call_inline`).
        RemoteCall { fut: fut.into_future(), _remote: PhantomData }
    }

    /// Calls a synchronous method with arguments written by `encode` into
    /// this thread's scratch buffer (see [`call_encoded`](Self::call_encoded)).
    pub(crate) fn call_sync_encoded(
        &self,
        method: u32,
        objects: Vec<FfiObject>,
        encode: impl FnOnce(&mut crate::wire::Writer),
    ) -> Result<RemoteReply, Error> {
        with_scratch(encode, |args| self.call_sync(method, args, objects))
    }

    /// Calls a synchronous method.
    pub(crate) fn call_sync(&self, method: u32, bytes: &[u8], objects: Vec<FfiObject>) -> Result<RemoteReply, Error> {
        let mut out = OutObjects(objects);
        // SAFETY: as in `call`.
        let r = unsafe { (self.obj.vtable_ref().call_sync)(self.obj.data(), method, out.args(bytes)) };
        into_result(r)
    }

    /// A synchronous method returning a string; empty on error.
    pub(crate) fn call_string(&self, method: u32) -> String {
        self.call_sync(method, &[], Vec::new())
            .map(|r| String::from_utf8_lossy(r.bytes.as_slice()).into_owned())
            .unwrap_or_default()
    }
}

/// The vtable of a lent buffer: an object that owns the bytes of a call's
/// arguments, so that the callee may keep them past the call instead of
/// copying them (a batch of frames for a socket of the other side). It has
/// no methods; dropping it releases the bytes on the lending side.
static LENT: ObjectVTable =
    ObjectVTable { call: lent_call, call_sync: lent_call_sync, drop: lent_drop, client_call: None };

unsafe extern "C" fn lent_call(_: *const c_void, method: u32, args: FfiArgs) -> FfiFuture<FfiReply> {
    // SAFETY: the caller passes ownership of the objects (released here).
    drop(unsafe { take_objects(&args) });
    FfiFuture::new(std::future::ready(reply_of(Err(unknown_method("lent buffer", method)))))
}

unsafe extern "C" fn lent_call_sync(_: *const c_void, method: u32, args: FfiArgs) -> FfiReply {
    // SAFETY: as in lent_call.
    drop(unsafe { take_objects(&args) });
    reply_of(Err(unknown_method("lent buffer", method)))
}

unsafe extern "C" fn lent_drop(data: *const c_void) {
    // SAFETY: `data` is the Box<Bytes> made by `Remote::call_lending`; the owner drops it once.
    let owned = unsafe { Box::from_raw(data as *mut bytes::Bytes) };
    if catch_unwind(AssertUnwindSafe(move || drop(owned))).is_err() {
        tracing::error!("a lent buffer panicked while being released");
    }
}

/// Bytes of the other side, kept alive by the object that lent them.
struct Lent {
    ptr: *const u8,
    len: usize,
    _owner: FfiObject,
}

// SAFETY: the bytes are immutable while lent and the owner is Send: the view
// may move to and be dropped on any thread.
unsafe impl Send for Lent {}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `kept_args`' caller vouched that `_owner` keeps these bytes
        // alive and unchanged until it is dropped, which is after this borrow.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A call's argument bytes, kept past the call by `owner`, the object they
/// were lent with (see [`Remote::call_lending`]), instead of copied.
///
/// # Safety
/// `owner` must have come with `args` from a call made by
/// [`Remote::call_lending`] (the method's contract says which calls carry
/// one): it keeps those bytes alive and unchanged until it is dropped.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub(crate) unsafe fn kept_args(args: &[u8], owner: FfiObject) -> bytes::Bytes {
    bytes::Bytes::from_owner(Lent { ptr: args.as_ptr(), len: args.len(), _owner: owner })
}

/// Calls a plain entry point (a plugin's `construct`) with encoded
/// arguments and objects, handing the objects over.
///
/// # Safety
/// `f` must be an entry point that follows the [`FfiArgs`] contract.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub(crate) unsafe fn call_entry_point(
    f: unsafe extern "C" fn(FfiArgs) -> FfiReply,
    bytes: &[u8],
    objects: Vec<FfiObject>,
) -> Result<RemoteReply, Error> {
    let mut out = OutObjects(objects);
    // SAFETY: guaranteed by the caller; the arguments live during the call.
    let r = unsafe { f(out.args(bytes)) };
    drop(out);
    into_result(r)
}

/// A call started by [`Remote::call_encoded`] (or `call_lending`): the other side's future,
/// which borrows the remote so that it is dropped first (the ABI's rule
/// for `call`). A named type rather than an `async` block, so that a
/// caller's future holding it holds the crossing once (56 bytes).
pub(crate) struct RemoteCall<'a> {
    fut: crate::ffi_future::Polled<FfiReply>,
    _remote: PhantomData<&'a Remote>,
}

impl RemoteCall<'_> {
    /// Where the other side's future lives, while it does (for tests).
    #[cfg(test)]
    pub(crate) fn data(&self) -> Option<*mut c_void> {
        self.fut.data()
    }
}

impl std::future::Future for RemoteCall<'_> {
    type Output = Result<RemoteReply, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.fut).poll(cx).map(into_result)
    }
}

/// Turns a reply of the other side into a result.
pub(crate) fn reply_result(r: FfiReply) -> Result<RemoteReply, Error> {
    into_result(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An exported value whose call's future records, when dropped,
    /// whether the value was dropped before it.
    struct Probe {
        dropped: Arc<AtomicBool>,
        late: Arc<AtomicBool>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    /// Records, when dropped, whether the value was dropped already. It
    /// holds the flags, not the value, so that the wrong order is seen
    /// rather than read from freed memory.
    struct OnDrop {
        dropped: Arc<AtomicBool>,
        late: Arc<AtomicBool>,
    }

    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.late.store(self.dropped.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    impl Dispatch for Probe {
        fn call(self: Arc<Self>, _: u32, _: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply, Error>> {
            Box::pin(std::future::ready(Err(Error::internal(ID, "not this path"))))
        }
        fn call_sync(&self, _: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply, Error> {
            Err(Error::internal(ID, "not this path"))
        }
        fn call_inline<'a>(&'a self, method: u32, _: &[u8], start: Inline<'a>) -> Option<Started<'a>> {
            let guard = OnDrop { dropped: self.dropped.clone(), late: self.late.clone() };
            if method == 2 {
                // A future too big for any room a caller offers.
                return Some(start.start(async move {
                    let (_guard, big) = (guard, [7u8; 512]);
                    std::future::pending::<()>().await;
                    Ok(Reply::bytes(big.to_vec()))
                }));
            }
            // Borrows the value for its life, as a hot call's future may.
            Some(start.start(async move {
                let _guard = guard;
                let _borrowed: &Probe = self;
                std::future::pending::<Result<Reply, Error>>().await
            }))
        }
    }

    #[test]
    fn a_call_builds_its_future_in_the_room_offered_when_it_fits_and_drops_it_there() -> Result<(), Error> {
        for (method, fits) in [(1, true), (2, false)] {
            let (dropped, late) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
            let remote = Remote::new(export(Arc::new(Probe { dropped: dropped.clone(), late: late.clone() })))?;
            let mut place = Box::new(Place::new());
            let at = &mut *place as *mut Place as *mut c_void;
            let mut out = OutObjects(Vec::new());
            // SAFETY: a live object; the room outlives the future, dropped below first.
            let fut =
                unsafe { (remote.obj.vtable_ref().call)(remote.obj.data(), method, out.args_in(&[], at, PLACE_LEN)) };
            assert_eq!(fut.data == at, fits, "method {method}: built in the room: {}", fut.data == at);
            let mut polled = fut.into_future();
            let waker = futures::task::noop_waker();
            assert!(std::pin::Pin::new(&mut polled).poll(&mut std::task::Context::from_waker(&waker)).is_pending());
            assert_eq!(Arc::strong_count(&late), 3, "the test, the value and the future's guard");
            // Dropped where it lives: its state (the guard) goes with it.
            drop(polled);
            assert_eq!(Arc::strong_count(&late), 2, "method {method}: the future's state outlived it");
            drop(place);
            drop(remote);
            assert!(dropped.load(Ordering::SeqCst) && !late.load(Ordering::SeqCst), "method {method}");
        }
        Ok(())
    }

    #[test]
    fn a_kept_call_drops_its_future_before_the_object_polled_or_not() -> Result<(), Error> {
        for polled in [false, true] {
            let (dropped, late) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
            let remote =
                Arc::new(Remote::new(export(Arc::new(Probe { dropped: dropped.clone(), late: late.clone() })))?);
            let mut fut = Box::pin(remote.call_encoded_kept(1, Vec::new(), |_| {}));
            if polled {
                let waker = futures::task::noop_waker();
                assert!(fut.as_mut().poll(&mut std::task::Context::from_waker(&waker)).is_pending());
            }
            // The caller's remote goes first; the call keeps its own.
            drop(remote);
            assert!(!dropped.load(Ordering::SeqCst), "the call keeps the object");
            drop(fut);
            assert!(dropped.load(Ordering::SeqCst), "the object is released with the call");
            assert!(!late.load(Ordering::SeqCst), "polled: {polled}: the object was dropped before its call's future");
        }
        Ok(())
    }
}
