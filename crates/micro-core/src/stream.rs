//! Streams: many messages each way over one call, for server-streaming,
//! client-streaming and bidirectional endpoints (go-micro's `client.Stream`
//! and stream handlers).
//!
//! Both sides see the same [`Stream`]: `send` messages to the peer, `recv`
//! the peer's messages until `Ok(None)` (the peer finished) or an error (the
//! peer failed or went away). A client ends its sending side with
//! [`Stream::close_send`]; a handler ends the stream by returning, and its
//! `Err` reaches the caller as the stream's error. Dropping a [`Stream`]
//! cancels it: the protocol tells the other side, whose `recv` and `send`
//! then fail, and a server drops the handler.
//!
//! Protocols drive a stream through its [`StreamEnds`], the other ends of
//! the two channels that a [`Stream`] holds; they are plain tokio channels,
//! so buffering is bounded and a slow reader slows the writer down.

use crate::{BoxFuture, Error, Request, Result};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

const ID: &str = "go.micro.stream";

/// How many messages may wait in each direction before `send` waits.
pub const STREAM_BUFFER: usize = 16;

/// Serves one stream: the request carries the endpoint, content type and
/// metadata (its body is empty); the stream carries the messages.
pub type StreamHandlerFn = Arc<dyn Fn(Request, Stream) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// The error of using a stream whose other side has gone.
pub fn closed_error() -> Error {
    Error::new(ID, "stream closed by the other side", 499)
}

/// One side of a stream: messages out, messages in.
#[derive(Debug)]
pub struct Stream {
    sender: StreamSender,
    receiver: StreamReceiver,
}

/// The sending half of a [`Stream`].
#[derive(Debug, Clone)]
pub struct StreamSender {
    tx: Option<mpsc::Sender<Bytes>>,
}

/// The receiving half of a [`Stream`].
#[derive(Debug)]
pub struct StreamReceiver {
    rx: mpsc::Receiver<Result<Bytes>>,
    done: bool,
}

/// The protocol's ends of a [`Stream`]: what arrives from the peer goes
/// into `incoming` (an `Err` ends the stream with that error; dropping it
/// ends the stream normally), what the local side sends comes out of
/// `outgoing` (which ends when the local side closed its sending half).
#[derive(Debug)]
pub struct StreamEnds {
    /// Messages from the peer, to the local side.
    pub incoming: mpsc::Sender<Result<Bytes>>,
    /// Messages from the local side, to the peer.
    pub outgoing: mpsc::Receiver<Bytes>,
}

impl Stream {
    /// A stream and the ends a protocol drives it through.
    pub fn pair() -> (Stream, StreamEnds) {
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        let (in_tx, in_rx) = mpsc::channel(STREAM_BUFFER);
        let stream = Stream {
            sender: StreamSender { tx: Some(out_tx) },
            receiver: StreamReceiver { rx: in_rx, done: false },
        };
        (stream, StreamEnds { incoming: in_tx, outgoing: out_rx })
    }

    /// Sends one encoded message; fails once the peer has gone or this side
    /// closed its sending half.
    pub async fn send(&self, body: Bytes) -> Result<()> {
        self.sender.send(body).await
    }

    /// Ends this side's messages; the peer's `recv` then returns `Ok(None)`.
    /// Receiving goes on.
    pub fn close_send(&mut self) {
        self.sender.close();
    }

    /// The peer's next message; `Ok(None)` when the peer finished, `Err`
    /// when it failed or went away.
    pub async fn recv(&mut self) -> Result<Option<Bytes>> {
        self.receiver.recv().await
    }

    /// Splits the stream so that sending and receiving can go on in
    /// different tasks. Dropping both halves cancels the stream.
    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.sender, self.receiver)
    }
}

impl StreamSender {
    /// Sends one encoded message.
    pub async fn send(&self, body: Bytes) -> Result<()> {
        match &self.tx {
            Some(tx) => tx.send(body).await.map_err(|_| closed_error()),
            None => Err(Error::bad_request(ID, "send after close_send")),
        }
    }

    /// Ends this side's messages (for this sender; clones keep theirs).
    pub fn close(&mut self) {
        self.tx = None;
    }
}

impl StreamReceiver {
    /// The peer's next message; `Ok(None)` when the peer finished.
    pub async fn recv(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => {
                self.done = true;
                Err(e)
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }
}

impl StreamEnds {
    /// Completes when the local side dropped its receiving half, which means
    /// it cancelled the stream (or, on a server, the handler has finished).
    pub async fn cancelled(&self) {
        self.incoming.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_flow_both_ways_and_end() -> Result<()> {
        let (mut s, mut ends) = Stream::pair();
        s.send(Bytes::from_static(b"up")).await?;
        assert_eq!(ends.outgoing.recv().await, Some(Bytes::from_static(b"up")));
        s.close_send();
        assert_eq!(ends.outgoing.recv().await, None);
        assert!(s.send(Bytes::new()).await.is_err());
        ends.incoming.send(Ok(Bytes::from_static(b"down"))).await.map_err(|_| closed_error())?;
        ends.incoming.send(Err(Error::bad_request("x", "no"))).await.map_err(|_| closed_error())?;
        assert_eq!(s.recv().await?, Some(Bytes::from_static(b"down")));
        assert_eq!(s.recv().await.err().map(|e| e.detail), Some("no".to_string()));
        assert_eq!(s.recv().await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn dropping_the_stream_is_seen_as_cancellation() {
        let (s, ends) = Stream::pair();
        drop(s);
        tokio::time::timeout(std::time::Duration::from_secs(1), ends.cancelled()).await.ok();
        assert!(ends.incoming.is_closed());
    }
}
