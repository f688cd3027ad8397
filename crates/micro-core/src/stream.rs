//! Streams: many messages each way over one call, for server-streaming,
//! client-streaming and bidirectional endpoints (go-micro's `client.Stream`
//! and stream handlers).
//!
//! Both sides see the same [`Stream`]: `send` messages to the peer, `recv`
//! the peer's messages until `Ok(None)` (the peer finished) or an error (the
//! peer failed or went away). A client ends its sending side with
//! [`Stream::close_send`] (or by dropping the sending half of a split
//! stream); a handler ends the stream by returning, and its `Err` reaches
//! the caller as the stream's error. Dropping a [`Stream`], or the receiving
//! half of a split one, cancels it: the protocol tells the other side, whose
//! `recv` and `send` then fail, and a server drops the handler. A
//! cancellation is never seen by the peer as a clean end of input.
//!
//! Protocols drive a stream through its [`StreamEnds`], the other ends of
//! the two channels that a [`Stream`] holds; they are plain tokio channels,
//! so buffering is bounded and a slow reader slows the writer down.

use crate::{BoxFuture, Error, Request, Result};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
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
    // `None` only after `split`, which hands both halves out.
    sender: Option<StreamSender>,
    receiver: Option<StreamReceiver>,
    dropped: Arc<AtomicBool>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Set before the fields (and so the channels) close: the protocol
        // sees the outgoing channel end and must know it was no close_send.
        if self.sender.is_some() {
            self.dropped.store(true, Ordering::Release);
        }
    }
}

/// The sending half of a [`Stream`].
#[derive(Debug, Clone)]
pub struct StreamSender {
    tx: Option<mpsc::Sender<Bytes>>,
}

/// The receiving half of a [`Stream`]. Dropping it before the peer finished
/// cancels the stream: the protocol sees a cancellation, never a clean end,
/// whichever of its ends it notices first.
#[derive(Debug)]
pub struct StreamReceiver {
    rx: mpsc::Receiver<Result<Bytes>>,
    done: bool,
    dropped: Option<Arc<AtomicBool>>,
}

impl Drop for StreamReceiver {
    fn drop(&mut self) {
        if !self.done {
            if let Some(d) = &self.dropped {
                d.store(true, Ordering::Release);
            }
        }
    }
}

/// The protocol's ends of a [`Stream`]: what arrives from the peer goes
/// into `incoming` (an `Err` ends the stream with that error; dropping it
/// ends the stream normally), what the local side sends comes out of
/// `outgoing`. When `outgoing` ends, [`StreamEnds::dropped_flag`] tells a
/// close_send (end the direction cleanly) from a dropped stream (cancel);
/// a dropped receiving half closes `incoming` (`Sender::closed`).
#[derive(Debug)]
pub struct StreamEnds {
    /// Messages from the peer, to the local side.
    pub incoming: mpsc::Sender<Result<Bytes>>,
    /// Messages from the local side, to the peer.
    pub outgoing: mpsc::Receiver<Bytes>,
    dropped: Arc<AtomicBool>,
}

impl Stream {
    /// A stream and the ends a protocol drives it through.
    pub fn pair() -> (Stream, StreamEnds) {
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        let (in_tx, in_rx) = mpsc::channel(STREAM_BUFFER);
        let dropped = Arc::new(AtomicBool::new(false));
        let stream = Stream {
            sender: Some(StreamSender { tx: Some(out_tx) }),
            receiver: Some(StreamReceiver { rx: in_rx, done: false, dropped: Some(dropped.clone()) }),
            dropped: dropped.clone(),
        };
        (stream, StreamEnds { incoming: in_tx, outgoing: out_rx, dropped })
    }

    /// Sends one encoded message; fails once the peer has gone or this side
    /// closed its sending half.
    pub async fn send(&self, body: Bytes) -> Result<()> {
        match &self.sender {
            Some(s) => s.send(body).await,
            None => Err(closed_error()),
        }
    }

    /// Ends this side's messages; the peer's `recv` then returns `Ok(None)`.
    /// Receiving goes on.
    pub fn close_send(&mut self) {
        if let Some(s) = &mut self.sender {
            s.close();
        }
    }

    /// The peer's next message; `Ok(None)` when the peer finished, `Err`
    /// when it failed or went away.
    pub async fn recv(&mut self) -> Result<Option<Bytes>> {
        match &mut self.receiver {
            Some(r) => r.recv().await,
            None => Ok(None),
        }
    }

    /// Splits the stream so that sending and receiving can go on in
    /// different tasks. Dropping the sending half ends this side's messages
    /// (as `close_send`); dropping the receiving half cancels the stream.
    pub fn split(mut self) -> (StreamSender, StreamReceiver) {
        let sender = self.sender.take().unwrap_or(StreamSender { tx: None });
        let receiver = self.receiver.take().unwrap_or_else(|| {
            let (_, rx) = mpsc::channel(1);
            StreamReceiver { rx, done: true, dropped: None }
        });
        (sender, receiver)
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
    /// Tells, once `outgoing` has ended, whether the local side dropped the
    /// whole stream (cancel) or closed its sending side; kept apart from the
    /// ends so that they can be moved into different tasks.
    pub fn dropped_flag(&self) -> DroppedFlag {
        DroppedFlag(self.dropped.clone())
    }
}

/// Tells whether the local side dropped its whole [`Stream`] (see
/// [`StreamEnds::dropped_flag`]).
#[derive(Debug, Clone)]
pub struct DroppedFlag(Arc<AtomicBool>);

impl DroppedFlag {
    /// `true` once the whole stream was dropped.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backpressure: a writer whose reader does not read is held after
    /// [`STREAM_BUFFER`] messages, and goes on as soon as one is read.
    #[tokio::test]
    async fn a_slow_reader_holds_the_writer_after_the_buffer() -> Result<()> {
        let (s, mut ends) = Stream::pair();
        for i in 0..STREAM_BUFFER {
            let sent = tokio::time::timeout(std::time::Duration::from_secs(5), s.send(Bytes::from(vec![i as u8])));
            sent.await.map_err(|_| closed_error())??;
        }
        let mut next = std::pin::pin!(s.send(Bytes::from_static(b"one too many")));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(next.as_mut(), &mut cx).is_pending(), "the writer runs ahead of its reader");
        assert_eq!(ends.outgoing.recv().await, Some(Bytes::from(vec![0u8])));
        tokio::time::timeout(std::time::Duration::from_secs(5), next).await.map_err(|_| closed_error())??;
        Ok(())
    }

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
        let (s, mut ends) = Stream::pair();
        drop(s);
        tokio::time::timeout(std::time::Duration::from_secs(1), ends.incoming.closed()).await.ok();
        assert!(ends.incoming.is_closed());
        assert_eq!(ends.outgoing.recv().await, None);
        assert!(ends.dropped_flag().get(), "a dropped stream is a cancellation");
    }

    #[tokio::test]
    async fn close_send_and_a_dropped_sending_half_are_no_cancellation() {
        let (mut s, mut ends) = Stream::pair();
        s.close_send();
        assert_eq!(ends.outgoing.recv().await, None);
        assert!(!ends.dropped_flag().get());
        drop(s);
        assert!(ends.dropped_flag().get());

        let (s, mut ends) = Stream::pair();
        let (tx, rx) = s.split();
        drop(tx);
        assert_eq!(ends.outgoing.recv().await, None);
        assert!(!ends.dropped_flag().get(), "a dropped sending half is a close_send");
        drop(rx);
        assert!(ends.dropped_flag().get(), "a receiving half dropped before the end cancels");
    }

    #[tokio::test]
    async fn a_receiving_half_dropped_before_the_sender_marks_a_cancellation() {
        let (s, mut ends) = Stream::pair();
        let (tx, rx) = s.split();
        drop(rx);
        drop(tx);
        assert_eq!(ends.outgoing.recv().await, None);
        assert!(ends.dropped_flag().get(), "the outgoing end must read as a cancellation");

        // A receiver that saw the peer's end cancels nothing.
        let (s, ends) = Stream::pair();
        let (tx, mut rx) = s.split();
        drop(ends.incoming);
        assert_eq!(rx.recv().await.ok(), Some(None));
        drop(rx);
        drop(tx);
        assert!(!ends.dropped.load(Ordering::Acquire));
    }
}
