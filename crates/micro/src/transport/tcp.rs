use super::frame;
use bytes::{Bytes, BytesMut};
use micro_core::{
    async_trait, BoxFuture, Error, Listener, Message, Result, Socket, SocketReceiver, SocketSender, Transport,
    TransportOptions,
};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const ID: &str = "go.micro.transport";

/// A connected stream with its addresses.
pub struct Conn<S> {
    /// The stream.
    pub stream: S,
    /// Local address.
    pub local: String,
    /// Peer address.
    pub peer: String,
}

/// A stream that splits into a read half and a write half, each driven by
/// its own task (a connection's reader and writer).
pub trait Halves: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The read half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The write half.
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// Splits the stream. The connection closes once both halves are gone.
    fn halves(self) -> (Self::Read, Self::Write);
}

/// A TCP stream splits without a lock: `tokio::io::split` puts both halves
/// behind one mutex, on which a connection's reader and writer, running on
/// two threads, block each other (a futex wait and a wake-up every time).
impl Halves for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = TcpWriteHalf;
    fn halves(self) -> (Self::Read, Self::Write) {
        let (r, w) = self.into_split();
        (r, TcpWriteHalf(Some(w)))
    }
}

/// The write half of a TCP stream. Unlike tokio's `OwnedWriteHalf`, dropping
/// it does not shut the connection's sending side: as with any other stream,
/// the connection closes when both halves are dropped (or on `shutdown`).
pub struct TcpWriteHalf(Option<tokio::net::tcp::OwnedWriteHalf>);

impl TcpWriteHalf {
    /// Polls the half with `f` (it is there until the drop).
    fn poll_with<T>(
        self: std::pin::Pin<&mut Self>,
        f: impl FnOnce(std::pin::Pin<&mut tokio::net::tcp::OwnedWriteHalf>) -> std::task::Poll<io::Result<T>>,
    ) -> std::task::Poll<io::Result<T>> {
        match self.get_mut().0.as_mut() {
            Some(w) => f(std::pin::Pin::new(w)),
            None => std::task::Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "write half dropped"))),
        }
    }
}

impl Drop for TcpWriteHalf {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.forget();
        }
    }
}

impl AsyncWrite for TcpWriteHalf {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.poll_with(|w| w.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        self.poll_with(|w| w.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        self.poll_with(|w| w.poll_flush(cx))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.poll_with(|w| w.poll_shutdown(cx))
    }
}

/// Where the TCP transport's sockets come from: tokio here ([`TokioNet`]),
/// or the host's runtime when the transport runs inside a plugin
/// (`micro::plugin::HostNet`).
pub trait Net: Send + Sync + 'static {
    /// A connected stream.
    type Stream: Halves;
    /// A listening socket.
    type Listener: Send + Sync + 'static;
    /// Connects, with `TCP_NODELAY`.
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Conn<Self::Stream>>>;
    /// Listens; returns the bound address too.
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<(Self::Listener, String)>>;
    /// Accepts a connection, with `TCP_NODELAY`.
    fn accept<'a>(&'a self, l: &'a Self::Listener) -> BoxFuture<'a, io::Result<Conn<Self::Stream>>>;
}

/// Sockets from this process's tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioNet;

/// How long data sent on a connection may stay unacknowledged before the
/// connection is given up (`TCP_USER_TIMEOUT`). A peer whose host went away
/// without closing (powered off, cable cut, partitioned) acknowledges
/// nothing: without this, calls on its connection would wait for their
/// deadlines and the kernel would retransmit for some fifteen minutes.
/// With it, the connection fails within seconds and its calls are retried
/// on another node. A live peer acknowledges within a round trip.
pub(crate) const DEAD_PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `TCP_NODELAY` and [`DEAD_PEER_TIMEOUT`] on a connection.
pub(crate) fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    // Linux only (where it exists); elsewhere a vanished peer is found by the call deadlines.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket2::SockRef::from(s).set_tcp_user_timeout(Some(DEAD_PEER_TIMEOUT))?;
    Ok(())
}

fn tokio_conn(s: TcpStream) -> io::Result<Conn<TcpStream>> {
    tune(&s)?;
    Ok(Conn { local: s.local_addr()?.to_string(), peer: s.peer_addr()?.to_string(), stream: s })
}

impl Net for TokioNet {
    type Stream = TcpStream;
    type Listener = TcpListener;
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Conn<TcpStream>>> {
        Box::pin(async move { tokio_conn(TcpStream::connect(addr).await?) })
    }
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<(TcpListener, String)>> {
        Box::pin(async move {
            let l = TcpListener::bind(addr).await?;
            let a = l.local_addr()?.to_string();
            Ok((l, a))
        })
    }
    fn accept<'a>(&'a self, l: &'a TcpListener) -> BoxFuture<'a, io::Result<Conn<TcpStream>>> {
        Box::pin(async move { tokio_conn(l.accept().await?.0) })
    }
}

/// TCP with length-prefixed frames (see [`frame`](super::frame)); `TCP_NODELAY` on.
pub struct TcpTransport<N: Net = TokioNet> {
    opts: TransportOptions,
    net: Arc<N>,
    name: String,
}

impl TcpTransport {
    /// A transport with these options, on this process's tokio.
    pub fn new(opts: TransportOptions) -> Self {
        Self::with_net(opts, TokioNet, "tcp")
    }
}

impl<N: Net> TcpTransport<N> {
    /// A transport whose sockets come from `net`, reporting `name`.
    pub fn with_net(opts: TransportOptions, net: N, name: &str) -> Self {
        TcpTransport { opts, net: Arc::new(net), name: name.to_string() }
    }
}

impl Default for TcpTransport {
    fn default() -> Self {
        Self::new(TransportOptions::default())
    }
}

#[async_trait]
impl<N: Net> Transport for TcpTransport<N> {
    async fn dial(&self, addr: &str) -> Result<Box<dyn Socket>> {
        let conn = tokio::time::timeout(self.opts.dial_timeout, self.net.connect(addr))
            .await
            .map_err(|_| Error::timeout(ID, format!("dial {addr}: timed out after {:?}", self.opts.dial_timeout)))?
            .map_err(|e| Error::internal(ID, format!("dial {addr}: {e}")))?;
        Ok(Box::new(TcpSocket::new(conn, &self.opts)))
    }

    async fn listen(&self, addr: &str) -> Result<Box<dyn Listener>> {
        let (listener, bound) =
            self.net.bind(addr).await.map_err(|e| Error::internal(ID, format!("listen on {addr}: {e}")))?;
        Ok(Box::new(TcpListenerImpl { listener, net: self.net.clone(), addr: bound, opts: self.opts.clone() }))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

struct TcpListenerImpl<N: Net> {
    listener: N::Listener,
    net: Arc<N>,
    addr: String,
    opts: TransportOptions,
}

#[async_trait]
impl<N: Net> Listener for TcpListenerImpl<N> {
    fn addr(&self) -> String {
        self.addr.clone()
    }

    async fn accept(&self) -> Result<Box<dyn Socket>> {
        loop {
            match self.net.accept(&self.listener).await {
                Ok(conn) => return Ok(Box::new(TcpSocket::new(conn, &self.opts))),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, keep the listener.
                    tracing::warn!(error = %e, addr = %self.addr, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

struct TcpSocket<S> {
    // Buffered reads: a small frame usually arrives in one read syscall.
    // `None` once split.
    stream: Option<BufReader<S>>,
    local: String,
    remote: String,
    max: usize,
    read_timeout: Duration,
    out: BytesMut,
}

impl<S: Halves> TcpSocket<S> {
    fn new(conn: Conn<S>, opts: &TransportOptions) -> Self {
        TcpSocket {
            stream: Some(BufReader::with_capacity(16 * 1024, conn.stream)),
            local: conn.local,
            remote: conn.peer,
            max: opts.max_message_size,
            read_timeout: opts.read_timeout,
            out: BytesMut::new(),
        }
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::internal(ID, format!("{what} {}: {e}", self.remote))
    }

    /// Writes the frame in `out` in one write.
    async fn write_out(&mut self) -> Result<()> {
        let Some(stream) = self.stream.as_mut() else { return Err(self.err("send to", "socket was split")) };
        write_frame(stream.get_mut(), &mut self.out, self.max).await.map_err(|e| self.err("send to", e))
    }
}

#[async_trait]
impl<S: Halves> Socket for TcpSocket<S> {
    async fn send(&mut self, msg: Message) -> Result<()> {
        self.out.clear();
        frame::encode(&msg, &mut self.out).map_err(|e| self.err("send to", e))?;
        self.write_out().await
    }

    async fn recv(&mut self) -> Result<Message> {
        let f = self.recv_frame().await?;
        frame::decode(f).map_err(|e| self.err("recv from", e))
    }

    async fn send_frame(&mut self, encoded: Bytes) -> Result<()> {
        self.out.clear();
        frame::put_prefixed(&mut self.out, &encoded);
        self.write_out().await
    }

    async fn recv_frame(&mut self) -> Result<Bytes> {
        let Some(stream) = self.stream.as_mut() else { return Err(self.err("recv from", "socket was split")) };
        read_frame(stream, self.max, self.read_timeout).await.map_err(|e| self.err("recv from", e))
    }

    fn split(&mut self) -> Option<(Box<dyn SocketSender>, Box<dyn SocketReceiver>)> {
        let stream = self.stream.take()?;
        // Bytes the reader already buffered belong to the receiving half.
        let buffered = std::io::Cursor::new(stream.buffer().to_vec());
        let (r, w) = stream.into_inner().halves();
        let receiver = TcpReceiver {
            stream: BufReader::with_capacity(16 * 1024, buffered.chain(r)),
            remote: self.remote.clone(),
            max: self.max,
            read_timeout: self.read_timeout,
        };
        let sender = TcpSender { stream: w, remote: self.remote.clone(), max: self.max, out: BytesMut::new() };
        Some((Box::new(sender), Box::new(receiver)))
    }

    async fn close(&mut self) -> Result<()> {
        match self.stream.as_mut() {
            Some(s) => bounded_shutdown(s.get_mut()).await.map_err(|e| self.err("close", e)),
            None => Ok(()),
        }
    }

    fn local_addr(&self) -> String {
        self.local.clone()
    }

    fn remote_addr(&self) -> String {
        self.remote.clone()
    }
}

/// Reads one length-prefixed frame: the length is checked against `max`
/// before anything is allocated, and the buffer grows as bytes arrive, so a
/// peer that announces a large frame and sends little costs little; the
/// rest of a started frame must arrive within `read_timeout`.
/// How long a close may take: a TLS close flushes its close_notify, and a
/// peer that never reads would hold the closer for ever.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Shuts the write side down within [`CLOSE_LIMIT`]; past it the socket is
/// left to be dropped, which closes it without the flush.
async fn bounded_shutdown<W: AsyncWrite + Unpin>(w: &mut W) -> io::Result<()> {
    match tokio::time::timeout(CLOSE_LIMIT, w.shutdown()).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("close not done within {CLOSE_LIMIT:?}"))),
    }
}

async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut BufReader<R>,
    max: usize,
    read_timeout: Duration,
) -> io::Result<Bytes> {
    // Waiting for a frame to begin is the caller's business (idle and
    // first-message timeouts); once its first byte is here, the rest of it,
    // length prefix included, must follow within the read timeout: a peer
    // that sends one byte of a prefix and stops is cut off like a slow loris.
    if stream.fill_buf().await?.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let len = if stream.buffer().len() >= 4 {
        stream.read_u32().await?
    } else {
        match tokio::time::timeout(read_timeout, stream.read_u32()).await {
            Ok(Ok(len)) => len,
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed within a frame"))
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("length prefix not complete within {read_timeout:?}"),
                ))
            }
        }
    };
    let size = frame::check_len(len, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    // Usually the whole frame came with its length prefix: take it from
    // the read buffer without arming a timer.
    if stream.buffer().len() >= size {
        let f = Bytes::copy_from_slice(&stream.buffer()[..size]);
        std::pin::Pin::new(&mut *stream).consume(size);
        return Ok(f);
    }
    let mut buf = BytesMut::with_capacity(size.min(64 * 1024));
    let read = async {
        while buf.len() < size {
            buf.reserve((size - buf.len()).min(64 * 1024));
            let n = (&mut *stream).take((size - buf.len()) as u64).read_buf(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated frame"));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(read_timeout, read).await {
        Ok(Ok(())) => Ok(buf.freeze()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("frame not complete within {read_timeout:?}"))),
    }
}

/// Writes the frame in `out` (length prefix included) in one write, after
/// checking it against the limit; a buffer grown by a large frame is not
/// kept pinned to an idle connection.
async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut, max: usize) -> io::Result<()> {
    if out.len() - 4 > max {
        let e = frame::FrameError::TooLarge { size: out.len() - 4, max };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
    }
    let res = w.write_all(out).await;
    if out.capacity() > 64 * 1024 {
        *out = BytesMut::new();
    }
    res
}

/// The sending half of a split TCP socket.
struct TcpSender<W> {
    stream: W,
    remote: String,
    max: usize,
    out: BytesMut,
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send> SocketSender for TcpSender<W> {
    async fn send(&mut self, msg: Message) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| Error::internal(ID, format!("send to {}: {e}", self.remote));
        self.out.clear();
        frame::encode(&msg, &mut self.out).map_err(|e| err(&e))?;
        write_frame(&mut self.stream, &mut self.out, self.max).await.map_err(|e| err(&e))
    }

    async fn close(&mut self) -> Result<()> {
        bounded_shutdown(&mut self.stream).await.map_err(|e| Error::internal(ID, format!("close {}: {e}", self.remote)))
    }

    async fn send_frames(&mut self, batch: Bytes) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| Error::internal(ID, format!("send to {}: {e}", self.remote));
        // Every frame is checked before any is written: a batch goes out whole or not at all.
        for f in frame::split_batch(batch.clone()) {
            let f = f.map_err(|e| err(&e))?;
            if f.len() > self.max {
                return Err(err(&frame::FrameError::TooLarge { size: f.len(), max: self.max }));
            }
        }
        self.stream.write_all(&batch).await.map_err(|e| err(&e))
    }

    fn max_message_size(&self) -> Option<usize> {
        Some(self.max)
    }
}

/// The receiving half of a split TCP socket.
struct TcpReceiver<R> {
    stream: BufReader<R>,
    remote: String,
    max: usize,
    read_timeout: Duration,
}

#[async_trait]
impl<R: AsyncRead + Unpin + Send> SocketReceiver for TcpReceiver<R> {
    async fn recv(&mut self) -> Result<Message> {
        let f = self.recv_frame().await?;
        frame::decode(f).map_err(|e| Error::internal(ID, format!("recv from {}: {e}", self.remote)))
    }

    async fn recv_frame(&mut self) -> Result<Bytes> {
        let err = |e: &dyn std::fmt::Display| Error::internal(ID, format!("recv from {}: {e}", self.remote));
        read_frame(&mut self.stream, self.max, self.read_timeout).await.map_err(|e| err(&e))
    }

    async fn recv_frames(&mut self) -> Result<Bytes> {
        // The frames already whole in the read buffer are taken without
        // awaiting (so nothing half-read is ever dropped), copied once; only
        // when there is none is one waited for, with `recv_frame`'s checks.
        let mut first = None;
        let mut whole = whole_frames(self.stream.buffer(), self.max);
        if whole == 0 {
            first = Some(self.recv_frame().await?);
            whole = whole_frames(self.stream.buffer(), self.max);
        }
        let head = first.as_ref().map_or(0, |f| 4 + f.len());
        let mut batch = BytesMut::with_capacity(head + whole);
        if let Some(f) = first {
            frame::put_prefixed(&mut batch, &f);
        }
        batch.extend_from_slice(&self.stream.buffer()[..whole]);
        std::pin::Pin::new(&mut self.stream).consume(whole);
        Ok(batch.freeze())
    }
}

/// How many bytes at the start of `buf` are whole frames (length prefix
/// included), up to [`BATCH_LIMIT`]; a frame over `max` ends the count and
/// is left for `recv_frame` to report.
fn whole_frames(buf: &[u8], max: usize) -> usize {
    let mut at = 0;
    while at < BATCH_LIMIT {
        let Some(prefix) = buf.get(at..at + 4) else { break };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let Ok(size) = frame::check_len(len, max) else { break };
        if buf.len() - at - 4 < size {
            break;
        }
        at += 4 + size;
    }
    at
}

/// How many bytes of buffered frames [`TcpReceiver::recv_frames`] takes at
/// most (the read buffer holds 16 KiB, so this is rarely what stops it).
const BATCH_LIMIT: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    /// `recv_frames` takes the frames that are whole and leaves a frame cut
    /// short where it is: its rest, arriving later, completes it.
    #[tokio::test]
    async fn a_batch_holds_the_whole_frames_and_leaves_a_partial_one() -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let io = |e: io::Error| Error::internal("test", e.to_string());
        let l = TcpTransport::default().listen("127.0.0.1:0").await?;
        let mut peer = TcpStream::connect(l.addr()).await.map_err(io)?;
        let mut s = l.accept().await?;
        let Some((_tx, mut rx)) = s.split() else { panic!("a tcp socket splits") };
        let frame = |b: &[u8]| [&(b.len() as u32).to_be_bytes()[..], b].concat();
        let (a, b, c) = (frame(b"first"), frame(b"second"), frame(b"third, cut in two"));
        peer.write_all(&[&a[..], &b[..], &c[..9]].concat()).await.map_err(io)?;
        let limit = Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < a.len() + b.len() {
            let batch = tokio::time::timeout(limit, rx.recv_frames()).await;
            got.extend_from_slice(&batch.map_err(|_| Error::timeout("test", "no batch"))??);
        }
        assert_eq!(got, [a, b].concat(), "the whole frames, and not a byte of the third");
        peer.write_all(&c[9..]).await.map_err(io)?;
        let third = tokio::time::timeout(limit, rx.recv_frames()).await;
        assert_eq!(&third.map_err(|_| Error::timeout("test", "no batch"))??[..], &c[..]);
        Ok(())
    }

    /// The halves of a split socket are lock-free, yet keep the semantics of
    /// any stream's: dropping the sending half alone closes nothing (the
    /// peer's reply still arrives), and the peer sees the end once both are gone.
    #[tokio::test]
    async fn a_split_socket_closes_when_both_halves_are_gone() -> Result<()> {
        let t = TcpTransport::default();
        let l = t.listen("127.0.0.1:0").await?;
        let mut c = t.dial(&l.addr()).await?;
        let mut s = l.accept().await?;
        let Some((tx, mut rx)) = c.split() else { panic!("a tcp socket splits") };
        drop(tx);
        // No end of stream reaches the peer while the receiving half lives.
        let early = tokio::time::timeout(Duration::from_millis(200), s.recv()).await;
        assert!(early.is_err(), "the peer saw {early:?} after only the sending half was dropped");
        s.send(Message::new(&b"reply"[..])).await?;
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(&got, Ok(Ok(m)) if &m.body[..] == b"reply"), "{got:?}");
        drop(rx);
        let end = tokio::time::timeout(Duration::from_secs(5), s.recv()).await;
        assert!(matches!(end, Ok(Err(_))), "the peer must see the connection end: {end:?}");
        Ok(())
    }

    #[tokio::test]
    async fn send_and_receive_both_ways() -> Result<()> {
        let t = TcpTransport::default();
        let l = t.listen("127.0.0.1:0").await?;
        let addr = l.addr();
        let server = tokio::spawn(async move {
            let mut s = l.accept().await?;
            let m = s.recv().await?;
            s.send(Message::new(m.body.clone()).with_header("echo", m.get("k").unwrap_or(""))).await?;
            Ok::<_, Error>(())
        });
        let mut c = t.dial(&addr).await?;
        c.send(Message::new(&b"ping"[..]).with_header("k", "v")).await?;
        let r = c.recv().await?;
        assert_eq!(&r.body[..], b"ping");
        assert_eq!(r.get("echo"), Some("v"));
        server.await.map_err(|e| Error::internal("test", e.to_string()))??;
        Ok(())
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_on_both_sides() -> Result<()> {
        let t = TcpTransport::new(TransportOptions { max_message_size: 1024, ..Default::default() });
        let l = t.listen("127.0.0.1:0").await?;
        let addr = l.addr();
        let mut c = t.dial(&addr).await?;
        let err = c.send(Message::new(vec![0u8; 2048])).await.err();
        assert!(err.is_some_and(|e| e.detail.contains("over the limit")));
        // A raw peer announcing 100 MiB gets refused by the receiver without allocating it.
        let mut raw = TcpStream::connect(&addr).await.map_err(|e| Error::internal("test", e.to_string()))?;
        let _first = l.accept().await?; // belongs to `c`
        let mut s = l.accept().await?;
        raw.write_all(&(100u32 * 1024 * 1024).to_be_bytes())
            .await
            .map_err(|e| Error::internal("test", e.to_string()))?;
        let err = s.recv().await.err();
        assert!(err.is_some_and(|e| e.detail.contains("over the limit")));
        Ok(())
    }

    #[tokio::test]
    async fn dial_to_a_closed_port_is_an_error() {
        let t = TcpTransport::default();
        // Port 1 (tcpmux) is privileged and unused on a test machine: nothing listens.
        let e = t.dial("127.0.0.1:1").await.err();
        assert!(e.as_ref().is_some_and(|e| e.detail.contains("refused")), "{e:?}");
    }
}
