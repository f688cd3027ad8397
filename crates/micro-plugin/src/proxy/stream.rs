//! Streams across the boundary, with the semantics of `micro_core::stream`
//! kept on both sides: messages in order with backpressure, `close_send`
//! as a clean end of one direction, a dropped stream (or dropped receiving
//! half) as a cancellation that the other side's protocol sees, and a
//! handler's messages all delivered before its result.
//!
//! The side that owns the real stream (the protocol's end) exports it as an
//! object with four methods; the other side gets a fresh [`Stream`] whose
//! ends are pumped to and from that object by two loops.

use super::*;
use bytes::Bytes;
use micro_core::{Stream, StreamHandlerFn, StreamReceiver, StreamSender};
use std::sync::Mutex;

mod stream_m {
    /// Sends one message (backpressure: resolves once buffered).
    pub(super) const SEND: u32 = 1;
    /// The next message: `[1] ++ body`, or `[0]` at the clean end.
    pub(super) const RECV: u32 = 2;
    /// Ends the sending direction cleanly.
    pub(super) const CLOSE_SEND: u32 = 3;
    /// Stops receiving: the receiving half is dropped, which the protocol
    /// sees as a cancellation (for a caller) unless the stream had ended.
    pub(super) const STOP_RECV: u32 = 4;
    /// On a stream handler object: serves one stream (request, stream object).
    pub(super) const HANDLE: u32 = 1;
}

/// The protocol's end of a stream, split so that sends and receives can
/// overlap. The receiving half is declared first, so that dropping the
/// object drops it first: a cancellation, never a clean end of input.
struct StreamExport {
    receiver: tokio::sync::Mutex<Option<StreamReceiver>>,
    sender: Mutex<Option<StreamSender>>,
}

impl Dispatch for StreamExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            stream_m::SEND => {
                let tx = self.sender.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let body = Bytes::copy_from_slice(args);
                Box::pin(async move {
                    match tx {
                        Some(tx) => tx.send(body).await.and_then(|_| ok()),
                        None => Err(micro_core::stream::closed_error()),
                    }
                })
            }
            stream_m::RECV => Box::pin(async move {
                let mut rx = self.receiver.lock().await;
                let Some(rx) = rx.as_mut() else { return Err(micro_core::stream::closed_error()) };
                Ok(Reply::bytes(match rx.recv().await? {
                    Some(body) => {
                        let mut v = Vec::with_capacity(body.len() + 1);
                        v.push(1);
                        v.extend_from_slice(&body);
                        v
                    }
                    None => vec![0],
                }))
            }),
            m => ready_err(unknown_method("stream", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            stream_m::CLOSE_SEND => {
                drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
                ok()
            }
            stream_m::STOP_RECV => {
                // The importer drops its pending RECV before it stops
                // receiving, so the lock is free here.
                match self.receiver.try_lock() {
                    Ok(mut rx) => {
                        drop(rx.take());
                        ok()
                    }
                    Err(_) => Err(Error::internal("go.micro.plugin", "stream: stop while a receive is pending")),
                }
            }
            m => Err(unknown_method("stream", m)),
        }
    }
}

/// Exports the protocol's end of a stream.
pub(super) fn export_stream(stream: Stream) -> FfiObject {
    let (tx, rx) = stream.split();
    export(Arc::new(StreamExport { receiver: tokio::sync::Mutex::new(Some(rx)), sender: Mutex::new(Some(tx)) }))
}

/// Forwards what the local side sends, then ends the direction cleanly,
/// unless the local side cancelled: then the down pump stops the exporter's
/// receiving, and the sending half goes with the object.
async fn pump_up(remote: Arc<Remote>, mut ends: micro_core::StreamEnds) {
    let dropped = ends.dropped_flag();
    while let Some(body) = ends.outgoing.recv().await {
        if remote.call(stream_m::SEND, &body, Vec::new()).await.is_err() {
            // The other side is gone: the local side's next send fails too.
            ends.outgoing.close();
            break;
        }
    }
    if !dropped.get() {
        let _ = remote.call_sync(stream_m::CLOSE_SEND, &[], Vec::new());
    }
}

/// Forwards the other side's messages until its end or its error, or until
/// the local side stops receiving: then the pending receive is dropped and
/// the exporter's receiving half too (a caller's cancellation, or a handler
/// that no longer reads, so that its protocol goes on noticing the peer).
async fn pump_down(remote: Arc<Remote>, incoming: tokio::sync::mpsc::Sender<Result<Bytes>>) {
    loop {
        let got = tokio::select! {
            _ = incoming.closed() => None,
            r = remote.call(stream_m::RECV, &[], Vec::new()) => Some(r),
        };
        let delivered = match got {
            None => false,
            Some(Ok(r)) => match r.bytes.as_slice().split_first() {
                Some((1, body)) => incoming.send(Ok(Bytes::copy_from_slice(body))).await.is_ok(),
                // The clean end: dropping `incoming` ends the local side's recv.
                Some((0, [])) => return,
                _ => {
                    let e = Error::internal("go.micro.plugin", "stream: a malformed message crossed the boundary");
                    let _ = incoming.send(Err(e)).await;
                    let _ = remote.call_sync(stream_m::STOP_RECV, &[], Vec::new());
                    return;
                }
            },
            Some(Err(e)) => {
                let _ = incoming.send(Err(e)).await;
                return;
            }
        };
        if !delivered {
            let _ = remote.call_sync(stream_m::STOP_RECV, &[], Vec::new());
            return;
        }
    }
}

/// Takes the incoming end out of `ends` for the down pump, so that only it
/// holds one: when it finishes, the local side's `recv` sees the end.
fn take_incoming(ends: &mut micro_core::StreamEnds) -> tokio::sync::mpsc::Sender<Result<Bytes>> {
    let (spare, _) = tokio::sync::mpsc::channel(1);
    std::mem::replace(&mut ends.incoming, spare)
}

/// A caller's stream over an exported one: the pumps run as tasks of this
/// side's runtime for as long as the stream lives.
pub(super) fn import_stream(obj: FfiObject) -> Result<Stream> {
    let remote = Arc::new(Remote::new(obj)?);
    let (stream, mut ends) = Stream::pair();
    let incoming = take_incoming(&mut ends);
    tokio::spawn(pump_up(remote.clone(), ends));
    tokio::spawn(pump_down(remote, incoming));
    Ok(stream)
}

struct StreamHandlerExport(StreamHandlerFn);

impl Dispatch for StreamHandlerExport {
    fn call(
        self: Arc<Self>,
        method: u32,
        args: &[u8],
        mut objects: Vec<FfiObject>,
    ) -> BoxFuture<'static, Result<Reply>> {
        if method != stream_m::HANDLE {
            return ready_err(unknown_method("stream handler", method));
        }
        let req = dec!(wire::get_request(&mut Reader::new(args)));
        let remote = match take_object(&mut objects, "stream").and_then(Remote::new) {
            Ok(r) => Arc::new(r),
            Err(e) => return ready_err(e),
        };
        let handler = self.0.clone();
        Box::pin(async move {
            let (stream, mut ends) = Stream::pair();
            let incoming = take_incoming(&mut ends);
            let down = pump_down(remote.clone(), incoming);
            // The handler's messages are all forwarded before its result:
            // the up pump ends once the handler's stream is gone and drained.
            let up = pump_up(remote, ends);
            let work = async move { tokio::join!(handler(req, stream), up).0 };
            tokio::pin!(down);
            tokio::pin!(work);
            let mut down_done = false;
            let res = loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = &mut down, if !down_done => down_done = true,
                }
            };
            res.and_then(|_| ok())
        })
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        Err(unknown_method("stream handler", method))
    }
}

/// Exports a stream handler (a server's `Handler::stream`).
pub(super) fn export_stream_handler(f: StreamHandlerFn) -> FfiObject {
    export(Arc::new(StreamHandlerExport(f)))
}

/// A stream handler exported by the other side: each stream it is given is
/// exported to it, and its result returned.
pub(super) fn import_stream_handler(obj: FfiObject) -> Result<StreamHandlerFn> {
    let remote = Arc::new(Remote::new(obj)?);
    Ok(Arc::new(move |req: Request, stream: Stream| {
        let remote = remote.clone();
        Box::pin(async move {
            let mut w = Writer::with_capacity(wire::request_len(&req));
            wire::put_request(&mut w, &req);
            remote.call(stream_m::HANDLE, &w.finish(), vec![export_stream(stream)]).await.map(|_| ())
        })
    }))
}
