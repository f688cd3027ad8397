//! Typed streams: a [`micro_core::Stream`] whose messages are encoded and
//! decoded with one codec. Clients get a `TypedStream<Request, Response>`
//! from [`TypedClient::stream`](crate::TypedClient::stream); stream
//! handlers get a `TypedStream<Response, Request>`: each side sends its own
//! type and receives the other's, with the same API on both sides and over
//! both protocols (`mucp` and `grpc`).

use micro_core::codec::{decode, encode};
use micro_core::{Codec, Result, Stream, StreamReceiver, StreamSender};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;

/// A stream that sends `S` and receives `R`. Dropping it cancels the
/// stream; dropping the sending half of a split one ends this side's
/// messages (as `close_send`).
pub struct TypedStream<S, R> {
    // Whole until `split`, so that dropping it is seen as a cancellation.
    inner: Stream,
    codec: Arc<dyn Codec>,
    _t: PhantomData<fn(S) -> R>,
}

/// The sending half of a [`TypedStream`].
pub struct TypedSender<S> {
    inner: StreamSender,
    codec: Arc<dyn Codec>,
    _t: PhantomData<fn(S)>,
}

/// The receiving half of a [`TypedStream`].
pub struct TypedReceiver<R> {
    inner: StreamReceiver,
    codec: Arc<dyn Codec>,
    _t: PhantomData<fn() -> R>,
}

impl<S: Serialize, R: DeserializeOwned> TypedStream<S, R> {
    /// Wraps a stream whose messages are in `codec`'s encoding.
    pub fn new(stream: Stream, codec: Arc<dyn Codec>) -> Self {
        TypedStream { inner: stream, codec, _t: PhantomData }
    }

    /// Sends one message; fails once the peer has gone.
    pub async fn send(&self, msg: &S) -> Result<()> {
        self.inner.send(encode(&*self.codec, msg)?).await
    }

    /// The peer's next message; `Ok(None)` when the peer finished, `Err`
    /// with the peer's error when it failed or went away.
    pub async fn recv(&mut self) -> Result<Option<R>> {
        match self.inner.recv().await? {
            Some(b) => decode(&*self.codec, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Ends this side's messages; receiving goes on.
    pub fn close_send(&mut self) {
        self.inner.close_send();
    }

    /// Splits the stream so that sending and receiving can go on in
    /// different tasks. Dropping the sending half ends this side's messages;
    /// dropping the receiving half cancels the stream.
    pub fn split(self) -> (TypedSender<S>, TypedReceiver<R>) {
        let (tx, rx) = self.inner.split();
        (
            TypedSender { inner: tx, codec: self.codec.clone(), _t: PhantomData },
            TypedReceiver { inner: rx, codec: self.codec, _t: PhantomData },
        )
    }
}

impl<S: Serialize> TypedSender<S> {
    /// Sends one message.
    pub async fn send(&self, msg: &S) -> Result<()> {
        self.inner.send(encode(&*self.codec, msg)?).await
    }

    /// Ends this side's messages.
    pub fn close(&mut self) {
        self.inner.close();
    }
}

impl<R: DeserializeOwned> TypedReceiver<R> {
    /// The peer's next message; `Ok(None)` when the peer finished.
    pub async fn recv(&mut self) -> Result<Option<R>> {
        match self.inner.recv().await? {
            Some(b) => decode(&*self.codec, &b).map(Some),
            None => Ok(None),
        }
    }
}

impl<S, R> std::fmt::Debug for TypedStream<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedStream").field("content_type", &self.codec.content_type()).finish()
    }
}

use crate::codec::ProtoJson;

/// A stream of generated (prost + serde) messages, as `micro-build`'s
/// clients and handlers use it: sends `S`, receives `R`, each message in
/// protobuf or JSON by the stream's content type ([`ProtoJson`]).
#[derive(Debug)]
pub struct MessageStream<S, R> {
    inner: TypedStream<ProtoJson<S>, ProtoJson<R>>,
}

/// The sending half of a [`MessageStream`].
pub struct MessageSender<S> {
    inner: TypedSender<ProtoJson<S>>,
}

/// The receiving half of a [`MessageStream`].
pub struct MessageReceiver<R> {
    inner: TypedReceiver<ProtoJson<R>>,
}

/// What a generated message is: a prost message with serde derives.
pub trait GeneratedMessage: prost::Message + Default + Serialize + DeserializeOwned + Send + 'static {}
impl<T: prost::Message + Default + Serialize + DeserializeOwned + Send + 'static> GeneratedMessage for T {}

impl<S: GeneratedMessage, R: GeneratedMessage> MessageStream<S, R> {
    /// Wraps a typed stream of the same messages.
    pub fn new(inner: TypedStream<ProtoJson<S>, ProtoJson<R>>) -> Self {
        MessageStream { inner }
    }

    /// Sends one message; fails once the peer has gone.
    pub async fn send(&self, msg: S) -> Result<()> {
        self.inner.send(&ProtoJson(msg)).await
    }

    /// The peer's next message; `Ok(None)` when the peer finished, `Err`
    /// with the peer's error when it failed or went away.
    pub async fn recv(&mut self) -> Result<Option<R>> {
        Ok(self.inner.recv().await?.map(|m| m.0))
    }

    /// Ends this side's messages; receiving goes on.
    pub fn close_send(&mut self) {
        self.inner.close_send();
    }

    /// Splits the stream so that sending and receiving can go on in
    /// different tasks (see [`TypedStream::split`]).
    pub fn split(self) -> (MessageSender<S>, MessageReceiver<R>) {
        let (tx, rx) = self.inner.split();
        (MessageSender { inner: tx }, MessageReceiver { inner: rx })
    }
}

impl<S: GeneratedMessage> MessageSender<S> {
    /// Sends one message.
    pub async fn send(&self, msg: S) -> Result<()> {
        self.inner.send(&ProtoJson(msg)).await
    }

    /// Ends this side's messages.
    pub fn close(&mut self) {
        self.inner.close();
    }
}

impl<R: GeneratedMessage> MessageReceiver<R> {
    /// The peer's next message; `Ok(None)` when the peer finished.
    pub async fn recv(&mut self) -> Result<Option<R>> {
        Ok(self.inner.recv().await?.map(|m| m.0))
    }
}
