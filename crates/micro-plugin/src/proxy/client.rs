//! A client across the boundary.

use super::*;

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
                let req = dec!(wire::get_request(&mut r));
                let opts = dec!(wire::get_call_options(&mut r));
                Box::pin(async move {
                    let resp = self.0.call(req, opts).await?;
                    let mut w = Writer::with_capacity(wire::response_len(&resp));
                    wire::put_response(&mut w, &resp);
                    Ok(Reply::bytes(w.finish()))
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
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            client_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("client", m)),
        }
    }
}

/// Exports a client.
pub fn export_client(c: Arc<dyn Client>) -> FfiObject {
    export(Arc::new(ClientExport(c)))
}

struct ClientProxy {
    remote: Remote,
    name: String,
}

/// A client exported by the other side.
pub fn import_client(obj: FfiObject) -> Result<Arc<dyn Client>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(client_m::NAME);
    Ok(Arc::new(ClientProxy { remote, name }))
}

#[async_trait]
impl Client for ClientProxy {
    async fn call(&self, req: Request, opts: CallOptions) -> Result<Response> {
        let r = self
            .remote
            .call_encoded(client_m::CALL, Vec::new(), |w| {
                wire::put_request(w, &req);
                wire::put_call_options(w, &opts);
            })
            .await?;
        // The request is done with: its content type becomes the response's.
        wire::get_response_to(&mut Reader::new(r.bytes.as_slice()), req.content_type)
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
