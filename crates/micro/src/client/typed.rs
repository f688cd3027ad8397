use crate::stream::TypedStream;
use micro_core::codec::{decode, encode};
use micro_core::{headers, CallOptions, Client, Codecs, Message, Request, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// A client for typed requests: encodes with the codec of its content
/// type, calls through the selected [`Client`] component, and decodes the
/// response by the content type the server answered with.
#[derive(Clone)]
pub struct TypedClient {
    client: Arc<dyn Client>,
    codecs: Codecs,
    content_type: String,
}

impl TypedClient {
    /// Wraps a client component.
    pub fn new(client: Arc<dyn Client>, codecs: Codecs) -> Self {
        let content_type = codecs.default_type().to_string();
        TypedClient { client, codecs, content_type }
    }

    /// The same client, sending another content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// The component underneath.
    pub fn inner(&self) -> &Arc<dyn Client> {
        &self.client
    }

    /// Calls `endpoint` (`Handler.Method`) of `service`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        req: &Req,
    ) -> Result<Resp> {
        self.call_with(service, endpoint, req, HashMap::new(), CallOptions::default()).await
    }

    /// Calls with metadata and per-call options.
    pub async fn call_with<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        req: &Req,
        metadata: HashMap<String, String>,
        opts: CallOptions,
    ) -> Result<Resp> {
        let codec = self.codecs.get(&self.content_type)?;
        let request = Request {
            service: service.to_string(),
            endpoint: endpoint.to_string(),
            content_type: self.content_type.clone(),
            body: encode(&*codec, req)?,
            metadata,
        };
        let resp = self.client.call(request, opts).await?;
        let codec = self.codecs.get(&resp.content_type)?;
        decode(&*codec, &resp.body)
    }

    /// Opens a stream to the stream endpoint `endpoint` of `service`: send
    /// `Req` messages, receive `Resp` messages. Dropping it cancels it.
    pub async fn stream<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
    ) -> Result<TypedStream<Req, Resp>> {
        self.stream_with(service, endpoint, HashMap::new(), CallOptions::default()).await
    }

    /// Opens a stream with metadata and per-call options (`timeout` bounds
    /// the whole stream).
    pub async fn stream_with<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        metadata: HashMap<String, String>,
        opts: CallOptions,
    ) -> Result<TypedStream<Req, Resp>> {
        let codec = self.codecs.get(&self.content_type)?;
        let request = Request {
            service: service.to_string(),
            endpoint: endpoint.to_string(),
            content_type: self.content_type.clone(),
            body: Default::default(),
            metadata,
        };
        let stream = self.client.stream(request, opts).await?;
        Ok(TypedStream::new(stream, codec))
    }

    /// Publishes a typed message to a topic.
    pub async fn publish<T: Serialize>(&self, topic: &str, msg: &T) -> Result<()> {
        let codec = self.codecs.get(&self.content_type)?;
        let m = Message::new(encode(&*codec, msg)?).with_header(headers::CONTENT_TYPE, self.content_type.clone());
        self.client.publish(topic, m).await
    }
}
