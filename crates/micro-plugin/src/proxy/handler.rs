//! A unary request handler (a server's `HandlerFn`) across the boundary.

use super::*;

mod handler_m {
    pub(super) const CALL: u32 = 1;
}

struct HandlerFnExport(HandlerFn);

impl Dispatch for HandlerFnExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        if method != handler_m::CALL {
            return ready_err(unknown_method("handler", method));
        }
        let req = dec!(wire::get_request(&mut Reader::new(args)));
        let fut = (self.0)(req);
        Box::pin(async move {
            let resp = fut.await?;
            let mut w = Writer::with_capacity(wire::response_len(&resp));
            wire::put_response(&mut w, &resp);
            Ok(Reply::bytes(w.finish()))
        })
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        Err(unknown_method("handler", method))
    }
}

/// Exports a unary handler.
pub(super) fn export_handler_fn(f: HandlerFn) -> FfiObject {
    export(Arc::new(HandlerFnExport(f)))
}

pub(super) fn import_handler_fn(obj: FfiObject) -> Result<HandlerFn> {
    let remote = Arc::new(Remote::new(obj)?);
    Ok(Arc::new(move |req: Request| {
        let remote = remote.clone();
        Box::pin(async move {
            let r = remote.call_encoded(handler_m::CALL, Vec::new(), |w| wire::put_request(w, &req)).await?;
            wire::get_response(&mut Reader::new(r.bytes.as_slice()))
        })
    }))
}
