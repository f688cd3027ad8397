//! A client across the boundary.
//!
//! A call between sides of one heap (see [`heap`](crate::heap)) goes
//! through the client object's own crossing (`ObjectVTable::client_call`):
//! its request's strings, body and headers, and then its response's, are
//! handed to the other side in C structs, with no method number and no
//! encoding. Otherwise both are encoded and copied (`CALL`).
#![allow(unsafe_code)]

use super::*;
use crate::abi::{FfiClientCall, FfiClientReply, FfiPair, ObjectVTable};
use crate::ffi_future::{FfiFuture, Polled};
use crate::heap;
use crate::object::{Inline, Place, RemoteCall, Started};
use std::ffi::c_void;
use std::future::{Future, IntoFuture as _};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;

mod client_m {
    pub(super) const CALL: u32 = 1;
    pub(super) const PUBLISH: u32 = 2;
    pub(super) const NAME: u32 = 3;
    pub(super) const STREAM: u32 = 4;
}

struct ClientExport(Arc<dyn Client>);

impl Dispatch for ClientExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        let mut r = Reader::new(args);
        match method {
            client_m::CALL => {
                // Reached only when a peer passes objects with a call; the
                // hot path is `call_inline`. This one calls the client at its
                // first poll, as it always did.
                let args = decode_call(&mut r);
                Box::pin(async move {
                    let (req, opts) = args?;
                    response_reply(self.0.call(req, opts).await?)
                })
            }
            client_m::STREAM => {
                let req = dec!(wire::get_request(&mut r));
                let opts = dec!(wire::get_call_options(&mut r));
                Box::pin(async move { Ok(Reply::object(export_stream(self.0.stream(req, opts).await?))) })
            }
            client_m::PUBLISH => {
                let topic = dec!(r.string());
                let msg = dec!(wire::get_message(&mut r));
                Box::pin(async move { self.0.publish(&topic, msg).await.and_then(|_| ok()) })
            }
            m => ready_err(unknown_method("client", m)),
        }
    }
    fn call_inline<'a>(&'a self, method: u32, args: &[u8], start: Inline<'a>) -> Option<Started<'a>> {
        // A call, the hot path: one box for the crossing's state, which
        // holds only the client's own future. `Client::call` is called now
        // (it borrows the client for 'a), so the request and options move
        // once, into that future, rather than first into this one to wait
        // for the first poll: a smaller box, fewer bytes copied and fewer
        // cache lines touched per call.
        match method {
            client_m::CALL => {
                let started = decode_call(&mut Reader::new(args)).map(|(req, opts)| self.0.call(req, opts));
                Some(start.start(async move { response_reply(started?.await?) }))
            }
            _ => None,
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            client_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("client", m)),
        }
    }
}

/// A call's arguments.
fn decode_call(r: &mut Reader<'_>) -> Result<(Request, CallOptions)> {
    let req = wire::get_request(r)?;
    Ok((req, wire::get_call_options(r)?))
}

/// A call's response as its reply.
fn response_reply(resp: Response) -> Result<Reply> {
    let mut w = Writer::with_capacity(wire::response_len(&resp));
    wire::put_response(&mut w, &resp);
    Ok(Reply::bytes(w.finish()))
}

/// A client's call through its own crossing, on the client's side: takes
/// the call the caller handed over, calls the client, and builds the
/// crossing's future in the caller's room.
unsafe extern "C" fn client_call_entry(
    data: *const c_void,
    call: *mut FfiClientCall,
    place: *mut c_void,
    place_len: usize,
) -> FfiFuture<FfiClientReply> {
    // SAFETY: CLIENT_VTABLE's objects are `export_client`'s, alive during
    // the call and until its future is dropped (the ABI's rule).
    let (value, rt) = unsafe { crate::object::served(data) };
    // SAFETY: the caller hands the call over (the entry's contract); read once, here.
    let call = unsafe { std::ptr::read(call) };
    let started = catch_unwind(AssertUnwindSafe(|| {
        let Some(ClientExport(client)) = value.downcast_ref::<ClientExport>() else {
            // Only `export_client` makes objects of this vtable: unreachable.
            return Err(Error::internal("go.micro.plugin", "a client's call to an object that is not a client"));
        };
        let _g = crate::runtime::enter(rt);
        // SAFETY: handed over by a caller of this heap (it asked: see
        // `import_moves`), taken once.
        let (req, opts) = unsafe { take_call(call) };
        let fut = client.call(req, opts);
        let on_panic = |e| FfiClientReply::error(&Error::internal("go.micro.plugin", e));
        // SAFETY: the future borrows the client, which lives until the
        // object is dropped: after this future (the ABI's rule).
        Ok(unsafe { Inline::new(rt, place, place_len).start_as(fut, give_response, on_panic) })
    }));
    let e = match started {
        Ok(Ok(fut)) => return fut,
        Ok(Err(e)) => e,
        Err(p) => Error::internal("go.micro.plugin", format!("panic: {}", crate::object::panic_message(&*p))),
    };
    FfiFuture::new(std::future::ready(FfiClientReply::error(&e)))
}

/// A call's request and options, handed over to the other side of one
/// heap. The headers' array is the caller's, to keep until the call has
/// crossed (the callee takes its pairs, not the array).
fn give_call(req: Request, opts: CallOptions, headers: &mut Vec<FfiPair>) -> FfiClientCall {
    let Request { service, endpoint, content_type, body, metadata } = req;
    *headers = heap::give_pairs(metadata);
    FfiClientCall {
        service: heap::give_string(service),
        endpoint: heap::give_string(endpoint),
        content_type: heap::give_string(content_type),
        // The body's own buffer when nothing else shares it, else a copy.
        body: heap::give(Vec::from(body)),
        headers: if headers.is_empty() { std::ptr::null() } else { headers.as_ptr() },
        n_headers: headers.len(),
        timeout: wire::timeout_word(opts.timeout),
        retries: wire::retries_word(opts.retries),
        address: heap::give_option(opts.address),
    }
}

/// Takes a call written by [`give_call`].
///
/// # Safety
/// `call` must be [`give_call`]'s, made on a side of this side's heap and
/// handed over to this call alone, its headers' array still alive.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
unsafe fn take_call(call: FfiClientCall) -> (Request, CallOptions) {
    let metadata = if call.n_headers == 0 {
        std::collections::HashMap::new()
    } else {
        // SAFETY: the caller's array of `n_headers` pairs, alive during this call.
        let pairs = unsafe { std::slice::from_raw_parts(call.headers, call.n_headers) };
        // SAFETY: their keys and values were handed over with the call.
        unsafe { heap::take_headers(pairs) }
    };
    // SAFETY: each part was handed over with the call, and is taken once.
    let service = unsafe { heap::take_string(call.service) };
    // SAFETY: as above.
    let endpoint = unsafe { heap::take_string(call.endpoint) };
    // SAFETY: as above.
    let content_type = unsafe { heap::take_string(call.content_type) };
    // SAFETY: as above.
    let body = bytes::Bytes::from(unsafe { heap::take::<u8>(call.body) });
    let req = Request { service, endpoint, content_type, body, metadata };
    let opts = CallOptions {
        timeout: wire::timeout_of(call.timeout),
        retries: wire::retries_of(call.retries),
        // SAFETY: as above.
        address: unsafe { heap::take_option(call.address) },
    };
    (req, opts)
}

/// A call's outcome, its response's allocations handed over to the caller.
fn give_response(res: Result<Response>) -> FfiClientReply {
    match res {
        Ok(Response { content_type, body, metadata }) => FfiClientReply {
            status: 0,
            content_type: heap::give_string(content_type),
            // The body's own buffer when nothing else shares it, else a copy
            // (a body that is a slice of a connection's read buffer).
            body: heap::give(Vec::from(body)),
            headers: heap::give_headers(metadata),
        },
        Err(e) => FfiClientReply::error(&e),
    }
}

/// Takes a call's outcome written by [`give_response`].
///
/// # Safety
/// `r` must be [`give_response`]'s, made on a side of this side's heap and
/// handed over.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
unsafe fn take_response(r: FfiClientReply) -> Result<Response> {
    if r.status != 0 {
        // SAFETY: the error's JSON, handed over with the reply; taken once.
        let json = unsafe { heap::take::<u8>(r.body) };
        return Err(Error::parse(&String::from_utf8_lossy(&json)));
    }
    // SAFETY: each part was handed over with the reply, and is taken once.
    let content_type = unsafe { heap::take_string(r.content_type) };
    // An exactly full buffer becomes the `Bytes` with no allocation of its own.
    // SAFETY: as above.
    let body = bytes::Bytes::from(unsafe { heap::take::<u8>(r.body) });
    // SAFETY: as above.
    let metadata = unsafe { heap::take_header_array(r.headers) };
    Ok(Response { content_type, body, metadata })
}

/// The vtable of an exported client: every object's, plus the client's own
/// crossing for a call.
static CLIENT_VTABLE: ObjectVTable = crate::object::vtable_with(Some(client_call_entry));

/// Exports a client.
pub fn export_client(c: Arc<dyn Client>) -> FfiObject {
    crate::object::export_answering_heap(Arc::new(ClientExport(c)), &CLIENT_VTABLE)
}

struct ClientProxy {
    remote: Remote,
    name: String,
    /// Whether the other side allocates from this side's heap and has the
    /// client's own crossing: its calls then hand their allocations over
    /// (`client_call`) instead of copying them (`CALL`).
    moves: bool,
}

/// A call's crossing, as [`CallReply`] holds it.
enum Crossing<'a> {
    /// Encoded and copied (`CALL`): the reply is an encoded response.
    Copied(RemoteCall<'a>),
    /// Through the client's own crossing: the reply hands the response over.
    /// It borrows the remote as a `RemoteCall` does (the ABI's rule).
    Moved(Polled<FfiClientReply>, PhantomData<&'a Remote>),
}

/// A call's reply: the crossing, and the room in which the other side
/// builds its future, in the one box the caller awaits (one allocation per
/// call where there were two). A named future rather than an `async`
/// block, which would hold the call a second time once awaited.
struct CallReply<'a> {
    /// The crossing, set once the reply is pinned. Declared first, so that
    /// it drops (and with it the other side's future, which may live in
    /// `place`) before the room does.
    call: Option<Crossing<'a>>,
    /// For a copied call, the request's content type: the response's,
    /// taken rather than copied when they are the same (nearly always).
    content_type: String,
    /// Where the other side's future may live (see `FfiArgs::place`): it
    /// must not move, so neither may this.
    place: Place,
    _pinned: std::marker::PhantomPinned,
}

impl<'a> CallReply<'a> {
    /// An unstarted reply, pinned.
    fn pinned() -> Pin<Box<Self>> {
        Box::pin(CallReply {
            call: None,
            content_type: String::new(),
            place: Place::new(),
            _pinned: Default::default(),
        })
    }

    /// Starts a copied call whose future the other side may build in the
    /// reply's room, and returns the pinned reply.
    fn start(remote: &'a Remote, method: u32, encode: impl FnOnce(&mut Writer)) -> Pin<Box<Self>> {
        let mut reply = Self::pinned();
        // SAFETY: nothing is moved out of the pinned reply; only its `call` is set.
        let this = unsafe { reply.as_mut().get_unchecked_mut() };
        // SAFETY: the room stays where the box pinned it, alive and
        // untouched, until `call` is dropped: first of the fields.
        this.call = Some(Crossing::Copied(unsafe { remote.call_encoded_in(method, &mut this.place, encode) }));
        reply
    }

    /// Starts a call through the client's own crossing, its allocations
    /// handed over: only to a client of this heap (`import_moves`).
    fn start_moved(remote: &'a Remote, req: Request, opts: CallOptions) -> Pin<Box<Self>> {
        let mut reply = Self::pinned();
        // SAFETY: as in `start`.
        let this = unsafe { reply.as_mut().get_unchecked_mut() };
        let mut headers = Vec::new();
        let mut call = give_call(req, opts, &mut headers);
        // SAFETY: the call's allocations are of the client's heap (the
        // caller asked, see `import_moves`); the room as in `start`.
        match unsafe { remote.client_call_in(&mut call, &mut this.place) } {
            Some(fut) => this.call = Some(Crossing::Moved(fut.into_future(), PhantomData)),
            // No crossing of its own (never so for a client that `moves`):
            // nothing was taken, so the call is freed here, and the reply
            // says it was never started.
            // SAFETY: the call made above, on this side, not handed over.
            None => drop(unsafe { take_call(call) }),
        }
        // The array only: its keys and values went over with the call.
        drop(headers);
        reply
    }

    /// Makes a copied call's response default to `content_type` (see the field).
    fn expect_content_type(self: Pin<&mut Self>, content_type: String) {
        // SAFETY: the content type is not pinned; nothing pinned moves.
        unsafe { self.get_unchecked_mut() }.content_type = content_type;
    }
}

impl Future for CallReply<'_> {
    type Output = Result<Response>;
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<Response>> {
        // SAFETY: nothing is moved out: the crossing is polled where it is,
        // and the content type is a plain value.
        let this = unsafe { self.get_unchecked_mut() };
        let poll = match this.call.as_mut() {
            Some(Crossing::Moved(call, _)) => {
                let r = std::task::ready!(Pin::new(call).poll(cx));
                // SAFETY: the reply of the client's own crossing, made on a
                // side of this heap (`moves`) and handed over with it.
                unsafe { take_response(r) }
            }
            Some(Crossing::Copied(call)) => {
                let r = std::task::ready!(Pin::new(call).poll(cx))?;
                let content_type = std::mem::take(&mut this.content_type);
                wire::get_response_to(&mut Reader::new(r.bytes.as_slice()), content_type)
            }
            None => Err(Error::internal("go.micro.plugin", "a call was polled unstarted")),
        };
        std::task::Poll::Ready(poll)
    }
}

/// A client exported by the other side.
pub fn import_client(obj: FfiObject) -> Result<Arc<dyn Client>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(client_m::NAME);
    let moves = remote.has_client_call() && import_moves(&remote);
    Ok(Arc::new(ClientProxy { remote, name, moves }))
}

/// Whether a client of the other side allocates from this side's heap, so
/// that its calls may move: asked, never assumed (see `heap`).
fn import_moves(remote: &Remote) -> bool {
    let theirs = remote
        .call_sync(crate::object::HEAP, &[], Vec::new())
        .ok()
        .and_then(|r| <[u8; 8]>::try_from(r.bytes.as_slice()).ok().map(u64::from_le_bytes));
    theirs == Some(heap::identity() as u64)
}

#[async_trait]
impl Client for ClientProxy {
    // Written out rather than `async fn`: the call crosses now, and the
    // boxed future keeps only the crossing and the content type. As an
    // `async fn` it held the request and options too (over 500 bytes,
    // copied in and read back on its first poll; in a sampling profile of
    // the client plugin the first read of that box was its hottest
    // instruction).
    fn call<'life0, 'async_trait>(
        &'life0 self,
        req: Request,
        opts: CallOptions,
    ) -> Pin<Box<dyn Future<Output = Result<Response>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        if self.moves {
            // The request's allocations go over with it: nothing to copy,
            // and nothing of it left here to free.
            return CallReply::start_moved(&self.remote, req, opts);
        }
        let mut reply = CallReply::start(&self.remote, client_m::CALL, |w| {
            wire::put_request(w, &req);
            wire::put_call_options(w, &opts);
        });
        // Encoded: release the request now, as a client built in does once
        // its frame is queued, not when the reply comes. Held across the
        // wait, every call in flight keeps its small allocations, which are
        // then freed in bursts that overflow the allocator's per-thread
        // cache (BENCHMARKS.md). Its content type becomes the response's.
        let Request { content_type, service, endpoint, body, metadata } = req;
        drop((service, endpoint, body, metadata, opts));
        reply.as_mut().expect_content_type(content_type);
        // `call` borrows the remote for 'life0, which outlives the box.
        reply
    }

    async fn stream(&self, req: Request, opts: CallOptions) -> Result<micro_core::Stream> {
        let r = self
            .remote
            .call_encoded(client_m::STREAM, Vec::new(), |w| {
                wire::put_request(w, &req);
                wire::put_call_options(w, &opts);
            })
            .await?;
        import_stream(reply_object(r, "stream")?)
    }
    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        let publish = self.remote.call_encoded(client_m::PUBLISH, Vec::new(), |w| {
            w.str(topic);
            wire::put_message(w, &msg);
        });
        publish.await.map(|_| ())
    }
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use tokio::sync::Notify;

    /// A client that answers each call once told to, echoing its body.
    struct Held {
        called: Notify,
        answer: Notify,
    }

    #[async_trait]
    impl Client for Held {
        async fn call(&self, req: Request, _: CallOptions) -> Result<Response> {
            self.called.notify_one();
            self.answer.notified().await;
            Ok(Response { content_type: req.content_type, body: req.body, metadata: req.metadata })
        }
        async fn publish(&self, _: &str, _: Message) -> Result<()> {
            Ok(())
        }
        fn name(&self) -> &str {
            "held"
        }
    }

    /// A request whose body says when it is freed.
    fn watched_request(body: &[u8]) -> (Request, Arc<std::sync::atomic::AtomicBool>) {
        let (body, freed) = Watched::bytes(body);
        let req = Request {
            service: "greeter".into(),
            endpoint: "Greeter.Hello".into(),
            content_type: "application/json".into(),
            body,
            metadata: Default::default(),
        };
        (req, freed)
    }

    /// Echoes a call: its body, content type and headers, plus a header
    /// with the service and the capacity it arrived with.
    struct Echo;

    #[async_trait]
    impl Client for Echo {
        async fn call(&self, req: Request, opts: CallOptions) -> Result<Response> {
            let mut metadata = req.metadata;
            metadata.insert("Echo-Service".into(), format!("{} {}", req.service, req.service.capacity()));
            metadata.insert("Echo-Options".into(), format!("{:?} {:?} {:?}", opts.timeout, opts.retries, opts.address));
            Ok(Response { content_type: req.content_type, body: req.body, metadata })
        }
        async fn publish(&self, _: &str, _: Message) -> Result<()> {
            Ok(())
        }
        fn name(&self) -> &str {
            "echo"
        }
    }

    #[tokio::test]
    async fn a_moved_call_and_a_copied_call_give_the_same_response() -> Result<()> {
        let imported = import_client(export_client(Arc::new(Echo)))?;
        assert_eq!(imported.name(), "echo");
        let mut seen = Vec::new();
        for moves in [true, false] {
            // One process is one heap: the import chose to move; the copy is forced.
            let client =
                ClientProxy { remote: Remote::new(export_client(Arc::new(Echo)))?, name: "echo".into(), moves };
            let mut body = Vec::with_capacity(100);
            body.extend_from_slice(b"{\"name\":\"x\"}");
            let req = Request {
                content_type: "application/json".into(),
                body: body.into(),
                metadata: [("A".to_string(), "1".to_string()), ("Bb".to_string(), String::new())].into(),
                ..roomy_request()
            };
            let opts = CallOptions {
                timeout: Some(std::time::Duration::from_millis(1500)),
                retries: Some(2),
                address: Some("127.0.0.1:1".into()),
            };
            let resp = client.call(req, opts).await?;
            assert_eq!(&resp.body[..], b"{\"name\":\"x\"}");
            assert_eq!(resp.content_type, "application/json");
            let capacity = if moves { "greeter 100" } else { "greeter 7" };
            assert_eq!(resp.metadata.get("Echo-Service").map(String::as_str), Some(capacity), "moves: {moves}");
            let mut metadata = resp.metadata;
            metadata.remove("Echo-Service");
            seen.push((resp.content_type, resp.body, metadata));
        }
        assert_eq!(seen[0], seen[1], "a moved call and a copied call differ");
        assert_eq!(seen[0].2.get("Echo-Options").map(String::as_str), Some("Some(1.5s) Some(2) Some(\"127.0.0.1:1\")"));
        // No options cross as none, not as zeros or an empty address.
        let resp = imported.call(roomy_request(), CallOptions::default()).await?;
        assert_eq!(resp.metadata.get("Echo-Options").map(String::as_str), Some("None None None"));
        Ok(())
    }

    /// A request to `Echo` whose service has a capacity of 100.
    fn roomy_request() -> Request {
        let mut service = String::with_capacity(100);
        service.push_str("greeter");
        Request { service, endpoint: "Greeter.Hello".into(), ..Default::default() }
    }

    #[tokio::test]
    async fn a_client_of_one_heap_is_imported_to_move_its_calls() -> Result<()> {
        let remote = Remote::new(export_client(Arc::new(Echo)))?;
        let r = remote.call_sync(crate::object::HEAP, &[], Vec::new())?;
        assert_eq!(r.bytes.as_slice(), (heap::identity() as u64).to_le_bytes());
        // Imported, its calls move: the service arrives with its capacity.
        let client = import_client(export_client(Arc::new(Echo)))?;
        let resp = client.call(roomy_request(), CallOptions::default()).await?;
        assert_eq!(resp.metadata.get("Echo-Service").map(String::as_str), Some("greeter 100"));
        Ok(())
    }

    /// A client's calls, as any code outside the crate could export it:
    /// answers every synchronous method with this side's heap.
    struct Forged;

    impl Dispatch for Forged {
        fn call(self: Arc<Self>, _: u32, _: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
            Box::pin(std::future::ready(Err(Error::internal("test", "a forged client was called"))))
        }
        fn call_sync(&self, _: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
            Ok(Reply::bytes((heap::identity() as u64).to_le_bytes().to_vec()))
        }
    }

    #[tokio::test]
    async fn a_client_calls_future_is_built_in_the_room_of_the_hosts_box() -> Result<()> {
        let held = Arc::new(Held { called: Notify::new(), answer: Notify::new() });
        let remote = Remote::new(export_client(held))?;
        for moves in [true, false] {
            let reply = if moves {
                CallReply::start_moved(&remote, roomy_request(), CallOptions::default())
            } else {
                CallReply::start(&remote, client_m::CALL, |w| {
                    wire::put_request(w, &roomy_request());
                    wire::put_call_options(w, &CallOptions::default());
                })
            };
            let room = &reply.place as *const Place as *mut std::ffi::c_void;
            let at = match reply.call.as_ref() {
                Some(Crossing::Copied(c)) => c.data(),
                Some(Crossing::Moved(c, _)) => c.data(),
                None => None,
            };
            assert_eq!(at, Some(room), "moves: {moves}: the other side boxed its future (too big for the room?)");
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_object_exported_outside_the_crate_cannot_claim_a_heap() -> Result<()> {
        // Its own answer is never asked: the boundary answers for it.
        let remote = Remote::new(export(Arc::new(Forged)))?;
        let asked = remote.call_sync(crate::object::HEAP, &[], Vec::new());
        assert!(asked.as_ref().is_err_and(is_unknown_method), "{:?}", asked.map(|r| r.bytes.as_slice().to_vec()));
        assert!(!import_moves(&remote), "a forged answer would make calls hand over raw allocations");
        assert!(!remote.has_client_call(), "only export_client's objects have a client's crossing");
        Ok(())
    }

    /// A client whose calls fail, or panic, as the request's endpoint says.
    struct Failing;

    #[async_trait]
    impl Client for Failing {
        async fn call(&self, req: Request, _: CallOptions) -> Result<Response> {
            match req.endpoint.as_str() {
                "Panic" => panic!("the client panicked"),
                _ => Err(Error::not_found("greeter", "no such greeting")),
            }
        }
        async fn publish(&self, _: &str, _: Message) -> Result<()> {
            Ok(())
        }
        fn name(&self) -> &str {
            "failing"
        }
    }

    #[tokio::test]
    async fn a_moved_call_that_fails_or_panics_is_an_error_value_as_a_copied_one_is() -> Result<()> {
        for moves in [true, false] {
            let client =
                ClientProxy { remote: Remote::new(export_client(Arc::new(Failing)))?, name: "failing".into(), moves };
            let err = match client.call(roomy_request(), CallOptions::default()).await {
                Ok(_) => return Err(Error::internal("test", "a failed call succeeded")),
                Err(e) => e,
            };
            assert_eq!((err.code, err.detail.as_str()), (404, "no such greeting"), "moves: {moves}");
            let req = Request { endpoint: "Panic".into(), ..roomy_request() };
            let err = match client.call(req, CallOptions::default()).await {
                Ok(_) => return Err(Error::internal("test", "a panicking call succeeded")),
                Err(e) => e,
            };
            assert!(err.code == 500 && err.detail.contains("the client panicked"), "moves: {moves}: {err:?}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_call_crosses_when_made_and_its_future_keeps_neither_request_nor_options() -> Result<()> {
        let held = Arc::new(Held { called: Notify::new(), answer: Notify::new() });
        let client = import_client(export_client(held.clone()))?;
        let (req, freed) = watched_request(b"{}");
        let call = client.call(req, CallOptions::default());
        // Not polled yet, and the request has crossed already: what the box
        // keeps is the crossing, not the arguments (it held both, over 500
        // bytes, which each call copied in and read back).
        assert!(freed.load(Ordering::SeqCst), "the request was kept until the first poll");
        // The box holds the crossing and the room the other side's future
        // lives in; nothing else.
        let size = std::mem::size_of_val(&*call) - std::mem::size_of::<Place>();
        let args = std::mem::size_of::<Request>() + std::mem::size_of::<CallOptions>();
        assert!(size < args, "a call's future is {size} bytes besides its room, its arguments {args}");
        // Dropped unpolled, the client's body never ran (its `notify_one`
        // would have left a permit).
        drop(call);
        tokio::task::yield_now().await;
        let notified = std::pin::pin!(held.called.notified());
        let polled = notified.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        assert!(polled.is_pending(), "a call dropped before its first poll ran the client");
        Ok(())
    }

    #[tokio::test]
    async fn a_request_is_released_once_it_has_crossed_not_when_the_reply_comes() -> Result<()> {
        let held = Arc::new(Held { called: Notify::new(), answer: Notify::new() });
        let client = import_client(export_client(held.clone()))?;
        let (req, freed) = watched_request(b"{\"name\":\"x\"}");
        let call = tokio::spawn(async move { client.call(req, CallOptions::default()).await });
        tokio::time::timeout(std::time::Duration::from_secs(10), held.called.notified())
            .await
            .map_err(|_| Error::internal("test", "the call never reached the client"))?;
        // The request went to the other side (moved, in one process): none of it is left here.
        assert!(freed.load(Ordering::SeqCst), "the request was held across the wait for its reply");
        held.answer.notify_one();
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), call)
            .await
            .map_err(|_| Error::internal("test", "no reply"))?
            .map_err(|e| Error::internal("test", e.to_string()))??;
        assert_eq!((&resp.body[..], resp.content_type.as_str()), (&b"{\"name\":\"x\"}"[..], "application/json"));
        Ok(())
    }
}
