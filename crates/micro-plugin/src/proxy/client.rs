//! A client across the boundary.

use super::*;
use crate::object::{Inline, RemoteCall, Started};
use std::future::Future;
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
        if method != client_m::CALL {
            return None;
        }
        let started = decode_call(&mut Reader::new(args)).map(|(req, opts)| self.0.call(req, opts));
        Some(start.start(async move { response_reply(started?.await?) }))
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

/// Exports a client.
pub fn export_client(c: Arc<dyn Client>) -> FfiObject {
    export(Arc::new(ClientExport(c)))
}

struct ClientProxy {
    remote: Remote,
    name: String,
}

/// A call's reply, decoded with the request's content type as default. A
/// named future rather than an `async` block, which would hold the call a
/// second time once awaited.
struct CallReply<'a> {
    call: RemoteCall<'a>,
    content_type: Option<String>,
}

impl Future for CallReply<'_> {
    type Output = Result<Response>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<Response>> {
        let r = std::task::ready!(Pin::new(&mut self.call).poll(cx))?;
        let content_type = self.content_type.take().unwrap_or_default();
        std::task::Poll::Ready(wire::get_response_to(&mut Reader::new(r.bytes.as_slice()), content_type))
    }
}

/// A client exported by the other side.
pub fn import_client(obj: FfiObject) -> Result<Arc<dyn Client>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(client_m::NAME);
    Ok(Arc::new(ClientProxy { remote, name }))
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
        let call = self.remote.call_encoded(client_m::CALL, Vec::new(), |w| {
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
        // `call` borrows the remote for 'life0, which outlives the box.
        Box::pin(CallReply { call, content_type: Some(content_type) })
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
        let size = std::mem::size_of_val(&*call);
        let args = std::mem::size_of::<Request>() + std::mem::size_of::<CallOptions>();
        assert!(size < args, "a call's future is {size} bytes, its arguments {args}");
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
        // The other side has its own copy: the caller's request is already gone.
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
