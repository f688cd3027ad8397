use super::frame;
use bytes::{Bytes, BytesMut};
use micro_core::{async_trait, Error, Listener, Message, Result, Socket, Transport, TransportOptions};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const ID: &str = "go.micro.transport";

/// TCP with length-prefixed frames (see [`frame`](super::frame)); `TCP_NODELAY` on.
#[derive(Debug, Clone)]
pub struct TcpTransport {
    opts: TransportOptions,
}

impl TcpTransport {
    /// A transport with these options.
    pub fn new(opts: TransportOptions) -> Self {
        TcpTransport { opts }
    }
}

impl Default for TcpTransport {
    fn default() -> Self {
        Self::new(TransportOptions::default())
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn dial(&self, addr: &str) -> Result<Box<dyn Socket>> {
        let stream = tokio::time::timeout(self.opts.dial_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::timeout(ID, format!("dial {addr}: timed out after {:?}", self.opts.dial_timeout)))?
            .map_err(|e| Error::internal(ID, format!("dial {addr}: {e}")))?;
        Ok(Box::new(TcpSocket::new(stream, self.opts.max_message_size)?))
    }

    async fn listen(&self, addr: &str) -> Result<Box<dyn Listener>> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::internal(ID, format!("listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::internal(ID, format!("listen on {addr}: {e}")))?;
        Ok(Box::new(TcpListenerImpl {
            listener,
            addr: local.to_string(),
            max: self.opts.max_message_size,
        }))
    }

    fn name(&self) -> &str {
        "tcp"
    }
}

struct TcpListenerImpl {
    listener: TcpListener,
    addr: String,
    max: usize,
}

#[async_trait]
impl Listener for TcpListenerImpl {
    fn addr(&self) -> String {
        self.addr.clone()
    }

    async fn accept(&self) -> Result<Box<dyn Socket>> {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match TcpSocket::new(stream, self.max) {
                    Ok(s) => return Ok(Box::new(s)),
                    // The peer may already be gone; that is no reason to stop accepting.
                    Err(e) => tracing::debug!(error = %e, "dropping accepted connection"),
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, keep the listener.
                    tracing::warn!(error = %e, addr = %self.addr, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

struct TcpSocket {
    // Buffered reads: a small frame usually arrives in one read syscall.
    stream: BufReader<TcpStream>,
    local: String,
    remote: String,
    max: usize,
    out: BytesMut,
}

impl TcpSocket {
    fn new(stream: TcpStream, max: usize) -> Result<Self> {
        let io = |e: std::io::Error| Error::internal(ID, format!("socket: {e}"));
        stream.set_nodelay(true).map_err(io)?;
        let local = stream.local_addr().map_err(io)?.to_string();
        let remote = stream.peer_addr().map_err(io)?.to_string();
        Ok(TcpSocket {
            stream: BufReader::with_capacity(16 * 1024, stream),
            local,
            remote,
            max,
            out: BytesMut::new(),
        })
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::internal(ID, format!("{what} {}: {e}", self.remote))
    }
}

#[async_trait]
impl Socket for TcpSocket {
    async fn send(&mut self, msg: Message) -> Result<()> {
        self.out.clear();
        frame::encode(&msg, &mut self.out).map_err(|e| self.err("send to", e))?;
        if self.out.len() - 4 > self.max {
            return Err(self.err("send to", frame::FrameError::TooLarge { size: self.out.len() - 4, max: self.max }));
        }
        // One write per message: header block and body go out together.
        let res = self.stream.get_mut().write_all(&self.out).await;
        if self.out.capacity() > 64 * 1024 {
            self.out = BytesMut::new(); // don't pin a large buffer to an idle connection
        }
        res.map_err(|e| self.err("send to", e))
    }

    async fn recv(&mut self) -> Result<Message> {
        let len = match self.stream.read_u32().await {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(self.err("recv from", "connection closed"))
            }
            Err(e) => return Err(self.err("recv from", e)),
        };
        let size = frame::check_len(len, self.max).map_err(|e| self.err("recv from", e))?;
        let mut buf = vec![0u8; size];
        self.stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| self.err("recv from", e))?;
        frame::decode(Bytes::from(buf)).map_err(|e| self.err("recv from", e))
    }

    async fn close(&mut self) -> Result<()> {
        self.stream.get_mut().shutdown().await.map_err(|e| self.err("close", e))
    }

    fn local_addr(&self) -> String {
        self.local.clone()
    }

    fn remote_addr(&self) -> String {
        self.remote.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        raw.write_all(&(100u32 * 1024 * 1024).to_be_bytes()).await.map_err(|e| Error::internal("test", e.to_string()))?;
        let err = s.recv().await.err();
        assert!(err.is_some_and(|e| e.detail.contains("over the limit")));
        Ok(())
    }

    #[tokio::test]
    async fn dial_to_a_closed_port_is_an_error() {
        let t = TcpTransport::default();
        // Bind and drop to find a port that is very likely closed.
        let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => a.port(),
            Err(_) => return,
        };
        assert!(t.dial(&format!("127.0.0.1:{port}")).await.is_err());
    }
}
