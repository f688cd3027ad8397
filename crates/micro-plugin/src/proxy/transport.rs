//! A transport, its listeners and sockets (whole or split into halves) across the boundary.

use super::*;
use crate::object::{Inline, Started};

mod transport_m {
    pub(super) const DIAL: u32 = 1;
    pub(super) const LISTEN: u32 = 2;
    pub(super) const NAME: u32 = 3;
}

struct TransportExport(Arc<dyn Transport>);

impl Dispatch for TransportExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        let addr = dec!(Reader::new(args).string());
        match method {
            transport_m::DIAL => Box::pin(async move { Ok(Reply::object(export_socket(self.0.dial(&addr).await?))) }),
            transport_m::LISTEN => Box::pin(async move {
                let l = self.0.listen(&addr).await?;
                Ok(Reply::object(export(Arc::new(ListenerExport(l)))))
            }),
            m => ready_err(unknown_method("transport", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            transport_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("transport", m)),
        }
    }
}

/// Exports a transport.
pub fn export_transport(t: Arc<dyn Transport>) -> FfiObject {
    export(Arc::new(TransportExport(t)))
}

struct TransportProxy {
    remote: Remote,
    name: String,
}

/// A transport exported by the other side.
pub fn import_transport(obj: FfiObject) -> Result<Arc<dyn Transport>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(transport_m::NAME);
    Ok(Arc::new(TransportProxy { remote, name }))
}

#[async_trait]
impl Transport for TransportProxy {
    async fn dial(&self, addr: &str) -> Result<Box<dyn Socket>> {
        let mut w = Writer::new();
        w.str(addr);
        let r = self.remote.call(transport_m::DIAL, &w.finish(), Vec::new()).await?;
        Ok(Box::new(SocketProxy::new(reply_object(r, "socket")?)?))
    }
    async fn listen(&self, addr: &str) -> Result<Box<dyn Listener>> {
        let mut w = Writer::new();
        w.str(addr);
        let r = self.remote.call(transport_m::LISTEN, &w.finish(), Vec::new()).await?;
        let remote = Remote::new(reply_object(r, "listener")?)?;
        let addr = remote.call_string(listener_m::ADDR);
        Ok(Box::new(ListenerProxy { remote, addr }))
    }
    fn name(&self) -> &str {
        &self.name
    }
}

mod listener_m {
    pub(super) const ACCEPT: u32 = 1;
    pub(super) const ADDR: u32 = 2;
}

struct ListenerExport(Box<dyn Listener>);

impl Dispatch for ListenerExport {
    fn call(self: Arc<Self>, method: u32, _: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            listener_m::ACCEPT => Box::pin(async move { Ok(Reply::object(export_socket(self.0.accept().await?))) }),
            m => ready_err(unknown_method("listener", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            listener_m::ADDR => string_reply(&self.0.addr()),
            m => Err(unknown_method("listener", m)),
        }
    }
}

struct ListenerProxy {
    remote: Remote,
    addr: String,
}

#[async_trait]
impl Listener for ListenerProxy {
    fn addr(&self) -> String {
        self.addr.clone()
    }
    async fn accept(&self) -> Result<Box<dyn Socket>> {
        let r = self.remote.call(listener_m::ACCEPT, &[], Vec::new()).await?;
        Ok(Box::new(SocketProxy::new(reply_object(r, "socket")?)?))
    }
}

mod socket_m {
    pub(super) const SEND: u32 = 1;
    pub(super) const RECV: u32 = 2;
    pub(super) const CLOSE: u32 = 3;
    pub(super) const LOCAL_ADDR: u32 = 4;
    pub(super) const REMOTE_ADDR: u32 = 5;
    pub(super) const SPLIT: u32 = 6;
}

/// Methods of a split socket's halves, served by one object.
mod halves_m {
    pub(super) const SEND: u32 = 1;
    pub(super) const SEND_FRAMES: u32 = 2;
    pub(super) const CLOSE: u32 = 3;
    pub(super) const RECV: u32 = 4;
    pub(super) const MAX_MESSAGE_SIZE: u32 = 5;
    /// The frames that have arrived, as one batch (`SocketReceiver::recv_frames`).
    pub(super) const RECV_FRAMES: u32 = 6;
}

struct SocketExport {
    // The trait takes `&mut self`; calls on one socket never overlap, so this lock is uncontended.
    socket: futures::lock::Mutex<Box<dyn Socket>>,
    local: String,
    remote: String,
}

fn export_socket(s: Box<dyn Socket>) -> FfiObject {
    let (local, remote) = (s.local_addr(), s.remote_addr());
    export(Arc::new(SocketExport { socket: futures::lock::Mutex::new(s), local, remote }))
}

impl Dispatch for SocketExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            // Messages cross in frame encoding: a socket that speaks frames
            // (the tcp transport) writes and reads them without decoding.
            socket_m::SEND => {
                let encoded = bytes::Bytes::copy_from_slice(args);
                Box::pin(async move { self.socket.lock().await.send_frame(encoded).await.and_then(|_| ok()) })
            }
            socket_m::RECV => Box::pin(async move {
                let encoded = self.socket.lock().await.recv_frame().await?;
                Ok(Reply::bytes(encoded.to_vec()))
            }),
            socket_m::CLOSE => Box::pin(async move { self.socket.lock().await.close().await.and_then(|_| ok()) }),
            m => ready_err(unknown_method("socket", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            socket_m::LOCAL_ADDR => string_reply(&self.local),
            socket_m::REMOTE_ADDR => string_reply(&self.remote),
            socket_m::SPLIT => {
                // Split is synchronous and nothing else runs on a socket being split.
                let Some(mut socket) = self.socket.try_lock() else {
                    return Err(Error::internal("go.micro.plugin", "socket busy: cannot split it"));
                };
                match socket.split() {
                    None => Ok(Reply::default()),
                    Some((tx, rx)) => Ok(Reply::object(export(Arc::new(HalvesExport {
                        max: tx.max_message_size(),
                        tx: futures::lock::Mutex::new(tx),
                        rx: futures::lock::Mutex::new(rx),
                    })))),
                }
            }
            m => Err(unknown_method("socket", m)),
        }
    }
}

/// Both halves of a split socket, exported as one object: each half has
/// its own lock, so one task may send while another receives.
struct HalvesExport {
    // `futures`' lock rather than tokio's: taken once per batch, by one
    // task at a time nearly always, its lock and unlock are an atomic
    // each, where tokio's unlock takes its semaphore's waiter list lock too
    // (a tenth of the per-batch crossing's cost, BENCHMARKS.md).
    tx: futures::lock::Mutex<Box<dyn SocketSender>>,
    rx: futures::lock::Mutex<Box<dyn SocketReceiver>>,
    max: Option<usize>,
}

impl Dispatch for HalvesExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], objects: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            halves_m::SEND => {
                let msg = dec!(micro_core::frame::decode(bytes::Bytes::copy_from_slice(args))
                    .map_err(|e| Error::bad_request("go.micro.plugin", e.to_string())));
                Box::pin(async move { self.tx.lock().await.send(msg).await.and_then(|_| ok()) })
            }
            // A batch crosses as it is and leaves in the socket's one write.
            halves_m::SEND_FRAMES => {
                let batch = sent_batch(args, objects);
                Box::pin(async move { self.tx.lock().await.send_frames(batch).await.and_then(|_| ok()) })
            }
            halves_m::CLOSE => Box::pin(async move { self.tx.lock().await.close().await.and_then(|_| ok()) }),
            halves_m::RECV => Box::pin(async move {
                let encoded = self.rx.lock().await.recv_frame().await?;
                Ok(Reply::bytes(encoded.to_vec()))
            }),
            halves_m::RECV_FRAMES => Box::pin(async move { recv_batch(&self.rx).await }),
            m => ready_err(unknown_method("split socket", m)),
        }
    }
    fn call_inline<'a>(&'a self, method: u32, _: &[u8], start: Inline<'a>) -> Option<Started<'a>> {
        // A batch of replies, once per read on a busy connection: its
        // future and the crossing's state in one allocation, not two.
        match method {
            halves_m::RECV_FRAMES => Some(start.start(recv_batch(&self.rx))),
            _ => None,
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            halves_m::MAX_MESSAGE_SIZE => {
                Ok(Reply::bytes(self.max.map(|m| m as u64).unwrap_or(0).to_be_bytes().to_vec()))
            }
            m => Err(unknown_method("split socket", m)),
        }
    }
}

/// RECV_FRAMES's reply: the frames that have arrived, in one buffer.
async fn recv_batch(rx: &futures::lock::Mutex<Box<dyn SocketReceiver>>) -> Result<Reply> {
    let batch = rx.lock().await.recv_frames().await?;
    // A batch is a buffer of its own (the TCP transport assembles each in
    // one of exact size): it crosses as it is, not copied (a copy if it is
    // shared), and the other side keeps it whole while it holds any of its frames.
    Ok(Reply::bytes(Vec::from(batch)))
}

/// SEND_FRAMES's batch: kept where the sender lent it from (its one
/// object owns the bytes), else copied (a sender that lends nothing).
#[allow(unsafe_code)]
fn sent_batch(args: &[u8], objects: Vec<FfiObject>) -> bytes::Bytes {
    match objects.into_iter().next() {
        // SAFETY: SEND_FRAMES's one object is the owner of its arguments:
        // `SenderProxy::send_frames` lends them with `call_lending`.
        Some(owner) => unsafe { crate::object::kept_args(args, owner) },
        None => bytes::Bytes::copy_from_slice(args),
    }
}

/// The sending half of a socket split on the other side.
struct SenderProxy {
    remote: Arc<Remote>,
    max: Option<usize>,
}

#[async_trait]
impl SocketSender for SenderProxy {
    async fn send(&mut self, msg: Message) -> Result<()> {
        self.remote.call(halves_m::SEND, &frame_of(&msg)?, Vec::new()).await.map(|_| ())
    }
    async fn send_frames(&mut self, batch: bytes::Bytes) -> Result<()> {
        self.remote.call_lending(halves_m::SEND_FRAMES, batch).await.map(|_| ())
    }
    async fn close(&mut self) -> Result<()> {
        self.remote.call(halves_m::CLOSE, &[], Vec::new()).await.map(|_| ())
    }
    fn max_message_size(&self) -> Option<usize> {
        self.max
    }
}

/// The receiving half of a socket split on the other side. It fetches the
/// frames that have arrived a batch per crossing, and hands them out one by
/// one: under load a connection's replies arrive several per read, and each
/// crossing costs two boxes, a lock and two copies.
struct ReceiverProxy {
    remote: Arc<Remote>,
    /// Frames fetched and not yet handed out, in batch format.
    pending: bytes::Bytes,
    /// Whether the other side serves RECV_FRAMES (a host from before it does not).
    batches: bool,
}

#[async_trait]
impl SocketReceiver for ReceiverProxy {
    async fn recv(&mut self) -> Result<Message> {
        message_of(self.recv_frame().await?)
    }
    async fn recv_frame(&mut self) -> Result<bytes::Bytes> {
        if self.pending.is_empty() {
            self.pending = self.recv_frames().await?;
        }
        next_frame(&mut self.pending)
    }
    async fn recv_frames(&mut self) -> Result<bytes::Bytes> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        if self.batches {
            match self.remote.call(halves_m::RECV_FRAMES, &[], Vec::new()).await {
                // Kept in the other side's buffer, not copied: the frames
                // are slices of it, freed by that side when the last goes.
                Ok(r) => return Ok(bytes::Bytes::from_owner(r.bytes)),
                Err(e) if is_unknown_method(&e) => self.batches = false,
                Err(e) => return Err(e),
            }
        }
        let r = self.remote.call(halves_m::RECV, &[], Vec::new()).await?;
        let mut batch = bytes::BytesMut::new();
        micro_core::frame::put_prefixed(&mut batch, r.bytes.as_slice());
        Ok(batch.freeze())
    }
}

/// The first frame of a batch from the other side; a malformed batch is dropped whole.
fn next_frame(batch: &mut bytes::Bytes) -> Result<bytes::Bytes> {
    micro_core::frame::next_in_batch(batch)
        .map_err(|e| Error::internal("go.micro.plugin", format!("a batch of frames from the other side: {e}")))
}

/// A message in the frame encoding sockets' messages cross the boundary in.
fn frame_of(msg: &Message) -> Result<bytes::Bytes> {
    micro_core::frame::to_frame(msg).map_err(|e| Error::internal("go.micro.plugin", e.to_string()))
}

/// A message received across the boundary, from its frame encoding.
fn message_of(frame: bytes::Bytes) -> Result<Message> {
    micro_core::frame::decode(frame)
        .map_err(|e| Error::internal("go.micro.plugin", format!("message from the other side: {e}")))
}

struct SocketProxy {
    remote: Remote,
    local_addr: String,
    remote_addr: String,
}

impl SocketProxy {
    fn new(obj: FfiObject) -> Result<Self> {
        let remote = Remote::new(obj)?;
        let local_addr = remote.call_string(socket_m::LOCAL_ADDR);
        let remote_addr = remote.call_string(socket_m::REMOTE_ADDR);
        Ok(SocketProxy { remote, local_addr, remote_addr })
    }
}

#[async_trait]
impl Socket for SocketProxy {
    async fn send(&mut self, msg: Message) -> Result<()> {
        self.remote.call(socket_m::SEND, &frame_of(&msg)?, Vec::new()).await.map(|_| ())
    }
    async fn recv(&mut self) -> Result<Message> {
        message_of(self.recv_frame().await?)
    }
    async fn send_frame(&mut self, encoded: bytes::Bytes) -> Result<()> {
        self.remote.call(socket_m::SEND, &encoded, Vec::new()).await.map(|_| ())
    }
    async fn recv_frame(&mut self) -> Result<bytes::Bytes> {
        let r = self.remote.call(socket_m::RECV, &[], Vec::new()).await?;
        Ok(bytes::Bytes::copy_from_slice(r.bytes.as_slice()))
    }
    async fn close(&mut self) -> Result<()> {
        self.remote.call(socket_m::CLOSE, &[], Vec::new()).await.map(|_| ())
    }
    fn split(&mut self) -> Option<(Box<dyn SocketSender>, Box<dyn SocketReceiver>)> {
        let r = self.remote.call_sync(socket_m::SPLIT, &[], Vec::new()).ok()?;
        let remote = Arc::new(Remote::new(r.object?).ok()?);
        let max = remote
            .call_sync(halves_m::MAX_MESSAGE_SIZE, &[], Vec::new())
            .ok()
            .and_then(|r| <[u8; 8]>::try_from(r.bytes.as_slice()).ok())
            .map(u64::from_be_bytes)
            .filter(|&m| m > 0)
            .map(|m| m as usize);
        let receiver = ReceiverProxy { remote: remote.clone(), pending: bytes::Bytes::new(), batches: true };
        Some((Box::new(SenderProxy { remote, max }), Box::new(receiver)))
    }
    fn local_addr(&self) -> String {
        self.local_addr.clone()
    }
    fn remote_addr(&self) -> String {
        self.remote_addr.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receiving half as a host from before `RECV_FRAMES` exports it:
    /// one frame per RECV, "unknown method" for anything newer.
    struct OldHalves {
        frames: std::sync::Mutex<Vec<&'static [u8]>>,
    }

    impl Dispatch for OldHalves {
        fn call(self: Arc<Self>, method: u32, _: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
            match method {
                halves_m::RECV => {
                    let next = self.frames.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    Box::pin(async move {
                        match next {
                            Some(f) => Ok(Reply::bytes(f.to_vec())),
                            None => Err(Error::internal("test", "connection closed")),
                        }
                    })
                }
                m => ready_err(unknown_method("split socket", m)),
            }
        }
        fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
            Err(unknown_method("split socket", method))
        }
    }

    #[tokio::test]
    async fn a_peer_without_batches_is_asked_frame_by_frame() -> Result<()> {
        let old = Arc::new(OldHalves { frames: std::sync::Mutex::new(vec![b"second", b"first"]) });
        let remote = Arc::new(Remote::new(export(old))?);
        let mut rx = ReceiverProxy { remote, pending: bytes::Bytes::new(), batches: true };
        assert_eq!(&rx.recv_frame().await?[..], b"first");
        assert!(!rx.batches, "the unknown method was noticed");
        assert_eq!(&rx.recv_frames().await?[..], b"\0\0\0\x06second", "a batch of one, in batch format");
        let e = rx.recv_frame().await.expect_err("no more frames");
        assert!(e.detail.contains("connection closed"), "{e:?}");
        Ok(())
    }

    /// A sending half that keeps the batches it is given.
    struct Keeps(Arc<std::sync::Mutex<Vec<bytes::Bytes>>>);

    #[async_trait]
    impl SocketSender for Keeps {
        async fn send(&mut self, _: Message) -> Result<()> {
            Ok(())
        }
        async fn send_frames(&mut self, batch: bytes::Bytes) -> Result<()> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(batch);
            Ok(())
        }
        async fn close(&mut self) -> Result<()> {
            Ok(())
        }
    }

    /// A receiving half that hands out one batch.
    struct Gives(Option<bytes::Bytes>);

    #[async_trait]
    impl SocketReceiver for Gives {
        async fn recv(&mut self) -> Result<Message> {
            Err(Error::internal("test", "frames only"))
        }
        async fn recv_frames(&mut self) -> Result<bytes::Bytes> {
            self.0.take().ok_or_else(|| Error::internal("test", "connection closed"))
        }
    }

    /// The last batch a test half was given.
    fn last(batches: &std::sync::Mutex<Vec<bytes::Bytes>>) -> Result<bytes::Bytes> {
        batches.lock().unwrap_or_else(|p| p.into_inner()).pop().ok_or_else(|| Error::internal("test", "nothing sent"))
    }

    #[tokio::test]
    async fn a_batch_crosses_without_a_copy_and_is_freed_by_its_side() -> Result<()> {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut received = bytes::BytesMut::new();
        micro_core::frame::put_prefixed(&mut received, b"reply");
        let received = received.freeze();
        let received_at = received.as_ptr();
        let halves = Arc::new(HalvesExport {
            tx: futures::lock::Mutex::new(Box::new(Keeps(sent.clone()))),
            rx: futures::lock::Mutex::new(Box::new(Gives(Some(received)))),
            max: None,
        });
        let remote = Arc::new(Remote::new(export(halves))?);

        // Sent: the other side keeps the sender's own bytes, lent with the call.
        let (batch, freed) = Watched::bytes(b"\0\0\0\x02hi");
        let batch_at = batch.as_ptr();
        let mut tx = SenderProxy { remote: remote.clone(), max: None };
        tx.send_frames(batch).await?;
        let kept = last(&sent)?;
        assert_eq!(&kept[..], b"\0\0\0\x02hi");
        assert_eq!(kept.as_ptr(), batch_at, "the batch was copied");
        assert!(!freed.load(std::sync::atomic::Ordering::SeqCst), "freed while the other side still holds it");
        drop(kept);
        assert!(
            freed.load(std::sync::atomic::Ordering::SeqCst),
            "the lender's bytes are freed when the keeper drops them"
        );

        // Received: the batch the socket read is the one handed out, frames sliced from it.
        let mut rx = ReceiverProxy { remote, pending: bytes::Bytes::new(), batches: true };
        let got = rx.recv_frames().await?;
        assert_eq!(got.as_ptr(), received_at, "the received batch was copied");
        assert_eq!(&got[4..], b"reply");
        Ok(())
    }

    /// A split socket as a peer from before lent buffers serves SEND_FRAMES:
    /// it copies the arguments and releases any object unread.
    struct CopiesSends(Arc<std::sync::Mutex<Vec<bytes::Bytes>>>);

    impl Dispatch for CopiesSends {
        fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
            match method {
                halves_m::SEND_FRAMES => {
                    self.0.lock().unwrap_or_else(|p| p.into_inner()).push(bytes::Bytes::copy_from_slice(args));
                    Box::pin(std::future::ready(ok()))
                }
                m => ready_err(unknown_method("split socket", m)),
            }
        }
        fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
            Err(unknown_method("split socket", method))
        }
    }

    #[tokio::test]
    async fn batches_reach_peers_that_predate_lending_either_way() -> Result<()> {
        // An older receiver copies the lent batch; the lender's bytes are freed once it is done.
        let copied = Arc::new(std::sync::Mutex::new(Vec::new()));
        let remote = Arc::new(Remote::new(export(Arc::new(CopiesSends(copied.clone()))))?);
        let (batch, freed) = Watched::bytes(b"\0\0\0\x01a");
        let batch_at = batch.as_ptr();
        SenderProxy { remote, max: None }.send_frames(batch).await?;
        let got = last(&copied)?;
        assert_eq!(&got[..], b"\0\0\0\x01a");
        assert_ne!(got.as_ptr(), batch_at, "an older peer has its own copy");
        assert!(freed.load(std::sync::atomic::Ordering::SeqCst), "the lent buffer was never released");

        // An older sender lends nothing: the batch it borrowed for the call is copied.
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let halves = Arc::new(HalvesExport {
            tx: futures::lock::Mutex::new(Box::new(Keeps(sent.clone()))),
            rx: futures::lock::Mutex::new(Box::new(Gives(None))),
            max: None,
        });
        let remote = Remote::new(export(halves))?;
        let borrowed = b"\0\0\0\x01b".to_vec();
        remote.call(halves_m::SEND_FRAMES, &borrowed, Vec::new()).await?;
        let got = last(&sent)?;
        assert_eq!(&got[..], &borrowed[..]);
        assert_ne!(got.as_ptr(), borrowed.as_ptr(), "borrowed bytes must be copied, not kept");
        Ok(())
    }

    #[test]
    fn a_truncated_batch_is_an_error_not_a_short_frame() {
        let mut batch = bytes::Bytes::from_static(b"\0\0\0\x05abc");
        let e = next_frame(&mut batch).expect_err("5 bytes announced, 3 there");
        assert!(e.detail.contains("truncated"), "{e:?}");
        assert!(batch.is_empty(), "the rest of a malformed batch is dropped");
        let mut batch = bytes::Bytes::from_static(b"\0\0\0\x02ab\0\0\0\x01c");
        assert_eq!(next_frame(&mut batch).ok().as_deref(), Some(&b"ab"[..]));
        assert_eq!(next_frame(&mut batch).ok().as_deref(), Some(&b"c"[..]));
        assert!(batch.is_empty());
    }
}
